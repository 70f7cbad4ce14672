"""What every MLLM adapter provides: where the visual tokens are, how they group, and their positions.

An adapter never scores or prunes. It turns processor outputs into the exact tensors the unchanged LLM
would receive (merged ``inputs_embeds``, ``attention_mask``, original ``position_ids``) plus a mask of
visual positions and a group id (image / frame) per visual token. Everything downstream is shared.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..tower_attention import TowerAttentionRecorder


@dataclass
class LLMInputs:
    """The LLM's input for one (possibly left-padded) batch, before any pruning."""

    input_ids: torch.Tensor  # (B, L)
    inputs_embeds: torch.Tensor  # (B, L, D): placeholders already replaced by visual features
    attention_mask: torch.Tensor  # (B, L)
    position_ids: torch.Tensor  # (B, L), or (3, B, L) for M-RoPE
    visual_mask: torch.Tensor  # (B, L) bool
    visual_groups: list[torch.Tensor]  # per sample: group id (image or frame) of each visual token
    # per sample: (N_v, 3) long (grid, row, col) of each visual token: which token grid of the sample it belongs to
    # (an image, a frame, LLaVA-OV's base view or its crops) and where in it; -1 rows for tokens that cover no
    # pixels (LLaVA-OV newlines, a CLS token). None: the adapter does not know its layout.
    visual_cells: list[torch.Tensor] | None = None
    # per sample: (N_v,) attention each visual token's patches receive in the vision tower's feature layer
    # (tower_attention.py); NO_PATCHES for tokens that cover no patches. None unless the capture asked for it.
    tower_attention: list[torch.Tensor] | None = None
    tower_keys: list[torch.Tensor] | None = None  # per sample: (N_v, d) that layer's keys, head-averaged, per token
    tower_readout_s: float = 0.0  # seconds the two above took to read (inside the tower) and map to tokens
    # per sample: (N_v,) long, which tower input (an image, an anyres crop, a frame or Qwen's frame pair) each visual
    # token's patches came from, as ids distinct within the sample; captured with the tower attention
    tower_spans: list[torch.Tensor] | None = None

    def n_visual(self, b: int) -> int:
        return int(self.visual_mask[b].sum())


class _Captured(Exception):
    """Raised by the capture hook to stop the forward once the LLM input is known."""


