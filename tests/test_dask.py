"""Dask DataFrames: planned and encoded on the cluster's workers, merged back lazily,
partition by partition, through the real SDK over HTTP to the emulator."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator

from ._helpers import PROMPT, count_row_encodes
from ._helpers import echoed as expected
from .conftest import client_for, model_for, openai_client

# The dev extra installs dask: under CI a missing dask fails the run instead of skipping.
_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
if _CI:
    import dask.dataframe as dd
    import distributed
else:
    dd = pytest.importorskip(
        "dask.dataframe", reason="dask is not installed (pip install nbbatch[dask])"
    )
    distributed = pytest.importorskip(
        "distributed", reason="dask.distributed is not installed (pip install nbbatch[dask])"
    )


pytestmark = pytest.mark.filterwarnings(
    # the cluster's own shutdown and port choices are not ours to fix
    "ignore::DeprecationWarning",
    "ignore::ResourceWarning",
    "ignore:Port .* is already in use:UserWarning",
)


def frame(n: int, parts: int) -> tuple[pd.DataFrame, dd.DataFrame]:
    texts = [f"review {i} " + "x" * (i % 7) for i in range(n)]
    texts[5] = texts[3]  # a duplicate request, sent once
    df = pd.DataFrame({"text": texts, "stars": np.arange(n) % 5})
    return df, dd.from_pandas(df, npartitions=parts)


def test_dask_frame_is_planned_on_the_workers_and_merged_back_lazily(
    dask_cluster, emu, monkeypatch, nbbatch_home
):
    df, ddf = frame(300, 4)
    client = openai_client(emu)

    # The driver encodes no row's request beyond the one that checks the parameters
    # before anything is planned: the workers' lines are uploaded as they are.
    with monkeypatch.context() as patch:
        encoded = count_row_encodes(patch)
        job = nb.submit(ddf, PROMPT, model=model_for(client), client=client, output="label")
        job.wait(timeout=60, progress=False)
    assert encoded == [1]

    counts = job.counts
    assert counts["succeeded"] == 300 and counts["deduplicated"] == 1

    source = job._ledger.source(job.id)
    assert source["kind"] == "dask"
    assert source["partitions"] == [len(p) for p in np.array_split(np.arange(300), 4)]
    # Planned in the worker processes, not in this one.
    pids = {int(w.split(":")[1]) for w in source["workers"]}
    assert os.getpid() not in pids and pids

    out = job.merge(ddf)
    assert isinstance(out, dd.DataFrame)
    assert out.npartitions == ddf.npartitions
    got = out.compute()
    assert list(got.columns) == ["text", "stars", *job.output_columns()]
    pd.testing.assert_frame_equal(got[["text", "stars"]], ddf.compute())
    assert got["label"].tolist() == expected(df["text"])
    assert (got["label_status"] == "succeeded").all()

    # Custom ids: the global position, unique and stable across partitions.
    results = job.results()
    assert results.index.tolist() == [str(i) for i in range(300)]

    # A second session: attach and merge partition-wise again.
    again = nb.attach(job.id).merge(ddf).compute()
    assert again["label"].tolist() == got["label"].tolist()


def test_same_dask_submit_twice_pays_once_and_id_column_names_rows(dask_cluster, emu, capsys):
    df, ddf = frame(60, 3)
    df["rid"] = [f"r{i}" for i in range(60)]
    ddf = dd.from_pandas(df, npartitions=3)
    client = openai_client(emu)
    kwargs = dict(model=model_for(client), client=client, id_column="rid")
    job = nb.submit(ddf, PROMPT, **kwargs).wait(timeout=60, progress=False)
    assert job.results().index.tolist() == df["rid"].tolist()
    same = nb.submit(ddf, PROMPT, **kwargs)
    assert same.id == job.id  # attached, not sent again
    assert "attaching to it instead of paying again" in capsys.readouterr().err
    out = job.merge(ddf).compute()
    assert out["response"].tolist() == expected(df["text"])


def test_dask_merge_refuses_changed_rows(dask_cluster, emu):
    df, ddf = frame(40, 2)
    client = openai_client(emu)
    job = nb.submit(ddf, PROMPT, model=model_for(client), client=client)
    job.wait(timeout=60, progress=False)
    edited = df.copy()
    edited.loc[30, "text"] = "something else"
    bad = job.merge(dd.from_pandas(edited, npartitions=2))
    with pytest.raises(nb.MergeError, match="do not hold the data"):
        bad.compute()
    with pytest.raises(nb.MergeError, match="partitions"):
        job.merge(dd.from_pandas(df, npartitions=3))


def test_dask_duplicate_ids_across_partitions_are_refused(dask_cluster, emu):
    df = pd.DataFrame({"text": ["a", "b", "c", "d"], "rid": ["x", "y", "x", "z"]})
    ddf = dd.from_pandas(df, npartitions=2)
    client = openai_client(emu)
    with pytest.raises(nb.InputError, match=r"across the partitions \(e\.g\. 'x'\)"):
        nb.submit(ddf, PROMPT, model=model_for(client), client=client, id_column="rid")
    assert nb.jobs().empty


def test_dask_to_parquet_writes_a_folder_from_the_workers(dask_cluster, emu, tmp_path):
    df, ddf = frame(50, 2)
    client = openai_client(emu)
    job = nb.submit(ddf, PROMPT, model=model_for(client), client=client)
    job.wait(timeout=60, progress=False)
    target = job.to_parquet(tmp_path / "out", columns=["text"])
    back = pd.read_parquet(target)
    assert back["response"].tolist() == expected(df["text"])
    assert list(back.columns) == ["text", *job.output_columns(lineage=True)]
    assert back["response_batch_id"].tolist() == job.results()["batch_id"].tolist()


def test_dask_retries_send_the_workers_lines_again_and_failed_stays_lazy(dask_cluster, monkeypatch):
    df, _ = frame(90, 3)
    df.loc[[4, 40, 80], "text"] = [f"{emulator.TRANSIENT_MARKER} once {i}" for i in (4, 40, 80)]
    df.loc[[10, 70], "text"] = [f"{emulator.FAIL_MARKER} never {i}" for i in (10, 70)]
    ddf = dd.from_pandas(df, npartitions=3)
    # An emulator of its own: the transient marker fails a custom_id's first attempt.
    with emulator.start(processing_seconds=0.05) as server, monkeypatch.context() as patch:
        encoded = count_row_encodes(patch)
        client = openai_client(server)
        job = nb.submit(ddf, PROMPT, model=model_for(client), client=client)
        job.wait(timeout=60, progress=False)
        assert encoded == [1]  # the retry of 3 rows took the workers' lines too
        assert job.counts["succeeded"] == 88 and job.counts["failed"] == 2
        assert len(job.batch_ids) == 2  # the first pass, and the retry

        bad = job.failed()
        assert isinstance(bad, dd.DataFrame)
        got = bad.compute()
        assert got.index.tolist() == [10, 70]
        assert (got["response_status"] == "failed").all()
        out = job.merge(ddf).compute()
        good = out["response_status"] == "succeeded"
        assert out.loc[good, "response"].tolist() == expected(df.loc[good, "text"])


def test_dask_preview_plans_on_the_workers_and_records_nothing(dask_cluster):
    df, ddf = frame(120, 3)
    shown = nb.preview(ddf, PROMPT, model="gpt-4o-mini", n=3)
    assert shown["custom_id"].tolist() == ["0", "1", "2"]
    assert shown["prompt"].tolist() == [PROMPT.format(text=t) for t in df["text"][:3]]
    assert shown.estimate.rows == 119  # the duplicate is sent once
    assert nb.jobs().empty


def test_a_dask_job_recorded_but_not_sent_is_sent_by_a_new_session_from_the_ledger(
    dask_cluster, emu, monkeypatch, nbbatch_home
):
    """A kernel that dies after submit recorded the job, before anything was sent: the
    next session finds the workers' request lines through the ledger alone."""
    df, ddf = frame(80, 4)
    client = openai_client(emu)
    with monkeypatch.context() as patch:
        encoded = count_row_encodes(patch)
        patch.setattr(nb.BatchJob, "start_sending", lambda self, **kw: None)  # "dies" here
        job_id = nb.submit(ddf, PROMPT, model=model_for(client), client=client).id
        assert nb.attach(job_id, client=client).batch_ids == []
        assert not list(nbbatch_home.rglob(".staging-*"))  # nothing left to clean up
        assert len(list(nbbatch_home.rglob("requests-*.arrow"))) == 4

        resumed = nb.attach(job_id, client=client)  # no data, no memory of the submit
        resumed.wait(timeout=60, progress=False)
    assert encoded == [1]  # the check at submit; the new session encoded nothing
    assert resumed.counts["succeeded"] == 80
    out = resumed.merge(ddf).compute()
    assert out["response"].tolist() == expected(df["text"])


