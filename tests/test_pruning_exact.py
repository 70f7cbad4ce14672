"""The pruning core is exact: keep-all == vanilla, pruned == unpruned with dropped tokens masked."""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES, QWEN_FAMILIES, left_padded_image_batch, messages_for, model_inputs, random_image
from tcc_eval import wrap_model
from tcc_eval.core import keep_count, select_visual
from tcc_eval.probe import attention_rows

KINDS = ("image", "multi_image", "video", "image_and_video")


def original_positions(model, family: str, inputs: dict) -> torch.Tensor:
    """Reference position ids computed directly from the model (independent of our capture)."""
    mask = inputs["attention_mask"]
    if family in QWEN_FAMILIES:
        timing = {"second_per_grid_ts": inputs.get("second_per_grid_ts")} if family == "qwen2_5_vl" else {}
        pos, _ = model.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"), attention_mask=mask, **timing,
        )
        return pos
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", KINDS)
def test_keep_all_equals_vanilla(loaded, family, kind):
    model, processor = loaded[family]
    inputs = model_inputs(processor, messages_for(kind))
    with torch.no_grad():
        vanilla_logits = model(**inputs).logits
        vanilla_tokens = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    for method in ("none", "random"):
        pruned = wrap_model(model, method=method, keep_ratio=1.0)
        logits = pruned.prefill_logits(**inputs)
        assert logits.shape == vanilla_logits.shape
        assert (logits - vanilla_logits).abs().max().item() == 0.0
        tokens = pruned.generate(**inputs, max_new_tokens=6, do_sample=False)
        assert torch.equal(tokens, vanilla_tokens)
        sel = pruned.last_selection
        assert sel.visual_before == sel.visual_after and sel.visual_before[0] > 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ("image", "video", "image_and_video"))
@pytest.mark.parametrize("ratio", (0.5, 0.25))
@pytest.mark.parametrize("method", ("random", "a0", "divprune", "uniform"))
def test_pruned_equals_masked_reference(loaded, family, kind, ratio, method):
    model, processor = loaded[family]
    inputs = model_inputs(processor, messages_for(kind, seed=3))
    pruned = wrap_model(model, method=method, keep_ratio=ratio)
    logits = pruned.prefill_logits(**inputs)[0]
    sel = pruned.last_selection
    n_visual = sel.visual_before[0]
    assert sel.visual_after[0] == max(1, int(ratio * n_visual + 0.5))
    kept = sel.kept_positions[0]
    masked = torch.zeros_like(inputs["attention_mask"])
    masked[0, kept] = 1
    with torch.no_grad():
        positions = original_positions(model, family, inputs)
        reference = model(**inputs | {"attention_mask": masked, "position_ids": positions}).logits[0]
    diff = (logits - reference[kept]).abs().max().item()
    assert diff < 1e-4, diff
    # the text after the image always survives; only visual tokens are dropped
    assert sel.seq_before[0] - sel.seq_after[0] == n_visual - sel.visual_after[0]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ("image", "video"))
def test_pruned_generation_equals_the_masked_model_token_by_token(loaded, family, kind):
    """Decoding after pruning: each new token continues after the full prompt's last position (as in the unpruned
    run), over the shorter cache; equal to the unpruned model with the dropped tokens masked out, run without a
    cache, for several tokens."""
    from conftest import masked_greedy_tokens

    model, processor = loaded[family]
    inputs = model_inputs(processor, messages_for(kind, seed=3))
    pruned = wrap_model(model, method="random", keep_ratio=0.5)
    new = pruned.generate(**inputs, max_new_tokens=5, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    reference = masked_greedy_tokens(model, inputs, pruned.last_selection.kept_positions[0],
                                     original_positions(model, family, inputs), len(new))
    assert len(new) > 1 and new == reference


def test_decoding_after_a_long_qwen_video_counts_on_from_the_last_position(loaded):
    """transformers 5 places the text after a Qwen2-VL video of more temporal than spatial ids below the video's
    largest id, and its generate counts on from the prompt's last position, not from the largest: the pruned run
    decodes at the same positions, and equals the masked reference that does so."""
    from conftest import masked_greedy_tokens

    model, processor = loaded["qwen2_vl"]
    inputs = model_inputs(processor, messages_for("long_video", seed=3))
    positions = original_positions(model, "qwen2_vl", inputs)
    last = int(positions[0, 0, -1])
    assert last < int(positions.max())  # the case itself
    decoded = []
    hook = model.model.language_model.rotary_emb.register_forward_hook(
        lambda module, args, output: decoded.append(args[1][:, 0, -1].tolist()))
    try:
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=4, do_sample=False)
        vanilla, decoded[:] = decoded[1:], []
        pruned = wrap_model(model, method="random", keep_ratio=0.5)
        new = pruned.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    finally:
        hook.remove()
    assert vanilla == decoded[1:] == [[last + step] * 3 for step in (1, 2, 3)]
    assert new.tolist() == masked_greedy_tokens(model, inputs, pruned.last_selection.kept_positions[0], positions,
                                                new.numel())


