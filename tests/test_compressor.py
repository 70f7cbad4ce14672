"""The learned compressor: network, labels, KL loss, the label -> train -> evaluate CLI round trip, and
checkpoint validation against the model it is attached to."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import tcc_eval
from tcc_eval import synth
from tcc_eval.answers import extract_letter
from tcc_eval.compressor import (
    CompressorConfig,
    TokenCompressor,
    kl_loss,
    load_compressor,
    load_compressor_for,
    make_target,
    pad_batch,
    save_compressor,
)
from tcc_eval.compressor.__main__ import DEBUG_ENV, cli, main
from tcc_eval.compressor.labels import (
    is_correct,
    messages_for,
    parse_shard,
    read_data,
)
from tcc_eval.compressor.train import split_keys
from tcc_eval.core import keep_count, topk_in_order

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def one_thread():
    """Small convolutions run faster on one thread, and much faster when other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ network
@pytest.mark.parametrize("norm", ("none", "layer", "group", "batch"))
@pytest.mark.parametrize("n", (1, 2, 7, 300))
def test_network_output_is_a_distribution_over_any_length(norm, n):
    net = TokenCompressor(norm=norm).eval()
    a0 = torch.rand(3, 1, n)
    log_p = net(a0)
    assert log_p.shape == (3, n)
    assert torch.allclose(log_p.exp().sum(-1), torch.ones(3), atol=1e-5)
    assert [b.pointwise.out_channels for b in net.blocks] == [32, 64, 128, 256, 512]
    assert all(b.depthwise.groups == b.depthwise.in_channels for b in net.blocks)  # depthwise-separable
    assert net.head.out_channels == 1


@pytest.mark.parametrize("norm", ("none", "layer", "group", "batch"))
@pytest.mark.parametrize("scale", ("n", "log", "none"))
def test_padded_batch_equals_samples_alone(norm, scale):
    torch.manual_seed(0)
    net = TokenCompressor(norm=norm, input_scale=scale, kernel_size=3).eval()
    vectors = [torch.softmax(torch.randn(n), 0) for n in (5, 40, 17)]
    a0, mask = pad_batch(vectors)
    batched = net(a0, mask)
    for i, v in enumerate(vectors):
        alone = net(v[None, None])[0]
        assert torch.allclose(batched[i, : v.numel()], alone, atol=1e-5)
        assert torch.isinf(batched[i, v.numel():]).all()  # padding gets probability 0


def test_predict_takes_one_vector_and_ranks_like_forward():
    net = TokenCompressor()
    a0 = torch.softmax(torch.randn(50), 0)
    scores = net.predict(a0)
    assert scores.shape == (50,) and scores.dtype == torch.float32 and scores.device == a0.device
    assert torch.equal(scores, net.eval()(a0[None, None])[0])
    with pytest.raises(ValueError, match=r"\(N_v,\)"):
        net.predict(a0[None])


def test_config_is_validated():
    with pytest.raises(ValueError, match="odd"):
        CompressorConfig(kernel_size=4)
    with pytest.raises(ValueError, match="norm"):
        CompressorConfig(norm="instance")
    assert TokenCompressor(kernel_size=7).blocks[0].depthwise.kernel_size == (7,)


# ------------------------------------------------------------------------------------------ labels and loss
def test_target_zeroes_bottom_half_and_sums_to_one():
    r = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.05, 0.3])
    t = make_target(r)
    assert torch.equal(t > 0, torch.tensor([False, True, False, True, False, True]))
    assert torch.allclose(t[[1, 3, 5]], torch.tensor([0.5, 0.9, 0.3]) / 1.7)
    assert math.isclose(float(t.sum()), 1.0, abs_tol=1e-6)
    odd = make_target(torch.arange(5.0))  # 5 tokens: the bottom 2 are dropped, 3 kept
    assert int((odd > 0).sum()) == 3 and odd[0] == 0 and odd[1] == 0
    negative = make_target(torch.tensor([-1.0, -2.0, 3.0, -3.0]))  # a negative token in the kept half counts 0
    assert torch.equal(negative, torch.tensor([0.0, 0.0, 1.0, 0.0]))
    flat = make_target(torch.zeros(4))  # no relevance at all: uniform over the kept half
    assert torch.equal(flat, torch.tensor([0.5, 0.5, 0.0, 0.0]))


def test_kl_loss_is_zero_at_the_target_and_matches_torch():
    target = make_target(torch.rand(2, 10)[0])[None]
    assert float(kl_loss(torch.log(target), target)) == 0.0  # exact target, zeros included
    full = torch.softmax(torch.randn(2, 10), -1)
    assert abs(float(kl_loss(full.log(), full))) < 1e-6
    log_pred = torch.log_softmax(torch.randn(2, 10), -1)
    reference = torch.nn.functional.kl_div(log_pred, full, reduction="batchmean")
    assert torch.allclose(kl_loss(log_pred, full), reference, atol=1e-6)
    assert float(kl_loss(log_pred, full)) > 0


def test_answer_matching(tmp_path):
    options = {"A": "red", "B": "green", "C": "blue"}
    assert extract_letter("B", options) == "B"
    assert extract_letter("(C) blue", options) == "C"
    assert extract_letter("The answer is A.", options) == "A"
    assert extract_letter("green", options) == "B"
    assert extract_letter("no idea", options) is None
    assert extract_letter("D", options) is None
    sample = read_data_from_lines([{"question": "Shape?", "answer": "The Circle", "image": "x.png"}], tmp_path)[0]
    assert is_correct("circle.", sample) and not is_correct("square", sample)
    letter = read_data_from_lines([{"question": "Pick A or B", "answer": "A", "image": "x.png"}], tmp_path)[0]
    assert is_correct("A", letter) and is_correct("a.", letter) and not is_correct("", letter)
    assert not is_correct("B", letter)


def read_data_from_lines(lines: list[dict], folder: Path):
    path = folder / "data.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    return read_data(path)


def test_read_data_tsv_and_jsonl(tmp_path):
    samples = synth.generate("image", 4, seed=1, split="train")
    tsv = synth.export_vlmeval_tsv(samples, tmp_path / "d.tsv")
    rows = read_data(tsv)
    assert [r.id for r in rows] == ["0", "1", "2", "3"]
    prompt = rows[0].prompt().split("\n")
    assert prompt[0] == samples[0].question and prompt[1] == f"A. {samples[0].options['A']}"
    assert prompt[-1] == "Answer with the option's letter from the given choices directly."
    assert all(r.answer == s.answer and r.modality == "image" for r, s in zip(rows, samples))
    messages, video_options = messages_for(rows[0], 8)
    assert messages[0]["content"][0]["image"].size == samples[0].image.size and video_options == {}
    jsonl = read_data_from_lines(
        [{"id": "v1", "video": "frames", "question": "What?", "options": ["cat", "dog"], "answer": "dog"}], tmp_path
    )
    assert jsonl[0].answer == "B" and jsonl[0].modality == "video" and jsonl[0].options == {"A": "cat", "B": "dog"}
    # numbers stay as written: a numeric option column with a blank cell is no float column
    (tmp_path / "n.tsv").write_text("index\tquestion\tA\tB\tC\tanswer\timage_path\n"
                                    "1\tHow many?\t4\t5\t\tA\tx.png\n2\tHow many?\t3\t6\t7\tC\tx.png\n")
    numeric = read_data(tmp_path / "n.tsv")
    assert numeric[0].options == {"A": "4", "B": "5"} and numeric[1].options == {"A": "3", "B": "6", "C": "7"}
    (tmp_path / "e.tsv").write_text("index\tquestion\tA\tB\tanswer\timage_path\n7\tQ?\tcat\tdog\tE\tx.png\n")
    with pytest.raises(ValueError, match=r"e.tsv: row 7: answer 'E' is neither an option letter \(A, B\) nor an "
                                         r"option's text: fix the answer key"):
        read_data(tmp_path / "e.tsv")


