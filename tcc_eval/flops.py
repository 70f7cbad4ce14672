"""Theoretical cost of the visual tokens inside the LLM: FLOPs and KV cache (METHOD.md, Metrics).

The paper reports FLOPs of the visual part only, summed over layers and divided by the vanilla
model's, and KV cache bytes; both follow from the LLM's shape. Measured timings come from the
efficiency records instead (see ``tcc_eval.aggregate``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

# Methods that prune inside the LLM (tcc_eval.fastv): FastV and DART at layer K (layers 0..K-1 see every token),
# PyramidDrop in stages.
LAYER_K_METHODS = ("fastv", "dart")
INSIDE_LLM_METHODS = (*LAYER_K_METHODS, "pdrop")

# Model types whose FFN is a plain two-matrix MLP (c = 2); every other decoder here is gated (c = 3).
PLAIN_FFN_MODEL_TYPES = frozenset({"gpt2", "gptj", "gpt_neox", "opt", "bloom", "phi", "falcon"})


@dataclass(frozen=True)
class LLMShape:
    """The decoder facts the cost formulas need."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int = 0  # 0: hidden // heads
    gated: bool = True

    def __post_init__(self) -> None:
        counts = {name: getattr(self, name) for name in ("layers", "hidden", "intermediate", "heads", "kv_heads")}
        if min(counts.values()) < 1 or self.head_dim < 0:
            raise ValueError(f"LLM shape {counts}: every count must be at least 1")
        if self.heads % self.kv_heads:
            raise ValueError(f"LLM shape: heads={self.heads} is not a multiple of kv_heads={self.kv_heads} (each "
                             f"key/value head serves heads/kv_heads query heads)")
        if self.head_dim == 0:
            if self.hidden % self.heads:
                raise ValueError(f"LLM shape: hidden={self.hidden} is not a multiple of heads={self.heads}; give "
                                 f"head_dim")
            object.__setattr__(self, "head_dim", self.hidden // self.heads)


# Real configurations (config.json of the public checkpoints; LLaVA-OneVision and VILA1.5 use these LLMs).
_QWEN2_7B = LLMShape(layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4)
_QWEN2_0_5B = LLMShape(layers=24, hidden=896, intermediate=4864, heads=14, kv_heads=2)
_LLAMA3_8B = LLMShape(layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8)
LLM_SHAPES: dict[str, LLMShape] = {
    "qwen2-vl-7b": _QWEN2_7B,
    "qwen2-vl-2b": LLMShape(layers=28, hidden=1536, intermediate=8960, heads=12, kv_heads=2),
    "qwen2.5-vl-7b": _QWEN2_7B,  # Qwen2.5-7B has Qwen2-7B's shape
    "qwen2.5-vl-3b": LLMShape(layers=36, hidden=2048, intermediate=11008, heads=16, kv_heads=2),
    "qwen2-7b": _QWEN2_7B,
    "qwen2-0.5b": _QWEN2_0_5B,
    "llava-ov-7b": _QWEN2_7B,
    "llava-ov-0.5b": _QWEN2_0_5B,
    "vila1.5-3b": LLMShape(layers=32, hidden=2560, intermediate=6912, heads=20, kv_heads=20),  # Sheared-LLaMA-2.7B
    "vila1.5-8b": _LLAMA3_8B,
    "vila1.5-13b": LLMShape(layers=40, hidden=5120, intermediate=13824, heads=40, kv_heads=40),  # Vicuna-13B
    "llama3-8b": _LLAMA3_8B,
}


def visual_flops(n: float, d: int, m: int, layers: int, gated: bool = True) -> float:
    """FLOPs of ``n`` visual tokens over ``layers`` layers: per layer 4 n d^2 + 2 n^2 d + c n d m.

    The paper's (and FastV's) count, kept so ratios compare with theirs: one FLOP per multiply-add (a hardware
    count such as torch's FlopCounterMode is about twice this; ratios are the same), and it costs K and V
    projections as d x d, so with grouped-query attention it slightly overstates them (Qwen2-7B, 6000 tokens at
    25%: 0.2229 where d x kv_heads x head_dim gives 0.2208)."""
    c = 3 if gated else 2
    return layers * (4 * n * d * d + 2 * n * n * d + c * n * d * m)


def flops_ratio(
    n_visual: float, keep_ratio: float, cfg: LLMShape | str, method: str = "tcc", fastv_k: int = 2,
    pdrop_layers: Sequence[int] | str | None = None,
) -> float:
    """Visual-part FLOPs of a pruned model relative to vanilla.

    Input-stage methods (tcc, random, a0, oracle, ...) run every layer on the kept tokens; layer-K methods
    (fastv, dart) run the first ``fastv_k`` layers on all tokens and the rest on the kept ones; pdrop runs
    each stage on its own count (``keep_ratio`` is its per-stage ratio lambda, stages at ``pdrop_layers`` or
    PyramidDrop's own, ``pyramid_visual_counts``). The n^2 attention term makes a 50% keep cost slightly less
    than half."""
    shape = LLM_SHAPES[cfg] if isinstance(cfg, str) else cfg
    if n_visual <= 0:
        raise ValueError(f"n_visual must be positive, got {n_visual}")
    if method == "none" or keep_ratio >= 1.0:
        return 1.0
    n = round(n_visual)
    from .core import keep_count  # local: keeps the aggregator free of torch at start-up

    k = keep_count(n, keep_ratio)
    d, m, gated = shape.hidden, shape.intermediate, shape.gated
    full = visual_flops(n, d, m, shape.layers, gated)
    if method == "pdrop":
        counts = pyramid_visual_counts(n, keep_ratio, shape.layers, pdrop_layers)
        pruned = sum(visual_flops(c, d, m, 1, gated) for c in counts)
    elif method in LAYER_K_METHODS:
        early = min(fastv_k, shape.layers)
        pruned = visual_flops(n, d, m, early, gated) + visual_flops(k, d, m, shape.layers - early, gated)
    else:
        pruned = visual_flops(k, d, m, shape.layers, gated)
    return pruned / full


def fastv_average_retention(keep_ratio: float, layers: int, k: int = 2) -> float:
    """Mean kept fraction over all layers when pruning at layer K: (K + (L - K) r) / L."""
    k = min(k, layers)
    return (k + (layers - k) * keep_ratio) / layers


def fastv_layer_keep_ratio(avg_retention: float, layers: int, k: int) -> float:
    """Keep ratio r at layer K so that the average retention (K + (L-K) r) / L equals ``avg_retention``."""
    if not 0 < k < layers:
        raise ValueError(f"FastV layer K={k} must be in 1..{layers - 1} for a {layers}-layer LLM")
    r = (avg_retention * layers - k) / (layers - k)
    if r <= 0:
        raise ValueError(
            f"average retention {avg_retention} is not above FastV's floor K/L = {k}/{layers}: the first K layers "
            f"already see every token. Use a larger keep_ratio or a smaller fastv_k."
        )
    return min(1.0, r)


PYRAMID_STAGES = 4  # PyramidDrop's default: drops after layers L/4, L/2 and 3L/4


def pyramid_stage_layers(layers: int, pdrop_layers: Sequence[int] | str | int | None = None) -> tuple[int, ...]:
    """The layers that start PyramidDrop's pruned stages, each on fewer tokens than the one before: PyramidDrop's
    own L/4, L/2, 3L/4 unless ``pdrop_layers`` (its ``layer_list``; "2/14/21" as a framework option string)
    names them, e.g. earlier ones for small budgets."""
    default = tuple(layers * s // PYRAMID_STAGES for s in range(1, PYRAMID_STAGES))
    if pdrop_layers is None:
        if layers < PYRAMID_STAGES:
            raise ValueError(f"PyramidDrop needs at least {PYRAMID_STAGES} LLM layers (one per stage), got {layers}")
        return default
    if isinstance(pdrop_layers, str):
        parts = pdrop_layers.split("/")
        starts = tuple(int(p) if p.strip().isdigit() else p for p in parts)
    else:
        starts = (pdrop_layers,) if isinstance(pdrop_layers, int) else tuple(pdrop_layers)
    if (not starts or any(isinstance(s, bool) or not isinstance(s, int) for s in starts)
            or list(starts) != sorted(set(starts)) or starts[0] < 1 or starts[-1] >= layers):
        raise ValueError(
            f"PyramidDrop stage layers {pdrop_layers!r} must be increasing integer layer indices in 1..{layers - 1} "
            f"for this {layers}-layer LLM (layer 0 holds every token), e.g. {list(default)} or "
            f"\"{'/'.join(map(str, default))}\""
        )
    return starts


def pyramid_visual_counts(n_visual: int, stage_ratio: float, layers: int,
                          pdrop_layers: Sequence[int] | str | None = None) -> list[int]:
    """Visual tokens each layer holds under PyramidDrop: stage s keeps round(lambda^s * N) (at least 1)."""
    from .core import keep_count  # local: keeps the aggregator free of torch at start-up

    starts = (0, *pyramid_stage_layers(layers, pdrop_layers), layers)
    return [n_visual if s == 0 else keep_count(n_visual, stage_ratio ** s)
            for s in range(len(starts) - 1) for _ in range(starts[s], starts[s + 1])]


def pyramid_average_retention(stage_ratio: float, layers: int,
                              pdrop_layers: Sequence[int] | str | None = None) -> float:
    """Mean kept fraction over all layers for per-stage ratio lambda: sum over stages of span_s * lambda^s / L."""
    starts = (0, *pyramid_stage_layers(layers, pdrop_layers), layers)
    return sum((starts[s + 1] - starts[s]) * stage_ratio ** s for s in range(len(starts) - 1)) / layers


def pyramid_stage_ratio(avg_retention: float, layers: int,
                        pdrop_layers: Sequence[int] | str | None = None) -> float:
    """The per-stage ratio lambda whose average retention is ``avg_retention`` (bisection: it is increasing)."""
    first = pyramid_stage_layers(layers, pdrop_layers)[0]
    if avg_retention <= first / layers:
        low_budget = [2, layers // 2, 3 * layers // 4]
        earlier = (f"earlier stage layers (pdrop_layers, e.g. {low_budget}), " if first > 2 and layers >= 8
                   else "")
        raise ValueError(
            f"average retention {avg_retention} is at or below PyramidDrop's floor {first}/{layers}: its first stage "
            f"sees every token. Use a larger keep_ratio, {earlier}or match='kept' to set its per-stage ratio directly."
        )
    if avg_retention >= 1.0:
        return 1.0
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if pyramid_average_retention(mid, layers, pdrop_layers) < avg_retention else (low, mid)
    return (low + high) / 2


def kv_cache_bytes(tokens: int, layers: int, kv_heads: int, head_dim: int, bytes_per_elem: int = 2) -> int:
    """Bytes of keys and values cached for ``tokens`` tokens: 2 x layers x kv_heads x head_dim x bytes."""
    return 2 * layers * kv_heads * head_dim * bytes_per_elem * tokens


def shape_from_config(hf_config: Any) -> LLMShape:
    """LLM shape from a Hugging Face config (object or dict), using ``text_config`` when present."""
    cfg = hf_config.to_dict() if hasattr(hf_config, "to_dict") else dict(hf_config)
    text = cfg.get("text_config") or cfg.get("llm_cfg") or cfg
    if hasattr(text, "to_dict"):
        text = text.to_dict()
    try:
        hidden = int(text["hidden_size"])
        heads = int(text["num_attention_heads"])
        shape = LLMShape(
            layers=int(text["num_hidden_layers"]),
            hidden=hidden,
            intermediate=int(text["intermediate_size"]),
            heads=heads,
            kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or hidden // heads),
            gated=text.get("model_type") not in PLAIN_FFN_MODEL_TYPES,
        )
    except KeyError as err:
        raise ValueError(f"config has no text-model field {err}; pass the MLLM's or its LLM's config") from None
    return shape


# Family pattern (on the lower-cased name without punctuation) -> size token -> LLM_SHAPES key.
_FAMILY_SIZES: dict[str, dict[str, str]] = {
    r"qwen2vl": {"7b": "qwen2-vl-7b", "2b": "qwen2-vl-2b"},
    r"qwen25vl": {"7b": "qwen2.5-vl-7b", "3b": "qwen2.5-vl-3b"},  # before "qwen2", which it contains
    r"llava(?:ov|onevision)": {"7b": "llava-ov-7b", "05b": "llava-ov-0.5b"},
    r"vila(?:15)?": {"3b": "vila1.5-3b", "8b": "vila1.5-8b", "13b": "vila1.5-13b"},
    r"llama3": {"8b": "llama3-8b"},
    r"qwen2": {"7b": "qwen2-7b", "05b": "qwen2-0.5b"},
}


def guess_shape(name: str) -> LLMShape | None:
    """Shape for a readable model name (``Qwen2VL7B``, ``qwen2_vl/Qwen2-VL-2B-Instruct``, ``VILA1.5-3B``).

    Only names that state family and size resolve; tiny test models and names without a size (the
    family's sizes differ in width or depth) give None, so costs are never guessed."""
    words = re.sub(r"[^a-z0-9]+", "-", name.lower().replace(".", ""))  # "Qwen2-0.5B" -> "qwen2-05b"
    compact = words.replace("-", "")
    if compact.startswith("tiny"):
        return None
    for family, sizes in _FAMILY_SIZES.items():
        if re.search(family, compact):
            for size, key in sizes.items():
                if re.search(rf"(?<!\d){size}", words):
                    return LLM_SHAPES[key]
            return None
    return None
