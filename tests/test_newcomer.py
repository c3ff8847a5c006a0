"""A newcomer's first hour: the traps a first-time user fell into, each driven as that
user drove it (the public API, the ``nbbatch`` command), on the emulator."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import nbbatch as nb
from nbbatch import _planning as planning
from nbbatch import _stream as stream
from nbbatch import pricing
from nbbatch.labext import views

from ._helpers import interrupted_wait
from ._helpers import parquet_files as _files
from .conftest import batches_created, openai_client
from .test_cli import nbbatch

PROMPT = "Summarise: {body}"


def _dollars(text: str) -> float:
    """The amount of a money() string such as ``$0.0133`` or ``-$1,234.50``."""
    return float(text.replace("$", "").replace(",", ""))


@pytest.fixture
def small_background(monkeypatch):
    """Tables of 10 rows or more from files are planned in the background, as tables of
    250,000 rows are (the threshold lowered, so the test is quick)."""
    monkeypatch.setattr(planning, "BACKGROUND_ROWS", 10)
    monkeypatch.setattr(stream, "BATCH_ROWS", 7)


@pytest.fixture
def dear_prices(monkeypatch):
    """gpt-4o-mini priced so that a few rows cost cents, where two decimals mislead."""
    monkeypatch.setattr(pricing, "_OVERRIDES", {})
    nb.pricing.set("gpt-4o-mini", input=400.0, output=800.0)
    nb.pricing.set("gpt-4o", input=1000.0, output=2000.0)


# ------------------------------------------------ 1. a job refused before sending


def test_a_job_refused_by_max_cost_while_planning_does_not_capture_the_next_submit(
    emu, tmp_path, small_background
):
    client = openai_client(emu)
    glob = _files(tmp_path / "in")
    refused = nb.submit(glob, PROMPT, model="gpt-4o-mini", client=client, max_cost=1e-9,
                        display=False)  # fmt: skip
    with pytest.raises(nb.InputError, match="raise max_cost"):
        refused.wait(timeout=60, progress=False)
    assert nb.attach(refused.id).status == "failed"
    # As the message advises: the same files, a higher max_cost, submitted again.
    again = nb.submit(glob, PROMPT, model="gpt-4o-mini", client=client, max_cost=100.0,
                      display=False)  # fmt: skip
    assert again.id != refused.id
    again.wait(timeout=60, progress=False)
    assert again.counts["succeeded"] == 20
    # A job that did send something is still found again, not paid for twice.
    third = nb.submit(glob, PROMPT, model="gpt-4o-mini", client=client, max_cost=100.0,
                      display=False)  # fmt: skip
    assert third.id == again.id


def test_a_job_cancelled_while_planning_does_not_capture_the_next_submit(
    emu, tmp_path, small_background, monkeypatch
):
    client = openai_client(emu)
    glob = _files(tmp_path / "in")
    with monkeypatch.context() as patched:  # the sender never starts: cancelled first
        patched.setattr(nb.BatchJob, "start_sending", lambda self, daemon=False: None)
        first = nb.submit(glob, PROMPT, model="gpt-4o-mini", client=client, display=False)
    first.cancel()
    assert nb.attach(first.id).status == "cancelled"
    again = nb.submit(glob, PROMPT, model="gpt-4o-mini", client=client, display=False)
    assert again.id != first.id
    assert again.wait(timeout=60, progress=False).counts["succeeded"] == 20


# ------------------------------------------------ 2. to_parquet("newdir/")


def test_to_parquet_with_a_trailing_slash_writes_into_a_new_folder(emu, tmp_path):
    data = pd.DataFrame({"body": ["a cold soup", "a warm soup"]})
    job = nb.submit(data, PROMPT, model="gpt-4o-mini", client=openai_client(emu),
                    display=False).wait(timeout=60, progress=False)  # fmt: skip
    written = job.to_parquet(f"{tmp_path}/summaries/")
    assert written == tmp_path / "summaries" / f"{job.id}.parquet"
    assert pq.read_table(written).column("response_status").to_pylist() == ["succeeded"] * 2
    # Without the slash, a missing folder is still refused, and the message says how.
    with pytest.raises(nb.InputError, match="end the path with '/'"):
        job.to_parquet(tmp_path / "missing" / "out.parquet")
    # The command line reads "--out DIR/" the same way.
    result = nbbatch("collect", job.id, "--out", f"{tmp_path}/from-cli/")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "from-cli" / f"{job.id}.parquet").is_file()


# ------------------------------------------------ 8. three significant digits


@given(st.floats(min_value=1e-9, max_value=1e6, allow_nan=False))
@example(0.0133)
@example(0.0999999)
def test_money_keeps_three_significant_digits(dollars):
    text = nb.pricing.money(dollars)
    assert "e" not in text.lower() and text.startswith("$")
    assert abs(_dollars(text) - dollars) <= 0.005 * dollars


def test_money_reads_as_the_issue_asks():
    assert [nb.pricing.money(x) for x in (0.0133, 0.0248, 0.0096, 0.25, 12.345, 0)] == [
        "$0.0133", "$0.0248", "$0.0096", "$0.25", "$12.35", "$0.00",
    ]  # fmt: skip


def test_costs_show_three_significant_digits_in_errors_costs_and_the_cli(emu, dear_prices):
    client = openai_client(emu)
    data = pd.DataFrame({"body": [f"soup number {i}" for i in range(3)]})
    estimate = nb.preview(data, PROMPT, model="gpt-4o-mini", client=client).estimate
    batch = estimate.cost.batch
    assert batch is not None and 0.01 < batch < 1  # where two decimals mislead
    with pytest.raises(nb.InputError) as refused:
        nb.submit(data, PROMPT, model="gpt-4o-mini", client=client, max_cost=batch * 0.9,
                  display=False)  # fmt: skip
    shown = re.search(r"The estimated batch cost, (\$[\d.,]+),", str(refused.value))
    assert shown, refused.value
    assert abs(_dollars(shown.group(1)) - batch) <= 0.005 * batch
    assert f"max_cost={nb.pricing.money(batch * 0.9)}" in str(refused.value)
    assert nb.pricing.money(batch) in estimate.summary()

    # A cascade's breakdown: every stage's cost to three digits.
    job = nb.submit(data, PROMPT, model=["gpt-4o-mini", "gpt-4o"], client=client,
                    escalate_when="response_status == 'succeeded'", display=False)  # fmt: skip
    job.wait(timeout=60, progress=False)
    cost = job.cost
    text = str(cost)
    for model, dollars in cost.per_model:
        assert dollars is not None and dollars >= 0.01
        part = re.search(rf"{re.escape(model)} (\$[\d.,]+)", text)
        assert part, text
        assert abs(_dollars(part.group(1)) - dollars) <= 0.005 * dollars, text
    # The sidebar's JSON carries the same text, from the same function.
    (listed,) = [j for j in views.listing()["jobs"] if j["id"] == job.id]
    assert listed["cost_text"] == nb.pricing.money(listed["cost"])
    assert 0.01 <= listed["cost"] < 1


def test_the_cli_lists_costs_to_three_significant_digits(emu):
    # Real prices, in the command's own process: gpt-4o for 200 rows costs cents.
    data = pd.DataFrame({"body": [f"soup number {i} was cold and late" for i in range(200)]})
    job = nb.submit(data, PROMPT, model="gpt-4o", client=openai_client(emu), display=False)
    job.wait(timeout=120, progress=False)
    paid = job.cost.batch
    assert paid is not None and 0.01 < paid < 1
    listed = nbbatch("jobs")
    assert listed.returncode == 0, listed.stderr
    (line,) = [line for line in listed.stdout.splitlines() if line.startswith(job.id)]
    shown = re.search(r"(\$[\d.,]+)\s*$", line)
    assert shown, line
    assert abs(_dollars(shown.group(1)) - paid) <= 0.005 * paid, line
    status = nbbatch("status", job.id)
    assert nb.pricing.money(paid) in status.stdout, status.stdout


# ------------------------------------------------ 9. messages


def test_a_merge_error_shows_where_sent_and_now_differ(emu):
    head = "A long review that starts the same way for many words before it says "
    data = pd.DataFrame({"body": [head + "the soup was cold.", head + "the bread was fine."]})
    job = nb.submit(data, PROMPT, model="gpt-4o-mini", client=openai_client(emu),
                    display=False).wait(timeout=60, progress=False)  # fmt: skip
    edited = data.copy()
    edited.loc[0, "body"] = head + "the soup was HOT."
    with pytest.raises(nb.MergeError) as refused:
        job.merge(edited)
    (line,) = [ln for ln in str(refused.value).splitlines() if ln.startswith("  row 0:")]
    sent, now = line.split(", now ")
    assert "cold" in sent and "HOT" in now, line
    assert "cold" not in now and "HOT" not in sent


def test_merge_after_forget_says_the_job_was_forgotten(emu):
    data = pd.DataFrame({"body": ["a cold soup"]})
    job = nb.submit(data, PROMPT, model="gpt-4o-mini", client=openai_client(emu),
                    display=False).wait(timeout=60, progress=False)  # fmt: skip
    job.forget()
    for call in (lambda: job.merge(data), job.results, job.failed):
        with pytest.raises(nb.JobNotFoundError, match="forgotten"):
            call()


def test_collect_on_edited_parquet_files_gives_advice_a_shell_user_can_follow(emu, tmp_path):
    glob = _files(tmp_path / "in", n_files=1, rows=4)
    job = nb.submit(glob, PROMPT, model="gpt-4o-mini", client=openai_client(emu),
                    display=False).wait(timeout=60, progress=False)  # fmt: skip
    edited = pq.read_table(tmp_path / "in" / "p0.parquet").to_pydict()
    edited["body"][2] = "someone edited this row"
    pq.write_table(pa.table(edited), tmp_path / "in" / "p0.parquet")
    refused = nbbatch("collect", job.id, "--out", str(tmp_path / "out.parquet"))
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert "verify=False" not in refused.stderr and "merge(" not in refused.stderr
    assert f"`nbbatch collect {job.id} --no-verify`" in refused.stderr, refused.stderr
    written = nbbatch("collect", job.id, "--out", str(tmp_path / "out.parquet"), "--no-verify")
    assert written.returncode == 0, written.stderr
    assert pq.read_table(tmp_path / "out.parquet").column("body")[2].as_py() == edited["body"][2]


def test_cli_jobs_into_a_closed_pipe_exits_quietly(emu):
    for i in range(3):
        nb.submit(pd.DataFrame({"body": [f"soup {i}"]}), PROMPT, model="gpt-4o-mini",
                  client=openai_client(emu), display=False)  # fmt: skip
    # `nbbatch jobs | head -1` when head has gone before the listing is written: the
    # reading end is closed before the command writes anything.
    command = subprocess.Popen(
        [sys.executable, "-m", "nbbatch.cli", "jobs"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=dict(os.environ),
    )  # fmt: skip
    assert command.stdout is not None and command.stderr is not None
    command.stdout.close()
    error = command.stderr.read().decode()
    command.stderr.close()
    assert command.wait(timeout=120) == 0, error
    assert error == ""


def test_collect_out_dir_on_a_missing_folder_names_out_dir(tmp_path):
    result = nbbatch("collect", "--finished", "--out-dir", str(tmp_path / "nope"))
    assert result.returncode == 1
    assert "--out-dir" in result.stderr and "--out." not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_job_run_by_nbconvert_names_its_notebook_as_origin(tmp_path):
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(
            "import pandas as pd\n"
            "import nbbatch as nb\n"
            "with nb.emulator.start(processing_seconds=0.05) as emu:\n"
            "    import openai\n"
            "    client = openai.OpenAI(base_url=emu.openai_base_url, api_key='test')\n"
            "    job = nb.submit(pd.DataFrame({'body': ['soup']}), 'Summarise: {body}',\n"
            "                    model='gpt-4o-mini', client=client, wait=True, display=False)\n"
            "    client.close()\n"
        )
    ]
    (tmp_path / "work").mkdir()
    path = tmp_path / "work" / "reviews.ipynb"
    nbformat.write(notebook, path)
    run = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
         "--output", "done.ipynb", "work/reviews.ipynb"],
        cwd=tmp_path, capture_output=True, text=True, env=dict(os.environ), timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    (listed,) = views.listing(root_dir=str(tmp_path))["jobs"]
    assert listed["origin"] == "work/reviews.ipynb"


# ------------------------------------------------ 4. status never sends silently


def test_status_never_sends_and_status_send_says_what_it_sends(emu, monkeypatch, tmp_path):
    data = pd.DataFrame({"body": [f"soup {i}" for i in range(20)]})
    with monkeypatch.context() as patched:  # the kernel dies before its upload starts
        patched.setattr(nb.BatchJob, "start_sending", lambda self, daemon=False: None)
        job = nb.submit(data, PROMPT, model="gpt-4o-mini", client=openai_client(emu),
                        display=False)  # fmt: skip
    before = batches_created(emu)
    polled = nbbatch("status", job.id)
    assert polled.returncode == 0, polled.stderr
    assert batches_created(emu) == before  # nothing sent, nothing paid
    assert "20 rows not sent yet; nothing was sent" in polled.stdout, polled.stdout
    assert f"`nbbatch status {job.id} --send`" in polled.stdout
    collected = nbbatch("collect", job.id, "--out", str(tmp_path / "x.csv"))
    assert collected.returncode == 3, collected.stderr  # rows pending, written as they are
    assert "nothing was sent" in collected.stderr
    assert batches_created(emu) == before  # collect without --wait sends nothing either
    checked = nbbatch("check")
    assert checked.returncode == 5 and batches_created(emu) == before  # flagged, not sent
    assert f"{job.id} waiting: 20 rows not sent yet; nothing was sent" in checked.stdout

    sent = nbbatch("status", job.id, "--send")
    assert sent.returncode == 0, sent.stderr
    assert f"job {job.id}: sending 20 rows not sent yet (they are paid for)" in sent.stderr
    assert batches_created(emu) == before + 1
    assert nb.attach(job.id).wait(timeout=60, progress=False).counts["succeeded"] == 20
    assert "waiting" not in nbbatch("status", job.id).stdout


def test_status_help_says_it_never_sends_without_send():
    helped = nbbatch("status", "--help")
    assert "--send" in helped.stdout and "never sends" in helped.stdout


# ------------------------------------------------ 7. Ctrl-C in job.wait()

WAITING_SCRIPT = """
import pandas as pd
import nbbatch as nb

