"""VILA1.5 (``tcc_eval.vila``): every image and video frame is a run of placeholder ids; positions are 1-D."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import MLLMAdapter, register_adapter, runs_of


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
