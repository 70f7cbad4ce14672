"""VLMEvalKit integration: the literal `python -m vlmeval.run` through the .pth hook, Vanilla prompts equal
VLMEvalKit's own wrappers, TCC100 == Vanilla, efficiency records, and a hook that never breaks start-up.

Test-only bases (TQwen, TQwen25, TLlava) point at tiny checkpoints through TCC_EXTRA_MODELS; TQwen's TCC runs use
untrained compressors found through TCC_COMPRESSOR_DIR.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import site
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import torch

import model_registry
from model_registry import matrix
from tcc_eval.core import keep_count

PTH_NAME = "tcc_eval_vlmeval.pth"
N = 4  # samples per synthetic set (TCC_SYNTH_N)
MODELS = ("TQwen_Vanilla", "TQwen_TCC100", "TQwen_TCC50", "TLlava_Vanilla", "TLlava_Random50", "TLlava_VisionZip50",
          "TQwen25_VisionZip50")
DATASETS = ("TCCSynth_IMG", "TCCSynth_VID")
RECORD_KEYS = {
    "model", "framework", "dataset", "index", "method", "keep_ratio", "base_model", "visual_before", "visual_after",
    "seq_before", "seq_after", "prefill_s", "vision_s", "select_s", "total_s", "kv_cache_bytes", "new_tokens",
    "method_options",
}


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TCC_", "LMUData"))}
    env.update(OMP_NUM_THREADS="2", **extra)
    return env


def _installed_pth() -> Path:
    dirs = site.getsitepackages() + [site.getusersitepackages()]
    for d in dirs:
        if (Path(d) / PTH_NAME).is_file():
            return Path(d) / PTH_NAME
    pytest.fail(f"{PTH_NAME} is in none of {dirs}: install the package first (pip install -e .)")


# --- model matrix -----------------------------------------------------------------------------------
def test_matrix_names_and_parsing():
    specs = model_registry.expand()
    for name in ("Qwen2VL_TCC50", "Qwen2VL_TCC25", "LLaVAOV_TCC50", "Qwen2VL_Random25", "Qwen2VL_A025",
                 "Qwen2VL_FastV25", "Qwen2VL_Oracle50", "Qwen2VL_Vanilla", "Qwen2VL2B_TCC75", "LLaVAOV05B_TCC100",
                 "TinyQwen2VL_TCC50", "TinyLLaVAOV_Vanilla", "Qwen2VL_DART25", "VILA15_DART50", "TinyVILA_DivPrune25",
                 "LLaVAOV_PDrop50", "TinyVILA_PDrop75", "Qwen25VL_TCC50", "Qwen25VL3B_VisionZip25"):
        assert name in specs, name
    assert "Qwen2VL_Random100" not in specs  # 100 only for TCC, the equality check
    assert specs["Qwen2VL_A025"].method == "a0" and specs["Qwen2VL_A025"].keep_ratio == 0.25
    assert specs["Qwen2VL_DART25"].method == "dart" and specs["Qwen2VL_DART25"].keep_ratio == 0.25
    assert specs["LLaVAOV_PDrop50"].method == "pdrop" and specs["LLaVAOV_PDrop50"].keep_ratio == 0.5
    assert specs["LLaVAOV_Vanilla"].method == "none" and specs["LLaVAOV_Vanilla"].keep_ratio == 1.0
    assert specs["Qwen2VL_TCC50"].base.hf_id == "Qwen/Qwen2-VL-7B-Instruct"
    assert specs["Qwen25VL_TCC50"].base.hf_id == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert specs["LLaVAOV05B_TCC50"].base.hf_id == "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
    for name, spec in specs.items():
        assert model_registry.parse_name(name) == spec
    assert model_registry.parse_name("Qwen2VL_TCC10").keep_ratio == 0.1  # any ratio parses
    for bad, reason in (("Qwen2VL_Magic50", "is not a tcc-eval model name"), ("Nope_TCC50", "is not a tcc-eval model name"),
                        ("Qwen2VL_TCC", "is not a tcc-eval model name"),
                        ("Qwen2VL_TCC0", "keep ratio 0% must be within 1..100"),
                        ("Qwen2VL_TCC150", "keep ratio 150% must be within 1..100")):
        with pytest.raises(ValueError, match=f"'{bad}'.*{reason}"):
            model_registry.parse_name(bad)


def test_extra_models_env(tiny_checkpoints, monkeypatch):
    qwen, llava = tiny_checkpoints["qwen2_vl"], tiny_checkpoints["llava_onevision"]
    bases = matrix.extra_bases(f"A={qwen}, B={llava}")
    assert (bases["A"].family, bases["B"].family) == ("qwen2_vl", "llava_onevision")
    bases = matrix.extra_bases(json.dumps({"C": {"path": qwen, "max_new_tokens": 3}}))
    assert bases["C"].options == {"max_new_tokens": 3} and bases["C"].path == qwen
    monkeypatch.setenv(matrix.EXTRA_MODELS_ENV, f"Mine={qwen}")
    assert model_registry.parse_name("Mine_Random50").base.path == qwen
    for bad, msg in (("A", "not NAME=PATH"), ("A_b=/x", "letters and digits"), ("A=/does/not/exist", "model_type"),
                     ("{bad json", "not valid JSON"), (f"Qwen2VL={qwen}", "redefines declared bases")):
        monkeypatch.setenv(matrix.EXTRA_MODELS_ENV, bad)
        with pytest.raises(ValueError, match=msg):
            model_registry.expand()


def test_model_path_resolution(monkeypatch, tmp_path):
    base = model_registry.BASES["Qwen2VL"]
    monkeypatch.delenv("TCC_MODEL_PATH_QWEN2VL", raising=False)
    assert model_registry.resolve_model_path(base) == "Qwen/Qwen2-VL-7B-Instruct"
    monkeypatch.setenv("TCC_MODEL_PATH_QWEN2VL", str(tmp_path))
    assert model_registry.resolve_model_path(base) == str(tmp_path)
    assert model_registry.resolve_model_path(base, "/explicit") == "/explicit"  # e.g. from --config JSON
    with pytest.raises(NotImplementedError, match="VILA1.5"):
        model_registry.resolve_model_path(model_registry.BASES["VILA1540B"])
    import tcc_eval.demo

    demo = model_registry.BASES["TinyQwen2VL"]
    monkeypatch.setattr(tcc_eval.demo, "paths", lambda: {"qwen2_vl": {"model": str(tmp_path)}})
    assert model_registry.resolve_model_path(demo) == str(tmp_path)
    monkeypatch.setattr(tcc_eval.demo, "paths", lambda: {"qwen2_vl": {"model": str(tmp_path / "missing")}})
    with pytest.raises(FileNotFoundError, match="not built yet.*python -m tcc_eval.demo build"):
        model_registry.resolve_model_path(demo)
    monkeypatch.setattr(tcc_eval.demo, "paths", dict)
    with pytest.raises(RuntimeError, match="no entry for TinyQwen2VL.*TCC_MODEL_PATH_TINYQWEN2VL"):
        model_registry.resolve_model_path(demo)


def test_compressor_lookup(monkeypatch, tmp_path):
    base = model_registry.BASES["Qwen2VL"]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(model_registry.COMPRESSOR_DIR_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=r"Qwen2VL_video\.pt.*python -m tcc_eval\.compressor train"):
        model_registry.resolve_compressor(base, "video")
    default = tmp_path / "home/.cache/tcc_eval/compressors/Qwen2VL_video.pt"
    default.parent.mkdir(parents=True)
    default.touch()
    assert model_registry.resolve_compressor(base, "video") == str(default)
    monkeypatch.setenv(model_registry.COMPRESSOR_DIR_ENV, str(tmp_path))
    (tmp_path / "Qwen2VL_video.pt").touch()
    assert model_registry.resolve_compressor(base, "video") == str(tmp_path / "Qwen2VL_video.pt")
    assert model_registry.resolve_compressor(base, "video", "/x.pt") == "/x.pt"
    assert model_registry.resolve_compressor(base, "image", {"image": "/i.pt", "video": "/v.pt"}) == "/i.pt"


def test_compressor_lookup_refuses_what_would_fall_through_to_another_compressor(monkeypatch, tmp_path):
    """A misspelt modality key, a TCC_COMPRESSOR_DIR that is no folder, and a folder where the file should be each
    went on to the next place looked at (for a demo base: its shipped compressor), named only in a log line."""
    base = model_registry.BASES["Qwen2VL"]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cached = tmp_path / "home/.cache/tcc_eval/compressors/Qwen2VL_image.pt"
    cached.parent.mkdir(parents=True)
    cached.touch()
    monkeypatch.delenv(model_registry.COMPRESSOR_DIR_ENV, raising=False)
    with pytest.raises(ValueError, match="keys 'img', 'vid': a modality is one of image, video"):
        model_registry.resolve_compressor(base, "image", {"img": "/i.pt", "vid": "/v.pt"})
    monkeypatch.setenv(model_registry.COMPRESSOR_DIR_ENV, str(tmp_path / "typo"))
    with pytest.raises(ValueError, match=f"TCC_COMPRESSOR_DIR={tmp_path / 'typo'} is not a folder: point it at the "
                                         "folder holding Qwen2VL_image.pt, or unset it"):
        model_registry.resolve_compressor(base, "image")
    (tmp_path / "mine/Qwen2VL_image.pt").mkdir(parents=True)
    monkeypatch.setenv(model_registry.COMPRESSOR_DIR_ENV, str(tmp_path / "mine"))
    with pytest.raises(ValueError, match="Qwen2VL_image.pt is not a compressor file"):
        model_registry.resolve_compressor(base, "image")
    monkeypatch.delenv(model_registry.COMPRESSOR_DIR_ENV)
    assert model_registry.resolve_compressor(base, "image") == str(cached)


def test_demo_compressor_lookup(monkeypatch, tmp_path):
    import tcc_eval.demo

    demo = model_registry.BASES["TinyLLaVAOV"]
    shipped = tmp_path / "shipped_image.pt"
    monkeypatch.setattr(tcc_eval.demo, "paths",
                        lambda: {"llava_onevision": {"model": "/m", "compressor_image": str(shipped)}})
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "mine").mkdir()
    monkeypatch.setenv(model_registry.COMPRESSOR_DIR_ENV, str(tmp_path / "mine"))
    with pytest.raises(FileNotFoundError, match="shipped_image.pt.*python -m tcc_eval.demo build"):
        model_registry.resolve_compressor(demo, "image")
    shipped.touch()
    assert model_registry.resolve_compressor(demo, "image") == str(shipped)
    (tmp_path / "mine/TinyLLaVAOV_image.pt").touch()  # the env dir overrides the shipped file
    assert model_registry.resolve_compressor(demo, "image") == str(tmp_path / "mine/TinyLLaVAOV_image.pt")


# --- in-process VLMEvalKit pieces -------------------------------------------------------------------
@pytest.fixture(scope="module")
def registered():
    from tcc_eval.integrations.vlmeval import register

    return register()


def test_registration_tables(registered):
    from vlmeval.config import supported_VLM
    from vlmeval.dataset import DATASET_MODALITY, DATASET_TYPE
    from vlmeval.dataset.video_dataset_config import supported_video_datasets

    from tcc_eval.integrations.vlmeval.register import KnownKwargsPartial
    from tcc_eval.integrations.vlmeval.wrappers import (
        TCCLLaVAOneVisionHF,
        TCCQwen2VLChat,
    )

    assert {"Qwen2VL_TCC50", "LLaVAOV_Vanilla", "TinyQwen2VL_TCC50"} <= set(registered)
    entry = supported_VLM["Qwen2VL_TCC50"]
    assert entry.func is TCCQwen2VLChat and entry.keywords["method"] == "tcc" and entry.keywords["keep_ratio"] == 0.5
    assert entry.keywords["min_pixels"] == 1280 * 28 * 28  # VLMEvalKit's own Qwen2-VL setting
    qwen25 = supported_VLM["Qwen25VL_VisionZip25"]
    assert qwen25.func is TCCQwen2VLChat and qwen25.keywords["method"] == "visionzip"
    # VLMEvalKit's own Qwen2.5-VL-7B-Instruct entry: same pixel limits, no custom prompts
    settings = ("min_pixels", "max_pixels", "use_custom_prompt")
    assert {k: qwen25.keywords[k] for k in settings} == {
        k: supported_VLM["Qwen2.5-VL-7B-Instruct"].keywords[k] for k in settings}
    assert supported_VLM["LLaVAOV05B_A025"].func is TCCLLaVAOneVisionHF
    with pytest.raises(NotImplementedError, match="VILA1.5"):
        supported_VLM["VILA1540B_TCC25"]()
    assert DATASET_MODALITY("TCCSynth_VID") == "VIDEO" and DATASET_TYPE("TCCSynth_VID") == "Video-MCQ"
    assert DATASET_MODALITY("TCCSynth_IMG") == "IMAGE" and DATASET_TYPE("TCCSynth_IMG") == "MCQ"
    # the ms-vlmeval 0.0.20 kwargs bug workaround covers every video preset, and stays a partial
    assert all(isinstance(e, KnownKwargsPartial) for e in supported_video_datasets.values())
    assert supported_video_datasets["MVBench_8frame"].func.__name__ == "MVBench"


def test_tcc_without_compressor_fails_before_loading(registered, monkeypatch, tmp_path):
    from vlmeval.config import supported_VLM

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(model_registry.COMPRESSOR_DIR_ENV, raising=False)
    monkeypatch.setenv("TCC_MODEL_PATH_QWEN2VL", str(tmp_path / "never_loaded"))
    with pytest.raises(FileNotFoundError, match="no trained image compressor for Qwen2VL.*tcc_eval.compressor train"):
        supported_VLM["Qwen2VL_TCC50"]()


def test_config_json_passes_method_options(registered):
    """A --config JSON entry without "class" calls the registered name with its options, e.g. PyramidDrop's
    stage layers (``pdrop_layers``); a bad option or a retention below the stages' floor fails at start-up."""
    from vlmeval.run import build_model_from_config

    config = {"TinyQwen2VL_PDrop50": {"method_options": {"pdrop_layers": [1, 3]}},
              "TinyQwen2VL_PDrop75": {"method_options": {"pdrop_layers": [0, 3]}}}
    model = build_model_from_config(config, "TinyQwen2VL_PDrop50")
    assert model.pruned_model("image").stage_layers == (1, 3) and model.method == "pdrop"
    with pytest.raises(ValueError, match=r"pdrop_layers=\[0, 3\]: expected increasing layer indices from 1"):
        build_model_from_config(config, "TinyQwen2VL_PDrop75")
    with pytest.raises(ValueError, match="floor 1/4"):
        build_model_from_config({"TinyQwen2VL_PDrop25": {}}, "TinyQwen2VL_PDrop25")
    tcc = {"TinyQwen2VL_TCC50": {"method_options": {"instruction_rows": "last"}}}  # its compressors: the default
    with pytest.raises(ValueError, match="instruction_rows=after_last_visual, but this run asks for "
                                         "instruction_rows=last: pass instruction_rows=after_last_visual"):
        build_model_from_config(tcc, "TinyQwen2VL_TCC50")
    with pytest.raises(ValueError, match="unknown method option 'instrucion_rows'; the options are budget, "
                                         "contextual_share, fastv_k, instruction_rows"):
        build_model_from_config({"TinyQwen2VL_A050": {"method_options": {"instrucion_rows": "last"}}},
                                "TinyQwen2VL_A050")
    with pytest.raises(ValueError, match="instruction_rows='lst': expected after_last_visual or"):
        build_model_from_config({"TinyQwen2VL_A050": {"method_options": {"instruction_rows": "lst"}}},
                                "TinyQwen2VL_A050")
    for name in ("TinyQwen2VL_TCC50", "TinyLLaVAOV_TCC50", "TinyVILA_TCC50"):  # VLMEvalKit's classes drop unknowns
        with pytest.raises(ValueError, match="unknown model option 'compressr': did you mean 'compressor'"):
            build_model_from_config({name: {"compressr": "elsewhere.pt"}}, name)


