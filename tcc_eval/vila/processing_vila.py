"""VILA1.5 prompts and pixels: conversation templates, VILA image preprocessing, an HF-like processor.

Prompts follow VILA's own evaluation scripts: an image becomes ``<image>\\n`` before its text, a video of T
frames becomes ``<image>\\n`` * T (``llava/eval/model_vqa_video.py``), and the prompt is split at ``<image>``
and each text chunk tokenized on its own, BOS only on the first (``tokenizer_image_token``), so the ids equal
VILA's for the same tokenizer. Each ``<image>`` then becomes ``num_image_tokens`` placeholder ids (196 for
VILA1.5) that the model overwrites with image features.

Templates (``llava/conversation.py``): ``vicuna_v1`` (VILA1.5-3b/13b), ``llama_3_vila1.5`` (Llama-3-VILA1.5-8b:
the ``llama_3`` of the VILA1.5 release code it was trained with, whose answer header says ``system`` and whose
separator is ``<|end_of_text|>``), ``llama_3`` (the corrected form of VILA's main branch, ``assistant`` and
``<|eot_id|>``, for Llama-3-VILA1.5-8B-Fix, retrained on it) and ``hermes-2`` (VILA1.5-40b). Images are resized
to the tower's square size (``image_aspect_ratio == "resize"``, VILA1.5's setting) or padded to a square with the
mean colour first (``"pad"``), then rescaled and normalised with the tower's ``preprocessor_config.json``.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from PIL import Image

from .modeling_vila import VilaConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"


@dataclass(frozen=True)
class VilaChatTemplate:
    """One VILA conversation style as format strings: ``{system}`` / ``{content}`` get the message text."""

    name: str
    system: str
    system_block: str
    user_block: str
    assistant_block: str
    generation_prompt: str
    stop: str

    def render(self, turns: Sequence[tuple[str, str]], add_generation_prompt: bool = True) -> str:
        """``turns``: (role, text) pairs; a leading system turn replaces the default system prompt."""
        system = self.system
        if turns and turns[0][0] == "system":
            system, turns = turns[0][1], turns[1:]
        blocks = {"user": self.user_block, "assistant": self.assistant_block}
        parts = [self.system_block.format(system=system)]
        for role, text in turns:
            if role not in blocks:
                raise ValueError(f"unsupported message role {role!r} after the first message; use user/assistant")
            parts.append(blocks[role].format(content=text))
        if add_generation_prompt:
            parts.append(self.generation_prompt)
        return "".join(parts)


CHAT_TEMPLATES = {
    "vicuna_v1": VilaChatTemplate(
        name="vicuna_v1",
        system="A chat between a curious user and an artificial intelligence assistant. "
               "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        system_block="{system} ",
        user_block="USER: {content} ",
        assistant_block="ASSISTANT: {content}</s>",
        generation_prompt="ASSISTANT:",
        stop="</s>",
    ),
    "llama_3": VilaChatTemplate(
        name="llama_3",
        system="You are a helpful language and vision assistant. You are able to understand the visual content "
               "that the user provides, and assist the user with a variety of tasks using natural language.",
        system_block="<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        user_block="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant_block="<|start_header_id|>assistant<|end_header_id|>\n\n{content}<|eot_id|>",
        generation_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
        stop="<|eot_id|>",
    ),
    "llama_3_vila1.5": VilaChatTemplate(
        name="llama_3_vila1.5",
        system="You are a helpful language and vision assistant. You are able to understand the visual content "
               "that the user provides, and assist the user with a variety of tasks using natural language.",
        system_block="<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|end_of_text|>",
        user_block="<|start_header_id|>user<|end_header_id|>\n\n{content}<|end_of_text|>",
        assistant_block="<|start_header_id|>system<|end_header_id|>\n\n{content}<|end_of_text|>",
        generation_prompt="<|start_header_id|>system<|end_header_id|>\n\n",
        stop="<|end_of_text|>",
    ),
    "hermes-2": VilaChatTemplate(
        name="hermes-2",
        system="Answer the questions.",
        system_block="<|im_start|>system\n{system}<|im_end|>",
        user_block="<|im_start|>user\n{content}<|im_end|>",
        assistant_block="<|im_start|>assistant\n{content}<|im_end|>",
        generation_prompt="<|im_start|>assistant\n",
        stop="<|im_end|>",
    ),
}

# Published checkpoint name fragments -> template, first match (VILA's README and TensorRT-LLM's VILA mapping).
CHECKPOINT_CONV_MODES = {
    "vila1.5-8b-fix": "llama_3",  # retrained on the corrected template (VILA README, September 2024)
    "llama-3-vila1.5": "llama_3_vila1.5",
    "vila1.5-8b": "llama_3_vila1.5",
    "vila1.5-3b": "vicuna_v1",
    "vila1.5-13b": "vicuna_v1",
    "vila1.5-40b": "hermes-2",
}


def _eos_ids(model: Any) -> set[int]:
    """The EOS ids a model's generation config lists (one id, a list, or none)."""
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def conv_mode_from_name(name: str) -> str | None:
    """The template of a published checkpoint, from its hub id or folder name (None: not one of them)."""
    name = name.lower()
    return next((mode for key, mode in CHECKPOINT_CONV_MODES.items() if key in name), None)


