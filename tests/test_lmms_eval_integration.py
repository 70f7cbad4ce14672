"""lmms-eval 0.7.3 integration: ``--model qwen2_vl_tcc`` / ``qwen2_5_vl_tcc`` / ``llava_onevision_tcc`` on the shipped
``tccsynth_img`` / ``tccsynth_vid`` tasks, end to end through the real CLI, plus method=none against the
upstream wrappers on identical inputs. Tiny random-weight checkpoints: accuracy is meaningless here,
the plumbing (registration, prompts, pruning, results, efficiency records) is what is tested."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tcc_eval.core import keep_count
from tcc_eval.integrations.lmms_eval import check_results
from tcc_eval.lmms_tasks import TASKS_DIR

TASKS = ["tccsynth_img", "tccsynth_vid"]
LIMIT = 4
SYNTH_N = "8"
RECORD_KEYS = {"model", "framework", "dataset", "index", "method", "keep_ratio", "base_model", "visual_before",
               "visual_after", "seq_before", "seq_after", "prefill_s", "vision_s", "select_s", "total_s",
               "kv_cache_bytes", "new_tokens", "method_options"}


@pytest.fixture(scope="module")
def task_env(tmp_path_factory):
    """Small synthetic sets in a private folder, offline hub; shared by subprocesses and in-process runs."""
    env = {
        "TCC_LMMS_DATA": str(tmp_path_factory.mktemp("lmms_data")),
        "TCC_LMMS_SYNTH_N": SYNTH_N,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.delenv("TCC_EFFICIENCY_DIR", raising=False)
        yield env


def run_lmms_eval(model: str, model_args: str, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lmms_eval", "--model", model, "--model_args", model_args,
           "--tasks", ",".join(TASKS), "--include_path", str(TASKS_DIR), "--limit", str(LIMIT),
           "--output_path", str(out), "--timezone", "UTC", "--gen_kwargs", "max_new_tokens=4"]
    full_env = {**os.environ, **env, "OMP_NUM_THREADS": "2", "HF_DATASETS_CACHE": str(out / "hf_datasets")}
    return subprocess.run(cmd, check=False, env=full_env, capture_output=True, text=True, timeout=400)


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def untrained_compressor(tiny_checkpoints, tmp_path_factory) -> str:
    """A compressor checkpoint for the tiny Qwen2-VL (random weights: exercises method=tcc's plumbing)."""
    from transformers import AutoModelForImageTextToText

    from tcc_eval.compressor import TokenCompressor, model_meta, save_compressor

    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints["qwen2_vl"])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("compressor") / "qwen2_vl_untrained.pt"
    return str(save_compressor(path, TokenCompressor(channels=(8, 16)), model_meta(model), "image", {}))


@pytest.mark.parametrize("family,model,method", [
    ("qwen2_vl", "qwen2_vl_tcc", "tcc"),
    ("llava_onevision", "llava_onevision_tcc", "visionzip"),  # reads the vision tower through the same wrapper
    ("qwen2_5_vl", "qwen2_5_vl_tcc", "visionzip"),  # a windowed tower; upstream loads it in bf16
])
def test_cli_runs_both_tasks_and_writes_results_and_records(family, model, method, tiny_checkpoints,
                                                           untrained_compressor, task_env, tmp_path):
    pretrained = tiny_checkpoints[family]
    model_args = f"pretrained={pretrained},method={method},ratio=0.5"
    if method == "tcc":
        model_args += f",compressor={untrained_compressor}"
    started = time.time()
    proc = run_lmms_eval(model, model_args, tmp_path, task_env)
    log = proc.stdout[-3000:] + proc.stderr[-6000:]
    assert proc.returncode == 0, log

    results_file = check_results(tmp_path, tasks=TASKS, newer_than=started)
    data = json.loads(results_file.read_text())
    assert (data["config"]["model"], data["config"]["model_args"]) == (model, model_args)
    for task in TASKS:
        assert 0.0 <= data["results"][task]["exact_match,none"] <= 1.0, data["results"]
        assert data["n-samples"][task]["effective"] == LIMIT

    records_dir = tmp_path / "efficiency"
    for task in TASKS:
        files = list(records_dir.glob(f"{model}_*_{method}-50_{task}_efficiency.jsonl"))
        assert len(files) == 1, sorted(p.name for p in records_dir.iterdir())
        records = read_records(files[0])
        assert sorted(r["index"] for r in records) == list(range(LIMIT))
        for record in records:
            assert RECORD_KEYS <= record.keys()
            assert (record["model"], record["framework"], record["dataset"]) == (model, "lmms_eval", task)
            assert (record["method"], record["keep_ratio"], record["base_model"]) == (method, 0.5, pretrained)
            assert record["method_options"] == {"budget": "global", "seed": 0, "positions": "original"}
            assert record["compressor"] == (untrained_compressor if method == "tcc" else None)
            assert record["visual_before"] > 0
            assert record["visual_after"] == keep_count(record["visual_before"], 0.5)
            assert record["seq_before"] - record["seq_after"] == record["visual_before"] - record["visual_after"]
            assert record["new_tokens"] >= 1 and record["total_s"] >= record["prefill_s"] > 0


# --- method=none against the upstream wrappers, in process so the model inputs can be compared --------
@pytest.fixture(scope="module")
def task_manager(task_env):
    from lmms_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)  # our tasks only: saves ~8 s


def capture_generate(model, calls: list[dict]) -> None:
    """Record the tensors of every ``model.generate`` call (the wrapper's complete model input)."""
    original = model.generate

    def generate(*args, **kwargs):
        calls.append({name: value.clone() for name, value in kwargs.items() if torch.is_tensor(value)})
        return original(*args, **kwargs)

    model.generate = generate