def test_config_entries_cannot_change_what_the_name_says(registered):
    """An entry without "class" is called with its keys: a method or ratio there would run under (and be tabled by)
    a name that says another."""
    from vlmeval.run import build_model_from_config

    for options, key in (({"method": "random", "keep_ratio": 0.02}, "method='tcc'"),
                         ({"keep_ratio": 0.25}, "keep_ratio=0.5"), ({"base": "TinyLLaVAOV"}, "base='TinyQwen2VL'")):
        with pytest.raises(ValueError, match=f"TinyQwen2VL_TCC50 runs {key}, as its name says, but its --config entry "
                                             f"sets"):
            build_model_from_config({"TinyQwen2VL_TCC50": options}, "TinyQwen2VL_TCC50")
    same = build_model_from_config({"TinyQwen2VL_A050": {"keep_ratio": "0.5", "method": "a0"}}, "TinyQwen2VL_A050")
    assert (same.method, same.keep_ratio) == ("a0", 0.5)  # what the name says, as a config file may write it


def test_a_second_variant_of_a_name_in_one_folder_is_refused(registered, tmp_path):
    """VLMEvalKit resumes from any prediction file of a name in its folder, --reuse or not: a variant with other
    --config options would report the first variant's answers. Checked through VLMEvalKit's own infer_data_job."""
    from types import SimpleNamespace

    import pandas as pd
    from vlmeval.inference import infer_data_job
    from vlmeval.inference_video import infer_data_job_video

    from tcc_eval.demo import paths
    from tcc_eval.integrations.vlmeval.records import append_record, check_same_variant, records_path, variant_of

    name = "TinyQwen2VL_A050"
    plain = variant_of(name, name)  # a name VLMEvalKit builds inside infer_data: its registered keywords
    assert plain == {"method": "a0", "keep_ratio": 0.5, "method_options": {"fastv_k": 1},  # the tiny base's option
                     "model_path": paths()["qwen2_vl"]["model"]}
    assert variant_of(SimpleNamespace(tcc_variant=lambda: plain), name) == plain
    assert variant_of("GPT4V", "GPT4V") is None and variant_of(SimpleNamespace(), "GPT4V") is None
    folder = tmp_path / name
    records = records_path(folder, name, "TCCSynth_IMG")
    append_record(records, {"index": 0, **plain, "method_options": {"budget": "per_group", "fastv_k": 1}})
    dataset = SimpleNamespace(dataset_name="TCCSynth_IMG", data=pd.DataFrame({"index": [0]}))
    expected = (r"holds TinyQwen2VL_A050_TCCSynth_IMG results of another variant \(method=a0 keep_ratio=0.5 "
                r"budget=per_group; this run: method=a0 keep_ratio=0.5\).*give this run its own --work-dir")
    with pytest.raises(ValueError, match=expected):
        infer_data_job(name, work_dir=str(folder), model_name=name, dataset=dataset)
    # the video job returns a complete prediction file's answers before infer_data: checked before it too
    video_records = records_path(folder, name, "TCCSynth_VID_4frame")
    append_record(video_records, {"index": 0, **plain, "method": "random"})
    with pytest.raises(ValueError, match=r"TCCSynth_VID_4frame results of another variant \(method=random"):
        infer_data_job_video(name, str(folder), name, SimpleNamespace(dataset_name="TCCSynth_VID"),
                             result_file=str(folder / f"{name}_TCCSynth_VID_4frame.xlsx"))
    same = records_path(folder, name, "TCCSynth_VID")
    append_record(same, {"index": 0, **plain, "method_options": {"budget": "global", "seed": 3}})  # as the tables
    with same.open("a") as handle:  # see it: a0 at its default budget, and a seed a0 does not read
        handle.write('{"index": 1, "meth')  # a line cut short by a killed run
    check_same_variant(same, plain)  # the same variant resumes

    # another checkpoint or compressor under the name (a --config model_path / compressor, an env override): refused
    tcc = variant_of("TinyQwen2VL_TCC50", "TinyQwen2VL_TCC50")
    assert tcc["compressors"] == {m: paths()["qwen2_vl"][f"compressor_{m}"] for m in ("image", "video")}
    records = records_path(tmp_path / "tcc", "TinyQwen2VL_TCC50", "TCCSynth_IMG")
    record = {"index": 0, "method": "tcc", "keep_ratio": 0.5, "method_options": {"fastv_k": 1}, "modality": "image",
              "model_path": tcc["model_path"], "compressor": tcc["compressors"]["image"]}
    append_record(records, record)
    check_same_variant(records, tcc)
    link = tmp_path / "same_model"
    link.symlink_to(tcc["model_path"])
    check_same_variant(records, {**tcc, "model_path": str(link)})  # one checkpoint, written another way
    with pytest.raises(ValueError, match=r"results of another checkpoint \(.*qwen2_vl; this run: /other/ckpt\)"):
        check_same_variant(records, {**tcc, "model_path": "/other/ckpt"})
    retrained = {**tcc, "compressors": {**tcc["compressors"], "image": "/new/qwen2_vl_image.pt"}}
    with pytest.raises(ValueError, match=r"results of another image compressor \(.*qwen2_vl_image.pt; this run: "
                                         r"/new/qwen2_vl_image.pt\).*give this run its own --work-dir"):
        check_same_variant(records, retrained)
    check_same_variant(records, {**tcc, "compressors": {"video": "/new/qwen2_vl_video.pt"}})  # not this modality's
    # records of this version also hash the compressor: one retrained into the same file is another compressor
    assert tcc["compressor_sha1s"]["image"] == hashlib.sha1(Path(tcc["compressors"]["image"]).read_bytes()).hexdigest()
    hashed = records_path(tmp_path / "hashed", "TinyQwen2VL_TCC50", "TCCSynth_IMG")
    append_record(hashed, {**record, "compressor_sha1": "0" * 40})
    with pytest.raises(ValueError, match=r"another image compressor \(.*qwen2_vl_image.pt, sha1 000000000000; this "
                                         r"run: .*qwen2_vl_image.pt, sha1 [0-9a-f]{12}\)"):
        check_same_variant(hashed, tcc)
    copied = tmp_path / "copy_of_image.pt"  # the same weights under another name: the same compressor
    copied.write_bytes(Path(tcc["compressors"]["image"]).read_bytes())
    same_weights = records_path(tmp_path / "copied", "TinyQwen2VL_TCC50", "TCCSynth_IMG")
    append_record(same_weights, {**record, "compressor": str(copied),
                                 "compressor_sha1": tcc["compressor_sha1s"]["image"]})
    check_same_variant(same_weights, tcc)


