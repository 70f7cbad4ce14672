"""Explainability oracle: gradient-weighted attention relevance (Chefer et al. 2021) over the LLM.

For each answer token y_t (teacher forcing: one forward over prompt + answer, one backward per token):
    Abar_l = mean_heads(clamp_min(dlogit(y_t)/dA_l * A_l, 0))
    r = e_p;  for l = L-1 .. 0:  r = r + r @ Abar_l          (row p of R = prod_l (I + Abar_l))
Relevance R_v = mean_t r_t[visual columns]. The one-row recursion costs O(N^2) per layer instead of the
O(N^3) full-matrix update, and gives the same row (tests check both). The backward runs one layer at a time
on a recomputed layer (``layerwise_maps``), so one layer's attention maps are alive at a time, not all L.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from .methods import SampleView, Scorer
from .options import DEFAULT_INSTRUCTION_ROWS, METHOD_RULE, RELEVANCE_RULES  # noqa: F401 - METHOD_RULE re-exported


@dataclass
class Explanation:
    relevance: torch.Tensor  # (N_v,) oracle R_v over visual tokens, sequence order
    a0: torch.Tensor  # (N_v,) layer-0 instruction->visual attention (the compressor's input)
    groups: torch.Tensor  # (N_v,) image / frame group of each visual token
    answer_ids: torch.Tensor  # (T,) answer tokens explained
    answer: str | None = None
    by_rule: dict[str, torch.Tensor] | None = None  # (N_v,) under each rule asked for; the first is .relevance


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


def check_rule(rule: str) -> None:
    if rule not in RELEVANCE_RULES:
        raise ValueError(f"unknown relevance rule {rule!r}; choose one of {RELEVANCE_RULES}")


@torch.no_grad()
def layer_map(attention: torch.Tensor, grad: torch.Tensor | None, rule: str) -> torch.Tensor:
    """One layer's Abar_l under ``rule`` from its attention probabilities and their gradient, fp32, (N, N).

    Heads are summed one at a time, so the fp32 temporaries are (N, N), not heads x N^2 (4 GB per copy for 28
    heads at 6,000 tokens). No autograd: a map that recorded its graph would keep its layer's graph alive."""
    total = torch.zeros(attention.shape[-2:], dtype=torch.float32, device=attention.device)
    for head in range(attention.shape[1]):
        term = attention[0, head].float()
        if rule != "attention":
            term = grad[0, head].float() * term
            if rule == "clamp":
                term.clamp_min_(0)
            elif rule == "abs":
                term.abs_()
        total += term
    return total / attention.shape[1]


def gradient_weighted_maps(attentions: tuple[torch.Tensor, ...], target: torch.Tensor,
                           rule: str = "clamp") -> list[torch.Tensor]:
    """Abar_l for every layer from one ``autograd.grad`` over all layers' attentions kept by the forward (the
    tests' and the benchmark's reference: it holds every layer's maps and gradients at once)."""
    check_rule(rule)
    grads = ([None] * len(attentions) if rule == "attention"
             else torch.autograd.grad(target, attentions, retain_graph=True))
    return [layer_map(a, g, rule) for a, g in zip(attentions, grads)]


def layer_call_hidden(call: tuple[tuple, dict]) -> torch.Tensor:
    args, kwargs = call
    return args[0] if args else kwargs["hidden_states"]


