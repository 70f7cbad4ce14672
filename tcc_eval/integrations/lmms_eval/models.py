"""lmms-eval model classes: the upstream wrappers with their HF model swapped for a pruned one.

Prompt building, media loading, batching and decoding stay upstream's (``qwen2_vl``, ``qwen2_5_vl``,
``llava_hf``; the last two in their chat flavour by default and their simple one with ``--force_simple``, as
upstream resolves them), so a ``method=none`` run sees exactly the inputs of the upstream baseline. Upstream
``vila`` imports the NVlabs VILA repository at module load, so ``vila_tcc`` builds on ``VilaBaseline``, its
generation path re-stated on ``tcc_eval.vila``. Our model args are popped before the upstream constructor runs
(it asserts that no unknown kwargs are left):

    method=none|random|a0|tcc|oracle|divprune|uniform|pool|visionzip|fastv|dart|pdrop
                                             required (none = unpruned, through the same code path)
    ratio=0.5                                fraction of visual tokens kept, required unless method=none
                                             (keep_ratio= is accepted as an alias)
    compressor=PATH                          trained compressor, for method=tcc; left out: the registry's
                                             $TCC_COMPRESSOR_DIR/<Base>_<modality>.pt for the checkpoint
    budget=global|...  seed=0                selection options of the input-stage methods
    positions=original|renumber              their kept tokens' position ids (renumber: 1-D ids only)
    fastv_k=2  match=avg_retention           FastV and DART options (layer K, what ratio means);
                                             PyramidDrop takes match= (kept: ratio is its per-stage ratio)
    pdrop_layers=2/14/21                     PyramidDrop's stage layers (its layer_list; default L/4, L/2, 3L/4)
    max_answer_tokens=16                     oracle option
    instruction_rows=after_last_visual       a0 and tcc: whose layer-0 attention scores the visual tokens
                                             (after_first_visual, last; a compressor's must match its labels')
    contextual_share=0.15625                 VisionZip's share of contextual tokens (0: dominant tokens only)
    efficiency_dir=DIR                       where the per-sample records go (see efficiency.py)
    dtype=float32                            qwen2_vl_tcc, qwen2_5_vl_tcc: cast after loading; vila_tcc: load dtype
                                             (llava_hf has its own)

``pretrained=`` is checked before anything loads: a local path must be a checkpoint folder, and a folder (or a hub
id whose config.json is in the local cache) of another family names the --model that takes it; upstream would fail
deep inside (or, qwen2_vl on a LLaVA-OneVision folder, load random weights and fail at the first sample).

The device defaults to CUDA when available, else CPU (upstream assumes CUDA); under ``accelerate
launch`` the upstream data-parallel logic places one model per process, as for the upstream wrappers.

lmms-eval has a model registry, so these are subclasses; what they replace on the upstream instance, and why:
``self._model`` becomes the pruned model (``_install_pruning``), ``self.task_dict`` is read through ``_NotingDocs``
for one ``generate_until`` call (records name their sample), and llava_hf's ``self._image_processor`` is wrapped in
``UpstreamProcessorFixes`` (two transformers 5 failures of upstream's calls).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.model import lmms
from lmms_eval.models.chat.llava_hf import LlavaHf as UpstreamLlavaHfChat
from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL as UpstreamQwen25VLChat
from lmms_eval.models.simple.llava_hf import LlavaHf as UpstreamLlavaHf
from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL as UpstreamQwen25VL
from lmms_eval.models.simple.qwen2_vl import Qwen2_VL as UpstreamQwen2VL
from loguru import logger

from model_registry import (
    MODALITIES,
    available_compressors,
    local_folder,
    registered_base,
    resolve_compressor,
)
from tcc_eval.adapters import ADAPTERS
from tcc_eval.api import default_device, default_dtype, names_a_local_path, wrap_model
from tcc_eval.compressor import check_compressor_argument
from tcc_eval.core import check_keep_ratio
from tcc_eval.media import open_video
from tcc_eval.methods import check_method
from tcc_eval.options import OWN_OPTIONS, check_option_values

from .efficiency import EfficiencyLog, RecordingModel, check_records_folder, resolve_efficiency_dir

# budget=, positions= and seed= are taken for every method (the ones that do not read them ignore them)
METHOD_OPTIONS = {method: names for method, names in OWN_OPTIONS.items() if method != "random"}
DEFAULT_VILA = "Efficient-Large-Model/Llama-3-VILA1.5-8b"


@dataclasses.dataclass(frozen=True)
class TCCSettings:
    """Our model args, validated before any weights load."""

    method: str
    keep_ratio: float
    compressor: str | dict[str, Any] | None = None  # a path, or {modality: compressor} from the registry
    budget: str = "global"
    seed: int = 0
    positions: str = "original"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    efficiency_dir: str | None = None

    @classmethod
    def pop_from(cls, kwargs: dict[str, Any], model_id: str) -> TCCSettings:
        if "method" not in kwargs:
            raise ValueError(
                f"{model_id} needs method=...: e.g. method=tcc,ratio=0.5,compressor=PATH, method=random,ratio=0.5, "
                f"or method=none for the unpruned baseline"
            )
        method = check_method(str(kwargs.pop("method")))
        if "ratio" in kwargs and "keep_ratio" in kwargs:
            raise ValueError(f"ratio={kwargs['ratio']} and keep_ratio={kwargs['keep_ratio']} name one setting (the "
                             f"kept fraction of visual tokens): give one of them")
        ratio = kwargs.pop("ratio", kwargs.pop("keep_ratio", None))
        try:
            ratio = None if ratio is None else float(ratio)
        except ValueError:
            raise ValueError(f"ratio={ratio}: expected the kept fraction of visual tokens, e.g. ratio=0.25") from None
        if method == "none":
            if ratio is not None and float(ratio) != 1.0:
                raise ValueError(f"method=none keeps every visual token; drop ratio={ratio} or pick a pruning method")
            keep_ratio = 1.0
        elif ratio is None:
            raise ValueError(f"method={method} needs ratio=R, the fraction of visual tokens kept (e.g. ratio=0.25)")
        else:
            keep_ratio = check_keep_ratio(ratio)
        options = {}
        for name in dict.fromkeys(sum(METHOD_OPTIONS.values(), ())):
            if name in kwargs:
                if name not in METHOD_OPTIONS.get(method, ()):
                    raise ValueError(f"{name}= is an option of method {_owner(name)}, not of method={method}")
                options[name] = kwargs.pop(name)
        compressor = kwargs.pop("compressor", None)
        if compressor is not None and method != "tcc":
            raise ValueError(f"compressor= is only used by method=tcc, not method={method}")
        if compressor is not None:
            check_compressor_argument(str(compressor))
        positions = str(kwargs.pop("positions", "original"))
        shared = {k: kwargs[k] for k in ("budget", "seed") if k in kwargs}
        check_option_values({**options, **shared, "positions": positions})
        return cls(
            method=method,
            keep_ratio=keep_ratio,
            compressor=None if compressor is None else str(compressor),
            budget=str(kwargs.pop("budget", "global")),
            seed=int(kwargs.pop("seed", 0)),
            positions=positions,
            options=options,
            efficiency_dir=kwargs.pop("efficiency_dir", None),
        )

    def with_registry_compressors(self, checkpoint: str) -> TCCSettings:
        """No compressor= given: the registry's files for ``checkpoint``, as VLMEvalKit would use them."""
        base = registered_base(checkpoint)
        found = available_compressors(base)
        for modality in MODALITIES:
            if modality not in found:
                try:
                    resolve_compressor(base, modality)
                except FileNotFoundError as err:
                    raise FileNotFoundError(f"{err}. {_one_modality_only(modality, next(iter(found.values())))}") \
                        from None
        return dataclasses.replace(self, compressor=found)


