"""The live panel in a real JupyterLab, in headless Chromium.

Runs ``notebooks/panel_demo.ipynb`` (an emulator with a quarter of the rows failing
once, a submit cell that ends with ``job``, and a cell that only prints a marker) and
checks, in the rendered page:

1. progress moves with the job (the test drives the emulator's clock, so no check
   depends on the machine's speed): the bar shows rows done at the provider before any is
   collected, in rows, with thousands separators and no ETA without a measured rate;
2. nothing stale: no text line under the panel, the failure alert gone and kept as
   history after a successful "Resubmit failed";
3. the notebook JupyterLab saves holds the final state (the panel's output was updated
   from the background poller), and its ``nbconvert --to html`` export shows the static
   summary with no widget manager to download;
4. the finished panel stays compact and reads at 640 px: result columns first, nothing
   sticking out;
6. error text on the failed-row tint meets WCAG AA in light and dark, from computed styles,
   and the tint does not mix with the table's stripes.

Screenshots go to ``ARTIFACTS``; the finished panel (with its highlighted failures) is
copied to ``docs/panel.png`` when ``NBBATCH_UPDATE_DOCS=1`` is set, so an ordinary test
run leaves the work tree clean.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from nbbatch import styling

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
BAR = """() => {
  const b = document.querySelector('.nbbatch-panel .nbbatch-bar');
  return b ? {done: +b.dataset.done, ready: +b.dataset.ready, total: +b.dataset.total,
              state: b.dataset.state} : null;
}"""
RED_ROWS = """(red) => {
  const rows = new Set();
  for (const td of document.querySelectorAll('.nbbatch-preview td')) {
    if (getComputedStyle(td).backgroundImage.includes(red)) rows.add(td.parentElement);
  }
  return rows.size;
}"""
# The computed colours of the first failed row's error cell: text, tint, and page under it.
ERROR_CELL_COLOURS = """() => {
  for (const td of document.querySelectorAll('.nbbatch-preview td')) {
    if (td.textContent.trim() === 'failed') {
      const err = td.nextElementSibling, s = getComputedStyle(err);
      const tint = s.backgroundImage.match(/rgba?\\([^)]*\\)/)[0];
      const stripe = getComputedStyle(err.parentElement).backgroundColor;
      return {text: s.color, tint: tint, page: s.backgroundColor, stripe: stripe,
              weight: s.fontWeight};
    }
  }
  return null;
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
# Whether the preview's result columns (status and error included) are in view.
RESULT_COLUMNS_VISIBLE = """() => {
  const panel = document.querySelector('.nbbatch-panel').getBoundingClientRect();
  const heads = [...document.querySelectorAll('.nbbatch-preview-table th.col_heading')];
  return heads.slice(0, 3).map(
    th => [th.textContent, th.getBoundingClientRect().right <= panel.right]);
}"""


def _change_theme(page, theme: str, light: bool) -> None:
    page.evaluate(
        f"window.jupyterapp.commands.execute('apputils:change-theme', {{theme: '{theme}'}})"
    )
    flag = "true" if light else "false"
    page.wait_for_selector(f"body[data-jp-theme-light='{flag}']", state="attached", timeout=20_000)
    page.wait_for_timeout(500)  # let the theme's CSS settle before measuring


