"""Public API: tcc_eval.load(...).generate(messages) and its clear errors."""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

from conftest import FAMILIES, messages_for, model_inputs, needs_assets
import tcc_eval


@pytest.mark.parametrize("ratio", (0, -0.5, 1.5, float("nan"), "half", True))
def test_bad_keep_ratio(tiny_checkpoints, ratio):
    with pytest.raises(ValueError, match=r"keep_ratio must be .*\(0, 1\]"):
        tcc_eval.load(tiny_checkpoints["qwen2_vl"], method="random", keep_ratio=ratio)


def test_unknown_method(tiny_checkpoints):
    with pytest.raises(ValueError, match="unknown method 'magic'.*none, random, a0, tcc, oracle, divprune, uniform, "
                                         "pool, visionzip, fastv"):
        tcc_eval.load(tiny_checkpoints["qwen2_vl"], method="magic")


def test_text_only_checkpoint_is_refused(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'qwen2' checkpoint, which has no token-compression adapter"):
        tcc_eval.load(tmp_path, method="a0")


def test_missing_path_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder .*not a hub id"):  # not a hub lookup's traceback
        tcc_eval.load(tmp_path / "nowhere", method="none")
    with pytest.raises(ValueError, match="cannot read a model config"):
        tcc_eval.load(tmp_path, method="none")


def test_bad_arguments_stop_before_any_weights_load(tmp_path):
    """A device this machine lacks, an unknown dtype, a file for the checkpoint folder, and method options of the
    wrong kind are named before loading (the model path does not even exist for the option checks)."""
    config = tmp_path / "config.json"
    config.write_text("{}")
    cases = [({"device": "gpu"}, "'gpu' is not a torch device; use cpu, cuda or cuda:N"),
             ({"dtype": "float33"}, "dtype 'float33': expected a torch floating-point type, e.g. float32"),
             ({"method": "fastv", "fastv_k": "2"}, "fastv_k='2': expected an integer"),
             ({"seed": "abc"}, "seed='abc': expected an integer"),
             ({"budget": "pergroup"}, "budget='pergroup': expected global or per_group"),
             ({"method": "oracle", "max_answer_tokens": 0}, "max_answer_tokens=0: expected a positive integer"),
             ({"sead": 1}, "unknown method option 'sead'")]
    if not torch.cuda.is_available():
        cases.append(({"device": "cuda"}, "cuda, but torch sees no CUDA GPU here; use cpu"))
    for options, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            tcc_eval.load(tmp_path / "no_model", **{"method": "random", **options})
    with pytest.raises(ValueError, match=re.escape(f"model '{config}' is a file; pass the checkpoint folder")):
        tcc_eval.load(config, method="none")


def test_wrap_model_refuses_options_of_the_wrong_kind(loaded):
    """As load() does before loading, for a model already loaded (the method-specific checks keep their own, more
    specific messages: PyramidDrop's layer range, the positions rule)."""
    model = loaded["qwen2_vl"][0]
    for options, message in (({"method": "fastv", "fastv_k": "2"}, "fastv_k='2': expected an integer"),
                             ({"seed": 1.5}, "seed=1.5: expected an integer"),
                             ({"budget": "pergroup"}, "budget='pergroup': expected global or per_group"),
                             ({"method": "oracle", "max_answer_tokens": 0}, "max_answer_tokens=0: expected a")):
        with pytest.raises(ValueError, match=re.escape(message)):
            tcc_eval.wrap_model(model, **{"method": "random", **options})


def test_api_misuse_is_named_not_a_traceback_from_inside(tiny_checkpoints):
    """A question passed as a plain string, an image part without its image, wrapping what is already wrapped and
    explaining an HF model without its processor: each says what to pass instead."""
    mllm = tcc_eval.load(tiny_checkpoints["qwen2_vl"], method="random", keep_ratio=0.5)
    with pytest.raises(TypeError, match="messages must be a list of chat turns, e.g. .*got str"):
        mllm.generate("What colour is the square?")
    for part in ({"type": "image"}, {"type": "image", "image": 5}):
        with pytest.raises(ValueError, match="an image part needs one of 'image', 'path', 'url', 'base64'"):
            mllm.generate([{"role": "user", "content": [part, {"type": "text", "text": "Q?"}]}])
    image = {"type": "image", "image": Image.new("RGB", (56, 56))}
    # a question under "content" vanished from the prompt, and the model answered without it
    with pytest.raises(ValueError, match="a text part holds its text under 'text', e.g. {'type': 'text', 'text'"):
        mllm.generate([{"role": "user", "content": [image, {"type": "text", "content": "Q?"}]}])
    with pytest.raises(TypeError, match="a content part must be a dict such as .* got str 'Q\\?'"):
        mllm.generate([{"role": "user", "content": [image, "Q?"]}])
    with pytest.raises(ValueError, match="content part type 'picture' is not one of 'text', 'image', 'video'"):
        mllm.generate([{"role": "user", "content": [{"type": "picture", "image": image["image"]}]}])
    with pytest.raises(ValueError, match="messages is empty: pass at least one user turn"):
        mllm.generate([])
    for wrapped in (mllm, mllm.pruned):
        with pytest.raises(TypeError, match=f"model is already a pruned {type(wrapped).__name__}: wrap the HF model"):
            tcc_eval.wrap_model(wrapped, method="a0")
    with pytest.raises(TypeError, match="explain takes a CompressedMLLM .* without one: pass processor="):
        tcc_eval.explain(mllm.model, messages_for("image"))


@needs_assets
@pytest.mark.parametrize("family, message", [
    ("qwen2_vl", "input_ids hold more images than image_grid_thw has grids: pass the processor's outputs whole"),
    ("llava_onevision", "input_ids hold more <image> tokens than the inputs have images: pass the processor's"),
    ("vila", "input_ids hold 144 image placeholder tokens but no pixel_values were given"),
])
def test_image_tokens_without_their_pixels_are_named(family, message):
    """generate(**inputs) given the input_ids but not the pixels they stand for (a dropped key) says so, instead of
    a bare StopIteration from inside the adapter."""
    from tcc_eval.demo import paths

    mllm = tcc_eval.load(paths()[family]["model"], method="random", keep_ratio=0.5)
    inputs = mllm.prepare(messages_for("image"))
    with pytest.raises(ValueError, match=re.escape(message)):
        mllm.pruned.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=1)


