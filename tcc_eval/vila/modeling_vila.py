"""VILA1.5 on plain transformers: Llama LLM + SigLIP/CLIP vision tower + VILA multimodal projector.

A VILA1.5 checkpoint (``Efficient-Large-Model/VILA1.5-3b`` and relatives) is a folder::

    config.json         top level: mm_vision_select_layer, mm_vision_select_feature, image_aspect_ratio,
                        num_video_frames, llm_cfg / vision_tower_cfg / mm_projector_cfg copies
    llm/                HF LlamaForCausalLM (+ tokenizer)
    vision_tower/       HF SiglipVisionModel or CLIPVisionModel, keys ``vision_model.*`` (+ preprocessor_config.json)
    mm_projector/       config.json (``mm_projector_type``) + model.safetensors, keys ``layers.*``

Covered checkpoints (LLM, vision tower, projector, conversation template):

======================  ==========================  ==========================  ==============  ===============
checkpoint              LLM                         vision tower                projector       template
======================  ==========================  ==========================  ==============  ===============
VILA1.5-3b              Sheared-LLaMA-2.7B (Llama)  siglip-so400m-patch14-384  mlp_downsample  vicuna_v1
Llama-3-VILA1.5-8b      Llama-3-8B-Instruct         siglip-so400m-patch14-384  mlp_downsample  llama_3_vila1.5
Llama-3-VILA1.5-8B-Fix  Llama-3-8B-Instruct         siglip-so400m-patch14-384  mlp_downsample  llama_3
VILA1.5-13b             Vicuna-13B (Llama)          siglip-so400m-patch14-384  mlp_downsample  vicuna_v1
======================  ==========================  ==========================  ==============  ===============

Not covered, with a clear error: VILA1.5-40b (InternViT-6B vision tower: no transformers class), the
``-s2`` variants (multi-scale S2 vision tower) and NVILA (dynamic_s2 tiling, Qwen2 LLM).

Faithfulness notes (from the NVlabs VILA ``vila1.5`` branch, read, not copied):
- features = vision tower ``hidden_states[mm_vision_select_layer]`` (-2), minus the first token when the select
  feature is ``patch`` ('cls_patch' keeps all; SigLIP has no CLS token, so VILA1.5 keeps all 729).
- ``mlp_downsample`` merges 2x2 neighbouring tokens (odd grids get a zero row and column first: 27x27 -> 28x28 ->
  196 tokens) and, as VILA1.5 was trained, emits the merged cells column by column (index = col * rows + row).
  NVILA's code later added a transpose that makes the order row-major; VILA1.5 checkpoints predate it.
- Image tokens replace placeholder ids one-to-one (LLaVA-HF style); position ids are ``cumsum(mask) - 1`` so a
  left-padded batch gets the 0..n-1 positions VILA gives each unpadded sample.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import GenerationConfig
    from transformers.modeling_outputs import CausalLMOutputWithPast

IMAGE_TOKEN_INDEX = -200  # VILA's placeholder id when the tokenizer has no <image> token
SUPPORTED_VISION_TOWERS = {"siglip_vision_model", "clip_vision_model"}
VISION_KEY_PREFIX = "vision_model."  # key prefix of vision_tower/ safetensors in VILA checkpoints
_IGNORED_CHECKPOINT_SUFFIXES = ("rotary_emb.inv_freq", "position_ids")  # buffers transformers never loads


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a VILA1.5 checkpoint needs config.json, llm/, vision_tower/ "
                                f"and mm_projector/ folders, each with its config.json")
    return json.loads(path.read_text())


def _as_dtype(value: Any) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    name = str(value).removeprefix("torch.")
    dtype = getattr(torch, name, None)
    return dtype if isinstance(dtype, torch.dtype) else None


# --------------------------------------------------------------------------------------------- projector


class VilaDownsample2x2(nn.Module):
    """Concatenate each 2x2 block of a square token grid into one token of 4x the width (VILA1.5 order)."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, count, width = tokens.shape
        side = math.isqrt(count)
        if side * side != count:
            raise ValueError(f"mlp_downsample needs a square token grid, got {count} tokens; use "
                             f"mm_vision_select_feature='cls_patch' for SigLIP and 'patch' for CLIP towers")
        grid = tokens.reshape(batch, side, side, width)
        if side % 2:
            grid = nn.functional.pad(grid, (0, 0, 0, 1, 0, 1))  # zero column on the right, zero row at the bottom
            side += 1
        half = side // 2
        blocks = grid.reshape(batch, half, 2, half, 2, width)  # (b, row, d_row, col, d_col, c)
        return blocks.permute(0, 3, 1, 2, 4, 5).reshape(batch, half * half, 4 * width)  # column-major cells


