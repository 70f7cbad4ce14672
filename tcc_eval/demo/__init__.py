"""The embedded default: tiny demo MLLMs trained from scratch on the synthetic benchmarks, and their compressors.

``paths()`` is the one place scripts and integrations look the shipped files up (nothing here imports
torch, so it is cheap). ``python -m tcc_eval.demo build|evaluate|paths`` rebuilds, scores and lists them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..lmms_tasks import TASKS_DIR as LMMS_TASKS  # the include path `demo paths` prints

FAMILIES = ("qwen2_vl", "llava_onevision", "vila")
MODALITIES = ("image", "video")

# The base configuration of the demo benchmarks (tcc_eval/demo/benchmark.py), options in canonical order;
# each variant below adds its settings on top. Alone (variant "single") each question is answered by one object.
TASKS: dict[str, dict[str, Any]] = {
    "image": {"question_types": ("color_of_shape", "shape_of_color"), "min_objects": 1, "max_objects": 1},
    # 168-px frames: after LLaVA-OneVision's resize to 336 and 2x2 pooling, one token is exactly one 28-px
    # cell, as for Qwen2-VL (224-px frames left LLaVA's tokens straddling objects: shapes were unreadable)
    "video": {"question_types": ("what_appeared",), "size": 168},
}
OPTION_ORDER = "canonical"

# Benchmark variants, each with its own demo models (`python -m tcc_eval.demo build|evaluate --variant NAME`).
# One entry holds all of a variant's settings: "benchmark" (per modality, on top of TASKS), "training"
# (DemoSpec overrides, train.variant_spec), "label_samples" (training-split samples per modality that the
# oracle labels for the compressors) and "compressor_args" (extra `compressor train` flags).
# "relational" (DEFAULT_VARIANT: TCCSynth_IMG / TCCSynth_VID, the models in assets/demo): an anchor diamond
# among a crowd (24-96 objects per image, 6-24 per video frame pair);
# "What color is the diamond?" or "What color is the shape right of the diamond?". The second question's
# object looks like all the others, so the layer-0 attention (a0) that finds the anchor cannot rank it
# above the crowd; a compressor that learned "the token right of an attention peak" can. It separates tcc
# from a0, which the single-object task cannot.
VARIANTS: dict[str, dict[str, Any]] = {
    "relational": {
        "benchmark": {
            "image": {"question_types": ("anchor_color", "right_of_anchor"), "min_objects": 24, "max_objects": 96},
            "video": {"question_types": ("anchor_color", "right_of_anchor"), "min_objects": 6, "max_objects": 24},
        },
        # Stage 1, image-only: the two-hop question (find the anchor, read its right neighbour) is learned by
        # step 700-1,100 when the curriculum starts with 0-2 other objects (measured on all three families),
        # so it trains twice as long as the single-object task. Stage 2 adds the videos; its front end first
        # relearns colours and shapes on videos too: LLaVA-OneVision and VILA1.5 see a video cell as 2x2
        # patches of a quarter object each, which image-only features do not tell apart (LLaVA-OV stayed at
        # ~40% on crowded videos for 100 steps without this). While it relearns, it also pulls every object
        # token toward stage 1's mean image embedding of its kind (stage2_prototype_weight), so a video token
        # means what the same object meant in an image: without that, LLaVA-OV's layer 0 ranked red diamonds
        # in videos below the background (it found them in images), and a0 and tcc lost them.
        "training": {"video_fraction": 0.0, "steps": 2500, "easy_steps": 600, "easy_objects": (0, 2), "warmup": 200,
                     "lr": 2e-3, "stage2_steps": 1000, "stage2_video_fraction": 0.5, "stage2_vision_steps": 250,
                     "stage2_prototype_weight": 3.0},
        # 600 labelled videos, not 300: LLaVA-OV's video compressor kept 0.935 at 25% with 300 and 0.975 with 600
        # (seed 3, n=200; 1,200 gave 0.975 too)
        "label_samples": {"image": 400, "video": 600},
        # The answer sits one cell right of the anchor: the next token for Qwen2-VL and LLaVA-OneVision, 12
        # tokens on in VILA1.5's column-major order, beyond kernel 5's reach (21 tokens); kernel 7 reaches 31.
        "compressor_args": ["--kernel-size", "7"],
    },
    # "single" (assets/demo_single): the base configuration, one salient object per question. The first
    # default demo; kept because it shows where a0 is enough: tcc and a0 both keep 1.000 at 25% there.
    # Its models' specs name no variant (they predate variants), so a rebuild reproduces them (and its compressors:
    # they were labelled from 400 images and 300 videos).
    "single": {"benchmark": {"image": {}, "video": {}}, "training": {}, "label_samples": {"image": 400, "video": 300},
               "compressor_args": []},
}
DEFAULT_VARIANT = "relational"
BASE_VARIANT = "single"  # TASKS alone; a spec or record variant of None means this one
_ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
# TCC_DEMO_ROOT points every tool at a rebuilt demo (`python -m tcc_eval.demo build --out DIR`).
ASSETS = Path(os.environ.get("TCC_DEMO_ROOT") or _ASSETS_DIR / "demo")


def benchmark_config(kind: str, variant: str | None = DEFAULT_VARIANT) -> dict[str, Any]:
    """Generator options of a demo benchmark (``variant`` None: the base configuration)."""
    if variant is not None and kind not in VARIANTS.get(variant, {}).get("benchmark", {}):
        raise ValueError(f"unknown {kind} variant {variant!r}; {kind} variants: "
                         f"{sorted(v for v, entry in VARIANTS.items() if kind in entry['benchmark'])}")
    return {**TASKS[kind], **(VARIANTS[variant]["benchmark"][kind] if variant else {})}


def variant_root(variant: str) -> Path:
    """The shipped folder of a variant's demo models (not moved by TCC_DEMO_ROOT)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown demo variant {variant!r}; choose one of {sorted(VARIANTS)}")
    return _ASSETS_DIR / ("demo" if variant == DEFAULT_VARIANT else f"demo_{variant}")


