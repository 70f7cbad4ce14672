"""The fast oracle row equals the naive full-matrix relevance; teacher forcing equals step-by-step."""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES, messages_for, model_inputs
from tcc_eval.oracle import (
    RELEVANCE_RULES, answer_positions, explain_inputs, gradient_weighted_maps, relevance_full_matrix, relevance_row,
    single_view, streamed_maps, view_relevance, view_relevances,
)


def forward_with_attentions(model, processor, kind: str = "image"):
    """One eager forward over a sample's LLM input, differentiable in its embeddings: (view, output)."""
    view = single_view(model, model_inputs(processor, messages_for(kind)))
    embeds = view.inputs_embeds.detach().requires_grad_(True)
    out = view.adapter.forward_from_embeds(embeds, view.attention_mask, view.position_ids, output_attentions=True)
    return view, out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ("image", "video"))
def test_fast_row_equals_full_matrix(loaded, family, kind):
    view, out = forward_with_attentions(*loaded[family], kind)
    row = view.inputs_embeds.shape[1] - 1
    token = int(out.logits[0, row].argmax())
    maps = gradient_weighted_maps(out.attentions, out.logits[0, row, token])
    fast = relevance_row(maps, row)
    full = relevance_full_matrix(maps)[row]
    assert fast.abs().max() > 0
    assert (fast - full).abs().max().item() < 1e-5


def test_relevance_rules_match_their_formulas(loaded):
    """clamp (the method), abs, signed and gradient-free attention maps, against direct head means."""
    _, out = forward_with_attentions(*loaded["qwen2_vl"])
    target = out.logits[0, -1].max()
    grads = torch.autograd.grad(target, out.attentions, retain_graph=True)
    maps = {rule: gradient_weighted_maps(out.attentions, target, rule) for rule in RELEVANCE_RULES}
    with pytest.raises(ValueError, match="unknown relevance rule 'relu'"):
        gradient_weighted_maps(out.attentions, target, "relu")
    for layer, (g, a) in enumerate(zip(grads, out.attentions)):
        gw = (g * a)[0]
        expected = {"clamp": gw.clamp_min(0).mean(0), "abs": gw.abs().mean(0), "signed": gw.mean(0),
                    "attention": a[0].mean(0)}
        for rule, ref in expected.items():
            assert torch.allclose(maps[rule][layer], ref, atol=1e-7), (rule, layer)
        assert (maps["signed"][layer] < 0).any()  # a rule choice that matters: negative evidence exists


def test_rules_sharing_one_backward_equal_separate_runs(loaded):
    """oracle-rules computes every rule from one forward/backward per answer token: same as one run per rule."""
    model, processor = loaded["qwen2_vl"]
    view = single_view(model, model_inputs(processor, messages_for("image")))
    answer = torch.tensor([40, 41])
    together = view_relevances(view, answer, RELEVANCE_RULES)
    for rule in RELEVANCE_RULES:
        alone = view_relevance(view, answer, rule)
        assert torch.equal(together[rule], alone), rule
    assert not torch.equal(together["clamp"], together["signed"])
    with pytest.raises(ValueError, match="unknown relevance rule 'relu'"):
        view_relevances(view, answer, ("clamp", "relu"))


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_maps_equal_all_layer_gradients(loaded, family):
    """The oracle takes each layer's map inside the backward pass (one layer's gradient alive at a time) and
    logits only for the answer rows: bit for bit the relevance of full logits and every layer's gradient at once."""
    model, processor = loaded[family]
    view = single_view(model, model_inputs(processor, messages_for("image")))
    answer = torch.tensor([40, 41, 42])
    embeds = torch.cat([view.inputs_embeds, model.get_input_embeddings()(answer)[None]], dim=1)
    embeds = embeds.detach().requires_grad_(True)
    mask = torch.ones(1, embeds.shape[1], dtype=torch.long)
    visual = torch.nonzero(view.visual).flatten()
    prompt_len = view.inputs_embeds.shape[1]
    with torch.enable_grad():
        out = view.adapter.forward_from_embeds(embeds, mask, answer_positions(view.position_ids, 3),
                                               output_attentions=True)
        targets = [out.logits[0, prompt_len - 1 + t, token] for t, token in enumerate(answer.tolist())]
        for rule in RELEVANCE_RULES:
            streamed = streamed_maps(out.attentions, targets[0], (rule,))[rule]
            reference = gradient_weighted_maps(out.attentions, targets[0], rule)
            assert all(torch.equal(a, b) for a, b in zip(streamed, reference)), rule
        reference = {rule: sum(relevance_row(gradient_weighted_maps(out.attentions, target, rule), prompt_len - 1 + t)
                               for t, target in enumerate(targets))[visual] / 3 for rule in RELEVANCE_RULES}
    oracle = view_relevances(view, answer, RELEVANCE_RULES)
    for rule in RELEVANCE_RULES:
        assert torch.equal(oracle[rule], reference[rule]), rule


def test_streamed_maps_name_a_layer_off_the_backward_path(loaded):
    _, out = forward_with_attentions(*loaded["qwen2_vl"])
    last = len(out.attentions) - 1
    copies = (*out.attentions[:last], out.attentions[last].detach().requires_grad_(True))  # a detached copy
    with pytest.raises(RuntimeError, match=rf"layers \[{last}\] are not on the answer logit's backward path.*eager"):
        streamed_maps(copies, out.logits[0, -1].max(), ("clamp",))


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_forcing_equals_step_by_step(loaded, family):
    model, processor = loaded[family]
    inputs = model_inputs(processor, messages_for("image"))
    explanation = explain_inputs(model, inputs, answer_ids=torch.tensor([40, 41, 42]))
    view = single_view(model, inputs)
    embed = model.get_input_embeddings()
    visual = torch.nonzero(view.visual).flatten()
    total = torch.zeros(visual.numel())
    answer = [40, 41, 42]
    for t, token in enumerate(answer):
        prefix = torch.tensor(answer[:t], dtype=torch.long)
        embeds = torch.cat([view.inputs_embeds, embed(prefix)[None]], dim=1).detach().requires_grad_(True)
        positions = answer_positions(view.position_ids, t)
        mask = torch.ones(1, embeds.shape[1], dtype=torch.long)
        with torch.enable_grad():
            out = view.adapter.forward_from_embeds(embeds, mask, positions, output_attentions=True)
            maps = gradient_weighted_maps(out.attentions, out.logits[0, -1, token])
        total += relevance_row(maps, embeds.shape[1] - 1)[visual]
    step_by_step = total / len(answer)
    assert explanation.relevance.shape == (view.n_visual,)
    assert (explanation.relevance - step_by_step).abs().max().item() < 1e-5
    assert explanation.a0.shape == explanation.relevance.shape


def test_explain_public_api(tiny_checkpoints):
    import tcc_eval

    mllm = tcc_eval.load(tiny_checkpoints["qwen2_vl"], method="none", keep_ratio=1.0)
    result = tcc_eval.explain(mllm, messages_for("image"), answer="red")
    assert result.answer == "red"
    assert torch.isfinite(result.relevance).all() and result.relevance.sum() > 0
    assert mllm.model.config._attn_implementation == "sdpa"  # restored after the oracle
