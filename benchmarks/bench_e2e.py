"""Benchmark: a whole job of N rows on the embedded emulator, end to end.

Build the requests, submit them in provider-sized chunks, wait, collect and merge, the
way a user runs it (``nb.submit(...).wait().merge()``), with the emulator in a separate
process so the client's wall time and peak memory are its own. The emulator's own time
(validating and answering) is reported beside it, from the batches' timestamps.

    python benchmarks/bench_e2e.py [--rows 1000000] [--provider openai|anthropic]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--provider", choices=["openai", "anthropic"], default="openai")
    args = ap.parse_args()
    os.environ.setdefault("NBBATCH_HOME", tempfile.mkdtemp(prefix="nbbatch-bench-"))
    emu = subprocess.Popen(
        [sys.executable, "-m", "nbbatch.emulator", "--validating-seconds", "0",
         "--processing-seconds", "0.5", "--finalizing-seconds", "0"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert emu.stdout is not None
    url = emu.stdout.readline().split()[-1]
    try:
        return run(args.rows, args.provider, url)
    finally:
        emu.terminate()
        emu.wait(10)
        emu.stdout.close()


def run(n: int, provider: str, url: str) -> int:
    import anthropic
    import numpy as np
    import openai
    import pandas as pd

    import nbbatch as nb

    rng = np.random.default_rng(0)
    words = np.array('good bad great awful okay broke fast slow café naïve 😀 "quoted"'.split())
    reviews = [" ".join(rng.choice(words, 30)) for _ in range(1000)]
    df = pd.DataFrame(
        {"product": np.tile(["lamp", "boots", "kettle", "pillow"], n // 4 + 1)[:n],
         "review": [reviews[i % 1000] + f" #{i}" for i in range(n)]}
    )  # fmt: skip
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if provider == "openai":
        client = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=5)
        model = "gpt-4o-mini"
    else:
        client = anthropic.Anthropic(base_url=url, api_key="bench", max_retries=5)
        model = "claude-haiku-4-5"
    t0 = time.perf_counter()
    job = nb.submit(df, "Classify this {product} review: {review}", model=model, client=client,
                    max_tokens=20, display=False)  # fmt: skip
    t_submit = time.perf_counter() - t0
    job.polling = nb.PollPolicy(0.5, 2.0)
    job.wait(progress=False)
    t_wait = time.perf_counter() - t0 - t_submit
    t1 = time.perf_counter()
    out = job.merge(df)
    t_merge = time.perf_counter() - t1
    total = time.perf_counter() - t0
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
    assert (out["response_status"] == "succeeded").all(), job.counts
    emulator_seconds = _emulator_time(job, client, provider)
    batches = job.snapshot().batches
    print(f"nbbatch end-to-end benchmark: {n:,} rows, {provider}, {len(batches)} batches, "
          f"{os.cpu_count()} cores\n")  # fmt: skip
    print(f"  submit (build, chunk, upload, create): {t_submit:8.1f} s")
    print(f"  wait + collect (poll, download, parse): {t_wait:8.1f} s")
    print(f"  merge into the DataFrame:              {t_merge:8.1f} s")
    print(f"  client wall time, total:               {total:8.1f} s  ({n / total:,.0f} rows/s)")
    print(f"  client peak memory above the frame:    {peak / 1e6:8.0f} MB")
    print(f"  emulator busy (first create to last end): {emulator_seconds:5.1f} s")
    print(f"  client time not spent waiting on the emulator: {total - emulator_seconds:5.1f} s")
    return 0


def _emulator_time(job, client, provider: str) -> float:
    """Seconds from the first batch's creation to the last one's end, as the provider
    reports them."""
    starts, ends = [], []
    for b in job.batch_ids:
        if provider == "openai":
            batch = client.batches.retrieve(b)
            starts.append(batch.created_at)
            ends.append(batch.completed_at or batch.created_at)
        else:
            batch = client.messages.batches.retrieve(b)
            starts.append(batch.created_at.timestamp())
            ends.append((batch.ended_at or batch.created_at).timestamp())
    return max(ends) - min(starts)


if __name__ == "__main__":
    sys.exit(main())
