"""Which option a free-form answer picks: one rule for the labeller (is the model right on this sample?) and the
lmms-eval TCCSynth tasks (is it right on the benchmark?), so a sample is never correct to one and wrong to the
other. Kept free of torch so the task file stays light."""

from __future__ import annotations

import re
import string


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD-style)."""
    words = str(text).lower().translate(str.maketrans("", "", string.punctuation)).split()
    content = [w for w in words if w not in ("a", "an", "the")]
    return " ".join(content or words)  # a bare "A" is an answer (option letter), not an article


def extract_letter(response: str, options: dict[str, str]) -> str | None:
    """The option a free-form response picks: a leading letter, a single standalone letter, or an option text."""
    text = response.strip()
    lead = re.match(r"^\(?([A-H])(?:[\s.):,]|$)", text)
    if lead and lead.group(1) in options:
        return lead.group(1)
    found = [letter for letter in options if re.search(rf"\b{letter}\b", text)]
    if len(found) == 1:
        return found[0]
    by_text = [letter for letter, option in options.items() if normalize(option) == normalize(text)]
    return by_text[0] if len(by_text) == 1 else None
