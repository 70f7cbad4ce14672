"""Efficiency benchmark: prefill time of vanilla, tcc, FastV, DART, PyramidDrop and the physical limit, side by side.

``python -m tcc_eval.bench --shape qwen2-0.5b --visual 1200 --text 100 --ratios 0.5,0.25 --json OUT``

An LLM of a real shape (``tcc_eval.flops.LLM_SHAPES``, or ``layers=..,hidden=..,...``) is built with
random weights (timing does not depend on them) and fed ``[system + visual + text]`` embeddings. Per
retention ratio rho it times, in one process and strictly one after another:

- ``none``: vanilla prefill of the full sequence;
- ``tcc``: layer-0 probe + compressor CNN + top-k + gather (``overhead_s``), then prefill of the kept
  sequence; ``prefill_s`` includes the overhead;
- ``fastv_same_kept``: FastV keeping the same number of visual tokens as tcc from layer K on (pays K
  full-length layers and the ranking, reported as ``overhead_s``);
- ``fastv_same_avg_retention``: FastV whose layer keep ratio gives average retention rho;
- ``dart_same_avg_retention``: DART, pruning at the same layer K, likewise (its pivot ranking is its overhead);
- ``pdrop_same_avg_retention``: PyramidDrop whose per-stage ratio lambda gives average retention rho (its own
  stages, or ``--pdrop-layers``; its rankings are its ``overhead_s``);
- ``limit``: a plain prefill of an unpruned sequence as long as tcc's kept one (the lower bound).

Every round runs all measurements once (a warm-up round first), so load changes hit all methods
alike; each row reports the median over rounds. KV bytes are measured from the returned cache and
equal ``flops.kv_cache_bytes``; FLOPs ratios come from ``flops.flops_ratio`` for the realised kept count.
On CPU every row also has this process's CPU time (``prefill_cpu_s``), which other processes cannot
inflate: on a shared machine use ``--threads 1`` and compare on it; the JSON records the load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .api import device_arg
from .compressor import load_compressor
from .core import (
    check_keep_ratio,
    gather_left_padded,
    keep_count,
    keep_positions,
    select_visual,
)
from .fastv import _DartPruner, _LayerKPruner, _PyramidPruner, fastv_layer_keep_ratio
from .flops import (
    LLM_SHAPES,
    LLMShape,
    flops_ratio,
    kv_cache_bytes,
    pyramid_stage_layers,
    pyramid_stage_ratio,
)
from .options import DEFAULT_INSTRUCTION_ROWS, add_json_output, check_json_output, positive_int, seed_int
from .probe import instruction_to_visual

METHODS = ("none", "tcc", "fastv_same_kept", "fastv_same_avg_retention", "dart_same_avg_retention",
           "pdrop_same_avg_retention", "limit")
LAYER_K_ROWS = ("fastv_same_kept", "fastv_same_avg_retention", "dart_same_avg_retention")
ARCHS = ("qwen2", "llama")
SHAPE_KEYS = ("layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim")
# Acceptance thresholds of issue 7 (reported as checks, never asserted).
TCC_VS_LIMIT_MAX = 1.05
OVERHEAD_VS_VANILLA_MAX = 0.03


@dataclass
class BenchConfig:
    """Everything a run depends on; written to the JSON as ``config``."""

    shape_name: str
    shape: LLMShape
    arch: str
    visual: int
    text: int
    system: int
    ratios: tuple[float, ...]
    repeats: int
    warmup: int
    fastv_k: int
    device: str
    dtype: str
    seed: int = 0
    compressor: str | None = None
    pdrop_layers: tuple[int, ...] | None = None  # None: PyramidDrop's own stages (L/4, L/2, 3L/4)

    @property
    def seq_len(self) -> int:
        return self.system + self.visual + self.text

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = asdict(self.shape)
        out["ratios"] = list(self.ratios)
        out["seq_len"] = self.seq_len
        return out


# --- model and inputs -----------------------------------------------------------------------------
def parse_shape(text: str) -> tuple[str, LLMShape, str]:
    """``qwen2-0.5b`` (a key of LLM_SHAPES) or ``layers=4,hidden=64,intermediate=128,heads=4,kv_heads=2
    [,head_dim=..][,arch=llama]``; returns (name, shape, arch). VILA shapes are Llama decoders."""
    if text in LLM_SHAPES:
        return text, LLM_SHAPES[text], "llama" if text.startswith(("vila", "llama")) else "qwen2"
    if "=" not in text:
        raise ValueError(f"unknown shape {text!r}: use one of {sorted(LLM_SHAPES)} or 'layers=..,hidden=..,...'")
    fields = dict(item.split("=", 1) for item in text.split(",") if item)
    arch = fields.pop("arch", "qwen2")
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    unknown = set(fields) - set(SHAPE_KEYS)
    missing = set(SHAPE_KEYS[:5]) - set(fields)
    if unknown or missing:
        raise ValueError(f"shape {text!r}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)} "
                         f"(needed: {', '.join(SHAPE_KEYS[:5])}; optional: head_dim, arch)")
    numbers = {k: v for k, v in fields.items() if v.strip().isdigit()}
    if len(numbers) < len(fields):
        raise ValueError(f"shape {text!r}: {', '.join(sorted(set(fields) - set(numbers)))} must be whole numbers")
    return "custom", LLMShape(**{k: int(v) for k, v in numbers.items()}), arch


def build_llm(shape: LLMShape, arch: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """A decoder stack (no embedding use, no LM head) of ``shape`` with random weights and sdpa attention."""
    from transformers import LlamaConfig, LlamaModel, Qwen2Config, Qwen2Model

    config_cls, model_cls = (Qwen2Config, Qwen2Model) if arch == "qwen2" else (LlamaConfig, LlamaModel)
    config = config_cls(
        hidden_size=shape.hidden, intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim,
        vocab_size=16, attn_implementation="sdpa",  # inputs are embeddings: a tiny vocabulary saves memory
    )
    with torch.device("meta"):
        needed = sum(p.numel() for p in model_cls(config).parameters()) * dtype.itemsize
    _check_memory(needed, device)
    torch.manual_seed(seed)
    with device:  # initialised where it runs: a 7B stack takes minutes to initialise on the CPU
        return model_cls(config).to(dtype=dtype).eval()


def _check_memory(needed: int, device: torch.device) -> None:
    """Fail early with a readable message instead of swapping or an OOM kill mid-benchmark."""
    if device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            meminfo = Path("/proc/meminfo").read_text().split("\n")
            available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable"))
        except (OSError, StopIteration):
            return
    if needed > 0.8 * available:
        raise MemoryError(f"the weights need {needed / 2**30:.1f} GiB but {device} has {available / 2**30:.1f} GiB "
                          "free: choose a smaller --shape or run on a GPU")


@dataclass
class Inputs:
    embeds: torch.Tensor  # (1, L, D)
    mask: torch.Tensor  # (1, L)
    positions: torch.Tensor  # (1, L)
    visual: torch.Tensor  # (L,) bool


def make_inputs(length: int, hidden: int, device: torch.device, dtype: torch.dtype,
                visual_span: tuple[int, int] = (0, 0), seed: int = 0) -> Inputs:
    """Random embeddings of ``length`` tokens, positions 0..L-1, visual tokens in ``visual_span``."""
    gen = torch.Generator().manual_seed(seed)
    embeds = (torch.randn(1, length, hidden, generator=gen) * 0.02).to(device=device, dtype=dtype)
    visual = torch.zeros(length, dtype=torch.bool, device=device)
    visual[visual_span[0]: visual_span[1]] = True
    return Inputs(embeds, torch.ones(1, length, dtype=torch.long, device=device),
                  torch.arange(length, device=device)[None], visual)


# --- timing ---------------------------------------------------------------------------------------
class Clock:
    """Marks on a timeline: CUDA events on a GPU (no sync inside the measured code); on CPU wall time
    plus this process's CPU time, which other processes taking the cores cannot inflate (with one
    thread it is the compute time; with more it also counts the threads' spin-waits)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter(), time.process_time()

    def seconds(self, start: Any, end: Any) -> tuple[float, float | None]:
        """(wall seconds, process CPU seconds or None on CUDA)."""
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end) / 1000.0, None
        return end[0] - start[0], end[1] - start[1]


