"""The demo benchmark: the synthetic generator in the configuration the demo models are trained and scored on.

- Images (TCCSynth_IMG generator, ``TASKS["image"]``): one small object (one of 144 visual tokens for
  Qwen2-VL and VILA1.5, two of 300 for LLaVA-OneVision) on a noisy 336x336 canvas; "What color is the {shape}?" or
  "What shape is the {color} object?".
- Videos (``TASKS["video"]``): 8 frames of 168 px; one coloured object in one frame pair among grey distractors in
  every pair; "Which colored shape appeared" / "What was the color of the colored shape".
- Options in canonical order (colours red, green, blue, yellow; shapes circle, square, triangle, cross),
  so the answer letter names the colour or shape directly, as yes/no or chronological options do.

Why this configuration (measured while building the demo, see the build report): with shuffled options
a correct answer needs a second, purely textual hop (find the option that spells the attribute, copy its
letter); a from-scratch CPU-sized LLM stayed at chance on it for 900+ steps. Binding a question word to
one of 2-4 objects plateaued at ~70% after 2,600 steps. Both are LLM skills the build's CPU budget
cannot teach (real MLLMs have them). What stays is what token compression is about: the answer
depends on a few known tokens among hundreds, which ones depends on the input (and, for videos, on
telling the coloured object from grey distractors), and which attribute to read on the question.
Videos use 168-px frames so that each visual token covers exactly one 28-px cell in Qwen2-VL and
LLaVA-OneVision (VILA1.5 resizes every frame to its 336-px input: one cell is 2x2 of its tokens).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .. import synth
from . import OPTION_ORDER, TASKS, VARIANTS

CANONICAL_ORDER = {name: i for i, name in enumerate(list(synth.PALETTE) + list(synth.SHAPES))}


def canonical_options(sample: synth.SynthSample) -> synth.SynthSample:
    """The same sample with colour/shape options in the fixed order (other option sets unchanged)."""
    values = list(sample.options.values())
    if not all(v in CANONICAL_ORDER for v in values):
        return sample
    ordered = sorted(values, key=CANONICAL_ORDER.__getitem__)
    answer = synth.LETTERS[ordered.index(sample.options[sample.answer])]
    return replace(sample, options=dict(zip(synth.LETTERS, ordered)), answer=answer)


def samples(kind: str, n: int, seed: int, split: str = "test", variant: str | None = None,
            **overrides: Any) -> list[synth.SynthSample]:
    """``n`` demo-benchmark samples of ``kind`` (deterministic in kind, n, seed, split, variant, overrides)."""
    if variant is not None and kind not in VARIANTS.get(variant, {}).get("benchmark", {}):
        raise ValueError(f"unknown {kind} variant {variant!r}; {kind} variants: "
                         f"{sorted(v for v, entry in VARIANTS.items() if kind in entry['benchmark'])}")
    config = {**TASKS[kind], **(VARIANTS[variant]["benchmark"][kind] if variant else {}), **overrides}
    out = synth.generate(kind, n, seed, split, **config)
    return [canonical_options(s) for s in out] if OPTION_ORDER == "canonical" else out