def test_read_data_llava_conversations(tmp_path, capsys):
    """LLaVA's instruction data (a JSON array, or JSONL, of records with 'conversations'): each record's first
    question and answer, placeholders out of the question, media under --media-root; text-only records skipped."""
    media = tmp_path / "media"
    media.mkdir()
    records = [
        {"id": "img7", "image": "coco/7.jpg",
         "conversations": [{"from": "human", "value": "<image>\nWhat colour is the bus?"},
                           {"from": "gpt", "value": "Red."}]},
        {"id": "vid3", "video": "clips/3.mp4", "data_source": "0_30_s_youtube",
         "conversations": [{"from": "human", "value": "<video>\nWhat happens first?\nA. a jump\nB. a fall"},
                           {"from": "gpt", "value": "B."},
                           {"from": "human", "value": "Why might he do that?"},  # leans on the first turn: left out
                           {"from": "gpt", "value": "To win."}]},
        {"id": "text1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"image": ["a.png", "b.png"], "conversations": [{"role": "system", "content": "Be brief."},
                                                        {"role": "user", "content": "<image> and <image>: same?"},
                                                        {"role": "assistant", "content": "no"}]},
    ]
    (tmp_path / "train.json").write_text(json.dumps(records))
    samples = read_data(tmp_path / "train.json", media)
    assert "1 text-only 'conversations' record(s) skipped" in capsys.readouterr().err
    assert [s.id for s in samples] == ["img7", "vid3", "3"]  # no id: the record's position
    assert [s.question for s in samples] == ["What colour is the bus?", "What happens first?\nA. a jump\nB. a fall",
                                             "and : same?"]
    assert [s.answer for s in samples] == ["Red.", "B.", "no"]
    assert [s.modality for s in samples] == ["image", "video", "image"]
    assert samples[0].images == ["coco/7.jpg"] and samples[1].video == "clips/3.mp4"
    assert samples[2].images == ["a.png", "b.png"] and {s.base_dir for s in samples} == {media}
    assert samples[0].prompt() == "What colour is the bus?" and is_correct("red", samples[0])
    assert is_correct("B", samples[1]) and not is_correct("A", samples[1])
    (tmp_path / "train.jsonl").write_text("\n\n".join(json.dumps(r) for r in records[:2] + records[3:]))
    from_lines = read_data(tmp_path / "train.jsonl")
    assert [s.id for s in from_lines] == ["img7", "vid3", "4"]  # no id: the line number, blank lines counted
    assert from_lines[0].base_dir == tmp_path  # default: the data file's folder

    bad = [([{"id": 1, "image": "x.png", "conversations": [{"from": "human", "value": "<image>Q"}]}],
            r"bad.json\[0\]: 'conversations' holds no human turn followed by a gpt turn"),
           ([{"id": 1, "image": "x.png", "conversations": [{"from": "human", "value": "<image>"},
                                                           {"from": "gpt", "value": "A cat"}]}],
            r"bad.json\[0\]: the first question or its answer is empty"),
           ([{"id": 1, "image": "x.png", "conversations": ["Q", "A"]}], r"a 'conversations' turn is str"),
           ([{"id": 1, "question": "Q", "answer": "A"}], r"needs 'image', 'images', 'video' or 'frames_dir'"),
           ([["not", "an", "object"]], r"bad.json\[0\]: expected a JSON object, got list"),
           ([{"id": 1, "image": "x.png", "prompt": "Q"}], r"needs 'question' and 'answer', or LLaVA's 'conversations'"),
           ([{"id": 1, "image": "x.png", "question": "Q", "options": ["cat", "dog"], "answer": 1}],  # 0-based
            r"bad.json\[0\]: answer '1' is neither an option letter \(A, B\) nor an option's text")]
    for content, message in bad:
        (tmp_path / "bad.json").write_text(json.dumps(content))
        with pytest.raises(ValueError, match=message):
            read_data(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="media root .* is not a folder"):
        read_data(tmp_path / "train.json", tmp_path / "nowhere")


def test_label_reads_llava_data_under_a_media_root(tiny_checkpoints, tmp_path, one_thread, capsys):
    """`label --data x.json --media-root DIR` on LLaVA-format records labels each question-answer pair."""
    samples = synth.generate("image", 2, seed=0, split="train")
    media = tmp_path / "images"
    media.mkdir()
    records = []
    for i, sample in enumerate(samples):
        sample.image.save(media / f"{i}.png")
        records.append({"id": f"s{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\n" + sample.question}, {"from": "gpt", "value": sample.answer}]})
    data = tmp_path / "ann" / "train.json"
    data.parent.mkdir()
    data.write_text(json.dumps(records))
    out = tmp_path / "labels"
    assert main(["label", "--model", tiny_checkpoints["qwen2_vl"], "--data", str(data), "--media-root", str(media),
                 "--out", str(out), "--keep-all", "--max-answer-tokens", "1", "--max-new-tokens", "2",
                 "--device", "cpu"]) == 0
    labelled = sorted(p.stem for p in (out / "samples").glob("*.pt"))
    assert labelled == ["s0", "s1"]
    record = torch.load(out / "samples" / "s0.pt", weights_only=True)
    assert record["n_visual"] > 0 and record["relevance"].numel() == record["a0"].numel() == record["n_visual"]
    # without --keep-all the untrained model's free-form answers miss their references: a run that skips most of
    # them says why (the exact-match rule) and what to do
    capsys.readouterr()
    assert main(["label", "--model", tiny_checkpoints["qwen2_vl"], "--data", str(data), "--media-root", str(media),
                 "--out", str(tmp_path / "strict"), "--max-new-tokens", "2", "--device", "cpu"]) == 0
    stats = json.loads((tmp_path / "strict" / "label_stats_0of1.json").read_text())
    assert stats["free_form"] == 2 and stats["free_form_wrong"] == stats["skipped_wrong"] == 2
    assert ("note: 2 of 2 free-form answers were skipped as wrong. A free-form answer counts as right only on a "
            "normalised exact match, within --max-new-tokens 2") in capsys.readouterr().err


