"""A large table from Parquet files is planned in the background: submit returns at
once, the views show how far planning has gone, a problem found late ends the job
before anything is sent, and the rows come back complete and on their own rows."""

from __future__ import annotations

import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import nbbatch as nb
from nbbatch import _console as console
from nbbatch import _panel as panel
from nbbatch import _planning as planning
from nbbatch import _stream as stream

from .conftest import model_for

PROMPT = "Summarise: {body}"


def _write(folder, n_files: int, rows: int, *, last_id: str | None = None) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(n_files):
        ids = [f"t{f}-{i}" for i in range(rows)]
        if last_id is not None and f == n_files - 1:
            ids[-1] = last_id  # a duplicate only the last record batch shows
        bodies = [f"row {f}-{i}" if i % 4 else "same" for i in range(rows)]
        pq.write_table(pa.table({"ticket": ids, "body": bodies}), folder / f"p{f}.parquet")
    return str(folder / "*.parquet")


@pytest.fixture
def background(monkeypatch):
    """Tables of 10 rows or more are planned in the background, 7 rows a batch; the
    planner stops after its first batch until ``gate`` is set."""
    monkeypatch.setattr(planning, "BACKGROUND_ROWS", 10)
    monkeypatch.setattr(stream, "BATCH_ROWS", 7)
    gate, first = threading.Event(), threading.Event()
    frames = stream.Source.frames

    def slow(self, columns=None):
        for i, frame in enumerate(frames(self, columns)):
            if i == 1 and "body" in (columns or []):  # the planning pass, not the id check
                first.set()
                assert gate.wait(60)
            yield frame

    monkeypatch.setattr(stream.Source, "frames", slow)
    yield gate, first
    gate.set()


def test_submit_returns_while_planning_and_every_row_comes_back_on_its_own_row(
    client, emu, tmp_path, background
):
    gate, first = background
    emu.clear_log()
    glob = _write(tmp_path / "in", 3, 10)
    job = nb.submit(glob, PROMPT, model=model_for(client), client=client, id_column="ticket")
    assert first.wait(30)  # submit returned; the planner is on its second batch
    snap = job.snapshot()
    assert snap.status == "running" and snap.counts["pending"] == 30
    assert snap.sending == "planning 7/30 rows"
    assert "planning 7/30 rows" in console.progress_line(snap)
    assert "planning 7/30 rows" in panel.plain_text(snap)
    assert "planning 7/30 rows" in panel.JobPanel(job).header.value + panel.JobPanel(
        job
    ).batches.value + panel.JobPanel(job).progress.value + panel.static_html(snap)
    assert nb.jobs()["status"].tolist() == ["running"]
    with pytest.raises(nb.NbbatchError, match="still planning its 30 rows"):
        job.merge()
    assert [r for r in emu.request_log if r[0] != "GET"] == []  # nothing sent yet
    gate.set()
    job.wait(timeout=60, progress=False)
    assert job.counts["succeeded"] == 30 and job.counts["deduplicated"] > 0
    out = pq.read_table(job.to_parquet(tmp_path / "out.parquet"))
    results = job.results()
    for ticket, body, answer in zip(
        out.column("ticket").to_pylist(),
        out.column("body").to_pylist(),
        out.column("response").to_pylist(),
        strict=True,
    ):
        assert answer == results.loc[results["label"] == ticket, "output"].item()
        assert body in answer  # the emulator echoes the prompt: its own row's text

    again = nb.submit(glob, PROMPT, model=model_for(client), client=client, id_column="ticket")
    assert again.id == job.id  # the same files and request: the same job, not paid again


def test_a_problem_found_late_in_planning_ends_the_job_failed_with_nothing_sent(
    client, emu, tmp_path, background
):
    gate, _ = background
    gate.set()
    emu.clear_log()
    glob = _write(tmp_path / "in", 3, 10, last_id="t0-3")  # found in the last batch only
    job = nb.submit(glob, PROMPT, model=model_for(client), client=client, id_column="ticket")
    for _ in range(2):  # raised by every wait(), in this session
        with pytest.raises(nb.InputError, match=r"could not be planned, so nothing was sent.*"
                           r"'ticket' has duplicated values .*'t0-3'"):  # fmt: skip
            job.wait(timeout=60, progress=False)
    snap = job.snapshot()
    assert snap.status == "failed" and snap.counts["failed"] == 30 == snap.counts["total"]
    assert "duplicated values" in (snap.last_error or "")
    assert "duplicated values" in panel.plain_text(snap)
    assert [r for r in emu.request_log if r[0] != "GET"] == []
    assert nb.jobs()["status"].tolist() == ["failed"]
    later = nb.attach(job.id, client=client)  # and in any other session
    with pytest.raises(nb.InputError, match="duplicated values"):
        later.wait(timeout=60, progress=False)
    with pytest.raises(nb.InputError, match="duplicated values"):
        later.merge(glob)
    # The command line lists it as needing attention, and collects nothing from it.
    from .test_cli import nbbatch

    check = nbbatch("check", "--no-poll")
    assert check.returncode == 5 and job.id in check.stdout, check.stderr
    done = nbbatch("collect", "--finished", "--out-dir", str(tmp_path))
    assert f"{job.id} not collected" in done.stderr and "duplicated values" in done.stderr
    assert not list(tmp_path.glob("nbb-*"))


def test_a_budget_checked_once_planned_and_a_cancel_while_planning_send_nothing(
    client, emu, tmp_path, background
):
    gate, first = background
    emu.clear_log()
    glob = _write(tmp_path / "in", 2, 10)
    job = nb.submit(glob, PROMPT, model=model_for(client), client=client, max_cost=1e-9)
    gate.set()
    with pytest.raises(nb.InputError, match="is above max_cost"):
        job.wait(timeout=60, progress=False)
    gate.clear()
    first.clear()
    other = nb.submit(_write(tmp_path / "b", 2, 10), PROMPT, model=model_for(client),
                      client=client)  # fmt: skip
    assert first.wait(30)
    threading.Timer(0.2, gate.set).start()
    snap = other.cancel()
    assert snap.status == "cancelled" and snap.counts["cancelled"] == 20
    assert other.wait(timeout=10, progress=False).status == "cancelled"
    assert [r for r in emu.request_log if r[0] != "GET"] == []


def test_a_job_whose_planning_never_ran_is_planned_by_the_next_session(
    client, emu, tmp_path, background, monkeypatch
):
    gate, _ = background
    gate.set()
    glob = _write(tmp_path / "in", 2, 10)
    # The submitting process ends before its sender starts (a kernel restarted).
    with monkeypatch.context() as patched:
        patched.setattr(nb.BatchJob, "start_sending", lambda self, daemon=False: None)
        job = nb.submit(glob, PROMPT, model=model_for(client), client=client)
    assert nb.jobs()["status"].tolist() == ["running"] and job.snapshot().sending == "planning"
    later = nb.attach(job.id, client=client)  # no data given: the recorded files are read
    later.wait(timeout=60, progress=False)
    assert later.counts["succeeded"] == 20
    out = pq.read_table(later.to_parquet(tmp_path / "out.parquet"))
    assert out.column("response_status").to_pylist() == ["succeeded"] * 20
