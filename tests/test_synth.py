"""Tests for the synthetic benchmarks: determinism, balance, geometry, masks and export layouts."""
import base64
import io
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tcc_eval import synth

CELL = 28


@pytest.fixture(scope="module")
def images():
    return synth.generate("image", 400, seed=0, split="test")


@pytest.fixture(scope="module")
def videos():
    return synth.generate("video", 120, seed=0, split="test")


def _rgb_at(img: Image.Image, box) -> tuple:
    return img.getpixel(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2))


def _is_background(arr: np.ndarray) -> bool:
    return bool(np.all(np.abs(arr.astype(int) - 118) <= 14))


def test_same_seed_gives_byte_identical_tsv(tmp_path):
    a = synth.export_vlmeval_tsv(synth.generate("image", 30, seed=7, split="test"), tmp_path / "a.tsv")
    b = synth.export_vlmeval_tsv(synth.generate("image", 30, seed=7, split="test"), tmp_path / "b.tsv")
    assert a.read_bytes() == b.read_bytes()


def test_seed_and_split_change_samples_and_prefix_is_stable():
    base = synth.generate("image", 20, seed=1, split="test")
    others = (synth.generate("image", 20, seed=2, split="test"), synth.generate("image", 20, seed=1, split="train"))
    for other in others:
        assert sum(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(base, other)) == 0
    prefix = synth.generate("image", 5, seed=1, split="test")
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) and x.question == y.question
               for x, y in zip(prefix, base))


def test_answer_letters_balanced(images, videos):
    four = Counter(s.answer for s in images if len(s.options) == 4)
    total = sum(four.values())
    assert total == 300 and set(four) == set("ABCD")
    assert all(0.18 < c / total < 0.32 for c in four.values()), four
    yes_no = Counter(s.answer for s in images if s.category == "presence")
    assert set(yes_no) == {"A", "B"} and all(0.4 < c / 100 < 0.6 for c in yes_no.values()), yes_no
    vid = Counter(s.answer for s in videos)
    assert set(vid) == set("ABCD") and all(0.15 < c / len(videos) < 0.35 for c in vid.values()), vid
    assert Counter(s.category for s in images) == {t: 100 for t in synth.IMAGE_TYPES}


def test_options_and_answers_are_consistent(images):
    for s in images:
        assert list(s.options) == list("ABCD"[: len(s.options)]) and len(set(s.options.values())) == len(s.options)
        objs = s.objects
        assert 2 <= len(objs) <= 4 and len({o["shape"] for o in objs}) == len(objs)
        ans = s.options[s.answer]
        if s.category == "count":
            assert ans == str(len(objs)) and len(s.boxes) == len(objs)
        elif s.category == "color_of_shape":
            shape = s.question.split("the ")[1].rstrip("?")
            assert [o["color"] for o in objs if o["shape"] == shape] == [ans]
        elif s.category == "shape_of_color":
            color = s.question.split("the ")[1].split(" ")[0]
            assert len({o["color"] for o in objs}) == len(objs)
            assert [o["shape"] for o in objs if o["color"] == color] == [ans]
        else:
            color, shape = s.question.rstrip("?").split()[-2:]
            present = any(o["color"] == color and o["shape"] == shape for o in objs)
            assert s.options == {"A": "yes", "B": "no"} and ans == ("yes" if present else "no")
            assert [o["box"] for o in objs if o["shape"] == shape] == s.boxes


def test_boxes_inside_canvas_and_one_cell(images):
    for s in images:
        for o in s.objects:
            x0, y0, x1, y1 = o["box"]
            assert 0 <= x0 < x1 <= 336 and 0 <= y0 < y1 <= 336
            assert x0 // CELL == (x1 - 1) // CELL and y0 // CELL == (y1 - 1) // CELL
            assert x1 - x0 >= 0.75 * CELL  # fills most of the cell


