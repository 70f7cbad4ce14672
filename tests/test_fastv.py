"""FastV, DART and PyramidDrop: keep 100% equals vanilla; pruning equals masking the dropped tokens from layer K
on (per stage for PyramidDrop); DART's selection equals a brute-force reading of its rule on independently captured
keys and states, PyramidDrop's the model's own attention in each stage's first layer."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import FAMILIES, from_layer, hidden_key_columns, messages_for, model_inputs, random_image
from tcc_eval import wrap_model
from tcc_eval.core import keep_count
from tcc_eval.fastv import dart_scores, fastv_layer_keep_ratio


def test_average_retention_formula():
    # (K + (L - K) r) / L == rho
    r = fastv_layer_keep_ratio(0.5, layers=28, k=2)
    assert abs((2 + 26 * r) / 28 - 0.5) < 1e-12
    with pytest.raises(ValueError, match="floor"):
        fastv_layer_keep_ratio(0.05, layers=28, k=2)
    with pytest.raises(ValueError, match=re.escape("average retention 0.5 is not above FastV's floor K/L = 2/4")):
        fastv_layer_keep_ratio(0.5, layers=4, k=2)  # exactly at it: layer K would keep nothing


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ("fastv", "dart"))
def test_fastv_keep_all_equals_vanilla(loaded, family, method):
    model, processor = loaded[family]
    inputs = model_inputs(processor, messages_for("image"))
    fastv = wrap_model(model, method=method, keep_ratio=1.0, fastv_k=1)
    with torch.no_grad():
        vanilla = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        vanilla_last = model(**inputs).logits[:, -1:]
    assert torch.equal(fastv.generate(**inputs, max_new_tokens=5, do_sample=False), vanilla)
    assert (fastv.prefill_logits(**inputs) - vanilla_last).abs().max().item() == 0.0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ("image", "video"))
@pytest.mark.parametrize("method", ("fastv", "dart"))
def test_fastv_equals_masked_reference(deep, family, kind, method):
    model, processor = deep[family]
    inputs = model_inputs(processor, messages_for(kind, seed=5))
    fastv = wrap_model(model, method=method, keep_ratio=0.5, fastv_k=1, match="kept")
    logits = fastv.prefill_logits(**inputs)[0, -1]
    kept = fastv.last_selection.kept_positions[0]
    length = inputs["input_ids"].shape[1]
    dropped = torch.tensor([i for i in range(length) if i not in set(kept.tolist())])
    llm = fastv.adapter.capture_llm_inputs(inputs)
    assert dropped.numel() == llm.n_visual(0) - max(1, int(0.5 * llm.n_visual(0) + 0.5))
    lm = fastv.adapter.language_model
    with hidden_key_columns(lm, from_layer(lm, 1, dropped)), torch.no_grad():
        reference = fastv.adapter.forward_from_embeds(llm.inputs_embeds, llm.attention_mask,
                                                      llm.position_ids).logits[0, -1]
    assert (logits - reference).abs().max().item() < 1e-4
    # and pruning really changed something compared with no pruning
    with torch.no_grad():
        full = model(**inputs).logits[0, -1]
    assert (full - reference).abs().max().item() > 1e-6


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ("image", "video"))
@pytest.mark.parametrize("k", (1, 2))
def test_fastv_keeps_the_visual_tokens_the_last_token_attends_most_in_layer_k_minus_1(deep, family, kind, k):
    """FastV's ranking read from the HF model's own eager attention of the unpruned forward: the head-mean of the
    last row in layer K-1, top half of the visual positions (ties to the earlier one)."""
    model, processor = deep[family]
    inputs = model_inputs(processor, messages_for(kind, seed=7))
    fastv = wrap_model(model, method="fastv", keep_ratio=0.5, fastv_k=k, match="kept")
    fastv.prefill_logits(**inputs)
    kept = fastv.last_selection.kept_positions[0]
    cfg = model.config
    ids = inputs["input_ids"][0]
    visual = torch.nonzero((ids == cfg.image_token_id) | (ids == cfg.video_token_id)).flatten().tolist()
    with torch.no_grad():
        row = model(**inputs, output_attentions=True).attentions[k - 1][0, :, -1].mean(dim=0)
    top = sorted(visual, key=lambda i: (-float(row[i]), i))[:keep_count(len(visual), 0.5)]
    assert kept[torch.isin(kept, torch.tensor(visual))].tolist() == sorted(top)


def test_fastv_generate_decodes_with_short_cache(deep):
    model, processor = deep["qwen2_vl"]
    inputs = model_inputs(processor, messages_for("image"))
    fastv = wrap_model(model, method="fastv", keep_ratio=0.5, fastv_k=1, match="kept")
    out = fastv.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4
    stats = fastv.last_stats
    assert stats["visual_after"] < stats["visual_before"]
    # the record's costs: layer 0 (K=1) holds every token, layers 1-3 the kept ones
    cfg = fastv.adapter.language_model.config
    assert stats["fastv_k"] == 1 and stats["llm_shape"]["layers"] == cfg.num_hidden_layers == 4
    before, after = stats["visual_before"], stats["visual_after"]
    assert stats["avg_retention"] == pytest.approx((before + 3 * after) / (4 * before))
    per_token_layer = 2 * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4  # fp32
    assert stats["kv_cache_bytes"] == stats["seq_before"] * per_token_layer + 3 * stats["seq_after"] * per_token_layer
    assert stats["visual_kv_cache_bytes"] == (before + 3 * after) * per_token_layer
    kept = set(fastv.last_selection.kept_positions[0].tolist())
    dropped = torch.tensor([i for i in range(inputs["input_ids"].shape[1]) if i not in kept])
    lm = fastv.adapter.language_model
    with hidden_key_columns(lm, from_layer(lm, 1, dropped)), torch.no_grad():
        reference = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, reference)  # decoding over the shortened cache == full cache with columns hidden


def against_hidden_columns(model, inputs: dict, method: str) -> tuple[torch.Tensor, ...]:
    """``method`` at 50% with K=1: its prefill's last-row logits and five greedy tokens decoded over the shortened
    cache, then the same of the unpruned model with the dropped columns hidden from layer K on (its full cache)."""
    pruned = wrap_model(model, method=method, keep_ratio=0.5, fastv_k=1, match="kept")
    logits = pruned.prefill_logits(**inputs)[0, -1]
    out = pruned.generate(**inputs, max_new_tokens=5, do_sample=False)
    kept = set(pruned.last_selection.kept_positions[0].tolist())
    dropped = torch.tensor([i for i in range(inputs["input_ids"].shape[1]) if i not in kept])
    assert dropped.numel() > 0 and out.shape[1] > inputs["input_ids"].shape[1] + 1
    lm = pruned.adapter.language_model
    with hidden_key_columns(lm, from_layer(lm, 1, dropped)), torch.no_grad():
        reference_logits = model(**inputs).logits[0, -1]
        reference = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    return logits, out, reference_logits, reference


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ("fastv", "dart"))
@pytest.mark.parametrize("kind", ("image", "video"))
def test_decoding_over_the_short_cache_equals_hidden_columns(deep, family, method, kind):
    """Every family, FastV and DART, image and video: the prefill and five tokens decoded over the shortened cache
    equal the unpruned model's with the dropped columns hidden from layer K on."""
    model, processor = deep[family]
    logits, out, reference_logits, reference = against_hidden_columns(
        model, model_inputs(processor, messages_for(kind, seed=4)), method)
    assert (logits - reference_logits).abs().max().item() < 1e-4 and torch.equal(out, reference)


