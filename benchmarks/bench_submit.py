"""Benchmark: how long ``nb.submit`` holds the kernel for a large table held in memory.

For each provider, in its own process beside an emulator: ``--rows`` rows (1,000,000 by
default) of the bench_scale data as a polars DataFrame, ``nb.submit(df, ...)`` timed
until it returns (nbbatch and pandas imported first, as in a notebook). With
``--wait`` the job is then run to the end and every row checked to have succeeded, so
the time saved at submit is not a job that fails later. Printed beside the target:
submit returns within 1 s on every provider.

    python benchmarks/bench_submit.py [--rows 1000000] [--providers openai,anthropic,gemini]
        [--wait]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_scale import MAX_TOKENS, PROMPT, frame  # noqa: E402

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}
TARGET_SECONDS = 1.0


def child(provider: str, rows: int, wait: bool) -> dict[str, Any]:
    """One provider's run, in this process, on an emulator of its own."""
    import pandas  # noqa: F401  (a notebook has it imported already)

    import nbbatch as nb
    import nbbatch._submit  # noqa: F401
    from nbbatch import emulator

    df = frame(0, rows)
    with emulator.start(processing_seconds=1.0) as emu:
        client: Any
        if provider == "openai":
            import openai

            client = openai.OpenAI(base_url=emu.openai_base_url, api_key="bench")
        elif provider == "anthropic":
            import anthropic

            client = anthropic.Anthropic(base_url=emu.anthropic_base_url, api_key="bench")
        else:
            from google import genai

            client = genai.Client(api_key="bench", http_options={"base_url": emu.gemini_base_url})
        t0 = time.perf_counter()
        job = nb.submit(df, PROMPT, model=MODELS[provider], client=client,
                        max_tokens=MAX_TOKENS, display=False)  # fmt: skip
        submit = time.perf_counter() - t0
        result: dict[str, Any] = {"provider": provider, "rows": rows, "submit": submit}
        if wait:
            job.polling = nb.PollPolicy(0.5, 2.0)
            job.wait(progress=False)
            result["total"] = time.perf_counter() - t0
            result["succeeded"] = int(job.counts["succeeded"])
        else:
            job.cancel()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--providers", default="openai,anthropic,gemini")
    parser.add_argument("--wait", action="store_true", help="run each job to the end")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rows, args.wait)), flush=True)
        return 0
    results = []
    for provider in args.providers.split(","):
        with tempfile.TemporaryDirectory(prefix="nbbatch-bench-submit-") as home:
            env = {**os.environ, "NBBATCH_HOME": home}
            cmd = [sys.executable, __file__, "--child", provider, "--rows", str(args.rows)]
            done = subprocess.run(
                cmd + (["--wait"] if args.wait else []),
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"nb.submit of {args.rows:,} rows in a polars DataFrame; {os.cpu_count()} cores")
    ok = True
    for r in results:
        met = r["submit"] <= TARGET_SECONDS
        ok &= met
        extra = ""
        if "total" in r:
            extra = f"; job done in {r['total']:.1f} s, {r['succeeded']:,} rows succeeded"
            ok &= r["succeeded"] == r["rows"]
        verdict = "met" if met else "NOT met"
        print(f"  {r['provider']:10s} submit returned in {r['submit']:.2f} s "
              f"(target <= {TARGET_SECONDS:.0f} s: {verdict}){extra}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