def test_token_mask_marks_exactly_the_object_cells(images):
    for s in images[:80]:
        mask = synth.token_mask(s, (12, 12), (336, 336))
        cells = {(b[1] // CELL, b[0] // CELL) for b in s.boxes}
        assert set(zip(*np.nonzero(mask))) == cells
        for o in s.objects:
            assert _rgb_at(s.image, o["box"]) == synth.PALETTE[o["color"]]
        arr = np.asarray(s.image)
        occupied = {(o["box"][1] // CELL, o["box"][0] // CELL) for o in s.objects}
        for r in range(12):
            for c in range(12):
                block = arr[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL]
                assert _is_background(block) != ((r, c) in occupied)
        # 14-px patches (pre-merge grid): each object covers a 2x2 block
        assert synth.token_mask(s, (24, 24)).sum() == 4 * len(s.boxes)


def test_video_objects_only_in_recorded_frames(videos):
    for s in videos[:40]:
        assert len(s.video) == 8 and s.video[0].size == (224, 224)
        f0 = s.frames[0]
        assert f0 % 2 == 0 and s.frames == [f0, f0 + 1] and len(s.boxes) == 2
        target = s.objects[0]
        rgb = synth.PALETTE[target["color"]]
        for f, frame in enumerate(s.video):
            arr = np.asarray(frame)
            n_target_px = int(np.all(arr == rgb, axis=-1).sum())
            assert (_rgb_at(frame, target["box"]) == rgb) == (f in s.frames)
            assert (n_target_px > 0) == (f in s.frames)
            for o in s.objects[1:]:  # grey distractors come in frame pairs; a cell may be reused later
                here = any(d["box"] == o["box"] and f in d["frames"] for d in s.objects[1:])
                assert (_rgb_at(frame, o["box"]) == synth.PALETTE["grey"]) == here
        pairs = synth.token_mask_video(s, (8, 8))
        assert pairs.shape == (4, 8, 8) and pairs.sum() == 1 and pairs[f0 // 2].any()
        per_frame = synth.token_mask_video(s, (8, 8), frames_per_token=1)
        assert per_frame.shape == (8, 8, 8) and per_frame.sum() == 2
        assert list(np.nonzero(per_frame.any(axis=(1, 2)))[0]) == s.frames
        if s.category == "when_appeared":
            assert s.answer == "ABCD"[f0 // 2]


def test_tsv_round_trip_and_two_option_layout(tmp_path, images):
    sub = images[:12]
    path = synth.export_vlmeval_tsv(sub, tmp_path / "TCCSynth_IMG.tsv")
    df = pd.read_csv(path, sep="\t")
    assert list(df.columns) == ["index", "image", "question", "A", "B", "C", "D", "answer", "category"]
    for s, (_, row) in zip(sub, df.iterrows()):
        img = Image.open(io.BytesIO(base64.b64decode(row["image"]))).convert("RGB")
        assert np.array_equal(np.asarray(img), np.asarray(s.image))
        assert row["answer"] == s.answer and row["question"] == s.question
        if s.category == "presence":
            assert row["A"] == "yes" and row["B"] == "no" and pd.isna(row["C"]) and pd.isna(row["D"])
        else:
            assert [str(row[k]) for k in "ABCD"] == list(s.options.values())


def test_ground_truth_round_trip(tmp_path, images, videos):
    with pytest.raises(ValueError, match="duplicate sample indices"):
        synth.save_ground_truth(images[:10] + videos[:10], tmp_path / "mixed.json")
    gt = synth.load_ground_truth(synth.save_ground_truth(images[:10], tmp_path / "img.json"))
    for s in images[:10]:
        g = gt[s.index]
        assert g.image is None and g.boxes == s.boxes and g.options == s.options and g.answer == s.answer
        assert np.array_equal(synth.token_mask(g, (12, 12)), synth.token_mask(s, (12, 12)))
    gv = synth.load_ground_truth(synth.save_ground_truth(videos[:5], tmp_path / "vid.json"))
    for s in videos[:5]:
        assert np.array_equal(synth.token_mask_video(gv[s.index], (8, 8)), synth.token_mask_video(s, (8, 8)))


def test_video_and_lmms_exports(tmp_path, images, videos):
    tsv = synth.export_vlmeval_video(videos[:3], tmp_path / "vid")
    df = pd.read_csv(tsv, sep="\t")
    assert tsv.name == "TCCSynth_VID.tsv"
    assert list(df.columns) == ["index", "video", "question", "A", "B", "C", "D", "answer", "category", "frames_dir"]
    for s, (_, row) in zip(videos[:3], df.iterrows()):
        assert (tmp_path / "vid" / row["video"]).is_file() and row["video"].endswith(".mp4")
        frame = Image.open(tmp_path / "vid" / row["frames_dir"] / "005.png")
        assert np.array_equal(np.asarray(frame), np.asarray(s.video[5]))
    import decord  # a dependency of the package (setup.py): its absence is a broken install, not a skip

    reader = decord.VideoReader(str(tmp_path / "vid" / df["video"][0]))  # what the frameworks read: lossless
    assert len(reader) == 8
    assert all(np.array_equal(reader[i].asnumpy(), np.asarray(videos[0].video[i])) for i in range(8))

    jl = synth.export_lmms(images[:4], tmp_path / "lmms_img", "image")
    recs = [json.loads(line) for line in jl.read_text().splitlines()]
    assert [r["id"] for r in recs] == [0, 1, 2, 3] and recs[3]["options"] == ["yes", "no"]
    img = Image.open(tmp_path / "lmms_img" / recs[0]["image_path"])
    assert np.array_equal(np.asarray(img), np.asarray(images[0].image))

    jv = synth.export_lmms(videos[:2], tmp_path / "lmms_vid", "video")
    rec = json.loads(jv.read_text().splitlines()[1])
    assert jv.name == "TCCSynth_VID.jsonl" and (tmp_path / "lmms_vid" / rec["video_path"]).is_file()
    assert len(list((tmp_path / "lmms_vid" / rec["frames_dir"]).glob("*.png"))) == 8
    with pytest.raises(ValueError, match="not image samples"):
        synth.export_lmms(videos[:1], tmp_path / "bad", "image")


def test_config_knobs_and_errors():
    s = synth.generate("image", 6, seed=3, split="train", size=224, cell=32, min_objects=3, max_objects=3,
                       colors=["red", "blue", "purple"], question_types=["shape_of_color"])
    assert all(len(x.objects) == 3 and x.image.size == (224, 224) and len(x.options) == 4 for x in s)
    assert synth.token_mask(s[0], (7, 7)).sum() == 1
    with pytest.raises(ValueError, match="unknown image config keys"):
        synth.generate("image", 1, seed=0, split="test", colour=["red"])
    with pytest.raises(ValueError, match="multiple of cell"):
        synth.generate("image", 1, seed=0, split="test", size=300)
    with pytest.raises(ValueError, match="frames"):
        synth.generate("video", 1, seed=0, split="test", frames=7)
    with pytest.raises(ValueError, match="split"):
        synth.generate("image", 1, seed=0, split="val")


def _cell_of(box, cell=CELL, grid=336 // CELL):
    return (box[1] // cell) * grid + box[0] // cell


def test_anchor_questions_single_out_the_anchor_and_its_right_neighbour():
    samples = synth.generate("image", 60, seed=4, split="test", question_types=synth.ANCHOR_TYPES,
                             min_objects=20, max_objects=90)
    assert Counter(s.category for s in samples) == {t: 30 for t in synth.ANCHOR_TYPES}
    for s in samples:
        anchor, neighbour = s.objects[0], s.objects[1]
        assert [o["shape"] for o in s.objects].count("diamond") == 1 and anchor["shape"] == "diamond"
        assert 22 <= len(s.objects) <= 92 and len({_cell_of(o["box"]) for o in s.objects}) == len(s.objects)
        assert _cell_of(neighbour["box"]) == _cell_of(anchor["box"]) + 1  # same row: the anchor is never last
        assert _cell_of(anchor["box"]) % 12 != 11
        arr = np.asarray(s.image)
        assert _rgb_at(s.image, anchor["box"]) == synth.PALETTE[anchor["color"]] and not _is_background(arr)
        if s.category == "anchor_color":
            assert s.options[s.answer] == anchor["color"] and s.boxes == [anchor["box"]]
        else:
            assert s.question == "What color is the shape right of the diamond?"
            assert s.options[s.answer] == neighbour["color"] and s.boxes == [neighbour["box"], anchor["box"]]
    assert len({s.options[s.answer] for s in samples if s.category == "right_of_anchor"}) == 4


def test_video_anchor_questions_put_the_anchor_pair_in_one_frame_pair_among_crowds():
    samples = synth.generate("video", 24, seed=4, split="test", size=168, question_types=synth.ANCHOR_TYPES,
                             min_objects=6, max_objects=24)
    assert Counter(s.category for s in samples) == {t: 12 for t in synth.ANCHOR_TYPES}
    for s in samples:
        anchors = [i for i, o in enumerate(s.objects) if o["shape"] == "diamond"]
        assert len(anchors) == 1
        anchor, neighbour = s.objects[anchors[0]], s.objects[anchors[0] + 1]
        pair = anchor["frames"]
        assert neighbour["frames"] == pair and pair[0] % 2 == 0 and pair[1] == pair[0] + 1
        assert _cell_of(neighbour["box"], grid=6) == _cell_of(anchor["box"], grid=6) + 1
        for p in range(4):  # every frame pair has its own crowd, in distinct cells
            layer = [o for o in s.objects if o["frames"] == [2 * p, 2 * p + 1]]
            extra = 2 if [2 * p, 2 * p + 1] == pair else 0
            assert 6 + extra <= len(layer) <= 24 + extra
            assert len({_cell_of(o["box"], grid=6) for o in layer}) == len(layer)
        for f, frame in enumerate(s.video):  # the anchor is drawn in its pair; its cell is empty where no crowd is
            covered = any(o["box"] == anchor["box"] and f in o["frames"] for o in s.objects)
            assert _rgb_at(frame, anchor["box"]) == synth.PALETTE[anchor["color"]] if f in pair else (
                covered or _is_background(np.asarray(frame.crop(anchor["box"]))))
        relevant = [anchor] if s.category == "anchor_color" else [neighbour, anchor]
        assert s.options[s.answer] == relevant[0]["color"]
        assert s.boxes == [o["box"] for o in relevant for _ in pair] and s.frames == [f for _ in relevant for f in pair]
    assert len({s.video[0].size for s in samples}) == 1 and samples[0].n_frames == 8


def test_anchor_config_errors():
    with pytest.raises(ValueError, match="must not be one of|not in shapes"):
        synth.generate("image", 1, seed=0, split="test", question_types=["anchor_color"],
                       shapes=["circle", "diamond"])
    with pytest.raises(ValueError, match="exceed the 144 cells"):
        synth.generate("image", 1, seed=0, split="test", question_types=["anchor_color"], max_objects=143)
    with pytest.raises(ValueError, match="max_objects exceeds distinct shapes"):  # crowds only for anchor questions
        synth.generate("image", 1, seed=0, split="test", question_types=["anchor_color", "count"], max_objects=30)
    with pytest.raises(ValueError, match="exceed the 36 cells"):
        synth.generate("video", 1, seed=0, split="test", size=168, question_types=["anchor_color"], max_objects=35)
    with pytest.raises(ValueError, match="min_objects <= max_objects"):
        synth.generate("video", 1, seed=0, split="test", size=168, question_types=["anchor_color"],
                       min_objects=5, max_objects=4)
    assert len(synth.generate("image", 2, seed=0, split="test", question_types=["right_of_anchor"],
                              min_objects=0, max_objects=0)[0].objects) == 2