def test_label_pixel_limits_set_the_resolution_labels_are_made_at(tiny_checkpoints, tmp_path, one_thread):
    """--min-pixels upscales small images as the evaluation wrapper's processor does (VLMEvalKit's Qwen2VL: 1280
    28-px cells at least), so the compressor learns on the token grid it will score. Published configs carry
    min_pixels / max_pixels keys, which beat a size= given to from_pretrained: the checkpoint here has them. A limit
    left out keeps each processor's own; other families refuse the options."""
    import shutil

    from transformers import AutoProcessor

    from tcc_eval.api import check_processor_options, processor_with_pixel_limits

    published = tmp_path / "qwen"
    shutil.copytree(tiny_checkpoints["qwen2_vl"], published)
    config = json.loads((published / "processor_config.json").read_text())
    for part, largest in (("image_processor", 28 * 28 * 256), ("video_processor", 28 * 28 * 128)):
        config[part].update(min_pixels=56 * 56, max_pixels=largest)
    (published / "processor_config.json").write_text(json.dumps(config))
    sample = synth.generate("image", 1, seed=0, split="train")[0]
    sample.image.save(tmp_path / "0.png")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": 0, "image": "0.png", "question": sample.question, "answer": sample.answer}))
    area = sample.image.width * sample.image.height
    common = ["--data", str(data), "--keep-all", "--max-answer-tokens", "1", "--max-new-tokens", "2", "--device",
              "cpu", "--min-pixels", str(4 * area), "--max-pixels", str(4 * area)]
    out = tmp_path / "big"
    assert main(["label", "--model", str(published), "--out", str(out), *common]) == 0
    record = torch.load(out / "samples" / "0.pt", weights_only=True)
    processor = AutoProcessor.from_pretrained(published)
    assert processor.image_processor.size.longest_edge == 28 * 28 * 256  # the published keys are read
    tokens = {name: int(processor.image_processor(images=[sample.image], return_tensors="pt", **size)
                        ["image_grid_thw"].prod()) // 4
              for name, size in (("default", {}), ("big", {"size": {"shortest_edge": 4 * area,
                                                                     "longest_edge": 4 * area}}))}
    assert record["n_visual"] == tokens["big"] >= 3 * tokens["default"]
    assert json.loads((out / "meta.json").read_text())["pixels"] == {"min_pixels": 4 * area, "max_pixels": 4 * area}

    # a compressor evaluated at another resolution than its labels' (the checkpoint's own limits here, as
    # VLMEvalKit's would be where preprocessor_config.json caps them) is told so, once, with the fix
    ckpt = tmp_path / "big.pt"
    assert main(["train", "--labels", str(out), "--out", str(ckpt), "--epochs", "1"]) == 0
    trained = torch.load(ckpt, weights_only=True)["train_stats"]
    assert trained["visual_tokens"] == dict.fromkeys(("min", "median", "max"), tokens["big"])
    assert trained["pixels"] == [{"min_pixels": 4 * area, "max_pixels": 4 * area}]
    messages, _ = messages_for(read_data(data)[0], 8)
    default = tcc_eval.load(str(published), method="tcc", keep_ratio=0.5, compressor=str(ckpt), device="cpu")
    with pytest.warns(UserWarning, match=rf"big.pt learned from image inputs of {tokens['big']}-{tokens['big']} "
                                         rf"visual tokens \(labelled with max_pixels={4 * area}, "
                                         rf"min_pixels={4 * area}\), but this input has {tokens['default']}: "
                                         r"evaluate at the resolution the labels were made at"):
        default.generate(messages, max_new_tokens=1)
    labelled_alike = tcc_eval.load(str(published), method="tcc", keep_ratio=0.5, compressor=str(ckpt), device="cpu",
                                   processor_options={"min_pixels": 4 * area, "max_pixels": 4 * area})
    for model in (default, labelled_alike):  # said once per run; silent where the resolutions agree
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.generate(messages, max_new_tokens=1)
        assert not [w for w in caught if "visual tokens" in str(w.message)]
    assert labelled_alike.last_selection.visual_before == [tokens["big"]]

    lower = processor_with_pixel_limits(published, {"min_pixels": 112 * 112})
    assert [(p.size.shortest_edge, p.size.longest_edge) for p in (lower.image_processor, lower.video_processor)] \
        == [(112 * 112, 28 * 28 * 256), (112 * 112, 28 * 28 * 128)]
    with pytest.raises(ValueError, match=r"apply to Qwen2-VL / Qwen2.5-VL processors.*llava_onevision checkpoint"):
        main(["label", "--model", tiny_checkpoints["llava_onevision"], "--out", str(tmp_path / "llava"), *common])
    assert not (tmp_path / "llava").exists()  # a run refused at start-up leaves no empty label folder
    with pytest.raises(ValueError, match=r"unknown processor options \['size'\]; the options are \['max_pixels'"):
        check_processor_options("qwen2_vl", {"size": 1, "min_pixels": 1})
    with pytest.raises(ValueError, match="must be positive pixel counts"):
        check_processor_options("qwen2_vl", {"min_pixels": "1003520"})
    with pytest.raises(ValueError, match="min_pixels 9 is above max_pixels 8"):
        main(["label", "--model", tiny_checkpoints["qwen2_vl"], "--out", str(tmp_path / "x"), "--data", str(data),
              "--min-pixels", "9", "--max-pixels", "8"])
    with pytest.raises(ValueError, match=r"above max_pixels 100352 in the Qwen2VLVideoProcessor \(max_pixels is its "
                                         r"own\): give max_pixels too"):
        processor_with_pixel_limits(published, {"min_pixels": 28 * 28 * 200})
    with pytest.raises(ValueError, match=r"min_pixels 3136 is above max_pixels 1000 .*give min_pixels too"):
        processor_with_pixel_limits(published, {"max_pixels": 1000})


def test_shards_from_flag_or_torchrun(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert parse_shard(None) == (0, 1) and parse_shard("2/4") == (2, 4)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert parse_shard(None) == (3, 8)
    with pytest.raises(ValueError, match="i/n"):
        parse_shard("4/4")


def test_split_is_seeded_and_disjoint():
    keys = [f"k{i}" for i in range(50)]
    val = split_keys(keys, 0.1, seed=0)
    assert len(val) == 5 and val == split_keys(keys, 0.1, seed=0) and val != split_keys(keys, 0.1, seed=1)
    assert split_keys(keys[:1], 0.1, 0) == set()
    # one medium per sample: the seeded permutation's first round(0.1 n) samples, as before media were recorded
    first = torch.randperm(50, generator=torch.Generator().manual_seed(0))[:5].tolist()
    assert split_keys(keys, 0.1, 0, media=[f"m{i}" for i in range(50)]) == val == {keys[i] for i in first}


def test_split_holds_out_whole_images():
    """Samples asking about one image (MMBench repeats a question with its options rotated) are held out
    together, so the validation loss never scores an image the compressor trained on; never all of them."""
    keys = [f"k{i:02d}" for i in range(40)]
    media = [f"image{i // 4}" for i in range(40)]  # 10 images, 4 questions each
    for seed in range(5):
        val = split_keys(keys, 0.1, seed, media)
        held_images = {m for k, m in zip(keys, media) if k in val}
        assert len(val) == 4 and len(held_images) == 1
        assert not held_images & {m for k, m in zip(keys, media) if k not in val}
    assert len(split_keys(keys[:4], 0.5, 0, media[:4])) == 0  # one image: nothing can be held out whole
    assert len(split_keys(keys, 0.9, 0, media)) == 36  # never every image
    keys = [f"k{i:03d}" for i in range(100)]
    media = ["big"] * 91 + [f"single{i}" for i in range(9)]  # one image asked 91 times
    for seed in range(20):  # never overshoots the 10 held-out samples by taking the big image
        assert split_keys(keys, 0.1, seed, media) == set(keys[91:])
    media = [f"image{i // 5}" for i in range(20)]  # no image fits a budget of 2: one image of 5 is held out
    val = split_keys(keys[:20], 0.1, 0, media)
    assert len(val) == 5 and len({media[keys.index(k)] for k in val}) == 1


def test_label_directories_of_the_same_data_are_refused(tmp_path):
    """Two folders labelled from one data file (twice, or by two checkpoints of one shape) share sample keys: one
    folder's targets would silently replace the other's."""
    from tcc_eval.compressor.train import load_labels

    first, second = write_fake_labels(tmp_path / "a", 4), write_fake_labels(tmp_path / "b", 4, seed=1)
    with pytest.raises(ValueError, match=r"label directories .*a and .*b both hold sample 0 of fake"):
        load_labels([first, second])


def test_evaluate_never_reports_training_samples_as_unseen(tmp_path, capsys, one_thread):
    """A compressor trained with --val-frac 0 held nothing out: evaluate on its own labels refuses by default and
    says what --split all scores; labels of other data are scored as unseen."""
    from tcc_eval.compressor.evaluate import evaluate

    labels, ckpt = write_fake_labels(tmp_path / "labels", 8), tmp_path / "c.pt"
    assert main(["train", "--labels", str(labels), "--out", str(ckpt), "--epochs", "1", "--val-frac", "0"]) == 0
    printed = capsys.readouterr().out
    assert "validating on none" in printed and "best training (no validation split: --val-frac 0) KL" in printed
    with pytest.raises(ValueError, match="every sample in these label directories trained the compressor"):
        evaluate([str(labels)], str(ckpt))
    assert evaluate([str(labels)], str(ckpt), split="all")["split"] == "all samples (8 used in training)"
    other = write_fake_labels(tmp_path / "other", 3, seed=5)
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "data": "other"}))
    report = evaluate([str(other)], str(ckpt))
    assert (report["split"], report["n_samples"]) == ("samples not used in training", 3)
    report = evaluate([str(labels), str(other)], str(ckpt))
    assert report["split"] == "samples not used in training (8 training samples left out)"
    assert report["n_samples"] == 3
    moved = labels.rename(tmp_path / "moved")  # the training labels elsewhere are still the training labels
    with pytest.raises(ValueError, match="every sample in these label directories trained the compressor"):
        evaluate([str(moved)], str(ckpt))


