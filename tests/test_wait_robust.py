"""What the background sender and poller meet never escapes ``job.wait()`` as an
exception from a background path, and never leaves a row in no terminal state: a batch
create the provider refuses during an automatic retry is noted on the job, its rows end
``failed`` with the provider's reason (``not_sent``), ``wait()`` returns the job, and
``resubmit_failed()`` sends those rows again."""

from __future__ import annotations

import pandas as pd

import nbbatch as nb
from nbbatch import emulator

from .conftest import batches_created, client_for, model_for

N = 40


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(N)]})


def _one_state_each(job: nb.BatchJob) -> None:
    """Every row is in exactly one terminal state."""
    counts = job.counts
    assert counts["pending"] == 0
    assert sum(v for k, v in counts.items() if k != "total") == counts["total"] == N
    results = job.results()
    assert len(results) == N and results["status"].isin(["succeeded", "failed"]).all()


def _wait_while_every_post_is_refused(job: nb.BatchJob, emu: emulator.Emulator) -> None:
    """From now on the provider refuses every upload and create (400): ``job.wait()``
    returns all the same, no batch was made, and every row is in one state."""
    first = batches_created(emu)
    emu.configure(http_error_rate=1.0, http_error_methods=("POST",), http_error_statuses=(400,))
    assert job.wait(timeout=60, progress=False) is job  # no exception
    assert batches_created(emu) == first  # what would have been sent made no batch
    _one_state_each(job)


def test_a_retry_the_provider_refuses_at_create_ends_its_rows_failed_and_wait_returns(
    provider,
):
    with emulator.start(processing_seconds=0.2, error_rate=0.25, seed=3) as emu:
        client = client_for(provider, emu)
        df = _frame()
        job = nb.submit(df, "{text}", model=model_for(client), client=client, retries=2)
        job.wait_sent(timeout=60)
        # The automatic retry of the rows that failed transiently is refused.
        _wait_while_every_post_is_refused(job, emu)
        assert job.counts["succeeded"] == N - 10 and job.counts["failed"] == 10
        failed = job.results().query("status == 'failed'")
        assert (failed["error_type"] == "not_sent").all()
        assert failed["error"].str.contains("400").all()
        snap = job.snapshot()
        assert snap.status == "completed"
        assert any("refused" in w and "resubmit_failed" in w for w in snap.warnings)
        # Once the provider takes batches again, resubmit_failed() sends only those rows.
        emu.configure(http_error_rate=0.0)
        job.resubmit_failed()
        job.wait(timeout=60, progress=False)
        assert job.counts["succeeded"] == N
        out = job.merge(df)
        assert out["response"].tolist() == [emulator.echo_text(t) for t in df["text"]]


def test_an_unexpected_error_in_background_polling_is_shown_not_lost(oai, monkeypatch):
    # What no provider produces (a full disk while a result is recorded): mocked.
    from nbbatch import _collect

    job = nb.submit(_frame(), "{text}", model="gpt-4o-mini", client=oai)
    job.wait_sent(timeout=60)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_collect, "poll_batch", full)
    poller = job.start_polling()
    poller.join(60)
    assert not poller.running
    assert "polling stopped" in (job.snapshot().last_error or "")
    assert "No space left" in job.snapshot().last_error
    monkeypatch.undo()
    job.wait(timeout=60, progress=False)  # the next wait polls again and ends the job
    _one_state_each(job)
    assert job.counts["succeeded"] == N


def test_a_cascade_stage_the_provider_refuses_ends_its_rows_failed_and_wait_returns():
    with emulator.start(processing_seconds=0.2, error_rate=0.25, seed=3) as emu:
        client = client_for("openai", emu)
        df = _frame()
        job = nb.submit(
            df, "{text}", model=["gpt-4o-mini", "gpt-4o"], client=client, retries=0
        )  # the rows that fail on the first model go to the second, as its stage
        job.wait_sent(timeout=60)
        _wait_while_every_post_is_refused(job, emu)  # the stage makes no batch
        assert job.counts["failed"] == 10
        failed = job.results().query("status == 'failed'")
        assert (failed["error_type"] == "not_sent").all()
        assert any("refused" in w and "resubmit_failed" in w for w in job.snapshot().warnings)
        emu.configure(http_error_rate=0.0)
        job.resubmit_failed()  # on the model of the stage they failed in
        job.wait(timeout=60, progress=False)
        assert job.counts["succeeded"] == N
        out = job.merge(df)
        assert out["response_model"].value_counts().to_dict() == {"gpt-4o-mini": 30, "gpt-4o": 10}
