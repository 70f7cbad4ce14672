"""VILA1.5 in VLMEvalKit and lmms-eval, on tiny VILA1.5 checkpoints (random weights: plumbing, not accuracy).

Both upstream VILA wrappers import the NVlabs VILA repository (``llava``), which cannot be installed here. To
compare prompts with them anyway, a stand-in ``llava`` package built from ``tcc_eval.vila`` (templates,
pixels, ``tokenizer_image_token``) is put in ``sys.modules`` and the upstream wrapper code itself runs on it:
what is checked is everything the wrappers add (message -> prompt text, conv mode, frames, generation
settings, decoding). The end-to-end part is one literal CLI run per framework over both synthetic sets.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import torch
from PIL import Image

import model_registry
from model_registry import matrix
from tcc_eval.vila.fixtures import build_tiny_vila
from tcc_eval.vila.processing_vila import CHAT_TEMPLATES

N = 4  # samples per synthetic set and run
RECORD_KEYS = {"model", "framework", "dataset", "index", "method", "keep_ratio", "base_model", "visual_before",
               "visual_after", "seq_before", "seq_after", "prefill_s", "vision_s", "select_s", "total_s",
               "kv_cache_bytes", "new_tokens", "method_options"}
GREEDY = {"max_new_tokens": 8, "temperature": 0, "top_p": None, "num_beams": 1, "do_sample": False}


@pytest.fixture(scope="module")
def tiny_vila(tmp_path_factory) -> str:
    """Named like the 8b checkpoint (VLMEvalKit's name rule picks the VILA1.5 release's llama_3) but built with
    VILA's corrected llama_3 template, so a wrapper that ignored the rule would be caught."""
    return str(build_tiny_vila(tmp_path_factory.mktemp("vila") / "tiny-Llama-3-VILA1.5-8b", conv_mode="llama_3"))