def test_config_entries_under_torchrun_keep_the_world_size(registered, monkeypatch):
    """VLMEvalKit hides WORLD_SIZE while it builds a model and, for a --config entry without "class", never puts it
    back: each torchrun rank would then infer the whole dataset. Ours put it back."""
    import torch.distributed as dist
    from vlmeval.run import build_model_from_config
    from vlmeval.smp import get_rank_and_world_size

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)  # as VLMEvalKit's main has it under torchrun
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    build_model_from_config({"TinyQwen2VL_A050": {"method_options": {"budget": "per_group"}}}, "TinyQwen2VL_A050")
    assert get_rank_and_world_size() == (1, 2)


def test_rank_device_per_torchrun_rank(monkeypatch):
    from tcc_eval.integrations import rank_device

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # all GPUs visible: rank r takes cuda:r
    assert rank_device() == torch.device("cuda", 2) and chosen == [2]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # VLMEvalKit narrowed CUDA_VISIBLE_DEVICES
    assert rank_device() == torch.device("cuda", 0)
    assert rank_device("cpu") == torch.device("cpu")


def test_video_preset_drops_cli_kwargs():
    from tcc_eval.integrations.vlmeval.register import KnownKwargsPartial

    class Dataset:
        def __init__(self, dataset="X", nframe=0, fps=-1):
            self.args = (dataset, nframe, fps)

    preset = KnownKwargsPartial(Dataset, dataset="X", nframe=8)
    # what run.py passes: vars(args), including `data` and an unrelated fps default
    built = preset(data=["X"], model=["M"], work_dir="out", fps=-1, nframe=0)
    assert built.args == ("X", 8, -1)


