"""Durable jobs: the ledger, resuming in a new process, never paying twice, faults."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pandas as pd
import pytest

import nbbatch as nb
import nbbatch._plan
from nbbatch import emulator
from nbbatch.cli import main as cli

from .conftest import batch_ids_at, batches_created, client_for, model_for

STATES = ["succeeded", "failed", "expired", "cancelled", "skipped", "pending"]


def frame(n: int, prefix: str = "row") -> pd.DataFrame:
    return pd.DataFrame({"text": [f"{prefix} {i}" for i in range(n)]})


def assert_every_row_terminal_once(job: nb.BatchJob, n: int) -> None:
    counts = job.counts
    assert counts["pending"] == 0
    assert sum(counts[s] for s in STATES) == counts["total"] == n
    results = job.results()
    assert len(results) == n and results.index.is_unique
    assert results["status"].isin(STATES[:-1]).all()


# -- a separate emulator process, so a killed client process leaves it running ------------
@pytest.fixture
def emu_process() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbbatch.emulator", "--processing-seconds", "2",
         "--validating-seconds", "0.2", "--finalizing-seconds", "0.2"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    url = proc.stdout.readline().split()[-1]
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def spawn(script: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


SUBMIT = """
    import os, sys, openai, anthropic, pandas as pd, nbbatch as nb
    from nbbatch import _ledger as ledger
    url, provider, mode = sys.argv[1:] if len(sys.argv) > 1 else os.environ["ARGS"].split()
    if provider == "openai":
        client = openai.OpenAI(base_url=url + "/v1", api_key="k")
        model = "gpt-4o-mini"
    elif provider == "gemini":
        from google import genai
        client = genai.Client(api_key="k", http_options={"base_url": url + "/gemini"})
        model = "gemini-2.5-flash"
    else:
        client = anthropic.Anthropic(base_url=url, api_key="k")
        model = "claude-haiku-4-5"
    if mode == "die-after-create":
        # Die the instant the provider has created the batch, before the ledger hears of it.
        ledger.Ledger.confirm_batch = lambda *a, **k: os._exit(9)
    df = pd.DataFrame({"text": [f"row {i}" for i in range(30)]})
    job = nb.submit(df, "{text}", model=model, client=client, display=False)
    print(job.id, flush=True)
    job.wait(progress=False)
    print("finished", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["killed-while-polling", "die-after-create"])
def test_a_killed_process_resumes_in_a_new_one_without_paying_twice(
    emu_process, provider, nbbatch_home, mode
):
    proc = spawn(
        SUBMIT, {"ARGS": f"{emu_process} {provider} {mode}", "NBBATCH_HOME": str(nbbatch_home)}
    )
    if mode == "killed-while-polling":
        assert proc.stdout is not None
        job_id = proc.stdout.readline().strip()
        time.sleep(0.5)  # the batch is in progress at the provider
        proc.kill()
    out, err = proc.communicate(timeout=60)
    if mode == "die-after-create":
        assert proc.returncode == 9, err
        (job_id,) = nb.jobs()["id"]
    assert "finished" not in out

    client = client_for(provider, _Url(emu_process))
    job = nb.attach(job_id, client=client)
    job.wait(timeout=60, progress=False)
    assert_every_row_terminal_once(job, 30)
    assert job.counts["succeeded"] == 30
    # Exactly one batch exists at the provider: the resumed job found the one the dead
    # process created instead of sending the rows again.
    at_provider = batch_ids_at(client)
    assert len(at_provider) == 1
    assert job.batch_ids == at_provider
    merged = job.merge(frame(30))
    assert merged["response"].tolist() == [emulator.echo_text(f"row {i}") for i in range(30)]


class _Url:
    """Looks like an Emulator to ``client_for``."""

    def __init__(self, url: str) -> None:
        self.openai_base_url = url + "/v1"
        self.anthropic_base_url = url
        self.gemini_base_url = url + "/gemini"


# -- idempotence, reuse, dedupe ------------------------------------------------------------
def test_running_the_same_submit_again_attaches_instead_of_paying(client, emu, caplog):
    df = frame(8)
    first = nb.submit(df, "{text}", model=model_for(client), client=client).wait_sent()
    before = batches_created(emu)
    with caplog.at_level(logging.WARNING, logger="nbbatch"):
        again = nb.submit(df, "{text}", model=model_for(client), client=client)
    assert again.id == first.id
    assert batches_created(emu) == before
    assert "already submitted" in caplog.text and "force=True" in caplog.text
    forced = nb.submit(
        df, "{text}", model=model_for(client), client=client, force=True, reuse=False
    ).wait_sent()
    assert forced.id != first.id
    assert batches_created(emu) == before + 1
    # A different prompt is a different job.
    other = nb.submit(df, "Q: {text}", model=model_for(client), client=client)
    assert other.id not in (first.id, forced.id)


