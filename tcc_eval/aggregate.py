"""Turn VLMEvalKit / lmms-eval outputs and our efficiency records into paper-style tables.

    python -m tcc_eval.aggregate RESULTS_DIR [--out DIR] [--shape BASE=KEY ...] [--fastv-k 2]

RESULTS_DIR is searched recursively for
- VLMEvalKit score files ``<MODEL>_<DATASET>_acc.csv`` (MCQ, fractions), ``_score.csv`` (MME and
  yes/no sets, points / percent; HallusionBench's aAcc / fAcc / qAcc; MM-Vet's
  ``<MODEL>_MMVet_<judge>_score.csv``), ``_acc.json``
  (EVAL_FORMAT=json) and ``_rating.json`` (MVBench, Video-MME); MODEL is a registry name
  ``<Base>_<Method><ratio>`` or ``<Base>_Vanilla``;
- lmms-eval ``*_results.json`` (runs keyed by ``config.model_args``);
- per-sample ``*_efficiency.jsonl`` written by our model wrappers.
It writes ``summary.csv``, ``efficiency.csv``, ``table_<framework>.md``, ``tables.xlsx`` and
``preservation_<framework>_<base>.png`` into RESULTS_DIR/tables (or --out), a row per base model, method,
variant (non-default method options, ``tcc_eval.options``) and keep ratio. Raw files are only read;
an unreadable file is reported on one line and skipped. VLMEvalKit's status.json is read only for its
dataset and judge names (its "primary_metric" is a heuristic, not the paper's metric).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

if __package__ in (None, ""):  # run as a file: import the package copy so both forms share one module
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tcc_eval.aggregate import main as _main

    sys.exit(_main())

import pandas as pd

from tcc_eval.flops import (INSIDE_LLM_METHODS, LAYER_K_METHODS, LLM_SHAPES, LLMShape, fastv_average_retention,
                            fastv_layer_keep_ratio, flops_ratio, guess_shape, pyramid_average_retention,
                            pyramid_stage_ratio, shape_from_config)
from tcc_eval.options import OPTION_DEFAULTS, method_variant, output_folder, positive_int, variant_options

log = logging.getLogger("tcc_eval.aggregate")

FRAMEWORKS = ("vlmeval", "lmms_eval")
# model_registry.METHOD_TOKENS, restated so that reading results needs no torch (a test keeps them equal)
METHOD_TOKENS = {"TCC": "tcc", "Random": "random", "A0": "a0", "FastV": "fastv", "Oracle": "oracle",
                 "DivPrune": "divprune", "Uniform": "uniform", "Pool": "pool", "VisionZip": "visionzip",
                 "DART": "dart", "PDrop": "pdrop"}
METHOD_ORDER = ("none", "tcc", "oracle", "a0", "random", "uniform", "pool", "divprune", "visionzip", "fastv", "dart",
                "pdrop")
MODEL_NAME_RE = re.compile(
    rf"^(?P<base>.+?)_(?:(?P<vanilla>Vanilla)|(?P<method>{'|'.join(METHOD_TOKENS)})(?P<ratio>\d{{1,3}}))$"
)
VLMEVAL_SUFFIXES = ("_rating.json", "_score.csv", "_acc.csv", "_acc.json")
LMMS_SUFFIX = "_results.json"
# What lmms-eval writes in place of every metric under --predict_only (and for tasks scored only by an outside
# server): its aggregation returns the placeholder 999, which read as a score would top every table
LMMS_NO_SCORE_METRIC = "bypass"
# lmms-eval metrics whose aggregation (mvbench_aggregate_results) divides by the non-empty answers only
EMPTY_ANSWER_METRICS = ("mvbench_accuracy",)
EFFICIENCY_SUFFIX = "_efficiency.jsonl"
MMBENCH_VIDEO = ("MMBench_Video", "MMBench-Video")  # VLMEvalKit's dataset names start so; a 0-3 rating
# The fine dimensions behind MMBench-Video's two coarse scores (VLMEvalKit's MMV_DIMENSIONS): a question counts
# towards a coarse score when one of its dimensions is among them.
MMBENCH_VIDEO_COARSE = {
    "Perception": frozenset({
        "Video Topic", "Video Emotion", "Video Scene", "Video Style", "OCR", "Object Recognition",
        "Attribute Recognition", "Event Recognition", "Human Motion", "Counting", "Spatial Relationship",
        "Human-object Interaction", "Human Interaction", "Hallucination"}),
    "Reasoning": frozenset({
        "Structuralized Image-Text Understanding", "Mathematical Calculation", "Physical Property",
        "Function Reasoning", "Identity Reasoning", "Natural Relation", "Physical Relation", "Social Relation",
        "Common Sense Reasoning", "Counterfactual Reasoning", "Causal Reasoning", "Future Prediction"}),
}
# lmms-eval metrics preferred as a task's headline number, before "first numeric metric".
# MMStar's "average" and SEED-Bench's "seed_image" (VLMEvalKit's SEEDBench_IMG) come after per-category metrics
# in their files, whose order follows the first sample's category. POPE's headline is its F1 (VLMEvalKit's POPE
# "Overall"), listed after pope_accuracy; ActivityNet-QA's is its judged accuracy (percent), listed after its 0-5
# gpt_eval_score rating.
LMMS_PREFERRED_METRICS = ("exact_match", "accuracy", "acc", "mvbench_accuracy", "videomme_perception_score",
                          "pope_f1_score", "gpt_eval_accuracy", "gpt_eval_score", "seed_image", "average")
# Preferred row of a multi-split acc.csv.
# MMMU_DEV_VAL has both a dev and a validation row: dev is MMMU's 150 few-shot examples, validation the 900
# questions papers report.
SPLIT_PREFERENCE = ("overall", "all", "none", "test", "validation", "val", "dev")
BYTES_PER_MB = 1e6
# VLMEvalKit's judge names (run.py's defaults, judge_util's model_map): some score files carry them after the dataset
JUDGE_SUFFIX_RE = re.compile(r"_(?:gpt-[\w.-]+|chatgpt-[\w-]+|qwen-\w+|deepseek|llama31-8b|exact_matching)$")
# VLMEvalKit's match log for an answer no rule parsed and no judge saw (its exact-matching fallback); plain
# multiple-choice sets write it inside "Match Log: ..."
JUDGE_FALLBACK_LOG = "Failed in Prefetch, no GPT-based answer matching"
# judges whose multiple-choice result files VLMEvalKit names otherwise (<MODEL>_<DATASET>_<name>_result.xlsx)
JUDGE_FILE_NAMES = {"chatgpt-0125": "openai", "gpt-4-0125": "gpt4"}
RUN_KEY = ["framework", "base_model", "method", "variant", "keep_ratio"]  # one table row each


class ResultFileError(ValueError):
    """A results file exists but does not have the layout its writer produces."""


# --------------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------------
def parse_model_name(name: str) -> tuple[str, str, float]:
    """``Qwen2VL_TCC50`` -> ("Qwen2VL", "tcc", 0.5); ``TinyQwen2VL_A050`` -> (.., "a0", 0.5);
    ``X_Vanilla`` -> ("X", "none", 1.0). Raises ValueError for names outside the registry scheme."""
    found = MODEL_NAME_RE.match(name)
    if not found:
        raise ValueError(f"unknown model name {name!r}: expected <Base>_Vanilla or <Base>_<Method><ratio> "
                         f"with Method in {sorted(METHOD_TOKENS)}")
    if found["vanilla"]:
        return found["base"], "none", 1.0
    ratio = int(found["ratio"])
    if not 0 < ratio <= 100:
        raise ValueError(f"model name {name!r}: keep ratio {ratio}% is outside 1..100")
    return found["base"], METHOD_TOKENS[found["method"]], ratio / 100


def normalize_method(method: Any) -> str:
    """Lower-case method; "", "vanilla" and "none" all mean the unpruned model."""
    text = str(method or "").strip().lower()
    return "none" if text in ("", "none", "vanilla", "null") else text


def normalize_ratio(value: Any) -> float:
    """Keep ratio as a fraction; percentages (e.g. 50) are divided by 100."""
    ratio = float(value)
    if not 0 < ratio <= 100:
        raise ValueError(f"keep ratio {value!r} is not in (0, 1] nor a percentage")
    return ratio / 100 if ratio > 1 else ratio


# Our lmms-eval models -> the upstream model each wraps, whose vanilla run pairs with ours (the README's
# comparisons); tests check it against the wrapper classes
LMMS_BASELINES = {"qwen2_vl_tcc": "qwen2_vl", "qwen2_5_vl_tcc": "qwen2_5_vl", "llava_onevision_tcc": "llava_hf",
                  "vila_tcc": "vila"}
# The checkpoint each model loads when its model_args give no pretrained= (upstream's constructor defaults; vila_tcc
# has its own), so a run's scores pair with its efficiency records, which name the checkpoint loaded; tests check
# them against the constructors
LMMS_DEFAULT_CHECKPOINTS = {"qwen2_vl": "Qwen/Qwen2-VL-7B-Instruct", "qwen2_5_vl": "Qwen/Qwen2.5-VL-3B-Instruct",
                            "llava_hf": "llava-hf/llava-1.5-7b-hf", "vila": "Efficient-Large-Model/VILA1.5-40b",
                            "vila_tcc": "Efficient-Large-Model/Llama-3-VILA1.5-8b"}


def lmms_checkpoint(model: str | None, pretrained: str | None) -> str:
    """The checkpoint an lmms-eval run loaded, as its model_args (or the model's default) name it."""
    model_id = (model or "").strip()
    if not pretrained:
        pretrained = LMMS_DEFAULT_CHECKPOINTS.get(model_id, LMMS_DEFAULT_CHECKPOINTS.get(
            LMMS_BASELINES.get(model_id, model_id)))
    return str(pretrained or "").rstrip("/")


def lmms_base_model(model: str | None, pretrained: str | None) -> str:
    """Readable base-model name for an lmms-eval run: the upstream model id (ours named by the one it wraps, so
    an upstream vanilla run pairs with ours) / basename of the checkpoint (the model's default when none is
    given). Idempotent, so efficiency records may carry either the checkpoint path or this name. Two checkpoints
    of one basename get longer names from :func:`distinguish_checkpoints`."""
    model_id = (model or "").strip()
    family = LMMS_BASELINES.get(model_id, model_id)
    family = "" if "/" in family else family  # lmms-eval stores a checkpoint path when given a model object
    name = Path(lmms_checkpoint(model_id, pretrained)).name
    if family and name:
        return f"{family}/{name}"
    return family or name or "unknown"


def distinguish_checkpoints(scores: list[Score], records: pd.DataFrame) -> None:
    """Give lmms-eval runs of different checkpoints that share a folder name (runA/checkpoint-1000 and
    runB/checkpoint-1000) as many of their paths' last folders as tell them apart, in place: under one name,
    one's compressed runs would be paired with the other's vanilla. A hub id and a local copy of it (Qwen/X,
    /data/X) are told apart too, as nothing here can tell that they hold the same weights: their rows then have
    no vanilla pair, and the warning says to run both with one path."""
    def folders(checkpoint: str) -> tuple[str, ...]:
        return tuple(part for part in Path(checkpoint).parts if part not in (Path(checkpoint).anchor, "."))

    lmms = records["framework"] == "lmms_eval"
    seen: dict[str, set[tuple[str, ...]]] = {}
    for name, checkpoint in {*((s.base_model, s.checkpoint) for s in scores if s.framework == "lmms_eval"),
                             *zip(records.loc[lmms, "base_model"], records.loc[lmms, "checkpoint"])}:
        seen.setdefault(name, set()).add(folders(checkpoint))
    renamed: dict[tuple[str, tuple[str, ...]], str] = {}
    for name, paths in seen.items():
        if len(paths) < 2:
            continue
        depth = 1
        while len({path[-depth:] for path in paths}) < len(paths):
            depth += 1
        prefix = name[:len(name) - len(next(iter(paths))[-1])]  # "qwen2_vl/" of "qwen2_vl/checkpoint-1000"
        for path in paths:
            renamed[name, path] = prefix + "/".join(path[-depth:])
        log.warning("lmms-eval runs of %d checkpoints share the name %s: told apart as %s. If two of them hold the "
                    "same weights (a hub id and its local copy), run both with one pretrained= path so they pair",
                    len(paths), name, ", ".join(sorted(renamed[name, path] for path in paths)))
    if not renamed:
        return
    for score in scores:
        if score.framework == "lmms_eval":
            score.base_model = renamed.get((score.base_model, folders(score.checkpoint)), score.base_model)
    records.loc[lmms, "base_model"] = [renamed.get((name, folders(checkpoint)), name) for name, checkpoint
                                       in zip(records.loc[lmms, "base_model"], records.loc[lmms, "checkpoint"])]


def parse_model_args(model_args: Any) -> dict[str, str]:
    """``"pretrained=/p,method=tcc,ratio=0.5"`` (or an already parsed dict) -> dict of strings."""
    if isinstance(model_args, dict):
        return {str(k): str(v) for k, v in model_args.items()}
    args: dict[str, str] = {}
    last = None
    for piece in str(model_args or "").split(","):
        key, sep, value = piece.partition("=")
        if sep:
            last = key.strip()
            args[last] = value.strip()
        elif last is not None and piece:  # a value that itself contained a comma
            args[last] += "," + piece
    return args


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


# --------------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------------
@dataclass
class Score:
    """One number from one results file, before scale normalisation and pairing."""

    framework: str
    model: str  # run identity: registry name (vlmeval) or model_args (lmms-eval)
    base_model: str
    method: str
    keep_ratio: float
    benchmark: str
    metric: str
    value: float
    scale: str  # "fraction" (x100), "percent", "points" (kept) or "auto" (decided per metric)
    primary: bool
    source: str
    mtime: float = 0.0
    started: float = 0.0  # run_started: which run is newest
    note: str = ""
    variant: str = ""  # the run's non-default method options (tcc_eval.options.method_variant)
    judge: str = ""  # VLMEvalKit's judge of the score ("" when the files do not say)
    subset: str = ""  # the part of the benchmark scored ("--limit 8", lmms-eval's options); "" for all of it
    setup: str = ""  # lmms-eval model_args beyond the checkpoint, the method and the device ("max_pixels=...")
    questions: int = 0  # rows of the VLMEvalKit predictions file scored (0: not known)
    checkpoint: str = ""  # the checkpoint an lmms-eval run loaded (lmms_checkpoint)


def _walk(root: Path, skip: Path | None) -> Iterator[Path]:
    """Every regular file under root (sorted, symlinked folders not followed), except our output dir."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if skip is None or Path(folder, d) != skip)
        for name in sorted(files):
            path = Path(folder, name)
            if path.is_file():
                yield path
            elif path.is_symlink() and _is_results_file(path):
                log.warning("skipped %s: it links to %s, which does not exist (an unmounted disk?)", path,
                            os.readlink(path))


# The start time a framework names its run by: VLMEvalKit's run folder (T20251128-101010; before, T20251128_G<commit>,
# the day alone) and lmms-eval's results file (20251128_101010_results.json)
VLMEVAL_RUN_FOLDER = re.compile(r"T(\d{8})(?:-(\d{6}))?(?:_G[0-9a-fA-F]+)?")
LMMS_RESULTS_NAME = re.compile(r"(\d{8})_(\d{6})_results\.json")
LMMS_DEFAULT_TIMEZONE = "Asia/Singapore"  # lmms-eval's --timezone default (utils.get_datetime_str)


def _vlmeval_dataset_updated(folder: Path, dataset: str) -> float | None:
    """When VLMEvalKit last ran ``dataset`` in ``folder``, from the status.json it keeps there: 0.0.20 writes a
    local run straight into ``<work_dir>/<MODEL>/``, with no run folder to name it."""
    try:
        entry = json.loads((folder / "status.json").read_text(encoding="utf-8"))["datasets"][dataset]
        return datetime.fromisoformat(entry["updated_at"]).timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_started(path: Path, root: Path, lmms_timezone: str | None = None, vlmeval_dataset: str | None = None) -> float:
    """When the run that wrote ``path`` started, as its framework named it; the file's mtime where no name says.
    Names outlive a copy that resets mtimes (scp -r, cp -r, a git clone), which would otherwise pick the newest run
    by copy order. VLMEvalKit names its runs in this machine's time zone, lmms-eval in its ``--timezone``
    (``lmms_timezone``, from the results file; lmms-eval's default where it is not given), so runs named under
    different ``--timezone`` values keep their order; the day alone counts as its start. A VLMEvalKit file outside
    a run folder takes the time its status.json gives ``vlmeval_dataset`` (the dataset's last update, which a copy
    keeps too)."""
    match = LMMS_RESULTS_NAME.fullmatch(path.name)
    zone = None
    if match is not None:
        try:
            zone = ZoneInfo(lmms_timezone or LMMS_DEFAULT_TIMEZONE)
        except (ZoneInfoNotFoundError, ValueError):  # a name this machine's time zone data lacks
            log.warning("%s: time zone %r unknown here: its name's time is read as this machine's", path,
                        lmms_timezone)
    else:
        folders = path.parent.relative_to(root).parts if path.parent.is_relative_to(root) else ()
        match = next(filter(None, map(VLMEVAL_RUN_FOLDER.fullmatch, reversed(folders))), None)
    if match is None:
        updated = _vlmeval_dataset_updated(path.parent, vlmeval_dataset) if vlmeval_dataset else None
        return path.stat().st_mtime if updated is None else updated
    try:
        return datetime.strptime(match[1] + (match[2] or "000000"), "%Y%m%d%H%M%S").replace(tzinfo=zone).timestamp()
    except ValueError:  # digits that are no date
        return path.stat().st_mtime


def _warn_skip(path: Path, reason: Any) -> None:
    log.warning("skipped %s: %s", path, str(reason).splitlines()[0] if str(reason) else type(reason).__name__)


def _num(value: Any) -> float:
    number = float(value)
    if math.isnan(number):
        raise ResultFileError("value is NaN")
    return number


def _is_number(value: Any) -> bool:
    """A rating's entry can be read as a number: a partial run's empty part is NaN or absent."""
    try:
        _num(value)
    except (TypeError, ValueError):
        return False
    return True


# --------------------------------------------------------------------------------------------------
# VLMEvalKit
# --------------------------------------------------------------------------------------------------
def _vlmeval_model_dataset(path: Path, root: Path, suffix: str) -> tuple[str, str] | None:
    """Split ``<MODEL>_<DATASET><suffix>``: MODEL is the nearest folder above the file whose name
    prefixes the file name (works for ``<MODEL>/T<date>_G<commit>/`` too), else a registry name."""
    stem = path.name[: -len(suffix)]
    folders = [p.name for p in path.relative_to(root).parents if p.name] + [root.name]
    for folder in folders:
        if stem.startswith(folder + "_") and len(stem) > len(folder) + 1:
            return folder, stem[len(folder) + 1:]
    parts = stem.split("_")
    for cut in range(len(parts) - 1, 0, -1):
        model = "_".join(parts[:cut])
        if MODEL_NAME_RE.match(model):
            return model, "_".join(parts[cut:])
    return None


def _dataset_and_judge(name: str, folder: Path) -> tuple[str, str]:
    """The dataset of a score file whose name may carry the judge after it (MM-Vet writes
    ``<MODEL>_MMVet_<judge>_score.csv``), and the judge that scored it ("" when unknown): the run's status.json
    names its datasets and judges; without one, a trailing VLMEvalKit judge name is split off."""
    status_file, status = folder / "status.json", None
    if status_file.is_file():
        try:
            status = json.loads(status_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            log.warning("%s is unreadable (%s): the judge of %s is read from its file name", status_file,
                        (str(err).splitlines() or [type(err).__name__])[0], name)
    datasets = status.get("datasets") if isinstance(status, dict) else None
    datasets = datasets if isinstance(datasets, dict) else {}
    if name in datasets:
        entry = datasets[name]
        judge = entry.get("judge_model") if isinstance(entry, dict) else None
        return name, judge if isinstance(judge, str) else ""
    for dataset, entry in datasets.items():
        judge = entry.get("judge_model") if isinstance(entry, dict) else None
        if judge and name == f"{dataset}_{judge}":
            return dataset, judge
    match = JUDGE_SUFFIX_RE.search(name)
    return (name[: match.start()], match.group()[1:]) if match else (name, "")


def _pick_row(frame: pd.DataFrame) -> tuple[pd.Series, str]:
    """The row of a per-split score table to report, and a note when a choice was made."""
    if len(frame) == 1 or "split" not in frame.columns:
        return frame.iloc[0], "" if len(frame) == 1 else f"first of {len(frame)} rows"
    splits = [str(s).lower() for s in frame["split"]]
    for wanted in SPLIT_PREFERENCE:
        if wanted in splits:
            index = splits.index(wanted)
            return frame.iloc[index], f"split {frame['split'].iloc[index]} of {len(frame)}"
    return frame.iloc[0], f"split {frame['split'].iloc[0]} of {len(frame)}"


def _scores_from_table(frame: pd.DataFrame) -> list[tuple[str, float, str, bool, str]]:
    """(metric, value, scale, primary, note) from an acc/score table."""
    columns = {str(c).lower(): c for c in frame.columns}
    if frame.empty:
        raise ResultFileError("table has no rows")
    if "perception" in columns and "reasoning" in columns:  # MME: points, perception /2000, reasoning /800
        row = frame.iloc[0]
        perception, reasoning = _num(row[columns["perception"]]), _num(row[columns["reasoning"]])
        return [("total", perception + reasoning, "points", True, ""),
                ("perception", perception, "points", False, ""),
                ("reasoning", reasoning, "points", False, "")]
    if "category" in columns and "acc" in columns:  # MM-Vet: a row per capability, acc in percent
        overall = frame[frame[columns["category"]].astype(str).str.lower() == "overall"]
        if overall.empty:
            raise ResultFileError("per-category score table has no Overall row")
        return [("Overall", _num(overall[columns["acc"]].iloc[0]), "percent", True, "")]
    if {"aacc", "facc", "qacc"} <= set(columns):  # HallusionBench: question, figure and pair accuracy, in percent
        row, note = _pick_row(frame)
        parts = [(name, _num(row[columns[name.lower()]])) for name in ("aAcc", "fAcc", "qAcc")]
        # its headline (OpenVLM leaderboard) is the mean of the three
        return [("Overall", sum(value for _, value in parts) / 3, "percent", True, note),
                *((name, value, "percent", False, note) for name, value in parts)]
    if "overall" not in columns:
        raise ResultFileError(f"no Overall column (columns: {', '.join(map(str, frame.columns[:8]))})")
    row, note = _pick_row(frame)
    return [("Overall", _num(row[columns["overall"]]), "auto", True, note)]


def _vlmeval_table(folder: Path, stem: str) -> pd.DataFrame | None:
    """The table VLMEvalKit writes as ``<stem>.xlsx`` (or .tsv / .json under PRED_FORMAT) in ``folder``; None when
    there is none, a ResultFileError naming it when it is unreadable."""
    for suffix, read in ((".xlsx", pd.read_excel), (".tsv", lambda f: pd.read_csv(f, sep="\t")),
                         (".json", lambda f: pd.DataFrame(json.loads(Path(f).read_text(encoding="utf-8"))))):
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            try:
                return read(path)
            except Exception as err:  # noqa: BLE001 - any unreadable file: named, never fatal
                reason = (str(err).splitlines() or [type(err).__name__])[0]
                raise ResultFileError(f"{path.name} is unreadable ({reason})") from None
    return None


def _vlmeval_questions(folder: Path, model: str, dataset: str) -> int:
    """Rows of the predictions file a VLMEvalKit score came from (``<MODEL>_<DATASET>.xlsx``), 0 where there is
    none or it is unreadable: a ``--limit`` run scores fewer, and nothing else it writes says so."""
    workbook = folder / f"{model}_{dataset}.xlsx"
    try:
        if workbook.is_file():  # the sheet's dimension: reading a 4,000-row sheet whole takes a second
            import openpyxl

            book = openpyxl.load_workbook(workbook, read_only=True)
            rows = book.active.max_row
            book.close()
            if rows:
                return rows - 1
        frame = _vlmeval_table(folder, f"{model}_{dataset}")
        return 0 if frame is None else len(frame)
    except Exception as err:  # noqa: BLE001 - the score stands; only the count is lost
        log.warning("%s: could not count the predictions of %s on %s: %s", folder, model, dataset, err)
        return 0


def _per_sample_scores(rating: Path) -> pd.DataFrame | None:
    """The per-sample file VLMEvalKit writes beside a rating (``<MODEL>_<DATASET>_score.xlsx``), its ``score``
    column numeric; None when there is none."""
    stem = f"{rating.name[: -len('_rating.json')]}_score"
    frame = _vlmeval_table(rating.parent, stem)
    if frame is None:
        return None
    if "score" not in frame.columns:
        raise ResultFileError(f"{stem} has no score column")
    return frame.assign(score=pd.to_numeric(frame["score"], errors="coerce"))


def _readable_per_sample_scores(rating: Path, kept: str) -> pd.DataFrame | None:
    """The per-sample scores beside a rating, or None with a warning saying what the rating keeps instead when that
    file is unreadable: the rating still holds."""
    try:
        return _per_sample_scores(rating)
    except ResultFileError as err:
        log.warning("%s: kept %s: %s", rating, kept, err)
        return None


RATING_OWN_COUNT = "the rating's own count"  # an MVBench score not recounted from its per-sample file


def _scores_from_rating(data: Any, path: Path) -> list[tuple[str, float, str, bool, str]]:
    """MVBench ``{task: [correct, total, "xx.xx%"], "overall": [...]}`` or Video-MME
    ``{"short"|"medium"|"long"|"overall": {"overall": "0.xxx", ...}}``.

    MVBench's rating (VLMEvalKit's ``get_dimension_rating``) counts a question right when its score is truthy,
    so a failed answer (score -1) and an empty one (never scored: NaN) count as right. Video-MME's rounds to three
    decimals (0.1 point) and leaves out answers scored -1. Where the per-sample scores sit beside a rating, the
    scores are recounted from them over every question with only a score of 1 right, and a changed count noted."""
    if isinstance(data, dict) and isinstance(data.get("coarse_all"), dict) and "Overall" in data["coarse_all"]:
        return _mmbench_video_scores(data["coarse_all"], path)
    if not isinstance(data, dict) or "overall" not in data:
        raise ResultFileError("rating json has no 'overall' entry")
    overall = data["overall"]
    if isinstance(overall, list) and len(overall) >= 2:
        correct, total = _num(overall[0]), _num(overall[1])
        if total <= 0:
            raise ResultFileError("overall total is 0")
        note = f"{int(correct)}/{int(total)}"
        try:
            samples = _per_sample_scores(path)
        except ResultFileError as err:  # the rating still holds: its own count, said to be that
            log.warning("%s: kept the rating's own count, which counts failed and empty answers as right: %s",
                        path, err)
            samples, note = None, f"{note}, {RATING_OWN_COUNT} ({err})"
        scores = None if samples is None else samples["score"]
        if scores is not None and len(scores) != int(total):  # another run's file, or a partial one: not this rating's
            log.warning("%s: kept the rating's own count: its per-sample file has %d rows for %d questions",
                        path, len(scores), int(total))
            note = f"{note}, {RATING_OWN_COUNT} (the per-sample file has {len(scores)} rows)"
        elif scores is not None:
            recounted = float((scores == 1).sum())
            if recounted != correct:
                unscored = int((scores.isna() | (scores < 0)).sum())
                note = (f"{int(recounted)}/{int(total)}, recounted from the per-sample scores: the rating counted "
                        f"{unscored} failed or empty answers as right ({int(correct)}/{int(total)})")
                correct = recounted
        return [("overall", 100.0 * correct / total, "percent", True, note)]
    if isinstance(overall, dict) and "overall" in overall:
        return _video_mme_scores(data, path)
    if isinstance(overall, (int, float)) and not isinstance(overall, bool):
        return [("overall", _num(overall), "auto", True, "")]
    raise ResultFileError("unrecognised rating layout")


def _mmbench_video_scores(coarse_all: dict, path: Path) -> list[tuple[str, float, str, bool, str]]:
    """MMBench-Video's judge rating on its 0-3 scale (VLMEvalKit's ``coarse_all``, failed judgements as 0): Overall,
    Perception and Reasoning, unrounded from the per-sample scores where they sit beside the rating."""
    note = "0-3 rating"
    rated_parts = [(part, _num(coarse_all[part]), "points", False, note)
                   for part in MMBENCH_VIDEO_COARSE if _is_number(coarse_all.get(part))]  # a partial run: NaN
    samples = _readable_per_sample_scores(path, "the rating's 2-decimal scores")
    if samples is None or samples.empty:
        return [("Overall", _num(coarse_all["Overall"]), "points", True, note), *rated_parts]
    ratings = samples["score"].fillna(-1).clip(lower=0)
    overall = ("Overall", float(ratings.mean()), "points", True, note)
    try:
        dimensions = samples["dimensions"].map(_mmbench_video_dimensions)
    except (KeyError, ResultFileError) as err:
        log.warning("%s: kept the rating's 2-decimal Perception and Reasoning: %s", path, err)
        return [overall, *rated_parts]
    counted_parts = [(part, float(ratings[in_part].mean()), "points", False, note)
                     for part, members in MMBENCH_VIDEO_COARSE.items()
                     if (in_part := dimensions.map(lambda dims, members=members: not members.isdisjoint(dims))).any()]
    return [overall, *counted_parts]


def _mmbench_video_dimensions(cell: Any) -> set[str]:
    """A score file's ``dimensions`` cell, the repr of a list of fine dimension names."""
    try:
        names = ast.literal_eval(cell) if isinstance(cell, str) else cell
    except (ValueError, SyntaxError):
        names = None
    if not isinstance(names, (list, tuple)):
        raise ResultFileError(f"dimensions cell {cell!r} is not a list of dimension names")
    return set(names)