def test_a_prompt_ending_in_a_pruned_visual_token_is_refused(loaded):
    """generate continues from the last kept token's position: if the prompt's last token is a visual one and it
    is dropped, the answer would start at a dropped token's position. Refused under original positions; kept, or
    renumbered, it runs."""
    from conftest import random_image

    model, processor = loaded["llava_onevision"]
    inputs = {k: v for k, v in processor(text=["What is it? <image>"], images=[random_image(56, 56, 0)],
                                         return_tensors="pt").items() if isinstance(v, torch.Tensor)}
    pruned = wrap_model(model, method="random", keep_ratio=0.5)
    assert pruned.adapter.visual_mask(inputs["input_ids"])[0, -1]
    pruned.scorer = lambda view: torch.arange(view.n_visual, 0, -1).float()  # the last visual token ranks lowest
    with pytest.raises(ValueError, match="ends with an image or video token that was pruned"):
        pruned.generate(**inputs, max_new_tokens=2, do_sample=False)
    pruned.scorer = lambda view: torch.arange(view.n_visual).float()  # ranks highest: kept
    new = pruned.generate(**inputs, max_new_tokens=4, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    from conftest import masked_greedy_tokens

    reference = masked_greedy_tokens(model, inputs, pruned.last_selection.kept_positions[0],
                                     original_positions(model, "llava_onevision", inputs), len(new))
    assert new == reference
    renumbered = wrap_model(model, method="random", keep_ratio=0.5, positions="renumber")
    renumbered.scorer = lambda view: torch.arange(view.n_visual, 0, -1).float()
    out = renumbered.generate(**inputs, max_new_tokens=2, do_sample=False)
    last = inputs["input_ids"].shape[1] - 1
    assert out.shape[1] == last + 3 and last not in renumbered.last_selection.kept_positions[0].tolist()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", KINDS)
def test_generate_feeds_the_llm_every_processor_output(loaded, family, kind, monkeypatch):
    """generate() takes processor outputs and generation options in one call: every processor output must reach
    the front end (Qwen2.5-VL's second_per_grid_ts moves its video position ids), so the prefill gets the model's
    own position ids, and only generation options reach ``generate``."""
    model, processor = loaded[family]
    inputs = model_inputs(processor, messages_for(kind, seed=3))
    pruned = wrap_model(model, method="none")
    seen = {}

    def recording(embeds, mask, positions, prompt_ids, **gen_kwargs):
        seen.update(positions=positions, prompt_ids=prompt_ids, gen_kwargs=gen_kwargs)
        return torch.zeros(1, 0, dtype=torch.long)

    monkeypatch.setattr(pruned.adapter, "generate_from_embeds", recording)
    pruned.generate(**inputs, max_new_tokens=2)
    assert set(seen["gen_kwargs"]) == {"max_new_tokens"}
    assert torch.equal(seen["positions"], original_positions(model, family, inputs))
    assert torch.equal(seen["prompt_ids"], inputs["input_ids"])


@pytest.fixture(scope="module")
def one_d_models(loaded, tiny_vila_path):
    """The families with 1-D position ids, where positions='renumber' applies."""
    from tcc_eval.api import load_hf_model

    vila = load_hf_model(str(tiny_vila_path), torch.device("cpu"), torch.float32, attn="eager")
    return {"llava_onevision": loaded["llava_onevision"], "vila": vila}


@pytest.mark.parametrize("family", ("llava_onevision", "vila"))
@pytest.mark.parametrize("kind", ("image", "video"))
def test_renumbered_run_equals_a_prompt_of_the_kept_tokens_alone(one_d_models, family, kind):
    """positions='renumber': logits and greedy tokens equal the HF model fed only the kept tokens' embeddings,
    positions left to the model; keep-all equals vanilla exactly; at 50% the ids, and so the logits, change."""
    model, processor = one_d_models[family]
    inputs = model_inputs(processor, messages_for(kind, seed=3))
    pruned = wrap_model(model, method="a0", keep_ratio=0.5, positions="renumber")
    logits = pruned.prefill_logits(**inputs)[0]
    tokens = pruned.generate(**inputs, max_new_tokens=5, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    kept = pruned.last_selection.kept_positions[0]
    embeds = pruned.adapter.capture_llm_inputs(inputs).inputs_embeds[:, kept]  # the vanilla LLM input, kept rows
    mask = torch.ones(1, kept.numel(), dtype=torch.long)
    with torch.no_grad():
        reference = model(inputs_embeds=embeds, attention_mask=mask).logits[0]
        reference_tokens = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=5,
                                          do_sample=False)[0]
    assert (logits - reference).abs().max().item() < 1e-5
    assert torch.equal(tokens, reference_tokens)
    assert pruned.last_stats["positions"] == "renumber"
    original = wrap_model(model, method="a0", keep_ratio=0.5).prefill_logits(**inputs)[0]
    assert (original - logits).abs().max().item() > 1e-3
    keep_all = wrap_model(model, method="a0", keep_ratio=1.0, positions="renumber")
    with torch.no_grad():
        assert torch.equal(keep_all.prefill_logits(**inputs), model(**inputs).logits)


@pytest.mark.parametrize("family, method, message", [
    ("qwen2_vl", "a0", "M-RoPE ids place each visual token"),
    ("qwen2_5_vl", "tcc", "M-RoPE ids place each visual token"),
    ("llava_onevision", "fastv", "fastv prunes inside it"),
    ("llava_onevision", "pdrop", "pdrop prunes inside it"),
])
def test_renumbering_is_refused_where_it_has_no_meaning(loaded, family, method, message):
    with pytest.raises(ValueError, match=message):
        wrap_model(loaded[family][0], method=method, keep_ratio=0.5, positions="renumber", compressor="unused.pt")
    with pytest.raises(ValueError, match="must be 'original'.*or 'renumber'"):
        wrap_model(loaded["llava_onevision"][0], method="random", keep_ratio=0.5, positions="sequential")


@pytest.mark.parametrize("family, positions", [(family, "original") for family in FAMILIES]
                         + [("llava_onevision", "renumber")])
def test_left_padded_batch_equals_single_runs(loaded, family, positions):
    model, processor = loaded[family]
    batch, prompts, images = left_padded_image_batch(processor)
    assert (batch["attention_mask"] == 0).any(), "samples must differ in length"
    pruned = wrap_model(model, method="a0", keep_ratio=0.5, positions=positions)
    batch_tokens = pruned.generate(**batch, max_new_tokens=5, do_sample=False)
    batch_logits = pruned.prefill_logits(**batch)[:, -1]
    for b, (prompt, image) in enumerate(zip(prompts, images)):
        single = dict(processor(text=[prompt], images=[image], return_tensors="pt"))
        tokens = pruned.generate(**single, max_new_tokens=5, do_sample=False)
        assert torch.equal(tokens[0, single["input_ids"].shape[1]:], batch_tokens[b, batch["input_ids"].shape[1]:])
        logits = pruned.prefill_logits(**single)[0, -1]
        assert (logits - batch_logits[b]).abs().max().item() < 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_records_count_the_prompts_that_reach_past_the_trained_positions(loaded, family, monkeypatch):
    """A sample counts when its highest position id (the model's own: HF's rope index, or its count of real tokens)
    is at least the LLM's max_position_embeddings. With the limit at the longer prompt's reach, a left-padded
    batch of two counts one: keep-all, pruned with the original ids, and FastV (which runs the whole prompt)."""
    model, processor = loaded[family]
    batch, _, _ = left_padded_image_batch(processor)
    ids, mask = original_positions(model, family, batch), batch["attention_mask"].bool()
    reach = [int((ids if ids.dim() == 3 else ids.unsqueeze(0))[:, b, mask[b]].max()) for b in range(2)]
    assert reach[0] != reach[1]
    config = wrap_model(model, method="random", keep_ratio=1.0).adapter.language_model.config
    monkeypatch.setattr(config, "max_position_embeddings", max(reach))
    for method, ratio, options in (("random", 1.0, {}), ("a0", 0.5, {}), ("fastv", 0.75, {"fastv_k": 1})):
        pruned = wrap_model(model, method=method, keep_ratio=ratio, **options)
        pruned.generate(**batch, max_new_tokens=2, do_sample=False)
        assert (pruned.last_stats["samples_beyond_context"], pruned.last_stats["context_length"]) == (1, max(reach))
    monkeypatch.setattr(config, "max_position_embeddings", max(reach) + 1)
    pruned.generate(**batch, max_new_tokens=2, do_sample=False)
    assert pruned.last_stats["samples_beyond_context"] == 0
    if family == "llava_onevision":  # renumbered, the pruned prompts stay inside the range the full ones leave
        monkeypatch.setattr(config, "max_position_embeddings", max(reach))
        renumbered = wrap_model(model, method="a0", keep_ratio=0.5, positions="renumber")
        renumbered.generate(**batch, max_new_tokens=2, do_sample=False)
        assert renumbered.last_stats["samples_beyond_context"] == 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ("image", "video"))