def _one_modality_only(missing: str, have: Any) -> str:
    return (f"Without one, lmms-eval would stop at the first {missing} sample and write no results for any task. "
            f"To score {missing} inputs with the other modality's compressor instead, pass compressor={have}")


def check_compressor_folder(folder: Path, family: str) -> None:
    """Both modalities' files, before the weights load: without one, lmms-eval stops at that modality's first
    sample and keeps no task's results."""
    files = {m: folder / f"{family}_{m}.pt" for m in MODALITIES}
    have = [path for path in files.values() if path.is_file()]
    for modality, path in files.items():
        if not path.is_file():
            if not have:
                raise FileNotFoundError(f"{folder} holds no {family} compressors ({path.name} and the other "
                                        f"modality's); pass compressor=PATH to a checkpoint, or train them")
            raise FileNotFoundError(f"{folder} holds no {modality} compressor ({path.name}). "
                                    f"{_one_modality_only(modality, have[0])}")


def _owner(option: str) -> str:
    return " / ".join(method for method, names in METHOD_OPTIONS.items() if option in names)


def check_checkpoint(pretrained: str, model_id: str, family: str) -> None:
    """Refuse a missing local path or another family's checkpoint before upstream loads anything: upstream fails
    deep inside (a hub-id error for a path, a KeyError or a shape mismatch for a family) or loads random weights."""
    folder = _checkpoint_folder(pretrained)
    model_type = None if folder is None else _model_type(folder)
    other = ADAPTERS[model_type].family if model_type in ADAPTERS else family  # unknown types: left to upstream
    if other != family:
        raise ValueError(f"pretrained={pretrained} is a {model_type} checkpoint; use --model {WRAPPERS[other]} "
                         f"({model_id} takes {family} checkpoints)")


