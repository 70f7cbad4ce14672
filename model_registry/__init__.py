"""Model registry shared by every framework integration: the matrix (``matrix.py``) plus where the
real files live (checkpoint paths, trained compressors). Import-light: no torch, no tcc_eval.

Checkpoint path, first match wins: explicit ``model_path`` (e.g. VLMEvalKit ``--config`` JSON) >
env ``TCC_MODEL_PATH_<BASE>`` (e.g. ``TCC_MODEL_PATH_QWEN2VL``) > the base's fixed/demo path > its hub id.
VILA1.5 is read from a folder, so its hub ids go through ``local_folder`` (downloaded once by huggingface_hub).

Compressor (method ``tcc``; one per base and modality), first match wins: explicit ``compressor``
(a path, or ``{"image": PATH, "video": PATH}``) > ``$TCC_COMPRESSOR_DIR/<Base>_<modality>.pt`` >
the demo's shipped file (demo bases, from ``tcc_eval.demo.paths()``) >
``~/.cache/tcc_eval/compressors/<Base>_<modality>.pt``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .matrix import (
    BASES,
    EXTRA_MODELS_ENV,
    FAMILIES,
    METHOD_TOKENS,
    RATIOS,
    VANILLA,
    Base,
    ModelSpec,
    all_bases,
    expand,
    extra_bases,
    has_our_suffix,
    model_name,
    parse_name,
)

__all__ = [
    "BASES", "EXTRA_MODELS_ENV", "FAMILIES", "METHOD_TOKENS", "RATIOS", "VANILLA", "Base", "ModelSpec",
    "all_bases", "available_compressors", "base_for_checkpoint", "compressor_candidates",
    "expand", "extra_bases", "has_our_suffix",
    "local_folder", "model_name", "model_path_env", "parse_name", "registered_base", "resolve_compressor",
    "resolve_model_path",
]

# MODALITIES and local_folder are re-exported for the integrations
from tcc_eval.api import MODALITIES, check_modality_keys, local_folder  # noqa: E402

COMPRESSOR_DIR_ENV = "TCC_COMPRESSOR_DIR"
DEFAULT_COMPRESSOR_DIR = Path("~/.cache/tcc_eval/compressors")


def model_path_env(base: str) -> str:
    return f"TCC_MODEL_PATH_{base.upper()}"


def resolve_model_path(base: Base, model_path: str | os.PathLike | None = None) -> str:
    """Where ``base``'s checkpoint comes from (local folder or hub id), by the order in the module doc."""
    if base.unavailable:
        raise NotImplementedError(f"{base.name}: {base.unavailable}")
    if model_path:
        return str(model_path)
    override = os.environ.get(model_path_env(base.name))
    if override:
        return override
    if base.path:
        return base.path
    if base.demo:
        path = _demo_entry(base)["model"]
        if not Path(path).is_dir():
            raise FileNotFoundError(
                f"demo model {base.name} is not built yet ({path} is missing): run `python -m tcc_eval.demo build`, "
                f"or set {model_path_env(base.name)}=PATH"
            )
        return path
    if base.hf_id:
        return base.hf_id
    raise ValueError(f"{base.name} declares no checkpoint; set {model_path_env(base.name)}=PATH")


def _demo_entry(base: Base) -> dict[str, Any]:
    """The demo model's entry of ``tcc_eval.demo.paths()``: {"model": DIR, "compressor_<modality>": FILE}."""
    try:
        from tcc_eval.demo import paths
    except ImportError as err:
        raise RuntimeError(
            f"{base.name} is a demo model but tcc_eval.demo.paths() is not available ({err}); "
            f"set {model_path_env(base.name)}=PATH to use a checkpoint directly"
        ) from err
    table = paths()
    entry = table.get(base.name, table.get(base.family))
    if entry is None:
        raise RuntimeError(
            f"tcc_eval.demo.paths() has no entry for {base.name} (keys: {sorted(table)}); "
            f"set {model_path_env(base.name)}=PATH"
        )
    entry = {"model": entry} if isinstance(entry, (str, os.PathLike)) else dict(entry)
    entry["model"] = str(entry["model"])
    return entry