def test_layer0_probe_equals_eager_attention(loaded, family, kind):
    model, processor = loaded[family]
    inputs = model_inputs(processor, messages_for(kind))
    pruned = wrap_model(model, method="none")
    llm = pruned.adapter.capture_llm_inputs(inputs)
    lm = pruned.adapter.language_model
    with torch.no_grad():
        eager = lm(inputs_embeds=llm.inputs_embeds, attention_mask=llm.attention_mask,
                   position_ids=llm.position_ids, output_attentions=True).attentions[0][0]
        rows = torch.arange(llm.inputs_embeds.shape[1] - 8, llm.inputs_embeds.shape[1])
        probe = attention_rows(lm, llm.inputs_embeds, llm.position_ids, llm.attention_mask, rows)
    assert (probe - eager[:, rows]).abs().max().item() < 1e-6


def test_sliding_window_layers_probe_exactly_and_refuse_pruning(loaded):
    """A layer-0 sliding window (Qwen2's use_sliding_window, max_window_layers=0): the probe masks it as eager
    attention does, and pruning, whose shorter sequence would move tokens across windows, is refused by name."""
    import copy

    model, processor = loaded["qwen2_vl"]
    config = copy.deepcopy(model.config)
    config.text_config.use_sliding_window, config.text_config.sliding_window = True, 16
    config.text_config.max_window_layers = 0
    config.text_config.layer_types = ["sliding_attention"] * config.text_config.num_hidden_layers
    windowed = type(model)(config).eval()
    windowed.load_state_dict(model.state_dict())
    inputs = model_inputs(processor, messages_for("image"))
    llm = wrap_model(windowed, method="none").adapter.capture_llm_inputs(inputs)
    lm = windowed.model.language_model
    assert lm.layers[0].self_attn.sliding_window == 16
    with torch.no_grad():
        eager = lm(inputs_embeds=llm.inputs_embeds, attention_mask=llm.attention_mask,
                   position_ids=llm.position_ids, output_attentions=True).attentions[0][0]
        rows = torch.arange(llm.inputs_embeds.shape[1] - 8, llm.inputs_embeds.shape[1])
        probe = attention_rows(lm, llm.inputs_embeds, llm.position_ids, llm.attention_mask, rows)
    assert bool((eager[:, rows, :rows[0] - 16] == 0).all())  # the window is in force in the reference
    assert (probe - eager[:, rows]).abs().max().item() < 1e-6
    for method in ("a0", "random", "fastv"):
        with pytest.raises(ValueError, match=r"sliding-window attention in layers \[0, .*use_sliding_window=False"):
            wrap_model(windowed, method=method)


