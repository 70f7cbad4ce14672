"""What glibc's default handling of freed memory costs the CPU demo, side by side with ``cpu_memory``'s top pad.

``python -m tcc_eval.bench_cpu_memory --family vila --modality video --n 8 --json OUT``

Each variant runs in a fresh child process (the allocator's settings are per process, read at its start):
"glibc default" without glibc's ``MALLOC_*`` settings, "top pad" with ``cpu_memory.ENVIRONMENT``. A child loads
the shipped demo model and times, on the same test samples, vanilla generation and the explainability oracle
(eager attention forward + layer-by-layer backward), each with its wall time, user and kernel CPU time and
minor page faults, and the child's peak resident memory. Rounds alternate the order of the variants so that load
changes hit both alike; the table reports medians, the machine's load average before and after, and whether both
variants gave the same answers and oracle scores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import sys
import time
from typing import Any

from .cpu_memory import ENVIRONMENT

VARIANTS = ("glibc default", "top pad")
WORKLOADS = ("vanilla", "oracle")


def _usage() -> tuple[float, float, float, int]:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), used.ru_utime, used.ru_stime, used.ru_minflt


def _measured(before: tuple[float, float, float, int]) -> dict[str, float]:
    after = _usage()
    return {"wall_s": after[0] - before[0], "user_s": after[1] - before[1], "kernel_s": after[2] - before[2],
            "minor_faults": after[3] - before[3]}


def run_child(family: str, modality: str, n: int, seed: int, threads: int) -> dict[str, Any]:
    """One variant's measurements in this process (started by ``run_bench`` with the variant's environment)."""
    import torch

    torch.set_num_threads(threads)
    from .demo import compressor_path
    from .demo.evaluate import evaluate_model, load_demo, samples_for

    model, processor = load_demo(family)
    samples = samples_for(family, modality, n, seed)
    compressor = {modality: str(compressor_path(family, modality))}
    out: dict[str, Any] = {"environment": {name: os.environ.get(name) for name in ENVIRONMENT}}
    scores = hashlib.sha1()
    for workload, method in (("vanilla", "none"), ("oracle", "oracle")):
        start = _usage()
        rows = evaluate_model(model, processor, samples, compressor, methods=(method,), ratios=(0.25,),
                              batch_size=n)
        out[workload] = _measured(start)
        result = next(r for r in rows if r["method"] == method)
        out[workload]["accuracy"] = result["accuracy"]
        if "pointing" in result:
            out[workload]["pointing"] = result["pointing"]
        scores.update(json.dumps(result, sort_keys=True).encode())
    out["rows_sha1"] = scores.hexdigest()
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return out


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from .bench import run_variant_process

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    command = [sys.executable, "-m", "tcc_eval.bench_cpu_memory", "--child", "--family", args.family,
               "--modality", args.modality, "--n", str(args.n), "--seed", str(args.seed),
               "--threads", str(args.threads)]
    load_before = os.getloadavg()
    for round_index in range(args.repeats):
        order = VARIANTS if round_index % 2 == 0 else VARIANTS[::-1]
        for name in order:
            env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT}
            if name == "top pad":
                env.update(ENVIRONMENT)
            runs[name].append(run_variant_process(command, f"the {name!r} child", env=env))
    load_after = os.getloadavg()
    digests = {run["rows_sha1"] for variant in runs.values() for run in variant}
    rows = []
    for workload in WORKLOADS:
        for name in VARIANTS:
            measured = [run[workload] for run in runs[name]]
            row = {"workload": workload, "variant": name,
                   **{key: statistics.median(m[key] for m in measured)
                      for key in ("wall_s", "user_s", "kernel_s", "minor_faults")},
                   "wall_runs_s": [m["wall_s"] for m in measured]}
            if workload == WORKLOADS[-1]:  # the child's peak, reached by its last workload at the latest
                row["peak_rss_mib"] = statistics.median(run["peak_rss_mib"] for run in runs[name])
            rows.append(row)
        base = rows[-len(VARIANTS)]
        for row in rows[-len(VARIANTS):]:
            row["wall_ratio"] = row["wall_s"] / base["wall_s"]
    return {"family": args.family, "modality": args.modality, "n": args.n, "seed": args.seed,
            "threads": args.threads, "repeats": args.repeats, "top_pad_environment": ENVIRONMENT,
            "same_results": len(digests) == 1, "rows": rows, "load_before": load_before, "load_after": load_after,
            "cpu_count": os.cpu_count(), "runs": runs}


def format_table(result: dict[str, Any]) -> str:
    lines = [f"demo {result['family']} {result['modality']}, {result['n']} samples (seed {result['seed']}), "
             f"{result['threads']} threads, median of {result['repeats']}; load {result['load_before'][0]:.2f} -> "
             f"{result['load_after'][0]:.2f} on {result['cpu_count']} CPUs; same answers and oracle scores in "
             f"every run: {'yes' if result['same_results'] else 'NO'}",
             f"{'workload':<10}{'variant':<16}{'wall s':>9}{'ratio':>7}{'user s':>9}{'kernel s':>10}{'faults':>11}"
             f"{'peak RSS MiB':>13}"]
    for row in result["rows"]:
        peak = f"{row['peak_rss_mib']:>13.0f}" if "peak_rss_mib" in row else ""
        lines.append(f"{row['workload']:<10}{row['variant']:<16}{row['wall_s']:>9.2f}{row['wall_ratio']:>7.3f}"
                     f"{row['user_s']:>9.2f}{row['kernel_s']:>10.2f}{row['minor_faults']:>11.0f}{peak}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from .demo import FAMILIES, MODALITIES
    from .options import add_json_output, check_json_output, positive_int, seed_int

    p = argparse.ArgumentParser(prog="python -m tcc_eval.bench_cpu_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="vila", choices=FAMILIES)
    p.add_argument("--modality", default="video", choices=MODALITIES)
    p.add_argument("--n", type=positive_int, default=8, help="test samples (one batch)")
    p.add_argument("--seed", type=seed_int, default=11, help="test-split seed")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads in each child")
    p.add_argument("--repeats", type=int, default=2, help="rounds of both variants; rows report the median")
    add_json_output(p, "cpu_memory.json", help="write the result here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.n < 1 or args.repeats < 1 or args.threads < 1:
        p.error("--n, --repeats and --threads must be at least 1")
    try:
        check_json_output(args)
    except ValueError as err:
        p.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.family, args.modality, args.n, args.seed, args.threads)))
        return 0
    from .bench import report

    try:
        result = run_bench(args)
    except RuntimeError as err:  # a child failed: its own error, no traceback from here
        print(f"error: {err}", file=sys.stderr)
        return 1
    report(format_table(result), result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
