"""Oracle memory: one autograd pass over the whole forward vs the layer-by-layer oracle, side by side.

``python -m tcc_eval.bench_oracle --shape qwen2-0.5b --tokens 1300 --answer 2 --json OUT``

``all_layers`` is the textbook form: a forward with autograd that keeps every layer's attention maps
(layers x heads x N^2), weights as loaded (needing gradients), and one ``autograd.grad`` for every layer's
attention gradient at once (``oracle.gradient_weighted_maps``, the tests' reference). ``layerwise`` is the
oracle as the oracle method and ``compressor label`` run it (``oracle.layerwise_maps``): weights frozen, a
forward without autograd that keeps each layer's input, then each layer recomputed with autograd from the
last down, its maps taken and its graph dropped before the next. Both run on the same random-weight decoder
of a real shape (``bench.build_llm``), the same inputs and the same answer rows, each in a fresh process, one
after the other: peak memory is per process (CPU: peak resident set; CUDA: ``max_memory_allocated``),
reported above what the weights and inputs already hold. The two relevance rows must be equal bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .bench import add_machine_args, build_llm, machine_info, make_inputs, parse_shape, report, run_variant_process
from .options import add_json_output, check_json_output, positive_int
from .oracle import frozen_weights, gradient_weighted_maps, layerwise_maps, relevance_row, streamed_relevance_rows

VARIANTS = ("all_layers", "layerwise")


def resident_bytes() -> int:
    """This process's resident memory now (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One variant in this process: the oracle's relevance over ``--answer`` rows; its peak memory and time."""
    _, shape, arch = parse_shape(args.shape)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    llm = build_llm(shape, arch, device, dtype, args.seed)
    llm.set_attn_implementation("eager")
    x = make_inputs(args.tokens, shape.hidden, device, dtype, visual_span=(args.system, args.tokens - args.text))
    readouts = torch.randn(args.answer, shape.hidden, generator=torch.Generator().manual_seed(args.seed)).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        held = torch.cuda.memory_allocated(device)
    else:
        held = resident_bytes()
    start = time.perf_counter()
    rows = args.tokens - args.answer - 1 + torch.arange(args.answer, device=device)
    # a random readout of the last rows stands in for the answer logits
    if args.variant == "all_layers":
        relevance = torch.zeros(int(x.visual.sum()), device=device)
        embeds = x.embeds.detach().requires_grad_(True)
        with torch.enable_grad():
            out = llm(inputs_embeds=embeds, attention_mask=x.mask, position_ids=x.positions, output_attentions=True,
                      use_cache=False)
            for t, row in enumerate(rows.tolist()):
                target = out.last_hidden_state[0, row].float() @ readouts[t]
                relevance += relevance_row(gradient_weighted_maps(out.attentions, target), row)[x.visual]
    else:
        def run_forward() -> torch.Tensor:
            out = llm(inputs_embeds=x.embeds, attention_mask=x.mask, position_ids=x.positions, use_cache=False)
            return (out.last_hidden_state[0, rows].float() * readouts).sum(-1)

        def head(hidden: torch.Tensor) -> torch.Tensor:
            return (llm.norm(hidden[0, rows]).float() * readouts).sum(-1)

        with frozen_weights(llm):
            folded = streamed_relevance_rows(layerwise_maps(llm.layers, run_forward, head, ("clamp",)), rows.tolist(),
                                             args.tokens, ("clamp",), device)
        relevance = torch.zeros(int(x.visual.sum()), device=device)
        for row in folded:
            relevance += row["clamp"][x.visual]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds = time.perf_counter() - start
    torch.save(relevance.cpu(), args.relevance_out)
    return {"variant": args.variant, "peak_above_weights_bytes": peak - held, "seconds": seconds}


def run_variants(args: argparse.Namespace) -> dict[str, Any]:
    """Each variant in its own process, serially; their relevance rows compared."""
    rows, relevances = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            out = Path(tmp) / f"{variant}.pt"
            command = [sys.executable, "-m", "tcc_eval.bench_oracle", *args.argv, "--variant", variant,
                       "--relevance-out", str(out)]
            load = os.getloadavg()[0]
            row = run_variant_process(command, f"variant {variant}",
                                      out_of_memory_hint=": fewer --tokens or a smaller --shape need less")
            row["load_1min_before"] = load
            rows.append(row)
            relevances.append(torch.load(out))
    base = rows[0]
    for row in rows:
        row["peak_ratio"] = row["peak_above_weights_bytes"] / base["peak_above_weights_bytes"]
        row["time_ratio"] = row["seconds"] / base["seconds"]
    machine = machine_info(torch.device(args.device))
    machine["load_1min_after"] = os.getloadavg()[0]
    config = {k: getattr(args, k) for k in ("shape", "tokens", "text", "system", "answer", "device", "dtype",
                                            "threads", "seed")}
    equal = bool(torch.equal(relevances[0], relevances[1])) if len(relevances) == 2 else None
    return {"machine": machine, "config": config, "rows": rows, "relevance_equal": equal}


def format_table(result: dict[str, Any]) -> str:
    c, m = result["config"], result["machine"]
    base = result["rows"][0]["variant"]
    lines = [f"shape {c['shape']}, {c['tokens']} tokens, {c['answer']} answer rows, {c['device']} {c['dtype']}, "
             f"torch threads {m['torch_threads']}; {m['device_name']}, {m['cpu_count']} CPUs, "
             f"load1 after {m['load_1min_after']:.2f}",
             f"| variant | peak memory above weights (GiB) | vs {base} | seconds | vs {base} | load before |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['variant']} | {r['peak_above_weights_bytes'] / 2**30:.2f} | {r['peak_ratio']:.2f}x "
                     f"| {r['seconds']:.1f} | {r['time_ratio']:.2f}x | {r['load_1min_before']:.2f} |")
    if result["relevance_equal"] is not None:
        lines.append(f"relevance rows equal bit for bit: {result['relevance_equal']}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tcc_eval.bench_oracle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="qwen2-0.5b", help="a key of flops.LLM_SHAPES or 'layers=..,hidden=..,...'")
    p.add_argument("--tokens", type=int, default=1300, help="sequence length N (system + visual + text)")
    p.add_argument("--text", type=int, default=30, help="text tokens after the visual ones")
    p.add_argument("--system", type=int, default=14, help="tokens before the visual ones")
    p.add_argument("--answer", type=positive_int, default=2, help="answer rows explained (one backward pass each)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                   help="layerwise alone measures lengths whose all_layers maps would not fit")
    add_machine_args(p)
    add_json_output(p, "oracle.json")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # set for the measuring child processes
    p.add_argument("--relevance-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.system < 0 or args.text <= args.answer or args.tokens <= args.system + args.text:
        p.error("need --system >= 0, --text > --answer (the answer rows are text rows) and --tokens > --system + "
                "--text (some visual tokens)")
    try:
        check_json_output(args)
        parse_shape(args.shape)
    except ValueError as err:
        p.error(str(err))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(measure(args)))
        return 0
    try:
        result = run_variants(args)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    report(format_table(result), result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
