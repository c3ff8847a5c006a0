"""A ledger written by the previous release (rows in SQLite) opens, migrates and attaches.

The fixture in ``tests/data/ledger-m003`` was recorded by the release before migration
m004 with ``tests/data/make_ledger_m003.py``: four finished jobs (deduplicated, skipped,
failed, reused and structured rows), with what each one merged to at the time.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import openai
import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator

FIXTURE = Path(__file__).parent / "data" / "ledger-m003"


@pytest.fixture
def old_home(nbbatch_home: Path) -> Path:
    shutil.copytree(FIXTURE / "home", nbbatch_home)
    return nbbatch_home


def _records(expected: dict) -> pd.DataFrame | pd.Series:
    frame = pd.DataFrame(expected["data"]).set_index("index")
    frame.index.name = expected["index_name"]
    # Job b was a Series named "text" sent with the "{}" placeholder.
    return frame["text"] if expected["name"] == "b" else frame


def _plain(column: pd.Series) -> list:
    return [None if v is None or (isinstance(v, float) and v != v) else v for v in column]


def test_a_ledger_from_the_previous_release_migrates_and_every_job_attaches(old_home):
    expected = json.loads((FIXTURE / "expected.json").read_text())["jobs"]
    jobs = nb.jobs()  # opening the ledger runs the migration
    assert sorted(jobs["id"]) == sorted(j["id"] for j in expected)
    db = sqlite3.connect(old_home / "ledger.sqlite3")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    migrations = [r[0] for r in db.execute("SELECT name FROM migrations ORDER BY at")]
    db.close()
    assert "rows" not in tables and "changes" in tables
    # every later migration ran, in order, after the ones this release's ledger had
    later = ["m004_rows_to_arrow", "m005_health", "m006_origin", "m007_stages"]
    assert migrations[migrations.index(later[0]) :][: len(later)] == later
    assert "stages" in tables
    assert not jobs["overdue"].any()  # jobs from before deadlines have none
    for exp in expected:
        listed = jobs.set_index("id").loc[exp["id"]]
        assert listed["status"] == "completed"
        assert listed["succeeded"] == exp["counts"]["succeeded"]
        job = nb.attach(exp["id"])
        assert job.counts == exp["counts"]
        data = _records(exp)
        with pytest.raises(nb.MergeError):
            job.merge(data.iloc[::-1].set_axis(data.index))  # rows moved under labels
        merged = job.merge(data).reset_index(names="index")
        want = pd.DataFrame(exp["merged"])
        assert list(merged.columns) == list(want.columns)
        for column in want.columns:
            assert _plain(merged[column]) == _plain(want[column]), (exp["name"], column)


def _expected() -> dict[str, dict]:
    """The fixture ledger's jobs as expected.json records them, by name."""
    return {j["name"]: j for j in json.loads((FIXTURE / "expected.json").read_text())["jobs"]}


@contextmanager
def _client_at_its_address(job: dict) -> Iterator[openai.OpenAI]:
    """An OpenAI client on an emulator at the address ``job`` was recorded with (its
    requests are identical only there)."""
    port = urlparse(nb.attach(job["id"])._record["base_url"]).port
    with emulator.start(processing_seconds=0.05, port=port) as emu:
        with openai.OpenAI(base_url=emu.openai_base_url, api_key="k", max_retries=0) as client:
            yield client


def test_a_migrated_job_still_feeds_reuse_and_resubmission(old_home):
    first = _expected()["a"]
    with _client_at_its_address(first) as client:
        old = nb.attach(first["id"], client=client)
        assert old.counts["failed"] == 1
        old.resubmit_failed()  # the row failed by the emulator fails again: still one row
        old.wait(timeout=30, progress=False)
        assert old.counts["failed"] == 1 and old.counts["succeeded"] == 10
        # A new job over the same rows reuses the migrated answers instead of paying.
        data = _records(first)
        again = nb.submit(
            data, "Answer briefly: {text}", model="gpt-4o-mini", client=client, output="answer",
            retries=0, force=True,
        )  # fmt: skip
        again.wait(timeout=30, progress=False)
    assert again.counts["reused"] == 10
    merged = again.merge(data)
    assert merged["answer"].tolist()[:3] == [r["answer"] for r in first["merged"][:3]]


def test_a_migrated_job_can_be_escalated_and_its_old_rows_keep_their_model(old_home):
    """m007 gives every change and batch of an old job stage 0: the job escalates like a
    new one, and merge names each row's model."""
    first = _expected()["a"]
    with _client_at_its_address(first) as client:
        old = nb.attach(first["id"], client=client)
        n = old.counts["total"]
        chosen = [i < 3 for i in range(n)]
        old.escalate(model="gpt-4o", where=chosen)
        old.wait(timeout=30, progress=False)
    merged = old.merge(_records(first))
    models = merged["answer_model"].tolist()
    succeeded = merged["answer_status"].eq("succeeded").tolist()
    assert models[:3] == ["gpt-4o"] * 3
    assert all(m == "gpt-4o-mini" for m, ok in zip(models[3:], succeeded[3:], strict=True) if ok)
    assert [s["n_rows"] for s in old.stages] == [3]
