"""Benchmark: does a pilot's interval hold the truth, and does it recommend the right
model? (issue #18's pilot figures; the calibrated cascade's figure is measured apart).

On the emulator (OpenAI Batch API, no key) with models of known quality
(``nb.emulator.start(quality=...)``): a table of distinct reviews classified into three
labels with a confidence, the large model standing for the truth (quality 1.0).

1. Coverage: ``nb.pilot(n=200)`` with 50 seeds, the small model at quality 0.88. The
   true agreement is the share of the whole table's rows the emulator makes the small
   model agree on (what a pilot estimates), computed row by row from the emulator's
   public choice (``QualityResponder.agrees``). Target: the 95% interval covers it in at
   least 90% of the repetitions.
2. Recommendation: ``recommend(0.95)`` at n=200 names the small model when its quality is
   0.99 and the large one when it is 0.85 (seed 0; and over 10 seeds, how often).

Each figure is printed beside its target.

    python benchmarks/bench_pilot.py [--rows 5000] [--reps 50] [--n 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import pandas as pd

SMALL, LARGE = "gpt-4o-mini", "gpt-4o"
LABELS = ("positive", "negative", "neutral")
SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": list(LABELS)},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "confidence"],
    "additionalProperties": False,
}


def responder(request):  # noqa: ANN001, ANN201 - the emulator's test double
    """The truth: a label and a confidence from the review's words."""
    n = sum(map(ord, request.prompt))
    return {"label": LABELS[n % 3], "confidence": 0.6 + (n % 40) / 100}


def table(rows: int) -> pd.DataFrame:
    """``rows`` distinct reviews (distinct, so each is its own draw of the emulator's
    choice)."""
    words = ["sturdy", "late", "fine", "broken", "lovely", "noisy", "cheap", "heavy"]
    texts = [
        f"Review {i}: it was {words[i % 8]} and {words[(i * 7 + 3) % 8]}, order {i * 31 % 997}."
        for i in range(rows)
    ]
    return pd.DataFrame({"review": texts}, index=[f"R{i}" for i in range(rows)])


def true_agreement(df: pd.DataFrame, quality: dict[str, float]) -> float:
    """The share of the whole table's rows on which the small model agrees."""
    from nbbatch import emulator

    chooser = emulator.with_quality(responder, quality)
    return float(sum(chooser.agrees(SMALL, text) for text in df["review"]) / len(df))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args(argv)
    os.environ["NBBATCH_HOME"] = tempfile.mkdtemp(prefix="nbbatch-bench-pilot-")

    import openai

    import nbbatch as nb

    df = table(args.rows)
    ok = True
    quality = {SMALL: 0.88, LARGE: 1.0}
    with (
        nb.emulator.start(processing_seconds=0.05, responder=responder, quality=quality) as emu,
        openai.OpenAI(base_url=emu.openai_base_url, api_key="bench") as client,
    ):
        truth = true_agreement(df, quality)
        covered = 0
        started = time.monotonic()
        for seed in range(args.reps):
            p = nb.pilot(df, "{review}", model=[SMALL, LARGE], n=args.n, seed=seed,
                         response_format=SCHEMA, client=client)  # fmt: skip
            row = p.table.loc[SMALL]
            covered += bool(row["agreement_low"] <= truth <= row["agreement_high"])
        took = time.monotonic() - started
        share = covered / args.reps
        ok &= share >= 0.9
        print(f"1. quality {quality[SMALL]}: true agreement over {args.rows:,} rows {truth:.4f}")
        print(f"   interval covers it in {covered}/{args.reps} pilots = {share:.0%}"
              f"   (target >= 90%)  {'ok' if share >= 0.9 else 'MISSED'}"
              f"   [{took:.0f} s, n={args.n}]")  # fmt: skip

        print(f"2. recommend(0.95) at n={args.n}, {LARGE} at quality 1.0:")
        for small_quality, expected in ((0.99, SMALL), (0.85, LARGE)):
            emu.quality = {SMALL: small_quality, LARGE: 1.0}
            picks = []
            for seed in range(10):
                p = nb.pilot(df, "{review}", model=[SMALL, LARGE], n=args.n, seed=seed,
                             response_format=SCHEMA, client=client, reuse=False,
                             force=True)  # fmt: skip
                chosen = p.recommend(0.95)
                picks.append(None if chosen is None else chosen.model)
            first = picks[0]
            right = picks.count(expected)
            ok &= first == expected
            print(f"   {SMALL} at {small_quality}: picks {first} with seed 0 "
                  f"(target {expected}) {'ok' if first == expected else 'MISSED'}; "
                  f"{right}/10 seeds pick {expected}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