def demo_root(root: str | os.PathLike | None, variant: str | None) -> str | None:
    """A demo folder given by path, else the shipped folder of another ``variant``, else None: the default
    demo, ASSETS (which TCC_DEMO_ROOT moves), whether or not ``variant`` names DEFAULT_VARIANT."""
    if root and variant:
        raise ValueError("give --root or --variant, not both (--variant names the shipped variant folder)")
    if root:
        return str(root)
    return str(variant_root(variant)) if variant not in (None, DEFAULT_VARIANT) else None


def model_dir(family: str, root: str | os.PathLike | None = None) -> Path:
    return Path(root or ASSETS) / family


def compressor_path(family: str, modality: str, root: str | os.PathLike | None = None) -> Path:
    return Path(root or ASSETS) / "compressors" / f"{family}_{modality}.pt"


def vlmeval_data_dir() -> Path:
    """VLMEvalKit's $LMUData (its LMUDataRoot rule: the env var if it exists, else ~/LMUData)."""
    env = os.environ.get("LMUData")
    if env and os.path.exists(env):
        return Path(env)
    return Path.home() / "LMUData"


def paths(root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Local paths of every demo model and compressor, the VLMEvalKit data dir and the lmms-eval include path.

    Per family: {"model": DIR, "compressor_image": FILE, "compressor_video": FILE}. Paths are returned
    whether or not they exist yet (``python -m tcc_eval.demo build`` writes them); ``"built"`` says which do.
    """
    out: dict[str, Any] = {}
    for family in FAMILIES:
        entry = {"model": str(model_dir(family, root))}
        for modality in MODALITIES:
            entry[f"compressor_{modality}"] = str(compressor_path(family, modality, root))
        entry["built"] = all(Path(p).exists() for p in entry.values() if isinstance(p, str))
        out[family] = entry
    out["vlmeval_data_dir"] = str(vlmeval_data_dir())
    out["lmms_eval_include_path"] = str(LMMS_TASKS)
    out["tasks"] = {k: {q: list(v) if isinstance(v, tuple) else v for q, v in benchmark_config(k).items()}
                    for k in MODALITIES}
    out["variants"] = {}
    for name in VARIANTS:
        vroot = variant_root(name)
        entry = {f: {"model": str(model_dir(f, vroot)),
                     **{f"compressor_{m}": str(compressor_path(f, m, vroot)) for m in VARIANTS[name]["benchmark"]}}
                 for f in FAMILIES}
        for e in entry.values():
            e["built"] = all(Path(p).exists() for p in e.values())
        out["variants"][name] = {"root": str(vroot), **entry}
    out["option_order"] = OPTION_ORDER
    return out


__all__ = ["ASSETS", "BASE_VARIANT", "DEFAULT_VARIANT", "FAMILIES", "MODALITIES", "OPTION_ORDER", "TASKS", "VARIANTS",
           "benchmark_config", "compressor_path", "model_dir", "demo_root", "paths", "variant_root"]