def evaluate(lm, tasks: list[str], task_manager) -> tuple[list[dict], dict]:
    from lmms_eval.evaluator import simple_evaluate

    calls: list[dict] = []
    capture_generate(lm._model, calls)
    out = simple_evaluate(model=lm, tasks=tasks, limit=LIMIT, task_manager=task_manager, log_samples=True,
                          gen_kwargs="max_new_tokens=8", verbosity="WARNING")
    answers = {task: {s["doc_id"]: s["resps"] for s in samples} for task, samples in out["samples"].items()}
    return calls, answers


def upstream_and_ours(kind: str):
    from lmms_eval.models.chat.llava_hf import LlavaHf as LlavaChat
    from lmms_eval.models.chat.qwen2_5_vl import Qwen2_5_VL as Qwen25Chat
    from lmms_eval.models.simple.llava_hf import LlavaHf as LlavaSimple
    from lmms_eval.models.simple.qwen2_5_vl import Qwen2_5_VL
    from lmms_eval.models.simple.qwen2_vl import Qwen2_VL

    from tcc_eval.integrations.lmms_eval import models

    return {
        "qwen2_vl": (Qwen2_VL, models.Qwen2VLTCC),
        "qwen2_5_vl": (Qwen2_5_VL, models.Qwen25VLTCC),
        "qwen2_5_vl_chat": (Qwen25Chat, models.Qwen25VLTCCChat),
        "llava_chat": (LlavaChat, models.LlavaOneVisionTCCChat),
        "llava_simple": (LlavaSimple, models.LlavaOneVisionTCC),
    }[kind]


# Upstream chat llava_hf cannot run video here (images=[] crash, and no torchcodec): images only.
@pytest.mark.parametrize("kind,family,tasks", [
    ("qwen2_vl", "qwen2_vl", TASKS),
    ("qwen2_5_vl", "qwen2_5_vl", TASKS),
    ("qwen2_5_vl_chat", "qwen2_5_vl", TASKS),
    ("llava_chat", "llava_onevision", ["tccsynth_img"]),
    ("llava_simple", "llava_onevision", TASKS),
])
def test_method_none_matches_upstream_inputs_and_answers(kind, family, tasks, tiny_checkpoints, task_manager, tmp_path):
    upstream_cls, ours_cls = upstream_and_ours(kind)
    pretrained = tiny_checkpoints[family]
    upstream = upstream_cls(pretrained=pretrained, device="cpu", device_map="cpu")
    up_calls, up_answers = evaluate(upstream, tasks, task_manager)
    ours = ours_cls(pretrained=pretrained, device="cpu", method="none", efficiency_dir=str(tmp_path))
    our_calls, our_answers = evaluate(ours, tasks, task_manager)

    assert len(up_calls) == len(our_calls) == LIMIT * len(tasks)
    for up, our in zip(up_calls, our_calls):
        assert up.keys() == our.keys()
        for name in up:
            assert torch.equal(up[name], our[name]), name
        prompt = ours.tokenizer.decode(our["input_ids"][0])
        assert "Answer with the option's letter from the given choices directly." in prompt
    assert our_answers == up_answers

    for task in tasks:
        (path,) = tmp_path.glob(f"{ours.model_id}_*_none-100_{task}_efficiency.jsonl")
        records = read_records(path)
        assert len(records) == LIMIT
        assert all(r["visual_after"] == r["visual_before"] > 0 and r["keep_ratio"] == 1.0 for r in records)


def test_llava_chat_reads_a_video_as_the_simple_wrapper_does(tiny_checkpoints, task_manager, tmp_path):
    """Upstream chat llava_hf hands a video's path to the HF processor, which decodes every frame (none sampled by
    default): ours reads it with upstream's own load_video, max_frames_num frames, as the simple llava_hf does."""
    from tcc_eval.integrations.lmms_eval import models

    pretrained, frames = tiny_checkpoints["llava_onevision"], 3  # the synthetic videos have 8 frames
    pixels = []
    for cls in (models.LlavaOneVisionTCCChat, models.LlavaOneVisionTCC):
        ours = cls(pretrained=pretrained, device="cpu", method="none", max_frames_num=frames,
                   efficiency_dir=str(tmp_path / cls.__name__))
        calls, answers = evaluate(ours, ["tccsynth_vid"], task_manager)
        assert len(calls) == LIMIT and all(len(a) == 1 for a in answers["tccsynth_vid"].values())
        (path,) = (tmp_path / cls.__name__).glob("*_tccsynth_vid_efficiency.jsonl")
        docs = [record["index"] for record in read_records(path)]  # the two wrappers order their requests apart
        pixels.append({doc: call["pixel_values_videos"] for doc, call in zip(docs, calls)})
    chat, simple = pixels
    assert sorted(chat) == sorted(simple) == list(range(LIMIT))
    for doc in chat:
        assert chat[doc].shape[1] == frames
        assert torch.equal(chat[doc], simple[doc])


@pytest.mark.parametrize("cls_name, batch_size", [("LlavaOneVisionTCCChat", "2"), ("LlavaOneVisionTCC", "2"),
                                                   ("LlavaOneVisionTCCChat", "auto"), ("LlavaOneVisionTCC", "auto:4")])
def test_llava_refuses_a_batch_size_above_one_before_loading(cls_name, batch_size, tmp_path):
    """Upstream llava_hf asserts batch size 1 after its weights load ("Do not support batch_size_per_gpu > 1")."""
    from tcc_eval.fixtures import build_tiny_checkpoint
    from tcc_eval.integrations.lmms_eval import models

    folder = build_tiny_checkpoint("llava_onevision", tmp_path / "llava")
    (folder / "model.safetensors").unlink()  # nothing may load: the refusal comes first
    with pytest.raises(ValueError, match="llava_onevision_tcc runs one request at a time, as upstream llava_hf does "
                                         rf"\(it refuses batch_size {batch_size}\): pass --batch_size 1"):
        getattr(models, cls_name)(pretrained=str(folder), device="cpu", method="none", batch_size=batch_size,
                                  efficiency_dir=str(tmp_path / "records"))


