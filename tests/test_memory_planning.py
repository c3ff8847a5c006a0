"""A large table held in memory (pandas, polars, Arrow) is planned in the background,
as Parquet files are: submit returns before its rows are read, a problem only all the
rows show ends the job failed with nothing sent, bad arguments still raise at submit,
and the rows come back complete and on their own rows."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import nbbatch as nb
from nbbatch import _frames as frames
from nbbatch import _inputs, emulator
from nbbatch import _ledger as nb_ledger
from nbbatch import _planning as planning

from ._helpers import run_cli
from .conftest import batches_created, model_for, openai_client

PROMPT = "Summarise: {body}"


def _frame(n: int, *, duplicate: bool = False) -> pd.DataFrame:
    ids = [f"t{i}" for i in range(n)]
    if duplicate:
        ids[-1] = "t3"  # past the first 100 rows submit looks at: found once planned
    return pd.DataFrame(
        {"ticket": ids, "body": [f"row {i}" if i % 4 else "same" for i in range(n)]}
    )


@pytest.fixture
def gated(monkeypatch):
    """Tables of 10 rows or more held in memory are planned in the background, and the
    planner waits for ``gate`` before it reads the rows; ``started`` says it got there."""
    monkeypatch.setattr(planning, "MEMORY_BACKGROUND_ROWS", 10)
    gate, started = threading.Event(), threading.Event()
    plan_now = _inputs.in_memory

    def held(*args, **kwargs):
        started.set()
        assert gate.wait(60)
        return plan_now(*args, **kwargs)

    monkeypatch.setattr(_inputs, "in_memory", held)
    yield gate, started
    gate.set()


def test_submit_returns_before_the_rows_are_read_and_every_row_comes_back(client, emu, gated):
    gate, started = gated
    df = _frame(30)
    before = batches_created(emu)
    job = nb.submit(df, PROMPT, model=model_for(client), client=client, id_column="ticket")
    assert started.wait(30)  # submit returned; the sender is planning the rows
    snap = job.snapshot()
    assert snap.sending is not None and snap.sending.startswith("planning")
    assert snap.counts["pending"] == 30
    assert batches_created(emu) == before  # nothing sent while planning
    gate.set()
    job.wait(timeout=60, progress=False)
    assert job.counts["succeeded"] == 30 and job.counts["deduplicated"] > 0
    out = job.merge(df)
    assert out["ticket"].tolist() == df["ticket"].tolist()
    assert out["response"].tolist() == [
        emulator.echo_text(PROMPT.format(body=b)) for b in df["body"]
    ]


@pytest.mark.parametrize("kind", ["polars", "arrow"])
def test_polars_and_arrow_tables_are_planned_in_the_background_too(oai, gated, kind):
    gate, started = gated
    df = _frame(12)
    data = pl.from_pandas(df) if kind == "polars" else pa.Table.from_pandas(df)
    job = nb.submit(data, PROMPT, model="gpt-4o-mini", client=oai, id_column="ticket")
    assert started.wait(30)
    gate.set()
    job.wait(timeout=60, progress=False)
    assert job.counts["succeeded"] == 12
    merged = frames.to_pandas(job.merge(data))
    assert merged["response"].tolist() == [
        emulator.echo_text(PROMPT.format(body=b)) for b in df["body"]
    ]


def test_a_job_planned_in_the_background_records_its_key_and_a_new_process_polls_it(gated):
    """The job's record says where its key came from whether its rows were planned at
    submit or in the background, so ``nbbatch status`` in a new process polls either
    while it runs (the background's record once left that out, and the poll was
    refused)."""
    gate, _ = gated
    gate.set()
    with emulator.start(processing_seconds=600) as server:
        client = openai_client(server)
        small = nb.submit(_frame(5), PROMPT, model="gpt-4o-mini", client=client)
        large = nb.submit(_frame(12), PROMPT, model="gpt-4o-mini", client=client)
        for job in (small, large):
            job.wait_sent(timeout=60)
        recorded = {job.id: nb_ledger.default().job(job.id) for job in (small, large)}
        assert recorded[large.id]["credential"] == recorded[small.id]["credential"]
        assert recorded[small.id]["credential"] is not None
        for job in (small, large):
            polled = run_cli("status", job.id)
            assert polled.returncode == 0, polled.stderr
            assert job.id in polled.stdout
            job.cancel()


def test_a_problem_all_rows_show_ends_the_job_failed_with_nothing_sent(client, emu, gated):
    gate, _ = gated
    gate.set()
    before = batches_created(emu)
    job = nb.submit(
        _frame(150, duplicate=True), PROMPT, model=model_for(client), client=client,
        id_column="ticket",
    )  # fmt: skip
    for _ in range(2):  # raised by every wait()
        with pytest.raises(
            nb.InputError, match=r"could not be planned, so nothing was sent.*duplicated values"
        ):
            job.wait(timeout=60, progress=False)
    snap = job.snapshot()
    assert snap.status == "failed" and snap.counts["failed"] == 150 == snap.counts["total"]
    assert nb.jobs()["status"].tolist() == ["failed"]
    assert batches_created(emu) == before


def test_the_budget_is_checked_before_anything_is_sent(oai, emu, gated):
    gate, _ = gated
    gate.set()
    before = batches_created(emu)
    job = nb.submit(_frame(20), PROMPT, model="gpt-4o-mini", client=oai, max_cost=1e-9)
    with pytest.raises(nb.InputError, match="is above max_cost"):
        job.wait(timeout=60, progress=False)
    assert batches_created(emu) == before


def test_bad_arguments_still_raise_at_submit(oai, gated):
    gate, started = gated
    with pytest.raises(nb.TemplateError, match="nope"):
        nb.submit(_frame(20), "Summarise: {nope}", model="gpt-4o-mini", client=oai)
    with pytest.raises(nb.TemplateError):
        nb.submit(_frame(20), "Summarise: {body", model="gpt-4o-mini", client=oai)
    with pytest.raises(nb.InputError, match="missing_id"):
        nb.submit(_frame(20), PROMPT, model="gpt-4o-mini", client=oai, id_column="missing_id")
    assert not started.is_set() and nb.jobs().empty


def test_the_same_job_submitted_again_sends_nothing_twice(oai, emu, gated):
    gate, _ = gated
    gate.set()
    df = _frame(20)
    first = nb.submit(df, PROMPT, model="gpt-4o-mini", client=oai)
    first.wait(timeout=60, progress=False)
    before = batches_created(emu)
    again = nb.submit(df, PROMPT, model="gpt-4o-mini", client=oai)
    # Found once its rows are planned: the new handle follows the first job, as a
    # small table's submit attaches at once; the placeholder job is not kept.
    assert again.wait(timeout=60, progress=False).id == first.id
    assert any(f"already submitted as {first.id}" in w for w in again.snapshot().warnings)
    assert again.counts["succeeded"] == 20 and nb.jobs()["id"].tolist() == [first.id]
    assert batches_created(emu) == before
    anew = nb.submit(df, PROMPT, model="gpt-4o-mini", client=oai, force=True, reuse=False)
    anew.wait(timeout=60, progress=False)
    assert anew.counts["succeeded"] == 20 and batches_created(emu) > before


def test_a_row_over_the_providers_size_limit_fails_the_job_before_anything_is_sent(
    oai, emu, gated, monkeypatch
):
    from nbbatch.providers.openai import OpenAIProvider

    gate, _ = gated
    gate.set()
    monkeypatch.setattr(OpenAIProvider, "max_bytes", 4_000)
    df = _frame(150)
    df.loc[140, "body"] = "x" * 5_000  # past the first rows submit looks at
    before = batches_created(emu)
    job = nb.submit(df, PROMPT, model="gpt-4o-mini", client=oai)
    with pytest.raises(nb.InputError, match="over the provider's batch limit of 4,000 bytes"):
        job.wait(timeout=60, progress=False)
    assert job.snapshot().status == "failed" and batches_created(emu) == before


# -- the same rows submitted twice while both are planned: sent once ------------------------
def _one_job(jobs: list[nb.BatchJob]) -> None:
    """Both handles follow one job, which sent every row; no other job is kept."""
    assert jobs[0].id == jobs[1].id
    assert nb.jobs()["id"].tolist() == [jobs[0].id]
    for job in jobs:
        assert job.counts["succeeded"] == 30 and job.snapshot().status == "completed"


def test_the_same_frame_submitted_twice_while_planned_is_sent_once(oai, emu, gated, together):
    gate, started = gated
    df = _frame(30)
    before = batches_created(emu)
    jobs = [nb.submit(df, PROMPT, model="gpt-4o-mini", client=oai) for _ in range(2)]
    assert started.wait(30)
    gate.set()  # both planners read the rows at once now
    for job in jobs:
        assert job.wait(timeout=60, progress=False) is job  # no error: one job
    assert batches_created(emu) - before == 1
    _one_job(jobs)


TWIN = """
    import pathlib, sys, openai, nbbatch as nb
    from nbbatch import _planning as planning
    from tests._helpers import look_together
    from tests.test_memory_planning import PROMPT, _frame
    url, folder = sys.argv[1:]
    planning.MEMORY_BACKGROUND_ROWS = 10
    look_together(pathlib.Path(folder))
    client = openai.OpenAI(base_url=url, api_key="k")
    job = nb.submit(_frame(30), PROMPT, model="gpt-4o-mini", client=client, display=False)
    job.wait(timeout=60, progress=False)
    print(job.id, flush=True)
"""


@pytest.mark.slow
def test_two_processes_planning_the_same_frame_on_one_ledger_send_it_once(
    oai, emu, together, monkeypatch
):
    monkeypatch.setattr(planning, "MEMORY_BACKGROUND_ROWS", 10)
    before = batches_created(emu)
    other = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(TWIN), emu.openai_base_url, str(together)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    job = nb.submit(_frame(30), PROMPT, model="gpt-4o-mini", client=oai)
    job.wait(timeout=60, progress=False)
    out, err = other.communicate(timeout=120)
    assert other.returncode == 0, err
    # The other process ended following the same job (printed after its wait).
    assert out.strip().splitlines() == [job.id]
    assert batches_created(emu) - before == 1
    _one_job([job, nb.attach(job.id, client=oai)])
