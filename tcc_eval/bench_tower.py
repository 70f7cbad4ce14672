"""VisionZip's scoring cost: a vision tower's forward alone vs the same forward with its feature layer's attention
and keys recorded (``tower_attention.TowerAttentionRecorder``, what ``method=visionzip`` adds), side by side.

``python -m tcc_eval.bench_tower --tower siglip-so400m --images 2 --json OUT``

The tower is built at a real shape with random weights (timing does not depend on them) and sdpa attention, as
the checkpoints run: SigLIP-so400m at 384 px (LLaVA-OneVision's 26 layers; VILA1.5 reads the same tower), or
Qwen2-VL's or Qwen2.5-VL's 32-block ViT (the latter attends within windows in all but four blocks) on
``--images`` images of ``--side`` px. Every round times both variants one after the other (after a warm-up
round), so load changes hit both alike; the table reports medians, this process's CPU
time beside the wall time on CPU, and the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch
from torch import nn

from .bench import add_machine_args, machine_info, report
from .options import add_json_output, check_json_output
from .tower_attention import TowerAttentionRecorder, encoder_layers

TOWERS = ("siglip-so400m", "qwen2-vl-vit", "qwen2.5-vl-vit")


def build_tower(name: str, images: int, side: int, device: torch.device, dtype: torch.dtype,
                seed: int) -> tuple[nn.Module, Callable[[], Any], int]:
    """(the tower's feature-layer attention, a call running the tower on ``images`` images, patches per image)."""
    torch.manual_seed(seed)
    if name == "siglip-so400m":
        from transformers import SiglipVisionConfig, SiglipVisionModel

        config = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26,
                                    num_attention_heads=16, image_size=384, patch_size=14, vision_use_head=False,
                                    attn_implementation="sdpa")
        with device:
            tower = SiglipVisionModel(config).to(dtype).eval()
        pixels = torch.randn(images, 3, 384, 384, device=device, dtype=dtype)
        return encoder_layers(tower)[-1].self_attn, lambda: tower(pixel_values=pixels), (384 // 14) ** 2
    if name in ("qwen2-vl-vit", "qwen2.5-vl-vit"):
        if side % 28:
            raise ValueError(f"--side must be a multiple of 28 px for Qwen2-VL (patch 14, 2x2 merge), got {side}")
        if name == "qwen2-vl-vit":
            from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig as VisionConfig
            from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel as Tower

            config = VisionConfig(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4, hidden_size=3584,
                                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                                  attn_implementation="sdpa")
        else:  # Qwen2.5-VL-7B's: windows of 112 px, full attention in blocks 7, 15, 23 and 31 (the feature layer)
            from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig as VisionConfig
            from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
                Qwen2_5_VisionTransformerPretrainedModel as Tower,
            )

            config = VisionConfig(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                  out_hidden_size=3584, window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
                                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                                  attn_implementation="sdpa")
        with device:
            tower = Tower(config).to(dtype).eval()
        grid = torch.tensor([[1, side // 14, side // 14]] * images, device=device)
        patches = torch.randn(int(grid.prod(dim=1).sum()), 3 * 2 * 14 * 14, device=device, dtype=dtype)
        return tower.blocks[-1].attn, lambda: tower(patches, grid_thw=grid), (side // 14) ** 2
    raise ValueError(f"unknown tower {name!r}; choose one of {', '.join(TOWERS)}")


def timed(run: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, own = time.perf_counter(), time.process_time()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - own


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float32" if device.type == "cpu" else "bfloat16"))
    layer, forward, patches = build_tower(args.tower, args.images, args.side, device, dtype, args.seed)

    def recorded() -> None:
        with TowerAttentionRecorder(layer) as recorder:
            forward()
        if not recorder.calls:
            raise RuntimeError("the recorder saw no call of the feature layer")

    variants = {"tower": forward, "tower + visionzip scoring": recorded}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    load_before = os.getloadavg()
    with torch.no_grad():
        for round_index in range(args.warmup + args.repeats):
            for name, run in variants.items():
                measured = timed(run, device)
                if round_index >= args.warmup:
                    times[name].append(measured)
    rows = [{"variant": name, "wall_s": statistics.median(t[0] for t in runs),
             "cpu_s": statistics.median(t[1] for t in runs) if device.type == "cpu" else None,
             "wall_runs_s": [t[0] for t in runs]} for name, runs in times.items()]
    base = rows[0]
    for row in rows:
        row["wall_ratio"] = row["wall_s"] / base["wall_s"]
        row["cpu_ratio"] = row["cpu_s"] / base["cpu_s"] if row["cpu_s"] is not None else None
    return {"tower": args.tower, "images": args.images, "patches_per_image": patches, "dtype": str(dtype),
            "repeats": args.repeats, "rows": rows, "load_before": load_before, "load_after": os.getloadavg(),
            "machine": machine_info(device)}


def format_table(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [f"{result['tower']}: {result['images']} image(s) x {result['patches_per_image']} patches, "
             f"{result['dtype']}, median of {result['repeats']}; load {result['load_before'][0]:.2f} -> "
             f"{result['load_after'][0]:.2f} on {machine['cpu_count']} CPUs ({machine['device_name']})",
             f"{'variant':<28}{'wall s':>10}{'ratio':>8}{'cpu s':>10}{'ratio':>8}"]
    for row in result["rows"]:
        cpu = "" if row["cpu_s"] is None else f"{row['cpu_s']:>10.3f}{row['cpu_ratio']:>8.3f}"
        lines.append(f"{row['variant']:<28}{row['wall_s']:>10.3f}{row['wall_ratio']:>8.3f}{cpu}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tcc_eval.bench_tower", description=__doc__.split("\n\n")[0])
    p.add_argument("--tower", default="siglip-so400m", choices=TOWERS)
    p.add_argument("--images", type=int, default=1, help="images (SigLIP: crops or frames) per forward")
    p.add_argument("--side", type=int, default=448, help="Qwen2(.5)-VL image side in px (a multiple of 28)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds; rows report the median")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    add_machine_args(p)
    add_json_output(p, "tower.json", help="write the result here")
    args = p.parse_args(argv)
    try:
        check_json_output(args)
    except ValueError as err:
        p.error(str(err))
    if args.images < 1 or args.repeats < 1:
        p.error("--images and --repeats must be at least 1")
    if args.tower.startswith("qwen") and (args.side < 28 or args.side % 28):
        p.error(f"--side must be a multiple of 28 px for Qwen2-VL (patch 14, 2x2 merge), got {args.side}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_bench(args)
    report(format_table(result), result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