def _video_mme_scores(data: dict, path: Path) -> list[tuple[str, float, str, bool, str]]:
    """Video-MME's overall and per-duration accuracy: recounted from the per-sample scores where they sit beside the
    rating (its 3-decimal fractions leave out answers scored -1), else the rating's own."""
    samples = _readable_per_sample_scores(path, "the rating's 3-decimal accuracies")
    if samples is not None and (samples.empty or "duration" not in samples.columns):
        samples = None
    out = []
    for part_name in ("overall", "short", "medium", "long"):
        part = data["overall"] if part_name == "overall" else data.get(part_name)
        if not isinstance(part, dict):
            continue
        if samples is None:
            try:
                out.append((part_name, _num(part.get("overall")), "fraction", part_name == "overall", ""))
            except (TypeError, ValueError):
                if part_name == "overall":
                    raise ResultFileError(f"overall accuracy {part.get('overall')!r} is not a number") from None
                # else a duration with no questions in a partial run
            continue
        scores = samples["score"] if part_name == "overall" else samples.loc[samples["duration"] == part_name, "score"]
        if scores.empty:
            continue
        recounted, note = float((scores == 1).mean()), ""
        left_out = int((scores.isna() | (scores < 0)).sum())
        if left_out:
            note = (f"{int((scores == 1).sum())}/{len(scores)}, recounted from the per-sample scores: the rating's "
                    f"{part.get('overall')} left out {left_out} failed or empty answers")
        out.append((part_name, recounted, "fraction", part_name == "overall", note))
    return out


