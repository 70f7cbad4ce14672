"""aggregate.py on a results tree written exactly the way VLMEvalKit 0.0.20 and lmms-eval 0.7.3 write it.

The writers reproduced here follow vlmeval/smp/file.py ``dump`` (csv: ``to_csv(index=False,
quoting=QUOTE_ALL)``, json: ``indent=4, ensure_ascii=False``), ``report_acc`` (MCQ fractions per split),
``MME_rating`` + ``d2df`` (one row: perception, reasoning, categories), the MVBench / Video-MME
``get_dimension_rating``, and lmms-eval's ``save_results_aggregated`` (``indent=2``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tcc_eval.aggregate import (TableOptions, aggregate, lmms_base_model, main, parse_model_args,
                                parse_model_name)
from tcc_eval.flops import LLM_SHAPES, LLMShape, fastv_average_retention, flops_ratio, visual_flops

REPO = Path(__file__).resolve().parents[1]
OLD = 1_700_000_000  # mtime of superseded runs


# --------------------------------------------------------------------------------------------------
# writers in the frameworks' formats
# --------------------------------------------------------------------------------------------------
def vlmeval_csv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, encoding="utf-8", quoting=csv.QUOTE_ALL)


def vlmeval_json(data, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    json.dump(data, open(path, "w"), indent=4, ensure_ascii=False)


def write_mcq_acc(path: Path, correct: int, total: int = 100) -> None:
    """report_acc: split 'none', Overall and per-category np.mean of hits (fractions)."""
    hits = np.array([1] * correct + [0] * (total - correct))
    cats = np.array(["coarse perception", "math"] * (total // 2))
    res = defaultdict(list)
    res["split"] = ["none"]
    res["Overall"] = [np.mean(hits)]
    for cat in sorted(set(cats)):
        res[cat] = [np.mean(hits[cats == cat])]
    vlmeval_csv(pd.DataFrame(res), path)


def write_mme_score(path: Path, perception: float, reasoning: float) -> None:
    """MME_rating + d2df: perception, reasoning, then the 14 categories (one row)."""
    ret = {"perception": perception, "reasoning": reasoning}
    ret.update({c: perception / 10 for c in ["OCR", "artwork", "celebrity", "color", "count", "existence",
                                             "landmark", "position", "posters", "scene"]})
    ret.update({c: reasoning / 4 for c in ["code_reasoning", "commonsense_reasoning", "numerical_calculation",
                                           "text_translation"]})
    vlmeval_csv(pd.DataFrame({k: [v] for k, v in ret.items()}), path)


def write_mvbench_rating(path: Path, correct: dict[str, int], per_task: int = 100) -> None:
    board = {task: [c, per_task, f"{c / per_task * 100:.2f}%"] for task, c in correct.items()}
    total_c, total_t = sum(correct.values()), per_task * len(correct)
    board["overall"] = [total_c, total_t, f"{total_c / total_t * 100:.2f}%"]
    vlmeval_json(board, path)


def write_videomme_rating(path: Path, overall: float, short: float) -> None:
    def block(value):
        return {"overall": f"{value:.3f}", "domain": {"Knowledge": f"{value:.3f}"},
                "sub_category": {"Humanity & History": f"{value:.3f}"}, "task_type": {"Counting Problem": "nan"}}
    vlmeval_json({"short": block(short), "medium": block(overall), "long": {**block(0), "overall": "nan"},
                  "overall": block(overall)}, path)


def write_lmms_results(output_path: Path, model: str, model_args: str, date: str, results: dict,
                       group_subtasks: dict, n_samples: dict, limit: int | None = None,
                       timezone: str | None = None) -> Path:
    pretrained = parse_model_args(model_args)["pretrained"]
    folder = output_path / "__".join(pretrained.split("/")[-2:])
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "results": results,
        "group_subtasks": group_subtasks,
        "configs": {t: {"task": t} for t in results},
        "versions": {t: "Yaml" for t in results},
        "n-shot": {t: 0 for t in results},
        "higher_is_better": {t: {} for t in results},
        "n-samples": n_samples,
        "config": {"model": model, "model_args": model_args, "batch_size": "1", "batch_sizes": [],
                   "device": "cuda", "use_cache": None, "limit": limit, "bootstrap_iters": 100000,
                   "gen_kwargs": "", "random_seed": 0, "numpy_seed": 1234, "torch_seed": 1234, "fewshot_seed": 1234},
        "git_hash": None, "date": date, "task_hashes": {},
        "model_source": model, "model_name": pretrained, "model_name_sanitized": folder.name,
        "system_instruction": None, "system_instruction_sha": None, "fewshot_as_multiturn": False,
        "chat_template": None, "chat_template_sha": None, "start_time": 1.0, "end_time": 2.0,
        "total_evaluation_time_seconds": "1.0",
    }
    if timezone is not None:  # lmms-eval 0.7 keeps its command line, --timezone included
        data["config"]["resolved_cli_args"] = {"model": model, "model_args": model_args, "timezone": timezone}
    path = folder / f"{date}_results.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    return path


def lmms_run(perception, cognition, synth, mv_a, mv_b):
    results = {
        "mme": {"alias": "mme", "mme_cognition_score,none": cognition, "mme_cognition_score_stderr,none": "N/A",
                "mme_perception_score,none": perception, "mme_perception_score_stderr,none": "N/A"},
        "mvbench": {"alias": "mvbench", " ": " "},
        "mvbench_action_antonym": {"alias": " - mvbench_action_antonym", "mvbench_accuracy,none": mv_a,
                                   "mvbench_accuracy_stderr,none": "N/A"},
        "mvbench_action_count": {"alias": " - mvbench_action_count", "mvbench_accuracy,none": mv_b,
                                 "mvbench_accuracy_stderr,none": "N/A"},
        "tccsynth_img": {"alias": "tccsynth_img", "exact_match,none": synth, "exact_match_stderr,none": 0.01},
    }
    groups = {"tccsynth_img": [], "mvbench": ["mvbench_action_antonym", "mvbench_action_count"], "mme": []}
    sizes = {"mme": {"original": 2374, "effective": 2374}, "tccsynth_img": {"original": 64, "effective": 64},
             "mvbench_action_antonym": {"original": 200, "effective": 100},
             "mvbench_action_count": {"original": 200, "effective": 300}}
    return results, groups, sizes


SELECT_S = 0.01  # the selection step every record of efficiency_line took


def write_flat_qwen2vl_lmms_run(output_path: Path, method: str, ratio: float, date: str, results: dict,
                                sizes: dict[str, int]) -> Path:
    """One qwen2_vl_tcc run of /models/Qwen/Qwen2-VL-7B-Instruct over tasks without subtasks, of ``sizes`` samples."""
    return write_lmms_results(output_path, "qwen2_vl_tcc",
                              f"pretrained=/models/Qwen/Qwen2-VL-7B-Instruct,method={method},ratio={ratio}", date,
                              results, {task: [] for task in results},
                              {task: {"original": n, "effective": n} for task, n in sizes.items()})


def efficiency_line(model, framework, dataset, index, method, ratio, base, before, after, prefill, total,
                    legacy=False, shape=LLM_SHAPES["qwen2-vl-7b"], layers=None):
    """A record as the wrappers write it; ``layers``: the visual tokens each LLM layer of ``shape`` held (by
    default ``after`` in every layer, FastV's first K=2 all of them); ``legacy``: as versions before the
    selection step's time and per-sample FLOPs were recorded wrote it."""
    record = {"model": model, "framework": framework, "dataset": dataset, "index": index, "method": method,
              "keep_ratio": ratio, "base_model": base, "visual_before": before, "visual_after": after,
              "seq_before": before + 60, "seq_after": after + 60, "prefill_s": prefill, "total_s": total,
              "kv_cache_bytes": (after + 60) * 57344, "visual_kv_cache_bytes": after * 57344, "new_tokens": 1}
    if legacy:
        return json.dumps({**record, "compressor_s": 0.05})
    if layers is None:
        early = 2 if method == "fastv" else 0
        layers = [before] * early + [after] * (shape.layers - early)
    record.update(vision_s=0.04, select_s=0.0 if method == "fastv" else SELECT_S,
                  visual_flops=sum(visual_flops(n, shape.hidden, shape.intermediate, 1) for n in layers),
                  visual_flops_full=visual_flops(before, shape.hidden, shape.intermediate, shape.layers))
    return json.dumps(record)


# --------------------------------------------------------------------------------------------------
# the results tree
# --------------------------------------------------------------------------------------------------
# (model, MMStar correct of 100, MME perception, reasoning, MVBench correct per task of 100)
VLMEVAL_RUNS = {
    "Qwen2VL7B_Vanilla": (60, 1500.0, 400.0, (70, 50)),
    "Qwen2VL7B_TCC50": (57, 1425.0, 380.0, (66, 48)),
    "Qwen2VL7B_TCC25": (54, 1350.0, 360.0, (63, 45)),
    "LLaVAOV7B_Vanilla": (50, 1600.0, 300.0, (60, 60)),
    "LLaVAOV7B_TCC50": (49, 1520.0, 300.0, (57, 57)),
    "LLaVAOV7B_TCC25": (45, 1440.0, 270.0, (54, 54)),
}


def build_tree(root: Path) -> dict[str, Path]:
    work = root / "vlmeval_work"
    special = {}
    for model, (mmstar, perception, reasoning, mv) in VLMEVAL_RUNS.items():
        folder = work / model
        if model == "Qwen2VL7B_TCC50":  # newer VLMEvalKit layout: one timestamped folder per run
            stale = folder / "T20251101-000000_G1234abcd"
            write_mcq_acc(stale / f"{model}_MMStar_acc.csv", 10)
            os.utime(stale / f"{model}_MMStar_acc.csv", (OLD, OLD))
            folder = folder / "T20251128-101010_G1234abcd"
        write_mcq_acc(folder / f"{model}_MMStar_acc.csv", mmstar)
        write_mme_score(folder / f"{model}_MME_score.csv", perception, reasoning)
        write_mvbench_rating(folder / f"{model}_MVBench_8frame_rating.json",
                             {"Action Antonym": mv[0], "Action Count": mv[1]})
        vlmeval_json({"MMStar": {"status": "done", "primary_metric": 0.99}}, folder / "status.json")
    special["corrupt"] = work / "LLaVAOV7B_TCC25" / "LLaVAOV7B_TCC25_MME_score.csv"
    special["corrupt"].write_bytes(b"\x00\x01garbage\xff")
    write_videomme_rating(work / "Qwen2VL7B_Vanilla" / "Qwen2VL7B_Vanilla_Video-MME_8frame_rating.json", 0.6, 0.7)
    write_videomme_rating(work / "Qwen2VL7B_TCC50" / "Qwen2VL7B_TCC50_Video-MME_8frame_rating.json", 0.57, 0.63)
    write_mcq_acc(work / "VILA15_TCC25" / "VILA15_TCC25_MMStar_acc.csv", 40)  # no vanilla run
    write_mcq_acc(work / "Qwen2VL7B_FastV25" / "Qwen2VL7B_FastV25_MMStar_acc.csv", 45)
    write_mcq_acc(work / "TinyQwen2VL_Vanilla" / "TinyQwen2VL_Vanilla_MMStar_acc.csv", 80)
    write_mcq_acc(work / "TinyQwen2VL_A050" / "TinyQwen2VL_A050_MMStar_acc.csv", 60)
    write_mcq_acc(work / "TinyQwen2VL_FastV25" / "TinyQwen2VL_FastV25_MMStar_acc.csv", 40)
    write_mcq_acc(work / "Qwen2-VL-7B-Instruct" / "Qwen2-VL-7B-Instruct_MMStar_acc.csv", 61)  # not ours

    eff = root / "vlmeval_work"
    lines = []
    for model, method, ratio, after, prefill in [("Qwen2VL7B_Vanilla", "none", 1.0, 1000, 2.0),
                                                  ("Qwen2VL7B_TCC50", "tcc", 0.5, 500, 1.2),
                                                  ("Qwen2VL7B_TCC25", "tcc", 0.25, 250, 0.7),
                                                  ("Qwen2VL7B_FastV25", "fastv", 0.25, 250, 0.9),
                                                  ("TinyQwen2VL_FastV25", "fastv", 0.25, 36, 0.1)]:
        for i in range(4):
            before = 144 if model.startswith("Tiny") else 1000
            lines.append(efficiency_line(model, "vlmeval", "MMStar", i, method, ratio, "Qwen2VL7B", before,
                                         min(before, after + (i % 2) * 2 - 1), prefill + 0.1 * i, prefill + 1.0,
                                         legacy=model.startswith("Tiny")))
    lines.insert(3, "{not json")
    special["efficiency"] = eff / "vlmeval_efficiency.jsonl"
    special["efficiency"].write_text("\n".join(lines) + "\n")

    lmms = root / "lmms_out"
    args = "pretrained=/models/Qwen/Qwen2-VL-7B-Instruct,method={},ratio={},compressor=/ckpt/c.pt,batch_size=1"
    write_lmms_results(lmms, "qwen2_vl_tcc", args.format("none", 1.0), "20251128_120000",
                       *lmms_run(1500.0, 400.0, 0.8, 70.0, 50.0))
    write_lmms_results(lmms, "qwen2_vl_tcc", args.format("tcc", 0.5), "20251128_130000",
                       *lmms_run(1425.0, 380.0, 0.76, 66.5, 47.5))
    (lmms / "Qwen__Qwen2-VL-7B-Instruct" / "20251128_140000_results.json").write_text('{"results": {')
    (lmms / "Qwen__Qwen2-VL-7B-Instruct" / "20251128_140000_samples_mme.jsonl").write_text("{}\n")
    (lmms / "lmms_efficiency.jsonl").write_text("\n".join(
        efficiency_line("qwen2_vl_tcc", "lmms_eval", "mme", i, m, r, "/models/Qwen/Qwen2-VL-7B-Instruct",
                        1200, int(1200 * r), p, p + 0.5) for i in range(3)
        for m, r, p in [("none", 1.0, 3.0), ("tcc", 0.5, 1.6)]) + "\n")
    return special


def snapshot(root: Path) -> dict[str, tuple[float, str]]:
    return {str(p): (p.stat().st_mtime, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    special = build_tree(root)
    before = snapshot(root)
    handler = _Collect()
    logger = logging.getLogger("tcc_eval.aggregate")
    logger.addHandler(handler)
    try:
        result = aggregate(root, options=TableOptions())
    finally:
        logger.removeHandler(handler)
    after = {k: v for k, v in snapshot(root).items() if "/tables/" not in k}
    summary = pd.read_csv(root / "tables" / "summary.csv")
    return dict(root=root, special=special, before=before, after=after, result=result, summary=summary,
                warnings=handler.messages)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def row(summary, framework, base, method, ratio, benchmark, metric):
    hit = summary[(summary.framework == framework) & (summary.base_model == base) & (summary.method == method)
                  & np.isclose(summary.keep_ratio, ratio) & (summary.benchmark == benchmark)
                  & (summary.metric == metric)]
    assert len(hit) == 1, (framework, base, method, ratio, benchmark, metric, len(hit))
    return hit.iloc[0]


# --------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("Qwen2VL_TCC50", ("Qwen2VL", "tcc", 0.5)),
    ("Qwen2VL7B_TCC25", ("Qwen2VL7B", "tcc", 0.25)),
    ("LLaVAOV_Random25", ("LLaVAOV", "random", 0.25)),
    ("TinyQwen2VL_A050", ("TinyQwen2VL", "a0", 0.5)),
    ("Qwen2VL_FastV25", ("Qwen2VL", "fastv", 0.25)),
    ("Qwen2VL_Oracle75", ("Qwen2VL", "oracle", 0.75)),
    ("VILA15_TCC25", ("VILA15", "tcc", 0.25)),
    ("LLaVAOV_DivPrune50", ("LLaVAOV", "divprune", 0.5)),
    ("VILA15_Uniform25", ("VILA15", "uniform", 0.25)),
    ("Qwen2VL_Pool50", ("Qwen2VL", "pool", 0.5)),
    ("Qwen2VL_Vanilla", ("Qwen2VL", "none", 1.0)),
])
def test_parse_model_name(name, expected):
    assert parse_model_name(name) == expected


def test_method_names_are_the_registrys():
    import model_registry
    from tcc_eval import aggregate
    from tcc_eval.methods import ALL_METHODS

    assert aggregate.METHOD_TOKENS == model_registry.METHOD_TOKENS
    assert sorted(aggregate.METHOD_ORDER) == sorted(ALL_METHODS)


@pytest.mark.parametrize("name", ["Qwen2-VL-7B-Instruct", "Qwen2VL_TCC", "Qwen2VL_SparseVLM50", "Qwen2VL_TCC0"])
def test_parse_model_name_rejects_unknown(name):
    with pytest.raises(ValueError, match="unknown model name|outside"):
        parse_model_name(name)


def test_model_args_and_base_name():
    args = parse_model_args("pretrained=/m/Qwen2-VL-7B-Instruct,method=tcc,ratio=0.5,max_pixels=1,2")
    assert args == {"pretrained": "/m/Qwen2-VL-7B-Instruct", "method": "tcc", "ratio": "0.5", "max_pixels": "1,2"}
    name = lmms_base_model("qwen2_vl_tcc", "/m/Qwen2-VL-7B-Instruct/")
    assert name == "qwen2_vl/Qwen2-VL-7B-Instruct"
    assert lmms_base_model("qwen2_vl", name) == name  # upstream vanilla and our wrapper pair; idempotent
    assert lmms_base_model("/m/Qwen2-VL-7B-Instruct", "/m/Qwen2-VL-7B-Instruct") == "Qwen2-VL-7B-Instruct"
    # ours is named by the upstream model it wraps (llava_onevision_tcc runs llava_hf), and a run without
    # pretrained= by the checkpoint that model loads then
    ov = "/m/llava-onevision-qwen2-7b-ov-hf"
    assert lmms_base_model("llava_onevision_tcc", ov) == lmms_base_model("llava_hf", ov) == \
        "llava_hf/llava-onevision-qwen2-7b-ov-hf"
    assert lmms_base_model("qwen2_vl_tcc", None) == lmms_base_model("qwen2_vl", "Qwen/Qwen2-VL-7B-Instruct") == name
    assert lmms_base_model("vila_tcc", "") == "vila/Llama-3-VILA1.5-8b"


def test_vlmeval_preservation_exact(run):
    s = run["summary"]
    van = row(s, "vlmeval", "Qwen2VL7B", "none", 1.0, "MMStar", "Overall")
    assert van.score == pytest.approx(60.0) and van.preservation == pytest.approx(1.0)
    r = row(s, "vlmeval", "Qwen2VL7B", "tcc", 0.25, "MMStar", "Overall")
    assert (r.score, r.vanilla_score, r.preservation) == pytest.approx((54.0, 60.0, 0.9))
    mme = row(s, "vlmeval", "Qwen2VL7B", "tcc", 0.5, "MME", "total")
    assert (mme.score, mme.vanilla_score, mme.preservation) == pytest.approx((1805.0, 1900.0, 0.95))
    assert bool(mme.primary)
    assert row(s, "vlmeval", "Qwen2VL7B", "tcc", 0.5, "MME", "reasoning").score == pytest.approx(380.0)
    mv = row(s, "vlmeval", "LLaVAOV7B", "tcc", 0.25, "MVBench_8frame", "overall")
    assert (mv.score, mv.vanilla_score, mv.preservation) == pytest.approx((54.0, 60.0, 0.9))
    vm = row(s, "vlmeval", "Qwen2VL7B", "tcc", 0.5, "Video-MME_8frame", "overall")
    assert (vm.score, vm.preservation) == pytest.approx((57.0, 0.95))
    assert row(s, "vlmeval", "TinyQwen2VL", "a0", 0.5, "MMStar", "Overall").preservation == pytest.approx(0.75)


def test_newest_nested_run_wins(run):
    r = row(run["summary"], "vlmeval", "Qwen2VL7B", "tcc", 0.5, "MMStar", "Overall")
    assert r.score == pytest.approx(57.0)
    assert "T20251128-101010" in r.source and "newest of 2 runs" in r.note
    table = run["result"].tables["vlmeval"].set_index(["base_model", "method", "keep_ratio"])
    assert "newest of 2 runs on some benchmarks" in table.loc[("Qwen2VL7B", "tcc", 0.5), "note"]


def test_newest_run_is_read_from_the_run_names_not_the_file_times(tmp_path):
    """A results folder copied without its files' times (scp -r, cp -r, a git clone) still knows its newest run:
    VLMEvalKit's run folder and lmms-eval's results file name their start; the mtime decides only where no name
    does (VLMEvalKit's day-only folders of one day)."""
    from tcc_eval.integrations.lmms_eval.efficiency import EfficiencyLog

    work = tmp_path / "vlmeval" / "Qwen2VL7B_TCC50"
    for run, correct, mtime in [("T20251128-090000", 30, OLD + 100), ("T20251129-090000", 50, OLD),
                                ("T20251127_G1a2b", 10, OLD + 200)]:
        score = work / run / "Qwen2VL7B_TCC50_MMStar_acc.csv"
        write_mcq_acc(score, correct)
        records = work / run / "Qwen2VL7B_TCC50_MMStar_efficiency.jsonl"
        records.write_text(efficiency_line("Qwen2VL7B_TCC50", "vlmeval", "MMStar", 0, "tcc", 0.5, "Qwen2VL7B",
                                           1000, 500, correct / 10, 9.0) + "\n")
        for path in (score, records):
            os.utime(path, (mtime, mtime))
    day_only = tmp_path / "vlmeval" / "Qwen2VL7B_TCC25"
    for run, correct, mtime in [("T20251128_G1a2b", 20, OLD + 100), ("T20251128_G0f0f", 40, OLD)]:
        write_mcq_acc(day_only / run / "Qwen2VL7B_TCC25_MMStar_acc.csv", correct)
        os.utime(day_only / run / "Qwen2VL7B_TCC25_MMStar_acc.csv", (mtime, mtime))
    lmms = tmp_path / "lmms"
    args = "pretrained=/m/Qwen2-VL-7B-Instruct,method=tcc,ratio=0.5"
    for date, mme, mtime in [("20251128_120000", 1400.0, OLD + 100), ("20251128_130000", 1300.0, OLD)]:
        path = write_lmms_results(lmms, "qwen2_vl_tcc", args, date, *lmms_run(mme, 400.0, 0.8, 70.0, 50.0))
        os.utime(path, (mtime, mtime))
    EfficiencyLog(lmms / "efficiency", "qwen2_vl_tcc", "/m/Qwen2-VL-7B-Instruct", "tcc", 0.5).write(
        "mme", 0, {"visual_before": 1000, "visual_after": 500, "prefill_s": 1.0, "total_s": 2.0, "kv_cache_bytes": 1})

    result = aggregate(tmp_path)
    summary = result.summary.fillna("")
    newest = row(summary, "vlmeval", "Qwen2VL7B", "tcc", 0.5, "MMStar", "Overall")
    assert newest.score == pytest.approx(50.0) and "T20251129-090000" in newest.source
    assert "newest of 3 runs" in newest.note
    same_day = row(summary, "vlmeval", "Qwen2VL7B", "tcc", 0.25, "MMStar", "Overall")
    assert same_day.score == pytest.approx(20.0)  # one day's runs: the newer file
    efficiency = result.efficiency.set_index(["framework", "dataset"])
    assert efficiency.loc[("vlmeval", "MMStar"), "prefill_s_mean"] == pytest.approx(5.0)  # the newest run's record
    lmms_row = summary[(summary.framework == "lmms_eval") & (summary.benchmark == "mme")].iloc[0]
    assert lmms_row.score == pytest.approx(1300.0 + 400.0) and "20251128_130000" in lmms_row.source


def test_vlmeval_local_runs_are_ordered_by_their_status_json_not_the_file_times(tmp_path):
    """VLMEvalKit 0.0.20 writes a local run straight into <work_dir>/<MODEL>/ (no run folder); the status.json it
    keeps there says when each dataset last ran, which a copy keeps: two work dirs copied newest first still give
    the newer run's score and efficiency records."""
    from vlmeval.smp.status_report import upsert_dataset_status

    for work, correct, updated in [("wd_dec05", 50, "2025-12-05T10:00:00+01:00"),
                                   ("wd_dec01", 57, "2025-12-01T10:00:00+01:00")]:
        folder = tmp_path / work / "Qwen2VL7B_TCC50"
        write_mcq_acc(folder / "Qwen2VL7B_TCC50_MMStar_acc.csv", correct)
        (folder / "Qwen2VL7B_TCC50_MMStar_efficiency.jsonl").write_text(efficiency_line(
            "Qwen2VL7B_TCC50", "vlmeval", "MMStar", 0, "tcc", 0.5, "Qwen2VL7B", 1000, 500, correct / 10, 9.0) + "\n")
        upsert_dataset_status(folder, "Qwen2VL7B_TCC50", "MMStar", status="done")  # VLMEvalKit's own writer
        status = json.loads((folder / "status.json").read_text())
        status["datasets"]["MMStar"]["updated_at"] = updated
        (folder / "status.json").write_text(json.dumps(status))
    for path in (tmp_path / "wd_dec01").rglob("*"):  # the older run copied last: the newer file times
        os.utime(path, (OLD + 100, OLD + 100))
    for path in (tmp_path / "wd_dec05").rglob("*"):
        os.utime(path, (OLD, OLD))

    result = aggregate(tmp_path)
    newest = row(result.summary.fillna(""), "vlmeval", "Qwen2VL7B", "tcc", 0.5, "MMStar", "Overall")
    assert newest.score == pytest.approx(50.0) and "wd_dec05" in newest.source and "newest of 2 runs" in newest.note
    efficiency = result.efficiency.set_index(["framework", "dataset"])
    assert efficiency.loc[("vlmeval", "MMStar"), "prefill_s_mean"] == pytest.approx(5.0)


def test_lmms_run_names_are_read_in_the_time_zone_they_were_named_in(tmp_path):
    """lmms-eval names its results in --timezone, Asia/Singapore (UTC+8) by default: a run named 17:28 there
    started before one named 09:29 under --timezone UTC."""
    args = "pretrained=/m/Qwen2-VL-7B-Instruct,method=tcc,ratio=0.5"
    for date, mme, timezone in [("20261203_172820", 1400.0, None), ("20261203_092842", 1300.0, "UTC"),
                                ("20261203_042800", 1200.0, "America/New_York")]:  # 09:28:00 UTC
        write_lmms_results(tmp_path, "qwen2_vl_tcc", args, date, *lmms_run(mme, 400.0, 0.8, 70.0, 50.0),
                           timezone=timezone)
    summary = aggregate(tmp_path).summary
    newest = summary[summary.benchmark == "mme"].iloc[0]
    assert newest.score == pytest.approx(1300.0 + 400.0) and "20261203_092842" in newest.source
    assert "newest of 3 runs" in newest.note


def test_missing_vanilla_is_noted(run):
    r = row(run["summary"], "vlmeval", "VILA15", "tcc", 0.25, "MMStar", "Overall")
    assert r.score == pytest.approx(40.0)
    assert pd.isna(r.vanilla_score) and pd.isna(r.preservation) and "no vanilla run" in r.note


def test_corrupt_and_unknown_files_warn_and_others_survive(run):
    corrupt = str(run["special"]["corrupt"])
    assert any(corrupt in m for m in run["warnings"]), run["warnings"]
    assert any("Qwen2-VL-7B-Instruct" in m and "unknown model name" in m for m in run["warnings"])
    assert any(m.startswith(f"skipped {run['special']['efficiency']}:4:") for m in run["warnings"])
    assert any("20251128_140000_results.json" in m for m in run["warnings"])
    assert all("\n" not in m for m in run["warnings"])
    s = run["summary"]
    assert not ((s.base_model == "LLaVAOV7B") & (s.keep_ratio == 0.25) & (s.benchmark == "MME")).any()
    assert row(s, "vlmeval", "LLaVAOV7B", "tcc", 0.25, "MMStar", "Overall").score == pytest.approx(45.0)
    assert set(s.benchmark) >= {"MMStar", "MME", "MVBench_8frame", "Video-MME_8frame", "mme", "tccsynth_img"}
    assert "status" not in " ".join(s.source)


def test_impossible_efficiency_records_are_skipped_and_named(tmp_path, caplog):
    """A record keeping more visual tokens than it had, or with a negative time, is no measurement: skipped with
    its line named, the others counted."""
    work = tmp_path / "w" / "Qwen2VL7B_TCC50"
    lines = [efficiency_line("Qwen2VL7B_TCC50", "vlmeval", "MMStar", 0, "tcc", 0.5, "Qwen2VL7B", 1000, 500, 1.0, 2.0),
             efficiency_line("Qwen2VL7B_TCC50", "vlmeval", "MMStar", 1, "tcc", 0.5, "Qwen2VL7B", 1000, 5000, 1.0, 2.0),
             efficiency_line("Qwen2VL7B_TCC50", "vlmeval", "MMStar", 2, "tcc", 0.5, "Qwen2VL7B", 1000, 500, -5.0, 2.0)]
    work.mkdir(parents=True)
    records = work / "Qwen2VL7B_TCC50_MMStar_efficiency.jsonl"
    records.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="tcc_eval.aggregate"):
        efficiency = aggregate(tmp_path / "w").efficiency.set_index("dataset")
    assert efficiency.loc["ALL", "samples"] == 1 and efficiency.loc["ALL", "prefill_s_mean"] == pytest.approx(1.0)
    assert any(f"{records}:2: visual_after 5000 exceeds visual_before 1000" in m for m in caplog.messages)
    assert any(f"{records}:3: negative prefill_s" in m for m in caplog.messages)


