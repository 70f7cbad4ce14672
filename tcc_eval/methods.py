"""Token scorers: one score per visual token of one sample. Higher = more worth keeping.

Every scorer sees the same ``SampleView`` (one unpadded sample of the LLM input) and returns a 1-D
tensor over that sample's visual tokens in sequence order; selection and gather are shared (core.py).
Methods that prune *inside* the LLM (FastV, DART, PyramidDrop) live in fastv.py.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from .adapters.base import MLLMAdapter
from .core import pick_order_scores
from .flops import INSIDE_LLM_METHODS
from .probe import instruction_to_visual


@dataclass
class SampleView:
    """One sample's LLM input without padding; positions are the original ones."""

    adapter: MLLMAdapter
    input_ids: torch.Tensor  # (L,)
    inputs_embeds: torch.Tensor  # (1, L, D)
    attention_mask: torch.Tensor  # (1, L)
    position_ids: torch.Tensor  # (1, L) or (3, 1, L)
    visual: torch.Tensor  # (L,) bool
    groups: torch.Tensor  # (N_v,)

    @property
    def n_visual(self) -> int:
        return int(self.visual.sum())

    @property
    def modality(self) -> str:
        return self.adapter.modality(self.input_ids)

    def layer0_attention(self) -> torch.Tensor:
        """Instruction -> visual attention of LLM layer 0 (the compressor's input)."""
        return instruction_to_visual(
            self.adapter.language_model, self.inputs_embeds, self.position_ids, self.attention_mask, self.visual
        )


Scorer = Callable[[SampleView], torch.Tensor]


def random_scorer(seed: int = 0) -> Scorer:
    """Uniform random scores, seeded by the sample's token ids so reruns and reorderings agree."""

    def score(view: SampleView) -> torch.Tensor:
        digest = zlib.crc32(view.input_ids.cpu().numpy().tobytes())
        generator = torch.Generator().manual_seed(seed * 1_000_003 + digest)
        return torch.rand(view.n_visual, generator=generator)

    return score


def a0_scorer() -> Scorer:
    """Raw layer-0 instruction->visual attention, no learned compressor (the paper's key ablation)."""
    return SampleView.layer0_attention


def max_min_diversity_order(features: torch.Tensor) -> torch.Tensor:
    """Greedy max-min diversity order of the rows of ``features`` under cosine distance (DivPrune's selection):
    first the row farthest from its nearest neighbour, then always the row farthest from those already picked.
    Each pick ignores later ones, so the first k rows of the order are the greedy answer for any k."""
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    distance = 1.0 - unit @ unit.T
    n = distance.shape[0]
    nearest = distance.masked_fill(torch.eye(n, dtype=torch.bool, device=distance.device), float("inf")).amin(dim=1)
    order = [int(torch.argmax(nearest))] if n > 1 else [0]
    to_picked = distance[order[0]].clone()
    to_picked[order[0]] = -float("inf")
    for _ in range(n - 1):
        pick = int(torch.argmax(to_picked))
        order.append(pick)
        to_picked = torch.minimum(to_picked, distance[pick])
        to_picked[pick] = -float("inf")
    return torch.tensor(order, dtype=torch.long)


def divprune_scorer() -> Scorer:
    """DivPrune (Alvar et al., CVPR 2025), a training-free peer baseline: keep the most diverse visual tokens,
    by max-min diversity of the visual embeddings the LLM receives. Scores are the reverse pick order, so the
    shared global top-k keeps exactly the greedy picks (budget="per_group": each frame's earliest picks)."""

    def score(view: SampleView) -> torch.Tensor:
        order = max_min_diversity_order(view.inputs_embeds[0, view.visual])
        return pick_order_scores(order, order.numel())

    return score


class TCCScorer:
    """The learned compressor f_theta applied to layer-0 attention; one compressor per modality."""

    def __init__(self, compressors: Mapping[str, torch.nn.Module]):
        self.compressors = dict(compressors)

    def __call__(self, view: SampleView) -> torch.Tensor:
        modality = view.modality
        if modality not in self.compressors:
            raise ValueError(
                f"no compressor for {modality} input (have: {', '.join(sorted(self.compressors))}); train one with "
                f"`python -m tcc_eval.compressor label ...` on {modality} data, then `... train ...`"
            )
        return self.compressors[modality].predict(view.layer0_attention())


INPUT_STAGE_METHODS = ("none", "random", "a0", "tcc", "oracle", "divprune")
ALL_METHODS = INPUT_STAGE_METHODS + INSIDE_LLM_METHODS


def check_method(method: str) -> str:
    if method not in ALL_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(ALL_METHODS)}")
    return method
