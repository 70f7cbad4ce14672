"""Cheap attention probe: softmax(q k^T) of one decoder layer for a few query rows, no full layer.

Only the layer's input norm, q/k projections and rotary embedding run (for Qwen2-VL the rotary module
applies M-RoPE), so the cost is a small fraction of a forward. The same function serves layer 0 (the
compressor's input) and layer K-1 (FastV's ranking).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from .options import DEFAULT_INSTRUCTION_ROWS, check_instruction_rows


def _rotary_fn(attn: nn.Module):
    """The model file's own ``apply_rotary_pos_emb`` (every HF decoder defines one next to its attention)."""
    module = sys.modules[type(attn).__module__]
    return module.apply_rotary_pos_emb


def _rotated_keys(attn: nn.Module, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    k = attn.k_proj(normed).view(1, normed.shape[1], -1, attn.head_dim).transpose(1, 2)
    _, k = _rotary_fn(attn)(k, k, cos, sin)
    return k


def layer_keys(language_model: nn.Module, hidden_states: torch.Tensor, position_ids: torch.Tensor,
               layer_idx: int) -> torch.Tensor:
    """Keys of every token in layer ``layer_idx`` after rotary, as its attention sees them: (1, kv_heads, L, d)."""
    layer = language_model.layers[layer_idx]
    normed = layer.input_layernorm(hidden_states)
    cos, sin = language_model.rotary_emb(normed, position_ids)
    return _rotated_keys(layer.self_attn, normed, cos, sin)


def attention_rows(
    language_model: nn.Module,
    hidden_states: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rows: torch.Tensor,
    layer_idx: int = 0,
) -> torch.Tensor:
    """Attention probabilities of query ``rows`` over all keys in layer ``layer_idx``.

    hidden_states: (1, L, D) input of that layer; position_ids: (1, L) or (3, 1, L); attention_mask:
    (1, L) with 0 on padding; rows: 1-D query positions. Returns (heads, len(rows), L) in fp32,
    causal, padding- and sliding-window-masked exactly like eager attention.
    """
    layer = language_model.layers[layer_idx]
    attn = layer.self_attn
    normed = layer.input_layernorm(hidden_states)
    cos, sin = language_model.rotary_emb(normed, position_ids)
    q = attn.q_proj(normed[:, rows]).view(1, rows.numel(), -1, attn.head_dim).transpose(1, 2)
    q, _ = _rotary_fn(attn)(q, q, cos[..., rows, :], sin[..., rows, :])
    k = _rotated_keys(attn, normed, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    length = hidden_states.shape[1]
    logits = (q.float() @ k.float().transpose(-1, -2)) * attn.scaling
    keys = torch.arange(length, device=hidden_states.device)
    queries = rows.to(keys.device)[:, None]
    allowed = (keys[None, :] <= queries) & attention_mask[0].bool()[None, :]
    window = getattr(attn, "sliding_window", None)  # a sliding-window layer sees the last `window` places only
    if window:
        allowed &= keys[None, :] > queries - window
    logits = logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)
    return torch.softmax(logits, dim=-1)[0]


def last_token_attention(language_model: nn.Module, hidden_states: torch.Tensor, position_ids: torch.Tensor,
                         layer_idx: int) -> torch.Tensor:
    """Head-mean attention of the last token over every token of one unpadded sample in layer ``layer_idx``:
    (L,), the ranking FastV and PyramidDrop prune by."""
    length = hidden_states.shape[1]
    last = torch.tensor([length - 1], device=hidden_states.device)
    mask = torch.ones(1, length, dtype=torch.long, device=hidden_states.device)
    return attention_rows(language_model, hidden_states, position_ids, mask, last, layer_idx).mean(dim=(0, 1))


def instruction_rows(valid: torch.Tensor, visual: torch.Tensor, rows: str = DEFAULT_INSTRUCTION_ROWS) -> torch.Tensor:
    """Positions of the instruction rows of one sample under the rule ``rows`` (``INSTRUCTION_ROWS``)."""
    check_instruction_rows(rows)
    positions = torch.nonzero(valid).flatten()
    if rows == "last":
        return positions[-1:]
    visual_positions = torch.nonzero(visual).flatten()
    if rows == "after_first_visual":
        text = positions[~visual[positions]]
        return text[text > int(visual_positions.min())]
    return positions[positions > int(visual_positions.max())]


def instruction_to_visual(
    language_model: nn.Module,
    inputs_embeds: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    visual: torch.Tensor,
    layer_idx: int = 0,
    rows: str = DEFAULT_INSTRUCTION_ROWS,
) -> torch.Tensor:
    """Layer-0 attention from the instruction tokens (``rows``) to each visual token, averaged over rows and heads.

    Inputs are one sample: inputs_embeds (1, L, D), position_ids (1, L) / (3, 1, L), attention_mask
    (1, L), visual (L,) bool. Returns (N_v,) in sequence order (video frames concatenated).
    """
    query_rows = instruction_rows(attention_mask[0].bool(), visual, rows)
    if query_rows.numel() == 0 or bool(visual[query_rows].any()):  # a mean over no rows would score every token NaN
        raise ValueError(f"this prompt ends with its image or video tokens, so no instruction follows them whose "
                         f"attention could score them (instruction_rows={rows}): put the question (or the chat "
                         f"template's generation prompt) after the image or video")
    probs = attention_rows(language_model, inputs_embeds, position_ids, attention_mask, query_rows, layer_idx)
    return probs.mean(dim=(0, 1))[visual]
