"""The method options of ``wrap_model``: which method reads which, their defaults, and the variant label.

A run that sets an option away from its default (``positions=renumber``, ``fastv_k=3``, ...) is a variant of its
method: the efficiency records carry the options, and the tables give each variant its own row, so an ablation
can share one results folder with the runs it is compared against. Torch-free, so the tables need no torch.

Below them, the checks every command line shares (counts, output paths, the size variables, DEBUG_ENV), here
for the same reason: the tables' command line uses them too.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from .flops import INSIDE_LLM_METHODS

# Which text rows' layer-0 attention scores the visual tokens for a0 and tcc (METHOD.md leaves it open): every
# valid token after the last visual one (the default: the question and the generation prompt), every non-visual
# token after the first visual one (also text between images or videos), or the last token alone (the row FastV
# ranks by). A compressor is tied to the rule its labels were made with.
INSTRUCTION_ROWS = ("after_last_visual", "after_first_visual", "last")
DEFAULT_INSTRUCTION_ROWS = INSTRUCTION_ROWS[0]
# How the oracle forms each layer's map Abar_l (tcc_eval.oracle). "clamp" is the method (Chefer et al. 2021,
# METHOD.md); the others are diagnostics (`python -m tcc_eval.demo oracle-rules`): "abs" keeps negative evidence,
# "signed" lets it cancel, "attention" drops the gradient (plain head-mean attention rollout, the paper's ablation).
RELEVANCE_RULES = ("clamp", "abs", "signed", "attention")
METHOD_RULE = "clamp"

# wrap_model's defaults (tests/test_aggregate.py checks them against its signature)
OPTION_DEFAULTS: dict[str, Any] = {
    "budget": "global", "positions": "original", "seed": 0, "max_answer_tokens": 16, "contextual_share": 0.15625,
    "fastv_k": 2, "match": "avg_retention", "pdrop_layers": None, "instruction_rows": DEFAULT_INSTRUCTION_ROWS,
}
# the options only one method (or one kind) reads; wrap_model ignores them for the others
OWN_OPTIONS: dict[str, tuple[str, ...]] = {
    "random": ("seed",), "oracle": ("max_answer_tokens",), "visionzip": ("contextual_share",),
    "a0": ("instruction_rows",), "tcc": ("instruction_rows",),
    "fastv": ("fastv_k", "match"), "dart": ("fastv_k", "match"), "pdrop": ("match", "pdrop_layers"),
}
INPUT_STAGE_OPTIONS = ("budget", "positions")  # every method that prunes before the LLM reads these
# the values of the options that take one of a few
BUDGETS = ("global", "per_group")  # one top-k per sample, or one per image / frame group
POSITION_MODES = ("original", "renumber")  # kept tokens keep their ids, or take consecutive ones
MATCH_MODES = ("avg_retention", "kept")  # what FastV's, DART's and PyramidDrop's ratio means


def options_read_by(method: str) -> tuple[str, ...]:
    """The options ``method`` reads (none for ``none``: it keeps every token)."""
    if method == "none":
        return ()
    shared = () if method in INSIDE_LLM_METHODS else INPUT_STAGE_OPTIONS
    return (*shared, *OWN_OPTIONS.get(method, ()))


def _canonical(value: Any) -> str:
    """One text per value, whether it came as a number, a list or lmms-eval's model_args text."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "/".join(_canonical(v) for v in value)
    text = str(value).strip()
    try:
        return f"{float(text):g}"
    except ValueError:
        return text


def method_variant(method: str, options: Mapping[str, Any] | None) -> str:
    """``name=value`` for every option ``method`` reads whose value is not the default, sorted and joined by
    spaces; '' for the method as published."""
    options = options or {}
    parts = []
    for name in sorted(options_read_by(method)):
        value = _canonical(options.get(name))
        if value and value != _canonical(OPTION_DEFAULTS[name]):
            parts.append(f"{name}={value}")
    return " ".join(parts)


def variant_options(variant: str) -> dict[str, str]:
    """The options a variant label names (``method_variant``'s inverse): what ran, for a run without records."""
    return dict(part.split("=", 1) for part in variant.split())


