"""``python -m tcc_eval.demo build``: train the demo models, label, train their compressors, in one seeded run.

Steps per family: train the MLLM (train.py) -> export a training split of each modality as JSONL ->
``python -m tcc_eval.compressor label`` (oracle relevance on correctly answered samples) ->
``python -m tcc_eval.compressor train``. Everything is seeded, so a rebuild reproduces the shipped
files up to floating-point summation order (thread count).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .. import synth
from ..oracle import METHOD_RULE, check_rule
from . import ASSETS, DEFAULT_VARIANT, FAMILIES, VARIANTS, benchmark, compressor_path, demo_root, model_dir
from .train import DEFAULT_SPECS, TRAIN_RECORD, DemoSpec, reusable_stage1, train, variant_spec

LABEL_SEED = 7  # train split; the model's training batches use other seeds, the test split another split
COMPRESSOR_ARGS = ["--epochs", "40", "--patience", "6", "--batch-size", "32", "--seed", "0"]


def export_label_data(modality: str, n: int, folder: Path, variant: str = DEFAULT_VARIANT) -> Path:
    """A JSONL the compressor's ``label`` command reads, carrying the exact demo prompt.

    The full prompt goes into ``question`` with no ``options`` field, so ``label`` asks it verbatim and
    checks the answer letter by exact match (its own MCQ wording would differ from the demo's)."""
    samples = benchmark.samples(modality, n, LABEL_SEED, "train", variant)
    lines = []
    for s in samples:
        rec: dict[str, Any] = {"id": f"{modality}{s.index}", "question": s.prompt(), "answer": s.answer}
        if modality == "image":
            rel = Path("images") / f"{s.index}.png"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            s.image.save(folder / rel)
            rec["image"] = rel.as_posix()
        else:
            rel = Path("frames") / str(s.index)
            (folder / rel).mkdir(parents=True, exist_ok=True)
            for i, frame in enumerate(s.video):
                frame.save(folder / rel / f"{i:03d}.png")
            rec["frames_dir"] = rel.as_posix()
        lines.append(json.dumps(rec))
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def build_compressor(family: str, modality: str, root: Path, work: Path, log: Callable[[str], None],
                     variant: str = DEFAULT_VARIANT, relevance_rule: str = METHOD_RULE) -> dict[str, Any]:
    """Label the variant's training split with the oracle and train the compressor on the labels of
    ``relevance_rule`` (another rule than the method's builds the label-rule ablation)."""
    from ..compressor.__main__ import main as compressor_cli

    start = time.time()
    n = VARIANTS[variant]["label_samples"][modality]
    data = export_label_data(modality, n, work / f"data_{modality}", variant)
    labels = work / f"labels_{family}_{modality}"
    ablation = [] if relevance_rule == METHOD_RULE else ["--ablation-rules", relevance_rule]
    code = compressor_cli(["label", "--model", str(model_dir(family, root)), "--data", str(data), "--out", str(labels),
                           "--max-new-tokens", "1", "--max-answer-tokens", "1",
                           "--num-frames", str(synth.VideoConfig().frames), *ablation])
    if code:
        raise RuntimeError(f"compressor label failed for {family}/{modality} (exit {code})")
    kept = len(list((labels / "samples").glob("*.pt")))
    log(f"[{family}/{modality}] labelled {kept}/{n} correctly answered samples "
        f"({time.time() - start:.0f}s)")
    out = compressor_path(family, modality, root)
    out.parent.mkdir(parents=True, exist_ok=True)
    code = compressor_cli(["train", "--labels", str(labels), "--out", str(out), "--overwrite", *COMPRESSOR_ARGS,
                           *VARIANTS[variant]["compressor_args"], "--relevance-rule", relevance_rule])
    if code:
        raise RuntimeError(f"compressor train failed for {family}/{modality} (exit {code})")
    return {"labelled": kept, "relevance_rule": relevance_rule, "seconds": round(time.time() - start, 1)}


def build(out: str | Path | None = None, families: tuple[str, ...] = FAMILIES, threads: int = 2,
          skip_models: bool = False, log: Callable[[str], None] = print, variant: str | None = None,
          reuse_stage1: bool = False, relevance_rule: str = METHOD_RULE) -> dict[str, Any]:
    """Train every demo model and compressor into ``out`` (default: the package's assets folder).

    ``variant`` (a demo.VARIANTS name, default DEFAULT_VARIANT) picks the benchmark and training; the default
    folder is that variant's shipped one (the default variant's: ASSETS, which TCC_DEMO_ROOT moves).
    ``reuse_stage1``: continue from a folder's model that is exactly its spec's stage 1 (train.train says
    why that is safe). ``relevance_rule``: the labels the compressors learn; an ablation's rule needs an
    ``out`` of its own, so its compressors never replace the shipped ones."""
    import torch

    check_rule(relevance_rule)
    if relevance_rule != METHOD_RULE and out is None:
        raise ValueError(f"--relevance-rule {relevance_rule} builds ablation compressors: give --out DIR (for the "
                         "shipped models, a copy of the demo folder with --compressors-only), so the shipped "
                         f"{METHOD_RULE} compressors stay as they are")
    torch.set_num_threads(threads)
    root = Path(out or demo_root(None, variant) or ASSETS)
    variant = variant or DEFAULT_VARIANT
    root.mkdir(parents=True, exist_ok=True)
    specs: dict[str, DemoSpec] = {s.family: variant_spec(s, variant) for s in DEFAULT_SPECS}
    if reuse_stage1 and not skip_models:  # every folder is checked before any training starts
        for family in families:
            if reusable_stage1(specs[family], model_dir(family, root)) is None:
                raise ValueError(f"--reuse-stage1: {model_dir(family, root)} does not hold the stage-1 model of "
                                 f"{specs[family].name} (no {TRAIN_RECORD}, another spec, or a finished two-stage "
                                 "model); build without --reuse-stage1 to train it from scratch")
    record = root / "build_info.json"  # one file for the folder: families built in other runs keep their entries
    info: dict[str, Any] = json.loads(record.read_text()) if record.exists() else {}
    info.setdefault("models", {})
    info.setdefault("compressors", {})
    info.setdefault("runs", [])
    start = time.time()
    for family in families:
        target = model_dir(family, root)
        if skip_models:
            trained = target / TRAIN_RECORD
            info["models"][family] = json.loads(trained.read_text()) if trained.exists() else None
        elif reuse_stage1:
            info["models"][family] = train(specs[family], target, log=log, reuse_stage1=True)
        else:
            shutil.rmtree(target, ignore_errors=True)
            info["models"][family] = train(specs[family], target, log=log)
        with tempfile.TemporaryDirectory(prefix=f"tcc_demo_{family}_") as tmp:
            for modality in specs[family].modalities:
                info["compressors"][f"{family}_{modality}"] = build_compressor(family, modality, root, Path(tmp), log,
                                                                               variant, relevance_rule)
        log(f"[{family}] done, {time.time() - start:.0f}s since start")
    info["runs"].append({"families": list(families), "variant": variant, "skip_models": skip_models,
                         "reuse_stage1": reuse_stage1, "relevance_rule": relevance_rule, "threads": threads,
                         "seconds": round(time.time() - start, 1)})
    record.write_text(json.dumps(info, indent=1, default=str))
    return info