def compressor_candidates(base: Base, modality: str) -> list[Path]:
    """Compressor files for ``base`` and ``modality``, in lookup order: $TCC_COMPRESSOR_DIR, the
    demo's shipped one (demo bases), the default cache dir."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    file = f"{base.name}_{modality}.pt"
    out = []
    if os.environ.get(COMPRESSOR_DIR_ENV):
        folder = Path(os.environ[COMPRESSOR_DIR_ENV]).expanduser()
        if not folder.is_dir():  # a typo here would quietly load the shipped or cached compressor instead
            raise ValueError(f"{COMPRESSOR_DIR_ENV}={os.environ[COMPRESSOR_DIR_ENV]} is not a folder: point it at the "
                             f"folder holding {file}, or unset it")
        out.append(folder / file)
    if base.demo:
        shipped = _demo_entry(base).get(f"compressor_{modality}")
        out += [Path(shipped)] if shipped else []
    return out + [DEFAULT_COMPRESSOR_DIR.expanduser() / file]


def resolve_compressor(base: Base, modality: str, compressor: Any = None) -> Any:
    """The compressor for ``base`` on ``modality``: explicit value, else the first existing candidate file.

    Raises FileNotFoundError naming every place looked at and how to train one."""
    if isinstance(compressor, Mapping):
        check_modality_keys(compressor)
        compressor = compressor.get(modality)
    if compressor is not None:
        return compressor
    candidates = compressor_candidates(base, modality)
    for path in candidates:
        if path.is_file():
            return str(path)
        if path.exists():  # skipping it would quietly load the next candidate instead
            raise ValueError(f"{path} is not a compressor file (a folder?): move it away, or put the {modality} "
                             f"compressor of {base.name} there")
    looked = ", ".join(str(p) for p in candidates)
    demo = " (demo models: `python -m tcc_eval.demo build` trains theirs)" if base.demo else ""
    raise FileNotFoundError(
        f"no trained {modality} compressor for {base.name} (method tcc): looked at {looked}. Train one with "
        f"`python -m tcc_eval.compressor train ...` (labels from `python -m tcc_eval.compressor label ...`) and "
        f"save it as one of those files, set {COMPRESSOR_DIR_ENV}=DIR holding {base.name}_{modality}.pt, "
        f"or pass compressor=PATH{demo}"
    )


def available_compressors(base: Base, compressor: Any = None) -> dict[str, Any]:
    """``{modality: compressor}`` for every modality that has one (an image-only run needs no video one).

    Raises the image compressor's FileNotFoundError when neither modality has one, so that a tcc model
    fails before its weights load."""
    found: dict[str, Any] = {}
    errors = []
    for modality in MODALITIES:
        try:
            found[modality] = resolve_compressor(base, modality, compressor)
        except FileNotFoundError as err:
            errors.append(err)
    if not found:
        raise errors[0]
    return found


def base_for_checkpoint(checkpoint: str | os.PathLike) -> Base | None:
    """The registered base whose checkpoint (by the lookup order above) is ``checkpoint``, if any."""
    wanted = str(checkpoint)
    wanted_dir = Path(wanted).expanduser().resolve() if Path(wanted).expanduser().is_dir() else None
    for base in all_bases().values():
        try:
            path = resolve_model_path(base)
        except (NotImplementedError, FileNotFoundError, RuntimeError, ValueError):
            continue  # unavailable, or a demo model that is not built
        if path == wanted or (wanted_dir is not None and Path(path).expanduser().resolve() == wanted_dir):
            return base
    return None


def registered_base(checkpoint: str | os.PathLike) -> Base:
    """``base_for_checkpoint``, raising when the checkpoint is no registered base (then only compressor=PATH
    can give a tcc run its compressor)."""
    base = base_for_checkpoint(checkpoint)
    if base is None:
        raise ValueError(
            f"method=tcc needs compressor=PATH (a checkpoint, or a folder of <family>_<modality>.pt): "
            f"{str(checkpoint)!r} is the checkpoint of no registered base, so {COMPRESSOR_DIR_ENV} is not looked "
            f"in (register it with {EXTRA_MODELS_ENV}=Name=PATH to use {COMPRESSOR_DIR_ENV}/Name_<modality>.pt)"
        )
    return base