def test_records_use_the_run_dataset_name():
    from types import SimpleNamespace

    from tcc_eval.integrations.vlmeval.records import run_dataset_name

    mvbench = SimpleNamespace(dataset_name="MVBench")
    assert run_dataset_name("M_TCC50", mvbench, "/w/M_TCC50/02_M_TCC50_MVBench_8frame.pkl") == "MVBench_8frame"
    image = SimpleNamespace(dataset_name="TCCSynth_IMG")
    assert run_dataset_name("M_TCC50", image, "/w/M_TCC50/01_TCCSynth_IMG.pkl") == "TCCSynth_IMG"
    assert run_dataset_name("M_TCC50", image, None) == "TCCSynth_IMG"
    assert run_dataset_name("M_TCC50", mvbench, None, "/w/M_TCC50/M_TCC50_MVBench_8frame.xlsx") == "MVBench_8frame"


def test_bad_names_of_ours_stop_with_the_reason(tmp_path):
    """A name that reads as ours but is not valid stops before VLMEvalKit, which would log a bare KeyError per
    dataset and exit 0; names that are not ours are left to VLMEvalKit."""
    from tcc_eval.integrations.vlmeval.register import BadModelName, reads_as_ours, register_names

    for name, reason in (("Qwen2VL_TCC150", "keep ratio 150% must be within 1..100"),
                         ("Qwen2Vl_TCC50", "is not a tcc-eval model name"), ("Qwen2VL_Vanila", "Base in")):
        assert reads_as_ours(name)
        with pytest.raises(BadModelName, match=reason):
            register_names([name])
    assert not any(reads_as_ours(name) for name in ("GPT4o", "InternVL2_5-8B", "Pixtral_12B", "llava_v1.5_7b"))
    assert register_names(["GPT4o_HIGH", "Qwen2VL_TCC10"]) == ["Qwen2VL_TCC10"]
    proc = subprocess.run([sys.executable, "-m", "vlmeval.run", "--model", "Qwen2VL_TCC150", "--data", "TCCSynth_IMG",
                           "--work-dir", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0 and "tcc-eval: 'Qwen2VL_TCC150': keep ratio 150%" in proc.stderr, proc.stderr[-2000:]


def test_a_malformed_extra_models_setting_stops_a_run_of_our_names(tmp_path, monkeypatch):
    """TCC_EXTRA_MODELS that does not parse left every name of ours unregistered: VLMEvalKit then logged a KeyError
    per dataset and exited 0 (and ``python -m tcc_eval.run`` ended in a traceback). Both now stop with the reason."""
    import importlib

    from tcc_eval.run import main

    registration = importlib.import_module("tcc_eval.integrations.vlmeval.register")  # the package exports register()
    importlib.import_module("vlmeval.vlm")  # with the setting still valid: its import fires the start-up hook

    reason = "tcc-eval: TCC_EXTRA_MODELS: 'Mine' is not NAME=PATH"
    argv = ["--model", "Qwen2VL_TCC50", "--data", "TCCSynth_IMG", "--work-dir", str(tmp_path)]
    monkeypatch.setenv("TCC_EXTRA_MODELS", "Mine")
    # the start-up hook's registration in `python -m vlmeval.run ARGV`, which lets BadModelName through (the
    # subprocess run of test_bad_names_of_ours_stop_with_the_reason shows that path end to end)
    monkeypatch.setattr(registration, "vlmeval_cli_args", lambda: argv)
    with pytest.raises(registration.BadModelName, match=f"^{reason}$"):
        registration.register()
    monkeypatch.setattr(registration, "vlmeval_cli_args", lambda: ["--model", "GPT4o", "--data", "MME"])
    with pytest.raises(ValueError, match="is not NAME=PATH"):  # not ours: one line, and VLMEvalKit runs on
        registration.register()
    with pytest.raises(SystemExit, match=f"^{reason}$"):
        main(argv)


def test_run_entry_parses_models():
    from tcc_eval.integrations.vlmeval.register import requested_models

    argv = ["--model", "A_TCC50", "B_Vanilla", "--data", "D", "--model=C_TCC10", "--verbose"]
    assert requested_models(argv) == ["A_TCC50", "B_Vanilla", "C_TCC10"]


def test_config_models_with_a_class_are_left_to_vlmevalkit(tmp_path):
    """A --config entry naming its "class" is built by VLMEvalKit from that class (ours are exposed for it): it
    needs no registration, whatever its name, and is never refused as a bad name of ours."""
    from tcc_eval.integrations.vlmeval.register import requested_models, vlmeval_cli_args

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"model": {"Qwen2VL_fp16": {"class": "TCCQwen2VLChat", "base": "Qwen2VL"},
                                            "Qwen2VL_TCC150": {}}, "data": {}}))
    assert requested_models(["--config", str(config)]) == ["Qwen2VL_TCC150"]
    run = ["--model", "X"]
    for argv in (["python3", "-m", "vlmeval.run", *run], ["python3", "-u", "-m", "vlmeval", *run],
                 ["python3", "-W", "ignore", "-u", "/site/vlmeval/run.py", *run]):  # the last as torchrun starts it
        assert vlmeval_cli_args(argv) == run, argv
    for argv in (["python3", "-m", "pytest", *run], ["python3", "tool.py", "-m", "vlmeval.run"],
                 ["python3", "-c", "x"]):
        assert vlmeval_cli_args(argv) is None, argv


