"""Deterministic synthetic MCQ benchmarks with known relevant regions (TCCSynth_IMG / TCCSynth_VID).

Every object is drawn inside exactly one grid cell (default 28 px = one merged Qwen2-VL token), so the
visual tokens an answer depends on are known exactly. Video objects occupy frame pairs (2i, 2i+1)
because Qwen2-VL merges consecutive frame pairs into one temporal token. The samples serve to train
tiny demo models and to score token pruning (keep-only / drop-only ground truth, pointing).

Boxes are half-open pixel boxes ``[x0, y0, x1, y1]`` in canvas coordinates. For video, ``boxes[k]``
belongs to frame ``frames[k]``.
"""
from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

LETTERS = "ABCDEFGH"
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 50), "green": (50, 190, 70), "blue": (50, 90, 230), "yellow": (235, 210, 50),
    "purple": (150, 60, 200), "orange": (245, 140, 30), "cyan": (40, 210, 220), "pink": (240, 120, 190),
    "grey": (176, 176, 176),  # video distractors only; never an answer
}
SHAPES = ("circle", "square", "triangle", "cross", "diamond")
PART_NAMES = {
    2: ("first half", "second half"),
    3: ("beginning", "middle", "end"),
    4: ("first quarter", "second quarter", "third quarter", "fourth quarter"),
}
IMAGE_TYPES = ("color_of_shape", "shape_of_color", "count", "presence")
# Relational questions about one anchor object (drawn once, in a shape no other object has) among a crowd:
# its colour, or the colour of the object in the cell right of it. The second kind's answer object looks
# like every other object, so only its place next to the anchor singles it out. In videos the anchor and
# its neighbour share one frame pair, and every frame pair has its own crowd.
ANCHOR_TYPES = ("anchor_color", "right_of_anchor")
VIDEO_TYPES = ("what_appeared", "when_appeared")


@dataclass(frozen=True)
class ImageConfig:
    """Image benchmark knobs; ``size`` must be a multiple of ``cell``."""
    size: int = 336
    cell: int = 28
    margin: int = 3  # empty pixels between the shape and its cell border
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow")
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "cross")
    min_objects: int = 2  # anchor questions: objects besides the anchor and its right neighbour
    max_objects: int = 4
    question_types: tuple[str, ...] = IMAGE_TYPES
    anchor: str = "diamond"  # the anchor questions' landmark shape; must not be one of ``shapes``
    background: int = 118
    noise: int = 14  # background pixels are uniform in background +- noise, per channel
    noise_block: int = 4  # noise is constant over blocks of this many pixels (keeps PNGs ~25 KB)


@dataclass(frozen=True)
class VideoConfig:
    """Video benchmark knobs; ``frames`` must be even and ``frames // 2`` divisible by ``n_parts``."""
    frames: int = 8
    size: int = 224
    cell: int = 28
    margin: int = 3
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow")
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "cross")
    max_distractors: int = 2  # grey objects per frame pair, 0..max, shapes independent of the target
    n_parts: int = 4
    question_types: tuple[str, ...] = VIDEO_TYPES
    min_objects: int = 0  # anchor questions: crowd per frame pair besides the anchor and its right neighbour
    max_objects: int = 0
    anchor: str = "diamond"
    background: int = 118
    noise: int = 14
    noise_block: int = 4


@dataclass
class SynthSample:
    """One MCQ sample; ``image``/``video`` are None when loaded from ground truth only."""
    index: int
    question: str
    options: dict[str, str]
    answer: str
    category: str
    boxes: list[list[int]]
    frames: list[int]
    image: Image.Image | None = None
    video: list[Image.Image] | None = None
    canvas_hw: tuple[int, int] = (0, 0)
    n_frames: int = 0  # 0 for images
    objects: list[dict[str, Any]] = field(default_factory=list)  # every drawn object, for checks

    @property
    def kind(self) -> str:
        return "video" if self.n_frames else "image"

    def prompt(self) -> str:
        """The text VLMEvalKit's ImageMCQDataset.build_prompt produces for this row (no hint)."""
        opts = "".join(f"{k}. {v}\n" for k, v in self.options.items())
        return (f"Question: {self.question}\nOptions:\n{opts}"
                "Please select the correct answer from the options above. \n")


