"""Where each visual token of a synthetic sample lies on the canvas, per model family.

The synthetic benchmarks draw every object inside one 28-px cell, so a token's pixel box tells exactly
whether it covers a ground-truth object. Layouts (checked against the HF models in tests/test_demo.py):
- Qwen2-VL (and Qwen2.5-VL) image: one token per 28x28 block, row-major over ``image_grid_thw // 2``.
- Qwen2-VL video: the same grid per frame pair (temporal patch 2), pairs in time order.
- LLaVA-OneVision image (single 336x336 pinpoint): the base view (row-major), then the one anyres crop
  with a newline token after every row; newline tokens cover no pixels.
- LLaVA-OneVision video: per frame the 2x2-pooled grid (row-major), frames in order, one final newline.
- VILA1.5 (SigLIP, ``mlp_downsample``): each image or frame is one block of 2x2-merged patch cells in
  VILA1.5's column-major order (an odd patch grid's zero padding leaves the last row/column half-size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..synth import SynthSample


@dataclass
class TokenRegions:
    """Pixel boxes (canvas coordinates, half-open) and frames of every visual token of one sample."""

    boxes: np.ndarray  # (N_v, 4) int, -1 rows for tokens without pixels (newlines)
    frames: list[tuple[int, ...]]  # frames each token covers; () for images and newlines
    views: list[int] | None = None  # which view of the image a token is in (LLaVA-OV: 0 base, 1 crop); None: one

    def __len__(self) -> int:
        return len(self.frames)

    def ground_truth(self, sample: SynthSample) -> np.ndarray:
        """(N_v,) bool: tokens covering a box the answer depends on (in its frame, for video)."""
        return self.covering(sample.boxes, sample.frames or None)

    def objects(self, sample: SynthSample, objects: list[dict] | None = None) -> np.ndarray:
        """(N_v,) bool: tokens covering any drawn object, relevant or not (``objects``: only these of them)."""
        boxes, frames = [], []
        for o in sample.objects if objects is None else objects:
            for f in o.get("frames", [None]):
                boxes.append(o["box"])
                frames.append(f)
        return self.covering(boxes, frames if sample.kind == "video" else None)

    def lookalikes(self, sample: SynthSample) -> np.ndarray:
        """(N_v,) bool: tokens outside the ground truth on a drawn object that shows the answer (its colour or
        shape is the correct option): evidence for the answer that the question does not point at."""
        value = sample.options[sample.answer]
        showing = [o for o in sample.objects if value in (o.get("color"), o.get("shape"))]
        return self.objects(sample, showing) & ~self.ground_truth(sample)

    def covering(self, boxes: list[list[int]], frames: list[int] | None = None) -> np.ndarray:
        """Tokens overlapping any box with positive area; ``frames[k]`` restricts box k to one frame."""
        out = np.zeros(len(self), dtype=bool)
        for k, box in enumerate(boxes):
            overlap = ((np.minimum(self.boxes[:, 2], box[2]) > np.maximum(self.boxes[:, 0], box[0]))
                       & (np.minimum(self.boxes[:, 3], box[3]) > np.maximum(self.boxes[:, 1], box[1])))
            if frames is not None:
                overlap &= np.array([frames[k] in f for f in self.frames])
            out |= overlap & (self.boxes[:, 0] >= 0)
        return out


def _grid_boxes(grid_hw: tuple[int, int], canvas_hw: tuple[int, int]) -> np.ndarray:
    gh, gw = grid_hw
    ch, cw = canvas_hw
    rows, cols = np.divmod(np.arange(gh * gw), gw)
    return np.stack([cols * cw // gw, rows * ch // gh, (cols + 1) * cw // gw, (rows + 1) * ch // gh], axis=1)


NO_BOX = np.full((1, 4), -1)


def token_regions(model: torch.nn.Module, inputs: dict[str, torch.Tensor], b: int, sample: SynthSample) -> TokenRegions:
    """Regions of the visual tokens of batch row ``b`` (one image or one video per row)."""
    cfg = model.config
    canvas = tuple(sample.canvas_hw)
    if cfg.model_type in ("qwen2_vl", "qwen2_5_vl"):  # Qwen2.5-VL's tower restores row order after its windows
        merge = cfg.vision_config.spatial_merge_size
        key = "video_grid_thw" if sample.kind == "video" else "image_grid_thw"
        t, h, w = (int(x) for x in inputs[key][b])
        grid = _grid_boxes((h // merge, w // merge), canvas)
        if sample.kind == "image":
            return TokenRegions(grid, [()] * len(grid))
        per = sample.n_frames // t
        frames = [tuple(range(p * per, (p + 1) * per)) for p in range(t) for _ in range(len(grid))]
        return TokenRegions(np.concatenate([grid] * t), frames)
    if cfg.model_type == "llava_onevision":
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        if sample.kind == "image":
            if [list(p) for p in cfg.image_grid_pinpoints] != [[cfg.vision_config.image_size] * 2]:
                raise ValueError("demo regions assume LLaVA-OneVision with one square pinpoint (base view + 1 crop)")
            grid = _grid_boxes((side, side), canvas)
            crop = np.concatenate([np.concatenate([grid[r * side:(r + 1) * side], NO_BOX]) for r in range(side)])
            boxes = np.concatenate([grid, crop])
            return TokenRegions(boxes, [()] * len(boxes), [0] * len(grid) + [1] * len(crop))
        pooled = -(-side // 2)
        grid = _grid_boxes((pooled, pooled), canvas)
        boxes = np.concatenate([grid] * sample.n_frames + [NO_BOX])
        frames = [(f,) for f in range(sample.n_frames) for _ in range(len(grid))] + [()]
        return TokenRegions(boxes, frames)
    if cfg.model_type == "vila":
        if cfg.projector_type != "mlp_downsample" or cfg.num_vision_tokens != (cfg.vision_config.image_size
                                                                            // cfg.vision_config.patch_size) ** 2:
            raise ValueError("demo regions assume VILA with a SigLIP tower and the mlp_downsample projector")
        grid = _vila_downsample_boxes(cfg.vision_config.image_size // cfg.vision_config.patch_size, canvas)
        if sample.kind == "image":
            return TokenRegions(grid, [()] * len(grid))
        frames = [(f,) for f in range(sample.n_frames) for _ in range(len(grid))]
        return TokenRegions(np.concatenate([grid] * sample.n_frames), frames)
    raise ValueError(f"no demo token layout for model type {cfg.model_type!r}")


def _vila_downsample_boxes(patches: int, canvas_hw: tuple[int, int]) -> np.ndarray:
    """Boxes of VILA's 2x2-merged tokens over a ``patches`` x ``patches`` grid, column by column."""
    side = -(-patches // 2)
    cols, rows = np.divmod(np.arange(side * side), side)  # index = col * rows + row
    ch, cw = canvas_hw
    x0, y0 = 2 * cols * cw // patches, 2 * rows * ch // patches
    x1 = np.minimum(2 * cols + 2, patches) * cw // patches
    y1 = np.minimum(2 * rows + 2, patches) * ch // patches
    return np.stack([x0, y0, x1, y1], axis=1)