def cache_bytes(output: Any) -> int:
    """Bytes of keys and values the prefill left in its cache (``cache``; ``past_key_values`` before 5.x)."""
    cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


@dataclass
class Outcome:
    """One timed run: (wall, CPU) seconds in total and in the overhead, cache bytes, visual tokens kept."""

    total: tuple[float, float | None]
    overhead: tuple[float, float | None]
    kv_bytes: int
    kept_visual: int
    overhead_parts: dict[str, float] | None = None  # tcc: wall seconds of each step of the overhead
    layer_visual: list[int] | None = None  # pruning inside the LLM: visual tokens each layer held


def prefill(llm: nn.Module, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> Any:
    return llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)


class _Clocked:
    """Mixin for the pruners inside the LLM: the clock their timed rankings read, and the (start, end) marks
    of those rankings (their overhead)."""

    def __init__(self, clock: Clock, *args: Any):
        self.clock = clock
        self.rank_marks: list[tuple[Any, Any]] = []
        super().__init__(*args)


class _TimedRanking(_Clocked):
    """The layer-K pruners' one ranking timed (FastV's and DART's overhead)."""

    def _timed(self, ranking: Callable[..., None], *args: Any) -> None:
        start = self.clock.mark()
        ranking(*args)
        if self.kept is not None and not self.rank_marks:
            self.rank_marks.append((start, self.clock.mark()))

    def rank(self, *args: Any) -> None:  # FastV's ranking hook
        self._timed(super().rank, *args)

    def rank_by_duplication(self, *args: Any) -> None:  # DART's
        self._timed(super().rank_by_duplication, *args)


