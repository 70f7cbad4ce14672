"""FLOPs and KV cache formulas against hand-computed numbers and the paper's reported magnitudes."""

from __future__ import annotations

import pytest

from tcc_eval.flops import (LLM_SHAPES, LLMShape, fastv_average_retention, flops_ratio, guess_shape,
                            kv_cache_bytes, shape_from_config, visual_flops)


def test_visual_flops_hand_computed():
    # one layer, n=10, d=4, m=8: 4*10*16 + 2*100*4 + c*10*4*8
    assert visual_flops(10, 4, 8, 1, gated=True) == 640 + 800 + 960
    assert visual_flops(10, 4, 8, 1, gated=False) == 640 + 800 + 640
    assert visual_flops(10, 4, 8, 3) == 3 * (640 + 800 + 960)


def test_flops_ratio_input_stage_is_slightly_below_keep_ratio():
    # Qwen2-VL-7B, 1000 visual tokens: the paper reports 0.49x at 50% and 0.24x at 25%.
    half = flops_ratio(1000, 0.5, "qwen2-vl-7b", "tcc")
    quarter = flops_ratio(1000, 0.25, "qwen2-vl-7b", "tcc")
    d, m = 3584, 18944
    per_token = 4 * d * d + 3 * d * m
    expected_half = (500 * per_token + 2 * 500**2 * d) / (1000 * per_token + 2 * 1000**2 * d)
    assert half == pytest.approx(expected_half, rel=1e-12)
    assert 0.48 < half < 0.5 and round(half, 2) == 0.49
    assert 0.235 < quarter < 0.25 and round(quarter, 2) == 0.24
    # the n^2 term grows with n, so more tokens -> a lower ratio (LLaVA-OV reports 0.48x at 50%)
    assert flops_ratio(3000, 0.5, "llava-ov-7b") < half


def test_flops_ratio_fastv_and_vanilla():
    shape = LLM_SHAPES["qwen2-vl-7b"]
    n, k = 1000, 250
    full = visual_flops(n, shape.hidden, shape.intermediate, 28)
    expected = (visual_flops(n, shape.hidden, shape.intermediate, 2)
                + visual_flops(k, shape.hidden, shape.intermediate, 26)) / full
    assert flops_ratio(n, 0.25, shape, "fastv", fastv_k=2) == pytest.approx(expected, rel=1e-12)
    assert flops_ratio(n, 0.25, shape, "fastv") > flops_ratio(n, 0.25, shape, "tcc")
    assert flops_ratio(n, 1.0, shape, "tcc") == 1.0
    assert flops_ratio(n, 0.25, shape, "none") == 1.0
    with pytest.raises(ValueError):
        flops_ratio(0, 0.5, shape)


def test_fastv_average_retention():
    assert fastv_average_retention(0.25, 28, 2) == pytest.approx((2 + 26 * 0.25) / 28)
    assert fastv_average_retention(1.0, 28, 2) == 1.0


def test_kv_cache_matches_paper_magnitude():
    shape = LLM_SHAPES["qwen2-vl-7b"]
    per_token = kv_cache_bytes(1, shape.layers, shape.kv_heads, shape.head_dim, 2)
    assert per_token == 2 * 28 * 4 * 128 * 2 == 57344
    # Paper: Qwen2-VL on MMStar, 71.2 MB vanilla -> 17.8 MB at 25%; ~1242 visual tokens of fp16 KV.
    vanilla_mb = kv_cache_bytes(1242, shape.layers, shape.kv_heads, shape.head_dim, 2) / 1e6
    pruned_mb = kv_cache_bytes(round(0.25 * 1242), shape.layers, shape.kv_heads, shape.head_dim, 2) / 1e6
    assert vanilla_mb == pytest.approx(71.2, rel=0.01)
    assert pruned_mb == pytest.approx(17.8, rel=0.01)


def test_llm_shapes_are_the_real_configs():
    assert LLM_SHAPES["qwen2-vl-7b"] == LLMShape(28, 3584, 18944, 28, 4, 128)
    assert LLM_SHAPES["qwen2-vl-2b"] == LLMShape(28, 1536, 8960, 12, 2, 128)
    assert LLM_SHAPES["qwen2-0.5b"] == LLMShape(24, 896, 4864, 14, 2, 64)
    assert LLM_SHAPES["llava-ov-7b"] == LLM_SHAPES["qwen2-vl-7b"]
    assert LLM_SHAPES["llava-ov-0.5b"] == LLM_SHAPES["qwen2-0.5b"]
    assert LLM_SHAPES["vila1.5-3b"] == LLMShape(32, 2560, 6912, 20, 20, 128)
    assert LLM_SHAPES["llama3-8b"] == LLMShape(32, 4096, 14336, 32, 8, 128)


def test_shape_from_hf_config_reads_text_config():
    from transformers import LlavaOnevisionConfig, Qwen2VLConfig

    qwen = Qwen2VLConfig(text_config=dict(num_hidden_layers=28, hidden_size=1536, intermediate_size=8960,
                                          num_attention_heads=12, num_key_value_heads=2))
    assert shape_from_config(qwen) == LLM_SHAPES["qwen2-vl-2b"]
    llava = LlavaOnevisionConfig(text_config=dict(model_type="qwen2", num_hidden_layers=24, hidden_size=896,
                                                  intermediate_size=4864, num_attention_heads=14,
                                                  num_key_value_heads=2))
    assert shape_from_config(llava) == LLM_SHAPES["qwen2-0.5b"]
    plain = shape_from_config({"model_type": "gpt2", "num_hidden_layers": 2, "hidden_size": 8,
                               "intermediate_size": 32, "num_attention_heads": 2})
    assert plain == LLMShape(2, 8, 32, 2, 2, 4, gated=False)
    with pytest.raises(ValueError, match="hidden_size"):
        shape_from_config({"num_hidden_layers": 2})


@pytest.mark.parametrize("name, key", [
    ("Qwen2VL7B", "qwen2-vl-7b"),
    ("qwen2_vl/Qwen2-VL-2B-Instruct", "qwen2-vl-2b"),
    ("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2.5-vl-3b"),
    ("Qwen25VL7B", "qwen2.5-vl-7b"),
    ("LLaVAOV7B", "llava-ov-7b"),
    ("llava_onevision/llava-onevision-qwen2-0.5b-ov-hf", "llava-ov-0.5b"),
    ("VILA1.5-3B", "vila1.5-3b"),
    ("Efficient-Large-Model/VILA1.5-13b", "vila1.5-13b"),
    ("Llama-3-8B", "llama3-8b"),
])
def test_guess_shape_known(name, key):
    assert guess_shape(name) == LLM_SHAPES[key]


@pytest.mark.parametrize("name", ["Qwen2VL", "LLaVAOV", "TinyQwen2VL", "Qwen2-VL-72B", "Qwen2.5-VL-32B", "VILA1.5-40B",
                                  "foo"])
def test_guess_shape_never_guesses(name):
    assert guess_shape(name) is None