def resolve_conv_mode(config: VilaConfig, tokenizer: Any, conv_mode: str | None = None,
                      known_as: str | None = None) -> str:
    """Explicit argument, else config.json's ``conv_mode``, else the checkpoint's folder name, else ``known_as``
    (the hub id a registry knows the folder by), else the tokenizer's style (a Llama-3 vocabulary: VILA's current
    ``llama_3``, with a warning: the two 8B checkpoints share that vocabulary but not their template)."""
    mode = (conv_mode or config.conv_mode or conv_mode_from_name(config.name_or_path)
            or conv_mode_from_name(known_as or ""))
    if mode is None:
        vocab = tokenizer.get_vocab()
        mode = "llama_3" if "<|eot_id|>" in vocab else "hermes-2" if "<|im_start|>" in vocab else "vicuna_v1"
        if mode == "llama_3":
            warnings.warn(f"{config.name_or_path} names no VILA checkpoint, and its Llama-3 vocabulary fits two "
                          f"templates: llama_3 (Llama-3-VILA1.5-8B-Fix, VILA's main branch) is used. For the "
                          f"original Llama-3-VILA1.5-8b add \"conv_mode\": \"llama_3_vila1.5\" to its config.json "
                          f"(or pass conv_mode= in VLMEvalKit, conv_template= in lmms-eval)", stacklevel=2)
    if mode not in CHAT_TEMPLATES:
        raise ValueError(f"unknown VILA conv_mode {mode!r}; choose one of {sorted(CHAT_TEMPLATES)}")
    return mode


# --------------------------------------------------------------------------------------------- pixels


@dataclass(frozen=True)
class VilaImageSpec:
    """The vision tower's preprocessor_config.json fields VILA's preprocessing uses."""

    height: int
    width: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    rescale_factor: float = 1 / 255
    resample: int = Image.Resampling.BICUBIC
    shortest_edge: int | None = None  # CLIP: resize the short side, then centre-crop height x width
    raw: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, cfg: dict) -> "VilaImageSpec":
        size, crop = cfg.get("size", {}), cfg.get("crop_size")
        square = crop if crop else size
        return cls(
            height=square["height"], width=square["width"],
            image_mean=tuple(cfg.get("image_mean", (0.5, 0.5, 0.5))),
            image_std=tuple(cfg.get("image_std", (0.5, 0.5, 0.5))),
            rescale_factor=cfg.get("rescale_factor", 1 / 255),
            resample=cfg.get("resample", Image.Resampling.BICUBIC),
            shortest_edge=size.get("shortest_edge") if crop else None,
            raw=cfg,
        )


