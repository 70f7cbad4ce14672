"""``python -m tcc_eval.compressor evaluate``: how well a compressor reproduces the oracle.

Per sample, with k = round(rho * N_v) exactly as at inference: recall of the oracle's top-k inside the
predicted top-k, for rho = 25% and 50%, and the Spearman rank correlation between prediction and oracle
relevance, averaged over samples. The oracle is the method's rule, whichever labels the compressor learned;
``--against attention`` (or ``abs``, ``signed``) scores it against an ablation's labels instead, where the label
folder holds them. Rows: ``tcc``
(the compressor), ``a0`` (raw layer-0 attention, the same input without the CNN: the CNN's value is the gap)
and ``chance`` (a random ranking: recall k/N). Labels of another modality than the compressor's are refused;
``--cross-modality`` scores them, to measure how it transfers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr

from ..core import keep_count, topk_in_order
from ..options import add_json_output, check_json_output
from ..oracle import METHOD_RULE, RELEVANCE_RULES
from . import check_match, load_compressor
from .network import kl_loss, make_target
from .train import LabelSample, load_labels

HELP = "fidelity of a compressor to the oracle (recall at 25/50 percent, Spearman) vs the a0 baseline"
DESCRIPTION = __doc__
RATIOS = (0.25, 0.5)


def recall_at(pred: torch.Tensor, oracle: torch.Tensor, ratio: float) -> float:
    """Fraction of the oracle's top-k tokens that the prediction's top-k also keeps."""
    k = keep_count(oracle.numel(), ratio)
    hits = set(topk_in_order(pred, k).tolist()) & set(topk_in_order(oracle, k).tolist())
    return len(hits) / k


def spearman(pred: torch.Tensor, oracle: torch.Tensor) -> float | None:
    """Rank correlation (ties averaged); None when either side is constant."""
    if pred.numel() < 2 or bool((pred == pred[0]).all()) or bool((oracle == oracle[0]).all()):
        return None
    return float(spearmanr(pred.double().numpy(), oracle.double().numpy()).statistic)


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def fidelity(compressor: Any, samples: list[LabelSample]) -> dict[str, dict[str, float | None]]:
    """Mean recall@rho, Spearman and KL(target || prediction) for tcc, a0 and chance."""
    rows: dict[str, dict[str, list]] = {m: {"spearman": [], "kl": [], **{f"recall@{int(r * 100)}": [] for r in RATIOS}}
                                        for m in ("tcc", "a0", "chance")}
    for s in samples:
        oracle = s.relevance
        target = make_target(oracle)[None]
        a0 = s.a0.clamp_min(0)
        scores = {"tcc": compressor.predict(s.a0).float().cpu(), "a0": a0}
        log_probs = {"tcc": torch.log_softmax(scores["tcc"], dim=-1),
                     "a0": torch.log(a0 / a0.sum() if a0.sum() > 0 else torch.full_like(a0, 1 / a0.numel()))}
        for method, pred in scores.items():
            for r in RATIOS:
                rows[method][f"recall@{int(r * 100)}"].append(recall_at(pred, oracle, r))
            rows[method]["spearman"].append(spearman(pred, oracle))
            rows[method]["kl"].append(float(kl_loss(log_probs[method][None], target)))
        for r in RATIOS:
            rows["chance"][f"recall@{int(r * 100)}"].append(keep_count(oracle.numel(), r) / oracle.numel())
        rows["chance"]["spearman"].append(0.0)
        rows["chance"]["kl"].append(None)
    return {method: {name: _mean(values) for name, values in metrics.items()} for method, metrics in rows.items()}


def trained_on(samples: list[LabelSample], train_stats: dict[str, Any]) -> set[str]:
    """Keys of the samples a checkpoint trained on: from its training data files, wherever their label folders
    are now (checkpoints of earlier versions name only the folders), less its held-out keys."""
    held_out = set(train_stats.get("val_keys", []))
    if "data" in train_stats:
        sources = set(train_stats["data"])
        return {s.key for s in samples if s.data in sources and s.key not in held_out}
    folders = set(train_stats.get("labels", []))
    return {s.key for s in samples if s.folder in folders and s.key not in held_out}


def choose_samples(samples: list[LabelSample], val_keys: set[str], split: str,
                   trained: set[str] = frozenset()) -> tuple[list[LabelSample], str]:
    """``auto``: the checkpoint's held-out samples if these labels contain them, else the samples it did not train
    on (``trained``: their keys); refuses when it trained on all of them."""
    held_out = [s for s in samples if s.key in val_keys]
    if split == "val" and not held_out:
        raise ValueError("--split val: none of the compressor's held-out samples is in these label directories")
    if split == "all":
        seen = sum(s.key in trained for s in samples)
        return samples, f"all samples ({seen} used in training)" if seen else "all samples"
    if held_out:
        return held_out, "held-out validation split of training"
    unseen = [s for s in samples if s.key not in trained]
    if not unseen:
        raise ValueError("every sample in these label directories trained the compressor (it held none out: "
                         "--val-frac 0), so its scores here would not say how it does on unseen inputs: label other "
                         "data, or pass --split all to score the training samples anyway")
    return unseen, ("samples not used in training" if len(unseen) == len(samples)
                    else f"samples not used in training ({len(samples) - len(unseen)} training samples left out)")


def format_table(report: dict[str, Any]) -> str:
    names = [f"recall@{int(r * 100)}" for r in RATIOS] + ["spearman", "kl"]
    rule = report["scored_against_rule"]
    against = "the method's oracle" if rule == METHOD_RULE else f"the {rule} relevance (an ablation's labels)"
    lines = [f"{report['n_samples']} samples ({report['split']}), mean N_v {report['mean_n_visual']:.0f}; "
             f"compressor trained on {report['trained_on_rule']} labels, scored against {against}",
             f"{'method':<8}" + "".join(f"{n:>12}" for n in names)]
    for method, metrics in report["methods"].items():
        cells = "".join(f"{'-':>12}" if metrics[n] is None else f"{metrics[n]:>12.4f}" for n in names)
        lines.append(f"{method:<8}{cells}")
    return "\n".join(lines)


def evaluate(labels: list[str], compressor_path: str, split: str = "auto", against: str = METHOD_RULE,
             cross_modality: bool = False) -> dict[str, Any]:
    """The fidelity report; a compressor of another modality than the labels' is refused, as inference refuses
    one listed for that modality, unless ``cross_modality`` asks how it transfers."""
    compressor = load_compressor(compressor_path)
    source, modality, samples, _ = load_labels(labels, against)
    check_match(compressor.source_model, source, f"compressor {compressor_path}", "the model of these labels")
    if samples and samples[0].instruction_rows != compressor.instruction_rows:
        raise ValueError(f"compressor {compressor_path} learned from the layer-0 attention of instruction rows "
                         f"{compressor.instruction_rows}, these labels hold that of {samples[0].instruction_rows}: "
                         f"score it on labels made with --instruction-rows {compressor.instruction_rows}")
    if compressor.modality not in (None, modality):
        if not cross_modality:
            raise ValueError(f"compressor {compressor_path} was trained on {compressor.modality} inputs but these "
                             f"labels are of {modality} inputs: score it on {compressor.modality} labels, or pass "
                             f"--cross-modality to measure how it transfers")
        print(f"warning: compressor {compressor_path} was trained on {compressor.modality} inputs and these labels "
              f"are of {modality} inputs: the scores say how it transfers, not how it does on its own modality",
              file=sys.stderr)
    if not samples:
        raise ValueError(f"no label files in {', '.join(labels)}: `label` writes none for samples the model answered "
                         f"wrongly (their skipped/ folder), so label more data, or pass --keep-all to `label`")
    chosen, how = choose_samples(samples, set(compressor.train_stats.get("val_keys", [])), split,
                                 trained_on(samples, compressor.train_stats))
    return {
        "compressor": str(compressor_path), "labels": [str(Path(d).resolve()) for d in labels],
        "split": how, "n_samples": len(chosen), "mean_n_visual": sum(s.n for s in chosen) / len(chosen),
        "trained_on_rule": compressor.train_stats.get("relevance_rule", METHOD_RULE), "scored_against_rule": against,
        "instruction_rows": compressor.instruction_rows,
        "methods": fidelity(compressor, chosen),
    }


def run(args: argparse.Namespace) -> int:
    if args.json and (Path(args.json).suffix == ".pt" or Path(args.json).resolve() == Path(args.compressor).resolve()):
        raise ValueError(f"--json {args.json} names a checkpoint (the report would replace it): give a .json path, "
                         f"e.g. {Path(args.json).with_suffix('.json')}")
    check_json_output(args)
    report = evaluate(args.labels, args.compressor, args.split, args.against, args.cross_modality)
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", required=True, nargs="+", help="label directories")
    parser.add_argument("--compressor", required=True, help="checkpoint written by `train`")
    parser.add_argument("--split", default="auto", choices=("auto", "val", "all"),
                        help="auto (default): the training run's held-out samples if present, else the samples it "
                             "did not train on; val: held-out only; all: every sample, training ones included")
    parser.add_argument("--against", default=METHOD_RULE, choices=RELEVANCE_RULES,
                        help=f"the relevance to score against (default {METHOD_RULE}: the method's oracle); "
                             f"another rule needs labels written with `label --ablation-rules`")
    parser.add_argument("--cross-modality", action="store_true",
                        help="score a compressor on labels of another modality than it was trained on (refused "
                        "otherwise) to measure how it transfers")
    add_json_output(parser, "fidelity.json", help="also write the report as JSON here")