class Recorder:
    """Stands in for the generating model: records what reaches ``generate`` and answers 'A'."""

    def __init__(self, answer_id: int):
        self.answer_id = answer_id
        self.calls: list[dict] = []
        self.last_stats: dict = {}

    def generate(self, **kwargs):
        self.calls.append(kwargs)
        ids = kwargs["input_ids"]
        return torch.cat([ids, torch.full((ids.shape[0], 1), self.answer_id)], dim=1)


def _upstream(cls, family_ckpt: str, **kwargs):
    """VLMEvalKit's own wrapper, built on CPU by stubbing its GPU check and weight loading."""
    import transformers

    hf_cls = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
              "llava_onevision": "LlavaOnevisionForConditionalGeneration"}
    family = json.loads((Path(family_ckpt) / "config.json").read_text())["model_type"]
    with mock.patch("vlmeval.vlm.qwen2_vl.model.get_gpu_memory", return_value=[80_000]), \
            mock.patch.object(getattr(transformers, hf_cls[family]), "from_pretrained", return_value=mock.MagicMock()):
        return cls(model_path=family_ckpt, **kwargs)


@pytest.mark.parametrize("family, base", [("qwen2_vl", "Qwen2VL"), ("qwen2_5_vl", "Qwen25VL"),
                                          ("llava_onevision", "LLaVAOV")])
def test_vanilla_matches_vlmevalkit_wrapper(registered, tiny_checkpoints, tmp_path, family, base):
    """Same constructor state (with the options VLMEvalKit's config gives the base's checkpoint) and, for the same
    message, the same tensors reach generate()."""
    from vlmeval.vlm import LLaVA_OneVision_HF, Qwen2VLChat

    from tcc_eval import synth
    from tcc_eval.integrations.vlmeval.datasets import mcq_prompt
    from tcc_eval.integrations.vlmeval.wrappers import WRAPPERS

    ckpt = tiny_checkpoints[family]
    options = matrix.BASES[base].options
    upstream = _upstream(LLaVA_OneVision_HF if family == "llava_onevision" else Qwen2VLChat, ckpt, **options)
    ours = WRAPPERS[family](base=base, model_path=ckpt, method="none", **options)
    ignore = {"model", "processor"}
    state = {k: v for k, v in vars(upstream).items() if k not in ignore}
    assert state == {k: vars(ours)[k] for k in state}

    sample = synth.generate("image", 1, seed=3)[0]
    image = tmp_path / "0.png"
    sample.image.save(image)
    line = {"question": sample.question, **sample.options}
    message = [{"type": "image", "value": str(image)}, {"type": "text", "value": mcq_prompt(line)}]
    answer = ours.processor.tokenizer.convert_tokens_to_ids("A")
    # the one change our wrappers make to VLMEvalKit's path: `.to('cuda')` goes to our device and dtype
    upstream.processor = ours.processor_proxy(upstream.processor, torch.device("cpu"), torch.float32)
    upstream.model, ours._pruned["any"] = Recorder(answer), Recorder(answer)
    assert upstream.generate(message, dataset="TCCSynth_IMG") == ours.generate(message, dataset="TCCSynth_IMG") == "A"
    (theirs,), (mine,) = upstream.model.calls, ours._pruned["any"].calls
    assert theirs.keys() == mine.keys()
    for key, value in theirs.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, mine[key]), key
        else:
            assert value == mine[key], key


