"""The same numerics on a GPU: every method on CUDA keeps what it keeps on the CPU and stays exact there.

Skipped without CUDA. ``TCC_TEST_DEVICE=cpu`` runs them on the CPU instead, to check the tests themselves on
a machine with no GPU; the device run is the one that matters."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from conftest import FAMILIES, from_layer, hidden_key_columns, messages_for, model_inputs, needs_assets
import tcc_eval
from tcc_eval.api import default_dtype
from tcc_eval.core import keep_count

DEVICE = torch.device(os.environ.get("TCC_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (TCC_TEST_DEVICE=cpu runs these checks on the CPU)")
SCORED_METHODS = ("random", "a0", "tcc", "divprune", "uniform")
LAYER_K_METHODS = ("fastv", "dart")


@pytest.fixture(autouse=True, scope="module")
def exact_fp32():
    """fp32 means fp32 here: cuDNN's TF32 convolutions (the Qwen2-VL patch embedding) would round differently
    from the CPU."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


def on_device(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(DEVICE) for k, v in inputs.items()}


@pytest.fixture(scope="module")
def compressor_dir(tmp_path_factory, loaded):
    """Untrained compressors (same code path and cost as trained ones) for each family and modality."""
    from tcc_eval.compressor import CompressorConfig, TokenCompressor, model_meta, save_compressor

    root = tmp_path_factory.mktemp("compressors")
    torch.manual_seed(0)
    for family, (model, _) in loaded.items():
        for modality in ("image", "video"):
            save_compressor(root / f"{family}_{modality}.pt", TokenCompressor(CompressorConfig()), model_meta(model),
                            modality, {})
    return root


@pytest.fixture(scope="module")
def both(loaded):
    """family -> (cpu model, device model, processor): the same fp32 eager weights in two places."""
    return {family: (model, copy.deepcopy(model).to(DEVICE), processor)
            for family, (model, processor) in loaded.items()}


@pytest.fixture(scope="module")
def deep_both(deep):
    """The 4-layer models (three layers after FastV's K=1, one per PyramidDrop stage), on the CPU and the device."""
    return {family: (model, copy.deepcopy(model).to(DEVICE), processor) for family, (model, processor) in deep.items()}


@pytest.mark.parametrize("family", ("qwen2_vl", "llava_onevision", "vila"))
def test_load_picks_the_device_and_its_dtype(tiny_checkpoints, tiny_vila_path, compressor_dir, family):
    """``tcc_eval.load`` without a device: the GPU in bf16 (fp16 without bf16). Keep-all gives the unwrapped
    model's logits and tokens bit for bit; every method keeps round(rho * N_v) tokens and answers."""
    path = tiny_vila_path if family == "vila" else tiny_checkpoints[family]
    vanilla = tcc_eval.load(path, method="none", device=None if DEVICE.type == "cuda" else DEVICE)
    model = vanilla.model
    param = next(model.parameters())
    assert param.device.type == DEVICE.type and param.dtype == default_dtype(DEVICE)
    inputs = vanilla.prepare(messages_for("image"))
    with torch.no_grad():
        expected = model(**inputs).logits
        expected_tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    keep_all = tcc_eval.wrap_model(model, method="random", keep_ratio=1.0)
    assert torch.equal(keep_all.prefill_logits(**inputs), expected)
    assert torch.equal(keep_all.generate(**inputs, max_new_tokens=4, do_sample=False), expected_tokens)
    if family == "vila":
        compressors = {"image": str(_vila_compressor(model, compressor_dir))}
    else:
        compressors = compressor_dir
    for method in (*SCORED_METHODS, "pool", "visionzip", "oracle", *LAYER_K_METHODS):
        layer_k = method in LAYER_K_METHODS
        ratio = 0.75 if layer_k else 0.5  # FastV's and DART's floor on these 2-layer LLMs is K/L = 1/2
        pruned = tcc_eval.wrap_model(model, method=method, keep_ratio=ratio, compressor=compressors, fastv_k=1)
        new_tokens = pruned.generate(**inputs, max_new_tokens=2, do_sample=False)[:, inputs["input_ids"].shape[1]:]
        assert new_tokens.shape == (1, 2) and new_tokens.device.type == DEVICE.type, method
        selection = pruned.last_selection  # layer-K methods: the tokens kept from layer K on, at their layer ratio
        kept_ratio = pruned.layer_keep_ratio if layer_k else 0.5
        assert selection.visual_after == [keep_count(selection.visual_before[0], kept_ratio)], method