class MLLMAdapter:
    """Base adapter: subclasses set ``family``, ``model_types`` and implement ``visual_token_ids`` and
    ``visual_groups``; ``capture_llm_inputs`` reuses the model's own feature merge, so embeddings are
    exactly what the vanilla forward would feed the LLM."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    grid_positions: ClassVar[bool] = False  # position ids place visual tokens on their grid (M-RoPE), not in a row

    def __init__(self, model: nn.Module):
        self.model = model

    # --- where things live -------------------------------------------------------------------
    @property
    def language_model(self) -> nn.Module:
        """The decoder stack (has ``.layers``, ``.rotary_emb``, ``.embed_tokens``)."""
        return self.model.model.language_model

    @property
    def context_length(self) -> int | None:
        """How many positions the LLM was trained on: the prompt length a checkpoint states it was tuned to
        (VILA's ``tokenizer_model_max_length``, where VILA's own code cuts prompts), else its position range."""
        config = self.language_model.config
        for name in ("tokenizer_model_max_length", "max_position_embeddings"):
            if isinstance(getattr(config, name, None), int):
                return getattr(config, name)
        return None

    def visual_token_ids(self) -> tuple[int, ...]:
        raise NotImplementedError

    def check_full_attention(self) -> None:
        """Pruning needs every LLM layer to see the whole prompt: a sliding window counts sequence places, which
        pruning shifts, so tokens would enter or leave a window and the pruned run would no longer be the unpruned
        one with the dropped tokens masked out (the layer-0 probe would also read the wrong attention)."""
        windowed = [i for i, layer in enumerate(self.language_model.layers)
                    if getattr(layer.self_attn, "sliding_window", None)]
        if windowed:
            raise ValueError(f"this {self.family} checkpoint's LLM uses sliding-window attention in layers {windowed} "
                             f"(config use_sliding_window=True), which token pruning does not support: load it "
                             f"with use_sliding_window=False (the released Qwen2-VL and LLaVA-OneVision configs "
                             f"have it off), or evaluate it with method='none'")

    def video_token_id(self) -> int | None:
        """Placeholder id of video tokens (None where videos are fed as frames of images)."""
        return getattr(self.model.config, "video_token_id", None)

    def visual_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask (same shape) of image/video placeholder positions."""
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for token_id in self.visual_token_ids():
            mask |= input_ids == token_id
        return mask

    def modality(self, input_ids: torch.Tensor) -> str:
        """"video" when the prompt holds video tokens, else "image" (selects the per-modality compressor)."""
        video = self.video_token_id()
        return "video" if video is not None and bool((input_ids == video).any()) else "image"

    def visual_groups(
        self, input_ids: torch.Tensor, inputs: dict[str, Any], front_end: dict[str, Any]
    ) -> list[torch.Tensor]:
        """Group id per visual token; ``front_end`` is what ``run_until_llm`` learned on the way."""
        raise NotImplementedError

    def visual_cells(
        self, input_ids: torch.Tensor, inputs: dict[str, Any], front_end: dict[str, Any]
    ) -> list[torch.Tensor] | None:
        """Where each visual token lies in its token grid (see ``LLMInputs.visual_cells``); the spatial methods
        (uniform, pool) need it. None unless the adapter knows its family's token layout."""
        return None

    def feature_attention(self) -> nn.Module:
        """The self-attention module of the vision-tower layer whose output the LLM's visual features come from."""
        raise ValueError(f"{type(self).__name__} does not say where its vision tower's attention is")

    def tower_attention_streams(
        self, calls: list[torch.Tensor], inputs: dict[str, Any], front_end: dict[str, Any]
    ) -> dict[int, torch.Tensor]:
        """Placeholder id -> one row per placeholder of that id, in the order the model fills them (row by row),
        from the per-patch channels each call of ``feature_attention`` gave (``tower_signals``): the mean over the
        patches each token covers, merged and pooled as the family merges and pools its features."""
        raise NotImplementedError

    def tower_spans(self, groups: list[torch.Tensor], cells: list[torch.Tensor] | None, inputs: dict[str, Any],
                    front_end: dict[str, Any]) -> list[torch.Tensor]:
        """Per sample, the tower input each visual token came from (``LLMInputs.tower_spans``): by default its token
        grid (``visual_cells``: one image or frame; ``default_tower_spans``), else its group."""
        if cells is None:
            return [g.clone() for g in groups]
        return [default_tower_spans(g, c) for g, c in zip(groups, cells)]

    def default_position_ids(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """1-D positions exactly as ``generate`` builds them from a left-padded mask."""
        pos = attention_mask.long().cumsum(-1) - 1
        return pos.masked_fill(attention_mask == 0, 0)

    # --- capture -----------------------------------------------------------------------------
    def run_until_llm(self, inputs: dict[str, Any], front_end: dict[str, Any]) -> None:
        """Run the model's multimodal front end; the capture hook stops it at the LLM's input.

        Facts only the front end knows (e.g. tokens per image) go into ``front_end``."""
        self.model.model(**inputs, use_cache=False)

    def llm_call_kwargs(self, inputs: dict[str, Any], front_end: dict[str, Any] | None = None) -> dict[str, Any]:
        """The keyword arguments the model passes its language model (``inputs_embeds``, ``position_ids``, ...),
        captured by a pre-hook that stops the forward there. Gradients flow unless the caller disables them."""
        captured: dict[str, Any] = {}

        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured.update(kwargs)
            raise _Captured

        handle = self.language_model.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            self.run_until_llm(inputs, {} if front_end is None else front_end)
        except _Captured:
            pass
        finally:
            handle.remove()
        if "inputs_embeds" not in captured:
            raise RuntimeError(f"{type(self).__name__}: the model never reached its language model")
        return captured

    @torch.no_grad()
    def capture_llm_inputs(self, inputs: dict[str, Any], tower_attention: bool = False) -> LLMInputs:
        """The LLM's input; ``tower_attention``: also what each visual token receives in the vision tower."""
        front_end: dict[str, Any] = {}
        recorder = TowerAttentionRecorder(self.feature_attention()) if tower_attention else nullcontext()
        with recorder:
            captured = self.llm_call_kwargs(inputs, front_end)
        input_ids = inputs["input_ids"]
        attention_mask = inputs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        position_ids = captured.get("position_ids")
        if position_ids is None:
            position_ids = self.default_position_ids(attention_mask)
        elif position_ids.dim() == 3 and position_ids.shape[0] == 4:  # text row + 3 M-RoPE rows
            position_ids = position_ids[1:]
        visual_mask = self.visual_mask(input_ids)
        groups = self.visual_groups(input_ids, inputs, front_end)
        cells = self.visual_cells(input_ids, inputs, front_end)
        signals, spans, readout_s = None, None, 0.0
        if tower_attention:
            start = time.perf_counter()
            streams = self.tower_attention_streams(recorder.calls, inputs, front_end)
            signals = self.scatter_streams(streams, input_ids, visual_mask)
            spans = self.tower_spans(groups, cells, inputs, front_end)
            readout_s = recorder.seconds + time.perf_counter() - start
        return LLMInputs(
            input_ids=input_ids,
            inputs_embeds=captured["inputs_embeds"],
            attention_mask=attention_mask.to(input_ids.device),
            position_ids=position_ids,
            visual_mask=visual_mask,
            visual_groups=groups,
            visual_cells=cells,
            tower_attention=None if signals is None else [s[:, 0] for s in signals],
            tower_keys=None if signals is None else [s[:, 1:] for s in signals],
            tower_readout_s=readout_s,
            tower_spans=spans,
        )

    @staticmethod
    def scatter_streams(
        streams: dict[int, torch.Tensor], input_ids: torch.Tensor, visual_mask: torch.Tensor
    ) -> list[torch.Tensor]:
        """Per-placeholder-id rows -> each sample's rows over its visual tokens in sequence order."""
        channels = next(iter(streams.values())).shape[-1]
        full = torch.full((*input_ids.shape, channels), NO_PATCHES, dtype=torch.float32)
        for token_id, rows in streams.items():
            slots = input_ids.cpu() == token_id
            if int(slots.sum()) != rows.shape[0]:
                raise ValueError(f"the vision tower's attention covers {rows.shape[0]} tokens, but the prompt holds "
                                 f"{int(slots.sum())} placeholders of id {token_id}")
            full[slots] = rows.float().cpu()
        return [full[b][visual_mask[b].cpu()] for b in range(input_ids.shape[0])]

    # --- running the unchanged LLM ------------------------------------------------------------
    def generate_from_embeds(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
        prompt_ids: torch.Tensor, **gen_kwargs: Any
    ) -> torch.Tensor:
        """Prefill + decode on (pruned) embeddings; returns only the new tokens. ``prompt_ids`` are the ids under
        the embeddings: generate runs on the embeddings, and its logits processors read the ids as they read the
        prompt of an unpruned run (a repetition penalty covers the prompt's tokens, not only the answer's)."""
        output = self.model.generate(
            input_ids=prompt_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
            position_ids=position_ids, **gen_kwargs
        )
        return output[:, prompt_ids.shape[1]:]

    def forward_from_embeds(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, **kwargs: Any
    ) -> Any:
        """One forward on (pruned) embeddings; used for logits checks and the oracle."""
        return self.model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )


