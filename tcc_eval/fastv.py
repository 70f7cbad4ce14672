"""Methods that prune visual tokens inside the LLM: FastV and DART at layer K, PyramidDrop in stages.

Layers 0..K-1 see every token; at layer K the selected visual tokens survive, and layers K..L-1 run on the
shorter sequence (their KV cache holds only the kept tokens). FastV keeps the visual tokens with the highest
head-mean attention from the last token in layer K-1; DART (Wen et al. 2025) keeps the visual tokens least
duplicated by a few pivot tokens; PyramidDrop (Xing et al. 2024) repeats FastV's kind of ranking at the start
of each of its stages, keeping fewer tokens each time. Implemented with forward hooks on the decoder layers
(FastV's minimal hook), so the LLM code is untouched. Ranking and selection reuse the shared probe and core.
Kept tokens keep their original position ids, as in every method here (PyramidDrop's code renumbers them).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .core import (Selection, check_keep_ratio, highest_position_ids, keep_count, keep_positions, module_devices,
                   pick_order_scores, select_visual, sync, topk_in_order)
from .flops import fastv_layer_keep_ratio, pyramid_stage_layers, pyramid_stage_ratio, pyramid_visual_counts
from .methods import SampleView
from .options import MATCH_MODES
from .probe import instruction_rows, last_token_attention, layer_keys
from .pruned import PrefillTimer, TokenPrunedModel, split_model_inputs


class _LayerKPruner:
    """Hook state for one sample: rank at layer K-1, slice from layer K on."""

    def __init__(
        self, language_model: nn.Module, k: int, keep_ratio: float, visual: torch.Tensor, positions: torch.Tensor
    ):
        self.lm = language_model
        self.positions = positions  # original position ids of the sample (rotary for the ranking probe)
        self.k = k
        self.keep_ratio = keep_ratio
        self.visual = visual  # (L,) bool, one unpadded sample
        self.kept: torch.Tensor | None = None  # positions kept from layer K on (prefill sequence)
        self.prefill_len = int(visual.numel())
        self.handles = [self.register_ranking(language_model.layers[k - 1])]
        for layer in language_model.layers[k:]:
            self.handles.append(layer.register_forward_pre_hook(self.slice, with_kwargs=True))

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()

    def register_ranking(self, layer: nn.Module) -> RemovableHandle:
        return layer.register_forward_pre_hook(self.rank, with_kwargs=True)

    def rank(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[1] != self.prefill_len or self.kept is not None:
            return  # decode step
        self.keep(last_token_attention(self.lm, hidden, self.positions, self.k - 1)[self.visual])

    def keep(self, scores: torch.Tensor) -> None:
        kept_visual = select_visual(scores, self.keep_ratio)
        self.kept = keep_positions(torch.ones_like(self.visual), self.visual, kept_visual)

    def layer_visual(self) -> list[int]:
        """Visual tokens each layer held in the prefill: all of them before layer K, the kept ones from K on."""
        kept = int(self.visual[self.kept.to(self.visual.device)].sum())
        return [int(self.visual.sum())] * self.k + [kept] * (len(self.lm.layers) - self.k)

    def slice(self, _module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """Every layer from K on receives the full-length rotary tables and mask from the decoder loop; only
        layer K receives the full-length hidden states (later layers get the already shortened ones)."""
        if self.kept is None:
            return None
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kept = self.kept.to(hidden.device)
        mask = kwargs.get("attention_mask")
        cos, sin = kwargs["position_embeddings"]
        if cos.shape[-2] == self.prefill_len:  # prefill: drop rows and columns
            if hidden.shape[1] == self.prefill_len:
                hidden = hidden[:, kept]
            kwargs["position_embeddings"] = (cos[..., kept, :], sin[..., kept, :])
            if isinstance(mask, torch.Tensor):
                kwargs["attention_mask"] = mask[..., kept, :][..., kept]
        elif isinstance(mask, torch.Tensor):  # decode: drop the pruned prompt columns only
            tail = torch.arange(self.prefill_len, mask.shape[-1], device=mask.device)
            kwargs["attention_mask"] = mask[..., torch.cat([kept, tail])]
        return (hidden,) + tuple(args[1:]), kwargs


def dart_scores(keys: torch.Tensor, states: torch.Tensor, visual: torch.Tensor, text: torch.Tensor, k: int,
                image_pivots: int = 4, text_pivots: int = 4) -> torch.Tensor:
    """DART's selection of ``k`` visual tokens, as scores whose top k are exactly its picks (reverse pick order).

    Pivots are the tokens with the largest L1 norm of their keys (all heads concatenated): ``image_pivots``
    among the visual tokens, which are kept, and ``text_pivots`` among the ``text`` positions. Each pivot in
    turn (visual ones first, each group by descending norm) then takes its quota of the not yet picked visual
    tokens least similar to it (cosine of ``states``), so the kept set covers what the pivots do not
    duplicate. keys: (1, kv_heads, L, d); states: (L, D); visual, text: (L,) bool. The quota splits
    k - image pivots over all pivots, the first ones taking one more where it does not divide (DART's code
    keeps image pivots + pivots x floor(budget / pivots); here every method keeps exactly k)."""
    norms = keys[0].float().abs().sum(dim=(0, 2))
    visual_idx, text_idx = torch.nonzero(visual).flatten(), torch.nonzero(text).flatten()

    def by_norm(idx: torch.Tensor) -> torch.Tensor:
        return idx[torch.sort(norms[idx], descending=True, stable=True).indices]

    image_pivot_idx = by_norm(visual_idx)[: min(image_pivots, k)]
    pivots = torch.cat([image_pivot_idx, by_norm(text_idx)[:text_pivots]])
    unit = torch.nn.functional.normalize(states.float(), dim=-1)
    position_in_visual = torch.full((visual.numel(),), -1, dtype=torch.long, device=visual.device)
    position_in_visual[visual_idx] = torch.arange(visual_idx.numel(), device=visual.device)
    order = [int(position_in_visual[p]) for p in image_pivot_idx]
    free = torch.ones(visual_idx.numel(), dtype=torch.bool, device=visual.device)
    free[order] = False
    rest = k - len(order)
    for i, pivot in enumerate(pivots.tolist()):
        quota = min(rest // len(pivots) + (1 if i < rest % len(pivots) else 0), int(free.sum()))
        if quota == 0:
            continue
        similarity = (unit[visual_idx] @ unit[pivot]).masked_fill(~free, float("inf"))
        picks = torch.sort(similarity, stable=True).indices[:quota]
        order.extend(picks.tolist())
        free[picks] = False
    return pick_order_scores(order, visual_idx.numel())


class _DartPruner(_LayerKPruner):
    """DART at layer K: pivots from layer K-1's keys, duplication measured on layer K-1's output (the input
    of layer K) after the decoder's final norm, as DART's code does. Text pivots come from the tokens after
    the last visual one (the instruction)."""

    def register_ranking(self, layer: nn.Module) -> RemovableHandle:
        return layer.register_forward_hook(self.rank_by_duplication, with_kwargs=True)

    def rank_by_duplication(self, _module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        if hidden.shape[1] != self.prefill_len or self.kept is not None:
            return  # decode step
        out = output[0] if isinstance(output, tuple) else output
        keys = layer_keys(self.lm, hidden, self.positions, self.k - 1)
        text = torch.zeros_like(self.visual)
        text[instruction_rows(torch.ones_like(self.visual), self.visual)] = True
        k = keep_count(int(self.visual.sum()), self.keep_ratio)
        self.keep(dart_scores(keys, self.lm.norm(out)[0], self.visual.to(out.device), text.to(out.device), k))


class _PyramidPruner:
    """PyramidDrop's hook state for one sample. Before the first layer of stage s (``stage_layers``: L/4, L/2,
    3L/4 by default), the visual tokens still present are ranked by the head-mean attention of the last token in
    that layer (its own norm and q/k on the hidden states it receives), and round(lambda^s N) of them stay for the
    stage."""

    def __init__(self, language_model: nn.Module, stage_ratio: float, stage_layers: tuple[int, ...],
                 visual: torch.Tensor, positions: torch.Tensor):
        self.lm = language_model
        self.visual = visual  # (L,) bool, one unpadded sample
        self.positions = positions
        self.prefill_len = int(visual.numel())
        self.stage_layers = stage_layers
        # visual tokens each layer holds: the flops module's count, so records and FLOPs agree by construction
        self.layer_counts = pyramid_visual_counts(int(visual.sum()), stage_ratio, len(language_model.layers),
                                                  stage_layers)
        self.stage_kept: list[torch.Tensor] = []  # per stage ranked so far: kept positions (original sequence)
        self.stage_local: list[torch.Tensor] = []  # the same as indices into the previous stage's sequence
        self.handles = [layer.register_forward_pre_hook(self._hook(index), with_kwargs=True)
                        for index, layer in enumerate(language_model.layers) if index >= self.stage_layers[0]]

    @property
    def kept(self) -> torch.Tensor | None:
        """Positions kept in the last stage (None before the prefill ranked it)."""
        return self.stage_kept[-1] if len(self.stage_kept) == len(self.stage_layers) else None

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()

    def _hook(self, index: int):
        stage = sum(index >= start for start in self.stage_layers)  # 1-based stage of this layer

        def pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            if index == self.stage_layers[stage - 1] and len(self.stage_kept) < stage:
                self.rank(stage, args[0] if args else kwargs["hidden_states"])
            return self.slice(stage, index, args, kwargs)

        return pre_hook

    def rank(self, stage: int, hidden: torch.Tensor) -> None:
        previous = (self.stage_kept[-1].to(hidden.device) if self.stage_kept
                    else torch.arange(self.prefill_len, device=hidden.device))
        visual = self.visual.to(hidden.device)[previous]
        scores = last_token_attention(self.lm, hidden, self.positions[..., previous], self.stage_layers[stage - 1])
        kept_visual = topk_in_order(scores[visual], self.layer_counts[self.stage_layers[stage - 1]])
        local = keep_positions(torch.ones_like(visual), visual, kept_visual)
        self.stage_local.append(local)
        self.stage_kept.append(previous[local])

    def slice(self, stage: int, index: int, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        """As ``_LayerKPruner.slice``, with the kept set of this layer's stage; the first layer of a stage
        shortens the hidden states it receives from the previous stage's sequence."""
        if len(self.stage_kept) < stage:
            return None
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kept = self.stage_kept[stage - 1].to(hidden.device)
        mask = kwargs.get("attention_mask")
        cos, sin = kwargs["position_embeddings"]
        if cos.shape[-2] == self.prefill_len:  # prefill: drop rows and columns
            if index == self.stage_layers[stage - 1]:
                hidden = hidden[:, self.stage_local[stage - 1].to(hidden.device)]
            kwargs["position_embeddings"] = (cos[..., kept, :], sin[..., kept, :])
            if isinstance(mask, torch.Tensor):
                kwargs["attention_mask"] = mask[..., kept, :][..., kept]
        elif isinstance(mask, torch.Tensor):  # decode: drop this stage's pruned prompt columns only
            tail = torch.arange(self.prefill_len, mask.shape[-1], device=mask.device)
            kwargs["attention_mask"] = mask[..., torch.cat([kept, tail])]
        return (hidden,) + tuple(args[1:]), kwargs

    def layer_visual(self) -> list[int]:
        """Visual tokens each layer held in the prefill, stage by stage."""
        return list(self.layer_counts)


