"""LLaVA-OneVision (HF): visual tokens are <image> / <video> runs; positions are plain 1-D ids."""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import MLLMAdapter, register_adapter, runs_of


@register_adapter
class LlavaOnevisionAdapter(MLLMAdapter):
    family = "llava_onevision"
    model_types = ("llava_onevision",)

    def visual_token_ids(self) -> tuple[int, ...]:
        cfg = self.model.config
        return (cfg.image_token_id, cfg.video_token_id)

    def frame_tokens(self) -> int:
        """Tokens per video frame after the 2x2 bilinear pooling."""
        vision = self.model.config.vision_config
        return math.ceil(vision.image_size // vision.patch_size / 2) ** 2

    def run_until_llm(self, inputs: dict[str, Any], front_end: dict[str, Any]) -> None:
        """Encode images once ourselves to learn each image's token count (back-to-back images form one
        run of <image> tokens), then hand the features to the model's own merge."""
        inputs = dict(inputs)
        pixel_values = inputs.pop("pixel_values", None)
        if pixel_values is not None:
            cfg = self.model.config
            image_outputs = self.model.model.get_image_features(
                pixel_values,
                inputs.get("image_sizes"),
                vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                batch_num_images=inputs.get("batch_num_images"),
                return_dict=True,
            )
            front_end["image_tokens"] = [int(f.shape[0]) for f in image_outputs.pooler_output]
            inputs["mm_encoder_outputs"] = {"image": image_outputs}
        self.model.model(**inputs, use_cache=False)

    def visual_groups(
        self, input_ids: torch.Tensor, inputs: dict[str, Any], front_end: dict[str, Any]
    ) -> list[torch.Tensor]:
        """One group per image (base view, crops and newlines); one per video frame (the video's single
        trailing newline token joins the last frame)."""
        cfg = self.model.config
        per_frame = self.frame_tokens()
        image_tokens = iter(front_end.get("image_tokens", []))
        groups = []
        for row in input_ids:
            ids, next_group = [], 0
            for start, end in runs_of(row == cfg.video_token_id):
                n = end - start
                frames = max(1, (n - 1) // per_frame)
                ids.append((start, next_group + torch.clamp(torch.arange(n) // per_frame, max=frames - 1)))
                next_group += frames
            for start, end in runs_of(row == cfg.image_token_id):
                offset = start
                while offset < end:
                    n = next(image_tokens)
                    ids.append((offset, torch.full((n,), next_group)))
                    next_group += 1
                    offset += n
            ids.sort(key=lambda item: item[0])
            groups.append(torch.cat([g for _, g in ids]) if ids else torch.zeros(0, dtype=torch.long))
        return groups