def test_evaluate_never_writes_its_report_over_a_checkpoint(tmp_path, capsys, one_thread):
    """--json naming the compressor (or any .pt) is refused before scoring, and a folder of no labels (every
    sample answered wrongly) is named as such."""
    import shutil

    from tcc_eval.compressor.evaluate import evaluate

    labels, ckpt = write_fake_labels(tmp_path / "labels", 8), tmp_path / "c.pt"
    assert main(["train", "--labels", str(labels), "--out", str(ckpt), "--epochs", "1"]) == 0
    trained = ckpt.read_bytes()
    for target in (ckpt, tmp_path / "report.pt"):
        with pytest.raises(ValueError, match=f"--json {target} names a checkpoint.*give a .json path"):
            main(["evaluate", "--labels", str(labels), "--compressor", str(ckpt), "--json", str(target)])
    assert ckpt.read_bytes() == trained and not (tmp_path / "report.pt").exists()
    earlier = tmp_path / "fidelity.json"
    earlier.write_text("an earlier run's report")
    with pytest.raises(ValueError, match="fidelity.json exists .* pass --overwrite to replace it"):
        main(["evaluate", "--labels", str(labels), "--compressor", str(ckpt), "--json", str(earlier)])
    assert earlier.read_text() == "an earlier run's report"
    assert main(["evaluate", "--labels", str(labels), "--compressor", str(ckpt), "--json", str(earlier),
                 "--overwrite"]) == 0
    assert json.loads(earlier.read_text())["compressor"] == str(ckpt)
    with pytest.raises(SystemExit):  # argparse: a folder is no report file
        main(["evaluate", "--labels", str(labels), "--compressor", str(ckpt), "--json", str(tmp_path)])
    assert "is a folder; give a file path" in capsys.readouterr().err
    empty = tmp_path / "all_wrong"
    (empty / "samples").mkdir(parents=True)
    shutil.copy(labels / "meta.json", empty)
    with pytest.raises(ValueError, match="no label files in .*all_wrong: `label` writes none for samples the model "
                                         "answered wrongly"):
        evaluate([str(empty)], str(ckpt))


def test_training_that_never_improves_saves_nothing_and_says_so(tmp_path, monkeypatch, one_thread):
    """With no finite validation loss no epoch is saved; the final rewrite must not pick up an earlier run's
    file at --out and relabel it as this run's."""
    from tcc_eval.compressor import train as train_module

    labels, ckpt = write_fake_labels(tmp_path / "labels", 8), tmp_path / "c.pt"
    save_compressor(ckpt, TokenCompressor(), json.loads((labels / "meta.json").read_text())["model"], "image",
                    {"marker": "earlier run"})
    monkeypatch.setattr(train_module, "mean_loss", lambda *args: float("nan"))
    with pytest.raises(ValueError, match="no epoch of 2 gave a finite validation loss.*nothing was saved"):
        main(["train", "--labels", str(labels), "--out", str(ckpt), "--epochs", "2", "--patience", "5",
              "--overwrite"])
    assert load_compressor(ckpt).train_stats == {"marker": "earlier run"}


def test_resumed_labelling_must_share_the_label_settings(tmp_path):
    """Frames per video, answer tokens explained and the dtype shape each label: a resume with others would mix
    two kinds of labels in one folder. Frames do not matter for image data; --keep-all only adds samples."""
    from tcc_eval.compressor.labels import prepare_meta

    meta = {"model": {"family": "qwen2_vl"}, "data": "/d.tsv", "modality": "video", "relevance_rules": ["clamp"],
            "num_frames": 8, "max_answer_tokens": 16, "keep_all": False, "dtype": "bfloat16",
            "instruction_rows": "after_last_visual", "pixels": {}}
    prepare_meta(tmp_path, meta)
    prepare_meta(tmp_path, {**meta, "keep_all": True})  # the same settings resume, --keep-all or not
    for key, value, flag in (("num_frames", 16, "--num-frames 8 \\(this run: 16\\)"),
                             ("max_answer_tokens", 4, "--max-answer-tokens 16"),
                             ("dtype", "float32", "--dtype bfloat16"),
                             ("instruction_rows", "last", "--instruction-rows after_last_visual"),
                             ("pixels", {"min_pixels": 3136}, "--min-pixels / --max-pixels \\{\\}")):
        with pytest.raises(ValueError, match=f"holds labels made with {flag}.*Resume with the same settings"):
            prepare_meta(tmp_path, {**meta, key: value})
    images = tmp_path / "images"
    images.mkdir()
    prepare_meta(images, {**meta, "modality": "image"})
    prepare_meta(images, {**meta, "modality": "image", "num_frames": 16})


# ------------------------------------------------------------------------------------------ training learns
def write_fake_labels(root: Path, n_samples: int, seed: int = 0, attention_labels: bool = False) -> Path:
    """Labels whose relevance is layer-0 attention shifted right by 3 tokens: a0's own ranking is near
    chance, a conv net with a receptive field > 3 can learn it exactly. ``attention_labels`` adds labels of
    the ablation rule "attention" that shift it left by 3 instead."""
    gen = torch.Generator().manual_seed(seed)
    (root / "samples").mkdir(parents=True)
    meta = {"family": "qwen2_vl", "model_type": "qwen2_vl", "architecture": "X", "hidden_size": 64,
            "num_attention_heads": 4, "num_key_value_heads": 2, "num_layers": 2}
    rules = ["clamp", "attention"] if attention_labels else ["clamp"]
    (root / "meta.json").write_text(json.dumps({"model": meta, "data": "fake", "modality": "image",
                                                "relevance_rules": rules}))
    for i in range(n_samples):
        n = int(torch.randint(24, 64, (1,), generator=gen))
        a0 = torch.rand(n, generator=gen) ** 4
        a0 = a0 / a0.sum() * 0.6
        relevance, shifted_left = torch.zeros(n), torch.zeros(n)
        relevance[3:] = a0[:-3]
        shifted_left[:-3] = a0[3:]
        by_rule = {"attention": shifted_left} if attention_labels else {}
        torch.save({"id": str(i), "a0": a0, "relevance": relevance, "relevance_by_rule": by_rule,
                    "groups": torch.zeros(n, dtype=torch.long)}, root / "samples" / f"{i}.pt")
    return root


def test_samples_without_usable_relevance_are_skipped_and_counted(tmp_path):
    """A label with no positive relevance (the oracle found nothing) would only teach "the first half of the
    tokens"; one with non-finite values teaches nothing: both are skipped and counted, the rest load."""
    from tcc_eval.compressor.train import load_labels

    labels = write_fake_labels(tmp_path / "labels", 6)
    for name, field, value in (("0.pt", "relevance", 0.0), ("1.pt", "a0", float("nan"))):
        record = torch.load(labels / "samples" / name, weights_only=True)
        record[field] = torch.full_like(record[field], value)
        torch.save(record, labels / "samples" / name)
    _, _, samples, unusable = load_labels([labels])
    assert unusable == 2 and sorted(s.key for s in samples) == [f"fake#{i}" for i in range(2, 6)]


def test_training_on_image_and_video_labels_together_says_what_it_makes(tmp_path, capsys, one_thread):
    """Both modalities in one run give a 'mixed' compressor that the frameworks' per-modality lookup refuses later,
    so training says so while the labels are at hand."""
    images = write_fake_labels(tmp_path / "images", 3)
    videos = write_fake_labels(tmp_path / "videos", 3, seed=1)
    meta = json.loads((videos / "meta.json").read_text())
    (videos / "meta.json").write_text(json.dumps({**meta, "data": "fake_videos", "modality": "video"}))
    args = ["--out", str(tmp_path / "c.pt"), "--epochs", "1"]
    assert main(["train", "--labels", str(images), *args]) == 0
    assert "mixed" not in capsys.readouterr().err
    assert main(["train", "--labels", str(images), str(videos), *args, "--overwrite"]) == 0
    assert "warning: these labels hold image and video samples, so the compressor is saved as 'mixed'" \
        in capsys.readouterr().err
    assert load_compressor(tmp_path / "c.pt").modality == "mixed"