class InsideLLMModel(TokenPrunedModel):
    """Generation and prefill for methods that prune inside the LLM: one unpadded sample at a time, through
    the hooks of the pruner each subclass builds (``pruner``) for the share it keeps (``layer_keep_ratio``)."""

    method_id: str
    layer_keep_ratio: float

    def __init__(self, model: nn.Module, keep_ratio: float, match: str):
        super().__init__(model, scorer=None, keep_ratio=keep_ratio, method=self.method_id)
        if match not in MATCH_MODES:
            raise ValueError(f"match must be one of {', '.join(MATCH_MODES)}, got {match!r}")

    def pruner(self, view: SampleView) -> _LayerKPruner | _PyramidPruner:
        raise NotImplementedError

    def run_sample(self, view: SampleView, **gen_kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, list[int] | None]:
        """Generate for one unpadded sample; returns (new tokens, prompt positions kept in the last layer, visual
        tokens per layer; None when nothing was pruned)."""
        if self.layer_keep_ratio >= 1.0 or view.n_visual == 0:
            new = self.adapter.generate_from_embeds(view.inputs_embeds, view.attention_mask, view.position_ids,
                                                   view.input_ids[None], **gen_kwargs)
            return new, torch.arange(view.visual.numel()), None
        pruner = self.pruner(view)
        try:
            new = self.adapter.generate_from_embeds(view.inputs_embeds, view.attention_mask, view.position_ids,
                                                   view.input_ids[None], **gen_kwargs)
        finally:
            pruner.close()
        return new, pruner.kept.cpu(), pruner.layer_visual()

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        inputs = split_model_inputs(input_ids, kwargs)
        for option in ("num_beams", "num_return_sequences"):
            if (kwargs.get(option) or getattr(self.model.generation_config, option, 1) or 1) > 1:
                raise ValueError(f"{self.method_id} ranks the tokens of one prompt row inside the LLM, and "
                                 f"{option} > 1 runs several rows through it: generate with {option}=1")
        device = input_ids.device
        devices = module_devices(self.model, device)
        sync(*devices)
        start = time.perf_counter()
        llm = self.adapter.capture_llm_inputs(inputs)
        sync(*devices)
        vision_s = time.perf_counter() - start
        outputs, selection, prefill_s = [], Selection(), 0.0
        for b in range(input_ids.shape[0]):  # one prefill per sample: time each
            view = self.sample_view(llm, b)
            timer = PrefillTimer(self.adapter.language_model, devices)
            try:
                new, kept, layer_visual = self.run_sample(view, **kwargs)
            finally:
                timer.close()
            prefill_s += timer.seconds
            outputs.append(new[0])
            selection.add(view.n_visual, view.visual[kept].sum(), kept, view.visual.numel(), layer_visual)
        width = max(o.numel() for o in outputs)
        pad = self._pad_token_id(kwargs) if any(o.numel() < width for o in outputs) else 0
        new_tokens = torch.full((len(outputs), width), pad, dtype=torch.long, device=device)
        for b, o in enumerate(outputs):
            new_tokens[b, : o.numel()] = o
        sync(*devices)
        self.last_selection = selection
        # no selection step before the LLM: the ranking runs inside each prefill, and prefill_s holds it
        self.last_stats = self._stats(selection, vision_s, 0.0, prefill_s, time.perf_counter() - start, new_tokens,
                                      highest_position_ids(llm.position_ids, llm.attention_mask))
        return torch.cat([input_ids, new_tokens], dim=1)

    def _pad_token_id(self, gen_kwargs: dict[str, Any]) -> int:
        """What HF pads a finished answer with: the pad token given or configured, else the (first) eos token."""
        config = self.model.generation_config
        for token in (gen_kwargs.get("pad_token_id"), config.pad_token_id, gen_kwargs.get("eos_token_id"),
                      config.eos_token_id):
            token = token[0] if isinstance(token, (list, tuple)) and token else token
            if token is not None:
                return int(token.flatten()[0]) if isinstance(token, torch.Tensor) else int(token)
        raise ValueError("answers of different lengths need a pad token, and neither pad_token_id nor eos_token_id is "
                         "set: pass pad_token_id to generate")

    @torch.no_grad()
    def prefill_logits(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Last-token logits per sample (B, 1, V) of a FastV prefill."""
        llm = self.adapter.capture_llm_inputs(inputs)
        rows, selection = [], Selection()
        for b in range(llm.input_ids.shape[0]):
            view = self.sample_view(llm, b)
            pruner = self.pruner(view)
            try:
                out = self.adapter.forward_from_embeds(view.inputs_embeds, view.attention_mask, view.position_ids)
            finally:
                pruner.close()
            rows.append(out.logits[:, -1:])
            selection.kept_positions.append(pruner.kept.cpu())
        self.last_selection = selection
        return torch.cat(rows)


class FastVModel(InsideLLMModel):
    """FastV through the same adapter and selection code; ``keep_ratio`` is the *average* retention over
    layers (METHOD.md), unless ``match="kept"``, where it is the fraction kept from layer K on."""

    method_id = "fastv"
    pruner_class = _LayerKPruner

    def __init__(self, model: nn.Module, keep_ratio: float = 0.5, fastv_k: int = 2, match: str = "avg_retention"):
        super().__init__(model, keep_ratio, match)
        layers = self.adapter.language_model.config.num_hidden_layers
        self.fastv_k = fastv_k
        self.layer_keep_ratio = (
            check_keep_ratio(keep_ratio) if match == "kept" else fastv_layer_keep_ratio(keep_ratio, layers, fastv_k)
        )

    def _stats(self, *args: Any) -> dict:
        return {**super()._stats(*args), "fastv_k": self.fastv_k}

    def pruner(self, view: SampleView) -> _LayerKPruner:
        return self.pruner_class(
            self.adapter.language_model, self.fastv_k, self.layer_keep_ratio, view.visual, view.position_ids
        )


class DartModel(FastVModel):
    """DART (Wen et al. 2025, "Stop Looking for Important Tokens in Multimodal Language Models: Duplication
    Matters More"), a training-free peer pruning at layer K (default 2) like FastV, with the same options."""

    method_id = "dart"
    pruner_class = _DartPruner


class PyramidDropModel(InsideLLMModel):
    """PyramidDrop (Xing et al. 2024), the paper's other training-free peer: stages split at ``pdrop_layers``
    (its ``layer_list``; by default four stages, at layers L/4, L/2 and 3L/4); stage s holds round(lambda^s N)
    visual tokens. ``keep_ratio`` is the average retention over layers (lambda solved for it; the floor is the
    first stage layer / L, 1/4 by default, where the first stage alone holds every token), or with
    ``match="kept"`` lambda itself (PyramidDrop's default is 0.5: 47% average retention)."""

    method_id = "pdrop"

    def __init__(self, model: nn.Module, keep_ratio: float = 0.5, match: str = "avg_retention",
                 pdrop_layers: Sequence[int] | str | None = None):
        super().__init__(model, keep_ratio, match)
        layers = self.adapter.language_model.config.num_hidden_layers
        self.stage_layers = pyramid_stage_layers(layers, pdrop_layers)
        self.layer_keep_ratio = (check_keep_ratio(keep_ratio) if match == "kept"
                                 else pyramid_stage_ratio(keep_ratio, layers, self.stage_layers))

    def _stats(self, *args: Any) -> dict:
        return {**super()._stats(*args), "pdrop_lambda": self.layer_keep_ratio,
                "pdrop_layers": list(self.stage_layers)}

    def pruner(self, view: SampleView) -> _PyramidPruner:
        return _PyramidPruner(self.adapter.language_model, self.layer_keep_ratio, self.stage_layers, view.visual,
                              view.position_ids)