def test_rows_that_already_succeeded_are_reused_not_resent(client, emu):
    nb.submit(frame(10), "{text}", model=model_for(client), client=client).wait(
        timeout=30, progress=False
    )
    bigger = frame(15)  # rows 0-9 were answered already
    job = nb.submit(bigger, "{text}", model=model_for(client), client=client).wait_sent()
    assert job.snapshot().batches[0].n_requests == 5
    job.wait(timeout=30, progress=False)
    assert job.counts["reused"] == 10 and job.counts["succeeded"] == 15
    assert job.merge()["response"].tolist() == [emulator.echo_text(t) for t in bigger["text"]]
    fresh = nb.submit(
        bigger, "{text}", model=model_for(client), client=client, reuse=False, force=True
    ).wait_sent()
    assert fresh.snapshot().batches[0].n_requests == 15


def test_identical_requests_in_one_job_are_sent_once_and_fanned_out(client):
    df = pd.DataFrame({"text": ["same", "other", "same", "same", "other", "unique"]})
    job = nb.submit(df, "{text}", model=model_for(client), client=client).wait_sent()
    assert job.snapshot().batches[0].n_requests == 3
    job.wait(timeout=30, progress=False)
    assert job.counts["deduplicated"] == 3 and job.counts["succeeded"] == 6
    assert len(job.batch_ids) == 1 and job.snapshot().warnings == ()
    assert job.merge()["response"].tolist() == [emulator.echo_text(t) for t in df["text"]]
    # Every row's own custom_id is kept, and the cost counts each request once.
    assert job.results()["status"].eq("succeeded").all()
    assert job.snapshot().input_tokens == job.results()["input_tokens"].iloc[[0, 1, 5]].sum()


# -- faults --------------------------------------------------------------------------------
@pytest.mark.slow
def test_mixed_faults_end_every_row_in_exactly_one_state_and_retries_recover(provider):
    with emulator.start(
        processing_seconds=0.05,
        error_rate=0.05,
        expire_rate=0.02,
        missing_rate=0.01,
        http_error_rate=0.10,
        http_error_statuses=(500, 429),
        seed=11,
    ) as emu:
        client = client_for(provider, emu)
        df = frame(400)
        job = nb.submit(df, "{text}", model=model_for(client), client=client, retries=2)
        job.wait(timeout=120, progress=False)
        assert_every_row_terminal_once(job, 400)
        # All those faults are transient on their first attempt: retries recover them all.
        assert job.counts["succeeded"] == 400
        assert len(job.batch_ids) >= 2
        out = job.merge()
        assert out["response"].tolist() == [emulator.echo_text(t) for t in df["text"]]
        history = job.snapshot().warnings
        if provider != "gemini":
            # Gemini's responses file lists only the requests that ran, so in an expired
            # batch a dropped line is one more row that expired, not a "missing" one.
            assert any("missing" in w for w in history)
        assert any("retrying" in w for w in history)


def test_without_retries_the_faults_stay_visible_and_add_up(provider):
    with emulator.start(
        processing_seconds=0.05, error_rate=0.05, expire_rate=0.02, missing_rate=0.01, seed=5
    ) as emu:
        client = client_for(provider, emu)
        job = nb.submit(frame(200), "{text}", model=model_for(client), client=client, retries=0)
        job.wait(timeout=60, progress=False)
        assert_every_row_terminal_once(job, 200)
        c = job.counts
        # The 2 dropped lines: "missing" failures, or on Gemini (whose responses file of an
        # expired batch lists only the rows that ran) 2 more expired rows.
        missing, expired = (0, 4 + 2) if provider == "gemini" else (2, 4)
        assert c["failed"] == 10 + missing and c["expired"] == expired and c["succeeded"] == 184
        errors = job.results().loc[lambda r: r["status"] == "failed", "error_type"]
        assert (errors == "missing_result").sum() == missing
        assert any("above the alert threshold" in w for w in job.snapshot().warnings)


def test_a_batch_refused_for_capacity_waits_for_room_and_never_fails_its_rows():
    # Refused for the account's queue quota (token_limit_exceeded): its rows go back
    # unsent and go in waves sized to the limit the refusal states, even with no
    # retries allowed (a refusal is not an attempt; see nbbatch._quota).
    with emulator.start(processing_seconds=0.05, enqueued_token_limit=120) as emu:
        client = client_for("openai", emu)
        df = frame(20, prefix="a longer row of text to use tokens")
        job = nb.submit(df, "{text}", model="gpt-4o-mini", client=client, retries=0)
        job.wait(timeout=60, progress=False)
        assert job.counts["succeeded"] == 20 and job.counts["failed"] == 0
        statuses = [b.status for b in job.snapshot().batches]
        assert statuses.count("refused") == 1
        assert any("batch queue is full" in w for w in job.snapshot().warnings)
        assert len(statuses) >= 3  # the refused batch, then at least two waves