@pytest.mark.parametrize("family", FAMILIES)
def test_visual_groups(loaded, family):
    model, processor = loaded[family]
    pruned = wrap_model(model, method="none")
    multi = pruned.adapter.capture_llm_inputs(model_inputs(processor, messages_for("multi_image")))
    assert multi.visual_groups[0].unique().tolist() == [0, 1]
    assert multi.visual_groups[0].numel() == multi.n_visual(0)
    video = pruned.adapter.capture_llm_inputs(model_inputs(processor, messages_for("video")))
    frames = 2 if family in QWEN_FAMILIES else 4  # Qwen2-VL merges frame pairs
    groups = video.visual_groups[0]
    counts = torch.bincount(groups)
    assert counts.numel() == frames and bool((groups[1:] >= groups[:-1]).all())  # frames in order
    if family in QWEN_FAMILIES:
        assert counts.unique().numel() == 1  # equal-size frame-pair groups
    else:  # equal frames, the video's one trailing newline joining the last
        assert counts[:-1].unique().numel() == 1 and counts[-1] == counts[0] + 1


def test_keep_count_rounds_half_up_on_decimal_ratios():
    assert [keep_count(90, 0.25), keep_count(90, 0.35), keep_count(45, 0.7), keep_count(3, 0.5)] == [23, 32, 32, 2]
    assert [keep_count(90, 0.3499), keep_count(10, 0.01), keep_count(0, 0.5)] == [31, 1, 0]