def test_training_never_replaces_an_earlier_compressor_unasked_or_midway(tmp_path, monkeypatch, one_thread):
    """--out may be the file VLMEvalKit / lmms-eval load: an existing one needs --overwrite, and a run that stops
    before its end (here interrupted in epoch 2, after epoch 1's checkpoint) leaves it as it was."""
    from tcc_eval.compressor import train as train_module

    labels, ckpt = write_fake_labels(tmp_path / "labels", 8), tmp_path / "c.pt"
    save_compressor(ckpt, TokenCompressor(), json.loads((labels / "meta.json").read_text())["model"], "image",
                    {"marker": "earlier run"})
    args = ["train", "--labels", str(labels), "--out", str(ckpt), "--epochs", "3", "--val-frac", "0.25"]
    with pytest.raises(ValueError, match=f"--out {ckpt} exists .*pass --overwrite to replace it"):
        main(args)
    real_mean_loss, calls = train_module.mean_loss, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_mean_loss(*a, **k)

    monkeypatch.setattr(train_module, "mean_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--overwrite"])
    assert load_compressor(ckpt).train_stats == {"marker": "earlier run"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "labels"]  # no partial checkpoint left behind
    monkeypatch.setattr(train_module, "mean_loss", real_mean_loss)
    partial = tmp_path / "c.pt.partial"
    partial.write_bytes(b"another run's best epoch")  # a second run writing one --out is refused, not mixed in
    with pytest.raises(ValueError, match=f"{partial} exists: another training run is writing --out {ckpt}"):
        main([*args, "--overwrite"])
    assert partial.read_bytes() == b"another run's best epoch"
    assert load_compressor(ckpt).train_stats == {"marker": "earlier run"}
    partial.unlink()
    assert main([*args, "--overwrite"]) == 0
    assert load_compressor(ckpt).train_stats["epochs_run"] == 3 and not partial.exists()


def test_training_on_labels_the_model_answered_wrongly_says_so(tmp_path):
    labels = write_fake_labels(tmp_path / "labels", 0)
    (labels / "skipped").mkdir()
    for i in range(3):
        (labels / "skipped" / f"{i}.json").write_text("{}")
    with pytest.raises(ValueError, match="no usable label files .*3 samples skipped as answered wrongly.*--keep-all"):
        main(["train", "--labels", str(labels), "--out", str(tmp_path / "c.pt")])


def test_training_runs_where_autograd_was_turned_off(tmp_path, one_thread):
    """A process that imported VLMEvalKit's models runs with autograd off; training turns it on for itself."""
    labels = write_fake_labels(tmp_path / "labels", 8)
    with torch.no_grad():
        main(["train", "--labels", str(labels), "--out", str(tmp_path / "c.pt"), "--epochs", "2", "--batch-size", "4",
              "--val-frac", "0.25"])
    assert load_compressor(tmp_path / "c.pt").train_stats["epochs_run"] == 2


