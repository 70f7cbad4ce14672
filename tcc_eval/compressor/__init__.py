"""The learned compressor f_theta: network, checkpoints, and their validation against a model.

Pipeline (one compressor per MLLM and modality), all through ``python -m tcc_eval.compressor``:
``label`` (oracle relevance + layer-0 attention per sample) -> ``train`` -> ``evaluate``.
``load_compressor_for(model, path)`` is what ``tcc_eval.load(..., method="tcc", compressor=path)`` calls.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..options import DEFAULT_INSTRUCTION_ROWS
from .network import CompressorConfig, TokenCompressor, kl_loss, make_target, pad_batch

CHECKPOINT_FORMAT = "tcc-compressor"
CHECKPOINT_VERSION = 1
TOKEN_RANGE_SLACK = 2.0  # how far beyond its labels' visual token counts an input may go before a warning
# Facts about the source model a compressor must agree with; architecture is informative only.
MATCH_KEYS = ("family", "model_type", "hidden_size", "num_attention_heads", "num_key_value_heads", "num_layers")
TRAIN_HINT = (
    "train one with `python -m tcc_eval.compressor label --model MODEL --data DATA.tsv --out LABELS` "
    "then `python -m tcc_eval.compressor train --labels LABELS --out compressor.pt`"
)
# what torch.load raises on a truncated file, an empty one or a file of another format (weights_only refuses it);
# bytes that are not a zip archive go to the legacy unpickler, whose errors on junk are whatever its parsing hit
# ("text junk": IndexError; b"\x80\x02junk": struct.error; also KeyError, UnicodeDecodeError, AssertionError)
UNREADABLE_ERRORS = (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, LookupError, struct.error,
                     AssertionError)

__all__ = [
    "CompressorConfig", "TokenCompressor", "kl_loss", "load_compressor", "load_compressor_for", "make_target",
    "model_meta", "pad_batch", "save_compressor",
]


def unwrap_model(model: Any) -> nn.Module:
    """The HF model inside a ``CompressedMLLM`` or ``TokenPrunedModel`` (HF models pass through)."""
    from ..api import CompressedMLLM
    from ..pruned import TokenPrunedModel

    if isinstance(model, CompressedMLLM):
        model = model.model
    if isinstance(model, TokenPrunedModel):
        model = model.model
    return model


def model_meta(model: Any) -> dict[str, Any]:
    """The facts a compressor is tied to: family, model type and the LLM's shape."""
    from ..adapters import adapter_for

    model = unwrap_model(model)
    adapter = adapter_for(model)
    cfg = adapter.language_model.config
    return {
        "family": adapter.family,
        "model_type": model.config.model_type,
        "architecture": type(model).__name__,
        "hidden_size": int(cfg.hidden_size),
        "num_attention_heads": int(cfg.num_attention_heads),
        "num_key_value_heads": int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads),
        "num_layers": int(cfg.num_hidden_layers),
    }


def describe(meta: dict[str, Any]) -> str:
    return (
        f"{meta.get('family', '?')} hidden {meta.get('hidden_size', '?')} ({meta.get('num_layers', '?')} layers, "
        f"{meta.get('num_attention_heads', '?')} heads, {meta.get('num_key_value_heads', '?')} kv heads)"
    )


def check_match(source: dict[str, Any], target: dict[str, Any], what: str, other: str = "this model") -> None:
    """Raise the clear ValueError when a compressor (or label set) belongs to another model."""
    wrong = [k for k in MATCH_KEYS if k in source and source[k] != target.get(k)]
    if wrong:
        raise ValueError(
            f"{what} was trained for {describe(source)}; {other} is {describe(target)} "
            f"(mismatch in {', '.join(wrong)}): {TRAIN_HINT}"
        )