with nb.emulator.start(processing_seconds=600.0) as emu:
    import openai

    client = openai.OpenAI(base_url=emu.openai_base_url, api_key="test")
    job = nb.submit(pd.DataFrame({"body": ["a", "b"]}), "Summarise: {body}",
                    model="gpt-4o-mini", client=client, display=False)
    job.wait_sent()  # its batch exists before the interrupt, however slow the machine
    print(job.id, flush=True)
    job.wait(progress=True)
"""


@pytest.mark.slow
def test_ctrl_c_in_wait_stops_at_once_and_says_how_to_carry_on(tmp_path):
    # The batch runs for ten minutes: the script ends long before, on the interrupt.
    job_id, error = interrupted_wait(WAITING_SCRIPT, tmp_path)
    assert f"KeyboardInterrupt: stopped waiting for job {job_id}; it goes on at the provider" in (
        error
    ), error
    assert f"nb.attach('{job_id}').wait()" in error
    assert len(error.splitlines()) < 15, error  # a few lines, not the stack of a poll
    # The job did go on: it is there to attach to, its batch still open.
    assert nb.attach(job_id).batch_ids


# ------------------------------------------------ 5. disk, and the label of a local job


def _bytes_under(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash"])
def test_forget_removes_a_local_jobs_emulator_files_and_no_raw_copy_is_kept(
    model, nbbatch_home, monkeypatch
):
    monkeypatch.setenv("NBBATCH_EMULATOR_PROCESSING_SECONDS", "0.05")
    data = pd.DataFrame({"body": [f"a cold soup, review {i} " * 20 for i in range(50)]})
    job = nb.submit(data, PROMPT, model=model, provider="local", display=False)
    job.wait(timeout=120, progress=False)
    assert job.counts["succeeded"] == 50
    # The results are recorded once, parsed: the raw download is not kept beside them.
    assert not list((nbbatch_home / "files" / job.id).glob("*.jsonl"))
    stored = nbbatch_home / "emulator" / "data"
    assert _bytes_under(stored) > 50 * 400  # requests and results, in the emulator
    nb.attach(job.id).forget()
    assert _bytes_under(stored) == 0, sorted(stored.iterdir())
    assert not (nbbatch_home / "files" / job.id).exists()


def test_a_local_job_reads_local_while_planned_and_after_attach(
    tmp_path, small_background, monkeypatch
):
    glob = _files(tmp_path / "in")
    with monkeypatch.context() as patched:  # still planning when looked at
        patched.setattr(nb.BatchJob, "start_sending", lambda self, daemon=False: None)
        job = nb.submit(glob, PROMPT, model="gpt-4o-mini", provider="local", display=False)
    assert job.snapshot().sending == "planning"
    assert "[local gpt-4o-mini]" in repr(job)
    assert "[local gpt-4o-mini]" in repr(nb.attach(job.id))


@pytest.mark.slow
def test_clean_removes_only_what_no_job_needs_and_dry_run_says_how_much(nbbatch_home, monkeypatch):
    monkeypatch.setenv("NBBATCH_EMULATOR_PROCESSING_SECONDS", "0.05")
    data = pd.DataFrame({"body": [f"a cold soup, review {i} " * 20 for i in range(40)]})
    kept = nb.submit(data, PROMPT, model="gpt-4o-mini", provider="local", display=False)
    kept.wait(timeout=120, progress=False)
    gone = nb.submit(data, "Translate: {body}", model="claude-haiku-4-5", provider="local",
                     display=False).wait(timeout=120, progress=False)  # fmt: skip
    # What earlier releases left behind: a job dropped from the ledger with its
    # emulator batches still there and its folder on disk, and a raw download kept
    # beside recorded results.
    leftover = nbbatch_home / "files" / gone.id
    gone._ledger.forget_job(gone.id)
    leftover.mkdir(parents=True)
    (leftover / "manifest.arrow").write_bytes(b"x" * 5000)
    (batch_id,) = kept.batch_ids
    raw = nbbatch_home / "files" / kept.id / f"{batch_id}.0.jsonl"
    raw.write_bytes(b"y" * 7000)
    emulator_before = _bytes_under(nbbatch_home / "emulator" / "data")

    dry = nbbatch("clean", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "1 folder of jobs no longer in the ledger: 5.0 kB" in dry.stdout, dry.stdout
    assert "1 raw result file of batches whose results are recorded: 7.0 kB" in dry.stdout
    assert "1 ended batch in the background emulator that no job refers to" in dry.stdout
    assert leftover.exists() and raw.exists()  # a dry run removes nothing
    assert _bytes_under(nbbatch_home / "emulator" / "data") == emulator_before

    done = nbbatch("clean")
    assert done.returncode == 0, done.stderr
    assert "freed" in done.stdout
    assert not leftover.exists() and not raw.exists()
    assert _bytes_under(nbbatch_home / "emulator" / "data") < emulator_before
    # The job the ledger holds is whole: its answers merge, its batch is still there.
    assert nb.attach(kept.id).merge(data)["response_status"].eq("succeeded").all()
    assert "nothing to clean" in nbbatch("clean", "--dry-run").stdout


# ------------------------------------------------ 3. Spark without PYSPARK_PYTHON

SPARK_SCRIPT = """
import pandas as pd
from pyspark.sql import SparkSession