def test_llava_warns_once_when_a_video_has_fewer_frames_than_it_samples(tmp_path):
    """Upstream's linspace repeats frames of a video shorter than max_frames_num (default 32): the demo model, trained
    on 8-frame clips, then answers from a clip it never saw, so the first such video is named with the fix."""
    from loguru import logger

    from tcc_eval import synth
    from tcc_eval.integrations.lmms_eval import models

    data = synth.export_lmms(synth.generate("video", 1, seed=0), tmp_path, "video")
    video = str(tmp_path / json.loads(data.read_text())["video_path"])
    ours = object.__new__(models.LlavaOneVisionTCC)  # load_video needs no loaded model
    messages: list[str] = []
    sink = logger.add(messages.append, level="WARNING", format="{message}")
    try:
        assert ours.load_video(video, 8).shape[0] == 8 and not messages
        assert ours.load_video(video, 32).shape[0] == 32 and ours.load_video(video, 32).shape[0] == 32
    finally:
        logger.remove(sink)
    assert len(messages) == 1, messages
    assert "has 8 frames and max_frames_num=32: llava_hf reads some of them 4 times; pass max_frames_num=8" \
        in messages[0]


def test_llava_unreadable_video_is_named(tmp_path):
    """A video upstream's loader cannot read stops the request with its path (upstream logs it and goes on
    without an answer for it); a path object is read as its string."""
    from lmms_eval.models.simple.llava_hf import LlavaHf

    from tcc_eval.integrations.lmms_eval.models import UpstreamProcessorFixes

    read = []
    fixes = UpstreamProcessorFixes(lambda **kwargs: kwargs, lambda path: read.append(path) or "frames")
    assert fixes(text="t", videos=[tmp_path / "v.mp4"])["videos"] == ["frames"] and read == [str(tmp_path / "v.mp4")]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    fixes = UpstreamProcessorFixes(lambda **kwargs: kwargs, lambda path: LlavaHf.load_video(None, path, 3))
    with pytest.raises(RuntimeError, match=f"cannot read video {broken} with decord .*fix or remove the file"):
        fixes(text="t", videos=[str(broken)])


@pytest.mark.parametrize("cls_name", ["LlavaOneVisionTCCChat", "LlavaOneVisionTCC"])
def test_llava_generate_failure_stops_the_run(cls_name, tiny_checkpoints, task_manager, tmp_path):
    """Upstream llava_hf scores a generate that raises as an empty answer; ours stops, naming the doc and the
    error, rather than report a silently lower score. Likelihood tasks are refused by name."""
    from tcc_eval.integrations.lmms_eval import models

    ours = getattr(models, cls_name)(pretrained=tiny_checkpoints["llava_onevision"], device="cpu", method="none",
                                     efficiency_dir=str(tmp_path))

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (stand-in)")

    ours._model.pruned.generate = out_of_memory
    with pytest.raises(models.GenerationFailed,
                       match=r"generate or its efficiency record failed on tccsynth_img doc \d "
                             r"\(RuntimeError: CUDA out of memory.*max_frames_num"):
        evaluate(ours, ["tccsynth_img"], task_manager)
    assert ours._pending_docs == []  # a caller that goes on names only its next failure's docs

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device (stand-in)")

    del ours._model.pruned.generate  # a generate that works, and a record that cannot be written
    ours.efficiency.write = disk_full
    with pytest.raises(models.GenerationFailed, match=r"its efficiency record failed on tccsynth_img doc \d "
                                                      r"\(OSError: No space left on device"):
        evaluate(ours, ["tccsynth_img"], task_manager)
    with pytest.raises(NotImplementedError, match="llava_onevision_tcc serves generation tasks"):
        ours.loglikelihood([])


def test_qwen2_vl_right_padded_batches_warn_and_answer_as_one_by_one(tiny_checkpoints, task_manager, tmp_path):
    """The real Qwen2-VL tokenizers pad on the right, and upstream qwen2_vl batches with that side: ours warns that
    it re-pads on the left, and its batched answers equal its one-by-one answers."""
    from loguru import logger

    from tcc_eval.integrations.lmms_eval import models

    right = tmp_path / "right_padded"
    shutil.copytree(tiny_checkpoints["qwen2_vl"], right)
    config = json.loads((right / "tokenizer_config.json").read_text())
    (right / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "right"}))
    warnings: list[str] = []
    sink = logger.add(lambda message: warnings.append(str(message)), level="WARNING")
    try:
        batched = models.Qwen2VLTCC(pretrained=str(right), device="cpu", method="none", batch_size=LIMIT,
                                    efficiency_dir=str(tmp_path / "b2"))
    finally:
        logger.remove(sink)
    assert batched.processor.tokenizer.padding_side == "right"
    assert any("moves every row's padding to the left" in w for w in warnings), warnings
    calls, batched_answers = evaluate(batched, ["tccsynth_img"], task_manager)
    assert len(calls) == 1 and (calls[0]["attention_mask"][:, -1] == 0).any()  # right-padded (pairs tie in length)
    one_by_one = models.Qwen2VLTCC(pretrained=str(right), device="cpu", method="none",
                                   efficiency_dir=str(tmp_path / "b1"))
    assert evaluate(one_by_one, ["tccsynth_img"], task_manager)[1] == batched_answers