@pytest.fixture(scope="module")
def eager_vila(tiny_vila_path):
    from tcc_eval.api import load_hf_model

    return load_hf_model(str(tiny_vila_path), torch.device("cpu"), torch.float32, attn="eager")


@pytest.mark.parametrize("method", ("fastv", "dart"))
@pytest.mark.parametrize("kind", ("image", "video"))
def test_vila_pruned_inside_the_llm_equals_hidden_columns(eager_vila, method, kind):
    """VILA1.5 (2 LLM layers, K=1): the prefill and five decoded tokens equal the unpruned model with the dropped
    columns hidden from layer K on; keeping everything is the vanilla model."""
    model, processor = eager_vila
    media = ({"type": "image", "image": random_image(50, 70, 4)} if kind == "image" else
             {"type": "video", "video": [random_image(56, 56, 4 + i) for i in range(3)]})
    inputs = dict(processor.apply_chat_template([{"role": "user", "content": [
        media, {"type": "text", "text": "What color is the circle?"}]}], tokenize=True, return_dict=True))
    with torch.no_grad():
        vanilla = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        vanilla_logits = model(**inputs).logits[0, -1]
    keep_all = wrap_model(model, method=method, keep_ratio=1.0, fastv_k=1)
    assert torch.equal(keep_all.generate(**inputs, max_new_tokens=5, do_sample=False), vanilla)
    logits, out, reference_logits, reference = against_hidden_columns(model, inputs, method)
    assert (logits - reference_logits).abs().max().item() < 1e-4 and torch.equal(out, reference)
    assert (logits - vanilla_logits).abs().max().item() > 1e-6  # the pruning changed the run


