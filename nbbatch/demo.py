"""``make demo``: a DataFrame enriched through a batch on the embedded emulator.

Builds synthetic product reviews, submits them to the emulator's OpenAI Batch API (the
same code path as the real service), prints each status change, then the merged frame.
Run it with ``python -m nbbatch.demo``.
"""

from __future__ import annotations

import sys
import tempfile

import pandas as pd


def main() -> int:
    """Run the demo; returns the process exit code."""
    import os

    # Keep the demo's ledger out of the user's real one.
    os.environ.setdefault("NBBATCH_HOME", tempfile.mkdtemp(prefix="nbbatch-demo-"))
    import openai

    import nbbatch as nb
    from nbbatch.console import ConsoleReporter
    from nbbatch.datasets import reviews

    df = reviews(12)
    print(f"{len(df)} synthetic product reviews:\n")
    print(df[["product", "stars", "review"]].to_string(max_colwidth=60), "\n")

    # A few seconds per stage so the life cycle is visible; one row in ten fails
    # transiently on its first attempt: nbbatch retries it by itself (retries=2).
    with nb.emulator.start(
        validating_seconds=1.0, processing_seconds=4.0, finalizing_seconds=1.0, error_rate=0.1
    ) as emu:
        client = openai.OpenAI(base_url=emu.openai_base_url, api_key="local-emulator")
        job = nb.submit(
            df,
            "Classify the sentiment of this review as positive, negative or neutral:\n{review}",
            model="gpt-4o-mini",
            output="sentiment",
            client=client,
        )
        job.polling = nb.PollPolicy(0.5, 1.0)
        job.subscribe(ConsoleReporter(sys.stdout))  # one line per change, as a script shows it
        print(f"Submitted job {job.id} as batch(es) {job.batch_ids}\n")
        job.wait(progress=False)
        out = job.merge()

    pd.set_option("display.width", 200)
    print("\nMerged DataFrame (the emulator echoes each prompt; it is not a model):\n")
    print(
        out[["product", "sentiment", "sentiment_status", "sentiment_error"]].to_string(
            max_colwidth=70
        )
    )
    print(f"\nCounts: {job.counts}")
    return 0 if job.counts["succeeded"] == len(df) else 1


if __name__ == "__main__":
    sys.exit(main())