def _read_vlmeval_file(path: Path, suffix: str) -> list[tuple[str, float, str, bool, str]]:
    if suffix.endswith(".csv"):
        return _scores_from_table(pd.read_csv(path))
    data = json.loads(path.read_text(encoding="utf-8"))
    if suffix == "_acc.json":
        if not isinstance(data, list):
            raise ResultFileError("acc json is not a list of records")
        return _scores_from_table(pd.DataFrame(data))
    return _scores_from_rating(data, path)


def read_vlmeval(root: Path, skip: Path | None = None) -> list[Score]:
    """Scores from every VLMEvalKit score file under root (all runs; the newest wins later)."""
    scores: list[Score] = []
    unknown: set[str] = set()
    for path in _walk(root, skip):
        suffix = next((s for s in VLMEVAL_SUFFIXES if path.name.endswith(s)), None)
        if suffix is None:
            continue
        split = _vlmeval_model_dataset(path, root, suffix)
        if split is None:
            log.debug("not a VLMEvalKit score file: %s", path)
            continue
        model, dataset = split
        dataset, judge = _dataset_and_judge(dataset, path.parent)
        try:
            base, method, ratio = parse_model_name(model)
        except ValueError as err:
            if model not in unknown:
                unknown.add(model)
                log.warning("skipped model %s (%s): %s", model, path.parent, err)
            continue
        try:
            rows = _read_vlmeval_file(path, suffix)
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped, never fatal
            _warn_skip(path, err)
            continue
        mtime, started = path.stat().st_mtime, run_started(path, root, vlmeval_dataset=dataset)
        variant = _vlmeval_run_variant(path, root, model, dataset, method)
        fallback = _judge_fallback_note(path.parent, model, dataset, judge)
        questions = _vlmeval_questions(path.parent, model, dataset)
        for metric, value, scale, primary, note in rows:
            note = "; ".join(filter(None, [note, fallback if primary else ""]))
            scores.append(Score("vlmeval", model, base, method, ratio, dataset, metric, value, scale, primary,
                                str(path), mtime, started, note, variant, judge, questions=questions))
    return scores


