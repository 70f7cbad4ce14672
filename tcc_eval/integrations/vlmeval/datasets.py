"""The synthetic benchmarks as VLMEvalKit datasets, generated under $LMUData on first use.

- ``TCCSynth_IMG``: a custom MCQ TSV (``$LMUData/TCCSynth_IMG.tsv``, VLMEvalKit's own MCQ prompt and
  exact-matching scoring -> ``<M>_TCCSynth_IMG_acc.csv``). Images are dumped as lossless PNGs, not
  VLMEvalKit's default JPEG, so the pixels match the ground-truth regions exactly.
- ``TCCSynth_VID`` (8 frames; also ``TCCSynth_VID_4frame``): a ``VideoBaseDataset`` over
  ``$LMUData/TCCSynth_VID/`` (mp4 + lossless frame PNGs). Video LLMs get the mp4 path, like MVBench /
  Video-MME give it; others get ``nframe`` frames as images. Scored like the image set.

Content: the default demo benchmark (``tcc_eval.demo.benchmark_config``), ``TCC_SYNTH_N`` samples per set
(default 200 images / 100 videos), seed 0, split "test". Ground truth for region metrics sits beside
the data (``*_gt.json``); ``*meta.json`` records the settings, and a set generated with other settings
is refused rather than silently reused.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import string
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from vlmeval.dataset.image_mcq import CustomMCQDataset, ImageMCQDataset
from vlmeval.dataset.video_base import VideoBaseDataset
from vlmeval.smp import LMUDataRoot

from ...options import positive_int_env

IMAGE_NAME = "TCCSynth_IMG"
VIDEO_NAME = "TCCSynth_VID"
SIZE_ENV = "TCC_SYNTH_N"
DEFAULT_SIZE = {"image": 200, "video": 100}
SEED = 0
SPLIT = "test"


# --- generation on first use ---------------------------------------------------------------------
def requested_size(kind: str) -> int:
    return positive_int_env(SIZE_ENV, DEFAULT_SIZE[kind])


def synth_config(kind: str) -> dict[str, Any]:
    """Generator options of the demo benchmark (what the demo models are trained on)."""
    from ...demo import OPTION_ORDER, benchmark_config

    config = {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in benchmark_config(kind).items()}
    return {**config, "option_order": OPTION_ORDER}


def demo_samples(kind: str, n: int) -> list:
    """The demo benchmark's samples (its question types and option order), test split."""
    from ...demo import benchmark

    return benchmark.samples(kind, n, SEED, SPLIT)


def _meta(kind: str, n: int) -> dict[str, Any]:
    from ... import synth

    meta = {"kind": kind, "n": n, "seed": SEED, "split": SPLIT, "config": synth_config(kind)}
    return {**meta, "video_codec": synth.VIDEO_CODEC, "video_fps": synth.VIDEO_FPS} if kind == "video" else meta


def _check_meta(meta_path: Path, kind: str, data: str) -> None:
    """Refuse to silently reuse a set generated with other settings (or another requested size)."""
    meta = json.loads(meta_path.read_text())
    expected = _meta(kind, requested_size(kind))
    wrong = [k for k in expected if meta.get(k) != expected[k] and (k != "n" or os.environ.get(SIZE_ENV))]
    if wrong:
        raise SetMismatch(data, meta_path, ", ".join(f"{k}={meta.get(k)}" for k in wrong),
                          ", ".join(f"{k}={expected[k]}" for k in wrong))


class SetMismatch(ValueError):
    """A synthetic set on disk generated with other settings (or another requested size) than this run's."""

    def __init__(self, data: str, meta_path: Path, was: str, now: str):
        self.data, self.was, self.now = data, was, now
        super().__init__(f"{data} was generated with other settings ({was}; now {now}): delete it (and "
                         f"{meta_path.name}) to regenerate, or point LMUData at another folder")


def make_lmudata() -> None:
    """Create $LMUData when it is set but missing: VLMEvalKit's LMUDataRoot falls back to ~/LMUData, without a
    word, for a folder that does not exist, so the sets would be written, and later found, where nobody asked."""
    wanted = os.environ.get("LMUData")
    if wanted and not os.path.exists(wanted):  # LMUDataRoot's own test
        os.makedirs(wanted, exist_ok=True)


def ensure_image_set(root: str | os.PathLike | None = None) -> Path:
    """``$LMUData/TCCSynth_IMG.tsv`` (+ ``_gt.json``, ``_meta.json``), generated if absent."""
    from ... import synth

    root = Path(root or LMUDataRoot())
    tsv, meta = root / f"{IMAGE_NAME}.tsv", root / f"{IMAGE_NAME}_meta.json"
    if tsv.exists() and meta.exists():
        _check_meta(meta, "image", str(tsv))
        return tsv
    n = requested_size("image")
    samples = demo_samples("image", n)
    synth.save_ground_truth(samples, root / f"{IMAGE_NAME}_gt.json")
    tmp = root / f"{IMAGE_NAME}.tsv.tmp{os.getpid()}"
    synth.export_vlmeval_tsv(samples, tmp)
    meta.write_text(json.dumps(_meta("image", n)))
    os.replace(tmp, tsv)  # atomic: a concurrent reader never sees half a file
    return tsv


