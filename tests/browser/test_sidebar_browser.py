"""The "Batch jobs" sidebar in a real JupyterLab, in headless Chromium.

One JupyterLab start (the module's ``lab`` fixture, whose server also reads the
kernels' ledger through ``NBBATCH_HOME``). ``notebooks/sidebar_demo.ipynb`` submits a
quick job (12 rows on an emulator failing a quarter of them) and a slow one (its batch
in progress for ten minutes). The test checks, in the rendered page and on disk:

1. the sidebar is installed with nbbatch (no build step in the test) and lists the
   notebook's jobs with where they came from, provider, model and rows;
2. the quick job moves to completed with no reload, with its counts and errors;
3. Cancel (after its confirmation) cancels the slow job at the emulator, from the
   server process;
4. Collect writes the results as Parquet beside the notebook; Insert puts
   ``nb.attach("...")`` into the notebook;
5. after the kernel restarts, every job is still listed, as it ended;
6. the routes refuse a request without the server's token;
7. a job no kernel polls is checked by the sidebar itself when it is shown (poll only)
   and moves to completed; each running job says when it was last checked; a job whose
   check fails (its emulator gone) is marked, with the error.

Screenshots go to ``ARTIFACTS``; the sidebar beside the panel is copied to
``docs/sidebar.png`` when ``NBBATCH_UPDATE_DOCS=1`` is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from nbbatch.labext.checks import CHECK_EVERY, FRESH

from .conftest import ARTIFACTS, Lab

pytestmark = pytest.mark.slow

DOCS = Path(__file__).parents[2] / "docs"
NOTEBOOK = "sidebar_demo.ipynb"
ROWS, FAILING, SLOW_ROWS = 12, 3, 5  # error_rate=0.25 with seed=1 fails exactly 3 rows

KERNEL_IDLE = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return k && k.status === 'idle';
}"""
KERNEL_ID = """() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.id"""
#: Bumped by the test before a restart; the sidebar's list is re-rendered on every fetch,
#: so a job node without the mark proves a fetch happened since.
MARK_LIST = """() => document.querySelectorAll('.nbbatch-job').forEach(e => e.dataset.seen = '1')"""
FRESH_LIST = """() => { const items = [...document.querySelectorAll('.nbbatch-job')];
  return items.length > 0 && items.every(e => !e.dataset.seen); }"""


def _job(page, job_id: str):
    return page.locator(f'.nbbatch-job[data-job-id="{job_id}"]')


def _ids(page) -> tuple[str, str]:
    """The two job ids the notebook printed."""
    out = page.locator(".jp-OutputArea-output", has_text="SUBMITTED")
    words = out.inner_text().split()
    return words[1], words[2]


def _unpolled_ids(page) -> tuple[str, str]:
    """The ids of the two jobs no kernel polls, once the first has ended at its emulator."""
    from playwright.sync_api import expect

    out = page.locator(".jp-OutputArea-output", has_text="UNPOLLED")
    expect(out).to_be_visible(timeout=90_000)
    words = out.inner_text().split()
    return words[1], words[2]


