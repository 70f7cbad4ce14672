"""``python -m tcc_eval.compressor label``: oracle relevance + layer-0 attention per sample.

Output layout (one directory per model and dataset):
    DIR/meta.json                 model facts (family, LLM shape), data file, modality
    DIR/samples/<id>.pt           a0, relevance, groups, n_visual, answer ... per kept sample
    DIR/skipped/<id>.json         samples the model answered wrongly (so a resumed run skips them)
    DIR/label_stats_<i>of<n>.json kept / skipped / failed counts of shard i of n
Resumable (existing sample files are skipped) and shardable (``--shard i/n`` or torchrun's RANK /
WORLD_SIZE; LOCAL_RANK picks the GPU).
"""

from __future__ import annotations

import argparse
import ast
import base64
import hashlib
import io
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..adapters import adapter_for
from ..answers import extract_letter, normalize
from ..api import DTYPES, device_arg, on_model_device, read_video, video_timing_options
from ..integrations import rank_device
from ..options import DEFAULT_INSTRUCTION_ROWS, INSTRUCTION_ROWS, positive_int
from ..oracle import METHOD_RULE, RELEVANCE_RULES, answer_tokens, explain_inputs
from . import UNREADABLE_ERRORS

HELP = "generate training labels (oracle relevance) with an MLLM"
DESCRIPTION = """\
Run the MLLM on every sample, keep those it answers correctly (letter match for multiple choice,
normalised exact match otherwise; --keep-all keeps every sample), and store per sample the layer-0
instruction->visual attention (the compressor's input) and the oracle relevance (its target).

Data: a VLMEvalKit-style MCQ TSV (index, image as base64 [or image_path], question, A, B, [C, D ...],
answer, [hint], [category]; or a video / frames_dir column), or a JSONL with one object per line:
{"id", "image" | "images" | "video" | "frames_dir", "question", "answer", ["options"]} (or a JSON array of
them), or LLaVA-style instruction data ({"id", "image" | "video", "conversations": [{"from": "human", "value":
"<image>\\n..."}, {"from": "gpt", "value": ...}, ...]}, e.g. LLaVA-Video-178K): its first question and answer,
the placeholders removed (text-only records are skipped). Paths are relative to --media-root (default:
the data file's folder). Multiple-choice prompt: question, one line per option "A. ...", then
"Answer with the option's letter from the given choices directly."

Memory: the oracle runs one forward with eager attention and no autograd, keeping each layer's input,
then recomputes one layer at a time from the last down for the backward passes: one layer's attention
maps (heads * N^2 values for N tokens; the batch is always 1) are alive at a time, not every layer's
(python -m tcc_eval.bench_oracle measures both). Very long videos may still need fewer frames (--num-frames).
Time: two forwards, and one backward pass per explained answer token; --max-answer-tokens caps them
(default 16).
"""

OPTION_LETTERS = "ABCDEFGH"
MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."


# ------------------------------------------------------------------------------------------ data
@dataclass
class Sample:
    """One question with its visual input; images/video hold base64 strings or file paths."""

    id: str
    question: str
    answer: str
    options: dict[str, str] = field(default_factory=dict)
    images: list[str] = field(default_factory=list)
    video: str | None = None
    base_dir: Path = Path(".")

    @property
    def modality(self) -> str:
        return "video" if self.video is not None else "image"

    def media_digest(self) -> str:
        """One digest per distinct visual input (the same image under several questions shares it), so that
        ``train`` holds out whole images, not samples."""
        refs = [self.video] if self.video is not None else self.images
        return hashlib.sha1("\n".join(str(r) for r in refs).encode()).hexdigest()[:16]

    def prompt(self) -> str:
        if not self.options:
            return self.question
        lines = [f"{letter}. {text}" for letter, text in self.options.items()]
        return "\n".join([self.question, *lines, MCQ_SUFFIX])


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value) != ""