def _checkpoint_folder(pretrained: str) -> Path | None:
    """The local folder ``pretrained`` names: the folder itself, or a hub id's cached snapshot holding config.json
    (read without the network); None for a hub id not cached, which upstream resolves."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    path = Path(pretrained).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        raise NotADirectoryError(f"pretrained={pretrained} is a file; pass its folder ({path.resolve().parent})")
    if names_a_local_path(pretrained):
        raise FileNotFoundError(f"pretrained={pretrained}: no such checkpoint folder (a hub id reads ORG/NAME)")
    try:
        cached = try_to_load_from_cache(pretrained, "config.json")
    except HFValidationError:  # not a hub id either: upstream's own error names it
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def _model_type(folder: Path) -> str | None:
    """The checkpoint's model type as ``tcc_eval.api.model_type_of`` tells it (VILA1.5: an llm/ folder); None
    when config.json is missing or unreadable, which upstream's loader reports."""
    if (folder / "llm").is_dir():
        return "vila"
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get("model_type") if isinstance(config, dict) else None


class TCCWrapperMixin:
    """Shared by every wrapper: pop our args, build the parent, swap its model, log efficiency."""

    model_id: str  # the --model name, recorded in the efficiency records
    family: str  # the adapter family of the checkpoints it loads: compressor folders hold <family>_<modality>.pt

    def __init__(self, **kwargs: Any) -> None:
        settings = TCCSettings.pop_from(kwargs, self.model_id)
        checkpoint = os.fspath(kwargs.get("pretrained") or self._upstream_default("pretrained"))
        check_checkpoint(checkpoint, self.model_id, self.family)
        if settings.method == "tcc" and settings.compressor is None:
            settings = settings.with_registry_compressors(checkpoint)
        elif settings.method == "tcc" and Path(settings.compressor).is_dir():
            check_compressor_folder(Path(settings.compressor), self.family)
        check_records_folder(resolve_efficiency_dir(settings.efficiency_dir, dict(os.environ)))  # before loading
        kwargs.setdefault("device", str(default_device()))
        self._set_parent_defaults(kwargs)
        super().__init__(**kwargs)
        self._pending_docs: list[tuple[str, Any]] = []
        self._recording = True  # off while lmms-eval's rank-padding clones run
        self._install_pruning(settings, str(kwargs.get("pretrained") or self.model.config._name_or_path))

    def _set_parent_defaults(self, kwargs: dict[str, Any]) -> None:
        """Family-specific tweaks of the upstream constructor's kwargs."""

    def _upstream_default(self, arg: str) -> Any:
        """The upstream constructor's default for ``arg`` (what it uses when --model_args leaves it out)."""
        parameter = inspect.signature(super(TCCWrapperMixin, self).__init__).parameters.get(arg)
        return None if parameter is None else parameter.default

    def _install_pruning(self, settings: TCCSettings, base_model: str) -> None:
        # the oracle switches the model to eager for its own pass only (oracle.eager_attention), so its answer and
        # prefill time come from upstream's attention, as vanilla's do
        model = self.model  # unwrapped from accelerate, if prepared
        pruned = wrap_model(
            model,
            method=settings.method,
            keep_ratio=settings.keep_ratio,
            compressor=settings.compressor,
            budget=settings.budget,
            seed=settings.seed,
            positions=settings.positions,
            **settings.options,
        )
        self.efficiency = EfficiencyLog(
            resolve_efficiency_dir(settings.efficiency_dir, dict(os.environ)),
            model=self.model_id,
            base_model=base_model,
            method=settings.method,
            keep_ratio=settings.keep_ratio,
            # upstream's self.rank is the rank within a node: on several nodes every node has a rank 0; and under
            # torchrun on CPU upstream's Accelerator sees one process (lmms-eval sets the count after this runs)
            rank=int(os.environ.get("RANK", self.rank)),
            world_size=int(os.environ.get("WORLD_SIZE", self.world_size)),
            method_options={"budget": settings.budget, "seed": settings.seed, "positions": settings.positions,
                            **settings.options},
            compressor=settings.compressor,
        )
        if settings.compressor is not None:
            logger.info(f"[tcc_eval] {self.model_id} tcc compressor: {settings.compressor}")
        self._model = RecordingModel(pruned, self._record, self._generation_failed)

    def _generation_failed(self, error: Exception) -> None:
        """Called with a failed ``generate``'s error before it propagates (upstream's handling stands)."""

    # --- per-sample records -------------------------------------------------------------------------
    def generate_until(self, requests: list) -> list:
        """Upstream ``generate_until`` reading its docs through ``_NotingDocs``, so each ``generate`` call can be
        attributed to its (task, doc_id)s; when batching, one task at a time. lmms-eval hands every task's requests
        over in one call, and upstream batches them by generation settings only: a batch could mix tasks, and its
        one record would count under one of them (some upstream wrappers also read all of a batch's docs from its
        first request's task). At batch size 1 upstream sees the requests as lmms-eval gives them, in its own
        order. Multi-round generation is not wrapped: its records carry no index. The clones lmms-eval pads a
        rank's share with (``__padding_only__``, answers it drops) run last, as it appends them, and unrecorded: a
        batch mixing them with real requests would count a doc twice."""
        by_task: dict[Any, list[int]] = {}
        for position, request in enumerate(requests):
            padding = bool((getattr(request, "metadata", None) or {}).get("__padding_only__"))
            by_task.setdefault((padding, request.task_name if self.batch_size > 1 else None), []).append(position)
        answers: list[Any] = [None] * len(requests)
        docs = self.task_dict
        self.task_dict = _NotingDocs(docs, (), self._pending_docs.append)
        try:
            for (padding, _), positions in sorted(by_task.items(), key=lambda item: item[0][0]):
                self._recording = not padding
                for position, answer in zip(positions, super().generate_until([requests[p] for p in positions])):
                    answers[position] = answer
        finally:
            self.task_dict = docs
            self._recording = True
        return answers

    def _record(self, stats: dict[str, Any], batch_size: int) -> None:
        # upstream reads every doc of a batch right before its generate call: the last ones are this call's
        docs = self._pending_docs[-batch_size:]
        if self._recording:
            task = docs[0][0] if docs else None
            if batch_size == 1:
                index = docs[0][1] if docs else None
            elif len(set(docs)) < len(docs):  # a doc read twice: no index rather than a wrong one (costs still count)
                index = None
            else:
                index = [doc_id for _, doc_id in docs]
            self.efficiency.write(task, index, stats, batch_size)
        self._pending_docs.clear()  # after the write: a failed one names these docs