def test_training_learns_a_known_mapping(tmp_path, one_thread):
    labels = write_fake_labels(tmp_path / "labels", 80)
    ckpt = tmp_path / "c.pt"
    main(["train", "--labels", str(labels), "--out", str(ckpt), "--epochs", "15", "--batch-size", "16",
          "--lr", "3e-3", "--val-frac", "0.2", "--patience", "15", "--kernel-size", "3"])
    main(["evaluate", "--labels", str(labels), "--compressor", str(ckpt), "--json", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())
    tcc, a0 = report["methods"]["tcc"], report["methods"]["a0"]
    assert report["n_samples"] == 16 and report["split"].startswith("held-out")
    assert tcc["recall@25"] > 0.8 and tcc["recall@25"] > a0["recall@25"] + 0.4
    assert tcc["spearman"] > a0["spearman"] + 0.3
    stats = load_compressor(ckpt).train_stats
    assert stats["n_train"] == 64 and stats["n_val"] == 16 and stats["best_val_loss"] < stats["history"][0][1]


def test_relevance_rule_picks_the_labels_training_fits(tmp_path, one_thread):
    """`train --relevance-rule attention` fits the ablation's labels, not the method's (here a0 shifted left and
    right by 3 tokens): each compressor's top-k recalls its own rule's labels and misses the other rule's;
    `evaluate --against` scores it against either."""
    from tcc_eval.compressor.evaluate import fidelity
    from tcc_eval.compressor.train import load_labels

    labels = write_fake_labels(tmp_path / "labels", 80, attention_labels=True)
    train = ["train", "--labels", str(labels), "--epochs", "15", "--batch-size", "16", "--lr", "3e-3",
             "--val-frac", "0.2", "--patience", "15", "--kernel-size", "3"]
    recall = {}
    for rule in ("clamp", "attention"):
        main([*train, "--out", str(tmp_path / f"{rule}.pt"), "--relevance-rule", rule])
        compressor = load_compressor(tmp_path / f"{rule}.pt")
        assert compressor.train_stats["relevance_rule"] == rule
        held_out = set(compressor.train_stats["val_keys"])
        for target in ("clamp", "attention"):
            samples = [s for s in load_labels([labels], target)[2] if s.key in held_out]
            recall[rule, target] = fidelity(compressor, samples)["tcc"]["recall@25"]
    assert recall["clamp", "clamp"] > 0.8 and recall["attention", "attention"] > 0.8, recall
    assert recall["clamp", "attention"] < 0.5 and recall["attention", "clamp"] < 0.5, recall
    main(["evaluate", "--labels", str(labels), "--compressor", str(tmp_path / "attention.pt"),
          "--json", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["trained_on_rule"] == "attention"  # scored against the method's labels: a low recall
    assert report["scored_against_rule"] == "clamp"
    assert report["methods"]["tcc"]["recall@25"] == pytest.approx(recall["attention", "clamp"])
    main(["evaluate", "--labels", str(labels), "--compressor", str(tmp_path / "attention.pt"), "--against",
          "attention", "--json", str(tmp_path / "own.json")])
    own = json.loads((tmp_path / "own.json").read_text())
    assert own["scored_against_rule"] == "attention" and own["split"] == report["split"]
    assert own["methods"]["tcc"]["recall@25"] == pytest.approx(recall["attention", "attention"])
    plain = write_fake_labels(tmp_path / "plain", 4)
    with pytest.raises(ValueError, match="label again .*--ablation-rules signed"):
        main(["evaluate", "--labels", str(plain), "--compressor", str(tmp_path / "attention.pt"), "--against",
              "signed"])


def test_ablation_rules_are_labelled_beside_the_method(tiny_checkpoints, tmp_path, one_thread):
    """`label --ablation-rules attention` adds the no-gradient relevance from the same pass and leaves the
    method's labels exactly as a plain run writes them; resuming under other rules, or training on a rule the
    labels lack, is refused with the fix named."""
    from tcc_eval.api import load_hf_model
    from tcc_eval.compressor.labels import file_stem
    from tcc_eval.oracle import single_view, view_relevance

    qwen = tiny_checkpoints["qwen2_vl"]
    data = synth.export_vlmeval_tsv(synth.generate("image", 3, seed=0, split="train"), tmp_path / "train.tsv")
    common = ["label", "--model", qwen, "--data", str(data), "--keep-all", "--max-answer-tokens", "2",
              "--max-new-tokens", "4", "--device", "cpu"]
    plain, both = tmp_path / "plain", tmp_path / "both"
    assert main([*common, "--out", str(plain)]) == 0
    assert main([*common, "--out", str(both), "--ablation-rules", "attention", "clamp"]) == 0
    assert json.loads((plain / "meta.json").read_text())["relevance_rules"] == ["clamp"]
    assert json.loads((both / "meta.json").read_text())["relevance_rules"] == ["clamp", "attention"]
    model, processor = load_hf_model(qwen, torch.device("cpu"), torch.float32, attn="eager")
    for sample in read_data(data):
        alone = torch.load(plain / "samples" / f"{file_stem(sample.id)}.pt", weights_only=True)
        record = torch.load(both / "samples" / f"{file_stem(sample.id)}.pt", weights_only=True)
        assert torch.equal(alone["relevance"], record["relevance"]) and torch.equal(alone["a0"], record["a0"])
        assert alone["relevance_by_rule"] == {} and set(record["relevance_by_rule"]) == {"attention"}
        messages, video_options = messages_for(sample, 8)
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt", **video_options)
        view = single_view(model, {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)})
        expected = view_relevance(view, record["answer_ids"], "attention")
        assert torch.allclose(record["relevance_by_rule"]["attention"], expected, atol=1e-6)
        assert not torch.allclose(record["relevance_by_rule"]["attention"], record["relevance"])
    with pytest.raises(ValueError, match=r"under the relevance rules clamp, attention.*resume with "
                                         r"--ablation-rules attention, or use another --out"):
        main([*common, "--out", str(both)])
    with pytest.raises(ValueError, match=r"no relevance under the rule 'attention'.*--ablation-rules attention"):
        main(["train", "--labels", str(plain), "--out", str(tmp_path / "c.pt"), "--relevance-rule", "attention"])
    with pytest.raises(SystemExit):
        main([*common, "--out", str(tmp_path / "x"), "--ablation-rules", "relu"])  # argparse names the choices


# ------------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("family, other", [("qwen2_vl", "qwen2_5_vl"), ("qwen2_5_vl", "qwen2_vl")])
def test_label_train_evaluate_round_trip(tiny_checkpoints, tmp_path, capsys, one_thread, family, other):
    """label -> train -> evaluate -> tcc inference on one checkpoint; the compressor is refused on the other Qwen
    generation, whose tiny LLM has the very same shape (as Qwen2-VL-7B's and Qwen2.5-VL-7B's have)."""
    qwen = tiny_checkpoints[family]
    samples = synth.generate("image", 12, seed=0, split="train")
    data = synth.export_vlmeval_tsv(samples, tmp_path / "train.tsv")
    labels, ckpt = tmp_path / "labels", tmp_path / "compressor.pt"
    label_args = ["label", "--model", qwen, "--data", str(data), "--out", str(labels), "--keep-all",
                  "--max-answer-tokens", "2", "--max-new-tokens", "4", "--device", "cpu"]
    assert main(label_args) == 0
    stats = json.loads((labels / "label_stats_0of1.json").read_text())
    assert (stats["kept"], stats["failed"]) == (12, 0)
    meta = json.loads((labels / "meta.json").read_text())
    assert meta["model"]["family"] == family and meta["modality"] == "image"
    record = torch.load(labels / "samples" / "0.pt", weights_only=True)
    assert record["a0"].shape == record["relevance"].shape == (record["n_visual"],)
    assert record["answer_ids"].numel() <= 2 and record["relevance"].min() >= 0
    main(label_args)  # resumed: nothing is redone
    assert json.loads((labels / "label_stats_0of1.json").read_text())["already_done"] == 12

    assert main(["train", "--labels", str(labels), "--out", str(ckpt), "--epochs", "3", "--batch-size", "4"]) == 0
    payload = torch.load(ckpt, weights_only=True)
    assert set(payload) >= {"config", "state_dict", "source_model", "modality", "train_stats"}
    assert payload["source_model"] == meta["model"] and payload["modality"] == "image"
    assert payload["train_stats"]["n_train"] + payload["train_stats"]["n_val"] == 12
    report_path = tmp_path / "e.json"
    assert main(["evaluate", "--labels", str(labels), "--compressor", str(ckpt), "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["n_samples"] == 1 and set(report["methods"]) == {"tcc", "a0", "chance"}
    assert all(0 <= report["methods"][m]["recall@50"] <= 1 for m in ("tcc", "a0"))
    assert "recall@25" in capsys.readouterr().out
    video = tmp_path / "video.pt"  # scored on labels of another modality when asked to: said
    save_compressor(video, load_compressor(ckpt), meta["model"], "video", {})
    assert main(["evaluate", "--labels", str(labels), "--compressor", str(video), "--split", "all",
                 "--cross-modality"]) == 0
    assert "trained on video inputs and these labels are of image inputs" in capsys.readouterr().err

    # checkpoint round trip: identical weights and predictions after save -> load
    compressor = load_compressor(ckpt)
    save_compressor(tmp_path / "again.pt", compressor, compressor.source_model, compressor.modality,
                    compressor.train_stats)
    again = load_compressor(tmp_path / "again.pt")
    assert torch.equal(compressor.predict(record["a0"]), again.predict(record["a0"]))

    # inference keeps exactly the top-k of the compressor applied to the stored layer-0 attention
    model = tcc_eval.load(qwen, method="tcc", keep_ratio=0.5, compressor=str(ckpt), device="cpu")
    messages, _ = messages_for(read_data(data)[0], 8)
    answer = model.generate(messages, max_new_tokens=3)
    assert isinstance(answer, str)
    sel = model.last_selection
    n = record["n_visual"]
    assert sel.visual_before == [n] and sel.visual_after == [keep_count(n, 0.5)]
    inputs = model.prepare(messages)
    visual_positions = torch.nonzero(model.pruned.adapter.capture_llm_inputs(inputs).visual_mask[0]).flatten()
    kept_visual = torch.nonzero(torch.isin(visual_positions, sel.kept_positions[0])).flatten()
    scores = compressor.predict(record["a0"])
    # labelling loads the model as inference does (sdpa), so the stored a0 is the one inference scores
    assert torch.equal(kept_visual, topk_in_order(scores, keep_count(n, 0.5)))
    with pytest.raises(ValueError, match=f"trained for {family} hidden 64.*mismatch in family"):
        tcc_eval.load(tiny_checkpoints[other], method="tcc", keep_ratio=0.5, compressor=str(ckpt), device="cpu")


def test_label_shards_jsonl_and_counts_failures(tiny_checkpoints, tmp_path, one_thread):
    from conftest import random_image

    for i in range(2):
        random_image(56, 56, seed=i).save(tmp_path / f"{i}.png")
    lines = [{"id": i, "image": f"{i}.png", "question": "Color?", "options": ["red", "blue"], "answer": "A"}
             for i in range(3)]  # 2.png does not exist
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(line) for line in lines))
    out = tmp_path / "labels"
    common = ["label", "--model", tiny_checkpoints["llava_onevision"], "--data", str(data), "--out", str(out),
              "--max-answer-tokens", "1", "--max-new-tokens", "2", "--device", "cpu"]
    main(common + ["--shard", "0/2"])  # samples 0 and 2; the model's random answer decides 0
    first = json.loads((out / "label_stats_0of2.json").read_text())
    assert first["total"] == 2 and first["failed"] == 1 and first["kept"] + first["skipped_wrong"] == 1
    assert first["errors"][0]["id"] == "2" and "2.png" in first["errors"][0]["error"]
    main(common + ["--shard", "1/2", "--keep-all"])
    assert json.loads((out / "label_stats_1of2.json").read_text())["kept"] == 1
    assert (out / "samples" / "1.pt").is_file() and not (out / "samples" / "2.pt").exists()
    assert json.loads((out / "meta.json").read_text())["model"]["family"] == "llava_onevision"
    with pytest.raises(ValueError, match="already holds labels of llava_onevision"):
        main(["label", "--model", tiny_checkpoints["qwen2_vl"], "--data", str(data), "--out", str(out),
              "--device", "cpu"])


def test_labels_take_the_modality_inference_scores_them_as(tiny_vila_path, tmp_path, one_thread):
    """VILA has no video token: a prompt of several images is scored with the video compressor, so its labels
    are video labels and the compressor trained on them is a video one (not an image one that never sees it)."""
    from conftest import random_image

    from tcc_eval.compressor.train import load_labels

    for i in range(2):
        random_image(56, 56, seed=i).save(tmp_path / f"{i}.png")
    line = {"question": "Same colour?", "options": ["yes", "no"], "answer": "A"}
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({**line, "id": i, "images": ["0.png", "1.png"][: 1 + i]}) for i in range(2)))
    out = tmp_path / "labels"
    assert main(["label", "--model", str(tiny_vila_path), "--data", str(data), "--out", str(out), "--keep-all",
                 "--max-answer-tokens", "1", "--max-new-tokens", "2", "--device", "cpu"]) == 0
    records = {i: torch.load(out / "samples" / f"{i}.pt", weights_only=True) for i in range(2)}
    assert records[0]["modality"] == "image" and records[1]["modality"] == "video"
    assert records[0]["media"] != records[1]["media"]
    (out / "samples" / "0.pt").unlink()
    assert load_labels([out])[1] == "video"


