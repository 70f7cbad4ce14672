"""The demo benchmarks: the synthetic generator in the configurations the demo models are trained and scored on.

The default, TCCSynth_IMG / TCCSynth_VID ("relational", ``VARIANTS["relational"]``):
- Images: a diamond anchor among 24-96 small objects on a noisy 336x336 canvas; "What color is the
  diamond?" or "What color is the shape right of the diamond?".
- Videos: 8 frames of 168 px in 4 frame pairs, each pair with its own crowd of 6-24 objects; the diamond
  and its right-hand neighbour share one pair; the same two questions.
The second question's object looks like every other one in the crowd: finding it takes the anchor
first, so attention to the question's words (a0) cannot rank it, a learned compressor can.

The base configuration ("single", ``TASKS`` alone), the first default demo:
- Images: one small object (one of 144 visual tokens for Qwen2-VL and VILA1.5, two of 300 for
  LLaVA-OneVision); "What color is the {shape}?" or "What shape is the {color} object?".
- Videos: one coloured object in one frame pair among grey distractors in every pair; "Which colored
  shape appeared" / "What was the color of the colored shape".

Both put options in canonical order (colours red, green, blue, yellow; shapes circle, square, triangle,
cross), so the answer letter names the colour or shape directly, as yes/no or chronological options do.

Why (measured while building the demo, see the build report): with shuffled options a correct answer
needs a second, purely textual hop (find the option that spells the attribute, copy its letter); a
from-scratch CPU-sized LLM stayed at chance on it for 900+ steps, a skill the build's CPU budget cannot
teach (real MLLMs have it). What stays is what token compression is about: the answer
depends on a few known tokens among hundreds, and which ones depends on the input and the question.
Videos use 168-px frames so that each visual token covers exactly one 28-px cell in Qwen2-VL and
LLaVA-OneVision (VILA1.5 resizes every frame to its 336-px input: one cell is 2x2 of its tokens).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .. import synth
from . import DEFAULT_VARIANT, OPTION_ORDER, benchmark_config

CANONICAL_ORDER = {name: i for i, name in enumerate(list(synth.PALETTE) + list(synth.SHAPES))}


def canonical_options(sample: synth.SynthSample) -> synth.SynthSample:
    """The same sample with colour/shape options in the fixed order (other option sets unchanged)."""
    values = list(sample.options.values())
    if not all(v in CANONICAL_ORDER for v in values):
        return sample
    ordered = sorted(values, key=CANONICAL_ORDER.__getitem__)
    answer = synth.LETTERS[ordered.index(sample.options[sample.answer])]
    return replace(sample, options=dict(zip(synth.LETTERS, ordered)), answer=answer)


def samples(kind: str, n: int, seed: int, split: str = "test", variant: str | None = DEFAULT_VARIANT,
            **overrides: Any) -> list[synth.SynthSample]:
    """``n`` samples of a demo benchmark (deterministic in kind, n, seed, split, variant, overrides);
    ``variant`` None is the base configuration (what a model record without a variant was trained on)."""
    out = synth.generate(kind, n, seed, split, **{**benchmark_config(kind, variant), **overrides})
    return [canonical_options(s) for s in out] if OPTION_ORDER == "canonical" else out