import nbbatch as nb

# As a newcomer starts: no PYSPARK_PYTHON, so Spark would run `python3` from the PATH.
spark = (SparkSession.builder.master("local[1]").appName("newcomer")
         .config("spark.ui.enabled", "false").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
frame = spark.createDataFrame(pd.DataFrame({"body": ["a cold soup", "a warm soup"]}))
with nb.emulator.start(processing_seconds=0.05) as emu:
    import openai

    client = openai.OpenAI(base_url=emu.openai_base_url, api_key="test")
    job = nb.submit(frame, "Summarise: {body}", model="gpt-4o-mini", client=client,
                    wait=True, display=False)
    print("counts", job.counts["succeeded"], flush=True)
    client.close()
spark.stop()
"""


@pytest.mark.slow
def test_a_spark_frame_in_local_mode_needs_no_pyspark_python(tmp_path):
    pytest.importorskip("pyspark")
    if shutil.which("java") is None and "JAVA_HOME" not in os.environ:
        pytest.skip("Spark needs Java 17")
    # A `python3` first on the PATH that cannot import nbbatch's dependencies, as the
    # system Python beside a virtual environment often cannot.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text("#!/bin/sh\nexec /usr/bin/env -i /bin/false\n")
    (bin_dir / "python3").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYSPARK_PYTHON"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    script = tmp_path / "spark_job.py"
    script.write_text(SPARK_SCRIPT)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         env=env, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "counts 2" in run.stdout


UPLOADING_SCRIPT = """
import time
import pandas as pd
import nbbatch as nb
from nbbatch.providers.openai import OpenAIProvider

OpenAIProvider.max_requests = 1  # one row a batch: the second waits for the first

with nb.emulator.start(processing_seconds=600.0) as emu:
    import openai

    client = openai.OpenAI(base_url=emu.openai_base_url, api_key="test")
    create = openai.resources.files.Files.create

    def slow_upload(self, *args, **kwargs):  # the upload of a big batch, still going
        print("uploading", flush=True)
        time.sleep(600)
        return create(self, *args, **kwargs)

    # On the class: nbbatch sends through a guarded copy of a loopback client.
    openai.resources.files.Files.create = slow_upload
    job = nb.submit(pd.DataFrame({"body": ["a", "b"]}), "Summarise: {body}",
                    model="gpt-4o-mini", client=client, display=False)
    print(job.id, flush=True)
    job.wait_sent()
"""


@pytest.mark.slow
def test_status_does_not_call_rows_a_live_kernel_is_uploading_waiting(tmp_path):
    script = tmp_path / "upload.py"
    script.write_text(UPLOADING_SCRIPT)
    uploading = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                 text=True, env=dict(os.environ))  # fmt: skip
    try:
        assert uploading.stdout is not None
        lines = [uploading.stdout.readline().strip() for _ in range(2)]
        (job_id,) = [line for line in lines if line.startswith("nbb-")]
        polled = nbbatch("status", job_id)
        assert polled.returncode == 0, polled.stderr
        assert "waiting" not in polled.stdout, polled.stdout
        assert f"{job_id} waiting" not in nbbatch("check").stdout
    finally:
        uploading.kill()
        uploading.wait(timeout=60)
        if uploading.stdout is not None:
            uploading.stdout.close()


KERNEL_CELL = """
import pandas as pd
import nbbatch as nb
import openai

emu = nb.emulator.start(processing_seconds=600.0)
client = openai.OpenAI(base_url=emu.openai_base_url, api_key="test")
job = nb.submit(pd.DataFrame({"body": ["a", "b"]}), "Summarise: {body}",
                model="gpt-4o-mini", client=client, display=False)
print(job.id, flush=True)
job.wait()
"""


def _reply_to(kernel, msg_id: str) -> dict:
    """The shell reply to request ``msg_id``: other replies on the channel (the
    kernel_info reply start_new_kernel asked for, with recent ipykernels) are skipped."""
    while True:
        reply = kernel.get_shell_msg(timeout=120)
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


@pytest.mark.slow
def test_interrupting_the_kernel_in_wait_stops_waiting_with_one_line():
    from jupyter_client.manager import start_new_kernel

    manager, kernel = start_new_kernel(kernel_name="python3", env=dict(os.environ))
    try:
        # stop_on_error=False: after the cell's error the kernel would otherwise abort
        # requests that reach it soon after, such as the status check below.
        msg_id = kernel.execute(KERNEL_CELL, stop_on_error=False)
        job_id = None
        while job_id is None:  # the job id is printed just before wait() starts
            msg = kernel.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                job_id = msg["content"]["text"].strip()
        time.sleep(1.0)  # inside wait(), between polls
        manager.interrupt_kernel()
        reply = _reply_to(kernel, msg_id)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        assert reply["content"]["evalue"].startswith(f"stopped waiting for job {job_id}")
        assert f"nb.attach('{job_id}').wait()" in reply["content"]["evalue"]
        # The kernel is free again and the job is still there, running.
        status = _reply_to(kernel, kernel.execute("print(nb.attach(job.id).status)"))
        assert status["content"]["status"] == "ok"
    finally:
        kernel.stop_channels()
        manager.shutdown_kernel(now=True)