def _judge_fallback_note(folder: Path, model: str, dataset: str, judge: str) -> str:
    """VLMEvalKit falls back to exact matching when its API judge is unreachable, with a warning only: the files
    keep the judge's name, and an answer no rule can parse counts wrong (its match log says so). A note counting
    those answers, or "" when there are none or no such file."""
    if not judge or judge == "exact_matching":
        return ""
    try:
        result = _vlmeval_table(folder, f"{model}_{dataset}_{JUDGE_FILE_NAMES.get(judge, judge)}_result")
    except ResultFileError as err:  # the score stands; only the check is lost
        log.warning("%s: could not check for a judge fallback: %s", folder, err)
        return ""
    logs = None if result is None else result.get("log")
    unjudged = 0 if logs is None else int(logs.astype(str).str.contains(JUDGE_FALLBACK_LOG, regex=False).sum())
    return (f"{judge} unreachable: {unjudged} answers no rule parses were not judged and count wrong "
            f"(VLMEvalKit's exact-matching fallback)") if unjudged else ""


def _vlmeval_run_variant(score_file: Path, root: Path, model: str, dataset: str, method: str) -> str:
    """VLMEvalKit's score files do not say which method options ran; the run's efficiency records do. They sit
    in the run's folder (``<MODEL>/T<date>_G<commit>/``) or the model folder above it; the last record is the
    run that wrote the newest score file."""
    name = f"{model}_{dataset}{EFFICIENCY_SUFFIX}"  # integrations.vlmeval.records.records_path
    for folder in [score_file.parent, *score_file.parent.parents]:
        records = folder / name
        if records.is_file():
            for line in reversed(records.read_text(encoding="utf-8", errors="replace").splitlines()):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    return method_variant(method, record.get("method_options"))
            return ""
        if folder == root:
            break
    return ""


# --------------------------------------------------------------------------------------------------
# lmms-eval
# --------------------------------------------------------------------------------------------------
def _metrics_of(entry: dict) -> list[tuple[str, float]]:
    """("metric,filter" key, value) for numeric, non-stderr metrics, in file order."""
    out = []
    for key, value in entry.items():
        if "," not in key or "_stderr" in key.split(",")[0]:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.append((key, float(value)))
    return out


def _lmms_task_scores(entry: dict) -> list[tuple[str, float, str, bool, str]]:
    """(metric, value, scale, primary, note): MME as perception + cognition points, else the first
    preferred metric, else the first numeric one (first filter wins). lmms-eval's "bypass" metric is no score."""
    metrics = [(key, value) for key, value in _metrics_of(entry) if key.split(",")[0] != LMMS_NO_SCORE_METRIC]
    by_name: dict[str, float] = {}
    for key, value in metrics:
        by_name.setdefault(key.split(",")[0], value)
    if "mme_perception_score" in by_name and "mme_cognition_score" in by_name:
        perception, cognition = by_name["mme_perception_score"], by_name["mme_cognition_score"]
        return [("total", perception + cognition, "points", True, ""),
                ("perception", perception, "points", False, ""),
                ("cognition", cognition, "points", False, "")]
    for wanted in LMMS_PREFERRED_METRICS:
        if wanted in by_name:
            return [(wanted, by_name[wanted], "auto", True, "")]
    if metrics:
        key, value = metrics[0]
        return [(key.split(",")[0], value, "auto", True, "")]
    return []


def _lmms_unscored_tasks(data: dict) -> list[str]:
    """Tasks of a run whose only metric is lmms-eval's "bypass" placeholder."""
    return [name for name, entry in data["results"].items() if isinstance(entry, dict)
            and {key.split(",")[0] for key, _ in _metrics_of(entry)} == {LMMS_NO_SCORE_METRIC}]


def _subtasks(name: str, groups: dict[str, list]) -> list[str]:
    """Leaf tasks of a group (recursively), in order."""
    leaves: list[str] = []
    for child in groups.get(name) or []:
        leaves.extend(_subtasks(child, groups) if groups.get(child) else [child])
    return leaves


def _lmms_scores(data: dict) -> list[tuple[str, str, float, str, bool, str]]:
    """(benchmark, metric, value, scale, primary, note) for the top-level tasks and groups of a run;
    a group without its own metric (e.g. mvbench) is the sample-weighted mean of its subtasks."""
    results = data["results"]
    entries = {**results, **(data.get("groups") or {})}
    groups = {k: v for k, v in (data.get("group_subtasks") or {}).items() if isinstance(v, list)}
    sizes = data.get("n-samples") or {}
    covered = {leaf for name, children in groups.items() if children for leaf in _subtasks(name, groups)}
    covered |= {child for children in groups.values() for child in children}
    out = []
    for name, entry in entries.items():
        if name in covered or not isinstance(entry, dict):
            continue
        rows = _lmms_task_scores(entry)
        if not rows and groups.get(name):
            leaves = [(leaf, _lmms_task_scores(results.get(leaf) or {})) for leaf in _subtasks(name, groups)]
            leaves = [(leaf, r[0]) for leaf, r in leaves if r]
            metric_names = {r[0] for _, r in leaves}
            if len(metric_names) == 1:
                weights = [float((sizes.get(leaf) or {}).get("effective") or 1) for leaf, _ in leaves]
                mean = sum(w * r[1] for w, (_, r) in zip(weights, leaves)) / sum(weights)
                rows = [(metric_names.pop(), mean, "auto", True, f"mean of {len(leaves)} subtasks")]
        out.extend((name, *row) for row in rows)
    return out


def _lmms_samples(results_file: Path, task: str) -> list[dict] | None:
    """The ``--log_samples`` log of one task of the run that wrote ``results_file`` (lmms-eval names both after the
    run's date); None when the run logged none."""
    date = results_file.name[: -len(LMMS_SUFFIX)]
    path = results_file.with_name(f"{date}_samples_{task}.jsonl")
    if not path.is_file():
        return None
    samples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
        except ValueError:
            raise ResultFileError(f"{path.name} line {number} is not JSON") from None
        if not isinstance(sample, dict):
            raise ResultFileError(f"{path.name} line {number} is not a sample record")
        samples.append(sample)
    return samples


def _recount_empty_answers(results_file: Path, data: dict) -> tuple[dict, dict[str, int | str | None]]:
    """lmms-eval's MVBench aggregation divides by the questions answered, so an empty answer leaves the
    denominator instead of counting wrong. Where the run logged its samples, each such task is recounted over all
    its questions. Returns the results with those tasks recounted, and per task: the empty answers counted wrong,
    None without a samples log, or why the log could not be read."""
    results = dict(data["results"])
    found: dict[str, int | str | None] = {}
    for task, entry in data["results"].items():
        if not isinstance(entry, dict):
            continue
        key = next((k for k in entry if k.split(",")[0] in EMPTY_ANSWER_METRICS), None)
        if key is None:
            continue
        metric = key.split(",")[0]
        try:
            samples = _lmms_samples(results_file, task)
            if samples is None:
                found[task] = None
                continue
            scored = [s.get(metric) for s in samples]
            if not scored or not all(isinstance(s, dict) and "pred_answer" in s and "score" in s for s in scored):
                raise ResultFileError(f"its {task} samples log has no {metric} pred_answer and score on every line")
            effective = ((data.get("n-samples") or {}).get(task) or {}).get("effective")
            if isinstance(effective, int) and len(scored) != effective:  # a log cut short, or of another run
                raise ResultFileError(f"its {task} samples log holds {len(scored)} of the run's {effective} samples")
            correct = sum(_num(s["score"]) for s in scored)
        except (OSError, ResultFileError, TypeError, ValueError) as err:
            log.warning("%s: kept lmms-eval's own %s score, which leaves empty answers out: %s",
                        results_file, task, err)
            found[task] = str(err)
            continue
        found[task] = sum(1 for s in scored if s["pred_answer"] == "")
        results[task] = {**entry, key: 100.0 * correct / len(scored)}
    return {**data, "results": results}, found


def _empty_answer_note(benchmark: str, groups: dict[str, list], found: dict[str, int | str | None],
                       own_score: float) -> str:
    """What ``_recount_empty_answers`` did to one reported benchmark (a task or a group of tasks)."""
    tasks = [t for t in (_subtasks(benchmark, groups) if groups.get(benchmark) else [benchmark]) if t in found]
    if not tasks:
        return ""
    unread = [t for t in tasks if found[t] is None or isinstance(found[t], str)]
    empty = sum(found[t] for t in tasks if isinstance(found[t], int))
    notes = []
    if unread:
        notes.append(f"lmms-eval's own count on {len(unread)} of {len(tasks)} tasks, which leaves empty answers out "
                     f"of its denominator (run with --log_samples to count them wrong)")
    if empty:
        notes.append(f"{empty} empty answers counted wrong, recounted from the --log_samples files "
                     f"(lmms-eval's own score, which leaves them out: {own_score:.2f})")
    return "; ".join(notes)


def lmms_timezone(config: dict) -> str | None:
    """The ``--timezone`` an lmms-eval run named its files in (its resolved_cli_args), None where not recorded."""
    cli = config.get("resolved_cli_args")
    zone = cli.get("timezone") if isinstance(cli, dict) else None
    return zone if isinstance(zone, str) and zone else None


def lmms_subset(config: dict) -> str:
    """The samples an lmms-eval run scored, as its options name them: "" for every sample (no --limit, or -1,
    which lmms-eval reads as all), else "--limit N" and / or "--offset M"."""
    limit, offset = config.get("limit"), config.get("offset")
    parts = []
    if limit is not None and float(limit) != -1:
        parts.append(f"--limit {float(limit):g}")
    if offset:
        parts.append(f"--offset {offset}")
    return " ".join(parts)


