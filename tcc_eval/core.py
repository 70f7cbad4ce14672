"""Framework-free pruning core: score -> select -> gather.

Every method (random, a0, tcc, oracle, ...) and every MLLM adapter shares these three steps. Nothing
here knows about a model family; inputs are plain tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .options import BUDGETS


def sync(*devices: torch.device) -> None:
    """Wait for each device's queued work (CUDA runs asynchronously), so a wall-clock reading covers it."""
    for device in devices:
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def module_devices(module: torch.nn.Module, *extra: torch.device) -> tuple[torch.device, ...]:
    """``extra`` and every device the module's weights sit on: a model split over GPUs (``device_map="auto"``)
    runs its last layers on another GPU than the input's, and a timer must wait for all of them."""
    weights = (*module.parameters(), *module.buffers())
    return tuple(dict.fromkeys([*extra, *(tensor.device for tensor in weights)]))


def check_keep_ratio(keep_ratio: float) -> float:
    """Validate a retention ratio rho in (0, 1]."""
    try:
        if isinstance(keep_ratio, bool):  # a flag, not a fraction (float(True) would keep everything)
            raise TypeError
        ratio = float(keep_ratio)
    except (TypeError, ValueError):
        raise ValueError(f"keep_ratio must be a number in (0, 1], got {keep_ratio!r}") from None
    if not (0.0 < ratio <= 1.0) or math.isnan(ratio):
        raise ValueError(
            f"keep_ratio must be in (0, 1] (fraction of visual tokens kept, e.g. 0.25), got {keep_ratio!r}"
        )
    return ratio


def keep_count(n_visual: int, keep_ratio: float) -> int:
    """k = round(rho * N_v), at least 1 (half rounds up, so results never depend on banker's rounding). The product
    is first rounded to 9 decimals: 0.35 * 90 is 31.499999999999996 in floats, and it must round as 31.5 does."""
    if n_visual <= 0:
        return 0
    return max(1, min(n_visual, int(math.floor(round(keep_ratio * n_visual, 9) + 0.5))))


def check_scores(scores: torch.Tensor) -> torch.Tensor:
    """Refuse NaN scores: a descending sort ranks NaN first, so the broken tokens would be the ones kept."""
    if scores.isnan().any():
        raise ValueError(
            f"{int(scores.isnan().sum())} of {scores.numel()} visual-token scores are NaN, so no top-k is defined: "
            "the scorer's input overflowed (fp16 attention often does); run the model in bf16 or fp32"
        )
    return scores


