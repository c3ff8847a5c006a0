"""Bad submit arguments are refused before anything is recorded; one broken job in the
ledger never stops the command line or the sidebar from handling the others."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import pydantic
import pytest

import nbbatch as nb
from nbbatch import emulator
from nbbatch._ledger import default as default_ledger
from nbbatch.labext import views

from .conftest import openai_client
from .test_cli import nbbatch

DF = pd.DataFrame({"text": ["a", "b", "c"]})


@pytest.mark.parametrize(
    ("argument", "value", "named"),
    [
        ("system", 123, "system must be None or a string"),
        ("cache_system", "yes", "cache_system must be True or False"),
        ("max_cost", "10", "max_cost (dollars) must be None or a number"),
        ("alert_threshold", "5%", "alert_threshold (a share of the rows)"),
        ("alert_threshold", 5, "between 0 and 1"),
        ("reuse", "no", "reuse must be True or False"),
        ("id_column", 3, "id_column must be None or a string"),
        ("max_tokens", True, "max_tokens must be a positive integer"),
        ("retries", 1.5, "retries must be a whole number"),
        ("progress", "yes", "progress must be True, False or 'auto'"),
    ],
)
def test_a_bad_submit_argument_is_refused_before_anything_is_recorded(argument, value, named):
    with pytest.raises(nb.InputError) as info:
        nb.submit(DF, "{text}", model="gpt-4o-mini", provider="local", display=False,
                  **{argument: value})  # fmt: skip
    assert named in str(info.value) and repr(value) in str(info.value)
    assert nb.jobs().empty


def test_a_lone_surrogate_in_the_template_or_system_prompt_is_named(nbbatch_home):
    with pytest.raises(nb.InputError, match="prompt holds .*lone surrogate"):
        nb.submit(DF, "Say \ud800 {text}", model="gpt-4o-mini", provider="local")
    with pytest.raises(nb.InputError, match="system holds .*lone surrogate"):
        nb.preview(DF, "{text}", model="gpt-4o-mini", system="be \udfff kind")
    assert nb.jobs().empty


def _plant_broken_jobs(server: emulator.Emulator) -> tuple[str, list[str]]:
    """A finished good job, and two jobs whose ledger records are broken as an older
    version or a damaged file could leave them: a running job whose system prompt is
    not text (what ``system=123`` recorded), and one with damaged JSON and times."""
    good = nb.submit(DF, "{text}", model="gpt-4o-mini", provider="local", wait=True,
                     progress=False, display=False)  # fmt: skip
    running = nb.submit(pd.DataFrame({"text": ["slow"]}), "{text}", model="gpt-4o-mini",
                        client=openai_client(server), display=False)  # fmt: skip
    running.wait_sent()
    damaged = nb.submit(pd.DataFrame({"text": ["x", "y"]}), "{text}", model="gpt-4o-mini",
                        provider="local", wait=True, progress=False, display=False)  # fmt: skip
    with sqlite3.connect(default_ledger().path) as db:
        db.execute(
            "UPDATE jobs SET spec = json_set(spec, '$.system', 123) WHERE id = ?", (running.id,)
        )
        db.execute(
            "UPDATE jobs SET spec = '{not json', policy = '[', summary = '{broken', "
            "created = 'yesterday' WHERE id = ?",
            (damaged.id,),
        )
    db.close()
    return good.id, [running.id, damaged.id]


def test_a_broken_job_does_not_stop_check_collect_jobs_or_the_sidebar(tmp_path):
    with emulator.start(processing_seconds=600.0) as server:
        _handles_broken_jobs(tmp_path, *_plant_broken_jobs(server))


def _handles_broken_jobs(tmp_path: Path, good: str, broken: list[str]) -> None:

    listed = nbbatch("jobs")
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr
    assert good in listed.stdout and all(b in listed.stdout for b in broken)

    check = nbbatch("check")
    assert "Traceback" not in check.stderr, check.stderr
    assert check.returncode == 5
    lines = check.stdout.splitlines()
    for job_id in broken:
        (line,) = [line for line in lines if line.startswith(job_id)]
        assert "unreadable" in line and f"nbbatch forget {job_id} --force" in line
    assert not [line for line in lines if line.startswith(good)]

    out = tmp_path / "out"
    out.mkdir()
    collected = nbbatch("collect", "--finished", "--out-dir", str(out))
    assert collected.returncode == 0, collected.stderr
    assert "Traceback" not in collected.stderr
    assert (out / f"{good}.parquet").exists()
    assert len(pd.read_parquet(out / f"{good}.parquet")) == 3
    assert f"{broken[1]} not collected" in collected.stderr  # the running one is not due

    listing = views.listing()
    by_id = {j["id"]: j for j in listing["jobs"]}
    assert by_id[good]["status"] == "completed"
    assert by_id[broken[0]]["status"] == "running"  # listed from the ledger alone
    assert by_id[broken[1]]["status"] == "unreadable"
    assert f"nbbatch forget {broken[1]} --force" in by_id[broken[1]]["alert"]

    status = nbbatch("status", broken[0])
    assert status.returncode == 1 and "Traceback" not in status.stderr
    assert f"nbbatch forget {broken[0]} --force" in status.stderr

    # The way out the messages give works on a broken job.
    for job_id in broken:
        gone = nbbatch("forget", job_id, "--force")
        assert gone.returncode == 0, gone.stderr
    assert nbbatch("check").returncode == 0


class Verdict(pydantic.BaseModel):
    label: str
    confidence: float


def test_preview_takes_a_pydantic_response_format_as_submit_does():
    schema = Verdict.model_json_schema()
    shown = nb.preview(DF, "{text}", model="gpt-4o-mini", provider="local", response_format=Verdict)
    as_dict = nb.preview(DF, "{text}", model="gpt-4o-mini", provider="local",
                         response_format=schema)  # fmt: skip
    assert shown.estimate.rows == as_dict.estimate.rows == 3
    assert list(shown["prompt"]) == ["a", "b", "c"]
    job = nb.submit(DF, "{text}", model="gpt-4o-mini", provider="local", response_format=Verdict,
                    wait=True, progress=False, display=False)  # fmt: skip
    assert job.counts["succeeded"] == 3
    # The same request: its answers are recognised as reusable, so nothing is to pay.
    again = nb.preview(DF, "{text}", model="gpt-4o-mini", provider="local",
                       response_format=Verdict)  # fmt: skip
    assert again.estimate.rows == 0 and "3 requests already answered" in again.estimate.note


# ---------------------------------------------------------------- the context window
HUGE = pd.DataFrame({"text": ["short", "x" * 3_000_000, "fine"]}, index=[5, 6, 7])
TOO_LONG = "prompt of ~750K tokens exceeds gpt-4o-mini's 128K context window"


def test_a_cell_beyond_the_context_window_is_skipped_with_its_reason_before_paying():
    shown = nb.preview(HUGE, "{text}", model="gpt-4o-mini")
    assert shown.estimate.rows == 2
    assert "1 row is skipped (1 over gpt-4o-mini's context window)" in shown.estimate.summary()
    job = nb.submit(HUGE, "{text}", model="gpt-4o-mini", provider="local", wait=True,
                    progress=False, display=False)  # fmt: skip
    assert job.counts["succeeded"] == 2 and job.counts["skipped"] == 1
    out = job.merge(HUGE)  # the rows are checked against the same limit
    assert out.loc[6, "response_status"] == "skipped"
    assert TOO_LONG in out.loc[6, "response_error"]
    # A model with a larger window takes it.
    wide = nb.preview(HUGE, "{text}", model="gemini-2.5-flash")
    assert wide.estimate.rows == 3


def test_a_row_near_the_window_is_left_to_the_provider():
    # ~135K tokens by the four-characters estimate against a 128K window: the estimate
    # may overcount, and a refused request costs nothing, so the row is not skipped.
    near = pd.DataFrame({"text": ["short", "w " * 270_000]})
    shown = nb.preview(near, "{text}", model="gpt-4o-mini")
    assert shown.estimate.rows == 2 and "skipped" not in shown.estimate.summary()


def test_a_streamed_table_skips_rows_beyond_the_context_window_too(tmp_path):
    path = tmp_path / "huge.parquet"
    HUGE.reset_index(drop=True).to_parquet(path)
    shown = nb.preview(str(path), "{text}", model="gpt-4o-mini")
    assert shown.estimate.rows == 2 and "over gpt-4o-mini's context window" in shown.estimate.note
    with pytest.raises(nb.InputError, match="none of the 1 rows would be sent: prompt of ~200"):
        nb.submit(pd.DataFrame({"text": ["y" * 800_000]}), "{text}", model="gpt-4o-mini",
                  provider="local")  # fmt: skip
    assert nb.jobs().empty