def test_nan_scores_are_refused_not_ranked_first():
    """A descending sort puts NaN first, so an overflowed scorer would keep exactly its broken tokens."""
    scores = torch.tensor([0.1, float("nan"), 0.3, 0.2])
    for budget in ("global", "per_group"):
        with pytest.raises(ValueError, match="1 of 4 visual-token scores are NaN.*bf16 or fp32"):
            select_visual(scores, 0.5, groups=torch.tensor([0, 0, 1, 1]), budget=budget)
    finite = torch.tensor([0.1, float("-inf"), 0.3, float("inf")])
    assert select_visual(finite, 0.5).tolist() == [2, 3]


def test_misspelt_budget_is_refused_without_groups_too():
    """Without ``groups`` the budget does not matter, but a misspelt one would hide until groups are given."""
    with pytest.raises(ValueError, match="budget must be one of global, per_group, got 'per-group'"):
        select_visual(torch.tensor([0.1, 0.2]), 0.5, budget="per-group")


@pytest.mark.parametrize("family", FAMILIES)
def test_two_videos_are_two_frame_runs(loaded, family):
    """LLaVA-OV writes back-to-back videos as one run of <video> tokens: each video's frames and its newline
    must still be found (the run was read as one video, a cell short, and uniform / pool / VisionZip broke)."""
    model, processor = loaded[family]
    pruned = wrap_model(model, method="none")
    one = pruned.adapter.capture_llm_inputs(model_inputs(processor, messages_for("video")))
    two = pruned.adapter.capture_llm_inputs(model_inputs(processor, messages_for("two_videos")))
    assert two.n_visual(0) == 2 * one.n_visual(0)
    one_counts, groups = torch.bincount(one.visual_groups[0]), two.visual_groups[0]
    assert torch.bincount(groups).tolist() == one_counts.tolist() * 2 and bool((groups[1:] >= groups[:-1]).all())
    cells = two.visual_cells[0]
    assert cells.shape[0] == two.n_visual(0)
    assert torch.equal(cells[:one.n_visual(0)], one.visual_cells[0])
    first, second = cells[:one.n_visual(0)], cells[one.n_visual(0):]
    assert torch.equal(second[:, 1:], first[:, 1:])  # the same layout, on grids of its own
    grids = [set(c[c[:, 0] >= 0, 0].tolist()) for c in (first, second)]
    assert grids[0] and grids[1] and grids[0].isdisjoint(grids[1])


def test_llava_video_layout_in_a_batch_of_video_rows(loaded):
    """Every row of a left-padded batch gets its own frames' cells and groups (the second row's used to be read
    with the first row's cell list in place of the frame count)."""
    model, processor = loaded["llava_onevision"]
    rows = [messages_for("video", seed=s) for s in (0, 5)]
    rows[1][0]["content"][-1]["text"] = "Which frame shows the largest shape, and what color is it?"
    prompts = [processor.apply_chat_template(m, add_generation_prompt=True) for m in rows]
    videos = [m[0]["content"][0]["video"] for m in rows]
    processor.tokenizer.padding_side = "left"
    batch = {k: v for k, v in processor(text=prompts, videos=videos, return_tensors="pt", padding=True).items()
             if isinstance(v, torch.Tensor)}
    llm = wrap_model(model, method="none").adapter.capture_llm_inputs(batch)
    single = wrap_model(model, method="none").adapter.capture_llm_inputs(model_inputs(processor, rows[0]))
    for b in range(2):
        assert torch.equal(llm.visual_cells[b], single.visual_cells[0])
        assert torch.equal(llm.visual_groups[b], single.visual_groups[0])


