"""VILA1.5 without the VILA repo: projector maths, published tensor layout, tiny checkpoint, prompts, pruning."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import random_image
from tcc_eval.vila import (
    IMAGE_TOKEN_INDEX,
    VilaConfig,
    VilaForConditionalGeneration,
    VilaMultimodalProjector,
    VilaProcessor,
    check_checkpoint_shapes,
    expected_checkpoint_shapes,
    sample_frame_indices,
)
from tcc_eval.vila.fixtures import build_tiny_vila
from tcc_eval.vila.modeling_vila import projected_token_count
from tcc_eval.vila.processing_vila import CHAT_TEMPLATES, VilaImageSpec, preprocess_image

EXPECTED_KEYS = Path(__file__).parent / "data" / "vila15_expected_keys.json"
TOKENS_PER_IMAGE = 4  # fixture: 42 px / 14 = 3x3 patches, padded to 4x4, merged 2x2


@pytest.fixture(scope="module")
def vila_path(tiny_vila_path) -> Path:
    return tiny_vila_path


@pytest.fixture(scope="module")
def vila(vila_path):
    return VilaForConditionalGeneration.from_pretrained(vila_path), VilaProcessor.from_pretrained(vila_path)


def chat(kind: str, seed: int = 0, question: str = "What color is the circle?") -> list[dict]:
    if kind == "image":
        media = {"type": "image", "image": random_image(50, 70, seed)}
    else:
        media = {"type": "video", "video": [random_image(56, 56, seed + i) for i in range(3)]}
    return [{"role": "user", "content": [media, {"type": "text", "text": question}]}]


def inputs_for(processor, conversation) -> dict[str, torch.Tensor]:
    return dict(processor.apply_chat_template(conversation, tokenize=True, return_dict=True))


# --------------------------------------------------------------------------------------------- projector


def test_downsample_pads_odd_grid_and_keeps_vila15_column_order():
    projector = VilaMultimodalProjector("mlp_downsample", vision_hidden=2, text_hidden=3)
    merge = projector.layers[0]
    tokens = torch.randn(1, 9, 2)
    grid = torch.zeros(4, 4, 2)
    grid[:3, :3] = tokens[0].reshape(3, 3, 2)  # zero row and column appended, as VILA pads odd grids
    out = merge(tokens)
    assert out.shape == (1, 4, 8)
    for col in range(2):
        for row in range(2):
            cell = torch.cat([grid[2 * row, 2 * col], grid[2 * row, 2 * col + 1],
                              grid[2 * row + 1, 2 * col], grid[2 * row + 1, 2 * col + 1]])
            assert torch.equal(out[0, col * 2 + row], cell)
    so400m = merge(torch.randn(2, 27 * 27, 2))  # siglip-so400m-patch14-384: 27x27 -> 28x28 -> 14x14
    assert so400m.shape == (2, 196, 8)
    assert projector(torch.randn(2, 729, 2)).shape == (2, 196, 3)
    assert projected_token_count("mlp_downsample", 729) == 196
    assert projected_token_count("mlp2x_gelu", 729) == 729


def test_projector_key_names_follow_vila_and_unknown_type_fails():
    keys = lambda kind: sorted(VilaMultimodalProjector(kind, 4, 6).state_dict())
    assert keys("mlp_downsample") == ["layers.1.bias", "layers.1.weight", "layers.2.bias", "layers.2.weight",
                                      "layers.4.bias", "layers.4.weight"]
    assert keys("mlp2x_gelu") == ["layers.0.bias", "layers.0.weight", "layers.2.bias", "layers.2.weight"]
    assert keys("linear") == ["layers.bias", "layers.weight"]
    with pytest.raises(ValueError, match="unknown VILA mm_projector_type 'mlp_fancy'"):
        VilaMultimodalProjector("mlp_fancy", 4, 6)


# --------------------------------------------------------------------------------------------- published layout


def published_layout() -> tuple[dict, VilaConfig]:
    """The VILA1.5-3b tensor layout expanded from its stored pattern, and a config built from its configs."""
    from transformers import LlamaConfig, SiglipVisionConfig

    data = json.loads(EXPECTED_KEYS.read_text())
    layout = {}
    for part, spec in data["parts"].items():
        names = {k: tuple(v) for k, v in spec["other"].items()}
        for i in range(spec["num_layers"]):
            names.update({k.format(i=i): tuple(v) for k, v in spec["layer_template"].items()})
        assert sum(math.prod(s) for s in names.values()) == spec["num_parameters"], part
        layout[part] = names
    cfg = data["configs"]
    config = VilaConfig(
        text_config=LlamaConfig(**cfg["llm"]), vision_config=SiglipVisionConfig(**cfg["vision_tower"]),
        projector_type=cfg["mm_projector"]["mm_projector_type"],
        vision_select_layer=cfg["top"]["mm_vision_select_layer"],
        vision_select_feature=cfg["top"]["mm_vision_select_feature"],
    )
    assert config.num_image_tokens == data["num_image_tokens"]
    return layout, config


def test_published_vila15_3b_layout_is_accepted():
    layout, config = published_layout()
    expected = expected_checkpoint_shapes(config)  # meta device: no 3B allocation
    assert expected == layout
    for part in layout:
        check_checkpoint_shapes(part, expected[part], layout[part], f"VILA1.5-3b/{part}")


def test_wrong_projector_width_is_rejected_with_names_and_shapes():
    layout, config = published_layout()
    config.vision_config.hidden_size = 1024  # a projector built for a 1024-wide tower
    expected = expected_checkpoint_shapes(config)
    with pytest.raises(ValueError) as err:
        check_checkpoint_shapes("mm_projector", expected["mm_projector"], layout["mm_projector"], "ckpt/mm_projector")
    message = str(err.value)
    assert "'mm_projector' in ckpt/mm_projector" in message
    assert "layers.2.weight expected (2560, 4096) found (2560, 4608)" in message
    assert "layers.1.weight expected (4096,) found (4608,)" in message
    missing = dict(layout["llm"])
    del missing["model.layers.31.mlp.down_proj.weight"]
    with pytest.raises(ValueError, match=r"1 missing: model.layers.31.mlp.down_proj.weight \(2560, 6912\)"):
        check_checkpoint_shapes("llm", expected_checkpoint_shapes(published_layout()[1])["llm"], missing, "llm")


# --------------------------------------------------------------------------------------------- tiny checkpoint


def test_fixture_has_published_folder_layout(vila_path):
    from safetensors import safe_open

    top = json.loads((vila_path / "config.json").read_text())
    assert top["architectures"] == ["LlavaLlamaModel"] and top["model_type"] == "llava_llama"
    assert top["mm_vision_select_layer"] == -2 and top["mm_vision_select_feature"] == "cls_patch"
    assert {"llm_cfg", "vision_tower_cfg", "mm_projector_cfg"} <= set(top)
    assert json.loads((vila_path / "mm_projector" / "config.json").read_text())["mm_projector_type"] == "mlp_downsample"
    with safe_open(str(vila_path / "vision_tower" / "model.safetensors"), "pt") as f:
        assert all(k.startswith("vision_model.") for k in f.keys())
    with safe_open(str(vila_path / "mm_projector" / "model.safetensors"), "pt") as f:
        assert sorted(f.keys())[0] == "layers.1.bias"
    for name in ("llm/config.json", "llm/tokenizer.json", "vision_tower/preprocessor_config.json"):
        assert (vila_path / name).is_file(), name


def test_save_load_round_trip_gives_identical_logits(vila, tmp_path):
    model, processor = vila
    inputs = inputs_for(processor, chat("image"))
    with torch.no_grad():
        logits = model(**inputs).logits
    model.save_pretrained(tmp_path / "copy")
    processor.save_pretrained(tmp_path / "copy")
    reloaded = VilaForConditionalGeneration.from_pretrained(tmp_path / "copy")
    again = VilaProcessor.from_pretrained(tmp_path / "copy")
    reinputs = inputs_for(again, chat("image"))
    assert torch.equal(reinputs["input_ids"], inputs["input_ids"])
    assert torch.equal(reinputs["pixel_values"], inputs["pixel_values"])
    with torch.no_grad():
        assert (reloaded(**reinputs).logits - logits).abs().max().item() == 0.0


def test_corrupt_projector_and_unsupported_tower_fail_clearly(vila_path, tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad"
    shutil.copytree(vila_path, bad)
    wrong = VilaMultimodalProjector("mlp_downsample", vision_hidden=16, text_hidden=64).state_dict()
    save_file({k: v.contiguous() for k, v in wrong.items()}, str(bad / "mm_projector" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"'mm_projector' in .*bad/mm_projector.*layers\.2\.weight expected "
                                         r"\(64, 128\) found \(64, 64\)"):
        VilaForConditionalGeneration.from_pretrained(bad)
    tower_cfg = json.loads((bad / "vision_tower" / "config.json").read_text())
    (bad / "vision_tower" / "config.json").write_text(json.dumps(tower_cfg | {"model_type": "intern_vit_6b"}))
    with pytest.raises(ValueError, match="InternViT"):
        VilaForConditionalGeneration.from_pretrained(bad)


def test_image_features_replace_placeholders(vila):
    model, processor = vila
    inputs = inputs_for(processor, chat("image"))
    mask = model.get_placeholder_mask(inputs["input_ids"])
    assert int(mask.sum()) == TOKENS_PER_IMAGE == processor.num_image_tokens
    with torch.no_grad():
        hidden = model.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states[-2]
        features = model.mm_projector(hidden)  # cls_patch: all 9 SigLIP tokens
        embeds = model.get_inputs_embeds(inputs["input_ids"], inputs["pixel_values"])
        text = model.get_input_embeddings()(inputs["input_ids"].masked_fill(mask, 0))
    assert torch.equal(embeds[mask], features.reshape(-1, features.shape[-1]))
    assert torch.equal(embeds[~mask], text[~mask])
    with pytest.raises(ValueError, match="do not fill the 4 image placeholder tokens"):
        model.get_inputs_embeds(inputs["input_ids"], inputs["pixel_values"].repeat(2, 1, 1, 1))


# --------------------------------------------------------------------------------------------- prompts and pixels


def test_prompt_and_ids_follow_vila_tokenizer_image_token(vila):
    _, processor = vila
    prompt = processor.apply_chat_template(chat("image"))
    assert prompt == (CHAT_TEMPLATES["vicuna_v1"].system + " USER: <image>\nWhat color is the circle? ASSISTANT:")
    ids = inputs_for(processor, chat("image"))["input_ids"][0].tolist()
    head, tail = prompt.split("<image>")
    tok = processor.tokenizer
    assert ids == tok(head).input_ids + [processor.image_token_id] * 4 + tok(tail, add_special_tokens=False).input_ids
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert processor.stop_token_ids == [tok.convert_tokens_to_ids("</s>")]


def test_video_becomes_one_image_block_per_frame(vila):
    _, processor = vila
    prompt = processor.apply_chat_template(chat("video"))
    assert "USER: <video>What color" in prompt
    inputs = inputs_for(processor, chat("video"))
    assert inputs["pixel_values"].shape == (3, 3, 42, 42)
    ids = inputs["input_ids"][0]
    assert int((ids == processor.image_token_id).sum()) == 3 * TOKENS_PER_IMAGE
    text = processor.tokenizer.decode(ids[ids != processor.image_token_id])
    assert "USER: \n\n\nWhat color" in text  # <image>\n x 3 frames, then the question (VILA's video prompt)
    assert sample_frame_indices(100, 8) == [0, 14, 28, 42, 56, 70, 84, 98]  # VILA1.5: linspace(0, n - 2, 8)


def test_other_templates_render_like_vila():
    turns = [("user", "<image>\nHi")]
    assert CHAT_TEMPLATES["hermes-2"].render(turns) == (
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nHi<|im_end|>"
        "<|im_start|>assistant\n")
    llama3 = CHAT_TEMPLATES["llama_3"].render([("system", "Be brief.")] + turns)
    assert llama3 == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                      "<|start_header_id|>user<|end_header_id|>\n\n<image>\nHi<|eot_id|>"
                      "<|start_header_id|>assistant<|end_header_id|>\n\n")
    # the VILA1.5 release's llama_3 (LLAMA_3 style: system + sep, then role + message + sep per turn, the open
    # answer turn's bare role; roles user / "system", sep <|end_of_text|>)
    system = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful language and vision "
              "assistant. You are able to understand the visual content that the user provides, and assist the user "
              "with a variety of tasks using natural language.")
    user, answer = "<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>system<|end_header_id|>\n\n"
    sep = "<|end_of_text|>"
    assert CHAT_TEMPLATES["llama_3_vila1.5"].render(turns) == system + sep + user + "<image>\nHi" + sep + answer
    assert CHAT_TEMPLATES["llama_3_vila1.5"].stop == sep


def test_templates_follow_the_checkpoint_name(recwarn):
    """Hub ids and cache folders name the template (the 8B -Fix before the original 8b); a folder that names
    nothing falls back to the vocabulary, with a warning where Llama-3's fits two templates."""
    from types import SimpleNamespace

    from tcc_eval.vila.processing_vila import resolve_conv_mode

    class Vocab:
        def __init__(self, *tokens):
            self.tokens = tokens

        def get_vocab(self):
            return dict.fromkeys(self.tokens, 0)

    def mode(path, vocab=Vocab("</s>")):
        return resolve_conv_mode(SimpleNamespace(conv_mode=None, name_or_path=path), vocab)

    hub = "/root/.cache/huggingface/hub/models--Efficient-Large-Model--{}/snapshots/0123"
    assert mode(hub.format("Llama-3-VILA1.5-8B-Fix")) == "llama_3"
    assert mode(hub.format("Llama-3-VILA1.5-8b")) == "llama_3_vila1.5"
    assert mode(hub.format("VILA1.5-13b")) == mode("/m/VILA1.5-3b") == "vicuna_v1" and not recwarn.list
    assert mode("/m/my_vila", Vocab("<|im_start|>")) == "hermes-2" and not recwarn.list
    with pytest.warns(UserWarning, match='fits two templates: llama_3.*add "conv_mode": "llama_3_vila1.5" to its '
                                         'config.json'):
        assert mode("/m/my_vila", Vocab("<|eot_id|>")) == "llama_3"
    registry = SimpleNamespace(conv_mode=None, name_or_path="/m/my_vila")  # a folder a registry knows by its hub id
    assert resolve_conv_mode(registry, Vocab("<|eot_id|>"), known_as="Efficient-Large-Model/Llama-3-VILA1.5-8b") \
        == "llama_3_vila1.5"
    explicit = SimpleNamespace(conv_mode="vicuna_v1", name_or_path=hub.format("Llama-3-VILA1.5-8b"))
    assert resolve_conv_mode(explicit, Vocab()) == "vicuna_v1"  # the checkpoint's config.json says