def test_an_empty_answer_is_refused(tiny_checkpoints):
    mllm = tcc_eval.load(tiny_checkpoints["qwen2_vl"], method="none", keep_ratio=1.0)
    with pytest.raises(ValueError, match="the answer to explain has no tokens"):
        tcc_eval.explain(mllm, messages_for("image"), answer="")


@pytest.mark.parametrize("family", ("qwen2_vl", "llava_onevision"))
def test_load_generate_and_last_selection(tiny_checkpoints, loaded, family):
    mllm = tcc_eval.load(tiny_checkpoints[family], method="random", keep_ratio=0.25)
    text = mllm.generate(messages_for("image"), max_new_tokens=4)
    assert isinstance(text, str)
    sel = mllm.last_selection
    assert sel.visual_after[0] == max(1, int(0.25 * sel.visual_before[0] + 0.5))
    assert sel.kept_positions[0].numel() == sel.seq_after[0]
    stats = mllm.last_stats
    assert stats["kv_cache_bytes"] > 0 and stats["prefill_s"] > 0 and stats["visual_before"] > stats["visual_after"]
    assert stats["avg_retention"] == pytest.approx(stats["visual_after"] / stats["visual_before"])
    assert stats["llm_shape"]["layers"] == mllm.model.config.text_config.num_hidden_layers
    cfg = mllm.model.config.text_config  # the checkpoint's own shape, not the record's
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    assert stats["kv_cache_bytes"] == stats["seq_after"] * per_token
    assert stats["visual_kv_cache_bytes"] == stats["visual_after"] * per_token
    # random is seeded by the input: the same prompt keeps the same tokens
    first = sel.kept_positions[0].clone()
    mllm.generate(messages_for("image"), max_new_tokens=1)
    assert torch.equal(mllm.last_selection.kept_positions[0], first)


