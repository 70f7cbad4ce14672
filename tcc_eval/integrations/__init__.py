"""Glue that plugs tcc-eval's pruned models into evaluation frameworks (VLMEvalKit, lmms-eval).

Each framework keeps its own prompt code; the glue only swaps the model for a pruned one, places it on
the right device, and writes per-sample efficiency records next to the framework's outputs.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..api import default_device


def rank_device(device: str | torch.device | None = None) -> torch.device:
    """The device for this process: explicit, else this torchrun rank's own GPU, else ``default_device``.

    Under ``torchrun --nproc-per-node=N`` every rank must use a different GPU. VLMEvalKit's runner may
    already have narrowed CUDA_VISIBLE_DEVICES to the rank's share (then cuda:0 is the rank's own GPU);
    otherwise rank LOCAL_RANK takes cuda:LOCAL_RANK.
    """
    if device is not None or not torch.cuda.is_available():
        return default_device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    index = local_rank if local_world > 1 and torch.cuda.device_count() >= local_world else 0
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def record_json_default(value: Any) -> Any:
    """``json.dumps`` default of both frameworks' efficiency records: numpy / torch scalars as numbers (the tables
    sum them), anything else as text."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