def brute_force_dart(keys, states, visual, text, k, image_pivots=4, text_pivots=4):
    """DART's rule read literally, in float64 Python loops: the kept visual positions in pick order."""
    norms = {i: float(keys[0, :, i].double().abs().sum()) for i in range(visual.numel())}
    by_norm = lambda idx: sorted(idx, key=lambda i: (-norms[i], i))  # noqa: E731
    visual_idx = [i for i in range(visual.numel()) if visual[i]]
    image = by_norm(visual_idx)[:min(image_pivots, k)]
    pivots = image + by_norm([i for i in range(text.numel()) if text[i]])[:text_pivots]
    unit = torch.nn.functional.normalize(states.double(), dim=-1)
    picked, rest = list(image), k - len(image)
    for n, pivot in enumerate(pivots):
        quota = rest // len(pivots) + (1 if n < rest % len(pivots) else 0)
        free = [i for i in visual_idx if i not in picked]
        picked += sorted(free, key=lambda i: (float(unit[i] @ unit[pivot]), i))[:quota]
    return picked


@pytest.mark.parametrize("k", (1, 3, 4, 9, 20, 37, 40))
def test_dart_scores_equal_a_brute_force_reading(k):
    generator = torch.Generator().manual_seed(k)
    length, n_visual = 60, 40
    keys = torch.randn(1, 2, length, 8, generator=generator)
    states = torch.randn(length, 16, generator=generator)
    visual = torch.zeros(length, dtype=torch.bool)
    visual[10:10 + n_visual] = True
    text = torch.zeros(length, dtype=torch.bool)
    text[10 + n_visual:] = True
    scores = dart_scores(keys, states, visual, text, k)
    visual_positions = torch.nonzero(visual).flatten()
    expected = brute_force_dart(keys, states, visual, text, k)
    assert len(expected) == k == len(set(expected))
    order = visual_positions[torch.sort(scores, descending=True, stable=True).indices[:k]].tolist()
    assert order == expected  # the same tokens in the same pick order: the shared top-k keeps exactly these
    assert (scores > 0).sum() == k


def test_dart_keeps_its_image_pivots_and_drops_their_duplicates():
    """Visual tokens 0-3 have the largest keys (the image pivots); tokens 4-11 copy pivot 0's state, 12-19 are
    unlike every pivot: at k = 12 DART keeps the pivots and the 8 unlike tokens, none of the copies."""
    length = 24
    keys = torch.ones(1, 1, length, 4)
    keys[0, 0, :4] = 10.0
    states = torch.zeros(length, 8)
    states[:4, 0] = 1.0
    states[4:12, 0] = 1.0
    states[12:20, 1] = 1.0
    states[20:, 0] = 1.0  # text tokens (their pivots) also look like pivot 0
    visual = torch.zeros(length, dtype=torch.bool)
    visual[:20] = True
    scores = dart_scores(keys, states, visual, ~visual, 12)
    kept = sorted(torch.sort(scores, descending=True, stable=True).indices[:12].tolist())
    assert kept == [0, 1, 2, 3, *range(12, 20)]