class _TimedFastVPruner(_TimedRanking, _LayerKPruner):
    pass


class _TimedDartPruner(_TimedRanking, _DartPruner):
    pass


class _TimedPyramidPruner(_Clocked, _PyramidPruner):
    """PyramidDrop's stage pruner with each stage's ranking timed."""

    def rank(self, stage: int, hidden: torch.Tensor) -> None:
        start = self.clock.mark()
        super().rank(stage, hidden)
        self.rank_marks.append((start, self.clock.mark()))


NO_OVERHEAD = (0.0, 0.0)


def run_none(llm: nn.Module, x: Inputs, clock: Clock) -> Outcome:
    start = clock.mark()
    out = prefill(llm, x.embeds, x.mask, x.positions)
    end = clock.mark()
    return Outcome(clock.seconds(start, end), NO_OVERHEAD, cache_bytes(out), int(x.visual.sum()))


def run_tcc(llm: nn.Module, x: Inputs, clock: Clock, compressor: nn.Module, rho: float) -> Outcome:
    start = clock.mark()
    a0 = instruction_to_visual(llm, x.embeds, x.positions, x.mask, x.visual,
                               rows=getattr(compressor, "instruction_rows", DEFAULT_INSTRUCTION_ROWS))
    probed = clock.mark()
    scores = compressor.predict(a0)
    scored = clock.mark()
    kept_visual = select_visual(scores, rho)
    kept = keep_positions(x.mask[0].bool(), x.visual, kept_visual)
    embeds, mask, positions = gather_left_padded(x.embeds, x.mask, x.positions, [kept])
    selected = clock.mark()
    out = prefill(llm, embeds, mask, positions)
    end = clock.mark()
    parts = {name: clock.seconds(a, b)[0] for name, a, b in
             (("probe", start, probed), ("compressor", probed, scored), ("select_gather", scored, selected))}
    return Outcome(clock.seconds(start, end), clock.seconds(start, selected), cache_bytes(out),
                   int(kept_visual.numel()), parts)


def run_inside_llm(llm: nn.Module, x: Inputs, clock: Clock, pruner: Any) -> Outcome:
    """Prefill with ``pruner``'s hooks on (a timed FastV, DART or PyramidDrop pruner); its rankings are the
    overhead."""
    try:
        start = clock.mark()
        out = prefill(llm, x.embeds, x.mask, x.positions)
        end = clock.mark()
    finally:
        pruner.close()
    spans = [clock.seconds(a, b) for a, b in pruner.rank_marks]
    overhead = (sum(wall for wall, _ in spans), None if spans[0][1] is None else sum(cpu for _, cpu in spans))
    return Outcome(clock.seconds(start, end), overhead, cache_bytes(out), int(x.visual[pruner.kept].sum()),
                   layer_visual=pruner.layer_visual())


# --- the benchmark --------------------------------------------------------------------------------
@dataclass
class Case:
    method: str
    keep_ratio: float
    run: Callable[[], Outcome] | None  # None: not measurable (see note)
    layer_keep_ratio: float | None = None  # FastV, DART: fraction kept from layer K on; PyramidDrop: lambda
    note: str = ""


