"""Score the demo models on a fresh synthetic test split: accuracy per method and retention, plus region checks.

Every method runs through the same public wrappers users call (``tcc_eval.api.wrap_model`` ->
``generate``), one answer token, greedy. Region metrics use the known object boxes:
- pointing: share of samples whose top-scored visual token covers a ground-truth object;
- gt_recall: share of ground-truth tokens inside the kept set (mean over samples);
- keep_gt / drop_gt: accuracy when only the ground-truth visual tokens are kept / only they are dropped
  (the register-token checks of DEMO_NOTES: ~vanilla and ~chance for a model that reads the objects).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch

from .. import synth
from ..adapters import adapter_for
from ..api import default_dtype, load_hf_model, on_model_device, wrap_model
from ..core import keep_positions
from ..flops import INSIDE_LLM_METHODS, LAYER_K_METHODS
from ..methods import ALL_METHODS, SampleView
from ..options import DEFAULT_INSTRUCTION_ROWS
from ..oracle import METHOD_RULE, RELEVANCE_RULES, answer_row_maps, draft_answer, relevance_row, single_view
from . import FAMILIES, MODALITIES, benchmark, compressor_path, model_dir
from .regions import token_regions
from .train import TRAIN_RECORD, DemoSpec, answer_logits, encode, letter_ids

METHODS = ("none", "random", "a0", "tcc", "oracle", "fastv")
RATIOS = (0.75, 0.5, 0.25)
FASTV_K = 1  # the demo LLMs have 4 layers; FastV's and DART's K=2 default leaves no room at 50%/25%


def load_demo(family: str, root: str | None = None, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any]:
    """Shipped (or rebuilt) demo model with its processor, loaded like any checkpoint of its family.

    On the CPU by default, in fp32: the committed demo tables were measured so. On a GPU it loads in the
    dtype a real checkpoint gets there (bf16, else fp16)."""
    path = model_dir(family, root)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no demo model at {path}; build it with `python -m tcc_eval.demo build`")
    device = torch.device(device)
    return load_hf_model(path, device, default_dtype(device))


def trained_benchmark(family: str, root: str | None = None) -> dict[str, str | None]:
    """{modality: benchmark variant or None} for each modality a demo model was trained on (its build record)."""
    record = model_dir(family, root) / TRAIN_RECORD
    if not record.exists():
        return dict.fromkeys(MODALITIES)
    saved = json.loads(record.read_text())["spec"]
    spec = DemoSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()
                       if k in DemoSpec.__dataclass_fields__})
    return {m: spec.variant(m) for m in spec.modalities}


def samples_for(family: str, modality: str, n: int, seed: int, root: str | None = None) -> list[synth.SynthSample]:
    """A test split of the benchmark the model was trained on (its variant, if any)."""
    trained = trained_benchmark(family, root)
    if modality not in trained:
        raise ValueError(f"the {family} demo model in {model_dir(family, root)} was trained on {list(trained)} only, "
                         f"not {modality}")
    return benchmark.samples(modality, n, seed, "test", trained[modality])


def by_category(samples: list[synth.SynthSample], hits: list[bool]) -> dict[str, float]:
    cats: dict[str, list[bool]] = {}
    for s, hit in zip(samples, hits):
        cats.setdefault(s.category, []).append(hit)
    return {c: float(np.mean(h)) for c, h in cats.items()}


@dataclass
class Batch:
    samples: list[synth.SynthSample]
    inputs: dict[str, torch.Tensor]  # on the CPU, for the bookkeeping
    model_inputs: dict[str, torch.Tensor]  # the same on the model's device, images in its dtype
    gt: list[np.ndarray]  # per sample, over its visual tokens


def make_batches(model: torch.nn.Module, processor: Any, samples: list[synth.SynthSample],
                 batch_size: int) -> list[Batch]:
    batches = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        inputs = encode(processor, chunk)
        gt = [token_regions(model, inputs, b, s).ground_truth(s) for b, s in enumerate(chunk)]
        batches.append(Batch(chunk, inputs, on_model_device(model, inputs), gt))
    return batches


def visual_rows(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: visual token positions (padding excluded)."""
    return adapter_for(model).visual_mask(input_ids) & attention_mask.bool()