class _NotingDocs:
    """lmms-eval's ``task_dict`` ({task: {split: dataset}}) that notes every doc read as ``[task][split][doc_id]``.
    Upstream wrappers read a batch's docs right before its generate call, one by one, some through the first
    request's callable (simple qwen2_5_vl, chat llava_hf), so the docs read tell which docs a call served where the
    callables cannot."""

    def __init__(self, data: Any, path: tuple, note: Callable[[tuple[str, Any]], None]):
        self._data, self._path, self._note = data, path, note

    def __getitem__(self, key: Any) -> Any:
        value = self._data[key]
        if len(self._path) == 2:  # [task][split][doc_id]
            self._note((self._path[0], key))
            return value
        return _NotingDocs(value, (*self._path, key), self._note)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._data, name)

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __contains__(self, key: Any) -> bool:
        return key in self._data


class _QwenTCC(TCCWrapperMixin):
    """What both Qwen wrappers need on top of the mixin: ``dtype=`` casts after loading (upstream picks the dtype)."""

    def __init__(self, **kwargs: Any) -> None:
        dtype = kwargs.pop("dtype", None)
        self._cast_dtype = None if dtype in (None, "auto") else default_dtype(torch.device("cpu"), str(dtype))
        super().__init__(**kwargs)

    def _set_parent_defaults(self, kwargs: dict[str, Any]) -> None:
        kwargs.setdefault("device_map", kwargs["device"])  # upstream's default: "cuda" (qwen2_vl), "auto" (qwen2_5_vl)

    def _install_pruning(self, settings: TCCSettings, base_model: str) -> None:
        if self._cast_dtype is not None:
            self.model.to(self._cast_dtype)
        super()._install_pruning(settings, base_model)