def test_wrong_model_and_missing_file_give_clear_errors(tiny_checkpoints, tmp_path):
    from transformers import AutoModelForImageTextToText

    source = {"family": "qwen2_vl", "model_type": "qwen2_vl", "architecture": "Qwen2VLForConditionalGeneration",
              "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "num_layers": 2}
    ckpt = save_compressor(tmp_path / "c.pt", TokenCompressor(), source, "image", {})
    qwen = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints["qwen2_vl"])
    assert load_compressor_for(qwen, ckpt).modality == "image"
    llava = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints["llava_onevision"])
    with pytest.raises(ValueError, match=r"trained for qwen2_vl hidden 64.*this model is llava_onevision.*"
                                         r"tcc_eval.compressor label.*tcc_eval.compressor train"):
        load_compressor_for(llava, ckpt)
    with pytest.raises(ValueError, match="trained for qwen2_vl"):
        load_compressor_for(llava, load_compressor(ckpt))  # an already loaded module is validated too
    with pytest.raises(FileNotFoundError, match="nope.pt.*tcc_eval.compressor train"):
        load_compressor_for(qwen, tmp_path / "nope.pt")
    with pytest.raises(ValueError, match="needs a trained compressor"):
        load_compressor_for(qwen, None)


def test_cli_help_documents_memory_and_answer_cap(capsys):
    for argv in (["--help"], ["train", "--help"], ["evaluate", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
    assert "label,train,evaluate" in capsys.readouterr().out
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "tcc_eval.compressor", "label", "--help"], capture_output=True,
                         text=True, env=env, check=True).stdout
    assert "recomputes one layer at a time" in out and "heads * N^2" in out
    assert "--max-answer-tokens" in out and "--shard" in out


def test_command_line_refuses_bad_input_before_the_work(tmp_path, capsys):
    """Options are checked before labelling or training starts, and the command line prints a bad input's
    message on one line instead of a traceback."""
    with pytest.raises(ValueError, match="is a folder; give the checkpoint file"):  # was: after training, lost
        main(["train", "--labels", str(tmp_path), "--out", str(tmp_path)])
    for args, message in (
            (["train", "--labels", "L", "--out", "c.pt", "--val-frac", "1.5"],
             "argument --val-frac: 1.5 is not a fraction in [0, 1)"),
            (["train", "--labels", "L", "--out", "c.pt", "--epochs", "0"],
             "argument --epochs: 0 is not a positive whole number"),
            (["label", "--model", "M", "--data", "D", "--out", "O", "--max-answer-tokens", "0"],
             "argument --max-answer-tokens: 0 is not a positive whole number"),
            (["label", "--model", "M", "--data", "D", "--out", "O", "--num-frames", "-1"],
             "argument --num-frames: -1 is not a positive whole number"),
            (["label", "--model", "M", "--data", "D", "--out", "O", "--dtype", "float99"],
             "argument --dtype: invalid choice: 'float99'"),
            *([(["label", "--model", "M", "--data", "D", "--out", "O", "--device", "cuda"],
                "argument --device: cuda, but torch sees no CUDA GPU here; use cpu")]
              if not torch.cuda.is_available() else [])):
        with pytest.raises(SystemExit):
            main(args)
        error = capsys.readouterr().err
        assert message in error.strip().splitlines()[-1] and "Traceback" not in error, error
    proc = subprocess.run([sys.executable, "-m", "tcc_eval.compressor", "evaluate", "--labels", str(tmp_path / "x"),
                           "--compressor", "c.pt"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: compressor checkpoint 'c.pt' does not exist")


def test_evaluate_refuses_a_compressor_of_another_modality(tmp_path, capsys):
    """A video compressor scored on image labels would be reported as if it did the image job (inference refuses
    it when listed for images): refused, unless --cross-modality asks how it transfers."""
    labels = write_fake_labels(tmp_path / "labels", 3)
    source = json.loads((labels / "meta.json").read_text())["model"]
    video = save_compressor(tmp_path / "video.pt", TokenCompressor(), source, "video", {})
    args = ["evaluate", "--labels", str(labels), "--compressor", str(video)]
    with pytest.raises(ValueError, match=r"trained on video inputs but these labels are of image inputs: score it on "
                                         r"video labels, or pass --cross-modality to measure how it transfers"):
        main(args)
    assert main([*args, "--cross-modality"]) == 0
    assert "the scores say how it transfers" in capsys.readouterr().err


def test_unreadable_compressor_checkpoint_is_named_with_its_fix(tmp_path, monkeypatch, capsys):
    """A checkpoint cut short, an empty file or an image renamed .pt: the one loader every entry point shares
    (tcc_eval.load, wrap_model, evaluate, the benches) names the file and the fix, not torch's zip or unpickling
    error that advises weights_only=False."""
    import io

    from conftest import random_image

    whole = save_compressor(tmp_path / "whole.pt", TokenCompressor(), {}, "image", {}).read_bytes()
    png = io.BytesIO()
    random_image(8, 8, seed=0).save(png, format="PNG")
    for name, content in (("cut.pt", whole[:3000]), ("empty.pt", b""), ("image.pt", png.getvalue()),
                          ("text.pt", b"text junk\n"), ("pickle_junk.pt", b"\x80\x02junk")):  # IndexError, struct.error
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=rf"{re.escape(repr(str(path)))} is not a readable tcc-eval compressor "
                                             r"checkpoint \(truncated, or a file of another format\): re-run "
                                             r"`python -m tcc_eval.compressor train`"):
            load_compressor_for(torch.nn.Linear(1, 1), path)  # fails before the model matters
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    monkeypatch.setattr(sys, "argv", ["tcc_eval.compressor", "evaluate", "--labels", str(tmp_path), "--compressor",
                                      str(tmp_path / "cut.pt")])
    assert cli() == 2
    err = capsys.readouterr().err
    assert err.startswith("error: compressor checkpoint") and "cut.pt" in err and "weights_only" not in err
    assert len(err.strip().splitlines()) == 1


def test_truncated_label_file_is_named_with_its_fix(tmp_path):
    """A sample file cut short (a copy interrupted, a full disk) stops train and evaluate with its path and the fix,
    not torch's PytorchStreamReader error naming no file."""
    labels = write_fake_labels(tmp_path / "labels", 4)
    cut = labels / "samples" / "2.pt"
    whole = cut.read_bytes()
    source = json.loads((labels / "meta.json").read_text())["model"]
    ckpt = save_compressor(tmp_path / "c.pt", TokenCompressor(), source, "image", {})
    message = (rf"label file {re.escape(str(cut))} is unreadable \(truncated, or not written by `label`\): delete it "
               r"and rerun `python -m tcc_eval.compressor label` with the same --out to redo it")
    for broken in (whole[:100], b"junk\n"):  # cut short; overwritten by text (torch: KeyError / IndexError)
        cut.write_bytes(broken)
        for args in (["train", "--labels", str(labels), "--out", str(tmp_path / "new.pt")],
                     ["evaluate", "--labels", str(labels), "--compressor", str(ckpt)]):
            with pytest.raises(ValueError, match=message):
                main(args)
        assert not (tmp_path / "new.pt").exists()


def test_resumed_labelling_redoes_an_unreadable_sample_file(tiny_checkpoints, tmp_path, capsys, one_thread):
    """A resume counted any sample file as done, so one cut short stayed broken and stopped `train` later: it is
    deleted, said, and labelled again."""
    data = synth.export_vlmeval_tsv(synth.generate("image", 2, seed=0, split="train"), tmp_path / "train.tsv")
    out = tmp_path / "labels"
    args = ["label", "--model", tiny_checkpoints["qwen2_vl"], "--data", str(data), "--out", str(out), "--keep-all",
            "--max-answer-tokens", "1", "--max-new-tokens", "2", "--device", "cpu"]
    assert main(args) == 0
    cut = out / "samples" / "1.pt"
    first = torch.load(cut, weights_only=True)
    cut.write_bytes(cut.read_bytes()[:100])
    capsys.readouterr()
    assert main(args) == 0
    stats = json.loads((out / "label_stats_0of1.json").read_text())
    assert (stats["already_done"], stats["kept"]) == (1, 1)
    assert f"warning: {cut} is unreadable (truncated or corrupt): deleted, to label sample '1' again" \
        in capsys.readouterr().err
    assert torch.equal(torch.load(cut, weights_only=True)["relevance"], first["relevance"])


def test_data_file_problems_are_named_with_the_fix(tmp_path):
    """An empty data file labelled nothing and exited 0; a malformed JSON line gave json's message without the file
    or line."""
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"data file .*empty.jsonl has no samples"):
        read_data(tmp_path / "empty.jsonl")
    record = json.dumps({"image": "a.png", "question": "q", "answer": "a"})
    (tmp_path / "bad.jsonl").write_text(f'{record}\n\n{{"image": "b.png", "question": "q"\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:3: not valid JSON \(Expecting ',' delimiter, column 35\); the "
                                         r"file must hold one JSON object per line"):
        read_data(tmp_path / "bad.jsonl")
    (tmp_path / "bad.json").write_text(f"[\n{record},\n{{\"image\": }}\n]")
    with pytest.raises(ValueError, match=r"bad.json:3: not valid JSON \(Expecting value, column 11\); the file must "
                                         r"hold a JSON array of objects"):
        read_data(tmp_path / "bad.json")