class RecordingScorer:
    """Wraps a scorer: remembers each sample's scores (for pointing) and reuses them across ratios."""

    def __init__(self, scorer: Callable):
        self.scorer = scorer
        self.reads_tower_attention = getattr(scorer, "reads_tower_attention", False)
        self.cache: dict[str, torch.Tensor] = {}
        self.calls: list[torch.Tensor] = []

    def __call__(self, view: SampleView) -> torch.Tensor:
        key = hashlib.sha1(view.input_ids.cpu().numpy().tobytes()
                           + view.inputs_embeds.detach().float().cpu().numpy().tobytes()).hexdigest()
        if key not in self.cache:
            self.cache[key] = self.scorer(view).detach().float().cpu()
        self.calls.append(self.cache[key])
        return self.cache[key]


def kept_visual_mask(kept: torch.Tensor, visual: torch.Tensor) -> np.ndarray:
    """Which visual tokens (in order) survive, given kept sequence positions and the row's visual mask."""
    positions = torch.nonzero(visual).flatten()
    return torch.isin(positions, kept.cpu()).numpy()


def run_method(model: torch.nn.Module, pruned: torch.nn.Module, batches: list[Batch], letters: dict[int, str],
               inside_llm: bool = False) -> dict[str, Any]:
    """Accuracy (overall and per question type) and ground-truth recall of one wrapped model over all batches."""
    hits, recalls = [], []
    for batch in batches:
        ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
        out = pruned.generate(**batch.model_inputs, max_new_tokens=1, do_sample=False)
        pred = out[:, ids.shape[1]].tolist()
        hits += [letters.get(p) == s.answer for p, s in zip(pred, batch.samples)]
        visual = visual_rows(model, ids, mask)
        for b, kept in enumerate(pruned.last_selection.kept_positions):
            row = visual[b][mask[b].bool()] if inside_llm else visual[b]  # in-LLM methods report unpadded positions
            keep = kept_visual_mask(kept, row)
            gt = batch.gt[b]
            recalls.append(float(keep[gt].mean()) if gt.any() else 1.0)
    samples = [s for batch in batches for s in batch.samples]
    return {"accuracy": float(np.mean(hits)), "gt_recall": float(np.mean(recalls)), "n": len(hits),
            "by_category": by_category(samples, hits)}


def pointing(scores: list[torch.Tensor], batches: list[Batch]) -> float:
    gts = [g for batch in batches for g in batch.gt]
    if len(scores) != len(gts):
        raise RuntimeError(f"expected one score vector per sample ({len(gts)}), got {len(scores)}")
    return float(np.mean([bool(g[int(torch.argmax(s))]) for s, g in zip(scores, gts)]))


@torch.no_grad()
def region_checks(model: torch.nn.Module, batches: list[Batch], letters: dict[int, str]) -> list[dict[str, Any]]:
    """Accuracy keeping only / dropping only the ground-truth visual tokens."""
    rows, samples = [], [s for batch in batches for s in batch.samples]
    for name, keep_gt in (("keep_gt", True), ("drop_gt", False)):
        hits, kept_share = [], []
        for batch in batches:
            ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
            visual = visual_rows(model, ids, mask)
            positions = []
            for b, gt in enumerate(batch.gt):
                keep = gt if keep_gt else ~gt
                kept_share.append(float(keep.mean()))
                positions.append(keep_positions(mask[b].bool(), visual[b], torch.from_numpy(np.nonzero(keep)[0])))
            device = batch.model_inputs["input_ids"].device
            pred = answer_logits(model, batch.model_inputs, [p.to(device) for p in positions]).argmax(-1).tolist()
            hits += [letters.get(p) == s.answer for p, s in zip(pred, batch.samples)]
        rows.append({"method": name, "ratio": round(float(np.mean(kept_share)), 4), "accuracy": float(np.mean(hits)),
                     "n": len(hits), "by_category": by_category(samples, hits)})
    return rows


def chance(samples: Iterable[synth.SynthSample]) -> float:
    return float(np.mean([1 / len(s.options) for s in samples]))


def inside_llm_model(model: torch.nn.Module, method: str, ratio: float) -> tuple[Any, str]:
    """FastV, DART or PyramidDrop at equal average retention when possible, else keeping ``ratio`` from layer K
    on (PyramidDrop: ``ratio`` as its per-stage ratio), flagged."""
    try:
        return wrap_model(model, method=method, keep_ratio=ratio, fastv_k=FASTV_K), "avg_retention"
    except ValueError:
        return wrap_model(model, method=method, keep_ratio=ratio, fastv_k=FASTV_K, match="kept"), "kept"