class Qwen2VLTCC(_QwenTCC, UpstreamQwen2VL):
    """``--model qwen2_vl_tcc``: upstream ``qwen2_vl`` with a pruned model."""

    model_id = "qwen2_vl_tcc"
    family = "qwen2_vl"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.batch_size_per_gpu > 1 and self.processor.tokenizer.padding_side != "left":
            logger.warning(
                f"qwen2_vl_tcc with batch_size {self.batch_size_per_gpu}: upstream qwen2_vl pads a batch on the "
                f"tokenizer's side, here the right, and HF's own generate answers right-padded rows wrongly. "
                f"tcc-eval moves every row's padding to the left, so these answers (method=none included) can differ "
                f"from upstream qwen2_vl's at this batch size; compare at --batch_size 1")


class Qwen25VLTCC(_QwenTCC, UpstreamQwen25VL):
    """``--model qwen2_5_vl_tcc --force_simple``: upstream simple ``qwen2_5_vl`` with a pruned model."""

    model_id = "qwen2_5_vl_tcc"
    family = "qwen2_5_vl"


class Qwen25VLTCCChat(_QwenTCC, UpstreamQwen25VLChat):
    """``--model qwen2_5_vl_tcc``: upstream chat ``qwen2_5_vl`` (its default) with a pruned model."""

    model_id = "qwen2_5_vl_tcc"
    family = "qwen2_5_vl"


class GenerationFailed(BaseException):
    """A failed ``generate`` of a llava_hf wrapper. A BaseException, so that it passes upstream llava_hf's
    ``except Exception`` around ``generate``, which would log the error and score the sample as an empty answer:
    a pruning error (or an out-of-memory) would then only show as a lower score."""