def plan(cfg: BenchConfig, llm: nn.Module, compressor: nn.Module, device: torch.device,
         dtype: torch.dtype) -> list[Case]:
    """Every measurement of the run, vanilla first, then per ratio tcc, both FastV variants, DART, PyramidDrop and
    the limit."""
    clock = Clock(device)
    span = (cfg.system, cfg.system + cfg.visual)
    full = make_inputs(cfg.seq_len, cfg.shape.hidden, device, dtype, span, cfg.seed)
    stages = pyramid_stage_layers(cfg.shape.layers, cfg.pdrop_layers)

    def layer_k(pruner_class: type, share: float) -> Callable[[], Outcome]:
        return lambda: run_inside_llm(
            llm, full, clock, pruner_class(clock, llm, cfg.fastv_k, share, full.visual, full.positions))

    cases = [Case("none", 1.0, lambda: run_none(llm, full, clock))]
    for rho in cfg.ratios:
        k = keep_count(cfg.visual, rho)
        short = make_inputs(cfg.seq_len - cfg.visual + k, cfg.shape.hidden, device, dtype,
                            (cfg.system, cfg.system + k), seed=cfg.seed + 1)
        cases.append(Case("tcc", rho, lambda rho=rho: run_tcc(llm, full, clock, compressor, rho)))
        cases.append(Case("fastv_same_kept", rho, layer_k(_TimedFastVPruner, rho), rho))
        for method, pruner_class in (("fastv", _TimedFastVPruner), ("dart", _TimedDartPruner)):
            try:
                r = fastv_layer_keep_ratio(rho, cfg.shape.layers, cfg.fastv_k)
                cases.append(Case(f"{method}_same_avg_retention", rho, layer_k(pruner_class, r), r))
            except ValueError as err:
                cases.append(Case(f"{method}_same_avg_retention", rho, None, None, str(err)))
        try:
            lam = pyramid_stage_ratio(rho, cfg.shape.layers, stages)
            cases.append(Case("pdrop_same_avg_retention", rho, lambda lam=lam: run_inside_llm(
                llm, full, clock, _TimedPyramidPruner(clock, llm, lam, stages, full.visual, full.positions)), lam))
        except ValueError as err:
            cases.append(Case("pdrop_same_avg_retention", rho, None, None, str(err)))
        cases.append(Case("limit", rho, lambda short=short: run_none(llm, short, clock)))
    return cases


class CpuShare:
    """Share of all CPUs used by OTHER processes while we ran (from /proc/stat minus our own CPU time).

    Load averages count our own threads too; this number isolates interference. None off Linux."""

    def __init__(self):
        self.start = self._busy(), time.process_time(), time.perf_counter()

    @staticmethod
    def _busy() -> float | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def others(self) -> float | None:
        busy, own, wall = self._busy(), time.process_time(), time.perf_counter()
        if busy is None or self.start[0] is None:
            return None
        others_s = (busy - self.start[0]) - (own - self.start[1])
        return max(0.0, others_s / ((wall - self.start[2]) * (os.cpu_count() or 1)))


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__, "device": str(device),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text().split("\n")
            info["device_name"] = next(line.split(":", 1)[1].strip() for line in cpuinfo
                                       if line.startswith("model name"))
        except (OSError, StopIteration):
            info["device_name"] = platform.processor() or "cpu"
    import transformers

    info["transformers"] = transformers.__version__
    return info