# ----------------------------------------------------------------------------- configuration
def _make_config(kind: str, config: dict[str, Any]) -> ImageConfig | VideoConfig:
    cls = {"image": ImageConfig, "video": VideoConfig}.get(kind)
    if cls is None:
        raise ValueError(f"kind must be 'image' or 'video', got {kind!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown {kind} config keys {unknown}; valid keys: {sorted(known)}")
    cfg = replace(cls(), **{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    _validate(cfg)
    return cfg


def _validate(cfg: ImageConfig | VideoConfig) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ValueError(f"invalid synth config: {msg}")

    need(cfg.size % cfg.cell == 0, f"size {cfg.size} must be a multiple of cell {cfg.cell}")
    need(0 <= 2 * cfg.margin < cfg.cell - 4, f"margin {cfg.margin} leaves no room in cell {cfg.cell}")
    bad = [c for c in cfg.colors if c not in PALETTE or c == "grey"] + [s for s in cfg.shapes if s not in SHAPES]
    need(not bad, f"unsupported colours/shapes {bad}; colours: {sorted(set(PALETTE) - {'grey'})}, shapes: {SHAPES}")
    need(len(cfg.colors) >= 2 and len(cfg.shapes) >= 2, "need at least 2 colours and 2 shapes")
    need(len(set(cfg.colors)) == len(cfg.colors) and len(set(cfg.shapes)) == len(cfg.shapes), "duplicate names")
    valid_types = (IMAGE_TYPES if isinstance(cfg, ImageConfig) else VIDEO_TYPES) + ANCHOR_TYPES
    need(bool(cfg.question_types) and set(cfg.question_types) <= set(valid_types),
         f"question_types {cfg.question_types} must be a non-empty subset of {valid_types}")
    need(0 <= cfg.noise <= cfg.background <= 255 - cfg.noise, "background +- noise must stay in 0..255")
    need(cfg.noise_block >= 1, "noise_block must be >= 1")
    n_cells = (cfg.size // cfg.cell) ** 2
    anchored = set(cfg.question_types) & set(ANCHOR_TYPES)
    if anchored:
        need(cfg.anchor in SHAPES and cfg.anchor not in cfg.shapes,
             f"anchor {cfg.anchor!r} must be one of {SHAPES} and not in shapes {cfg.shapes} (it must be unique)")
        need(cfg.max_objects + 2 <= n_cells, f"max_objects + anchor + neighbour exceed the {n_cells} cells")
    if isinstance(cfg, ImageConfig):
        need(int(not anchored) <= cfg.min_objects <= cfg.max_objects,
             "need 1 <= min_objects <= max_objects (0 <= min_objects for anchor questions)")
        if set(cfg.question_types) - set(ANCHOR_TYPES):
            need(cfg.max_objects <= min(len(cfg.shapes), n_cells), "max_objects exceeds distinct shapes or cells")
        if "shape_of_color" in cfg.question_types:
            need(cfg.max_objects <= len(cfg.colors), "shape_of_color needs max_objects <= len(colors)")
    else:
        need(cfg.frames >= 2 and cfg.frames % 2 == 0, f"frames {cfg.frames} must be even (frame pairs)")
        need(cfg.n_parts in PART_NAMES and (cfg.frames // 2) % cfg.n_parts == 0,
             f"n_parts must be in {sorted(PART_NAMES)} and divide the {cfg.frames // 2} frame pairs")
        need(cfg.max_distractors + 1 <= n_cells, "too many distractors for the grid")
        need(0 <= cfg.min_objects <= cfg.max_objects, "need 0 <= min_objects <= max_objects (crowd per frame pair)")


# ----------------------------------------------------------------------------- drawing
def _background(rng: np.random.Generator, cfg: ImageConfig | VideoConfig) -> np.ndarray:
    b = cfg.noise_block
    n = -(-cfg.size // b)
    noise = rng.integers(-cfg.noise, cfg.noise + 1, size=(n, n, 3), dtype=np.int16)
    noise = noise.repeat(b, axis=0).repeat(b, axis=1)[: cfg.size, : cfg.size]
    return (noise + cfg.background).astype(np.uint8)


def _cell_box(cell_id: int, cfg: ImageConfig | VideoConfig) -> list[int]:
    """Half-open pixel box of the shape drawn inside grid cell ``cell_id`` (row-major)."""
    row, col = divmod(cell_id, cfg.size // cfg.cell)
    m = cfg.margin
    return [col * cfg.cell + m, row * cfg.cell + m, (col + 1) * cfg.cell - m, (row + 1) * cfg.cell - m]


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: list[int], rgb: tuple[int, int, int]) -> None:
    """Solid, aliasing-free shape covering the box's centre pixel (PIL coordinates are inclusive)."""
    x0, y0, x1, y1 = box[0], box[1], box[2] - 1, box[3] - 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=rgb)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=rgb)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=rgb)
    elif shape == "cross":
        t = max(1, (x1 - x0 + 1) // 5)
        draw.rectangle([x0, cy - t, x1, cy + t], fill=rgb)
        draw.rectangle([cx - t, y0, cx + t, y1], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _mcq(rng: np.random.Generator, answer: str, pool: Sequence[str], k: int) -> tuple[dict[str, str], str]:
    """k options containing ``answer`` at a uniformly random letter, distractors drawn from ``pool``."""
    others = [p for p in pool if p != answer]
    picked = [others[i] for i in rng.permutation(len(others))[: k - 1]]
    pos = int(rng.integers(len(picked) + 1))
    picked.insert(pos, answer)
    return dict(zip(LETTERS, picked)), LETTERS[pos]


# ----------------------------------------------------------------------------- generators
def _anchor_layout(rng: np.random.Generator, cfg: ImageConfig | VideoConfig) -> list[dict[str, Any]]:
    """The anchor in a random cell with a right neighbour, that neighbour, and ``min..max_objects`` others."""
    grid = cfg.size // cfg.cell
    anchor_cell = int(rng.integers(grid)) * grid + int(rng.integers(grid - 1))
    n_others = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    free = [c for c in range(grid * grid) if c not in (anchor_cell, anchor_cell + 1)]
    cells = [anchor_cell, anchor_cell + 1] + [int(c) for c in rng.choice(free, size=n_others, replace=False)]
    shapes = [cfg.anchor] + [cfg.shapes[int(i)] for i in rng.integers(len(cfg.shapes), size=n_others + 1)]
    colors = [cfg.colors[int(i)] for i in rng.integers(len(cfg.colors), size=n_others + 2)]
    return [{"shape": s, "color": c, "box": _cell_box(cell, cfg)} for s, c, cell in zip(shapes, colors, cells)]


def _crowd(rng: np.random.Generator, cfg: VideoConfig) -> list[dict[str, Any]]:
    """``min..max_objects`` objects of the configured colours and shapes (never the anchor's), in distinct cells."""
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    cells = rng.choice((cfg.size // cfg.cell) ** 2, size=n, replace=False)
    shapes = rng.integers(len(cfg.shapes), size=n)
    colors = rng.integers(len(cfg.colors), size=n)
    return [{"shape": cfg.shapes[int(s)], "color": cfg.colors[int(c)], "box": _cell_box(int(cell), cfg)}
            for s, c, cell in zip(shapes, colors, cells)]


def _anchor_question(rng: np.random.Generator, cfg: ImageConfig | VideoConfig, anchor: dict[str, Any],
                     neighbour: dict[str, Any], qtype: str) -> tuple[str, dict[str, str], str, list[dict[str, Any]]]:
    """(question, options, answer letter, the objects the answer depends on)."""
    if qtype == "anchor_color":
        question, color, relevant = f"What color is the {cfg.anchor}?", anchor["color"], [anchor]
    else:  # the neighbour carries the answer; the anchor is what locates it
        question, color = f"What color is the shape right of the {cfg.anchor}?", neighbour["color"]
        relevant = [neighbour, anchor]
    options, answer = _mcq(rng, color, cfg.colors, min(4, len(cfg.colors)))
    return question, options, answer, relevant


def _anchor_sample(index: int, rng: np.random.Generator, cfg: ImageConfig, qtype: str) -> SynthSample:
    objects = _anchor_layout(rng, cfg)
    img = Image.fromarray(_background(rng, cfg), "RGB")
    draw = ImageDraw.Draw(img)
    for o in objects:
        _draw(draw, o["shape"], o["box"], PALETTE[o["color"]])
    question, options, answer, relevant = _anchor_question(rng, cfg, objects[0], objects[1], qtype)
    return SynthSample(index=index, question=question, options=options, answer=answer, category=qtype,
                       boxes=[list(o["box"]) for o in relevant], frames=[], image=img,
                       canvas_hw=(cfg.size, cfg.size), n_frames=0, objects=objects)


def _draw_frames(rng: np.random.Generator, cfg: VideoConfig, objects: list[dict[str, Any]]) -> list[Image.Image]:
    video = []
    for f in range(cfg.frames):
        img = Image.fromarray(_background(rng, cfg), "RGB")
        draw = ImageDraw.Draw(img)
        for o in objects:
            if f in o["frames"]:
                _draw(draw, o["shape"], o["box"], PALETTE[o["color"]])
        video.append(img)
    return video


def _anchor_video_sample(index: int, rng: np.random.Generator, cfg: VideoConfig, qtype: str) -> SynthSample:
    """A crowd in every frame pair; the anchor and its right neighbour in one of them."""
    n_seg = cfg.frames // 2
    seg = int(rng.integers(n_seg))
    objects: list[dict[str, Any]] = []
    for s in range(n_seg):
        layer = _anchor_layout(rng, cfg) if s == seg else _crowd(rng, cfg)
        objects += [{**o, "frames": [2 * s, 2 * s + 1]} for o in layer]
    video = _draw_frames(rng, cfg, objects)
    event = next(i for i, o in enumerate(objects) if o["shape"] == cfg.anchor)
    question, options, answer, relevant = _anchor_question(rng, cfg, objects[event], objects[event + 1], qtype)
    return SynthSample(index=index, question=question, options=options, answer=answer, category=qtype,
                       boxes=[list(o["box"]) for o in relevant for _ in o["frames"]],
                       frames=[f for o in relevant for f in o["frames"]],
                       video=video, canvas_hw=(cfg.size, cfg.size), n_frames=cfg.frames, objects=objects)


def _image_sample(index: int, rng: np.random.Generator, cfg: ImageConfig, qtype: str) -> SynthSample:
    if qtype in ANCHOR_TYPES:
        return _anchor_sample(index, rng, cfg, qtype)
    n_obj = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    shapes = [cfg.shapes[i] for i in rng.permutation(len(cfg.shapes))[:n_obj]]
    if qtype == "shape_of_color":  # colours must identify one object
        colors = [cfg.colors[i] for i in rng.permutation(len(cfg.colors))[:n_obj]]
    else:
        colors = [cfg.colors[i] for i in rng.integers(len(cfg.colors), size=n_obj)]
    cells = rng.choice((cfg.size // cfg.cell) ** 2, size=n_obj, replace=False)
    objects = [{"shape": s, "color": c, "box": _cell_box(int(cell), cfg)}
               for s, c, cell in zip(shapes, colors, cells)]

    arr = _background(rng, cfg)
    img = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(img)
    for o in objects:
        _draw(draw, o["shape"], o["box"], PALETTE[o["color"]])

    target = objects[int(rng.integers(n_obj))]
    k = 4
    if qtype == "color_of_shape":
        question = f"What color is the {target['shape']}?"
        options, answer = _mcq(rng, target["color"], cfg.colors, min(k, len(cfg.colors)))
        relevant = [target]
    elif qtype == "shape_of_color":
        question = f"What shape is the {target['color']} object?"
        options, answer = _mcq(rng, target["shape"], cfg.shapes, min(k, len(cfg.shapes)))
        relevant = [target]
    elif qtype == "count":
        question = "How many objects are there?"
        pool = [str(i) for i in range(1, max(k, cfg.max_objects) + 1)]
        options, answer = _mcq(rng, str(n_obj), pool, k)
        relevant = objects
    else:  # presence: "no" asks for the colour of a present shape that it does not have (a near miss)
        options = {"A": "yes", "B": "no"}
        if rng.random() < 0.5:
            color, answer = target["color"], "A"
        else:
            color = [c for c in cfg.colors if c != target["color"]][int(rng.integers(len(cfg.colors) - 1))]
            answer = "B"
        question = f"Is there a {color} {target['shape']}?"
        relevant = [target]  # shapes are distinct: this object alone decides yes or no
    return SynthSample(index=index, question=question, options=options, answer=answer, category=qtype,
                       boxes=[list(o["box"]) for o in relevant], frames=[], image=img,
                       canvas_hw=(cfg.size, cfg.size), n_frames=0, objects=objects)


def _video_sample(index: int, rng: np.random.Generator, cfg: VideoConfig, qtype: str) -> SynthSample:
    if qtype in ANCHOR_TYPES:
        return _anchor_video_sample(index, rng, cfg, qtype)
    n_seg, n_cells = cfg.frames // 2, (cfg.size // cfg.cell) ** 2
    seg = int(rng.integers(n_seg))
    shape = cfg.shapes[int(rng.integers(len(cfg.shapes)))]
    color = cfg.colors[int(rng.integers(len(cfg.colors)))]
    target_cell = int(rng.integers(n_cells))
    objects = [{"shape": shape, "color": color, "box": _cell_box(target_cell, cfg),
                "frames": [2 * seg, 2 * seg + 1]}]
    for s in range(n_seg):
        n_d = int(rng.integers(cfg.max_distractors + 1))
        free = [c for c in range(n_cells) if not (s == seg and c == target_cell)]
        for cell in rng.choice(free, size=n_d, replace=False):
            objects.append({"shape": cfg.shapes[int(rng.integers(len(cfg.shapes)))], "color": "grey",
                            "box": _cell_box(int(cell), cfg), "frames": [2 * s, 2 * s + 1]})

    video = _draw_frames(rng, cfg, objects)

    if qtype == "what_appeared" and rng.random() < 0.5:
        question = "Which colored shape appeared in the video?"
        options, answer = _mcq(rng, shape, cfg.shapes, min(4, len(cfg.shapes)))
    elif qtype == "what_appeared":
        question = "What was the color of the colored shape in the video?"
        options, answer = _mcq(rng, color, cfg.colors, min(4, len(cfg.colors)))
    else:  # parts in chronological order; the target segment is uniform, so letters are too
        question = f"In which part of the clip did the {color} {shape} appear?"
        options = dict(zip(LETTERS, PART_NAMES[cfg.n_parts]))
        answer = LETTERS[seg * cfg.n_parts // n_seg]
    target = objects[0]
    return SynthSample(index=index, question=question, options=options, answer=answer, category=qtype,
                       boxes=[list(target["box"]) for _ in target["frames"]], frames=list(target["frames"]),
                       video=video, canvas_hw=(cfg.size, cfg.size), n_frames=cfg.frames, objects=objects)


def generate(kind: str, n: int, seed: int, split: str = "test", **config: Any) -> list[SynthSample]:
    """Generate ``n`` samples, fully determined by (kind, n, seed, split, config).

    Sample i depends only on (kind, seed, split, config, i), so a smaller n yields a prefix. Question
    types cycle through ``question_types`` for exact category balance. Config keys: the fields of
    ``ImageConfig`` / ``VideoConfig``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    cfg = _make_config(kind, config)
    make = _image_sample if kind == "image" else _video_sample
    base = [int(seed), ("train", "test").index(split), ("image", "video").index(kind)]
    return [make(i, np.random.default_rng(base + [i]), cfg, cfg.question_types[i % len(cfg.question_types)])
            for i in range(n)]


# ----------------------------------------------------------------------------- token masks
def _box_mask(boxes: Sequence[Sequence[int]], grid_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """Tokens whose pixel span overlaps any box with positive area (exact integer arithmetic)."""
    gh, gw = grid_hw
    ih, iw = image_hw
    mask = np.zeros((gh, gw), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[(y0 * gh) // ih: -((-y1 * gh) // ih), (x0 * gw) // iw: -((-x1 * gw) // iw)] = True
    return mask


def token_mask(sample: SynthSample, grid_hw: tuple[int, int], image_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean (H, W) mask of the visual tokens covering the sample's relevant boxes.

    ``grid_hw`` is the token grid laid over the whole image; ``image_hw`` is the pixel size the boxes
    refer to (default: the canvas). Resizing keeps fractions, so pass the canvas size even when the
    processor resized the image. Flatten row-major to match visual token order.
    """
    if sample.kind != "image":
        raise ValueError("token_mask is for image samples; use token_mask_video for videos")
    return _box_mask(sample.boxes, grid_hw, image_hw or sample.canvas_hw)


def token_mask_video(sample: SynthSample, grid_hw: tuple[int, int], image_hw: tuple[int, int] | None = None,
                     frames_per_token: int = 2) -> np.ndarray:
    """Boolean (T', H, W) mask, T' = n_frames // frames_per_token (2 for Qwen2-VL, 1 per frame)."""
    if sample.kind != "video":
        raise ValueError("token_mask_video is for video samples; use token_mask for images")
    if frames_per_token < 1 or sample.n_frames % frames_per_token:
        raise ValueError(f"frames_per_token={frames_per_token} must divide n_frames={sample.n_frames}")
    mask = np.zeros((sample.n_frames // frames_per_token, *grid_hw), dtype=bool)
    for f, box in zip(sample.frames, sample.boxes):
        mask[f // frames_per_token] |= _box_mask([box], grid_hw, image_hw or sample.canvas_hw)
    return mask


# ----------------------------------------------------------------------------- export
def _png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")  # lossless, so pixel checks survive the round trip
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _option_columns(samples: Sequence[SynthSample]) -> list[str]:
    return [L for L in LETTERS if any(L in s.options for s in samples)]


def _mcq_rows(samples: Sequence[SynthSample]) -> list[dict[str, Any]]:
    cols = _option_columns(samples)
    return [dict(index=s.index, question=s.question, **{L: s.options.get(L) for L in cols},
                 answer=s.answer, category=s.category) for s in samples]


def _check_kind(samples: Sequence[SynthSample], kind: str) -> None:
    wrong = [s.index for s in samples if s.kind != kind or (s.image if kind == "image" else s.video) is None]
    if wrong:
        raise ValueError(f"samples {wrong[:5]} are not {kind} samples with pixels; "
                         f"regenerate them with generate({kind!r}, ...)")


def export_vlmeval_tsv(samples: Sequence[SynthSample], path: str | os.PathLike) -> Path:
    """VLMEvalKit custom MCQ TSV (index, image as base64 PNG, question, A.., answer, category).

    Options a question lacks (C/D of yes/no questions) stay empty, which pandas reads back as NaN.
    """
    _check_kind(samples, "image")
    rows = _mcq_rows(samples)
    for row, s in zip(rows, samples):
        row["image"] = _png_b64(s.image)
    cols = ["index", "image", "question", *_option_columns(samples), "answer", "category"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=cols).to_csv(path, sep="\t", index=False)
    return path


# Lossless FFV1 in the mp4 container: frameworks hand video LLMs the file, and a lossy codec (mp4v: max
# pixel error 146, mean 5.5 on these frames) blurs objects of 28 px into their crowded neighbours, so the
# pixels would no longer match the ground-truth boxes. decord, PyAV and OpenCV decode it bit-exactly.
VIDEO_CODEC = "FFV1"
# One frame per second: LLaVA-OneVision's VLMEvalKit wrapper samples a video file at 1 fps, so it reads all
# 8 frames, as every other path does (at 2 fps it read every other frame: 4 of 8).
VIDEO_FPS = 1.0


def _write_video(frames: Sequence[Image.Image], frames_dir: Path, mp4_path: Path, fps: float) -> bool:
    """Frame PNGs always; a lossless mp4 (VIDEO_CODEC) when OpenCV can write one. Returns whether it did."""
    frames_dir.mkdir(parents=True, exist_ok=True)
    for i, fr in enumerate(frames):
        fr.save(frames_dir / f"{i:03d}.png")
    try:
        import cv2
    except ImportError:
        return False
    w, h = frames[0].size
    writer = cv2.VideoWriter(str(mp4_path), cv2.VideoWriter_fourcc(*VIDEO_CODEC), fps, (w, h))
    if not writer.isOpened():
        return False
    for fr in frames:
        writer.write(cv2.cvtColor(np.asarray(fr), cv2.COLOR_RGB2BGR))
    writer.release()
    return mp4_path.exists()


def export_vlmeval_video(samples: Sequence[SynthSample], root: str | os.PathLike, name: str = "TCCSynth_VID",
                         fps: float = VIDEO_FPS) -> Path:
    """Write root/videos/<index>/NNN.png, root/videos/<index>.mp4 and root/<name>.tsv.

    TSV columns: index, video, question, A.., answer, category, frames_dir; paths are relative to
    root. ``video`` falls back to the frames folder when no mp4 writer is available.
    """
    _check_kind(samples, "video")
    root = Path(root)
    rows = _mcq_rows(samples)
    for row, s in zip(rows, samples):
        frames_dir = Path("videos") / str(s.index)
        mp4 = Path("videos") / f"{s.index}.mp4"
        ok = _write_video(s.video, root / frames_dir, root / mp4, fps)
        row["video"], row["frames_dir"] = (mp4 if ok else frames_dir).as_posix(), frames_dir.as_posix()
    cols = ["index", "video", "question", *_option_columns(samples), "answer", "category", "frames_dir"]
    path = root / f"{name}.tsv"
    pd.DataFrame(rows, columns=cols).to_csv(path, sep="\t", index=False)
    return path


def export_lmms(samples: Sequence[SynthSample], out_dir: str | os.PathLike, kind: str,
                name: str | None = None, fps: float = VIDEO_FPS) -> Path:
    """lmms-eval local-task data: out_dir/<name>.jsonl plus PNGs (and mp4s) beside it.

    Each line: id, question, options (list, letter order), answer (letter), category and either
    image_path or video_path + frames_dir, relative to out_dir.
    """
    _check_kind(samples, kind)
    out = Path(out_dir)
    name = name or ("TCCSynth_IMG" if kind == "image" else "TCCSynth_VID")
    lines = []
    for s in samples:
        rec: dict[str, Any] = {"id": s.index, "question": s.question, "options": list(s.options.values()),
                               "answer": s.answer, "category": s.category}
        if kind == "image":
            rel = Path("images") / f"{s.index}.png"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            s.image.save(out / rel)
            rec["image_path"] = rel.as_posix()
        else:
            frames_dir, mp4 = Path("videos") / str(s.index), Path("videos") / f"{s.index}.mp4"
            ok = _write_video(s.video, out / frames_dir, out / mp4, fps)
            rec["video_path"], rec["frames_dir"] = (mp4 if ok else frames_dir).as_posix(), frames_dir.as_posix()
        lines.append(json.dumps(rec))
    path = out / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def save_ground_truth(samples: Sequence[SynthSample], path: str | os.PathLike) -> Path:
    """JSON of everything but pixels, so evaluation can map predictions back to regions."""
    if len({s.index for s in samples}) != len(samples):
        raise ValueError("duplicate sample indices (image and video sets both start at 0): save one set per file")
    recs = [{k: v for k, v in asdict(replace(s, image=None, video=None)).items() if k not in ("image", "video")}
            for s in samples]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": 1, "samples": recs}, indent=1))
    return path


def load_ground_truth(path: str | os.PathLike) -> dict[int, SynthSample]:
    """Samples without pixels, keyed by index; token_mask / token_mask_video accept them."""
    data = json.loads(Path(path).read_text())
    if data.get("version") != 1:
        raise ValueError(f"{path}: unsupported ground-truth version {data.get('version')!r}; regenerate it")
    out = {}
    for rec in data["samples"]:
        rec["canvas_hw"] = tuple(rec["canvas_hw"])
        out[int(rec["index"])] = SynthSample(**rec)
    return out
