"""Per-sample efficiency records next to VLMEvalKit's outputs.

VLMEvalKit calls ``model.generate(message, dataset)`` without the sample index or the output folder,
so ``track_inference`` wraps its ``infer_data`` functions: while one runs, ``current()`` says where
records go (``<work_dir>/<MODEL>/<MODEL>_<DATASET>_efficiency.jsonl``) and which sample is being
prompted (noted when the dataset's or the model's ``build_prompt`` sees the row). Records are only
ever appended, one JSON object per line, so reruns add lines (the last line per index is the latest)
and VLMEvalKit's own files are never touched. A folder holding another variant's records of the name (other
``--config`` method options, another checkpoint or compressor) is refused before inference: VLMEvalKit would
resume from that variant's answers.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import record_json_default

FRAMEWORK = "vlmeval"


@dataclass
class InferenceContext:
    work_dir: str  # VLMEvalKit's per-model folder (<work-dir>/<MODEL>)
    model_name: str
    dataset_name: str
    dataset: Any = None
    index: Any = None  # the sample being prompted

    @property
    def path(self) -> Path:
        return records_path(self.work_dir, self.model_name, self.dataset_name)


_current: InferenceContext | None = None


def current() -> InferenceContext | None:
    return _current


def records_path(model_dir: str | os.PathLike, model_name: str, dataset_name: str) -> Path:
    return Path(model_dir) / f"{model_name}_{dataset_name}_efficiency.jsonl"


def note_line(line: Any) -> None:
    """Remember which sample ``line`` is (a row with 'index', or a row position as video sets pass it)."""
    ctx = _current
    if ctx is None:
        return
    try:
        if isinstance(line, numbers.Integral):
            ctx.index = ctx.dataset.data.iloc[int(line)]["index"]
        else:
            ctx.index = line["index"]
    except Exception:  # noqa: BLE001 - an unknown row shape must not stop inference; the record just lacks its index
        ctx.index = None


def append_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
    """Append one JSON line with a single write (O_APPEND), so torchrun ranks can share the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, default=record_json_default) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def run_dataset_name(model_name: str, dataset: Any, out_file: str | os.PathLike | None,
                     result_file: str | os.PathLike | None = None) -> str:
    """The ``--data`` name VLMEvalKit's result files carry.

    A video preset (``MVBench_8frame``) builds a dataset whose ``dataset_name`` is the base set
    (``MVBench``); only the per-rank ``out_file`` (``<rank><world>_<MODEL>_<preset>.pkl``) and the video job's
    ``result_file`` (``<MODEL>_<preset>.xlsx``) keep the preset. Image sets use ``<rank><world>_<DATASET>.pkl`` and
    their own name.
    """
    stem = Path(out_file).stem.split("_", 1)[-1] if out_file else Path(result_file).stem if result_file else ""
    prefix = f"{model_name}_"
    return stem[len(prefix):] if stem.startswith(prefix) and len(stem) > len(prefix) else dataset.dataset_name


def variant_of(model: Any, model_name: str) -> dict[str, Any] | None:
    """The method, ratio, options, checkpoint and compressors a run of ours makes (None: not ours). ``model`` is
    the built model, or its name when VLMEvalKit builds it inside ``infer_data`` with the registered entry's
    keywords."""
    if isinstance(model, str):
        from vlmeval.config import supported_VLM

        entry = supported_VLM.get(model_name)
        keywords = getattr(entry, "keywords", {}) if getattr(entry, "tcc_eval", False) else {}
        if "method" not in keywords:
            return None
        return {"method": keywords["method"], "keep_ratio": keywords["keep_ratio"],
                "method_options": dict(keywords.get("method_options") or {}),
                **run_files(keywords["base"], keywords["method"], keywords.get("model_path"),
                            keywords.get("compressor"))}
    variant = getattr(model, "tcc_variant", None)
    return variant() if callable(variant) else None


def run_files(base_name: str, method: str, model_path: Any = None, compressor: Any = None) -> dict[str, Any]:
    """The checkpoint and (tcc) the compressor per modality a run of ``base_name`` loads, as its records name them;
    what cannot be resolved is left out (the model's constructor says why when it is built)."""
    from model_registry import all_bases, available_compressors, resolve_model_path

    found: dict[str, Any] = {}
    base = all_bases().get(base_name)
    if base is None:
        return found
    try:
        found["model_path"] = resolve_model_path(base, model_path)
        if method == "tcc":
            found["compressors"] = {modality: os.fspath(file) for modality, file
                                    in available_compressors(base, compressor).items()
                                    if isinstance(file, (str, os.PathLike))}
            found["compressor_sha1s"] = {modality: file_sha1(file) for modality, file in found["compressors"].items()}
    except (NotImplementedError, FileNotFoundError, ValueError, OSError):
        pass
    return found