def save_compressor(
    path: str | os.PathLike,
    network: TokenCompressor,
    source_model: dict[str, Any],
    modality: str,
    train_stats: dict[str, Any],
) -> Path:
    """Write a checkpoint atomically (a crash never leaves a half-written file behind)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": network.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "source_model": dict(source_model),
        "modality": modality,
        "train_stats": dict(train_stats),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_compressor(path: str | os.PathLike, device: str | torch.device | None = None) -> TokenCompressor:
    """Rebuild a trained compressor (fp32, eval mode) with its metadata attached."""
    path = Path(path)
    if path.is_dir():
        held = sorted(p.name for p in path.glob("*.pt"))
        raise IsADirectoryError(
            f"compressor checkpoint {str(path)!r} is a folder: pass a checkpoint file, as `python -m "
            f"tcc_eval.compressor train --out FILE.pt` writes it"
            + (f" (this folder holds {', '.join(held)})" if held else "")
        )
    if not path.is_file():
        raise FileNotFoundError(f"compressor checkpoint {str(path)!r} does not exist: {TRAIN_HINT}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE_ERRORS as err:  # torch's own message points at weights_only=False, which is no fix here
        raise ValueError(f"compressor checkpoint {str(path)!r} is not a readable tcc-eval compressor checkpoint "
                         f"(truncated, or a file of another format): re-run `python -m tcc_eval.compressor train` "
                         f"to write it") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a tcc-eval compressor checkpoint (written by `... compressor train`)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {payload.get('version')} is not supported; retrain it")
    network = TokenCompressor(CompressorConfig(**payload["config"]))
    network.load_state_dict(payload["state_dict"])
    network.source_model = payload["source_model"]
    network.modality = payload["modality"]
    network.train_stats = payload["train_stats"]
    # the rows whose layer-0 attention it learned from (checkpoints from before the option: the default)
    network.instruction_rows = network.train_stats.get("instruction_rows", DEFAULT_INSTRUCTION_ROWS)
    network.checkpoint_path = str(path)
    return network.to(device or "cpu").float().eval()


def token_count_mismatch(compressor: Any, n_visual: int) -> str | None:
    """Why an input of ``n_visual`` visual tokens is out of what ``compressor`` learned from, or None.

    A compressor reads the layer-0 attention row as a sequence; at another resolution its objects span other token
    counts than in its labels (a checkpoint whose processor caps pixels below the labels' ``--max-pixels``, say),
    and its ranking silently degrades. A factor of TOKEN_RANGE_SLACK beyond the labels' range is tolerated."""
    seen = (getattr(compressor, "train_stats", None) or {}).get("visual_tokens")
    if not seen or seen["min"] / TOKEN_RANGE_SLACK <= n_visual <= seen["max"] * TOKEN_RANGE_SLACK:
        return None  # in range, or a checkpoint from before the statistic
    limits = [", ".join(f"{k}={v}" for k, v in sorted(p.items())) or "the checkpoint's own processor limits"
              for p in compressor.train_stats.get("pixels") or [{}]]
    return (f"compressor {getattr(compressor, 'checkpoint_path', '')} learned from {compressor.modality} inputs of "
            f"{seen['min']}-{seen['max']} visual tokens (labelled with {' / '.join(sorted(set(limits)))}), but this "
            f"input has {n_visual}: evaluate at the resolution the labels were made at (Qwen2-VL: the processor's "
            f"min_pixels / max_pixels, which a checkpoint's preprocessor_config.json can cap below them), or label at "
            f"this one")


def check_compressor_argument(compressor: Any) -> None:
    """Fail before a (possibly huge) model is loaded when the tcc compressor cannot be found."""
    if compressor is None:
        raise ValueError(f"method 'tcc' needs a trained compressor (compressor=PATH); {TRAIN_HINT}")
    if isinstance(compressor, (str, os.PathLike)) and not Path(compressor).exists():
        raise FileNotFoundError(f"compressor checkpoint {str(compressor)!r} does not exist: {TRAIN_HINT}")


def load_compressor_for(model: Any, compressor: Any) -> nn.Module:
    """A compressor ready to score ``model``'s tokens: loaded (if a path), validated, on its device.

    ``compressor`` is a checkpoint path or an already loaded module with ``.predict``."""
    check_compressor_argument(compressor)
    device = next(unwrap_model(model).parameters()).device
    if isinstance(compressor, (str, os.PathLike)):
        name = str(compressor)
        compressor = load_compressor(compressor, device)
    elif hasattr(compressor, "predict"):
        name = getattr(compressor, "checkpoint_path", type(compressor).__name__)
        if isinstance(compressor, nn.Module):
            compressor = compressor.to(device).float().eval()
    else:
        raise TypeError(
            f"compressor must be a checkpoint path or a module with .predict, got {type(compressor).__name__}"
        )
    source = getattr(compressor, "source_model", None)
    if source:
        check_match(source, model_meta(model), f"compressor {name}")
    return compressor
