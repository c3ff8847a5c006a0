"""The live notebook panel of a job: ipywidgets that render the job's snapshots.

The panel is a view, like :mod:`nbbatch.console`: it subscribes to the job, turns each
:class:`~nbbatch.snapshot.JobSnapshot` into widget values, and its buttons only call the
job's public methods (``refresh``, ``cancel``, ``resubmit_failed``, ``failed``, ``merge``).
Snapshots arrive on the background poller's thread; ipywidgets sends trait changes from
any thread, and JupyterLab shows them live while the kernel stays free for other cells.

- :func:`show` displays a new panel (and starts background polling) as an output with a
  display id; :func:`display_job` is how IPython shows a ``BatchJob``;
- :func:`mimebundle` is what ``BatchJob._repr_mimebundle_`` returns: the panel plus a
  ``text/plain`` summary and a small static ``text/html`` one (:func:`static_html`) in a
  notebook, only the text elsewhere, and the text with one warning if the widgets cannot
  be built (the way ``tqdm.autonotebook`` falls back).

The saved notebook reads right without widgets (on GitHub, in ``nbconvert --to html``):
the panel's output carries the text and the static summary beside the widget, and the
panel replaces that output's data (``update_display``) when the job's state changes, so
what is saved is the last state, not the state at submit. ipykernel sends such updates
from the poller's thread like the widgets' own; they are throttled while the job runs
(:data:`SAVED_EVERY`) and always sent when it ends.
"""

from __future__ import annotations

import html
import logging
import threading
import time
import uuid
import warnings
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from . import pricing, styling
from ._errors import MergeError
from .console import in_notebook
from .pricing import money
from .providers.base import is_embeddings
from .snapshot import JobSnapshot, format_seconds

if TYPE_CHECKING:
    import ipywidgets as widgets

    from .job import BatchJob

log = logging.getLogger("nbbatch")

#: Output tokens per row assumed for the cost estimate when ``max_tokens`` is not set
#: (a short answer: a label, a sentence or a few extracted fields).
OUTPUT_TOKENS_GUESS = 100
#: Characters per token assumed for the cost estimate before usage is reported.
CHARS_PER_TOKEN = 4
#: Rows the end-of-job preview shows: up to PREVIEW_FAILED_ROWS that did not succeed,
#: then the first others. A panel stays a panel: ``job.merge()`` has every row.
PREVIEW_ROWS = 5
PREVIEW_FAILED_ROWS = 3
#: The user's columns the preview shows after the result columns (the rest on demand).
PREVIEW_USER_COLUMNS = 2
#: Rows the "Show failed rows" table shows at most (in a box that scrolls).
FAILED_ROWS_SHOWN = 50
#: Longer cell texts are cut in the previews (the full text is in ``job.merge()``).
PREVIEW_TEXT_CHARS = 80
#: Widest table cell in the panel, so the result columns fit a 640 px notebook.
CELL_WIDTH = "18em"
#: Batches listed in the header (the newest ones); the rest are counted.
BATCHES_SHOWN = 4
#: Past notes listed (the newest, with their time); the rest are counted.
MAX_HISTORY = 3
#: While the job runs, the saved output's text is replaced at most this often (seconds);
#: a change of status, of the current notes, or the end is saved at once.
SAVED_EVERY = 30.0
#: Prefix the job puts on ``last_error`` when an error ended background polling.
POLLING_STOPPED = "polling stopped"
#: Prefix the job puts on ``last_error`` when an error stopped background sending.
SENDING_STOPPED = "sending stopped"
#: Button feedback that only lasts while what it started runs.
_TRANSIENT_MESSAGES = ("Cancelling", "Resubmitting")

_BAR_COLOURS = {  # the bar's collected part, by state; its "ready" part is lighter
    "info": "var(--jp-brand-color1, #1976d2)",
    "success": "var(--jp-success-color1, #388e3c)",
    "warning": "var(--jp-warn-color1, #f57c00)",
    "danger": "var(--jp-error-color1, #d32f2f)",
}
_COUNT_COLOURS = {
    "total": "rgba(128, 128, 128, 0.18)",
    "ready": "rgba(33, 150, 243, 0.10)",
    "succeeded": "rgba(67, 160, 71, 0.25)",
    "failed": styling.ROW_COLOURS["failed"],
    "expired": styling.ROW_COLOURS["expired"],
    "cancelled": styling.ROW_COLOURS["cancelled"],
    "skipped": "rgba(128, 128, 128, 0.12)",
    "pending": "rgba(33, 150, 243, 0.20)",
}
_TEXT = "color: var(--jp-ui-font-color1, inherit);"
_MUTED = "color: var(--jp-ui-font-color2, inherit);"
# ipywidgets' HTML widget sets a 28px line height for one-line labels; ours wrap.
_FONT = "font-size: var(--jp-ui-font-size1, 13px); line-height: 1.5;"


def _esc(value: object) -> str:
    return html.escape(str(value))


def _clock(t: float | None) -> str:
    """Seconds since the epoch as local ``HH:MM:SS`` ('-' for None)."""
    return "-" if t is None else time.strftime("%H:%M:%S", time.localtime(t))