# model_args that name the run's checkpoint, method or device; any other (max_pixels=, max_frames_num=, ...) sets
# up what the model sees, which preservation assumes the vanilla run shares
LMMS_RUN_ARGS = ("pretrained", "model", "method", "ratio", "keep_ratio", "compressor", "device", "device_map",
                 *OPTION_DEFAULTS)


def lmms_setup(args: dict[str, str]) -> str:
    """The model_args that set up the model beyond the method, as ``name=value`` sorted and space-joined."""
    return " ".join(f"{name}={value}" for name, value in sorted(args.items()) if name not in LMMS_RUN_ARGS)


def read_lmms(root: Path, skip: Path | None = None) -> list[Score]:
    """Scores from every lmms-eval ``*_results.json`` under root."""
    scores: list[Score] = []
    for path in _walk(root, skip):
        if not path.name.endswith(LMMS_SUFFIX):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("results"), dict) \
                    or not isinstance(data.get("config"), dict):
                if not LMMS_RESULTS_NAME.fullmatch(path.name):  # e.g. lmms-eval's own submissions/<task>_results.json,
                    log.debug("not an lmms-eval results file: %s", path)  # VLMEvalKit's <MODEL>_<DATASET>_results.json
                    continue
                raise ResultFileError("not an lmms-eval results file (needs 'results' and 'config')")
            config = data["config"]
            args = parse_model_args(config.get("model_args"))
            model_id = str(config.get("model") or "")
            method = normalize_method(args.get("method"))
            if method not in METHOD_ORDER:  # our wrappers refuse it: not a run of theirs
                raise ResultFileError(f"method={method} in model_args is no tcc-eval method "
                                      f"({', '.join(METHOD_ORDER)})")
            ratio_text = args.get("ratio", args.get("keep_ratio"))
            ratio = 1.0 if ratio_text is None else float(ratio_text)
            if not 0 < ratio <= 1:  # as our wrappers read it: a fraction, never a percentage
                raise ResultFileError(f"ratio={ratio_text} in model_args is not a kept fraction in (0, 1]")
            if method == "none" and ratio < 1:
                raise ResultFileError(f"model_args give ratio={ratio_text} but no method")
            ratio = 1.0 if method == "none" else ratio
            recounted, empty_answers = _recount_empty_answers(path, data)
            rows = _lmms_scores(recounted)
            unscored = _lmms_unscored_tasks(data)
            if unscored:
                log.warning("%s: lmms-eval computed no score for %s (its '%s' metric, a 999 placeholder: a "
                            "--predict_only run, or a task scored by a submission server); left out of the tables. "
                            "Re-run without --predict_only to score it", path, ", ".join(unscored),
                            LMMS_NO_SCORE_METRIC)
            own_scores = {(b, m): v for b, m, v, *_ in _lmms_scores(data)} if empty_answers else {}
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped, never fatal
            _warn_skip(path, err)
            continue
        checkpoint = lmms_checkpoint(model_id, args.get("pretrained") or args.get("model"))
        base = lmms_base_model(model_id, checkpoint)
        run = f"{model_id}:{config.get('model_args')}"
        subset = lmms_subset(config)
        limited = f"{subset}: a subset of the benchmark" if subset else ""
        mtime = path.stat().st_mtime
        variant = method_variant(method, args)
        groups = {k: v for k, v in (data.get("group_subtasks") or {}).items() if isinstance(v, list)}
        for benchmark, metric, value, scale, primary, note in rows:
            recount = _empty_answer_note(benchmark, groups, empty_answers, own_scores.get((benchmark, metric), value))
            scores.append(Score("lmms_eval", run, base, method, ratio, benchmark, metric, value, scale, primary,
                                str(path), mtime, run_started(path, root, lmms_timezone(config)),
                                "; ".join(filter(None, [note, recount, limited])), variant,
                                subset=subset, setup=lmms_setup(args), checkpoint=checkpoint))
    return scores


# --------------------------------------------------------------------------------------------------
# efficiency records
# --------------------------------------------------------------------------------------------------
EFFICIENCY_REQUIRED = ("framework", "dataset", "keep_ratio", "base_model", "visual_before", "visual_after",
                       "prefill_s", "total_s", "kv_cache_bytes")
MAX_LINE_WARNINGS = 5  # per efficiency file; the rest are counted on one line
EFFICIENCY_NUMERIC = ("visual_before", "visual_after", "seq_before", "seq_after", "prefill_s", "vision_s",
                      "select_s", "total_s", "kv_cache_bytes", "visual_kv_cache_bytes", "visual_flops",
                      "visual_flops_full", "new_tokens", "avg_retention", "fastv_k", "pdrop_lambda", "context_length",
                      "samples_beyond_context")


def _efficiency_key(record: dict) -> tuple[str, str, str, float]:
    """(framework, base_model, method, keep_ratio) in the same naming the score readers use."""
    framework = str(record["framework"])
    if framework == "vlmeval":
        try:
            base, method, ratio = parse_model_name(str(record.get("model", "")))
            return framework, base, method, ratio
        except ValueError:
            pass
    method = normalize_method(record.get("method"))
    ratio = 1.0 if method == "none" else normalize_ratio(record["keep_ratio"])
    base = str(record["base_model"])
    if framework == "lmms_eval":
        base = lmms_base_model(str(record.get("model") or ""), base)
    return framework, base, method, ratio


def read_efficiency(root: Path, skip: Path | None = None) -> pd.DataFrame:
    """All per-sample efficiency records; a repeated (run, dataset, index) keeps the newest file's, and records
    without an index are all kept."""
    rows: list[dict] = []
    for path in _walk(root, skip):
        if not path.name.endswith(EFFICIENCY_SUFFIX):
            continue
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            _warn_skip(path, err)
            continue
        split = _vlmeval_model_dataset(path, root, EFFICIENCY_SUFFIX) if (path.parent / "status.json").is_file() \
            else None  # our VLMEvalKit records, <MODEL>_<DATASET>_efficiency.jsonl beside VLMEvalKit's status.json
        mtime, started = path.stat().st_mtime, run_started(path, root, vlmeval_dataset=split and split[1])
        bad = 0
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ResultFileError("line is not a JSON object")
                missing = [k for k in EFFICIENCY_REQUIRED if k not in record]
                if missing:
                    raise ResultFileError(f"missing {', '.join(missing)}")
                framework, base, method, ratio = _efficiency_key(record)
                row = {"framework": framework, "base_model": base, "method": method,
                       "checkpoint": lmms_checkpoint(record.get("model"), str(record["base_model"])),
                       "variant": method_variant(method, record.get("method_options")), "keep_ratio": ratio,
                       "dataset": str(record["dataset"]),
                       "index": json.dumps(record.get("index"), sort_keys=True, default=str),
                       "mtime": mtime, "started": started, "source": str(path)}
                for name in EFFICIENCY_NUMERIC:
                    row[name] = float(record[name]) if record.get(name) is not None else math.nan
                negative = [name for name in EFFICIENCY_NUMERIC if row[name] < 0]
                if negative:
                    raise ResultFileError(f"negative {', '.join(negative)}")
                if row["visual_after"] > row["visual_before"]:
                    raise ResultFileError(f"visual_after {row['visual_after']:g} exceeds visual_before "
                                          f"{row['visual_before']:g}")
                row["batch_size"] = int(record.get("batch_size") or 1)  # a batched call's record sums its samples
                row["first_call"] = record.get("first_call") is True  # records of earlier versions lack it
                if row["batch_size"] < 1:
                    raise ResultFileError(f"batch_size {record['batch_size']} is below 1")
                shape = record.get("llm_shape")
                row["llm_shape"] = json.dumps(asdict(LLMShape(**shape)), sort_keys=True) if shape else ""
                stages = record.get("pdrop_layers")
                row["pdrop_layers"] = "/".join(str(int(layer)) for layer in stages) if stages else ""
            except Exception as err:  # noqa: BLE001 - a bad line is skipped, never fatal
                bad += 1
                if bad <= MAX_LINE_WARNINGS:
                    log.warning("skipped %s:%d: %s", path, number, err)
                continue
            rows.append(row)
        if bad > MAX_LINE_WARNINGS:
            log.warning("skipped %s: %d more bad lines", path, bad - MAX_LINE_WARNINGS)
    frame = pd.DataFrame(rows, columns=[*RUN_KEY, "checkpoint", "dataset", "index", "mtime", "started", "source",
                                        *EFFICIENCY_NUMERIC,
                                        "batch_size", "first_call", "llm_shape", "pdrop_layers"])
    frame["keep_ratio"] = frame["keep_ratio"].astype(float).round(6)
    frame = frame.sort_values(["started", "mtime"], kind="stable")
    # a record without a sample index (multi-round generation, some batched calls) matches no other: keep each
    indexed = frame["index"] != "null"
    latest = frame[indexed].drop_duplicates([*RUN_KEY, "dataset", "index"], keep="last")
    return pd.concat([latest, frame[~indexed]]).sort_values(["started", "mtime"], kind="stable").reset_index(
        drop=True)