def check_option_values(options: Mapping[str, Any]) -> None:
    """The checks of method options that need no model (ranges that depend on the LLM's depth come when the
    method is built), so that a framework refuses a typo before loading weights. Values may be framework text."""
    def fail(name: str, expected: str) -> None:
        raise ValueError(f"{name}={options[name]!r}: expected {expected}")

    unknown = sorted(set(options) - set(OPTION_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown method option {', '.join(map(repr, unknown))}; the options are "
                         f"{', '.join(sorted(OPTION_DEFAULTS))}")

    def number(name: str, kind: type) -> float:
        try:
            return kind(str(options[name]))
        except ValueError:
            fail(name, f"a{'n integer' if kind is int else ' number'}")

    choices = {"budget": BUDGETS, "positions": POSITION_MODES, "match": MATCH_MODES,
               "instruction_rows": INSTRUCTION_ROWS}
    for name, allowed in choices.items():
        if name in options and str(options[name]) not in allowed:
            fail(name, " or ".join(allowed))
    if "seed" in options:
        number("seed", int)
    for name in ("fastv_k", "max_answer_tokens"):
        if name in options and number(name, int) < 1:
            fail(name, "a positive integer")
    if "contextual_share" in options and not 0 <= number("contextual_share", float) < 1:
        fail("contextual_share", "a fraction in [0, 1) of the kept tokens (VisionZip: 0.15625)")
    if options.get("pdrop_layers") is not None:
        parts = str(options["pdrop_layers"]).replace(",", "/").strip("[]() ").split("/")
        layers = [int(p) for p in parts if p.strip().isdigit()]
        if len(layers) != len(parts) or min(layers, default=0) < 1 or layers != sorted(set(layers)):
            fail("pdrop_layers", "increasing layer indices from 1, joined by '/' (or a list), e.g. 2/14/21")


def check_instruction_rows(rows: str) -> str:
    """``rows`` if it names an instruction-rows rule, else the error that lists them."""
    if rows not in INSTRUCTION_ROWS:
        raise ValueError(f"instruction_rows={rows!r}: expected one of {', '.join(INSTRUCTION_ROWS)} (which text rows' "
                         f"layer-0 attention scores the visual tokens; default {DEFAULT_INSTRUCTION_ROWS})")
    return rows


DEBUG_ENV = "TCC_EVAL_DEBUG"  # set, the command lines show the traceback behind their one-line errors


def positive_int(text: str) -> int:
    """argparse type of the command lines' counts (samples, epochs, frames, threads, a layer K): a whole number >= 1.
    Here, torch-free, so that the tables' command line shares it, as every command line shares DEBUG_ENV."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def seed_int(text: str) -> int:
    """argparse type of the command lines' seeds: a whole number >= 0, what numpy's generators take (theirs says
    "expected non-negative integer" and names neither the option nor the fix)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a seed: give a whole number 0 or more")
    return value


def positive_int_env(name: str, default: int) -> int:
    """A count set by environment variable ``name`` (the synthetic sets' sizes), ``default`` when unset or empty."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}={text!r} must be a positive whole number")
    return value


def output_file(example: str) -> Callable[[str], str]:
    """argparse type of a file the command writes: a folder there is refused before any work (not after it, when
    the write would fail), the message naming ``example`` inside it."""

    def check(text: str) -> str:
        if Path(text).is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a folder; give a file path, e.g. {Path(text) / example}")
        return text

    return check


def add_json_output(parser: argparse.ArgumentParser, example: str, help: str = "write the results here") -> None:
    """``--json`` and ``--overwrite``: a command's results file, which an earlier run's results there never lose to
    a rerun unless it asks (:func:`check_json_output`, called before the run)."""
    parser.add_argument("--json", default=None, type=output_file(example), help=help)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")


def check_json_output(args: argparse.Namespace) -> None:
    """Refuse a ``--json`` file that exists (an earlier run's results) unless ``--overwrite``: before the run, so a
    refusal costs nothing."""
    if args.json and Path(args.json).exists() and not args.overwrite:
        raise ValueError(f"--json {args.json} exists (an earlier run's results): give another path, or pass "
                         "--overwrite to replace it")


def output_folder(holds: str) -> Callable[[str], Path]:
    """argparse type of a folder the command writes ``holds`` into: a file there is refused before any work."""

    def check(text: str) -> Path:
        if Path(text).exists() and not Path(text).is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a file; give a folder for {holds}")
        return Path(text)

    return check