def test_resize_and_pad_preprocessing():
    spec = VilaImageSpec.from_dict({"size": {"height": 16, "width": 16}, "image_mean": [0.5] * 3,
                                    "image_std": [0.5] * 3, "rescale_factor": 1 / 255})
    white = Image.new("RGB", (16, 8), (255, 255, 255))
    assert torch.allclose(preprocess_image(white, spec, "resize"), torch.ones(3, 16, 16))
    padded = preprocess_image(white, spec, "pad")  # 16x8 -> 16x16: mean-colour (127) bands of 4 rows
    band = (127 / 255 - 0.5) / 0.5
    assert torch.allclose(padded[:, :4], torch.full((3, 4, 16), band), atol=1e-6)
    assert torch.allclose(padded[:, 12:], torch.full((3, 4, 16), band), atol=1e-6)
    assert torch.allclose(padded[:, 4:12], torch.ones(3, 8, 16), atol=1e-6)


# --------------------------------------------------------------------------------------------- generation


def test_left_padded_batch_matches_single_runs(vila):
    model, processor = vila
    conversations = [chat("image"), chat("video", seed=5, question="Which object is shown?")]
    batch = inputs_for(processor, conversations)
    assert (batch["attention_mask"] == 0).any(), "the two prompts must differ in length"
    with torch.no_grad():
        batch_logits = model(**batch).logits[:, -1]
        batch_tokens = model.generate(**batch, max_new_tokens=4, do_sample=False)
    width = batch["input_ids"].shape[1]
    for b, conversation in enumerate(conversations):
        single = inputs_for(processor, conversation)
        with torch.no_grad():
            logits = model(**single).logits[0, -1]
            tokens = model.generate(**single, max_new_tokens=4, do_sample=False)
        assert (logits - batch_logits[b]).abs().max().item() < 1e-4
        assert torch.equal(tokens[0, single["input_ids"].shape[1]:], batch_tokens[b, width:])


