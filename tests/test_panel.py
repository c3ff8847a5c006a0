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
from nbbatch import _panel as panel
from nbbatch import emulator, styling
from nbbatch._panel import JobPanel
from nbbatch.job import BatchJob

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


def bar(p: JobPanel) -> dict[str, int | str]:
    """What the panel's bar shows: rows collected, rows ready at the provider, total, and
    its colour state."""
    found = dict(re.findall(r'data-(state|done|ready|total)="(\w+)"', p.progress.value))
    assert len(found) == 4, p.progress.value
    return {k: v if k == "state" else int(v) for k, v in found.items()}


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
    ).wait_sent()


def test_panel_follows_a_job_to_success(emu):
    job = submit(openai_client(emu), [f"row {i}" for i in range(12)])
    p = JobPanel(job)
    assert p.bar_state == "info"
    assert count(p, "pending") == 12 and count(p, "total") == 12
    assert "estimate" in p.cost.value  # no usage reported yet
    assert not p.cancel_button.disabled
    assert p.resubmit_button.disabled and p.show_failed_button.disabled
    assert p.summary.value == "" and p.preview.outputs == ()
    assert job.id in p.header.value and "gpt-4o-mini" in p.header.value
    assert "12 rows" in p.header.value
    assert all(b in p.batches.value for b in job.batch_ids)

    job.wait(timeout=30, progress=False)

    assert bar(p) == {"state": "success", "done": 12, "ready": 0, "total": 12}
    assert "<b>100%</b>" in p.progress.value
    assert count(p, "succeeded") == 12 and count(p, "pending") == 0
    assert "completed" in p.batches.value
    assert p.cancel_button.disabled and p.resubmit_button.disabled
    assert p.show_failed_button.disabled
    assert "all 12 rows succeeded" in p.summary.value
    assert "estimate" not in p.cost.value and "reported usage" in p.cost.value
    html = preview_html(p)
    assert "job.merge(): 5 of 12 rows" in html  # a panel stays a panel
    assert emulator.echo_text("row 3") in job.merge()["out"].tolist()
    assert emulator.echo_text("row 0") in html and emulator.echo_text("row 5") not in html
    assert styling.ROW_COLOURS["failed"] not in html
    assert p.error.value == ""


def test_failed_rows_are_highlighted_and_resubmit_ends_all_succeeded():
    texts = [f"row {i}" for i in range(20)]
    with emulator.start(processing_seconds=0.05, error_rate=0.2, seed=3) as emu:
        job = submit(openai_client(emu), texts)
        p = JobPanel(job)
        job.wait(timeout=30, progress=False)

        assert count(p, "failed") == 4 and count(p, "succeeded") == 16  # round(0.2 * 20)
        assert p.bar_state == "warning"
        assert bar(p)["done"] == bar(p)["total"] == 20
        assert not p.resubmit_button.disabled
        assert p.resubmit_button.description == "Resubmit failed (4)"
        assert "16 of 20 rows succeeded (4 failed)" in p.summary.value
        html = preview_html(p)
        assert styling.ROW_COLOURS["failed"] in html
        failed = job.failed()
        assert len(failed) == 4
        # A few rows only, the failed ones first: 3 of the 4, with their error messages.
        assert html.count("failed</td>") == 3 and "3 of the 4 that did not succeed first" in html
        assert failed["out_error"].iloc[0].split(" (")[0][:30] in html

        assert not p.show_failed_button.disabled
        p.show_failed_button.click()
        assert p.show_failed_button.description == "Hide failed rows"
        table = p.failed_rows.outputs[0]["data"]["text/html"]
        assert "4 rows did not succeed" in table and table.count("failed</td>") == 4
        p.show_failed_button.click()
        assert p.failed_rows.outputs == ()

        p.resubmit_button.click()
        assert p.message_text == ""  # the job's own note says it, while it is out
        assert "resubmitted 4 failed or expired rows" in p.error.value or job.snapshot().finished
        assert job.polling_active or job.snapshot().finished  # the panel restarted polling
        wait_for(lambda: "all 20 rows succeeded" in p.summary.value and bool(p.preview.outputs))

        assert p.bar_state == "success"
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
        assert p.bar_state == "warning"
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
        assert p.bar_state == "info"
        job.wait(timeout=30, progress=False)
        assert p.error.value == "" and p.bar_state == "success"


