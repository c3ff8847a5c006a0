"""``provider="local"`` jobs outlive the kernel that submitted them, and jobs can be forgotten.

The "kernel" is a real Python process that submits and exits; what follows runs in new
processes (``nb.attach`` in a script, the ``nbbatch`` command), as a user would do it.
Every test has its own ``NBBATCH_HOME``, and the ``nbbatch_home`` fixture stops the
background emulator started under it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import openai
import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator
from nbbatch.emulator import _background

TEXTS = ["alpha", "beta", "gamma"]
PROMPT = "Say: {text}"


def python(code: str, timeout: float = 180) -> str:
    """Run ``code`` in a new Python process (with this test's environment); its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``nbbatch`` command in a new process."""
    return subprocess.run(
        [sys.executable, "-m", "nbbatch.cli", *args], capture_output=True, text=True, timeout=180
    )


def submit_and_exit(model: str = "gpt-4o-mini") -> str:
    """A "kernel" submits a local job and exits; the job id."""
    out = python(
        f"""
        import pandas as pd
        import nbbatch as nb
        df = pd.DataFrame({{"text": {TEXTS!r}}})
        job = nb.submit(df, {PROMPT!r}, model={model!r}, provider="local")
        print(job.id)
        """
    )
    return out.strip().splitlines()[-1]


def wait_dead(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _background._pid_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.05)


def kill_background(home: Path) -> _background.Background:
    """Kill the background emulator of ``home`` (SIGKILL, as a crash would) and wait
    until it is gone; what :func:`_background.find` said of it."""
    first = _background.find(home)
    assert first is not None
    os.kill(first.pid, signal.SIGKILL)
    wait_dead(first.pid)
    return first


def expected() -> list[str]:
    return [emulator.echo_text(PROMPT.format(text=t)) for t in TEXTS]


# ------------------------------------------------------------------ across processes


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-3-5-haiku-latest"])
def test_a_job_submitted_by_a_process_that_exited_completes_in_another(nbbatch_home, model):
    job_id = submit_and_exit(model)
    running = _background.find(nbbatch_home)
    assert running is not None, "the background emulator should outlive the submitting process"

    out = python(
        f"""
        import json
        import pandas as pd
        import nbbatch as nb
        df = pd.DataFrame({{"text": {TEXTS!r}}})
        job = nb.attach({job_id!r}, data=df).wait(timeout=120)
        merged = job.merge()
        print(json.dumps([merged["response"].tolist(), merged["response_status"].tolist()]))
        """
    )
    responses, statuses = json.loads(out.strip().splitlines()[-1])
    assert responses == expected()
    assert statuses == ["succeeded"] * len(TEXTS)
    assert _background.find(nbbatch_home) == running  # the same one served both


@pytest.mark.slow
def test_b_status_cancel_forget_and_collect_from_the_command_line(
    nbbatch_home, monkeypatch, tmp_path
):
    monkeypatch.setenv("NBBATCH_EMULATOR_PROCESSING_SECONDS", "120")  # stays open meanwhile
    job_id = submit_and_exit()

    status = cli("status", job_id)
    assert status.returncode == 0, status.stderr
    assert "running" in status.stdout and "0/3 rows done" in status.stdout

    refused = cli("forget", job_id)
    assert refused.returncode == 1
    assert "3 pending rows" in refused.stderr and "cancel" in refused.stderr
    assert job_id in cli("jobs").stdout

    cancel = cli("cancel", job_id)
    assert cancel.returncode == 0, cancel.stderr

    out = tmp_path / "results.csv"
    collect = cli("collect", job_id, "--wait", "--timeout", "120", "--out", str(out))
    assert collect.returncode == 0, collect.stderr
    frame = pd.read_csv(out)
    assert frame["response_status"].tolist() == ["cancelled"] * len(TEXTS)

    forget = cli("forget", job_id)
    assert forget.returncode == 0, forget.stderr
    assert job_id not in cli("jobs").stdout
    assert not (nbbatch_home / "files" / job_id).exists()
    with pytest.raises(nb.JobNotFoundError):
        nb.attach(job_id)


@pytest.mark.slow
def test_c_a_killed_background_emulator_is_restarted_and_serves_the_job(nbbatch_home, monkeypatch):
    monkeypatch.setenv("NBBATCH_EMULATOR_PROCESSING_SECONDS", "8")
    job_id = submit_and_exit()
    first = kill_background(nbbatch_home)

    out = python(
        f"""
        import json
        import nbbatch as nb
        job = nb.attach({job_id!r}).wait(timeout=120)
        print(json.dumps(job.results()["output"].tolist()))
        """
    )
    assert json.loads(out.strip().splitlines()[-1]) == expected()
    second = _background.find(nbbatch_home)
    assert second is not None and second.pid != first.pid
    assert second.port == first.port  # so the base_url recorded with the job still holds


@pytest.mark.slow
def test_c_a_wiped_state_ends_the_job_plainly_and_forget_removes_it(nbbatch_home, monkeypatch):
    monkeypatch.setenv("NBBATCH_EMULATOR_PROCESSING_SECONDS", "120")
    job_id = submit_and_exit()
    kill_background(nbbatch_home)
    shutil.rmtree(nbbatch_home / "emulator")

    status = cli("status", job_id)
    assert status.returncode == 0, status.stderr
    assert "no longer knows batch" in status.stdout
    assert "resubmit_failed() in Python" in status.stdout  # advice for a shell user
    assert "3 failed" in status.stdout and "pending" not in status.stdout

    jobs = cli("jobs").stdout
    line = next(line for line in jobs.splitlines() if job_id in line)
    assert "running" not in line

    rows = nb.attach(job_id).results()
    assert rows["error_type"].tolist() == ["backend_gone"] * len(TEXTS)
    assert rows["retryable"].tolist() == [False] * len(TEXTS)

    forget = cli("forget", job_id)
    assert forget.returncode == 0, forget.stderr
    assert job_id not in cli("jobs").stdout


@pytest.mark.slow
def test_d_processes_asking_at_once_share_one_background_emulator(nbbatch_home):
    code = textwrap.dedent(
        f"""
        from nbbatch import emulator
        found = emulator.background({str(nbbatch_home)!r})
        print(found.pid, found.url)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    answers = {p.communicate(timeout=180)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(answers) == 1
    pid = int(answers.pop().split()[0])
    assert _background.find(nbbatch_home).pid == pid


# ------------------------------------------------------------------ in one process


@pytest.mark.slow
def test_wait_timeout_says_the_job_goes_on_in_the_background_emulator(monkeypatch):
    monkeypatch.setenv("NBBATCH_EMULATOR_PROCESSING_SECONDS", "120")
    job = nb.submit(pd.DataFrame({"text": TEXTS}), PROMPT, model="gpt-4o-mini", provider="local")
    with pytest.raises(TimeoutError, match="goes on in nbbatch's background emulator"):
        job.wait(timeout=0.5, progress=False)
    job.cancel()


@pytest.mark.slow
def test_a_kernel_whose_background_emulator_was_killed_starts_it_again(nbbatch_home, monkeypatch):
    monkeypatch.setenv("NBBATCH_EMULATOR_PROCESSING_SECONDS", "6")
    df = pd.DataFrame({"text": TEXTS})
    job = nb.submit(df, PROMPT, model="claude-3-5-haiku-latest", provider="local").wait_sent()
    first = kill_background(nbbatch_home)

    # The next request finds no emulator that proves the home's key: one is started for
    # it (with a new key), and the request goes there, so the poll goes on unhindered.
    snap = job.refresh()
    assert snap.last_error is None
    again = _background.find(nbbatch_home)
    assert again is not None and again.pid != first.pid and again.token != first.token
    job.wait(timeout=120, progress=False)
    assert job.merge(df)["response"].tolist() == expected()


def test_idle_background_emulator_exits_by_itself(nbbatch_home, monkeypatch):
    monkeypatch.setenv("NBBATCH_EMULATOR_IDLE_SECONDS", "1")
    running = emulator.background(nbbatch_home)
    wait_dead(running.pid, timeout=30)
    assert _background.find(nbbatch_home) is None


def test_state_files_are_owner_only(nbbatch_home):
    emulator.background(nbbatch_home)
    folder = nbbatch_home / "emulator"
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o700 if path.is_dir() else 0o600), path


def _private_job(emu: emulator.Emulator) -> nb.BatchJob:
    client = openai.OpenAI(base_url=emu.openai_base_url, api_key="any", max_retries=0)
    df = pd.DataFrame({"text": TEXTS})
    return nb.submit(df, PROMPT, model="gpt-4o-mini", client=client).wait_sent()


def test_a_job_on_a_stopped_private_emulator_says_so_and_can_be_forgotten(nbbatch_home):
    emu = emulator.start(processing_seconds=60)
    job = _private_job(emu)
    emu.stop()

    snap = job.refresh()
    assert f"the emulator at {emu.url} is not running" in snap.last_error
    assert "job.forget()" in snap.last_error
    with pytest.raises(TimeoutError, match="is not running.*job.forget()"):
        job.wait(timeout=0.01, progress=False)

    job.forget()  # no force needed: nothing can run those batches any more
    with pytest.raises(nb.JobNotFoundError):
        nb.attach(job.id)
    assert nb.jobs().empty


def test_forget_refuses_a_job_whose_batches_can_still_run(nbbatch_home):
    with emulator.start(processing_seconds=60) as emu:
        job = _private_job(emu)
        with pytest.raises(nb.NbbatchError, match=r"3 pending rows .* job\.cancel\(\) first"):
            job.forget()
        assert nb.attach(job.id).id == job.id
        job.cancel()
        job.wait(timeout=30, progress=False)
        job.forget()
    with pytest.raises(nb.JobNotFoundError):
        nb.attach(job.id)


def test_forget_with_force_drops_a_running_job_and_its_files(nbbatch_home):
    with emulator.start(processing_seconds=0.05) as emu:
        done = _private_job(emu).wait(timeout=30, progress=False)
        assert (nbbatch_home / "files" / done.id).is_dir()
        running = nb.submit(
            pd.DataFrame({"text": ["other"]}),
            PROMPT,
            model="gpt-4o-mini",
            client=openai.OpenAI(base_url=emu.openai_base_url, api_key="any"),
        )
        emu.configure(processing_seconds=60)
        done.forget()
        assert not (nbbatch_home / "files" / done.id).exists()
        running.forget(force=True)
    assert nb.jobs().empty


# ------------------------------------------------------------------ the emulator's own state


def test_an_emulator_restarted_on_its_state_dir_serves_earlier_batches(tmp_path: Path):
    lines = "".join(
        json.dumps(
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [{"role": "user", "content": f"hi {i}"}],
                },
            }
        )
        + "\n"
        for i in range(4)
    )
    with emulator.start(state_dir=tmp_path, processing_seconds=0.3) as emu:
        client = openai.OpenAI(base_url=emu.openai_base_url, api_key="any")
        upload = client.files.create(file=("in.jsonl", io.BytesIO(lines.encode())), purpose="batch")
        done = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        stopped = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        client.batches.cancel(stopped.id)
    time.sleep(0.4)  # ``done`` ends while no emulator runs: its timeline is wall-clock time

    with emulator.start(state_dir=tmp_path) as emu:
        client = openai.OpenAI(base_url=emu.openai_base_url, api_key="any")
        batch = client.batches.retrieve(done.id)
        assert batch.status == "completed" and batch.created_at == done.created_at
        assert batch.request_counts is not None and batch.request_counts.completed == 4
        assert batch.output_file_id is not None
        output = client.files.content(batch.output_file_id).text
        assert sorted(json.loads(x)["custom_id"] for x in output.splitlines()) == [
            "r0",
            "r1",
            "r2",
            "r3",
        ]
        assert client.batches.retrieve(stopped.id).status == "cancelled"

    with emulator.start(state_dir=tmp_path) as emu:  # the finished output is kept, not remade
        client = openai.OpenAI(base_url=emu.openai_base_url, api_key="any")
        again = client.batches.retrieve(done.id)
        assert again.output_file_id == batch.output_file_id
        assert client.files.content(again.output_file_id).text == output


def test_batches_and_files_older_than_the_retention_are_not_brought_back(tmp_path: Path):
    from nbbatch.emulator import _persist

    line = {"custom_id": "r0", "method": "POST", "url": "/v1/chat/completions"}
    line["body"] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    with emulator.start(state_dir=tmp_path, processing_seconds=0.01) as emu:
        client = openai.OpenAI(base_url=emu.openai_base_url, api_key="any")
        data = io.BytesIO(json.dumps(line).encode())
        upload = client.files.create(file=("in.jsonl", data), purpose="batch")
        batch = client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    # Age what was saved, as if it had been created 31 days ago.
    shift = _persist.RETENTION_SECONDS + 24 * 3600
    for path in (tmp_path / "files").glob("*.json"):
        saved = json.loads(path.read_text())
        path.write_text(json.dumps({**saved, "created_at": saved["created_at"] - shift}))
    path = tmp_path / "batches" / "openai" / f"{batch.id}.json"
    saved = json.loads(path.read_text())
    for key in ("created", "started", "processed", "finished"):
        saved["fields"][key] -= shift
    path.write_text(json.dumps(saved))

    with emulator.start(state_dir=tmp_path) as emu:
        client = openai.OpenAI(base_url=emu.openai_base_url, api_key="any", max_retries=0)
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(upload.id)
    assert list((tmp_path / "data").iterdir()) == []
    assert list((tmp_path / "batches" / "openai").iterdir()) == []
