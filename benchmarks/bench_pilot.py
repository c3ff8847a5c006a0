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
   0.99 and the large one when it is 0.85, on each of 10 seeds. At n=200 a small model
   right on 99% of rows disagrees 5 times or more on about one sample in twenty; its
   95% interval then holds the target (say 0.975 [0.943, 0.989]) and the sample cannot
   tell: the pilot says so (``pilot.inconclusive``) and recommends the large model,
   which is shown good enough. ``pilot.extend()`` then runs 600 more rows for the small
   model and the reference (the 200 paid for are kept) and decides again on a 99%
   interval (the second look spends less of the error; see ``piloting.look_level``).
   Printed per seed: the first look's figure, pick and whether it was inconclusive,
   and, where it was, the extension's figure and pick. Target: the right model on
   every seed once each inconclusive pilot is extended; the first look's picks shown
   beside.

Each figure is printed beside its target.

    python benchmarks/bench_pilot.py [--rows 5000] [--reps 50] [--n 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import pandas as pd
from _common import SENTIMENT_SCHEMA as SCHEMA

SMALL, LARGE = "gpt-4o-mini", "gpt-4o"
LABELS = ("positive", "negative", "neutral")


def agreement(row) -> str:  # noqa: ANN001 - a row of a pilot's table
    """A model's agreement in a pilot, with its interval: ``0.960 [0.865, 0.989]``."""
    return f"{row['agreement']:.3f} [{row['agreement_low']:.3f}, {row['agreement_high']:.3f}]"


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

        print(f"2. recommend(0.95) at n={args.n}, {LARGE} at quality 1.0; an inconclusive "
              "pilot extended once (pilot.extend(): 3x more rows, a 99% interval):")  # fmt: skip
        for small_quality, expected in ((0.99, SMALL), (0.85, LARGE)):
            emu.quality = {SMALL: small_quality, LARGE: 1.0}
            print(f"   {SMALL} at quality {small_quality} (right pick: {expected})")
            print("   seed  first look: agreement [95%]     pick          "
                  "extended: agreement [99%]      pick         rows")  # fmt: skip
            first_right = final_right = 0
            for seed in range(10):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the inconclusive warning, shown below
                    p = nb.pilot(df, "{review}", model=[SMALL, LARGE], n=args.n, seed=seed,
                                 response_format=SCHEMA, client=client, reuse=False,
                                 force=True)  # fmt: skip
                    chosen = p.recommend(0.95)
                    first = agreement(p.table.loc[SMALL])
                    pick = None if chosen is None else chosen.model
                    first_right += pick == expected
                    extended = ""
                    if p.inconclusive:
                        p = p.extend()
                        chosen = p.recommend(0.95)
                        extended = agreement(p.table.loc[SMALL])
                final = None if chosen is None else chosen.model
                final_right += final == expected
                flag = "inconclusive" if extended else ""
                print(f"   {seed:>4}  {first:<26} {pick or '-':<12}  "
                      f"{extended or flag or '-':<28} {final if extended else '':<12} "
                      f"{len(p.sample):>5}")  # fmt: skip
            ok &= final_right == 10
            print(f"   first look: {first_right}/10 seeds pick {expected}; after extending "
                  f"the inconclusive ones: {final_right}/10 "
                  f"{'ok' if final_right == 10 else 'MISSED'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
