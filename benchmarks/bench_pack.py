"""Benchmark: what row packing (``submit(..., pack=20)``) is billed, beside the same job
unpacked, on OpenAI and on Anthropic (issue #16's figure).

On the emulator (no key): 10,000 rows, 30% of them repeating another row's text, one
1,500-token instruction shared by every request (a system prompt), a structured
classification with a confidence answered by a keyword responder, a stand-in for the
model. Each setting runs the job twice, unpacked and in packs of 20, in the same run:
OpenAI (which caches the instruction by itself, packed or not), Anthropic as submitted
by default, and Anthropic with ``cache_system=True`` on both runs (the cheapest
unpacked baseline there: then the instruction costs a tenth, and the answers, which
packing cannot shrink, are most of the bill). Printed: the billed batch cost of each
(from the usage the results report, priced by genai-prices), the ratio beside its
target (at most 1/3), and the estimate ``nb.preview`` gave beforehand. The exit status
is 0 when every setting meets the target.

    python benchmarks/bench_pack.py [--rows 10000] [--pack 20] [--settings ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from _common import LABELS, instruction, reviews
from _common import SENTIMENT_SCHEMA as SCHEMA

TARGET = 1 / 3
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
#: setting -> (provider, cache_system)
SETTINGS = {
    "openai": ("openai", False),
    "anthropic": ("anthropic", False),
    "anthropic+cache_system": ("anthropic", True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--pack", type=int, default=20)
    parser.add_argument("--duplicates", type=float, default=0.3)
    parser.add_argument("--instruction-tokens", type=int, default=1_500)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()

    os.environ["NBBATCH_HOME"] = tempfile.mkdtemp(prefix="nbbatch-bench-pack-")
    import anthropic
    import openai

    import nbbatch as nb
    from nbbatch import emulator, pricing

    df = reviews(args.rows, args.duplicates, plain_words=("plain", "ordinary"))
    system = instruction(args.instruction_tokens)
    responder = emulator.keyword_responder(LABELS, default="neutral")
    print(
        f"row packing on the emulator: {len(df):,} rows ({int(df['review'].duplicated().sum()):,} "
        f"duplicates, sent once), a {args.instruction_tokens:,}-token shared instruction, "
        f"pack={args.pack} vs unpacked; target: packed billed <= {TARGET:.1%} of unpacked"
    )
    ok = True
    with emulator.start(processing_seconds=0.2, responder=responder) as emu:
        for setting in args.settings:
            provider, cache_system = SETTINGS[setting]
            if provider == "openai":
                client: object = openai.OpenAI(
                    base_url=emu.openai_base_url, api_key="local", max_retries=5
                )
            else:
                client = anthropic.Anthropic(
                    base_url=emu.anthropic_base_url, api_key="local", max_retries=5
                )
            common = {
                "model": MODELS[provider], "system": system, "response_format": SCHEMA,
                "output": "sentiment", "client": client, "max_tokens": 50,
                "cache_system": cache_system,
            }  # fmt: skip
            billed, estimated, took, failed = {}, {}, {}, {}
            for name, pack in (("unpacked", None), (f"pack={args.pack}", args.pack)):
                preview_kwargs = {k: v for k, v in common.items() if k not in ("output",)}
                preview_kwargs.pop("response_format")
                est = nb.preview(df, "{review}", pack=pack, **preview_kwargs).estimate
                started = time.perf_counter()
                job = nb.submit(df, "{review}", pack=pack, display=False, **common)
                job.wait(progress=False)
                took[name] = time.perf_counter() - started
                cost = job.cost
                assert cost.batch is not None and not cost.estimated
                billed[name], estimated[name] = cost.batch, est.cost.batch
                failed[name] = len(df) - job.counts["succeeded"]
            client.close()  # type: ignore[attr-defined]
            ratio = billed[f"pack={args.pack}"] / billed["unpacked"]
            ok = ok and ratio <= TARGET and not any(failed.values())
            print(f"  {setting} ({MODELS[provider]}):")
            for name in billed:
                print(
                    f"    {name:<10} billed {pricing.money(billed[name]):>9} batch "
                    f"(estimated {pricing.money(estimated[name] or 0)}), "
                    f"{failed[name]} rows not succeeded, {took[name]:.1f} s"
                )
            print(
                f"    packed / unpacked: {ratio:.1%} (target <= {TARGET:.1%}): "
                + ("met" if ratio <= TARGET else "NOT met")
            )
    print(f"  prices: {pricing.source()}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