def test_an_error_that_stopped_polling_turns_the_bar_red(emu):
    job = submit(openai_client(emu), ["a"])
    p = JobPanel(job)
    stopped = dataclasses.replace(job.snapshot(), last_error="polling stopped: 401 bad key")
    p.render(stopped)
    assert p.bar_state == "danger"
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
        wait_for(lambda: q.bar_state == "success")
        assert p.bar_state == "success" and count(p, "succeeded") == 5
        assert count(q, "succeeded") == 2  # each panel shows its own job


def test_refresh_button_polls(emu):
    job = submit(openai_client(emu), ["a", "b"])
    p = JobPanel(job)
    assert "not polling" in p.timing.value
    p.refresh_button.click()
    wait_for(lambda: p.bar_state == "success")
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


def test_unknown_model_shows_unknown_price(emu, monkeypatch):
    # Every model the emulator serves has a price: take this one's away.
    from nbbatch import pricing

    monkeypatch.setattr(pricing, "rates_for", lambda provider, model: None)
    df = pd.DataFrame({"text": ["a"]})
    job = nb.submit(df, "{text}", model="gpt-4o-mini", client=openai_client(emu), display=False)
    p = JobPanel(job)
    assert "unknown price" in p.cost.value and "$" not in p.cost.value


def test_the_panel_shows_the_snapshots_own_cost_figures(emu):
    """No estimator of its own: the panel's cost is the snapshot's, priced once by
    (provider, model), so the panel, the sidebar and nb.jobs() agree."""
    job = submit(openai_client(emu), ["x" * 400, "y" * 400], max_tokens=50)
    snap = job.snapshot()
    cost, tokens_in, tokens_out = JobPanel(job).cost_figures(snap)
    assert cost == snap.cost and cost.estimated and cost.batch is not None
    assert tokens_in == snap.input_tokens + snap.pending_input_tokens
    assert tokens_out == snap.output_tokens + snap.pending_output_tokens
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
    def no_jinja(frame: pd.DataFrame, output: str | None = None, **options: object) -> None:
        raise ImportError("Missing optional dependency 'Jinja2'")

    monkeypatch.setattr(styling, "highlight", no_jinja)
    frame = pd.DataFrame({"out_status": ["succeeded", "failed"], "out_error": [None, "x<y"]})
    html = styling.to_html(frame, "out")
    # The label cell and both cells, tinted over the opaque page colour.
    assert html.count(styling.tint(styling.ROW_COLOURS["failed"])) == 3
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


# -- progress that moves with the job -------------------------------------------------------
@pytest.mark.slow
def test_progress_shows_what_the_provider_has_done_before_collection():
    with emulator.start(validating_seconds=0.2, processing_seconds=4.0) as emu:
        job = submit(openai_client(emu), [f"row {i}" for i in range(200)])
        p = JobPanel(job)
        seen: list[tuple[float, float | None, int]] = []  # (time, eta, rows done or ready)
        provider_done_at = None
        while not job.snapshot().finished:
            snap = job.refresh()
            now = time.monotonic()
            seen.append((now, snap.eta, snap.done + snap.ready))
            if provider_done_at is None and snap.done + snap.ready == 200:
                provider_done_at = now
            if 0 < snap.ready < 200 and snap.done == 0:
                # Before any row is collected, the bar and the words already move, in rows.
                b = bar(p)
                assert b["done"] == 0 and b["ready"] == snap.ready and b["state"] == "info"
                assert f"~{snap.ready:,} done at the provider, of 200 rows" in p.progress.value
                assert f"done at provider <b>~{snap.ready:,}</b>" in p.counts.value
                assert re.search(r"\d+/200 requests done", p.batches.value), p.batches.value
            time.sleep(0.25)
        assert provider_done_at is not None
        moving = [s for s in seen if 0 < s[2] < 200]
        assert len(moving) >= 4, seen  # the bar moved during processing, several times
        # No ETA until a rate is measured; then an honest one: when it was given, the
        # provider finished within a second or 40% of what it said.
        assert seen[0][1] is None
        etas = [(t, eta) for t, eta, _ in seen if eta is not None and t < provider_done_at]
        assert etas, seen
        for t, eta in etas:
            assert abs(t + eta - provider_done_at) <= max(1.0, 0.4 * (provider_done_at - t)), (
                t, eta, provider_done_at
            )  # fmt: skip
        assert bar(p) == {"state": "success", "done": 200, "ready": 0, "total": 200}