def _check_contrast(page, theme: str) -> None:
    colours = page.evaluate(ERROR_CELL_COLOURS)
    assert colours, "no failed row in the preview"
    ratio = styling.contrast(colours["text"], colours["tint"], colours["page"])
    assert ratio >= 4.5, (theme, ratio, colours)
    assert int(colours["weight"]) >= 600
    # The page colour under the tint is opaque: the row's stripe cannot show through.
    assert styling._rgba(colours["page"])[3] == 1.0, colours


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
        # The emulator's clock stands still until this test moves it (_set_clock): the
        # job is still running, however slow the machine, while these are checked.
        expect(panel.locator(".nbbatch-count-pending b")).to_have_text(str(ROWS))
        expect(panel.locator(".nbbatch-cost")).to_contain_text("estimate")
        # The submit cell ends with `job`: one output (the panel), no stale line under it.
        submit_cell = page.locator(".jp-CodeCell", has=panel)
        expect(submit_cell.locator(".jp-Cell-outputArea > .jp-OutputArea-child")).to_have_count(1)
        assert "rows done" not in submit_cell.locator(".jp-Cell-outputArea").inner_text()

        # 1. Progress moves during processing, before any row is collected: the emulator
        # halfway through processing (1 s validating, then 3 of 6 s), and held there.
        _set_clock(lab, "4")
        page.wait_for_function(
            f"() => {{ const b = ({BAR})(); return b && b.ready > 0 && b.done === 0; }}",
            timeout=30_000,
        )
        expect(panel.locator(".nbbatch-percent")).to_contain_text("done at the provider")
        expect(panel.locator(".nbbatch-count-ready")).to_be_visible()
        assert "ETA" not in panel.locator(".nbbatch-timing").inner_text() or (
            "at the provider's pace" in panel.locator(".nbbatch-timing").inner_text()
        )
        panel.screenshot(path=str(ARTIFACTS / "panel-processing.png"))
        _set_clock(lab, "run")  # from here on the emulator runs in real time

        # The job ends with the emulator's failures, counted and highlighted.
        page.wait_for_function(f"() => ({BAR})().done === {ROWS}", timeout=40_000)
        expect(panel.locator(".nbbatch-summary")).to_contain_text("Done:", timeout=10_000)
        expect(panel.locator(".nbbatch-count-failed b")).to_have_text(str(FAILING))
        expect(panel.locator(".nbbatch-count-succeeded b")).to_have_text(str(ROWS - FAILING))
        assert page.evaluate(BAR)["state"] == "warning"
        expect(panel.locator(".nbbatch-preview-table")).to_be_visible()
        assert page.evaluate(RED_ROWS, RED) == FAILING
        # The failure rate is above the alert threshold: a current note says so.
        expect(panel.locator(".nbbatch-note-warning")).to_contain_text("above the alert")
        expect(panel.locator("button.nbbatch-resubmit")).to_be_enabled()
        assert page.locator("text=Error displaying widget").count() == 0
        # 4. A panel, not a page: a few rows, compact at 1200 px.
        height = panel.bounding_box()["height"]
        assert height < 1100, height
        _check_contrast(page, "light")
        panel.screenshot(path=str(ARTIFACTS / "panel-failures.png"))
        page.screenshot(path=str(ARTIFACTS / "lab-failures.png"))
        if os.environ.get("NBBATCH_UPDATE_DOCS"):  # refresh the README's screenshot on demand
            DOCS.mkdir(exist_ok=True)
            shutil.copy(ARTIFACTS / "panel-failures.png", DOCS / "panel.png")

        # 6. The same panel in JupyterLab's dark theme.
        _change_theme(page, "JupyterLab Dark", light=False)
        assert page.evaluate(RED_ROWS, RED) == FAILING
        _check_contrast(page, "dark")
        panel.screenshot(path=str(ARTIFACTS / "panel-dark.png"))

        # Resubmit failed: only those rows go again, and they succeed; the job then ends
        # in the background, with no cell running.
        panel.locator("button.nbbatch-resubmit").click()
        expect(panel.locator(".nbbatch-count-succeeded b")).to_have_text(str(ROWS), timeout=40_000)
        expect(panel.locator(".nbbatch-count-failed b")).to_have_text("0")
        page.wait_for_function(f"() => ({BAR})().state === 'success'", timeout=10_000)
        expect(panel.locator(".nbbatch-summary")).to_contain_text(f"all {ROWS} rows succeeded")
        expect(panel.locator(".nbbatch-batches")).to_contain_text("attempt 2")
        expect(panel.locator("button.nbbatch-resubmit")).to_be_disabled()
        assert page.evaluate(RED_ROWS, RED) == 0
        # 2. Nothing stale: the alert is no longer shown as current, only as history.
        expect(panel.locator(".nbbatch-note")).to_have_count(0)
        expect(panel.locator(".nbbatch-history")).to_contain_text("above the alert")
        expect(panel.locator(".nbbatch-message")).to_have_text("")
        assert page.locator("text=Error displaying widget").count() == 0
        expect(page.locator(".nbbatch-panel")).to_have_count(1)
        panel.screenshot(path=str(ARTIFACTS / "panel-dark-succeeded.png"))

        # 3. What JupyterLab saves is the final state, and its HTML export shows it.
        page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
        saved_path = lab.root / "panel_demo.ipynb"
        page.wait_for_function(
            "() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=20_000
        )
        saved = json.loads(saved_path.read_text())
        outputs = [
            o for c in saved["cells"] if "nb.submit(" in "".join(c["source"]) for o in c["outputs"]
        ]
        assert len(outputs) == 1, outputs
        text = "".join(outputs[0]["data"]["text/plain"])
        assert f"completed: {ROWS}/{ROWS} rows done - {ROWS} succeeded" in text, text
        html_out = "".join(outputs[0]["data"]["text/html"])
        assert f"Done: all {ROWS} rows succeeded" in html_out
        _check_export(saved_path)

        # 4. A narrow notebook (640 px): everything wraps, the result columns are in view.
        _change_theme(page, "JupyterLab Light", light=True)
        page.evaluate("window.jupyterapp.shell.collapseLeft()")
        page.set_viewport_size({"width": 640, "height": 2000})
        page.wait_for_timeout(500)
        sticking_out = page.evaluate(WIDER_THAN_PANEL)
        assert sticking_out == [], f"in a narrow column these stick out: {sticking_out}"
        visible = page.evaluate(RESULT_COLUMNS_VISIBLE)
        assert [name for name, _ in visible] == ["sentiment", "sentiment_status", "sentiment_error"]
        assert all(ok for _, ok in visible), visible
        panel.screenshot(path=str(ARTIFACTS / "panel-narrow.png"))
    finally:
        page.screenshot(path=str(ARTIFACTS / "lab-last.png"))
        page.close()


def _set_clock(lab: Lab, value: str) -> None:
    """Move the notebook's emulator clock (see its ``clock``): seconds after its start, or
    "run" for real time. Written whole (a rename), so the emulator never reads half."""
    tmp = lab.root / "emulator-clock.tmp"
    tmp.write_text(value)
    tmp.replace(lab.root / "emulator-clock")


def _check_export(notebook: Path) -> None:
    """``nbconvert --to html`` of the saved notebook shows the static summary (JupyterLab
    saves no widget state by default, so no widget manager is downloaded for it)."""
    import nbformat
    from nbconvert import HTMLExporter

    html, _ = HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))
    (ARTIFACTS / "panel_demo.html").write_text(html)
    assert "nbbatch-static" in html and f"Done: all {ROWS} rows succeeded" in html
    assert 'type="application/vnd.jupyter.widget-view+json"' not in html
