"""The JupyterLab sidebar's server side, without a browser: the JSON view of the ledger
(``nbbatch.labext.views``) and the actions, on the emulator. The routes themselves, their
authentication and the sidebar are tested in ``tests/browser/test_sidebar_browser.py``."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator
from nbbatch._ledger import default as ledger
from nbbatch.labext import handlers, views

from .conftest import openai_client
from .test_durable import emu_process  # noqa: F401

REVIEWS = pd.DataFrame({"review": [f"review {i}" for i in range(12)]})
PROMPT = "Classify: {review}"


@pytest.fixture
def notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A notebook under the server's root (``tmp_path``), as its kernel sees itself."""
    path = tmp_path / "work" / "reviews.ipynb"
    path.parent.mkdir()
    monkeypatch.setenv("JPY_SESSION_NAME", str(path))
    return path


def test_listing_creates_no_ledger(nbbatch_home: Path) -> None:
    view = views.listing()
    assert view["jobs"] == [] and view["ledger"] == str(nbbatch_home / "ledger.sqlite3")
    assert not nbbatch_home.exists()


def test_a_finished_job_is_listed_with_its_origin_counts_cost_and_alert(
    tmp_path: Path, notebook: Path
) -> None:
    with emulator.start(processing_seconds=0.05, error_rate=0.25, seed=1) as server:
        job = nb.submit(REVIEWS, PROMPT, model="gpt-4o-mini", client=openai_client(server),
                        output="label", retries=0, wait=True)  # fmt: skip
    view = views.listing(root_dir=str(tmp_path))
    assert view["version"] == views.SCHEMA_VERSION and view["ledger"].endswith("ledger.sqlite3")
    (listed,) = view["jobs"]
    assert listed["id"] == job.id and listed["attach"] == f'nb.attach("{job.id}")'
    assert listed["origin"] == "work/reviews.ipynb"  # relative to the server's root
    assert (listed["provider"], listed["model"], listed["rows"]) == ("openai", "gpt-4o-mini", 12)
    assert listed["status"] == "completed" and not listed["cost_estimated"]
    assert listed["counts"] == {"succeeded": 9, "failed": 3, "expired": 0, "cancelled": 0,
                                "skipped": 0, "pending": 0}  # fmt: skip
    assert listed["cost"] is not None and listed["cost"] > 0
    assert "above the alert threshold" in listed["alert"]
    assert listed["overdue"] is False

    failed = views.failed_view(ledger(), job.id, limit=2)
    assert failed["total"] == 3 and len(failed["rows"]) == 2
    assert all(r["status"] == "failed" and r["error"] for r in failed["rows"])

    with pytest.raises(views.Conflict):
        views.cancel(ledger(), job.id)  # nothing left to cancel: refused, status kept
    assert views.job_view(ledger(), job.id)["status"] == "completed"


def test_collect_writes_parquet_under_the_root_and_nowhere_else(
    tmp_path: Path, notebook: Path
) -> None:
    with emulator.start(processing_seconds=0.05) as server:
        job = nb.submit(REVIEWS, PROMPT, model="gpt-4o-mini", client=openai_client(server),
                        output="label", wait=True)  # fmt: skip
        out = views.collect(ledger(), job.id, str(tmp_path), "work")
    assert out["path"] == f"work/{job.id}.parquet" and out["rows"] == 12 and out["pending"] == 0
    written = pd.read_parquet(tmp_path / out["path"])
    assert written["label_status"].tolist() == ["succeeded"] * 12
    for outside in ("..", "../..", "/etc", "work/../.."):
        with pytest.raises(ValueError, match="outside the server's root"):
            views.collect(ledger(), job.id, str(tmp_path), outside)
    with pytest.raises(ValueError, match="does not exist"):
        views.collect(ledger(), job.id, str(tmp_path), "missing")