class JobPanel:
    """Widgets showing one job, updated from its snapshots; see the module docstring.

    ``panel.widget`` is the top-level ``VBox`` to display. The panel subscribes to the
    job when built and unsubscribes in :meth:`close`. Every update goes through
    :meth:`render`, which never raises (a view must not break the poller).
    """

    def __init__(self, job: BatchJob) -> None:
        import ipywidgets as widgets
        from ipywidgets import Layout

        self.job = job
        self._lock = threading.RLock()
        self._confirming = False
        self._showing_failed = False
        self._final_key: tuple[Any, ...] | None = None  # the finished state last previewed
        self._closed = False
        self.message_text = ""  # feedback from the last button press
        self.bar_state = "info"  # the bar's colour: info | success | warning | danger
        self.display_id: str | None = None  # the output this panel keeps up to date
        self._saved: tuple[Any, ...] | None = None  # the state that output last got
        self._saved_at = 0.0
        self.estimate = self._estimate_cost()  # once per panel, not per poll

        full = Layout(width="100%")
        self.header = widgets.HTML(layout=full)
        self.batches = widgets.HTML(layout=full)
        self.progress = widgets.HTML(layout=full)  # a two-part bar: collected, ready
        self.counts = widgets.HTML(layout=full)
        self.timing = widgets.HTML(layout=full)
        self.cost = widgets.HTML(layout=full)
        self.error = widgets.HTML(layout=full)
        self.message = widgets.HTML(layout=full)

        button = Layout(width="auto", min_width="0", margin="2px 6px 2px 0")
        self.refresh_button = widgets.Button(
            description="Refresh now", icon="refresh", tooltip="Poll the provider now",
            layout=button,
        )  # fmt: skip
        self.cancel_button = widgets.Button(
            description="Cancel", icon="stop", tooltip="Cancel the open batches", layout=button
        )
        self.confirm_button = widgets.Button(
            description="Confirm cancel", button_style="danger", layout=button,
            tooltip="Cancel every open batch at the provider (rows already done keep results)",
        )  # fmt: skip
        self.keep_button = widgets.Button(description="Keep running", layout=button)
        self.resubmit_button = widgets.Button(
            description="Resubmit failed", icon="repeat", layout=button,
            tooltip="Send only the failed and expired rows again (succeeded rows are not resent)",
        )  # fmt: skip
        self.show_failed_button = widgets.Button(
            description="Show failed rows", icon="table", layout=button,
            tooltip="Show the rows that did not succeed, with their errors",
        )  # fmt: skip
        self.confirm_box = widgets.HBox(
            [self.confirm_button, self.keep_button],
            layout=Layout(display="none", flex_flow="row wrap"),
        )
        self.buttons = widgets.HBox(
            [
                self.refresh_button,
                self.cancel_button,
                self.confirm_box,
                self.resubmit_button,
                self.show_failed_button,
            ],
            layout=Layout(width="100%", flex_flow="row wrap", margin="4px 0"),
        )
        self.summary = widgets.HTML(layout=full)
        self.preview = widgets.Output(layout=Layout(width="100%", overflow="auto"))
        self.failed_rows = widgets.Output(
            layout=Layout(width="100%", max_height="420px", overflow="auto")
        )
        self.widget = widgets.VBox(
            [
                self.header,
                self.progress,
                self.counts,
                self.batches,
                self.timing,
                self.cost,
                self.error,
                self.buttons,
                self.message,
                self.summary,
                self.preview,
                self.failed_rows,
            ],
            layout=Layout(
                width="100%",
                max_width="100%",
                padding="8px 10px",
                # A theme colour (with a fallback for other front ends), no background of
                # its own: the card sits on the notebook's, light or dark.
                border="1px solid var(--jp-border-color2, rgba(128, 128, 128, 0.4))",
            ),
        )
        classes = {
            self.widget: "nbbatch-panel",
            self.header: "nbbatch-header",
            self.batches: "nbbatch-batches",
            self.progress: "nbbatch-progress",
            self.counts: "nbbatch-counts",
            self.timing: "nbbatch-timing",
            self.cost: "nbbatch-cost",
            self.error: "nbbatch-error",
            self.message: "nbbatch-message",
            self.refresh_button: "nbbatch-refresh",
            self.cancel_button: "nbbatch-cancel",
            self.confirm_button: "nbbatch-confirm-cancel",
            self.keep_button: "nbbatch-keep-running",
            self.resubmit_button: "nbbatch-resubmit",
            self.show_failed_button: "nbbatch-show-failed",
            self.summary: "nbbatch-summary",
            self.preview: "nbbatch-preview",
            self.failed_rows: "nbbatch-failed-rows",
        }
        for w, name in classes.items():
            w.add_class(name)

        self.refresh_button.on_click(self._guard("Refresh", self.on_refresh))
        self.cancel_button.on_click(self._guard("Cancel", self.on_cancel))
        self.confirm_button.on_click(self._guard("Cancel", self.on_confirm_cancel))
        self.keep_button.on_click(self._guard("Keep running", self.on_keep_running))
        self.resubmit_button.on_click(self._guard("Resubmit failed", self.on_resubmit))
        self.show_failed_button.on_click(self._guard("Show failed rows", self.on_show_failed))

        self._unsubscribe = job.subscribe(self.render)
        self.render(job.snapshot())

    # -- display ----------------------------------------------------------------------------
    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        return self.bundle(self.job.snapshot())

    def bundle(self, snap: JobSnapshot) -> dict[str, Any]:
        """The output's data for ``snap``: the widget, and for viewers without widgets
        the text and the static HTML summary."""
        bundle = dict(self.widget._repr_mimebundle_() or {})
        bundle["text/plain"] = plain_text(snap)
        bundle["text/html"] = static_html(snap)
        return bundle

    @staticmethod
    def _state(snap: JobSnapshot) -> tuple[Any, ...]:
        """(what changes the saved output at once, what changes it at most every
        :data:`SAVED_EVERY` seconds while running)."""
        key = (snap.status, snap.provider_status, snap.current_notes, snap.last_error)
        return key, (tuple(snap.counts.values()), snap.ready, len(snap.batches))

    def _save(self, snap: JobSnapshot) -> None:
        """Replace the displayed output's data when the job's state changed (see the
        module docstring), so the saved notebook shows the last state."""
        if self.display_id is None:
            return
        key, counts = self._state(snap)
        if (key, counts) == self._saved:
            return
        if (
            self._saved is not None
            and key == self._saved[0]
            and not snap.finished
            and time.monotonic() - self._saved_at < SAVED_EVERY
        ):
            return  # only counts moved: saved on a later poll
        from IPython.display import update_display

        self._saved, self._saved_at = (key, counts), time.monotonic()
        update_display(self.bundle(snap), raw=True, display_id=self.display_id)

    def close(self) -> None:
        """Stop following the job and close the widgets (polling goes on)."""
        with self._lock:
            self._closed = True
            self._unsubscribe()
            self._close_widgets()

    def _close_widgets(self) -> None:
        stack: list[widgets.Widget] = [self.widget]
        while stack:
            w = stack.pop()
            stack.extend(getattr(w, "children", ()))
            layout = getattr(w, "layout", None)
            w.close()
            if layout is not None:
                layout.close()  # closing twice (shared layouts) is harmless

    # -- rendering --------------------------------------------------------------------------
    def render(self, snap: JobSnapshot) -> None:
        """Show ``snap``. Called on the poller's thread; never raises."""
        with self._lock:
            if self._closed:
                return
            try:
                self._render(snap)
            except Exception as exc:  # a view must never stop the poller
                log.exception("nbbatch: the panel could not show job %s", snap.job_id)
                self.error.value = self._note(f"The panel could not update: {exc}", "danger")

    def _render(self, snap: JobSnapshot) -> None:
        c = snap.counts
        # The slow part (merging for the preview) first, so the widgets then change
        # together: the bar does not turn green long before the preview appears.
        final_key = (c["total"], *(c[s] for s in styling.NOT_SUCCEEDED), len(snap.batches))
        preview = None
        if snap.finished and final_key != self._final_key:  # once per ending, not per poll
            try:
                preview = self._preview_output()
            except Exception as exc:  # the counts and the buttons still have to show
                log.exception("nbbatch: no preview for job %s", snap.job_id)
                preview = _text_output(f"No preview: {exc}")
        self.header.value = self._header_html(snap)
        self.batches.value = self._batches_html(snap)
        self.counts.value = self._counts_html(snap)
        self.timing.value = self._timing_html(snap)
        self.cost.value = self._cost_html(snap)
        self.error.value = self._error_html(snap)

        bad = sum(c[s] for s in styling.NOT_SUCCEEDED)
        self.cancel_button.disabled = snap.finished or self._confirming
        if snap.finished and self._confirming:
            self._set_confirming(False)
        if snap.finished and self.message_text.startswith(_TRANSIENT_MESSAGES):
            self._say("")  # what a button started is over: the notes and summary say how
        self.resubmit_button.disabled = snap.resubmittable == 0
        self.resubmit_button.description = (
            f"Resubmit failed ({snap.resubmittable:,})" if snap.resubmittable else "Resubmit failed"
        )
        self.show_failed_button.disabled = bad == 0
        if bad == 0 and self._showing_failed:
            self._showing_failed = False
            self.failed_rows.outputs = ()
        self.show_failed_button.description = (
            "Hide failed rows" if self._showing_failed else "Show failed rows"
        )

        if snap.finished:
            self.summary.value = self._summary_html(snap)
            if preview is not None:
                self._final_key = final_key
                self.preview.outputs = (preview,)
                if self._showing_failed:
                    self.failed_rows.outputs = (self._failed_output(),)
        else:
            self._final_key = None
            self.summary.value = ""
            self.preview.outputs = ()
        # The bar last: once it changes, everything else already shows the same state.
        self.bar_state = self.bar_style(snap)
        self.progress.value = bar_html(snap, self.bar_state)
        self._save(snap)

    @staticmethod
    def bar_style(snap: JobSnapshot) -> str:
        """``danger`` when an error stopped polling, ``info`` while running, ``success``
        when every row succeeded (or was skipped), else ``warning``."""
        if snap.last_error and snap.last_error.startswith(POLLING_STOPPED):
            return "danger"
        if snap.failure:
            return "danger"
        if not snap.finished:
            return "info"
        bad = sum(snap.counts[s] for s in styling.NOT_SUCCEEDED)
        return "success" if bad == 0 else "warning"

    def _header_html(self, snap: JobSnapshot) -> str:
        host = urlparse(snap.base_url).hostname or ""
        # A provider's own address goes unsaid; any other (a proxy, an emulator) is shown.
        own = ("api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com")
        via = f" &middot; via {_esc(host)}" if host and not host.endswith(own) else ""
        return (
            f'<div style="{_TEXT} line-height: 1.4;">'
            f'<span style="font-size: var(--jp-ui-font-size2, 14px); font-weight: 600;">'
            f"nbbatch job {_esc(snap.job_id)}</span><br>"
            f'<span style="{_MUTED}{_FONT}">{_esc(snap.provider)} &middot; '
            f"<code>{_esc(snap.models_text)}</code> &middot; {_esc(snap.endpoint)} &middot; "
            f"{snap.n_rows:,} rows{via}</span></div>"
        )

    @staticmethod
    def _batches_html(snap: JobSnapshot) -> str:
        # The provider's unit: requests (identical rows share one), never rows.
        if not snap.batches:
            return f'<div style="{_MUTED}{_FONT}">no provider batch yet</div>'
        shown = snap.batches[-BATCHES_SHOWN:]
        items = [
            f'<span class="nbbatch-batch" style="margin-right: 12px; overflow-wrap: anywhere;">'
            f'<code style="word-break: break-all;">{_esc(b.batch_id)}</code> '
            f"{_esc(b.status.replace('_', ' '))} "
            f'<span style="{_MUTED}">({_batch_requests(b)}, {_esc(b.label)})</span></span>'
            for b in shown
        ]
        more = len(snap.batches) - len(shown)
        if more:
            items.insert(0, f'<span style="{_MUTED}">{more:,} older batches &middot; </span>')
        return (
            f'<div style="{_TEXT}{_FONT} display: flex; flex-wrap: wrap; row-gap: 2px;">'
            f'<span style="{_MUTED} margin-right: 6px;">Batches:</span>{"".join(items)}</div>'
        )

    @staticmethod
    def _counts_html(snap: JobSnapshot) -> str:
        # Rows only (the user's unit); "ready" is the part of "pending" the provider has
        # already done, to be collected at the batch's end.
        chips = []
        for state in ("total", "succeeded", "failed", "expired", "cancelled", "skipped", "pending"):
            n = snap.counts[state]
            dim = " opacity: 0.55;" if n == 0 and state != "total" else ""
            chips.append(_chip(state, state, f"{n:,}", dim))
            if state == "pending" and snap.ready:
                chips.append(
                    _chip(
                        "ready", "done at provider", f"~{snap.ready:,}", "",
                        "rows the provider has done; collected when their batch ends",
                    )
                )  # fmt: skip
        extras = [
            f"{n:,} {words}"
            for name, words in (
                ("reused", "reused from earlier jobs"),
                ("deduplicated", "deduplicated"),
                ("realtime", "via real-time fallback"),
            )
            if (n := int(getattr(snap, name, 0) or 0))
        ]
        if extras:
            chips.append(
                f'<span class="nbbatch-extra" style="{_MUTED} white-space: nowrap;'
                f' margin-right: 6px;">{_esc(", ".join(extras))} &middot;</span>'
            )
        status = snap.status if snap.finished else f"provider: {snap.provider_status}"
        chips.append(
            f'<span class="nbbatch-status" style="{_MUTED} white-space: nowrap;">'
            f"{_esc(status.replace('_', ' '))}</span>"
        )
        return f'<div style="{_TEXT}{_FONT} line-height: 1.8;">{"".join(chips)}</div>'

    def _timing_html(self, snap: JobSnapshot) -> str:
        parts = [f"elapsed {format_seconds(snap.elapsed)}", f"last poll {_clock(snap.last_poll)}"]
        if not snap.finished:
            if snap.next_poll is not None and snap.next_poll > snap.now:
                parts.append(f"next poll in {format_seconds(snap.next_poll - snap.now)}")
            elif self.job.polling_active:
                parts.append("polling in the background")
            else:
                parts.append("not polling (press Refresh now)")
            # Only with a rate measured from the provider's own progress; none is better
            # than a wrong one.
            if snap.eta is not None:
                parts.append(f"ETA ~{format_seconds(snap.eta)} at the provider's pace")
        return f'<div style="{_MUTED}{_FONT}">{" &middot; ".join(parts)}</div>'

    def _estimate_cost(self) -> tuple[pricing.Cost, int, int]:
        """The whole job's cost before usage is known: input tokens ~ prompt characters
        / 4 (plus the system prompt per row), output tokens = ``max_tokens`` per row
        (an upper bound) or :data:`OUTPUT_TOKENS_GUESS`; none for embeddings."""
        spec = self.job.spec
        n, chars = self.job.prompt_chars()
        chars += n * len(spec.system or "")
        tokens_in = -(-chars // CHARS_PER_TOKEN)
        per_row = 0 if is_embeddings(spec.endpoint) else spec.max_tokens
        tokens_out = n * (OUTPUT_TOKENS_GUESS if per_row is None else per_row)
        est = pricing.cost(spec.model, tokens_in, tokens_out, estimated=True)
        return est, tokens_in, tokens_out

    def cost_figures(self, snap: JobSnapshot) -> tuple[pricing.Cost, int, int]:
        """(cost, input tokens, output tokens) to show for ``snap``.

        Snapshots that carry a ``cost`` (reported usage plus an estimate for pending rows)
        are shown as they are; otherwise the panel's own whole-job estimate is shown until
        the job ends, then the reported usage.
        """
        pending_in = int(getattr(snap, "pending_input_tokens", 0))
        pending_out = int(getattr(snap, "pending_output_tokens", 0))
        cost = getattr(snap, "cost", None)
        if isinstance(cost, pricing.Cost):
            return cost, snap.input_tokens + pending_in, snap.output_tokens + pending_out
        if snap.finished and snap.input_tokens + snap.output_tokens:
            real = pricing.cost(
                snap.model, snap.input_tokens, snap.output_tokens, snap.cached_tokens,
                estimated=False,
            )  # fmt: skip
            return real, snap.input_tokens, snap.output_tokens
        return self.estimate

    def _cost_html(self, snap: JobSnapshot) -> str:
        cost, tokens_in, tokens_out = self.cost_figures(snap)
        label = f'<span style="{_MUTED}">Cost:</span> '
        prices = f' <span style="{_MUTED}">&middot; prices: {_esc(pricing.source())}</span>'
        if cost.batch is None:
            text = (
                f"unknown price for <code>{_esc(snap.model)}</code> "
                f'<span style="{_MUTED}">(nbbatch.pricing.set_price sets one)</span>'
            )
            prices = f' <span style="{_MUTED}">&middot; not in {_esc(pricing.source())}</span>'
        elif cost.estimated:
            at_most = "" if self.job.spec.max_tokens is None else " at most"
            text = (
                f"<b>{_esc(cost)}</b> "
                f'<span style="{_MUTED}">(~{tokens_in:,} input + ~{tokens_out:,} output tokens'
                f"{at_most}; an estimate until the results report their usage)</span>"
            )
        else:
            text = (
                f"<b>{_esc(cost)}</b> &middot; saved {money(cost.saving or 0)} "
                f'<span style="{_MUTED}">(reported usage: {tokens_in:,} input, '
                f"{tokens_out:,} output tokens)</span>"
            )
        line = f'<div class="nbbatch-cost-line" style="{_TEXT}{_FONT}">{label}{text}{prices}</div>'
        return line + _stages_html(snap)

    @classmethod
    def _error_html(cls, snap: JobSnapshot) -> str:
        # What holds now (open retries, an alert on today's counts, a pending cancel),
        # then what is over, as history with its time.
        notes = "".join(
            cls._note(n.text, "warning" if n.kind == "alert" else "info")
            for n in snap.current_notes
        )
        late = getattr(snap, "overdue", None)
        if late:
            notes = cls._note(late, "warning") + notes
        if snap.failure:  # a cascade that could not go on: what and how to go on
            notes = cls._note(snap.failure, "danger") + notes
        return notes + _history_html(snap) + cls._problem_html(snap)

    @classmethod
    def _problem_html(cls, snap: JobSnapshot) -> str:
        if not snap.last_error:
            return ""
        if snap.last_error.startswith(POLLING_STOPPED):
            return cls._note(
                f"{snap.last_error}. The batches go on at the provider; press Refresh now to "
                "poll again.",
                "danger",
            )
        if snap.last_error.startswith(SENDING_STOPPED):
            return cls._note(snap.last_error[0].upper() + snap.last_error[1:], "danger")
        return cls._note(f"Polling error, retrying: {snap.last_error}", "warning")

    @staticmethod
    def _note(text: str, kind: str) -> str:
        colour = {
            "danger": styling.ROW_COLOURS["failed"],
            "warning": styling.ROW_COLOURS["expired"],
            "info": "rgba(33, 150, 243, 0.15)",
        }[kind]
        return (
            f'<div class="nbbatch-note nbbatch-note-{kind}" style="{_TEXT}{_FONT}'
            f" background: {colour}; padding: 4px 8px; border-radius: 3px; margin: 2px 0;"
            f' overflow-wrap: anywhere;">{_esc(text)}</div>'
        )

    @staticmethod
    def _summary_html(snap: JobSnapshot) -> str:
        c = snap.counts
        took = format_seconds(snap.elapsed)
        if snap.status == "cancelled":
            head = f"Cancelled: {c['succeeded']:,} of {c['total']:,} rows succeeded"
        elif snap.failure:
            head = f"Stopped in error: {c['succeeded']:,} of {c['total']:,} rows succeeded"
        elif c["succeeded"] + c["skipped"] == c["total"]:
            head = f"Done: all {c['succeeded']:,} rows succeeded"
            if c["skipped"]:
                head = f"Done: {c['succeeded']:,} rows succeeded, {c['skipped']:,} skipped"
        else:
            head = f"Done: {c['succeeded']:,} of {c['total']:,} rows succeeded"
        bad = [f"{c[s]:,} {s}" for s in (*styling.NOT_SUCCEEDED, "skipped") if c[s]]
        tail = f" ({', '.join(bad)})" if bad and not head.endswith("skipped") else ""
        hint = ""
        if snap.resubmittable:
            rows = "that row" if snap.resubmittable == 1 else f"those {snap.resubmittable:,} rows"
            hint = f" Resubmit failed sends only {rows} again."
        return (
            f'<div style="{_TEXT}{_FONT} margin-top: 4px;"><b>{_esc(head + tail)}</b> '
            f'<span style="{_MUTED}">in {took}.{hint}</span></div>'
        )

    # -- tables -----------------------------------------------------------------------------
    def _preview_output(self) -> dict[str, Any]:
        """The end-of-job preview: a few rows (those that did not succeed first) of the
        merged DataFrame, the result columns first, highlighted."""
        frame, status, where = self._merged()
        bad = frame[status].isin(styling.NOT_SUCCEEDED).to_numpy()
        n_bad = int(bad.sum())
        first_bad = np.flatnonzero(bad)[:PREVIEW_FAILED_ROWS]
        others = np.flatnonzero(~bad)[: PREVIEW_ROWS - len(first_bad)]
        take = np.union1d(first_bad, others)
        result, user = self._result_columns(frame, status)
        note = f"{where}: {len(take):,} of {len(frame):,} rows"
        if n_bad == len(first_bad):
            note += f", the {n_bad:,} that did not succeed first" if n_bad else ""
        else:
            note += f", {len(first_bad):,} of the {n_bad:,} that did not succeed first"
        hidden = len(user) - PREVIEW_USER_COLUMNS
        if hidden > 0:
            note += f", {hidden:,} more column{'s' if hidden > 1 else ''}"
        note += f". Every row: {where}" + ("; failed ones: Show failed rows." if n_bad else ".")
        shown = frame.iloc[take][result + user[:PREVIEW_USER_COLUMNS]]
        return _html_output(_shorten(shown), status, note, "nbbatch-preview-table")

    def _failed_output(self) -> dict[str, Any]:
        frame, status, where = self._merged()
        frame = frame[frame[status].isin(styling.NOT_SUCCEEDED)]
        result, user = self._result_columns(frame, status)
        note = f"{len(frame):,} rows did not succeed"
        if len(frame) > FAILED_ROWS_SHOWN:
            note += f"; the first {FAILED_ROWS_SHOWN} are shown"
        note += ". All of them: job.failed(); send failed/expired ones again: Resubmit failed."
        shown = frame.head(FAILED_ROWS_SHOWN)[result + user]
        return _html_output(_shorten(shown), status, note, "nbbatch-failed-table")

    def _merged(self) -> tuple[pd.DataFrame, str, str]:
        """(frame, its status column, how to get it): ``job.merge()``, or the results
        for a job attached without its data."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "still running" warnings are for users
            try:
                return self.job.merge(), f"{self.job.output}_status", "job.merge()"
            except MergeError:
                frame = self.job.results()[["status", "output", "error", "label"]]
                return frame, "status", "job.results()"

    def _result_columns(self, frame: pd.DataFrame, status: str) -> tuple[list[str], list[str]]:
        """(result columns, the user's columns): results first, beside the index; the
        raw structured reply is left to ``job.merge()``."""
        if status == "status":
            return ["status", "output", "error"], [c for c in frame.columns if c == "label"]
        added = [c for c in self.job.output_columns() if c in frame.columns]
        result = [c for c in added if not str(c).endswith("_raw")]
        values = [c for c in result if c not in (status, styling.error_column(frame, status))]
        ordered = values + [status] + [c for c in result if c not in values and c != status]
        return ordered, [c for c in frame.columns if c not in added]

    # -- buttons ----------------------------------------------------------------------------
    def _guard(self, name: str, handler: Any) -> Any:
        """Wrap a button handler so an error shows in the panel instead of vanishing into
        JupyterLab's log (where ipywidgets sends exceptions raised by callbacks)."""

        def run(_button: Any = None) -> None:
            try:
                handler()
            except Exception as exc:
                log.warning("nbbatch: %s failed for job %s: %s", name, self.job.id, exc)
                self._say(f"{name} failed: {exc}", "danger")

        return run

    def _say(self, text: str, kind: str = "info") -> None:
        self.message_text = text
        self.message.value = self._note(text, kind) if text else ""

    def on_refresh(self) -> None:
        """Poll now: wake the background poller, or start one if none is running."""
        self._say("")
        if self.job.snapshot().finished:
            self.job.refresh()
        else:
            self.job.start_polling().poke()

    def on_cancel(self) -> None:
        """First step of cancelling: ask for confirmation."""
        self._set_confirming(True)
        self._say("Cancel the job? Rows already finished keep their results.", "warning")

    def on_keep_running(self) -> None:
        """Second step, declined."""
        self._set_confirming(False)
        self._say("")

    def on_confirm_cancel(self) -> None:
        """Second step, confirmed: cancel at the provider and follow until it ends (the
        job's own note says so while it lasts, the summary says how it ended)."""
        self._set_confirming(False)
        self._say("Cancelling...", "info")
        self.job.cancel()
        self._ensure_polling()
        self._say("")

    def on_resubmit(self) -> None:
        """Send the failed and expired rows again and follow the new attempt."""
        n = self.job.snapshot().resubmittable
        self.resubmit_button.disabled = True
        self._say(f"Resubmitting {n:,} rows...", "info")
        new = self.job.resubmit_failed()
        if new is not self.job:  # follow the job that carries the new attempt
            self._follow(new)
        self._ensure_polling()
        self._say("")  # the job's note says what was resent, while it is out
        self.render(self.job.snapshot())

    def on_show_failed(self) -> None:
        """Show (or hide) ``job.failed()``, highlighted."""
        self._showing_failed = not self._showing_failed
        self.failed_rows.outputs = (self._failed_output(),) if self._showing_failed else ()
        self.show_failed_button.description = (
            "Hide failed rows" if self._showing_failed else "Show failed rows"
        )

    def _set_confirming(self, on: bool) -> None:
        self._confirming = on
        self.confirm_box.layout.display = "flex" if on else "none"
        self.cancel_button.disabled = on or self.job.snapshot().finished

    def _follow(self, job: BatchJob) -> None:
        with self._lock:
            self._unsubscribe()
            self.job = job
            self.estimate = self._estimate_cost()
            self._unsubscribe = job.subscribe(self.render)

    def _ensure_polling(self) -> None:
        """Make sure a poller follows the job's open batches (``start_polling`` starts a
        fresh one when the last one has finished or is about to)."""
        self.job.start_polling().poke()


def _batch_requests(batch: Any) -> str:
    """A batch's progress in the provider's unit, requests."""
    n = batch.n_requests
    done = min(int(getattr(batch, "done", 0) or 0), n)
    ok = int(getattr(batch, "succeeded", 0) or 0)
    if batch.status in ("expired", "cancelled", "failed", "ended") and ok:
        # An "expired" batch may have answered most of its requests: say how many.
        return f"{ok:,}/{n:,} requests succeeded"
    if 0 < done < n:
        return f"{done:,}/{n:,} requests done"
    return f"{n:,} request{'s' if n != 1 else ''}"


def _chip(state: str, label: str, value: str, extra: str = "", title: str = "") -> str:
    tip = f' title="{_esc(title)}"' if title else ""
    return (
        f'<span class="nbbatch-count nbbatch-count-{state}"{tip} style="display: inline-block;'
        f" padding: 1px 8px; margin: 2px 6px 2px 0; border-radius: 10px;"
        f' background: {_COUNT_COLOURS[state]}; white-space: nowrap;{extra}">'
        f"{_esc(label)} <b>{value}</b></span>"
    )


def _history_html(snap: JobSnapshot) -> str:
    """Notes that are no longer current, the newest few, each with its time."""
    past = snap.history
    if not past:
        return ""
    lines = [
        f'<div class="nbbatch-past"><span style="font-variant-numeric: tabular-nums;">'
        f"{_clock(n.time)}</span> {_esc(n.text)}</div>"
        for n in past[-MAX_HISTORY:]
    ]
    if len(past) > MAX_HISTORY:
        lines.insert(0, f"<div>{len(past) - MAX_HISTORY:,} earlier notes</div>")
    return (
        f'<div class="nbbatch-history" style="{_MUTED}{_FONT} margin: 2px 0;'
        f' overflow-wrap: anywhere;">Earlier:{"".join(lines)}</div>'
    )


def _percent(share: float) -> str:
    """0..1 as a whole percentage that says 100% only when it is (floor, not round)."""
    return "100%" if share >= 1 else f"{int(share * 100)}%"


def bar_html(snap: JobSnapshot, state: str) -> str:
    """The progress bar: rows collected in the state's colour, rows done at the provider
    but not yet collected lighter beside them, and the same in words (rows only)."""
    total = max(1, snap.counts["total"])
    done, ready = snap.done, snap.ready
    colour = _BAR_COLOURS[state]
    if ready:
        words = (
            f"<b>{_percent(snap.progress)}</b> &middot; {done:,} collected + ~{ready:,} done "
            f"at the provider, of {snap.counts['total']:,} rows"
        )
    else:
        words = f"<b>{_percent(snap.fraction)}</b> &middot; {done:,}/{snap.counts['total']:,} rows"
    return (
        f'<div class="nbbatch-bar" role="progressbar" aria-valuemin="0" aria-valuemax="100"'
        f' aria-valuenow="{int(snap.progress * 100)}" data-state="{state}" data-done="{done}"'
        f' data-ready="{ready}" data-total="{snap.counts["total"]}" style="display: flex;'
        f' flex-wrap: wrap; align-items: center; column-gap: 8px; margin: 4px 0;">'
        f'<div style="flex: 1 1 160px; min-width: 100px; height: 12px; border-radius: 3px;'
        f' overflow: hidden; display: flex; background: rgba(128, 128, 128, 0.22);">'
        f'<div class="nbbatch-bar-done" style="width: {100 * done / total:.2f}%;'
        f' background: {colour};"></div>'
        f'<div class="nbbatch-bar-ready" title="done at the provider, not yet collected"'
        f' style="width: {100 * ready / total:.2f}%; background: {colour}; opacity: 0.4;">'
        f'</div></div><span class="nbbatch-percent" style="{_TEXT}{_FONT}'
        f' white-space: nowrap;">{words}</span></div>'
    )


def _stages_html(snap: JobSnapshot) -> str:
    """A job that escalates: one line per stage (``stage 2 of 2: 312 rows on gpt-4o``)
    with its cost on its own model; nothing for other jobs."""
    lines = getattr(snap, "stage_lines", ())
    if not lines:
        return ""
    items = "".join(f"<div>{_esc(line)}</div>" for line in lines)
    return f'<div class="nbbatch-stages" style="{_MUTED}{_FONT}">{items}</div>'


def plain_text(snap: JobSnapshot) -> str:
    """The job as text, as saved in the notebook: the summary line, its stages (a job
    that escalates), and current notes."""
    lines = [snap.summary(), *snap.stage_lines]
    if snap.failure:
        lines.append(f"error: {snap.failure}")
    if snap.overdue:
        lines.append(f"note: {snap.overdue}")
    lines += [f"note: {n.text}" for n in snap.current_notes]
    if snap.last_error:
        problem = "" if snap.last_error.startswith(SENDING_STOPPED) else "polling error: "
        lines.append(problem + snap.last_error)
    return "\n".join(lines)


def static_html(snap: JobSnapshot) -> str:
    """A small, self-contained HTML summary of ``snap`` (no script, inline styles): what
    viewers without widgets show, e.g. GitHub and ``nbconvert --to html``."""
    state = JobPanel.bar_style(snap)
    if snap.finished:
        where = JobPanel._summary_html(snap)
    else:
        where = (
            f'<div style="{_TEXT}{_FONT}">Running ({_esc(snap.provider_status)}) as of '
            f"{_clock(snap.now)}</div>"
        )
    return (
        f'<div class="nbbatch-static" style="{_TEXT} border: 1px solid'
        f" var(--jp-border-color2, rgba(128, 128, 128, 0.4)); padding: 6px 10px;"
        f' max-width: 100%; box-sizing: border-box;">'
        f'<div style="{_FONT}"><b>nbbatch job {_esc(snap.job_id)}</b>'
        f' <span style="{_MUTED}">&middot; {_esc(snap.provider)} &middot;'
        f" {_esc(snap.models_text)} &middot; {snap.n_rows:,} rows</span></div>"
        f"{bar_html(snap, state)}{JobPanel._counts_html(snap)}{where}"
        f"{_stages_html(snap)}{JobPanel._error_html(snap)}</div>"
    )


def _shorten(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with long texts cut to :data:`PREVIEW_TEXT_CHARS` (display only)."""
    out = frame.copy()
    for name in out.columns:
        if out[name].dtype == object or pd.api.types.is_string_dtype(out[name].dtype):
            out[name] = out[name].map(
                lambda v: (
                    v[: PREVIEW_TEXT_CHARS - 1] + "\u2026"
                    if isinstance(v, str) and len(v) > PREVIEW_TEXT_CHARS
                    else v
                )
            )
    return out


def _text_output(text: str) -> dict[str, Any]:
    return {"output_type": "stream", "name": "stdout", "text": text}


def _html_output(frame: pd.DataFrame, status: str, note: str, css_class: str) -> dict[str, Any]:
    """An output for an ``Output`` widget, built directly (no display hook), so it works
    from the poller's thread and without a kernel."""
    output = status[: -len("_status")] if status != "status" else None
    table = styling.to_html(frame, output, cell_width=CELL_WIDTH)
    body = (
        f'<div class="{css_class}" style="{_TEXT} overflow-x: auto; max-width: 100%;">'
        f'<div style="{_MUTED}{_FONT} margin: 4px 0;">{_esc(note)}</div>{table}</div>'
    )
    return {
        "output_type": "display_data",
        "data": {"text/html": body, "text/plain": f"{note}\n{frame.to_string(max_rows=30)}"},
        "metadata": {},
    }


# -- entry points -----------------------------------------------------------------------------
_shown: dict[str, Any] = {}  # job id -> the cell run (execution count) that showed its panel


def _cell_run() -> Any:
    """An id of the cell being run (None outside IPython)."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return None
    return getattr(shell, "execution_count", None) if shell is not None else None


def show(job: BatchJob) -> JobPanel:
    """Display a new live panel for ``job``, polling in the background until it ends.

    The output has a display id: the panel replaces its text and static summary as the
    job changes, so a saved notebook shows the last state."""
    from IPython.display import display

    if not job.snapshot().finished:
        job.start_polling()
    panel = JobPanel(job)
    snap = job.snapshot()
    data = panel.bundle(snap)
    if not in_notebook():  # no output to keep up to date (a script with display=True)
        display({"text/plain": data["text/plain"]}, raw=True)
        _shown[job.id] = _cell_run()
        return panel
    with panel._lock:  # a render from the poller saves only once the output exists
        panel.display_id = f"nbbatch-{job.id}-{uuid.uuid4().hex[:8]}"
        panel._saved = panel._state(snap)
        panel._saved_at = time.monotonic()
    display(data, raw=True, display_id=panel.display_id)
    _shown[job.id] = _cell_run()
    return panel


def display_job(job: BatchJob) -> None:
    """How IPython shows a job (``job`` as a cell's last line, ``display(job)``): a live
    panel with a display id in a notebook, nothing more if this very cell run already
    showed one (``nb.submit`` does), the text elsewhere. Never raises for a widget
    problem: it falls back to the text with one warning saying why."""
    from IPython.display import display

    snap = job.snapshot()
    if not in_notebook():
        display({"text/plain": plain_text(snap)}, raw=True)
        return
    run = _cell_run()
    if run is not None and _shown.get(job.id) == run:
        return  # a second panel (or a stale line of text) under the first adds nothing
    try:
        show(job)
    except Exception as exc:
        warnings.warn(
            f"nbbatch: the live panel could not be shown ({type(exc).__name__}: {exc}); "
            "showing text instead. Check that ipywidgets is installed in the kernel and "
            "jupyterlab_widgets in JupyterLab.",
            RuntimeWarning,
            stacklevel=2,
        )
        display({"text/plain": plain_text(snap)}, raw=True)


def mimebundle(job: BatchJob) -> dict[str, Any]:
    """What ``job`` displays as for front ends that ask for a bundle: a live panel plus
    ``text/plain`` and a static ``text/html`` summary in a notebook, just the text
    elsewhere. (IPython itself shows a job through :func:`display_job`, which can keep
    the output up to date.) Never raises for a widget problem: it falls back to the text
    with one warning saying why."""
    text = plain_text(job.snapshot())
    if not in_notebook():
        return {"text/plain": text}
    # nb.submit(...) as a cell's last line already showed a panel in this very cell run;
    # a second copy of it under the first would only repeat it.
    run = _cell_run()
    if run is not None and _shown.get(job.id) == run:
        return {"text/plain": text}
    try:
        if not job.snapshot().finished:
            job.start_polling()
        panel = JobPanel(job)
        bundle = panel._repr_mimebundle_()
    except Exception as exc:
        warnings.warn(
            f"nbbatch: the live panel could not be shown ({type(exc).__name__}: {exc}); "
            "showing text instead. Check that ipywidgets is installed in the kernel and "
            "jupyterlab_widgets in JupyterLab.",
            RuntimeWarning,
            stacklevel=2,
        )
        return {"text/plain": text}
    _shown[job.id] = run
    return bundle