def test_kv_cache_bytes_count_in_the_llms_dtype(tiny_checkpoints):
    """The KV cache holds the LLM's dtype: a vision tower kept in fp32 beside a bf16 LLM (the tower's parameters come
    first in Qwen2-VL) must not double the recorded bytes."""
    mllm = tcc_eval.load(tiny_checkpoints["qwen2_vl"], method="random", keep_ratio=0.5)
    mllm.pruned.adapter.language_model.to(torch.bfloat16)
    mllm.model.lm_head.to(torch.bfloat16)
    assert next(mllm.model.parameters()).dtype == torch.float32
    mllm.generate(messages_for("image"), max_new_tokens=1)
    stats, cfg = mllm.last_stats, mllm.model.config.text_config
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 2
    assert stats["kv_cache_bytes"] == stats["seq_after"] * per_token
    assert stats["visual_kv_cache_bytes"] == stats["visual_after"] * per_token


def test_media_the_processor_cannot_read_are_named(tiny_checkpoints, tmp_path):
    """A missing or undecodable image, a folder given as an image and a video without frames are named before the
    processor fails inside transformers or torchvision; an image file or base64 data (plain or as a data: URL) and
    a folder of frame images as a video are read, with PIL (in a process that imported VLMEvalKit before, as this
    suite's earlier tests do, torchvision's PNG decoder fails)."""
    import base64
    import io

    mllm = tcc_eval.load(tiny_checkpoints["qwen2_vl"], method="a0", keep_ratio=0.5)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(messages_for("video")[0]["content"][0]["video"]):
        frame.save(frames / f"{i:02d}.png")
    png = io.BytesIO()
    messages_for("image")[0]["content"][0]["image"].save(png, format="PNG")
    data = base64.b64encode(png.getvalue()).decode()

    def ask(part: dict) -> str:
        return mllm.generate([{"role": "user", "content": [part, {"type": "text", "text": "What shape?"}]}],
                             max_new_tokens=2)

    refused = [({"type": "image", "image": str(tmp_path / "nope.png")}, FileNotFoundError,
                "is neither an existing file, a URL nor base64 image data"),
               ({"type": "image", "image": str(not_an_image)}, ValueError, "cannot decode image"),
               ({"type": "image", "image": str(tmp_path)}, IsADirectoryError, "is a folder: pass an image file"),
               ({"type": "video", "video": []}, ValueError, "a video part holds no frames")]
    for part, kind, message in refused:
        with pytest.raises(kind, match=message):
            ask(part)
    png_file = tmp_path / "image.png"
    png_file.write_bytes(png.getvalue())

    def pixels(part: dict) -> torch.Tensor:
        return mllm.prepare([{"role": "user", "content": [part, {"type": "text", "text": "Q"}]}])["pixel_values"]

    from_file = pixels({"type": "image", "image": str(png_file)})
    wrapped = base64.encodebytes(png.getvalue()).decode()  # line breaks, as MIME and `openssl base64` write it
    for image in (data, f"data:image/png;base64,{data}", wrapped):  # base64 reads as the same picture as its file
        assert torch.equal(pixels({"type": "image", "image": image}), from_file)
        assert isinstance(ask({"type": "image", "image": image}), str)
    frames_part = {"type": "video", "video": str(frames)}
    assert isinstance(ask(frames_part), str) and mllm.last_stats["visual_before"] > 0
    assert "pixel_values_videos" in mllm.prepare([{"role": "user", "content": [frames_part]}])  # read as a video
    from transformers.image_utils import load_image  # transformers' own reader of a file, PIL-based

    photo = tmp_path / "photo.jpg"  # stored 84 wide x 112 high; EXIF orientation 6 turns it 112 x 84
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6
    messages_for("image")[0]["content"][0]["image"].save(photo, exif=exif)
    as_text, as_read = ([{"role": "user", "content": [{"type": "image", "image": ref}, {"type": "text", "text": "Q"}]}]
                        for ref in (str(photo), load_image(str(photo))))
    inputs = mllm.prepare(as_text)
    for key, value in mllm.prepare(as_read).items():  # a file reads as transformers reads it, turned upright
        assert torch.equal(inputs[key], value)
    assert inputs["image_grid_thw"][0, 1:].tolist() == [6, 8]  # 14-px patches of the upright image, not 8 x 6