def projected_token_count(projector_type: str, num_input_tokens: int) -> int:
    """Tokens per image after the projector: mlp_downsample merges 2x2 cells of the (odd sides padded) grid."""
    if projector_type != "mlp_downsample":
        return num_input_tokens
    return math.ceil(math.isqrt(num_input_tokens) / 2) ** 2


class VilaMultimodalProjector(nn.Module):
    """VILA's ``mm_projector``: parameters live in ``self.layers`` so state-dict keys match ``layers.*``."""

    def __init__(self, projector_type: str, vision_hidden: int, text_hidden: int):
        super().__init__()
        mlp = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
        if projector_type == "mlp_downsample":
            self.layers = nn.Sequential(
                VilaDownsample2x2(),
                nn.LayerNorm(4 * vision_hidden),
                nn.Linear(4 * vision_hidden, text_hidden),
                nn.GELU(),
                nn.Linear(text_hidden, text_hidden),
            )
        elif projector_type == "linear":
            self.layers = nn.Linear(vision_hidden, text_hidden)
        elif mlp:
            modules: list[nn.Module] = [nn.Linear(vision_hidden, text_hidden)]
            for _ in range(int(mlp.group(1)) - 1):
                modules += [nn.GELU(), nn.Linear(text_hidden, text_hidden)]
            self.layers = nn.Sequential(*modules)
        else:
            raise ValueError(f"unknown VILA mm_projector_type {projector_type!r}; supported: 'mlp_downsample', "
                             f"'linear', 'mlp<N>x_gelu' (e.g. 'mlp2x_gelu')")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


# --------------------------------------------------------------------------------------------- config


@dataclass
class VilaConfig:
    """What the model and processor need from a VILA1.5 folder; sub-configs come from the part folders."""

    text_config: Any
    vision_config: Any
    projector_type: str = "mlp_downsample"
    vision_select_layer: int = -2
    vision_select_feature: str = "cls_patch"
    image_aspect_ratio: str | None = "resize"
    num_video_frames: int = 8
    image_token_id: int = IMAGE_TOKEN_INDEX
    conv_mode: str | None = None
    name_or_path: str = ""
    model_type: str = "vila"

    def get_text_config(self, *args: Any, **kwargs: Any) -> Any:
        return self.text_config

    @property
    def _attn_implementation(self) -> str | None:
        """The LLM's attention backend (what HF code reads from ``model.config``)."""
        return getattr(self.text_config, "_attn_implementation", None)

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def num_vision_tokens(self) -> int:
        """Tokens per image leaving the vision tower after feature selection."""
        side = self.vision_config.image_size // self.vision_config.patch_size
        has_cls = self.vision_config.model_type == "clip_vision_model"
        return side * side + int(has_cls) - int(self.vision_select_feature == "patch")

    @property
    def num_image_tokens(self) -> int:
        """Tokens per image (or video frame) that reach the LLM."""
        return projected_token_count(self.projector_type, self.num_vision_tokens)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "VilaConfig":
        from transformers import AutoConfig

        root = Path(path)
        top = _read_json(root / "config.json")
        if top.get("s2") or top.get("dynamic_s2"):
            raise ValueError(f"{root}: S2 / dynamic-S2 multi-scale vision towers (VILA1.5-*-s2, NVILA) are not "
                             f"supported; use a plain VILA1.5 checkpoint (3b, Llama-3-8b, 13b)")
        tower_type = _read_json(root / "vision_tower" / "config.json").get("model_type")
        if tower_type not in SUPPORTED_VISION_TOWERS:
            raise ValueError(f"{root / 'vision_tower'}: vision tower type {tower_type!r} is not supported (VILA1.5-40b "
                             f"uses InternViT-6B, which transformers cannot load); supported: "
                             f"{sorted(SUPPORTED_VISION_TOWERS)}")
        projector = _read_json(root / "mm_projector" / "config.json")
        select_feature = top.get("mm_vision_select_feature", "patch")
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"{root}: mm_vision_select_feature {select_feature!r} is not 'patch' or 'cls_patch'")
        return cls(
            text_config=AutoConfig.from_pretrained(root / "llm"),
            vision_config=AutoConfig.from_pretrained(root / "vision_tower"),
            projector_type=projector.get("mm_projector_type", top.get("mm_projector_type")),
            vision_select_layer=top.get("mm_vision_select_layer", -2),
            vision_select_feature=select_feature,
            image_aspect_ratio=top.get("image_aspect_ratio"),
            num_video_frames=top.get("num_video_frames", 8),
            image_token_id=top.get("image_token_id", IMAGE_TOKEN_INDEX),
            conv_mode=top.get("conv_mode"),
            name_or_path=str(root),
        )

    def to_vila_dict(self, dtype: torch.dtype) -> dict:
        """The top-level config.json in VILA1.5's own format (plus our ``image_token_id`` and ``conv_mode``)."""
        top = {
            "architectures": ["LlavaLlamaModel"],
            "model_type": "llava_llama",
            "model_dtype": str(dtype),
            "hidden_size": self.text_config.hidden_size,
            "mm_hidden_size": self.vision_config.hidden_size,
            "mm_projector_type": self.projector_type,
            "mm_vision_select_layer": self.vision_select_layer,
            "mm_vision_select_feature": self.vision_select_feature,
            "image_aspect_ratio": self.image_aspect_ratio,
            "num_video_frames": self.num_video_frames,
            "mm_use_im_start_end": False,
            "mm_use_im_patch_token": False,
            "s2": False,
            # the sub-configs' own _name_or_path is wherever they were last loaded from: never ship that
            "llm_cfg": {**self.text_config.to_dict(), "_name_or_path": "./llm"},
            "vision_tower_cfg": {**self.vision_config.to_dict(), "_name_or_path": "./vision_tower"},
            "mm_projector_cfg": {"_name_or_path": "./mm_projector", "model_type": "v2l_projector",
                                 "mm_projector_type": self.projector_type},
        }
        if self.image_token_id != IMAGE_TOKEN_INDEX:
            top["image_token_id"] = self.image_token_id
        if self.conv_mode:
            top["conv_mode"] = self.conv_mode
        return top


