"""run_all.sh's guard against resuming on results of other demo weights, and the framework commands its
suites would launch (--dry-run: no framework is run here)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import needs_assets

REPO = Path(__file__).resolve().parent.parent


def _run_all(results: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "run_all.sh"), "--results", str(results), "--frameworks", "none"],
                          capture_output=True, text=True, env={**os.environ, "PYTHON": "python3"}, timeout=300)


@needs_assets
def test_resuming_on_results_of_other_demo_weights_is_refused(tmp_path):
    results = tmp_path / "results"
    first = _run_all(results)
    fingerprint = (results / "demo_fingerprint").read_text()
    assert first.returncode == 0, first.stderr
    assert _run_all(results).returncode == 0  # same weights: resumes
    (results / "demo_fingerprint").write_text("0" * 32 + "\n")  # as if the tables came from other weights
    assert _run_all(results).returncode == 0  # no raw results to mix up: nothing to refuse
    assert (results / "demo_fingerprint").read_text() == fingerprint
    (results / "demo_fingerprint").write_text("0" * 32 + "\n")
    (results / "vlmeval").mkdir()
    refused = _run_all(results)
    assert refused.returncode == 1 and "other demo weights" in refused.stderr and "--results NEW_DIR" in refused.stderr


@needs_assets
def test_demo_suite_gives_its_processes_the_top_pad(tmp_path):
    """The demo suite exports ``cpu_memory``'s glibc settings to every process it starts after its set-up (the
    oracle runs' eager attention; a value the user set wins, see test_bench)."""
    from tcc_eval.cpu_memory import ENVIRONMENT

    log, wrapper = tmp_path / "calls.log", tmp_path / "python"
    wrapper.write_text(f'#!/usr/bin/env bash\necho "${{MALLOC_TOP_PAD_:-unset}} ${{MALLOC_MMAP_THRESHOLD_:-unset}} $*" '
                       f'>> {log}\nexec python3 "$@"\n')
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT}
    proc = subprocess.run(["bash", str(REPO / "run_all.sh"), "--results", str(tmp_path / "results"), "--frameworks",
                           "none"], capture_output=True, text=True, env={**env, "PYTHON": str(wrapper)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    padded = f"{ENVIRONMENT['MALLOC_TOP_PAD_']} {ENVIRONMENT['MALLOC_MMAP_THRESHOLD_']} "
    assert calls[0].startswith("unset unset "), calls  # the GPU count, before the demo suite's set-up
    set_up = next(i for i, call in enumerate(calls) if "tcc_eval.cpu_memory" in call)
    assert len(calls) > set_up + 1 and all(call.startswith(padded) for call in calls[set_up + 1:]), calls


def _dry_run(suite: str, results: Path, *options: str) -> list[list[str]]:
    proc = subprocess.run(["bash", str(REPO / "run_all.sh"), "--suite", suite, "--results", str(results), "--dry-run",
                           *options],
                          capture_output=True, text=True, env={**os.environ, "PYTHON": "python3"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line[2:]) for line in proc.stdout.splitlines() if line.startswith("+ ")]


def _option(argv: list[str], name: str) -> list[str]:
    """The values after ``name`` up to the next option."""
    start = argv.index(name) + 1
    end = next((i for i in range(start, len(argv)) if argv[i].startswith("--")), len(argv))
    return argv[start:end]


@pytest.mark.parametrize("suite", ["paper", pytest.param("demo", marks=needs_assets)])
def test_dry_run_commands_name_what_the_frameworks_know(suite, tmp_path, monkeypatch):
    """Every model, dataset and task a suite launches exists in VLMEvalKit / lmms-eval, every lmms-eval
    model_args parses, and every tcc run finds its compressors; a dry run writes nothing."""
    import vlmeval.config
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager
    from vlmeval.dataset import SUPPORTED_DATASETS
    from vlmeval.dataset.video_dataset_config import supported_video_datasets

    from model_registry import BASES
    from tcc_eval.api import MODALITIES
    from tcc_eval.flops import guess_shape, pyramid_stage_ratio
    from tcc_eval.integrations.lmms_eval.models import TCCSettings, check_compressor_folder

    compressors = tmp_path / "compressors"
    compressors.mkdir()
    for base in BASES:  # what a user trains for the paper suite, named as README says
        for modality in ("image", "video"):
            (compressors / f"{base}_{modality}.pt").touch()
    monkeypatch.setenv("TCC_COMPRESSOR_DIR", str(compressors))
    results = tmp_path / "results"
    commands = _dry_run(suite, results)
    assert not results.exists()

    (vlmeval_run,) = [c for c in commands if c[1:3] == ["-m", "vlmeval.run"]]
    models = _option(vlmeval_run, "--model")
    assert len(models) == (18 if suite == "paper" else 84)
    assert set(models) <= set(vlmeval.config.supported_VLM)
    datasets = _option(vlmeval_run, "--data")
    assert set(datasets) <= set(SUPPORTED_DATASETS) | set(supported_video_datasets)

    lmms_runs = [c for c in commands if c[1:3] == ["-m", "lmms_eval"]]
    assert len(lmms_runs) == (12 if suite == "paper" else 21)
    include = _option(lmms_runs[0], "--include_path") if "--include_path" in lmms_runs[0] else []
    known_tasks = TaskManager(include_path=include[0] if include else None).all_tasks
    pdrop_runs = 0
    for run in lmms_runs:
        (model,), (model_args,), (tasks,) = (_option(run, n) for n in ("--model", "--model_args", "--tasks"))
        assert get_model(model).model_id == model
        assert set(tasks.split(",")) <= set(known_tasks)
        kwargs = dict(arg.split("=", 1) for arg in model_args.split(","))
        settings = TCCSettings.pop_from(kwargs, model)
        if settings.method == "tcc":  # both modalities' compressors found, as the wrapper will look them up
            if settings.compressor is None:
                assert set(settings.with_registry_compressors(kwargs["pretrained"]).compressor) == set(MODALITIES)
            else:
                check_compressor_folder(Path(settings.compressor), get_model(model).family)
        if settings.method == "pdrop":  # its stages reach the retention asked for on this checkpoint's LLM
            pyramid_stage_ratio(settings.keep_ratio, guess_shape(kwargs["pretrained"]).layers,
                                settings.options.get("pdrop_layers"))
            pdrop_runs += 1
    assert pdrop_runs == (3 if suite == "paper" else 0)
    # the paper suite's lmms-eval MVBench is recounted from the samples logs (aggregate._recount_empty_answers)
    assert all(("--log_samples" in run) == (suite == "paper") for run in lmms_runs)
    assert commands[-1][-2:] == ["tcc_eval/aggregate.py", str(results)]


def test_methods_and_bases_options_set_the_grid(tmp_path):
    """--methods replaces the suite's VLMEvalKit methods (the suite's skips still apply; lmms-eval keeps its own
    runs) and --bases the paper suite's checkpoints, in both frameworks, PyramidDrop's early stages following each
    checkpoint's depth; an unknown method token or base, or --bases for the demo suite, stops the run before
    anything launches, naming what is known."""
    import vlmeval.config
    from lmms_eval.models import get_model

    commands = _dry_run("paper", tmp_path / "results", "--methods", "VisionZip,PDrop", "--bases", "Qwen25VL,LLaVAOV05B")
    (vlmeval_run,) = [c for c in commands if c[1:3] == ["-m", "vlmeval.run"]]
    models = _option(vlmeval_run, "--model")
    expected = {f"{base}_{m}" for base in ("Qwen25VL", "LLaVAOV05B")
                for m in ("Vanilla", "VisionZip50", "VisionZip25", "PDrop50")}
    assert set(models) == expected and len(models) == len(expected)
    assert set(models) <= set(vlmeval.config.supported_VLM)
    lmms_runs = {(_option(c, "--model")[0], _option(c, "--model_args")[0]) for c in commands
                 if c[1:3] == ["-m", "lmms_eval"]}
    expected_runs = set()
    for model, checkpoint, stages in (("qwen2_5_vl_tcc", "Qwen/Qwen2.5-VL-7B-Instruct", "2/14/21"),  # 28 layers
                                      ("llava_onevision_tcc", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "2/12/18")):
        assert get_model(model).model_id == model
        expected_runs |= {(model, f"pretrained={checkpoint},{args}") for args in (
            "method=none", "method=tcc,ratio=0.5", "method=tcc,ratio=0.25",
            f"method=pdrop,ratio=0.25,pdrop_layers={stages}")}
    assert lmms_runs == expected_runs
    for options, messages in (
            (["--suite", "paper", "--methods", "TCC,Zip"], ["unknown method token(s) ['Zip']", "VisionZip"]),
            (["--suite", "paper", "--bases", "Qwen25VL,TinyVILA"], ["--bases ['TinyVILA']: not a", "Qwen25VL3B"]),
            (["--bases", "Qwen25VL"], ["--bases picks real checkpoints for --suite paper"])):
        proc = subprocess.run(["bash", str(REPO / "run_all.sh"), "--results", str(tmp_path / "r2"), "--dry-run",
                               *options], capture_output=True, text=True, env={**os.environ, "PYTHON": "python3"},
                              timeout=300)
        assert proc.returncode == 2 and all(m in proc.stderr for m in messages), proc.stderr
        assert not [line for line in proc.stdout.splitlines() if line.startswith("+ ")]


def _run_all_args(results: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "run_all.sh"), "--results", str(results), *args],
                          capture_output=True, text=True, env={**os.environ, "PYTHON": "python3"}, timeout=300)


