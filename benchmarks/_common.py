"""What several benchmarks share: the keyword sentiment task they bill on the emulator.

The labels the keyword responder (a stand-in for the model) reads, the structured output
it fills, the shared instruction a real prompt would carry, and the synthetic reviews.
Imported by the benchmarks as ``from _common import ...`` (a benchmark runs as a script,
so its own folder is first on the path).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from nbbatch.datasets import SENTIMENT_SCHEMA

__all__ = ["LABELS", "SENTIMENT_SCHEMA", "instruction", "reviews"]

#: The words that make the keyword responder answer a label with confidence.
LABELS = {
    "positive": ["love", "great", "excellent", "perfect"],
    "negative": ["broken", "awful", "refund", "leaks"],
}


def instruction(tokens: int) -> str:
    """A shared instruction of about ``tokens`` tokens (the emulator counts 4 characters
    per token): the label definitions a real prompt would spell out."""
    rule = (
        "Label the customer review as positive, negative or neutral and say how sure you "
        "are as a number between 0 and 1. Positive reviews praise the product; negative "
        "ones report a fault, a return or a refund; neutral ones only describe. "
    )
    return (rule * (tokens * 4 // len(rule) + 1))[: tokens * 4]


def reviews(
    n: int,
    duplicates: float,
    *,
    vague: float | None = None,
    plain_words: tuple[str, ...] = (),
    seed: int = 0,
) -> pd.DataFrame:
    """``n`` short reviews in a column ``review``: a share ``duplicates`` repeating an
    earlier one, each distinct one naming a word of :data:`LABELS` or of ``plain_words``.
    With ``vague``, that share of the distinct ones names no word at all (the responder
    is unsure of them)."""
    rng = np.random.default_rng(seed)
    distinct = n - int(round(n * duplicates))
    words = [w for ws in LABELS.values() for w in ws] + list(plain_words)
    unsure: set[int] = set()
    if vague is not None:
        picked = rng.choice(distinct, size=int(round(distinct * vague)), replace=False)
        unsure = set(picked.tolist())
    texts = []
    for i in range(distinct):
        if i in unsure:
            texts.append(f"Review {i}: it arrived on a weekday in a box, model {i % 97}.")
        else:
            texts.append(f"Review {i}: {rng.choice(words)} product, would say so again.")
    extra = rng.choice(distinct, size=n - distinct, replace=True)
    rows = texts + [texts[j] for j in extra]
    order = rng.permutation(n)
    return pd.DataFrame({"review": [rows[k] for k in order]})