def test_tcc_without_compressor_arg_takes_the_registry_files(untrained_compressor, tiny_checkpoints, task_manager,
                                                            monkeypatch, tmp_path):
    """No compressor=: $TCC_COMPRESSOR_DIR/<Base>_<modality>.pt, the files VLMEvalKit's runs of that checkpoint
    use (run_all.sh --suite paper passes none); a missing file or an unregistered checkpoint fails before loading."""
    from tcc_eval.integrations.lmms_eval import models

    pretrained = tiny_checkpoints["qwen2_vl"]
    folder = tmp_path / "compressors"
    folder.mkdir()
    monkeypatch.setenv("TCC_EXTRA_MODELS", f"MyQwen={pretrained}")
    monkeypatch.setenv("TCC_COMPRESSOR_DIR", str(folder))
    args = {"device": "cpu", "method": "tcc", "ratio": 0.5, "efficiency_dir": str(tmp_path)}
    with pytest.raises(FileNotFoundError, match="MyQwen_image.pt"):
        models.Qwen2VLTCC(pretrained=pretrained, **args)
    (tmp_path / "unregistered").mkdir()
    with pytest.raises(ValueError, match="checkpoint of no registered base"):
        models.Qwen2VLTCC(pretrained=str(tmp_path / "unregistered"), **args)

    shutil.copyfile(untrained_compressor, folder / "MyQwen_image.pt")
    # one modality's file only: lmms-eval would crash at the first video sample and keep no task's results
    with pytest.raises(FileNotFoundError, match="MyQwen_video.pt.*first video sample.*compressor=.*MyQwen_image.pt"):
        models.Qwen2VLTCC(pretrained=pretrained, **args)
    shutil.copyfile(untrained_compressor, tmp_path / "qwen2_vl_image.pt")
    (tmp_path / "no_model").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no video compressor.*compressor=.*qwen2_vl_image.pt"):
        # refused before the weights load: this folder holds no model at all
        models.Qwen2VLTCC(pretrained=str(tmp_path / "no_model"), **{**args, "compressor": str(tmp_path)})
    from transformers import AutoModelForImageTextToText

    from tcc_eval.compressor import TokenCompressor, model_meta, save_compressor

    meta = model_meta(AutoModelForImageTextToText.from_pretrained(pretrained))
    save_compressor(folder / "MyQwen_video.pt", TokenCompressor(channels=(8, 16)), meta, "video", {})
    ours = models.Qwen2VLTCC(pretrained=pretrained, **args)
    assert set(ours._model.pruned.scorer.compressors) == {"image", "video"}
    calls, _ = evaluate(ours, ["tccsynth_img"], task_manager)
    assert len(calls) == LIMIT
    (path,) = tmp_path.glob("qwen2_vl_tcc_*_tcc-50_tccsynth_img_efficiency.jsonl")
    assert all(r["visual_after"] == keep_count(r["visual_before"], 0.5) for r in read_records(path))


# --- registration, arguments, tasks, results check --------------------------------------------------
def test_entry_points_resolve_to_our_classes():
    from lmms_eval.models import get_model

    from tcc_eval.integrations.lmms_eval import models

    assert get_model("qwen2_vl_tcc") is models.Qwen2VLTCC
    assert get_model("qwen2_5_vl_tcc") is models.Qwen25VLTCCChat  # like upstream qwen2_5_vl
    assert get_model("qwen2_5_vl_tcc", force_simple=True) is models.Qwen25VLTCC
    assert get_model("llava_onevision_tcc") is models.LlavaOneVisionTCCChat  # like upstream llava_hf
    assert get_model("llava_onevision_tcc", force_simple=True) is models.LlavaOneVisionTCC


def test_the_tables_name_each_run_as_the_upstream_model_it_wraps_would_be():
    """aggregate names an lmms-eval run's base model by the upstream model ours wraps (so its vanilla run pairs)
    and by the checkpoint a run without pretrained= loads (so the scores pair with the efficiency records, which
    name it): both must be what the classes do."""
    import importlib.util
    import inspect

    from lmms_eval.models import get_model

    from tcc_eval.aggregate import LMMS_BASELINES, LMMS_DEFAULT_CHECKPOINTS
    from tcc_eval.integrations.lmms_eval import models

    assert set(LMMS_BASELINES) == set(models.WRAPPERS.values())
    for ours, upstream in LMMS_BASELINES.items():
        if upstream == "vila":  # upstream vila needs VILA's own code; VilaBaseline restates it
            assert issubclass(get_model(ours), models.VilaBaseline)
            source = Path(importlib.util.find_spec("lmms_eval.models.simple.vila").origin).read_text()
            assert f'pretrained: str = "{LMMS_DEFAULT_CHECKPOINTS[upstream]}"' in source
            assert LMMS_DEFAULT_CHECKPOINTS[ours] == models.DEFAULT_VILA
            continue
        for simple in (True, False):
            theirs = get_model(upstream, force_simple=simple)
            assert issubclass(get_model(ours, force_simple=simple), theirs), (ours, simple)
            default = inspect.signature(theirs.__init__).parameters["pretrained"].default
            assert default == LMMS_DEFAULT_CHECKPOINTS[upstream], (upstream, simple)


