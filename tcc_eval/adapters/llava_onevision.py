"""LLaVA-OneVision (HF): visual tokens are <image> / <video> runs; positions are plain 1-D ids."""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch import nn

from ..tower_attention import encoder_layers, feature_layer_index
from .base import NO_CELL, NO_PATCHES, MLLMAdapter, grid_cells, register_adapter, runs_of


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
                vision_aspect_ratio=cfg.vision_aspect_ratio,
                batch_num_images=inputs.get("batch_num_images"),
                return_dict=True,
            )
            front_end["image_tokens"] = [int(f.shape[0]) for f in image_outputs.pooler_output]
            newline = self.model.model.image_newline
            front_end["image_newlines"] = [int((f == newline.to(f)).all(dim=-1).sum())
                                           for f in image_outputs.pooler_output]
            inputs["mm_encoder_outputs"] = {"image": image_outputs}
            pixel_values_videos = inputs.pop("pixel_values_videos", None)
            if pixel_values_videos is not None:  # the model takes encoder outputs for all media or for none
                inputs["mm_encoder_outputs"]["video"] = self.model.model.get_video_features(
                    pixel_values_videos,
                    vision_feature_layer=cfg.vision_feature_layer,
                    vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                    return_dict=True,
                )
        self.model.model(**inputs, use_cache=False)

    def video_frames(self, inputs: dict[str, Any]) -> int | None:
        """Frames per video: the model stacks a batch's videos, so they all have the same count."""
        videos = inputs.get("pixel_values_videos")
        return None if videos is None else int(videos.shape[1])

    def media(self, row: torch.Tensor, images: Iterator[tuple[int, int]], frames: int | None
              ) -> list[tuple[int, str, int, int]]:
        """The videos and images of one prompt row as (start, kind, tokens, count): a video's frames, an image's
        crop rows (its newlines). ``images`` yields each image's (tokens, newlines) from ``run_until_llm``, in
        order; back-to-back images share one run of <image> tokens, as back-to-back videos (``frames`` each, and
        one newline) share one of <video> tokens. Videos come first, then images."""
        cfg = self.model.config
        parts = []
        for start, end in runs_of(row == cfg.video_token_id):
            per_video = end - start if frames is None else frames * self.frame_tokens() + 1
            if (end - start) % per_video or (per_video - 1) % self.frame_tokens():
                raise ValueError(f"LLaVA-OneVision run of {end - start} video tokens does not split into videos of "
                                 f"{frames or 'some'} frames x {self.frame_tokens()} tokens and a newline each "
                                 f"(back-to-back videos need pixel_values_videos in the inputs to be told apart)")
            for offset in range(start, end, per_video):
                parts.append((offset, "video", per_video, max(1, (per_video - 1) // self.frame_tokens())))
        for start, end in runs_of(row == cfg.image_token_id):
            offset = start
            while offset < end:
                image = next(images, None)
                if image is None:
                    raise ValueError("input_ids hold more <image> tokens than the inputs have images: pass the "
                                     "processor's outputs whole (pixel_values and image_sizes with the input_ids "
                                     "they belong to)")
                n_tokens, newline_rows = image
                parts.append((offset, "image", n_tokens, newline_rows))
                offset += n_tokens
        return parts

    @staticmethod
    def images(front_end: dict[str, Any]) -> Iterator[tuple[int, int]]:
        return iter(zip(front_end.get("image_tokens", []), front_end.get("image_newlines", [])))

    def visual_groups(
        self, input_ids: torch.Tensor, inputs: dict[str, Any], front_end: dict[str, Any]
    ) -> list[torch.Tensor]:
        """One group per image (base view, crops and newlines); one per video frame (the video's single
        trailing newline token joins its last frame)."""
        per_frame = self.frame_tokens()
        images, frames = self.images(front_end), self.video_frames(inputs)
        groups = []
        for row in input_ids:
            ids, next_group = [], 0
            for start, kind, n_tokens, count in self.media(row, images, frames):
                if kind == "video":
                    ids.append((start, next_group + torch.clamp(torch.arange(n_tokens) // per_frame, max=count - 1)))
                    next_group += count
                else:
                    ids.append((start, torch.full((n_tokens,), next_group)))
                    next_group += 1
            ids.sort(key=lambda item: item[0])
            groups.append(torch.cat([g for _, g in ids]) if ids else torch.zeros(0, dtype=torch.long))
        return groups

    def visual_cells(
        self, input_ids: torch.Tensor, inputs: dict[str, Any], front_end: dict[str, Any]
    ) -> list[torch.Tensor]:
        """An image is its base view (``image_size / patch_size`` square, row by row), then, when it has anyres
        crops, their unpadded grid row by row with a newline after each row (the newline count, read from the
        packed features, gives the rows); without crops, one newline follows the base view. A video frame is its
        pooled square grid; each video's one trailing newline ends it."""
        cfg = self.model.config
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        pooled = math.isqrt(self.frame_tokens())
        images, frames = self.images(front_end), self.video_frames(inputs)
        cells = []
        for row in input_ids:
            parts, grids = [], 0  # (start, cells); grid ids need only be distinct within the sample
            for start, kind, n_tokens, count in self.media(row, images, frames):
                if kind == "video":
                    frame_grids = [grid_cells(grids + f, pooled, pooled) for f in range(count)]
                    parts.append((start, torch.cat(frame_grids + [NO_CELL])))
                    grids += count
                else:
                    parts.append((start, self.image_cells(grids, side, n_tokens, count)))
                    grids += 2
            parts.sort(key=lambda part: part[0])
            cells.append(torch.cat([c for _, c in parts]) if parts else torch.zeros(0, 3, dtype=torch.long))
        return cells

    @staticmethod
    def image_cells(grid: int, side: int, n_tokens: int, newline_rows: int) -> torch.Tensor:
        """Base view as grid ``grid``, crops (if any) as grid ``grid + 1``."""
        base = grid_cells(grid, side, side)
        if n_tokens == side * side + 1:
            return torch.cat([base, NO_CELL])
        cols = (n_tokens - side * side) // max(newline_rows, 1) - 1
        if newline_rows == 0 or newline_rows * (cols + 1) != n_tokens - side * side:
            raise ValueError(f"LLaVA-OneVision image of {n_tokens} tokens with {newline_rows} newlines does not split "
                             f"into a {side}x{side} base view and rows of crop tokens")
        crops = torch.cat([grid_cells(grid + 1, newline_rows, cols).reshape(newline_rows, cols, 3),
                           NO_CELL.expand(newline_rows, 1, 3)], dim=1)
        return torch.cat([base, crops.reshape(-1, 3)])

    def feature_attention(self) -> nn.Module:
        """The attention of the SigLIP layer whose output ``vision_feature_layer`` picks."""
        layers = encoder_layers(self.model.model.vision_tower)
        index = feature_layer_index(self.model.config.vision_feature_layer, len(layers), "this LLaVA-OneVision")
        return layers[index].self_attn

    def tower_attention_streams(
        self, calls: list[torch.Tensor], inputs: dict[str, Any], front_end: dict[str, Any]
    ) -> dict[int, torch.Tensor]:
        """``run_until_llm`` runs the tower on every image crop, then the model runs it on every video frame. The
        per-patch values go through the model's own packing (base view, unpadded and possibly interpolated crops)
        and frame pooling, as the features do (bilinear where they are interpolated); newlines cover no patches."""
        cfg = self.model.config
        inner = self.model.model
        received = [c[:, 1:] if cfg.vision_feature_select_strategy == "default" else c for c in calls]
        newline = torch.full((calls[0].shape[-1],), NO_PATCHES) if calls else None
        streams = {}
        if inputs.get("pixel_values") is not None:
            per_crop = received.pop(0)
            counts = self.crops_per_image(inputs)
            if sum(counts) != per_crop.shape[0]:
                raise ValueError(f"LLaVA-OneVision's tower ran on {per_crop.shape[0]} image crops, "
                                 f"expected {sum(counts)}")
            packed, _ = inner.pack_image_features(list(per_crop.split(counts)), inputs["image_sizes"],
                                                  image_newline=newline.to(per_crop),
                                                  vision_aspect_ratio=cfg.vision_aspect_ratio)
            streams[cfg.image_token_id] = torch.cat(packed)
        if inputs.get("pixel_values_videos") is not None:
            videos = inputs["pixel_values_videos"].shape[0]
            pooled = inner.apply_pooling(received.pop(0)).reshape(videos, -1, newline.numel())
            ends = newline.to(pooled).expand(videos, 1, -1)
            streams[cfg.video_token_id] = torch.cat([pooled, ends], dim=1).flatten(0, 1)
        if received:
            raise ValueError(f"LLaVA-OneVision's tower ran {len(calls)} times, expected once for images, "
                             f"once for videos")
        return streams

    def tower_spans(self, groups: list[torch.Tensor], cells: list[torch.Tensor] | None, inputs: dict[str, Any],
                    front_end: dict[str, Any]) -> list[torch.Tensor]:
        """Frames and base views as their grids; each anyres crop apart, as the tower encodes it. A crop token's
        crop goes through the model's own packing (unpadding, and the bilinear downscaling of large crop grids,
        where a token takes the crop most of it came from)."""
        spans = super().tower_spans(groups, cells, inputs, front_end)
        if inputs.get("pixel_values") is None:
            return spans
        crop_of = self.crop_of_image_tokens(inputs)
        image_token = self.model.config.image_token_id
        start = 0
        for b, row in enumerate(inputs["input_ids"]):
            row = row.to(spans[b].device)
            is_image = row[self.visual_mask(row)] == image_token
            crops = crop_of[start:start + int(is_image.sum())].to(spans[b].device)
            start += int(is_image.sum())
            if not bool(is_image.any()):
                continue
            in_crop = is_image.clone()
            in_crop[is_image] = crops >= 0  # newlines keep their span: they carry no patches
            spans[b][in_crop] = int(spans[b].max()) + 1 + crops[crops >= 0]
        return spans

    def crop_of_image_tokens(self, inputs: dict[str, Any]) -> torch.Tensor:
        """For every image token of the batch, in order, the index (over the batch's crops, base views included)
        of the tower input it came from; -1 for newlines. Each image's one-hot crop indicators (and a newline
        indicator) are packed as its features are."""
        cfg = self.model.config
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        crops, first = [], 0
        for image, count in enumerate(self.crops_per_image(inputs)):
            indicators = torch.eye(count + 1)[:count, None, :].expand(count, side * side, count + 1)
            (packed,), _ = self.model.model.pack_image_features(
                [indicators], inputs["image_sizes"][image:image + 1], image_newline=torch.eye(count + 1)[count],
                vision_aspect_ratio=cfg.vision_aspect_ratio)
            crop = packed.argmax(dim=-1)
            crops.append(torch.where(crop == count, -1, first + crop))
            first += count
        return torch.cat(crops)

    def crops_per_image(self, inputs: dict[str, Any]) -> list[int]:
        """Crops (base view included) of each image, as ``get_image_features`` splits them: anyres crops only for an
        image alone in its sample."""
        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

        cfg = self.model.config
        sizes = inputs["image_sizes"]
        batch_num_images = inputs.get("batch_num_images")
        if batch_num_images is None:
            alone = [True] * len(sizes)
        else:
            alone = [n == 1 for n in batch_num_images for _ in range(n)]
        return [image_size_to_num_patches(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size) if crop else 1
                for size, crop in zip(sizes, alone)]
