"""A tiny VILA1.5 checkpoint in the published folder layout (config.json, llm/, vision_tower/, mm_projector/).

Built offline in about a second; tensor names and config keys are those of ``Efficient-Large-Model/VILA1.5-3b``,
only the sizes are small. The default 42-pixel images give a 3x3 patch grid, so ``mlp_downsample`` exercises
VILA's odd-grid padding (3x3 -> 4x4 -> 4 tokens per image).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import torch

from tcc_eval.fixtures import build_tokenizer, save_checkpoint

from .modeling_vila import IMAGE_TOKEN_INDEX, VilaConfig, VilaForConditionalGeneration
from .processing_vila import CHAT_TEMPLATES, VilaImageSpec, VilaProcessor

VILA_SPECIAL_TOKENS = [
    "<|endoftext|>", "<s>", "</s>", "<|im_start|>", "<|im_end|>",
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
]
# (BOS added to every encode or None, EOS, further special tokens) per template, like the LLM families VILA1.5
# uses: a Llama-3 vocabulary also holds <|end_of_text|> (the VILA1.5 release's llama_3 separator). Added there only,
# so the vicuna_v1 vocabulary of the shipped demo VILA stays as it was built.
_TEMPLATE_TOKENS = {
    "vicuna_v1": ("<s>", "</s>", []),
    "llama_3": ("<|begin_of_text|>", "<|eot_id|>", ["<|end_of_text|>"]),
    "llama_3_vila1.5": ("<|begin_of_text|>", "<|eot_id|>", ["<|end_of_text|>"]),
    "hermes-2": (None, "<|im_end|>", []),
}
VILA_CORPUS = ["A chat between a curious user and an artificial intelligence assistant. USER: ASSISTANT:",
               "The assistant gives helpful, detailed, and polite answers to the user's questions."]


def _tokenizer(conv_mode: str, image_token_in_vocab: bool, corpus: Iterable[str]):
    from tokenizers.processors import TemplateProcessing

    bos, eos, template_specials = _TEMPLATE_TOKENS[conv_mode]
    specials = VILA_SPECIAL_TOKENS + (["<image>"] if image_token_in_vocab else []) + template_specials
    tokenizer = build_tokenizer(specials, list(VILA_CORPUS) + list(corpus))
    if bos is not None:
        bos_id = tokenizer.convert_tokens_to_ids(bos)
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
        tokenizer.bos_token = bos
    tokenizer.eos_token = eos
    return tokenizer


def tiny_vila(
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    rope_theta: float = 1e4,
    vision_layers: int = 2,
    vision_hidden: int = 32,
    image_size: int = 42,
    patch_size: int = 14,
    projector_type: str = "mlp_downsample",
    conv_mode: str = "vicuna_v1",
    image_aspect_ratio: str = "resize",
    num_video_frames: int = 4,
    image_token_in_vocab: bool = True,
    corpus: Iterable[str] = (),
    seed: int = 0,
) -> tuple[VilaForConditionalGeneration, VilaProcessor]:
    """A freshly initialised (seeded) tiny VILA1.5-style model (Llama LLM, SigLIP tower, VILA projector) and
    its processor; ``build_tiny_vila`` saves them, the demo trains them first.

    ``image_token_in_vocab=False`` mimics the published tokenizers, which have no ``<image>`` token: the
    placeholder id is then VILA's -200.
    """
    from transformers import LlamaConfig, SiglipVisionConfig

    if conv_mode not in CHAT_TEMPLATES:
        raise ValueError(f"unknown conv_mode {conv_mode!r}; choose one of {sorted(CHAT_TEMPLATES)}")
    tokenizer = _tokenizer(conv_mode, image_token_in_vocab, corpus)
    text_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers, rope_theta=rope_theta,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    vision_config = SiglipVisionConfig(
        hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=vision_layers,
        num_attention_heads=2, image_size=image_size, patch_size=patch_size,
    )
    config = VilaConfig(
        text_config=text_config, vision_config=vision_config, projector_type=projector_type,
        vision_select_layer=-2, vision_select_feature="cls_patch", image_aspect_ratio=image_aspect_ratio,
        num_video_frames=num_video_frames, conv_mode=conv_mode,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>") if image_token_in_vocab else IMAGE_TOKEN_INDEX,
    )
    torch.manual_seed(seed)
    model = VilaForConditionalGeneration.from_config(config).eval()
    model.llm.generation_config.pad_token_id = tokenizer.pad_token_id
    model.llm.generation_config.eos_token_id = tokenizer.eos_token_id
    image_spec = VilaImageSpec.from_dict({
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5], "image_processor_type": "SiglipImageProcessor", "resample": 3,
        "rescale_factor": 1 / 255, "size": {"height": image_size, "width": image_size},
    })
    return model, VilaProcessor(tokenizer, image_spec, config)


def build_tiny_vila(out_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Write a tiny VILA1.5 checkpoint folder (``tiny_vila``'s keywords) exactly as the published ones are laid out."""
    return save_checkpoint(*tiny_vila(**kwargs), out_dir)