@pytest.mark.parametrize("kwargs,message", [
    ({}, "needs method="),
    ({"method": "random"}, "needs ratio="),
    ({"method": "none", "ratio": 0.5}, "keeps every visual token"),
    ({"method": "random", "ratio": 1.5}, "keep_ratio must be in"),
    ({"method": "bogus", "ratio": 0.5}, "unknown method"),
    ({"method": "random", "ratio": 0.5, "fastv_k": 2}, "option of method fastv / dart, not of method=random"),
    ({"method": "pdrop", "ratio": 0.5, "fastv_k": 2}, "option of method fastv / dart, not of method=pdrop"),
    ({"method": "dart", "ratio": 0.5, "pdrop_layers": "2/14/21"}, "option of method pdrop, not of method=dart"),
    ({"method": "a0", "ratio": 0.5, "compressor": "/x.pt"}, "only used by method=tcc"),
    ({"method": "uniform", "ratio": 0.5, "contextual_share": 0}, "option of method visionzip, not of method=uniform"),
    ({"method": "tcc", "ratio": 0.5, "positions": "sequential"}, "positions='sequential': expected original or"),
    ({"method": "random", "ratio": "abc"}, "ratio=abc: expected the kept fraction"),
    ({"method": "random", "ratio": 0.5, "seed": "x"}, "seed='x': expected an integer"),
    ({"method": "a0", "ratio": 0.5, "budget": "perimage"}, "budget='perimage': expected global or per_group"),
    ({"method": "fastv", "ratio": 0.5, "fastv_k": "abc"}, "fastv_k='abc': expected an integer"),
    ({"method": "fastv", "ratio": 0.5, "match": "kep"}, "match='kep': expected avg_retention or kept"),
    ({"method": "pdrop", "ratio": 0.5, "pdrop_layers": "x"}, "pdrop_layers='x': expected increasing layer"),
    ({"method": "pdrop", "ratio": 0.5, "pdrop_layers": "21/14/2"}, "pdrop_layers='21/14/2': expected increasing"),
    ({"method": "visionzip", "ratio": 0.5, "contextual_share": 2}, "contextual_share=2: expected a fraction"),
    ({"method": "tcc", "ratio": 0.5, "compressor": "/missing.pt"}, "'/missing.pt' does not exist"),
    ({"method": "random", "ratio": 0.5, "instruction_rows": "last"}, "option of method a0 / tcc, not of method=random"),
    ({"method": "a0", "ratio": 0.5, "instruction_rows": "first"}, "instruction_rows='first': expected after_last"),
    ({"method": "random", "ratio": 0.5, "keep_ratio": 0.25}, "ratio=0.5 and keep_ratio=0.25 name one setting"),
])
def test_bad_model_args_fail_before_loading(kwargs, message):
    from tcc_eval.integrations.lmms_eval.models import TCCSettings

    with pytest.raises((ValueError, FileNotFoundError), match=message):
        TCCSettings.pop_from(dict(kwargs), "qwen2_vl_tcc")



def _config_only(folder: Path, model_type: str) -> str:
    """A checkpoint folder with a config.json and no weights: enough for the checks made before loading."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return str(folder)


@pytest.mark.parametrize("wrapper,model_type,advice", [
    ("Qwen2VLTCC", "llava_onevision", "llava_onevision_tcc"),  # upstream: random weights, then an unpack error
    ("Qwen25VLTCCChat", "qwen2_vl", "qwen2_vl_tcc"),  # upstream: transformers' ignore_mismatched_sizes error
    ("LlavaOneVisionTCC", "qwen2_vl", "qwen2_vl_tcc"),  # upstream llava_hf: KeyError 'qwen2_vl'
    ("VilaTCC", "qwen2_5_vl", "qwen2_5_vl_tcc"),
    ("Qwen2VLTCC", "vila", "vila_tcc"),  # a VILA1.5 folder: told by its llm/ folder
])
def test_checkpoint_of_another_family_is_refused_before_loading(wrapper, model_type, advice, tmp_path):
    """Upstream would fail deep inside transformers or its own code; the config alone tells the family."""
    from tcc_eval.integrations.lmms_eval import models

    folder = _config_only(tmp_path / "ckpt", "llava_llama" if model_type == "vila" else model_type)
    if model_type == "vila":
        (tmp_path / "ckpt" / "llm").mkdir()
    with pytest.raises(ValueError, match=f"ckpt is a {model_type} checkpoint; use --model {advice} \\("):
        getattr(models, wrapper)(pretrained=folder, method="a0", ratio=0.5, device="cpu")


def test_hub_ids_are_checked_from_the_local_cache_only(tmp_path, monkeypatch):
    """A cached hub id is checked like a folder; an uncached one is left to upstream (no network here)."""
    from huggingface_hub import constants

    from tcc_eval.integrations.lmms_eval.models import check_checkpoint

    repo = tmp_path / "models--Org--Qwen"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc")
    _config_only(repo / "snapshots" / "abc", "qwen2_vl")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="pretrained=Org/Qwen is a qwen2_vl checkpoint; use --model qwen2_vl_tcc"):
        check_checkpoint("Org/Qwen", "llava_onevision_tcc", "llava_onevision")
    check_checkpoint("Org/Qwen", "qwen2_vl_tcc", "qwen2_vl")
    check_checkpoint("Org/Uncached", "llava_onevision_tcc", "llava_onevision")


def test_a_local_path_that_is_no_folder_is_named(tmp_path, monkeypatch):
    """Not HF's "Repo id must use alphanumeric chars": a path is no hub id."""
    from tcc_eval.integrations.lmms_eval.models import Qwen2VLTCC

    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    args = {"method": "a0", "ratio": 0.5, "device": "cpu"}
    for pretrained in ("/nonexistent", "./missing", "../missing", "~/missing_tcc_ckpt"):
        with pytest.raises(FileNotFoundError, match=f"pretrained={re.escape(pretrained)}: no such checkpoint folder"):
            Qwen2VLTCC(pretrained=pretrained, **args)
    folder = re.escape(str(tmp_path.resolve()))
    with pytest.raises(NotADirectoryError, match=f"pretrained=config.json is a file; pass its folder \\({folder}\\)"):
        Qwen2VLTCC(pretrained="config.json", **args)


def test_cli_shows_the_family_error(task_env, tmp_path):
    """lmms-eval catches errors raised while the model is built and logs them: ours must be what it logs."""
    folder = _config_only(tmp_path / "qwen", "qwen2_vl")
    proc = run_lmms_eval("llava_onevision_tcc", f"pretrained={folder},method=a0,ratio=0.5", tmp_path, task_env)
    log = proc.stdout + proc.stderr  # its log line goes to stdout, the traceback to stderr
    assert f"Error during evaluation: pretrained={folder} is a qwen2_vl checkpoint; use --model qwen2_vl_tcc" \
        in log, log[-3000:]
    assert "KeyError" not in log