@pytest.fixture(scope="module")
def synth_env(tmp_path_factory):
    """Synthetic sets of both frameworks in private folders, generated once, offline hub."""
    root = tmp_path_factory.mktemp("synth")
    env = {"LMUData": str(root / "LMUData"), "TCC_SYNTH_N": str(N), "TCC_LMMS_DATA": str(root / "lmms"),
           "TCC_LMMS_SYNTH_N": str(N), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    (root / "LMUData").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env


def _run(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[str, float]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("TCC_", "LMUData"))}
    full.update(env, OMP_NUM_THREADS="2")
    started = time.time()
    proc = subprocess.run(cmd, cwd=cwd, env=full, check=False, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    return log, time.time() - started


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- registry ---------------------------------------------------------------------------------------
def test_matrix_has_vila_bases(tiny_vila):
    specs = model_registry.expand()
    assert specs["VILA15_TCC50"].base.hf_id == "Efficient-Large-Model/Llama-3-VILA1.5-8b"  # VLMEvalKit's default
    assert specs["VILA153B_Vanilla"].base.hf_id == "Efficient-Large-Model/VILA1.5-3b"
    assert (specs["VILA15_Random25"].method, specs["VILA15_Random25"].keep_ratio) == ("random", 0.25)
    assert model_registry.resolve_model_path(specs["VILA15_TCC100"].base) == "Efficient-Large-Model/Llama-3-VILA1.5-8b"
    with pytest.raises(NotImplementedError, match="InternViT"):
        model_registry.resolve_model_path(model_registry.BASES["VILA1540B"])
    assert matrix.extra_bases(f"TV={tiny_vila}")["TV"].family == "vila"  # config.json says llava_llama


def test_local_folder_for_vila_checkpoints(tiny_vila, tmp_path, monkeypatch):
    from huggingface_hub import constants

    assert model_registry.local_folder(tiny_vila) == tiny_vila
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model_registry.local_folder(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="does not exist"):  # no hub id has two slashes
        model_registry.local_folder("checkpoints/vila/3b")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # a hub id is looked up (offline here: not cached)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download Efficient-Large-Model/VILA1.5-3b"):
        model_registry.local_folder("Efficient-Large-Model/VILA1.5-3b")


def test_vlmeval_conv_mode_rule():
    from tcc_eval.integrations.vlmeval.wrappers import vlmeval_vila_conv_mode

    names = {"Efficient-Large-Model/VILA1.5-3b": "vicuna_v1", "Efficient-Large-Model/VILA1.5-13b": "vicuna_v1",
             "Efficient-Large-Model/Llama-3-VILA1.5-8b": "llama_3_vila1.5",  # VILA1.5's llama_3, as VLMEvalKit runs it
             "Efficient-Large-Model/Llama-3-VILA1.5-8b-Fix": "llama_3",  # retrained on VILA's corrected llama_3
             "Efficient-Large-Model/VILA1.5-40b": "hermes-2",
             "/ckpts/my_vila/": None, "/runs/8b_sweep/my_vila": None}  # parent folders do not count
    assert {name: vlmeval_vila_conv_mode(name) for name in names} == names


def test_a_folder_that_names_nothing_takes_its_registry_bases_template(tiny_vila, tmp_path, recwarn):
    """A VILA15 checkpoint in a folder whose name says nothing and whose config.json names no template gets
    Llama-3-VILA1.5-8b's (the registry's hub id), not the Llama-3 vocabulary's guess; a config.json that names
    one keeps it."""
    import shutil

    from tcc_eval.integrations.vlmeval.wrappers import TCCVILA

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_vila, folder)
    config = json.loads((folder / "config.json").read_text())
    del config["conv_mode"]
    (folder / "config.json").write_text(json.dumps(config))
    assert TCCVILA(base="VILA15", model_path=str(folder)).conv_mode == "llama_3_vila1.5"
    assert not [w for w in recwarn.list if "fits two templates" in str(w.message)]
    (folder / "config.json").write_text(json.dumps({**config, "conv_mode": "vicuna_v1"}))
    assert TCCVILA(base="VILA15", model_path=str(folder)).conv_mode == "vicuna_v1"


# --- prompts against the upstream wrappers, run on a stand-in `llava` package --------------------------
class FakeConversation:
    """VILA's Conversation as the wrappers use it; the text comes from our template of the same name."""

    def __init__(self, name: str):
        self.name, self.roles, self.messages = name, ("USER", "ASSISTANT"), []
        self.sep_style, self.sep2 = "TWO", CHAT_TEMPLATES[name].stop

    def copy(self):
        return FakeConversation(self.name)

    def append_message(self, role, message):
        self.messages.append((role, message))

    def get_prompt(self) -> str:
        (user, text), (assistant, answer) = self.messages
        assert (user, assistant, answer) == ("USER", "ASSISTANT", None)
        return CHAT_TEMPLATES[self.name].render([("user", text)])


class Recorder:
    """Stands in for the generating model: records the call, answers 'A' (only new ids, like VILA's
    generate, or prompt + new ids, like HF's)."""

    def __init__(self, answer_id: int, with_prompt: bool, config=None):
        self.answer_id, self.with_prompt, self.config = answer_id, with_prompt, config
        self.calls: list[dict] = []
        self.last_stats: dict = {}
        self.device = torch.device("cpu")

    def cuda(self):
        return self

    def eval(self):
        return self

    def generate(self, input_ids=None, **kwargs):
        self.calls.append({"input_ids": input_ids, **kwargs})
        self.last_selection = types.SimpleNamespace(visual_before=[0] * input_ids.shape[0])  # one prompt per row
        answer = torch.full((1, 1), self.answer_id)
        return torch.cat([input_ids, answer], dim=1) if self.with_prompt else answer


