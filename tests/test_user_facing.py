"""What a user reads and gets back at the edges: command-line messages meant for a shell,
wording, emulator runs labelled as such, files that identify every row, and the kind of
table given back."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time

import pandas as pd
import polars as pl
import pytest

import nbbatch as nb
from nbbatch import emulator
from nbbatch._console import ConsoleReporter
from nbbatch._panel import JobPanel
from nbbatch.labext import views

from .conftest import openai_client
from .test_cli import nbbatch

PYTHON_ADVICE = re.compile(r"job\.\w+\(|force=True|nb\.jobs\(\)")


def _slow_job(server: emulator.Emulator, rows: int = 2) -> nb.BatchJob:
    """A job whose batch runs for minutes on ``server``, its batch created."""
    data = pd.DataFrame({"text": [f"row {i}" for i in range(rows)]})
    job = nb.submit(data, "{text}", model="gpt-4o-mini", client=openai_client(server),
                    display=False)  # fmt: skip
    return job.wait_sent()


# ---------------------------------------------------------------- the command line
def test_cli_messages_give_commands_to_run_not_python():
    with emulator.start(processing_seconds=600.0) as server:
        job = _slow_job(server)
        refused = nbbatch("forget", job.id)
        assert refused.returncode == 1
        message = refused.stderr
        assert f"`nbbatch cancel {job.id}`" in message
        assert f"`nbbatch forget {job.id} --force`" in message
        assert not PYTHON_ADVICE.search(message), message
    # The emulator has gone, and its batches with it: the way out is a command.
    status = nbbatch("status", job.id)
    assert status.returncode == 4
    assert f"close the job with `nbbatch forget {job.id}`" in status.stderr
    assert not PYTHON_ADVICE.search(status.stderr), status.stderr

    unknown = nbbatch("status", "nbb-nope")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("nbbatch: No job 'nbb-nope' in the ledger (")
    assert ". List" not in unknown.stderr and "`nbbatch jobs`" in unknown.stderr
    assert not PYTHON_ADVICE.search(unknown.stderr), unknown.stderr


def test_cancel_of_a_job_whose_batches_have_ended_says_it_is_finished(emu):
    job = nb.submit(pd.DataFrame({"text": ["a", "b"]}), "{text}", model="gpt-4o-mini",
                    client=openai_client(emu), display=False).wait_sent()  # fmt: skip
    time.sleep(1.0)  # the batch ends at the provider; nothing has collected it yet
    result = nbbatch("cancel", job.id)
    assert result.returncode == 0, result.stderr
    assert "already finished; nothing to cancel" in result.stdout
    assert "finalizing" not in result.stdout and "cancelled" not in result.stdout
    assert nb.attach(job.id).counts["succeeded"] == 2  # its answers are kept


def test_cli_jobs_shows_what_a_running_job_will_cost():
    with emulator.start(processing_seconds=600.0) as server:
        job = _slow_job(server, rows=40)
        estimate = job.snapshot().cost.batch
        assert estimate and estimate > 0
        listed = nbbatch("jobs")
    assert listed.returncode == 0, listed.stderr
    (line,) = [line for line in listed.stdout.splitlines() if line.startswith(job.id)]
    assert re.search(r"~\$0\.0\d* \(est\.\)$", line), line
    assert nb.pricing.money(estimate) in line


def test_one_row_and_one_batch_are_worded_as_such():
    lines = io.StringIO()
    job = nb.submit(pd.DataFrame({"text": ["only"]}), "{text}", model="gpt-4o-mini",
                    provider="local", display=False)  # fmt: skip
    job.subscribe(ConsoleReporter(lines))
    job.wait(progress=False)
    said = lines.getvalue()
    assert "1/1 row collected" in said and "1/1 row done" in job.snapshot().summary()
    assert not re.search(r"\b1 rows\b|0/0 batches|\b0 MB", said), said
    assert "1 batches" not in said
    panel = JobPanel(job)
    assert "1 rows" not in panel.header.value + panel.summary.value + panel.progress.value


def test_make_demo_names_its_batch():
    run = subprocess.run([sys.executable, "-m", "nbbatch.demo"], capture_output=True,
                         text=True, timeout=240)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert re.search(r"Submitted job nbb-\S+ as 1 batch: batch_\w+\n", run.stdout), run.stdout
    assert "[]" not in run.stdout and "batch(es)" not in run.stdout


# ---------------------------------------------------------------- emulator runs
def test_local_jobs_are_labelled_local_everywhere():
    job = nb.submit(pd.DataFrame({"text": ["a"]}), "{text}", model="gpt-4o-mini",
                    provider="local", wait=True, progress=False, display=False)  # fmt: skip
    assert "[local gpt-4o-mini]" in job.snapshot().summary()
    assert "[local gpt-4o-mini]" in repr(job)
    assert nb.jobs()["provider"].tolist() == ["local"]
    assert "local &middot;" in JobPanel(job).header.value
    (listed,) = views.listing()["jobs"]
    assert listed["provider"] == "local"
    status = nbbatch("status", job.id)
    assert f"{job.id} [local gpt-4o-mini]" in status.stdout, status.stderr
    jobs = nbbatch("jobs").stdout
    assert re.search(rf"{job.id} .* local +gpt-4o-mini", jobs), jobs
    assert "openai" not in jobs


# ---------------------------------------------------------------- prompts
def test_a_real_column_with_a_space_is_a_placeholder():
    data = pd.DataFrame({"product name": ["kettle", "lamp"]})
    shown = nb.preview(data, "Describe the {product name}.", model="gpt-4o-mini")
    assert list(shown["prompt"]) == ["Describe the kettle.", "Describe the lamp."]
    job = nb.submit(data, "Describe the {product name}.", model="gpt-4o-mini",
                    provider="local", wait=True, progress=False, display=False)  # fmt: skip
    assert job.counts["succeeded"] == 2
    # Braces around words that are not a column are still taken for a JSON example.
    with pytest.raises(nb.TemplateError, match="a JSON example"):
        nb.preview(data, 'Answer as {"product name": ...} for {product name}', model="gpt-4o-mini")


def test_a_prompt_that_names_no_column_is_refused_with_the_fix():
    data = pd.DataFrame({"text": ["a", "b"]})
    for call in (nb.preview, nb.submit):
        with pytest.raises(nb.InputError) as info:
            call(data, "Tell me a joke", model="gpt-4o-mini", provider="local")
        message = str(info.value)
        assert "names no column" in message and "{review}" in message and "None" not in message
    assert nb.jobs().empty


# ---------------------------------------------------------------- what comes back
def test_to_parquet_into_a_folder_writes_the_job_file_and_a_missing_folder_is_named(tmp_path):
    data = pd.DataFrame({"text": ["a", "b", "c"]}, index=[7, 7, 8])  # labels repeat
    job = nb.submit(data, "{text}", model="gpt-4o-mini", provider="local", wait=True,
                    progress=False, display=False)  # fmt: skip
    job.to_parquet(tmp_path)
    written = pd.read_parquet(tmp_path / f"{job.id}.parquet")
    assert written["row"].tolist() == [0, 1, 2]  # tells apart the two rows labelled 7
    assert written.index.tolist() == [7, 7, 8]
    assert written["response_status"].tolist() == ["succeeded"] * 3
    with pytest.raises(nb.InputError, match="does not exist. Create it first"):
        job.to_parquet(tmp_path / "no-such-folder" / "out.parquet")


def test_collect_gives_each_row_its_position_when_labels_repeat(tmp_path):
    data = pd.DataFrame({"text": ["a", "b", "c"]}, index=["x", "x", "y"])
    job = nb.submit(data, "{text}", model="gpt-4o-mini", provider="local", wait=True,
                    progress=False, display=False)  # fmt: skip
    out = tmp_path / "results.csv"
    result = nbbatch("collect", job.id, "--out", str(out))
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(out)
    assert list(frame.columns[:2]) == ["id", "row"]
    assert frame["id"].tolist() == ["x", "x", "y"] and frame["row"].tolist() == [0, 1, 2]


def test_merge_of_a_lazyframe_gives_a_lazyframe():
    data = pl.DataFrame({"text": ["a", "b"]})
    job = nb.submit(data, "{text}", model="gpt-4o-mini", provider="local", wait=True,
                    progress=False, display=False)  # fmt: skip
    merged = job.merge(data.lazy())
    assert isinstance(merged, pl.LazyFrame)
    frame = merged.collect()
    assert frame.columns == ["text", "response", "response_status", "response_error"]
    assert frame["response_status"].to_list() == ["succeeded"] * 2
    assert isinstance(job.merge(data), pl.DataFrame)