def test_label_folder_and_path_mix_ups_are_named_with_the_fix(tmp_path):
    """A folder where a file belongs (or the reverse) was reported as missing, or failed with a bare OS error; a
    damaged meta.json failed with json's message and no file. All are refused before a model loads ("M")."""
    from tcc_eval.compressor.labels import prepare_meta

    with pytest.raises(IsADirectoryError, match=r"data file .* is a folder: pass the data file itself .*--media-root"):
        main(["label", "--model", "M", "--data", str(tmp_path), "--out", str(tmp_path / "out")])
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(NotADirectoryError, match=r"--out .*afile is a file; --out must be a folder"):
        main(["label", "--model", "M", "--data", "D.jsonl", "--out", str(afile)])
    assert not (tmp_path / "out").exists()
    labels = write_fake_labels(tmp_path / "labels", 2)
    folder = tmp_path / "compressors"
    folder.mkdir()
    save_compressor(folder / "qwen2_vl_image.pt", TokenCompressor(), {}, "image", {})
    with pytest.raises(IsADirectoryError, match=r"compressor checkpoint .*compressors' is a folder: pass a checkpoint "
                                                r"file.*\(this folder holds qwen2_vl_image.pt\)"):
        main(["evaluate", "--labels", str(labels), "--compressor", str(folder)])
    meta = labels / "meta.json"
    meta.write_text('{"model": ')
    message = rf"{re.escape(str(meta))} is not valid JSON .*delete it and rerun `python -m tcc_eval.compressor label`"
    with pytest.raises(ValueError, match=message):
        main(["train", "--labels", str(labels), "--out", str(tmp_path / "c.pt")])
    with pytest.raises(ValueError, match=message):  # a resumed `label` reads it too
        prepare_meta(labels, {})


def test_instruction_rows_travel_from_labels_to_checkpoint_to_inference(tiny_checkpoints, tmp_path, one_thread):
    """`label --instruction-rows last` stores the last row's layer-0 attention; the checkpoint trained on it says
    so, inference must ask for the same rows (it then keeps the top-k of the compressor on that attention), and
    evaluation, training and resumed labelling refuse to mix rules."""
    qwen = tiny_checkpoints["qwen2_vl"]
    data = synth.export_vlmeval_tsv(synth.generate("image", 4, seed=2, split="train"), tmp_path / "train.tsv")
    common = ["label", "--model", qwen, "--data", str(data), "--keep-all", "--max-answer-tokens", "1",
              "--max-new-tokens", "2", "--device", "cpu"]
    last, default = tmp_path / "last", tmp_path / "default"
    assert main([*common, "--out", str(last), "--instruction-rows", "last"]) == 0
    assert main([*common, "--out", str(default)]) == 0
    assert json.loads((last / "meta.json").read_text())["instruction_rows"] == "last"
    model = tcc_eval.load(qwen, method="a0", keep_ratio=0.5, device="cpu")
    messages, _ = messages_for(read_data(data)[0], 8)
    view = model.pruned.sample_view(model.pruned.adapter.capture_llm_inputs(model.prepare(messages)), 0)
    record = torch.load(last / "samples" / "0.pt", weights_only=True)
    assert torch.allclose(record["a0"], view.layer0_attention("last"), atol=1e-7)
    assert not torch.allclose(record["a0"], torch.load(default / "samples" / "0.pt", weights_only=True)["a0"])

    ckpt = tmp_path / "last.pt"
    assert main(["train", "--labels", str(last), "--out", str(ckpt), "--epochs", "2", "--batch-size", "2"]) == 0
    assert load_compressor(ckpt).instruction_rows == "last"
    report = tmp_path / "e.json"
    assert main(["evaluate", "--labels", str(last), "--compressor", str(ckpt), "--split", "all", "--json",
                 str(report)]) == 0
    assert json.loads(report.read_text())["instruction_rows"] == "last"
    with pytest.raises(ValueError, match=r"learned from the layer-0 attention of instruction_rows=last, but this run "
                                         r"asks for instruction_rows=after_last_visual: pass instruction_rows=last"):
        tcc_eval.load(qwen, method="tcc", keep_ratio=0.5, compressor=str(ckpt), device="cpu")
    tcc = tcc_eval.load(qwen, method="tcc", keep_ratio=0.5, compressor=str(ckpt), device="cpu",
                        instruction_rows="last")
    tcc.generate(messages, max_new_tokens=1)
    n = record["n_visual"]
    visual_positions = torch.nonzero(view.visual).flatten()
    kept_visual = torch.nonzero(torch.isin(visual_positions, tcc.last_selection.kept_positions[0])).flatten()
    scores = load_compressor(ckpt).predict(view.layer0_attention("last"))
    assert torch.equal(kept_visual, topk_in_order(scores, keep_count(n, 0.5)))
    with pytest.raises(ValueError, match="learned from the layer-0 attention of instruction rows last, these labels "
                                         "hold that of after_last_visual"):
        main(["evaluate", "--labels", str(default), "--compressor", str(ckpt)])
    with pytest.raises(ValueError, match=r"hold layer-0 attention of different instruction rows \(last vs "
                                         r"after_last_visual\)"):
        main(["train", "--labels", str(last), str(default), "--out", str(tmp_path / "mixed.pt")])
    with pytest.raises(ValueError, match="holds labels made with --instruction-rows last"):
        main([*common, "--out", str(last)])
    old = json.loads((default / "meta.json").read_text())  # a folder from before the option holds the default
    del old["instruction_rows"]
    (default / "meta.json").write_text(json.dumps(old))
    assert main([*common, "--out", str(default)]) == 0
    with pytest.raises(ValueError, match="holds labels made with --instruction-rows after_last_visual"):
        main([*common, "--out", str(default), "--instruction-rows", "after_first_visual"])


def test_a_ratio_that_keeps_every_token_still_scores_and_equals_vanilla(loaded):
    """TCC100 skips the scorer (keep_ratio 1); just below it, k still rounds to every token: the compressor runs,
    and the prefill equals the unpruned model's bit for bit."""
    from conftest import messages_for as chat, model_inputs

    model, processor = loaded["qwen2_vl"]
    inputs = model_inputs(processor, chat("image"))
    compressor = TokenCompressor().eval()
    calls = []
    original = compressor.predict
    compressor.predict = lambda a0: calls.append(a0) or original(a0)
    n = tcc_eval.wrap_model(model, method="none").adapter.capture_llm_inputs(inputs).n_visual(0)
    ratio = 1 - 0.4 / n
    assert keep_count(n, ratio) == n
    pruned = tcc_eval.wrap_model(model, method="tcc", keep_ratio=ratio, compressor=compressor)
    with torch.no_grad():
        vanilla = model(**inputs).logits
    assert torch.equal(pruned.prefill_logits(**inputs), vanilla) and len(calls) == 1 and calls[0].numel() == n


def test_recall_at_by_hand():
    from tcc_eval.compressor.evaluate import recall_at

    oracle = torch.tensor([0.0, 1.0, 2.0, 3.0])  # top half: tokens 3, 2
    assert recall_at(torch.tensor([3.0, 2.0, 1.0, 0.0]), oracle, 0.5) == 0.0  # keeps 0, 1
    assert recall_at(torch.tensor([0.0, 2.0, 1.0, 3.0]), oracle, 0.5) == 0.5  # keeps 3, 1
    assert recall_at(oracle * 10, oracle, 0.5) == 1.0
    assert recall_at(torch.tensor([5.0, 0.0, 0.0, 1.0, 0.0]), torch.arange(5.0), 0.25) == 0.0  # k = 1: 0 vs 4