class _LlavaHfTCC(TCCWrapperMixin):
    """What both llava_hf flavours need on top of the mixin."""

    model_id = "llava_onevision_tcc"
    family = "llava_onevision"

    def _generation_failed(self, error: Exception) -> None:
        docs = ", ".join(f"{task} doc {doc_id}" for task, doc_id in self._pending_docs) or "a request"
        self._pending_docs.clear()
        raise GenerationFailed(
            f"{self.model_id}: generate or its efficiency record failed on {docs} ({type(error).__name__}: {error}). "
            f"Upstream llava_hf would score it as an empty answer and go on, so the run stops here instead of "
            f"reporting a silently lower score: fix the cause (for an out-of-memory, fewer frames: max_frames_num=) "
            f"and rerun") from error

    def loglikelihood(self, requests: list) -> list:
        raise NotImplementedError(
            f"{self.model_id} serves generation tasks (output_type generate_until) only: token pruning acts in "
            f"generate, which a likelihood score would not go through")

    def _set_parent_defaults(self, kwargs: dict[str, Any]) -> None:
        # upstream asserts batch size 1 only after the weights load, in words that name no fix
        batch_size = str(kwargs.get("batch_size", 1))  # lmms-eval passes --batch_size through: "4", "auto", "auto:4"
        if not batch_size.isdigit() or int(batch_size) > 1:
            raise ValueError(f"{self.model_id} runs one request at a time, as upstream llava_hf does (it refuses "
                             f"batch_size {kwargs['batch_size']}): pass --batch_size 1")
        # upstream defaults device_map to "", which transformers 5 rejects in a single process; under
        # accelerate "" must stay: it selects upstream's one-GPU-per-process branch
        from accelerate import PartialState

        if PartialState().num_processes == 1 and not kwargs.get("device_map"):
            kwargs["device_map"] = kwargs["device"]

    def load_video(self, video_path: Any, max_frames_num: int) -> Any:
        """Upstream's frames, with a warning (once) when a video has fewer frames than it samples: upstream's
        linspace then repeats frames, and a model trained on fewer (the demo's 8) answers from a clip it never saw."""
        frames = super().load_video(video_path, max_frames_num)
        if not getattr(self, "_warned_short_video", False):
            total = len(open_video(video_path if isinstance(video_path, str) else video_path[0]))
            if total < max_frames_num:
                self._warned_short_video = True
                logger.warning(f"[tcc_eval] {video_path} has {total} frames and max_frames_num={max_frames_num}: "
                               f"llava_hf reads some of them {-(-max_frames_num // total)} times; pass "
                               f"max_frames_num={total} in --model_args to read each once (the demo models' "
                               f"videos have 8)")
        return frames

    def _install_pruning(self, settings: TCCSettings, base_model: str) -> None:
        self._image_processor = UpstreamProcessorFixes(self._image_processor,
                                                       lambda path: self.load_video(path, self.max_frames_num))
        super()._install_pruning(settings, base_model)


class LlavaOneVisionTCC(_LlavaHfTCC, UpstreamLlavaHf):
    """``--model llava_onevision_tcc --force_simple``: upstream simple ``llava_hf`` with a pruned model."""


class LlavaOneVisionTCCChat(_LlavaHfTCC, UpstreamLlavaHfChat):
    """``--model llava_onevision_tcc``: upstream chat ``llava_hf`` (its default) with a pruned model."""


