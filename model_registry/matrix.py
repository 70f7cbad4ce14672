"""The one declarative model matrix: bases x methods x keep ratios -> registered model names.

Names are ``<Base>_<Method><ratio>`` (ratio = percent of visual tokens kept, e.g. ``Qwen2VL_TCC50``)
and ``<Base>_Vanilla`` (no compression, same wrapper). Both framework integrations expand this table;
no other file lists models. Test-only bases can be added through ``TCC_EXTRA_MODELS`` (see
``extra_bases``) so tests run on tiny checkpoints without touching the table.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcc_eval.demo import TASKS as DEMO_TASKS

# Checkpoint families we have a framework wrapper for.
FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava_onevision", "vila")
# config.json model_type -> family where they differ: VILA1.5's top-level config says "llava_llama".
MODEL_TYPE_FAMILIES = {"llava_llama": "vila"}

# Options VLMEvalKit's own config (vlmeval/config.py) passes for these checkpoints, so baselines match it.
QWEN2VL_VLMEVAL_KWARGS = {"min_pixels": 1280 * 28 * 28, "max_pixels": 16384 * 28 * 28}
QWEN25VL_VLMEVAL_KWARGS = {**QWEN2VL_VLMEVAL_KWARGS, "use_custom_prompt": False}


DEMO_OPTIONS = {"max_new_tokens": 8, "method_options": {"fastv_k": 1}}
# The demo's 168-px video frames are below qwen_vl_utils' video floor (128*28*28 px), which would upscale them
# 2x into a resolution the demo model never saw (measured: 40% instead of 100% on TCCSynth_VID). The floor
# drops to the frame size; the demo's 336-px images are above it either way.
DEMO_QWEN2VL_OPTIONS = {**DEMO_OPTIONS, "min_pixels": DEMO_TASKS["video"]["size"] ** 2}


@dataclass(frozen=True)
class Base:
    """One MLLM checkpoint that methods are applied to."""

    name: str
    family: str
    hf_id: str | None = None  # hub id exactly as VLMEvalKit's config spells it
    demo: bool = False  # path comes from tcc_eval.demo.paths() (built/shipped demo models)
    path: str | None = None  # fixed local path (test-only bases from TCC_EXTRA_MODELS)
    options: dict[str, Any] = field(default_factory=dict)  # wrapper kwargs, e.g. VLMEvalKit pixel limits
    unavailable: str | None = None  # registered anyway, so using the name explains why it cannot run


BASES: dict[str, Base] = {
    b.name: b
    for b in (
        Base("Qwen2VL", "qwen2_vl", "Qwen/Qwen2-VL-7B-Instruct", options=QWEN2VL_VLMEVAL_KWARGS),
        Base("Qwen2VL2B", "qwen2_vl", "Qwen/Qwen2-VL-2B-Instruct", options=QWEN2VL_VLMEVAL_KWARGS),
        Base("Qwen25VL", "qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct", options=QWEN25VL_VLMEVAL_KWARGS),
        Base("Qwen25VL3B", "qwen2_5_vl", "Qwen/Qwen2.5-VL-3B-Instruct", options=QWEN25VL_VLMEVAL_KWARGS),
        Base("LLaVAOV", "llava_onevision", "llava-hf/llava-onevision-qwen2-7b-ov-hf"),
        Base("LLaVAOV05B", "llava_onevision", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"),
        # VLMEvalKit's VILA wrapper defaults to Llama-3-VILA1.5-8b; its config also lists VILA1.5-3b/13b/40b.
        # VILA's README has since pointed to the 8B "-Fix" checkpoint, retrained on its corrected llama_3 template.
        Base("VILA15", "vila", "Efficient-Large-Model/Llama-3-VILA1.5-8b"),
        Base("VILA15Fix", "vila", "Efficient-Large-Model/Llama-3-VILA1.5-8B-Fix"),
        Base("VILA153B", "vila", "Efficient-Large-Model/VILA1.5-3b"),
        Base("VILA1513B", "vila", "Efficient-Large-Model/VILA1.5-13b"),
        Base(
            "VILA1540B", "vila", "Efficient-Large-Model/VILA1.5-40b",
            unavailable="VILA1.5-40b's InternViT-6B vision tower has no transformers class (tcc_eval.vila covers "
                        "VILA1.5-3b, Llama-3-VILA1.5-8b and VILA1.5-13b); use VILA15, VILA15Fix, VILA153B or "
                        "VILA1513B",
        ),
        # Demo models are tiny: a short answer cap keeps CPU runs fast (they answer with one letter). With 4
        # LLM layers FastV prunes after layer 1 (K=2 would leave no room below 50% average retention).
        Base("TinyQwen2VL", "qwen2_vl", demo=True, options=DEMO_QWEN2VL_OPTIONS),
        Base("TinyLLaVAOV", "llava_onevision", demo=True, options=DEMO_OPTIONS),
        Base("TinyVILA", "vila", demo=True, options=DEMO_OPTIONS),
    )
}

# Method token in a model name -> tcc_eval method id.
METHOD_TOKENS: dict[str, str] = {"TCC": "tcc", "Random": "random", "A0": "a0", "FastV": "fastv", "Oracle": "oracle",
                                 "DivPrune": "divprune", "Uniform": "uniform", "Pool": "pool", "VisionZip": "visionzip",
                                 "DART": "dart", "PDrop": "pdrop"}
VANILLA = "Vanilla"  # method "none": the same wrapper and code path with nothing pruned
RATIOS: tuple[int, ...] = (75, 50, 25)
# TCC100 keeps every visual token, so its predictions must equal Vanilla's: a cheap end-to-end check.
EXTRA_RATIOS: dict[str, tuple[int, ...]] = {"TCC": (100,)}

EXTRA_MODELS_ENV = "TCC_EXTRA_MODELS"


@dataclass(frozen=True)
class ModelSpec:
    """One registered model name, fully resolved to base + method + keep ratio."""

    name: str
    base: Base
    method: str  # tcc_eval method id (tcc_eval.methods.ALL_METHODS): none, random, a0, tcc, ..., pdrop
    keep_ratio: float


def model_name(base: str, method_token: str, ratio: int | None = None) -> str:
    return f"{base}_{VANILLA}" if method_token == VANILLA else f"{base}_{method_token}{ratio}"


def _specs_for(base: Base) -> dict[str, ModelSpec]:
    specs = {model_name(base.name, VANILLA): ModelSpec(model_name(base.name, VANILLA), base, "none", 1.0)}
    for token, method in METHOD_TOKENS.items():
        for ratio in RATIOS + EXTRA_RATIOS.get(token, ()):
            name = model_name(base.name, token, ratio)
            specs[name] = ModelSpec(name, base, method, ratio / 100)
    return specs


def all_bases() -> dict[str, Base]:
    """The declared bases plus test-only ones from ``TCC_EXTRA_MODELS``."""
    extras = extra_bases()
    clash = sorted(set(extras) & set(BASES))
    if clash:
        raise ValueError(f"{EXTRA_MODELS_ENV} redefines declared bases {clash}; pick other names")
    return {**BASES, **extras}


def expand() -> dict[str, ModelSpec]:
    """Every registered model name -> its spec (the full matrix, extras included)."""
    out: dict[str, ModelSpec] = {}
    for base in all_bases().values():
        out.update(_specs_for(base))
    return out


# Tokens are matched literally ("A0" contains a digit: Qwen2VL_A025 is A0 at 25%).
_TOKENS = "|".join(sorted(METHOD_TOKENS, key=len, reverse=True))
_SUFFIX = rf"(?:(?P<vanilla>{VANILLA})|(?P<method>{_TOKENS})(?P<ratio>\d+))"
_NAME = re.compile(rf"^(?P<base>[A-Za-z0-9]+)_{_SUFFIX}$")


def has_our_suffix(name: str) -> bool:
    """``..._<method token><digits>`` / ``..._Vanilla``: meant as ours whatever the base (no registry lookup)."""
    _, sep, rest = name.partition("_")
    return bool(sep) and re.fullmatch(_SUFFIX, rest) is not None


def parse_name(name: str) -> ModelSpec:
    """``Qwen2VL_TCC50`` -> spec. Any ratio 1..100 parses, not only the matrix ratios."""
    match = _NAME.match(name)
    bases = all_bases()
    if not match or match["base"] not in bases:
        raise ValueError(
            f"{name!r} is not a tcc-eval model name: expected <Base>_<Method><ratio> or <Base>_Vanilla with "
            f"Base in {sorted(bases)} and Method in {sorted(METHOD_TOKENS)} (e.g. Qwen2VL_TCC50)"
        )
    base = bases[match["base"]]
    if match["vanilla"]:
        return ModelSpec(name, base, "none", 1.0)
    ratio = int(match["ratio"])
    if not 1 <= ratio <= 100:
        raise ValueError(f"{name!r}: keep ratio {ratio}% must be within 1..100")
    return ModelSpec(name, base, METHOD_TOKENS[match["method"]], ratio / 100)


# --- test-only bases --------------------------------------------------------------------------------
def extra_bases(value: str | None = None) -> dict[str, Base]:
    """Bases from ``TCC_EXTRA_MODELS``: ``Name=PATH[,Name2=PATH2]`` or a JSON object
    ``{"Name": "PATH"}`` / ``{"Name": {"path": PATH, "family": ..., <wrapper options>}}``.

    The family is read from the checkpoint's config.json unless given. Meant for tests and ad-hoc
    checkpoints; real models belong in ``BASES``.
    """
    value = os.environ.get(EXTRA_MODELS_ENV, "") if value is None else value
    value = value.strip()
    if not value:
        return {}
    if value.startswith("{"):
        try:
            entries = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{EXTRA_MODELS_ENV} is not valid JSON: {err}") from err
    else:
        entries = {}
        for item in filter(None, (x.strip() for x in value.split(","))):
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"{EXTRA_MODELS_ENV}: {item!r} is not NAME=PATH")
            entries[name.strip()] = path.strip()
    return {name: _extra_base(name, entry) for name, entry in entries.items()}


def _extra_base(name: str, entry: str | dict[str, Any]) -> Base:
    options = dict(entry) if isinstance(entry, dict) else {"path": entry}
    path = options.pop("path", None)
    if not path:
        raise ValueError(f"{EXTRA_MODELS_ENV}: base {name!r} needs a checkpoint path")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", name):
        raise ValueError(f"{EXTRA_MODELS_ENV}: base name {name!r} must be letters and digits only (no '_')")
    family = options.pop("family", None) or _family_of(path)
    if family not in FAMILIES:
        raise ValueError(f"{EXTRA_MODELS_ENV}: base {name!r} has family {family!r}; supported: {FAMILIES}")
    return Base(name, family, path=str(path), options=options)


def _family_of(path: str) -> str:
    config = Path(path) / "config.json"
    try:
        model_type = json.loads(config.read_text())["model_type"]
        return MODEL_TYPE_FAMILIES.get(model_type, model_type)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(
            f"{EXTRA_MODELS_ENV}: cannot read model_type from {config} ({err}); give the family explicitly "
            f'as JSON: {{"Name": {{"path": "...", "family": "qwen2_vl"}}}}'
        ) from err
