"""Input-stage pruning around an unchanged HF MLLM.

``TokenPrunedModel.generate(**processor_inputs, **gen_kwargs)`` is a drop-in for ``model.generate``:
framework wrappers (VLMEvalKit, lmms-eval) keep their own prompt code and only swap the model. Data
flows one way: adapter (LLM inputs) -> scorer -> selection -> (merge) -> gather -> unchanged LLM.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from .adapters import LLMInputs, MLLMAdapter, adapter_for
from .core import (Selection, check_keep_ratio, gather_left_padded, gather_prompt_ids, highest_position_ids,
                   keep_positions, module_devices, select_visual, sync)
from .methods import Merger, SampleView, Scorer
from .options import POSITION_MODES


class PrefillTimer:
    """Times the first LLM call of a generate (the prefill) with forward hooks on the decoder stack."""

    def __init__(self, language_model: nn.Module, devices: tuple[torch.device, ...]):
        self.devices = devices
        self.seconds = 0.0
        self._start = None
        self._handles = [
            language_model.register_forward_pre_hook(self._pre),
            language_model.register_forward_hook(self._post),
        ]

    def _pre(self, *_):
        if self._start is None:
            sync(*self.devices)
            self._start = time.perf_counter()

    def _post(self, *_):
        if self._start is not None and not self.seconds:
            sync(*self.devices)
            self.seconds = time.perf_counter() - self._start

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


class TokenPrunedModel(nn.Module):
    """An HF MLLM whose visual tokens are pruned before LLM layer 0 by ``scorer``.

    ``scorer=None`` keeps every token (method "none") through the same code path. A ``merger`` (pooling) sets
    the embeddings the kept tokens carry; without one they keep their own. A scorer whose
    ``reads_tower_attention`` is true (VisionZip) gets the vision tower's attention and keys in its view.
    ``positions``: "original" (the method: kept tokens keep their ids in the full sequence) or "renumber"
    (consecutive ids over the pruned sequence, as if it were the whole prompt; 1-D position ids only).
    """

    def __init__(
        self,
        model: nn.Module,
        scorer: Scorer | None,
        keep_ratio: float = 1.0,
        budget: str = "global",
        method: str = "custom",
        merger: Merger | None = None,
        positions: str = "original",
    ):
        super().__init__()
        self.model = model
        self.adapter = adapter_for(model)
        self.positions = check_positions(positions, self.adapter)
        self.scorer = scorer
        self.keep_ratio = check_keep_ratio(keep_ratio)
        self.budget = budget
        self.method = method
        self.merger = merger
        self.last_selection: Selection | None = None
        self.last_stats: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)

    # --- selection ------------------------------------------------------------------------------
    def sample_view(self, llm: LLMInputs, b: int) -> SampleView:
        valid = llm.attention_mask[b].bool()
        rows = torch.nonzero(valid).flatten()
        positions = llm.position_ids[..., b : b + 1, rows]  # (1, n) or M-RoPE's (3, 1, n)
        return SampleView(
            adapter=self.adapter,
            input_ids=llm.input_ids[b, rows],
            inputs_embeds=llm.inputs_embeds[b : b + 1, rows],
            attention_mask=llm.attention_mask[b : b + 1, rows],
            position_ids=positions,
            visual=llm.visual_mask[b, rows],
            groups=llm.visual_groups[b],
            cells=None if llm.visual_cells is None else llm.visual_cells[b],
            tower_attention=None if llm.tower_attention is None else llm.tower_attention[b],
            tower_keys=None if llm.tower_keys is None else llm.tower_keys[b],
            tower_spans=None if llm.tower_spans is None else llm.tower_spans[b],
        )

    def select(self, llm: LLMInputs) -> Selection:
        """Which sequence positions of each sample survive."""
        selection = Selection()
        for b in range(llm.input_ids.shape[0]):
            valid = llm.attention_mask[b].bool()
            visual = llm.visual_mask[b] & valid
            n_visual = int(visual.sum())
            if self.scorer is None or n_visual == 0 or self.keep_ratio >= 1.0:
                kept_visual = torch.arange(n_visual)
            else:
                scores = self.scorer(self.sample_view(llm, b))
                kept_visual = select_visual(scores, self.keep_ratio, llm.visual_groups[b], self.budget)
                last = int(torch.nonzero(valid).max())
                if self.positions == "original" and visual[last] and int(kept_visual.max()) != n_visual - 1:
                    # generate continues from the last kept token's position, which is then not the prompt's end
                    raise ValueError(
                        "this prompt ends with an image or video token that was pruned, so the answer would start "
                        "at a dropped token's position instead of after the prompt: put the question (or the "
                        "chat template's generation prompt) after the image or video, or use positions='renumber'")
            selection.add(n_visual, kept_visual.numel(), keep_positions(valid, visual, kept_visual), valid.sum())
        return selection

    def prune(self, inputs: dict[str, Any]) -> tuple[LLMInputs, Selection, tuple[torch.Tensor, ...]]:
        """Adapter -> scorer -> selection -> gather; returns the pruned (embeds, mask, position_ids)."""
        llm = self.llm_inputs(inputs)
        selection, pruned = self.prune_llm_inputs(llm)
        return llm, selection, pruned

    def llm_inputs(self, inputs: dict[str, Any]) -> LLMInputs:
        """The vision tower and embedding: the LLM's full input, what every method starts from."""
        tower = self._prunes and getattr(self.scorer, "reads_tower_attention", False)
        return self.adapter.capture_llm_inputs(inputs, tower_attention=tower)

    @property
    def _prunes(self) -> bool:
        return self.scorer is not None and self.keep_ratio < 1.0

    def prune_llm_inputs(self, llm: LLMInputs) -> tuple[Selection, tuple[torch.Tensor, ...]]:
        """The method's own step: score, select, gather (the selection cost the efficiency records time)."""
        prunes = self._prunes
        selection = self.select(llm)
        embeds = self.merged_embeds(llm, selection) if prunes and self.merger is not None else llm.inputs_embeds
        embeds, mask, positions = gather_left_padded(embeds, llm.attention_mask, llm.position_ids,
                                                     selection.kept_positions)
        if self.positions == "renumber":
            positions = self.adapter.default_position_ids(mask)
        return selection, (embeds, mask, positions)

    def merged_embeds(self, llm: LLMInputs, selection: Selection) -> torch.Tensor:
        """The LLM input with each kept visual token's embedding replaced by what the merger gives it."""
        embeds = llm.inputs_embeds.clone()
        for b, kept_positions in enumerate(selection.kept_positions):
            view = self.sample_view(llm, b)
            visual_rows = torch.nonzero(llm.attention_mask[b].bool()).flatten()[view.visual]
            kept = torch.nonzero(torch.isin(visual_rows, kept_positions.to(visual_rows.device))).flatten()
            if kept.numel():
                embeds[b, visual_rows[kept]] = self.merger(view, kept)
        return embeds

    @torch.no_grad()
    def prefill_logits(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Logits of one pruned prefill, (B, L_kept, V) left-padded; for checks and scoring studies."""
        _, self.last_selection, (embeds, mask, positions) = self.prune(inputs)
        return self.adapter.forward_from_embeds(embeds, mask, positions).logits

    # --- HF-compatible entry points ---------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Like ``model.generate``: returns prompt ids followed by the new tokens."""
        inputs = split_model_inputs(input_ids, kwargs)
        devices = module_devices(self.model, input_ids.device)
        sync(*devices)
        start = time.perf_counter()
        llm = self.llm_inputs(inputs)
        sync(*devices)
        vision_s = time.perf_counter() - start - llm.tower_readout_s  # VisionZip's readout is its selection's
        selection, (embeds, mask, positions) = self.prune_llm_inputs(llm)
        sync(*devices)
        select_s = time.perf_counter() - start - vision_s
        timer = PrefillTimer(self.adapter.language_model, devices)
        try:
            prompt_ids = gather_prompt_ids(llm.input_ids, selection.kept_positions)
            new_tokens = self.adapter.generate_from_embeds(embeds, mask, positions, prompt_ids, **kwargs)
        finally:
            timer.close()
        sync(*devices)
        self.last_selection = selection
        self.last_stats = self._stats(selection, vision_s, select_s, timer.seconds, time.perf_counter() - start,
                                      new_tokens, highest_position_ids(positions, mask))
        return with_prompt(input_ids, new_tokens)

    def _stats(self, selection: Selection, vision_s: float, select_s: float, prefill_s: float, total_s: float,
               new_tokens: torch.Tensor, highest_positions: list[int]) -> dict:
        """Per-call efficiency record. ``vision_s``: vision tower and embedding, the same work for every method;
        ``select_s``: the method's scoring and gather before the LLM, VisionZip's readout of the tower's attention
        included though it runs inside the tower (methods that rank inside the LLM have none: their ranking is inside
        ``prefill_s``). It carries the LLM shape, the average retention over layers and
        each sample's visual FLOPs, so tables need no checkpoint name and sum FLOPs over the very samples run.
        ``first_call`` marks the first call on the loaded model, which paid one-time costs (CUDA context, kernel
        choice) and which the tables leave out of their time means; it is counted on the model, which the pruned
        wrappers of one run share (VLMEvalKit's TCC has one per modality). ``samples_beyond_context`` counts the
        samples whose prompt's position ids (``highest_positions``, those the LLM saw) reach past the positions the
        LLM was trained on: no framework stops them, and their answers come from outside that range."""
        from dataclasses import asdict

        from .flops import kv_cache_bytes, shape_from_config, visual_flops

        shape = shape_from_config(self.adapter.language_model.config)
        elem = next(self.adapter.language_model.parameters()).element_size()  # the cache's dtype, not the tower's
        before, after = sum(selection.visual_before), sum(selection.visual_after)
        seq_before, seq_after = sum(selection.seq_before), sum(selection.seq_after)
        per_layer = selection.visual_per_layer(shape.layers)
        context = self.adapter.context_length
        calls = getattr(self.model, "tcc_generate_calls", 0) + 1
        self.model.tcc_generate_calls = calls
        return {
            "method": self.method,
            "keep_ratio": self.keep_ratio,
            "positions": self.positions,
            "visual_before": before,
            "visual_after": after,
            "seq_before": seq_before,
            "seq_after": seq_after,
            "avg_retention": sum(per_layer) / (shape.layers * before) if before else 1.0,
            "vision_s": vision_s,
            "select_s": select_s,
            "prefill_s": prefill_s,
            "total_s": total_s,
            # each sample's own tokens: a left-padded batch's cache also holds its padding, which depends on how
            # the framework batched the prompts, not on the method
            "kv_cache_bytes": sum(kv_cache_bytes(seq_before - before + visual, 1, shape.kv_heads, shape.head_dim, elem)
                                  for visual in per_layer),
            # the visual tokens' share alone, the quantity the paper reports (Qwen2-VL on MMStar: 71.2 -> 17.8 MB)
            "visual_kv_cache_bytes": sum(kv_cache_bytes(visual, 1, shape.kv_heads, shape.head_dim, elem)
                                         for visual in per_layer),
            # per sample, so that a ratio of sums holds for prompts of different lengths (the n^2 attention term)
            "visual_flops": sum(visual_flops(n, shape.hidden, shape.intermediate, 1, shape.gated)
                                for sample in selection.sample_layer_visual(shape.layers) for n in sample),
            "visual_flops_full": sum(visual_flops(n, shape.hidden, shape.intermediate, shape.layers, shape.gated)
                                     for n in selection.visual_before),
            "new_tokens": int(new_tokens.shape[1]),
            "context_length": context,
            "samples_beyond_context": (None if context is None
                                       else sum(highest >= context for highest in highest_positions)),
            "llm_shape": asdict(shape),
            "first_call": calls == 1,
        }




def check_positions(positions: str, adapter: MLLMAdapter) -> str:
    if positions not in POSITION_MODES:
        raise ValueError(f"positions must be 'original' (kept tokens keep their ids in the full sequence, the "
                         f"method's default) or 'renumber' (consecutive ids over the pruned sequence); got "
                         f"{positions!r}")
    if positions == "renumber" and adapter.grid_positions:
        raise ValueError(f"positions='renumber' needs 1-D position ids: {adapter.family}'s M-RoPE ids place each "
                         f"visual token on its image or frame grid, which consecutive ids would erase; keep "
                         f"positions='original'")
    return positions


def _lengths_from_full_prompt(gen_kwargs: dict[str, Any], prompt_length: int) -> None:
    """HF counts ``max_length`` / ``min_length`` from the prompt it is handed, and a pruned prompt is shorter:
    turn them into the new-token counts that the full prompt would leave (in place), so that pruning never
    lengthens an answer. ``max_new_tokens`` / ``min_new_tokens``, where given, win as in HF."""
    for total, new in (("max_length", "max_new_tokens"), ("min_length", "min_new_tokens")):
        length = gen_kwargs.pop(total, None)
        if length is None or gen_kwargs.get(new) is not None:
            continue
        if total == "max_length" and length <= prompt_length:
            raise ValueError(f"max_length={length} leaves no room for an answer after the {prompt_length}-token prompt "
                             f"(it counts the prompt): raise it, or pass max_new_tokens")
        gen_kwargs[new] = max(int(length) - prompt_length, 0)


def with_prompt(input_ids: torch.Tensor, new_tokens: torch.Tensor) -> torch.Tensor:
    """Prompt ids followed by the new tokens, as ``model.generate`` returns them; with num_return_sequences > 1
    each prompt row repeats once per sequence, in HF's order."""
    repeats = new_tokens.shape[0] // input_ids.shape[0]
    return torch.cat([input_ids.repeat_interleave(repeats, dim=0), new_tokens.to(input_ids.device)], dim=1)


def split_model_inputs(input_ids: torch.Tensor, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Move the processor outputs out of generate's kwargs; what stays is generation options, with the lengths
    that count the prompt counted on the full one."""
    inputs = {"input_ids": input_ids, **{k: kwargs.pop(k) for k in MODEL_INPUT_KEYS if k in kwargs}}
    _lengths_from_full_prompt(kwargs, input_ids.shape[1])
    return inputs


# Processor outputs the model's forward consumes; everything else passed to generate is a generation option.
MODEL_INPUT_KEYS = {
    "attention_mask", "pixel_values", "pixel_values_videos", "image_grid_thw", "video_grid_thw",
    "mm_token_type_ids", "image_sizes", "image_sizes_videos", "batch_num_images",
    "second_per_grid_ts",  # Qwen2.5-VL: seconds per temporal patch, which scale its video position ids
}