def test_settings_pop_only_our_args():
    from tcc_eval.integrations.lmms_eval.models import TCCSettings

    kwargs = {"pretrained": "p", "method": "fastv", "keep_ratio": 0.25, "fastv_k": 3, "batch_size": 1}
    settings = TCCSettings.pop_from(kwargs, "qwen2_vl_tcc")
    assert kwargs == {"pretrained": "p", "batch_size": 1}
    assert (settings.method, settings.keep_ratio, settings.options) == ("fastv", 0.25, {"fastv_k": 3})
    kwargs = {"pretrained": "p", "method": "dart", "ratio": 0.5, "fastv_k": 1, "match": "kept"}
    settings = TCCSettings.pop_from(kwargs, "vila_tcc")
    assert (settings.method, settings.options) == ("dart", {"fastv_k": 1, "match": "kept"})
    settings = TCCSettings.pop_from({"pretrained": "p", "method": "pdrop", "ratio": 0.5, "match": "kept"},
                                    "qwen2_vl_tcc")
    assert (settings.method, settings.options) == ("pdrop", {"match": "kept"})
    kwargs = {"pretrained": "p", "method": "pdrop", "ratio": 0.25, "pdrop_layers": "2/14/21"}
    settings = TCCSettings.pop_from(kwargs, "qwen2_vl_tcc")
    assert kwargs == {"pretrained": "p"} and settings.options == {"pdrop_layers": "2/14/21"}
    kwargs = {"pretrained": "p", "method": "visionzip", "ratio": 0.25, "contextual_share": "0"}
    settings = TCCSettings.pop_from(kwargs, "llava_onevision_tcc")
    assert kwargs == {"pretrained": "p"} and settings.options == {"contextual_share": "0"}
    assert settings.positions == "original"
    kwargs = {"pretrained": "p", "method": "a0", "ratio": 0.25, "positions": "renumber"}
    settings = TCCSettings.pop_from(kwargs, "vila_tcc")
    assert kwargs == {"pretrained": "p"} and settings.positions == "renumber"
    kwargs = {"pretrained": "p", "method": "tcc", "ratio": 0.25, "instruction_rows": "last"}
    settings = TCCSettings.pop_from(kwargs, "qwen2_vl_tcc")
    assert kwargs == {"pretrained": "p"} and settings.options == {"instruction_rows": "last"}


def test_a_rerun_keeps_the_earlier_records_aside(tmp_path):
    """A rerun's records replace the earlier run's in the tables, as its results do; the earlier file is kept."""
    from tcc_eval.aggregate import aggregate
    from tcc_eval.integrations.lmms_eval.efficiency import EfficiencyLog

    stats = {"visual_before": 100, "visual_after": 50, "prefill_s": 1.0, "total_s": 2.0, "kv_cache_bytes": 1}
    for run, samples in (("full", range(6)), ("debug", range(2))):
        log = EfficiencyLog(tmp_path, "qwen2_vl_tcc", "/m/Qwen2-VL-7B", "tcc", 0.5)
        for index in samples:
            log.write("mme", index, {**stats, "prefill_s": 1.0 if run == "full" else 3.0})
    (current,) = tmp_path.glob("*_efficiency.jsonl")
    (earlier,) = tmp_path.glob("*_efficiency.jsonl.*")
    assert len(read_records(current)) == 2 and len(read_records(earlier)) == 6
    efficiency = aggregate(tmp_path).efficiency.set_index("dataset")
    assert efficiency.loc["ALL", "samples"] == 2 and efficiency.loc["ALL", "prefill_s_mean"] == 3.0


def test_records_write_tensor_and_numpy_scalars_as_numbers(tmp_path):
    """As VLMEvalKit's records do: a scalar written as text ("tensor(0.5000)") would not add up in the tables."""
    import numpy as np

    from tcc_eval.integrations.lmms_eval.efficiency import EfficiencyLog

    log = EfficiencyLog(tmp_path, "qwen2_vl_tcc", "/m/Qwen2-VL-7B", "tcc", 0.5)
    log.write("mme", 0, {"prefill_s": torch.tensor(0.5), "visual_after": np.int64(50)})
    (record,) = read_records(next(tmp_path.glob("*_efficiency.jsonl")))
    assert (record["prefill_s"], record["visual_after"]) == (0.5, 50)


def test_a_rerun_on_another_process_count_moves_the_earlier_layout_aside(tmp_path):
    """Files name rank and process count; a rerun on another count moves all of the earlier run's files aside
    (under --limit the tables would otherwise add the earlier run's other samples), and the processes of one run
    never move each other's."""
    from tcc_eval.aggregate import aggregate
    from tcc_eval.integrations.lmms_eval.efficiency import EfficiencyLog

    stats = {"visual_before": 100, "visual_after": 50, "total_s": 2.0, "kv_cache_bytes": 1}

    def run(world_size: int, samples: range, prefill_s: float) -> None:
        logs = [EfficiencyLog(tmp_path, "qwen2_vl_tcc", "/m/Qwen2-VL-7B", "tcc", 0.5, rank=r, world_size=world_size)
                for r in range(world_size)]
        for index in samples:  # the ranks interleave, as concurrent processes do
            logs[index % world_size].write("mme", index, {**stats, "prefill_s": prefill_s})

    def current() -> list[str]:
        return sorted(p.name.split("tcc-50_mme")[1] for p in tmp_path.glob("*_efficiency.jsonl"))

    (tmp_path / "qwen2_vl_tcc_Qwen2-VL-7B_tcc-50_mme_rank3_efficiency.jsonl").write_text("")  # an older version's
    run(4, range(8), 1.0)
    assert current() == [f"_rank{r}of4_efficiency.jsonl" for r in range(4)]
    run(2, range(2), 3.0)
    assert current() == ["_rank0of2_efficiency.jsonl", "_rank1of2_efficiency.jsonl"]
    efficiency = aggregate(tmp_path).efficiency.set_index("dataset")
    assert efficiency.loc["ALL", "samples"] == 2 and efficiency.loc["ALL", "prefill_s_mean"] == 3.0
    run(1, range(3), 5.0)
    assert current() == ["_efficiency.jsonl"]
    run(2, range(4), 7.0)
    assert current() == ["_rank0of2_efficiency.jsonl", "_rank1of2_efficiency.jsonl"]
    efficiency = aggregate(tmp_path).efficiency.set_index("dataset")
    assert efficiency.loc["ALL", "samples"] == 4 and efficiency.loc["ALL", "prefill_s_mean"] == 7.0
    kept = sum(len(read_records(p)) for p in tmp_path.glob("*_efficiency.jsonl.*"))
    assert kept == 8 + 2 + 3  # every earlier record is still on disk
    other_task = EfficiencyLog(tmp_path, "qwen2_vl_tcc", "/m/Qwen2-VL-7B", "tcc", 0.5)
    other_task.write("mmestar", 0, {**stats, "prefill_s": 1.0})
    assert len(list(tmp_path.glob("*_mme_rank*of2_efficiency.jsonl"))) == 2  # another task's run moves none