def test_qwen25_videos_carry_the_frame_rate_they_were_sampled_at(registered, tiny_checkpoints, tmp_path):
    """Qwen2VLChat hands the processor bare frames, which transformers 5 times at 24 fps: Qwen2.5-VL's temporal ids
    (second_per_grid_ts) would squeeze the clip. Ours passes the timing qwen_vl_utils sampled, and nothing else
    differs from VLMEvalKit's inputs."""
    import qwen_vl_utils
    from vlmeval.vlm import Qwen2VLChat

    from tcc_eval import synth
    from tcc_eval.integrations.vlmeval.wrappers import TCCQwen2VLChat

    synth.export_vlmeval_video(synth.generate("video", 1, seed=0), tmp_path)
    video = str(tmp_path / "videos/0.mp4")
    message = [{"type": "video", "value": video}, {"type": "text", "value": "What appeared?"}]
    ckpt, options = tiny_checkpoints["qwen2_5_vl"], matrix.BASES["Qwen25VL"].options
    upstream = _upstream(Qwen2VLChat, ckpt, **options)
    ours = TCCQwen2VLChat(base="Qwen25VL", model_path=ckpt, method="none", **options)
    upstream.processor = ours.processor_proxy(upstream.processor, torch.device("cpu"), torch.float32)
    upstream.model, ours._pruned["any"] = Recorder(0), Recorder(0)
    original = qwen_vl_utils.process_vision_info
    upstream.generate(message, dataset="TCCSynth_VID")
    ours.generate(message, dataset="TCCSynth_VID")
    assert qwen_vl_utils.process_vision_info is original  # put back after the call
    (theirs,), (mine,) = upstream.model.calls, ours._pruned["any"].calls
    # the rate qwen_vl_utils itself reports for the frames it sampled (the synthetic clips run at 1 fps)
    _, _, timing = original([[{"role": "user", "content": ours._prepare_content(message, "TCCSynth_VID")}]],
                            return_video_kwargs=True)
    patch = ours.processor.video_processor.temporal_patch_size
    assert mine["second_per_grid_ts"].tolist() == pytest.approx([patch / fps for fps in timing["fps"]])
    assert theirs["second_per_grid_ts"].tolist() == pytest.approx([patch / 24])  # transformers' default
    assert mine["second_per_grid_ts"].tolist() != pytest.approx(theirs["second_per_grid_ts"].tolist())
    for key in ("input_ids", "pixel_values_videos", "video_grid_thw", "attention_mask"):
        assert torch.equal(theirs[key], mine[key]), key


def test_llava_video_prompt_drops_only_the_stray_image_token(registered, tiny_checkpoints, tmp_path):
    from tcc_eval import synth
    from tcc_eval.integrations.vlmeval.wrappers import TCCLLaVAOneVisionHF

    sample = synth.generate("video", 1, seed=0)[0]
    synth.export_vlmeval_video([sample], tmp_path)
    ours = TCCLLaVAOneVisionHF(base="LLaVAOV", model_path=tiny_checkpoints["llava_onevision"])
    texts = []
    call = type(ours.processor).__call__

    def spy(proxy, *args, **kwargs):
        texts.append(kwargs.get("text"))
        return call(proxy, *args, **kwargs)

    ours._pruned["any"] = Recorder(0)
    message = [{"type": "video", "value": str(tmp_path / "videos/0.mp4")}, {"type": "text", "value": "Question?"}]
    with mock.patch.object(type(ours.processor), "__call__", spy):
        ours.generate(message, dataset="TCCSynth_VID")
    (text,) = texts
    assert text.count("<image>\n") == 1 and "<video>" in text  # VLMEvalKit's prompt, as it builds it
    ids = ours._pruned["any"].calls[0]["input_ids"]
    image_id = ours.hf_model.config.image_token_index
    assert not (ids == image_id).any()  # ... minus the stray placeholder transformers 5 rejects
    assert (ids == ours.hf_model.config.video_token_index).sum() > 0


def test_llava_video_by_fps_is_refused_by_name(registered, tiny_checkpoints, tmp_path):
    """VLMEvalKit's fps mode sets LLaVA_OneVision_HF's nframe to None, which its frame sampling cannot take."""
    from tcc_eval import synth
    from tcc_eval.integrations.vlmeval.wrappers import TCCLLaVAOneVisionHF

    synth.export_vlmeval_video(synth.generate("video", 1, seed=0), tmp_path)
    ours = TCCLLaVAOneVisionHF(base="LLaVAOV", model_path=tiny_checkpoints["llava_onevision"])
    ours.nframe = None  # what VLMEvalKit's infer_data_job_video sets for a dataset with fps and no nframe
    message = [{"type": "video", "value": str(tmp_path / "videos/0.mp4")}, {"type": "text", "value": "Question?"}]
    with pytest.raises(ValueError, match="nframe is None: VLMEvalKit sets that for a video dataset sampled by fps"
                                         ".*MVBench_8frame.*\"nframe\": 8, and no fps set in the same run"):
        ours.generate(message, dataset="TCCSynth_VID")


def test_an_unreadable_video_is_named(registered, tiny_checkpoints, tmp_path):
    """VLMEvalKit's Qwen2VLChat reports an empty video file as torchvision's missing read_video (qwen-vl-utils' fallback
    after decord): the wrapper names the file before upstream reads it."""
    from tcc_eval.integrations.vlmeval.wrappers import TCCQwen2VLChat

    empty = tmp_path / "0.mp4"
    empty.write_bytes(b"")
    ours = TCCQwen2VLChat(base="Qwen2VL", model_path=tiny_checkpoints["qwen2_vl"])
    with pytest.raises(ValueError, match=f"cannot decode video '{empty}'"):
        ours.generate([{"type": "video", "value": str(empty)}, {"type": "text", "value": "Q?"}], dataset="TCCSynth_VID")


def test_synthetic_set_settings_are_checked(registered, monkeypatch, tmp_path):
    from tcc_eval.integrations.vlmeval.datasets import ensure_image_set

    monkeypatch.setenv("TCC_SYNTH_N", "2")
    tsv = ensure_image_set(tmp_path)
    assert len(pd.read_csv(tsv, sep="\t")) == 2 and ensure_image_set(tmp_path) == tsv  # reused as is
    monkeypatch.setenv("TCC_SYNTH_N", "3")
    with pytest.raises(ValueError, match="other settings.*n=2.*n=3.*delete it"):
        ensure_image_set(tmp_path)


@pytest.mark.parametrize("wrapper,base,family,other", [
    ("TCCQwen2VLChat", "TinyQwen2VL", "llava_onevision", "TinyLLaVAOV"),  # loaded, it answered through Qwen's prompts
    ("TCCLLaVAOneVisionHF", "TinyLLaVAOV", "qwen2_vl", "TinyQwen2VL"),
    ("TCCVILA", "TinyVILA", "qwen2_vl", "TinyQwen2VL"),
])
def test_a_checkpoint_of_another_family_is_refused_before_loading(registered, monkeypatch, wrapper, base, family,
                                                                   other):
    from tcc_eval.demo import model_dir
    from tcc_eval.integrations.vlmeval import wrappers

    def load(self):
        raise AssertionError("loaded")

    monkeypatch.setattr(wrappers.TCCModelMixin, "_load", load)
    monkeypatch.setattr(wrappers.TCCVILA, "_load", load)
    with pytest.raises(ValueError, match=f"is a {family} checkpoint, but base {base} runs .* ones: name a {family} "
                                         f"base \\(.*{other}.*\\), or point TCC_MODEL_PATH_{base.upper()}"):
        getattr(wrappers, wrapper)(base=base, model_path=str(model_dir(family)))
    with pytest.raises(AssertionError, match="loaded"):  # its own family's checkpoint goes on to load
        getattr(wrappers, wrapper)(base=base)


