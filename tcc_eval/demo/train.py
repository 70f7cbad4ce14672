"""Train the tiny demo MLLMs from scratch on the synthetic benchmarks, on CPU, in minutes.

Design (see /work/shared/DEMO_NOTES.md for why):
- Real HF classes (Qwen2-VL, LLaVA-OneVision; VILA1.5 as tcc_eval.vila assembles it from HF Llama + SigLIP)
  saved with ``save_pretrained``, so every tool loads them like hub checkpoints.
- No mixing inside the vision tower (Qwen2-VL depth 0: patch embed + 2x2 merger; LLaVA-OneVision and VILA
  read SigLIP's patch embeddings, ``vision_feature_layer=-2``; the one encoder layer HF requires is
  computed but unused): a visual token sees only its own pixels, so the answer cannot hide in
  "register" tokens far from the object, and dropping the ground-truth tokens removes the evidence.
- Stage 0: the vision front end learns to tell each token's colour and shape (linear probes on the LLM
  input), then is frozen: the stand-in for the pre-trained vision encoder of a real MLLM. Trained end to
  end from scratch instead, the LLM learned to read colours within a few hundred steps, shapes not at all.
- Stage 1: the LLM learns to answer. Loss on the answer letter (plus a small one on the end-of-turn
  token after it, so generation stops like a chat model's), teacher forcing through the model's own
  multimodal front end.
- Background dropout: most samples keep only the object tokens (all of the easy phase, 70% after it);
  the rest keep a random share of the background. Dropped tokens are removed with their original
  positions kept, exactly as pruning does. The model so neither relies on background tokens nor breaks
  when they are pruned, and short sequences make steps ~3x cheaper.
- A few prompt wordings (VLMEvalKit's dataset prompt, its Qwen2-VL variant, the lmms-eval task's), so
  the models answer the same question asked by either framework.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import synth
from ..adapters import adapter_for
from ..core import gather_left_padded, keep_positions
from ..oracle import answer_positions
from ..fixtures import tiny_llava_onevision, tiny_qwen2vl
from . import BASE_VARIANT, VARIANTS, benchmark
from .regions import token_regions

LMMS_SUFFIX = "Answer with the option's letter from the given choices directly."
TRAIN_RECORD = "demo_train.json"
VALIDATION_SEED = 10**9  # train split, never used for training batches (those use seeds < 10**8)


@dataclass(frozen=True)
class DemoSpec:
    """Everything that determines one demo model; ``build`` is a pure function of it."""

    name: str
    family: str  # "qwen2_vl" | "llava_onevision" | "vila"
    hidden: int = 128
    layers: int = 4
    heads: int = 8
    kv_heads: int = 4
    rope_theta: float = 1e4
    intermediate: int = 256
    vision_embed: int = 32
    vision_steps: int = 250  # stage 0: vision front end pre-trained to tell each token's colour and shape,
    freeze_vision: bool = True  # then frozen (as LLaVA-style training freezes the vision encoder)
    steps: int = 1200  # both families reach 1.00 train accuracy by step ~700 (build log)
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 150
    weight_decay: float = 0.01
    video_fraction: float = 0.4  # share of training batches that are videos (0 = image-only model)
    easy_steps: int = 300  # curriculum: only object tokens (easy_drop of the background dropped), and
    easy_objects: tuple[int, int] | None = None  # (min, max) objects per image, if given
    easy_drop: float = 1.0
    background_prob: float = 0.3  # after the easy phase: share of samples that keep some background
    # (drop rate uniform in [0, 1]); the others keep only object tokens: binding is the hard part, and
    # object-only sequences make steps ~3x cheaper
    seed: int = 0
    image_variant: str | None = None  # the demo.VARIANTS image benchmark (None: the base configuration)
    video_variant: str | None = None  # likewise for videos
    # Stage 2 (when stage2_steps > 0): images and videos together, stage2_video_fraction of the batches
    # videos, with a fresh optimizer and batches of their own. A model that learned a question on images
    # first (stage 1, image-only) so learns it on videos in a fraction of a from-scratch run.
    stage2_steps: int = 0
    stage2_video_fraction: float = 0.5
    stage2_lr: float = 1e-3
    stage2_easy_steps: int = 300
    stage2_vision_steps: int = 0  # first the front end again, on both modalities (then frozen again)
    stage2_prototype_weight: float = 0.0  # meanwhile: pull object tokens toward stage 1's image embedding of their kind

    @property
    def modalities(self) -> tuple[str, ...]:
        videos = self.video_fraction or (self.stage2_steps and self.stage2_video_fraction)
        return ("image", "video") if videos else ("image",)

    def variant(self, kind: str) -> str | None:
        """The benchmark variant of ``kind`` ("image" | "video") this model trains on."""
        return self.image_variant if kind == "image" else self.video_variant


STAGE2_FIELDS = ("video_variant", "stage2_steps", "stage2_video_fraction", "stage2_lr", "stage2_easy_steps",
                 "stage2_vision_steps", "stage2_prototype_weight")
STAGE2_SEED_OFFSET = 10**6  # stage 2's generators and batch seeds: apart from stage 1's (step < 10**6) ones


def stage1_spec(spec: DemoSpec) -> DemoSpec:
    """The part of ``spec`` that determines the model after stage 1 (the stage 2 fields at their defaults)."""
    return replace(spec, **{f: DemoSpec.__dataclass_fields__[f].default for f in STAGE2_FIELDS})


def stage2_spec(spec: DemoSpec) -> DemoSpec:
    """Stage 2 as a spec of its own, so it runs through the same training loop."""
    return replace(spec, steps=spec.stage2_steps, video_fraction=spec.stage2_video_fraction, lr=spec.stage2_lr,
                   easy_steps=spec.stage2_easy_steps, warmup=min(spec.warmup, spec.stage2_steps),
                   vision_steps=spec.stage2_vision_steps)


def variant_spec(spec: DemoSpec, variant: str) -> DemoSpec:
    """A model for a benchmark variant: its benchmarks and its training settings (demo.VARIANTS says why)."""
    if variant == BASE_VARIANT:  # the base benchmark: its specs name no variant, as the shipped records do
        return spec
    entry = VARIANTS[variant]
    return replace(spec, name=f"{spec.name}_{variant}", image_variant=variant,
                   video_variant=variant if "video" in entry["benchmark"] else None, **entry["training"])


DEFAULT_SPECS = (
    DemoSpec(name="tiny_qwen2_vl", family="qwen2_vl"),
    DemoSpec(name="tiny_llava_onevision", family="llava_onevision", video_fraction=0.5),  # its videos learn slower
    DemoSpec(name="tiny_vila", family="vila", video_fraction=0.5),
)


# ----------------------------------------------------------------------------- prompts and inputs
def prompt_text(sample: synth.SynthSample, variant: int = 0) -> str:
    """0: VLMEvalKit dataset prompt (the canonical one); 1: its Qwen2-VL wrapper (stripped); 2: lmms-eval style."""
    if variant == 0:
        return sample.prompt()
    if variant == 1:
        return sample.prompt().rstrip()
    opts = "".join(f"{k}. {v}\n" for k, v in sample.options.items())
    return f"{sample.question}\n{opts}{LMMS_SUFFIX}"


def messages_for(sample: synth.SynthSample, text: str) -> list[dict]:
    media = ({"type": "image", "image": sample.image} if sample.kind == "image"
             else {"type": "video", "video": sample.video})
    return [{"role": "user", "content": [media, {"type": "text", "text": text}]}]


def encode(processor: Any, samples: list[synth.SynthSample],
           variants: list[int] | None = None) -> dict[str, torch.Tensor]:
    """One batched processor call (left padding) for samples of one kind."""
    variants = variants or [0] * len(samples)
    msgs = [messages_for(s, prompt_text(s, v)) for s, v in zip(samples, variants)]
    inputs = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt", padding=True)
    return {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}


def tokenizer_corpus(seed: int = 0, variant: str | None = None) -> list[str]:
    """Every wording the demo models will read, so the tiny BPE vocabulary covers them compactly."""
    texts = []
    for kind, types in (("image", synth.IMAGE_TYPES), ("video", synth.VIDEO_TYPES)):
        for s in synth.generate(kind, 48, seed, "train", question_types=types):
            texts += [prompt_text(s, v) for v in range(3)]
    if variant is not None:  # appended: the default models' vocabulary stays exactly as shipped
        texts += [prompt_text(s, v) for s in benchmark.samples("image", 48, seed, "train", variant) for v in range(3)]
    return texts


# ----------------------------------------------------------------------------- model construction
def _qwen2vl(spec: DemoSpec, corpus: list[str]) -> tuple[torch.nn.Module, Any]:
    # no vision blocks (depth 0): the patch embedding and merger alone, trained in stage 0
    return tiny_qwen2vl(hidden=spec.hidden, layers=spec.layers, heads=spec.heads, kv_heads=spec.kv_heads,
                        intermediate=spec.intermediate, rope_theta=spec.rope_theta, vision_depth=0,
                        vision_embed=spec.vision_embed, max_pixels=336 * 336, corpus=corpus, seed=spec.seed)


def _llava_onevision(spec: DemoSpec, corpus: list[str]) -> tuple[torch.nn.Module, Any]:
    # 336-px views in 28-px patches: 12x12 tokens per view, one per synthetic cell; no anyres crops
    return tiny_llava_onevision(hidden=spec.hidden, layers=spec.layers, heads=spec.heads, kv_heads=spec.kv_heads,
                                intermediate=spec.intermediate, rope_theta=spec.rope_theta,
                                vision_hidden=spec.vision_embed, image_size=336, patch_size=28,
                                grid_pinpoints=[[336, 336]], vision_feature_layer=-2, corpus=corpus, seed=spec.seed)


def _vila(spec: DemoSpec, corpus: list[str]) -> tuple[torch.nn.Module, Any]:
    from ..vila.fixtures import tiny_vila

    # 336-px SigLIP input, 14-px patches, 2x2 mlp_downsample: 12x12 tokens, one per synthetic 28-px cell (168-px
    # video frames are resized to 336, so one cell spans 2x2 tokens). VILA1.5-3b's LLM template (vicuna_v1).
    return tiny_vila(hidden=spec.hidden, layers=spec.layers, heads=spec.heads, kv_heads=spec.kv_heads,
                     intermediate=spec.intermediate, rope_theta=spec.rope_theta, vision_layers=1,
                     vision_hidden=spec.vision_embed, image_size=336, patch_size=14, conv_mode="vicuna_v1",
                     num_video_frames=synth.VideoConfig().frames, corpus=corpus, seed=spec.seed)


BUILDERS: dict[str, Callable] = {"qwen2_vl": _qwen2vl, "llava_onevision": _llava_onevision, "vila": _vila}


def build_untrained(spec: DemoSpec) -> tuple[torch.nn.Module, Any]:
    """Freshly initialised (seeded) model and its processor."""
    if spec.family not in BUILDERS:
        raise ValueError(f"unknown demo family {spec.family!r}; choose one of {sorted(BUILDERS)}")
    corpus = tokenizer_corpus(variant=spec.image_variant)
    torch.manual_seed(spec.seed)
    model, processor = BUILDERS[spec.family](spec, corpus)
    tok = processor.tokenizer
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, processor


# ----------------------------------------------------------------------------- the training step
def llm_inputs(model: torch.nn.Module,
               inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs_embeds, attention_mask, position_ids) exactly as the model feeds its LLM, with gradients."""
    adapter = adapter_for(model)
    captured = adapter.llm_call_kwargs(inputs)
    mask = inputs["attention_mask"]
    positions = captured.get("position_ids")
    if positions is None:
        positions = adapter.default_position_ids(mask)
    return captured["inputs_embeds"], mask, positions


