"""``make demo``: a DataFrame enriched through a batch on the embedded emulator.

Builds synthetic product reviews, submits them to the emulator's OpenAI Batch API (the
same code path as the real service), prints each status change, the merged frame, the
rows that failed, their resubmission and what the batch price saved. The labels come
from a keyword responder standing in for the model
(:func:`nbbatch.datasets.sentiment_responder`): the emulator is not a model. Run it with
``python -m nbbatch.demo``.
"""

from __future__ import annotations

import sys
import tempfile
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from .pricing import Cost


def main() -> int:
    """Run the demo; returns the process exit code."""
    import os

    # Keep the demo's ledger out of the user's real one.
    os.environ.setdefault("NBBATCH_HOME", tempfile.mkdtemp(prefix="nbbatch-demo-"))
    import openai

    import nbbatch as nb
    from nbbatch._console import ConsoleReporter
    from nbbatch.datasets import reviews, sentiment_responder
    from nbbatch.snapshot import rows

    df = reviews(12)
    print(f"{len(df)} synthetic product reviews:\n")
    print(df[["product", "stars", "review"]].to_string(max_colwidth=60), "\n")

    # A few seconds per stage so the life cycle is visible. One row in six fails with a
    # server error on its first attempt; retries=0 leaves them failed, to show
    # resubmission. The answers come from a keyword responder standing in for the model.
    with nb.emulator.start(
        validating_seconds=1.0,
        processing_seconds=4.0,
        finalizing_seconds=1.0,
        error_rate=1 / 6,
        responder=sentiment_responder(),
    ) as emu:
        client = openai.OpenAI(base_url=emu.openai_base_url, api_key="local-emulator")
        job = nb.submit(
            df,
            "Classify the sentiment of this review as positive, negative or neutral:\n{review}",
            model="gpt-4o-mini",
            output="sentiment",
            client=client,
            retries=0,
        )
        job.polling = nb.PollPolicy(0.5, 1.0)
        job.subscribe(ConsoleReporter(sys.stdout))  # one line per change, as a script shows it
        job.wait_sent()  # the batches are created in the background: name them once made
        ids = job.batch_ids
        print(f"Submitted job {job.id} as {len(ids)} {'batch' if len(ids) == 1 else 'batches'}: "
              f"{', '.join(ids)}\n")  # fmt: skip
        job.wait(progress=False)
        failed = job.failed()
        pd.set_option("display.width", 200)
        print(f"\n{rows(len(failed))} failed:\n")
        print(failed[["product", "sentiment_status", "sentiment_error"]].to_string(max_colwidth=70))
        print("\nResubmitting only those rows (the others are not sent or paid for again):\n")
        job.resubmit_failed().wait(progress=False)
        out = job.merge()

    _show_outcome(out, job.counts, job.cost)
    return 0 if job.counts["succeeded"] == len(df) else 1


def _show_outcome(out: pd.DataFrame, counts: dict[str, int], cost: Cost) -> None:
    """Print the merged frame, the job's counts and what batch pricing saved."""
    from nbbatch import pricing

    print("\nMerged DataFrame (labels from a keyword responder standing in for the model):\n")
    print(out[["product", "true_sentiment", "sentiment", "sentiment_status"]].to_string())
    print(f"\nCounts: {counts}")
    if cost.batch is not None and cost.saving is not None:
        print(
            f"Cost: {pricing.money(cost.batch)} at the batch price, "
            f"{pricing.money(cost.realtime or 0)} in real time: saved "
            f"{pricing.money(cost.saving)} (prices: {pricing.source()})"
        )


if __name__ == "__main__":
    sys.exit(main())