@pytest.mark.parametrize("family", FAMILIES)
def test_dart_selection_uses_layer_k_minus_1_keys_and_output(deep, family):
    """The kept tokens equal DART's rule applied to layer K-1's keys as its KV cache holds them and to its
    output hidden states (the model's own hidden_states), normed by the decoder's final norm."""
    model, processor = deep[family]
    inputs = model_inputs(processor, messages_for("image", seed=5))
    dart = wrap_model(model, method="dart", keep_ratio=0.5, fastv_k=2, match="kept")
    dart.prefill_logits(**inputs)
    kept = dart.last_selection.kept_positions[0]
    llm = dart.adapter.capture_llm_inputs(inputs)
    with torch.no_grad():
        out = dart.adapter.forward_from_embeds(llm.inputs_embeds, llm.attention_mask, llm.position_ids,
                                               use_cache=True, output_hidden_states=True)
        keys = out.past_key_values.layers[1].keys
        states = dart.adapter.language_model.norm(out.hidden_states[2])[0]
    visual = llm.visual_mask[0]
    text = torch.zeros_like(visual)
    text[int(torch.nonzero(visual).max()) + 1:] = True
    k = keep_count(int(visual.sum()), 0.5)
    scores = dart_scores(keys, states, visual, text, k)
    expected = torch.nonzero(visual).flatten()[torch.sort(scores, descending=True, stable=True).indices[:k]]
    assert kept[visual[kept]].tolist() == sorted(expected.tolist())
    assert kept[~visual[kept]].tolist() == torch.nonzero(~visual).flatten().tolist()


def pdrop_prefill(model, inputs: dict, **options):
    """One PyramidDrop prefill of the first sample, its pruner kept for its stages: (wrapper, view, pruner, logits
    of the last position)."""
    pdrop = wrap_model(model, method="pdrop", **options)
    view = pdrop.sample_view(pdrop.adapter.capture_llm_inputs(inputs), 0)
    pruner = pdrop.pruner(view)
    try:
        with torch.no_grad():
            logits = pdrop.adapter.forward_from_embeds(view.inputs_embeds, view.attention_mask,
                                                       view.position_ids).logits[0, -1]
    finally:
        pruner.close()
    return pdrop, view, pruner, logits


def stage_hidden_columns(pruner, length: int, layers: int,
                         device: torch.device | str = "cpu") -> dict[int, torch.Tensor]:
    """The masked reference of a PyramidDrop prefill: every layer from the first stage on hides the positions its
    stage (the last stage layer at or below it) dropped."""
    out = {}
    for layer in range(pruner.stage_layers[0], layers):
        stage = sum(layer >= start for start in pruner.stage_layers)
        kept = set(pruner.stage_kept[stage - 1].tolist())
        out[layer] = torch.tensor([i for i in range(length) if i not in kept], dtype=torch.long, device=device)
    return out