def test_dangling_result_links_and_unused_shapes_are_named(tmp_path, caplog):
    """A results file linking into an unmounted disk, and a --shape for a base no run has (a typo), are named
    rather than silently left out."""
    work = tmp_path / "w"
    write_mcq_acc(work / "Qwen2VL7B_Vanilla" / "Qwen2VL7B_Vanilla_MMStar_acc.csv", 60)
    link = work / "Qwen2VL7B_TCC50" / "Qwen2VL7B_TCC50_MMStar_acc.csv"
    link.parent.mkdir()
    link.symlink_to(tmp_path / "unmounted" / "acc.csv")
    options = TableOptions(shapes={"Qwen2Vl7B": LLM_SHAPES["qwen2-vl-7b"]})
    with caplog.at_level(logging.WARNING, logger="tcc_eval.aggregate"):
        aggregate(work, options=options)
    assert any(f"skipped {link}: it links to {tmp_path / 'unmounted' / 'acc.csv'}, which does not exist" in m
               for m in caplog.messages)
    assert any("--shape Qwen2Vl7B=...: no run has base model Qwen2Vl7B (the runs' bases: Qwen2VL7B)" in m
               for m in caplog.messages)


def test_a_metric_read_on_both_sides_of_1_is_flagged(tmp_path, caplog):
    """Files that do not say their scale (fraction or percent) are read alike per metric; values on both sides of 1
    are read as percentages, and the ones at or below 1 are flagged: a fraction among them would be 100x too small."""
    work = tmp_path / "w"
    write_mcq_acc(work / "Qwen2VL7B_Vanilla" / "Qwen2VL7B_Vanilla_MMStar_acc.csv", 60)  # 0.6: a fraction
    vlmeval_csv(pd.DataFrame({"split": ["none"], "Overall": [57.0]}),  # a tool that wrote percent
                work / "Qwen2VL7B_TCC50" / "Qwen2VL7B_TCC50_MMStar_acc.csv")
    with caplog.at_level(logging.WARNING, logger="tcc_eval.aggregate"):
        summary = aggregate(work).summary
    vanilla = row(summary, "vlmeval", "Qwen2VL7B", "none", 1.0, "MMStar", "Overall")
    assert "read as a percentage beside other runs' values above 1" in vanilla.note
    assert "read as a percentage" not in row(summary, "vlmeval", "Qwen2VL7B", "tcc", 0.5, "MMStar", "Overall").note
    assert any("Qwen2VL7B_Vanilla_MMStar_acc.csv: MMStar Overall 0.6 read as a percentage" in m
               for m in caplog.messages)


