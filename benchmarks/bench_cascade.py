"""Benchmark: what a cheap-model-first cascade is billed, beside every row on the large
model in real time (issue #12's figure).

On the emulator (OpenAI Batch API, no key): 10,000 rows, 30% of them repeating another
row's text, one 1,500-token instruction shared by every request (a system prompt, which
OpenAI caches by itself from 1,024 tokens on, as the emulator reports it), a structured
classification with a confidence. The cascade runs every row on ``gpt-4o-mini`` and
escalates to ``gpt-4o`` the rows answered with confidence below 0.7 (about 10%; the
keyword responder, a stand-in for the model, is unsure of rows without a keyword).

Printed: the billed cost of each stage (from the usage the results report, priced by
genai-prices), and the cost of every row on ``gpt-4o`` in real time, counted from the same
reported tokens (duplicates paid again: a real-time loop sends every row), with OpenAI's
prefix caching (it applies in real time too) and without it. The goal is a fraction of
10% or less.

    python benchmarks/bench_cascade.py [--rows 10000] [--escalate 0.1] [--models SMALL LARGE]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd

SMALL, LARGE = "gpt-4o-mini", "gpt-4o"
LABELS = {
    "positive": ["love", "great", "excellent", "perfect"],
    "negative": ["broken", "awful", "refund", "leaks"],
}
SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "confidence"],
    "additionalProperties": False,
}


def instruction(tokens: int) -> str:
    """A shared instruction of about ``tokens`` tokens (the emulator counts 4 characters
    per token): the label definitions a real prompt would spell out."""
    rule = (
        "Label the customer review as positive, negative or neutral and say how sure you "
        "are as a number between 0 and 1. Positive reviews praise the product; negative "
        "ones report a fault, a return or a refund; neutral ones only describe. "
    )
    text = ""
    while len(text) < tokens * 4:
        text += rule
    return text[: tokens * 4]


def reviews(n: int, duplicates: float, vague: float, seed: int = 0) -> pd.DataFrame:
    """``n`` reviews: a share ``duplicates`` repeating an earlier one, and a share
    ``vague`` of the distinct ones with no keyword (the small model is unsure of them)."""
    rng = np.random.default_rng(seed)
    distinct = n - int(round(n * duplicates))
    words = [w for ws in LABELS.values() for w in ws]
    unsure = set(rng.choice(distinct, size=int(round(distinct * vague)), replace=False).tolist())
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--models", nargs=2, default=[SMALL, LARGE], metavar=("SMALL", "LARGE"))
    parser.add_argument("--duplicates", type=float, default=0.3)
    parser.add_argument("--escalate", type=float, default=0.1, help="share of rows to escalate")
    parser.add_argument("--instruction-tokens", type=int, default=1_500)
    args = parser.parse_args()
    small, large = args.models

    os.environ["NBBATCH_HOME"] = tempfile.mkdtemp(prefix="nbbatch-bench-cascade-")
    import openai

    import nbbatch as nb
    from nbbatch import emulator, pricing

    df = reviews(args.rows, args.duplicates, args.escalate)
    system = instruction(args.instruction_tokens)
    responder = emulator.keyword_responder(LABELS, default="neutral")
    started = time.perf_counter()
    with emulator.start(processing_seconds=0.5, responder=responder) as emu:
        client = openai.OpenAI(base_url=emu.openai_base_url, api_key="local", max_retries=5)
        job = nb.submit(
            df, "{review}", model=[small, large], system=system, response_format=SCHEMA,
            output="sentiment", client=client, max_tokens=50,
            escalate_when=lambda out: out["confidence"] < 0.7, display=False,
        )  # fmt: skip
        job.wait(progress=False)
        client.close()
    took = time.perf_counter() - started
    snap = job.snapshot()
    out = job.merge(df)
    escalated = int(out["sentiment_model"].eq(large).sum())
    cost = job.cost
    assert cost.batch is not None and not cost.estimated

    # Every row on the large model in real time (job.cost's comparison): each row's own
    # request, duplicates included, with the tokens the small model's pass reported per
    # request, prompt caching included (OpenAI applies it in real time too); and the same
    # without caching, for comparison.
    baseline = cost.realtime
    first = snap.stages[0]
    n = len(df)
    per = n / max(first.requests, 1)
    uncached = pricing.cost(
        large, int(first.input_tokens * per), int(first.output_tokens * per), 0, estimated=False
    ).realtime
    assert baseline is not None and uncached is not None

    print(f"cascade {small} -> {large} on the emulator: {n:,} rows, "
          f"{snap.deduplicated:,} duplicates sent once, a {args.instruction_tokens:,}-token "
          f"shared instruction; {took:.1f} s")  # fmt: skip
    for s in snap.stages:
        stage_cost = s.cost(True).batch
        print(
            f"  stage {s.stage + 1}: {s.rows:>6,} rows, {s.requests:>6,} requests on "
            f"{s.model:<12} {s.input_tokens:>12,} input ({s.cached_tokens:,} cached), "
            f"{s.output_tokens:>9,} output tokens: {pricing.money(stage_cost or 0)} batch"
        )
    print(f"  escalated: {escalated:,} rows ({escalated / n:.1%})")
    print(f"  billed, the cascade:                           {pricing.money(cost.batch)}")
    print(f"  every row on {large} in real time, with caching: {pricing.money(baseline)}")
    print(f"  every row on {large} in real time, no caching:   {pricing.money(uncached)}")
    print(f"  fraction: {cost.batch / baseline:.1%} of every row on {large} in real time "
          f"({cost.batch / uncached:.1%} of it without prompt caching); goal <= 10%")  # fmt: skip
    print(f"  job.cost: {cost}")
    print(f"  prices: {pricing.source()}")
    sys.exit(0 if cost.batch / baseline <= 0.10 else 1)


if __name__ == "__main__":
    main()