def llm_parameters(model: torch.nn.Module) -> set[int]:
    """ids of the LLM's parameters (decoder + head); everything else is the vision front end."""
    return {id(p) for module in (adapter_for(model).language_model, model.lm_head) for p in module.parameters()}


def letter_ids(tokenizer: Any) -> dict[str, int]:
    ids = {}
    for letter in synth.LETTERS[:4]:
        enc = tokenizer(letter, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise ValueError(f"the demo tokenizer splits the answer letter {letter!r} into {enc}")
        ids[letter] = enc[0]
    return ids


def kept_positions(model: torch.nn.Module, inputs: dict[str, torch.Tensor], samples: list[synth.SynthSample],
                   drop_rates: list[float], rng: np.random.Generator) -> list[torch.Tensor]:
    """Per sample: all text, every object's visual tokens, and each background token with prob 1 - rate."""
    visual_of = adapter_for(model).visual_mask
    out = []
    for b, (sample, rate) in enumerate(zip(samples, drop_rates)):
        valid = inputs["attention_mask"][b].bool()
        visual = visual_of(inputs["input_ids"][b]) & valid
        objects = token_regions(model, inputs, b, sample).objects(sample)
        if len(objects) != int(visual.sum()):
            raise RuntimeError(f"token layout mismatch: {len(objects)} regions for {int(visual.sum())} visual tokens")
        keep = objects | (rng.random(len(objects)) >= rate)
        out.append(keep_positions(valid, visual, torch.from_numpy(np.nonzero(keep)[0])))
    return out


def answer_logits(model: torch.nn.Module, inputs: dict[str, torch.Tensor], positions: list[torch.Tensor] | None = None,
                  answer_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token logits at the last prompt position, (B, V); ``positions`` prunes like the real pipeline.

    With ``answer_ids`` (B,) teacher-forced after the prompt, returns (B, 2, V): the logits that predict
    the answer and the ones that predict the token after it."""
    embeds, mask, pos = llm_inputs(model, inputs)
    if positions is not None:
        embeds, mask, pos = gather_left_padded(embeds, mask, pos, positions)
    if answer_ids is not None:
        embeds = torch.cat([embeds, model.get_input_embeddings()(answer_ids)[:, None].to(embeds.dtype)], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        pos = answer_positions(pos, 1)
    lm = adapter_for(model).language_model
    hidden = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
    return model.lm_head(hidden[:, -1]) if answer_ids is None else model.lm_head(hidden[:, -2:])


def lr_factor(step: int, spec: DemoSpec) -> float:
    warm = min(1.0, (step + 1) / spec.warmup)
    return warm * max(0.05, 0.5 * (1 + math.cos(math.pi * step / spec.steps)))


def drop_rate(spec: DemoSpec, step: int, rng: np.random.Generator) -> float:
    if step >= spec.easy_steps and rng.random() < spec.background_prob:
        return float(rng.uniform(0, 1))
    return spec.easy_drop


def training_batch(spec: DemoSpec, step: int, rng: np.random.Generator, kind: str | None = None,
                   seed_offset: int = 0, **overrides: Any) -> list[synth.SynthSample]:
    kind = kind or ("video" if rng.random() < spec.video_fraction else "image")
    variant = spec.variant(kind)
    if step < spec.easy_steps and spec.easy_objects and (kind == "image" or variant):
        overrides = {"min_objects": spec.easy_objects[0], "max_objects": spec.easy_objects[1], **overrides}
    seed = spec.seed * 1_000_003 % 10**7 + seed_offset + step
    return benchmark.samples(kind, spec.batch_size, seed, "train", variant, **overrides)


VISION_COLORS = ("background", *synth.PALETTE)
VISION_SHAPES = ("background", *synth.SHAPES)


def token_attributes(model: torch.nn.Module, inputs: dict[str, torch.Tensor], b: int,
                     sample: synth.SynthSample) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour and shape class of every visual token of row ``b`` (0 = background)."""
    regions = token_regions(model, inputs, b, sample)
    color = np.zeros(len(regions), dtype=np.int64)
    shape = np.zeros(len(regions), dtype=np.int64)
    for o in sample.objects:
        frames = o.get("frames")
        covered = regions.covering([o["box"]] * len(frames or [None]), frames)
        color[covered] = VISION_COLORS.index(o["color"])
        shape[covered] = VISION_SHAPES.index(o["shape"])
    return torch.from_numpy(color), torch.from_numpy(shape)


def labelled_visual_tokens(model: torch.nn.Module, processor: Any, samples: list[synth.SynthSample]
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch's visual tokens: LLM-input embeddings (N, hidden), colour and shape classes (N,) each."""
    visual_of = adapter_for(model).visual_mask
    inputs = encode(processor, samples)
    embeds = llm_inputs(model, inputs)[0]
    feats, colors, shapes = [], [], []
    for b, sample in enumerate(samples):
        feats.append(embeds[b][visual_of(inputs["input_ids"][b]) & inputs["attention_mask"][b].bool()])
        color, shape = token_attributes(model, inputs, b, sample)
        colors.append(color)
        shapes.append(shape)
    return torch.cat(feats), torch.cat(colors), torch.cat(shapes)


def prototype_batches(spec: DemoSpec, seed_offset: int, batches: int = 8) -> list[list[synth.SynthSample]]:
    """Crowded training images (2-4 objects besides the anchor pair) for ``image_prototypes``."""
    rng = np.random.default_rng(spec.seed + 2 + seed_offset)
    return [training_batch(spec, spec.easy_steps + step, rng, "image", seed_offset=6 * 10**6 + seed_offset,
                           min_objects=2, max_objects=4) for step in range(batches)]


@torch.no_grad()
def image_prototypes(model: torch.nn.Module, processor: Any, batches: list[list[synth.SynthSample]]) -> torch.Tensor:
    """(colours, shapes, hidden): the front end's mean LLM-input embedding of each kind of object token on
    these images; NaN for kinds they lack (video-only grey distractors)."""
    feats, kinds = [], []
    for samples in batches:
        tokens, colors, shapes = labelled_visual_tokens(model, processor, samples)
        feats.append(tokens)
        kinds.append(colors * len(VISION_SHAPES) + shapes)
    feats, kinds = torch.cat(feats), torch.cat(kinds)
    out = torch.full((len(VISION_COLORS) * len(VISION_SHAPES), feats.shape[-1]), float("nan"))
    for kind in kinds.unique().tolist():  # a mean per kind, not index_put_(accumulate=True): with 2+ threads its
        out[kind] = feats[kinds == kind].mean(0)  # adds into one slot come in varying order (builds not bit-exact)
    return out.view(len(VISION_COLORS), len(VISION_SHAPES), -1)


def pretrain_vision(model: torch.nn.Module, processor: Any, spec: DemoSpec, log: Callable[[str], None],
                    seed_offset: int = 0, prototypes: torch.Tensor | None = None,
                    prototype_weight: float = 0.0) -> None:
    """Stage 0: teach the vision front end (patch embedding + merger/projector) each token's colour and shape.

    A stand-in for the pre-trained vision encoder every real MLLM starts from: with features that already
    separate colours and shapes, the LLM only has to learn to bind them to the question (which otherwise
    takes thousands of steps, DEMO_NOTES.md). Linear probes on the LLM input are discarded afterwards.
    ``prototypes`` (``image_prototypes``) adds ``prototype_weight`` x (1 - cosine) between each object token
    and its kind's prototype, so that a token means on videos what it meant on images, as a real encoder's
    does."""
    hidden = model.config.text_config.hidden_size
    classes = (len(VISION_COLORS), len(VISION_SHAPES))
    heads = torch.nn.ModuleList([torch.nn.Linear(hidden, n) for n in classes])
    llm = llm_parameters(model)
    front = [p for p in model.parameters() if id(p) not in llm]
    opt = torch.optim.AdamW(front + list(heads.parameters()), lr=spec.lr)
    rng = np.random.default_rng(spec.seed + 1 + seed_offset)
    weights = [torch.tensor([0.1] + [1.0] * (n - 1)) for n in classes]  # background is most tokens
    for step in range(spec.vision_steps):
        kind = "video" if spec.video_fraction and step % 3 == 2 else "image"
        crowded = {"min_objects": 2, "max_objects": 4} if kind == "image" else {}  # more labelled tokens
        samples = training_batch(spec, spec.easy_steps + step, rng, kind, seed_offset=5 * 10**6 + seed_offset,
                                 **crowded)
        feats, colors, shapes = labelled_visual_tokens(model, processor, samples)
        loss = sum(F.cross_entropy(head(feats), y, weight=w) for head, y, w in zip(heads, (colors, shapes), weights))
        if prototype_weight:
            target = prototypes[colors, shapes]
            known = (colors > 0) & ~target.isnan().any(-1)
            cosine = F.cosine_similarity(feats[known], target[known], dim=-1)
            loss = loss + prototype_weight * (1 - cosine).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == spec.vision_steps:
            with torch.no_grad():
                obj = colors > 0
                acc = [float((head(feats[obj]).argmax(-1) == y[obj]).float().mean())
                       for head, y in zip(heads, (colors, shapes))]
            log(f"[{spec.name}] vision step {step + 1}/{spec.vision_steps} loss {loss.item():.3f} "
                f"object colour acc {acc[0]:.2f} shape acc {acc[1]:.2f}"
                + (f" prototype cosine {cosine.mean().item():.3f}" if prototype_weight else ""))


@torch.no_grad()
def accuracy(model: torch.nn.Module, processor: Any, samples: list[synth.SynthSample],
             batch_size: int = 32) -> tuple[float, dict[str, float]]:
    """Letter accuracy on full inputs (argmax over the whole vocabulary), overall and per answer letter."""
    ids = letter_ids(processor.tokenizer)
    inv = {v: k for k, v in ids.items()}
    hits, per = [], {}
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        pred = answer_logits(model, encode(processor, chunk)).argmax(-1).tolist()
        for s, p in zip(chunk, pred):
            hit = inv.get(p) == s.answer
            hits.append(hit)
            per.setdefault(s.answer, []).append(hit)
    return float(np.mean(hits)), {k: float(np.mean(v)) for k, v in sorted(per.items())}


def fit_llm(model: torch.nn.Module, processor: Any, spec: DemoSpec, log: Callable[[str], None],
            seed_offset: int = 0) -> None:
    """Train the LLM (the front end frozen) for ``spec.steps`` steps from a fresh optimizer and generator."""
    ids = letter_ids(processor.tokenizer)
    eos = processor.tokenizer.eos_token_id  # answers end like a chat turn: "A<|im_end|>"
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=spec.lr, betas=(0.9, 0.98), weight_decay=spec.weight_decay)
    rng = np.random.default_rng(spec.seed + seed_offset)
    running: list[tuple[str, bool]] = []
    start = time.time()
    for step in range(spec.steps):
        for group in opt.param_groups:
            group["lr"] = spec.lr * lr_factor(step, spec)
        samples = training_batch(spec, step, rng, seed_offset=seed_offset)
        variants = rng.integers(3, size=len(samples)).tolist()
        inputs = encode(processor, samples, variants)
        rates = [drop_rate(spec, step, rng) for _ in samples]
        target = torch.tensor([ids[s.answer] for s in samples])
        both = answer_logits(model, inputs, kept_positions(model, inputs, samples, rates, rng), answer_ids=target)
        logits = both[:, 0]
        loss = F.cross_entropy(logits, target) + 0.2 * F.cross_entropy(both[:, 1], torch.full_like(target, eos))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        running += [(f"{s.kind}:{s.category}" if spec.video_fraction else s.category, hit)
                    for s, hit in zip(samples, (logits.argmax(-1) == target).tolist())]
        if (step + 1) % 50 == 0 or step + 1 == spec.steps:
            recent = running[-50 * spec.batch_size:]
            per = {c: np.mean([h for k, h in recent if k == c]) for c in dict.fromkeys(k for k, _ in recent)}
            log(f"[{spec.name}] step {step + 1}/{spec.steps} loss {loss.item():.3f} train acc (last 50 steps) "
                f"{np.mean([h for _, h in recent]):.2f} " + " ".join(f"{c} {a:.2f}" for c, a in per.items())
                + f"  {time.time() - start:.0f}s")


def freeze_front_end(model: torch.nn.Module, spec: DemoSpec) -> None:
    llm = llm_parameters(model)
    for param in model.parameters():
        param.requires_grad_(not spec.freeze_vision or id(param) in llm)


def reusable_stage1(spec: DemoSpec, folder: Path) -> dict[str, Any] | None:
    """The training record in ``folder`` if that model is exactly ``spec``'s stage 1 (else None)."""
    record = folder / TRAIN_RECORD
    if not spec.stage2_steps or not record.exists():
        return None
    stats = json.loads(record.read_text())
    stage1 = json.loads(json.dumps(asdict(stage1_spec(spec))))
    saved = stats.get("spec", {})  # records older than stage 2 lack its fields: they were stage-1 models
    return stats if saved and {**stage1, **saved} == stage1 else None


def validate_and_save(model: torch.nn.Module, processor: Any, spec: DemoSpec, stats: dict[str, Any], out: Path,
                      log: Callable[[str], None]) -> dict[str, Any]:
    model.eval()
    for kind in spec.modalities:
        acc, per = accuracy(model, processor, benchmark.samples(kind, 96, VALIDATION_SEED, "train", spec.variant(kind)))
        stats[f"val_{kind}"] = {"accuracy": acc, "per_letter": per}
        log(f"[{spec.name}] validation {kind}: {acc:.3f} per letter {per}")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / TRAIN_RECORD).write_text(json.dumps(stats, indent=1))  # provenance: the spec that made these weights
    return stats


def train(spec: DemoSpec, out_dir: str | Path, log: Callable[[str], None] = print,
          reuse_stage1: bool = False) -> dict[str, Any]:
    """Train one demo model and save it (model + processor) to ``out_dir``; returns training stats.

    A two-stage spec saves its stage-1 model in ``out_dir`` and starts stage 2 from that checkpoint, so
    ``reuse_stage1`` (``out_dir`` already holds exactly this spec's stage 1, its record says so) skips
    stage 1 and still yields what a full run yields."""
    out = Path(out_dir)
    stage1 = reusable_stage1(spec, out) if reuse_stage1 else None
    if stage1 is None:
        start = time.time()
        first = stage1_spec(spec)
        model, processor = build_untrained(first)
        model.train()
        pretrain_vision(model, processor, first, log)
        freeze_front_end(model, first)
        fit_llm(model, processor, first, log)
        stage1 = validate_and_save(model, processor, first, {"spec": asdict(first),
                                                             "train_seconds": round(time.time() - start, 1)}, out, log)
    else:
        log(f"[{spec.name}] stage 1 reused from {out} (trained in {stage1.get('train_seconds')}s)")
    if not spec.stage2_steps:
        return stage1
    from ..api import load_hf_model

    start = time.time()
    model, processor = load_hf_model(out, torch.device("cpu"), torch.float32)
    model.train()
    second = stage2_spec(spec)
    torch.manual_seed(spec.seed + STAGE2_SEED_OFFSET)  # the vision probes' init
    if second.vision_steps:
        for param in model.parameters():
            param.requires_grad_(True)
        prototypes = (image_prototypes(model, processor, prototype_batches(second, STAGE2_SEED_OFFSET))
                      if spec.stage2_prototype_weight else None)
        pretrain_vision(model, processor, second, log, seed_offset=STAGE2_SEED_OFFSET, prototypes=prototypes,
                        prototype_weight=spec.stage2_prototype_weight)
    freeze_front_end(model, second)
    fit_llm(model, processor, second, log, seed_offset=STAGE2_SEED_OFFSET)
    stats = {"spec": asdict(spec), "stage1": stage1, "stage2_seconds": round(time.time() - start, 1),
             "train_seconds": round(stage1.get("train_seconds", 0) + time.time() - start, 1)}
    return validate_and_save(model, processor, spec, stats, out, log)
