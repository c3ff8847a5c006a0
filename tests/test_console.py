"""The text view outside notebooks: a line on every change, and a heartbeat with the
provider's own counts at least every 30 s while a batch is in progress.

The job and the emulator share one fake clock, and the job's sleep advances it, so a
batch that takes minutes at the provider runs in a second of real time."""

from __future__ import annotations

import io
import re

import pandas as pd

import nbbatch as nb
from nbbatch import emulator
from nbbatch._console import HEARTBEAT, ConsoleReporter

from ._helpers import FakeTime
from .conftest import openai_client


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i}" for i in range(n)]})


def _job_on(server: emulator.Emulator, n: int, fake: FakeTime) -> nb.BatchJob:
    job = nb.submit(_frame(n), "Say {text}", model="gpt-4o-mini", client=openai_client(server))
    job.wait_sent()  # these tests follow the provider's progress, once uploaded
    job.context.clock = fake.now
    job.context.sleep = fake.sleep
    job.polling = nb.PollPolicy(first=5.0, most=5.0)
    return job


def test_heartbeat_every_30_seconds_with_the_providers_counts():
    fake = FakeTime()
    with emulator.start(processing_seconds=200.0, clock=fake.now) as server:
        job = _job_on(server, 1_200, fake)
        stream = io.StringIO()
        reporter = ConsoleReporter(stream)
        printed: list[tuple[float, str]] = []
        polls = []

        def record(snap: nb.JobSnapshot) -> None:
            polls.append(snap.now)
            before = len(stream.getvalue())
            reporter(snap)
            if len(stream.getvalue()) > before:
                printed.append((snap.now, stream.getvalue()[before:].splitlines()[0]))

        job.subscribe(record)
        job.wait(timeout=1_000, progress=False)

    running = [(t, line) for t, line in printed if " running " in line]
    assert len(running) >= 200 / HEARTBEAT - 1  # a 200 s batch: a line every 30 s or less
    times = [t for t, _ in printed]
    assert all(b - a <= HEARTBEAT for a, b in zip(times, times[1:], strict=False))
    assert len(printed) < len(polls) / 2  # not a line per poll: only changes and heartbeats
    for _, line in running:
        # Two units, labelled, with thousands separators.
        assert re.search(
            r": [\d,]+/1,200 requests done at the provider; 0/1,200 rows collected", line
        )
    done = [
        int(re.search(r": ([\d,]+)/1,200 requests", line)[1].replace(",", ""))
        for _, line in running
    ]
    assert done == sorted(done) and done[-1] > done[0]  # the provider's count moves
    assert printed[-1][1].endswith("completed: 1,200/1,200 rows collected (1,200 succeeded)")


def test_no_heartbeat_once_the_job_is_finished(emu):
    fake = FakeTime()
    job = nb.submit(_frame(3), "Say {text}", model="gpt-4o-mini", client=openai_client(emu))
    job.wait(timeout=30, progress=False)
    job.context.clock = fake.now
    stream = io.StringIO()
    job.subscribe(ConsoleReporter(stream))
    job.refresh()
    fake.sleep(10 * HEARTBEAT)
    job.refresh()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].endswith("completed: 3/3 rows collected (3 succeeded)")


def test_wait_prints_progress_to_stderr_outside_a_notebook(capsys):
    fake = FakeTime()
    with emulator.start(processing_seconds=100.0, clock=fake.now) as server:
        job = _job_on(server, 5, fake)
        job.wait(timeout=1_000)  # progress="auto": text, since this is not a notebook
    err = capsys.readouterr().err
    assert "requests done at the provider" in err
    assert err.count(job.id) >= 100 / HEARTBEAT
    assert err.splitlines()[-1].endswith("completed: 5/5 rows collected (5 succeeded)")