# --------------------------------------------------------------------------------------------- checkpoint checks


def _vision_tower_class(vision_config):
    from transformers import CLIPVisionModel, SiglipVisionModel

    return SiglipVisionModel if vision_config.model_type == "siglip_vision_model" else CLIPVisionModel


def _build_parts(config: VilaConfig, attn_implementation: str | None = None) -> dict[str, nn.Module]:
    from transformers import AutoModelForCausalLM

    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return {
        "llm": AutoModelForCausalLM.from_config(config.text_config, **extra),
        "vision_tower": _vision_tower_class(config.vision_config)._from_config(config.vision_config, **extra),
        "mm_projector": VilaMultimodalProjector(
            config.projector_type, config.vision_config.hidden_size, config.text_config.hidden_size),
    }


def _checkpoint_name(part: str, key: str) -> str:
    if part == "vision_tower" and not key.startswith(VISION_KEY_PREFIX):
        return VISION_KEY_PREFIX + key
    return key


def expected_checkpoint_shapes(config: VilaConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    """Parameter names (as stored in each part's safetensors) and shapes implied by the configs.

    Built on the meta device, so a 3B-parameter layout costs no memory.
    """
    with torch.device("meta"):
        parts = _build_parts(config)
    shapes = {part: {_checkpoint_name(part, k): tuple(v.shape) for k, v in module.state_dict().items()}
              for part, module in parts.items()}
    if getattr(config.text_config, "tie_word_embeddings", False):
        shapes["llm"].pop("lm_head.weight", None)
    return shapes


def read_checkpoint_shapes(folder: str | Path, part: str) -> dict[str, tuple[int, ...]] | None:
    """Names and shapes in ``folder``'s safetensors files, read from their headers; None if there are none."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                shapes[_checkpoint_name(part, key)] = tuple(handle.get_slice(key).get_shape())
    return shapes


def check_checkpoint_shapes(part: str, expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]],
                            where: str) -> None:
    """Raise ValueError naming every missing, unexpected or mis-shaped tensor of one checkpoint part."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(k for k in set(found) - set(expected) if not k.endswith(_IGNORED_CHECKPOINT_SUFFIXES))
    mismatched = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))
    if not (missing or unexpected or mismatched):
        return

    def listing(keys: list[str], show: Callable[[str], str]) -> str:
        shown = ", ".join(show(k) for k in keys[:8])
        return shown + (f", ... ({len(keys) - 8} more)" if len(keys) > 8 else "")

    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): "
                        + listing(mismatched, lambda k: f"{k} expected {tuple(expected[k])} found {tuple(found[k])}"))
    if missing:
        problems.append(f"{len(missing)} missing: " + listing(missing, lambda k: f"{k} {tuple(expected[k])}"))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: " + listing(unexpected, lambda k: f"{k} {tuple(found[k])}"))
    raise ValueError(f"VILA checkpoint part '{part}' in {where} does not match the layout its configs imply: "
                     + "; ".join(problems) + ". Check that llm/, vision_tower/ and mm_projector/ (and their "
                     "config.json files) come from the same checkpoint.")


