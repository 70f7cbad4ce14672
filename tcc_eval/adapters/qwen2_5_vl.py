"""Qwen2.5-VL: Qwen2-VL's token layout and 3-row M-RoPE ids (video ids also scale time by seconds per grid, which
the model computes itself); its vision tower attends within windows and permutes patches into window order."""

from __future__ import annotations

from typing import Any

import torch

from .base import register_adapter
from .qwen2_vl import Qwen2VLAdapter


@register_adapter
class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)

    def tower_attention_streams(
        self, calls: list[torch.Tensor], inputs: dict[str, Any], front_end: dict[str, Any]
    ) -> dict[int, torch.Tensor]:
        """As Qwen2-VL, but the tower's blocks see merge units in window order: each stream is put back in
        the order the merger's output is (``argsort(window_index)``, as the tower does)."""
        from transformers.vision_utils import get_vision_window_index  # the tower's own, so the orders agree

        cfg = self.model.config
        vision = cfg.vision_config
        grids = {cfg.image_token_id: inputs.get("image_grid_thw"), cfg.video_token_id: inputs.get("video_grid_thw")}
        streams = super().tower_attention_streams(calls, inputs, front_end)
        for token, rows in streams.items():
            window_index, _ = get_vision_window_index(grids[token], vision.spatial_merge_size, vision.window_size,
                                                      vision.patch_size)
            streams[token] = rows[torch.argsort(window_index.to(rows.device))]
        return streams