def _options_from(obj: Any) -> dict[str, str]:
    if isinstance(obj, dict):
        return {str(k).strip(): str(v) for k, v in obj.items() if _present(v)}
    if isinstance(obj, (list, tuple)):
        return {OPTION_LETTERS[i]: str(v) for i, v in enumerate(obj)}
    return {}


def _answer_letter(answer: str, options: dict[str, str], where: str) -> str:
    """MCQ answers may be given as the letter or as the option's text; anything else (a 0-based index, a letter
    past the options) would mark every answer wrong, and the sample skipped, for a fault of the data."""
    answer = str(answer).strip()
    if answer.upper() in options:
        return answer.upper()
    for letter, text in options.items():
        if normalize(text) == normalize(answer):
            return letter
    raise ValueError(f"{where}: answer {answer!r} is neither an option letter ({', '.join(options)}) nor an "
                     f"option's text: fix the answer key")


def read_tsv(path: Path, base_dir: Path) -> list[Sample]:
    import pandas as pd

    # only empty cells are missing: options such as "None" or "NA" are real answers
    # all text: a numeric column with a blank cell would otherwise turn its "4" into "4.0"
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=[""])
    except ValueError as err:  # pandas' parser errors name no file
        raise ValueError(f"{path}: not a readable TSV ({err})") from err
    missing = {"index", "question", "answer"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: TSV lacks column(s) {sorted(missing)} (VLMEvalKit MCQ format expected)")
    by_index = dict(zip(frame["index"], frame["image"])) if "image" in frame.columns else {}
    samples = []
    for row in frame.to_dict("records"):
        options = {L: str(row[L]) for L in OPTION_LETTERS if L in row and _present(row[L])}
        question = str(row["question"])
        if _present(row.get("hint")):
            question = f"Hint: {row['hint']}\n{question}"
        answer = _answer_letter(row["answer"], options, f"{path}: row {row['index']}") if options \
            else str(row["answer"]).strip()
        sample = Sample(id=str(row["index"]), question=question, answer=answer,
                        options=options, base_dir=base_dir)
        if _present(row.get("frames_dir")) or _present(row.get("video")):
            sample.video = str(row["frames_dir"] if _present(row.get("frames_dir")) else row["video"])
        elif _present(row.get("image")):
            image = str(row["image"])
            if len(image) <= 64 and image in by_index:  # VLMEvalKit stores repeated images as a row index
                image = str(by_index[image])
            sample.images = [str(x) for x in ast.literal_eval(image)] if image.startswith("[") else [image]
        elif _present(row.get("image_path")):
            paths = str(row["image_path"])
            sample.images = [str(x) for x in ast.literal_eval(paths)] if paths.startswith("[") else [paths]
        else:
            raise ValueError(f"{path}: row {row['index']} has no image, image_path, video or frames_dir")
        samples.append(sample)
    return samples


def read_jsonl(path: Path, base_dir: Path) -> list[Sample]:
    """Our records, one JSON object per line or a JSON array of them; a record with ``conversations`` (LLaVA's
    instruction data: LLaVA-Video-178K, Infinity-MM, ...) gives its first question and answer. Text-only
    ``conversations`` records (LLaVA mixtures hold many) are skipped, and counted on stderr."""
    text = path.read_text()
    if text.lstrip().startswith("["):
        records = [(f"{path}[{i}]", i, rec) for i, rec in enumerate(parse_json(text, path))]
    else:  # a record without an id is named by its 0-based line index (blank lines counted), as label folders were
        records = [(f"{path}:{n + 1}", n, parse_json(line, path, n + 1))
                   for n, line in enumerate(text.splitlines()) if line.strip()]
    samples, text_only = [], 0
    for where, position, rec in records:
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        video = rec.get("frames_dir") or rec.get("video") or rec.get("video_path")
        images = rec.get("images") or rec.get("image") or rec.get("image_path")
        if "conversations" in rec:
            if not (video or images):
                text_only += 1
                continue
            question, answer = first_question_and_answer(rec["conversations"], where)
            options: dict[str, str] = {}
        elif "question" in rec and "answer" in rec:
            question, options = str(rec["question"]), _options_from(rec.get("options"))
            answer = _answer_letter(rec["answer"], options, where) if options else str(rec["answer"])
        else:
            raise ValueError(f"{where}: each record needs 'question' and 'answer', or LLaVA's 'conversations'")
        if not (video or images):
            raise ValueError(f"{where}: needs 'image', 'images', 'video' or 'frames_dir'")
        sample = Sample(id=str(rec.get("id", rec.get("index", position))), question=question, answer=answer,
                        options=options, base_dir=base_dir)
        if video:
            sample.video = str(video)
        else:
            sample.images = [str(x) for x in (images if isinstance(images, list) else [images])]
        samples.append(sample)
    if text_only:
        print(f"{path}: {text_only} text-only 'conversations' record(s) skipped (no image or video to label)",
              file=sys.stderr)
    return samples


def parse_json(text: str, path: Path, line: int | None = None) -> Any:
    """``json.loads`` whose error names the file and line (json's own names neither file nor, in JSONL, line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        where = f"{path}:{line if line is not None else err.lineno}"
        layout = "one JSON object per line" if line is not None else "a JSON array of objects"
        message = f"{where}: not valid JSON ({err.msg}, column {err.colno}); the file must hold {layout}"
        raise ValueError(message) from err


def first_question_and_answer(turns: Any, where: str) -> tuple[str, str]:
    """The first human turn and the model turn after it, ``<image>`` / ``<video>`` placeholders out of the question
    (the chat template places the media). Later turns may lean on the earlier ones, so they are left out."""
    roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
    question = None
    for turn in turns if isinstance(turns, list) else []:
        if not isinstance(turn, dict):
            raise ValueError(f"{where}: a 'conversations' turn is {type(turn).__name__}, not an object with 'from' and "
                             f"'value'")
        role = roles.get(str(turn.get("from", turn.get("role", ""))))
        value = str(turn.get("value", turn.get("content", ""))).strip()
        if role == "user":
            question = re.sub(r"\s*<(?:image|video)>\s*", " ", value).strip()
        elif role == "assistant" and question is not None:
            if not question or not value:
                raise ValueError(f"{where}: the first question or its answer is empty")
            return question, value
    raise ValueError(f"{where}: 'conversations' holds no human turn followed by a gpt turn "
                     f"(LLaVA format: [{{\"from\": \"human\", \"value\": ...}}, {{\"from\": \"gpt\", ...}}])")


def read_data(path: str | os.PathLike, media_root: str | os.PathLike | None = None) -> list[Sample]:
    """Samples of a TSV, JSONL or JSON file, in file order; ids must be unique. Media paths are relative to
    ``media_root`` (default: the data file's folder)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"data file {str(path)!r} is a folder: pass the data file itself (a .tsv, .jsonl or "
                                f".json of questions); a folder of images or videos goes to --media-root")
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    if media_root is not None and not Path(media_root).is_dir():
        raise FileNotFoundError(f"media root {str(media_root)!r} is not a folder")
    base_dir = path.parent if media_root is None else Path(media_root)
    reader = read_jsonl if path.suffix.lower() in (".jsonl", ".json") else read_tsv
    samples = reader(path, base_dir)
    if not samples:
        raise ValueError(f"data file {path} has no samples: it needs one question per line (JSONL), array item (JSON) "
                         f"or row (TSV); `python -m tcc_eval.compressor label --help` shows the formats")
    seen: dict[str, str] = {}
    for s in samples:
        key = file_stem(s.id)
        if key in seen:
            raise ValueError(f"{path}: sample ids {seen[key]!r} and {s.id!r} collide (ids must be unique)")
        seen[key] = s.id
    return samples


def file_stem(sample_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", sample_id)


def load_image(ref: str, base_dir: Path) -> Image.Image:
    """A file path (relative to ``base_dir``: --media-root, else the data file's folder) or a base64-encoded image."""
    if len(ref) < 4096:
        path = Path(ref) if os.path.isabs(ref) else base_dir / ref
        if path.is_file():
            return Image.open(path).convert("RGB")
    try:
        return Image.open(io.BytesIO(base64.b64decode(ref))).convert("RGB")
    except Exception as err:
        raise ValueError(f"image {ref[:60]!r} is neither an existing file nor base64 image data") from err


def load_video(ref: str, base_dir: Path, num_frames: int) -> tuple[list[Image.Image], Any]:
    """Frames of a frames folder (sorted image files) or a video file, uniformly subsampled, and the video's
    ``VideoMetadata`` (None for a folder: its frame rate is unknown)."""
    return read_video(Path(ref) if os.path.isabs(ref) else base_dir / ref, num_frames)


def messages_for(sample: Sample, num_frames: int) -> tuple[list[dict], dict[str, Any]]:
    """The sample as chat messages, and the processor options that give a video file's frames their timing
    (as ``CompressedMLLM.prepare`` does at inference)."""
    options: dict[str, Any] = {}
    if sample.video is not None:
        frames, metadata = load_video(sample.video, sample.base_dir, num_frames)
        content = [{"type": "video", "video": frames}]
        options = video_timing_options([metadata])
    else:
        content = [{"type": "image", "image": load_image(ref, sample.base_dir)} for ref in sample.images]
    return [{"role": "user", "content": content + [{"type": "text", "text": sample.prompt()}]}], options


def dataset_modality(samples: list[Sample]) -> str:
    kinds = {s.modality for s in samples}
    return kinds.pop() if len(kinds) == 1 else "mixed"


# ------------------------------------------------------------------------------------------ answers
def is_correct(response: str, sample: Sample) -> bool:
    if sample.options:
        return extract_letter(response, sample.options) == sample.answer
    return normalize(response) == normalize(sample.answer)


# ------------------------------------------------------------------------------------------ labelling
def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n); torchrun's RANK / WORLD_SIZE when not given; (0, 1) otherwise."""
    if text is None:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        return 0, 1
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise ValueError(f"--shard must be i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # torchrun's shards each write their own
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


# settings that change what a label holds: a resumed run must share them (flag: the option that sets each).
# --keep-all is not one: it changes which samples get labels, and a resume with it labels the skipped ones.
LABEL_SETTINGS = {"num_frames": "--num-frames", "max_answer_tokens": "--max-answer-tokens", "dtype": "--dtype",
                  "instruction_rows": "--instruction-rows", "pixels": "--min-pixels / --max-pixels"}


def instruction_rows_of(meta: dict[str, Any]) -> str:
    """The rows whose layer-0 attention a label folder holds (folders from before the option: the default)."""
    return meta.get("instruction_rows", DEFAULT_INSTRUCTION_ROWS)


RELABEL_HINT = "delete it and rerun `python -m tcc_eval.compressor label` with the same --out to redo it"
META_HINT = ("delete it and rerun `python -m tcc_eval.compressor label` with the same --out, model, data and settings "
             "to rewrite it (the sample files are kept), or label into a new --out")


def read_meta_file(path: Path) -> dict[str, Any]:
    """A label folder's meta.json; a damaged one is named (json's own error names no file)."""
    try:
        meta = json.loads(path.read_text())
    except ValueError as err:  # bad JSON, or bytes that are no text
        raise ValueError(f"{path} is not valid JSON ({err}): {META_HINT}") from err
    if not isinstance(meta, dict) or not {"model", "data"} <= meta.keys():
        raise ValueError(f"{path} is not a label folder's meta.json (it lacks 'model' or 'data'): {META_HINT}")
    return meta


def read_label_file(path: Path) -> dict[str, Any]:
    """One sample's label record; a truncated file (a copy cut short, a full disk) is named with its fix instead of
    torch's zip error."""
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE_ERRORS as err:
        raise ValueError(f"label file {path} is unreadable (truncated, or not written by `label`): "
                         f"{RELABEL_HINT}") from err
    if not isinstance(record, dict) or not {"id", "a0", "relevance", "groups"} <= record.keys():
        raise ValueError(f"label file {path} is not a label record (written by `label`): {RELABEL_HINT}")
    return record


def prepare_meta(out: Path, meta: dict[str, Any]) -> None:
    """Write DIR/meta.json, or check that an existing one describes the same model and data."""
    path = out / "meta.json"
    if path.is_file():
        old = read_meta_file(path)
        old["instruction_rows"] = instruction_rows_of(old)
        old.setdefault("pixels", {})  # folders from before the options: the checkpoint's own limits
        if old.get("model") != meta["model"] or old.get("data") != meta["data"]:
            raise ValueError(
                f"{out} already holds labels of {old.get('model', {}).get('family')} on {old.get('data')}; "
                f"this run is {meta['model']['family']} on {meta['data']}: use another --out"
            )
        changed = [f"{flag} {old[key]} (this run: {meta[key]})" for key, flag in LABEL_SETTINGS.items()
                   if key in old and old[key] != meta[key] and (key != "num_frames" or meta["modality"] != "image")]
        if changed:
            raise ValueError(
                f"{out} holds labels made with {', '.join(changed)}: resumed samples would be labelled otherwise. "
                f"Resume with the same settings, or use another --out"
            )
        old_rules = old.get("relevance_rules", [METHOD_RULE])
        if old_rules != meta["relevance_rules"]:
            same = f"with --ablation-rules {' '.join(old_rules[1:])}" if old_rules[1:] else "without --ablation-rules"
            raise ValueError(
                f"{out} holds labels under the relevance rules {', '.join(old_rules)}; this run asks for "
                f"{', '.join(meta['relevance_rules'])}, so resumed samples would lack some: resume {same}, or use "
                "another --out"
            )
        return
    write_json(path, meta)


def label_sample(model: torch.nn.Module, processor: Any, sample: Sample, args: argparse.Namespace,
                 meta: dict) -> dict[str, Any]:
    """Answer one sample; explain the answer when it is right (or --keep-all). Returns the record."""
    messages, video_options = messages_for(sample, args.num_frames)
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt", **video_options)
    inputs = on_model_device(model, {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)})
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    new_tokens = out[0, inputs["input_ids"].shape[1]:]
    ids = answer_tokens(model, new_tokens)
    response = processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
    record: dict[str, Any] = {"id": sample.id, "prediction": response, "answer": sample.answer,
                              "correct": is_correct(response, sample), "media": sample.media_digest()}
    if not (record["correct"] or args.keep_all):
        return record
    explanation = explain_inputs(model, inputs, ids if ids.numel() else new_tokens[:1], args.max_answer_tokens,
                                 rules=meta["relevance_rules"], instruction_rows=meta["instruction_rows"])
    record.update(
        a0=explanation.a0.float().cpu(),
        relevance=explanation.relevance.float().cpu(),
        relevance_by_rule={rule: relevance.float() for rule, relevance in explanation.by_rule.items()
                           if rule != METHOD_RULE},
        groups=explanation.groups.cpu(),
        answer_ids=explanation.answer_ids.cpu(),
        n_visual=int(explanation.relevance.numel()),
        # as inference picks the compressor: VILA scores a prompt of several images as a video
        modality=adapter_for(model).modality(inputs["input_ids"]),
        model=meta["model"],
    )
    return record


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..api import default_dtype, load_hf_model
    from . import model_meta

    shard, n_shards = parse_shard(args.shard)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; --out must be a folder: a new one to create, or a label "
                                 f"folder to resume")
    samples = read_data(args.data, args.media_root)
    if args.limit is not None:
        samples = samples[: args.limit]
    device = rank_device(args.device)
    if device.type == "cuda" and device.index is not None:  # an explicit --device cuda:N too
        torch.cuda.set_device(device)
    # sdpa, as at inference, so the vision tower's features (and so a0) are what the compressor will be fed; the
    # oracle switches the LLM to eager for its own pass
    pixels = {k: v for k, v in (("min_pixels", args.min_pixels), ("max_pixels", args.max_pixels)) if v is not None}
    model, processor = load_hf_model(args.model, device, default_dtype(device, args.dtype), processor_options=pixels)
    adapter_for(model).check_full_attention()  # its compressor could never be used: refuse before hours of labels
    meta = {
        "format": "tcc-labels", "version": 1, "model": model_meta(model), "model_path": str(args.model),
        "data": str(Path(args.data).resolve()), "modality": dataset_modality(samples),
        "max_answer_tokens": args.max_answer_tokens, "keep_all": args.keep_all, "num_frames": args.num_frames,
        "relevance_rules": label_rules(args.ablation_rules), "instruction_rows": args.instruction_rows,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""), "pixels": pixels,
    }
    (out / "samples").mkdir(parents=True, exist_ok=True)  # only now: a run that fails to start leaves no folder
    (out / "skipped").mkdir(exist_ok=True)
    prepare_meta(out, meta)
    mine = samples[shard::n_shards]
    stats: dict[str, Any] = {"shard": f"{shard}/{n_shards}", "total": len(mine), "kept": 0, "skipped_wrong": 0,
                             "failed": 0, "already_done": 0, "free_form": 0, "free_form_wrong": 0, "errors": []}
    start = time.time()
    bar = tqdm(mine, desc=f"label {shard}/{n_shards}", unit="sample", dynamic_ncols=True)
    for sample in bar:
        target = out / "samples" / f"{file_stem(sample.id)}.pt"
        skipped = out / "skipped" / f"{file_stem(sample.id)}.json"
        if target.is_file():
            try:
                read_label_file(target)
            except ValueError:  # cut short after the run wrote it (a copy, a full disk): as good as absent
                tqdm.write(f"warning: {target} is unreadable (truncated or corrupt): deleted, to label sample "
                           f"{sample.id!r} again", file=sys.stderr)
                target.unlink()
        if target.is_file() or (skipped.is_file() and not args.keep_all):
            stats["already_done"] += 1
            continue
        try:
            record = label_sample(model, processor, sample, args, meta)
        except Exception as err:  # noqa: BLE001  one bad sample (corrupt image, OOM on a huge video) must not stop the run
            stats["failed"] += 1
            stats["errors"].append({"id": sample.id, "error": f"{type(err).__name__}: {err}"[:500]})
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        if not sample.options:
            stats["free_form"] += 1
            stats["free_form_wrong"] += not record["correct"]
        if "relevance" in record:
            tmp = target.with_name(target.name + ".tmp")
            torch.save(record, tmp)
            os.replace(tmp, target)
            stats["kept"] += 1
        else:
            write_json(skipped, record)
            stats["skipped_wrong"] += 1
        bar.set_postfix(kept=stats["kept"], wrong=stats["skipped_wrong"], failed=stats["failed"])
    bar.close()
    stats["seconds"] = round(time.time() - start, 2)
    write_json(out / f"label_stats_{shard}of{n_shards}.json", stats)
    print(
        f"shard {shard}/{n_shards}: {stats['kept']} kept, {stats['skipped_wrong']} skipped (wrong answer), "
        f"{stats['failed']} failed, {stats['already_done']} already done; labels in {out}"
    )
    for error in stats["errors"][:5]:
        print(f"  failed {error['id']}: {error['error']}")
    if not args.keep_all and stats["free_form_wrong"] * 2 > stats["free_form"]:  # most of them: the rule, not the model
        print(f"note: {stats['free_form_wrong']} of {stats['free_form']} free-form answers were skipped as wrong. "
              f"A free-form answer counts as right only on a normalised exact match, within --max-new-tokens "
              f"{args.max_new_tokens} generated tokens, so long or paraphrased references rarely match: label such "
              f"data with --keep-all, or raise --max-new-tokens", file=sys.stderr)
    if stats["failed"] and not stats["kept"] + stats["skipped_wrong"] + stats["already_done"]:
        print(f"error: every sample failed (the reasons above; all of them in "
              f"{out / f'label_stats_{shard}of{n_shards}.json'})", file=sys.stderr)
        return 1
    return 0