def test_published_tokenizer_without_image_token_uses_vila_placeholder(tmp_path):
    path = build_tiny_vila(tmp_path / "noimg", conv_mode="llama_3", image_token_in_vocab=False)
    model, processor = VilaForConditionalGeneration.from_pretrained(path), VilaProcessor.from_pretrained(path)
    assert processor.image_token_id == model.config.image_token_id == IMAGE_TOKEN_INDEX
    assert processor.conv_mode == "llama_3"
    inputs = inputs_for(processor, chat("image"))
    assert int((inputs["input_ids"] == IMAGE_TOKEN_INDEX).sum()) == TOKENS_PER_IMAGE
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 3)
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert (out[:, -3:] >= 0).all()
    # a repetition penalty reads the prompt's ids, of which the -200 placeholders add none: HF's penalty on the
    # prompt's text ids, applied by hand to the first answer token's unpenalised logits, picks the same token
    handed = []
    original = model.llm.generate
    model.llm.generate = lambda **kwargs: handed.append(kwargs["input_ids"]) or original(**kwargs)
    try:
        penalised = model.generate(**inputs, max_new_tokens=3, do_sample=False, repetition_penalty=5.0)
    finally:
        del model.llm.generate
    text_ids = inputs["input_ids"][inputs["input_ids"] >= 0]
    assert set(handed[0].flatten().tolist()) == set(text_ids.tolist())  # the placeholders add no id of their own
    assert torch.equal(penalised[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
    ids = inputs["input_ids"][0]
    seen = torch.unique(ids[ids >= 0])
    logits[seen] = torch.where(logits[seen] > 0, logits[seen] / 5.0, logits[seen] * 5.0)
    assert int(penalised[0, ids.numel()]) == int(logits.argmax())
    from tcc_eval import wrap_model

    pruned = wrap_model(model, method="random", keep_ratio=0.5)
    assert pruned.generate(**inputs, max_new_tokens=3, do_sample=False, repetition_penalty=5.0).shape == out.shape


# --------------------------------------------------------------------------------------------- pruning adapter


@pytest.mark.parametrize("kind", ("image", "video"))
def test_keep_all_equals_unpruned_vila(vila, kind):
    import tcc_eval.adapters.vila  # noqa: F401  (registers the adapter)
    from tcc_eval import wrap_model

    model, processor = vila
    inputs = inputs_for(processor, chat(kind))
    with torch.no_grad():
        vanilla_logits = model(**inputs).logits
        vanilla_tokens = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    for method in ("none", "random"):
        pruned = wrap_model(model, method=method, keep_ratio=1.0)
        assert (pruned.prefill_logits(**inputs) - vanilla_logits).abs().max().item() == 0.0
        assert torch.equal(pruned.generate(**inputs, max_new_tokens=5, do_sample=False), vanilla_tokens)
    # a repetition penalty reads the prompt's ids: generating on embeddings, the pruned model hands them over too
    with torch.no_grad():
        penalised = model.generate(**inputs, max_new_tokens=5, do_sample=False, repetition_penalty=1.3)
    keep_all = wrap_model(model, method="none").generate(**inputs, max_new_tokens=5, do_sample=False,
                                                         repetition_penalty=1.3)
    assert torch.equal(keep_all, penalised)


@pytest.mark.parametrize("kind", ("image", "video"))
@pytest.mark.parametrize("method", ("random", "a0", "uniform"))
def test_pruned_vila_equals_masked_reference(vila, kind, method):
    import tcc_eval.adapters.vila  # noqa: F401
    from tcc_eval import wrap_model

    model, processor = vila
    inputs = inputs_for(processor, chat(kind, seed=3))
    pruned = wrap_model(model, method=method, keep_ratio=0.5)
    logits = pruned.prefill_logits(**inputs)[0]
    selection = pruned.last_selection
    assert selection.visual_after[0] == max(1, int(0.5 * selection.visual_before[0] + 0.5))
    kept = selection.kept_positions[0]
    masked = torch.zeros_like(inputs["attention_mask"])
    masked[0, kept] = 1
    positions = VilaForConditionalGeneration.position_ids_from_mask(inputs["attention_mask"])
    with torch.no_grad():
        reference = model(**inputs | {"attention_mask": masked, "position_ids": positions}).logits[0]
    assert (logits - reference[kept]).abs().max().item() < 1e-4


@pytest.mark.parametrize("kind", ("image", "video"))
def test_pruned_vila_generation_equals_the_masked_model_token_by_token(vila, kind):
    """Decoding after pruning continues after the full prompt's last position: equal to the unpruned model with
    the dropped tokens masked out, run without a cache, for several tokens."""
    import tcc_eval.adapters.vila  # noqa: F401
    from conftest import masked_greedy_tokens
    from tcc_eval import wrap_model

    model, processor = vila
    inputs = inputs_for(processor, chat(kind, seed=3))
    pruned = wrap_model(model, method="random", keep_ratio=0.5)
    new = pruned.generate(**inputs, max_new_tokens=5, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    positions = VilaForConditionalGeneration.position_ids_from_mask(inputs["attention_mask"])
    reference = masked_greedy_tokens(model, inputs, pruned.last_selection.kept_positions[0], positions, len(new))
    assert len(new) > 1 and new == reference


def test_vila_visual_groups_are_images_and_frames(vila):
    import tcc_eval.adapters.vila  # noqa: F401
    from tcc_eval import wrap_model

    model, processor = vila
    adapter = wrap_model(model, method="none").adapter
    video = adapter.capture_llm_inputs(inputs_for(processor, chat("video")))
    assert torch.bincount(video.visual_groups[0]).tolist() == [TOKENS_PER_IMAGE] * 3
    two = [{"role": "user", "content": [{"type": "image", "image": random_image(40, 40, 1)},
                                        {"type": "image", "image": random_image(60, 30, 2)},
                                        {"type": "text", "text": "Which is red?"}]}]
    both = adapter.capture_llm_inputs(inputs_for(processor, two))
    assert both.visual_groups[0].tolist() == [0] * TOKENS_PER_IMAGE + [1] * TOKENS_PER_IMAGE
    assert torch.equal(both.position_ids[0], torch.arange(both.input_ids.shape[1]))


def test_vila_cells_follow_the_projector_token_order(vila):
    """Each frame block's cells are the merged 2x2 cells in the order the projector emits them: feeding the
    projector's merge patches that carry their own (row, col) gives back each token's place."""
    from tcc_eval.adapters import adapter_for

    model, processor = vila
    llm = adapter_for(model).capture_llm_inputs(inputs_for(processor, chat("video")))
    patches = model.config.vision_config.image_size // model.config.vision_config.patch_size
    rows, cols = torch.meshgrid(torch.arange(patches), torch.arange(patches), indexing="ij")
    places = torch.stack([rows, cols], dim=-1).reshape(1, -1, 2).float()
    merged = VilaMultimodalProjector("mlp_downsample", 2, 2).layers[0](places)[0, :, :2]  # each cell's top-left patch
    cells = llm.visual_cells[0]
    assert cells.shape == (3 * TOKENS_PER_IMAGE, 3)
    assert cells[:, 0].tolist() == [0] * TOKENS_PER_IMAGE + [1] * TOKENS_PER_IMAGE + [2] * TOKENS_PER_IMAGE
    for block in range(3):
        assert torch.equal(cells[cells[:, 0] == block, 1:], (merged // 2).long())


def test_vila_modality_is_video_for_frame_runs(vila):
    """VILA has no video token: per-modality compressors must still see videos as videos."""
    from tcc_eval.adapters import adapter_for

    model, processor = vila
    adapter = adapter_for(model)
    image = inputs_for(processor, chat("image"))["input_ids"]
    video = inputs_for(processor, chat("video"))["input_ids"]
    assert adapter.modality(image[0]) == "image" and adapter.modality(video[0]) == "video"
    batch = processor.apply_chat_template([chat("image"), chat("video")], tokenize=True, return_dict=True)
    assert [adapter.modality(row) for row in batch["input_ids"]] == ["image", "video"]


def test_demo_regions_follow_vila15_column_order():
    """Token k of an mlp_downsample grid covers merged cell (row k % side, col k // side); odd grids pad."""
    from tcc_eval.demo.regions import _vila_downsample_boxes

    assert _vila_downsample_boxes(3, (42, 42)).tolist() == [[0, 0, 28, 28], [0, 28, 28, 42],
                                                           [28, 0, 42, 28], [28, 28, 42, 42]]
    boxes = _vila_downsample_boxes(24, (336, 336))  # the demo: one token per 28-px cell
    assert boxes[1].tolist() == [0, 28, 28, 56] and boxes[12].tolist() == [28, 0, 56, 28]


def test_oracle_explains_vila_frames(vila):
    import tcc_eval.adapters.vila  # noqa: F401
    from tcc_eval import explain

    model, processor = vila
    result = explain(model, chat("video"), processor=processor, max_answer_tokens=3)
    assert result.relevance.shape == result.a0.shape == (3 * TOKENS_PER_IMAGE,)
    assert result.groups.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.isfinite(result.relevance).all() and (result.relevance >= 0).all() and result.relevance.sum() > 0
    assert model.config._attn_implementation == "sdpa"  # eager only while explaining


def test_a_prompt_vila_would_cut_is_run_whole_with_one_warning(vila, monkeypatch, recwarn):
    model, processor = vila
    inputs = inputs_for(processor, chat("video"))
    length = inputs["input_ids"].shape[1]
    monkeypatch.setattr(model.config.text_config, "tokenizer_model_max_length", length - 1, raising=False)
    monkeypatch.setattr(model, "_warned_truncation", False)
    with pytest.warns(UserWarning, match=f"holds {length} tokens, more than the checkpoint's "
                                         f"tokenizer_model_max_length {length - 1}: VILA's own code would cut it"):
        logits = model(**inputs).logits
    assert logits.shape[1] == length
    recwarn.clear()
    model(**inputs)  # said once per model
    assert not [w for w in recwarn.list if "tokenizer_model_max_length" in str(w.message)]


def test_records_count_a_prompt_vila_would_cut(vila, monkeypatch):
    """VILA's trained length is its tokenizer_model_max_length (where its own code cuts), not the LLM's position
    range: a prompt longer than it counts in the record as past the context, one that fits does not."""
    from tcc_eval import wrap_model

    model, processor = vila
    inputs = inputs_for(processor, chat("video"))
    length = inputs["input_ids"].shape[1]
    assert model.config.text_config.max_position_embeddings > length
    pruned = wrap_model(model, method="random", keep_ratio=0.5)
    for limit, beyond in ((length - 1, 1), (length, 0)):
        monkeypatch.setattr(model.config.text_config, "tokenizer_model_max_length", limit, raising=False)
        monkeypatch.setattr(model, "_warned_truncation", True)
        pruned.generate(**inputs, max_new_tokens=2, do_sample=False)
        assert (pruned.last_stats["context_length"], pruned.last_stats["samples_beyond_context"]) == (limit, beyond)