def check_pdrop_stages(model, processor, kind: str, stage_layers: tuple[int, ...], **options) -> None:
    """PyramidDrop with lambda = 0.5 on a 4-layer LLM, stages starting at ``stage_layers``: the logits and the
    decode equal the full sequence with each layer hiding the tokens its stage dropped; each stage keeps the
    visual tokens its first layer's last row attends to most (the model's own eager attention over the previous
    stage's tokens), and it records per-stage costs."""
    inputs = model_inputs(processor, messages_for(kind, seed=5))
    pdrop, view, pruner, logits = pdrop_prefill(model, inputs, keep_ratio=0.5, match="kept", **options)
    length, visual = view.visual.numel(), view.visual
    n_visual = int(visual.sum())
    stages = range(1, len(stage_layers) + 1)
    assert pruner.stage_layers == stage_layers
    assert [int(visual[k].sum()) for k in pruner.stage_kept] == [keep_count(n_visual, 0.5 ** s) for s in stages]
    assert all(set(later.tolist()) < set(earlier.tolist())
               for earlier, later in zip(pruner.stage_kept, pruner.stage_kept[1:]))
    lm = pdrop.adapter.language_model

    def dropped(kept: torch.Tensor) -> torch.Tensor:
        return torch.tensor(sorted(set(range(length)) - set(kept.tolist())), dtype=torch.long)

    layer_masks = stage_hidden_columns(pruner, length, 4)
    with hidden_key_columns(lm, layer_masks), torch.no_grad():
        reference = pdrop.adapter.forward_from_embeds(view.inputs_embeds, view.attention_mask,
                                                      view.position_ids).logits[0, -1]
        reference_tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert (logits - reference).abs().max().item() < 1e-4
    assert torch.equal(pdrop.generate(**inputs, max_new_tokens=4, do_sample=False), reference_tokens)
    stats = pdrop.last_stats
    stage_counts = [n_visual] + [keep_count(n_visual, 0.5 ** s) for s in stages]
    per_layer = [stage_counts[sum(layer >= start for start in stage_layers)] for layer in range(4)]
    assert stats["visual_after"] == stage_counts[-1] and stats["pdrop_lambda"] == 0.5
    assert stats["pdrop_layers"] == list(stage_layers)
    assert stats["avg_retention"] == pytest.approx(sum(per_layer) / (4 * n_visual))
    cfg = lm.config
    per_token_layer = 2 * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4  # fp32
    assert stats["kv_cache_bytes"] == sum((length - n_visual + c) * per_token_layer for c in per_layer)
    for stage, layer in enumerate(stage_layers):
        previous = pruner.stage_kept[stage - 1] if stage else torch.arange(length)
        before_ranking = {**{l: m for l, m in layer_masks.items() if l < layer}, layer: dropped(previous)}
        with hidden_key_columns(lm, before_ranking), torch.no_grad():
            attentions = pdrop.adapter.forward_from_embeds(view.inputs_embeds, view.attention_mask,
                                                           view.position_ids, output_attentions=True).attentions
        row = attentions[layer][0, :, -1].mean(dim=0)
        candidates = [i for i in previous.tolist() if visual[i]]
        ranked = sorted(candidates, key=lambda i: (-float(row[i]), i))[:stage_counts[stage + 1]]
        kept = pruner.stage_kept[stage]
        assert kept[visual[kept]].tolist() == sorted(ranked), stage


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ("image", "video"))
def test_pdrop_equals_masking_each_stage_and_ranks_by_that_layers_attention(deep, family, kind):
    """PyramidDrop's own stages on a 4-layer LLM start at layers 1, 2, 3 (lambda = 0.5 keeps 1/2, 1/4, 1/8)."""
    check_pdrop_stages(*deep[family], kind, (1, 2, 3))


@pytest.mark.parametrize(("family", "kind", "pdrop_layers", "stage_layers"), [
    ("qwen2_vl", "image", [1, 3], (1, 3)),  # two pruned stages; layer 2 runs on stage 1's tokens
    ("qwen2_vl", "video", "2", (2,)),  # one stage, given as the framework option string
    ("llava_onevision", "image", "1/2/3", (1, 2, 3)),
])
def test_pdrop_stage_layers_option(deep, family, kind, pdrop_layers, stage_layers):
    """``pdrop_layers`` (PyramidDrop's layer_list) moves the stages; the same exactness holds for any of them."""
    check_pdrop_stages(*deep[family], kind, stage_layers, pdrop_layers=pdrop_layers)


def test_pdrop_keep_all_equals_vanilla_and_its_stage_ratio(deep):
    """Keeping 100% is the unwrapped model; the average retention asked for sets lambda, below the floor of 1/4
    it is refused with the fix named."""
    from tcc_eval.flops import pyramid_average_retention, pyramid_stage_layers

    model, processor = deep["qwen2_vl"]
    inputs = model_inputs(processor, messages_for("image"))
    with torch.no_grad():
        vanilla = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(wrap_model(model, method="pdrop", keep_ratio=1.0).generate(**inputs, max_new_tokens=4,
                                                                                  do_sample=False), vanilla)
    pdrop = wrap_model(model, method="pdrop", keep_ratio=0.5)
    assert pyramid_average_retention(pdrop.layer_keep_ratio, 4) == pytest.approx(0.5, abs=1e-12)
    assert pyramid_average_retention(0.5, 4) == (1 + 0.5 + 0.25 + 0.125) / 4
    with pytest.raises(ValueError, match="floor 1/4.*match='kept'"):
        wrap_model(model, method="pdrop", keep_ratio=0.25)
    with pytest.raises(ValueError, match="at least 4 LLM layers"):
        pyramid_stage_layers(2)
    # stages at layers 1 and 3: average retention (1 + 2 lambda + lambda^2) / 4 = 1/2 at lambda = sqrt(2) - 1
    two_stages = wrap_model(model, method="pdrop", keep_ratio=0.5, pdrop_layers=[1, 3])
    assert two_stages.stage_layers == (1, 3) and two_stages.layer_keep_ratio == pytest.approx(2 ** 0.5 - 1)
    for bad in ([0, 2], [1, 4], [2, 2], [3, 1], [1.0], "1/x", ""):
        with pytest.raises(ValueError, match=r"increasing integer layer indices in 1\.\.3 .*e\.g\. \[1, 2, 3\]"):
            wrap_model(model, method="pdrop", keep_ratio=0.5, pdrop_layers=bad)


