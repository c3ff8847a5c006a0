"""The job's life: waiting, failures and resubmission, cancel, the ledger, attach."""

from __future__ import annotations

import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator

from .conftest import openai_client


def test_transient_failures_resubmit_only_failed_rows_and_end_all_succeeded():
    df = pd.DataFrame({"text": [f"row {i}" for i in range(60)]})
    with emulator.start(processing_seconds=0.05, error_rate=0.2, seed=3) as emu:
        client = openai_client(emu)
        job = nb.submit(df, "{text}", model="gpt-4o-mini", client=client, output="out")
        job.wait(timeout=30, progress=False)
        first = job.counts
        assert 0 < first["failed"] < 60
        failed_ids = job.failed().index.tolist()
        before = emu.stats()["openai_batches_created"]
        job.resubmit_failed().wait(timeout=30, progress=False)
        assert emu.stats()["openai_batches_created"] == before + 1
        # Only the failed rows went out in the new batch.
        new_batch = client.batches.retrieve(job.batch_ids[-1])
        assert new_batch.request_counts.total == first["failed"]
        out = job.merge()
        assert (out["out_status"] == "succeeded").all()
        assert out["out"].tolist() == [emulator.echo_text(t) for t in df["text"]]
        assert job.results().loc[[str(i) for i in failed_ids], "attempt"].eq(2).all()
        # Nothing left to resubmit: no new batch.
        job.resubmit_failed()
        assert emu.stats()["openai_batches_created"] == before + 1


def test_wait_times_out_with_advice_and_the_job_goes_on():
    with emulator.start(processing_seconds=5.0) as emu:
        job = nb.submit(
            pd.DataFrame({"text": ["a"]}), "{text}", model="gpt-4o-mini", client=openai_client(emu)
        )
        with pytest.raises(TimeoutError, match="nb.attach"):
            job.wait(timeout=0.3, progress=False)
        assert job.status == "running"
        assert job.counts["pending"] == 1


def test_cancel_mid_job_ends_every_row_terminal():
    with emulator.start(processing_seconds=3.0) as emu:
        df = pd.DataFrame({"text": [f"r{i}" for i in range(10)]})
        job = nb.submit(df, "{text}", model="gpt-4o-mini", client=openai_client(emu))
        job.cancel()
        job.wait(timeout=30, progress=False)
        counts = job.counts
        assert counts["pending"] == 0
        assert counts["cancelled"] + counts["succeeded"] == 10
        assert counts["cancelled"] > 0
        assert job.status == "cancelled"


def test_attach_rebuilds_the_job_from_the_ledger(emu):
    df = pd.DataFrame({"text": ["x", "y"]}, index=["a", "b"])
    job = nb.submit(df, "{text}", model="gpt-4o-mini", client=openai_client(emu))
    again = nb.attach(job.id, client=openai_client(emu))
    again.wait(timeout=30, progress=False)
    assert again.batch_ids == job.batch_ids
    assert again.merge(df)["response"].tolist() == [emulator.echo_text(t) for t in df["text"]]
    with pytest.raises(nb.MergeError, match="merge\\(df\\)"):
        again.merge()
    listed = nb.jobs()
    assert listed.loc[listed["id"] == job.id, "succeeded"].item() == 2
    with pytest.raises(nb.JobNotFoundError, match="nb.jobs"):
        nb.attach("nbb-nope")


def test_provider_local_runs_on_the_shared_emulator_without_a_key():
    df = pd.DataFrame({"text": ["local one"]})
    job = nb.submit(df, "{text}", model="gpt-4o-mini", provider="local")
    assert job.provider == "openai"
    job.wait(timeout=60, progress=False)
    assert job.merge()["response"].tolist() == [emulator.echo_text("local one")]


def test_wait_prints_one_line_per_change(emu, capsys):
    job = nb.submit(
        pd.DataFrame({"text": ["a"]}), "{text}", model="gpt-4o-mini", client=openai_client(emu)
    )
    job.wait(timeout=30, progress=True)
    err = capsys.readouterr().err
    assert job.id in err and "1 succeeded" in err
    assert len(err.strip().splitlines()) == len(set(err.strip().splitlines()))