def fake_llava(processor, model: Recorder) -> dict[str, types.ModuleType]:
    """``llava.*`` modules the upstream wrappers import, backed by our processor and ``model``."""

    def module(name: str, **attrs) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None)  # found by lmms-eval's require_package
        mod.__dict__.update(attrs)
        return mod

    class Stop:
        def __init__(self, keywords, tokenizer, input_ids):
            model.keywords = keywords

    # the template names of the VILA1.5 release code VLMEvalKit's VILA runs with (its transformers 4.36.2 pin):
    # there, llama_3 is the template Llama-3-VILA1.5-8b was trained with
    VILA15_CONV_TEMPLATES = {"vicuna_v1": FakeConversation("vicuna_v1"), "hermes-2": FakeConversation("hermes-2"),
                             "llama_3": FakeConversation("llama_3_vila1.5")}
    return {
        "llava": module("llava"),
        "llava.constants": module("llava.constants", DEFAULT_IMAGE_TOKEN="<image>", IMAGE_TOKEN_INDEX=-200,
                                  DEFAULT_IM_START_TOKEN="<im_start>", DEFAULT_IM_END_TOKEN="<im_end>"),
        "llava.conversation": module("llava.conversation", SeparatorStyle=types.SimpleNamespace(TWO="TWO"),
                                     conv_templates=VILA15_CONV_TEMPLATES),
        "llava.mm_utils": module(
            "llava.mm_utils", KeywordsStoppingCriteria=Stop, get_model_name_from_path=lambda p: Path(p).name,
            process_images=lambda images, _processor, _config: torch.stack([processor.preprocess(i) for i in images]),
            tokenizer_image_token=lambda prompt, _tok, _index, return_tensors: torch.tensor(
                processor.tokenize_prompt(prompt))),
        "llava.model": module("llava.model"),
        "llava.model.builder": module(
            "llava.model.builder", load_pretrained_model=lambda *a, **k: (processor.tokenizer, model, processor, 2048)),
    }


@pytest.fixture(scope="module")
def vila_processor(tiny_vila):
    from tcc_eval.vila import VilaProcessor

    return VilaProcessor.from_pretrained(tiny_vila)


def test_vlmeval_vanilla_matches_vlmevalkit_vila(tiny_vila, vila_processor, tmp_path):
    """VLMEvalKit's own VILA class and our wrapper: same conv mode and settings, same tensors reach generate
    for an interleaved multi-image message, same answer."""
    from vlmeval.vlm.vila import VILA

    from tcc_eval import synth
    from tcc_eval.integrations.vlmeval.wrappers import TCCVILA

    answer = vila_processor.tokenizer.convert_tokens_to_ids("A")
    upstream_model = Recorder(answer, with_prompt=False)
    with mock.patch.dict(sys.modules, fake_llava(vila_processor, upstream_model)):
        upstream = VILA(model_path=tiny_vila, max_new_tokens=8)
    ours = TCCVILA(base="VILA15", model_path=tiny_vila, max_new_tokens=8)
    assert (upstream.conv_mode, ours.conv_mode) == ("llama_3", "llama_3_vila1.5")  # beats the checkpoint's llama_3
    assert upstream.kwargs == ours.kwargs

    paths = []
    for i, sample in enumerate(synth.generate("image", 2, seed=1)):
        paths.append(tmp_path / f"{i}.png")
        sample.image.save(paths[-1])
    message = [{"type": "text", "value": "Two frames:\n"}, {"type": "image", "value": str(paths[0])},
               {"type": "image", "value": str(paths[1])}, {"type": "text", "value": "Which colour? A. red B. blue"}]
    ours._pruned["any"] = Recorder(answer, with_prompt=True)
    with mock.patch.object(torch.Tensor, "cuda", lambda t, *a, **k: t):  # upstream moves ids to CUDA
        assert upstream.generate(message, dataset="TCCSynth_IMG") == "A"
        assert ours.generate(message, dataset="TCCSynth_IMG") == "A"
    (theirs,), (mine,) = upstream_model.calls, ours._pruned["any"].calls
    assert torch.equal(theirs["input_ids"], mine["input_ids"])
    assert torch.equal(theirs["images"], mine["pixel_values"].half())  # upstream feeds fp16 pixels
    prompt = ours.processor.decode(mine["input_ids"][0])
    assert prompt.count("<image>") == 2 * ours.processor.num_image_tokens and "<|start_header_id|>user" in prompt
    assert prompt.endswith("<|end_of_text|><|start_header_id|>system<|end_header_id|>\n\n")  # VILA1.5's answer turn
    assert mine["attention_mask"].all()  # upstream passes none: all tokens attend
    settings = ("do_sample", "max_new_tokens", "num_beams", "use_cache")
    assert {k: theirs[k] for k in settings} == {k: mine[k] for k in settings} \
        == dict(zip(settings, (False, 8, 1, True)))
    assert (theirs["temperature"], theirs["top_p"]) == (0, None) and "temperature" not in mine  # inert when greedy
    assert upstream_model.keywords == ["<|end_of_text|>"]  # upstream stops at VILA1.5's llama_3 separator, so do we
    end = vila_processor.tokenizer.convert_tokens_to_ids("<|end_of_text|>")
    eot = vila_processor.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert mine["eos_token_id"] == sorted({end, eot})  # and at the LLM's own EOS, as VILA's generate does
    # the checkpoint's LLM config lists no <|end_of_text|>: the model's own EOS ids gain it, so that a generate with
    # no EOS of its own (the oracle's draft answer) stops there too
    from tcc_eval.vila import VilaForConditionalGeneration

    raw = VilaForConditionalGeneration.from_pretrained(tiny_vila).generation_config.eos_token_id
    assert end not in (raw if isinstance(raw, list) else [raw])
    assert end in ours.hf_model.generation_config.eos_token_id