def ensure_video_set(root: str | os.PathLike | None = None) -> Path:
    """``$LMUData/TCCSynth_VID/`` with ``TCCSynth_VID.tsv``, videos and ground truth, generated if absent."""
    from ... import synth

    folder = Path(root or LMUDataRoot()) / VIDEO_NAME
    meta = folder / "meta.json"
    if meta.exists():
        _check_meta(meta, "video", str(folder))
        return folder
    n = requested_size("video")
    samples = demo_samples("video", n)
    tmp = folder.with_name(f"{VIDEO_NAME}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    synth.export_vlmeval_video(samples, tmp, name=VIDEO_NAME)
    synth.save_ground_truth(samples, tmp / f"{VIDEO_NAME}_gt.json")
    (tmp / "meta.json").write_text(json.dumps(_meta("video", n)))
    try:
        os.rename(tmp, folder)  # atomic; fails if another process finished first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not meta.exists():
            raise
    return folder


def mcq_prompt(line: Any) -> str:
    """The text ImageMCQDataset.build_prompt writes for a row without hint (the demo models' prompt)."""
    options = {c: line[c] for c in string.ascii_uppercase if c in line and not pd.isna(line[c])}
    text = f"Question: {line['question']}\n"
    if options:
        text += "Options:\n" + "".join(f"{k}. {v}\n" for k, v in options.items())
        text += "Please select the correct answer from the options above. \n"
    return text


# --- datasets ------------------------------------------------------------------------------------
class TCCSynthImage(CustomMCQDataset):
    """TCCSynth_IMG: VLMEvalKit's custom MCQ flow over a TSV generated on first use."""

    DATASET_URL: ClassVar[dict[str, str]] = {}  # nothing to download or md5-check
    DATASET_MD5: ClassVar[dict[str, str]] = {}

    def __init__(self, dataset: str = IMAGE_NAME, **kwargs: Any):
        make_lmudata()  # before VLMEvalKit's __init__ reads LMUDataRoot
        super().__init__(dataset=dataset, **kwargs)

    @classmethod
    def supported_datasets(cls) -> list[str]:
        return [IMAGE_NAME]

    def load_data(self, dataset: str) -> pd.DataFrame:
        ensure_image_set()
        return super().load_data(dataset)

    def dump_image(self, line: pd.Series) -> str:
        """Write the row's PNG bytes as they are (VLMEvalKit's default re-encodes to JPEG). A file already there is
        kept only if it holds those bytes: a regenerated set reuses the indices, and the old picture would be
        shown with the new question."""
        os.makedirs(self.img_root, exist_ok=True)
        path = Path(self.img_root, f"{line['index']}.png")
        image = base64.b64decode(line["image"])
        if not path.is_file() or path.read_bytes() != image:
            tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
            tmp.write_bytes(image)
            os.replace(tmp, path)
        return str(path)


class TCCSynthVideo(VideoBaseDataset):
    """TCCSynth_VID: 4-way MCQ over short synthetic clips with known relevant frames and regions."""

    TYPE = "Video-MCQ"
    MODALITY = "VIDEO"

    def __init__(self, dataset: str = VIDEO_NAME, nframe: int | None = None, fps: float = -1):
        make_lmudata()  # before VLMEvalKit's __init__ reads LMUDataRoot
        # 8 frames unless fps is given: VLMEvalKit refuses both at once, and a config giving fps alone means fps
        super().__init__(dataset=dataset, nframe=(8 if fps <= 0 else 0) if nframe is None else nframe, fps=fps)

    @classmethod
    def supported_datasets(cls) -> list[str]:
        return [VIDEO_NAME]

    def prepare_dataset(self, dataset: str) -> dict[str, str]:
        folder = ensure_video_set()
        return {"root": str(folder), "data_file": str(folder / f"{VIDEO_NAME}.tsv")}

    def frame_files(self, line: pd.Series) -> list[str]:
        """``nframe`` frames spread uniformly over the clip (or every frame at ``fps``), as lossless PNGs."""
        from ... import synth

        frames = sorted((Path(self.data_root) / line["frames_dir"]).glob("*.png"))
        if self.fps > 0:
            picked = frames[:: max(1, round(synth.VIDEO_FPS / self.fps))]
        else:
            picked = [frames[i] for i in np.linspace(0, len(frames) - 1, self.nframe).round().astype(int)]
        return [str(p) for p in picked]

    def build_prompt(self, line: pd.Series | int, video_llm: bool) -> list[dict[str, str]]:
        if isinstance(line, (int, np.integer)):
            line = self.data.iloc[int(line)]
        if video_llm:
            media = [{"type": "video", "value": os.path.join(self.data_root, line["video"])}]
        else:
            media = [{"type": "image", "value": p} for p in self.frame_files(line)]
        return media + [{"type": "text", "value": mcq_prompt(line)}]

    # Scored exactly like the image set: VLMEvalKit's MCQ exact matching -> <M>_<D>_acc.csv.
    evaluate = ImageMCQDataset.evaluate
    evaluate_heuristic = ImageMCQDataset.evaluate_heuristic


# name -> constructor, merged into vlmeval's supported_video_datasets
VIDEO_PRESETS = {
    VIDEO_NAME: partial(TCCSynthVideo, dataset=VIDEO_NAME, nframe=8),
    f"{VIDEO_NAME}_4frame": partial(TCCSynthVideo, dataset=VIDEO_NAME, nframe=4),
}

# Importing this module first (before vlmeval.config) runs the start-up hook from inside the import above;
# the hook then leaves the dataset tables to this line.
from .register import finish_deferred_registration  # noqa: E402

finish_deferred_registration()
