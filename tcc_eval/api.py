"""Public entry point: ``tcc_eval.load(model_path, method=..., keep_ratio=...)``."""

from __future__ import annotations

import base64
import io
import logging
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import torch

from .adapters import ADAPTERS, adapter_for
from .core import Selection
from .flops import INSIDE_LLM_METHODS
from .media import open_video
from .methods import (VISIONZIP_CONTEXTUAL_SHARE, A0Scorer, Scorer, TCCScorer, VisionZip, check_method,
                      divprune_scorer, pool_merger, random_scorer, uniform_scorer)
from .options import BUDGETS, DEFAULT_INSTRUCTION_ROWS, check_option_values
from .pruned import TokenPrunedModel, check_positions

log = logging.getLogger("tcc_eval")


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` checked against this machine before any weights load; CUDA when present, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        checked = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if checked.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{device}, but torch sees no CUDA GPU here; use cpu")
    return checked


def default_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are ~7x slower there); bf16 on GPUs that support it, else fp16."""
    if isinstance(dtype, str):
        named = getattr(torch, dtype, None)
        if not isinstance(named, torch.dtype) or not named.is_floating_point:
            raise ValueError(f"dtype {dtype!r}: expected a torch floating-point type, e.g. {', '.join(DTYPES)}")
        dtype = named
    if dtype is not None:
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


DTYPES = ("float32", "bfloat16", "float16")  # the --dtype choices of the command lines


def device_arg(text: str) -> str:
    """argparse type of the command lines' --device: a torch device this machine has."""
    import argparse

    try:
        default_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def on_model_device(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Processor outputs moved to the model's device, the pixels in its dtype."""
    param = next(model.parameters())
    return {k: v.to(param.device, param.dtype) if is_pixel_input(k, v) else v.to(param.device)
            for k, v in inputs.items()}


def is_pixel_input(name: str, value: torch.Tensor) -> bool:
    """Pixel tensors take the model's dtype; other floating inputs keep theirs (Qwen2.5-VL's
    ``second_per_grid_ts`` in bf16 moves temporal position ids: 5.837 s per patch becomes 5.844)."""
    return name.startswith("pixel_values") and torch.is_floating_point(value)


def local_folder(model_path: str | os.PathLike) -> str:
    """``model_path`` as a local folder: a hub id is downloaded first (into the HF cache).

    For checkpoints that are not transformers models (VILA1.5: llm/, vision_tower/, mm_projector/), which
    are read file by file and so cannot go through ``from_pretrained``'s hub lookup."""
    folder = Path(model_path).expanduser()
    if folder.is_dir():
        return str(folder)
    if names_a_local_path(str(model_path)):
        raise FileNotFoundError(f"checkpoint folder {str(model_path)!r} does not exist")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(str(model_path))
    except (OSError, ValueError) as err:  # not a repo id, offline, repository not found, ...
        raise FileNotFoundError(
            f"{str(model_path)!r} is neither a local folder nor a downloadable hub repository ({err}); download it "
            f"with `huggingface-cli download {model_path} --local-dir DIR` and pass DIR as the model path"
        ) from err


def names_a_local_path(text: str) -> bool:
    """A model argument that can only mean a local path: a hub id reads ORG/NAME, never absolute or relative."""
    return os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1


def model_type_of(model_path: str | os.PathLike) -> tuple[str, str | os.PathLike]:
    """(model type, path to load from): VILA1.5 folders are not transformers configs, so hub ids of them are
    fetched to a local folder first."""
    from transformers import AutoConfig

    text = os.fspath(model_path)
    if os.path.isfile(os.path.expanduser(text)):
        raise ValueError(f"model {text!r} is a file; pass the checkpoint folder that holds it "
                         f"({os.path.dirname(text) or '.'!r}?)")
    if names_a_local_path(text) and not os.path.exists(os.path.expanduser(text)):
        raise FileNotFoundError(f"model {text!r}: no such folder (and not a hub id, which reads ORG/NAME); pass a "
                                f"checkpoint folder or a hub id")
    try:
        return AutoConfig.from_pretrained(model_path).model_type, model_path
    except (OSError, ValueError) as err:
        try:
            folder = local_folder(model_path)
        except FileNotFoundError:
            folder = str(model_path)
        if os.path.isdir(os.path.join(folder, "llm")):
            return "vila", folder
        raise ValueError(f"cannot read a model config from {str(model_path)!r}: {err}") from err


PIXEL_LIMIT_FAMILIES = ("qwen2_vl", "qwen2_5_vl")  # processors that take min_pixels / max_pixels
PIXEL_LIMITS = {"min_pixels": "shortest_edge", "max_pixels": "longest_edge"}  # -> the processors' size keys


def check_processor_options(model_type: str, processor_options: dict[str, Any] | None) -> None:
    """Pixel limits resize Qwen2-VL / Qwen2.5-VL inputs; other processors would ignore them without a word.
    Checked before any weights load (under torchrun, every rank would load the model first)."""
    if not processor_options:
        return
    unknown = sorted(set(processor_options) - set(PIXEL_LIMITS))
    if unknown:
        raise ValueError(f"unknown processor options {unknown}; the options are {sorted(PIXEL_LIMITS)}")
    bad = {k: v for k, v in processor_options.items() if isinstance(v, bool) or not isinstance(v, int) or v <= 0}
    if bad:
        raise ValueError(f"processor options {bad} must be positive pixel counts (ints)")
    low, high = processor_options.get("min_pixels"), processor_options.get("max_pixels")
    if low is not None and high is not None and low > high:
        raise ValueError(f"min_pixels {low} is above max_pixels {high}")
    if model_type not in PIXEL_LIMIT_FAMILIES:
        raise ValueError(f"processor options {sorted(processor_options)} apply to Qwen2-VL / Qwen2.5-VL "
                         f"processors (min_pixels / max_pixels); this is a {model_type} checkpoint: leave them out")


def processor_with_pixel_limits(model_path: str | os.PathLike, limits: dict[str, int] | None) -> Any:
    """The checkpoint's processor with ``limits`` as the bounds of the area its image and video processors resize
    to; each keeps its own other bound. Set on the loaded processors: a ``size=`` handed to ``from_pretrained``
    loses to the ``min_pixels`` / ``max_pixels`` keys of the published configs."""
    from transformers import AutoProcessor
    from transformers.image_utils import SizeDict

    processor = AutoProcessor.from_pretrained(model_path)
    if not limits:
        return processor
    for part in (getattr(processor, "image_processor", None), getattr(processor, "video_processor", None)):
        if part is None:
            continue
        size = {key: value for key, value in dict(part.size).items() if value is not None}
        size.update({PIXEL_LIMITS[option]: value for option, value in limits.items()})
        if size["shortest_edge"] > size["longest_edge"]:
            other = "max_pixels" if "min_pixels" in limits else "min_pixels"
            raise ValueError(f"min_pixels {size['shortest_edge']} is above max_pixels {size['longest_edge']} in the "
                             f"{type(part).__name__} ({other} is its own): give {other} too")
        part.size = SizeDict(**size)
    return processor


def load_hf_model(model_path: str | os.PathLike, device: torch.device, dtype: torch.dtype, attn: str = "sdpa",
                  conv_mode: str | None = None, known_as: str | None = None,
                  processor_options: dict[str, Any] | None = None) -> tuple[torch.nn.Module, Any]:
    """Load model + processor exactly like a hub checkpoint; refuse families we cannot prune. VILA1.5 only:
    ``conv_mode`` picks its template, ``known_as`` (a hub id) names it where the folder's name does not.
    Qwen2-VL / Qwen2.5-VL only: ``processor_options`` (``min_pixels``, ``max_pixels``) set the resolution range
    its processor resizes images and frames into, as VLMEvalKit's and lmms-eval's wrappers set their own."""
    model_type, model_path = model_type_of(model_path)
    if model_type not in ADAPTERS:
        raise ValueError(
            f"{model_path!r} is a {model_type!r} checkpoint, which has no token-compression adapter; "
            f"supported model types: {sorted(ADAPTERS)} (image/video input needs a multimodal checkpoint)"
        )
    check_processor_options(model_type, processor_options)
    if model_type == "vila":  # not a transformers model: assembled from its llm/, vision_tower/, mm_projector/
        from .vila import VilaForConditionalGeneration, VilaProcessor

        model = VilaForConditionalGeneration.from_pretrained(model_path, dtype=dtype, device=device,
                                                            attn_implementation=attn)
        processor = VilaProcessor.from_pretrained(model_path, conv_mode=conv_mode, known_as=known_as)
        processor.end_answers_at_template_stop(model)
        return model.eval(), processor
    from transformers import AutoModelForImageTextToText

    processor = processor_with_pixel_limits(model_path, processor_options)  # first: a bad limit costs no weights
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype, attn_implementation=attn)
    return model.to(device).eval(), processor


def build_scorer(
    method: str, model: torch.nn.Module, compressor: Any = None, seed: int = 0, max_answer_tokens: int = 16,
    instruction_rows: str = DEFAULT_INSTRUCTION_ROWS,
) -> Scorer | None:
    """The scorer for an input-stage method ("none" -> keep everything)."""
    check_method(method)
    if method == "none":
        return None
    if method == "random":
        return random_scorer(seed)
    if method == "a0":
        return A0Scorer(instruction_rows)
    if method == "divprune":
        return divprune_scorer()
    if method in ("uniform", "pool"):  # pool: uniform's lattice, each kept token the mean of its neighbourhood
        return uniform_scorer()
    if method == "tcc":
        return TCCScorer(compressors_by_modality(model, compressor), instruction_rows)
    if method == "oracle":
        from .oracle import oracle_scorer

        return oracle_scorer(max_answer_tokens=max_answer_tokens)
    if method == "visionzip":
        raise ValueError("method 'visionzip' splits its budget by keep_ratio; build it with wrap_model")
    raise ValueError(f"method {method!r} prunes inside the LLM, not at its input: build it with wrap_model")


MODALITIES = ("image", "video")


def check_modality_keys(compressors: Mapping[str, Any]) -> None:
    """Refuse a {modality: checkpoint} key that is no modality: a misspelt one would fall through to no compressor
    or, in the registry's lookup, to another one."""
    unknown = sorted(map(str, set(compressors) - set(MODALITIES)))
    if unknown:
        raise ValueError(f"compressor {{modality: checkpoint}} keys {', '.join(map(repr, unknown))}: a modality "
                         f"is one of {', '.join(MODALITIES)}")


def compressors_by_modality(model: torch.nn.Module, compressor: Any) -> dict[str, Any]:
    """A compressor per modality from: one checkpoint (used for both), a {modality: checkpoint} dict, or a
    directory holding ``<family>_<modality>.pt`` files (the layout of the shipped demo compressors)."""
    from .compressor import check_compressor_argument, load_compressor_for

    if isinstance(compressor, dict):
        check_modality_keys(compressor)
        return {m: _for_modality(load_compressor_for(model, c), m, c) for m, c in compressor.items()}
    if isinstance(compressor, (str, os.PathLike)) and os.path.isdir(compressor):
        family = adapter_for(model).family
        found = {m: os.path.join(compressor, f"{family}_{m}.pt") for m in MODALITIES}
        found = {m: path for m, path in found.items() if os.path.isfile(path)}
        if not found:
            raise FileNotFoundError(
                f"no {family}_image.pt or {family}_video.pt in compressor directory {str(compressor)!r}"
            )
        return {m: _for_modality(load_compressor_for(model, path), m, path) for m, path in found.items()}
    check_compressor_argument(compressor)
    loaded = load_compressor_for(model, compressor)
    other = [m for m in MODALITIES if loaded.modality not in (None, m)]
    if other:
        log.warning("compressor %s was trained on %s inputs; it will also score %s inputs (pass a {modality: "
                    "checkpoint} dict or a folder of <family>_<modality>.pt to use one per modality)",
                    compressor, loaded.modality, " and ".join(other))
    return {m: loaded for m in MODALITIES}


def _for_modality(compressor: Any, modality: str, source: Any) -> Any:
    """A compressor listed for ``modality`` must have been trained on it (attention patterns differ)."""
    if compressor.modality not in (None, modality):
        raise ValueError(
            f"compressor {source} was trained on {compressor.modality} inputs but is listed for {modality}; "
            f"train one on {modality} data (`python -m tcc_eval.compressor label ... && ... train ...`)"
        )
    return compressor


def check_option_types(options: dict[str, Any]) -> None:
    """``wrap_model``'s whole-number options as Python values (a framework's text is checked by
    ``check_option_values``): ``fastv_k='2'`` or ``seed='abc'`` would fail inside a method, ``max_answer_tokens=0``
    inside transformers' generate."""
    for name in ("seed", "fastv_k", "max_answer_tokens"):
        value = options.get(name, 1)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ValueError(f"{name}={value!r}: expected an integer")
    if options.get("max_answer_tokens", 1) < 1:
        raise ValueError(f"max_answer_tokens={options['max_answer_tokens']!r}: expected a positive integer (the "
                         f"oracle's answer length)")


# options.OPTION_DEFAULTS mirrors these option defaults for the tables (tests/test_aggregate.py checks them)
def wrap_model(
    model: torch.nn.Module,
    method: str = "random",
    keep_ratio: float = 0.5,
    compressor: Any = None,
    budget: str = "global",
    seed: int = 0,
    fastv_k: int = 2,
    match: str = "avg_retention",
    pdrop_layers: Sequence[int] | str | None = None,
    max_answer_tokens: int = 16,
    contextual_share: float | str = VISIONZIP_CONTEXTUAL_SHARE,
    positions: str = "original",
    instruction_rows: str = DEFAULT_INSTRUCTION_ROWS,
) -> TokenPrunedModel:
    """Wrap an already loaded HF MLLM; the result's ``generate`` is a drop-in for ``model.generate``.

    Options of other methods are ignored, so one option set (e.g. a base's ``fastv_k``) serves every
    method: ``fastv_k`` (the layer K) applies to fastv and dart, ``match`` to them and pdrop
    (``match="kept"``: keep_ratio is the fraction kept from layer K on, for pdrop its per-stage ratio,
    instead of the average retention over layers), ``pdrop_layers`` (the layers starting PyramidDrop's stages,
    its ``layer_list``) to pdrop, ``max_answer_tokens`` to the oracle, ``contextual_share`` (the share of
    kept tokens that are contextual; 0: dominant tokens only) to visionzip. ``positions="renumber"`` gives the
    kept tokens of an input-stage method consecutive position ids instead of their original ones (1-D ids only;
    the methods that prune inside the LLM refuse it: their first layers' cache holds the original ids).
    ``instruction_rows`` (a0 and tcc) picks the text rows whose layer-0 attention scores the visual tokens
    (``options.INSTRUCTION_ROWS``; a tcc compressor must have been labelled with the same rule)."""
    if isinstance(model, (TokenPrunedModel, CompressedMLLM)):
        raise TypeError(f"model is already a pruned {type(model).__name__}: wrap the HF model it holds (its .model)")
    check_method(method)
    check_option_types({"seed": seed, "fastv_k": fastv_k, "max_answer_tokens": max_answer_tokens})
    if budget not in BUDGETS:  # else found only at the first sample with several images or frames
        raise ValueError(f"budget={budget!r}: expected {' or '.join(BUDGETS)}")
    if method in INSIDE_LLM_METHODS and positions != "original":
        raise ValueError(f"positions={positions!r} applies to methods that prune before the LLM; {method} prunes "
                         f"inside it, after layers whose KV cache holds the original ids: leave positions='original'")
    adapter = adapter_for(model)
    check_positions(positions, adapter)  # before a scorer loads anything
    if method != "none":
        adapter.check_full_attention()
    if method in INSIDE_LLM_METHODS:
        from .fastv import DartModel, FastVModel, PyramidDropModel

        if method == "pdrop":
            return PyramidDropModel(model, keep_ratio=keep_ratio, match=match, pdrop_layers=pdrop_layers)
        layer_k_model = FastVModel if method == "fastv" else DartModel
        return layer_k_model(model, keep_ratio=keep_ratio, fastv_k=fastv_k, match=match)
    if method == "visionzip":  # its dominant / contextual split depends on the budget: scorer and merger in one
        zip_plan = VisionZip(keep_ratio, budget, contextual_share)
        return TokenPrunedModel(model, zip_plan, keep_ratio=keep_ratio, budget=budget, method=method,
                                merger=zip_plan.merge, positions=positions)
    scorer = build_scorer(method, model, compressor=compressor, seed=seed, max_answer_tokens=max_answer_tokens,
                          instruction_rows=instruction_rows)
    merger = pool_merger() if method == "pool" else None
    return TokenPrunedModel(model, scorer, keep_ratio=keep_ratio, budget=budget, method=method, merger=merger,
                            positions=positions)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")  # what a frames folder's frames may be
IMAGE_KEYS = ("image", "path", "url", "base64")  # where an image part holds its image (transformers' chat format)


def read_video(path: str | os.PathLike, num_frames: int = 8) -> tuple[list, Any]:
    """``num_frames`` frames sampled uniformly from a video file with decord (PIL images), and their
    ``VideoMetadata`` (None when the file states no frame rate): Qwen2.5-VL spaces its temporal position ids by
    the sampled frame rate, and a processor handed bare frames assumes 24 fps, which puts a whole clip's frames on
    one or two temporal ids. A folder of frame images (in name order) is a video whose frame rate is unknown."""
    from PIL import Image
    from transformers.video_utils import VideoMetadata

    if os.path.isdir(path):
        files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"frames folder {str(path)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return [Image.open(files[i]).convert("RGB") for i in uniform_indices(len(files), num_frames)], None
    reader = open_video(path)
    count = len(reader)
    indices = uniform_indices(count, num_frames)
    fps = float(reader.get_avg_fps())
    metadata = (VideoMetadata(total_num_frames=count, fps=fps, frames_indices=indices, duration=count / fps)
                if fps > 0 else None)  # a stream without a rate: the processor's default, as for bare frames
    return [Image.fromarray(frame) for frame in reader.get_batch(indices).asnumpy()], metadata


def uniform_indices(total: int, count: int) -> list[int]:
    """Frame ``i`` of ``count`` from the middle of its equal share of ``total`` frames (all of a short video)."""
    if total <= count:
        return list(range(total))
    return [int((i + 0.5) * total / count) for i in range(count)]


def read_media(messages: list[dict], num_frames: int) -> tuple[list[dict], dict[str, Any]]:
    """The messages with every medium given as text read, and the processor options that tell it the frames' timing
    (none unless every video came from a file).

    Video paths become decoded frames (transformers' own decoder needs torchcodec). Images given as text under
    "image" or "path" (a file or base64 data) are opened with PIL: transformers would decode them with torchvision,
    whose PNG decoder fails ('bad parameters to zlib') in a process that imported VLMEvalKit before it first ran;
    URLs are left to the processor. Media the processor could not read are named with the fix (its errors name
    neither)."""
    if isinstance(messages, (str, dict)) or not all(isinstance(m, dict) for m in messages):
        raise TypeError(f"messages must be a list of chat turns, e.g. [{{'role': 'user', 'content': [{{'type': "
                        f"'image', 'image': 'cat.jpg'}}, {{'type': 'text', 'text': 'What is the cat doing?'}}]}}]; "
                        f"got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty: pass at least one user turn with the image or video and the question")
    out, metadata, given_frames = [], [], False
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                check_content_part(part)
                kind, video = part.get("type"), part.get("video")
                if kind == "video" and isinstance(video, (str, os.PathLike)):
                    frames, meta = read_video(video, num_frames)
                    part = {**part, "video": frames}
                    metadata.append(meta)
                elif kind == "video":
                    if isinstance(video, (list, tuple)) and not video:
                        raise ValueError("a video part holds no frames: pass its frames (PIL images), a video file "
                                         "or a folder of frame images")
                    given_frames = True
                elif kind == "image":
                    key = next((k for k in IMAGE_KEYS if k in part), None)
                    if key is None or part[key] is None or isinstance(part[key], (numbers.Number, dict, list, tuple)):
                        raise ValueError(f"an image part needs one of {', '.join(map(repr, IMAGE_KEYS))}: a PIL image, "
                                         f"a file path, a URL or base64 text; got {part!r:.200}")
                    if key in ("image", "path") and isinstance(part[key], (str, os.PathLike)):
                        part = {**part, key: open_image_reference(os.fspath(part[key]))}
                parts.append(part)
            content = parts
        out.append({**message, "content": content})
    if given_frames:  # frames handed over without their timing
        metadata.append(None)
    return out, video_timing_options(metadata)


CONTENT_TYPES = ("text", "image", "video")


def check_content_part(part: Any) -> None:
    """Refuse a part the chat template would drop or misread: a bare string, another type, text under another key
    (the question vanished from the prompt and the model answered without it)."""
    example = "{'type': 'text', 'text': 'What is the cat doing?'}"
    if not isinstance(part, dict):
        raise TypeError(f"a content part must be a dict such as {example} or {{'type': 'image', 'image': ...}}; got "
                        f"{type(part).__name__} {part!r:.80}")
    if part.get("type") not in CONTENT_TYPES:
        raise ValueError(f"content part type {part.get('type')!r} is not one of {', '.join(map(repr, CONTENT_TYPES))}:"
                         f" {part!r:.200}")
    if part["type"] == "text" and not isinstance(part.get("text"), str):
        raise ValueError(f"a text part holds its text under 'text', e.g. {example}; got {part!r:.200}")


def open_image_reference(ref: str) -> Any:
    """An image given as text, read as transformers reads it (a URL, a file, else base64 data, turned upright by
    its EXIF orientation): the URL as given, the others as RGB PIL images."""
    from PIL import Image, ImageOps

    if ref.startswith(("http://", "https://")):
        return ref
    if os.path.isdir(ref):
        raise IsADirectoryError(f"image {ref!r} is a folder: pass an image file (a folder of frames is a video)")
    if os.path.isfile(ref):
        try:
            return ImageOps.exif_transpose(Image.open(ref)).convert("RGB")
        except Exception as err:  # noqa: BLE001 - PIL raises several kinds for a file it cannot read
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            raise ValueError(f"cannot decode image {ref!r} ({reason}): pass a PNG, JPEG or other image file PIL "
                             f"opens, or a PIL image") from None
    try:  # as leniently as transformers: line breaks and other characters outside the alphabet are skipped
        data = base64.b64decode(ref.split(",", 1)[-1] if ref.startswith("data:") else ref)
        return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    except Exception:  # noqa: BLE001 - not base64, or not an image once decoded
        raise FileNotFoundError(f"image {ref[:80]!r} is neither an existing file, a URL nor base64 image "
                                f"data") from None


def video_timing_options(metadata: list) -> dict[str, Any]:
    """The processor options that give each video's frames their timing (``read_video``'s metadata, in the order
    of the videos): none unless every video has it, since the processor takes one list for all of them."""
    return {"video_metadata": metadata, "do_sample_frames": False} if metadata and None not in metadata else {}


class CompressedMLLM:
    """A loaded MLLM + processor + pruning method, driven with HF chat-format messages."""

    def __init__(self, pruned: TokenPrunedModel, processor: Any, num_frames: int = 8):
        self.pruned = pruned
        self.processor = processor
        self.num_frames = num_frames

    @property
    def model(self) -> torch.nn.Module:
        return self.pruned.model

    @property
    def last_selection(self) -> Selection | None:
        return self.pruned.last_selection

    @property
    def last_stats(self) -> dict[str, Any]:
        return self.pruned.last_stats

    def prepare(self, messages: list[dict]) -> dict[str, torch.Tensor]:
        """Chat messages (images as PIL, files or base64; a video as frames, a file or a frames folder) -> inputs."""
        messages, video_options = read_media(messages, self.num_frames)
        inputs = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt", **video_options)
        return on_model_device(self.model, {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)})

    def generate(self, messages: list[dict], max_new_tokens: int = 32, **gen_kwargs: Any) -> str:
        inputs = self.prepare(messages)
        gen_kwargs.setdefault("do_sample", False)
        output = self.pruned.generate(**inputs, max_new_tokens=max_new_tokens, **gen_kwargs)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0].strip()


def load(
    model_path: str | os.PathLike,
    method: str = "random",
    keep_ratio: float = 0.5,
    compressor: Any = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    processor_options: dict[str, Any] | None = None,
    **options: Any,
) -> CompressedMLLM:
    """Load a checkpoint and attach a pruning method.

    method: none | random | a0 | tcc | oracle | divprune | uniform | pool | visionzip | fastv | dart | pdrop;
    keep_ratio in (0, 1];
    compressor: a trained compressor checkpoint, {modality: checkpoint} or a folder of
    ``<family>_<modality>.pt`` (required for tcc); processor_options: Qwen2-VL / Qwen2.5-VL pixel limits
    (``{"min_pixels": ..., "max_pixels": ...}``); options: ``wrap_model``'s (budget, seed, fastv_k, match,
    pdrop_layers, max_answer_tokens, contextual_share, positions, instruction_rows). CUDA when available
    (bf16/fp16), else CPU (fp32).
    """
    from .core import check_keep_ratio

    check_method(method)
    check_keep_ratio(keep_ratio)
    check_option_values(options)  # names and values, before the weights load (the model-dependent ranges come after)
    check_option_types(options)
    if method == "tcc":
        from .compressor import check_compressor_argument

        check_compressor_argument(compressor)
    device = default_device(device)
    dtype = default_dtype(device, dtype)
    # sdpa for every method: the oracle switches to eager for its own pass only (oracle.eager_attention), so its
    # vision features and answer are computed as vanilla's and its prefill time compares with the other rows'
    model, processor = load_hf_model(model_path, device, dtype, processor_options=processor_options)
    pruned = wrap_model(model, method=method, keep_ratio=keep_ratio, compressor=compressor, **options)
    return CompressedMLLM(pruned, processor)