def label_rules(ablation_rules: list[str] | None) -> list[str]:
    """The method's rule first (every label set has it: ``relevance``), then the ablation rules asked for."""
    return [METHOD_RULE, *(r for r in dict.fromkeys(ablation_rules or []) if r != METHOD_RULE)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="checkpoint folder or hub id of the MLLM (Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision, VILA1.5)")
    parser.add_argument("--data", required=True, help="VLMEvalKit-style MCQ .tsv, our .jsonl, or LLaVA-style "
                        "instruction data (.json / .jsonl records with 'conversations')")
    parser.add_argument("--media-root", default=None, help="folder the data's image and video paths are relative to "
                        "(default: the data file's folder)")
    parser.add_argument("--out", required=True, help="label directory (created; reused to resume)")
    parser.add_argument("--shard", default=None, help="i/n: label every n-th sample starting at i "
                        "(default: torchrun's RANK/WORLD_SIZE, else 0/1)")
    parser.add_argument("--keep-all", action="store_true", help="keep wrongly answered samples too")
    parser.add_argument("--max-answer-tokens", type=positive_int, default=16,
                        help="explain at most this many answer tokens (one backward pass each; default 16)")
    parser.add_argument("--ablation-rules", nargs="+", default=[], choices=RELEVANCE_RULES, metavar="RULE",
                        help="also store the relevance under these rules, from the same backward pass, for "
                        "`train --relevance-rule`: attention (plain head-mean attention rollout, no gradient: the "
                        "paper's ablation), abs, signed. The method's rule (clamp) is always stored")
    parser.add_argument("--instruction-rows", default=DEFAULT_INSTRUCTION_ROWS, choices=INSTRUCTION_ROWS,
                        help="which text rows' layer-0 attention is stored as the compressor's input (default "
                        f"{DEFAULT_INSTRUCTION_ROWS}: every token after the last image or video token; "
                        "after_first_visual: also text between images; last: the last token alone). Inference must "
                        "use the same rule (instruction_rows= at evaluation)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=16,
                        help="tokens generated to judge the answer (default 16)")
    parser.add_argument("--num-frames", type=positive_int, default=8, help="frames sampled per video (default 8)")
    parser.add_argument("--min-pixels", type=positive_int, default=None,
                        help="Qwen2-VL / Qwen2.5-VL: smallest image or frame area the processor resizes to (default: "
                        "the checkpoint's). Label at the resolution you evaluate at: VLMEvalKit's Qwen2VL models use "
                        "1003520 (1280*28*28)")
    parser.add_argument("--max-pixels", type=positive_int, default=None,
                        help="Qwen2-VL / Qwen2.5-VL: largest image or frame area (default: the checkpoint's; "
                        "VLMEvalKit's Qwen2VL models: 12845056 = 16384*28*28)")
    parser.add_argument("--limit", type=positive_int, default=None, help="use only the first N samples of the data")
    parser.add_argument("--device", default=None, type=device_arg, help="cuda, cuda:1, cpu (default: this torchrun "
                        "rank's own GPU, or cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=DTYPES,
                        help="model dtype (default bf16/fp16 on CUDA, fp32 on CPU)")
