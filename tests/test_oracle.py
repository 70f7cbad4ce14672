"""The fast oracle row equals the naive full-matrix relevance; teacher forcing equals step-by-step."""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES, messages_for, model_inputs
from tcc_eval.oracle import (
    RELEVANCE_RULES, answer_positions, answer_row_maps, check_recomputed, explain_inputs, gradient_weighted_maps,
    layerwise_maps, relevance_row, single_view, view_relevance, view_relevances,
)


ORACLE_FAMILIES = (*FAMILIES, "vila")


@pytest.fixture(scope="module")
def models(loaded, tiny_vila_path):
    """``loaded`` and a tiny VILA1.5, all fp32 eager."""
    from tcc_eval.api import load_hf_model

    return {**loaded, "vila": load_hf_model(str(tiny_vila_path), torch.device("cpu"), torch.float32, attn="eager")}


def relevance_full_matrix(maps: list[torch.Tensor]) -> torch.Tensor:
    """The naive reference the fast row is checked against: R = I; R = R + Abar_l @ R for l = 0..L-1 (O(N^3)
    per layer)."""
    n = maps[0].shape[-1]
    relevance = torch.eye(n, dtype=torch.float32, device=maps[0].device)
    for abar in maps:
        relevance = relevance + abar @ relevance
    return relevance


def forward_with_attentions(model, processor, kind: str = "image"):
    """One eager forward over a sample's LLM input, differentiable in its embeddings: (view, output)."""
    view = single_view(model, model_inputs(processor, messages_for(kind)))
    embeds = view.inputs_embeds.detach().requires_grad_(True)
    out = view.adapter.forward_from_embeds(embeds, view.attention_mask, view.position_ids, output_attentions=True)
    return view, out


@pytest.mark.parametrize("family", ORACLE_FAMILIES)
@pytest.mark.parametrize("kind", ("image", "video"))
def test_fast_row_equals_full_matrix(models, family, kind):
    view, out = forward_with_attentions(*models[family], kind)
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


@pytest.mark.parametrize("family", ORACLE_FAMILIES)
@pytest.mark.parametrize("kind", ("image", "video"))
def test_layerwise_maps_equal_all_layer_gradients(models, family, kind):
    """The oracle recomputes one layer at a time (one layer's maps alive) and asks for logits only on the answer
    rows: bit for bit the maps and relevance of one autograd pass over the whole forward with full logits."""
    model, processor = models[family]
    view = single_view(model, model_inputs(processor, messages_for(kind)))
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
        reference_maps = {rule: [gradient_weighted_maps(out.attentions, target, rule) for target in targets]
                          for rule in RELEVANCE_RULES}
    reference = {rule: sum(relevance_row(maps, prompt_len - 1 + t) for t, maps in enumerate(reference_maps[rule]))
                 [visual] / 3 for rule in RELEVANCE_RULES}
    per_token = answer_row_maps(view, answer, RELEVANCE_RULES)
    assert [row for row, _ in per_token] == [prompt_len - 1 + t for t in range(3)]
    for t, (_, maps) in enumerate(per_token):
        for rule in RELEVANCE_RULES:
            assert all(torch.equal(a, b) for a, b in zip(maps[rule], reference_maps[rule][t], strict=True)), rule
    oracle = view_relevances(view, answer, RELEVANCE_RULES)
    for rule in RELEVANCE_RULES:
        assert oracle[rule].abs().max() > 0
        assert torch.equal(oracle[rule], reference[rule]), rule


class ScaledInput(torch.nn.Module):
    """Stands in for a decoder that changes its hidden states between two layers."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states, *args, **kwargs):
        return self.layer(hidden_states * 2.0, *args, **kwargs)


def test_layerwise_maps_refuse_a_forward_they_cannot_replay(loaded):
    """A decoder whose hidden states change outside its layers' calls, or a layer without attention
    probabilities, gets a clear error instead of silently wrong relevance."""
    model, processor = loaded["qwen2_vl"]
    view = single_view(model, model_inputs(processor, messages_for("image")))
    decoder = view.adapter.language_model
    layers = list(decoder.layers)

    def last_logit(use_cache: bool = False) -> torch.Tensor:
        return view.adapter.forward_from_embeds(view.inputs_embeds, view.attention_mask, view.position_ids,
                                                use_cache=use_cache).logits[0, -1, :1]

    def head(hidden: torch.Tensor) -> torch.Tensor:
        return model.get_output_embeddings()(decoder.norm(hidden[0, -1:]))[0, :1]

    assert len(list(layerwise_maps(layers, last_logit, head, ("clamp",)))) == len(layers)
    with pytest.raises(RuntimeError, match="use_cache=True; replaying a layer would append to its KV cache"):
        list(layerwise_maps(layers, lambda: last_logit(use_cache=True), head, ("clamp",)))
    last = len(layers) - 1
    decoder.layers[last] = ScaledInput(layers[last])
    try:  # the last layer is recorded with the doubled input; replaying the one before gives the undoubled one
        with pytest.raises(RuntimeError, match=f"does not reproduce the model's layer {last - 1} output"):
            list(layerwise_maps(layers, last_logit, head, ("clamp",)))
    finally:
        decoder.layers[last] = layers[last]
    model.set_attn_implementation("sdpa")
    try:
        with pytest.raises(RuntimeError, match="no attention probabilities.*eager"):
            list(layerwise_maps(layers, last_logit, head, ("clamp",)))
    finally:
        model.set_attn_implementation("eager")


def test_replay_check_compares_token_by_token():
    """One outlier token (real LLMs have activations thousands of times the rest) must not hide a replay that is
    10% off on every ordinary token; float noise passes, and so does a replay with the outlier alone exact."""
    expected = torch.ones(1, 6, 8)
    expected[0, 0, 3] = 1e4
    noisy = expected * (1 + 1e-5 * torch.randn(expected.shape, generator=torch.Generator().manual_seed(0)))
    check_recomputed("layer 0 output", noisy, expected)
    wrong = expected.clone()
    wrong[0, 1:] *= 1.1
    with pytest.raises(RuntimeError, match=r"layer 0 output \(largest per-token relative difference 0\.0996\)"):
        check_recomputed("layer 0 output", wrong, expected)
    check_recomputed("answer logits", torch.tensor([3.0, -2.0]), torch.tensor([3.0, -2.0]))
    with pytest.raises(RuntimeError, match="answer logits"):
        check_recomputed("answer logits", torch.tensor([3.0, float("nan")]), torch.tensor([3.0, -2.0]))


@pytest.mark.parametrize("family", ORACLE_FAMILIES)
def test_teacher_forcing_equals_step_by_step(models, family):
    model, processor = models[family]
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
    last = tcc_eval.load(tiny_checkpoints["qwen2_vl"], method="a0", keep_ratio=0.5, instruction_rows="last")
    view = single_view(last.model, last.prepare(messages_for("image")))
    assert torch.allclose(tcc_eval.explain(last, messages_for("image"), answer="red").a0, view.layer0_attention("last"))
    assert torch.allclose(result.a0, view.layer0_attention())  # the default rows for a model that names none
    long_answer = " ".join(["red"] * 20)  # a given answer is explained whole, past the generated answers' cap
    whole = tcc_eval.explain(mllm, messages_for("image"), answer=long_answer, max_answer_tokens=2)
    assert whole.answer == long_answer and whole.answer_ids.numel() > 16
