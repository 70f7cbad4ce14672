"""``python -m tcc_eval.demo build|evaluate|oracle-rules|paths``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..cpu_memory import keep_freed_cpu_memory
from ..options import (
    DEBUG_ENV,
    DEFAULT_INSTRUCTION_ROWS,
    INSTRUCTION_ROWS,
    RELEVANCE_RULES,
    add_json_output,
    check_json_output,
    output_folder,
    positive_int,
    seed_int,
)


def keep_ratio_arg(text: str) -> float:
    from ..core import check_keep_ratio

    try:
        return check_keep_ratio(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def device_arg(text: str) -> str:
    """api.device_arg, imported only when a --device is read: ``demo paths``, which scripts call (run_all.sh four
    times per run), then starts without torch, in 0.3 s instead of 5 s."""
    from ..api import device_arg as check_device

    return check_device(text)


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()


def cmd_build(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from . import ASSETS, demo_root
    from .build import build

    start = time.time()
    build(args.out, tuple(args.family), threads=args.threads, skip_models=args.compressors_only,
          variant=args.variant, reuse_stage1=args.reuse_stage1, relevance_rule=args.relevance_rule)
    print(f"build of {' '.join(args.family)} finished in {time.time() - start:.0f}s; wrote "
          f"{args.out or demo_root(None, args.variant) or ASSETS} (build_info.json records every run)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    _quiet_transformers()
    torch.set_num_threads(args.threads)
    from ..methods import check_method
    from . import demo_root
    from .evaluate import METHODS, check_demo_rows, evaluate, format_table

    methods = tuple(args.methods or METHODS)
    for method in methods:
        check_method(method)
    check_demo_rows(methods, args.instruction_rows)
    start = time.time()
    rows = evaluate(seed=args.seed, n=args.n, families=args.family, modalities=args.modality, methods=methods,
                    ratios=tuple(args.ratios), root=demo_root(args.root, args.variant), batch_size=args.batch_size,
                    device=args.device, instruction_rows=args.instruction_rows)
    print(format_table(rows))
    print(f"\nevaluated in {time.time() - start:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
        print(f"rows written to {args.json}")
    return 0


def cmd_paths(args: argparse.Namespace) -> int:
    from . import paths

    print(json.dumps(paths(args.root), indent=1))
    return 0


def cmd_oracle_rules(args: argparse.Namespace) -> int:
    import torch

    _quiet_transformers()
    torch.set_num_threads(args.threads)
    from . import demo_root
    from .evaluate import METHOD_RULE, load_demo, oracle_diagnostics, samples_for, trained_benchmark

    rows, root = [], demo_root(args.root, args.variant)
    for family in args.family:
        model, processor = load_demo(family, root)
        for modality in [m for m in args.modality if m in trained_benchmark(family, root)]:
            samples = samples_for(family, modality, args.n, args.seed, root)
            result = oracle_diagnostics(model, processor, samples)
            rows.append({"model": family, "modality": modality, "seed": args.seed, "n": args.n,
                         "pointing": {rule: places["ground_truth"] for rule, places in result["top_token"].items()},
                         **result})
            print(f"{family} / {modality}: " + "  ".join(
                f"{rule} {p['ground_truth']:.3f} (lookalikes {p['lookalike']:.2f}, other objects "
                f"{p['other_object']:.2f}, background {p['background']:.2f})"
                for rule, p in result["top_token"].items()), flush=True)
            for category, layers in result["layer_shares"].items():
                print(f"  {category}: {METHOD_RULE} rule, the answer row's direct share per layer (ground truth / "
                      "lookalikes): " + "  ".join(f"L{layer} {s['ground_truth']:.2f}/{s['lookalike']:.2f}"
                                                  for layer, s in enumerate(layers) if s), flush=True)
            gone = result["without_lookalikes"]
            if gone["samples"]:
                print(f"  lookalikes pruned ({gone['samples']} samples have any): accuracy {gone['accuracy_full']:.3f}"
                      f" -> {gone['accuracy']:.3f}, answer margin change median {gone['median_margin_change']:+.3f}"
                      f" mean {gone['mean_margin_change']:+.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import DEFAULT_VARIANT, FAMILIES, MODALITIES, VARIANTS, demo_root

    parser = argparse.ArgumentParser(prog="python -m tcc_eval.demo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="train the demo models and their compressors (seeded; about 2 h on 2 CPU cores)")
    b.add_argument("--out", default=None, type=output_folder("the demo models and compressors"),
                   help="output folder (default: the variant's shipped folder, i.e. overwrite)")
    b.add_argument("--family", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    b.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default 2)")
    b.add_argument("--compressors-only", action="store_true", help="keep the models in --out, redo the compressors")
    b.add_argument("--variant", default=None, choices=sorted(VARIANTS),
                   help=f"the benchmark variant (default {DEFAULT_VARIANT}: the default demo in assets/demo; "
                        "others in assets/demo_VARIANT)")
    b.add_argument("--reuse-stage1", action="store_true",
                   help="continue a model in --out that is exactly its spec's stage 1 (image-only) with "
                        "stage 2, instead of training it from scratch")
    b.add_argument("--relevance-rule", default="clamp", choices=RELEVANCE_RULES,
                   help="the labels the compressors learn (default clamp, the method). attention: plain head-mean "
                        "attention rollout, the paper's no-gradient ablation; needs --out")
    b.set_defaults(func=cmd_build)

    e = sub.add_parser("evaluate", help="score every method on a fresh synthetic test split")
    e.add_argument("--seed", type=seed_int, default=1,
                   help="test-split seed (any whole number >= 0; training never sees the test split)")
    e.add_argument("--n", type=positive_int, default=200, help="samples per modality (default 200)")
    e.add_argument("--family", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    e.add_argument("--modality", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    e.add_argument("--methods", nargs="+", default=None,
                   help="methods to score (default: none random a0 tcc oracle fastv; divprune, dart, pdrop on request)")
    e.add_argument("--ratios", nargs="+", type=keep_ratio_arg, default=[0.75, 0.5, 0.25],
                   help="kept fractions of the visual tokens, each in (0, 1] (default 0.75 0.5 0.25)")
    e.add_argument("--root", default=None, help="demo folder (default: the shipped assets)")
    e.add_argument("--variant", default=None, choices=sorted(VARIANTS),
                   help="the shipped models of a benchmark variant")
    e.add_argument("--batch-size", type=positive_int, default=16)
    e.add_argument("--device", default="cpu", type=device_arg,
                   help="cpu (default, fp32: how the committed tables were measured) or cuda (bf16, else fp16)")
    e.add_argument("--threads", type=positive_int, default=2)
    e.add_argument("--instruction-rows", default=DEFAULT_INSTRUCTION_ROWS, choices=INSTRUCTION_ROWS,
                   help=f"which text rows' layer-0 attention a0 reads (default {DEFAULT_INSTRUCTION_ROWS}; tcc: only "
                        f"that one, the demo compressors' rule)")
    add_json_output(e, "demo.json", help="write the rows as JSON here")
    e.set_defaults(func=cmd_evaluate)

    o = sub.add_parser("oracle-rules", help="oracle pointing per relevance rule (clamp = the method; abs, signed, "
                                            "attention = diagnostics), where its misses land, which layer puts "
                                            "relevance there, and the model with the lookalikes pruned")
    o.add_argument("--seed", type=seed_int, default=1)
    o.add_argument("--n", type=positive_int, default=100)
    o.add_argument("--family", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    o.add_argument("--modality", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    o.add_argument("--root", default=None, help="demo folder (default: the shipped assets)")
    o.add_argument("--variant", default=None, choices=sorted(VARIANTS),
                   help="the shipped models of a benchmark variant")
    o.add_argument("--threads", type=positive_int, default=2)
    add_json_output(o, "oracle_rules.json", help="write the rows as JSON here")
    o.set_defaults(func=cmd_oracle_rules)

    p = sub.add_parser("paths", help="print the local paths of the demo models, compressors and data as JSON")
    p.add_argument("--root", default=None, help="demo folder (default: the shipped assets)")
    p.set_defaults(func=cmd_paths)

    args = parser.parse_args(argv)
    try:
        demo_root(getattr(args, "root", None), getattr(args, "variant", None))
        if hasattr(args, "json"):
            check_json_output(args)
    except ValueError as err:
        parser.error(str(err))
    if getattr(args, "json", None):  # before the run, not after it: a bad path must not cost the evaluation
        try:
            Path(args.json).resolve().parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            parser.error(f"--json {args.json}: {err}")
    keep_freed_cpu_memory()  # eager attention on the CPU: see tcc_eval.cpu_memory
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # a missing demo folder, a method the demo cannot run: no traceback
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"error: {err}  ({DEBUG_ENV}=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