def test_vlmeval_scores_a_multi_image_prompt_as_every_entry_point_does(tiny_vila, tmp_path):
    """VILA shows a video as a run of image blocks, so its adapter scores any prompt with several blocks as a
    video. VLMEvalKit's wrapper used the dataset's modality instead: a two-image prompt of an image set got
    the image compressor there and the video one through wrap_model and lmms-eval. All three now agree."""
    from tcc_eval import synth, wrap_model
    from tcc_eval.compressor import TokenCompressor, model_meta, save_compressor
    from tcc_eval.integrations.vlmeval.wrappers import TCCVILA
    from tcc_eval.vila import VilaForConditionalGeneration

    meta = model_meta(VilaForConditionalGeneration.from_pretrained(tiny_vila))
    for seed, modality in enumerate(("image", "video")):
        torch.manual_seed(seed)
        save_compressor(tmp_path / f"{modality}.pt", TokenCompressor(channels=(8, 16)), meta, modality, {})
    ours = TCCVILA(base="VILA15", method="tcc", keep_ratio=0.5, model_path=tiny_vila, max_new_tokens=2,
                   compressor={m: str(tmp_path / f"{m}.pt") for m in ("image", "video")})
    paths = []
    for i, sample in enumerate(synth.generate("image", 2, seed=1)):
        paths.append(tmp_path / f"{i}.png")
        sample.image.save(paths[-1])
    message = [{"type": "image", "value": str(p)} for p in paths] + [{"type": "text", "value": "Which colour?"}]
    ours.generate(message, dataset="TCCSynth_IMG")
    assert ours.last_record["modality"] == "video"

    api_model = wrap_model(ours.hf_model, method="tcc", keep_ratio=0.5,
                           compressor={m: str(tmp_path / f"{m}.pt") for m in ("image", "video")})
    inputs = ours.processor(text=ours.processor.template.render([("user", "<image>\n<image>\nWhich colour?")]),
                            images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")
    api_model.generate(**inputs, max_new_tokens=2, do_sample=False)
    (mine,), (theirs,) = ours._pruned["video"].last_selection.kept_positions, api_model.last_selection.kept_positions
    assert torch.equal(mine, theirs)


def _request(context: str, doc_to_visual, doc_id: int = 0):
    from lmms_eval.api.instance import Instance

    return Instance(request_type="generate_until",
                    arguments=(context, dict(GREEDY), doc_to_visual, doc_id, "t", "test"),
                    idx=0, metadata={"task": "t", "doc_id": doc_id, "repeats": 1})


def test_lmms_vanilla_matches_upstream_vila(tiny_vila, vila_processor, synth_env, tmp_path):
    """lmms-eval's own vila class and vila_tcc (method=none): same video prompt tensors and settings, same
    answer; image docs (which upstream cannot serve) get one <image> each before the context."""
    from tcc_eval.integrations.lmms_eval.efficiency import RecordingModel
    from tcc_eval.integrations.lmms_eval.models import VilaTCC
    from tcc_eval.lmms_tasks.tccsynth import doc_to_visual, load_samples

    video_doc = load_samples("video", N, seed=0)[0]
    image_doc = load_samples("image", N, seed=0)[0]
    context = "Which colour?\nA. red\nB. blue\nAnswer with the option's letter from the given choices directly."
    answer = vila_processor.tokenizer.convert_tokens_to_ids("A")
    frames = vila_processor.config.num_video_frames
    upstream_model = Recorder(answer, with_prompt=False,
                              config=types.SimpleNamespace(num_video_frames=frames, mm_use_im_start_end=False))
    from lmms_eval.imports import is_package_available

    with mock.patch.dict(sys.modules, fake_llava(vila_processor, upstream_model)):
        is_package_available.cache_clear()  # its cached answer for "llava" must see the stand-in, and forget it
        from lmms_eval.models.simple.vila import VILA

        upstream = VILA(pretrained=tiny_vila, device="cpu", device_map="auto", conv_template="vicuna_v1")
    is_package_available.cache_clear()
    ours = VilaTCC(pretrained=tiny_vila, device="cpu", method="none", efficiency_dir=str(tmp_path),
                   conv_template="vicuna_v1")
    recorder = Recorder(answer, with_prompt=True)
    ours._model = RecordingModel(recorder, ours._record)
    for lm in (upstream, ours):
        lm.task_dict = {"t": {"test": [video_doc, image_doc]}}

    video = _request(context, doc_to_visual)
    assert upstream.generate_until([video]) == ours.generate_until([video]) == ["A"]
    (theirs,), (mine,) = upstream_model.calls, recorder.calls
    for name in ("input_ids", "attention_mask"):
        assert torch.equal(theirs[name], mine[name]), name
    assert torch.equal(theirs["images"][0], mine["pixel_values"].half())  # upstream: fp16 frames
    assert mine["pixel_values"].shape[0] == frames
    prompt = vila_processor.decode(mine["input_ids"][0])
    assert f"USER: {'<image>' * vila_processor.num_image_tokens}\n" in prompt and f"<video>\n {context}" in prompt
    assert (theirs["do_sample"], theirs["num_beams"], theirs["max_new_tokens"], theirs["use_cache"]) \
        == (mine["do_sample"], mine["num_beams"], mine["max_new_tokens"], mine["use_cache"]) == (False, 1, 8, True)
    assert upstream_model.keywords == ["</s>"]  # and its generate keeps the LLM's EOS (<|eot_id|>): so do we
    tokenizer = vila_processor.tokenizer
    assert mine["eos_token_id"] == sorted({tokenizer.convert_tokens_to_ids("</s>"), tokenizer.eos_token_id})

    assert ours.generate_until([_request(context, doc_to_visual, 1)]) == ["A"]
    expected = vila_processor(text=CHAT_TEMPLATES["vicuna_v1"].render([("user", "<image>\n" + context)]),
                              images=doc_to_visual(image_doc))
    assert torch.equal(recorder.calls[1]["input_ids"], expected["input_ids"])
    assert torch.equal(recorder.calls[1]["pixel_values"], expected["pixel_values"])
    (records,) = [_records(p) for p in tmp_path.glob("vila_tcc_*_none-100_t_efficiency.jsonl")]
    assert [r["index"] for r in records] == [0, 1]


def test_lmms_vila_takes_upstream_model_args(tiny_vila, tmp_path, monkeypatch):
    """Upstream vila's model args work unchanged: device_map places the model (this machine's default device is
    made "meta" here, so a device_map that is not used fails), truncation and truncate_context (stored, never
    read upstream) are accepted."""
    from tcc_eval.integrations.lmms_eval import models

    monkeypatch.setattr(models, "default_device", lambda device=None: torch.device(device or "meta"))
    ours = models.VilaTCC(pretrained=tiny_vila, method="none", device_map="cpu", truncation=True,
                          truncate_context=False, efficiency_dir=str(tmp_path))
    assert ours.device == torch.device("cpu") and ours.model.device == torch.device("cpu")


def test_lmms_vila_unreadable_video_is_named(tiny_vila, synth_env, tmp_path):
    """A video decord cannot read stops vila_tcc with its path (upstream vila logs it and answers on black
    frames); a readable one gives the configured number of frames."""
    from tcc_eval.integrations.lmms_eval.models import VilaTCC
    from tcc_eval.lmms_tasks.tccsynth import doc_to_visual, load_samples

    ours = VilaTCC(pretrained=tiny_vila, device="cpu", method="none", efficiency_dir=str(tmp_path))
    frames, has_video = ours._frames(doc_to_visual(load_samples("video", N, seed=0)[0]))
    assert has_video and len(frames) == ours._config.num_video_frames
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(RuntimeError, match=f"cannot read video {broken} with decord .*fix or remove the file"):
        ours._frames([str(broken)])
    with pytest.raises(RuntimeError, match="vila logs it and answers on black frames"):
        ours._frames([broken])


# --- the real CLIs ------------------------------------------------------------------------------------
VLMEVAL_MODELS = ("TVila_Vanilla", "TVila_TCC100", "TVila_TCC50")
DATASETS = ("TCCSynth_IMG", "TCCSynth_VID")


@pytest.fixture(scope="module")
def vlmeval_run(tiny_vila, synth_env, tmp_path_factory):
    """`python -m vlmeval.run` (through the .pth hook) of three tiny VILA models over both synthetic sets."""
    from tcc_eval.compressor import TokenCompressor, model_meta, save_compressor
    from tcc_eval.vila import VilaForConditionalGeneration

    root = tmp_path_factory.mktemp("vlmeval_vila")
    meta = model_meta(VilaForConditionalGeneration.from_pretrained(tiny_vila))
    torch.manual_seed(0)
    for modality in ("image", "video"):  # untrained: TCC50 scores with them; TCC100 loads them, prunes nothing
        save_compressor(root / f"TVila_{modality}.pt", TokenCompressor(channels=(8, 16)), meta, modality, {})
    extra = {"TVila": {"path": tiny_vila, "max_new_tokens": 4}}
    env = {**synth_env, "TCC_EXTRA_MODELS": json.dumps(extra), "TCC_COMPRESSOR_DIR": str(root)}
    cmd = [sys.executable, "-m", "vlmeval.run", "--model", *VLMEVAL_MODELS, "--data", *DATASETS,
           "--judge", "exact_matching", "--work-dir", str(root / "out")]
    _, seconds = _run(cmd, env, root)
    print(f"vlmeval.run: {seconds:.1f} s")
    return root / "out"


def test_vlmeval_run_outputs_and_records(vlmeval_run):
    from tcc_eval.core import keep_count

    for model in VLMEVAL_MODELS:
        status = json.loads((vlmeval_run / model / "status.json").read_text())["datasets"]
        assert {d: status[d]["status"] for d in DATASETS} == {d: "done" for d in DATASETS}, status
        for dataset in DATASETS:
            predictions = pd.read_excel(vlmeval_run / model / f"{model}_{dataset}.xlsx")
            assert len(predictions) == N and predictions["prediction"].notna().all()
            acc = pd.read_csv(vlmeval_run / model / f"{model}_{dataset}_acc.csv")
            assert 0 <= acc["Overall"].iloc[0] <= 1
            records = _records(vlmeval_run / model / f"{model}_{dataset}_efficiency.jsonl")
            assert sorted(r["index"] for r in records) == sorted(predictions["index"])
            frames = 8 if dataset == "TCCSynth_VID" else 1  # video sets give VILA 8 frames as images
            for r in records:
                assert RECORD_KEYS <= r.keys() and (r["model"], r["dataset"]) == (model, dataset)
                assert r["modality"] == ("video" if frames > 1 else "image")
                assert r["visual_before"] == 4 * frames  # 4 tokens per tiny image after mlp_downsample
                assert r["visual_after"] == keep_count(r["visual_before"], r["keep_ratio"])


@pytest.mark.parametrize("dataset", DATASETS)
def test_vlmeval_tcc100_equals_vanilla(vlmeval_run, dataset):
    def predictions(model):
        return list(pd.read_excel(vlmeval_run / model / f"{model}_{dataset}.xlsx")["prediction"])

    assert predictions("TVila_TCC100") == predictions("TVila_Vanilla")
    records = _records(vlmeval_run / "TVila_TCC100" / f"TVila_TCC100_{dataset}_efficiency.jsonl")
    assert len(records) == N  # and none of them pruned: the equal answers come from the same tokens
    assert all(r["method"] == "tcc" and r["keep_ratio"] == 1.0 and r["visual_after"] == r["visual_before"] > 0
               for r in records)


def test_lmms_eval_cli_runs_both_tasks(tiny_vila, synth_env, tmp_path):
    from tcc_eval.core import keep_count
    from tcc_eval.integrations.lmms_eval import check_results
    from tcc_eval.lmms_tasks import TASKS_DIR

    tasks = ["tccsynth_img", "tccsynth_vid"]
    model_args = f"pretrained={tiny_vila},method=random,ratio=0.5"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "vila_tcc", "--model_args", model_args,
           "--tasks", ",".join(tasks), "--include_path", str(TASKS_DIR), "--limit", str(N),
           "--output_path", str(tmp_path), "--timezone", "UTC", "--gen_kwargs", "max_new_tokens=4"]
    started = time.time()
    _, seconds = _run(cmd, {**synth_env, "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets")}, tmp_path)
    print(f"lmms_eval: {seconds:.1f} s")
    data = json.loads(check_results(tmp_path, tasks=tasks, newer_than=started).read_text())
    assert (data["config"]["model"], data["config"]["model_args"]) == ("vila_tcc", model_args)
    frames = json.loads((Path(tiny_vila) / "config.json").read_text())["num_video_frames"]
    for task in tasks:
        assert 0.0 <= data["results"][task]["exact_match,none"] <= 1.0
        assert data["n-samples"][task]["effective"] == N
        (path,) = (tmp_path / "efficiency").glob(f"vila_tcc_*_random-50_{task}_efficiency.jsonl")
        records = _records(path)
        assert sorted(r["index"] for r in records) == list(range(N))
        for r in records:
            assert RECORD_KEYS <= r.keys() and (r["framework"], r["base_model"]) == ("lmms_eval", tiny_vila)
            assert r["visual_before"] == 4 * (frames if task == "tccsynth_vid" else 1)
            assert r["visual_after"] == keep_count(r["visual_before"], 0.5)
            assert r["seq_before"] - r["seq_after"] == r["visual_before"] - r["visual_after"]