@pytest.mark.parametrize("method", ("uniform", "pool", "visionzip"))
def test_layout_methods_on_two_llava_videos(loaded, method):
    model, processor = loaded["llava_onevision"]
    inputs = model_inputs(processor, messages_for("two_videos"))
    pruned = wrap_model(model, method=method, keep_ratio=0.25)
    pruned.prefill_logits(**inputs)
    n_visual = pruned.adapter.capture_llm_inputs(inputs).n_visual(0)
    assert pruned.last_selection.visual_before == [n_visual]
    assert pruned.last_selection.visual_after == [keep_count(n_visual, 0.25)]


def test_per_group_budget_keeps_fraction_of_each_frame(loaded):
    model, processor = loaded["llava_onevision"]
    inputs = model_inputs(processor, messages_for("video"))
    pruned = wrap_model(model, method="a0", keep_ratio=0.5, budget="per_group")
    pruned.prefill_logits(**inputs)
    llm = pruned.adapter.capture_llm_inputs(inputs)
    kept = pruned.last_selection.kept_positions[0]
    visual_pos = torch.nonzero(llm.visual_mask[0]).flatten()
    kept_visual = torch.isin(visual_pos, kept)
    for g in llm.visual_groups[0].unique():
        members = llm.visual_groups[0] == g
        assert kept_visual[members].sum().item() == max(1, int(0.5 * members.sum().item() + 0.5))


def brute_force_max_min_order(features: torch.Tensor) -> list[int]:
    """DivPrune's greedy, pair by pair in float64: the token farthest from its nearest neighbour, then always
    the token whose nearest picked token is farthest (ties to the lower index)."""
    unit = features.double() / features.double().norm(dim=1, keepdim=True)
    n = unit.shape[0]
    dist = [[1.0 - float(unit[i] @ unit[j]) for j in range(n)] for i in range(n)]
    order = [max(range(n), key=lambda i: (min(dist[i][j] for j in range(n) if j != i), -i))]
    while len(order) < n:
        rest = [i for i in range(n) if i not in order]
        order.append(max(rest, key=lambda i: (min(dist[i][j] for j in order), -i)))
    return order


def test_divprune_order_is_the_greedy_max_min_order():
    from tcc_eval.methods import max_min_diversity_order

    features = torch.randn(24, 16, generator=torch.Generator().manual_seed(0))
    assert max_min_diversity_order(features).tolist() == brute_force_max_min_order(features)
    assert max_min_diversity_order(features[:1]).tolist() == [0]