def test_rows_answered_by_an_earlier_pandas_job_are_reused_not_paid_again(dask_cluster, emu):
    df, ddf = frame(45, 3)
    client = openai_client(emu)
    kwargs = dict(model=model_for(client), client=client)
    first = nb.submit(df.iloc[:30], PROMPT, **kwargs).wait(timeout=60, progress=False)
    job = nb.submit(ddf, PROMPT, **kwargs).wait(timeout=60, progress=False)
    assert job.id != first.id
    # The 30 rows answered before take those answers: only the other 15 are sent.
    assert job.counts["reused"] == 30
    assert sum(b["n_requests"] for b in job._ledger.batches(job.id)) == 15
    out = job.merge(ddf).compute()
    assert out["response"].tolist() == expected(df["text"])


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])
def test_dask_workers_encode_for_every_provider(dask_cluster, emu, provider):
    df, ddf = frame(70, 3)
    client = client_for(provider, emu)
    job = nb.submit(ddf, PROMPT, model=model_for(client), client=client, max_tokens=2000)
    job.wait(timeout=60, progress=False)
    assert job.counts["succeeded"] == 70
    assert (nb.attach(job.id, client=client).merge(ddf).compute()["response"]).tolist() == (
        expected(df["text"])
    )


def test_a_packed_dask_job_maps_every_answer_to_its_own_row(dask_cluster, emu):
    """Packs are built by the driver from the workers' manifest (several rows to one
    request), and every row still gets its own answer."""
    df, ddf = frame(64, 4)
    client = openai_client(emu)
    job = nb.submit(ddf, PROMPT, model=model_for(client), client=client, pack=10)
    job.wait(timeout=60, progress=False)
    assert job.counts["succeeded"] == 64
    assert sum(b["n_requests"] for b in job._ledger.batches(job.id)) == 63  # rows, packed
    out = job.merge(ddf).compute()
    assert out["response"].tolist() == expected(df["text"])


