"""Per-sample efficiency records of the lmms-eval wrappers (one JSON line per ``generate`` call).

lmms-eval never tells a model where ``--output_path`` is, so the folder comes from, in order: the
``efficiency_dir=`` model arg, the ``TCC_EFFICIENCY_DIR`` environment variable, or
``<--output_path>/efficiency`` read from the command line. Without any of them no records are written
(one warning). A rerun's file replaces the earlier run's of the same name (model, checkpoint, method, ratio,
task, rank), as its results do in the tables; the earlier file is kept beside it as ``<name>.jsonl.<its time>``,
which the tables do not read. That holds across process counts too: a file names its rank and the number of
processes, and a rerun on another count moves every file of the earlier layout aside (the tables would otherwise
mix the two runs' samples wherever their sample sets differ, e.g. under ``--limit``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from loguru import logger
from torch import nn

from tcc_eval.integrations import record_json_default
from tcc_eval.options import method_variant

EFFICIENCY_ENV = "TCC_EFFICIENCY_DIR"


def cli_output_path(argv: list[str] | None = None) -> str | None:
    """``--output_path`` of the running lmms-eval command line, if any."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--output_path")
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known.output_path


def resolve_efficiency_dir(explicit: str | None, environ: dict[str, str], argv: list[str] | None = None) -> Path | None:
    if explicit:
        return Path(explicit)
    if environ.get(EFFICIENCY_ENV):
        return Path(environ[EFFICIENCY_ENV])
    output_path = cli_output_path(argv)
    return Path(output_path) / "efficiency" if output_path else None


def check_records_folder(directory: Path | None) -> None:
    """Creates the records folder, or says which folder cannot be written and how to give another: at start-up, not
    at the first sample, whose failed record would fail its generate call."""
    if directory is None:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK):
            raise PermissionError("not writable")
    except OSError as err:
        raise ValueError(f"efficiency records folder {directory}: {err}. Give a writable folder with the "
                         f"efficiency_dir= model arg (or ${EFFICIENCY_ENV}, or --output_path)") from None


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


class EfficiencyLog:
    """Writes ``<dir>/<model>_<checkpoint>-<hash>_<method>-<ratio%>[_<variant>]_<task>[_rank<r>of<processes>]
    _efficiency.jsonl``."""

    def __init__(
        self,
        directory: Path | None,
        model: str,
        base_model: str,
        method: str,
        keep_ratio: float,
        rank: int = 0,
        world_size: int = 1,
        method_options: dict[str, Any] | None = None,
        compressor: Any = None,
    ):
        self.directory = directory
        self.fields = {
            "model": model,
            "framework": "lmms_eval",
            "method": method,
            "method_options": dict(method_options or {}),
            "compressor": compressor,  # tcc's file, folder or {modality: file}: which one ran
            "keep_ratio": keep_ratio,
            "base_model": base_model,
        }
        variant = method_variant(method, method_options)  # so a variant's records never replace its method's
        checkpoint = base_model.rstrip("/")
        # the folder's name and a hash of its path: two runs' checkpoint-1000 folders must not share a file
        named = _safe(Path(checkpoint).name)
        rest = f"_{method}-{keep_ratio * 100:g}" + (f"_{_safe(variant)}" if variant else "")
        self._stem = f"{model}_{named}-{hashlib.sha1(checkpoint.encode()).hexdigest()[:8]}{rest}"
        self._unhashed_stem = f"{model}_{named}{rest}"  # the name versions before the hash gave the same run
        self._world_size = world_size
        self._rank_suffix = f"_rank{rank}of{world_size}" if world_size > 1 else ""
        self._started: set[Path] = set()
        check_records_folder(directory)
        if directory is None:
            logger.warning(
                f"no efficiency records will be written: pass --output_path, the efficiency_dir= model arg "
                f"or ${EFFICIENCY_ENV}"
            )

    def _run_name(self, task: str | None, stem: str | None = None) -> str:
        return f"{stem or self._stem}_{_safe(task or 'unknown')}"

    def path_for(self, task: str | None) -> Path:
        assert self.directory is not None
        return self.directory / f"{self._run_name(task)}{self._rank_suffix}_efficiency.jsonl"

    def _earlier_files(self, task: str | None) -> list[Path]:
        """This process's own earlier file, every file of the same run name written under another process
        count (any rank; also the ``_rank<r>`` names of versions that did not record the count), and every file of
        the run under the name of versions before the checkpoint's hash."""
        own = self.path_for(task)
        name = re.compile(f"(?:{re.escape(self._run_name(task))}|(?P<unhashed>"
                          f"{re.escape(self._run_name(task, self._unhashed_stem))}))"
                          + r"(?P<rank>_rank\d+(?:of(?P<processes>\d+))?)?_efficiency\.jsonl")
        earlier = []
        for path in sorted(own.parent.glob("*_efficiency.jsonl")):
            match = name.fullmatch(path.name)
            if match:
                processes = int(match["processes"]) if match["processes"] else (1 if match["rank"] is None else None)
                if path == own or processes != self._world_size or match["unhashed"]:
                    earlier.append(path)
        return earlier

    def write(self, task: str | None, index: Any, stats: dict[str, Any], batch_size: int = 1) -> None:
        if self.directory is None:
            return
        record = {**self.fields, "dataset": task, "index": index, **stats}
        if batch_size > 1:
            record["batch_size"] = batch_size
        path = self.path_for(task)
        mode = "a" if path in self._started else "w"
        path.parent.mkdir(parents=True, exist_ok=True)
        if mode == "w":  # an earlier run's files: moved aside, never lost
            for earlier in self._earlier_files(task):
                _move_aside(earlier)
        with path.open(mode, encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=record_json_default) + "\n")
        self._started.add(path)


def _move_aside(path: Path) -> None:
    try:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(path.stat().st_mtime))
        aside, n = path.with_name(f"{path.name}.{stamp}"), 0
        while aside.exists():  # two runs within one second
            n += 1
            aside = path.with_name(f"{path.name}.{stamp}-{n}")
        path.rename(aside)
    except FileNotFoundError:  # another process of this run moved it first
        pass


class RecordingModel(nn.Module):
    """The pruned model as the wrapper sees it: after every ``generate`` it hands the call's
    ``last_stats`` and batch size to ``on_generate``, and a failed call's error to ``on_failure`` (which may raise
    another); everything else is the pruned model's."""

    def __init__(self, pruned: nn.Module, on_generate: Callable[[dict[str, Any], int], None],
                 on_failure: Callable[[Exception], None] | None = None):
        super().__init__()
        self.pruned = pruned
        self._on_generate = on_generate
        self._on_failure = on_failure

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.pruned, name)

    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        try:
            output = self.pruned.generate(*args, **kwargs)
            # the prompts it ran, whose costs last_stats sums: num_return_sequences > 1 returns more rows than that
            self._on_generate(dict(self.pruned.last_stats), len(self.pruned.last_selection.visual_before))
        except Exception as err:  # a record that cannot be written fails the call as a failed generate does
            if self._on_failure is not None:
                self._on_failure(err)
            raise
        return output
