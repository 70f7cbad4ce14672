"""Token scorers: one score per visual token of one sample. Higher = more worth keeping.

Every scorer sees the same ``SampleView`` (one unpadded sample of the LLM input) and returns a 1-D
tensor over that sample's visual tokens in sequence order; selection and gather are shared (core.py).
Methods that prune *inside* the LLM (FastV, DART, PyramidDrop) live in fastv.py.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from .adapters.base import NO_PATCHES, MLLMAdapter
from .compressor import token_count_mismatch
from .core import check_keep_ratio, keep_count, pick_order_scores
from .flops import INSIDE_LLM_METHODS
from .options import DEFAULT_INSTRUCTION_ROWS, check_instruction_rows
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
    cells: torch.Tensor | None = None  # (N_v, 3) (grid, row, col) of each visual token (LLMInputs.visual_cells)
    tower_attention: torch.Tensor | None = None  # (N_v,) LLMInputs.tower_attention, when the scorer reads it
    tower_keys: torch.Tensor | None = None  # (N_v, d) LLMInputs.tower_keys, likewise
    tower_spans: torch.Tensor | None = None  # (N_v,) LLMInputs.tower_spans, likewise

    @property
    def n_visual(self) -> int:
        return int(self.visual.sum())

    @property
    def modality(self) -> str:
        return self.adapter.modality(self.input_ids)

    def layer0_attention(self, rows: str = DEFAULT_INSTRUCTION_ROWS) -> torch.Tensor:
        """Instruction -> visual attention of LLM layer 0 (the compressor's input), from the ``rows`` rule's
        instruction rows (``options.INSTRUCTION_ROWS``)."""
        return instruction_to_visual(self.adapter.language_model, self.inputs_embeds, self.position_ids,
                                     self.attention_mask, self.visual, rows=rows)


Scorer = Callable[[SampleView], torch.Tensor]


def random_scorer(seed: int = 0) -> Scorer:
    """Uniform random scores, seeded by the sample's token ids so reruns and reorderings agree."""

    def score(view: SampleView) -> torch.Tensor:
        digest = zlib.crc32(view.input_ids.cpu().numpy().tobytes())
        generator = torch.Generator().manual_seed(seed * 1_000_003 + digest)
        return torch.rand(view.n_visual, generator=generator)

    return score


class A0Scorer:
    """Raw layer-0 instruction->visual attention, no learned compressor (the paper's key ablation)."""

    def __init__(self, instruction_rows: str = DEFAULT_INSTRUCTION_ROWS):
        self.instruction_rows = check_instruction_rows(instruction_rows)

    def __call__(self, view: SampleView) -> torch.Tensor:
        return view.layer0_attention(self.instruction_rows)


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


def coarse_to_fine_ranks(n: int) -> torch.Tensor:
    """Rank of each of ``n`` indices in van der Corput order (0, n/2, n/4, 3n/4, ...: bit-reversed), so every
    prefix of the order is spread evenly over the axis: the first half is every other index, and so on."""
    bits = max(1, (n - 1).bit_length())
    reversed_bits = [int(f"{i:0{bits}b}"[::-1], 2) for i in range(n)]
    order = sorted(range(n), key=reversed_bits.__getitem__)
    ranks = torch.empty(n, dtype=torch.long)
    ranks[torch.tensor(order)] = torch.arange(n)
    return ranks


def lattice_level(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Finest lattice a cell belongs to in the chain S_0 > Q_0 > S_1 > Q_1 > ..., where S_t holds the cells whose row
    and column are multiples of 2^t and its quincunx Q_t those of S_t whose row / 2^t + col / 2^t is even. Each
    lattice holds half the cells of the one before, evenly spread: Q_0 is the checkerboard (50%), S_1 every other
    row and column (25%), Q_1 its checkerboard (12.5%), ... Between two lattices S_t \\ Q_t splits into the cells
    on odd rows of S_t (taken first) and those on odd columns, so 75% keeps three tokens of every 2 x 2 block.
    Levels: 4t + 2 on Q_t \\ S_{t+1}, 4t + 1 and 4t on the two halves of S_t \\ Q_t."""
    both = rows | cols
    lowest_bit = torch.where(both == 0, 2**62, both & -both)  # the origin lies in every lattice
    t = lowest_bit.double().log2().long()  # exact: lowest_bit is a power of two
    row_odd, col_odd = ((rows >> t) & 1).bool(), ((cols >> t) & 1).bool()
    return 4 * t + 2 * (row_odd & col_odd).long() + (row_odd & ~col_odd).long()


def uniform_lattice_order(cells: torch.Tensor) -> torch.Tensor:
    """Pick order of a sample's visual tokens from their (grid, row, col) cells: finest lattice first
    (``lattice_level``), so the first k tokens are the same evenly spread lattice in every grid (the checkerboard at
    50%, every other row and column at 25% of an even grid); a lattice only partly kept is thinned evenly (van der
    Corput order of rows and columns). Tokens without a cell (-1) come last."""
    n = cells.shape[0]
    level = torch.full((n,), -1, dtype=torch.long)
    spread = torch.full((n,), float("inf"), dtype=torch.float64)  # share of the coarse-to-fine row / col order needed
    for grid in torch.unique(cells[:, 0]):
        if grid < 0:
            continue
        members = torch.nonzero(cells[:, 0] == grid).flatten()
        rows, cols = cells[members, 1], cells[members, 2]
        level[members] = lattice_level(rows, cols)
        row_share = (coarse_to_fine_ranks(int(rows.max()) + 1)[rows] + 1).double() / (int(rows.max()) + 1)
        col_share = (coarse_to_fine_ranks(int(cols.max()) + 1)[cols] + 1).double() / (int(cols.max()) + 1)
        spread[members] = torch.maximum(row_share, col_share)
    order = torch.sort(spread, stable=True).indices
    return order[torch.sort(level[order], descending=True, stable=True).indices]


def uniform_scorer() -> Scorer:
    """Uniform spatial sampling, the training-free "uniform" peer of METHOD.md: keep an evenly strided lattice of
    visual tokens in every image or frame, blind to content and question. Scores are the reverse pick order of
    ``uniform_lattice_order``, so any budget keeps its first picks."""

    def score(view: SampleView) -> torch.Tensor:
        if view.cells is None:
            raise ValueError(
                f"method 'uniform' needs each visual token's place in its image, which "
                f"{type(view.adapter).__name__} does not give (it has no visual_cells layout)"
            )
        order = uniform_lattice_order(view.cells.cpu())
        return pick_order_scores(order, order.numel())

    return score


Merger = Callable[[SampleView, torch.Tensor], torch.Tensor]
"""(view, kept visual indices) -> the (k, D) embeddings the kept tokens carry into the LLM."""


def nearest_kept(cells: torch.Tensor, kept: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """For every visual token, the position in ``kept`` of the nearest kept token of its grid (squared distance
    between cells; ties to the upper, then the left one); -1 for tokens without a cell or without a kept token in
    their grid. A kept token without a cell stands for itself."""
    owner = torch.full((cells.shape[0],), -1, dtype=torch.long)
    owner[kept[cells[kept, 0] < 0]] = torch.nonzero(cells[kept, 0] < 0).flatten()
    for grid in torch.unique(cells[kept, 0]):
        if grid < 0:
            continue
        slots = torch.nonzero(cells[kept, 0] == grid).flatten()  # positions in ``kept``
        anchors = cells[kept[slots], 1:]
        by_place = torch.argsort(anchors[:, 0] * (int(anchors[:, 1].max()) + 1) + anchors[:, 1])
        place_rank = torch.empty_like(by_place)
        place_rank[by_place] = torch.arange(len(by_place))
        members = torch.nonzero(cells[:, 0] == grid).flatten()
        for start in range(0, len(members), chunk):
            part = members[start:start + chunk]
            distance = (cells[part, 1:, None] - anchors.T[None]).pow(2).sum(dim=1)  # (part, anchors)
            owner[part] = slots[torch.argmin(distance * len(slots) + place_rank[None], dim=1)]
    return owner


def mean_per_kept(visual: torch.Tensor, owner: torch.Tensor, n_kept: int) -> torch.Tensor:
    """(n_kept, D): each kept token's mean over the visual tokens that join it, summed in float32 and returned in the
    embeddings' dtype. ``owner``: for every visual token, the position in the kept list it joins (-1: none); every
    kept token joins itself."""
    joined = owner >= 0
    into = owner[joined].to(visual.device)
    sums = torch.zeros(n_kept, visual.shape[-1], dtype=torch.float32, device=visual.device)
    sums.index_add_(0, into, visual[joined.to(visual.device)].float())
    counts = torch.bincount(owner[joined], minlength=n_kept).to(visual.device)
    return (sums / counts[:, None]).to(visual.dtype)


def pool_merger() -> Merger:
    """Pooling, the other half of METHOD.md's "uniform/pool" peer: every visual token joins the nearest kept token
    of its grid (``nearest_kept``) and each kept token carries the mean embedding of those that joined it, at its
    own position. With uniform's lattice at 25% of an even grid this is 2 x 2 average pooling; newline tokens join
    nothing."""

    def merge(view: SampleView, kept: torch.Tensor) -> torch.Tensor:
        if view.cells is None:
            raise ValueError(
                f"method 'pool' needs each visual token's place in its image, which "
                f"{type(view.adapter).__name__} does not give (it has no visual_cells layout)"
            )
        cells, kept = view.cells.cpu(), kept.cpu()
        return mean_per_kept(view.inputs_embeds[0, view.visual], nearest_kept(cells, kept), len(kept))

    return merge


# VisionZip's split of its budgets into dominant + contextual tokens: 54 + 10 of 64, 108 + 20 of 128, 162 + 30 of 192
VISIONZIP_CONTEXTUAL_SHARE = 10 / 64


@dataclass
class ZipPlan:
    """Which visual tokens VisionZip keeps for one sample, and how the others merge into the contextual ones."""

    order: torch.Tensor  # pick order: each span's dominant tokens (most attended first), then its contextual
    # tokens; the tokens left over follow, most attended first, so the shared top-k keeps exactly the first picks
    kept: torch.Tensor  # the dominant and contextual tokens, ascending
    owner: torch.Tensor  # (N_v,) the contextual token each token merges into (itself for a contextual one); -1: none


def span_shares(k: int, sizes: list[int]) -> list[int]:
    """k split among spans of ``sizes`` tokens in proportion to them (largest remainders, exact in integers;
    earlier spans first on ties), none above its size; all of them when k is larger."""
    total = sum(sizes)
    if k >= total:
        return list(sizes)
    shares = [k * size // total for size in sizes]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(k * sizes[i] % total), i))
    for i in by_remainder[:k - sum(shares)]:
        shares[i] += 1
    return shares


class VisionZip:
    """VisionZip-style dominant + contextual tokens (Yang et al., CVPR 2025), a training-free peer that reads the
    vision tower instead of the question. As VisionZip runs on each image, crop or frame the tower encodes (one
    span of ``SampleView.tower_spans``: an image, LLaVA-OneVision's base view or one of its anyres crops, a frame,
    or a frame pair on Qwen2-VL), a budget of k tokens is shared among the spans in proportion to their tokens
    (largest remainders), and each span's k_s is split there: its k_s - c most attended tokens in the tower
    are the dominant ones (``LLMInputs.tower_attention``, which sums to one within each image, crop or frame;
    c = round(k_s * 10/64), VisionZip's split), and c contextual tokens, evenly spaced over the span's rest in
    sequence order, each take the mean embedding of itself and the rest's tokens most like it (cosine of the same
    layer's head-averaged keys, VisionZip's metric), so tokens merge only within their own image or frame. Unlike
    VisionZip, which merges tower features before its projector and adds the target to the mean, this merges the
    LLM-input embeddings, so the mean keeps their scale; each kept token keeps its own position.

    The split depends on k, so one instance serves one ``keep_ratio`` and ``budget``: it is both the scorer and the
    merger of a ``TokenPrunedModel`` built with the same two."""

    reads_tower_attention = True  # TokenPrunedModel captures the tower's attention for scorers that say so

    def __init__(self, keep_ratio: float, budget: str = "global",
                 contextual_share: float | str = VISIONZIP_CONTEXTUAL_SHARE):
        try:
            share = float(contextual_share)
        except (TypeError, ValueError):
            share = float("nan")
        if not 0.0 <= share < 1.0:  # also refuses nan
            raise ValueError(f"contextual_share is the fraction of kept tokens that merge the rest, in [0, 1) (0: "
                             f"dominant tokens only; VisionZip: 10/64 = 0.15625); got {contextual_share!r}")
        self.keep_ratio = check_keep_ratio(keep_ratio)
        self.budget = budget
        self.contextual_share = share
        self._plans: dict[tuple, ZipPlan] = {}  # scored, not yet merged: merge reuses them

    @staticmethod
    def _key(view: SampleView) -> tuple:
        """The inputs a plan depends on: the sample's tower attention and groups by value, its tower keys by
        storage (the scorer's and the merger's views of one sample share that tensor)."""
        return (view.tower_keys.data_ptr(), view.tower_attention.detach().cpu().numpy().tobytes(),
                view.groups.cpu().numpy().tobytes())

    def plan(self, view: SampleView) -> ZipPlan:
        attention = view.tower_attention
        if attention is None or view.tower_keys is None or view.tower_spans is None:
            raise ValueError("method 'visionzip' ranks tokens by the vision tower's attention, which this input does "
                             "not carry; capture it with adapter.capture_llm_inputs(inputs, tower_attention=True)")
        attention = attention.float().cpu()
        n = attention.numel()
        budgets = view.groups.cpu() if self.budget == "per_group" else torch.zeros(n, dtype=torch.long)
        spans = view.tower_spans.cpu()
        unit = torch.nn.functional.normalize(view.tower_keys.float(), dim=-1).cpu()
        owner = torch.full((n,), -1, dtype=torch.long)
        picks = []
        for budget in torch.unique(budgets):
            members = torch.nonzero(budgets == budget).flatten()
            k = keep_count(members.numel(), self.keep_ratio)
            covered = members[attention[members] > NO_PATCHES]
            span_ids, sizes = torch.unique(spans[covered], return_counts=True)
            for span, k_span in zip(span_ids, span_shares(k, sizes.tolist())):
                if k_span == 0:  # a small span next to large ones at a low ratio
                    continue
                tokens = covered[spans[covered] == span]
                # too few tokens to leave a rest (nearly everything kept): all dominant
                n_context = min(round(k_span * self.contextual_share), k_span - 1) if tokens.numel() > k_span else 0
                by_attention = tokens[torch.sort(attention[tokens], descending=True, stable=True).indices]
                dominant = by_attention[:k_span - n_context]
                rest = tokens[~torch.isin(tokens, dominant)]
                targets = rest[torch.arange(0, rest.numel(), max(1, rest.numel() // max(n_context, 1)))[:n_context]]
                merged = rest[~torch.isin(rest, targets)]
                if targets.numel():
                    owner[targets] = targets
                    owner[merged] = targets[torch.argmax(unit[merged] @ unit[targets].T, dim=1)]
                picks += [dominant, targets]
            uncovered = members[attention[members] <= NO_PATCHES]  # only when k exceeds the tokens with patches
            picks.append(uncovered[:max(0, k - covered.numel())])
        chosen = torch.cat(picks)
        left = torch.nonzero(~torch.isin(torch.arange(n), chosen)).flatten()
        left = left[torch.sort(attention[left], descending=True, stable=True).indices]
        return ZipPlan(order=torch.cat([chosen, left]), kept=torch.sort(chosen).values, owner=owner)

    def __call__(self, view: SampleView) -> torch.Tensor:
        plan = self.plan(view)
        if len(self._plans) >= 64:  # plans a merge never took (a batch that failed half-way): dropped
            self._plans.clear()
        self._plans[self._key(view)] = plan
        return pick_order_scores(plan.order, view.n_visual)

    def merge(self, view: SampleView, kept: torch.Tensor) -> torch.Tensor:
        """The (k, D) embeddings the kept tokens carry: dominant ones their own, contextual ones their group's mean."""
        plan = self._plans.pop(self._key(view), None) if view.tower_attention is not None else None
        plan = plan or self.plan(view)
        if not torch.equal(kept.cpu(), plan.kept):
            raise ValueError(f"VisionZip(keep_ratio={self.keep_ratio}, budget={self.budget!r}) was handed a selection "
                             f"its plan did not make: build the TokenPrunedModel with the same keep_ratio and budget")
        owner = plan.owner.clone()
        dominant = plan.kept[owner[plan.kept] < 0]
        owner[dominant] = dominant  # each dominant token is the mean of itself alone
        slot = torch.full((owner.numel(),), -1, dtype=torch.long)
        slot[plan.kept] = torch.arange(plan.kept.numel())
        joined = owner >= 0
        into = torch.full_like(owner, -1)
        into[joined] = slot[owner[joined]]
        return mean_per_kept(view.inputs_embeds[0, view.visual], into, plan.kept.numel())


class TCCScorer:
    """The learned compressor f_theta applied to layer-0 attention; one compressor per modality. Each compressor
    must have learned from the same instruction rows (its labels' rule) as the attention it is handed."""

    def __init__(self, compressors: Mapping[str, torch.nn.Module],
                 instruction_rows: str = DEFAULT_INSTRUCTION_ROWS):
        self.compressors = dict(compressors)
        self.instruction_rows = check_instruction_rows(instruction_rows)
        self._warned: set[str] = set()  # modalities whose token-count mismatch was said (once per run is enough)
        for modality, compressor in self.compressors.items():
            trained = getattr(compressor, "instruction_rows", DEFAULT_INSTRUCTION_ROWS)
            if trained != self.instruction_rows:
                where = getattr(compressor, "checkpoint_path", f"the {modality} compressor")
                raise ValueError(
                    f"compressor {where} learned from the layer-0 attention of instruction_rows={trained}, but this "
                    f"run asks for instruction_rows={self.instruction_rows}: pass instruction_rows={trained}, or "
                    f"label and train a compressor with --instruction-rows {self.instruction_rows}"
                )

    def __call__(self, view: SampleView) -> torch.Tensor:
        modality = view.modality
        if modality not in self.compressors:
            raise ValueError(
                f"no compressor for {modality} input (have: {', '.join(sorted(self.compressors))}); train one with "
                f"`python -m tcc_eval.compressor label ...` on {modality} data, then `... train ...`"
            )
        if modality not in self._warned:
            mismatch = token_count_mismatch(self.compressors[modality], view.n_visual)
            if mismatch:
                warnings.warn(mismatch, stacklevel=2)
                self._warned.add(modality)
        return self.compressors[modality].predict(view.layer0_attention(self.instruction_rows))


INPUT_STAGE_METHODS = ("none", "random", "a0", "tcc", "oracle", "divprune", "uniform", "pool", "visionzip")
ALL_METHODS = INPUT_STAGE_METHODS + INSIDE_LLM_METHODS


def check_method(method: str) -> str:
    if method not in ALL_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(ALL_METHODS)}")
    return method
