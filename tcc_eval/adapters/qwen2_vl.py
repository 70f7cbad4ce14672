"""Qwen2-VL: visual tokens are <|image_pad|> / <|video_pad|> runs; positions are 3-row M-RoPE ids."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import MLLMAdapter, grid_cells, register_adapter, runs_of


def grid_list(grid_thw: torch.Tensor | None) -> list[list[int]]:
    return [] if grid_thw is None else grid_thw.tolist()


@register_adapter
class Qwen2VLAdapter(MLLMAdapter):
    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    grid_positions = True

    def visual_token_ids(self) -> tuple[int, ...]:
        cfg = self.model.config
        return (cfg.image_token_id, cfg.video_token_id)

    def visual_groups(
        self, input_ids: torch.Tensor, inputs: dict[str, Any], front_end: dict[str, Any]
    ) -> list[torch.Tensor]:
        """One group per image; one group per temporal patch (2 frames) of a video: the token grid of each."""
        return [cells[:, 0] for cells in self.visual_cells(input_ids, inputs, front_end)]

    def visual_cells(
        self, input_ids: torch.Tensor, inputs: dict[str, Any], front_end: dict[str, Any]
    ) -> list[torch.Tensor]:
        """Each image, and each frame pair of a video, is its ``grid_thw`` grid merged ``spatial_merge_size``-fold,
        row by row."""
        cfg = self.model.config
        merge = cfg.vision_config.spatial_merge_size
        image_grids = iter(grid_list(inputs.get("image_grid_thw")))
        video_grids = iter(grid_list(inputs.get("video_grid_thw")))
        cells = []
        for row in input_ids:
            visual = (row == cfg.image_token_id) | (row == cfg.video_token_id)
            parts: list[torch.Tensor] = []
            for start, _ in runs_of(visual):
                kind = "video" if row[start] == cfg.video_token_id else "image"
                grid = next(video_grids if kind == "video" else image_grids, None)
                if grid is None:
                    raise ValueError(f"input_ids hold more {kind}s than {kind}_grid_thw has grids: pass the "
                                     f"processor's outputs whole (pixel_values{'_videos' if kind == 'video' else ''} "
                                     f"and {kind}_grid_thw with the input_ids they belong to)")
                t, h, w = grid
                parts += [grid_cells(len(parts) + i, h // merge, w // merge) for i in range(t)]
            cells.append(torch.cat(parts) if parts else torch.zeros(0, 3, dtype=torch.long))
        return cells

    def feature_attention(self) -> nn.Module:
        """The last vision block's attention: the patch merger reads that block's output."""
        blocks = self.model.model.visual.blocks
        if len(blocks) == 0:
            raise ValueError("this Qwen2-VL's vision tower has no attention blocks (vision_config.depth=0: each token "
                             "sees only its own pixels), so there is no tower attention to rank tokens by; use a "
                             "method that does not read the vision tower (tcc, a0, divprune, ...)")
        return blocks[-1].attn

    def tower_attention_streams(
        self, calls: list[torch.Tensor], inputs: dict[str, Any], front_end: dict[str, Any]
    ) -> dict[int, torch.Tensor]:
        """The tower runs once on all images, then once on all videos; each merged token is
        ``spatial_merge_size``^2 consecutive patches, so its value is their mean."""
        cfg = self.model.config
        merged = cfg.vision_config.spatial_merge_size ** 2
        media = [(token, inputs[key]) for token, key in ((cfg.image_token_id, "pixel_values"),
                                                         (cfg.video_token_id, "pixel_values_videos"))
                 if inputs.get(key) is not None]
        if [call.shape[0] for call in calls] != [pixels.shape[0] for _, pixels in media]:
            raise ValueError(f"Qwen2-VL's vision tower ran on {[c.shape[0] for c in calls]} patches, expected "
                             f"{[p.shape[0] for _, p in media]} (images, then videos)")
        return {token: call.unflatten(0, (-1, merged)).mean(dim=1) for (token, _), call in zip(media, calls)}