def evaluate_model(
    model: torch.nn.Module, processor: Any, samples: list[synth.SynthSample], compressor: Any,
    methods: Iterable[str] = METHODS, ratios: Iterable[float] = RATIOS, batch_size: int = 16,
    log: Callable[[str], None] = lambda _: None, instruction_rows: str = DEFAULT_INSTRUCTION_ROWS,
) -> list[dict[str, Any]]:
    """Rows {method, ratio, accuracy, n, ...} for one model on one sample set (one modality); ``compressor``
    takes what ``wrap_model`` does (a {modality: checkpoint} dict names which modality the file is for);
    ``instruction_rows``: the rows a0 and tcc read (a row says so when they are not the default)."""
    letters = {v: k for k, v in letter_ids(processor.tokenizer).items()}
    batches = make_batches(model, processor, samples, batch_size)
    rows: list[dict[str, Any]] = [{"method": "chance", "ratio": 1.0, "accuracy": chance(samples), "n": len(samples)}]
    for method in methods:
        if method == "none":
            res = run_method(model, wrap_model(model, method="none"), batches, letters)
            rows.append({"method": "none", "ratio": 1.0, **res})
            log(f"  none: {res['accuracy']:.3f}")
            continue
        recorder = None
        for ratio in ratios:
            extra: dict[str, Any] = {}
            if method in INSIDE_LLM_METHODS:
                pruned, match = inside_llm_model(model, method, ratio)
                extra["fastv_match"] = match
                if method in LAYER_K_METHODS:
                    extra["fastv_k"] = FASTV_K
                else:
                    extra["pdrop_lambda"] = pruned.layer_keep_ratio
            else:
                if method == "tcc" and compressor is None:
                    raise ValueError("method tcc needs a compressor: pass evaluate_model(..., compressor=PATH or "
                                     "{modality: PATH})")
                pruned = wrap_model(model, method=method, keep_ratio=ratio, compressor=compressor,
                                    instruction_rows=instruction_rows)
                if method in ("a0", "tcc") and instruction_rows != DEFAULT_INSTRUCTION_ROWS:
                    extra["instruction_rows"] = instruction_rows
                if recorder is None or method == "visionzip":  # VisionZip's scores depend on the budget
                    recorder = RecordingScorer(pruned.scorer)
                pruned.scorer = recorder
                recorder.calls = []
            res = run_method(model, pruned, batches, letters, inside_llm=method in INSIDE_LLM_METHODS)
            row = {"method": method, "ratio": ratio, **res, **extra}
            if recorder is not None:
                row["pointing"] = pointing(recorder.calls, batches)
            rows.append(row)
            log(f"  {method}@{ratio:.2f}: {res['accuracy']:.3f} (gt recall {res['gt_recall']:.2f}"
                + (f", pointing {row['pointing']:.2f})" if "pointing" in row else ")"))
    for row in region_checks(model, batches, letters):
        rows.append(row)
        log(f"  {row['method']} (keeps {row['ratio']:.3f} of tokens): {row['accuracy']:.3f}")
    return rows


TOP_TOKEN_PLACES = ("ground_truth", "lookalike", "other_object", "background")


def token_places(model: torch.nn.Module, inputs: dict[str, torch.Tensor], sample: synth.SynthSample) -> np.ndarray:
    """(N_v,) index into TOP_TOKEN_PLACES of every visual token of a one-sample batch."""
    regions = token_regions(model, inputs, 0, sample)
    return np.select([regions.ground_truth(sample), regions.lookalikes(sample), regions.objects(sample)],
                     [0, 1, 2], default=3)


def letter_margin(logits: torch.Tensor, letters: dict[str, int], answer: str) -> float:
    """Answer letter's logit minus the best other letter's (how far the answer leads among the options)."""
    others = [logits[i] for letter, i in letters.items() if letter != answer]
    return float(logits[letters[answer]] - torch.stack(others).max())


def answer_check(logits: torch.Tensor, letters: dict[str, int], answer: str) -> tuple[float, bool]:
    """(``letter_margin``, whether greedy decoding answers right: the answer letter is the top token of the whole
    vocabulary, as ``run_method`` scores it)."""
    return letter_margin(logits, letters, answer), int(torch.argmax(logits)) == letters[answer]


@torch.no_grad()
def lookalike_margins(model: torch.nn.Module, inputs: dict[str, torch.Tensor], places: np.ndarray,
                      letters: dict[str, int], answer: str) -> tuple[tuple[float, bool], tuple[float, bool]] | None:
    """``answer_check`` of a one-sample batch before and after its lookalikes are pruned (positions kept); None
    when it has none."""
    if not (places == 1).any():
        return None
    mask = inputs["attention_mask"][0].bool()
    visual = visual_rows(model, inputs["input_ids"], inputs["attention_mask"])[0]
    kept = keep_positions(mask, visual, torch.from_numpy(np.nonzero(places != 1)[0]))
    return (answer_check(answer_logits(model, inputs)[0], letters, answer),
            answer_check(answer_logits(model, inputs, [kept])[0], letters, answer))


