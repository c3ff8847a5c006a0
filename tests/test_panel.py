"""The notebook panel as a model: real jobs on the emulator, assertions on widget values.

No Jupyter here: ipywidgets work without a kernel (their comms are dummies), so the
panel's whole behaviour (what it shows, which buttons are enabled, what they call) is
tested directly. The browser test in ``tests/browser`` checks that it also renders.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable

import openai
import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator, panel, styling
from nbbatch.job import BatchJob
from nbbatch.panel import JobPanel

from .conftest import openai_client


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Wait until ``condition()`` holds (the poller updates the panel from its thread)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


def count(p: JobPanel, state: str) -> int:
    """The number the panel shows for ``state``."""
    found = re.search(rf"nbbatch-count-{state}\b[^>]*>{state} <b>([\d,]+)</b>", p.counts.value)
    assert found, f"no {state} count in {p.counts.value!r}"
    return int(found.group(1).replace(",", ""))


def preview_html(p: JobPanel) -> str:
    assert len(p.preview.outputs) == 1
    return p.preview.outputs[0]["data"]["text/html"]


def submit(client: openai.OpenAI, texts: list[str], **kwargs) -> BatchJob:
    """Submit ``texts`` without automatic retries, so failures stay for the panel to show
    (and without the failure-rate warning, which the tests provoke on purpose)."""
    kwargs.setdefault("retries", 0)
    kwargs.setdefault("alert_threshold", None)
    df = pd.DataFrame({"text": texts})
    return nb.submit(
        df, "{text}", model="gpt-4o-mini", client=client, output="out", display=False, **kwargs
    )


def test_panel_follows_a_job_to_success(emu):
    job = submit(openai_client(emu), [f"row {i}" for i in range(12)])
    p = JobPanel(job)
    assert p.progress.bar_style == "info"
    assert count(p, "pending") == 12 and count(p, "total") == 12
    assert "estimate" in p.cost.value  # no usage reported yet
    assert not p.cancel_button.disabled
    assert p.resubmit_button.disabled and p.show_failed_button.disabled
    assert p.summary.value == "" and p.preview.outputs == ()
    assert job.id in p.header.value and "gpt-4o-mini" in p.header.value
    assert "12 rows" in p.header.value
    assert all(b in p.batches.value for b in job.batch_ids)

    job.wait(timeout=30, progress=False)

    assert (p.progress.value, p.progress.max, p.progress.bar_style) == (12, 12, "success")
    assert "100%" in p.percent.value
    assert count(p, "succeeded") == 12 and count(p, "pending") == 0
    assert "completed" in p.batches.value
    assert p.cancel_button.disabled and p.resubmit_button.disabled
    assert p.show_failed_button.disabled
    assert "all 12 rows succeeded" in p.summary.value
    assert "estimate" not in p.cost.value and "reported usage" in p.cost.value
    html = preview_html(p)
    assert "job.merge(): all 12 rows" in html
    assert emulator.echo_text("row 3") in html
    assert styling.ROW_COLOURS["failed"] not in html
    assert p.error.value == ""


def test_failed_rows_are_highlighted_and_resubmit_ends_all_succeeded():
    texts = [f"row {i}" for i in range(20)]
    with emulator.start(processing_seconds=0.05, error_rate=0.2, seed=3) as emu:
        job = submit(openai_client(emu), texts)
        p = JobPanel(job)
        job.wait(timeout=30, progress=False)

        assert count(p, "failed") == 4 and count(p, "succeeded") == 16  # round(0.2 * 20)
        assert p.progress.bar_style == "warning"
        assert p.progress.value == p.progress.max == 20
        assert not p.resubmit_button.disabled
        assert p.resubmit_button.description == "Resubmit failed (4)"
        assert "16 of 20 rows succeeded (4 failed)" in p.summary.value
        html = preview_html(p)
        assert styling.ROW_COLOURS["failed"] in html
        failed = job.failed()
        assert len(failed) == 4
        assert html.count("failed</td>") == 4  # every failed row, with its error message
        assert failed["out_error"].iloc[0].split(" (")[0][:30] in html

        assert not p.show_failed_button.disabled
        p.show_failed_button.click()
        assert p.show_failed_button.description == "Hide failed rows"
        table = p.failed_rows.outputs[0]["data"]["text/html"]
        assert "4 rows did not succeed" in table and table.count("failed</td>") == 4
        p.show_failed_button.click()
        assert p.failed_rows.outputs == ()

        p.resubmit_button.click()
        assert "Resubmitted 4 rows" in p.message_text
        assert job.polling_active or job.snapshot().finished  # the panel restarted polling
        wait_for(lambda: "all 20 rows succeeded" in p.summary.value and bool(p.preview.outputs))

        assert p.progress.bar_style == "success"
        assert count(p, "succeeded") == 20 and count(p, "failed") == 0
        assert p.resubmit_button.disabled and p.show_failed_button.disabled
        assert "all 20 rows succeeded" in p.summary.value
        assert styling.ROW_COLOURS["failed"] not in preview_html(p)
        assert (job.merge()["out_status"] == "succeeded").all()
        assert "attempt 2" in p.batches.value


def test_cancel_needs_confirmation():
    with emulator.start(processing_seconds=3.0) as emu:
        client = openai_client(emu)
        job = submit(client, [f"r{i}" for i in range(6)])
        p = JobPanel(job)

        def provider_status() -> str:
            return client.batches.retrieve(job.batch_ids[0]).status

        p.cancel_button.click()
        assert p.confirm_box.layout.display == "flex"
        assert p.cancel_button.disabled
        assert "Cancel the job?" in p.message_text
        assert provider_status() in ("validating", "in_progress")  # nothing cancelled yet

        p.keep_button.click()
        assert p.confirm_box.layout.display == "none"
        assert not p.cancel_button.disabled
        assert provider_status() in ("validating", "in_progress")

        p.cancel_button.click()
        p.confirm_button.click()
        assert p.confirm_box.layout.display == "none"
        assert provider_status() in ("cancelling", "cancelled")
        wait_for(lambda: job.snapshot().finished)
        wait_for(lambda: "Cancelled" in p.summary.value)
        assert count(p, "cancelled") > 0
        assert p.progress.bar_style == "warning"
        assert p.cancel_button.disabled


def test_a_transient_polling_error_shows_in_the_panel_and_clears():
    with emulator.start(processing_seconds=0.05, http_error_rate=1.0) as emu:
        # No SDK retries, so the emulator's 500/429 answers reach nbbatch.
        client = openai.OpenAI(base_url=emu.openai_base_url, api_key="k", max_retries=0)
        job = submit(client, ["a", "b"])
        p = JobPanel(job)
        snap = job.refresh()  # does not raise: the error is kept for the views
        assert snap.last_error
        assert "nbbatch-note-warning" in p.error.value
        assert "Polling error, retrying" in p.error.value
        assert p.progress.bar_style == "info"
        job.wait(timeout=30, progress=False)
        assert p.error.value == "" and p.progress.bar_style == "success"


def test_an_error_that_stopped_polling_turns_the_bar_red(emu):
    job = submit(openai_client(emu), ["a"])
    p = JobPanel(job)
    stopped = dataclasses.replace(job.snapshot(), last_error="polling stopped: 401 bad key")
    p.render(stopped)
    assert p.progress.bar_style == "danger"
    assert "nbbatch-note-danger" in p.error.value and "401 bad key" in p.error.value
    assert "press Refresh now" in p.error.value


def test_background_polling_keeps_the_caller_free_and_the_panel_follows():
    with emulator.start(processing_seconds=0.6) as emu:
        job = submit(openai_client(emu), [f"r{i}" for i in range(5)])
        other = submit(openai_client(emu), ["x", "y"])
        p, q = JobPanel(job), JobPanel(other)
        start = time.monotonic()
        poller = job.start_polling()
        other.start_polling()
        assert time.monotonic() - start < 0.2  # returns at once
        assert job.polling_active and not job.snapshot().finished
        assert job.start_polling() is poller  # idempotent
        poller.join(timeout=20)
        assert not poller.running
        assert job.counts["succeeded"] == 5
        wait_for(lambda: q.progress.bar_style == "success")
        assert p.progress.bar_style == "success" and count(p, "succeeded") == 5
        assert count(q, "succeeded") == 2  # each panel shows its own job


def test_refresh_button_polls(emu):
    job = submit(openai_client(emu), ["a", "b"])
    p = JobPanel(job)
    assert "not polling" in p.timing.value
    p.refresh_button.click()
    wait_for(lambda: p.progress.bar_style == "success")
    assert "last poll -" not in p.timing.value
    p.refresh_button.click()  # on a finished job: a plain refresh, nothing breaks
    assert p.message_text == ""


def test_a_button_error_shows_in_the_panel(emu, monkeypatch):
    job = submit(openai_client(emu), ["a"])
    p = JobPanel(job)

    def refuse() -> None:
        raise nb.ProviderError("the provider said no")

    monkeypatch.setattr(job, "cancel", refuse)
    p.cancel_button.click()
    p.confirm_button.click()
    assert "Cancel failed: the provider said no" in p.message_text
    assert "nbbatch-note-danger" in p.message.value
    job.wait(timeout=30, progress=False)


def test_attached_job_without_its_data_previews_the_results(emu):
    job = submit(openai_client(emu), ["a", "b"])
    job.wait(timeout=30, progress=False)
    again = nb.attach(job.id, client=openai_client(emu))
    p = JobPanel(again)
    html = preview_html(p)
    assert "job.results()" in html and emulator.echo_text("b") in html


def test_unknown_model_shows_unknown_price(emu):
    df = pd.DataFrame({"text": ["a"]})
    job = nb.submit(df, "{text}", model="acme-1", client=openai_client(emu), display=False)
    p = JobPanel(job)
    assert "unknown price" in p.cost.value and "$" not in p.cost.value


def test_the_estimate_counts_prompt_characters_and_max_tokens(emu):
    job = submit(openai_client(emu), ["x" * 400, "y" * 400], max_tokens=50)
    cost, tokens_in, tokens_out = JobPanel(job).estimate
    assert cost.estimated and cost.batch is not None and cost.realtime == 2 * cost.batch
    assert tokens_in == 200 and tokens_out == 100
    job.wait(timeout=30, progress=False)


def test_close_unsubscribes(emu):
    job = submit(openai_client(emu), ["a"])
    p = JobPanel(job)
    calls: list[object] = []
    p._render = lambda snap: calls.append(snap)  # type: ignore[method-assign]
    job.refresh()
    assert len(calls) == 1
    p.close()
    job.wait(timeout=30, progress=False)
    assert len(calls) == 1


def test_mimebundle_always_has_text_plain(emu, monkeypatch):
    job = submit(openai_client(emu), ["a"])
    job.wait(timeout=30, progress=False)
    summary = job.snapshot().summary()
    assert job._repr_mimebundle_() == {"text/plain": summary}  # not in a notebook

    monkeypatch.setattr(panel, "in_notebook", lambda: True)
    bundle = panel.mimebundle(job)
    assert bundle["text/plain"] == summary
    assert "model_id" in bundle["application/vnd.jupyter.widget-view+json"]

    def broken(_job: BatchJob) -> JobPanel:
        raise RuntimeError("no widgets here")

    monkeypatch.setattr(panel, "JobPanel", broken)
    with pytest.warns(RuntimeWarning, match="no widgets here"):
        assert panel.mimebundle(job) == {"text/plain": summary}


def test_mimebundle_in_a_notebook_starts_polling(monkeypatch):
    monkeypatch.setattr(panel, "in_notebook", lambda: True)
    with emulator.start(processing_seconds=0.3) as emu:
        job = submit(openai_client(emu), ["a"])
        assert not job.polling_active
        bundle = panel.mimebundle(job)
        assert "application/vnd.jupyter.widget-view+json" in bundle
        assert job.polling_active
        wait_for(lambda: job.snapshot().finished)


def test_highlight_tints_bad_rows_escapes_and_handles_repeated_labels():
    frame = pd.DataFrame(
        {
            "text": ["<b>a</b>", "b", "c", "d"],
            "out": ["x", None, None, None],
            "out_status": ["succeeded", "failed", "expired", "cancelled"],
            "out_error": [None, "bad <request>", "batch expired", "cancelled"],
        },
        index=[7, 7, 8, 9],  # repeated labels: Styler.apply would refuse them
    )
    html = styling.highlight(frame, "out").to_html()
    assert "&lt;b&gt;a&lt;/b&gt;" in html and "<b>a</b>" not in html
    assert "bad &lt;request&gt;" in html
    for state in ("failed", "expired", "cancelled"):
        assert styling.ROW_COLOURS[state] in html
    assert ".row0 " not in html  # the succeeded row keeps the theme's background
    assert styling.ERROR_TEXT in html
    # job.results() style frames ("status"/"error") work without naming the output.
    results = frame.rename(columns={"out_status": "status", "out_error": "error"})
    assert styling.ROW_COLOURS["failed"] in styling.highlight(results).to_html()


def test_to_html_without_jinja2_keeps_the_highlighting(monkeypatch):
    def no_jinja(frame: pd.DataFrame, output: str | None = None) -> None:
        raise ImportError("Missing optional dependency 'Jinja2'")

    monkeypatch.setattr(styling, "highlight", no_jinja)
    frame = pd.DataFrame({"out_status": ["succeeded", "failed"], "out_error": [None, "x<y"]})
    html = styling.to_html(frame, "out")
    assert html.count(styling.ROW_COLOURS["failed"]) == 3  # the label cell and both cells
    assert "x&lt;y" in html


def test_the_jobs_own_notes_show_in_the_panel():
    with emulator.start(processing_seconds=0.05, error_rate=0.25) as emu:
        job = submit(openai_client(emu), [f"row {i}" for i in range(8)], retries=1)
        p = JobPanel(job)
        job.wait(timeout=30, progress=False)
        p.render(job.snapshot())
        html = p.error.value
        assert "retrying 2 rows that failed transiently" in html, html
        assert job.counts["succeeded"] == 8