def _vila_compressor(model, root):
    from tcc_eval.compressor import CompressorConfig, TokenCompressor, model_meta, save_compressor

    path = root / "vila_image.pt"
    if not path.exists():
        save_compressor(path, TokenCompressor(CompressorConfig()), model_meta(model), "image", {})
    return path


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ("image", "video"))
@pytest.mark.parametrize("method", SCORED_METHODS)
def test_device_keeps_what_the_cpu_keeps_and_prunes_exactly(both, compressor_dir, family, kind, method):
    """In fp32 the device picks the CPU's tokens, its pruned logits equal its own unpruned run with the dropped
    tokens masked out (original positions), and they agree with the CPU's."""
    from test_pruning_exact import original_positions

    cpu_model, model, processor = both[family]
    cpu_inputs = model_inputs(processor, messages_for(kind, seed=3))
    inputs = on_device(cpu_inputs)
    runs = {}
    for where, m, x in (("cpu", cpu_model, cpu_inputs), ("device", model, inputs)):
        pruned = tcc_eval.wrap_model(m, method=method, keep_ratio=0.25, compressor=compressor_dir)
        runs[where] = (pruned.prefill_logits(**x)[0], pruned.last_selection.kept_positions[0])
    logits, kept = runs["device"]
    assert torch.equal(kept.cpu(), runs["cpu"][1].cpu()), "the device kept other tokens than the CPU"
    masked = torch.zeros_like(inputs["attention_mask"])
    masked[0, kept] = 1
    with torch.no_grad():
        reference = model(**inputs | {"attention_mask": masked,
                                      "position_ids": original_positions(model, family, inputs)}).logits[0]
    assert (logits - reference[kept]).abs().max().item() < 1e-4
    assert (logits.cpu() - runs["cpu"][0]).abs().max().item() < 1e-3


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", LAYER_K_METHODS)
def test_layer_k_methods_on_the_device(deep_both, family, method):
    """FastV and DART at K=1 on the device: the CPU's tokens, and logits equal to the device's own full run with
    the dropped tokens hidden from layer K on; the short-cache decode equals the hidden-column decode."""
    cpu_model, model, processor = deep_both[family]
    cpu_inputs = model_inputs(processor, messages_for("video", seed=5))
    inputs = on_device(cpu_inputs)
    kept_on = {}
    for where, m, x in (("cpu", cpu_model, cpu_inputs), ("device", model, inputs)):
        pruned = tcc_eval.wrap_model(m, method=method, keep_ratio=0.5, fastv_k=1, match="kept")
        tokens = pruned.generate(**x, max_new_tokens=3, do_sample=False)
        kept_on[where] = pruned.last_selection.kept_positions[0].cpu()
    assert torch.equal(kept_on["device"], kept_on["cpu"]), "the device kept other tokens than the CPU"
    logits = pruned.prefill_logits(**inputs)[0, -1]
    length = inputs["input_ids"].shape[1]
    dropped = torch.tensor([i for i in range(length) if i not in set(kept_on["device"].tolist())], device=DEVICE)
    lm = pruned.adapter.language_model
    with hidden_key_columns(lm, from_layer(lm, 1, dropped)), torch.no_grad():
        llm = pruned.adapter.capture_llm_inputs(inputs)
        reference = pruned.adapter.forward_from_embeds(llm.inputs_embeds, llm.attention_mask,
                                                       llm.position_ids).logits[0, -1]
        reference_tokens = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert (logits - reference).abs().max().item() < 1e-4
    assert torch.equal(tokens, reference_tokens)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ("image", "video"))
