"""Explainability oracle: gradient-weighted attention relevance (Chefer et al. 2021) over the LLM.

For each answer token y_t (teacher forcing: one forward over prompt + answer, one backward per token):
    Abar_l = mean_heads(clamp_min(dlogit(y_t)/dA_l * A_l, 0))
    r = e_p;  for l = L-1 .. 0:  r = r + r @ Abar_l          (row p of R = prod_l (I + Abar_l))
Relevance R_v = mean_t r_t[visual columns]. The one-row recursion costs O(N^2) per layer instead of the
O(N^3) full-matrix update, and gives the same row (tests check both). Each layer's Abar_l is taken inside
the backward pass (``streamed_maps``), so besides the attention maps the forward keeps, only one layer's
gradient is alive at a time.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from .methods import SampleView, Scorer


@dataclass
class Explanation:
    relevance: torch.Tensor  # (N_v,) oracle R_v over visual tokens, sequence order
    a0: torch.Tensor  # (N_v,) layer-0 instruction->visual attention (the compressor's input)
    groups: torch.Tensor  # (N_v,) image / frame group of each visual token
    answer_ids: torch.Tensor  # (T,) answer tokens explained
    answer: str | None = None


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Attention probabilities exist only in eager mode (sdpa/flash return none): switch for the oracle."""
    previous = model.config._attn_implementation
    if previous != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if previous != "eager":
            model.set_attn_implementation(previous)


@contextmanager
def frozen_weights(model: nn.Module) -> Iterator[None]:
    """The oracle differentiates with respect to attention maps only. Weights that need a gradient would make
    autograd keep every linear layer's input for it (about 1 GB at 1,300 tokens on a 0.5B decoder)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


# How each layer's map Abar_l is formed. "clamp" is the method (Chefer et al. 2021, METHOD.md); the others
# are diagnostics (`python -m tcc_eval.demo oracle-rules`): "abs" keeps negative evidence, "signed" lets it
# cancel, "attention" drops the gradient (plain head-mean attention rollout, the paper's ablation).
RELEVANCE_RULES = ("clamp", "abs", "signed", "attention")


def check_rule(rule: str) -> None:
    if rule not in RELEVANCE_RULES:
        raise ValueError(f"unknown relevance rule {rule!r}; choose one of {RELEVANCE_RULES}")


def layer_map(attention: torch.Tensor, grad: torch.Tensor | None, rule: str) -> torch.Tensor:
    """One layer's Abar_l under ``rule`` from its attention probabilities and their gradient, fp32, (N, N)."""
    if rule == "attention":
        return attention.float().mean(dim=1)[0]
    weighted = grad.float() * attention.float()
    if rule == "clamp":
        weighted.clamp_min_(0)
    elif rule == "abs":
        weighted.abs_()
    return weighted.mean(dim=1)[0]


def gradient_weighted_maps(attentions: tuple[torch.Tensor, ...], target: torch.Tensor,
                           rule: str = "clamp") -> list[torch.Tensor]:
    """Abar_l for every layer from one ``autograd.grad`` over all layers' attentions (tests' reference: it
    holds every layer's gradient at once; ``streamed_maps`` gives the same maps with one layer's)."""
    check_rule(rule)
    grads = ([None] * len(attentions) if rule == "attention"
             else torch.autograd.grad(target, attentions, retain_graph=True))
    return [layer_map(a, g, rule) for a, g in zip(attentions, grads)]


