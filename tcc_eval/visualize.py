"""``python -m tcc_eval.visualize``: which visual tokens each method keeps, drawn on the synthetic inputs.

For a few test samples, one row per sample: the input, then one panel per method (tcc, random, oracle
by default) where pruned tokens are blanked (grey) and kept tokens show their pixels; ground-truth
objects are outlined in green. Videos show every frame pair (Qwen2-VL) or frame (LLaVA-OneVision) side
by side, and LLaVA-OneVision images their base view and crop. Uses the shipped demo models
(``tcc_eval.demo.paths()``) unless ``--model`` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from .options import DEFAULT_INSTRUCTION_ROWS, output_file

if TYPE_CHECKING:
    from .demo.regions import TokenRegions
    from .synth import SynthSample

BLANK = (60, 60, 60)
GT = (40, 220, 60)
LABEL_H = 16


def kept_tokens(model: torch.nn.Module, processor: Any, sample: SynthSample, method: str, ratio: float, compressor: Any,
                instruction_rows: str = DEFAULT_INSTRUCTION_ROWS) -> tuple[np.ndarray, Any, str]:
    """(kept mask over visual tokens, token regions, predicted letter) for one sample and method."""
    from .api import wrap_model
    from .demo.evaluate import kept_visual_mask, visual_rows
    from .demo.regions import token_regions
    from .demo.train import encode

    inputs = encode(processor, [sample])
    pruned = wrap_model(model, method=method, keep_ratio=ratio, compressor=compressor,
                        instruction_rows=instruction_rows)
    out = pruned.generate(**inputs, max_new_tokens=1, do_sample=False)
    visual = visual_rows(model, inputs["input_ids"], inputs["attention_mask"])[0]
    keep = kept_visual_mask(pruned.last_selection.kept_positions[0], visual)
    answer = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    return keep, token_regions(model, inputs, 0, sample), answer


def panels(sample: SynthSample, keep: np.ndarray | None, regions: TokenRegions) -> list[Image.Image]:
    """One panel per image view (LLaVA-OV: base view and crop apart, so a cell shows as kept only if that view's
    token is), frame pair or frame: pixels of kept tokens, blank elsewhere."""
    frames = [sample.image] if sample.kind == "image" else sample.video
    views = regions.views or [0] * len(regions)
    groups = sorted({(f, v) for f, v, box in zip(regions.frames, views, regions.boxes) if box[0] >= 0},
                    key=lambda g: (g[0][:1], g[1]))
    if keep is None:  # the input itself: one panel per image or frame
        groups = [g for g in groups if g[1] == groups[0][1]]
    out = []
    for group, view in groups:
        src = np.asarray(frames[group[0]] if group else frames[0])
        canvas = np.empty_like(src)
        canvas[:] = BLANK if keep is not None else src
        members = [i for i, (f, v) in enumerate(zip(regions.frames, views))
                   if f == group and v == view and regions.boxes[i, 0] >= 0]
        for i in members:
            if keep is None or keep[i]:
                x0, y0, x1, y1 = regions.boxes[i]
                canvas[y0:y1, x0:x1] = src[y0:y1, x0:x1]
        img = Image.fromarray(canvas)
        draw = ImageDraw.Draw(img)
        for box, f in zip(sample.boxes, sample.frames or [None] * len(sample.boxes)):
            if f is None or f in group:
                draw.rectangle([box[0] - 2, box[1] - 2, box[2] + 1, box[3] + 1], outline=GT, width=2)
        out.append(img)
    return out


def strip(images: list[Image.Image], title: str, gap: int = 4) -> Image.Image:
    w = sum(i.width for i in images) + gap * (len(images) - 1)
    h = max(i.height for i in images) + LABEL_H
    out = Image.new("RGB", (w, h), (255, 255, 255))
    ImageDraw.Draw(out).text((2, 2), title, fill=(0, 0, 0))
    x = 0
    for img in images:
        out.paste(img, (x, LABEL_H))
        x += img.width + gap
    return out


def render(family: str, modality: str, n: int, seed: int, ratio: float, methods: list[str], out: Path,
           model_path: str | None = None, compressor: str | None = None, root: str | None = None) -> Path:
    from .compressor import load_compressor
    from .demo import benchmark, compressor_path
    from .demo.evaluate import load_demo, samples_for

    if model_path:  # any checkpoint of a supported family, loaded as every tool loads it (VILA folders too)
        from .adapters import adapter_for
        from .api import load_hf_model

        model, processor = load_hf_model(model_path, torch.device("cpu"), torch.float32)
        family = adapter_for(model).family  # the default compressor is the demo one of the model's family
        samples = benchmark.samples(modality, n, seed, "test")
    else:
        model, processor = load_demo(family, root)
        samples = samples_for(family, modality, n, seed, root)  # the benchmark (variant) the model was trained on
    compressor = {modality: compressor or str(compressor_path(family, modality, root))}  # this modality's compressor
    instruction_rows = DEFAULT_INSTRUCTION_ROWS
    if "tcc" in methods:  # a0 and tcc read the rows the compressor learned
        instruction_rows = load_compressor(compressor[modality]).instruction_rows
    rows = []
    for sample in samples:
        row = []
        regions = None
        for method in methods:
            keep, regions, answer = kept_tokens(model, processor, sample, method, ratio, compressor, instruction_rows)
            mark = "right" if answer == sample.answer else "wrong"
            row.append(strip(panels(sample, keep, regions), f"{method} {int(ratio * 100)}%: {answer} ({mark})"))
        title = f"{sample.answer}. {sample.options[sample.answer]} <- {sample.question}"
        row.insert(0, strip(panels(sample, None, regions), title[:60]))
        rows.append(row)
    width = max(sum(p.width for p in r) + 8 * (len(r) - 1) for r in rows)
    height = sum(max(p.height for p in r) + 8 for r in rows)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    y = 0
    for r in rows:
        x = 0
        for p in r:
            sheet.paste(p, (x, y))
            x += p.width + 8
        y += max(p.height for p in r) + 8
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    from .options import positive_int, seed_int
    from .demo import FAMILIES, MODALITIES, VARIANTS, demo_root

    parser = argparse.ArgumentParser(prog="python -m tcc_eval.visualize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="qwen2_vl", choices=FAMILIES,
                        help="the demo model to draw (with --model: read from the checkpoint)")
    parser.add_argument("--modality", default="image", choices=MODALITIES)
    parser.add_argument("--n", type=positive_int, default=4, help="samples (rows)")
    parser.add_argument("--seed", type=seed_int, default=1, help="test-split seed")
    parser.add_argument("--ratio", type=float, default=0.25, help="retention ratio")
    parser.add_argument("--methods", nargs="+", default=["tcc", "random", "oracle"])
    parser.add_argument("--model", default=None, help="another checkpoint instead of the demo model")
    parser.add_argument("--compressor", default=None, help="compressor for tcc (default: the demo's)")
    parser.add_argument("--root", default=None, help="demo folder (default: the shipped demo)")
    parser.add_argument("--variant", default=None, choices=sorted(VARIANTS),
                        help="the shipped models of a benchmark variant (e.g. single)")
    parser.add_argument("--out", default="visualize.png", type=output_file("tcc.png"), help="PNG to write")
    args = parser.parse_args(argv)
    if Path(args.out).suffix.lower() != ".png":  # before the render, not after it
        parser.error(f"--out {args.out}: the sheet is written as PNG; give a .png path")
    try:
        root = demo_root(args.root, args.variant)
    except ValueError as err:
        parser.error(str(err))
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        path = render(args.family, args.modality, args.n, args.seed, args.ratio, args.methods, Path(args.out),
                      args.model, args.compressor, root)
    except (ValueError, FileNotFoundError) as err:  # e.g. a modality the demo model was not trained on
        parser.error(str(err))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