def test_a_slow_job_is_overdue_after_a_day_and_cancels_from_the_server(tmp_path: Path) -> None:
    with emulator.start(processing_seconds=600.0) as server:
        job = nb.submit(REVIEWS.head(3), PROMPT, model="gpt-4o-mini",
                        client=openai_client(server))  # fmt: skip
        job.wait_sent()
        (listed,) = views.jobs_view(ledger())["jobs"]
        assert listed["status"] == "running" and not listed["overdue"]
        assert listed["cost_estimated"]
        later = views.jobs_view(ledger(), now=time.time() + 25 * 3600)["jobs"][0]
        assert later["overdue"]
        out = views.cancel(ledger(), job.id)
        assert out["job"]["id"] == job.id
        deadline = time.monotonic() + 20
        while views.job_view(ledger(), job.id)["status"] != "cancelled":
            assert time.monotonic() < deadline, views.job_view(ledger(), job.id)
            views.refresh(ledger(), job.id)
            time.sleep(0.2)
    assert views.job_view(ledger(), job.id)["counts"]["cancelled"] == 3


def test_a_job_past_its_deadline_is_overdue_in_the_sidebar(tmp_path: Path) -> None:
    with emulator.start(processing_seconds=600.0) as server:
        job = nb.submit(REVIEWS.head(3), PROMPT, model="gpt-4o-mini",
                        client=openai_client(server), deadline="1s")  # fmt: skip
        job.wait_sent()
        time.sleep(1.2)
        (listed,) = views.jobs_view(ledger())["jobs"]
        assert listed["status"] == "running" and listed["overdue"]  # as nbbatch check says
        job.cancel()


def test_no_key_reaches_a_response(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "a-key-of-ours-1234567890")
    text = "401: bad key a-key-of-ours-1234567890 (sk-proj-abc***wxyz, sk-ant-api03-XYZXYZXYZ)"
    scrubbed = handlers.scrub(text)
    assert "a-key-of-ours" not in scrubbed and "abc" not in scrubbed and "XYZ" not in scrubbed
    assert scrubbed.startswith("401: bad key ***")


# ------------------------------------------------- the sidebar's own checks (issue 21.10)


def _wait_at_provider(server: emulator.Emulator, job: nb.BatchJob, status: str) -> None:
    """Wait, asking the emulator directly (nbbatch's ledger untouched), until every
    batch of ``job`` has ``status``."""
    client = openai_client(server)
    deadline = time.monotonic() + 60
    while any(client.batches.retrieve(b).status != status for b in job.batch_ids):
        assert time.monotonic() < deadline, "the emulator never ended the batch"
        time.sleep(0.1)


def test_the_sidebar_check_finishes_a_job_no_kernel_polls_and_sends_nothing(
    tmp_path: Path,
) -> None:
    from nbbatch.labext import checks

    with emulator.start(processing_seconds=0.5, error_rate=0.25, seed=1) as server:
        # Outside a notebook, nothing polls the job once it is sent; retries=1 would
        # send its 3 failed rows again if anything applied its policy.
        job = nb.submit(REVIEWS, PROMPT, model="gpt-4o-mini", client=openai_client(server),
                        output="label", retries=1)  # fmt: skip
        job.wait_sent()
        before = views.jobs_view(ledger())["jobs"][0]
        assert before["status"] == "running" and not before["stale"]
        _wait_at_provider(server, job, "completed")
        assert views.jobs_view(ledger())["jobs"][0]["status"] == "running"  # nobody looked

        sidebar = checks.Checks()
        result = sidebar.check_open(ledger())
        assert result == {"checked": [job.id], "failed": [], "busy": False}
        (listed,) = views.jobs_view(ledger(), check_errors=sidebar.errors())["jobs"]
        assert listed["counts"]["succeeded"] == 9 and listed["counts"]["failed"] == 3
        assert listed["checked"] is not None and listed["checked"] <= time.time()
        assert listed["check_error"] is None and not listed["stale"]
        # Only looked: the failed rows were not retried, nothing new was created.
        assert server.stats()["openai_batches_created"] == 1
        assert sorted(ledger().query("SELECT DISTINCT attempt FROM batches")) == [(1,)]
        # Checked a moment ago: the next sweep leaves it alone (and it has ended anyway).
        assert sidebar.check_open(ledger())["checked"] == []