def test_visionzip_on_the_device_keeps_what_the_cpu_keeps(both, family, kind):
    """VisionZip's tower attention and keys, recomputed on the device, rank and merge as on the CPU: the same kept
    tokens, the same tower signals (rtol 1e-4) and logits within 1e-3."""
    cpu_model, model, processor = both[family]
    cpu_inputs = model_inputs(processor, messages_for(kind, seed=3))
    runs = {}
    for where, m, x in (("cpu", cpu_model, cpu_inputs), ("device", model, on_device(cpu_inputs))):
        pruned = tcc_eval.wrap_model(m, method="visionzip", keep_ratio=0.5)
        llm = pruned.adapter.capture_llm_inputs(x, tower_attention=True)
        runs[where] = (pruned.prefill_logits(**x)[0].cpu(), pruned.last_selection.kept_positions[0].cpu(),
                       llm.tower_attention[0], llm.tower_keys[0])
    (cpu_logits, cpu_kept, cpu_attention, cpu_keys), (logits, kept, attention, keys) = runs["cpu"], runs["device"]
    assert torch.equal(kept, cpu_kept), "the device kept other tokens than the CPU"
    assert torch.allclose(attention, cpu_attention, rtol=1e-4, atol=1e-7)
    assert torch.allclose(keys, cpu_keys, rtol=1e-4, atol=1e-5)
    assert (logits - cpu_logits).abs().max().item() < 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_oracle_on_the_device_equals_the_cpu(both, family):
    """The layer-by-layer oracle (recompute, per-layer autograd, fp32 head sums) gives the CPU's relevance."""
    from tcc_eval.oracle import RELEVANCE_RULES, single_view, view_relevances

    cpu_model, model, processor = both[family]
    cpu_inputs = model_inputs(processor, messages_for("image"))
    answer = torch.tensor([40, 41, 42])
    relevance = {}
    for where, m, x in (("cpu", cpu_model, cpu_inputs), ("device", model, on_device(cpu_inputs))):
        relevance[where] = view_relevances(single_view(m, x), answer.to(next(m.parameters()).device), RELEVANCE_RULES)
    for rule in RELEVANCE_RULES:
        cpu, dev = relevance["cpu"][rule], relevance["device"][rule]
        assert dev.device.type == DEVICE.type and dev.dtype == torch.float32
        assert cpu.abs().max() > 0
        assert torch.allclose(dev.cpu(), cpu, rtol=1e-3, atol=1e-4 * cpu.abs().max().item()), rule


@needs_assets
def test_demo_evaluate_on_the_device_matches_the_cpu():
    """The demo table's path (batched, left-padded, every method family) in the device's dtype answers like the
    fp32 CPU run, within 2 of 32 samples per cell (bf16 moves a few close answers)."""
    from tcc_eval.demo.evaluate import evaluate

    args = dict(seed=3, n=32, families=("qwen2_vl",), modalities=("image",), methods=("none", "tcc", "dart"),
                ratios=(0.25,), log=lambda _: None)
    cpu = {(r["method"], r["ratio"]): r for r in evaluate(**args)}
    dev = {(r["method"], r["ratio"]): r for r in evaluate(**args, device=str(DEVICE))}
    assert cpu.keys() == dev.keys() and ("tcc", 0.25) in dev and ("dart", 0.25) in dev
    for key, row in dev.items():
        assert abs(row["accuracy"] - cpu[key]["accuracy"]) <= 2 / 32 + 1e-9, key
    assert dev[("none", 1.0)]["accuracy"] >= 0.9


@pytest.mark.parametrize("family", FAMILIES)
def test_pyramid_drop_on_the_device(deep_both, family):
    """PyramidDrop's three stages on the device: the CPU's tokens in every stage, and logits equal to the device's
    own full run with each layer hiding what its stage dropped."""
    from test_fastv import pdrop_prefill, stage_hidden_columns

    cpu_model, model, processor = deep_both[family]
    cpu_inputs = model_inputs(processor, messages_for("image", seed=5))
    stages = {}
    for where, m, x in (("cpu", cpu_model, cpu_inputs), ("device", model, on_device(cpu_inputs))):
        pdrop, view, pruner, logits = pdrop_prefill(m, x, keep_ratio=0.5)
        stages[where] = [kept.cpu() for kept in pruner.stage_kept]
    assert len(stages["device"]) == 3
    assert all(torch.equal(d, c) for d, c in zip(stages["device"], stages["cpu"])), "the device kept other tokens"
    lm = pdrop.adapter.language_model
    hidden = stage_hidden_columns(pruner, view.visual.numel(), len(lm.layers), DEVICE)
    with hidden_key_columns(lm, hidden), torch.no_grad():
        reference = pdrop.adapter.forward_from_embeds(view.inputs_embeds, view.attention_mask,
                                                      view.position_ids).logits[0, -1]
    assert (logits - reference).abs().max().item() < 1e-4
