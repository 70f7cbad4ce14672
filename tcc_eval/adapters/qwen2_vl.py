"""Qwen2-VL: visual tokens are <|image_pad|> / <|video_pad|> runs; positions are 3-row M-RoPE ids."""

from __future__ import annotations

from typing import Any

import torch

from .base import MLLMAdapter, grid_cells, register_adapter, runs_of


def grid_list(grid_thw: torch.Tensor | None) -> list[list[int]]:
    return [] if grid_thw is None else grid_thw.tolist()


@register_adapter
class Qwen2VLAdapter(MLLMAdapter):
    family = "qwen2_vl"
    model_types = ("qwen2_vl",)

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
                t, h, w = next(video_grids if row[start] == cfg.video_token_id else image_grids)
                parts += [grid_cells(len(parts) + i, h // merge, w // merge) for i in range(t)]
            cells.append(torch.cat(parts) if parts else torch.zeros(0, 3, dtype=torch.long))
        return cells
