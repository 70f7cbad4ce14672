"""Fail loudly when lmms-eval produced no results: its CLI exits 0 even when evaluation crashes.

    python -m tcc_eval.integrations.lmms_eval OUTPUT_PATH [--tasks a,b] [--newer-than EPOCH]

prints the newest matching ``*_results.json`` or exits 1 with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

HINT = "lmms-eval exits 0 even when evaluation crashes: read its log above for the real error"


def check_results(
    output_path: str | os.PathLike,
    tasks: Iterable[str] = (),
    newer_than: float | None = None,
) -> Path:
    """Newest ``*_results.json`` under ``output_path`` (written after ``newer_than``, a Unix time, if
    given) whose ``results`` hold every task in ``tasks``; raises RuntimeError when there is none."""
    root = Path(output_path)
    wanted = [t for t in tasks if t]
    found = sorted(root.rglob("*_results.json"), key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []
    fresh = [p for p in found if newer_than is None or p.stat().st_mtime >= newer_than]
    if not fresh:
        when = "" if newer_than is None else f" written after {newer_than:.0f}"
        raise RuntimeError(f"no *_results.json{when} under {root} ({len(found)} older ones); {HINT}")
    unreadable: list[str] = []  # named in the error: a run that died while writing its results leaves a truncated file
    for path in fresh:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            unreadable.append(f"{path} ({type(err).__name__}: {err})")
            continue
        results = (data.get("results") if isinstance(data, dict) else None) or {}
        if all(task in results for task in wanted):
            return path
    bad = f"; unreadable, truncated or not JSON: {'; '.join(unreadable)}" if unreadable else ""
    raise RuntimeError(f"no results file under {root} covers tasks {wanted} (checked {len(fresh)}{bad}); {HINT}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcc_eval.integrations.lmms_eval",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("output_path")
    parser.add_argument("--tasks", default="", help="comma-separated task names that must have results")
    parser.add_argument("--newer-than", type=float, default=None, help="ignore files older than this Unix time")
    args = parser.parse_args(argv)
    try:
        print(check_results(args.output_path, args.tasks.split(","), args.newer_than))
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
