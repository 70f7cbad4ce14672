"""TCCSynth_IMG / TCCSynth_VID as lmms-eval tasks ``tccsynth_img`` and ``tccsynth_vid``.

lmms-eval loads each task's one-row spec file (``*.spec.json``: kind, n, seed, split) as its dataset;
``process_docs`` then swaps in the real samples, generating them with ``tcc_eval.synth`` on first use
into a cache folder, so nothing has to be downloaded and the YAMLs stay declarative:

    $TCC_LMMS_DATA (default ~/.cache/tcc_eval/lmms_tasks)
        / <NAME>_<split>_n<N>_seed<S>_<variant>_<order>_<codec><fps>fps/<NAME>.jsonl

``TCC_LMMS_SYNTH_N`` overrides N (fast tests). Scoring is exact match of the option letter a response picks
(``tcc_eval.answers``, the labeller's rule).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tcc_eval.answers import extract_letter
from tcc_eval.options import positive_int_env

if TYPE_CHECKING:
    import datasets

DATA_ENV = "TCC_LMMS_DATA"
SIZE_ENV = "TCC_LMMS_SYNTH_N"
NAMES = {"image": "TCCSynth_IMG", "video": "TCCSynth_VID"}
LETTERS = "ABCDEFGH"


def data_root() -> Path:
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".cache" / "tcc_eval" / "lmms_tasks").expanduser()


def sample_count(n: int) -> int:
    """The spec's size unless ``TCC_LMMS_SYNTH_N`` overrides it."""
    return positive_int_env(SIZE_ENV, int(n))


def ensure_data(kind: str, n: int, seed: int, split: str = "test") -> Path:
    """Path of the task's JSONL, generating the samples first if this (kind, n, seed, split) is new.

    Writes into a temporary folder renamed into place, so concurrent ranks (accelerate) never read a
    half-written set: the first rename wins, the others discard their copy.
    """
    from tcc_eval import synth
    from tcc_eval.demo import DEFAULT_VARIANT, OPTION_ORDER, benchmark

    name = NAMES[kind]
    # the benchmark's variant and video encoding are in the key: a set cached with other ones is never reused
    key = f"{split}_n{n}_seed{seed}_{DEFAULT_VARIANT}_{OPTION_ORDER}_{synth.VIDEO_CODEC.lower()}{synth.VIDEO_FPS:g}fps"
    folder = data_root() / f"{name}_{key}"
    jsonl = folder / f"{name}.jsonl"
    if jsonl.exists():
        return jsonl
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        written = synth.export_lmms(benchmark.samples(kind, n, seed, split), tmp, kind, name=name)
        if kind == "video":
            _require_mp4(written)
        try:
            tmp.rename(folder)
        except OSError:
            if not jsonl.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return jsonl


def _require_mp4(jsonl: Path) -> None:
    """lmms-eval's video wrappers only accept video files (qwen2_vl silently drops anything else)."""
    first = json.loads(jsonl.read_text().splitlines()[0])
    if not first["video_path"].endswith(".mp4"):
        raise RuntimeError(
            "tccsynth_vid needs mp4 videos but OpenCV could not write one; install opencv-python (cv2) "
            "with FFmpeg video I/O (its FFV1 encoder) and rerun"
        )


def load_samples(kind: str, n: int, seed: int, split: str = "test") -> list[dict[str, Any]]:
    """The task's docs with absolute media paths."""
    jsonl = ensure_data(kind, n, seed, split)
    docs = []
    for line in jsonl.read_text().splitlines():
        doc = json.loads(line)
        for key in ("image_path", "video_path", "frames_dir"):
            if key in doc:
                doc[key] = str(jsonl.parent / doc[key])
        docs.append(doc)
    return docs


# ------------------------------------------------------------------------------------ lmms-eval hooks
def process_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """Replace the one-row spec dataset by the generated samples."""
    import datasets

    if len(dataset) != 1:
        raise ValueError(f"a tccsynth spec file must hold exactly one row (kind, n, seed, split), got {len(dataset)}")
    spec = dataset[0]
    n = sample_count(spec["n"])
    return datasets.Dataset.from_list(load_samples(spec["kind"], n, int(spec["seed"]), spec.get("split") or "test"))


def doc_to_visual(doc: dict) -> list:
    """A PIL image, or the mp4 path (what lmms-eval's video wrappers expect)."""
    if doc.get("image_path"):
        from PIL import Image

        with Image.open(doc["image_path"]) as image:
            return [image.convert("RGB")]
    return [doc["video_path"]]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    options = "".join(f"{letter}. {option}\n" for letter, option in zip(LETTERS, doc["options"]))
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}\n{options}{kwargs.get('post_prompt', '')}"


def process_results(doc: dict, results: list) -> dict[str, float]:
    letter = extract_letter(str(results[0]), dict(zip(LETTERS, doc["options"])))
    return {"exact_match": float(letter == doc["answer"])}