def test_sidebar_lists_follows_and_acts_on_jobs(lab: Lab, browser) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # Clipboard permissions: Copy is checked by reading the clipboard back.
    page = browser.new_page(
        viewport={"width": 1400, "height": 1000}, permissions=["clipboard-read", "clipboard-write"]
    )
    try:
        page.goto(lab.notebook_url(NOTEBOOK))
        page.wait_for_function(KERNEL_IDLE, timeout=60_000)

        # 1. The sidebar is there, installed with nbbatch, and lists nothing yet.
        tab = page.locator('.jp-SideBar [title="Batch jobs"]')
        expect(tab).to_have_count(1)
        page.evaluate("window.jupyterapp.commands.execute('nbbatch:show-jobs')")
        sidebar = page.locator("#nbbatch-jobs")
        expect(sidebar).to_be_visible()
        expect(sidebar.locator(".nbbatch-jobs-header")).to_have_text("Batch jobs")
        expect(sidebar.locator(".nbbatch-jobs-message")).to_contain_text("No batch jobs")

        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        expect(page.locator(".jp-OutputArea-output", has_text="SUBMITTED")).to_be_visible(
            timeout=30_000
        )
        quick_id, slow_id = _ids(page)
        quick, slow = _job(page, quick_id), _job(page, slow_id)
        # The idle sidebar looks every 5 s; a loaded machine may take longer to answer.
        expect(quick).to_be_visible(timeout=30_000)
        expect(slow).to_be_visible(timeout=30_000)
        for item, rows in ((quick, ROWS), (slow, SLOW_ROWS)):
            expect(item.locator(".nbbatch-job-origin")).to_have_text(NOTEBOOK)
            expect(item.locator(".nbbatch-job-model")).to_have_text("openai · gpt-4o-mini")
            expect(item.locator(".nbbatch-job-rows")).to_have_text(f"{rows} rows")
        expect(slow).to_have_attribute("data-status", "running")
        sidebar.screenshot(path=str(ARTIFACTS / "sidebar-running.png"))

        # 2. The quick job completes in the kernel's background poller; the sidebar
        # follows with no reload: counts, bar, failures and their errors.
        expect(quick).to_have_attribute("data-status", "completed", timeout=40_000)
        expect(quick.locator(".nbbatch-job-counts")).to_have_text(
            f"{ROWS - FAILING} succeeded · {FAILING} failed"
        )
        expect(quick.locator(".nbbatch-job-bar")).to_have_attribute("data-done", str(ROWS))
        expect(quick.locator(".nbbatch-seg-failed")).to_have_count(1)
        expect(quick.locator(".nbbatch-job-alert")).to_contain_text("above the alert")
        expect(quick.locator(".nbbatch-job-cancel")).to_be_disabled()
        expect(quick.locator(".nbbatch-job-checked")).to_have_count(0)  # ended: nothing to check
        quick.locator(".nbbatch-job-errors-button").click()
        errors = quick.locator(".nbbatch-job-errors-table tr.nbbatch-error-failed")
        expect(errors).to_have_count(FAILING)
        assert errors.first.locator("td").nth(2).inner_text().strip(), "an error without text"

        expect(page.locator(".nbbatch-panel .nbbatch-summary").first).to_contain_text("Done:")
        page.screenshot(path=str(ARTIFACTS / "lab-sidebar.png"))
        if os.environ.get("NBBATCH_UPDATE_DOCS"):  # refresh the README's screenshot on demand
            shutil.copy(ARTIFACTS / "lab-sidebar.png", DOCS / "sidebar.png")

        # 7. Jobs no kernel polls. The first has ended at its emulator (the notebook
        # waited for that); shown again, the sidebar asks the server to check the running
        # jobs at once, and the server's poll finds it ended and collects it. A job some
        # process checked in the last FRESH seconds is left to that process: this one was
        # checked while its batch was still in progress (the kernel sending it, or the
        # sidebar's own check while it was visible), so the server may skip it until it is
        # no longer fresh and then check it on the sidebar's next periodic request; and a
        # request made while another sweep runs does nothing. Allow for both.
        checked_within_ms = int((FRESH + CHECK_EVERY) * 1000) + 30_000
        unpolled_id, lost_id = _unpolled_ids(page)
        unpolled, lost = _job(page, unpolled_id), _job(page, lost_id)
        expect(sidebar.locator(".nbbatch-job")).to_have_count(4, timeout=30_000)
        page.evaluate("window.jupyterapp.shell.collapseLeft()")
        page.evaluate("window.jupyterapp.commands.execute('nbbatch:show-jobs')")
        expect(unpolled).to_have_attribute("data-status", "completed", timeout=checked_within_ms)
        expect(unpolled.locator(".nbbatch-job-counts")).to_have_text("4 succeeded")
        # The slow job, polled by its kernel, says when its provider last answered.
        expect(slow.locator(".nbbatch-job-checked")).to_have_text(
            re.compile(r"^checked \d+[smhd].* ago$")
        )
        expect(slow.locator(".nbbatch-mark-stale")).to_have_count(0)
        # Every check of the job whose emulator is gone fails: marked, with the reason.
        expect(lost).to_have_attribute("data-status", "running")
        expect(lost.locator(".nbbatch-mark-stale")).to_have_text(
            "check failed", timeout=checked_within_ms
        )
        expect(lost).to_have_attribute("data-stale", "1")
        expect(lost.locator(".nbbatch-job-check-error")).to_contain_text("Last check failed")
        sidebar.screenshot(path=str(ARTIFACTS / "sidebar-checked.png"))
        listed = {j["id"]: j for j in _get(lab, "jobs")["jobs"]}
        assert listed[unpolled_id]["checked"] is not None
        assert listed[lost_id]["stale"] and listed[lost_id]["check_error"]

        # 3. Cancel asks first; "Keep running" changes nothing, "Cancel job" cancels.
        slow.locator(".nbbatch-job-cancel").click()
        dialog = page.locator(".jp-Dialog")
        expect(dialog).to_contain_text("Cancel this batch job?")
        dialog.get_by_role("button", name="Keep running").click()
        expect(dialog).to_have_count(0)
        expect(slow).to_have_attribute("data-status", "running")
        slow.locator(".nbbatch-job-cancel").click()
        page.locator(".jp-Dialog").get_by_role("button", name="Cancel job").click()
        expect(slow).to_have_attribute("data-status", "cancelled", timeout=30_000)
        counts = slow.locator(".nbbatch-job-counts").inner_text()
        # (On failure, say how the rows ended: a kernel and the server both collect it.)
        assert counts == f"{SLOW_ROWS} cancelled", (counts, _get(lab, f"jobs/{slow_id}/failed"))

        # 4. Collect: the results beside the notebook, one line per row.
        quick.locator(".nbbatch-job-collect").click()
        expect(page.locator(".jp-toast-message", has_text="rows written to")).to_be_visible(
            timeout=20_000
        )
        written = pd.read_parquet(lab.root / f"{quick_id}.parquet")
        assert len(written) == ROWS
        assert (written["sentiment_status"] == "failed").sum() == FAILING
        # Copy: nb.attach("...") on the system clipboard.
        quick.locator(".nbbatch-job-copy").click()
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied == f'nb.attach("{quick_id}")', copied
        # Insert: nb.attach("...") as a new cell of the active notebook.
        quick.locator(".nbbatch-job-insert").click()
        active = page.locator(".jp-Notebook .jp-Cell.jp-mod-active .jp-InputArea-editor")
        expect(active).to_contain_text(f'nb.attach("{quick_id}")')

        # 5. A kernel restart ends the session's jobs' pollers; the list does not care.
        before = page.evaluate(KERNEL_ID)
        page.evaluate(MARK_LIST)
        page.evaluate(
            "window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.restart()"
        )
        page.wait_for_function(KERNEL_IDLE, timeout=60_000)
        assert page.evaluate(KERNEL_ID) == before  # restarted, not replaced
        # Shown again, the sidebar asks the server at once (with every job ended it
        # would otherwise ask again within 5 s).
        page.evaluate("window.jupyterapp.shell.collapseLeft()")
        page.evaluate("window.jupyterapp.commands.execute('nbbatch:show-jobs')")
        page.wait_for_function(FRESH_LIST, timeout=30_000)
        expect(sidebar.locator(".nbbatch-job")).to_have_count(4)
        expect(quick).to_have_attribute("data-status", "completed")
        expect(slow).to_have_attribute("data-status", "cancelled")
        assert page.locator("text=Error displaying widget").count() == 0
        sidebar.screenshot(path=str(ARTIFACTS / "sidebar-after-restart.png"))
    finally:
        page.screenshot(path=str(ARTIFACTS / "lab-sidebar-last.png"))
        page.close()

    _check_routes(lab, quick_id)