# --------------------------------------------------------------------------------------------- model


class VilaForConditionalGeneration(nn.Module):
    """VILA1.5 assembled from its three parts, with an HF-like surface for the pruning adapters.

    ``language_model`` is the Llama base model (``layers``, ``rotary_emb``, ``embed_tokens``), ``lm_head`` its head;
    ``generate``/``forward`` take ``input_ids`` + ``pixel_values`` or ready ``inputs_embeds``.
    """

    def __init__(self, config: VilaConfig, llm: nn.Module, vision_tower: nn.Module,
                 mm_projector: VilaMultimodalProjector):
        super().__init__()
        config.text_config, config.vision_config = llm.config, vision_tower.config  # one source of truth
        self.config = config
        self.llm = llm
        self.vision_tower = vision_tower
        self._warned_truncation = False
        self.mm_projector = mm_projector

    # -- construction ----------------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: VilaConfig, attn_implementation: str | None = None) -> "VilaForConditionalGeneration":
        """Randomly initialised model (fixtures, meta-device layouts)."""
        parts = _build_parts(config, attn_implementation)
        return cls(config, parts["llm"], parts["vision_tower"], parts["mm_projector"])

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | str | None = None,
                        device: torch.device | str | None = None,
                        attn_implementation: str | None = None) -> "VilaForConditionalGeneration":
        """Load a VILA1.5 folder. ``dtype`` defaults to the LLM's stored dtype; all parts share it."""
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        root = Path(path)
        config = VilaConfig.from_pretrained(root)
        dtype = _as_dtype(dtype) or _as_dtype(getattr(config.text_config, "dtype", None)) or torch.float32
        for part, expected in expected_checkpoint_shapes(config).items():
            found = read_checkpoint_shapes(root / part, part)
            if found is None and part == "mm_projector":
                raise FileNotFoundError(f"{root / part} has no *.safetensors file with the projector weights")
            if found is not None:
                check_checkpoint_shapes(part, expected, found, str(root / part))
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        llm = AutoModelForCausalLM.from_pretrained(root / "llm", dtype=dtype, **extra)
        tower = _vision_tower_class(config.vision_config).from_pretrained(root / "vision_tower", dtype=dtype, **extra)
        projector = VilaMultimodalProjector(config.projector_type, config.vision_config.hidden_size, config.hidden_size)
        weights = {}
        for file in sorted((root / "mm_projector").glob("*.safetensors")):
            weights.update(load_file(str(file)))
        projector.load_state_dict(weights, strict=True)
        model = cls(config, llm, tower, projector.to(dtype))
        return model.to(device).eval() if device is not None else model.eval()

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write the VILA1.5 folder layout (tensor names as in the published checkpoints)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        self.llm.save_pretrained(out / "llm")
        tower_dir = out / "vision_tower"
        self.vision_tower.config.save_pretrained(tower_dir)
        tower_weights = {_checkpoint_name("vision_tower", k): v.contiguous()
                         for k, v in self.vision_tower.state_dict().items()}
        save_file(tower_weights, str(tower_dir / "model.safetensors"), metadata={"format": "pt"})
        projector_dir = out / "mm_projector"
        projector_dir.mkdir(parents=True, exist_ok=True)
        (projector_dir / "config.json").write_text(json.dumps({
            "architectures": ["MultimodalProjector"], "model_type": "v2l_projector",
            "mm_projector_type": self.config.projector_type, "torch_dtype": str(self.dtype).removeprefix("torch."),
        }, indent=2))
        save_file({k: v.contiguous() for k, v in self.mm_projector.state_dict().items()},
                  str(projector_dir / "model.safetensors"), metadata={"format": "pt"})
        (out / "config.json").write_text(json.dumps(self.config.to_vila_dict(self.dtype), indent=2, default=str))
        return out

    # -- HF-like accessors -------------------------------------------------------------------------------

    @property
    def language_model(self) -> nn.Module:
        return self.llm.model

    @property
    def lm_head(self) -> nn.Module:
        return self.llm.lm_head

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def generation_config(self) -> GenerationConfig:
        return self.llm.generation_config

    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.llm.lm_head

    def set_attn_implementation(self, attn_implementation: str) -> None:
        """Switch the LLM's attention backend (e.g. "eager" for attention maps); the vision tower keeps its own."""
        self.llm.set_attn_implementation(attn_implementation)

    # -- multimodal inputs ---------------------------------------------------------------------------------

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(n_images, 3, H, W) -> (n_images, num_image_tokens, hidden): tower layer, feature select, projector."""
        pixels = pixel_values.to(device=self.device, dtype=self.vision_tower.dtype)
        hidden = self.vision_tower(pixels, output_hidden_states=True).hidden_states[self.config.vision_select_layer]
        if self.config.vision_select_feature == "patch":
            hidden = hidden[:, 1:]
        return self.mm_projector(hidden)

    def get_placeholder_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean (B, L) mask of the image placeholder positions (every image and video frame token)."""
        return input_ids == self.config.image_token_id

    def get_inputs_embeds(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the image features written over the placeholder positions, in order."""
        mask = self.get_placeholder_mask(input_ids)
        embeds = self.get_input_embeddings()(input_ids.masked_fill(mask, 0))
        n_slots = int(mask.sum())
        if pixel_values is None:
            if n_slots:
                raise ValueError(f"input_ids hold {n_slots} image placeholder tokens but no pixel_values were given")
            return embeds
        features = self.get_image_features(pixel_values)
        if features.shape[0] * features.shape[1] != n_slots:
            raise ValueError(f"{features.shape[0]} images x {features.shape[1]} tokens do not fill the {n_slots} "
                             f"image placeholder tokens (id {self.config.image_token_id}) in input_ids; build inputs "
                             f"with VilaProcessor from the same checkpoint")
        return embeds.masked_scatter(mask.unsqueeze(-1), features.reshape(-1, features.shape[-1]).to(embeds.dtype))

    @staticmethod
    def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
        """0..n-1 over the real tokens of each row (left padding gets 0), as VILA numbers unpadded samples."""
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def warn_where_vila_truncates(self, length: int) -> None:
        """VILA's own code cuts a prompt longer than the LLM config's ``tokenizer_model_max_length`` (4096 for
        VILA1.5) after its images are spliced in, which drops the question that follows them; this one runs the
        whole prompt, so such a run and VILA's differ: say so (once)."""
        limit = getattr(self.config.text_config, "tokenizer_model_max_length", None)
        if limit is not None and length > limit and not self._warned_truncation:
            self._warned_truncation = True  # once per model: a long-video benchmark would say it on every sample
            warnings.warn(f"this VILA prompt holds {length} tokens, more than the checkpoint's "
                          f"tokenizer_model_max_length {limit}: VILA's own code would cut it there (and lose the text "
                          f"after the images); tcc_eval runs it whole. Use fewer frames to match VILA's runs",
                          stacklevel=3)

    def _llm_inputs(self, input_ids, pixel_values, attention_mask, position_ids, inputs_embeds) -> dict:
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids (with pixel_values for images) or inputs_embeds")
            inputs_embeds = self.get_inputs_embeds(input_ids.to(self.device), pixel_values)
            self.warn_where_vila_truncates(inputs_embeds.shape[1])
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        attention_mask = attention_mask.to(inputs_embeds.device)
        if position_ids is None:
            position_ids = self.position_ids_from_mask(attention_mask)
        return {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask,
                "position_ids": position_ids.to(inputs_embeds.device)}

    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, **kwargs: Any) -> CausalLMOutputWithPast:
        """One LLM pass; returns the Llama ``CausalLMOutputWithPast``."""
        return self.llm(**self._llm_inputs(input_ids, pixel_values, attention_mask, position_ids, inputs_embeds),
                        **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, **gen_kwargs: Any) -> torch.Tensor:
        """Like HF: prompt + new tokens when ``input_ids`` are given (beside ``inputs_embeds`` they are the ids
        under the embeddings, which logits processors read), only new tokens for bare ``inputs_embeds``."""
        llm_inputs = self._llm_inputs(input_ids, pixel_values, attention_mask, position_ids, inputs_embeds)
        if self.generation_config.pad_token_id is None:
            gen_kwargs.setdefault("pad_token_id", self.config.text_config.pad_token_id)
        if input_ids is None:
            return self.llm.generate(**llm_inputs, **gen_kwargs)
        # The published tokenizers have no image token: its placeholders are VILA's -200, which no logits
        # processor can index (a repetition penalty gathers the prompt's ids). There they read as a token the row
        # already holds, so the prompt's set of ids (what a penalty lowers) stays its text's.
        input_ids = input_ids.to(self.device)
        held = input_ids.max(dim=1, keepdim=True).values.expand_as(input_ids)
        llm_inputs["input_ids"] = torch.where(input_ids < 0, held, input_ids)
        output = self.llm.generate(**llm_inputs, **gen_kwargs)
        return torch.cat([input_ids.repeat_interleave(output.shape[0] // input_ids.shape[0], dim=0),
                          output[:, input_ids.shape[1]:]], dim=1)