def test_check_now_and_collect_in_the_sidebar_never_send(tmp_path: Path) -> None:
    with emulator.start(processing_seconds=0.2, error_rate=0.25, seed=1) as server:
        job = nb.submit(REVIEWS, PROMPT, model="gpt-4o-mini", client=openai_client(server),
                        output="label", retries=2)  # fmt: skip
        job.wait_sent()
        _wait_at_provider(server, job, "completed")
        out = views.refresh(ledger(), job.id)
        assert out["job"]["counts"]["failed"] == 3
        views.collect(ledger(), job.id, str(tmp_path))
        assert server.stats()["openai_batches_created"] == 1
        # A kernel that attaches applies the job's policy: the retry goes out from there.
        assert nb.attach(job.id).wait(timeout=60, progress=False).counts["succeeded"] == 12
        assert server.stats()["openai_batches_created"] == 2


def test_a_running_job_nobody_checks_is_stale_and_a_failed_check_says_why(
    tmp_path: Path,
) -> None:
    from nbbatch.labext import checks

    sidebar = checks.Checks()
    with emulator.start(processing_seconds=600.0) as server:
        job = nb.submit(REVIEWS.head(3), PROMPT, model="gpt-4o-mini",
                        client=openai_client(server))  # fmt: skip
        job.wait_sent()
        assert sidebar.check_open(ledger())["checked"] == [job.id]
        checked = views.job_view(ledger(), job.id)["checked"]
        now = views.jobs_view(ledger(), now=checked + 60)["jobs"][0]
        assert now["status"] == "running" and not now["stale"] and now["checked_age"] == 60
        later = views.jobs_view(ledger(), now=checked + views.STALE_AFTER + 1)["jobs"][0]
        assert later["stale"] and later["checked_age"] > views.STALE_AFTER
    # The emulator is gone: the check fails, and the job is marked at once, with why.
    assert sidebar.check_open(ledger(), fresh=0) == {
        "checked": [], "failed": [job.id], "busy": False}  # fmt: skip
    (listed,) = views.jobs_view(ledger(), check_errors=sidebar.errors())["jobs"]
    assert listed["stale"] and listed["check_error"]
    assert listed["checked"] == checked  # the last time the provider answered
    # A check that goes well (here: a kernel's) clears the mark.
    assert not views.jobs_view(ledger(), check_errors={job.id: (checked - 1, "old")})["jobs"][0][
        "check_error"
    ]


@pytest.mark.slow
def test_the_sidebar_check_of_a_job_killed_mid_upload_sends_nothing(
    emu_process: str,  # noqa: F811
    nbbatch_home: Path,
    tmp_path: Path,
) -> None:
    from nbbatch.labext import checks

    from .conftest import client_for
    from .test_durable import _Url
    from .test_kill import _at_provider, _killed_child

    # Killed after two of its five batches were created: 30 rows were never sent.
    job_id = _killed_child(emu_process, "openai", "between-chunks", "frame", nbbatch_home)
    client = client_for("openai", _Url(emu_process))
    assert len(_at_provider(client)) == 2
    sidebar = checks.Checks()
    deadline = time.monotonic() + 60
    while views.job_view(ledger(), job_id)["counts"]["succeeded"] < 20:
        assert time.monotonic() < deadline, views.job_view(ledger(), job_id)
        sidebar.check_open(ledger(), fresh=0)
        time.sleep(0.2)
    checked = views.job_view(ledger(), job_id)["checked"]
    # Check again, check now, collect: the rows never sent wait for a kernel to attach.
    assert sidebar.check_open(ledger(), fresh=0)["checked"] == [job_id]
    views.refresh(ledger(), job_id)
    views.collect(ledger(), job_id, str(tmp_path))
    assert len(_at_provider(client)) == 2
    listed = views.job_view(ledger(), job_id)
    assert listed["status"] == "running" and listed["counts"]["pending"] == 30
    # Nothing is open at the provider, so nothing was asked: the time of the last real
    # check stays, and the job goes stale, as nothing moves it on by itself.
    assert listed["checked"] == checked
    later = views.jobs_view(ledger(), now=checked + views.STALE_AFTER + 1)["jobs"][0]
    assert later["stale"]