def recompute_layer(layer: nn.Module, call: tuple[tuple, dict], hidden: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one decoder layer again as the forward called it, on ``hidden``: (its output, its attention probs)."""
    args, kwargs = call
    if kwargs.get("use_cache"):
        raise RuntimeError("the forward the oracle replays ran with use_cache=True; replaying a layer would append "
                           "to its KV cache (run it with use_cache=False)")
    probs: list[torch.Tensor | None] = []
    handle = layer.self_attn.register_forward_hook(lambda _module, _args, out: probs.append(out[1]))
    try:
        out = layer(hidden, *args[1:], **kwargs) if args else layer(**{**kwargs, "hidden_states": hidden})
    finally:
        handle.remove()
    if not probs or probs[0] is None:
        raise RuntimeError("the decoder layer returned no attention probabilities; the oracle needs eager attention "
                           "(load the model with attn_implementation='eager')")
    return (out[0] if isinstance(out, tuple) else out), probs[0]


def check_recomputed(what: str, got: torch.Tensor, expected: torch.Tensor) -> None:
    """A layer-wise recomputation must reproduce the forward it replays; a model that does more between its
    layers (or after the last) than the recorded calls show would otherwise get silently wrong relevance.
    Compared token by token (relative to each row's norm): real LLMs carry a few outlier activations thousands of
    times the rest, and a whole-tensor scale would let every ordinary token be replayed wrong."""
    got, expected = got.detach().float(), expected.float()
    if got.shape != expected.shape:
        raise RuntimeError(f"the oracle's layer-by-layer recomputation gives the model's {what} shape "
                           f"{tuple(got.shape)}, the forward gave {tuple(expected.shape)}")
    rows = expected.reshape(-1, expected.shape[-1] if expected.dim() else 1)
    scale = rows.norm(dim=-1)
    gap = (got.reshape_as(rows) - rows).norm(dim=-1) / (scale + 1e-6 * max(scale.max().item(), 1e-6))
    if not gap.max().item() <= 1e-2:
        raise RuntimeError(f"the oracle's layer-by-layer recomputation does not reproduce the model's {what} "
                           f"(largest per-token relative difference {gap.max().item():.3g}): this decoder "
                           "transforms its hidden states outside its layers, which the oracle does not support")


def layerwise_maps(layers: Sequence[nn.Module], run_forward: Callable[[], torch.Tensor],
                   head: Callable[[torch.Tensor], torch.Tensor], rules: Iterable[str]
                   ) -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
    """Abar_l under each rule for every target t, from the last layer down: ``(l, t, {rule: map})``.

    ``run_forward`` runs the model once and returns the targets (e.g. answer logits) as it computes them;
    ``head`` maps the last layer's output to the same targets, differentiably. Why layer by layer: autograd
    over the whole forward keeps every layer's attention maps (layers x heads x N^2: 74 GiB above the weights
    for a 7B Qwen2 at 3,000 tokens, measured on an H200). Here the forward runs without autograd and keeps each
    layer's input (N x D); then each layer is run again with autograd, the gradient of every target with
    respect to its attention probabilities and its input is taken, and the layer's graph is dropped before
    the next one down. The peak is one layer's maps, at the cost of one more forward. Each (N, N) map is
    handed out as soon as it is formed, so a consumer that folds it in keeps one per rule, not one per target."""
    rules = tuple(rules)
    for rule in rules:
        check_rule(rule)
    calls: list[Any] = [None] * len(layers)
    last_output: list[torch.Tensor] = []

    def record(index: int):
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            calls[index] = (args, kwargs)
        return hook

    handles = [layer.register_forward_pre_hook(record(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles.append(layers[-1].register_forward_hook(
        lambda _module, _args, out: last_output.append(out[0] if isinstance(out, tuple) else out)))
    try:
        with torch.no_grad():
            expected_targets = run_forward()
    finally:
        for handle in handles:
            handle.remove()
    hidden = last_output[0].detach().requires_grad_(True)
    with torch.enable_grad():
        targets = head(hidden)
        check_recomputed("answer logits", targets, expected_targets)
        grads = [torch.autograd.grad(target, hidden, retain_graph=True)[0] for target in targets]
    del targets, hidden
    for index in reversed(range(len(layers))):
        layer_input = layer_call_hidden(calls[index]).detach().requires_grad_(True)
        with torch.enable_grad():
            out, probs = recompute_layer(layers[index], calls[index], layer_input)
            expected = last_output[0] if index == len(layers) - 1 else layer_call_hidden(calls[index + 1])
            check_recomputed(f"layer {index} output", out, expected)
            input_grads = []
            for target, grad in enumerate(grads):
                input_grad, probs_grad = torch.autograd.grad(out, (layer_input, probs), grad, retain_graph=True,
                                                             allow_unused=True)
                if probs_grad is None:
                    raise RuntimeError(f"the attention probabilities of layer {index} are not on the target's "
                                       "backward path; the oracle needs the probabilities eager attention computes "
                                       "with (load the model with attn_implementation='eager')")
                input_grads.append(input_grad)
                yield index, target, {rule: layer_map(probs, probs_grad, rule) for rule in rules}
                del probs_grad
        del out, probs, layer_input  # free this layer's graph before the next one is built
        grads = input_grads
        calls[index + 1:] = [None] * (len(layers) - index - 1)


def relevance_row(maps: list[torch.Tensor], row: int) -> torch.Tensor:
    """Row ``row`` of R = prod_l (I + Abar_l), by the one-row recursion from the last layer down."""
    r = torch.zeros(maps[0].shape[-1], dtype=torch.float32, device=maps[0].device)
    r[row] = 1.0
    for abar in reversed(maps):
        r = r + r @ abar
    return r


def streamed_relevance_rows(layer_maps: Iterable[tuple[int, int, dict[str, torch.Tensor]]], rows: Sequence[int],
                            n_tokens: int, rules: Iterable[str], device: torch.device) -> list[dict[str, torch.Tensor]]:
    """``relevance_row`` of target t's row ``rows[t]`` under each rule, folded in as ``layerwise_maps`` hands the
    maps out (last layer first), so no layer's map outlives its step."""
    rules = tuple(rules)
    relevance = [{rule: torch.zeros(n_tokens, dtype=torch.float32, device=device) for rule in rules} for _ in rows]
    for t, row in enumerate(rows):
        for r in relevance[t].values():
            r[row] = 1.0
    for _, t, maps in layer_maps:
        for rule in rules:
            relevance[t][rule] = relevance[t][rule] + relevance[t][rule] @ maps[rule]
    return relevance


def answer_positions(position_ids: torch.Tensor, n_answer: int) -> torch.Tensor:
    """Positions of appended answer tokens: each row continues from the prompt's last position."""
    steps = torch.arange(1, n_answer + 1, device=position_ids.device)
    return torch.cat([position_ids, position_ids[..., -1:] + steps], dim=-1)


def view_relevance(view: SampleView, answer_ids: torch.Tensor, rule: str = "clamp") -> torch.Tensor:
    """R_v for one unpadded sample and a given answer (teacher forcing)."""
    return view_relevances(view, answer_ids, (rule,))[rule]


def view_relevances(view: SampleView, answer_ids: torch.Tensor, rules: Iterable[str]) -> dict[str, torch.Tensor]:
    """R_v under each relevance rule, from one forward and one layer-by-layer backward over all answer tokens."""
    rules = tuple(rules)
    visual = torch.nonzero(view.visual).flatten()
    prompt_len = view.inputs_embeds.shape[1]
    rows = streamed_relevance_rows(answer_layer_maps(view, answer_ids, rules),
                                   [prompt_len - 1 + t for t in range(answer_ids.numel())],
                                   prompt_len + answer_ids.numel(), rules, view.inputs_embeds.device)
    totals = {rule: torch.zeros(visual.numel(), dtype=torch.float32, device=view.inputs_embeds.device)
              for rule in rules}
    for row in rows:
        for rule in rules:
            totals[rule] += row[rule][visual]
    return {rule: (total / max(1, answer_ids.numel())).detach() for rule, total in totals.items()}


def answer_layer_maps(view: SampleView, answer_ids: torch.Tensor,
                      rules: Iterable[str]) -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
    """Teacher forcing over prompt + answer: ``(l, t, {rule: Abar_l})`` for every layer and answer token t,
    last layer first."""
    model = view.adapter.model
    decoder = view.adapter.language_model
    embed = model.get_input_embeddings()
    answer_ids = answer_ids.to(view.inputs_embeds.device)
    n_answer = answer_ids.numel()
    embeds = torch.cat([view.inputs_embeds, embed(answer_ids)[None].to(view.inputs_embeds.dtype)], dim=1).detach()
    mask = torch.ones(1, embeds.shape[1], dtype=view.attention_mask.dtype, device=embeds.device)
    positions = answer_positions(view.position_ids, n_answer)
    rows = view.inputs_embeds.shape[1] - 1 + torch.arange(n_answer, device=embeds.device)
    steps = torch.arange(n_answer, device=embeds.device)

    def run_forward() -> torch.Tensor:
        # logits only for the rows that emit answer tokens (the last n_answer + 1): a full (N, vocab) logit
        # tensor costs more memory than a layer of attention maps on a real vocabulary
        out = view.adapter.forward_from_embeds(embeds, mask, positions, use_cache=False, logits_to_keep=n_answer + 1)
        return out.logits[0, steps, answer_ids]

    def head(hidden: torch.Tensor) -> torch.Tensor:
        return model.get_output_embeddings()(decoder.norm(hidden[0, rows]))[steps, answer_ids]

    with eager_attention(model), frozen_weights(model):
        yield from layerwise_maps(decoder.layers, run_forward, head, rules)


def answer_row_maps(view: SampleView, answer_ids: torch.Tensor,
                    rules: Iterable[str]) -> list[tuple[int, dict[str, list[torch.Tensor]]]]:
    """Per answer token: the row that emits it and every layer's Abar_l under each rule.

    For diagnostics that look at one layer's map; it holds all layers' maps of all answer tokens at once, which
    ``view_relevances`` avoids."""
    rules = tuple(rules)
    n_layers = len(view.adapter.language_model.layers)
    per_token = [{rule: [None] * n_layers for rule in rules} for _ in range(answer_ids.numel())]
    for layer, t, maps in answer_layer_maps(view, answer_ids, rules):
        for rule in rules:
            per_token[t][rule][layer] = maps[rule]
    prompt_len = view.inputs_embeds.shape[1]
    return [(prompt_len - 1 + t, maps) for t, maps in enumerate(per_token)]


def draft_answer(view: SampleView, max_answer_tokens: int) -> torch.Tensor:
    """Greedy answer on the full (unpruned) input, without EOS/padding."""
    model = view.adapter.model
    new = view.adapter.generate_from_embeds(
        view.inputs_embeds, view.attention_mask, view.position_ids, view.input_ids[None],
        max_new_tokens=max_answer_tokens, do_sample=False,
    )[0]
    answer = answer_tokens(model, new)
    return answer if answer.numel() else new[:1]


def answer_tokens(model: nn.Module, new_tokens: torch.Tensor) -> torch.Tensor:
    """Generated ids up to the first EOS / padding token."""
    stop = {model.generation_config.pad_token_id}
    eos = model.generation_config.eos_token_id
    stop.update(eos if isinstance(eos, list) else [eos])
    ids = new_tokens.tolist()
    end = next((i for i, t in enumerate(ids) if t in stop), len(ids))
    return new_tokens[:end]


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
    rules: Sequence[str] = ("clamp",),
    instruction_rows: str = DEFAULT_INSTRUCTION_ROWS,
) -> Explanation:
    """Relevance of every visual token for the answer (generated greedily when not given). Several ``rules``
    share one forward and one backward; ``relevance`` is the first one's. ``a0`` is the layer-0 attention of
    the ``instruction_rows`` rule's rows (the compressor's input)."""
    rules = tuple(dict.fromkeys(rules))
    if not rules:
        raise ValueError("explain_inputs needs at least one relevance rule")
    for rule in rules:
        check_rule(rule)
    view = single_view(model, inputs)
    with torch.no_grad():
        if answer_ids is None:
            answer_ids = draft_answer(view, max_answer_tokens)
        a0 = view.layer0_attention(instruction_rows).float()
    answer_ids = answer_ids.flatten()[:max_answer_tokens]
    if answer_ids.numel() == 0:  # there is no answer token whose logit a gradient could start from
        raise ValueError("the answer to explain has no tokens; give a non-empty answer, or none to explain the "
                         "model's own")
    by_rule = {rule: relevance.cpu() for rule, relevance in view_relevances(view, answer_ids, rules).items()}
    return Explanation(
        relevance=by_rule[rules[0]],
        a0=a0.cpu(),
        groups=view.groups.cpu(),
        answer_ids=answer_ids.cpu(),
        by_rule=by_rule,
    )