def test_raw_files_untouched(run):
    assert run["after"] == run["before"]


def test_lmms_results(run):
    s = run["summary"]
    base = "qwen2_vl/Qwen2-VL-7B-Instruct"
    mme = row(s, "lmms_eval", base, "tcc", 0.5, "mme", "total")
    assert (mme.score, mme.vanilla_score, mme.preservation) == pytest.approx((1805.0, 1900.0, 0.95))
    assert row(s, "lmms_eval", base, "none", 1.0, "mme", "cognition").score == pytest.approx(400.0)
    synth = row(s, "lmms_eval", base, "tcc", 0.5, "tccsynth_img", "exact_match")
    assert (synth.score, synth.preservation) == pytest.approx((76.0, 0.95))  # fraction -> percent
    mv = row(s, "lmms_eval", base, "tcc", 0.5, "mvbench", "mvbench_accuracy")
    van = (70.0 * 100 + 50.0 * 300) / 400  # weighted by effective samples
    assert (mv.score, mv.vanilla_score) == pytest.approx(((66.5 * 100 + 47.5 * 300) / 400, van))
    assert "mvbench_action_count" not in set(s.benchmark)


def test_tables_efficiency_and_costs(run):
    tables = run["result"].tables
    vt = tables["vlmeval"].set_index(["base_model", "method", "keep_ratio"])
    tcc50 = vt.loc[("Qwen2VL7B", "tcc", 0.5)]
    assert tcc50["MMStar"] == pytest.approx(57.0)
    # mean of MMStar 0.95, MME 0.95, MVBench 114/120, Video-MME 0.95
    assert tcc50["Avg preservation"] == pytest.approx(100 * (0.95 * 3 + 114 / 120) / 4)
    assert tcc50["Avg retention"] == pytest.approx(0.5)  # (499 + 501 + 499 + 501) / 4000
    assert tcc50["FLOPs ratio"] == pytest.approx(flops_ratio(1000, 0.5, LLM_SHAPES["qwen2-vl-7b"], "tcc"), rel=1e-5)
    assert tcc50["prefill s"] == pytest.approx(1.35 + SELECT_S)  # the LLM prefill and the selection before it
    assert tcc50["KV MB"] == pytest.approx(560 * 57344 / 1e6)
    assert tcc50["visual KV MB"] == pytest.approx(500 * 57344 / 1e6)  # the paper's KV figure: visual tokens only
    assert vt.loc[("Qwen2VL7B", "none", 1.0)]["FLOPs ratio"] == 1.0
    assert vt.loc[("Qwen2VL7B", "tcc", 0.25)]["note"] == "preservation over 3 of 4 benchmarks"
    assert "no efficiency records" in vt.loc[("LLaVAOV7B", "tcc", 0.5)]["note"]
    fastv = vt.loc[("Qwen2VL7B", "fastv", 0.25)]
    assert fastv["Avg retention"] == pytest.approx(fastv_average_retention(0.25, 28, 2))
    assert fastv["FLOPs ratio"] == pytest.approx(flops_ratio(1000, 0.25, "qwen2-vl-7b", "fastv"), rel=1e-5)
    assert fastv["prefill s"] == pytest.approx(0.9 + 0.15)  # its ranking is inside the prefill: nothing added
    tiny = vt.loc[("TinyQwen2VL", "fastv", 0.25)]
    assert tiny["Avg retention"] == pytest.approx(0.25) and "from the model name" in tiny["note"]
    assert pd.isna(tiny["FLOPs ratio"])
    lt = tables["lmms_eval"].set_index(["base_model", "method", "keep_ratio"])
    lrow = lt.loc[("qwen2_vl/Qwen2-VL-7B-Instruct", "tcc", 0.5)]
    assert lrow["prefill s"] == pytest.approx(1.6 + SELECT_S) and lrow["Avg retention"] == pytest.approx(0.5)
    eff = run["result"].efficiency
    allrow = eff[(eff.framework == "vlmeval") & (eff.method == "tcc") & (eff.keep_ratio == 0.25)
                 & (eff.dataset == "ALL")].iloc[0]
    assert allrow["samples"] == 4 and allrow["prefill_s_sum"] == pytest.approx(4 * 0.7 + 0.6)


