"""Small synthetic data sets for the demo, the example notebooks and the tests.

Generated from a seed, so every run gets the same rows and nothing is downloaded.
"""

from __future__ import annotations

import random

import pandas as pd

_PRODUCTS = [
    ("Aurora desk lamp", "lighting"),
    ("Trailblazer hiking boots", "outdoor"),
    ("Brewmaster kettle", "kitchen"),
    ("Nimbus pillow", "bedroom"),
    ("Pocket projector", "electronics"),
    ("Everyday backpack", "bags"),
]
_OPENINGS = {
    "positive": ["Absolutely love the {p}.", "The {p} exceeded my expectations.", "Great {p}!"],
    "negative": [
        "The {p} broke after a week.",
        "Very disappointed with the {p}.",
        "Avoid the {p}.",
    ],
    "neutral": ["The {p} is okay.", "The {p} does what it says.", "Average {p}, nothing special."],
}
_DETAILS = {
    "positive": [
        "Setup took two minutes",
        "it feels sturdy",
        "shipping was fast",
        "worth every cent",
    ],
    "negative": [
        "the seams came apart",
        "support never answered",
        "it arrived scratched",
        "too loud",
    ],
    "neutral": [
        "the colour is fine",
        "delivery was on time",
        "the manual is short",
        "it is a bit heavy",
    ],
}


def reviews(n: int = 12, *, seed: int = 7) -> pd.DataFrame:
    """``n`` synthetic product reviews: ``product``, ``category``, ``stars``, ``review``,
    and the ``true_sentiment`` they were written with (to check a classifier against)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        product, category = rng.choice(_PRODUCTS)
        sentiment = rng.choice(["positive", "negative", "neutral"])
        stars = {"positive": rng.choice([4, 5]), "negative": rng.choice([1, 2]), "neutral": 3}[
            sentiment
        ]
        text = rng.choice(_OPENINGS[sentiment]).format(p=product)
        details = rng.sample(_DETAILS[sentiment], k=2)
        text += f" {details[0].capitalize()}, and {details[1]}."
        rows.append(
            {
                "review_id": f"R{1000 + i}",
                "product": product,
                "category": category,
                "stars": stars,
                "review": text,
                "true_sentiment": sentiment,
            }
        )
    return pd.DataFrame(rows).set_index("review_id")