def test_a_regenerated_image_set_never_shows_an_older_sets_picture(registered, monkeypatch, tmp_path):
    """A regenerated set reuses the indices: a dumped picture of the older set is rewritten, not shown with the new
    question. An LMUData folder that does not exist yet is made (VLMEvalKit would fall back to ~/LMUData)."""
    import base64

    from tcc_eval.integrations.vlmeval.datasets import TCCSynthImage

    monkeypatch.setenv("LMUData", str(tmp_path / "new"))
    monkeypatch.setenv("TCC_SYNTH_N", "2")
    dataset = TCCSynthImage("TCCSynth_IMG")
    assert (tmp_path / "new" / "TCCSynth_IMG.tsv").is_file()
    line = dataset.data.iloc[0]
    path = Path(dataset.dump_image(line))
    assert path.is_relative_to(tmp_path / "new")
    assert path.read_bytes() == base64.b64decode(line["image"])
    path.write_bytes(b"an older set's picture")
    assert dataset.dump_image(line) == str(path) and path.read_bytes() == base64.b64decode(line["image"])


def test_video_set_by_fps_alone(registered, monkeypatch, tmp_path):
    """A --config dataset entry giving fps alone samples by fps (VLMEvalKit refuses nframe and fps together)."""
    from tcc_eval.integrations.vlmeval.datasets import TCCSynthVideo

    monkeypatch.setenv("LMUData", str(tmp_path / "new"))  # made, as for the image set
    monkeypatch.setenv("TCC_SYNTH_N", "2")
    assert (TCCSynthVideo("TCCSynth_VID").nframe, TCCSynthVideo("TCCSynth_VID", fps=1.0).nframe) == (8, 0)
    assert (tmp_path / "new" / "TCCSynth_VID" / "TCCSynth_VID.tsv").is_file()
    assert TCCSynthVideo("TCCSynth_VID", nframe=4).nframe == 4


def test_synthetic_set_sizes_read_alike_in_both_frameworks(registered, monkeypatch):
    """TCC_SYNTH_N (VLMEvalKit) and TCC_LMMS_SYNTH_N (lmms-eval) take the same values and refuse the same ones."""
    from tcc_eval.integrations.vlmeval.datasets import requested_size
    from tcc_eval.lmms_tasks.tccsynth import sample_count

    for text, size in (("", 200), (" 7 ", 7), ("+5", 5), ("12", 12)):
        monkeypatch.setenv("TCC_SYNTH_N", text)
        monkeypatch.setenv("TCC_LMMS_SYNTH_N", text)
        assert (requested_size("image"), sample_count(200)) == (size, size), text
    for text in ("0", "-3", "2.5", "ten"):
        monkeypatch.setenv("TCC_SYNTH_N", text)
        monkeypatch.setenv("TCC_LMMS_SYNTH_N", text)
        for read, name in ((lambda: requested_size("image"), "TCC_SYNTH_N"),
                           (lambda: sample_count(200), "TCC_LMMS_SYNTH_N")):
            with pytest.raises(ValueError, match=f"{name}='{re.escape(text)}' must be a positive whole number"):
                read()


# --- the real runner, literally, through the .pth hook ----------------------------------------------
def _run_env(tiny_checkpoints: dict[str, str], root: Path) -> dict[str, str]:
    """The environment of the runs in ``root``: the tiny test bases, their compressors, small synthetic sets."""
    extra = {"TQwen": {"path": tiny_checkpoints["qwen2_vl"], "max_new_tokens": 4},
             "TLlava": {"path": tiny_checkpoints["llava_onevision"], "max_new_tokens": 4},
             "TQwen25": {"path": tiny_checkpoints["qwen2_5_vl"], "max_new_tokens": 4}}
    return _clean_env(LMUData=str(root / "LMUData"), TCC_SYNTH_N=str(N), TCC_EXTRA_MODELS=json.dumps(extra),
                      TCC_COMPRESSOR_DIR=str(root / "compressors"))


