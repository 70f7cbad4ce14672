"""VLMEvalKit model wrappers: VLMEvalKit's own Qwen2-VL / LLaVA-OneVision-HF classes with tcc-eval pruning.

Prompt building and decoding are inherited (``generate_inner`` of ``Qwen2VLChat`` and ``LLaVA_OneVision_HF``),
so ``<Base>_Vanilla`` sees VLMEvalKit's prompts, with one exception: LLaVA-OneVision video prompts lose the stray
``<image>`` line transformers 5 refuses (``_ToDeviceVideoFix``). What is swapped, and why:
- the constructor: no GPU assert, no forced flash-attention (sdpa; the oracle switches to eager for its own pass),
  device per torchrun rank, dtype from ``tcc_eval.api.default_dtype``, and WORLD_SIZE put back
  (``restore_world_size``);
- the processor call (``_ToDevice``): its output moves to our device and dtype, Qwen video frames keep their
  timing (``keeping_video_metadata``);
- ``self.model.generate``: goes through ``tcc_eval.wrap_model``, under the optional ``max_new_tokens`` cap;
- ``build_prompt`` / ``generate_inner``: note the sample for its efficiency record.

VILA1.5 is the exception: VLMEvalKit's ``VILA.generate_inner`` calls the NVlabs VILA repository, so
``TCCVILA`` re-states its few prompt steps on ``tcc_eval.vila`` (see ``VilaChat``).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from vlmeval.vlm.base import BaseModel
from vlmeval.vlm.llava.llava import LLaVA_OneVision_HF
from vlmeval.vlm.qwen2_vl.model import VLLM_MAX_IMAGE_INPUT_NUM, Qwen2VLChat
from vlmeval.vlm.vila import VILA

from model_registry import (
    Base,
    all_bases,
    available_compressors,
    local_folder,
    model_path_env,
    resolve_compressor,
    resolve_model_path,
)

from ... import api
from ...adapters import ADAPTERS, adapter_for
from ...media import open_video
from ...vila.processing_vila import IMAGE_PLACEHOLDER
from .. import rank_device
from . import records

if TYPE_CHECKING:
    import pandas as pd


class _ToDevice:
    """Processor proxy whose batches go to our device/dtype whatever ``.to(...)`` the caller asks for.

    VLMEvalKit's wrappers call ``inputs.to('cuda')`` / ``.to('cuda', torch.float16)``; redirecting that
    one call is what lets their prompt code run unchanged on CPU or on this rank's GPU.
    """

    def __init__(self, processor, device: torch.device, dtype: torch.dtype):
        self._processor = processor
        self._device = device
        self._dtype = dtype

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)

    def __call__(self, *args: Any, **kwargs: Any):
        batch = self._processor(*args, **kwargs)
        batch.to = lambda *_, **__: self._move(batch)  # instance attribute shadows BatchFeature.to
        return batch

    def _move(self, batch):
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                pixels = api.is_pixel_input(key, value)
                batch[key] = value.to(self._device, self._dtype) if pixels else value.to(self._device)
        return batch


class _ToDeviceVideoTiming(_ToDevice):
    """Qwen2-VL / Qwen2.5-VL: also hand the processor the timing of the frames ``process_vision_info`` sampled.

    Qwen2VLChat passes bare frames, and transformers 5 then assumes 24 fps: Qwen2.5-VL, which spaces its temporal
    position ids by the sampled frame rate, would put a 2-fps clip on one or two temporal ids, vanilla and pruned
    runs alike. ``video_metadata`` is set for one call by ``keeping_video_metadata``."""

    def __init__(self, processor, device: torch.device, dtype: torch.dtype):
        super().__init__(processor, device, dtype)
        self.video_metadata: list | None = None

    def __call__(self, *args: Any, **kwargs: Any):
        videos = kwargs.get("videos")
        if videos is not None and self.video_metadata is not None and "video_metadata" not in kwargs \
                and len(self.video_metadata) == len(videos):
            kwargs = {**kwargs, "video_metadata": self.video_metadata, "do_sample_frames": False}
        return super().__call__(*args, **kwargs)


@contextlib.contextmanager
def keeping_video_metadata(proxy: _ToDeviceVideoTiming) -> Iterator[None]:
    """A patch of a library function (register.py lists them all), and why:
    Qwen2VLChat.generate_inner_transformers calls ``qwen_vl_utils.process_vision_info`` (imported inside the
    method, at each call) without ``return_video_metadata``, so the timing of the frames it sampled is lost before
    the processor call. For one generate_inner the module's function is wrapped to ask for it and leave it on the
    processor proxy; the frames it returns are the same."""
    import qwen_vl_utils

    original = qwen_vl_utils.process_vision_info
    if "return_video_metadata" not in inspect.signature(original).parameters:  # an older qwen_vl_utils: as it was
        yield
        return

    def with_metadata(conversations: Any, *args: Any, **kwargs: Any):
        if args or kwargs.get("return_video_metadata"):  # a caller that asks for it itself
            return original(conversations, *args, **kwargs)
        images, videos, *rest = original(conversations, **kwargs, return_video_metadata=True)
        if videos is not None:
            proxy.video_metadata = [metadata for _, metadata in videos]
            videos = [video for video, _ in videos]
        return (images, videos, *rest)

    qwen_vl_utils.process_vision_info = with_metadata
    try:
        yield
    finally:
        qwen_vl_utils.process_vision_info = original
        proxy.video_metadata = None


class _ToDeviceVideoFix(_ToDevice):
    """LLaVA-OneVision-HF: also drop the stray ``<image>`` line VLMEvalKit writes into video prompts.

    ``LLaVA_OneVision_HF.generate_inner_video`` puts a literal ``<image>`` line in the text besides the
    ``<video>`` its chat template adds, but passes no image. Old transformers embedded it as a plain
    token; transformers 5 rejects the call ("Found 1 <image> tokens in the text but no images were
    passed"). Removing that placeholder is the only difference from VLMEvalKit's video prompt.
    """

    def __call__(self, *args: Any, **kwargs: Any):
        text, token = kwargs.get("text"), getattr(self._processor, "image_token", None)
        if token and kwargs.get("videos") is not None and kwargs.get("images") is None and isinstance(text, str):
            kwargs["text"] = text.replace(token + "\n", "")
        return super().__call__(*args, **kwargs)


class _PrunedGenerate:
    """Stands in for the HF model inside the VLMEvalKit wrapper: ``generate`` goes through pruning."""

    def __init__(self, owner: TCCModelMixin):
        self._owner = owner

    def generate(self, **kwargs: Any) -> torch.Tensor:
        return self._owner._pruned_generate(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._owner.hf_model, name)


def restore_world_size() -> None:
    """Works around VLMEvalKit's ``build_model_from_config`` (vlmeval/run.py): it hides WORLD_SIZE while a model
    is built and, for a --config entry without "class" (how method options reach our names), never puts it back,
    so every torchrun rank would infer the whole dataset. A model built inside a process group puts it back."""
    import torch.distributed as dist

    if "WORLD_SIZE" not in os.environ and dist.is_available() and dist.is_initialized():
        os.environ["WORLD_SIZE"] = str(dist.get_world_size())


def check_family(base: Base, model_path: str) -> None:
    """Refuse another family's checkpoint before it loads: it would load, then run through this base's prompt code
    (answers from the wrong prompts, no error) or fail on sample one inside a processor."""
    model_type, _ = api.model_type_of(model_path)
    family = ADAPTERS[model_type].family if model_type in ADAPTERS else base.family  # unknown types: the loader's
    if family != base.family:
        same = sorted(name for name, other in all_bases().items() if other.family == family)
        raise ValueError(f"{model_path} is a {family} checkpoint, but base {base.name} runs {base.family} ones: name "
                         f"a {family} base ({', '.join(same)}), or point {model_path_env(base.name)} (or the config's "
                         f"model_path) at a {base.family} checkpoint")


class TCCModelMixin:
    """Loading, pruning and efficiency records shared by the three wrappers (put first in the bases)."""

    processor_proxy = _ToDevice
    _modality_default = "image"  # the modality before the first input says otherwise

    def _init_tcc(
        self,
        base: str,
        method: str,
        keep_ratio: float,
        model_path: str | None,
        compressor: Any,
        device: str | None,
        dtype: str | None,
        max_new_tokens: int | None,
        method_options: dict[str, Any] | None,
    ) -> None:
        from ...core import check_keep_ratio
        from ...methods import check_method
        from ...options import check_option_values

        bases = all_bases()
        if base not in bases:
            raise ValueError(f"unknown base {base!r}; registered bases: {sorted(bases)}")
        self.base = bases[base]
        self.method = check_method(method)
        self.keep_ratio = check_keep_ratio(keep_ratio)
        self.compressor = compressor
        self.method_options = dict(method_options or {})  # e.g. budget, seed, fastv_k, pdrop_layers: wrap_model's
        check_option_values(self.method_options)  # a typo stops the run before the weights load
        self.max_new_tokens_cap = max_new_tokens
        modalities = [self._modality_default]
        if method == "tcc":  # fails before loading when no modality has one
            modalities = list(available_compressors(self.base, compressor))
        self.model_path = resolve_model_path(self.base, model_path)
        check_family(self.base, self.model_path)
        self.device = rank_device(device)
        self.dtype = api.default_dtype(self.device, dtype)
        # the oracle switches to eager for its own pass only (oracle.eager_attention): its answer and prefill time
        # come from the same sdpa model as vanilla's
        self.hf_model, processor = self._load()
        self._adapter = adapter_for(self.hf_model)
        self.processor = self.processor_proxy(processor, self.device, self.dtype)
        self.model = _PrunedGenerate(self)
        self._pruned: dict[str, Any] = {}
        self._compressor_files: dict[str, str] = {}  # modality -> the file tcc loaded, for the records
        self._compressor_sha1s: dict[str, str] = {}  # and its content's hash
        self._modality = self._modality_default
        self.last_stats: dict[str, Any] = {}
        self.last_record: dict[str, Any] | None = None
        # built now, so that a bad method option (or a compressor labelled with other instruction rows) fails at
        # start-up, not on sample one, where VLMEvalKit would log it and skip the dataset
        for modality in modalities:
            self.pruned_model(modality)
        restore_world_size()

    def tcc_variant(self) -> dict[str, Any]:
        """What this model runs as, beyond its name (``records.check_same_variant`` compares it with a folder's)."""
        return {"method": self.method, "keep_ratio": self.keep_ratio, "method_options": self.method_options,
                "model_path": self.model_path, "compressors": dict(self._compressor_files),
                "compressor_sha1s": dict(self._compressor_sha1s)}

    def _load(self):
        """The unpruned model (sdpa) and its processor, from ``self.model_path`` (a folder or hub id)."""
        return api.load_hf_model(self.model_path, self.device, self.dtype)

    # --- pruning -----------------------------------------------------------------------------------
    def pruned_model(self, modality: str) -> torch.nn.Module:
        """The pruned model for ``modality`` (TCC has one compressor per modality; others share one)."""
        key = modality if self.method == "tcc" else "any"
        if key not in self._pruned:
            compressor = None
            if self.method == "tcc":
                compressor = resolve_compressor(self.base, modality, self.compressor)
                if isinstance(compressor, (str, os.PathLike)):  # which file, of the several places looked at
                    self._compressor_files[modality] = os.fspath(compressor)
                    self._compressor_sha1s[modality] = records.file_sha1(compressor)
                    print(f"[tcc_eval] {self.base.name} tcc compressor for {modality} inputs: "
                          f"{os.fspath(compressor)}", file=sys.stderr)
                if self.compressor is None:  # the registry's <Base>_<modality>.pt: checked against its modality
                    compressor = {modality: compressor}
            self._pruned[key] = api.wrap_model(
                self.hf_model, method=self.method, keep_ratio=self.keep_ratio, compressor=compressor,
                **self.method_options,
            )
        return self._pruned[key]

    def _pruned_generate(self, **kwargs: Any) -> torch.Tensor:
        if self.max_new_tokens_cap is not None:
            cap = self.max_new_tokens_cap
            kwargs["max_new_tokens"] = min(kwargs.get("max_new_tokens", cap), cap)
        # the modality the model's input shows, as wrap_model and lmms-eval read it (VILA: several image blocks
        # are a video), so one input gets one compressor through every entry point
        self._modality = self._adapter.modality(kwargs["input_ids"])
        pruned = self.pruned_model(self._modality)
        output = pruned.generate(**kwargs)
        self.last_stats = dict(pruned.last_stats)
        return output

    # --- VLMEvalKit hooks --------------------------------------------------------------------------
    def build_prompt(self, line: pd.Series | int, *args: Any, **kwargs: Any) -> list[dict[str, str]]:
        records.note_line(line)
        return super().build_prompt(line, *args, **kwargs)

    def generate_inner(self, message: list[dict[str, str]], dataset: str | None = None) -> str:
        for item in message:  # upstream's readers report a broken video without its name (Qwen2VL: torchvision's)
            value = item["value"]
            if item["type"] == "video" and isinstance(value, str) and not value.startswith(("data:", "file:")) \
                    and "://" not in value:  # a local path; URLs are upstream's to read
                open_video(value)
        self._modality, self.last_stats = None, {}  # both set by the generate call
        response = super().generate_inner(message, dataset)
        self._write_record(dataset)
        return response

    def _write_record(self, dataset: str | None) -> None:
        ctx = records.current()
        self.last_record = {
            "model": ctx.model_name if ctx else None,
            "framework": records.FRAMEWORK,
            "dataset": ctx.dataset_name if ctx else dataset,
            "index": ctx.index if ctx else None,
            "method": self.method,
            "method_options": self.method_options,  # the tables give non-default options rows of their own
            "keep_ratio": self.keep_ratio,
            "base_model": self.base.name,
            "model_path": self.model_path,
            "modality": self._modality,
            "compressor": self._compressor_files.get(self._modality),
            "compressor_sha1": self._compressor_sha1s.get(self._modality),
            "time": time.time(),
            **self.last_stats,
        }
        if ctx is not None:
            records.append_record(ctx.path, self.last_record)


# the constructor options tcc-eval adds to VLMEvalKit's classes (a --config model entry sets them)
TCC_OPTIONS = ("method", "keep_ratio", "model_path", "compressor", "device", "dtype", "method_options")


def _check_upstream_kwargs(kwargs: dict[str, Any]) -> None:
    """The options passed on to VLMEvalKit's class. It ignores the ones it does not know, so a misspelt option of
    ours (``compressr`` in a --config entry) would run the default silently: one that nearly matches ours stops."""
    for flag in ("use_vllm", "use_lmdeploy"):
        if kwargs.pop(flag, False):
            raise ValueError(f"{flag}=True is not supported: tcc-eval prunes tokens inside transformers' generate")
    for name in kwargs:
        near = difflib.get_close_matches(name, TCC_OPTIONS, n=1, cutoff=0.8)
        if near:
            raise ValueError(f"unknown model option {name!r}: did you mean {near[0]!r}? (tcc-eval's options: "
                             f"{', '.join(TCC_OPTIONS)})")


def _defaults(func) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(func).parameters.items()
            if p.default is not inspect.Parameter.empty}


class TCCQwen2VLChat(TCCModelMixin, Qwen2VLChat):
    """``Qwen2VLChat`` with pruning; constructor options and defaults are Qwen2VLChat's."""

    processor_proxy = _ToDeviceVideoTiming

    def generate_inner(self, message: list[dict[str, str]], dataset: str | None = None) -> str:
        with keeping_video_metadata(self.processor):
            return super().generate_inner(message, dataset)

    def __init__(
        self,
        base: str,
        method: str = "none",
        keep_ratio: float = 1.0,
        model_path: str | None = None,
        compressor: Any = None,
        device: str | None = None,
        dtype: str | None = None,
        method_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        _check_upstream_kwargs(kwargs)
        opts = {**_defaults(Qwen2VLChat.__init__), **kwargs}
        BaseModel.__init__(self)
        self._use_custom_prompt = opts["use_custom_prompt"]  # as Qwen2VLPromptMixin.__init__
        # The attributes Qwen2VLChat.__init__ sets on its transformers path (checked by the tests).
        self.min_pixels, self.max_pixels = opts["min_pixels"], opts["max_pixels"]
        self.total_pixels = opts["total_pixels"]
        self.max_new_tokens = opts["max_new_tokens"]
        self.generate_kwargs = {k: opts[k] for k in (
            "max_new_tokens", "top_p", "top_k", "temperature", "repetition_penalty", "do_sample")}
        self.system_prompt = opts["system_prompt"]
        self.verbose = opts["verbose"]
        self.post_process = opts["post_process"]
        self.fps = opts.get("fps", 2)  # Qwen2VLChat pops these from **kwargs with these defaults
        self.nframe = opts.get("nframe", 128)
        self.use_audio_in_video = opts["use_audio_in_video"]
        self.FRAME_FACTOR = 2
        self.use_vllm = self.use_lmdeploy = False
        self.limit_mm_per_prompt = VLLM_MAX_IMAGE_INPUT_NUM
        self._init_tcc(base, method, keep_ratio, model_path, compressor, device, dtype, opts["max_new_tokens"],
                       method_options)


class TCCLLaVAOneVisionHF(TCCModelMixin, LLaVA_OneVision_HF):
    """``LLaVA_OneVision_HF`` with pruning. ``max_new_tokens`` caps its fixed 2048-token answers."""

    processor_proxy = _ToDeviceVideoFix

    def __init__(
        self,
        base: str,
        method: str = "none",
        keep_ratio: float = 1.0,
        model_path: str | None = None,
        compressor: Any = None,
        device: str | None = None,
        dtype: str | None = None,
        max_new_tokens: int | None = None,
        method_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        _check_upstream_kwargs(kwargs)
        # The attributes LLaVA_OneVision_HF.__init__ sets (checked by the tests).
        self.video_kwargs = kwargs.get("video_kwargs", {})
        self.force_sample = self.video_kwargs.get("force_sample", False)
        self.nframe = kwargs.get("nframe", 8)
        self.fps = 1
        self._init_tcc(base, method, keep_ratio, model_path, compressor, device, dtype, max_new_tokens, method_options)

    def load_video(self, video_path: str, max_frames_num: int | None, *args: Any, **kwargs: Any) -> Any:
        """Upstream's frames; a clear refusal of VLMEvalKit's fps mode, which sets ``nframe`` to None for this
        class and then fails inside upstream's sampling (``'>' not supported between int and NoneType``)."""
        if max_frames_num is None:
            raise ValueError(f"{self.__class__.__name__} samples a fixed number of frames, but its nframe is None: "
                             f"VLMEvalKit sets that for a video dataset sampled by fps, and keeps it for the run's "
                             f"later datasets. Use presets with a frame count (e.g. MVBench_8frame, Video-MME_8frame, "
                             f"TCCSynth_VID) or --config dataset entries with \"nframe\": 8, and no fps set in the "
                             f"same run")
        return super().load_video(video_path, max_frames_num, *args, **kwargs)


# VLMEvalKit's VILA.__init__ generation settings (updated by the constructor's extra kwargs).
VILA_GENERATION_DEFAULTS = {"do_sample": False, "temperature": 0, "max_new_tokens": 2048, "top_p": None, "num_beams": 1,
                            "use_cache": True}


def vlmeval_vila_conv_mode(model_path: str) -> str | None:
    """The conversation template VLMEvalKit's ``VILA`` picks from the checkpoint name (None: no rule matches).

    Its rule: '3b' -> vicuna_v1, then '8b' -> llama_3, else '13b' -> vicuna_v1, else '40b' -> hermes-2, applied to
    the last path component (the hub id's model name) so a parent folder's name cannot change it. Its 'llama_3' is
    looked up in the VILA1.5 code it runs with (its transformers 4.36.2 pin), where it is ``llama_3_vila1.5``
    here; an '-Fix' checkpoint, retrained on VILA's corrected template, gets that one (``llama_3``)."""
    name = Path(str(model_path).rstrip("/")).name
    mode = "vicuna_v1" if "3b" in name else None
    if "8b" in name:
        mode = "llama_3" if "fix" in name.lower() else "llama_3_vila1.5"
    elif "13b" in name:
        mode = "vicuna_v1"
    elif "40b" in name:
        mode = "hermes-2"
    return mode


def _generate_kwargs(settings: dict[str, Any]) -> dict[str, Any]:
    """VLMEvalKit's VILA generation settings as transformers 5 takes them: unset (None) values and, for
    greedy decoding, the sampling parameters (no effect there, but warned about) are left out."""
    kwargs = {k: v for k, v in settings.items() if v is not None}
    if not kwargs.get("do_sample"):
        for name in ("temperature", "top_p", "top_k"):
            kwargs.pop(name, None)
    return kwargs


class VilaChat(VILA):
    """The prompt path of VLMEvalKit's ``VILA`` (vlmeval/vlm/vila.py), on ``tcc_eval.vila`` instead of the VILA
    repository. Needs ``processor`` (a VilaProcessor with the chosen template), ``model`` (what generates),
    ``stop_ids`` (``processor.answer_stop_ids`` of the VILA model under it), ``device`` and ``kwargs`` set by a
    subclass.

    As there: message items are concatenated in order, text as is and each image (opened, RGB) as
    ``<image>\n``; that becomes the one user turn of the conversation template; greedy decoding with
    VLMEvalKit's settings, stopping at the template's separator or the LLM's own EOS; the new tokens are decoded
    without special tokens and stripped. Video datasets give frames as images (no ``VIDEO_LLM``), as VLMEvalKit
    does for VILA.
    """

    def generate_inner(self, message: list[dict[str, str]], dataset: str | None = None) -> str:
        content, images = "", []
        for item in message:
            if item["type"] == "text":
                content += item["value"]
            elif item["type"] == "image":
                images.append(Image.open(item["value"]).convert("RGB"))
                content += IMAGE_PLACEHOLDER + "\n"
        prompt = self.processor.template.render([("user", content)])
        inputs = self.processor(text=prompt, images=images or None, return_tensors="pt").to(self.device)
        output = self.model.generate(**inputs, eos_token_id=self.stop_ids, **_generate_kwargs(self.kwargs))
        answer = output[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(answer, skip_special_tokens=True)[0].strip()


class TCCVILA(TCCModelMixin, VilaChat):
    """VLMEvalKit's ``VILA`` with pruning, no VILA repository. Extra kwargs are generation settings, as there
    (e.g. ``max_new_tokens``); ``conv_mode`` overrides the template, which otherwise follows VLMEvalKit's
    name rule (``vlmeval_vila_conv_mode``) and, for names it does not cover, the checkpoint's own template."""

    def __init__(
        self,
        base: str,
        method: str = "none",
        keep_ratio: float = 1.0,
        model_path: str | None = None,
        compressor: Any = None,
        device: str | None = None,
        dtype: str | None = None,
        conv_mode: str | None = None,
        method_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        _check_upstream_kwargs(kwargs)
        BaseModel.__init__(self)
        self.kwargs = {**VILA_GENERATION_DEFAULTS, **kwargs}
        self._conv_mode_arg = conv_mode
        self._init_tcc(base, method, keep_ratio, model_path, compressor, device, dtype, None, method_options)
        self.conv_mode = self.processor.conv_mode  # as VLMEvalKit's VILA exposes it
        self.stop_ids = self.processor.answer_stop_ids(self.hf_model)  # the template's separator, the LLM's EOS

    def _load(self):
        """VILA1.5 folders are read part by part (a hub id is downloaded first). The template: ``conv_mode``,
        else VLMEvalKit's name rule, else the checkpoint's own (its config.json, its folder's name, then the
        registry base's hub id, then its vocabulary)."""
        return api.load_hf_model(local_folder(self.model_path), self.device, self.dtype,
                                 conv_mode=self._conv_mode_arg or vlmeval_vila_conv_mode(self.model_path),
                                 known_as=self.base.hf_id)


# Qwen2.5-VL checkpoints run through Qwen2VLChat in VLMEvalKit too (it picks the model class from the config).
WRAPPERS: dict[str, type] = {"qwen2_vl": TCCQwen2VLChat, "qwen2_5_vl": TCCQwen2VLChat,
                             "llava_onevision": TCCLLaVAOneVisionHF, "vila": TCCVILA}

# Importing this module first (before vlmeval.config) runs the start-up hook from inside the vlmeval imports
# above, before WRAPPERS exists; the hook then leaves the whole registration to this line.
from .register import finish_deferred_registration  # noqa: E402

finish_deferred_registration()
