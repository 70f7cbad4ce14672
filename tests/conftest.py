"""Shared fixtures: tiny real-architecture checkpoints built once per session, plus input builders."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from tcc_eval import demo
from tcc_eval.cpu_memory import keep_freed_cpu_memory
from tcc_eval.fixtures import build_tiny_checkpoint

torch.set_num_threads(2)
keep_freed_cpu_memory()  # for this process and the framework runs it starts: see tcc_eval.cpu_memory


GRAD_ENABLED_AT_START = torch.is_grad_enabled()


@pytest.fixture(autouse=True)
def autograd_mode_restored() -> Iterator[None]:
    """Importing VLMEvalKit's models (``vlmeval.vlm``) turns autograd off for the whole process, in a test or in a
    module fixture set up before this one: every test starts and ends in the session's starting mode."""
    torch.set_grad_enabled(GRAD_ENABLED_AT_START)
    yield
    torch.set_grad_enabled(GRAD_ENABLED_AT_START)


FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava_onevision")
QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl")  # one token layout: merged 2x2 patches, frame pairs
# Tests of the shipped demo models and compressors skip in a checkout without them.
needs_assets = pytest.mark.skipif(
    not all(demo.paths()[f]["built"] for f in demo.FAMILIES),
    reason="demo assets are not in this checkout; build them with `python -m tcc_eval.demo build`",
)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_ckpt")
    return {family: str(build_tiny_checkpoint(family, root / family)) for family in FAMILIES}


@pytest.fixture(scope="session")
def tiny_vila_path(tmp_path_factory):
    """A tiny VILA1.5 in the published folder layout, built once (read only: copy it before changing files)."""
    return build_tiny_checkpoint("vila", tmp_path_factory.mktemp("vila") / "tiny")


@pytest.fixture(scope="session")
def loaded(tiny_checkpoints):
    """family -> (model, processor), fp32, eager attention (needed for reference attention maps)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = {}
    for family, path in tiny_checkpoints.items():
        model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager").eval()
        out[family] = (model, AutoProcessor.from_pretrained(path))
    return out


@pytest.fixture(scope="session")
def deep(tmp_path_factory):
    """4-layer models, fp32 eager: with FastV's K=1 three layers run on the shortened sequence (2-layer fixtures
    have one), and PyramidDrop has a layer per stage."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = {}
    for family in FAMILIES:
        path = build_tiny_checkpoint(family, tmp_path_factory.mktemp(f"deep_{family}"), layers=4)
        model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager").eval()
        out[family] = (model, AutoProcessor.from_pretrained(path))
    return out


@contextmanager
def hidden_key_columns(language_model, dropped_by_layer: dict[int, torch.Tensor]) -> Iterator[None]:
    """Reference for pruning inside the LLM: while open, each listed decoder layer hides its own key columns
    (eager additive 4-D mask), the full sequence otherwise unchanged."""
    def hide(dropped: torch.Tensor):
        def pre_hook(_module, args, kwargs):
            mask = kwargs["attention_mask"].clone()
            mask[..., dropped] = torch.finfo(mask.dtype).min
            kwargs["attention_mask"] = mask
            return args, kwargs
        return pre_hook

    handles = [language_model.layers[index].register_forward_pre_hook(hide(dropped), with_kwargs=True)
               for index, dropped in dropped_by_layer.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def from_layer(language_model, k: int, dropped: torch.Tensor) -> dict[int, torch.Tensor]:
    """``dropped`` hidden in every layer from K on (FastV, DART)."""
    return dict.fromkeys(range(k, len(language_model.layers)), dropped)


def random_image(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def messages_for(kind: str, seed: int = 0, question: str = "What color is the circle?") -> list[dict]:
    if kind == "image":
        content = [{"type": "image", "image": random_image(112, 84, seed)}]
    elif kind == "multi_image":
        content = [{"type": "image", "image": random_image(56, 112, seed)},
                   {"type": "image", "image": random_image(84, 84, seed + 1)}]
    elif kind == "video":
        content = [{"type": "video", "video": [random_image(56, 56, seed + i) for i in range(4)]}]
    elif kind == "long_video":  # Qwen2-VL: 24 temporal ids on a 2x2 grid, more than the text after it
        content = [{"type": "video", "video": [random_image(56, 56, seed + i) for i in range(48)]}]
    elif kind == "two_videos":
        content = [{"type": "video", "video": [random_image(56, 56, seed + i) for i in range(4)]},
                   {"type": "video", "video": [random_image(56, 56, seed + 10 + i) for i in range(4)]}]
    elif kind == "image_and_video":
        content = [{"type": "image", "image": random_image(112, 84, seed)},
                   {"type": "video", "video": [random_image(56, 56, seed + i) for i in range(4)]}]
    else:
        raise ValueError(kind)
    return [{"role": "user", "content": content + [{"type": "text", "text": question}]}]


def model_inputs(processor, messages) -> dict[str, torch.Tensor]:
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    return {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}


def masked_greedy_tokens(model, inputs: dict[str, torch.Tensor], kept: torch.Tensor, positions: torch.Tensor,
                         steps: int) -> list[int]:
    """Greedy tokens of the unpruned model, independent of the pruning code: no cache, every prompt token outside
    ``kept`` masked out of the attention, the prompt at its own ``positions`` ((1, L) or M-RoPE's (3, 1, L)), and
    each new token at the position after the last one, as HF's ``generate`` places it in the unpruned run (after the
    prompt's largest too, except where transformers 5 puts the text after a long Qwen2-VL video below the video's
    largest temporal id; ``generate`` still counts on from the last). The checkpoint's
    repetition penalty (Qwen's generation configs set one) covers the whole prompt's ids, as ``generate`` does."""
    penalty = model.generation_config.repetition_penalty or 1.0
    ids, mask = inputs["input_ids"], torch.zeros_like(inputs["attention_mask"])
    mask[0, kept] = 1
    per_token = [k for k, v in inputs.items() if k not in ("input_ids", "attention_mask") and v.shape == ids.shape]
    extra = {k: inputs[k] for k in per_token}  # e.g. mm_token_type_ids: a text token is type 0
    tokens = []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(**inputs | extra | {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
                           ).logits[0, -1]
        seen = torch.unique(ids[0])
        logits[seen] = torch.where(logits[seen] > 0, logits[seen] / penalty, logits[seen] * penalty)
        tokens.append(int(logits.argmax()))
        ids = torch.cat([ids, ids.new_tensor([[tokens[-1]]])], dim=1)
        mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
        extra = {k: torch.cat([v, v.new_zeros(1, 1)], dim=1) for k, v in extra.items()}
        positions = torch.cat([positions, positions[..., -1:] + 1], dim=-1)
    return tokens


def left_padded_image_batch(processor) -> tuple[dict[str, torch.Tensor], list[str], list[Image.Image]]:
    """Two one-image prompts of different lengths in one left-padded batch: (batch, prompts, images)."""
    prompts, images = [], [random_image(112, 84, 0), random_image(56, 56, 1)]
    for _ in images:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What shape?"}]}]
        prompts.append(processor.apply_chat_template(msgs, add_generation_prompt=True))
    processor.tokenizer.padding_side = "left"
    return dict(processor(text=prompts, images=images, return_tensors="pt", padding=True)), prompts, images