def test_pdrop_earlier_stages_lower_its_floor():
    """On a 28-layer LLM PyramidDrop's own stages (7, 14, 21) cannot reach 25% average retention; the refusal
    names earlier stages, and with them lambda solves (2 + 12 l + 7 l^2 + 7 l^3) / 28 = 1/4."""
    from tcc_eval.flops import flops_ratio, pyramid_stage_ratio, pyramid_visual_counts, visual_flops

    with pytest.raises(ValueError, match=r"floor 7/28.*pdrop_layers, e\.g\. \[2, 14, 21\]"):
        pyramid_stage_ratio(0.25, 28)
    stage_ratio = pyramid_stage_ratio(0.25, 28, "2/14/21")
    assert (2 + 12 * stage_ratio + 7 * stage_ratio ** 2 + 7 * stage_ratio ** 3) / 28 == pytest.approx(0.25, abs=1e-12)
    counts = pyramid_visual_counts(1000, stage_ratio, 28, [2, 14, 21])
    expected = [1000] * 2 + [keep_count(1000, stage_ratio ** s) for s, span in ((1, 12), (2, 7), (3, 7))
                             for _ in range(span)]
    assert counts == expected
    full = visual_flops(1000, 3584, 18944, 28)
    assert flops_ratio(1000, stage_ratio, "qwen2-vl-7b", "pdrop", pdrop_layers=(2, 14, 21)) == pytest.approx(
        sum(visual_flops(n, 3584, 18944, 1) for n in expected) / full)


@pytest.mark.parametrize("method", ("fastv", "dart", "pdrop"))
def test_inside_llm_generate_options(deep, method):
    """max_length counts the full prompt; beams or several returned sequences, which would run several rows
    through a ranking made for one, are refused with the fix."""
    model, processor = deep["qwen2_vl"]
    inputs = model_inputs(processor, messages_for("image", seed=5))
    length = inputs["input_ids"].shape[1]
    options = {} if method == "pdrop" else {"fastv_k": 1}
    pruned = wrap_model(model, method=method, keep_ratio=0.5, match="kept", **options)
    out = pruned.generate(**inputs, max_length=length + 3, min_length=length + 3, do_sample=False)
    assert out.shape[1] == length + 3 and pruned.last_stats["visual_after"] < pruned.last_stats["visual_before"]
    with pytest.raises(ValueError, match="num_beams > 1 .*generate with num_beams=1"):
        pruned.generate(**inputs, max_new_tokens=3, num_beams=2)
    with pytest.raises(ValueError, match="num_return_sequences > 1 .*num_return_sequences=1"):
        pruned.generate(**inputs, max_new_tokens=3, do_sample=True, num_return_sequences=2)


def test_inside_llm_batch_pads_finished_answers_like_hf(loaded):
    """Samples run one by one inside the LLM; a batch's shorter answers are padded as HF pads them: with the
    pad token, else the eos token (never a 0 that decodes as text)."""
    from conftest import left_padded_image_batch

    model, processor = loaded["qwen2_vl"]
    batch, _, _ = left_padded_image_batch(processor)
    fastv = wrap_model(model, method="fastv", keep_ratio=1.0, fastv_k=1)
    first = fastv.generate(**batch, max_new_tokens=4, do_sample=False)[:, batch["input_ids"].shape[1]:]
    stop = int(first[0, 0])  # made the eos token below, so sample 0 ends after one token
    assert stop != 0 and stop not in first[1].tolist(), first
    config = model.generation_config
    saved = config.pad_token_id, config.eos_token_id
    try:
        config.pad_token_id, config.eos_token_id = None, stop
        with torch.no_grad():
            vanilla = model.generate(**batch, max_new_tokens=4, do_sample=False)
        out = fastv.generate(**batch, max_new_tokens=4, do_sample=False)
        assert out[0, batch["input_ids"].shape[1]:].tolist() == [stop] * 4  # its eos, then eos as padding
        assert torch.equal(out, vanilla)
        config.pad_token_id = 7
        assert fastv.generate(**batch, max_new_tokens=4, do_sample=False)[0, -3:].tolist() == [7] * 3
    finally:
        config.pad_token_id, config.eos_token_id = saved


