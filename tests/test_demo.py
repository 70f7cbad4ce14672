"""The shipped demo models and compressors: they load, read the objects, and pruning behaves as the bars say.

A quick version of the issue's bars on a small fresh test split (the full table comes from
``python -m tcc_eval.demo evaluate``). Nothing here trains; the assets are built by ``demo build``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tcc_eval import synth
from tcc_eval.demo import MODALITIES, benchmark, paths

TEST_SEED = 11  # test split: never seen in training
SHIPPED_FAMILIES = ("qwen2_vl",)  # what this revision ships; the LLaVA-OneVision demo model is not trained yet
SHIPPED = all(paths()[f]["built"] for f in SHIPPED_FAMILIES)
needs_assets = pytest.mark.skipif(
    not SHIPPED, reason="demo assets are not in this checkout; build them with `python -m tcc_eval.demo build`"
)


@needs_assets
def test_paths_lists_every_shipped_file():
    table = paths()
    for family in SHIPPED_FAMILIES:
        entry = table[family]
        assert set(entry) >= {"model", "compressor_image", "compressor_video", "built"}
        assert entry["built"], f"{family}: demo assets missing; run `python -m tcc_eval.demo build`"
        assert (Path(entry["model"]) / "config.json").is_file()
        for modality in MODALITIES:
            assert Path(entry[f"compressor_{modality}"]).is_file()
        size = sum(p.stat().st_size for p in Path(entry["model"]).iterdir())
        assert size < 20e6, f"{family} checkpoint is {size / 1e6:.1f} MB"
    assert Path(table["lmms_eval_include_path"]).is_dir()
    assert "vlmeval_data_dir" in table and set(table["tasks"]) == {"image", "video"}


def test_paths_cli_prints_json():
    out = subprocess.run([sys.executable, "-m", "tcc_eval.demo", "paths"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["qwen2_vl"]["model"] == paths()["qwen2_vl"]["model"]


def test_paths_point_at_a_rebuilt_demo(tmp_path):
    """TCC_DEMO_ROOT redirects every tool to a demo rebuilt elsewhere (`demo build --out DIR`)."""
    out = subprocess.run([sys.executable, "-m", "tcc_eval.demo", "paths"], capture_output=True, text=True, check=True,
                         env={**os.environ, "TCC_DEMO_ROOT": str(tmp_path)})
    table = json.loads(out.stdout)
    assert table["qwen2_vl"]["model"] == str(tmp_path / "qwen2_vl") and table["qwen2_vl"]["built"] is False


@pytest.fixture(scope="module")
def demo_models():
    from tcc_eval.demo.evaluate import load_demo

    return {family: load_demo(family) for family in SHIPPED_FAMILIES}


@pytest.mark.parametrize("family", SHIPPED_FAMILIES)
@pytest.mark.parametrize("modality", MODALITIES)
@needs_assets
def test_visual_tokens_see_only_their_own_cell(demo_models, family, modality):
    """No mixing in the vision front end: repainting one object changes exactly the tokens over it, so
    information cannot hide in 'register' tokens elsewhere (DEMO_NOTES.md)."""
    from tcc_eval.adapters import adapter_for
    from tcc_eval.demo.regions import token_regions
    from tcc_eval.demo.train import encode

    model, processor = demo_models[family]
    sample = benchmark.samples(modality, 1, TEST_SEED)[0]
    obj = sample.objects[0]
    x0, y0, x1, y1 = obj["box"]

    def repaint(img: Image.Image) -> Image.Image:
        arr = np.asarray(img).copy()
        arr[y0:y1, x0:x1] = 255 - arr[y0:y1, x0:x1]
        return Image.fromarray(arr)

    if modality == "image":
        changed_sample = replace(sample, image=repaint(sample.image))
    else:
        changed_sample = replace(sample, video=[repaint(f) if i in obj["frames"] else f for i, f in enumerate(sample.video)])
    adapter = adapter_for(model)
    feats = []
    for s in (sample, changed_sample):
        inputs = encode(processor, [s])
        llm = adapter.capture_llm_inputs(inputs)
        feats.append(llm.inputs_embeds[0][llm.visual_mask[0]])
    changed = ((feats[0] - feats[1]).abs().amax(-1) > 1e-6).numpy()
    regions = token_regions(model, inputs, 0, sample)
    frames = obj.get("frames")
    expected = regions.covering([obj["box"]] * len(frames or [None]), frames)
    assert changed.any() and np.array_equal(changed, expected)


@pytest.mark.parametrize("family", SHIPPED_FAMILIES)
@needs_assets
def test_quick_bars_on_images(demo_models, family):
    """n=40 fresh test images: vanilla high, tcc@25% well above random@25%, dropping the ground truth hurts."""
    from tcc_eval.demo import compressor_path
    from tcc_eval.demo.evaluate import evaluate_model

    model, processor = demo_models[family]
    samples = benchmark.samples("image", 40, TEST_SEED)
    rows = evaluate_model(model, processor, samples, str(compressor_path(family, "image")),
                          methods=("none", "random", "tcc"), ratios=(0.25,), batch_size=20)
    acc = {r["method"]: r["accuracy"] for r in rows}
    assert acc["none"] >= 0.85, rows
    assert acc["tcc"] >= acc["random"] + 0.15, rows
    assert acc["keep_gt"] >= acc["none"] - 0.15, rows
    assert acc["drop_gt"] <= acc["none"] - 0.3, rows


@needs_assets
def test_quick_bars_on_video(demo_models):
    from tcc_eval.demo import compressor_path
    from tcc_eval.demo.evaluate import evaluate_model

    model, processor = demo_models["qwen2_vl"]
    samples = benchmark.samples("video", 24, TEST_SEED)
    rows = evaluate_model(model, processor, samples, str(compressor_path("qwen2_vl", "video")),
                          methods=("none", "random", "tcc"), ratios=(0.25,), batch_size=12)
    acc = {r["method"]: r["accuracy"] for r in rows}
    assert acc["none"] >= 0.85, rows
    assert acc["tcc"] >= acc["random"] + 0.15, rows


@needs_assets
def test_generate_path_agrees_with_training_forward(demo_models):
    """The evaluation's generate() answers equal the training code's teacher-forced argmax (same model)."""
    from tcc_eval.api import wrap_model
    from tcc_eval.demo.train import answer_logits, encode

    model, processor = demo_models[SHIPPED_FAMILIES[0]]
    samples = benchmark.samples("image", 6, TEST_SEED)
    inputs = encode(processor, samples)
    out = wrap_model(model, method="none").generate(**inputs, max_new_tokens=1, do_sample=False)
    with torch.no_grad():
        ref = answer_logits(model, inputs).argmax(-1)
    assert torch.equal(out[:, inputs["input_ids"].shape[1]], ref)


@needs_assets
def test_visualize_writes_png(tmp_path):
    from tcc_eval.visualize import main

    out = tmp_path / "v.png"
    assert main(["--n", "1", "--methods", "tcc", "random", "--out", str(out)]) == 0
    img = Image.open(out)
    assert img.width > 336 * 2 and img.height >= 336