def without_lookalikes(checks: list[tuple[tuple[float, bool], tuple[float, bool]]]) -> dict[str, Any]:
    """Accuracy and relative answer margin change when the lookalikes are pruned, over the samples that have any
    (their ``lookalike_margins``; a zero margin before has no relative change): a model that reads the answer
    from the ground-truth object alone loses neither."""
    if not checks:
        return {"samples": 0}
    change = [(after - before) / abs(before) for (before, _), (after, _) in checks if before != 0]
    return {"samples": len(checks), "accuracy_full": float(np.mean([right for (_, right), _ in checks])),
            "accuracy": float(np.mean([right for _, (_, right) in checks])),
            "median_margin_change": float(np.median(change)) if change else None,
            "mean_margin_change": float(np.mean(change)) if change else None}


def oracle_diagnostics(model: torch.nn.Module, processor: Any, samples: list[synth.SynthSample],
                       rules: Iterable[str] = RELEVANCE_RULES) -> dict[str, Any]:
    """Where the explainability oracle's relevance goes, on the same samples and answers:
    - "top_token": {rule: {place: share}}, where the top token lands under each relevance rule, over
      TOP_TOKEN_PLACES ("ground_truth" is the pointing score);
    - "layer_shares": {question type: per LLM layer, the method's gradient-weighted attention of the answer
      row on the visual tokens (that layer's direct term of the rollout) as shares per place, averaged over
      that type's samples};
    - "without_lookalikes": the model with the lookalikes pruned (``without_lookalikes``).

    Tells a rule that misses the evidence from a model that hides it: if |grad * A| or plain attention
    rollout find the object where the method's clamped rule does not, the object's evidence enters with a
    negative gradient and the clamp removes it. A miss on a lookalike (another object showing the answer) is
    the model also reading the answer there, which the layer shares locate and "without_lookalikes" tests by
    removing it; a miss on another object is the model drawing on it (a distractor, or a token it uses as a
    register); a miss on background is relevance the boxes cannot explain."""
    rules = tuple(dict.fromkeys((METHOD_RULE, *rules)))
    landed: dict[str, list[int]] = {rule: [] for rule in rules}
    layer_shares: dict[str, list[list[np.ndarray]]] = {}
    letters = letter_ids(processor.tokenizer)
    margins: list[tuple[tuple[float, bool], tuple[float, bool]]] = []
    for sample in samples:
        inputs = encode(processor, [sample])
        places = token_places(model, inputs, sample)
        pair = lookalike_margins(model, inputs, places, letters, sample.answer)
        if pair is not None:
            margins.append(pair)
        view = single_view(model, inputs)
        visual = torch.nonzero(view.visual).flatten()
        with torch.no_grad():
            answer = draft_answer(view, 1)
        for row, maps in answer_row_maps(view, answer, rules):  # one answer token: its row is the relevance
            for rule in rules:
                landed[rule].append(int(places[int(torch.argmax(relevance_row(maps[rule], row)[visual]))]))
            per_layer = layer_shares.setdefault(sample.category, [[] for _ in maps[METHOD_RULE]])
            for layer, abar in enumerate(maps[METHOD_RULE]):
                direct = abar[row, visual].detach().cpu().numpy()
                shares = np.bincount(places, weights=direct, minlength=len(TOP_TOKEN_PLACES))
                if shares.sum() > 0:
                    per_layer[layer].append(shares / shares.sum())
    return {
        "top_token": {rule: {place: float(np.mean([p == k for p in hits])) for k, place in enumerate(TOP_TOKEN_PLACES)}
                      for rule, hits in landed.items()},
        "layer_shares": {category: [dict(zip(TOP_TOKEN_PLACES, np.mean(per, axis=0).round(4).tolist())) if per
                                    else None for per in layers] for category, layers in layer_shares.items()},
        "without_lookalikes": without_lookalikes(margins),
    }


def check_demo_rows(methods: Iterable[str], instruction_rows: str) -> None:
    """Refuse tcc under a rule its demo compressors did not learn, before any model loads."""
    if instruction_rows != DEFAULT_INSTRUCTION_ROWS and "tcc" in methods:
        raise ValueError(f"the demo compressors learned from the {DEFAULT_INSTRUCTION_ROWS} rows, so tcc cannot read "
                         f"{instruction_rows}: leave tcc out of the methods (a0 reads any rule)")


