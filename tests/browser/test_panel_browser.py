"""The live panel in a real JupyterLab, in headless Chromium.

Runs ``notebooks/panel_demo.ipynb`` (an emulator with a quarter of the rows failing
once, a submit that shows the panel, and a cell that only prints a marker) and checks,
in the rendered page: the kernel stays free while the job polls, the panel renders, the
bar fills, the counts match the emulator's faults, failed rows are highlighted, and
"Resubmit failed" ends with every row succeeded. Screenshots go to ``ARTIFACTS``; the
finished panel (with its highlighted failures) is copied to ``docs/panel.png`` when
``NBBATCH_UPDATE_DOCS=1`` is set, so an ordinary test run leaves the work tree clean.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .conftest import ARTIFACTS, Lab

pytestmark = pytest.mark.slow

DOCS = Path(__file__).parents[2] / "docs"
ROWS, FAILING = 12, 3  # the notebook's rows; error_rate=0.25 fails exactly 3 of them
RED = "rgba(229, 57, 53, 0.22)"  # styling.ROW_COLOURS["failed"], as the browser computes it

KERNEL_IDLE = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return k && k.status === 'idle';
}"""
BAR_WIDTH = """() => {
  const b = document.querySelector('.nbbatch-progress .progress-bar');
  return b ? b.style.width : null;
}"""
RED_ROWS = """(red) => {
  const rows = new Set();
  for (const td of document.querySelectorAll('.nbbatch-preview td')) {
    if (getComputedStyle(td).backgroundColor === red) rows.add(td.parentElement);
  }
  return rows.size;
}"""

# Elements reaching past the panel's right edge, except inside the tables' own
# scrolling boxes (a wide DataFrame scrolls sideways; the panel itself must not).
WIDER_THAN_PANEL = """() => {
  const panel = document.querySelector('.nbbatch-panel');
  const right = panel.getBoundingClientRect().right + 1;
  const out = [];
  for (const el of panel.querySelectorAll('*')) {
    if (el.closest('.nbbatch-preview-table, .nbbatch-failed-table')) continue;
    const r = el.getBoundingClientRect();
    if (r.width && r.right > right) {
      out.push(`${el.tagName}.${el.className} +${Math.round(r.right - right)}px`);
    }
  }
  return out.slice(0, 10);
}"""


def test_panel_runs_live_in_jupyterlab(lab: Lab, browser) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1200, "height": 2000})
    try:
        page.goto(lab.notebook_url("panel_demo.ipynb"))
        page.wait_for_function(KERNEL_IDLE, timeout=60_000)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")

        panel = page.locator(".nbbatch-panel")
        expect(panel).to_be_visible(timeout=30_000)
        # The cell after submit printed while the job was still running: the kernel is free.
        marker = page.locator(".jp-OutputArea-output", has_text="KERNEL-FREE")
        expect(marker).to_be_visible(timeout=20_000)
        assert f"KERNEL-FREE running {ROWS} pending" in marker.inner_text()
        assert page.evaluate(BAR_WIDTH) != "100%"
        expect(panel.locator(".nbbatch-count-pending b")).to_have_text(str(ROWS))
        expect(panel.locator(".nbbatch-cost")).to_contain_text("estimate")

        # The job ends with the emulator's failures, counted and highlighted.
        page.wait_for_function(f"() => ({BAR_WIDTH})() === '100%'", timeout=40_000)
        expect(panel.locator(".nbbatch-summary")).to_contain_text("Done:", timeout=10_000)
        expect(panel.locator(".nbbatch-count-failed b")).to_have_text(str(FAILING))
        expect(panel.locator(".nbbatch-count-succeeded b")).to_have_text(str(ROWS - FAILING))
        expect(panel.locator(".nbbatch-progress .progress-bar-warning")).to_have_count(1)
        expect(panel.locator(".nbbatch-preview-table")).to_be_visible()
        assert page.evaluate(RED_ROWS, RED) == FAILING
        expect(panel.locator("button.nbbatch-resubmit")).to_be_enabled()
        assert page.locator("text=Error displaying widget").count() == 0
        panel.screenshot(path=str(ARTIFACTS / "panel-failures.png"))
        page.screenshot(path=str(ARTIFACTS / "lab-failures.png"))
        if os.environ.get("NBBATCH_UPDATE_DOCS"):  # refresh the README's screenshot on demand
            DOCS.mkdir(exist_ok=True)
            shutil.copy(ARTIFACTS / "panel-failures.png", DOCS / "panel.png")

        # The same panel in JupyterLab's dark theme.
        page.evaluate(
            "window.jupyterapp.commands.execute('apputils:change-theme', "
            "{theme: 'JupyterLab Dark'})"
        )
        page.wait_for_selector(
            "body[data-jp-theme-light='false']", state="attached", timeout=20_000
        )
        page.wait_for_timeout(500)  # let the theme's CSS settle before the picture
        assert page.evaluate(RED_ROWS, RED) == FAILING
        panel.screenshot(path=str(ARTIFACTS / "panel-dark.png"))

        # Resubmit failed: only those rows go again, and they succeed.
        panel.locator("button.nbbatch-resubmit").click()
        expect(panel.locator(".nbbatch-count-succeeded b")).to_have_text(str(ROWS), timeout=40_000)
        expect(panel.locator(".nbbatch-count-failed b")).to_have_text("0")
        expect(panel.locator(".nbbatch-progress .progress-bar-success")).to_have_count(1)
        expect(panel.locator(".nbbatch-summary")).to_contain_text(f"all {ROWS} rows succeeded")
        expect(panel.locator(".nbbatch-batches")).to_contain_text("attempt 2")
        expect(panel.locator("button.nbbatch-resubmit")).to_be_disabled()
        assert page.evaluate(RED_ROWS, RED) == 0
        assert page.locator("text=Error displaying widget").count() == 0
        panel.screenshot(path=str(ARTIFACTS / "panel-dark-succeeded.png"))

        # A narrow column: everything wraps, nothing is cut off.
        page.evaluate(
            "window.jupyterapp.commands.execute('apputils:change-theme', "
            "{theme: 'JupyterLab Light'})"
        )
        page.wait_for_selector("body[data-jp-theme-light='true']", state="attached", timeout=20_000)
        page.evaluate("window.jupyterapp.shell.collapseLeft()")
        page.set_viewport_size({"width": 520, "height": 2000})
        page.wait_for_timeout(500)
        sticking_out = page.evaluate(WIDER_THAN_PANEL)
        assert sticking_out == [], f"in a narrow column these stick out: {sticking_out}"
        panel.screenshot(path=str(ARTIFACTS / "panel-narrow.png"))
    finally:
        page.screenshot(path=str(ARTIFACTS / "lab-last.png"))
        page.close()