def test_bad_arguments_are_refused(tmp_path):
    """A typo in --frameworks ran nothing, then aggregated whatever the folder held; an option without its value
    reached `set -u` ("$2: unbound variable"), an empty --methods ran the default grid."""
    typo = _run_all_args(tmp_path / "r", "--frameworks", "vlmevl", "--dry-run")
    assert typo.returncode == 2 and "got 'vlmevl'" in typo.stderr
    many = _run_all_args(tmp_path / "r", "--n", "many", "--dry-run")
    assert many.returncode == 2 and "--n takes a positive integer, got 'many'" in many.stderr
    for args, option in ((["--dry-run", "--n"], "--n"), (["--methods", "", "--dry-run"], "--methods"),
                         (["--frameworks", "", "--dry-run"], "--frameworks"),
                         (["--results", "--dry-run"], "--results")):  # an option without its value
        missing = subprocess.run(["bash", str(REPO / "run_all.sh"), *args], capture_output=True, text=True,
                                 timeout=120)
        assert missing.returncode == 2 and f"{option} needs a value" in missing.stderr, missing.stderr
    (tmp_path / "a_file").write_text("")
    a_file = _run_all_args(tmp_path / "a_file", "--dry-run")
    assert a_file.returncode == 2 and "is a file; give a folder" in a_file.stderr


@needs_assets
def test_a_results_folder_keeps_its_demo_set_size(tmp_path):
    """--n on a results folder run with another size reused its score files: the size check lives where
    VLMEvalKit loads a set, which a fully resumed run never reaches, so run_all.sh runs it first."""
    data = tmp_path / "r" / "data" / "LMUData"
    data.mkdir(parents=True)
    env = {**os.environ, "LMUData": str(data), "TCC_SYNTH_N": "4"}
    subprocess.run(["python3", "-c", "from tcc_eval.integrations.vlmeval.datasets import ensure_image_set; "
                    "ensure_image_set()"], env=env, check=True, timeout=300)
    resized = _run_all_args(tmp_path / "r", "--frameworks", "vlmeval", "--n", "6")
    assert resized.returncode == 1, resized.stderr
    assert "holds a synthetic set of n=4" in resized.stderr and "this run asks for n=6" in resized.stderr
    assert "--results NEW_DIR" in resized.stderr and "delete" not in resized.stderr