@pytest.fixture(scope="module")
def vlmeval_run(tiny_checkpoints, tmp_path_factory):
    """One `python -m vlmeval.run` over both synthetic sets and seven test models."""
    from transformers import AutoModelForImageTextToText

    from tcc_eval.compressor import TokenCompressor, model_meta, save_compressor

    _installed_pth()
    root = tmp_path_factory.mktemp("vlmeval_run")
    compressors = root / "compressors"
    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoints["qwen2_vl"])
    torch.manual_seed(0)
    for modality in ("image", "video"):  # untrained: TCC100 (loads them, prunes nothing) must equal Vanilla
        save_compressor(compressors / f"TQwen_{modality}.pt", TokenCompressor(), model_meta(model), modality, {})
    env = _run_env(tiny_checkpoints, root)
    (root / "LMUData").mkdir()
    cmd = [sys.executable, "-m", "vlmeval.run", "--model", *MODELS, "--data", *DATASETS,
           "--judge", "exact_matching", "--work-dir", str(root / "out")]
    proc = subprocess.run(cmd, cwd=root, env=env, check=False, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "tcc-eval:" not in log, log[-4000:]
    return root, log


@pytest.mark.parametrize("model", MODELS)
def test_run_outputs(vlmeval_run, model):
    root, _ = vlmeval_run
    folder = root / "out" / model
    status = json.loads((folder / "status.json").read_text())["datasets"]
    assert {d: status[d]["status"] for d in DATASETS} == {d: "done" for d in DATASETS}, status
    assert not any(status[d].get("error_message") for d in DATASETS), status
    for dataset in DATASETS:
        predictions = pd.read_excel(folder / f"{model}_{dataset}.xlsx")
        assert len(predictions) == N and predictions["prediction"].notna().all()
        acc = pd.read_csv(folder / f"{model}_{dataset}_acc.csv")
        assert "Overall" in acc.columns and 0 <= acc["Overall"].iloc[0] <= 1
        lines = (folder / f"{model}_{dataset}_efficiency.jsonl").read_text().splitlines()
        records = [json.loads(x) for x in lines]
        assert len(records) == N
        assert all(RECORD_KEYS <= r.keys() for r in records)
        assert sorted(r["index"] for r in records) == sorted(predictions["index"])
        for r in records:
            assert (r["model"], r["framework"], r["dataset"]) == (model, "vlmeval", dataset)
            assert r["modality"] == ("video" if dataset.endswith("VID") else "image")
            assert r["visual_before"] > 0 and r["new_tokens"] >= 1
            assert r["visual_after"] == keep_count(r["visual_before"], r["keep_ratio"])  # one global budget
            assert r["seq_before"] - r["seq_after"] == r["visual_before"] - r["visual_after"]


@pytest.mark.parametrize("dataset", DATASETS)
def test_tcc100_equals_vanilla(vlmeval_run, dataset):
    root, log = vlmeval_run

    def predictions(model):
        return list(pd.read_excel(root / "out" / model / f"{model}_{dataset}.xlsx")["prediction"])

    assert predictions("TQwen_TCC100") == predictions("TQwen_Vanilla")
    records = [json.loads(x) for x in
               (root / "out/TQwen_TCC100" / f"TQwen_TCC100_{dataset}_efficiency.jsonl").read_text().splitlines()]
    assert all(r["method"] == "tcc" and r["visual_after"] == r["visual_before"] for r in records)
    modality = "video" if dataset.endswith("VID") else "image"
    compressor = str(root / "compressors" / f"TQwen_{modality}.pt")  # which file ran: the records and the log say
    assert all(r["compressor"] == compressor for r in records)
    assert f"[tcc_eval] TQwen tcc compressor for {modality} inputs: {compressor}" in log


def test_a_second_variant_of_a_video_run_is_refused_by_the_runner(vlmeval_run, tiny_checkpoints):
    """VLMEvalKit's video job returns a complete prediction file's answers without inferring anything: a --config
    variant of TQwen_TCC50 run into that folder must stop before it, not report the first variant's answers."""
    root, _ = vlmeval_run
    predictions = root / "out/TQwen_TCC50/TQwen_TCC50_TCCSynth_VID.xlsx"
    before = predictions.read_bytes()
    config = root / "per_group.json"
    config.write_text(json.dumps({"model": {"TQwen_TCC50": {"method_options": {"budget": "per_group"}}},
                                  "data": {"TCCSynth_VID": {"class": "TCCSynthVideo", "dataset": "TCCSynth_VID",
                                                            "nframe": 8}}}))
    cmd = [sys.executable, "-m", "vlmeval.run", "--config", str(config), "--judge", "exact_matching",
           "--work-dir", str(root / "out")]
    proc = subprocess.run(cmd, cwd=root, env=_run_env(tiny_checkpoints, root), check=False, capture_output=True,
                          text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert "already holds TQwen_TCC50_TCCSynth_VID results of another variant (method=tcc keep_ratio=0.5; " \
           "this run: method=tcc keep_ratio=0.5 budget=per_group)" in log, log[-3000:]
    assert predictions.read_bytes() == before


def test_synthetic_sets_generated_on_first_use(vlmeval_run):
    root, _ = vlmeval_run
    lmu = root / "LMUData"
    tsv = pd.read_csv(lmu / "TCCSynth_IMG.tsv", sep="\t")
    assert len(tsv) == N and {"index", "image", "question", "A", "B", "answer", "category"} <= set(tsv.columns)
    assert (lmu / "TCCSynth_IMG_gt.json").is_file() and (lmu / "TCCSynth_VID/TCCSynth_VID_gt.json").is_file()
    assert sorted(p.suffix for p in (lmu / "images/TCCSynth_IMG").iterdir()) == [".png"] * N  # lossless


@pytest.mark.parametrize("dataset, repository", [("MVBench_8frame", "modelscope/MVBench"),
                                                 ("Video-MME", "lmms-lab/Video-MME")])
def test_video_benchmarks_reach_their_download(dataset, repository, monkeypatch, tmp_path):
    """ms-vlmeval fetches video benchmarks from ModelScope by default but does not install modelscope: the
    README's `--data MVBench` needs our dependency on it, in a version whose cache lookup VLMEvalKit can call."""
    import modelscope
    from vlmeval.dataset import MVBench, VideoMME
    from vlmeval.smp import get_cache_path

    monkeypatch.delenv("VLMEVALKIT_USE_MODELSCOPE", raising=False)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(tmp_path / "modelscope"))
    monkeypatch.setenv("LMUData", str(tmp_path / "LMUData"))
    assert isinstance(get_cache_path("modelscope/MVBench"), str)  # None when the modelscope API moved

    class DownloadReached(Exception):
        pass

    def no_download(dataset_id: str, **kwargs):
        raise DownloadReached(dataset_id)

    monkeypatch.setattr(modelscope, "dataset_snapshot_download", no_download)
    dataset_class = MVBench if dataset.startswith("MVBench") else VideoMME
    with pytest.raises(DownloadReached, match=f"^{repository}$"):  # that benchmark's own repository
        dataset_class(dataset, nframe=8)


# --- a broken install must never break start-up ------------------------------------------------------
def test_hook_is_lazy():
    _installed_pth()
    code = ("import sys; assert not {'tcc_eval', 'torch', 'vlmeval'} & set(sys.modules), sorted(sys.modules);"
            "assert any(getattr(f, 'tcc_eval_hook', False) for f in sys.meta_path)")
    proc = subprocess.run([sys.executable, "-c", code], env=_clean_env(), check=False, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_broken_registration_keeps_vlmeval_working(tmp_path):
    _installed_pth()
    env = _clean_env(TCC_EVAL_SIMULATE_BROKEN="1")
    proc = subprocess.run([sys.executable, "-c", "pass"], env=env, check=False, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == proc.stderr == ""
    proc = subprocess.run([sys.executable, "-m", "vlmeval.run", "--help"], cwd=tmp_path, env=env,
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "--model" in proc.stdout
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "tcc-eval" in line]
    assert len(ours) == 1 and "TCC_EVAL_SIMULATE_BROKEN" in ours[0], ours


def test_broken_package_keeps_startup_working(tmp_path):
    """A tcc_eval that shadows ours and lacks the hook file: the .pth prints one line, start-up goes on."""
    _installed_pth()
    (tmp_path / "tcc_eval").mkdir()
    (tmp_path / "tcc_eval/__init__.py").write_text("raise ImportError('broken on purpose')\n")
    env = _clean_env(PYTHONPATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", "print('alive')"], env=env, check=False, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and proc.stdout == "alive\n"
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("tcc-eval:"), proc.stderr


def test_hook_names_the_fix_when_the_package_is_gone(tmp_path):
    """A .pth left behind by a checkout that moved: one line naming the fix, start-up goes on."""
    pth = _installed_pth()
    shutil.copyfile(pth, tmp_path / PTH_NAME)
    code = f"import site; site.addsitedir({str(tmp_path)!r}); print('alive')"
    env = {k: v for k, v in _clean_env().items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, check=False, capture_output=True,
                          text=True)  # -S and no PYTHONPATH: no site-packages, so no tcc_eval to find
    assert proc.returncode == 0 and proc.stdout == "alive\n"
    assert proc.stderr.startswith("tcc-eval: VLMEvalKit hook not installed") and len(proc.stderr.splitlines()) == 1
    assert "pip install -e" in proc.stderr and PTH_NAME in proc.stderr, proc.stderr


@pytest.mark.parametrize("module", ["datasets", "wrappers"])
def test_importing_our_module_first_still_registers_everything(module):
    """The module's own vlmeval imports fire the start-up hook mid-import; registration must not fail."""
    code = (f"import tcc_eval.integrations.vlmeval.{module}\n"
            "import vlmeval.config as c, vlmeval.dataset as vd\n"
            "print('TCCSynth_VID' in vd.SUPPORTED_DATASETS, 'TinyQwen2VL_TCC50' in c.supported_VLM)")
    proc = subprocess.run([sys.executable, "-c", code], env=_clean_env(), check=False, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-2:] == ["True", "True"]
    assert "not registered" not in proc.stderr