def test_no_eta_without_a_measured_rate():
    base = dict(
        job_id="j", provider="openai", model="gpt-4o-mini", endpoint="/v1/chat/completions",
        base_url="", n_rows=100, status="running", batches=(), created=0.0,
    )  # fmt: skip
    counts = {s: 0 for s in ("succeeded", "failed", "expired", "cancelled", "skipped")}
    running = {**counts, "succeeded": 30, "pending": 70, "total": 100}
    snap = nb.JobSnapshot(counts=running, now=50.0, **base)  # type: ignore[arg-type]
    assert snap.eta is None  # nothing measured: no guess from elapsed time
    two = dataclasses.replace(snap, progress_samples=((10.0, 10), (20.0, 20)))
    assert two.eta is None  # one step is not yet a rate
    three = dataclasses.replace(two, progress_samples=((10.0, 10), (20.0, 20), (30.0, 30)))
    # 20 rows in 20 s since the first step: 70 left take 70 s from t=30, 50 s from now.
    assert three.eta == pytest.approx(70 - 20)
    late = dataclasses.replace(three, now=200.0)
    assert late.eta is None  # overdue: no "0 s", no negative time


# -- nothing stale ---------------------------------------------------------------------------
def test_notes_are_current_only_while_true_then_history_with_their_time():
    with emulator.start(processing_seconds=0.05, error_rate=0.25, seed=3) as emu:
        job = submit(openai_client(emu), [f"row {i}" for i in range(20)], alert_threshold=0.1)
        p = JobPanel(job)
        job.wait(timeout=30, progress=False)
        [alert] = job.snapshot().current_notes
        assert alert.kind == "alert" and alert.text.startswith("5 of 20 rows failed")
        assert "nbbatch-note-warning" in p.error.value and "5 of 20 rows" in p.error.value

        job.resubmit_failed()
        snap = job.snapshot()
        assert [n.kind for n in snap.current_notes] == ["resubmit"]  # the alert is over
        assert "resubmitted 5 failed or expired rows (attempt 2)" in snap.current_notes[0].text
        job.wait(timeout=30, progress=False)
        snap = job.snapshot()
        assert snap.counts["succeeded"] == 20 and snap.current_notes == ()
        assert {n.kind for n in snap.history} == {"alert", "resubmit"}
        html = p.error.value
        assert "nbbatch-note" not in html  # nothing shown as if it were true now
        assert "Earlier:" in html and time.strftime("%H:%M", time.localtime()) in html
        assert "5 of 20 rows" in html  # the alert as it was, as history


def test_automatic_retries_are_current_while_open_and_count_rows():
    texts = [f"row {i % 10}" for i in range(30)]  # 10 requests, 30 rows
    with emulator.start(processing_seconds=0.3, error_rate=0.3, seed=2) as emu:
        job = submit(openai_client(emu), texts, retries=1)
        assert job.snapshot().batches[0].n_requests == 10
        p = JobPanel(job)
        retrying = None
        while not job.snapshot().finished:
            snap = job.refresh()
            if snap.current_notes:
                retrying = snap
                assert "retrying" in p.error.value and "nbbatch-note-info" in p.error.value
            time.sleep(0.05)
        assert retrying is not None
        [note] = retrying.current_notes
        failed_requests = len(job.batch_ids) and retrying.batches[-1].n_requests
        # Counted in rows, like the chips: each of those requests stands for 3 rows.
        assert note.text.startswith(f"retrying {3 * failed_requests} rows"), note.text
        assert job.snapshot().current_notes == () and "retrying" in p.error.value  # history
        assert "requests" in p.batches.value and " rows" not in p.batches.value


def test_a_confirmed_cancel_is_replaced_by_its_outcome():
    # "cancelling" lasts a second (finalizing_seconds), so the note is seen while it is
    # true even on a loaded machine, before the provider confirms.
    with emulator.start(processing_seconds=2.0, finalizing_seconds=1.0) as emu:
        job = submit(openai_client(emu), [f"r{i}" for i in range(6)])
        p = JobPanel(job)
        p.cancel_button.click()
        p.confirm_button.click()
        assert p.message_text == ""
        assert "cancel requested" in p.error.value and "nbbatch-note-info" in p.error.value
        wait_for(lambda: "Cancelled" in p.summary.value)
        assert job.snapshot().current_notes == ()
        assert "nbbatch-note" not in p.error.value and "cancel requested" in p.error.value