def explain(model: Any, messages: list[dict], answer: str | None = None, processor: Any = None,
            max_answer_tokens: int = 16, instruction_rows: str | None = None) -> Explanation:
    """``tcc_eval.explain``: model is a ``CompressedMLLM`` (from ``tcc_eval.load``) or an HF model with
    ``processor``; ``answer`` is explained as given (every token of it), else the model's greedy answer is (at
    most ``max_answer_tokens`` of it). ``a0`` is read from ``instruction_rows`` (default: the rows the loaded a0 or
    tcc method reads, else the method's default)."""
    from .api import CompressedMLLM
    from .pruned import TokenPrunedModel

    if processor is None and not isinstance(model, CompressedMLLM):
        raise TypeError(f"explain takes a CompressedMLLM (from tcc_eval.load) or an HF model with its processor; "
                        f"got a {type(model).__name__} without one: pass processor=")
    mllm = model if processor is None else CompressedMLLM(TokenPrunedModel(model, scorer=None), processor)
    inputs = mllm.prepare(messages)
    model, processor = mllm.model, mllm.processor
    answer_ids = None
    if answer is not None:
        answer_ids = processor.tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        max_answer_tokens = max(1, answer_ids.numel())
    if instruction_rows is None:
        instruction_rows = getattr(mllm.pruned.scorer, "instruction_rows", DEFAULT_INSTRUCTION_ROWS)
    result = explain_inputs(model, inputs, answer_ids, max_answer_tokens, instruction_rows=instruction_rows)
    result.answer = processor.tokenizer.decode(result.answer_ids, skip_special_tokens=True)
    return result


def oracle_scorer(max_answer_tokens: int = 16) -> Scorer:
    """Upper-bound method: draft an answer on all tokens, explain it, keep the most relevant tokens."""

    def score(view: SampleView) -> torch.Tensor:
        with torch.no_grad():
            answer_ids = draft_answer(view, max_answer_tokens)
        return view_relevance(view, answer_ids)

    return score
