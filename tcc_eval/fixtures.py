"""Tiny real-architecture MLLM checkpoints built entirely offline.

Every checkpoint is written with ``save_pretrained`` (model, tokenizer, processor, chat template), so
loading it goes through exactly the code path of ``Qwen/Qwen2-VL-7B-Instruct`` or
``llava-hf/llava-onevision-qwen2-7b-ov-hf``. Tests, the demo and the benchmarks all build on these.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# Jinja chat templates written for this project in the format of the public checkpoints' templates.
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAVA_OV_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] }}{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN2VL_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
LLAVA_OV_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]

# Words the tiny tokenizer must encode compactly: chat scaffolding plus the synthetic benchmarks' vocabulary.
BASE_CORPUS = [
    "system user assistant You are a helpful assistant.",
    "What color is the circle? What shape is the red object? Is there a square? How many objects?",
    "Answer with the option's letter from the given choices directly. Options: A. B. C. D.",
    "red green blue yellow purple orange white black grey circle square triangle cross star bar",
    "Question: Hint: Please select the correct answer from the options above. yes no Yes No",
    "first middle last part of the video clip frame appeared which object shown in the image",
    "0 1 2 3 4 5 6 7 8 9 A B C D E the a an of in is what which how many",
]


def build_tokenizer(special_tokens: list[str], corpus: Iterable[str] = (),
                    vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer locally (the ``tokenizers`` library) and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(BASE_CORPUS) + list(corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=special_tokens[1:],
        padding_side="left",
    )


def _text_config(tokenizer: PreTrainedTokenizerFast, hidden: int, layers: int, heads: int, kv_heads: int,
                 intermediate: int | None = None, **extra: Any) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def tiny_qwen2vl(
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    rope_theta: float = 10000.0,
    vision_depth: int = 1,
    vision_embed: int = 32,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 256,
    corpus: Iterable[str] = (),
    seed: int = 0,
    family: str = "qwen2_vl",
    window_size: int = 56,
) -> tuple[torch.nn.Module, Any]:
    """A tiny ``Qwen2VLForConditionalGeneration`` (seeded) with its full processor; ``family="qwen2_5_vl"``: a
    ``Qwen2_5_VLForConditionalGeneration``, whose vision blocks attend within ``window_size``-px windows but the
    last (full attention over each image, as in the published checkpoints). The demo models start from it too."""
    import transformers
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    prefix = {"qwen2_vl": "Qwen2VL", "qwen2_5_vl": "Qwen2_5_VL"}[family]
    tokenizer = build_tokenizer(QWEN2VL_SPECIAL_TOKENS, corpus)
    head_dim = hidden // heads
    quarter = head_dim // 2
    mrope = [quarter - 2 * (quarter // 3), quarter // 3, quarter // 3]
    vision = dict(num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, depth=vision_depth)
    if family == "qwen2_vl":
        vision.update(embed_dim=vision_embed, hidden_size=hidden, mlp_ratio=2)
    else:
        vision.update(hidden_size=vision_embed, out_hidden_size=hidden, intermediate_size=2 * vision_embed,
                      window_size=window_size, fullatt_block_indexes=[vision_depth - 1])
    config = getattr(transformers, f"{prefix}Config")(
        text_config=_text_config(
            tokenizer, hidden, layers, heads, kv_heads, intermediate,
            rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_section": mrope},
        ),
        vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config).eval()
    pixels = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    processor = getattr(transformers, f"{prefix}Processor")(
        image_processor=Qwen2VLImageProcessor(size=pixels),
        video_processor=Qwen2VLVideoProcessor(size=pixels),
        tokenizer=tokenizer,
        chat_template=QWEN2VL_CHAT_TEMPLATE,
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, processor


def save_checkpoint(model: torch.nn.Module, processor: Any, out_dir: str | os.PathLike) -> Path:
    """Write a tiny model and its processor as a checkpoint folder, as a published one is written."""
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return Path(out_dir)


def build_tiny_qwen2vl(out_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Write ``tiny_qwen2vl(**kwargs)`` as a checkpoint folder."""
    model, processor = tiny_qwen2vl(**kwargs)
    # as the published Qwen2-VL / Qwen2.5-VL checkpoints ship it: a penalty that reads the prompt's ids
    model.generation_config.repetition_penalty = 1.05
    return save_checkpoint(model, processor, out_dir)


def tiny_llava_onevision(
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    rope_theta: float | None = None,
    vision_layers: int = 1,
    vision_hidden: int = 32,
    image_size: int = 56,
    patch_size: int = 14,
    grid_pinpoints: list[list[int]] | None = None,
    vision_feature_layer: int = -1,
    corpus: Iterable[str] = (),
    seed: int = 0,
) -> tuple[torch.nn.Module, Any]:
    """A tiny ``LlavaOnevisionForConditionalGeneration`` (seeded) with its full processor; ``rope_theta`` None:
    Qwen2's default. The demo models start from it too."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    tokenizer = build_tokenizer(LLAVA_OV_SPECIAL_TOKENS, corpus)
    pinpoints = grid_pinpoints or [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    rope = {} if rope_theta is None else {"rope_parameters": {"rope_type": "default", "rope_theta": rope_theta}}
    config = LlavaOnevisionConfig(
        text_config=dict(model_type="qwen2", **_text_config(tokenizer, hidden, layers, heads, kv_heads, intermediate,
                                                            **rope)),
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=vision_hidden, intermediate_size=vision_hidden * 2,
            num_hidden_layers=vision_layers, num_attention_heads=2, image_size=image_size, patch_size=patch_size,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=vision_feature_layer,
        image_grid_pinpoints=pinpoints,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    size = {"height": image_size, "width": image_size}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=pinpoints),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tokenizer,
        num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        chat_template=LLAVA_OV_CHAT_TEMPLATE,
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, processor


def build_tiny_llava_onevision(out_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Write ``tiny_llava_onevision(**kwargs)`` as a checkpoint folder."""
    return save_checkpoint(*tiny_llava_onevision(**kwargs), out_dir)


def build_tiny_vila(out_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Tiny VILA1.5 in the published folder layout (llm/, vision_tower/, mm_projector/)."""
    from .vila.fixtures import build_tiny_vila as build  # local import: tcc_eval.vila imports this module

    return Path(build(out_dir, **kwargs))


FIXTURE_BUILDERS = {
    "qwen2_vl": build_tiny_qwen2vl,
    "qwen2_5_vl": functools.partial(build_tiny_qwen2vl, family="qwen2_5_vl", vision_depth=2),  # a windowed block
    "llava_onevision": build_tiny_llava_onevision,
    "vila": build_tiny_vila,
}


def build_tiny_checkpoint(family: str, out_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Build a tiny checkpoint of ``family`` (one of ``FIXTURE_BUILDERS``)."""
    if family not in FIXTURE_BUILDERS:
        raise ValueError(f"unknown model family {family!r}; choose one of {sorted(FIXTURE_BUILDERS)}")
    return FIXTURE_BUILDERS[family](out_dir, **kwargs)