def test_a_create_refused_as_a_whole_fails_its_rows_as_not_sent(emu, monkeypatch):
    client = client_for("anthropic", emu)
    # Provoke the provider: bypass nbbatch's own custom_id rules, so that 70-character
    # ids reach Anthropic, which refuses the whole create call (a 400).
    monkeypatch.setattr(nbbatch._plan, "make_custom_ids", lambda labels: labels)
    df = frame(3).set_axis(["x" * 70 + str(i) for i in range(3)])
    submitted = nb.submit(df, "{text}", model="claude-haiku-4-5", client=client, retries=0)
    # Sending runs in the background: the refusal is the job's error, raised by wait().
    with pytest.raises(nb.BatchFailedError, match="refused"):
        submitted.wait(timeout=30, progress=False)
    (job_id,) = nb.jobs()["id"]
    job = nb.attach(job_id, client=client)
    assert_every_row_terminal_once(job, 3)
    assert set(job.results()["error_type"]) == {"not_sent"}
    assert job.batch_ids == []


# -- the ledger file and the command line --------------------------------------------------
def test_ledger_is_private_to_its_owner(client, nbbatch_home):
    nb.submit(frame(2), "{text}", model=model_for(client), client=client)
    db = nbbatch_home / "ledger.sqlite3"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(nbbatch_home.stat().st_mode) == 0o700
    assert b"test-key" not in db.read_bytes()


def test_logging_says_submit_status_and_completion_and_never_the_key(client, caplog):
    with caplog.at_level(logging.INFO, logger="nbbatch"):
        job = nb.submit(frame(3), "{text}", model=model_for(client), client=client)
        job.wait(timeout=30, progress=False)
    text = caplog.text
    assert f"job {job.id} started: 3 rows expected" in text
    assert any(f"is {word}" in text for word in ("ended", "completed", "succeeded"))
    assert f"job {job.id} ended after" in text and "3 of 3 rows succeeded" in text
    assert "test-key" not in text


def test_command_line_lists_reports_collects_and_cancels(
    client, emu, tmp_path, capsys, monkeypatch
):
    job = nb.submit(frame(4), "{text}", model=model_for(client), client=client)
    monkeypatch.setenv(
        "OPENAI_API_KEY" if model_for(client).startswith("gpt") else "ANTHROPIC_API_KEY", "k"
    )
    assert cli(["jobs"]) == 0
    assert job.id in capsys.readouterr().out
    out_file = tmp_path / "r.parquet"
    assert cli(["collect", job.id, "--out", str(out_file), "--wait"]) == 0
    collected = pd.read_parquet(out_file)
    assert len(collected) == 4 and (collected["response_status"] == "succeeded").all()
    assert cli(["status", job.id]) == 0
    assert "4 succeeded" in capsys.readouterr().out
    assert cli(["status", "nbb-missing"]) == 1
    assert "No job" in capsys.readouterr().err
    slow = nb.submit(frame(4, "slow"), "{text}", model=model_for(client), client=client)
    assert cli(["cancel", slow.id]) == 0


@pytest.mark.slow
def test_a_job_larger_than_one_batch_is_split_and_merged(provider):
    with emulator.start(processing_seconds=0.2) as emu:
        client = client_for(provider, emu)
        n = 120_000
        df = pd.DataFrame({"text": [f"r{i}" for i in range(n)]})
        # A queue limit said to be roomy: with none known, Gemini's and Anthropic's first
        # job fills the queue in steps (README, waves), not in batches of the most rows.
        job = nb.submit(df, "{text}", model=model_for(client), client=client, max_tokens=20,
                        queue_limit=10**9)  # fmt: skip
        job.wait_sent()
        sizes = [b.n_requests for b in job.snapshot().batches]
        limit = 50_000 if provider == "openai" else 100_000
        assert sum(sizes) == n and max(sizes) <= limit and len(sizes) == -(-n // limit)
        job.wait(timeout=300, progress=False)
        assert_every_row_terminal_once(job, n)
        out = job.merge()
        assert (out["response_status"] == "succeeded").all()
        sample = out.sample(500, random_state=0)
        assert sample["response"].tolist() == [emulator.echo_text(t) for t in sample["text"]]


CONCURRENT = """
    import os, sys, openai, pandas as pd, nbbatch as nb
    url, tag = os.environ["ARGS"].split()
    client = openai.OpenAI(base_url=url + "/v1", api_key="k")
    df = pd.DataFrame({"text": [f"{tag} {i}" for i in range(300)]})
    job = nb.submit(df, "{text}", model="gpt-4o-mini", client=client, display=False)
    job.wait(progress=False)
    print(job.id, job.counts["succeeded"], flush=True)
"""


@pytest.mark.slow
def test_two_processes_share_one_ledger_safely(emu_process, nbbatch_home):
    procs = [
        spawn(CONCURRENT, {"ARGS": f"{emu_process} {tag}", "NBBATCH_HOME": str(nbbatch_home)})
        for tag in ("left", "right")
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    ids = {out.split()[0] for out, _ in outs}
    assert [out.split()[1] for out, _ in outs] == ["300", "300"]
    listed = nb.jobs()
    assert set(listed["id"]) == ids
    assert listed["succeeded"].tolist() == [300, 300]
