"""``python -m tcc_eval.compressor train``: fit f_theta to oracle labels (KL(target || prediction), Adam).

Labels come from one or more ``label`` directories of the same model. A seeded validation split is held
out; the checkpoint with the best validation loss is saved (rewritten on every improvement, so an
interrupted run still leaves a usable file) and training stops after ``--patience`` epochs without one.
The held-out sample keys are stored in the checkpoint so ``evaluate`` scores exactly those samples.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..api import device_arg
from ..options import DEFAULT_INSTRUCTION_ROWS, positive_int, seed_int
from ..oracle import METHOD_RULE, RELEVANCE_RULES
from . import MATCH_KEYS, describe, load_compressor, save_compressor
from .labels import instruction_rows_of, read_label_file, read_meta_file
from .network import (
    INPUT_SCALES,
    NORMS,
    CompressorConfig,
    TokenCompressor,
    kl_loss,
    make_target,
    pad_batch,
)

HELP = "train a compressor on label directories"
DESCRIPTION = """\
Train the compressor f_theta (5 depthwise-separable 1-D conv layers, 32-64-128-256-512 channels) to
predict the oracle relevance (bottom 50% zeroed, sum-normalised) from layer-0 attention
(--relevance-rule picks an ablation's labels instead).
Loss KL(target || prediction), Adam, seeded validation split, best-checkpoint saving, early stopping.
Runs on CUDA when available (fp32), else CPU.
"""


@dataclass
class LabelSample:
    key: str  # "<data file>#<sample id>": unique across label directories
    a0: torch.Tensor
    relevance: torch.Tensor
    groups: torch.Tensor
    folder: str = ""  # the label directory it came from (resolved)
    data: str = ""  # the data file it was labelled from (as its label directory's meta.json names it)
    media: str = ""  # a digest of its image(s) or video (labels of earlier versions: its key)
    instruction_rows: str = DEFAULT_INSTRUCTION_ROWS  # the rows whose layer-0 attention ``a0`` is

    @property
    def n(self) -> int:
        return int(self.a0.numel())


def read_meta(labels_dir: Path) -> dict[str, Any]:
    path = labels_dir / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{labels_dir} is not a label directory (no meta.json): create one with "
            f"`python -m tcc_eval.compressor label --model MODEL --data DATA --out {labels_dir}`"
        )
    return read_meta_file(path)


def load_labels(dirs: list[str | Path], rule: str = METHOD_RULE) -> tuple[dict[str, Any], str, list[LabelSample], int]:
    """All usable samples of the label directories, sorted by key, with the relevance under ``rule`` as target.

    Returns (source model meta, modality, samples, number of unusable samples skipped: unreadable, or with no
    positive relevance to learn from)."""
    metas, samples, bad, modalities = [], [], 0, set()
    folder_of: dict[str, Path] = {}  # sample key -> the label directory it came from
    for d in map(Path, dirs):
        meta = read_meta(d)
        labelled = meta.get("relevance_rules", [METHOD_RULE])
        if rule not in labelled:
            raise ValueError(
                f"{d} holds no relevance under the rule {rule!r} (it was labelled under {', '.join(labelled)}): "
                f"label again into a new folder with `python -m tcc_eval.compressor label ... --ablation-rules {rule}`"
            )
        if metas and any(metas[0]["model"].get(k) != meta["model"].get(k) for k in MATCH_KEYS):
            raise ValueError(
                f"label directories {dirs[0]} and {d} come from different models ({describe(metas[0]['model'])} "
                f"vs {describe(meta['model'])}): train one compressor per model"
            )
        rows = instruction_rows_of(meta)
        if metas and rows != instruction_rows_of(metas[0]):
            raise ValueError(
                f"label directories {dirs[0]} and {d} hold layer-0 attention of different instruction rows "
                f"({instruction_rows_of(metas[0])} vs {rows}): a compressor learns from one rule; train on folders "
                f"labelled alike"
            )
        metas.append(meta)
        for path in sorted((d / "samples").glob("*.pt")):
            rec = read_label_file(path)
            relevance = rec["relevance"] if rule == METHOD_RULE else rec["relevance_by_rule"][rule]
            a0, rel = rec["a0"].float().flatten(), relevance.float().flatten()
            if a0.numel() == 0 or a0.shape != rel.shape or not (torch.isfinite(a0).all() and torch.isfinite(rel).all()):
                bad += 1
                continue
            if not bool((rel > 0).any()):  # no token mattered: its label would only say "the first half"
                bad += 1
                continue
            key = f"{meta['data']}#{rec['id']}"
            if key in folder_of:  # its target would silently replace the other folder's
                raise ValueError(
                    f"label directories {folder_of[key]} and {d} both hold sample {rec['id']} of {meta['data']}: "
                    f"they labelled the same data (twice, or with two checkpoints of one shape). Train on one of "
                    f"them; label more data into one folder (resuming it) or into folders of other data files"
                )
            folder_of[key] = d
            modalities.add(rec.get("modality", meta.get("modality")))  # the compressor inference picks for it
            samples.append(LabelSample(key, a0, rel, rec["groups"].flatten(), str(d.resolve()), meta["data"],
                                       rec.get("media", key), rows))
    modality = modalities.pop() if len(modalities) == 1 else "mixed" if modalities else metas[0].get("modality")
    samples.sort(key=lambda s: s.key)
    return metas[0]["model"], modality, samples, bad


def split_keys(keys: list[str], val_frac: float, seed: int, media: list[str] | None = None) -> set[str]:
    """Seeded held-out subset of at most round(val_frac * n) keys (at least one image's when there are 2+ samples
    and val_frac > 0), never all. Samples of one ``media`` (the same image or video asked about several times, as
    MMBench's rotated options are) are held out together, so validation never sees an image training saw; an
    image with more questions than the budget stays in training, unless no image fits, when the first smallest
    one in the seeded order is held out. None: every sample shares one image."""
    n = len(keys)
    n_val = 0 if val_frac <= 0 or n < 2 else min(n - 1, max(1, round(val_frac * n)))
    members: dict[str, list[str]] = {}
    for key, medium in zip(keys, media or keys):
        members.setdefault(medium, []).append(key)
    if n_val == 0 or len(members) < 2:
        return set()
    names = list(members)
    order = [names[i] for i in torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()]
    held: list[str] = []
    for name in order:
        if len(held) + len(members[name]) <= n_val:
            held += members[name]
    if not held:
        held = members[min(order, key=lambda name: len(members[name]))]
    return set(held)


def micro_batches(samples: list[LabelSample], max_tokens: int) -> Iterator[list[LabelSample]]:
    """Split one batch into length-sorted chunks of at most ``max_tokens`` padded tokens (memory bound)."""
    chunk: list[LabelSample] = []
    for s in sorted(samples, key=lambda s: s.n):
        if chunk and (len(chunk) + 1) * s.n > max_tokens:
            yield chunk
            chunk = []
        chunk.append(s)
    if chunk:
        yield chunk


def batch_loss(
    network: TokenCompressor, batch: list[LabelSample], targets: dict[str, torch.Tensor], device: torch.device,
    max_tokens: int, scale: float, backward: bool,
) -> float:
    """Summed per-sample KL over the batch; gradients (if ``backward``) are of sum * scale."""
    total = 0.0
    for chunk in micro_batches(batch, max_tokens):
        a0, mask = pad_batch([s.a0 for s in chunk])
        target, _ = pad_batch([targets[s.key] for s in chunk])
        a0, mask, target = a0.to(device), mask.to(device), target.to(device)
        loss_sum = kl_loss(network(a0, mask), target, mask) * len(chunk)
        if backward:
            (loss_sum * scale).backward()
        total += float(loss_sum.detach())
    return total


def mean_loss(network: TokenCompressor, samples: list[LabelSample], targets: dict[str, torch.Tensor],
              device: torch.device, batch_size: int, max_tokens: int) -> float:
    network.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            total += batch_loss(network, samples[i : i + batch_size], targets, device, max_tokens, 1.0, False)
    return total / max(1, len(samples))


def train(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    if out.is_dir():  # before training, not when saving its result
        raise ValueError(f"--out {out} is a folder; give the checkpoint file to write, e.g. {out / 'compressor.pt'}")
    if out.exists() and not args.overwrite:
        raise ValueError(f"--out {out} exists (an earlier compressor, which VLMEvalKit or lmms-eval may be loading): "
                         f"pass --overwrite to replace it when this run ends, or give another --out")
    start = time.time()
    source, modality, samples, bad = load_labels(args.labels, args.relevance_rule)
    if not samples:
        wrong = sum(len(list((Path(d) / "skipped").glob("*.json"))) for d in args.labels)
        raise ValueError(f"no usable label files in {' '.join(map(str, args.labels))} ({bad} without positive "
                         f"relevance or unreadable; {wrong} samples skipped as answered wrongly): run `python -m "
                         f"tcc_eval.compressor label` first, label more data, or label with --keep-all to keep the "
                         f"wrongly answered ones")
    # the best epoch so far is kept beside --out and moved onto it at the end: a run that stops early or fails
    # leaves an earlier compressor at --out as it was
    partial = out.with_name(out.name + ".partial")
    try:  # claimed before training: two runs writing one --out would otherwise save their epochs into one file
        partial.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        raise ValueError(f"{partial} exists: another training run is writing --out {out}, or one was killed before "
                         f"it ended; wait for that run, give another --out, or delete {partial} if no run is using "
                         f"it") from None
    try:
        stats = _fit(args, partial, source, modality, samples, bad, start)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    print(f"saved {out}")
    return stats


def _fit(args: argparse.Namespace, partial: Path, source: dict[str, Any], modality: str, samples: list[LabelSample],
         bad: int, start: float) -> dict[str, Any]:
    """Train, keeping the best epoch's checkpoint at ``partial``; its statistics."""
    from tqdm import tqdm

    if modality == "mixed":
        print("warning: these labels hold image and video samples, so the compressor is saved as 'mixed': usable only "
              "as one file for both (tcc_eval.load(..., compressor=FILE)); VLMEvalKit, lmms-eval and a {modality: "
              "file} dict take one per modality, so train on image and video label folders apart for them",
              file=sys.stderr)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    val_keys = split_keys([s.key for s in samples], args.val_frac, args.seed, [s.media for s in samples])
    if args.val_frac > 0 and not val_keys and len(samples) > 1:
        print(f"warning: all {len(samples)} samples ask about one image or video, so none can be held out without "
              f"training on its image: the training loss picks the best epoch", file=sys.stderr)
    train_set = [s for s in samples if s.key not in val_keys]
    val_set = [s for s in samples if s.key in val_keys]
    targets = {s.key: make_target(s.relevance) for s in samples}
    counts = sorted(s.n for s in samples)
    torch.manual_seed(args.seed)
    config = CompressorConfig(kernel_size=args.kernel_size, activation=args.activation, norm=args.norm,
                              input_scale=args.input_scale)
    network = TokenCompressor(config).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    stats: dict[str, Any] = {
        "labels": [str(Path(d).resolve()) for d in args.labels], "data": sorted({s.data for s in samples}),
        "n_train": len(train_set), "n_val": len(val_set),
        "n_unusable": bad, "relevance_rule": args.relevance_rule, "instruction_rows": samples[0].instruction_rows,
        "seed": args.seed, "val_frac": args.val_frac,
        "lr": args.lr, "batch_size": args.batch_size, "device": str(device), "val_keys": sorted(val_keys),
        "best_val_loss": math.inf, "best_epoch": 0, "epochs_run": 0, "history": [],
        # what inference compares its inputs with (token_count_mismatch)
        "visual_tokens": {"min": counts[0], "median": counts[len(counts) // 2], "max": counts[-1]},
        "pixels": [read_meta(Path(d)).get("pixels", {}) for d in args.labels],
    }
    best_loss, since_best = math.inf, 0
    held_out = len(val_set) or "none: the best epoch is the lowest training loss"
    print(f"training on {len(train_set)} samples, validating on {held_out} ({device}); "
          f"{source['family']} hidden {source['hidden_size']}, modality {modality}")
    bar = tqdm(range(1, args.epochs + 1), desc="train", unit="epoch", dynamic_ncols=True)
    for epoch in bar:
        network.train()
        order = torch.randperm(len(train_set), generator=generator).tolist()
        train_total = 0.0
        for i in range(0, len(order), args.batch_size):
            batch = [train_set[j] for j in order[i : i + args.batch_size]]
            optimizer.zero_grad(set_to_none=True)
            with torch.enable_grad():  # whatever the process set: importing VLMEvalKit's models turns autograd off
                train_total += batch_loss(network, batch, targets, device, args.max_batch_tokens, 1.0 / len(batch),
                                          True)
            optimizer.step()
        train_loss = train_total / len(train_set)
        val_loss = train_loss
        if val_set:
            val_loss = mean_loss(network, val_set, targets, device, args.batch_size, args.max_batch_tokens)
        stats["history"].append([round(train_loss, 6), round(val_loss, 6)])
        stats["epochs_run"] = epoch
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", best=f"{min(best_loss, val_loss):.4f}")
        if val_loss < best_loss:
            best_loss, since_best = val_loss, 0
            stats.update(best_val_loss=val_loss, best_epoch=epoch, time_s=round(time.time() - start, 2))
            save_compressor(partial, network, source, modality, stats)
        else:
            since_best += 1
            if since_best >= args.patience:
                break
    bar.close()
    if stats["best_epoch"] == 0:  # never saved: loading args.out would pick up an earlier run's file
        raise ValueError(f"no epoch of {stats['epochs_run']} gave a finite validation loss (last: train "
                         f"{stats['history'][-1][0]}, validation {stats['history'][-1][1]}), so nothing was saved to "
                         f"{args.out}: check the labels with `python -m tcc_eval.compressor evaluate`, or lower --lr")
    # Rewrite the best weights with the final statistics (epochs run, total time).
    best = load_compressor(partial)
    stats["time_s"] = round(time.time() - start, 2)
    save_compressor(partial, best, source, modality, stats)
    kind = "validation" if val_set else "training (no validation split: --val-frac 0)"
    print(f"best {kind} KL {best_loss:.4f} at epoch {stats['best_epoch']} of {stats['epochs_run']} "
          f"({stats['time_s']:.1f} s)")
    return stats


def run(args: argparse.Namespace) -> int:
    train(args)
    return 0


def held_out_fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in [0, 1) of the samples to hold out")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", required=True, nargs="+", help="label directories (same model)")
    parser.add_argument("--out", required=True, help="checkpoint path to write (e.g. compressor.pt); an existing "
                        "one needs --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out (when training ends)")
    parser.add_argument("--relevance-rule", default=METHOD_RULE, choices=RELEVANCE_RULES,
                        help=f"which labels to learn (default {METHOD_RULE}, the method); others must have been "
                        "labelled with `label --ablation-rules`, e.g. attention for the paper's no-gradient ablation")
    parser.add_argument("--epochs", type=positive_int, default=100)
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-frac", type=held_out_fraction, default=0.1, help="held-out fraction in [0, 1) "
                        "(default 0.1)")
    parser.add_argument("--patience", type=positive_int, default=10, help="epochs without improvement before stopping")
    parser.add_argument("--seed", type=seed_int, default=0)
    parser.add_argument("--kernel-size", type=int, default=5, help="odd conv kernel size (default 5)")
    parser.add_argument("--activation", default="gelu", choices=("gelu", "relu", "silu"))
    parser.add_argument("--norm", default="layer", choices=NORMS,
                        help="layer: per-token LayerNorm over channels (default; exact for any length)")
    parser.add_argument("--input-scale", default="n", choices=INPUT_SCALES,
                        help="n: A*N_v (default); log: log(A*N_v); none: raw attention")
    parser.add_argument("--max-batch-tokens", type=positive_int, default=262144,
                        help="padded tokens per forward; larger batches are accumulated (bounds memory)")
    parser.add_argument("--device", default=None, type=device_arg, help="default: cuda if available, else cpu")