def runs_of(mask: torch.Tensor) -> list[tuple[int, int]]:
    """Contiguous True runs of a 1-D mask as (start, end) pairs: one per image or video in the sequence."""
    idx = torch.nonzero(mask).flatten().tolist()
    runs: list[tuple[int, int]] = []
    for i in idx:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def grid_cells(grid: int, rows: int, cols: int, column_major: bool = False) -> torch.Tensor:
    """(grid, row, col) of every token of a ``rows`` x ``cols`` token grid, row by row (``column_major``: column by
    column)."""
    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    cells = torch.stack([torch.full_like(row, grid), row, col], dim=-1)
    return (cells.transpose(0, 1) if column_major else cells).reshape(-1, 3)


NO_CELL = torch.full((1, 3), -1)  # a visual token that covers no pixels
NO_PATCHES = -1.0  # tower attention of a visual token that covers no patches (attention received is never < 0)


def default_tower_spans(groups: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """One sample's tower spans from its layout: each token grid (an image or a frame) is one; the tokens outside
    every grid that carry patches (a CLS token) are one more per image or frame."""
    grids = cells[:, 0].to(groups.device)
    if grids.numel() == 0:
        return groups.clone()
    return torch.where(grids >= 0, grids, int(grids.max()) + 1 + groups)


ADAPTERS: dict[str, type[MLLMAdapter]] = {}


def register_adapter(cls: type[MLLMAdapter]) -> type[MLLMAdapter]:
    """Class decorator: make an adapter findable by its model types."""
    for model_type in cls.model_types:
        ADAPTERS[model_type] = cls
    return cls


def adapter_for(model: nn.Module) -> MLLMAdapter:
    """The adapter for a loaded model, with a clear error for unsupported families."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ADAPTERS:
        raise ValueError(
            f"no token-compression adapter for model type {model_type!r} ({type(model).__name__}); "
            f"supported: {sorted(ADAPTERS)}. Text-only checkpoints cannot take image or video input."
        )
    return ADAPTERS[model_type](model)