def test_outputs_written(run):
    out = run["root"] / "tables"
    from openpyxl import load_workbook

    book = load_workbook(out / "tables.xlsx", read_only=True)
    assert {"summary", "vlmeval", "lmms_eval", "efficiency"} <= set(book.sheetnames)
    book.close()
    md = (out / "table_vlmeval.md").read_text()
    assert "| Qwen2VL7B | tcc | 0.500 |" in md and "Avg preservation" in md and "95.0%" not in md.split("\n")[0]
    for name in ["preservation_vlmeval_Qwen2VL7B.png", "preservation_vlmeval_LLaVAOV7B.png",
                 "preservation_lmms_eval_qwen2_vl_Qwen2-VL-7B-Instruct.png"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not (out / "preservation_vlmeval_VILA15.png").exists()  # nothing to plot without vanilla


def test_shape_override_enables_costs(tmp_path):
    """Records without a shape (older versions, other tools): --shape supplies the depth for FastV."""
    work = tmp_path / "w"
    write_mcq_acc(work / "MyVLM_Vanilla" / "MyVLM_Vanilla_MMStar_acc.csv", 50)
    write_mcq_acc(work / "MyVLM_FastV50" / "MyVLM_FastV50_MMStar_acc.csv", 40)
    after = 462  # FastV50 on a 28-layer LLM with K=2 keeps (0.5 * 28 - 2) / 26 = 46.2% from layer 2 on
    (work / "MyVLM_FastV50" / "MyVLM_FastV50_MMStar_efficiency.jsonl").write_text(
        efficiency_line("MyVLM_FastV50", "vlmeval", "MMStar", 0, "fastv", 0.5, "MyVLM", 1000, after, 1, 2,
                        legacy=True) + "\n")
    plain = aggregate(work).tables["vlmeval"].set_index("method")
    assert plain.loc["fastv", "Avg retention"] == pytest.approx(0.5) and "model name" in plain.loc["fastv", "note"]
    assert pd.isna(plain.loc["fastv", "FLOPs ratio"])
    shaped = aggregate(work, tmp_path / "o", TableOptions({"MyVLM": LLM_SHAPES["qwen2-vl-2b"]})).tables
    row = shaped["vlmeval"].set_index("method").loc["fastv"]
    assert row["Avg retention"] == pytest.approx((2 + 26 * after / 1000) / 28)
    assert row["FLOPs ratio"] == pytest.approx(flops_ratio(1000, after / 1000, "qwen2-vl-2b", "fastv"))


def test_registry_bases_resolve_to_their_checkpoint_shape():
    options = TableOptions()
    assert options.shape("Qwen2VL") == LLM_SHAPES["qwen2-vl-7b"]  # registry: Qwen/Qwen2-VL-7B-Instruct
    assert options.shape("LLaVAOV05B") == LLM_SHAPES["llava-ov-0.5b"]
    assert options.shape("VILA15") == options.shape("VILA15Fix") == LLM_SHAPES["llama3-8b"]  # Llama-3-VILA1.5-8b
    assert options.shape("VILA1513B") == LLM_SHAPES["vila1.5-13b"]
    assert options.shape("TinyQwen2VL") is None


def test_cli_script_and_module_forms(tmp_path):
    work = tmp_path / "w"
    write_mcq_acc(work / "Qwen2VL_Vanilla" / "Qwen2VL_Vanilla_MMStar_acc.csv", 50)
    write_mcq_acc(work / "Qwen2VL_TCC50" / "Qwen2VL_TCC50_MMStar_acc.csv", 45)
    (work / "Qwen2VL_TCC50" / "Qwen2VL_TCC50_MME_score.csv").write_text('"a","b"\n"1"\n"2","3","4"\n')
    script = subprocess.run([sys.executable, str(REPO / "tcc_eval" / "aggregate.py"), str(work),
                             "--shape", "Qwen2VL=qwen2-vl-2b"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert script.returncode == 0, script.stderr
    assert "Qwen2VL_TCC50_MME_score.csv" in script.stderr
    summary = pd.read_csv(work / "tables" / "summary.csv")
    assert summary.loc[summary.method == "tcc", "preservation"].iloc[0] == pytest.approx(0.9)
    missing = subprocess.run([sys.executable, "-m", "tcc_eval.aggregate", str(tmp_path / "nope")],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_no_results_write_nothing_and_keep_the_tables(tmp_path, capsys):
    """A folder without raw results (this repository's results/, which holds only the tables of a run) is an
    error that writes nothing: the tables already there are the only copy of that run's numbers."""
    work = tmp_path / "w"
    write_mcq_acc(work / "Qwen2VL_Vanilla" / "Qwen2VL_Vanilla_MMStar_acc.csv", 50)
    aggregate(work)
    shutil.rmtree(work / "Qwen2VL_Vanilla")
    before = snapshot(work)
    assert main([str(work)]) == 1
    assert "no results found" in capsys.readouterr().err
    assert snapshot(work) == before and (work / "tables" / "table_vlmeval.md").exists()
    assert main([str(work / "tables" / "summary.csv")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_output_folder_holding_results_is_refused(tmp_path, capsys):
    work = tmp_path / "w"
    write_mcq_acc(work / "Qwen2VL_Vanilla" / "Qwen2VL_Vanilla_MMStar_acc.csv", 50)
    write_mcq_acc(work / "Qwen2VL_TCC50" / "Qwen2VL_TCC50_MMStar_acc.csv", 45)
    assert main([str(work), "--out", str(work / "Qwen2VL_TCC50")]) == 1
    assert "holds results files" in capsys.readouterr().err
    assert not (work / "Qwen2VL_TCC50" / "summary.csv").exists()


def test_command_line_options_the_runs_cannot_take_are_refused(tmp_path, capsys):
    """--fastv-k below 1 and an --out that is a file stop at parse time; a --fastv-k beyond a model's layers
    stops with the layer count named, not flops' traceback, and writes no tables."""
    work = tmp_path / "w"
    write_mcq_acc(work / "Qwen2VL7B_Vanilla" / "Qwen2VL7B_Vanilla_MMStar_acc.csv", 50)
    write_mcq_acc(work / "Qwen2VL7B_FastV50" / "Qwen2VL7B_FastV50_MMStar_acc.csv", 45)  # no efficiency records
    (work / "Qwen2VL7B_Vanilla" / "Qwen2VL7B_Vanilla_MMStar_efficiency.jsonl").write_text(
        efficiency_line("Qwen2VL7B_Vanilla", "vlmeval", "MMStar", 0, "none", 1.0, "Qwen2VL7B", 800, 800, 1, 2) + "\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for args, message in ((["--fastv-k", "0"], "argument --fastv-k: 0 is not a positive whole number"),
                          (["--out", str(a_file)], f"argument --out: {a_file} is a file; give a folder")):
        with pytest.raises(SystemExit) as refused:
            main([str(work), *args])
        assert refused.value.code == 2 and message in capsys.readouterr().err
    assert main([str(work), "--fastv-k", "99", "--shape", "Qwen2VL7B=qwen2-vl-7b"]) == 1  # costed from the name
    assert "--fastv-k 99: the fastv runs of Qwen2VL7B have a 28-layer LLM, so K is in 1..27" in capsys.readouterr().err
    assert not (work / "tables").exists()


def test_rerun_drops_tables_of_vanished_runs_but_keeps_raw_files(tmp_path):
    work = tmp_path / "w"
    for base in ("Qwen2VL", "LLaVAOV"):
        write_mcq_acc(work / f"{base}_Vanilla" / f"{base}_Vanilla_MMStar_acc.csv", 50)
        write_mcq_acc(work / f"{base}_TCC50" / f"{base}_TCC50_MMStar_acc.csv", 45)
    aggregate(work)
    plots = work / "tables"
    assert (plots / "preservation_vlmeval_LLaVAOV.png").exists()
    own = [plots / "table_main.md", plots / "preservation_figure3_final.png"]  # the user's, not the tables'
    for path in own:
        path.write_text("mine")
    moved = tmp_path / "elsewhere"
    (work / "LLaVAOV_TCC50").rename(moved)  # the user moves a base model's runs out of the results
    (work / "LLaVAOV_Vanilla").rename(tmp_path / "elsewhere_vanilla")
    aggregate(work)
    assert (plots / "preservation_vlmeval_Qwen2VL.png").exists()
    assert not (plots / "preservation_vlmeval_LLaVAOV.png").exists()
    assert (moved / "LLaVAOV_TCC50_MMStar_acc.csv").exists()
    assert all(path.read_text() == "mine" for path in own)


def test_records_carry_shape_retention_and_fastv_k(tmp_path):
    """Records of this version name the LLM shape, K and the per-sample average retention: tables use
    them for a checkpoint nobody can name (FLOPs, FastV's retention) instead of guessing."""
    work = tmp_path / "w"
    shape = {"layers": 4, "hidden": 128, "intermediate": 256, "heads": 8, "kv_heads": 4, "head_dim": 16, "gated": True}
    extra = {"fastv": {"fastv_k": 1}, "pdrop": {"pdrop_lambda": 0.5, "pdrop_layers": [1, 2, 3]}}
    tiny = LLMShape(**shape)
    for name, method, ratio, layers in [("MyVLM_Vanilla", "none", 1.0, [144] * 4),
                                        ("MyVLM_FastV75", "fastv", 0.75, [144, 96, 96, 96]),
                                        ("MyVLM_PDrop50", "pdrop", 0.5, [144, 72, 36, 18]),
                                        ("MyVLM_TCC25", "tcc", 0.25, [36] * 4)]:
        write_mcq_acc(work / name / f"{name}_MMStar_acc.csv", 50)
        avg = sum(layers) / 576
        record = json.loads(efficiency_line(name, "vlmeval", "MMStar", 0, method, ratio, "MyVLM", 144, layers[-1],
                                            0.1, 0.2, shape=tiny, layers=layers))
        record.update(llm_shape=shape, avg_retention=avg, **extra.get(method, {}))
        (work / name / f"{name}_MMStar_efficiency.jsonl").write_text(json.dumps(record) + "\n")
    table = aggregate(work).tables["vlmeval"].set_index("method")
    assert table.loc["fastv", "Avg retention"] == pytest.approx(0.75) and table.loc["fastv", "note"] == ""
    assert table.loc["fastv", "FLOPs ratio"] == pytest.approx(flops_ratio(144, 96 / 144, tiny, "fastv", fastv_k=1))
    assert table.loc["tcc", "FLOPs ratio"] == pytest.approx(flops_ratio(144, 0.25, tiny, "tcc"))
    # PyramidDrop: per-stage counts 144, 72, 36, 18 in layers 0 / 1 / 2 / 3 of this 4-layer LLM
    assert table.loc["pdrop", "Avg retention"] == pytest.approx(270 / 576) and table.loc["pdrop", "note"] == ""
    per_layer = [visual_flops(n, 128, 256, 1) for n in (144, 72, 36, 18)]
    assert table.loc["pdrop", "FLOPs ratio"] == pytest.approx(sum(per_layer) / visual_flops(144, 128, 256, 4))


def test_pdrop_flops_use_the_recorded_stage_layers(tmp_path):
    """A PyramidDrop run with its own stage layers (pdrop_layers=1/3: layer 2 stays in stage 1) gets its FLOPs
    from the stages its records name; the same lambda with PyramidDrop's own stages would cost less."""
    work = tmp_path / "w"
    shape = {"layers": 4, "hidden": 128, "intermediate": 256, "heads": 8, "kv_heads": 4, "head_dim": 16, "gated": True}
    for name, method, ratio, layers in [("MyVLM_Vanilla", "none", 1.0, [144] * 4),
                                        ("MyVLM_PDrop56", "pdrop", 0.5625, [144, 72, 72, 36])]:
        write_mcq_acc(work / name / f"{name}_MMStar_acc.csv", 50)
        record = json.loads(efficiency_line(name, "vlmeval", "MMStar", 0, method, ratio, "MyVLM", 144, layers[-1],
                                            0.1, 0.2, shape=LLMShape(**shape), layers=layers))
        record.update(llm_shape=shape, avg_retention=(144 + 72 + 72 + 36) / 576 if method == "pdrop" else 1.0)
        if method == "pdrop":
            record.update(pdrop_lambda=0.5, pdrop_layers=[1, 3])
        (work / name / f"{name}_MMStar_efficiency.jsonl").write_text(json.dumps(record) + "\n")
    result = aggregate(work)
    row = result.tables["vlmeval"].set_index("method").loc["pdrop"]
    per_layer = [visual_flops(n, 128, 256, 1) for n in (144, 72, 72, 36)]
    assert row["FLOPs ratio"] == pytest.approx(sum(per_layer) / visual_flops(144, 128, 256, 4))
    assert row["FLOPs ratio"] > flops_ratio(144, 0.5, LLMShape(**shape), "pdrop")  # stages 1/2/3
    assert row["Avg retention"] == pytest.approx(324 / 576) and row["note"] == ""
    efficiency = result.efficiency.set_index(["method", "dataset"])
    assert efficiency.loc[("pdrop", "ALL"), "pdrop_layers"] == "1/3"


def test_pdrop_names_without_records_use_the_stage_ratio_of_their_retention(tmp_path):
    """A PyramidDrop run without efficiency records: its name gives the average retention, lambda follows from
    it (PyramidDrop's stages on the registry shape), and so do the FLOPs."""
    from tcc_eval.flops import pyramid_stage_ratio

    work = tmp_path / "w"
    for name in ("Qwen2VL7B_Vanilla", "Qwen2VL7B_PDrop50", "Qwen2VL7B_PDrop25"):
        write_mcq_acc(work / name / f"{name}_MMStar_acc.csv", 50)
    vanilla_record = efficiency_line("Qwen2VL7B_Vanilla", "vlmeval", "MMStar", 0, "none", 1.0, "Qwen2VL7B", 1000,
                                     1000, 1, 2)
    (work / "Qwen2VL7B_Vanilla" / "Qwen2VL7B_Vanilla_MMStar_efficiency.jsonl").write_text(vanilla_record + "\n")
    table = aggregate(work).tables["vlmeval"].set_index(["method", "keep_ratio"])
    row = table.loc[("pdrop", 0.5)]
    assert row["Avg retention"] == 0.5 and "PyramidDrop average retention from the model name" in row["note"]
    stage_ratio = pyramid_stage_ratio(0.5, 28)  # the visual token count comes from the vanilla run's records
    assert row["FLOPs ratio"] == pytest.approx(flops_ratio(1000, stage_ratio, "qwen2-vl-7b", "pdrop"))
    assert row["FLOPs ratio"] < 0.5
    # 25% is below its floor by the name, so only a record (a run with match=kept) could say which lambda ran
    floor = table.loc[("pdrop", 0.25)]
    assert pd.isna(floor["FLOPs ratio"]) and "per-stage ratio unknown" in floor["note"]


def test_runs_without_records_take_k_match_and_stages_from_their_variant(tmp_path):
    """lmms-eval runs without efficiency records still name their options in model_args: a FastV run at
    fastv_k=4 is costed at K=4 (not --fastv-k), a match=kept name gives the share kept after layer K (PyramidDrop:
    lambda), and pdrop_layers gives the stages."""
    from tcc_eval.flops import pyramid_average_retention, pyramid_stage_ratio
    from tcc_eval.integrations.lmms_eval.efficiency import EfficiencyLog

    args = "pretrained=/m/Qwen2-VL-7B-Instruct,method={},ratio={}{}"
    runs = [("none", 1.0, ""), ("fastv", 0.5, ",fastv_k=4"), ("dart", 0.5, ",match=kept"),
            ("pdrop", 0.5, ",match=kept"), ("pdrop", 0.25, ",pdrop_layers=2/14/21")]
    for hour, (method, ratio, extra) in enumerate(runs):
        write_lmms_results(tmp_path, "qwen2_vl_tcc", args.format(method, ratio, extra), f"20251128_1{hour}0000",
                           *lmms_run(1500.0, 400.0, 0.8, 70.0, 50.0))
    log = EfficiencyLog(tmp_path / "efficiency", "qwen2_vl_tcc", "/m/Qwen2-VL-7B-Instruct", "none", 1.0)
    log.write("mme", 0, {"visual_before": 1000, "visual_after": 1000, "prefill_s": 1.0, "total_s": 2.0,
                         "kv_cache_bytes": 1})
    table = aggregate(tmp_path, options=TableOptions(fastv_k=2)).tables["lmms_eval"].set_index(
        ["method", "variant", "keep_ratio"])
    fastv = table.loc[("fastv", "fastv_k=4", 0.5)]
    assert fastv["Avg retention"] == pytest.approx(0.5)
    assert fastv["FLOPs ratio"] == pytest.approx(flops_ratio(1000, (0.5 * 28 - 4) / 24, "qwen2-vl-7b", "fastv", 4))
    dart = table.loc[("dart", "match=kept", 0.5)]
    assert dart["Avg retention"] == pytest.approx((2 + 26 * 0.5) / 28)
    assert dart["FLOPs ratio"] == pytest.approx(flops_ratio(1000, 0.5, "qwen2-vl-7b", "dart", 2))
    assert "kept share in the model name" in dart["note"]
    pdrop_kept = table.loc[("pdrop", "match=kept", 0.5)]
    assert pdrop_kept["Avg retention"] == pytest.approx(pyramid_average_retention(0.5, 28))
    assert pdrop_kept["FLOPs ratio"] == pytest.approx(flops_ratio(1000, 0.5, "qwen2-vl-7b", "pdrop"))
    early = table.loc[("pdrop", "pdrop_layers=2/14/21", 0.25)]  # below PyramidDrop's own floor of 7/28
    stage_ratio = pyramid_stage_ratio(0.25, 28, "2/14/21")
    assert early["FLOPs ratio"] == pytest.approx(flops_ratio(1000, stage_ratio, "qwen2-vl-7b", "pdrop",
                                                             pdrop_layers="2/14/21"))
    assert "per-stage ratio unknown" not in early["note"]


def test_method_variant_names_only_non_default_options_the_method_reads():
    import inspect

    from tcc_eval.api import wrap_model
    from tcc_eval.methods import VISIONZIP_CONTEXTUAL_SHARE
    from tcc_eval.options import OPTION_DEFAULTS, method_variant

    signature = inspect.signature(wrap_model).parameters
    assert OPTION_DEFAULTS == {name: signature[name].default for name in OPTION_DEFAULTS}
    assert OPTION_DEFAULTS["contextual_share"] == VISIONZIP_CONTEXTUAL_SHARE
    assert method_variant("tcc", {}) == method_variant("tcc", None) == ""
    assert method_variant("tcc", {"positions": "original", "budget": "global", "seed": 3, "fastv_k": 4}) == ""
    assert method_variant("tcc", {"positions": "renumber", "budget": "per_group"}) == \
        "budget=per_group positions=renumber"
    assert method_variant("random", {"seed": "3"}) == method_variant("random", {"seed": 3}) == "seed=3"
    assert method_variant("fastv", {"fastv_k": "2", "positions": "renumber", "budget": "per_group"}) == ""
    assert method_variant("dart", {"fastv_k": "3", "match": "kept"}) == "fastv_k=3 match=kept"
    assert method_variant("pdrop", {"pdrop_layers": [2, 14, 21]}) == method_variant(
        "pdrop", {"pdrop_layers": "2/14/21"}) == "pdrop_layers=2/14/21"
    assert method_variant("visionzip", {"contextual_share": "0"}) == "contextual_share=0"
    assert method_variant("visionzip", {"contextual_share": 0.15625}) == ""
    assert method_variant("tcc", {"instruction_rows": "last"}) == method_variant("a0", {"instruction_rows": "last"}) \
        == "instruction_rows=last"
    assert method_variant("tcc", {"instruction_rows": "after_last_visual"}) == ""
    assert method_variant("random", {"instruction_rows": "last"}) == ""  # random reads no instruction rows
    assert method_variant("none", {"positions": "renumber"}) == ""


def test_method_options_give_variants_their_own_rows(tmp_path):
    """An ablation shares the results folder with the runs it is compared against: each variant (non-default
    method options, from the efficiency records for VLMEvalKit and from model_args for lmms-eval) gets its own
    row, paired with the one vanilla run, with its own costs; default or unread options make no variant."""
    from tcc_eval.integrations.lmms_eval.efficiency import EfficiencyLog

    work = tmp_path / "vlmeval"  # the same registered name run twice (--config method_options), one folder per run
    for model, run, method, ratio, options, correct, prefill in [
            ("Qwen2VL7B_Vanilla", "T20251128-100000_G1", "none", 1.0, {}, 60, 2.0),
            ("Qwen2VL7B_TCC25", "T20251128-110000_G1", "tcc", 0.25, {"positions": "original", "fastv_k": 3}, 57, 0.7),
            ("Qwen2VL7B_TCC25", "T20251128-120000_G1", "tcc", 0.25, {"positions": "renumber"}, 51, 0.6)]:
        folder = work / model / run
        write_mcq_acc(folder / f"{model}_MMStar_acc.csv", correct)
        record = json.loads(efficiency_line(model, "vlmeval", "MMStar", 0, method, ratio, "Qwen2VL7B", 1000,
                                            int(1000 * ratio), prefill, prefill + 1))
        (folder / f"{model}_MMStar_efficiency.jsonl").write_text(json.dumps({**record, "method_options": options})
                                                                + "\n")
    lmms = tmp_path / "lmms"
    args = "pretrained=/m/Qwen2-VL-7B-Instruct,method={},ratio={}{}"
    for method, ratio, extra, mme, date in [("none", 1.0, "", 1500.0, "20251128_120000"),
                                            ("fastv", 0.5, ",fastv_k=2,budget=per_group", 1400.0, "20251128_130000"),
                                            ("fastv", 0.5, ",fastv_k=3", 1200.0, "20251128_140000")]:
        write_lmms_results(lmms, "qwen2_vl_tcc", args.format(method, ratio, extra), date,
                           *lmms_run(mme, 400.0, 0.8, 70.0, 50.0))
        options = parse_model_args(extra.strip(","))
        log = EfficiencyLog(lmms / "efficiency", "qwen2_vl_tcc", "/m/Qwen2-VL-7B-Instruct", method, ratio,
                            method_options={"budget": "global", "seed": 0, "positions": "original", **options})
        log.write("mme", 0, {"visual_before": 1000, "visual_after": int(1000 * ratio), "prefill_s": mme / 1000,
                             "total_s": 2.0, "kv_cache_bytes": 1})
    assert len(list((lmms / "efficiency").glob("*.jsonl"))) == 3  # the variant's records did not replace fastv's

    tables = aggregate(tmp_path).tables
    vlmeval = tables["vlmeval"].fillna("").set_index(["method", "variant"])
    assert vlmeval.loc[("tcc", ""), "MMStar"] == pytest.approx(57.0)
    assert vlmeval.loc[("tcc", "positions=renumber"), "MMStar"] == pytest.approx(51.0)
    assert vlmeval.loc[("tcc", "positions=renumber"), "Avg preservation"] == pytest.approx(100 * 51 / 60)
    assert vlmeval.loc[("tcc", ""), "prefill s"] == pytest.approx(0.7 + SELECT_S)
    assert vlmeval.loc[("tcc", "positions=renumber"), "prefill s"] == pytest.approx(0.6 + SELECT_S)
    assert "newest of" not in " ".join(vlmeval["note"])
    lmms_table = tables["lmms_eval"].set_index(["method", "variant"])
    assert lmms_table.loc[("fastv", ""), "mme"] == pytest.approx(1800.0)
    assert lmms_table.loc[("fastv", "fastv_k=3"), "mme"] == pytest.approx(1600.0)
    assert lmms_table.loc[("fastv", "fastv_k=3"), "Avg preservation"] == pytest.approx(  # mme, mvbench, synth
        100 * (1600 / 1900 + 1 + 1) / 3)
    assert lmms_table.loc[("fastv", "fastv_k=3"), "prefill s"] == pytest.approx(1.2)
    assert lmms_table.loc[("fastv", ""), "prefill s"] == pytest.approx(1.4)
    markdown = (tmp_path / "tables" / "table_lmms_eval.md").read_text()
    assert "| variant |" in markdown and "fastv_k=3" in markdown
    summary = pd.read_csv(tmp_path / "tables" / "summary.csv").fillna("")
    assert set(summary[summary.method == "fastv"]["variant"]) == {"", "fastv_k=3"}


def test_tables_without_variants_have_no_variant_column(run):
    assert all("variant" not in table.columns for table in run["result"].tables.values())
    assert "variant" in run["summary"].columns


def test_mmvet_scores_are_read_from_vlmevalkits_per_category_table(tmp_path):
    """MM-Vet writes ``<MODEL>_MMVet_<judge>_score.csv``, a row per capability with acc in percent: the table
    gets an MMVet column from its Overall row, with the judge dropped from the name (from the run's status.json
    where VLMEvalKit wrote one, else by VLMEvalKit's judge names)."""
    from vlmeval.dataset.utils.mmvet import MMVet_acc
    from vlmeval.smp import dump
    from vlmeval.smp.status_report import upsert_dataset_status

    work = tmp_path / "w"
    runs = {"Qwen2VL7B_Vanilla": ([1.0, 0.5, 0.3, 0.6], "gpt-4-turbo", False),
            "Qwen2VL7B_TCC50": ([1.0, 0.2, 0.3, 0.3], "my-local-judge", True)}
    for model, (grades, judge, with_status) in runs.items():
        folder = work / model / "T20261130_Gabc"
        folder.mkdir(parents=True)
        storage = folder / f"{model}_MMVet_{judge}.xlsx"  # the judge's per-sample grades, as MMVet.evaluate keeps them
        pd.DataFrame({"category": ["rec", "ocr,math", "know,spat", "gen"], "score": grades}).to_excel(storage,
                                                                                                     index=False)
        score, score_fine = MMVet_acc(str(storage))
        dump(score, str(folder / f"{model}_MMVet_{judge}_score.csv"))
        dump(score_fine, str(folder / f"{model}_MMVet_{judge}_score_fine.csv"))
        if with_status:  # a judge name no pattern knows: only status.json can say where the dataset name ends
            upsert_dataset_status(folder, model_name=model, dataset_name="MMVet", judge_model=judge)
    summary = aggregate(work).summary
    assert set(summary["benchmark"]) == {"MMVet"}
    tcc = row(summary, "vlmeval", "Qwen2VL7B", "tcc", 0.5, "MMVet", "Overall")
    assert (tcc.score, tcc.vanilla_score) == pytest.approx((45.0, 60.0))  # mean grade x 100
    # the judges, from status.json and from the file name, differ: the scores are not comparable
    assert math.isnan(tcc.preservation) and "judged by my-local-judge, the vanilla run by gpt-4-turbo" in tcc.note


def test_hallusionbench_reports_the_mean_of_its_three_accuracies(tmp_path):
    """HallusionBench's score table has a row per split and aAcc / fAcc / qAcc columns, no Overall one: it was
    skipped. Its headline is the mean of the three on the Overall split (VLMEvalKit's own rating writes it)."""
    from vlmeval.dataset.utils.yorn import Hallusion_rating
    from vlmeval.smp import dump

    work = tmp_path / "w"
    # 2 sets x 2 figures x 2 questions (index: category_l2_?_set_figure_question)
    runs = {"Qwen2VL7B_Vanilla": [1, 1, 1, 1, 1, 0, 1, 0], "Qwen2VL7B_TCC50": [1, 1, 0, 0, 1, 0, 1, 0]}
    for model, scores in runs.items():
        folder = work / model
        folder.mkdir(parents=True)
        indices = [f"VS_chart_0_{s}_{fig}_{q}" for s in range(2) for fig in range(2) for q in range(2)]
        store = folder / f"{model}_HallusionBench_auxmatch.xlsx"
        dump(pd.DataFrame({"index": indices, "category": "VS", "l2-category": "chart", "score": scores}), str(store))
        dump(Hallusion_rating(str(store)), str(folder / f"{model}_HallusionBench_score.csv"))
    summary = aggregate(work).summary
    vanilla = row(summary, "vlmeval", "Qwen2VL7B", "none", 1.0, "HallusionBench", "Overall")
    # vanilla: aAcc 6 of 8 answers; fAcc 2 of 4 figures with every answer right (set 1's are not); qAcc 3 of 4
    # questions right on both figures (set 1's second is not)
    assert vanilla.score == pytest.approx((75.0 + 50.0 + 75.0) / 3)
    # tcc: aAcc 4 of 8, fAcc 1 of 4 (set 0, figure 0), qAcc 1 of 4 (set 1, question 0)
    tcc = row(summary, "vlmeval", "Qwen2VL7B", "tcc", 0.5, "HallusionBench", "Overall")
    assert (tcc.score, tcc.preservation) == pytest.approx(((50.0 + 25.0 + 25.0) / 3, 0.5))
    assert row(summary, "vlmeval", "Qwen2VL7B", "tcc", 0.5, "HallusionBench", "fAcc").score == pytest.approx(25.0)
    assert "split Overall" in tcc.note


def test_mvbench_failed_and_empty_answers_count_as_wrong(tmp_path):
    """VLMEvalKit's MVBench rating counts a question right when its score is truthy, so a failed answer (-1)
    and an empty one (never scored: NaN) count as right; the tables recount from the per-sample scores beside it
    and say so. A rating whose scores agree is taken as it is."""
    from vlmeval.dataset.utils.mvbench import get_dimension_rating
    from vlmeval.smp import dump

    work = tmp_path / "w"
    runs = {"Qwen2VL7B_Vanilla": [1, 1, 1, 0, 1, 0, 1, 1], "Qwen2VL7B_TCC25": [1, 0, -1, 0, 1, None, None, 1]}
    for model, scores in runs.items():
        folder = work / model
        folder.mkdir(parents=True)
        score_file = folder / f"{model}_MVBench_8frame_score.xlsx"
        pd.DataFrame({"index": range(8), "task_type": ["Action Count", "Action Antonym"] * 4,
                      "score": scores}).to_excel(score_file, index=False)
        dump(get_dimension_rating(str(score_file)), str(folder / f"{model}_MVBench_8frame_rating.json"))
    upstream = json.loads((work / "Qwen2VL7B_TCC25" / "Qwen2VL7B_TCC25_MVBench_8frame_rating.json").read_text())
    assert upstream["overall"][:2] == [6, 8]  # the upstream count this test guards against
    summary = aggregate(work).summary
    tcc = row(summary, "vlmeval", "Qwen2VL7B", "tcc", 0.25, "MVBench_8frame", "overall")
    assert (tcc.score, tcc.vanilla_score) == pytest.approx((37.5, 75.0))
    assert "3/8, recounted from the per-sample scores: the rating counted 3 failed or empty answers" in tcc.note
    vanilla = row(summary, "vlmeval", "Qwen2VL7B", "none", 1.0, "MVBench_8frame", "overall")
    assert vanilla.note == "6/8"
    # an unreadable per-sample file loses no score: the rating's own count, said to be that
    (work / "Qwen2VL7B_TCC25" / "Qwen2VL7B_TCC25_MVBench_8frame_score.xlsx").write_bytes(b"not a workbook")
    tables = aggregate(work)
    tcc = row(tables.summary, "vlmeval", "Qwen2VL7B", "tcc", 0.25, "MVBench_8frame", "overall")
    assert tcc.score == pytest.approx(75.0)
    assert "6/8, the rating's own count (Qwen2VL7B_TCC25_MVBench_8frame_score.xlsx is unreadable" in tcc.note
    notes = tables.tables["vlmeval"].set_index("method")["note"]  # the table says it too, not only summary.csv
    assert "the rating's own count on MVBench_8frame, which counts failed and empty answers as right" in notes["tcc"]
    assert "rating's own count" not in notes["none"]
    # one of another length (a partial or another run's file) is not this rating's: its own count, said to be that
    pd.DataFrame({"index": range(5), "task_type": ["Action Count"] * 5, "score": [1, 0, 0, 0, 1]}).to_excel(
        work / "Qwen2VL7B_TCC25" / "Qwen2VL7B_TCC25_MVBench_8frame_score.xlsx", index=False)
    tcc = row(aggregate(work).summary, "vlmeval", "Qwen2VL7B", "tcc", 0.25, "MVBench_8frame", "overall")
    assert tcc.score == pytest.approx(75.0)
    assert "6/8, the rating's own count (the per-sample file has 5 rows)" in tcc.note


def test_videomme_recounted_from_per_sample_scores(tmp_path):
    """VLMEvalKit's Video-MME rating (its own get_dimension_rating) gives 3-decimal fractions and leaves answers
    scored -1 out: where the per-sample scores sit beside it, the tables recount every question, overall and per
    duration, and note the ones the rating left out; an unreadable score file keeps the rating's numbers."""
    from vlmeval.dataset.utils.videomme import get_dimension_rating
    from vlmeval.smp import dump

    work = tmp_path / "w"
    runs = {"Qwen2VL7B_Vanilla": [1, 1, 1, 0, 1, 1, 1], "Qwen2VL7B_TCC25": [1, 1, 0, 1, 1, -1, 1]}
    for model, scores in runs.items():
        folder = work / model
        folder.mkdir(parents=True)
        score_file = folder / f"{model}_Video-MME_8frame_score.xlsx"
        pd.DataFrame({"index": range(7), "duration": ["short"] * 4 + ["medium"] * 3, "domain": "Knowledge",
                      "sub_category": "Humanity & History", "task_type": "Counting Problem",
                      "score": scores}).to_excel(score_file, index=False)
        dump(get_dimension_rating(str(score_file)), str(folder / f"{model}_Video-MME_8frame_rating.json"))
    upstream = json.loads((work / "Qwen2VL7B_TCC25" / "Qwen2VL7B_TCC25_Video-MME_8frame_rating.json").read_text())
    assert (upstream["overall"]["overall"], upstream["medium"]["overall"]) == ("0.833", "1.000")  # 5/6, 2/2
    summary = aggregate(work).summary
    tcc = row(summary, "vlmeval", "Qwen2VL7B", "tcc", 0.25, "Video-MME_8frame", "overall")
    assert (tcc.score, tcc.vanilla_score, tcc.preservation) == pytest.approx((500 / 7, 600 / 7, 5 / 6))
    assert "5/7, recounted from the per-sample scores: the rating's 0.833 left out 1 failed or empty" in tcc.note
    medium = row(summary, "vlmeval", "Qwen2VL7B", "tcc", 0.25, "Video-MME_8frame", "medium")
    assert medium.score == pytest.approx(200 / 3) and "left out 1" in medium.note
    vanilla = row(summary, "vlmeval", "Qwen2VL7B", "none", 1.0, "Video-MME_8frame", "overall")
    assert (vanilla.score, vanilla.note) == (pytest.approx(600 / 7), "")  # the rating's 0.857, unrounded
    assert not (summary["benchmark"].eq("Video-MME_8frame") & summary["metric"].eq("long")).any()
    (work / "Qwen2VL7B_TCC25" / "Qwen2VL7B_TCC25_Video-MME_8frame_score.xlsx").write_bytes(b"not a workbook")
    tcc = row(aggregate(work).summary, "vlmeval", "Qwen2VL7B", "tcc", 0.25, "Video-MME_8frame", "overall")
    assert tcc.score == pytest.approx(83.3)


def test_mmbench_video_rating(tmp_path):
    """MMBench-Video's judge rating (VLMEvalKit's own get_dimension_rating: coarse_all, 0-3, a failed judgement
    as 0) is read on its own scale, Overall, Perception and Reasoning unrounded from the per-sample scores beside
    it, the judge taken from the file name, and shown to two decimals."""
    from vlmeval.dataset.utils.mmbench_video import get_dimension_rating
    from vlmeval.smp import dump

    work = tmp_path / "w"
    dims = ["['OCR']", "['Counting']", "['Causal Reasoning']", "['Video Topic']", "['Hallucination']",
            "['Future Prediction']", "['Natural Relation']"]
    runs = {"Qwen2VL7B_Vanilla": [3, 2, 2, 1, 3, 2, 0], "Qwen2VL7B_TCC25": [3, 2, -1, 1, 2, 2, 0]}
    for model, scores in runs.items():
        folder = work / model
        folder.mkdir(parents=True)
        stem = folder / f"{model}_MMBench_Video_8frame_nopack_gpt-4-turbo"
        pd.DataFrame({"index": range(7), "dimensions": dims, "score": scores}).to_excel(f"{stem}_score.xlsx",
                                                                                       index=False)
        dump(get_dimension_rating(f"{stem}_score.xlsx"), f"{stem}_rating.json")
    upstream = json.loads((work / "Qwen2VL7B_TCC25" / "Qwen2VL7B_TCC25_MMBench_Video_8frame_nopack_gpt-4-turbo"
                           "_rating.json").read_text())
    assert upstream["coarse_all"]["Overall"] == "1.43"  # 10/7
    result = aggregate(work)
    tcc = row(result.summary, "vlmeval", "Qwen2VL7B", "tcc", 0.25, "MMBench_Video_8frame_nopack", "Overall")
    assert (tcc.score, tcc.vanilla_score, tcc.preservation) == pytest.approx((10 / 7, 13 / 7, 10 / 13))
    assert "0-3 rating" in tcc.note  # both judged by gpt-4-turbo (the file names), so paired
    parts = {part: row(result.summary, "vlmeval", "Qwen2VL7B", "tcc", 0.25, "MMBench_Video_8frame_nopack", part)
             for part in ("Perception", "Reasoning")}
    # Reasoning: Causal Reasoning (failed: 0), Future Prediction 2, Natural Relation 0; Perception: 3, 2, 1, 2
    assert upstream["coarse_all"]["Reasoning"] == "0.67" and upstream["coarse_all"]["Perception"] == "2.00"
    assert (parts["Reasoning"].score, parts["Perception"].score) == pytest.approx((2 / 3, 2.0))
    assert not parts["Reasoning"].primary and not parts["Perception"].primary
    table = result.tables["vlmeval"].set_index("method")
    assert table.loc["tcc", "MMBench_Video_8frame_nopack"] == pytest.approx(10 / 7)
    assert "| 1.43 |" in (work / "tables" / "table_vlmeval.md").read_text()
    # A dimensions cell that is not a list keeps the rating's own 2-decimal parts, and Overall from the scores.
    score_file = work / "Qwen2VL7B_TCC25" / "Qwen2VL7B_TCC25_MMBench_Video_8frame_nopack_gpt-4-turbo_score.xlsx"
    pd.read_excel(score_file).assign(dimensions=["OCR"] * 7).to_excel(score_file, index=False)
    summary = aggregate(work).summary
    reasoning = row(summary, "vlmeval", "Qwen2VL7B", "tcc", 0.25, "MMBench_Video_8frame_nopack", "Reasoning")
    overall = row(summary, "vlmeval", "Qwen2VL7B", "tcc", 0.25, "MMBench_Video_8frame_nopack", "Overall")
    assert (reasoning.score, overall.score) == pytest.approx((0.67, 10 / 7))


def test_runs_scored_by_another_judge_than_vanilla_get_no_preservation(tmp_path, caplog):
    """A score is only comparable with a vanilla score of the same judge: VLMEvalKit's status.json (written here by
    its own upsert_dataset_status) says which judge scored each dataset, an MM-Vet file name carries it too."""
    from vlmeval.smp.status_report import upsert_dataset_status

    work = tmp_path / "w"
    runs = {"Qwen2VL7B_Vanilla": ("gpt-4o-mini", 70), "Qwen2VL7B_TCC50": ("exact_matching", 63),
            "Qwen2VL7B_TCC25": ("gpt-4o-mini", 56)}
    for model, (judge, correct) in runs.items():
        folder = work / model / "T20261201-100000_G1234abcd"
        write_mcq_acc(folder / f"{model}_MMStar_acc.csv", correct)
        write_mme_score(folder / f"{model}_MME_score.csv", 1500.0, 400.0)
        upsert_dataset_status(run_dir=folder, model_name=model, dataset_name="MMStar", judge_model=judge,
                              status="done")
        vlmeval_csv(pd.DataFrame({"Category": ["rec", "Overall"], "acc": [50.0, 40.0 + correct / 10]}),
                    folder / f"{model}_MMVet_{'gpt-4-turbo' if model.endswith('TCC50') else 'gpt-4o'}_score.csv")
    summary = aggregate(work).summary
    other = row(summary, "vlmeval", "Qwen2VL7B", "tcc", 0.5, "MMStar", "Overall")
    assert other.score == pytest.approx(63.0) and math.isnan(other.preservation)
    assert "judged by exact_matching, the vanilla run by gpt-4o-mini: no preservation" in other.note
    same = row(summary, "vlmeval", "Qwen2VL7B", "tcc", 0.25, "MMStar", "Overall")
    assert same.preservation == pytest.approx(56 / 70) and "judged" not in same.note
    mmvet = row(summary, "vlmeval", "Qwen2VL7B", "tcc", 0.5, "MMVet", "Overall")
    assert math.isnan(mmvet.preservation) and "judged by gpt-4-turbo, the vanilla run by gpt-4o" in mmvet.note
    assert row(summary, "vlmeval", "Qwen2VL7B", "tcc", 0.5, "MME", "total").preservation == pytest.approx(1.0)
    table = pd.read_csv(work / "tables" / "summary.csv")
    assert "judge" not in table.columns
    markdown = (work / "tables" / "table_vlmeval.md").read_text()
    assert "another judge than vanilla's on MMStar, MMVet: no preservation there" in markdown
    assert "preservation over 1 of 3 benchmarks" in markdown
    status = next((work / "Qwen2VL7B_TCC25").rglob("status.json"))
    status.write_text('{"datasets": {"MMSt')  # cut short: named, and the judges come from the file names
    with caplog.at_level(logging.WARNING, logger="tcc_eval.aggregate"):
        aggregate(work)
    assert f"{status} is unreadable" in caplog.text


def test_unreachable_judge_fallback_is_noted(tmp_path):
    """VLMEvalKit falls back to exact matching when its API judge is unreachable, with a warning only: the files
    keep the judge's name (chatgpt-0125's as "openai") and an answer no rule parses counts wrong. The result file
    (written here by VLMEvalKit's own mcq_vanilla_eval without a judge) shows it in its match log, and the score's
    note counts those answers."""
    from vlmeval.dataset.utils.multiple_choice import mcq_vanilla_eval
    from vlmeval.smp import dump
    from vlmeval.smp.status_report import upsert_dataset_status

    meta = pd.DataFrame({"index": range(4), "question": "What color is the circle?", "A": "red", "B": "blue",
                         "C": "green", "D": "gray", "answer": "B"})
    work = tmp_path / "w"
    runs = {"Qwen2VL7B_Vanilla": ("gpt-4o-mini", "gpt-4o-mini", ["B", "B", "A", "B"]),
            "Qwen2VL7B_TCC25": ("gpt-4o-mini", "gpt-4o-mini", ["B", "I cannot tell.", "A", "Hmm..."]),
            "Qwen2VL7B_TCC50": ("chatgpt-0125", "openai", ["B", "No idea.", "B", "B"])}
    for model, (judge, file_judge, predictions) in runs.items():
        folder = work / model / "T20261201-100000_G1234abcd"
        folder.mkdir(parents=True)
        result = mcq_vanilla_eval(None, meta.assign(prediction=predictions), meta, 1,
                                  str(folder / f"{model}_MMStar_{file_judge}_result.pkl"), "MMStar")
        dump(result, str(folder / f"{model}_MMStar_{file_judge}_result.xlsx"))
        write_mcq_acc(folder / f"{model}_MMStar_acc.csv", int(result["hit"].sum()), total=len(result))
        upsert_dataset_status(run_dir=folder, model_name=model, dataset_name="MMStar", judge_model=judge,
                              status="done")
    summary = aggregate(work).summary
    tcc = row(summary, "vlmeval", "Qwen2VL7B", "tcc", 0.25, "MMStar", "Overall")
    assert tcc.score == pytest.approx(25.0)
    assert "gpt-4o-mini unreachable: 2 answers no rule parses were not judged and count wrong" in tcc.note
    other = row(summary, "vlmeval", "Qwen2VL7B", "tcc", 0.5, "MMStar", "Overall")
    assert "chatgpt-0125 unreachable: 1 answers" in other.note
    assert "unreachable" not in row(summary, "vlmeval", "Qwen2VL7B", "none", 1.0, "MMStar", "Overall").note


def test_lmms_mvbench_empty_answers_count_as_wrong(tmp_path):
    """lmms-eval's MVBench aggregation divides by the non-empty answers, so an empty answer raises the score; where
    the run logged its samples (--log_samples), the tables recount over every question and say so. Files and
    numbers come from lmms-eval's own process_results, aggregation and samples writer."""
    from lmms_eval.loggers.evaluation_tracker import EvaluationTracker
    from lmms_eval.tasks.mvbench.utils import mvbench_aggregate_results, mvbench_process_results

    doc = {"candidates": ["left", "right", "up"], "answer": "right"}  # the right option is B
    answers = {"none": {"mvbench_action_antonym": ["B", "B", "A", "B"], "mvbench_action_count": ["B", "C", "B", "B"]},
               "tcc": {"mvbench_action_antonym": ["B", "", "", "A"], "mvbench_action_count": ["", "B", "B", "C"]}}
    pretrained = "/models/Qwen/Qwen2-VL-7B-Instruct"
    groups = {"mvbench": list(answers["none"])}
    sizes = {task: {"original": 4, "effective": 4} for task in groups["mvbench"]}

    def write_run(method, ratio, date, log_samples=True):
        results = {"mvbench": {"alias": "mvbench", " ": " "}}
        tracker = EvaluationTracker(output_path=str(tmp_path))
        tracker.general_config_tracker.model_name_sanitized = "Qwen__Qwen2-VL-7B-Instruct"
        tracker.date_id = date
        for task, predictions in answers[method].items():
            scored = [mvbench_process_results(doc, [p])["mvbench_accuracy"] for p in predictions]
            results[task] = {"alias": f" - {task}", "mvbench_accuracy,none": mvbench_aggregate_results(scored),
                             "mvbench_accuracy_stderr,none": "N/A"}
            if log_samples:
                tracker.save_results_samples(task, [
                    {"doc_id": i, "doc": doc, "target": "right", "arguments": [("question",)], "resps": [[p]],
                     "filtered_resps": [p], "mvbench_accuracy": score}
                    for i, (p, score) in enumerate(zip(predictions, scored))])
        args = f"pretrained={pretrained},method={method}" + (f",ratio={ratio}" if method != "none" else "")
        return write_lmms_results(tmp_path, "qwen2_vl_tcc", args, date, results, groups, sizes)

    write_run("none", 1.0, "20261201_100000")
    tcc_file = write_run("tcc", 0.5, "20261201_110000")
    assert json.loads(tcc_file.read_text())["results"]["mvbench_action_antonym"]["mvbench_accuracy,none"] == 50.0
    summary = aggregate(tmp_path).summary
    base = "qwen2_vl/Qwen2-VL-7B-Instruct"
    tcc = row(summary, "lmms_eval", base, "tcc", 0.5, "mvbench", "mvbench_accuracy")
    vanilla = row(summary, "lmms_eval", base, "none", 1.0, "mvbench", "mvbench_accuracy")
    assert (tcc.score, vanilla.score) == pytest.approx((3 / 8 * 100, 6 / 8 * 100))
    assert "3 empty answers counted wrong, recounted from the --log_samples files (lmms-eval's own score, which " \
           "leaves them out: 58.33)" in tcc.note  # (1/2 + 2/3) / 2: each subtask's 4 samples weigh the same
    assert "empty" not in vanilla.note

    write_run("tcc", 0.25, "20261201_120000", log_samples=False)
    log_file = tmp_path / "Qwen__Qwen2-VL-7B-Instruct" / "20261201_110000_samples_mvbench_action_count.jsonl"
    log_file.write_text(log_file.read_text().replace("}\n", "\n", 1))  # its first line cut short
    summary = aggregate(tmp_path).summary
    unlogged = row(summary, "lmms_eval", base, "tcc", 0.25, "mvbench", "mvbench_accuracy")
    assert unlogged.score == pytest.approx((1 / 2 + 2 / 3) / 2 * 100)
    assert "lmms-eval's own count on 2 of 2 tasks, which leaves empty answers out" in unlogged.note
    half = row(summary, "lmms_eval", base, "tcc", 0.5, "mvbench", "mvbench_accuracy")
    assert half.score == pytest.approx((1 / 4 + 2 / 3) / 2 * 100)  # the antonym subtask recounted, count kept
    assert "lmms-eval's own count on 1 of 2 tasks" in half.note and "2 empty answers counted wrong" in half.note

    # a log short of the run's samples (lmms-eval writes the results first, then the samples line by line) is not
    # recounted on the lines it has
    antonym = tmp_path / "Qwen__Qwen2-VL-7B-Instruct" / "20261201_110000_samples_mvbench_action_antonym.jsonl"
    antonym.write_text("".join(antonym.read_text().splitlines(keepends=True)[:3]))  # its last sample was empty
    half = row(aggregate(tmp_path).summary, "lmms_eval", base, "tcc", 0.5, "mvbench", "mvbench_accuracy")
    assert half.score == pytest.approx((1 / 2 + 2 / 3) / 2 * 100)
    assert "lmms-eval's own count on 2 of 2 tasks" in half.note


def test_row_notes_say_where_their_costs_come_from(tmp_path):
    """Without efficiency records a FastV row's average retention is its name's; the note gives the reasons that
    hold (no records; the LLM depth only where no shape is known), and a VLMEvalKit vanilla row is not told to use
    an lmms-eval model. An oracle row's FLOPs ratio says what it leaves out."""
    for model, correct in (("Qwen2VL7B_Vanilla", 60), ("Qwen2VL7B_FastV25", 45), ("TinyQwen2VL_FastV25", 40),
                           ("Qwen2VL7B_Oracle50", 59)):
        write_mcq_acc(tmp_path / model / f"{model}_MMStar_acc.csv", correct)
    (tmp_path / "Qwen2VL7B_Oracle50" / "Qwen2VL7B_Oracle50_MMStar_efficiency.jsonl").write_text(efficiency_line(
        "Qwen2VL7B_Oracle50", "vlmeval", "MMStar", 0, "oracle", 0.5, "Qwen2VL7B", 1000, 500, 0.5, 3.0) + "\n")
    table = aggregate(tmp_path).tables["vlmeval"].set_index(["base_model", "method"])
    known = table.loc[("Qwen2VL7B", "fastv")]
    assert known["Avg retention"] == pytest.approx(0.25)
    assert "layer-K average retention from the model name (no efficiency records)" in known["note"]
    assert "LLM depth unknown" not in known["note"]
    assert "layer-K average retention from the model name (no efficiency records; LLM depth unknown)" in \
        table.loc[("TinyQwen2VL", "fastv"), "note"]
    vanilla = table.loc[("Qwen2VL7B", "none"), "note"]
    assert "no efficiency records" in vanilla and "framework's own model" not in vanilla
    oracle = table.loc[("Qwen2VL7B", "oracle")]  # its FLOPs ratio leaves out what the oracle costs itself
    assert 0 < oracle["FLOPs ratio"] < 0.5
    assert "the oracle's own answer generation, forward and backward pass are in prefill s" in oracle["note"]


def test_lmms_headline_metrics_of_mmstar_and_seedbench(tmp_path):
    """lmms-eval writes a task's metrics in the order its first sample's category gives: MMStar's headline is
    "average" and SEED-Bench's "seed_image" (VLMEvalKit's SEEDBench_IMG), wherever they fall."""
    runs = [("none", 1.0, "20261130_100000", (0.7, 0.6, 0.5, 0.7)),
            ("tcc", 0.5, "20261130_110000", (0.7, 0.5, 0.5, 0.63))]
    for method, ratio, date, (coarse, average, video, image) in runs:
        results = {"mmstar": {"alias": "mmstar", "coarse perception,none": coarse, "average,none": average},
                   "seedbench": {"alias": "seedbench", "seed_video,none": video, "seed_image,none": image,
                                 "seed_all,none": (video + image) / 2}}
        write_flat_qwen2vl_lmms_run(tmp_path, method, ratio, date, results, {"mmstar": 1500, "seedbench": 100})
    summary = aggregate(tmp_path).summary
    base = "qwen2_vl/Qwen2-VL-7B-Instruct"
    mmstar = row(summary, "lmms_eval", base, "tcc", 0.5, "mmstar", "average")
    assert (mmstar.score, mmstar.preservation) == pytest.approx((50.0, 50 / 60))
    seed = row(summary, "lmms_eval", base, "tcc", 0.5, "seedbench", "seed_image")
    assert (seed.score, seed.preservation) == pytest.approx((63.0, 0.9))


def test_lmms_checkpoints_sharing_a_folder_name_are_not_paired(tmp_path, caplog):
    """Two fine-tunes saved as .../checkpoint-1000: each compressed run is paired with its own checkpoint's
    vanilla (not the newest of both), and its efficiency records stay with it."""
    def write_run(model, run, method, ratio, date, mmstar):
        args = f"pretrained=/ckpts/{run}/checkpoint-1000" + (f",method={method},ratio={ratio}" if method else "")
        write_lmms_results(tmp_path / f"{run}_{method or 'upstream'}", model, args, date,
                           {"mmstar": {"alias": "mmstar", "average,none": mmstar}}, {"mmstar": []},
                           {"mmstar": {"original": 1500, "effective": 1500}})

    write_run("qwen2_vl", "runA", None, 1.0, "20261201_100000", 0.60)
    write_run("qwen2_vl", "runB", None, 1.0, "20261201_110000", 0.40)  # the newer vanilla, of the other checkpoint
    write_run("qwen2_vl_tcc", "runA", "tcc", 0.5, "20261201_120000", 0.57)
    records = tmp_path / "records"
    records.mkdir()
    (records / "a_efficiency.jsonl").write_text("\n".join(
        efficiency_line("qwen2_vl_tcc", "lmms_eval", "mmstar", i, "tcc", 0.5, f"/ckpts/{run}/checkpoint-1000",
                        1000, 500, prefill, 1.0) for i, (run, prefill) in enumerate([("runA", 0.2), ("runB", 0.7)])))
    with caplog.at_level(logging.WARNING):
        tables = aggregate(tmp_path)
    assert "share the name qwen2_vl/checkpoint-1000: told apart as qwen2_vl/runA/checkpoint-1000, " \
           "qwen2_vl/runB/checkpoint-1000" in caplog.text
    tcc = row(tables.summary, "lmms_eval", "qwen2_vl/runA/checkpoint-1000", "tcc", 0.5, "mmstar", "average")
    assert (tcc.vanilla_score, tcc.preservation) == pytest.approx((60.0, 0.95))
    assert "newest of" not in row(tables.summary, "lmms_eval", "qwen2_vl/runB/checkpoint-1000", "none", 1.0,
                                  "mmstar", "average").note
    efficiency = tables.efficiency
    prefill = efficiency[efficiency["dataset"] == "mmstar"].set_index("base_model")["prefill_s_mean"]
    assert (prefill["qwen2_vl/runA/checkpoint-1000"], prefill["qwen2_vl/runB/checkpoint-1000"]) == \
        pytest.approx((0.2, 0.7))


def test_lmms_headline_metrics_of_pope_and_activitynetqa(tmp_path):
    """POPE's headline is its F1 (VLMEvalKit's POPE Overall), not pope_accuracy listed first; ActivityNet-QA's is
    gpt_eval_accuracy (percent), not the 0-5 gpt_eval_score rating listed first. POPE values come from lmms-eval's
    own aggregations, on answers whose accuracy and F1 differ."""
    from lmms_eval.tasks.pope import utils as pope

    def pope_metrics(predictions: list[str]) -> dict:
        truth = ["yes"] * 4 + ["no"] * 4
        results = [{"question_id": i, "score": float(p == t), "prediction": p, "ground_truth": t}
                   for i, (p, t) in enumerate(zip(predictions, truth))]
        return {"alias": "pope", **{f"{name},none": getattr(pope, f"pope_aggregate_{name[5:]}")(results)
                                    for name in ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score",
                                                 "pope_yes_ratio")}}

    runs = [("none", 1.0, "20261130_100000", ["yes"] * 4 + ["no"] * 4, 3.1, 50.0),
            ("tcc", 0.25, "20261130_110000", ["yes"] * 2 + ["no"] * 6, 2.9, 45.0)]
    for method, ratio, date, answers, rating, accuracy in runs:
        results = {"pope": pope_metrics(answers),
                   "activitynetqa": {"alias": "activitynetqa", "gpt_eval_score,none": rating,
                                     "gpt_eval_accuracy,none": accuracy}}
        write_flat_qwen2vl_lmms_run(tmp_path, method, ratio, date, results, {"pope": 8, "activitynetqa": 8})
    summary = aggregate(tmp_path).summary
    base = "qwen2_vl/Qwen2-VL-7B-Instruct"
    pope_row = row(summary, "lmms_eval", base, "tcc", 0.25, "pope", "pope_f1_score")
    f1 = 2 * (1.0 * 0.5) / (1.0 + 0.5)  # precision 2/2, recall 2/4; its accuracy is 6/8
    assert (pope_row.score, pope_row.preservation) == pytest.approx((f1 * 100, f1))
    activity = row(summary, "lmms_eval", base, "tcc", 0.25, "activitynetqa", "gpt_eval_accuracy")
    assert (activity.score, activity.preservation) == pytest.approx((45.0, 0.9))
    assert set(summary[summary.benchmark.isin(["pope", "activitynetqa"])].metric) == {"pope_f1_score",
                                                                                      "gpt_eval_accuracy"}


def test_records_without_visual_kv_leave_it_empty(tmp_path):
    """Efficiency records of earlier versions carry no visual_kv_cache_bytes: the column is empty for their run,
    not a mean over the records that have it, nor 0."""
    work = tmp_path / "w"
    write_mcq_acc(work / "Qwen2VL7B_TCC50" / "Qwen2VL7B_TCC50_MMStar_acc.csv", 50)
    lines = [json.loads(efficiency_line("Qwen2VL7B_TCC50", "vlmeval", "MMStar", i, "tcc", 0.5, "Qwen2VL7B", 1000,
                                        500, 1, 2)) for i in range(2)]
    del lines[0]["visual_kv_cache_bytes"]
    (work / "Qwen2VL7B_TCC50" / "Qwen2VL7B_TCC50_MMStar_efficiency.jsonl").write_text(
        "\n".join(json.dumps(line) for line in lines) + "\n")
    table = aggregate(work).tables["vlmeval"]
    assert table["KV MB"].iloc[0] == pytest.approx(560 * 57344 / 1e6) and pd.isna(table["visual KV MB"].iloc[0])


def test_first_call_stays_out_of_time_means(tmp_path):
    """A process's first generate pays one-time costs (CUDA context, kernel choice): its record is left out of
    the per-sample time means, where the group has other records, but not out of the sums, the token counts or
    the FLOPs; records of earlier versions, which do not mark it, are all timed."""
    def records(folder: Path, marked: bool) -> None:
        lines = [json.loads(efficiency_line("qwen2_vl_tcc", "lmms_eval", dataset, i, "tcc", 0.5, "/m/Qwen2-VL-7B",
                                            1000, 500, 0.5, 1.0)) for dataset in ("mme", "mmstar") for i in range(3)]
        lines[0].update(prefill_s=5.0, total_s=9.0, select_s=2.0, vision_s=3.0)  # the warm-up
        if marked:
            for number, line in enumerate(lines):
                line["first_call"] = number == 0
        folder.mkdir()
        (folder / "a_efficiency.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")

    records(tmp_path / "marked", True)
    records(tmp_path / "unmarked", False)
    marked = aggregate(tmp_path / "marked").efficiency.set_index("dataset")
    for dataset in ("ALL", "mme", "mmstar"):
        assert marked.loc[dataset, ["prefill_s_mean", "total_s_mean", "select_s_mean", "vision_s_mean"]].tolist() \
            == pytest.approx([0.5, 1.0, SELECT_S, 0.04]), dataset
    assert marked.loc["ALL", "first_calls_untimed"] == 1 and marked.loc["mmstar", "first_calls_untimed"] == 0
    assert marked.loc["ALL", "samples"] == 6 and marked.loc["ALL", "prefill_s_sum"] == pytest.approx(5.0 + 5 * 0.5)
    assert marked.loc["ALL", "visual_before_mean"] == 1000
    unmarked = aggregate(tmp_path / "unmarked").efficiency.set_index("dataset")
    assert unmarked.loc["ALL", "prefill_s_mean"] == pytest.approx((5.0 + 5 * 0.5) / 6)
    assert unmarked.loc["ALL", "first_calls_untimed"] == 0
    # a group holding only the first call keeps its time
    lone = tmp_path / "lone"
    lone.mkdir()
    record = dict(json.loads(efficiency_line("qwen2_vl_tcc", "lmms_eval", "mme", 0, "tcc", 0.5, "/m/Qwen2-VL-7B",
                                             1000, 500, 5.0, 9.0)), first_call=True)
    (lone / "a_efficiency.jsonl").write_text(json.dumps(record) + "\n")
    assert aggregate(lone).efficiency.set_index("dataset").loc["ALL", "prefill_s_mean"] == pytest.approx(5.0)


def test_batched_records_count_each_sample(tmp_path):
    """lmms-eval with batch_size > 1 writes one record per generate call, summing its samples' tokens, times and
    KV bytes: the tables count it as that many samples, so its per-sample costs equal a batch-1 run's."""
    single, batched = tmp_path / "single", tmp_path / "batched"
    samples = [json.loads(efficiency_line("qwen2_vl_tcc", "lmms_eval", "mme", i, "tcc", 0.5, "/m/Qwen2-VL-7B",
                                          1000 + 100 * i, 500 + 50 * i, 0.5 + i, 1.0 + i)) for i in range(4)]
    single.mkdir()
    (single / "a_efficiency.jsonl").write_text("\n".join(json.dumps(r) for r in samples) + "\n")
    summed = []
    for pair in (samples[:2], samples[2:]):
        record = dict(pair[0], index=[r["index"] for r in pair], batch_size=2, new_tokens=1)
        for name in ("visual_before", "visual_after", "seq_before", "seq_after", "prefill_s", "vision_s", "select_s",
                     "total_s", "kv_cache_bytes", "visual_kv_cache_bytes", "visual_flops", "visual_flops_full"):
            record[name] = sum(r[name] for r in pair)
        summed.append(record)
    batched.mkdir()
    (batched / "a_efficiency.jsonl").write_text("\n".join(json.dumps(r) for r in summed) + "\n")
    tables = {name: aggregate(folder).efficiency.set_index("dataset").loc["ALL"] for name, folder in
              (("single", single), ("batched", batched))}
    columns = ["samples", "prefill_s_mean", "prefill_with_select_s_mean", "total_s_mean", "kv_cache_mb_mean",
               "visual_kv_mb_mean", "visual_before_mean", "visual_after_mean", "measured_retention",
               "seq_before_mean", "flops_ratio"]
    assert tables["batched"]["samples"] == 4
    assert tables["batched"][columns].astype(float).tolist() == pytest.approx(
        tables["single"][columns].astype(float).tolist())
    assert tables["batched"]["largest_batch"] == 2 and tables["single"]["largest_batch"] == 1
    # FastV, DART and PyramidDrop run a batch prompt by prompt (their ranking is per prompt row): said in the table
    for method in ("fastv", "tcc"):
        lines = [dict(r, method=method, keep_ratio=0.5) for r in summed]
        (batched / "a_efficiency.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
        note = aggregate(batched).tables["lmms_eval"].set_index("method").loc[method, "note"]
        sequential = "fastv runs a batch one prompt at a time (it ranks inside each prompt's prefill): its times per " \
                     "sample at batch size 2 are not shared over a batch as batched runs' are"
        assert (sequential in note) == (method == "fastv"), note


def test_samples_that_reached_the_model_without_visual_tokens_are_noted(tmp_path):
    """lmms-eval's wrappers log a video they cannot read and answer from the text: such samples are counted per
    dataset and named in the table's note, as a batched record of them counts its batch."""
    work = tmp_path / "w"
    for name, method, ratio in (("Qwen2VL7B_Vanilla", "none", 1.0), ("Qwen2VL7B_TCC50", "tcc", 0.5)):
        write_mcq_acc(work / name / f"{name}_MMStar_acc.csv", 50)
        befores = (800, 0, 800) if method == "tcc" else (800, 800, 800)
        lines = [json.loads(efficiency_line(name, "vlmeval", "MMStar", i, method, ratio, "Qwen2VL7B", n,
                                            round(n * ratio), 1, 2)) for i, n in enumerate(befores)]
        if method == "tcc":
            lines.append({**lines[1], "index": [3, 4], "batch_size": 2})
        (work / name / f"{name}_MMStar_efficiency.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    result = aggregate(work)
    counts = result.efficiency.set_index(["method", "dataset"])["samples_without_visual"]
    assert (counts[("tcc", "MMStar")], counts[("tcc", "ALL")], counts[("none", "ALL")]) == (3, 3, 0)
    notes = result.tables["vlmeval"].set_index("method")["note"]
    assert "3 samples without visual tokens" in notes["tcc"] and "without visual" not in notes["none"]


def test_samples_whose_prompts_reach_past_the_trained_positions_are_noted(tmp_path):
    """Records count the samples whose prompt went past the LLM's trained positions (a long video on VILA1.5, whose
    own code would cut it at 4,096): summed per dataset and named in the note; records of older versions, which
    lack the count, add none."""
    work = tmp_path / "w"
    for name, method, ratio in (("Qwen2VL7B_Vanilla", "none", 1.0), ("Qwen2VL7B_TCC50", "tcc", 0.5)):
        write_mcq_acc(work / name / f"{name}_MMStar_acc.csv", 50)
        lines = [json.loads(efficiency_line(name, "vlmeval", "MMStar", i, method, ratio, "Qwen2VL7B", 800,
                                            round(800 * ratio), 1, 2)) for i in range(4)]
        for line, beyond in zip(lines, (1, 0, 2, None)):  # a batched record of two; one of an older version
            if beyond is not None:
                line.update(samples_beyond_context=beyond, context_length=4096)
        lines[2]["batch_size"], lines[2]["index"] = 2, [2, 5]
        (work / name / f"{name}_MMStar_efficiency.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    result = aggregate(work)
    counts = result.efficiency.set_index(["method", "dataset"])[["samples_beyond_context", "context_length"]]
    assert counts.loc[("tcc", "MMStar")].tolist() == counts.loc[("none", "ALL")].tolist() == [3, 4096]
    notes = result.tables["vlmeval"].set_index("method")["note"]
    assert "3 samples' prompts reach past the LLM's 4,096 trained positions" in notes["tcc"]


def test_records_without_an_index_are_all_counted(tmp_path):
    """Records whose sample is unknown (multi-round generation; batches whose docs upstream cannot tell apart)
    match no other record: each counts, where a repeated index keeps only the newest."""
    lines = [efficiency_line("qwen2_vl_tcc", "lmms_eval", "mme", index, "tcc", 0.5, "/m/Qwen2-VL-7B", 1000, 500, 1, 2)
             for index in (None, None, 7, 7)]
    (tmp_path / "a_efficiency.jsonl").write_text("\n".join(lines) + "\n")
    assert aggregate(tmp_path).efficiency.set_index("dataset").loc["ALL", "samples"] == 3


def test_flops_ratio_sums_the_samples_and_older_records_are_flagged(tmp_path):
    """FLOPs are summed per sample (the n^2 attention term makes FLOPs at the mean token count wrong for mixed
    image / video runs); a run with records on datasets its vanilla has none on is flagged; records of
    earlier versions fall back to the mean token count and the prefill without selection, and say so."""
    shape = LLM_SHAPES["qwen2-vl-7b"]
    work = tmp_path / "w"
    runs = {"Qwen2VL7B_Vanilla": ("none", 1.0), "Qwen2VL7B_TCC25": ("tcc", 0.25)}
    for name, (method, ratio) in runs.items():
        write_mcq_acc(work / name / f"{name}_MMStar_acc.csv", 50)
        lines = [efficiency_line(name, "vlmeval", "MMStar", i, method, ratio, "Qwen2VL7B", n, round(n * ratio), 1, 2)
                 for i, n in enumerate((500, 8000))]
        (work / name / f"{name}_MMStar_efficiency.jsonl").write_text("\n".join(lines) + "\n")
    row = aggregate(work).tables["vlmeval"].set_index("method").loc["tcc"]
    full = sum(visual_flops(n, shape.hidden, shape.intermediate, shape.layers) for n in (500, 8000))
    kept = sum(visual_flops(n, shape.hidden, shape.intermediate, shape.layers) for n in (125, 2000))
    assert row["FLOPs ratio"] == pytest.approx(kept / full) and row["note"] == ""
    assert abs(flops_ratio(4250, 0.25, shape, "tcc") - kept / full) > 0.01  # what the mean token count gives

    name = "Qwen2VL7B_TCC25"
    (work / name / f"{name}_MMStar_efficiency.jsonl").write_text(
        "\n".join(efficiency_line(name, "vlmeval", "MMStar", i, "tcc", 0.25, "Qwen2VL7B", 1000, 250, 1, 2,
                                  legacy=True) for i in range(2)) + "\n")
    (work / name / f"{name}_MME_efficiency.jsonl").write_text(
        efficiency_line(name, "vlmeval", "MME", 0, "tcc", 0.25, "Qwen2VL7B", 1000, 250, 1, 2, legacy=True) + "\n")
    row = aggregate(work).tables["vlmeval"].set_index("method").loc["tcc"]
    assert row["FLOPs ratio"] == pytest.approx(flops_ratio(1000, 0.25, shape, "tcc"))
    assert row["prefill s"] == pytest.approx(1.0)
    for note in ("FLOPs ratio at the mean visual token count", "prefill s without the method's selection step",
                 "efficiency over 2 dataset(s), vanilla's over 1"):
        assert note in row["note"], row["note"]


def test_records_covering_fewer_samples_than_were_scored_are_flagged(tmp_path):
    """Records lost (a process's file moved aside, a crash between answer and record) would make the efficiency
    columns average a subset of what was scored, vanilla's included: the predictions file says how many were."""
    work = tmp_path / "w"
    for name, method, ratio, recorded in (("Qwen2VL7B_Vanilla", "none", 1.0, 2), ("Qwen2VL7B_TCC25", "tcc", 0.25, 3)):
        write_mcq_acc(work / name / f"{name}_MMStar_acc.csv", 50)
        pd.DataFrame({"index": range(3), "prediction": ["A"] * 3}).to_excel(work / name / f"{name}_MMStar.xlsx",
                                                                             index=False)
        lines = [efficiency_line(name, "vlmeval", "MMStar", i, method, ratio, "Qwen2VL7B", 1000, round(1000 * ratio),
                                 1, 2) for i in range(recorded)]
        (work / name / f"{name}_MMStar_efficiency.jsonl").write_text("\n".join(lines) + "\n")
    notes = aggregate(work).tables["vlmeval"].set_index("keep_ratio")["note"]
    assert "efficiency records cover fewer samples than were scored (MMStar 2 of 3)" in notes[1.0]
    assert "cover fewer" not in notes[0.25]


def test_runs_on_other_samples_than_their_vanilla_are_flagged(tmp_path):
    """A quick --limit run (newest wins) beside a full one: lmms-eval's config names the limit on each score, and a
    run whose efficiency records count other samples per dataset than its vanilla's says so in the table."""
    work = tmp_path / "w"
    for name, method, ratio, samples in (("Qwen2VL7B_Vanilla", "none", 1.0, 3), ("Qwen2VL7B_TCC25", "tcc", 0.25, 2),
                                         ("Qwen2VL7B_TCC50", "tcc", 0.5, 3)):
        write_mcq_acc(work / name / f"{name}_MMStar_acc.csv", 50)
        lines = [efficiency_line(name, "vlmeval", "MMStar", i, method, ratio, "Qwen2VL7B", 1000, round(1000 * ratio),
                                 1, 2) for i in range(samples)]
        (work / name / f"{name}_MMStar_efficiency.jsonl").write_text("\n".join(lines) + "\n")
    notes = aggregate(work).tables["vlmeval"].set_index("keep_ratio")["note"]
    assert "efficiency records count other samples than vanilla's (MMStar 2 vs 3)" in notes[0.25]
    assert "sample counts" not in notes[0.5] + notes[1.0]

    lmms = tmp_path / "lmms"
    args = "pretrained=/m/Qwen2-VL-7B-Instruct,method={},ratio={}"
    write_lmms_results(lmms, "qwen2_vl_tcc", args.format("none", 1.0), "20251128_120000",
                       *lmms_run(1500.0, 400.0, 0.8, 70.0, 50.0))
    write_lmms_results(lmms, "qwen2_vl_tcc", args.format("tcc", 0.5), "20251128_130000",
                       *lmms_run(1400.0, 380.0, 0.7, 60.0, 40.0), limit=8)
    write_lmms_results(lmms, "qwen2_vl_tcc", args.format("tcc", 0.25), "20251128_140000",
                       *lmms_run(1400.0, 380.0, 0.7, 60.0, 40.0), limit=-1)  # lmms-eval's "every sample"
    result = aggregate(lmms)
    summary = result.summary.set_index(["method", "keep_ratio"])
    half, quarter = summary.loc[("tcc", 0.5)], summary.loc[("tcc", 0.25)]
    assert half["note"].str.contains("--limit 8: a subset of the benchmark").all()
    # a score on 8 samples per task over vanilla's on all of them is no preservation
    assert half["preservation"].isna().all() and half["vanilla_score"].notna().all()
    assert half["note"].str.contains("scored on --limit 8, the vanilla run on every sample: no preservation").all()
    assert quarter["preservation"].notna().all() and not quarter["note"].str.contains("limit|vanilla run on").any()
    assert not summary.loc["none"]["note"].str.contains("limit").any()
    table = result.tables["lmms_eval"].set_index(["method", "keep_ratio"])["note"]
    assert "scores of a --limit run on " in table[("tcc", 0.5)] and "limit" not in table[("none", 1.0)]
    assert "other samples than vanilla's on mme, mvbench, tccsynth_img: no preservation there" in table[("tcc", 0.5)]
    assert "no vanilla run" not in table[("tcc", 0.5)] and "limit" not in table[("tcc", 0.25)]


def test_vlmeval_runs_on_fewer_questions_than_vanilla_get_no_preservation(tmp_path):
    """VLMEvalKit's --limit cuts the data before inference and its score files do not say so: the predictions file
    (written here by VLMEvalKit's own dump) is the only trace, and where it is missing the score stands."""
    from vlmeval.smp.file import dump

    work = tmp_path / "w"
    for name, correct, questions in (("Qwen2VL7B_Vanilla", 60, 100), ("Qwen2VL7B_TCC50", 7, 8),
                                     ("Qwen2VL7B_TCC75", 58, 100), ("Qwen2VL7B_TCC25", 50, None)):
        write_mcq_acc(work / name / f"{name}_MMStar_acc.csv", correct, total=questions or 100)
        if questions:
            dump(pd.DataFrame({"index": range(questions), "answer": "A", "prediction": "A"}),
                 str(work / name / f"{name}_MMStar.xlsx"))
    result = aggregate(work)
    limited = row(result.summary, "vlmeval", "Qwen2VL7B", "tcc", 0.5, "MMStar", "Overall")
    assert limited.score == pytest.approx(87.5) and math.isnan(limited.preservation)
    assert "scored on 8 questions, the vanilla run on 100: no preservation" in limited.note
    assert row(result.summary, "vlmeval", "Qwen2VL7B", "tcc", 0.75, "MMStar", "Overall").preservation \
        == pytest.approx(58 / 60)
    unknown = row(result.summary, "vlmeval", "Qwen2VL7B", "tcc", 0.25, "MMStar", "Overall")
    assert unknown.preservation == pytest.approx(50 / 60) and "questions" not in unknown.note
    table = result.tables["vlmeval"].set_index("keep_ratio")["note"]
    assert "other samples than vanilla's on MMStar: no preservation there" in table[0.5]


def test_mmmu_reports_its_validation_split_and_other_results_json_files_stay_quiet(tmp_path, caplog):
    """MMMU_DEV_VAL's acc.csv (report_acc) has a dev row (150 few-shot examples) and a validation row (the 900
    questions papers report); lmms-eval's submission files and VLMEvalKit's json detail files also end in
    _results.json but are no lmms-eval results."""
    work = tmp_path / "w"
    for name, dev, validation in (("Qwen2VL7B_Vanilla", 0.8, 0.5), ("Qwen2VL7B_TCC50", 0.4, 0.49)):
        frame = pd.DataFrame({"split": ["dev", "validation"], "Overall": [dev, validation], "Art": [dev, validation]})
        vlmeval_csv(frame, work / name / f"{name}_MMMU_DEV_VAL_acc.csv")
        vlmeval_json([{"question_id": 1, "answer": "a"}], work / name / f"{name}_TextVQA_VAL_results.json")
    vlmeval_json({"overall": {}}, tmp_path / "w" / "lmms" / "submissions" / "mmbench_en_dev_results.json")
    with caplog.at_level(logging.WARNING, logger="tcc_eval.aggregate"):
        summary = aggregate(work).summary
    mmmu = row(summary, "vlmeval", "Qwen2VL7B", "tcc", 0.5, "MMMU_DEV_VAL", "Overall")
    assert mmmu.score == pytest.approx(49.0) and mmmu.vanilla_score == pytest.approx(50.0)
    assert "split validation of 2" in mmmu.note
    assert "_results.json" not in caplog.text


def test_lmms_runs_pair_with_the_upstream_vanilla_and_their_records(tmp_path):
    """The README compares llava_onevision_tcc with upstream llava_hf: their runs share one base model, so ours
    gets preservation; and a run that leaves pretrained= to the model's default pairs with its efficiency
    records, which name the checkpoint it loaded."""
    ov = "/m/llava-onevision-qwen2-7b-ov-hf"
    write_lmms_results(tmp_path, "llava_hf", f"pretrained={ov}", "20251128_120000",
                       *lmms_run(1500.0, 400.0, 0.8, 70.0, 50.0))
    write_lmms_results(tmp_path, "llava_onevision_tcc", f"pretrained={ov},method=tcc,ratio=0.5", "20251128_130000",
                       *lmms_run(1200.0, 400.0, 0.8, 70.0, 50.0))
    summary = aggregate(tmp_path).summary
    base = "llava_hf/llava-onevision-qwen2-7b-ov-hf"
    assert row(summary, "lmms_eval", base, "tcc", 0.5, "mme", "total").preservation == pytest.approx(1600 / 1900)
    # upstream llava_hf writes no efficiency records: its row's empty cost columns say why
    vanilla = aggregate(tmp_path).tables["lmms_eval"].set_index("method").loc["none"]
    assert "no efficiency records (a vanilla run of the framework's own model: run ours with method=none" \
        in vanilla["note"]

    work = tmp_path / "default"
    for method, ratio, date in (("none", 1.0, "20251128_120000"), ("tcc", 0.5, "20251128_130000")):
        path = write_lmms_results(work, "qwen2_vl_tcc", f"pretrained=/m/x,method={method},ratio={ratio}", date,
                                  *lmms_run(1500.0, 400.0, 0.8, 70.0, 50.0))
        data = json.loads(path.read_text())
        data["config"]["model_args"] = f"method={method},ratio={ratio}"  # as lmms-eval records a run without it
        path.write_text(json.dumps(data))
        lines = [efficiency_line("qwen2_vl_tcc", "lmms_eval", "mme", i, method, ratio, "Qwen/Qwen2-VL-7B-Instruct",
                                 1000, round(1000 * ratio), 1, 2) for i in range(2)]
        (path.parent / f"{method}_efficiency.jsonl").write_text("\n".join(lines) + "\n")
    table = aggregate(work).tables["lmms_eval"]
    assert list(table["base_model"].unique()) == ["qwen2_vl/Qwen2-VL-7B-Instruct"]
    tcc = table.set_index("method").loc["tcc"]
    assert tcc["Avg preservation"] == pytest.approx(100.0) and tcc["KV MB"] > 0, tcc.to_dict()
    assert "efficiency records" not in table.set_index("method").loc["none"]["note"]


def test_lmms_runs_set_up_otherwise_than_their_vanilla_say_so(tmp_path):
    """Preservation assumes the runs differ in the method alone: model_args that change what the model sees
    (max_pixels=) are named beside the vanilla run's; the device and the method's own options are not."""
    args = "pretrained=/m/Qwen2-VL-7B-Instruct,max_pixels={},method={},ratio={}{}"
    for pixels, method, ratio, extra, date in ((100, "none", 1.0, "", "20251128_120000"),
                                               (200, "tcc", 0.5, ",device=cuda:1", "20251128_130000"),
                                               (100, "fastv", 0.25, ",device_map=auto,fastv_k=3", "20251128_140000")):
        write_lmms_results(tmp_path, "qwen2_vl_tcc", args.format(pixels, method, ratio, extra), date,
                           *lmms_run(1400.0, 400.0, 0.7, 60.0, 40.0))
    result = aggregate(tmp_path)
    summary = result.summary.set_index(["method", "keep_ratio"])
    tcc, fastv = summary.loc[("tcc", 0.5)], summary.loc[("fastv", 0.25)]
    assert tcc["note"].str.contains("model_args max_pixels=200, the vanilla run's max_pixels=100").all()
    assert (tcc["preservation"] == 1.0).all()
    assert not fastv["note"].str.contains("model_args").any() and (fastv["preservation"] == 1.0).all()
    table = result.tables["lmms_eval"].set_index("method")["note"]
    assert "other model_args than vanilla's on mme, mvbench, tccsynth_img (summary.csv names them)" in table["tcc"]
    assert "model_args" not in table["fastv"] + table["none"]


def test_lmms_tasks_without_a_score_are_left_out_with_a_warning(tmp_path, caplog):
    """Under --predict_only lmms-eval writes every metric as "bypass", whose aggregation returns the placeholder
    999: it was read as the score (999 on MME) and left the run's real scores unpaired."""
    args = "pretrained=/m/Qwen2-VL-7B-Instruct,method={},ratio={}"
    bypass = {"bypass,none": 999, "bypass_stderr,none": "N/A"}
    vanilla = lmms_run(1500.0, 400.0, 0.8, 70.0, 50.0)
    write_lmms_results(tmp_path, "qwen2_vl_tcc", args.format("none", 1.0), "20251128_120000", *vanilla)
    predict_only, groups, sizes = lmms_run(0, 0, 0, 0, 0)
    predict_only = {task: {"alias": entry["alias"], **(bypass if task != "mvbench" else {" ": " "})}
                    for task, entry in predict_only.items()}
    write_lmms_results(tmp_path, "qwen2_vl_tcc", args.format("tcc", 0.5), "20251128_130000", predict_only, groups,
                       sizes)
    one_unscored, groups, sizes = lmms_run(1400.0, 300.0, 0.6, 35.0, 25.0)
    one_unscored["tccsynth_img"] = {"alias": "tccsynth_img", **bypass}
    write_lmms_results(tmp_path, "qwen2_vl_tcc", args.format("a0", 0.5), "20251128_140000", one_unscored, groups,
                       sizes)
    with caplog.at_level(logging.WARNING, logger="tcc_eval.aggregate"):
        summary = aggregate(tmp_path).summary
    assert 999 not in set(summary["score"])
    assert "tcc" not in set(summary["method"])
    a0 = summary[summary["method"] == "a0"]
    assert sorted(a0["benchmark"].unique()) == ["mme", "mvbench"]
    assert row(summary, "lmms_eval", "qwen2_vl/Qwen2-VL-7B-Instruct", "a0", 0.5, "mme", "total").preservation \
        == pytest.approx(1700 / 1900)
    warnings = [m for m in caplog.messages if "computed no score" in m]
    assert len(warnings) == 2 and "--predict_only" in warnings[0]
    assert "for mme, mvbench_action_antonym, mvbench_action_count, tccsynth_img (" in warnings[0]
    assert "for tccsynth_img (" in warnings[1]


def test_lmms_runs_our_wrappers_refuse_are_skipped(tmp_path, caplog):
    """model_args our lmms-eval wrappers refuse (ratio=1.5, a method typo) made rows of their own: ratio=1.5 read
    as 1.5% and method=tcx as a method."""
    args = "pretrained=/m/Qwen2-VL-7B-Instruct,method={},ratio={}"
    for method, ratio, date in [("none", 1.0, "20251128_120000"), ("tcc", 1.5, "20251128_130000"),
                                ("tcx", 0.5, "20251128_140000"), ("tcc", 0.5, "20251128_150000")]:
        write_lmms_results(tmp_path, "qwen2_vl_tcc", args.format(method, ratio), date,
                           *lmms_run(1500.0, 400.0, 0.8, 70.0, 50.0))
    with caplog.at_level(logging.WARNING, logger="tcc_eval.aggregate"):
        summary = aggregate(tmp_path).summary
    assert sorted(set(zip(summary["method"], summary["keep_ratio"]))) == [("none", 1.0), ("tcc", 0.5)]
    warnings = " ".join(caplog.messages)
    assert "ratio=1.5 in model_args is not a kept fraction" in warnings and "method=tcx" in warnings