def streamed_maps(attentions: tuple[torch.Tensor, ...], target: torch.Tensor,
                  rules: tuple[str, ...]) -> dict[str, list[torch.Tensor]]:
    """Every layer's Abar_l under each rule, formed by a gradient hook as the backward pass reaches that layer.

    Why: asking autograd for all layers' gradients at once keeps layers x heads x N^2 of them alive, as many
    values as the attention maps the forward already holds (measured side by side by ``python -m
    tcc_eval.bench_oracle``). Here each layer's gradient is freed once its (N, N) map is taken. The graph is
    kept (``retain_graph``) for the next answer token."""
    maps: dict[str, list[Any]] = {rule: [None] * len(attentions) for rule in rules}
    if "attention" in rules:
        maps["attention"] = [layer_map(a, None, "attention") for a in attentions]
    grad_rules = [rule for rule in rules if rule != "attention"]
    if not grad_rules:
        return maps

    def take_maps(layer: int):
        def hook(grad: torch.Tensor) -> None:
            for rule in grad_rules:
                maps[rule][layer] = layer_map(attentions[layer], grad, rule)
        return hook

    handles = [a.register_hook(take_maps(layer)) for layer, a in enumerate(attentions)]
    try:  # layer 0's gradient needs every later layer's backward, so this one call reaches all hooks
        torch.autograd.grad(target, attentions[0], retain_graph=True, allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    missing = [layer for layer, m in enumerate(maps[grad_rules[0]]) if m is None]
    if missing:
        raise RuntimeError(f"the attention maps of layers {missing} are not on the answer logit's backward path; "
                           "the oracle needs the probabilities eager attention computes with (load the model with "
                           "attn_implementation='eager')")
    return maps


def relevance_row(maps: list[torch.Tensor], row: int) -> torch.Tensor:
    """Row ``row`` of R = prod_l (I + Abar_l), by the one-row recursion from the last layer down."""
    r = torch.zeros(maps[0].shape[-1], dtype=torch.float32, device=maps[0].device)
    r[row] = 1.0
    for abar in reversed(maps):
        r = r + r @ abar
    return r


def relevance_full_matrix(maps: list[torch.Tensor]) -> torch.Tensor:
    """Naive reference: R = I; R = R + Abar_l @ R for l = 0..L-1 (O(N^3) per layer; tests only)."""
    n = maps[0].shape[-1]
    R = torch.eye(n, dtype=torch.float32, device=maps[0].device)
    for abar in maps:
        R = R + abar @ R
    return R


def answer_positions(position_ids: torch.Tensor, n_answer: int) -> torch.Tensor:
    """Positions of appended answer tokens: each row continues from the prompt's last position."""
    steps = torch.arange(1, n_answer + 1, device=position_ids.device)
    return torch.cat([position_ids, position_ids[..., -1:] + steps], dim=-1)


def view_relevance(view: SampleView, answer_ids: torch.Tensor, rule: str = "clamp") -> torch.Tensor:
    """R_v for one unpadded sample and a given answer (teacher forcing)."""
    return view_relevances(view, answer_ids, (rule,))[rule]


def view_relevances(view: SampleView, answer_ids: torch.Tensor, rules: Iterable[str]) -> dict[str, torch.Tensor]:
    """R_v under each relevance rule, from one forward and one backward per answer token."""
    rules = tuple(rules)
    visual = torch.nonzero(view.visual).flatten()
    totals = {rule: torch.zeros(visual.numel(), dtype=torch.float32, device=view.inputs_embeds.device)
              for rule in rules}
    for row, maps in answer_row_maps(view, answer_ids, rules):
        for rule in rules:
            totals[rule] += relevance_row(maps[rule], row)[visual]
    return {rule: (total / max(1, answer_ids.numel())).detach() for rule, total in totals.items()}


def answer_row_maps(view: SampleView, answer_ids: torch.Tensor,
                    rules: Iterable[str]) -> Iterator[tuple[int, dict[str, list[torch.Tensor]]]]:
    """Per answer token (teacher forcing): the row that emits it and every layer's Abar_l under each rule.

    Exposed so diagnostics can look at one layer's map; ``view_relevances`` rolls them out."""
    rules = tuple(rules)
    for rule in rules:
        check_rule(rule)
    model = view.adapter.model
    embed = model.get_input_embeddings()
    answer_embeds = embed(answer_ids.to(view.inputs_embeds.device))[None].to(view.inputs_embeds.dtype)
    embeds = torch.cat([view.inputs_embeds, answer_embeds], dim=1).detach().requires_grad_(True)
    mask = torch.ones(1, embeds.shape[1], dtype=view.attention_mask.dtype, device=embeds.device)
    n_answer = answer_ids.numel()
    positions = answer_positions(view.position_ids, n_answer)
    prompt_len = view.inputs_embeds.shape[1]
    with eager_attention(model), frozen_weights(model), torch.enable_grad():
        # logits only for the rows that emit answer tokens (the last n_answer + 1): a full (N, vocab) logit
        # tensor and its gradient cost more memory than a layer of attention maps on a real vocabulary
        out = view.adapter.forward_from_embeds(embeds, mask, positions, output_attentions=True, use_cache=False,
                                               logits_to_keep=n_answer + 1)
        for t, token in enumerate(answer_ids.tolist()):
            yield prompt_len - 1 + t, streamed_maps(out.attentions, out.logits[0, t, token], rules)


def draft_answer(view: SampleView, max_answer_tokens: int) -> torch.Tensor:
    """Greedy answer on the full (unpruned) input, without EOS/padding."""
    model = view.adapter.model
    new = view.adapter.generate_from_embeds(
        view.inputs_embeds, view.attention_mask, view.position_ids, max_new_tokens=max_answer_tokens, do_sample=False
    )[0]
    stop = {model.generation_config.pad_token_id}
    eos = model.generation_config.eos_token_id
    stop.update(eos if isinstance(eos, list) else [eos])
    keep = []
    for token in new.tolist():
        if token in stop:
            break
        keep.append(token)
    return torch.tensor(keep or new[:1].tolist(), dtype=torch.long, device=new.device)


def single_view(model: nn.Module, inputs: dict[str, torch.Tensor]) -> SampleView:
    from .pruned import TokenPrunedModel

    pruned = TokenPrunedModel(model, scorer=None)
    llm = pruned.adapter.capture_llm_inputs(inputs)
    if llm.input_ids.shape[0] != 1:
        raise ValueError("explain works on one sample at a time (batch size 1)")
    if llm.n_visual(0) == 0:
        raise ValueError("the input has no image or video tokens: nothing to explain")
    return pruned.sample_view(llm, 0)


def explain_inputs(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    answer_ids: torch.Tensor | None = None,
    max_answer_tokens: int = 16,
) -> Explanation:
    """Relevance of every visual token for the answer (generated greedily when not given)."""
    view = single_view(model, inputs)
    with torch.no_grad():
        if answer_ids is None:
            answer_ids = draft_answer(view, max_answer_tokens)
        a0 = view.layer0_attention().float()
    answer_ids = answer_ids.flatten()[:max_answer_tokens]
    return Explanation(
        relevance=view_relevance(view, answer_ids).cpu(),
        a0=a0.cpu(),
        groups=view.groups.cpu(),
        answer_ids=answer_ids.cpu(),
    )


def explain(model: Any, messages: list[dict], answer: str | None = None, processor: Any = None,
            max_answer_tokens: int = 16) -> Explanation:
    """``tcc_eval.explain``: model is a ``CompressedMLLM`` (from ``tcc_eval.load``) or an HF model with
    ``processor``; ``answer`` is explained as given, else the model's greedy answer is."""
    from .api import CompressedMLLM
    from .pruned import TokenPrunedModel

    mllm = model if processor is None else CompressedMLLM(TokenPrunedModel(model, scorer=None), processor)
    inputs = mllm.prepare(messages)
    model, processor = mllm.model, mllm.processor
    answer_ids = None
    if answer is not None:
        answer_ids = processor.tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    result = explain_inputs(model, inputs, answer_ids, max_answer_tokens)
    result.answer = processor.tokenizer.decode(result.answer_ids, skip_special_tokens=True)
    return result


def oracle_scorer(max_answer_tokens: int = 16) -> Scorer:
    """Upper-bound method: draft an answer on all tokens, explain it, keep the most relevant tokens."""

    def score(view: SampleView) -> torch.Tensor:
        with torch.no_grad():
            answer_ids = draft_answer(view, max_answer_tokens)
        return view_relevance(view, answer_ids)

    return score
