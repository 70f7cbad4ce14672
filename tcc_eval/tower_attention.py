"""How much attention each patch receives inside the vision tower: the signal of VisionZip-style dominant tokens.

VisionZip (Yang et al., CVPR 2025) keeps the patches the tower itself attends to most, read from the attention
of the layer whose output the LLM's visual features are. CLIP towers have a CLS row for it; the towers of the
families here (Qwen2-VL's ViT, SigLIP) have none, so a patch's score is the attention it receives, averaged over
heads and over every query patch of its own image, crop or frame (as VisionZip and VisPruner do for such towers).

The probabilities are recomputed from the inputs a forward pre-hook sees, query block by query block, so nothing
in the tower changes and no N x N map per head is ever held (an sdpa or flash tower returns none anyway). The same
layer's keys, averaged over heads, are VisionZip's measure of which patches are alike; they travel with the
attention as further channels, so every family maps both to its LLM tokens in one pass.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from torch import nn

from .core import sync

QUERY_BLOCK = 256  # query rows per softmax block: heads x 256 x N floats at a time


def mean_received(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """(heads, n, d) queries and keys of one image -> (n,) attention each key receives, averaged over heads and
    queries (so it sums to 1 over the image)."""
    query, key = query.float(), key.float()
    heads, n, _ = query.shape
    received = torch.zeros(n, dtype=torch.float32, device=query.device)
    for start in range(0, n, QUERY_BLOCK):
        logits = query[:, start:start + QUERY_BLOCK] @ key.transpose(1, 2) * scale
        received += logits.softmax(dim=-1).sum(dim=(0, 1))
    return received / (heads * n)


def _split_heads(states: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., n, heads * d) -> (..., heads, n, d)."""
    return states.unflatten(-1, (heads, -1)).transpose(-3, -2)


def _head_mean(states: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., n, heads * d) -> (..., n, d): VisionZip's similarity metric is the layer's keys averaged over heads."""
    return states.unflatten(-1, (heads, -1)).mean(dim=-2)


def tower_signals(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    """What one call of a vision self-attention ``module`` tells about each patch, from the call's inputs: channel 0
    the attention the patch receives, channels 1: its key averaged over heads (before rotary). (images, patches, 1 +
    d) for a batched SigLIP / CLIP layer, (patches, 1 + d) for Qwen2(.5)-VL's packed layer (one image or frame pair
    per ``cu_seqlens`` span; one window in Qwen2.5-VL's windowed blocks, in the window order its blocks see)."""
    hidden = args[0] if args else kwargs["hidden_states"]
    if hasattr(module, "qkv"):  # Qwen2(.5)-VL VisionAttention: fused qkv, 2-D rotary, images packed along one axis
        apply_rotary_pos_emb_vision = sys.modules[type(module).__module__].apply_rotary_pos_emb_vision  # its own file's
        query, key, _ = module.qkv(hidden).reshape(hidden.shape[0], 3, module.num_heads, -1).unbind(1)
        keys = key.float().mean(dim=1)
        cos, sin = kwargs["position_embeddings"]
        query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
        bounds = kwargs["cu_seqlens"].tolist()
        received = torch.cat([
            mean_received(query[a:b].transpose(0, 1), key[a:b].transpose(0, 1), module.scaling)
            for a, b in zip(bounds[:-1], bounds[1:])
        ])
        return torch.cat([received[:, None], keys], dim=-1)
    if hasattr(module, "q_proj") and hasattr(module, "k_proj"):  # SigLIP / CLIP: one image per batch row
        if kwargs.get("attention_mask") is not None:
            raise ValueError(f"{type(module).__name__} was called with an attention mask; tower attention scoring "
                             f"covers towers that attend over whole images")
        projected = module.k_proj(hidden)
        query = _split_heads(module.q_proj(hidden), module.num_heads)
        key = _split_heads(projected, module.num_heads)
        received = torch.stack([mean_received(q, k, module.scale) for q, k in zip(query, key)])
        return torch.cat([received[..., None], _head_mean(projected.float(), module.num_heads)], dim=-1)
    raise ValueError(f"cannot read attention from a {type(module).__name__} vision layer (known: Qwen2-VL's and "
                     f"Qwen2.5-VL's VisionAttention, SigLIP and CLIP attention)")


class TowerAttentionRecorder:
    """While open, records ``tower_signals`` for every call of ``module``, in call order, and the ``seconds`` the
    readout took (the selection's own cost: the efficiency records move it from the tower's time to the selection's;
    on CUDA each readout syncs before and after, so it is timed alone)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.calls: list[torch.Tensor] = []
        self.seconds = 0.0
        self._handle = None

    def _record(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        sync(hidden.device)
        start = time.perf_counter()
        with torch.no_grad():
            self.calls.append(tower_signals(module, args, kwargs))
        sync(hidden.device)
        self.seconds += time.perf_counter() - start

    def __enter__(self) -> "TowerAttentionRecorder":
        self._handle = self.module.register_forward_pre_hook(self._record, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def encoder_layers(tower: nn.Module) -> nn.ModuleList:
    """A SigLIP / CLIP tower's encoder layers (the vision model is nested or not, depending on the class)."""
    return getattr(tower, "vision_model", tower).encoder.layers


def feature_layer_index(select_layer: int | list[int], layers: int, where: str) -> int:
    """Index of the tower layer whose output is ``hidden_states[select_layer]`` (VisionZip reads that layer's
    attention), with a clear error where the features are the patch embeddings themselves or mix layers."""
    if not isinstance(select_layer, int):
        raise ValueError(f"{where} concatenates vision layers {select_layer}; tower attention scoring needs a single "
                         f"feature layer")
    produced_by = select_layer % (layers + 1) - 1
    if produced_by < 0:
        raise ValueError(f"{where}'s visual features are the tower's patch embeddings (feature layer {select_layer} of "
                         f"a {layers}-layer tower), which no attention layer produced, so there is no tower attention "
                         f"to rank them by; use a method that does not read the vision tower (tcc, a0, divprune, ...)")
    return produced_by