def _row(cfg: BenchConfig, case: Case, outcomes: list[Outcome]) -> dict[str, Any]:
    shape, n = cfg.shape, cfg.visual
    row: dict[str, Any] = {"method": case.method, "keep_ratio": case.keep_ratio}
    if not outcomes:
        return {**row, "avg_retention": None, "kept_visual": None, "prefill_s": None, "overhead_s": None,
                "prefill_cpu_s": None, "overhead_cpu_s": None, "prefill_runs_s": [], "prefill_cpu_runs_s": [],
                "kv_bytes": None, "kv_bytes_measured": None, "flops_ratio": None,
                "layer_keep_ratio": case.layer_keep_ratio, "note": case.note}
    kept = outcomes[-1].kept_visual
    fraction = kept / n
    bytes_per_elem = getattr(torch, cfg.dtype).itemsize

    def kv(tokens: int, layers: int) -> int:
        return kv_cache_bytes(tokens, layers, shape.kv_heads, shape.head_dim, bytes_per_elem)

    per_layer = outcomes[-1].layer_visual or [kept] * shape.layers  # input-stage: every layer holds the kept ones
    avg = sum(per_layer) / (shape.layers * n)
    kv_bytes = sum(kv(cfg.seq_len - n + count, 1) for count in per_layer)
    if case.method in LAYER_K_ROWS:
        flops = flops_ratio(n, fraction, shape, method="fastv", fastv_k=cfg.fastv_k)
    elif case.method.startswith("pdrop"):
        flops = flops_ratio(n, case.layer_keep_ratio, shape, method="pdrop", pdrop_layers=cfg.pdrop_layers)
    else:
        flops = flops_ratio(n, fraction, shape, method="none" if case.method == "none" else "tcc")
    times = [o.total[0] for o in outcomes]

    def median(values: list[float | None]) -> float | None:
        return None if None in values else statistics.median(values)

    return {
        **row, "avg_retention": avg, "kept_visual": kept, "prefill_s": statistics.median(times),
        "overhead_s": median([o.overhead[0] for o in outcomes]),
        "prefill_cpu_s": median([o.total[1] for o in outcomes]),
        "overhead_cpu_s": median([o.overhead[1] for o in outcomes]), "prefill_runs_s": times,
        "prefill_cpu_runs_s": [o.total[1] for o in outcomes],
        "kv_bytes": kv_bytes, "kv_bytes_measured": outcomes[-1].kv_bytes, "flops_ratio": flops,
        "layer_keep_ratio": case.layer_keep_ratio, "note": case.note,
        **({"overhead_parts_s": {name: statistics.median(o.overhead_parts[name] for o in outcomes)
                                 for name in outcomes[0].overhead_parts}} if outcomes[0].overhead_parts else {}),
    }


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    vanilla = next(r["prefill_s"] for r in rows if r["method"] == "none")
    limits = {r["keep_ratio"]: r["prefill_s"] for r in rows if r["method"] == "limit"}
    for row in rows:
        t, limit = row["prefill_s"], limits.get(row["keep_ratio"]) if row["method"] != "none" else None
        row["ratio_vs_vanilla"] = t / vanilla if t is not None else None
        row["ratio_vs_limit"] = t / limit if t is not None and limit else None


def acceptance_checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 7's claims per ratio, as measured: tcc vs limit, overhead vs vanilla, tcc vs FastV (same kept).

    Computed on wall time and, on CPU, also on process CPU time (``basis``)."""
    by = {(r["method"], r["keep_ratio"]): r for r in rows}
    bases = [("wall", "prefill_s", "overhead_s")]
    if by[("none", 1.0)]["prefill_cpu_s"] is not None:
        bases.append(("cpu", "prefill_cpu_s", "overhead_cpu_s"))
    checks = []
    for basis, total, overhead in bases:
        vanilla = by[("none", 1.0)][total]
        for rho in sorted({r["keep_ratio"] for r in rows if r["method"] == "tcc"}, reverse=True):
            tcc, fastv, limit = by[("tcc", rho)], by[("fastv_same_kept", rho)], by[("limit", rho)]
            for name, value, bound in (
                ("tcc_prefill / limit", tcc[total] / limit[total], TCC_VS_LIMIT_MAX),
                ("tcc_overhead / vanilla", tcc[overhead] / vanilla, OVERHEAD_VS_VANILLA_MAX),
                ("tcc / fastv_same_kept", tcc[total] / fastv[total], 1.0),
            ):
                checks.append({"basis": basis, "keep_ratio": rho, "check": name, "value": value, "max": bound,
                               "ok": value < bound})
    return checks


def check_config(cfg: BenchConfig) -> None:
    """Everything a run needs of its configuration, before any weights are built (ValueError naming the option)."""
    for rho in cfg.ratios:
        check_keep_ratio(rho)
    if not 0 < cfg.fastv_k < cfg.shape.layers:
        raise ValueError(f"--fastv-k {cfg.fastv_k} must be in 1..{cfg.shape.layers - 1} for this shape")
    pyramid_stage_layers(cfg.shape.layers, cfg.pdrop_layers)
    if cfg.visual < 1 or cfg.text < 1 or cfg.system < 0:
        raise ValueError("need --visual >= 1 and --text >= 1 (the probe's instruction rows), --system >= 0")


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every measurement serially (warm-up rounds, then ``repeats`` timed rounds, each running the cases in its
    own seeded random order, so no case always runs right after the same other one); returns the JSON."""
    device, dtype = torch.device(cfg.device), getattr(torch, cfg.dtype)
    check_config(cfg)
    llm = build_llm(cfg.shape, cfg.arch, device, dtype, cfg.seed)
    compressor = _compressor(cfg.compressor, device)
    cases = plan(cfg, llm, compressor, device, dtype)
    results: list[list[Outcome]] = [[] for _ in cases]
    load_before, share = os.getloadavg(), CpuShare()
    load_per_round, shuffle = [], random.Random(cfg.seed)
    with torch.inference_mode():
        for round_idx in range(cfg.warmup + cfg.repeats):
            timed = round_idx >= cfg.warmup
            for index in shuffle.sample(range(len(cases)), len(cases)):
                if cases[index].run is None:
                    continue
                outcome = cases[index].run()
                if timed:
                    results[index].append(outcome)
            load_per_round.append(os.getloadavg()[0])
            log(f"round {round_idx + 1}/{cfg.warmup + cfg.repeats} ({'timed' if timed else 'warm-up'}) done, "
                f"load {load_per_round[-1]:.2f}")
    machine = machine_info(device)
    machine.update(load_before=list(load_before), load_after=list(os.getloadavg()), load_1min_per_round=load_per_round,
                   others_cpu_share=share.others())
    rows = [_row(cfg, case, outs) for case, outs in zip(cases, results)]
    _add_ratios(rows)
    return {"machine": machine, "config": cfg.to_dict(), "rows": rows, "checks": acceptance_checks(rows)}