def test_text_only_prompt_passes_through(loaded):
    model, processor = loaded["qwen2_vl"]
    messages = [{"role": "user", "content": [{"type": "text", "text": "What color is the circle?"}]}]
    inputs = model_inputs(processor, messages)
    pruned = tcc_eval.wrap_model(model, method="a0", keep_ratio=0.25)
    with torch.no_grad():
        vanilla = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(pruned.generate(**inputs, max_new_tokens=5, do_sample=False), vanilla)
    assert pruned.last_selection.visual_before == [0]


@pytest.mark.parametrize("family", FAMILIES)
def test_video_as_path(tiny_checkpoints, tmp_path, family):
    """A video file is decoded here with its timing: Qwen2.5-VL's temporal ids follow the sampled frame rate
    (16 frames of a 2 fps clip, 8 read: one read frame per second, a temporal patch of 2 frames = 2 s), not
    the 24 fps a processor assumes for bare frames, which put a patch at 0.083 s and the clip on 2 ids."""
    import cv2
    import numpy as np

    path = str(tmp_path / "clip.mp4")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 2, (56, 56))
    for i in range(16):
        writer.write(np.full((56, 56, 3), 15 * i, dtype=np.uint8))
    writer.release()
    mllm = tcc_eval.load(tiny_checkpoints[family], method="a0", keep_ratio=0.5)
    msgs = [{"role": "user", "content": [{"type": "video", "video": path}, {"type": "text", "text": "What appeared?"}]}]
    inputs = mllm.prepare(msgs)
    if family == "qwen2_5_vl":
        assert inputs["second_per_grid_ts"].tolist() == pytest.approx([2.0])
    if family == "llava_onevision":
        assert inputs["pixel_values_videos"].shape[1] == 8  # 8 of the 16 frames
    else:
        assert inputs["video_grid_thw"][0, 0] == 4  # 8 of the 16 frames, in temporal patches of 2
    mllm.generate(msgs, max_new_tokens=2)
    assert mllm.last_selection.visual_before[0] > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_oracle_answers_with_vanillas_attention(tiny_checkpoints, family):
    """The oracle model loads with sdpa as every other method's and switches to eager for its own pass only: its
    keep-all logits are vanilla's exactly, and after a pruned answer the model is back on sdpa (its prefill time
    compares with the other rows')."""
    vanilla = tcc_eval.load(tiny_checkpoints[family], method="none")
    inputs = vanilla.prepare(messages_for("image"))
    with torch.no_grad():
        expected = vanilla.model(**inputs).logits
    oracle = tcc_eval.load(tiny_checkpoints[family], method="oracle", keep_ratio=1.0)
    assert torch.equal(oracle.pruned.prefill_logits(**oracle.prepare(messages_for("image"))), expected)
    oracle = tcc_eval.load(tiny_checkpoints[family], method="oracle", keep_ratio=0.5)
    oracle.generate(messages_for("image"), max_new_tokens=2)
    assert oracle.last_selection.visual_after[0] < oracle.last_selection.visual_before[0]
    assert oracle.model.config._attn_implementation == "sdpa"