def test_efficiency_dir_resolution(tmp_path):
    from tcc_eval.integrations.lmms_eval.efficiency import resolve_efficiency_dir

    argv = ["--model", "m", "--output_path", str(tmp_path), "--limit", "4"]
    assert resolve_efficiency_dir(None, {}, argv) == tmp_path / "efficiency"
    assert resolve_efficiency_dir(None, {"TCC_EFFICIENCY_DIR": "/e"}, argv) == Path("/e")
    assert resolve_efficiency_dir("/x", {"TCC_EFFICIENCY_DIR": "/e"}, argv) == Path("/x")
    assert resolve_efficiency_dir(None, {}, ["--model", "m"]) is None


def test_task_prompt_and_scoring():
    from tcc_eval.lmms_tasks.tccsynth import doc_to_text, process_results

    doc = {"question": "What color is the circle?", "options": ["red", "green", "blue"], "answer": "B"}
    text = doc_to_text(doc, {"pre_prompt": "", "post_prompt": "Answer with the letter."})
    assert text == "What color is the circle?\nA. red\nB. green\nC. blue\nAnswer with the letter."
    # the labeller's rule (tcc_eval.answers), so a sample is never right to one and wrong to the other
    for response in ["B", "(B) green", "B. green", "green.", "Green", "B, green", "The answer is B."]:
        assert process_results(doc, [response]) == {"exact_match": 1.0}, response
    for response in [" C\n", "D", "Because", "A or B"]:  # D: only 3 options
        assert process_results(doc, [response]) == {"exact_match": 0.0}, response
    assert process_results(doc, ["B"]) == {"exact_match": 1.0}
    assert process_results(doc, ["A"]) == {"exact_match": 0.0}


def test_task_data_is_generated_once_with_absolute_paths(task_env):
    import datasets

    from tcc_eval.lmms_tasks.tccsynth import process_docs

    spec = datasets.Dataset.from_list([{"kind": "image", "n": 200, "seed": 0, "split": "test"}])
    docs = process_docs(spec)
    assert len(docs) == int(SYNTH_N)  # TCC_LMMS_SYNTH_N overrides the spec's n
    assert all(Path(p).is_absolute() and Path(p).exists() for p in docs["image_path"])
    assert set(docs["answer"]) <= set("ABCD")
    stamp = Path(docs[0]["image_path"]).stat().st_mtime
    process_docs(spec)
    assert Path(docs[0]["image_path"]).stat().st_mtime == stamp  # reused, not regenerated


def test_check_results_fails_loudly(tmp_path):
    with pytest.raises(RuntimeError, match="exits 0 even when evaluation crashes"):
        check_results(tmp_path)
    run = tmp_path / "model"
    run.mkdir()
    (run / "20260101_000000_results.json").write_text(json.dumps({"results": {"tccsynth_img": {}}}))
    assert check_results(tmp_path, tasks=["tccsynth_img"]) == run / "20260101_000000_results.json"
    with pytest.raises(RuntimeError, match="covers tasks"):
        check_results(tmp_path, tasks=["tccsynth_vid"])
    with pytest.raises(RuntimeError, match="older ones"):
        check_results(tmp_path, newer_than=time.time() + 60)


def test_check_results_names_an_unreadable_results_file(tmp_path):
    """A truncated results file (a run that died while writing it) is named, not just counted."""
    run = tmp_path / "model"
    run.mkdir()
    path = run / "20260101_000000_results.json"
    path.write_text(json.dumps({"results": {"tccsynth_img": {"acc": 1.0}}, "config": "x" * 400})[:200])
    with pytest.raises(RuntimeError, match=f"checked 1; unreadable, truncated or not JSON: {path} \\(JSONDecodeError"):
        check_results(tmp_path, tasks=["tccsynth_img"])