def test_nbbatch_collect_writes_a_dask_jobs_results_without_its_frame(
    dask_cluster, emu, tmp_path, monkeypatch
):
    from nbbatch import cli

    df, ddf = frame(30, 3)
    client = openai_client(emu)
    job = nb.submit(ddf, PROMPT, model=model_for(client), client=client)
    job.wait(timeout=60, progress=False)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")  # the command line's own client
    out = tmp_path / "out.parquet"
    assert cli.main(["collect", job.id, "--out", str(out)]) == 0
    back = pd.read_parquet(out)
    assert back["response"].tolist() == expected(df["text"])


def test_workers_that_cannot_see_the_staging_folder_are_told_how_to_share_it(
    dask_cluster, emu, monkeypatch, tmp_path
):
    """Workers on other machines do not see the driver's disk: simulated by moving the
    staging folder away from them, the error names the setting that fixes it."""
    from nbbatch import _engines as engines

    real = engines.Work

    def elsewhere(*args):
        work = real(*args)
        return dataclasses.replace(work, folder=str(tmp_path / "not-on-this-worker"))

    monkeypatch.setattr(engines, "Work", elsewhere)
    df, ddf = frame(20, 2)
    client = openai_client(emu)
    with pytest.raises(nb.InputError, match="NBBATCH_STAGING"):
        nb.submit(ddf, PROMPT, model=model_for(client), client=client)
    assert nb.jobs().empty


def test_nbbatch_staging_names_the_folder_workers_and_driver_share(
    dask_cluster, emu, monkeypatch, tmp_path
):
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("NBBATCH_STAGING", str(shared))
    df, ddf = frame(24, 2)
    client = openai_client(emu)
    job = nb.submit(ddf, PROMPT, model=model_for(client), client=client)
    job.wait(timeout=60, progress=False)
    assert not list(shared.glob(".staging-*"))  # moved into the job's folder once recorded
    out = job.merge(ddf)
    assert [p.name.startswith(f"results-{job.id}") for p in shared.iterdir()] == [True]
    assert out.compute()["response"].tolist() == expected(df["text"])


def test_staging_left_by_a_submit_that_died_is_swept_by_the_next(dask_cluster, emu, nbbatch_home):
    client = openai_client(emu)
    df, ddf = frame(12, 2)
    nb.submit(ddf, PROMPT, model=model_for(client), client=client).wait(timeout=60)
    files = next(p.parent for p in nbbatch_home.rglob("requests"))
    root = files.parent  # where staging folders are made, beside the ledger's job folders
    old, recent = root / ".staging-dead", root / ".staging-busy"
    for folder in (old, recent):
        folder.mkdir()
        (folder / "plan-000000.arrow").write_bytes(b"x")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    nb.submit(ddf, "Again: {text}", model=model_for(client), client=client).wait(timeout=60)
    assert not old.exists() and recent.exists()  # one still being planned is left alone