def test_only_the_models_first_call_is_marked(tiny_checkpoints):
    """The first generate on a loaded model pays one-time costs, which the tables leave out of their time means:
    it alone is marked first_call, also across the pruned wrappers that share the model (VLMEvalKit's TCC has one
    per modality), for input-stage and in-LLM methods alike."""
    vanilla = tcc_eval.load(tiny_checkpoints["qwen2_vl"], method="none")
    inputs = vanilla.prepare(messages_for("image"))
    marks = []
    for method in ("a0", "fastv", "a0"):
        pruned = tcc_eval.wrap_model(vanilla.model, method=method, keep_ratio=0.75, fastv_k=1)
        for _ in range(2):
            pruned.generate(**inputs, max_new_tokens=1, do_sample=False)
            marks.append(pruned.last_stats["first_call"])
    assert marks == [True, False, False, False, False, False]


def test_unreadable_video_is_named(tmp_path):
    """A missing or undecodable video file is an error that names it and the fix, not decord's bare one, from the
    Python API's reader and from VILA's processor alike."""
    from tcc_eval.api import read_video
    from tcc_eval.vila import load_video_frames

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    for read in (read_video, lambda path: load_video_frames(path, 4)):
        with pytest.raises(FileNotFoundError, match="video '.*nowhere.mp4' does not exist"):
            read(tmp_path / "nowhere.mp4")
        with pytest.raises(ValueError, match="cannot decode video '.*broken.mp4' with decord .*re-encode it"):
            read(broken)


def test_only_pixels_take_the_model_dtype():
    """In bf16, Qwen2.5-VL's seconds per temporal patch would move its temporal position ids (5.837 -> 5.844)."""
    from tcc_eval.api import on_model_device

    model = torch.nn.Linear(2, 2).to(torch.bfloat16)
    inputs = {"pixel_values": torch.rand(4, 3), "pixel_values_videos": torch.rand(4, 3),
              "second_per_grid_ts": torch.tensor([5.837]), "input_ids": torch.tensor([[1, 2]])}
    moved = on_model_device(model, inputs)
    assert moved["pixel_values"].dtype == moved["pixel_values_videos"].dtype == torch.bfloat16
    assert moved["second_per_grid_ts"].dtype == torch.float32 and moved["input_ids"].dtype == torch.long
    assert moved["second_per_grid_ts"].item() == pytest.approx(5.837)


def test_tcc_without_compressor_fails_before_loading(tmp_path):
    # the model path does not even exist: the compressor check must come first
    with pytest.raises(ValueError, match="needs a trained compressor.*compressor label"):
        tcc_eval.load(tmp_path / "no_model", method="tcc", keep_ratio=0.5)
    with pytest.raises(FileNotFoundError, match="does not exist.*compressor train"):
        tcc_eval.load(tmp_path / "no_model", method="tcc", keep_ratio=0.5, compressor=tmp_path / "missing.pt")


def test_tcc_picks_the_compressor_of_the_input_modality(loaded, tmp_path):
    from tcc_eval.compressor import TokenCompressor, CompressorConfig, model_meta, save_compressor

    model, processor = loaded["qwen2_vl"]
    for modality in ("image", "video"):
        save_compressor(tmp_path / f"qwen2_vl_{modality}.pt", TokenCompressor(CompressorConfig()),
                        model_meta(model), modality, {})
    pruned = tcc_eval.wrap_model(model, method="tcc", keep_ratio=0.5, compressor=tmp_path)
    calls = []
    for modality, compressor in pruned.scorer.compressors.items():
        original = compressor.predict
        compressor.predict = lambda a0, m=modality, f=original: calls.append(m) or f(a0)
    for kind in ("image", "video"):
        pruned.generate(**model_inputs(processor, messages_for(kind)), max_new_tokens=1)
    assert calls == ["image", "video"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no qwen2_vl_image.pt or qwen2_vl_video.pt"):
        tcc_eval.wrap_model(model, method="tcc", keep_ratio=0.5, compressor=tmp_path / "empty")


def test_compressor_modality_must_match_where_it_is_listed(loaded, tmp_path, caplog):
    from tcc_eval.compressor import TokenCompressor, CompressorConfig, model_meta, save_compressor

    model, _ = loaded["qwen2_vl"]
    image_ckpt = tmp_path / "image_trained.pt"
    save_compressor(image_ckpt, TokenCompressor(CompressorConfig()), model_meta(model), "image", {})
    with pytest.raises(ValueError, match="trained on image inputs but is listed for video"):
        tcc_eval.wrap_model(model, method="tcc", compressor={"image": image_ckpt, "video": image_ckpt})
    with pytest.raises(ValueError, match="keys 'imge': a modality is one of image, video"):  # not "trained on"
        tcc_eval.wrap_model(model, method="tcc", compressor={"imge": image_ckpt})
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "qwen2_vl_video.pt").write_bytes(image_ckpt.read_bytes())  # misnamed file
    with pytest.raises(ValueError, match="listed for video"):
        tcc_eval.wrap_model(model, method="tcc", compressor=folder)
    with caplog.at_level("WARNING", logger="tcc_eval"):
        pruned = tcc_eval.wrap_model(model, method="tcc", compressor=image_ckpt)  # one file for both: allowed
    assert set(pruned.scorer.compressors) == {"image", "video"}
    assert "trained on image inputs; it will also score video inputs" in caplog.text