def file_sha1(path: str | os.PathLike) -> str:
    """A compressor file's content hash: retrained into the same path, it is another compressor."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_same_variant(path: Path, variant: dict[str, Any] | None) -> None:
    """Refuse to run a variant into a folder holding another variant's results under the same name.

    VLMEvalKit 0.0.20 resumes from any prediction file of the name in its folder, ``--reuse`` or not: a second
    variant (other ``--config`` method options, another checkpoint or compressor) would take over the first's
    answers, and its records would mix with them. Method variants are told apart as the tables tell them: options a
    method does not read, or at their defaults, make none.
    """
    if variant is None or not path.is_file():
        return
    want = _variant_key(json.loads(json.dumps(variant, default=record_json_default)))
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a killed run: the tables skip it too
            continue
        if not isinstance(record, dict):
            continue
        had = _variant_key(record)
        differs = [] if had == want else [("variant", _describe(had), _describe(want))]
        differs += [(what, theirs, ours) for what, theirs, ours, same in _files_of(record, variant) if not same]
        if differs:
            what, theirs, ours = differs[0]
            raise ValueError(
                f"{path.parent} already holds {path.name.removesuffix('_efficiency.jsonl')} results of another "
                f"{what} ({theirs}; this run: {ours}). VLMEvalKit would resume from its predictions, so the answers "
                f"would be the other {what}'s: give this run its own --work-dir, or move {path.parent} away")


def _files_of(record: dict[str, Any], variant: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(what, the record's, this run's, same) for the checkpoint and the record's modality's compressor, where both
    are known (records of versions before these fields, or a run whose files cannot be resolved, compare nothing).
    Compressors compare by content where both hashes are known, else by file."""
    pairs = []
    if record.get("model_path") and variant.get("model_path"):
        theirs, ours = str(record["model_path"]), str(variant["model_path"])
        pairs.append(("checkpoint", theirs, ours, _same_file(theirs, ours)))
    modality = record.get("modality")
    compressors, hashes = variant.get("compressors") or {}, variant.get("compressor_sha1s") or {}
    if record.get("compressor") and modality in compressors:
        theirs, ours = str(record["compressor"]), str(compressors[modality])
        if record.get("compressor_sha1") and modality in hashes:
            theirs, ours = f"{theirs}, sha1 {record['compressor_sha1'][:12]}", f"{ours}, sha1 {hashes[modality][:12]}"
            same = record["compressor_sha1"] == hashes[modality]
        else:
            same = _same_file(theirs, ours)
        pairs.append((f"{modality} compressor", theirs, ours, same))
    return pairs


def _same_file(a: str, b: str) -> bool:
    """One checkpoint or compressor, however it was written (a relative path, a symlink); hub ids by name."""
    return a == b or (os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b))


def _variant_key(record: dict[str, Any]) -> tuple[Any, Any, str]:
    from ...options import method_variant

    method = record.get("method")
    return method, record.get("keep_ratio"), method_variant(str(method), record.get("method_options") or {})


def _describe(key: tuple[Any, Any, str]) -> str:
    method, keep_ratio, options = key
    return f"method={method} keep_ratio={keep_ratio}" + (f" {options}" if options else "")


def checking_variant(infer_data_job: Callable) -> Callable:
    """Wrap a VLMEvalKit ``infer_data_job*(model, work_dir, model_name, dataset, ...)`` with ``check_same_variant``:
    before the job, which returns a complete prediction file's answers without calling ``infer_data``."""
    if getattr(infer_data_job, "tcc_eval_checked", False):
        return infer_data_job
    signature = inspect.signature(infer_data_job)

    @functools.wraps(infer_data_job)
    def checked(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs).arguments
        model_name = str(bound["model_name"])
        name = run_dataset_name(model_name, bound["dataset"], None, bound.get("result_file"))
        check_same_variant(records_path(bound["work_dir"], model_name, name),
                           variant_of(bound.get("model"), model_name))
        return infer_data_job(*args, **kwargs)

    checked.tcc_eval_checked = True
    return checked


def track_inference(infer_data: Callable) -> Callable:
    """Wrap a VLMEvalKit ``infer_data(model, model_name, work_dir, dataset, ...)`` to set the context."""
    if getattr(infer_data, "tcc_eval_tracked", False):
        return infer_data
    signature = inspect.signature(infer_data)

    @functools.wraps(infer_data)
    def tracked(*args: Any, **kwargs: Any) -> Any:
        global _current
        bound = signature.bind(*args, **kwargs).arguments
        dataset = bound["dataset"]
        model_name = str(bound["model_name"])
        name = run_dataset_name(model_name, dataset, bound.get("out_file"))
        ctx = InferenceContext(str(bound["work_dir"]), model_name, name, dataset)
        original = dataset.build_prompt

        def build_prompt(line, *a, **k):
            note_line(line)
            return original(line, *a, **k)

        # generate_inner is given a message, never the sample's index, and build_prompt is the one call that sees
        # the row first: an instance attribute (removed again below) notes it for the efficiency record
        dataset.build_prompt = build_prompt
        previous, _current = _current, ctx
        try:
            return infer_data(*args, **kwargs)
        finally:
            _current = previous
            del dataset.build_prompt

    tracked.tcc_eval_tracked = True
    return tracked