def _get(lab: Lab, path: str) -> object:
    """A route's JSON, with the server's token."""
    url = f"{lab.url}/nbbatch/api/{path}"
    request = urllib.request.Request(url, headers={"Authorization": f"token {lab.token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _status(request: urllib.request.Request | str) -> int:
    """The HTTP status of ``request`` (its response closed)."""
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.close()
        return int(error.code)


def _check_routes(lab: Lab, job_id: str) -> None:
    """6. The JSON routes answer only with the server's token."""
    url = f"{lab.url}/nbbatch/api/jobs"
    assert _status(url) == 403
    assert _status(urllib.request.Request(f"{url}/{job_id}/cancel", data=b"{}")) == 403
    assert _status(urllib.request.Request(f"{url}/{job_id}/collect", data=b"{}")) == 403
    assert _status(f"{url}/{job_id}/failed") == 403
    assert _status(urllib.request.Request(f"{lab.url}/nbbatch/api/check", data=b"{}")) == 403
    assert _status(urllib.request.Request(url, headers={"Authorization": "token wrong"})) == 403

    data = _get(lab, "jobs")
    assert isinstance(data, dict) and data["version"] == 1
    listed = {j["id"]: j for j in data["jobs"]}
    assert set(listed[job_id]) >= {"id", "origin", "provider", "model", "rows", "counts",
                                   "status", "created", "age", "cost", "overdue", "alert",
                                   "attach"}  # fmt: skip
    assert listed[job_id]["counts"]["failed"] == FAILING
    # With the token, a check answers what it did.
    check = urllib.request.Request(
        f"{lab.url}/nbbatch/api/check", data=b"{}", headers={"Authorization": f"token {lab.token}"}
    )
    with urllib.request.urlopen(check, timeout=60) as response:
        assert set(json.load(response)) == {"checked", "failed", "busy"}