def _compressor(path: str | None, device: torch.device) -> nn.Module:
    """A trained compressor when given, else a randomly initialised one (same cost: weights do not matter)."""
    from .compressor.network import TokenCompressor

    if path:
        return load_compressor(path, device=device)
    return TokenCompressor().to(device).eval()


# --- output ---------------------------------------------------------------------------------------
def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(result: dict[str, Any]) -> str:
    cfg, machine, shape = result["config"], result["machine"], result["config"]["shape"]
    setup = (f"shape {cfg['shape_name']} ({cfg['arch']}, {shape['layers']} layers, hidden {shape['hidden']}), "
             f"{cfg['system']}+{cfg['visual']}+{cfg['text']} tokens, {cfg['device']} {cfg['dtype']}, "
             f"median of {cfg['repeats']} after {cfg['warmup']} warm-up, FastV and DART K={cfg['fastv_k']}, "
             f"PyramidDrop stages "
             f"{'/'.join(map(str, pyramid_stage_layers(shape['layers'], cfg.get('pdrop_layers'))))}")
    load = (f"machine: {machine['device_name']}, {machine['cpu_count']} CPUs, "
            f"torch threads {machine['torch_threads']}, "
            f"load1 before {machine['load_before'][0]:.2f} after {machine['load_after'][0]:.2f}, "
            f"other processes' CPU share {_fmt(machine['others_cpu_share'], '.0%')}")
    header = (f"{'method':<26}{'rho':>6}{'avg ret':>9}{'kept':>6}{'prefill s':>11}{'overhead s':>12}"
              f"{'t/vanilla':>11}{'t/limit':>9}{'cpu s':>9}{'cpu ovh s':>11}{'KV MiB':>9}{'FLOPs':>8}")
    lines = [setup, load, "", header]
    for r in result["rows"]:
        lines.append(
            f"{r['method']:<26}{r['keep_ratio']:>6.2f}{_fmt(r['avg_retention'], '.3f'):>9}"
            f"{_fmt(r['kept_visual'], 'd'):>6}{_fmt(r['prefill_s'], '.3f'):>11}{_fmt(r['overhead_s'], '.4f'):>12}"
            f"{_fmt(r['ratio_vs_vanilla'], '.3f'):>11}{_fmt(r['ratio_vs_limit'], '.3f'):>9}"
            f"{_fmt(r['prefill_cpu_s'], '.3f'):>9}{_fmt(r['overhead_cpu_s'], '.4f'):>11}"
            f"{_fmt(None if r['kv_bytes'] is None else r['kv_bytes'] / 2**20, '.1f'):>9}"
            f"{_fmt(r['flops_ratio'], '.3f'):>8}" + (f"  ({r['note']})" if r["note"] else "")
        )
    legend = ("prefill/overhead s: wall time, prefill includes the overhead; t/vanilla, t/limit: wall prefill over "
              "vanilla's and over the limit of the same rho; cpu s: this process's CPU time (robust to other "
              "processes); avg ret: mean kept fraction over layers; KV MiB (2^20 bytes) in the run's dtype; "
              "FLOPs: the LLM's visual part vs vanilla, by the paper's formula; the scoring and selection overhead is "
              "not in it (it is in the overhead column)")
    lines += ["", legend, ""]
    for r in result["rows"]:
        if r.get("overhead_parts_s"):
            lines.append(f"tcc overhead at rho={r['keep_ratio']:.2f} (wall, ms): "
                         + ", ".join(f"{name} {t * 1e3:.2f}" for name, t in r["overhead_parts_s"].items()))
    for c in result["checks"]:
        lines.append(f"check {c['basis']:<4} rho={c['keep_ratio']:.2f}: {c['check']} = {c['value']:.3f} (< {c['max']}) "
                     f"{'PASS' if c['ok'] else 'FAIL'}")
    return "\n".join(lines)