def _expand_to_square(image: Image.Image, color: tuple[int, ...]) -> Image.Image:
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), color)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def preprocess_image(image: Any, spec: VilaImageSpec, aspect_ratio: str | None) -> torch.Tensor:
    """One image -> (3, H, W) float tensor, as VILA's ``process_image`` + the tower's image processor."""
    image = _to_pil(image).convert("RGB")
    if aspect_ratio == "resize":
        image = image.resize((spec.width, spec.height))
    elif aspect_ratio == "pad":
        image = _expand_to_square(image, tuple(int(m * 255) for m in spec.image_mean))
    if spec.shortest_edge is not None:  # CLIP: short side to shortest_edge, then centre crop
        scale = spec.shortest_edge / min(image.size)
        w, h = image.size
        image = image.resize((max(spec.shortest_edge, int(w * scale)), max(spec.shortest_edge, int(h * scale))),
                             resample=spec.resample)
        left, top = (image.width - spec.width) // 2, (image.height - spec.height) // 2
        image = image.crop((left, top, left + spec.width, top + spec.height))
    elif image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), resample=spec.resample)
    array = np.asarray(image, dtype=np.float32) * np.float32(spec.rescale_factor)
    array = (array - np.asarray(spec.image_mean, np.float32)) / np.asarray(spec.image_std, np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def _to_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        return Image.open(image)
    array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    return Image.fromarray(array.astype(np.uint8))


def sample_frame_indices(total_frames: int, num_frames: int) -> list[int]:
    """VILA1.5's frame choice: ``linspace(0, total - 2, num)`` (opencv_extract_frames, lmms-eval's VILA)."""
    last = max(total_frames - 2, 0)
    return [min(int(i), total_frames - 1) for i in np.linspace(0, last, num_frames)]


def load_video_frames(path: str | Path, num_frames: int) -> list[Image.Image]:
    """Decode ``num_frames`` frames of a video file with decord, sampled as VILA1.5 does."""
    from ..media import open_video

    reader = open_video(path)
    frames = reader.get_batch(sample_frame_indices(len(reader), num_frames)).asnumpy()
    return [Image.fromarray(frame) for frame in frames]


def _is_single_frame(item: Any) -> bool:
    if isinstance(item, Image.Image):
        return True
    return hasattr(item, "ndim") and item.ndim == 3


def _as_video_list(videos: Any) -> list:
    """A video (frames list / 4-D array / path) or a list of them -> list of videos."""
    if videos is None:
        return []
    if isinstance(videos, (str, Path)) or (hasattr(videos, "ndim") and videos.ndim == 4):
        return [videos]
    videos = list(videos)
    return [videos] if videos and _is_single_frame(videos[0]) else videos


def _as_image_list(images: Any) -> list:
    if images is None:
        return []
    if _is_single_frame(images) or isinstance(images, (str, Path)):
        return [images]
    flat = []
    for item in images:
        flat.extend(_as_image_list(item) if isinstance(item, (list, tuple)) else [item])
    return flat


# --------------------------------------------------------------------------------------------- processor


class VilaProcessor:
    """Turns chat messages / placeholder text + images / videos into ``input_ids``, ``attention_mask``,
    ``pixel_values`` for :class:`VilaForConditionalGeneration` (left padding for batches)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_spec: VilaImageSpec, config: VilaConfig,
                 conv_mode: str | None = None, known_as: str | None = None):
        self.tokenizer = tokenizer
        self.image_spec = image_spec
        self.config = config
        self.conv_mode = resolve_conv_mode(config, tokenizer, conv_mode, known_as)
        self.template = CHAT_TEMPLATES[self.conv_mode]

    @classmethod
    def from_pretrained(cls, path: str | Path, conv_mode: str | None = None,
                        known_as: str | None = None) -> "VilaProcessor":
        from transformers import AutoTokenizer

        root = Path(path)
        config = VilaConfig.from_pretrained(root)
        tokenizer = AutoTokenizer.from_pretrained(root / "llm", padding_side="left")
        preprocessor = root / "vision_tower" / "preprocessor_config.json"
        if not preprocessor.is_file():
            raise FileNotFoundError(f"{preprocessor} is missing: VILA checkpoints keep the image processor settings "
                                    f"(size, image_mean, image_std) next to the vision tower")
        return cls(tokenizer, VilaImageSpec.from_dict(json.loads(preprocessor.read_text())), config, conv_mode,
                   known_as)

    def save_pretrained(self, out_dir: str | Path) -> None:
        """Tokenizer into ``llm/`` and the image settings into ``vision_tower/``, as VILA stores them."""
        out = Path(out_dir)
        self.tokenizer.save_pretrained(out / "llm")
        (out / "vision_tower").mkdir(parents=True, exist_ok=True)
        (out / "vision_tower" / "preprocessor_config.json").write_text(json.dumps(self.image_spec.raw, indent=2))

    # -- properties the glue code uses -------------------------------------------------------------------

    @property
    def image_token_id(self) -> int:
        return self.config.image_token_id

    @property
    def num_image_tokens(self) -> int:
        return self.config.num_image_tokens

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end an answer: the template's stop token and the tokenizer's EOS."""
        ids = [self.tokenizer.convert_tokens_to_ids(self.template.stop), self.tokenizer.eos_token_id]
        return sorted({i for i in ids if isinstance(i, int) and i != self.tokenizer.unk_token_id})

    def answer_stop_ids(self, model: Any) -> list[int]:
        """Where VILA's evaluation ends an answer: the template's separator (its keyword criterion) and the LLM's
        own EOS ids (its generation config, which VILA's generate keeps), with the tokenizer's EOS (the same id in
        the published checkpoints' LLM folders)."""
        return sorted(_eos_ids(model) | set(self.stop_token_ids))

    def end_answers_at_template_stop(self, model: Any) -> None:
        """Add the template's stop token to the model's EOS ids. VILA's evaluation stops at the template's
        separator (a keyword criterion), which the LLM's generation config need not list (Llama-3's
        <|eot_id|>); with it there, every generate that passes no EOS of its own (the oracle's draft answer,
        compressor labels, ``tcc_eval.load``) ends an answer where the frameworks do."""
        stop_ids = self.answer_stop_ids(model)
        if set(stop_ids) != _eos_ids(model):
            model.generation_config.eos_token_id = stop_ids

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    # -- text ----------------------------------------------------------------------------------------------

    def tokenize_prompt(self, prompt: str) -> list[int]:
        """VILA's ``tokenizer_image_token`` with each ``<image>`` widened to ``num_image_tokens`` placeholders."""
        chunks = prompt.split(IMAGE_PLACEHOLDER)
        ids = list(self.tokenizer(chunks[0]).input_ids)
        for chunk in chunks[1:]:
            ids += [self.image_token_id] * self.num_image_tokens
            ids += self.tokenizer(chunk, add_special_tokens=False).input_ids
        return ids

    def __call__(self, text: str | Sequence[str], images: Any = None, videos: Any = None,
                 return_tensors: str = "pt", **unused: Any):
        """``text`` holds one ``<image>`` per image and one ``<video>`` per video, in the order given."""
        from transformers import BatchFeature

        if return_tensors != "pt":
            raise ValueError("VilaProcessor returns PyTorch tensors only (return_tensors='pt')")
        texts = [text] if isinstance(text, str) else list(text)
        image_list, video_list = _as_image_list(images), _as_video_list(videos)
        n_image_slots = sum(t.count(IMAGE_PLACEHOLDER) for t in texts)
        n_video_slots = sum(t.count(VIDEO_PLACEHOLDER) for t in texts)
        if n_image_slots != len(image_list) or n_video_slots != len(video_list):
            raise ValueError(f"text has {n_image_slots} '{IMAGE_PLACEHOLDER}' and {n_video_slots} "
                             f"'{VIDEO_PLACEHOLDER}' placeholders but {len(image_list)} images and {len(video_list)} "
                             f"videos were given")
        images_left, videos_left = iter(image_list), iter(video_list)
        pixels, rows = [], []
        for prompt in texts:
            pieces = re.split(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(VIDEO_PLACEHOLDER)})", prompt)
            for i, piece in enumerate(pieces):
                if piece == IMAGE_PLACEHOLDER:
                    pixels.append(self.preprocess(next(images_left)))
                elif piece == VIDEO_PLACEHOLDER:
                    frames = self._video_frames(next(videos_left))
                    pixels.extend(self.preprocess(frame) for frame in frames)
                    pieces[i] = (IMAGE_PLACEHOLDER + "\n") * len(frames)
            rows.append(self.tokenize_prompt("".join(pieces)))
        data = self._pad_left(rows)
        if pixels:
            data["pixel_values"] = torch.stack(pixels)
        return BatchFeature(data=data)

    def _video_frames(self, video: Any) -> list:
        if isinstance(video, (str, Path)):
            return load_video_frames(video, self.config.num_video_frames)
        return list(video)

    def preprocess(self, image: Any) -> torch.Tensor:
        return preprocess_image(image, self.image_spec, self.config.image_aspect_ratio)

    def _pad_left(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id or 0
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if row:
                input_ids[i, width - len(row):] = torch.tensor(row)
                attention_mask[i, width - len(row):] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    # -- chat ----------------------------------------------------------------------------------------------

    def _render(self, messages: Sequence[dict], add_generation_prompt: bool) -> tuple[str, list, list]:
        turns, images, videos = [], [], []
        for message in messages:
            content = message["content"]
            if isinstance(content, str):
                turns.append((message["role"], content))
                continue
            text = ""
            for item in content:
                kind = item.get("type") or next(k for k in ("image", "video", "text") if k in item)
                if kind == "image":
                    images.append(item.get("image", item.get("path", item.get("url"))))
                    text += IMAGE_PLACEHOLDER + "\n"
                elif kind == "video":
                    videos.append(item.get("video", item.get("path", item.get("url"))))
                    text += VIDEO_PLACEHOLDER
                elif kind == "text":
                    text += item["text"]
                else:
                    raise ValueError(f"unsupported content type {kind!r}; use image, video or text")
            turns.append((message["role"], text))
        return self.template.render(turns, add_generation_prompt), images, videos

    def apply_chat_template(self, conversation: Sequence[dict] | Sequence[Sequence[dict]],
                            add_generation_prompt: bool = True, tokenize: bool = False, return_dict: bool = False,
                            return_tensors: str = "pt", **unused: Any) -> Any:
        """HF chat messages -> VILA prompt text, or (``tokenize=True``) the model inputs.

        Content items: ``{"type": "image", "image": PIL/path}``, ``{"type": "video", "video": frames or path}``,
        ``{"type": "text", "text": ...}``; a batch is a list of conversations (left-padded).
        """
        batch = not isinstance(conversation[0], dict)
        conversations = conversation if batch else [conversation]
        rendered = [self._render(c, add_generation_prompt) for c in conversations]
        prompts = [r[0] for r in rendered]
        if not tokenize:
            return prompts if batch else prompts[0]
        inputs = self(prompts, images=[i for r in rendered for i in r[1]] or None,
                      videos=[v for r in rendered for v in r[2]] or None, return_tensors=return_tensors)
        return inputs if return_dict else inputs["input_ids"]