def test_an_expired_batch_says_how_much_was_done():
    with emulator.start(processing_seconds=0.05, expire_rate=0.2, seed=4) as emu:
        job = submit(openai_client(emu), [f"row {i}" for i in range(20)])
        p = JobPanel(job)
        job.wait(timeout=30, progress=False)
        batch = job.snapshot().batches[0]
        assert batch.status == "expired" and job.counts["succeeded"] == batch.succeeded == 16
        # Not just "expired": how much of it succeeded, in its own unit (requests).
        assert "expired <span" in p.batches.value
        assert "16/20 requests succeeded" in p.batches.value


# -- saved text and static summary -----------------------------------------------------------
def test_the_saved_text_and_static_summary_tell_the_final_state(emu):
    job = submit(openai_client(emu), [f"row {i}" for i in range(1200)])
    running = panel.plain_text(job.snapshot())
    assert "running" in running and "1,200 pending" in running
    job.wait(timeout=60, progress=False)
    snap = job.snapshot()
    text = panel.plain_text(snap)
    assert "completed: 1,200/1,200 rows done - 1,200 succeeded" in text
    html = panel.static_html(snap)
    assert "Done: all 1,200 rows succeeded" in html and 'data-done="1200"' in html
    assert "<script" not in html and len(html) < 6000


# -- a panel that stays a panel ----------------------------------------------------------------
def test_the_preview_is_short_with_the_result_columns_first():
    df = pd.DataFrame({f"col{i}": [f"value {i}"] * 40 for i in range(8)})
    df["text"] = [f"row {i}" for i in range(40)]
    with emulator.start(processing_seconds=0.05, error_rate=0.25, seed=3) as emu:
        job = nb.submit(
            df, "{text}", model="gpt-4o-mini", client=openai_client(emu), output="out",
            display=False, retries=0, alert_threshold=None,
        )  # fmt: skip
        p = JobPanel(job)
        job.wait(timeout=30, progress=False)
        html = preview_html(p)
        headers = re.findall(r'class="col_heading[^"]*" >([^<]*)</th>', html)
        assert headers == [*job.output_columns(), "col0", "col1"], headers
        assert html.count('class="row_heading') == 5  # a few rows, not 20 + 50
        assert "7 more columns" in html and "3 of the 10 that did not succeed first" in html
        p.show_failed_button.click()
        table = p.failed_rows.outputs[0]["data"]["text/html"]
        headers = re.findall(r'class="col_heading[^"]*" >([^<]*)</th>', table)
        added = job.output_columns()
        assert headers[: len(added)] == added and len(headers) == len(added) + 9
        assert table.count("failed</td>") == 10


# -- highlighting -----------------------------------------------------------------------------
def test_highlighting_2000_rows_shows_every_failure_and_a_sample_in_little_html():
    df = pd.DataFrame({"text": [f"review number {i} " * 8 for i in range(2000)]})
    with emulator.start(processing_seconds=0.05, error_rate=0.1, expire_rate=0.05) as emu:
        job = nb.submit(
            df, "{text}", model="gpt-4o-mini", client=openai_client(emu), output="out",
            display=False, retries=0, alert_threshold=None,
        )  # fmt: skip
        job.wait(timeout=60, progress=False)
    out = job.merge(df)
    bad = out["out_status"].isin(["failed", "expired"])
    assert 200 < bad.sum() < 400
    html = nb.highlight(out).to_html()
    assert len(html) < 350_000, len(html)  # all 2,000 rows: several MB
    rows = re.findall(r'<th id="T_\w+_level0_row(\d+)"', html)
    assert len(rows) == bad.sum() + styling.SAMPLE_ROWS
    assert html.count("failed</td>") + html.count("expired</td>") == bad.sum()
    assert f"of 2,000 rows: the {bad.sum():,} that did not succeed" in html
    assert len(nb.highlight(out, max_rows=None).to_html()) > 5 * len(html)