def topk_in_order(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, returned in ascending (original sequence) order.

    Ties are broken deterministically towards the earlier token: a stable descending sort keeps the
    original order among equal scores.
    """
    scores = check_scores(scores.detach().float().cpu())
    order = torch.sort(scores, descending=True, stable=True).indices
    return torch.sort(order[:k]).values


def pick_order_scores(order: torch.Tensor | list[int], n: int) -> torch.Tensor:
    """Scores over ``n`` tokens whose descending order is the pick order ``order`` (tokens never picked score
    0), so the shared top-k keeps exactly the first k picks: how greedy selections (DivPrune, DART) enter."""
    order = torch.as_tensor(order, dtype=torch.long)
    scores = torch.zeros(n)
    scores[order] = torch.arange(order.numel(), 0, -1, dtype=torch.float32)
    return scores


def select_visual(
    scores: torch.Tensor,
    keep_ratio: float,
    groups: torch.Tensor | None = None,
    budget: str = "global",
) -> torch.Tensor:
    """Choose which visual tokens to keep; returns indices into the visual-token sequence.

    budget="global": one top-k over all visual tokens of the sample.
    budget="per_group": k_g = round(rho * n_g) per image / per frame group (``groups`` gives each
    visual token's group id), so every image or frame keeps the same fraction.
    """
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    n = scores.numel()
    if budget == "global" or groups is None:
        return topk_in_order(scores, keep_count(n, keep_ratio))
    check_scores(scores)  # over the whole sample, before the groups split it
    kept = []
    groups = groups.cpu()
    for g in torch.unique(groups):
        members = torch.nonzero(groups == g).flatten()
        local = topk_in_order(scores.cpu()[members], keep_count(members.numel(), keep_ratio))
        kept.append(members[local])
    return torch.sort(torch.cat(kept)).values


@dataclass
class Selection:
    """What one prefill kept, per sample: for `.last_selection` and efficiency records."""

    visual_before: list[int] = field(default_factory=list)
    visual_after: list[int] = field(default_factory=list)
    kept_positions: list[torch.Tensor] = field(default_factory=list)  # indices into the original sequence
    seq_before: list[int] = field(default_factory=list)
    seq_after: list[int] = field(default_factory=list)
    layer_visual: list[list[int] | None] = field(default_factory=list)  # per LLM layer; None: visual_after in each

    def add(self, visual_before: int, visual_after: int, kept_positions: torch.Tensor, seq_before: int,
            layer_visual: list[int] | None = None) -> None:
        """Record one sample; ``layer_visual``: the visual tokens each LLM layer holds, for methods that prune
        inside the LLM (input-stage pruning holds ``visual_after`` in every layer)."""
        self.visual_before.append(int(visual_before))
        self.visual_after.append(int(visual_after))
        self.kept_positions.append(kept_positions.cpu())
        self.seq_before.append(int(seq_before))
        self.seq_after.append(int(kept_positions.numel()))
        self.layer_visual.append(None if layer_visual is None else [int(n) for n in layer_visual])

    def sample_layer_visual(self, layers: int) -> list[list[int]]:
        """Visual tokens each LLM layer holds, per sample."""
        samples = []
        for after, per_layer in zip(self.visual_after, self.layer_visual):
            per_layer = per_layer or [after] * layers
            if len(per_layer) != layers:
                raise ValueError(f"a sample recorded {len(per_layer)} layers, the LLM has {layers}")
            samples.append(per_layer)
        return samples

    def visual_per_layer(self, layers: int) -> list[int]:
        """Visual tokens each LLM layer holds, summed over the samples."""
        return [sum(layer) for layer in zip(*self.sample_layer_visual(layers))] or [0] * layers


def keep_positions(valid: torch.Tensor, visual: torch.Tensor, kept_visual: torch.Tensor) -> torch.Tensor:
    """Sequence positions that survive: every valid non-visual token plus the kept visual tokens."""
    keep = valid & ~visual
    visual_pos = torch.nonzero(visual).flatten()
    keep[visual_pos[kept_visual.to(visual_pos.device)]] = True
    return torch.nonzero(keep).flatten()


def gather_prompt_ids(input_ids: torch.Tensor, positions: list[torch.Tensor]) -> torch.Tensor:
    """The token ids under ``gather_left_padded``'s embeddings, left-padded the same way: ``generate``'s logits
    processors that read the prompt (``repetition_penalty`` penalises every distinct id in it) then see what they
    see in the unpruned run, since a kept visual token carries its placeholder id. Padding slots repeat the row's
    first kept id, so they add no id of their own."""
    length = max(int(p.numel()) for p in positions)
    ids = input_ids.new_empty(input_ids.shape[0], length)
    for b, idx in enumerate(positions):
        kept = input_ids[b, idx.to(input_ids.device)]
        ids[b] = kept[0]
        ids[b, length - kept.numel():] = kept
    return ids


def highest_position_ids(position_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[int]:
    """Each row's largest position id over its real tokens (over M-RoPE's rows too): how far into the LLM's
    position range the prompt reaches, which for M-RoPE is not its length."""
    ids = position_ids if position_ids.dim() == 3 else position_ids.unsqueeze(0)
    real = attention_mask.to(ids.device).bool().unsqueeze(0).expand_as(ids)
    return ids.masked_fill(~real, -1).amax(dim=(0, 2)).tolist()


def gather_left_padded(
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    positions: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather each sample's kept positions and left-pad the batch again.

    ``position_ids`` is (B, L) or (R, B, L) (R = 3 for M-RoPE); the ORIGINAL ids of the kept tokens are
    carried over, so RoPE sees the same geometry as in the unpruned sequence. Padding slots get a zero
    embedding, mask 0 and position 1 (never attended to).
    """
    batch = inputs_embeds.shape[0]
    length = max(int(p.numel()) for p in positions)
    multirow = position_ids.dim() == 3
    embeds = inputs_embeds.new_zeros(batch, length, inputs_embeds.shape[-1])
    mask = attention_mask.new_zeros(batch, length)
    if multirow:
        pos = position_ids.new_ones(position_ids.shape[0], batch, length)
    else:
        pos = position_ids.new_ones(batch, length)
    for b, idx in enumerate(positions):
        idx = idx.to(inputs_embeds.device)
        start = length - idx.numel()
        embeds[b, start:] = inputs_embeds[b, idx]
        mask[b, start:] = attention_mask[b, idx]
        if multirow:
            pos[:, b, start:] = position_ids[:, b, idx]
        else:
            pos[b, start:] = position_ids[b, idx]
    return embeds, mask, pos
