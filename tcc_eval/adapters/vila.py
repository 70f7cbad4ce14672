"""VILA1.5 (``tcc_eval.vila``): every image and video frame is a run of placeholder ids; positions are 1-D."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..tower_attention import encoder_layers, feature_layer_index
from .base import NO_CELL, MLLMAdapter, grid_cells, register_adapter, runs_of


@register_adapter
class VilaAdapter(MLLMAdapter):
    family = "vila"
    model_types = ("vila",)

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    def visual_token_ids(self) -> tuple[int, ...]:
        return (self.model.config.image_token_id,)

    def modality(self, input_ids: torch.Tensor) -> str:
        """VILA has no video token: a video is a run of frames, each its own image block, so a prompt with more
        than one image block is scored as a video (a multi-image prompt then uses the video compressor too)."""
        rows = input_ids.reshape(-1, input_ids.shape[-1])
        blocks = max(len(runs_of(row == self.model.config.image_token_id)) for row in rows)
        return "video" if blocks > 1 else "image"

    def run_until_llm(self, inputs: dict[str, Any], front_end: dict[str, Any]) -> None:
        self.model(**inputs, use_cache=False)

    def visual_groups(
        self, input_ids: torch.Tensor, inputs: dict[str, Any], front_end: dict[str, Any]
    ) -> list[torch.Tensor]:
        """One group per image or video frame: VILA gives each frame its own ``num_image_tokens`` block."""
        per_image = self.model.config.num_image_tokens
        groups = []
        for row in input_ids:
            ids, next_group = [], 0
            for start, end in runs_of(row == self.model.config.image_token_id):
                ids.append(next_group + torch.arange(end - start) // per_image)
                next_group += (end - start) // per_image
            groups.append(torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long))
        return groups

    def visual_cells(
        self, input_ids: torch.Tensor, inputs: dict[str, Any], front_end: dict[str, Any]
    ) -> list[torch.Tensor]:
        """Every image or frame block is one grid: ``mlp_downsample`` (VILA1.5) emits its 2x2-merged cells column
        by column; other projectors keep the tower's patches row by row, after a CLS token where it has one."""
        cfg = self.model.config
        patches = cfg.vision_config.image_size // cfg.vision_config.patch_size
        cells = []
        for row in input_ids:
            blocks = int((row == cfg.image_token_id).sum()) // cfg.num_image_tokens
            if cfg.projector_type == "mlp_downsample":
                parts = [grid_cells(b, -(-patches // 2), -(-patches // 2), column_major=True) for b in range(blocks)]
            else:
                cls = NO_CELL.expand(cfg.num_vision_tokens - patches * patches, 3)
                parts = [torch.cat([cls, grid_cells(b, patches, patches)]) for b in range(blocks)]
            cells.append(torch.cat(parts) if parts else torch.zeros(0, 3, dtype=torch.long))
        return cells

    def feature_attention(self) -> nn.Module:
        """The attention of the tower layer whose output ``mm_vision_select_layer`` picks."""
        layers = encoder_layers(self.model.vision_tower)
        index = feature_layer_index(self.model.config.vision_select_layer, len(layers), "this VILA checkpoint")
        return layers[index].self_attn

    def tower_attention_streams(
        self, calls: list[torch.Tensor], inputs: dict[str, Any], front_end: dict[str, Any]
    ) -> dict[int, torch.Tensor]:
        """One tower call for every image and frame; ``mlp_downsample`` tokens are 2x2 patch blocks (the mean over the
        patches a block really holds: odd grids are padded), other projectors keep one token per patch."""
        from ..vila.modeling_vila import VilaDownsample2x2

        (signals,) = calls  # (images, patches, channels)
        if self.model.config.vision_select_feature == "patch":
            signals = signals[:, 1:]
        if self.model.config.projector_type == "mlp_downsample":
            merge = VilaDownsample2x2()
            patches = merge(torch.ones_like(signals[..., :1])).sum(dim=-1, keepdim=True)  # (images, cells, 1)
            signals = merge(signals).unflatten(-1, (4, -1)).sum(dim=-2) / patches
        return {self.model.config.image_token_id: signals.flatten(0, 1)}
