"""The job's life: waiting, failures and resubmission, cancel, the ledger, attach."""

from __future__ import annotations

import time

import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator

from .conftest import batches_created, client_for, model_for, openai_client


def test_transient_failures_resubmit_only_failed_rows_and_end_all_succeeded(provider):
    df = pd.DataFrame({"text": [f"row {i}" for i in range(60)]})
    with emulator.start(processing_seconds=0.05, error_rate=0.2, expire_rate=0.1, seed=3) as emu:
        client = client_for(provider, emu)
        job = nb.submit(
            df, "{text}", model=model_for(client), client=client, output="out", retries=0
        )
        job.wait(timeout=30, progress=False)
        first = job.counts
        assert first["failed"] == 12 and first["expired"] == 6 and first["succeeded"] == 42
        retried = job.failed().index.tolist()
        assert len(retried) == 18
        errors = job.merge().loc[retried, "out_error"]
        assert errors.str.len().gt(0).all()
        before = batches_created(emu)
        job.resubmit_failed().wait(timeout=30, progress=False)
        assert batches_created(emu) == before + 1
        # Only the failed and expired rows went out in the new batch.
        assert job.snapshot().batches[-1].n_requests == 18
        out = job.merge()
        assert (out["out_status"] == "succeeded").all()
        assert out["out"].tolist() == [emulator.echo_text(t) for t in df["text"]]
        attempts = job.results().set_index("position")["attempt"]
        assert attempts.loc[retried].eq(2).all()
        assert attempts.drop(index=retried).eq(1).all()
        # Nothing left to resubmit: no new batch.
        job.resubmit_failed()
        assert batches_created(emu) == before + 1


def test_wait_times_out_with_advice_and_the_job_goes_on(provider):
    with emulator.start(processing_seconds=5.0) as emu:
        client = client_for(provider, emu)
        job = nb.submit(
            pd.DataFrame({"text": ["a"]}), "{text}", model=model_for(client), client=client
        )
        with pytest.raises(TimeoutError, match="nb.attach"):
            job.wait(timeout=0.3, progress=False)
        assert job.status == "running"
        assert job.counts["pending"] == 1


def test_cancel_mid_job_keeps_finished_rows_and_cancels_the_rest(provider):
    with emulator.start(processing_seconds=2.0) as emu:
        client = client_for(provider, emu)
        df = pd.DataFrame({"text": [f"r{i}" for i in range(10)]})
        job = nb.submit(df, "{text}", model=model_for(client), client=client)
        time.sleep(1.1)  # about half the rows are processed by now
        job.cancel()
        job.wait(timeout=30, progress=False)
        counts = job.counts
        assert counts["pending"] == 0
        assert counts["cancelled"] + counts["succeeded"] == 10
        assert 0 < counts["cancelled"] < 10
        out = job.merge()
        done = out["response_status"] == "succeeded"
        assert out.loc[done, "response"].tolist() == [
            emulator.echo_text(t) for t in df["text"][done]
        ]
        assert out.loc[~done, "response"].isna().all()
        assert job.status == "cancelled"


def test_a_second_handle_collects_a_cancel_with_fresh_batch_state(provider, monkeypatch):
    """Two handles on one job (a kernel and the Lab server): one cancels and records the
    batch as ended, but its download fails; the other, which last saw the batch running,
    must read the ended batch afresh, not collect the running one it remembers (which
    has no result files, and would fail every row ``missing_result``)."""
    with emulator.start(processing_seconds=30.0) as emu:
        client = client_for(provider, emu)
        df = pd.DataFrame({"text": [f"r{i}" for i in range(5)]})
        kernel = nb.submit(df, "{text}", model=model_for(client), client=client)
        while kernel.refresh().sending is not None or not kernel.batch_ids:
            time.sleep(0.05)  # until it has seen the batch running
        server = nb.attach(kernel.id, client=client)

        def lost(info, *_, **__):  # the emulator cannot drop one download on demand
            raise nb.ProviderError("connection reset while downloading", transient=True)

        monkeypatch.setattr(server._provider, "download_results", lost)
        server.cancel()
        deadline = time.monotonic() + 30
        while not server._ledger.batches(server.id)[0]["ended"]:
            assert time.monotonic() < deadline, "the cancel was never confirmed"
            server.refresh()
            time.sleep(0.1)
        assert not server._ledger.batches(server.id)[0]["collected"]
        kernel.wait(timeout=30, progress=False)
        assert kernel.counts["cancelled"] == 5, kernel.counts
        assert kernel.merge()["response_status"].eq("cancelled").all()


def test_a_cancel_from_another_handle_stops_the_kernels_sender(provider):
    """The Lab sidebar cancels a job whose kernel is still sending it: whichever comes
    first, no row runs, every row ends cancelled, and the job says cancelled."""
    with emulator.start(processing_seconds=30.0) as emu:
        client = client_for(provider, emu)
        df = pd.DataFrame({"text": [f"r{i}" for i in range(5)]})
        kernel = nb.submit(df, "{text}", model=model_for(client), client=client)
        nb.attach(kernel.id, client=client).cancel()
        kernel.wait(timeout=30, progress=False)
        assert kernel.counts["cancelled"] == 5, kernel.counts
        assert kernel.status == "cancelled"
        assert kernel.merge()["response_status"].eq("cancelled").all()


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
    assert listed.loc[listed["id"] == job.id, "cost"].item() == pytest.approx(again.cost.batch)
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


def test_the_pandas_accessor_is_a_thin_submit(client):
    df = pd.DataFrame({"text": ["via accessor"]})
    job = df.nbbatch.submit("{text}", model=model_for(client), client=client)
    assert job.wait(timeout=30, progress=False).merge()["response"].tolist() == [
        emulator.echo_text("via accessor")
    ]
    assert len(df["text"].nbbatch.preview("{}", model="gpt-4o-mini")) == 1
