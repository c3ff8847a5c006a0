"""Health signals: deadlines, start/end/incomplete lines on logger ``nbbatch``, and the
cron commands ``nbbatch check`` and ``nbbatch collect --finished``, on jobs submitted
through the public API to the emulator over the official SDK."""

from __future__ import annotations

import datetime as dt
import logging
import time

import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import _health as health
from nbbatch import _panel as panel
from nbbatch import cli, emulator

from .conftest import openai_client


def frame(n: int = 4) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"review {i}" for i in range(n)]})


def test_deadlines_take_durations_timedeltas_and_datetimes():
    assert health.deadline_at("6h", 100.0) == 100.0 + 6 * 3600
    assert health.deadline_at("1h30m", 0.0) == 5400.0
    assert health.deadline_at(dt.timedelta(minutes=2), 10.0) == 130.0
    moment = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert health.deadline_at(moment, 0.0) == moment.timestamp()
    for bad in ("6 hours", "soon", "0h", 6):
        with pytest.raises(nb.InputError, match="deadline"):
            health.deadline_at(bad, 0.0)
    with pytest.raises(nb.InputError, match="deadline"):
        nb.submit(frame(), "{text}", model="gpt-4o-mini", provider="local", deadline="tomorrow")


def test_check_is_silent_and_exits_0_for_a_healthy_job(emu, capsys, caplog):
    caplog.set_level(logging.INFO, logger="nbbatch")
    job = nb.submit(frame(), "{text}", model="gpt-4o-mini", client=openai_client(emu),
                    deadline="1h")  # fmt: skip
    job.wait(timeout=30, progress=False)
    assert job.snapshot().overdue is None
    started = [r for r in caplog.records if "started" in r.getMessage()]
    ended = [r for r in caplog.records if "ended after" in r.getMessage()]
    assert len(started) == 1 and "4 rows expected" in started[0].getMessage()
    assert "cost estimate $" in started[0].getMessage() and started[0].levelno == logging.INFO
    assert len(ended) == 1 and "4 of 4 rows succeeded" in ended[0].getMessage()
    capsys.readouterr()
    assert cli.main(["check"]) == cli.OK
    assert capsys.readouterr().out == ""


def test_a_job_past_its_deadline_is_overdue_everywhere(capsys, caplog):
    caplog.set_level(logging.INFO, logger="nbbatch")
    with emulator.start(processing_seconds=120) as slow:
        job = nb.submit(frame(), "{text}", model="gpt-4o-mini", client=openai_client(slow),
                        deadline=dt.timedelta(seconds=0.3))  # fmt: skip
        job.wait_sent(timeout=30)
        time.sleep(0.5)
        snap = job.refresh()
        assert snap.overdue and snap.overdue.startswith("overdue: 4 rows still pending")
        assert "overdue" in panel.plain_text(snap)
        view = panel.JobPanel(job)
        view.render(snap)
        assert "overdue: 4 rows still pending" in view.error.value
        assert any(
            r.levelno == logging.WARNING and "overdue" in r.getMessage() for r in caplog.records
        )
        listed = nb.jobs().set_index("id").loc[job.id]
        assert listed["overdue"] and not pd.isna(listed["deadline"])
        capsys.readouterr()
        assert cli.main(["check"]) == cli.ATTENTION
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{job.id} overdue: 4 rows still pending")
        assert cli.main(["jobs"]) == cli.OK
        assert "OVERDUE" in capsys.readouterr().out
        job.cancel()


def test_a_job_that_ends_with_rows_missing_is_incomplete(capsys, caplog):
    caplog.set_level(logging.INFO, logger="nbbatch")
    # The provider bug of results that never come: on every attempt, so no retry helps.
    with emulator.start(processing_seconds=0.05, missing_rate=0.5, fault_attempts=None) as emu:
        job = nb.submit(frame(), "{text}", model="gpt-4o-mini", client=openai_client(emu),
                        retries=0, alert_threshold=None)  # fmt: skip
        job.wait(timeout=30, progress=False)
    assert job.counts["failed"] == 2
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("incomplete: 2 of 4 rows sent got no result" in m for m in warned)
    capsys.readouterr()
    assert cli.main(["check", "--no-poll"]) == cli.ATTENTION
    out = capsys.readouterr().out.splitlines()
    # said to a shell user: the Python advice put as what to run
    said = health.incomplete_text(2, 4).split(": ", 1)[1]
    assert out == [cli._for_shell(f"{job.id} incomplete: {said}", job.id)]
    assert "job.resubmit_failed()" not in out[0] and "resubmit_failed()" in out[0]


def test_collect_finished_writes_each_finished_job_once(emu, tmp_path, capsys):
    client = openai_client(emu)
    done = [
        nb.submit(frame(n), "{text}", model="gpt-4o-mini", client=client).wait(
            timeout=30, progress=False
        )
        for n in (2, 3)
    ]
    with emulator.start(processing_seconds=120) as slow:
        running = nb.submit(frame(), "{text}", model="gpt-4o-mini", client=openai_client(slow))
        running.wait_sent(timeout=30)
        out = tmp_path / "out"
        out.mkdir()
        assert cli.main(["collect", "--finished", "--out-dir", str(out)]) == cli.OK
        written = sorted(p.name for p in out.iterdir())
        assert written == sorted(f"{j.id}.parquet" for j in done)
        assert len(pd.read_parquet(out / f"{done[1].id}.parquet")) == 3
        for p in out.iterdir():
            p.unlink()
        capsys.readouterr()
        assert cli.main(["collect", "--finished", "--out-dir", str(out)]) == cli.OK
        assert list(out.iterdir()) == []  # each job once
        assert "no finished jobs left" in capsys.readouterr().out
        running.cancel()