def summarize_efficiency(records: pd.DataFrame) -> pd.DataFrame:
    """Per run and dataset, plus an ``ALL`` row per run: sums and per-sample means of times, KV MB, tokens.

    A record of a batched call (lmms-eval's batch_size > 1) sums its samples' tokens, times and KV bytes, so it
    counts as ``batch_size`` samples. A loaded model's first call pays one-time costs (CUDA context, kernel choice,
    lazy imports): its record (``first_call``) stays out of the time means where the group has others, and in
    the sums."""
    key = RUN_KEY
    columns = [*key, "dataset", "samples", "prefill_s_sum", "prefill_s_mean", "select_s_mean",
               "prefill_with_select_s_mean", "vision_s_mean", "total_s_sum", "total_s_mean", "kv_cache_mb_mean",
               "visual_kv_mb_mean", "visual_before_mean", "visual_after_mean", "measured_retention", "avg_retention",
               "flops_ratio", "seq_before_mean", "seq_after_mean", "new_tokens_mean", "fastv_k", "pdrop_lambda",
               "pdrop_layers", "llm_shape", "samples_without_visual", "samples_beyond_context", "context_length",
               "first_calls_untimed", "largest_batch"]
    if records.empty:
        return pd.DataFrame(columns=columns)

    def stats(group: pd.DataFrame) -> dict:
        before = group["visual_before"].sum()
        layer_avg = group["avg_retention"]  # per sample, over layers (records of older versions lack it)
        shapes = [s for s in group["llm_shape"] if s]
        sizes = group["batch_size"]
        warm = group[~group["first_call"].astype(bool)]
        timed = warm if not warm.empty else group

        def per_sample(column: str, rows: pd.DataFrame = group) -> float:
            """Mean per sample over the records that carry ``column``."""
            known = rows[column].notna()
            return rows.loc[known, column].sum() / rows.loc[known, "batch_size"].sum() if known.any() else math.nan

        def per_sample_of_all(column: str, rows: pd.DataFrame = group) -> float:
            """Mean per sample, empty where some records (of older versions) lack it, rather than a mean over
            the others."""
            return per_sample(column, rows) if rows[column].notna().all() else math.nan

        select_s = per_sample_of_all("select_s", timed)
        return {
            "samples": int(sizes.sum()),
            "prefill_s_sum": group["prefill_s"].sum(), "prefill_s_mean": per_sample("prefill_s", timed),
            "select_s_mean": select_s,
            "prefill_with_select_s_mean": select_s + per_sample("prefill_s", timed),
            "vision_s_mean": per_sample_of_all("vision_s", timed),
            "total_s_sum": group["total_s"].sum(), "total_s_mean": per_sample("total_s", timed),
            "kv_cache_mb_mean": per_sample("kv_cache_bytes") / BYTES_PER_MB,
            "visual_kv_mb_mean": per_sample_of_all("visual_kv_cache_bytes") / BYTES_PER_MB,
            "visual_before_mean": per_sample("visual_before"), "visual_after_mean": per_sample("visual_after"),
            "measured_retention": group["visual_after"].sum() / before if before > 0 else math.nan,
            "avg_retention": ((layer_avg * group["visual_before"]).sum() / before
                              if before > 0 and layer_avg.notna().all() else math.nan),
            # the ratio of the samples' summed FLOPs, not FLOPs at a mean token count (n^2 attention term)
            "flops_ratio": (group["visual_flops"].sum() / group["visual_flops_full"].sum()
                            if group[["visual_flops", "visual_flops_full"]].notna().all(axis=None)
                            and group["visual_flops_full"].sum() > 0 else math.nan),
            "seq_before_mean": per_sample("seq_before"), "seq_after_mean": per_sample("seq_after"),
            "new_tokens_mean": (group["new_tokens"] * sizes).sum() / sizes.sum(),  # a batch's longest answer
            "fastv_k": group["fastv_k"].dropna().iloc[0] if group["fastv_k"].notna().any() else math.nan,
            "pdrop_lambda": (group["pdrop_lambda"].dropna().iloc[0] if group["pdrop_lambda"].notna().any()
                             else math.nan),
            "pdrop_layers": next((s for s in group["pdrop_layers"] if s), ""),
            "llm_shape": shapes[0] if shapes else "",
            # text-only questions, or media the framework dropped (lmms-eval's own qwen2_vl logs a video it cannot
            # read and answers from the text); a batched record sums its samples, so it counts only when none had any
            "samples_without_visual": int(sizes[group["visual_before"] == 0].sum()),
            # prompts whose position ids reached past the LLM's trained range (records of older versions lack it)
            "samples_beyond_context": int(group["samples_beyond_context"].fillna(0).sum()),
            "context_length": group["context_length"].max(),
            "first_calls_untimed": len(group) - len(timed),
            "largest_batch": int(sizes.max()),
        }

    rows = []
    for values, group in records.groupby(key, sort=True):
        for dataset, part in group.groupby("dataset", sort=True):
            rows.append({**dict(zip(key, values)), "dataset": dataset, **stats(part)})
        rows.append({**dict(zip(key, values)), "dataset": "ALL", **stats(group)})
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------------------------------
# pairing and tables
# --------------------------------------------------------------------------------------------------
SCORE_KEY = [*RUN_KEY, "benchmark", "metric"]
SUMMARY_COLUMNS = ["framework", "base_model", "model", "method", "variant", "keep_ratio", "benchmark", "metric",
                   "primary", "score", "vanilla_score", "preservation", "note", "source"]


def _to_display(scores: list[Score]) -> pd.DataFrame:
    """Scores as a frame with ``score`` in percent (points for MME); the newest run wins per key."""
    if not scores:
        return pd.DataFrame(columns=[*SUMMARY_COLUMNS, "mtime", "started"])
    frame = pd.DataFrame([asdict(s) for s in scores])
    frame["keep_ratio"] = frame["keep_ratio"].round(6)
    # "auto": one decision per (framework, benchmark, metric), so vanilla and compressed share a scale.
    is_fraction = frame["scale"] == "fraction"
    auto = frame["scale"] == "auto"
    if auto.any():
        values = frame[auto].groupby(["framework", "benchmark", "metric"])["value"]
        small = values.transform(lambda v: bool((v.abs() <= 1.0).all()))
        is_fraction |= small.astype(bool).reindex(frame.index, fill_value=False)
        # values on both sides of 1: percentages, unless some file wrote a fraction, which nothing here can tell
        mixed = values.transform(lambda v: bool((v.abs() <= 1.0).any() and (v.abs() > 1.0).any()))
        doubtful = mixed.astype(bool).reindex(frame.index, fill_value=False) & (frame["value"].abs() <= 1.0)
        for index in frame.index[doubtful]:
            log.warning("%s: %s %s %g read as a percentage, as other runs' values above 1 are; if this file holds a "
                        "fraction, it is 100x too small", frame.at[index, "source"], frame.at[index, "benchmark"],
                        frame.at[index, "metric"], frame.at[index, "value"])
            frame.at[index, "note"] = "; ".join(filter(None, [frame.at[index, "note"], "read as a percentage beside "
                                                              "other runs' values above 1 (a fraction would be 100x "
                                                              "too small)"]))
    frame["score"] = frame["value"].where(~is_fraction, frame["value"] * 100.0)
    frame = frame.sort_values(["started", "mtime", "source"], kind="stable")
    counts = frame.groupby(SCORE_KEY)["source"].transform("nunique")
    frame = frame.drop_duplicates(SCORE_KEY, keep="last").copy()
    for index in frame.index[counts.loc[frame.index] > 1]:
        frame.at[index, "note"] = "; ".join(filter(None, [frame.at[index, "note"], f"newest of {counts[index]} runs"]))
    return frame


# How a table row sums up pair_with_vanilla's notes: (what each note of one kind contains, the row's note)
VANILLA_DIFFERENCES = ((", the vanilla run by ", "another judge than vanilla's on {}: no preservation there"),
                       (", the vanilla run on ", "other samples than vanilla's on {}: no preservation there"),
                       (", the vanilla run's ", "other model_args than vanilla's on {} (summary.csv names them)"))


def pair_with_vanilla(frame: pd.DataFrame) -> pd.DataFrame:
    """Add vanilla_score and preservation (= score / vanilla_score) from the same framework, base model,
    benchmark and metric; a missing or zero vanilla, one scored by another judge, or one run on other samples
    (lmms-eval's --limit / --offset, a VLMEvalKit predictions file of another length) leaves preservation empty
    with a note, and other lmms-eval model_args than vanilla's are noted beside it."""
    frame = frame.copy()
    for column in ("judge", "subset", "setup"):
        if column not in frame.columns:
            frame[column] = ""
    if "questions" not in frame.columns:
        frame["questions"] = 0
    vanilla = frame[frame["method"] == "none"].set_index(["framework", "base_model", "benchmark", "metric"])
    keys = list(zip(frame["framework"], frame["base_model"], frame["benchmark"], frame["metric"]))
    frame["vanilla_score"] = [vanilla["score"].get(k, math.nan) for k in keys]
    theirs = {column: pd.Series([vanilla[column].get(k, "") for k in keys], index=frame.index)
              for column in ("judge", "subset", "setup")}
    frame["preservation"] = frame["score"] / frame["vanilla_score"].where(frame["vanilla_score"] != 0)
    paired = frame["vanilla_score"].notna()
    other_judge = (frame["judge"] != "") & (theirs["judge"] != "") & (frame["judge"] != theirs["judge"])
    other_samples = paired & (frame["subset"] != theirs["subset"])
    their_questions = pd.Series([vanilla["questions"].get(k, 0) for k in keys], index=frame.index)
    other_questions = paired & (frame["questions"] > 0) & (their_questions > 0) & (frame["questions"] != their_questions)
    other_setup = paired & (frame["setup"] != theirs["setup"])  # the preservation stands: the note says what differs
    frame.loc[other_judge | other_samples | other_questions, "preservation"] = math.nan

    def add_note(mask: pd.Series, text: Callable[[Any], str]) -> None:
        frame.loc[mask, "note"] = ["; ".join(filter(None, [frame.at[i, "note"], text(i)])) for i in frame.index[mask]]

    add_note(~paired, lambda i: "no vanilla run")
    add_note(frame["vanilla_score"] == 0, lambda i: "vanilla score is 0")
    add_note(other_judge, lambda i: f"judged by {frame.at[i, 'judge']}, the vanilla run by {theirs['judge'][i]}: no "
                                    f"preservation (rerun one of them with the other's --judge)")
    add_note(other_samples, lambda i: f"scored on {frame.at[i, 'subset'] or 'every sample'}, the vanilla run on "
                                      f"{theirs['subset'][i] or 'every sample'}: no preservation (rerun one of them "
                                      f"on the other's samples)")
    add_note(other_questions, lambda i: f"scored on {frame.at[i, 'questions']} questions, the vanilla run on "
                                        f"{their_questions[i]}: no preservation (a --limit run scores only the "
                                        f"first ones; rerun it without)")
    add_note(other_setup, lambda i: f"model_args {frame.at[i, 'setup'] or '(none)'}, the vanilla run's "
                                    f"{theirs['setup'][i] or '(none)'}")
    return frame