def add_machine_args(p: argparse.ArgumentParser) -> None:
    """--device, --dtype, --threads and --seed, as every benchmark of this package takes them."""
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", type=device_arg)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=seed_int, default=0)


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, str | None]:
    """The run's configuration and the JSON output path (None: print only)."""
    p = argparse.ArgumentParser(prog="python -m tcc_eval.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="qwen2-0.5b",
                   help=f"one of {', '.join(LLM_SHAPES)}, or "
                        "'layers=..,hidden=..,intermediate=..,heads=..,kv_heads=..[,arch=llama]'")
    p.add_argument("--visual", type=positive_int, default=1200, help="visual tokens N_v")
    p.add_argument("--text", type=positive_int, default=100, help="instruction tokens after the visual ones")
    p.add_argument("--system", type=int, default=14, help="system-prompt tokens before the visual ones")
    p.add_argument("--ratios", default="0.5,0.25", help="comma-separated retention ratios rho")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed rounds; rows report the median")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--fastv-k", type=positive_int, default=2, help="FastV's and DART's pruning layer K")
    p.add_argument("--pdrop-layers", help="PyramidDrop's stage layers, e.g. 2/14/21 (default: L/4, L/2, 3L/4)")
    add_machine_args(p)
    p.add_argument("--compressor", help="trained compressor checkpoint (default: random weights, same cost)")
    add_json_output(p, "bench.json")
    args = p.parse_args(argv)
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    device = torch.device(args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    try:
        check_json_output(args)
        name, shape, arch = parse_shape(args.shape)
        ratios = tuple(check_keep_ratio(r) for r in args.ratios.split(",") if r.strip())
        pdrop_layers = None if args.pdrop_layers is None else pyramid_stage_layers(shape.layers, args.pdrop_layers)
        cfg = BenchConfig(name, shape, arch, args.visual, args.text, args.system, ratios, args.repeats, args.warmup,
                          args.fastv_k, str(device), dtype, args.seed, args.compressor, pdrop_layers)
        check_config(cfg)
        if args.compressor:  # now, not after the vanilla rounds
            load_compressor(args.compressor)
    except (ValueError, OSError) as err:
        p.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    return cfg, args.json


def run_variant_process(command: list[str], what: str, env: dict[str, str] | None = None,
                        out_of_memory_hint: str = "") -> dict[str, Any]:
    """Run one benchmark variant in a process of its own (memory peaks and allocator settings are per process);
    its result is the JSON object on the last line it prints."""
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (f"killed, likely out of memory{out_of_memory_hint}" if done.returncode == -9
                  else f"exit {done.returncode}")
        raise RuntimeError(f"{what} failed ({reason}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(table: str, result: dict[str, Any], json_path: str | None) -> None:
    """Print a benchmark's table; write its full result as JSON where asked (every benchmark of this package)."""
    print(table)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2))
        print(f"wrote {json_path}")


def main(argv: list[str] | None = None) -> int:
    cfg, json_path = parse_args(argv)
    result = run_bench(cfg, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    report(format_table(result), result, json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