# -- contrast -----------------------------------------------------------------------------------
def _theme_variables() -> dict[str, dict[str, str]]:
    """JupyterLab's own values of the variables the highlighting uses, from its theme CSS."""
    from pathlib import Path

    from jupyter_core.paths import jupyter_path

    [themes] = [
        Path(p) / "lab/themes/@jupyterlab"
        for p in jupyter_path()
        if (Path(p) / "lab/themes/@jupyterlab/theme-light-extension").is_dir()
    ][:1]
    found = {}
    for name in ("light", "dark"):
        css = (themes / f"theme-{name}-extension/index.css").read_text()
        found[name] = {
            var: re.search(rf"--jp-{var}:([^;}}]+)", css).group(1).strip()  # type: ignore[union-attr]
            for var in ("layout-color0", "content-font-color1")
        }
    return found


def _css_colour(value: str) -> str:
    named = {"white": "#ffffff", "#111": "#111111", "#fff": "#ffffff"}
    value = named.get(value, value)
    if value.startswith("rgba(") and value.count(",") == 3:
        r, g, b, a = value[5:-1].split(",")
        return f"rgba({r}, {g}, {b}, {float(a)})"
    return value


def test_error_text_on_every_tint_meets_wcag_aa_in_light_and_dark():
    assert "--jp-content-font-color1" in styling.ERROR_TEXT
    assert "--jp-layout-color0" in styling.PAGE
    lab = _theme_variables()
    for theme, (page, text) in styling.THEMES.items():
        assert _css_colour(lab[theme]["layout-color0"]) == page
        assert _css_colour(lab[theme]["content-font-color1"]) == text
        for state, colour in styling.ROW_COLOURS.items():
            ratio = styling.contrast(text, colour, page)
            assert ratio >= 4.5, (theme, state, ratio)
    # The measure itself: black on white is 21:1, the old red on the red tint was not AA.
    assert styling.contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert styling.contrast("#d32f2f", styling.ROW_COLOURS["failed"], "#ffffff") < 4.5


def test_tints_are_laid_over_the_page_colour_so_stripes_do_not_show_through():
    frame = pd.DataFrame({"out_status": ["failed", "succeeded"], "out_error": ["x", None]})
    html = styling.highlight(frame, "out").to_html()
    assert styling.tint(styling.ROW_COLOURS["failed"]) in html
    assert styling.PAGE in styling.tint(styling.ROW_COLOURS["failed"])


def test_the_panel_values_are_one_function_of_the_snapshot():
    """What every part of the panel shows, from a snapshot alone: no job, no widget, no
    kernel (the panel only copies these values onto its widgets)."""
    from nbbatch._panelview import panel_values

    base = dict(
        job_id="j1", provider="openai", model="gpt-4o-mini", endpoint="/v1/chat/completions",
        base_url="http://127.0.0.1:9/v1", n_rows=10, batches=(), created=0.0, now=5.0,
    )  # fmt: skip
    zero = {s: 0 for s in ("succeeded", "failed", "expired", "cancelled", "skipped")}
    running = nb.JobSnapshot(counts={**zero, "pending": 10, "total": 10}, status="running", **base)  # type: ignore[arg-type]
    v = panel_values(running, confirming=True, at_most=True)
    assert v.bar_state == "info" and 'data-state="info"' in v.progress
    assert "nbbatch job j1" in v.header and "via 127.0.0.1" in v.header
    assert "no provider batch yet" in v.batches
    assert "not polling" in v.timing and "at most" in v.cost and "estimate" in v.cost
    assert v.cancel_disabled and not v.stop_confirming  # a cancel waits to be confirmed
    assert v.resubmit_disabled and v.show_failed_disabled and v.summary == ""

    ended = dataclasses.replace(
        running,
        status="completed",
        counts={**zero, "succeeded": 7, "failed": 3, "pending": 0, "total": 10},
    )
    v = panel_values(ended, confirming=True, showing_failed=True)
    assert v.bar_state == "warning" and v.stop_confirming and v.cancel_disabled
    assert v.resubmit_description == "Resubmit failed (3)" and not v.resubmit_disabled
    assert v.showing_failed and v.show_failed_description == "Hide failed rows"
    assert "7 of 10 rows succeeded (3 failed)" in v.summary
    assert v == panel_values(ended, confirming=True, showing_failed=True)  # pure