def _method_rank(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


@dataclass
class TableOptions:
    """How costs are derived where the records cannot say: LLM shapes per base model and the K of FastV
    and DART."""

    shapes: dict[str, LLMShape] = field(default_factory=dict)
    fastv_k: int = 2

    def shape(self, base_model: str) -> LLMShape | None:
        """--shape override > the registry base's checkpoint > the name itself; None when unsure."""
        if base_model in self.shapes:
            return self.shapes[base_model]
        return _registry_shape(base_model) or guess_shape(base_model)


def _registry_shape(base_model: str) -> LLMShape | None:
    """Shape of a model_registry base (``Qwen2VL`` is Qwen2-VL-7B there): from its local checkpoint's
    config.json when it has one, else from its hub id. None when the registry is not importable."""
    try:
        from model_registry.matrix import all_bases

        entry = all_bases().get(base_model)
    except Exception:  # noqa: BLE001 - registry absent or TCC_EXTRA_MODELS malformed: names must do
        return None
    if entry is None:
        return None
    config = Path(entry.path or "", "config.json")
    if entry.path and config.is_file():
        try:
            return shape_from_config(json.loads(config.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None
    return guess_shape(entry.hf_id) if entry.hf_id else None


def _recorded_shape(efficiency: pd.DataFrame) -> LLMShape | None:
    """The LLM shape the run's efficiency records carry (the model's own config), if any."""
    text = efficiency["llm_shape"].iloc[0] if len(efficiency) else ""
    return LLMShape(**json.loads(text)) if text else None


def _dataset_samples(efficiency: pd.DataFrame, framework: str, base: str, key: tuple | None) -> dict[str, int]:
    """{dataset: samples} a run has efficiency records on; ``key=None``: the base's vanilla run."""
    runs = efficiency[(efficiency["framework"] == framework) & (efficiency["base_model"] == base)
                      & (efficiency["dataset"] != "ALL")]
    runs = runs[runs["method"] == "none"] if key is None else _rows_of(
        runs, ["base_model", "method", "variant", "keep_ratio"], key)
    return {str(d): int(n) for d, n in zip(runs["dataset"], runs["samples"])}


def _rows_of(frame: pd.DataFrame, columns: list[str], values: tuple) -> pd.DataFrame:
    """The rows of ``frame`` whose ``columns`` hold ``values``."""
    return frame[(frame[columns] == pd.Series(values, index=columns)).all(axis=1)]


def build_table(summary: pd.DataFrame, efficiency: pd.DataFrame, framework: str,
                options: TableOptions) -> pd.DataFrame:
    """Paper-style table for one framework: one row per base model x method (x variant) x keep ratio; the
    variant column appears when some run set a method option away from its default."""
    scores = summary[(summary["framework"] == framework) & summary["primary"].astype(bool)]
    totals = efficiency[(efficiency["framework"] == framework) & (efficiency["dataset"] == "ALL")]
    benchmarks = sorted(scores["benchmark"].unique(), key=str.lower)
    paired = scores[scores["method"] == "none"].groupby("base_model")["benchmark"].nunique()
    row_key = ["base_model", "method", "variant", "keep_ratio"]
    keys = {tuple(k) for k in scores[row_key].itertuples(index=False)}
    keys |= {tuple(k) for k in totals[row_key].itertuples(index=False)}
    rows = []
    for key in sorted(keys, key=lambda k: (k[0], _method_rank(k[1]), k[2], -k[3])):
        base, method, variant, ratio = key
        mine = _rows_of(scores, row_key, key)
        row: dict[str, Any] = {"base_model": base, "method": method, "variant": variant, "keep_ratio": ratio}
        notes = []
        for bench in benchmarks:
            hit = mine[mine["benchmark"] == bench]
            row[bench] = hit["score"].iloc[0] if len(hit) else math.nan
        preserved = mine["preservation"].dropna()
        row["Avg preservation"] = 100 * preserved.mean() if len(preserved) else math.nan
        if len(mine) and mine["vanilla_score"].isna().all():
            notes.append("no vanilla run")
        elif len(preserved) < paired.get(base, 0):
            notes.append(f"preservation over {len(preserved)} of {paired[base]} benchmarks")
        for marker, says in VANILLA_DIFFERENCES:
            differing = sorted(mine.loc[mine["note"].str.contains(marker, regex=False), "benchmark"])
            if differing:
                notes.append(says.format(", ".join(differing)))
        own_count = sorted(mine.loc[mine["note"].str.contains(RATING_OWN_COUNT, regex=False), "benchmark"])
        if own_count:  # the recount needs the per-sample file: summary.csv and the warning say why it failed
            notes.append(f"{RATING_OWN_COUNT} on {', '.join(own_count)}, which counts failed and empty answers as "
                         "right (its per-sample file unreadable or of another run)")
        limited = sorted(mine.loc[mine["note"].str.contains("--limit", regex=False), "benchmark"])
        if limited:
            notes.append(f"scores of a --limit run on {', '.join(limited)}")
        superseded = sorted({int(n) for n in mine["note"].str.extract(r"newest of (\d+) runs")[0].dropna()})
        if superseded:  # which benchmarks: summary.csv
            notes.append(f"newest of {'/'.join(map(str, superseded))} runs on some benchmarks")
        eff = _rows_of(totals, row_key, key)
        vanilla_eff = totals[(totals["base_model"] == base) & (totals["method"] == "none")]
        measured = eff["measured_retention"].iloc[0] if len(eff) else math.nan
        kept = 1.0 if method == "none" else (measured if not math.isnan(measured) else ratio)
        recorded = eff["avg_retention"].iloc[0] if len(eff) else math.nan
        shape = options.shape(base) or _recorded_shape(eff)
        named = variant_options(variant)  # the options that ran, where no record says
        fastv_k = int(eff["fastv_k"].iloc[0]) if len(eff) and not math.isnan(eff["fastv_k"].iloc[0]) \
            else int(named.get("fastv_k", options.fastv_k))
        # match=kept: the name's ratio is the share kept after pruning (PyramidDrop: lambda), not the average
        name_is_kept = named.get("match") == "kept"
        if method in LAYER_K_METHODS and shape is not None and not 0 < fastv_k < shape.layers:
            raise AggregationRefused(f"--fastv-k {fastv_k}: the {method} runs of {base} have a {shape.layers}-layer "
                                     f"LLM, so K is in 1..{shape.layers - 1}; no tables were written")
        recorded_stages = eff["pdrop_layers"].iloc[0] if len(eff) else ""
        # None: the method's own stages
        pdrop_layers = recorded_stages if isinstance(recorded_stages, str) and recorded_stages \
            else named.get("pdrop_layers")
        if not math.isnan(recorded):
            row["Avg retention"] = recorded
        elif method in INSIDE_LLM_METHODS and name_is_kept:
            if shape is None:
                row["Avg retention"] = math.nan
                notes.append("average retention unknown (match=kept without efficiency records; LLM depth unknown)")
            else:
                row["Avg retention"] = (pyramid_average_retention(ratio, shape.layers, pdrop_layers)
                                        if method == "pdrop" else fastv_average_retention(ratio, shape.layers, fastv_k))
                notes.append("average retention from the kept share in the model name (no efficiency records)")
        elif method == "pdrop":  # our PyramidDrop names give the average retention over layers
            row["Avg retention"] = ratio
            notes.append("PyramidDrop average retention from the model name (no efficiency records)")
        elif method in LAYER_K_METHODS:
            # our FastV / DART names give the average retention over layers (and keep kept = the post-K share)
            if shape is not None and not math.isnan(measured):
                row["Avg retention"] = fastv_average_retention(kept, shape.layers, fastv_k)
            else:
                row["Avg retention"] = ratio
                why = [*(["no efficiency records"] if math.isnan(measured) else []),
                       *(["LLM depth unknown"] if shape is None else [])]
                notes.append(f"layer-K average retention from the model name ({'; '.join(why)})")
        else:
            row["Avg retention"] = kept
        n_visual = next((f["visual_before_mean"].iloc[0] for f in (eff, vanilla_eff) if len(f)), math.nan)
        recorded_flops = eff["flops_ratio"].iloc[0] if len(eff) else math.nan
        if method == "none":
            row["FLOPs ratio"] = 1.0
        elif not math.isnan(recorded_flops):
            row["FLOPs ratio"] = recorded_flops
        elif shape is not None and n_visual > 0:
            pruned_share = ratio
            if method in LAYER_K_METHODS:  # flops_ratio wants the share kept from layer K on
                pruned_share = (kept if not math.isnan(measured) else ratio if name_is_kept
                                else fastv_layer_keep_ratio(ratio, shape.layers, fastv_k))
            elif method == "pdrop":  # and PyramidDrop's per-stage ratio, with the stages that ran
                recorded_lambda = eff["pdrop_lambda"].iloc[0] if len(eff) else math.nan
                try:
                    pruned_share = (recorded_lambda if not math.isnan(recorded_lambda) else ratio if name_is_kept
                                    else pyramid_stage_ratio(ratio, shape.layers, pdrop_layers))
                except ValueError:  # at or below its floor: only a record can say which lambda ran
                    pruned_share = math.nan
                    notes.append("PyramidDrop's per-stage ratio unknown (no efficiency records)")
            row["FLOPs ratio"] = (flops_ratio(n_visual, pruned_share, shape, method, fastv_k, pdrop_layers)
                                  if not math.isnan(pruned_share) else math.nan)
            if len(eff) and not math.isnan(row["FLOPs ratio"]):
                notes.append("FLOPs ratio at the mean visual token count (records without per-sample FLOPs)")
        else:
            row["FLOPs ratio"] = math.nan
        if method == "oracle" and not math.isnan(row["FLOPs ratio"]):  # a reference, not a method one deploys
            notes.append("FLOPs ratio of the pruned prefill only: the oracle's own answer generation, forward and "
                         "backward pass are in prefill s")
        if eff.empty:  # a vanilla run too: lmms-eval's own models (qwen2_vl, llava_hf) write none
            notes.append("no efficiency records" + (" (a vanilla run of the framework's own model: run ours with "
                                                    "method=none for them)"
                                                    if method == "none" and framework == "lmms_eval" else ""))
        if len(eff) and eff["samples_without_visual"].iloc[0] > 0:
            notes.append(f"{int(eff['samples_without_visual'].iloc[0])} samples without visual tokens (text-only, or "
                         f"media the framework dropped: efficiency.csv per dataset)")
        if len(eff) and eff["samples_beyond_context"].iloc[0] > 0:
            notes.append(f"{int(eff['samples_beyond_context'].iloc[0])} samples' prompts reach past the LLM's "
                         f"{int(eff['context_length'].iloc[0]):,} trained positions (efficiency.csv per dataset)")
        if method in INSIDE_LLM_METHODS and len(eff) and eff["largest_batch"].iloc[0] > 1:
            notes.append(f"{method} runs a batch one prompt at a time (it ranks inside each prompt's prefill): its "
                         f"times per sample at batch size {int(eff['largest_batch'].iloc[0])} are not shared over "
                         f"a batch as batched runs' are; compare times at --batch_size 1")
        row["prefill s"] = eff["prefill_with_select_s_mean"].iloc[0] if len(eff) else math.nan
        if len(eff) and math.isnan(row["prefill s"]):
            row["prefill s"] = eff["prefill_s_mean"].iloc[0]
            if method != "none" and method not in INSIDE_LLM_METHODS:  # the others select inside the prefill
                notes.append("prefill s without the method's selection step (records without select_s)")
        if len(eff) and len(vanilla_eff) and method != "none":
            mine_samples, vanilla_samples = (_dataset_samples(efficiency, framework, base, m) for m in (key, None))
            if set(mine_samples) != set(vanilla_samples):
                notes.append(f"efficiency over {len(mine_samples)} dataset(s), vanilla's over {len(vanilla_samples)}: "
                             f"compare per dataset in efficiency.csv")
            other_counts = [f"{d} {mine_samples[d]} vs {vanilla_samples[d]}"
                            for d in sorted(set(mine_samples) & set(vanilla_samples))
                            if mine_samples[d] != vanilla_samples[d]]
            if other_counts:  # a --limit or stopped run, or index-less records of two runs
                notes.append(f"efficiency records count other samples than vanilla's ({', '.join(other_counts)}): "
                             f"a --limit or stopped run scores other samples")
        if len(eff):  # VLMEvalKit scores say how many predictions they scored (0: not known)
            recorded = _dataset_samples(efficiency, framework, base, key)
            short = [f"{bench} {recorded[bench]} of {int(questions)}" for bench, questions
                     in mine.drop_duplicates("benchmark")[["benchmark", "questions"]].itertuples(index=False)
                     if bench in recorded and 0 < recorded[bench] < questions]
            if short:  # records lost (or never written) for some of the samples scored
                notes.append(f"efficiency records cover fewer samples than were scored ({', '.join(short)}): the "
                             f"efficiency columns average the recorded ones only")
        row["total s"] = eff["total_s_mean"].iloc[0] if len(eff) else math.nan
        row["KV MB"] = eff["kv_cache_mb_mean"].iloc[0] if len(eff) else math.nan
        row["visual KV MB"] = eff["visual_kv_mb_mean"].iloc[0] if len(eff) else math.nan
        row["note"] = "; ".join(notes)
        rows.append(row)
    variants = ["variant"] if any(row["variant"] for row in rows) else []
    columns = ["base_model", "method", *variants, "keep_ratio", *benchmarks, "Avg preservation", "Avg retention",
               "FLOPs ratio", "prefill s", "total s", "KV MB", "visual KV MB", "note"]
    return pd.DataFrame(rows, columns=columns)


def _fmt(column: str, value: Any) -> str:
    if isinstance(value, str):
        return value.replace("|", "\\|")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column == "Avg preservation":
        return f"{value:.1f}%"
    if column in ("keep_ratio", "Avg retention", "FLOPs ratio", "prefill s", "total s"):
        return f"{value:.3f}"
    if column.startswith(MMBENCH_VIDEO):  # a 0-3 rating, reported to two decimals
        return f"{value:.2f}"
    return f"{value:.1f}"


def table_markdown(table: pd.DataFrame, framework: str) -> str:
    """GitHub markdown of a framework table, with a legend of units."""
    lines = [f"# {framework}", "",
             "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_fmt(c, row[c]) for c in table.columns) + " |")
    lines += ["", "Scores in percent (MME: perception + reasoning/cognition points; MMBench-Video: the judge's 0-3 "
              "rating). Avg preservation: mean of "
              "score / vanilla score over the benchmarks with a vanilla run. Avg retention: measured kept "
              "fraction of visual tokens (FastV, DART, PyramidDrop: averaged over layers). FLOPs ratio: "
              "visual-part FLOPs of the LLM vs vanilla (theoretical, the paper's per-layer 4nd^2 + 2n^2d + cndm, "
              "summed over the samples run; the method's own scoring and selection, e.g. the oracle's forward and "
              "backward pass, are not in it, they are in prefill s). prefill s: mean per sample of "
              "the LLM prefill plus the method's selection step before it (scoring and gather; FastV, DART and "
              "PyramidDrop rank inside the prefill); total s: mean per sample of the whole generate call, vision "
              "tower included; KV MB: mean KV cache (10^6 bytes), summed over layers; visual KV MB: the visual "
              "tokens' part of it (the paper's KV figure).",
              ""]
    return "\n".join(lines)


def plot_preservation(table: pd.DataFrame, framework: str, out_dir: Path) -> list[Path]:
    """One PNG per base model: average preservation (%) against average retention, a line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for base, rows in table.groupby("base_model", sort=True):
        points = rows[(rows["method"] != "none") & rows["Avg preservation"].notna()]
        if points.empty:
            continue
        fig, ax = plt.subplots(figsize=(5, 4))
        variant = points["variant"] if "variant" in points else pd.Series("", index=points.index)
        lines = sorted({(m, v) for m, v in zip(points["method"], variant)}, key=lambda k: (_method_rank(k[0]), k[1]))
        for i, (method, name) in enumerate(lines):
            line = points[(points["method"] == method) & (variant == name)].sort_values("Avg retention")
            # nested marker sizes and dashes keep methods with identical numbers visible on top of each other
            ax.plot(line["Avg retention"], line["Avg preservation"], marker="osD^vP"[i % 6],
                    markersize=4 + 2.5 * (len(lines) - i), linestyle=("-", "--", ":", "-.")[i % 4],
                    markerfacecolor="none", label=f"{method} ({name})" if name else method)
        ax.plot([1.0], [100.0], marker="*", markersize=12, color="black", linestyle="none", label="vanilla")
        ax.set_xlabel("average retention ratio")
        ax.set_ylabel("average performance preservation (%)")
        ax.set_title(f"{base} ({framework})")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"preservation_{framework}_{_safe_name(str(base))}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


@dataclass
class Tables:
    """Everything aggregate() produced, for callers and tests."""

    summary: pd.DataFrame
    efficiency: pd.DataFrame
    tables: dict[str, pd.DataFrame]
    files: list[Path]


class AggregationRefused(ValueError):
    """No results to aggregate, an output folder that holds results, or an option the runs contradict: nothing is
    written, and the tables already there are left as they are."""


WRITTEN_LIST = ".tcc_aggregate_files.json"  # in the output folder: what the last aggregation wrote there


def _is_results_file(path: Path) -> bool:
    return path.name.endswith((*VLMEVAL_SUFFIXES, "_results.json", EFFICIENCY_SUFFIX))


def aggregate(results_dir: Path | str, out_dir: Path | str | None = None,
              options: TableOptions | None = None) -> Tables:
    """Read every results file under results_dir and write the tables into out_dir (default
    results_dir/tables). Never writes anywhere else."""
    root = Path(results_dir)
    if not root.is_dir():
        what = "is a file, not a directory" if root.exists() else "does not exist"
        raise FileNotFoundError(f"results directory {root} {what}")
    out = Path(out_dir) if out_dir is not None else root / "tables"
    options = options or TableOptions()
    skip = out.resolve() if out.resolve().is_relative_to(root.resolve()) else None
    root = root.resolve()
    if skip is not None and any(_is_results_file(path) for path in _walk(skip, None)):
        raise AggregationRefused(f"the output folder {out} holds results files, which the tables would leave out: "
                                 f"write the tables to a folder without results (default: {root / 'tables'})")

    scores = read_vlmeval(root, skip) + read_lmms(root, skip)
    records = read_efficiency(root, skip)
    distinguish_checkpoints(scores, records)
    paired = pair_with_vanilla(_to_display(scores)).sort_values(  # the tables also read its "questions"
        ["framework", "base_model", "method", "variant", "keep_ratio", "benchmark", "primary", "metric"],
        ascending=[True, True, True, True, False, True, False, True],
        key=lambda col: col.map(lambda m: "%02d%s" % _method_rank(m)) if col.name == "method" else col,
    )
    summary = paired[SUMMARY_COLUMNS]
    efficiency = summarize_efficiency(records)
    if summary.empty and efficiency.empty:  # write nothing: the tables of an earlier aggregation stay
        raise AggregationRefused(f"no results found under {root} (looked for *{', *'.join(VLMEVAL_SUFFIXES)}, "
                                 f"*_results.json, *{EFFICIENCY_SUFFIX}); nothing was written. Pass the VLMEvalKit "
                                 f"--work-dir or lmms-eval --output_path (or a folder above them)")

    bases = set(summary["base_model"]) | set(efficiency["base_model"])
    for base in sorted(set(options.shapes) - bases):
        log.warning("--shape %s=...: no run has base model %s (the runs' bases: %s)", base, base,
                    ", ".join(sorted(bases)))
    present = set(summary["framework"]) | set(efficiency["framework"])
    tables = {fw: build_table(paired, efficiency, fw, options)  # before any write: an error leaves the old tables
              for fw in [*FRAMEWORKS, *sorted(present - set(FRAMEWORKS))] if fw in present}
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "summary.csv", out / "efficiency.csv", out / "tables.xlsx"]
    summary.to_csv(files[0], index=False)
    efficiency.to_csv(files[1], index=False)
    with pd.ExcelWriter(files[2], engine="openpyxl") as writer:
        summary.to_excel(writer, sheet_name="summary", index=False)
        for framework, table in tables.items():
            table.to_excel(writer, sheet_name=_safe_name(framework)[:31], index=False)
        efficiency.to_excel(writer, sheet_name="efficiency", index=False)
    for framework, table in tables.items():
        path = out / f"table_{_safe_name(framework)}.md"
        path.write_text(table_markdown(table, framework), encoding="utf-8")
        files.append(path)
        files.extend(plot_preservation(table, framework, out))
    # a table or plot of an earlier aggregation that this one did not rewrite would be read as current; only files
    # an aggregation wrote (its list in the folder) are removed, never a user's own table_*.md beside them
    listed = out / WRITTEN_LIST
    try:
        earlier = set(json.loads(listed.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        earlier = set()
    for name in sorted(earlier - {path.name for path in files}):
        stale = out / str(name)
        if stale.parent == out and stale.name.startswith(("table_", "preservation_")) and stale.is_file():
            log.info("removing stale %s (no longer produced by these results)", stale)
            stale.unlink()
    listed.write_text(json.dumps(sorted(path.name for path in files), indent=1), encoding="utf-8")
    return Tables(summary, efficiency, tables, files)


def _parse_shape(text: str) -> tuple[str, LLMShape]:
    base, sep, key = text.partition("=")
    if not sep or key not in LLM_SHAPES:
        raise argparse.ArgumentTypeError(
            f"--shape {text!r}: expected BASE=KEY with KEY in {', '.join(sorted(LLM_SHAPES))}")
    return base, LLM_SHAPES[key]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcc_eval.aggregate", description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path,
                        help="VLMEvalKit --work-dir, lmms-eval --output_path, or any folder above them")
    parser.add_argument("--out", type=output_folder("the tables"), default=None,
                        help="output folder (default RESULTS_DIR/tables)")
    parser.add_argument("--shape", type=_parse_shape, action="append", default=[], metavar="BASE=KEY",
                        help="LLM shape of a base model whose name states no size, e.g. Qwen2VL=qwen2-vl-2b "
                             "(used for FLOPs and FastV's and DART's average retention)")
    parser.add_argument("--fastv-k", type=positive_int, default=2,
                        help="layer at which FastV and DART prune, for runs whose efficiency records and "
                             "fastv_k= option do not say (default 2)")
    args = parser.parse_args(argv)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("aggregate: %(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        result = aggregate(args.results_dir, args.out, TableOptions(dict(args.shape), args.fastv_k))
    except FileNotFoundError as err:
        print(f"error: {err}; pass the VLMEvalKit --work-dir or lmms-eval --output_path (or a folder above them)",
              file=sys.stderr)
        return 2
    except AggregationRefused as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{len(result.summary)} scores, {len(result.efficiency)} efficiency rows -> "
          f"{result.files[0].parent}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
