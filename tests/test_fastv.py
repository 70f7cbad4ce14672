"""FastV: keep 100% equals vanilla; pruning equals masking the dropped tokens from layer K on."""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES, messages_for, model_inputs
from tcc_eval import wrap_model
from tcc_eval.fastv import fastv_layer_keep_ratio


def test_average_retention_formula():
    # (K + (L - K) r) / L == rho
    r = fastv_layer_keep_ratio(0.5, layers=28, k=2)
    assert abs((2 + 26 * r) / 28 - 0.5) < 1e-12
    with pytest.raises(ValueError, match="floor"):
        fastv_layer_keep_ratio(0.05, layers=28, k=2)


@pytest.mark.parametrize("family", FAMILIES)
def test_fastv_keep_all_equals_vanilla(loaded, family):
    model, processor = loaded[family]
    inputs = model_inputs(processor, messages_for("image"))
    fastv = wrap_model(model, method="fastv", keep_ratio=1.0, fastv_k=1)
    with torch.no_grad():
        vanilla = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        vanilla_last = model(**inputs).logits[:, -1:]
    assert torch.equal(fastv.generate(**inputs, max_new_tokens=5, do_sample=False), vanilla)
    assert (fastv.prefill_logits(**inputs) - vanilla_last).abs().max().item() == 0.0


def masked_from_layer(model, language_model, k: int, dropped: torch.Tensor):
    """Reference: hooks that hide ``dropped`` key columns from layers >= k (eager additive 4-D mask)."""
    handles = []

    def hide(_m, args, kwargs):
        mask = kwargs["attention_mask"]
        mask = mask.clone()
        mask[..., dropped] = torch.finfo(mask.dtype).min
        kwargs["attention_mask"] = mask
        return args, kwargs

    for layer in language_model.layers[k:]:
        handles.append(layer.register_forward_pre_hook(hide, with_kwargs=True))
    return handles


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """4-layer models: with K=1 three layers run on the shortened sequence (2-layer fixtures have one)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tcc_eval.fixtures import build_tiny_checkpoint

    out = {}
    for family in FAMILIES:
        path = build_tiny_checkpoint(family, tmp_path_factory.mktemp(family), layers=4)
        model = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager").eval()
        out[family] = (model, AutoProcessor.from_pretrained(path))
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ("image", "video"))
def test_fastv_equals_masked_reference(deep, family, kind):
    model, processor = deep[family]
    inputs = model_inputs(processor, messages_for(kind, seed=5))
    fastv = wrap_model(model, method="fastv", keep_ratio=0.5, fastv_k=1, match="kept")
    logits = fastv.prefill_logits(**inputs)[0, -1]
    kept = fastv.last_selection.kept_positions[0]
    length = inputs["input_ids"].shape[1]
    dropped = torch.tensor([i for i in range(length) if i not in set(kept.tolist())])
    llm = fastv.adapter.capture_llm_inputs(inputs)
    assert dropped.numel() == llm.n_visual(0) - max(1, int(0.5 * llm.n_visual(0) + 0.5))
    handles = masked_from_layer(model, fastv.adapter.language_model, 1, dropped)
    try:
        with torch.no_grad():
            reference = fastv.adapter.forward_from_embeds(llm.inputs_embeds, llm.attention_mask, llm.position_ids).logits[0, -1]
    finally:
        for h in handles:
            h.remove()
    assert (logits - reference).abs().max().item() < 1e-4
    # and pruning really changed something compared with no pruning
    with torch.no_grad():
        full = model(**inputs).logits[0, -1]
    assert (full - reference).abs().max().item() > 1e-6


def test_fastv_generate_decodes_with_short_cache(deep):
    model, processor = deep["qwen2_vl"]
    inputs = model_inputs(processor, messages_for("image"))
    fastv = wrap_model(model, method="fastv", keep_ratio=0.5, fastv_k=1, match="kept")
    out = fastv.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4
    stats = fastv.last_stats
    assert stats["visual_after"] < stats["visual_before"]
    # the record's costs: layer 0 (K=1) holds every token, layers 1-3 the kept ones
    cfg = fastv.adapter.language_model.config
    assert stats["fastv_k"] == 1 and stats["llm_shape"]["layers"] == cfg.num_hidden_layers == 4
    before, after = stats["visual_before"], stats["visual_after"]
    assert stats["avg_retention"] == pytest.approx((before + 3 * after) / (4 * before))
    per_token_layer = 2 * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4  # fp32
    assert stats["kv_cache_bytes"] == stats["seq_before"] * per_token_layer + 3 * stats["seq_after"] * per_token_layer
    kept = set(fastv.last_selection.kept_positions[0].tolist())
    dropped = torch.tensor([i for i in range(inputs["input_ids"].shape[1]) if i not in kept])
    handles = masked_from_layer(model, fastv.adapter.language_model, 1, dropped)
    try:
        with torch.no_grad():
            reference = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(out, reference)  # decoding over the shortened cache == full cache with columns hidden
