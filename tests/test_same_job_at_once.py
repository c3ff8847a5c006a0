"""The same work submitted twice at once (two threads of a notebook, two notebooks or
processes on one ledger) makes one job and sends each row once, on every submit path:
a small table planned inside submit, Parquet files planned in the background, and a
large in-memory table submitted again while the first is still being planned.

Each test makes the worst interleaving certain instead of leaving it to the scheduler
(see ``look_together``): both submits look for the same job before either records one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import _planning as planning

from .conftest import batches_created

PROMPT = "Summarise: {body}"
N = 30


def frame() -> pd.DataFrame:
    """Thirty rows, each its own request (nothing deduplicated)."""
    return pd.DataFrame(
        {"ticket": [f"t{i}" for i in range(N)], "body": [f"row {i}" for i in range(N)]}
    )


def requests_sent(client, before: set[str]) -> int:
    """How many requests the emulator was given in batches not in ``before``."""
    return sum(b.request_counts.total for b in client.batches.list() if b.id not in before)


@pytest.fixture
def parquet(tmp_path, monkeypatch) -> Path:
    """The thirty rows as a Parquet file, planned in the background (see _planning)."""
    monkeypatch.setattr(planning, "BACKGROUND_ROWS", 10)
    path = tmp_path / "rows.parquet"
    frame().to_parquet(path)
    return path


def _submit_in_threads(data, client) -> list[nb.BatchJob]:
    jobs: list[nb.BatchJob] = []
    errors: list[BaseException] = []

    def go() -> None:
        try:
            jobs.append(nb.submit(data, PROMPT, model="gpt-4o-mini", client=client, display=False))
        except BaseException as exc:  # shown by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(jobs) == 2
    return jobs


def _sent_once(client, emu, jobs: list[nb.BatchJob], before: set[str], created: int) -> None:
    """Both handles are one job, every row succeeded, and each was sent once."""
    assert jobs[0].id == jobs[1].id
    for job in jobs:
        job.wait(timeout=60, progress=False)
        assert job.counts["succeeded"] == N
    assert nb.jobs()["id"].tolist() == [jobs[0].id]
    assert batches_created(emu) - created == 1
    assert requests_sent(client, before) == N


@pytest.mark.parametrize("kind", ["frame", "parquet"])
def test_two_threads_submitting_the_same_rows_at_once_make_one_job(
    oai, emu, together, parquet, kind
):
    before, created = {b.id for b in oai.batches.list()}, batches_created(emu)
    data = frame() if kind == "frame" else str(parquet)
    jobs = _submit_in_threads(data, oai)
    _sent_once(oai, emu, jobs, before, created)


OTHER = """
    import pathlib, sys, openai, nbbatch as nb
    from nbbatch import _planning as planning
    from tests._helpers import look_together
    from tests.test_same_job_at_once import PROMPT, frame
    url, folder, data = sys.argv[1:]
    planning.BACKGROUND_ROWS = 10
    look_together(pathlib.Path(folder))
    client = openai.OpenAI(base_url=url, api_key="k")
    job = nb.submit(
        frame() if data == "frame" else data, PROMPT, model="gpt-4o-mini", client=client,
        display=False,
    )
    print(job.id, flush=True)
    job.wait(timeout=60, progress=False)
"""


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["frame", "parquet"])
def test_two_processes_submitting_the_same_rows_at_once_make_one_job(
    oai, emu, together, parquet, kind
):
    before, created = {b.id for b in oai.batches.list()}, batches_created(emu)
    data = frame() if kind == "frame" else str(parquet)
    other = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(OTHER), emu.openai_base_url, str(together),
         "frame" if kind == "frame" else str(parquet)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    job = nb.submit(data, PROMPT, model="gpt-4o-mini", client=oai, display=False)
    out, err = other.communicate(timeout=120)
    assert other.returncode == 0, err
    _sent_once(oai, emu, [job, nb.attach(out.strip().splitlines()[0], client=oai)], before, created)


LEADER = """
    import sys, time, openai, nbbatch as nb
    from nbbatch import _planning as planning, _rowstore
    from tests.test_same_job_at_once import PROMPT, frame
    planning.MEMORY_BACKGROUND_ROWS = 10

    def stuck(*args, **kwargs):  # the rows are planned and claimed; then this session hangs
        print("claimed", flush=True)
        time.sleep(600)

    _rowstore.write_table = stuck
    client = openai.OpenAI(base_url=sys.argv[1], api_key="k")
    job = nb.submit(frame(), PROMPT, model="gpt-4o-mini", client=client, display=False)
    job.wait(timeout=600, progress=False)
"""


@pytest.mark.slow
def test_a_session_following_a_job_whose_planner_died_plans_and_sends_it(oai, emu, monkeypatch):
    monkeypatch.setattr(planning, "MEMORY_BACKGROUND_ROWS", 10)
    before, created = {b.id for b in oai.batches.list()}, batches_created(emu)
    leader = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(LEADER), emu.openai_base_url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert leader.stdout is not None and leader.stdout.readline().strip() == "claimed"
        job = nb.submit(frame(), PROMPT, model="gpt-4o-mini", client=oai)
        mine = job.id
        job.wait_sent(timeout=60)  # planned here too: the same rows as the leader's job
        assert job.id != mine and nb.jobs()["id"].tolist() == [job.id]
    finally:
        leader.kill()  # the leader's session dies with its job still planning
        leader.communicate(timeout=60)
    job.wait(timeout=60, progress=False)  # this session plans the job for it, and sends it
    assert job.counts["succeeded"] == N
    assert batches_created(emu) - created == 1 and requests_sent(oai, before) == N
    out = job.merge(frame())
    assert out["response"].tolist() == [
        nb.emulator.echo_text(f"Summarise: row {i}") for i in range(N)
    ]