def test_results_cli_exit_codes(tmp_path, capsys):
    from tcc_eval.integrations.lmms_eval.results import main

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x_results.json").write_text(json.dumps({"results": {"tccsynth_img": {}}}))
    assert main([str(tmp_path), "--tasks", "tccsynth_img"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "m" / "x_results.json")
    assert main([str(tmp_path), "--tasks", "tccsynth_img,tccsynth_vid"]) == 1
    assert "covers tasks" in capsys.readouterr().err


@pytest.mark.parametrize("family,wrapper", [("qwen2_vl", "Qwen2VLTCC"), ("qwen2_5_vl", "Qwen25VLTCC"),
                                            ("qwen2_5_vl", "Qwen25VLTCCChat")])
def test_batch_records_name_their_docs(family, wrapper, tiny_checkpoints, task_manager, tmp_path):
    """A batched call's record names its batch's docs, every doc once, told by the docs upstream read: qwen2_5_vl
    builds every doc of a batch through the first request's callable, so the callables cannot tell them."""
    from tcc_eval.integrations.lmms_eval import models

    ours = getattr(models, wrapper)(pretrained=tiny_checkpoints[family], device="cpu", method="none", batch_size=3,
                                    efficiency_dir=str(tmp_path))
    # both tasks' 2 x 4 requests come in one call; upstream alone would batch them 3 + 3 + 2, one batch of two tasks
    _, answers = evaluate(ours, TASKS, task_manager)
    assert {task: sorted(answers[task]) for task in TASKS} == {task: list(range(LIMIT)) for task in TASKS}
    for task in TASKS:
        (path,) = tmp_path.glob(f"{ours.model_id}_*_none-100_{task}_efficiency.jsonl")
        records = read_records(path)
        assert sorted(r.get("batch_size", 1) for r in records) == [1, 3]
        indices = [r["index"] if isinstance(r["index"], list) else [r["index"]] for r in records]
        assert sorted(doc for index in indices for doc in index) == list(range(LIMIT))


def test_rank_padding_clones_run_unrecorded(tiny_checkpoints, task_manager, tmp_path):
    """lmms-eval evens out the ranks' shares with clones of a rank's last request (``__padding_only__``) and drops
    their answers: they still get one, but no record, and a batch never mixes them with real requests (the doc read
    twice would leave that record without an index, and its costs counted twice)."""
    from lmms_eval.evaluator import _clone_padding_request

    from tcc_eval.integrations.lmms_eval import models

    ours = models.Qwen2VLTCC(pretrained=tiny_checkpoints["qwen2_vl"], device="cpu", method="random", ratio=0.5,
                             batch_size=3, efficiency_dir=str(tmp_path))
    real_generate_until, answered = ours.generate_until, []

    def padded(requests):  # as lmms-eval pads a rank whose share is one short, and drops the clone's answer
        answers = real_generate_until([*requests, _clone_padding_request(requests[-1])])
        answered.append(len(answers))
        return answers[:-1]

    ours.generate_until = padded
    evaluate(ours, ["tccsynth_img"], task_manager)
    assert answered == [LIMIT + 1]
    (path,) = tmp_path.glob("*_tccsynth_img_efficiency.jsonl")
    records = read_records(path)
    assert sum(r.get("batch_size", 1) for r in records) == LIMIT
    indices = [r["index"] if isinstance(r["index"], list) else [r["index"]] for r in records]
    assert sorted(doc for index in indices for doc in index) == list(range(LIMIT))


def test_model_setup_errors_come_before_loading(tmp_path):
    """A dtype= the Qwen wrappers cannot cast to, and an efficiency folder that cannot be made, are named before
    the weights load (a folder with a config alone would fail later, inside transformers)."""
    from tcc_eval.integrations.lmms_eval import models

    folder = _config_only(tmp_path / "ckpt", "qwen2_vl")
    with pytest.raises(ValueError, match="dtype 'int8': expected a torch floating-point type"):
        models.Qwen2VLTCC(pretrained=folder, method="none", device="cpu", dtype="int8")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ValueError, match="efficiency records folder .*a_file/efficiency: .*Give a writable folder"):
        models.Qwen2VLTCC(pretrained=folder, method="none", device="cpu",
                          efficiency_dir=str(tmp_path / "a_file" / "efficiency"))


def test_dtype_auto_keeps_upstreams_choice(tiny_checkpoints, tmp_path):
    from tcc_eval.integrations.lmms_eval import models

    ours = models.Qwen2VLTCC(pretrained=tiny_checkpoints["qwen2_vl"], device="cpu", method="none", dtype="auto",
                             efficiency_dir=str(tmp_path))
    upstream = models.UpstreamQwen2VL(pretrained=tiny_checkpoints["qwen2_vl"], device="cpu", device_map="cpu")
    assert ours.model.dtype == upstream.model.dtype


def test_records_of_two_checkpoints_with_one_folder_name_stay_apart(tmp_path):
    """Fine-tuning runs name their checkpoints alike (checkpoint-1000): each checkpoint gets its own records file,
    and a rerun of one moves only its own aside."""
    from tcc_eval.integrations.lmms_eval.efficiency import EfficiencyLog

    stats = {"visual_before": 100, "visual_after": 50, "prefill_s": 1.0, "total_s": 2.0, "kv_cache_bytes": 1}
    for run in ("/ckpts/runA/checkpoint-1000", "/ckpts/runB/checkpoint-1000", "/ckpts/runB/checkpoint-1000/"):
        EfficiencyLog(tmp_path, "qwen2_vl_tcc", run, "random", 0.5).write("mme", 0, stats)
    files = sorted(tmp_path.glob("*_efficiency.jsonl"))
    assert len(files) == 2 and all("_checkpoint-1000-" in p.name for p in files)
    assert {read_records(p)[0]["base_model"].rstrip("/") for p in files} == {"/ckpts/runA/checkpoint-1000",
                                                                               "/ckpts/runB/checkpoint-1000"}
    assert len(list(tmp_path.glob("*_efficiency.jsonl.*"))) == 1  # runB's first run, kept aside


def test_efficiency_files_are_named_by_the_global_rank(tiny_checkpoints, monkeypatch, tmp_path):
    """Upstream's rank is the rank within a node; on two nodes both have a rank 0, and a file named by it would
    be truncated by the other node's process. The records take torchrun / accelerate's global RANK."""
    from tcc_eval.integrations.lmms_eval import models

    monkeypatch.setattr(models.Qwen2VLTCC, "world_size", property(lambda self: 16))
    monkeypatch.setenv("RANK", "9")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ours = models.Qwen2VLTCC(pretrained=tiny_checkpoints["qwen2_vl"], device="cpu", method="none",
                             efficiency_dir=str(tmp_path))
    assert ours.rank == 0  # this process alone: upstream's local rank
    assert ours.efficiency.path_for("mme").name.endswith("_mme_rank9of16_efficiency.jsonl")
    # torchrun on CPU: upstream's Accelerator sees one process, lmms-eval shards by RANK / WORLD_SIZE; one shared
    # file name would move the other rank's records aside
    monkeypatch.setattr(models.Qwen2VLTCC, "world_size", property(lambda self: 1))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ours = models.Qwen2VLTCC(pretrained=tiny_checkpoints["qwen2_vl"], device="cpu", method="none",
                             efficiency_dir=str(tmp_path))
    assert ours.efficiency.path_for("mme").name.endswith("_mme_rank1of2_efficiency.jsonl")