@pytest.fixture(scope="module")
def gpu_dtype_checkpoints(tiny_checkpoints, tiny_vila_path) -> dict[str, str]:
    return {**tiny_checkpoints, "vila": str(tiny_vila_path)}


@pytest.mark.parametrize("dtype", ("bfloat16", "float16"))
@pytest.mark.parametrize("family", ("qwen2_vl", "llava_onevision", "vila"))
def test_every_method_runs_in_the_gpu_dtypes(gpu_dtype_checkpoints, tmp_path, family, dtype):
    """On a GPU the models load in bf16 (fp16 where bf16 is missing); the CPU has both dtypes, so every method's
    path is checked in them: keep-all gives the unwrapped model's logits exactly, each pruning method keeps
    round(rho * N_v) tokens and answers, the oracle's relevance is finite and not all zero."""
    from tcc_eval.compressor import CompressorConfig, TokenCompressor, model_meta, save_compressor
    from tcc_eval.core import keep_count
    from tcc_eval.oracle import explain_inputs

    torch_dtype = getattr(torch, dtype)
    vanilla = tcc_eval.load(gpu_dtype_checkpoints[family], method="none", device="cpu", dtype=dtype)
    model = vanilla.model
    assert next(model.parameters()).dtype == torch_dtype
    inputs = vanilla.prepare(messages_for("image"))
    with torch.no_grad():
        expected = model(**inputs).logits
    assert expected.dtype == torch_dtype
    assert torch.equal(vanilla.pruned.prefill_logits(**inputs), expected)
    save_compressor(tmp_path / f"{family}_image.pt", TokenCompressor(CompressorConfig()), model_meta(model), "image",
                    {})
    for method in ("random", "a0", "tcc", "oracle", "divprune", "uniform", "pool", "visionzip", "fastv", "dart"):
        layer_k = method in ("fastv", "dart")
        ratio = 0.75 if layer_k else 0.5  # FastV's and DART's floor on these 2-layer LLMs is K/L = 1/2
        pruned = tcc_eval.wrap_model(model, method=method, keep_ratio=ratio, compressor=tmp_path, fastv_k=1)
        new_tokens = pruned.generate(**inputs, max_new_tokens=2, do_sample=False)[:, inputs["input_ids"].shape[1]:]
        assert new_tokens.shape == (1, 2), method
        selection = pruned.last_selection  # layer-K methods: the tokens kept from layer K on, at their layer ratio
        kept_ratio = pruned.layer_keep_ratio if layer_k else 0.5
        assert selection.visual_after == [keep_count(selection.visual_before[0], kept_ratio)], method
    relevance = explain_inputs(model, inputs, answer_ids=torch.tensor([40, 41])).relevance
    assert relevance.dtype == torch.float32 and torch.isfinite(relevance).all() and relevance.abs().max() > 0