def evaluate(
    seed: int = 1, n: int = 200, families: Iterable[str] = FAMILIES, modalities: Iterable[str] = MODALITIES,
    methods: Iterable[str] = METHODS, ratios: Iterable[float] = RATIOS, root: str | None = None,
    batch_size: int = 16, log: Callable[[str], None] = print, device: str = "cpu",
    instruction_rows: str = DEFAULT_INSTRUCTION_ROWS,
) -> list[dict[str, Any]]:
    """All rows for the demo models on a test split (``split="test"``, never used in training) of the
    benchmark each model was trained on; modalities a model was not trained on are skipped. ``device``
    as ``load_demo`` takes it."""
    methods = tuple(methods)
    check_demo_rows(methods, instruction_rows)
    rows = []
    for modality in modalities:
        splits: dict[str | None, list[synth.SynthSample]] = {}  # families trained on one benchmark share its split
        for family in families:
            trained = trained_benchmark(family, root)
            if modality not in trained:
                log(f"{family} / {modality}: skipped (the model was trained on {', '.join(trained)} only)")
                continue
            key = trained[modality]
            if key not in splits:
                splits[key] = benchmark.samples(modality, n, seed, "test", key)
            samples = splits[key]
            model, processor = load_demo(family, root, device)
            comp = compressor_path(family, modality, root)
            if "tcc" in methods and not comp.exists():
                raise FileNotFoundError(f"no {modality} compressor for the demo {family} ({comp}), which tcc needs: "
                                        f"build it (`python -m tcc_eval.demo build --compressors-only --out "
                                        f"{comp.parent.parent}`), or leave tcc out of --methods")
            log(f"{family} / {modality}: {n} samples, seed {seed}")
            for row in evaluate_model(model, processor, samples, {modality: str(comp)} if "tcc" in methods else None,
                                      list(methods), ratios, batch_size, log, instruction_rows):
                rows.append({"model": family, "modality": modality, "seed": seed, **row})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """One block per model/modality: methods as rows, retention ratios as columns."""
    lines = []
    ratios = sorted({r["ratio"] for r in rows if r["method"] in ALL_METHODS and r["method"] != "none"}, reverse=True)
    for (model, modality) in dict.fromkeys((r["model"], r["modality"]) for r in rows):
        block = [r for r in rows if r["model"] == model and r["modality"] == modality]
        vanilla = next((r["accuracy"] for r in block if r["method"] == "none"), None)
        lines.append(f"\n{model} / {modality} (n={block[0]['n']}, vanilla {vanilla:.3f})" if vanilla is not None
                     else f"\n{model} / {modality}")
        lines.append(f"{'method':<10}" + "".join(f"{f'{r * 100:g}%':>22}" for r in ratios))
        for method in [m for m in ALL_METHODS if m != "none" and any(r["method"] == m for r in block)]:
            cells = []
            for ratio in ratios:
                r = next((x for x in block if x["method"] == method and x["ratio"] == ratio), None)
                if r is None:
                    cells.append(f"{'-':>22}")
                    continue
                extra = f" p{r['pointing']:.2f}" if "pointing" in r and method != "random" else ""
                flag = "*" if r.get("fastv_match") == "kept" else ""
                cells.append(f"{r['accuracy']:.3f}{flag} rec{r['gt_recall']:.2f}{extra}".rjust(22))
            if any(c.strip() != "-" for c in cells):
                lines.append(f"{method:<10}" + "".join(cells))
        for r in block:
            if r["method"] in ("keep_gt", "drop_gt", "chance"):
                lines.append(f"{r['method']:<10}{r['accuracy']:>10.3f}   (keeps {r['ratio']:.3f} of visual tokens)")
        if any(len(r.get("by_category", {})) > 1 for r in block):
            lines.append("by question type:")
            for r in block:
                if r.get("by_category") and r["method"] != "chance":
                    whole = r["method"] in ("none", "keep_gt", "drop_gt")
                    label = r["method"] if whole else f"{r['method']}@{r['ratio']:g}"
                    lines.append(f"  {label:<14}" + "  ".join(f"{c} {a:.3f}" for c, a in r["by_category"].items()))
    lines.append("\nrec = ground-truth recall in the kept set, p = pointing (top token on ground truth); "
                 "* FastV / DART keeping that share from layer K on, PyramidDrop that per-stage ratio (equal "
                 "average retention impossible)")
    return "\n".join(lines)