def test_divprune_keeps_one_token_of_each_lookalike_group_first():
    """Three groups of four near-copies: at 25% (3 tokens) DivPrune keeps one token of each group."""
    from tcc_eval.core import select_visual
    from tcc_eval.methods import SampleView, divprune_scorer

    gen = torch.Generator().manual_seed(1)
    centres = torch.randn(3, 32, generator=gen)
    tokens = centres.repeat_interleave(4, dim=0) + 1e-3 * torch.randn(12, 32, generator=gen)
    view = SampleView(adapter=None, input_ids=torch.zeros(12, dtype=torch.long), inputs_embeds=tokens[None],
                      attention_mask=torch.ones(1, 12), position_ids=torch.arange(12)[None],
                      visual=torch.ones(12, dtype=torch.bool), groups=torch.zeros(12, dtype=torch.long))
    kept = select_visual(divprune_scorer()(view), 0.25)
    assert sorted((kept // 4).tolist()) == [0, 1, 2]


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_options_count_the_full_prompt(loaded, family):
    """Drop-in for model.generate: beams and several returned sequences give vanilla's output when nothing is
    pruned, and max_length / min_length count the full prompt, so pruning 75% of the visual tokens does not
    lengthen the answer by the tokens it dropped."""
    model, processor = loaded[family]
    inputs = model_inputs(processor, messages_for("image", seed=5))
    length = inputs["input_ids"].shape[1]
    keep_all = wrap_model(model, method="random", keep_ratio=1.0)
    for options in ({"num_beams": 2}, {"num_beams": 3, "num_return_sequences": 2}):
        with torch.no_grad():
            vanilla = model.generate(**inputs, max_new_tokens=4, do_sample=False, **options)
        assert torch.equal(keep_all.generate(**inputs, max_new_tokens=4, do_sample=False, **options), vanilla)
    # lmms-eval's records count the prompts a call ran, not the sequences it returned
    from tcc_eval.integrations.lmms_eval.efficiency import RecordingModel

    batches = []
    recording = RecordingModel(wrap_model(model, method="random", keep_ratio=0.5), lambda _, n: batches.append(n))
    out = recording.generate(**inputs, max_new_tokens=2, do_sample=False, num_beams=3, num_return_sequences=2)
    assert out.shape[0] == 2 and batches == [1]
    pruned = wrap_model(model, method="random", keep_ratio=0.25)
    with torch.no_grad():
        vanilla = model.generate(**inputs, max_length=length + 3, min_length=length + 3, do_sample=False)
    out = pruned.generate(**inputs, max_length=length + 3, min_length=length + 3, do_sample=False)
    assert pruned.last_stats["seq_after"] < pruned.last_stats["seq_before"] - 3
    assert out.shape[1] == vanilla.shape[1] == length + 3
    with pytest.raises(ValueError, match="max_length=.* leaves no room .*pass max_new_tokens"):
        pruned.generate(**inputs, max_length=length, do_sample=False)


def test_prompt_ending_with_its_image_is_refused_by_the_layer0_scorers(loaded):
    """a0 and tcc score visual tokens by the attention of the instruction after them: with none after, a clear
    error instead of NaN scores."""
    from conftest import random_image

    model, processor = loaded["llava_onevision"]
    inputs = dict(processor(text=["What is it? <image>"], images=[random_image(56, 56, 0)], return_tensors="pt"))
    with pytest.raises(ValueError, match="prompt ends with its image or video tokens.*put the question"):
        wrap_model(model, method="a0", keep_ratio=0.5).generate(**inputs, max_new_tokens=2)


class _PromptRecorder:
    """A logits processor that notes the ids generate hands it at its first step: the prompt, as the processors
    that read it (repetition_penalty) see it."""

    def __init__(self):
        self.first: torch.Tensor | None = None

    def __call__(self, input_ids, scores):
        if self.first is None:
            self.first = input_ids.clone()
        return scores


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ("image", "video"))
def test_logits_processors_see_the_prompt_ids(loaded, family, kind):
    """Generation runs on embeddings, yet the processors that read the prompt see its ids as in vanilla: all of
    them when nothing is pruned, every distinct id when 75% of the visual tokens are, so a checkpoint's
    repetition_penalty (Qwen2-VL ships 1.05) weighs the same tokens and keep-all answers equal vanilla's."""
    from transformers import LogitsProcessorList

    model, processor = loaded[family]
    inputs = model_inputs(processor, messages_for(kind, seed=3))
    seen = {}
    for name, generate in (("vanilla", model.generate),
                           ("keep_all", wrap_model(model, method="random", keep_ratio=1.0).generate),
                           ("pruned", wrap_model(model, method="random", keep_ratio=0.25).generate)):
        recorder = _PromptRecorder()
        with torch.no_grad():
            out = generate(**inputs, max_new_tokens=4, do_sample=False, repetition_penalty=1.3,
                           logits_processor=LogitsProcessorList([recorder]))
        seen[name] = (recorder.first, out)
    assert torch.equal(seen["keep_all"][0], inputs["input_ids"])
    assert torch.equal(seen["keep_all"][1], seen["vanilla"][1])
    pruned_ids = seen["pruned"][0]
    assert pruned_ids.shape[1] < inputs["input_ids"].shape[1]
    assert set(pruned_ids.flatten().tolist()) == set(inputs["input_ids"].flatten().tolist())


def eager_instruction_attention(model, inputs: dict, b: int = 0, rows: str = "after_last_visual"
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent of the probe: the HF model's own eager layer-0 attention, averaged over heads and over the
    ``rows`` rule's rows (valid ones after the last image or video token; non-visual ones after the first; the
    last one), at the visual positions; and those positions."""
    cfg = model.config
    ids, valid = inputs["input_ids"][b], inputs["attention_mask"][b].bool()
    visual = (ids == cfg.image_token_id) | (ids == getattr(cfg, "video_token_id", -1))
    positions = torch.arange(ids.numel())
    after = {"after_last_visual": positions > int(positions[visual].max()),
             "after_first_visual": (positions > int(positions[visual].min())) & ~visual,
             "last": positions == ids.numel() - 1}[rows]
    with torch.no_grad():
        layer0 = model(**inputs, output_attentions=True).attentions[0][b]  # (heads, L, L)
    return layer0[:, positions[valid & after]].mean(dim=(0, 1))[visual], positions[visual]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ("image", "multi_image", "video"))
def test_a0_keeps_the_visual_tokens_the_instruction_attends_most_in_layer_0(loaded, family, kind):
    """a0 (the compressor's input) is the head- and row-mean of layer 0's eager attention from the text after the
    last visual token, and a0 at 25% keeps its top quarter."""
    model, processor = loaded[family]
    inputs = model_inputs(processor, messages_for(kind, seed=6))
    reference, visual_positions = eager_instruction_attention(model, inputs)
    a0 = wrap_model(model, method="a0", keep_ratio=0.25)
    view = a0.sample_view(a0.adapter.capture_llm_inputs(inputs), 0)
    assert (view.layer0_attention() - reference).abs().max().item() < 1e-6
    a0.prefill_logits(**inputs)
    k = keep_count(reference.numel(), 0.25)
    top = sorted(range(reference.numel()), key=lambda i: (-float(reference[i]), i))[:k]
    kept = a0.last_selection.kept_positions[0]
    assert kept[torch.isin(kept, visual_positions)].tolist() == sorted(visual_positions[top].tolist())


@pytest.mark.parametrize("family", FAMILIES)
def test_a0_of_a_left_padded_batch_equals_each_samples_eager_attention(loaded, family):
    model, processor = loaded[family]
    batch, _, _ = left_padded_image_batch(processor)
    pruned = wrap_model(model, method="a0", keep_ratio=0.5)
    llm = pruned.adapter.capture_llm_inputs(batch)
    assert int((batch["attention_mask"] == 0).sum()) > 0  # the batch is padded
    for b in range(2):
        reference, _ = eager_instruction_attention(model, batch, b)
        assert (pruned.sample_view(llm, b).layer0_attention() - reference).abs().max().item() < 1e-6


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("rows", ("after_first_visual", "last"))
def test_a0_under_other_instruction_rows_equals_eager_attention(loaded, family, rows):
    """Text between two images counts for after_first_visual (it differs from the default there); the last row
    alone for last; a0 ranks by it when asked to."""
    model, processor = loaded[family]
    images = [random_image(56, 56, 1), random_image(56, 84, 2)]
    if family == "llava_onevision":  # its chat template puts every image before the text
        prompt = "<|im_start|>user\n<image>\nand the next one\n<image>\nSame colour?<|im_end|>\n<|im_start|>assistant\n"
        inputs = dict(processor(text=[prompt], images=images, return_tensors="pt"))
    else:
        inputs = model_inputs(processor, [{"role": "user", "content": [
            {"type": "image", "image": images[0]}, {"type": "text", "text": "and the next one"},
            {"type": "image", "image": images[1]}, {"type": "text", "text": "Same colour?"}]}])
    reference, visual_positions = eager_instruction_attention(model, inputs, rows=rows)
    default, _ = eager_instruction_attention(model, inputs)
    a0 = wrap_model(model, method="a0", keep_ratio=0.5, instruction_rows=rows)
    view = a0.sample_view(a0.adapter.capture_llm_inputs(inputs), 0)
    assert (view.layer0_attention(rows) - reference).abs().max().item() < 1e-6
    assert (reference - default).abs().max().item() > 1e-4
    a0.prefill_logits(**inputs)
    top = sorted(range(reference.numel()), key=lambda i: (-float(reference[i]), i))[:keep_count(reference.numel(), 0.5)]
    kept = a0.last_selection.kept_positions[0]
    assert kept[torch.isin(kept, visual_positions)].tolist() == sorted(visual_positions[top].tolist())


def test_instruction_rows_rules_and_their_errors():
    from tcc_eval.probe import instruction_rows

    visual = torch.tensor([0, 1, 1, 0, 0, 1, 1, 0, 0], dtype=torch.bool)
    valid = torch.tensor([0, 1, 1, 1, 1, 1, 1, 1, 1], dtype=torch.bool)  # left padding
    assert instruction_rows(valid, visual).tolist() == [7, 8]
    assert instruction_rows(valid, visual, "after_first_visual").tolist() == [3, 4, 7, 8]
    assert instruction_rows(valid, visual, "last").tolist() == [8]
    with pytest.raises(ValueError, match="instruction_rows='first': expected one of after_last_visual, "
                                         "after_first_visual, last"):
        instruction_rows(valid, visual, "first")
    with pytest.raises(ValueError, match="instruction_rows='first': expected after_last_visual or"):
        from tcc_eval.options import check_option_values

        check_option_values({"instruction_rows": "first"})
