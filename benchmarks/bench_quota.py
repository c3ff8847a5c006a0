"""Benchmark: a job ten times bigger than the account's batch queue, on each provider.

The emulator is started with a queue limit holding a tenth of the job: OpenAI's
enqueued input tokens per model, Anthropic's requests in the processing queue, Gemini's
enqueued tokens per model. Each provider runs two jobs in one ledger: the first with the
limit unknown (learned from the provider's refusal), the second on the same account
(the limit known from the ledger). Printed beside each target:

- rows succeeded (target: every row);
- refusals for the queue met by the job (target: at most one while the limit is
  unknown, none once known);
- wall time against the ideal wave schedule, waves x the emulator's batch time
  (target: within 1.3x);
- the time ``submit`` takes to return (target: 1 s);
- the machine's load average as the job ends (the wall times move with it).

Gemini's refusal states no limit: its first job fills the queue in steps (a twelfth of
the job, then each next wave boundary), and the step over the limit is its one refused
create.

Polling is scaled to the emulator's batch time (every 0.1 s to 0.5 s against batches of
``--batch-seconds``), as 30 s polls are to the hours a real batch takes: the figure is
the scheduler's, not the poll interval's.

    python benchmarks/bench_quota.py [--rows 200000] [--provider openai gemini]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROVIDERS = ("openai", "anthropic", "gemini")
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}
TEXT = "x" * 140  # with the row's number, ~150 characters: ~38 tokens a row


def client_for(provider: str, server: object) -> object:
    """An official SDK client of ``provider`` on the emulator."""
    if provider == "openai":
        import openai

        return openai.OpenAI(base_url=server.openai_base_url, api_key="bench", timeout=300)
    if provider == "anthropic":
        import anthropic

        return anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="bench")
    from google import genai
    from google.genai import types

    return genai.Client(
        api_key="bench", http_options=types.HttpOptions(base_url=server.gemini_base_url)
    )


def run(provider: str, rows: int, seconds: float) -> None:
    import pandas as pd

    import nbbatch as nb
    from nbbatch import emulator
    from nbbatch._ledger import default

    frames = [
        pd.DataFrame({"text": [f"job {k} row {i:07d} {TEXT}" for i in range(rows)]}) for k in (1, 2)
    ]
    # The job's size as the emulator counts it: a token for every four characters.
    tokens = sum(-(-len(t) // 4) for t in frames[0]["text"])
    total = rows if provider == "anthropic" else tokens
    limit = total // 10
    knob = {
        "openai": "enqueued_token_limit",
        "anthropic": "anthropic_queue_limit",
        "gemini": "gemini_enqueued_token_limit",
    }[provider]
    unit = "requests" if provider == "anthropic" else "tokens"
    ideal_waves = math.ceil(total / limit)
    with emulator.start(processing_seconds=seconds, **{knob: limit}) as server:
        client = client_for(provider, server)
        for k, df in enumerate(frames, start=1):
            started = time.perf_counter()
            job = nb.submit(df, "{text}", model=MODELS[provider], client=client)
            submitted = time.perf_counter() - started
            job.polling = nb.PollPolicy(first=0.1, most=0.5)
            job.wait(progress=False)
            wall = time.perf_counter() - started
            waves = default().waves(job.id)
            refused = int(waves.get("refusals") or 0)
            ideal = ideal_waves * seconds
            known = "known" if k == 2 else "unknown"
            ok = job.counts["succeeded"]
            print(
                f"{provider:9} job {k} (limit {known}, {limit:,} {unit}, {ideal_waves} waves "
                f"ideal):\n"
                f"  rows succeeded  {ok:,}/{rows:,}  (target: all)  "
                f"{'ok' if ok == rows else 'MISSED'}\n"
                f"  refusals        {refused}  (target: {'<= 1' if k == 1 else '0'})  "
                f"{'ok' if refused <= (1 if k == 1 else 0) else 'MISSED'}\n"
                f"  waves           {len(waves.get('starts') or [])}\n"
                f"  wall time       {wall:.1f} s vs ideal {ideal:.1f} s = {wall / ideal:.2f}x  "
                f"(target: <= 1.3x)  {'ok' if wall <= 1.3 * ideal else 'MISSED'}\n"
                f"  submit returns  {submitted:.2f} s  (target: <= 1 s)  "
                f"{'ok' if submitted <= 1.0 else 'MISSED'}\n"
                f"  load average    {' '.join(f'{x:.1f}' for x in os.getloadavg())}  "
                "(the wall times move with it)",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows a job (issue: 200000)")
    parser.add_argument("--provider", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument(
        "--batch-seconds", type=float, default=3.0, help="how long the emulator runs a batch"
    )
    args = parser.parse_args()
    os.environ["NBBATCH_HOME"] = tempfile.mkdtemp(prefix="nbbatch-bench-quota-")
    for provider in args.provider:
        run(provider, args.rows, args.batch_seconds)


if __name__ == "__main__":
    main()
