"""VisionZip-style dominant + contextual tokens: the tower attention each visual token gets equals what the tower's
own eager attention gives its patches, and a VisionZip run equals the unpruned sequence with the dropped tokens
masked out and each contextual token carrying its group's mean."""

from __future__ import annotations

import sys

import pytest
import torch

from conftest import FAMILIES, QWEN_FAMILIES, messages_for, model_inputs, needs_assets, random_image
from tcc_eval import wrap_model
from tcc_eval.adapters import adapter_for
from tcc_eval.adapters.base import NO_PATCHES, default_tower_spans
from tcc_eval.core import topk_in_order
from tcc_eval.methods import VISIONZIP_CONTEXTUAL_SHARE, SampleView, VisionZip

ALL_FAMILIES = FAMILIES + ("vila",)


@pytest.fixture(scope="module")
def models(loaded, tiny_vila_path):
    """family -> (model, processor), every tower in eager attention (the reference reads its probabilities)."""
    from tcc_eval.api import load_hf_model

    vila = load_hf_model(str(tiny_vila_path), torch.device("cpu"), torch.float32, attn="eager")
    return {**loaded, "vila": vila}


def eager_tower_reference(model, family: str, inputs: dict, monkeypatch,
                          reordered: list[bool] | None = None) -> list[torch.Tensor]:
    """Per image, crop or frame (in tower order): (n, 1 + d), the attention each patch receives in the feature
    layer (the mean over heads and queries of eager attention's softmax) and the layer's keys averaged over heads.
    SigLIP returns its probabilities; Qwen2-VL's vision attention drops them, so its eager function is wrapped to
    keep a copy. The keys are the layer's k projection of the input a pre-hook sees. Qwen2.5-VL's blocks see the
    patches in window order: rows are put back in the patch embedding's order, found by matching the patch
    embeddings to the first block's input row by row."""
    adapter = adapter_for(model)
    layer = adapter.feature_attention()
    probabilities: list[torch.Tensor] = []  # (images, heads, n, n) per call
    keys: list[torch.Tensor] = []  # (n, d) per image
    heads = layer.num_heads

    def keep_keys(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if family in QWEN_FAMILIES:
            per_patch = module.qkv(hidden).reshape(hidden.shape[0], 3, heads, -1)[:, 1].mean(dim=1)
            bounds = kwargs["cu_seqlens"].tolist()
            keys.extend(per_patch[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
        else:
            keys.extend(module.k_proj(hidden).reshape(*hidden.shape[:2], heads, -1).mean(dim=2))

    handles = [layer.register_forward_pre_hook(keep_keys, with_kwargs=True)]
    embedded, block_input = [], []  # Qwen2.5-VL: patch embeddings, and the same rows as the first block gets them
    if family == "qwen2_5_vl":
        tower = model.model.visual
        handles += [tower.patch_embed.register_forward_hook(lambda _m, _a, out: embedded.append(out)),
                    tower.blocks[0].register_forward_pre_hook(lambda _m, args: block_input.append(args[0]))]
    if family in QWEN_FAMILIES:
        modeling = sys.modules[type(layer).__module__]
        eager = modeling.eager_attention_forward

        def keep_weights(module, *args, **kwargs):
            output, weights = eager(module, *args, **kwargs)
            if module is layer:
                probabilities.append(weights)
            return output, weights

        monkeypatch.setattr(modeling, "eager_attention_forward", keep_weights)
    else:
        handles.append(layer.register_forward_hook(lambda _m, _a, out: probabilities.append(out[1])))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    received = [row for p in probabilities for row in p.mean(dim=1).mean(dim=1)]
    assert len(received) == len(keys)
    per_image = [torch.cat([r[:, None], k], dim=-1) for r, k in zip(received, keys)]
    if family == "qwen2_5_vl":
        per_image = in_patch_order(embedded, block_input, per_image, [] if reordered is None else reordered)
    return per_image


def in_patch_order(embedded: list[torch.Tensor], block_input: list[torch.Tensor], per_image: list[torch.Tensor],
                   reordered: list[bool]) -> list[torch.Tensor]:
    """Qwen2.5-VL: rows in window order -> rows in patch order, one tower call (images, then videos) at a time, by
    matching each call's patch embeddings to its first block's input; ``reordered`` gets, per call, whether the
    windows moved any patch."""
    rows, out = iter(per_image), []
    for natural, windowed in zip(embedded, block_input):
        source = torch.cdist(natural, windowed).argmin(dim=1)  # natural row i is windowed row source[i]
        assert torch.equal(torch.sort(source).values, torch.arange(natural.shape[0]))  # a permutation
        reordered.append(not torch.equal(source, torch.arange(natural.shape[0])))
        call, taken = [], 0
        while taken < natural.shape[0]:
            call.append(next(rows))
            taken += call[-1].shape[0]
        stacked = torch.cat(call)[source]
        out.extend(stacked.split([c.shape[0] for c in call]))
    return out


def expected_per_token(family: str, per_image: list[torch.Tensor], cells: torch.Tensor, kind: str) -> torch.Tensor:
    """Each visual token's row from its cell: the mean over the patches it covers, found from the layout each
    family documents, not from the adapter's mapping code; NO_PATCHES rows for tokens without a cell."""
    out = torch.full((cells.shape[0], per_image[0].shape[-1]), NO_PATCHES)
    for i, (grid, row, col) in enumerate(cells.tolist()):
        if grid < 0:
            continue
        if family in QWEN_FAMILIES:  # grid g = g-th image / frame pair; its patches come in 2x2 blocks, row-major
            width = cells[cells[:, 0] == grid, 2].max().item() + 1
            block = row * width + col
            out[i] = per_image[grid][4 * block:4 * block + 4].mean(dim=0)
        elif family == "llava_onevision" and kind == "video":  # frame g: 2x2 mean pooling of its 4x4 patches
            out[i] = per_image[grid].reshape(4, 4, -1)[2 * row:2 * row + 2, 2 * col:2 * col + 2].mean(dim=(0, 1))
        elif family == "llava_onevision" and kind == "multi_image":  # no crops: image g // 2 is its base view alone
            out[i] = per_image[grid // 2][row * 4 + col]
        elif family == "llava_onevision":  # 56x112 image: grid 0 = base view (crop 0); grid 1 = crops 1, 2 side by side
            out[i] = per_image[0][row * 4 + col] if grid == 0 else per_image[1 + col // 4][row * 4 + col % 4]
        else:  # VILA: 3x3 patches per image, 2x2 blocks (the padded row and column hold no patch)
            out[i] = per_image[grid].reshape(3, 3, -1)[2 * row:2 * row + 2, 2 * col:2 * col + 2].mean(dim=(0, 1))
    return out


def inputs_for(processor, family: str, kind: str) -> dict:
    if family == "llava_onevision" and kind == "image":  # anyres: base view + two crops, no unpadding
        messages = [{"role": "user", "content": [{"type": "image", "image": random_image(56, 112, 5)},
                                                 {"type": "text", "text": "What color is the circle?"}]}]
        return model_inputs(processor, messages)
    return model_inputs(processor, messages_for(kind, seed=5))


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("kind", ("image", "multi_image", "video"))
def test_tower_attention_equals_the_feature_layers_eager_attention(models, family, kind, monkeypatch):
    model, processor = models[family]
    inputs = inputs_for(processor, family, kind)
    adapter = adapter_for(model)
    llm = adapter.capture_llm_inputs(inputs, tower_attention=True)
    cells = llm.visual_cells[0]
    reordered: list[bool] = []
    expected = expected_per_token(family, eager_tower_reference(model, family, inputs, monkeypatch, reordered),
                                  cells, kind)
    # Qwen2.5-VL's 56-px windows reorder the 112 x 84 image's patches; a 56-px frame is one window
    assert reordered == ({"image": [True], "multi_image": [True], "video": [False]}[kind]
                         if family == "qwen2_5_vl" else [])
    got = llm.tower_attention[0]
    assert got.shape == (llm.n_visual(0),)
    assert torch.equal(got == NO_PATCHES, cells[:, 0] < 0)  # exactly the newline tokens cover no patches
    assert (got - expected[:, 0]).abs().max().item() < 1e-6
    covered = cells[:, 0] >= 0
    assert (llm.tower_keys[0][covered] - expected[covered, 1:]).abs().max().item() < 1e-5
    assert adapter.capture_llm_inputs(inputs).tower_attention is None  # only captured when asked for


def test_qwen2_5_vl_window_order_at_the_published_window_size(tmp_path, monkeypatch):
    """The published Qwen2.5-VL checkpoints' 112-px windows (4 x 4 merged tokens) on grids that do not fill them:
    a 392 x 280 image (14 x 10 merged tokens: padded windows) together with a second image, and an 8-frame video of
    224 x 168 frames (4 temporal patches): tower attention and keys still equal the eager reference."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tcc_eval.fixtures import build_tiny_checkpoint

    path = build_tiny_checkpoint("qwen2_5_vl", tmp_path / "ckpt", window_size=112, max_pixels=392 * 280)
    model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager").eval()
    processor = AutoProcessor.from_pretrained(path)
    contents = {"images": [{"type": "image", "image": random_image(280, 392, 1)},
                           {"type": "image", "image": random_image(168, 224, 2)}],
                "video": [{"type": "video", "video": [random_image(168, 224, 3 + i) for i in range(8)]}]}
    for kind, content in contents.items():
        inputs = model_inputs(processor, [{"role": "user", "content": content + [{"type": "text", "text": "Why?"}]}])
        llm = adapter_for(model).capture_llm_inputs(inputs, tower_attention=True)
        reordered: list[bool] = []
        expected = expected_per_token("qwen2_5_vl", eager_tower_reference(model, "qwen2_5_vl", inputs, monkeypatch,
                                                                          reordered), llm.visual_cells[0], kind)
        assert reordered == [True], kind
        assert (llm.tower_attention[0] - expected[:, 0]).abs().max().item() < 1e-6, kind
        assert (llm.tower_keys[0] - expected[:, 1:]).abs().max().item() < 1e-5, kind


def synthetic_view(attention: list[float], keys: torch.Tensor, groups: list[int] | None = None,
                   grids: list[int] | None = None) -> SampleView:
    n = len(attention)
    cells = None if grids is None else torch.tensor([[g, 0, 0] if g >= 0 else [-1, -1, -1] for g in grids])
    groups = torch.tensor(groups or [0] * n)
    spans = groups.clone() if cells is None else default_tower_spans(groups, cells)
    return SampleView(adapter=None, input_ids=torch.zeros(n, dtype=torch.long), inputs_embeds=torch.randn(1, n, 4),
                      attention_mask=torch.ones(1, n), position_ids=torch.arange(n)[None],
                      visual=torch.ones(n, dtype=torch.bool), groups=groups, cells=cells,
                      tower_attention=torch.tensor(attention), tower_keys=keys, tower_spans=spans)


def test_plan_keeps_the_most_attended_and_spreads_the_contextual_tokens():
    """64 tokens at 50%: k = 32, c = round(32 * 10/64) = 5; the 27 most attended are dominant; the 5 contextual tokens
    are every 7th of the 37 others (37 // 5 = 7), in sequence order; each other token joins the one whose tower key it
    is most like (cosine)."""
    torch.manual_seed(0)
    attention = torch.randperm(64).float().tolist()
    keys = torch.randn(64, 8)
    plan = VisionZip(0.5).plan(synthetic_view(attention, keys))
    dominant = sorted(range(64), key=lambda i: -attention[i])[:27]
    others = [i for i in range(64) if i not in dominant]
    contextual = others[0:35:7]
    assert plan.order[:27].tolist() == dominant and plan.order[27:32].tolist() == contextual
    assert plan.kept.tolist() == sorted(dominant + contextual)
    unit = torch.nn.functional.normalize(keys, dim=-1)
    for i in range(64):
        if i in dominant:
            assert plan.owner[i] == -1
        elif i in contextual:
            assert plan.owner[i] == i
        else:
            assert plan.owner[i] == max(contextual, key=lambda t: float(unit[i] @ unit[t]))
    assert round(32 * VISIONZIP_CONTEXTUAL_SHARE) == 5


def test_plan_per_group_budget_and_tokens_without_patches():
    """per_group: each frame of 16 keeps round(16 * 0.5) = 8 (7 dominant + 1 contextual); a token without patches
    (a newline) is never contextual nor merged; keeping almost everything leaves no rest to merge."""
    attention = [float(i % 16) for i in range(32)] + [NO_PATCHES]
    view = synthetic_view(attention, torch.randn(33, 4), groups=[0] * 16 + [1] * 17)
    plan = VisionZip(0.5, budget="per_group").plan(view)
    for frame, k in ((range(16), 8), (range(16, 33), 9)):  # k = round(n * 0.5), halves up
        kept = [i for i in plan.kept.tolist() if i in frame]
        contextual = [i for i in kept if plan.owner[i] == i]
        assert len(kept) == k and len(contextual) == 1  # round(8 * 10/64) = round(9 * 10/64) = 1
        assert min(attention[i] for i in kept if i not in contextual) >= max(
            attention[i] for i in frame if i not in kept)  # the dominant ones are the frame's most attended
    assert plan.owner[32] == -1 and 32 not in plan.kept.tolist()
    everything = VisionZip(1.0).plan(view)
    assert everything.kept.tolist() == list(range(33)) and (everything.owner == -1).all()


def test_span_shares_split_the_budget_in_proportion():
    from tcc_eval.methods import span_shares

    assert span_shares(10, [20, 20]) == [5, 5] and span_shares(10, [30, 10]) == [8, 2]  # 7.5 / 2.5: ties go first
    assert span_shares(3, [4, 4, 4]) == [1, 1, 1] and span_shares(2, [4, 4, 4]) == [1, 1, 0]
    assert span_shares(7, [100, 1, 1]) == [7, 0, 0] and span_shares(50, [4, 5]) == [4, 5]
    assert span_shares(3, [4, 1, 4]) == [2, 0, 1]  # remainders 4/9, 3/9, 4/9: exact ties go to the earlier span
    for k in range(0, 30):
        shares = span_shares(k, [9, 5, 13])
        assert sum(shares) == min(k, 27) and all(0 <= a <= b for a, b in zip(shares, [9, 5, 13]))


def test_plan_shares_the_budget_among_images_and_merges_within_each():
    """Two images of 48 and 16 tokens at 50%: 24 + 8 kept; each keeps its own most attended (its attention sums to
    one, so the small image's tokens are not outranked by its higher per-token average) and its own contextual
    tokens, into which only its own tokens merge."""
    torch.manual_seed(1)
    attention = (torch.rand(48) / 48 * 2).tolist() + (torch.rand(16) / 16 * 2).tolist()
    groups = [0] * 48 + [1] * 16
    view = synthetic_view(attention, torch.randn(64, 8), groups)
    plan = VisionZip(0.5).plan(view)
    kept = plan.kept.tolist()
    assert len([i for i in kept if i < 48]) == 24 and len([i for i in kept if i >= 48]) == 8
    contextual = [i for i in kept if plan.owner[i] == i]
    assert len([i for i in contextual if i < 48]) == round(24 * VISIONZIP_CONTEXTUAL_SHARE) == 4
    assert len([i for i in contextual if i >= 48]) == round(8 * VISIONZIP_CONTEXTUAL_SHARE) == 1
    joined = plan.owner >= 0
    assert ((torch.arange(64)[joined] >= 48) == (plan.owner[joined] >= 48)).all()


def test_plan_skips_spans_without_a_share_and_keeps_cls_tokens_apart():
    """A 2-token image beside a 98-token one at 5% gets no share (k = 5 goes to the large one: a span with none
    must keep none, or the plan would keep more than the top-k); tokens outside every grid (a CLS token per
    image) are each image's own span, never merged with another image's."""
    torch.manual_seed(2)
    attention = torch.rand(100).tolist()
    view = synthetic_view(attention, torch.randn(100, 8), groups=[0] * 98 + [1] * 2, grids=[0] * 98 + [1] * 2)
    plan = VisionZip(0.05).plan(view)
    assert plan.kept.numel() == 5 and (plan.kept < 98).all()
    scores = VisionZip(0.05)(view)
    assert torch.equal(topk_in_order(scores, 5).sort().values, plan.kept)  # what the top-k keeps, the plan made
    grids = [-1] + [0] * 40 + [-1] + [1] * 40  # two images, each a CLS token before its 40 patch tokens
    view = synthetic_view(torch.rand(82).tolist(), torch.randn(82, 8), groups=[0] * 41 + [1] * 41, grids=grids)
    plan = VisionZip(0.5).plan(view)
    joined = plan.owner >= 0
    image = torch.tensor([0] * 41 + [1] * 41)
    assert torch.equal(image[joined], image[plan.owner[joined]])  # merges stay inside an image, CLS tokens too
    assert plan.kept.numel() == 41


def reference_logits(model, adapter, inputs, ratio: float, share: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Independent of VisionZip's code: share k among the captured tower spans (images, crops, frames; checked
    against the layout in test_tower_spans_*) by exact fractions, rank each span by the captured tower attention,
    pick with plain loops, merge within the span by the captured tower keys, then run the unpruned sequence with
    dropped tokens masked and contextual tokens carrying their means. Also returns the kept positions and how many
    tokens were merged into contextual ones."""
    from fractions import Fraction

    llm = adapter.capture_llm_inputs(inputs, tower_attention=True)
    attention = llm.tower_attention[0].tolist()
    span_of = llm.tower_spans[0].tolist()
    n = len(attention)
    k = max(1, int(ratio * n + 0.5))
    covered = [i for i in range(n) if attention[i] != NO_PATCHES]
    spans = sorted({span_of[i] for i in covered})
    size = {g: sum(span_of[i] == g for i in covered) for g in spans}
    budget = min(k, len(covered))
    quota = {g: Fraction(budget * size[g], len(covered)) for g in spans}
    share_of = {g: int(quota[g]) for g in spans}
    for g in sorted(spans, key=lambda g: (-(quota[g] - int(quota[g])), g))[:budget - sum(share_of.values())]:
        share_of[g] += 1
    dominant, contextual, members = [], [], {}
    unit = torch.nn.functional.normalize(llm.tower_keys[0], dim=-1)
    for g in spans:
        tokens, k_g = [i for i in covered if span_of[i] == g], share_of[g]
        if k_g == 0:
            continue
        c = min(round(k_g * share), k_g - 1) if len(tokens) > k_g else 0
        top = sorted(tokens, key=lambda i: (-attention[i], i))[:k_g - c]
        rest = [i for i in tokens if i not in top]
        targets = [rest[j] for j in range(0, len(rest), max(1, len(rest) // max(c, 1)))][:c]
        dominant += top
        contextual += targets
        for t in targets:
            members[t] = [t]
        for i in rest if targets else ():  # without contextual tokens the rest is dropped
            if i not in targets:
                members[max(targets, key=lambda t: (float(unit[i] @ unit[t]), -targets.index(t)))].append(i)
    dominant += [i for i in range(n) if attention[i] == NO_PATCHES][:max(0, k - len(covered))]
    visual_rows = torch.nonzero(llm.visual_mask[0]).flatten()
    vis = llm.inputs_embeds[0, visual_rows]
    embeds = llm.inputs_embeds.clone()
    for t, group in members.items():
        embeds[0, visual_rows[t]] = vis[group].mean(dim=0)
    kept_rows = visual_rows[sorted(dominant + contextual)]
    keep = ~llm.visual_mask[0]
    keep[kept_rows] = True
    kept_positions = torch.nonzero(keep & llm.attention_mask[0].bool()).flatten()
    mask = torch.zeros_like(llm.attention_mask)
    mask[0, kept_positions] = 1
    with torch.no_grad():
        logits = adapter.forward_from_embeds(embeds, mask, llm.position_ids).logits[0, kept_positions]
    return logits, kept_positions, sum(len(group) - 1 for group in members.values())


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("kind", ("image", "multi_image", "video"))
def test_tower_spans_are_the_images_crops_and_frames_the_tower_encodes(models, family, kind):
    """Each image, frame or Qwen2-VL frame pair (the adapters' groups) is one span, and LLaVA-OV's base view and
    each of its anyres crops (here a 1 x 2 crop grid without unpadding: crop-grid column // 4) one each."""
    model, processor = models[family]
    llm = adapter_for(model).capture_llm_inputs(inputs_for(processor, family, kind), tower_attention=True)
    spans, cells = llm.tower_spans[0], llm.visual_cells[0]
    covered = llm.tower_attention[0] > NO_PATCHES
    expected = llm.visual_groups[0][covered]
    if family == "llava_onevision" and kind == "image":
        side = model.config.vision_config.image_size // model.config.vision_config.patch_size
        crop = cells[covered, 0] == 1  # grid 1: the crops
        expected = torch.where(crop, 1 + cells[covered, 2] // side, 0)
        assert expected.unique().tolist() == [0, 1, 2]
    assert expected.unique().numel() == {"image": 1, "multi_image": 2, "video": 4}[kind] + 2 * (
        family == "llava_onevision" and kind == "image") - 2 * (family in QWEN_FAMILIES and kind == "video")
    # the same partition of the covered tokens: spans and expected ids correspond one to one
    pairs = set(zip(spans[covered].tolist(), expected.tolist()))
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs})


def test_llava_onevision_downscaled_crops_take_the_crop_most_of_them_came_from(models, monkeypatch):
    """With anyres_max_1 the 4 x 8 crop grid of two crops is downscaled (bilinear) to 2 x 5: a token takes the crop
    its source columns mostly lie in (a token exactly between two crops, the first)."""
    model, processor = models["llava_onevision"]
    monkeypatch.setattr(model.config, "vision_aspect_ratio", "anyres_max_1")
    monkeypatch.setattr(processor, "vision_aspect_ratio", "anyres_max_1")  # it counts the placeholders
    llm = adapter_for(model).capture_llm_inputs(inputs_for(processor, "llava_onevision", "image"), tower_attention=True)
    cells, spans = llm.visual_cells[0], llm.tower_spans[0]
    crop = cells[:, 0] == 1
    assert (cells[crop, 1].max().item() + 1, cells[crop, 2].max().item() + 1) == (2, 5)
    source = (cells[crop, 2] + 0.5) * 8 / 5 - 0.5  # the source column of a bilinear output column
    nearer_second = (source / 4 >= 1) & ~((source - 3.5).abs() < 1e-6)  # 3.5: half from column 3, half from 4
    first, second = spans[crop][~nearer_second].unique(), spans[crop][nearer_second].unique()
    assert first.numel() == second.numel() == 1 and first.item() != second.item()
    assert first.item() not in spans[~crop].tolist() and second.item() not in spans[~crop].tolist()


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("kind", ("image", "multi_image", "video"))
def test_visionzip_equals_masked_reference_with_contextual_means(models, family, kind):
    model, processor = models[family]
    inputs = inputs_for(processor, family, kind)
    vanilla = wrap_model(model, method="visionzip", keep_ratio=1.0)
    with torch.no_grad():
        assert torch.equal(vanilla.prefill_logits(**inputs), model(**inputs).logits)
    ratio = 0.5
    pruned = wrap_model(model, method="visionzip", keep_ratio=ratio)
    logits = pruned.prefill_logits(**inputs)[0]
    share = VISIONZIP_CONTEXTUAL_SHARE
    reference, kept_positions, merged = reference_logits(model, pruned.adapter, inputs, ratio, share)
    assert torch.equal(pruned.last_selection.kept_positions[0], kept_positions)
    assert (logits - reference).abs().max().item() < 1e-4
    # the tiny videos' frames keep 1-3 tokens each, too few for a contextual one (round(3 * 10/64) = 0), as does
    # VILA's 4-token image
    if kind != "multi_image":
        assert (merged > 0) == (kind == "image" and family != "vila")
    assert pruned.scorer._plans == {}  # the merger took the plan the scorer made, so each sample is planned once


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_video_frames_merge_only_within_themselves(models, family):
    """VisionZip runs on each frame (or Qwen2-VL frame pair) the tower encodes: every frame gets its share of the
    budget, and a contextual token carries the mean of its own frame's tokens only (a contextual share of 0.5, so
    the tiny frames' one or two kept tokens include one)."""
    model, processor = models[family]
    inputs = inputs_for(processor, family, "video")
    pruned = wrap_model(model, method="visionzip", keep_ratio=0.5, contextual_share=0.5)
    logits = pruned.prefill_logits(**inputs)[0]
    reference, kept_positions, merged = reference_logits(model, pruned.adapter, inputs, 0.5, 0.5)
    assert merged > 0 and torch.equal(pruned.last_selection.kept_positions[0], kept_positions)
    assert (logits - reference).abs().max().item() < 1e-4
    llm = pruned.adapter.capture_llm_inputs(inputs, tower_attention=True)
    view = pruned.sample_view(llm, 0)
    plan = pruned.scorer.plan(view)
    spans = view.tower_spans
    joined = plan.owner >= 0
    assert torch.equal(spans[joined], spans[plan.owner[joined]])
    kept_spans = spans[plan.kept]
    covered = view.tower_attention > NO_PATCHES  # the video's newline carries no patches
    assert set(kept_spans.tolist()) == set(spans[covered].tolist())  # no frame is left without a kept token


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_dominant_tokens_only_equal_the_masked_reference(models, family):
    """contextual_share=0 (VisionZip's dominant-only ablation): the most attended tokens, embeddings untouched, so
    the run equals the unpruned sequence with the others masked out; the string an lmms-eval model_arg gives works
    the same."""
    model, processor = models[family]
    inputs = inputs_for(processor, family, "video")
    pruned = wrap_model(model, method="visionzip", keep_ratio=0.5, contextual_share="0")
    logits = pruned.prefill_logits(**inputs)[0]
    reference, kept_positions, merged = reference_logits(model, pruned.adapter, inputs, 0.5, 0.0)
    assert merged == 0 and torch.equal(pruned.last_selection.kept_positions[0], kept_positions)
    assert (logits - reference).abs().max().item() < 1e-4
    llm = pruned.adapter.capture_llm_inputs(inputs, tower_attention=True)
    attention, spans = llm.tower_attention[0], llm.visual_cells[0][:, 0]
    visual_rows = torch.nonzero(pruned.adapter.visual_mask(inputs["input_ids"])[0]).flatten()
    kept = torch.isin(visual_rows, kept_positions)
    for span in torch.unique(spans[spans >= 0]):  # each image or frame keeps its own most attended
        inside = spans == span
        assert attention[kept & inside].min() >= attention[~kept & inside].max()


def test_the_tower_readout_is_timed_as_the_selection(models, monkeypatch):
    """VisionZip's readout of the tower's attention runs inside the tower's forward, but it is the method's cost:
    the record counts it in select_s (so in the tables' prefill s), not in vision_s. A readout slowed by 0.3 s
    shows where it lands."""
    import time

    from tcc_eval import tower_attention

    model, processor = models["qwen2_vl"]
    inputs = inputs_for(processor, "qwen2_vl", "image")
    pruned = wrap_model(model, method="visionzip", keep_ratio=0.5)
    pruned.generate(**inputs, max_new_tokens=1, do_sample=False)
    fast = dict(pruned.last_stats)
    delay = 0.3
    real_signals = tower_attention.tower_signals

    def slow_signals(*args, **kwargs):
        time.sleep(delay)
        return real_signals(*args, **kwargs)

    monkeypatch.setattr(tower_attention, "tower_signals", slow_signals)
    pruned.generate(**inputs, max_new_tokens=1, do_sample=False)
    slow = pruned.last_stats
    assert slow["select_s"] >= delay > fast["select_s"] > 0
    assert 0 < slow["vision_s"] < slow["select_s"] and fast["vision_s"] > 0  # the tiny tower takes milliseconds
    assert slow["total_s"] >= slow["vision_s"] + slow["select_s"]


def test_visionzip_errors_name_the_problem(models):
    model, processor = models["qwen2_vl"]
    inputs = model_inputs(processor, messages_for("image"))
    for bad in (1.0, -0.1, "half", float("nan")):
        with pytest.raises(ValueError, match="contextual_share is the fraction"):
            wrap_model(model, method="visionzip", keep_ratio=0.5, contextual_share=bad)
    pruned = wrap_model(model, method="visionzip", keep_ratio=0.5)
    pruned.merger = VisionZip(0.25).merge  # a merger built for another budget
    with pytest.raises(ValueError, match="same keep_ratio and budget"):
        pruned.prefill_logits(**inputs)
    llm = pruned.adapter.capture_llm_inputs(inputs)
    with pytest.raises(ValueError, match="tower_attention=True"):
        VisionZip(0.5)(pruned.sample_view(llm, 0))


@needs_assets
@pytest.mark.parametrize("family, message", [("qwen2_vl", "depth=0"), ("llava_onevision", "patch embeddings"),
                                             ("vila", "patch embeddings")])
def test_demo_towers_without_mixing_refuse_visionzip(family, message):
    """The demo's front ends cannot mix tokens by design, so they have no tower attention to rank by."""
    from tcc_eval import demo
    from tcc_eval.api import load_hf_model

    model, processor = load_hf_model(demo.paths()[family]["model"], torch.device("cpu"), torch.float32)
    inputs = model_inputs(processor, messages_for("image"))
    with pytest.raises(ValueError, match=message):
        wrap_model(model, method="visionzip", keep_ratio=0.25).prefill_logits(**inputs)