def test_inside_llm_batch_times_every_samples_prefill(loaded, monkeypatch):
    """A batch runs one prefill per sample (FastV, DART and PyramidDrop share this loop); prefill_s is the sum
    of those prefills, not sample 0's alone."""
    from conftest import left_padded_image_batch

    from tcc_eval import fastv as fastv_module

    timers = []

    class RecordingTimer(fastv_module.PrefillTimer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            timers.append(self)

    monkeypatch.setattr(fastv_module, "PrefillTimer", RecordingTimer)
    model, processor = loaded["qwen2_vl"]
    batch, _, _ = left_padded_image_batch(processor)
    pruned = wrap_model(model, method="fastv", keep_ratio=0.5, fastv_k=1, match="kept")
    pruned.generate(**batch, max_new_tokens=2, do_sample=False)
    assert len(timers) == 2 and all(timer.seconds > 0 for timer in timers)
    assert pruned.last_stats["prefill_s"] == pytest.approx(sum(timer.seconds for timer in timers))


def test_timers_wait_for_every_device_the_model_sits_on(loaded, monkeypatch):
    """A model split over GPUs (device_map="auto") runs its last layers on another GPU than the input's: every
    timing point waits for each device the model's weights are on, not for the input's alone. On a CPU a second
    CUDA device is stood in for by the device list and a recording synchronize."""
    from tcc_eval import core
    from tcc_eval import fastv as fastv_module
    from tcc_eval import pruned as pruned_module

    model, processor = loaded["qwen2_vl"]
    assert core.module_devices(model, torch.device("cpu")) == (torch.device("cpu"),)
    assert core.module_devices(model, torch.device("meta")) == (torch.device("meta"), torch.device("cpu"))
    second_gpu = torch.device("cuda", 1)
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", synced.append)
    for module in (pruned_module, fastv_module):
        monkeypatch.setattr(module, "module_devices", lambda model, *extra: (*extra, second_gpu))
    inputs = model_inputs(processor, messages_for("image"))
    for method, options in (("a0", {}), ("fastv", {"fastv_k": 1, "match": "kept"})):
        synced.clear()
        wrap_model(model, method=method, keep_ratio=0.5, **options).generate(**inputs, max_new_tokens=1,
                                                                              do_sample=False)
        # before the tower, after it, (a0: after the selection,) around the prefill, at the end
        assert synced == [second_gpu] * (6 if method == "a0" else 5), (method, synced)


def test_records_time_the_selection_and_count_the_samples_flops(loaded):
    """Each call's record splits the vision tower from the method's own selection step, and its visual FLOPs
    equal the theoretical formula for that sample: input-stage pruning (a0) selects before the LLM, FastV
    ranks inside it (select_s 0, its first K layers at full length)."""
    from tcc_eval.flops import flops_ratio, shape_from_config

    model, processor = loaded["qwen2_vl"]
    inputs = model_inputs(processor, messages_for("image"))
    shape = shape_from_config(model.config.get_text_config())
    for method, options, kind in (("a0", {}, "tcc"), ("fastv", {"fastv_k": 1, "match": "kept"}, "fastv")):
        pruned = wrap_model(model, method=method, keep_ratio=0.5, **options)
        pruned.generate(**inputs, max_new_tokens=1, do_sample=False)
        stats = pruned.last_stats
        assert stats["vision_s"] > 0 and (stats["select_s"] > 0) == (method == "a0"), stats
        expected = flops_ratio(stats["visual_before"], 0.5, shape, kind, fastv_k=1)
        assert stats["visual_flops"] / stats["visual_flops_full"] == pytest.approx(expected, rel=1e-12)