class VilaBaseline(lmms):
    """Upstream ``vila`` (lmms_eval/models/simple/vila.py) on ``tcc_eval.vila``, unpruned.

    As upstream, per request: every visual is a video file, of which the checkpoint's ``num_video_frames``
    frames are decoded with decord at ``linspace(0, n - 2)``; the user turn is ``"<image>\\n" * frames +
    "<video>\\n " + context`` (the ``<video>`` stays literal text) in ``conv_template``; the attention mask is
    ``input_ids != pad id``; generation uses the task's settings, else ``max_new_tokens`` 1024, ``temperature``
    0.2 (sampling only when > 0), ``top_p`` None, ``num_beams`` 1, stops at the template's separator, and the
    new tokens are decoded without special tokens and stripped. ``max_frames_num=0`` feeds black frames.

    Where upstream cannot serve, this differs: an image visual becomes one ``<image>\\n`` before the context
    (VILA's own image evaluation; upstream would decode it as a video and fall back to black frames); an
    unreadable video raises instead of turning black; ``conv_template`` defaults to the checkpoint's own
    template and ``pretrained`` to Llama-3-VILA1.5-8b (upstream: hermes-2 and VILA1.5-40b, which
    tcc_eval.vila cannot load); the dtype is fp32 on CPU and bf16/fp16 on GPU unless ``dtype=`` says
    (upstream: float16); under ``accelerate launch`` each process takes its own GPU. Upstream's model args all
    work: ``device_map`` places the model when ``device`` is not given, and ``truncation`` and
    ``truncate_context``, which upstream stores but never reads, are accepted and ignored.
    """

    def __init__(
        self,
        pretrained: str = DEFAULT_VILA,
        max_frames_num: int = 100,
        conv_template: str | None = None,
        device: str | None = None,
        batch_size: int | str = 1,
        attn_implementation: str = "sdpa",
        use_cache: bool = True,
        video_decode_backend: str = "decord",
        dtype: str | None = None,
        device_map: str | None = None,
        truncation: bool = True,
        truncate_context: bool = False,
    ) -> None:
        from datetime import timedelta

        from accelerate import Accelerator, InitProcessGroupKwargs

        from tcc_eval.vila import VilaForConditionalGeneration, VilaProcessor

        super().__init__()
        if video_decode_backend != "decord":
            raise ValueError(f"video_decode_backend={video_decode_backend!r} is not supported by vila_tcc; use decord "
                             f"(upstream vila's other backend returns arrays its VILA1.5 preprocessing cannot resize)")
        # upstream's timeout for ranks whose shares of long videos end far apart; it holds where this is the process's
        # first Accelerator (the Python API): the lmms-eval CLI starts the process group with its own before
        accelerator = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(weeks=52))])
        if accelerator.num_processes > 1:
            self._device = torch.device(f"cuda:{accelerator.local_process_index}")
            self.accelerator = accelerator
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        else:
            self._device = default_device(device or (device_map if device_map != "auto" else None))
        folder = local_folder(pretrained)
        self._model = VilaForConditionalGeneration.from_pretrained(
            folder, dtype=default_dtype(self._device, dtype), device=self._device,
            attn_implementation=attn_implementation)
        self.processor = VilaProcessor.from_pretrained(folder, conv_mode=conv_template)  # None: the checkpoint's
        self.processor.end_answers_at_template_stop(self._model)  # the oracle's draft answer stops where we do
        self._stop_ids = self.processor.answer_stop_ids(self._model)  # the template's separator, the LLM's EOS
        self._config, self._dtype = self._model.config, self._model.dtype
        self.max_frames_num = int(max_frames_num)
        self.batch_size_per_gpu = int(batch_size)  # requests run one at a time, as upstream
        self.use_cache = use_cache

    @property
    def model(self) -> torch.nn.Module:
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def loglikelihood(self, requests: list) -> list:
        raise NotImplementedError(
            "vila_tcc serves generation tasks (generate_until) only: token pruning acts in generate")

    def generate_until_multi_round(self, requests: list) -> list[str]:
        raise NotImplementedError("vila_tcc does not implement multi-round generation (nor does upstream vila)")

    def generate_until(self, requests: list) -> list[str]:
        from tqdm import tqdm

        answers = []
        for request in tqdm(requests, disable=self.rank != 0, desc="Model Responding"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            frames, has_video = self._frames(visuals)
            text = f"<video>\n {context}" if has_video else context
            prompt = self.processor.template.render([("user", "<image>\n" * len(frames) + text)])
            answers.append(self._generate(prompt, frames, dict(gen_kwargs)))
        return answers

    def _frames(self, visuals: list) -> tuple[list, bool]:
        """The images the prompt shows, and whether any visual was a video."""
        from PIL import Image

        from tcc_eval.vila import load_video_frames

        count = self._config.num_video_frames
        if self.max_frames_num == 0:
            return [Image.new("RGB", (448, 448), (0, 0, 0))] * count, True
        frames, has_video = [], False
        for visual in visuals:
            if isinstance(visual, Image.Image):
                frames.append(visual)
            elif isinstance(visual, (str, os.PathLike)):
                frames.extend(read_video_or_stop(os.fspath(visual), lambda path: load_video_frames(path, count),
                                                 "vila logs it and answers on black frames"))
                has_video = True
            else:
                raise TypeError(f"vila_tcc takes PIL images and video paths as visuals, got {type(visual).__name__}")
        return frames, has_video

    def _generate(self, prompt: str, frames: list, gen_kwargs: dict[str, Any]) -> str:
        # the prompt may hold a literal "<video>", which VilaProcessor.__call__ would read as a video slot
        input_ids = torch.tensor([self.processor.tokenize_prompt(prompt)], device=self.device)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        inputs = {"input_ids": input_ids, "attention_mask": input_ids.ne(pad_id).long()}
        if frames:
            pixels = torch.stack([self.processor.preprocess(frame) for frame in frames])
            inputs["pixel_values"] = pixels.to(self.device, self._dtype)
        settings = {"max_new_tokens": 1024, "temperature": 0.2, "top_p": None, "num_beams": 1, **gen_kwargs}
        do_sample = settings["temperature"] > 0
        sampling = {k: settings[k] for k in ("temperature", "top_p") if do_sample and settings[k] is not None}
        output = self.model.generate(
            **inputs, use_cache=self.use_cache, eos_token_id=self._stop_ids,
            do_sample=do_sample, num_beams=settings["num_beams"], max_new_tokens=settings["max_new_tokens"], **sampling,
        )
        return self.tokenizer.batch_decode(output[:, input_ids.shape[1]:], skip_special_tokens=True)[0].strip()


class VilaTCC(TCCWrapperMixin, VilaBaseline):
    """``--model vila_tcc``: ``VilaBaseline`` (upstream ``vila``'s prompts) with a pruned model."""

    model_id = "vila_tcc"
    family = "vila"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("pretrained", DEFAULT_VILA)  # recorded as base_model
        kwargs.setdefault("device", None)  # VilaBaseline picks it (device_map, else CUDA when there): not the mixin
        super().__init__(**kwargs)


# the --model that takes each family's checkpoints, for check_checkpoint's advice
WRAPPERS = {cls.family: cls.model_id for cls in (Qwen2VLTCC, Qwen25VLTCC, _LlavaHfTCC, VilaTCC)}


def read_video_or_stop(path: str, load: Callable[[str], Any], upstream_behaviour: str) -> Any:
    """``load(path)``, or an error naming the file: upstream goes on past an unreadable video, which lowers the
    score silently."""
    try:
        return load(path)
    except Exception as err:
        raise RuntimeError(f"cannot read video {path} with decord ({type(err).__name__}: {err}): fix or remove the "
                           f"file (lmms-eval's own {upstream_behaviour})") from err


class UpstreamProcessorFixes:
    """The HF processor with two problems of upstream llava_hf under transformers 5 fixed:

    - ``images=[]`` / ``videos=[]`` mean "none": upstream chat llava_hf passes ``images=[]`` for
      video-only requests, which LLaVA-OneVision's image processor rejects (IndexError);
    - a video path is read by ``load_video`` (upstream's own: ``max_frames_num`` frames at ``linspace(0, n - 1)``,
      with decord), as the simple llava_hf reads it. Upstream chat llava_hf hands the path to the HF processor,
      which decodes every frame (its video processor samples none by default, and without torchcodec cannot read
      the file at all): a benchmark video of a few minutes would be thousands of frames.

    Image requests keep upstream's prompt and pixels exactly.
    """

    def __init__(self, processor: Any, load_video: Callable[[str], Any]):
        self.processor = processor
        self._load_video = load_video

    def __getattr__(self, name: str) -> Any:
        return getattr(self.processor, name)

    def __call__(self, *args: Any, images: Any = None, videos: Any = None, **kwargs: Any):
        if videos:
            videos = [self._read(os.fspath(v)) if isinstance(v, (str, os.PathLike)) else v for v in videos]
        return self.processor(*args, images=images or None, videos=videos or None, **kwargs)

    def _read(self, path: str) -> Any:
        return read_video_or_stop(path, self._load_video, "llava_hf logs it and goes on without an answer for it")
