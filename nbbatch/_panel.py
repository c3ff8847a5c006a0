"""The live notebook panel of a job: ipywidgets that render the job's snapshots.

The panel is a view, like :mod:`nbbatch._console`: it subscribes to the job, turns each
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

import logging
import threading
import time
import uuid
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import _panelview as view
from . import columns, pricing, states, styling
from ._console import in_notebook
from ._errors import MergeError
from .columns import Role
from .snapshot import JobSnapshot

if TYPE_CHECKING:
    import ipywidgets as widgets

    from .job import BatchJob

log = logging.getLogger("nbbatch")

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
#: While the job runs, the saved output's text is replaced at most this often (seconds);
#: a change of status, of the current notes, or the end is saved at once.
SAVED_EVERY = 30.0
#: Button feedback that only lasts while what it started runs.
_TRANSIENT_MESSAGES = ("Cancelling", "Resubmitting")

# Shared with the view functions, and named here too.
BATCHES_SHOWN = view.BATCHES_SHOWN
MAX_HISTORY = view.MAX_HISTORY
POLLING_STOPPED = view.POLLING_STOPPED
SENDING_STOPPED = view.SENDING_STOPPED
bar_html = view.bar_html
plain_text = view.plain_text
static_html = view.static_html


class JobPanel:
    """Widgets showing one job, updated from its snapshots; see the module docstring.

    ``panel.widget`` is the top-level ``VBox`` to display. The panel subscribes to the
    job when built and unsubscribes in :meth:`close`. Every update goes through
    :meth:`render`, which never raises (a view must not break the poller).
    """

    def __init__(self, job: BatchJob) -> None:
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
        self._build_texts()
        self._build_buttons()
        self._build_tables()
        self._build_card()
        self._wire_buttons()
        self._unsubscribe = job.subscribe(self.render)
        self.render(job.snapshot())

    # -- the widget tree, part by part --------------------------------------------------------
    def _build_texts(self) -> None:
        """The HTML parts, filled by :meth:`render`: header, bar, counts, batches, timing,
        cost, notes (``error``) and the last button's feedback (``message``)."""
        import ipywidgets as widgets

        def part(css: str) -> widgets.HTML:
            w = widgets.HTML(layout=widgets.Layout(width="100%"))
            w.add_class(css)
            return w

        self.header = part("nbbatch-header")
        self.progress = part("nbbatch-progress")  # a two-part bar: collected, ready
        self.counts = part("nbbatch-counts")
        self.batches = part("nbbatch-batches")
        self.timing = part("nbbatch-timing")
        self.cost = part("nbbatch-cost")
        self.error = part("nbbatch-error")
        self.message = part("nbbatch-message")
        self.summary = part("nbbatch-summary")

    def _build_buttons(self) -> None:
        """Refresh, Cancel (with its confirmation), Resubmit failed, Show failed rows."""
        import ipywidgets as widgets

        def button(css: str, description: str, tooltip: str = "", **kw: Any) -> widgets.Button:
            layout = widgets.Layout(width="auto", min_width="0", margin="2px 6px 2px 0")
            b = widgets.Button(description=description, tooltip=tooltip, layout=layout, **kw)
            b.add_class(css)
            return b

        self.refresh_button = button(
            "nbbatch-refresh", "Refresh now", "Poll the provider now", icon="refresh"
        )
        self.cancel_button = button(
            "nbbatch-cancel", "Cancel", "Cancel the open batches", icon="stop"
        )
        self.confirm_button = button(
            "nbbatch-confirm-cancel", "Confirm cancel",
            "Cancel every open batch at the provider (rows already done keep results)",
            button_style="danger",
        )  # fmt: skip
        self.keep_button = button("nbbatch-keep-running", "Keep running")
        self.resubmit_button = button(
            "nbbatch-resubmit", "Resubmit failed",
            "Send only the failed and expired rows again (succeeded rows are not resent)",
            icon="repeat",
        )  # fmt: skip
        self.show_failed_button = button(
            "nbbatch-show-failed", "Show failed rows",
            "Show the rows that did not succeed, with their errors", icon="table",
        )  # fmt: skip
        self.confirm_box = widgets.HBox(
            [self.confirm_button, self.keep_button],
            layout=widgets.Layout(display="none", flex_flow="row wrap"),
        )
        self.buttons = widgets.HBox(
            [
                self.refresh_button,
                self.cancel_button,
                self.confirm_box,
                self.resubmit_button,
                self.show_failed_button,
            ],
            layout=widgets.Layout(width="100%", flex_flow="row wrap", margin="4px 0"),
        )

    def _build_tables(self) -> None:
        """The end-of-job preview and the failed rows (outputs, filled on demand)."""
        import ipywidgets as widgets

        self.preview = widgets.Output(layout=widgets.Layout(width="100%", overflow="auto"))
        self.preview.add_class("nbbatch-preview")
        self.failed_rows = widgets.Output(
            layout=widgets.Layout(width="100%", max_height="420px", overflow="auto")
        )
        self.failed_rows.add_class("nbbatch-failed-rows")

    def _build_card(self) -> None:
        """The top-level box, in reading order."""
        import ipywidgets as widgets

        parts = [
            self.header, self.progress, self.counts, self.batches, self.timing, self.cost,
            self.error, self.buttons, self.message, self.summary, self.preview,
            self.failed_rows,
        ]  # fmt: skip
        self.widget = widgets.VBox(
            parts,
            layout=widgets.Layout(
                width="100%",
                max_width="100%",
                padding="8px 10px",
                # A theme colour (with a fallback for other front ends), no background of
                # its own: the card sits on the notebook's, light or dark.
                border="1px solid var(--jp-border-color2, rgba(128, 128, 128, 0.4))",
            ),
        )
        self.widget.add_class("nbbatch-panel")

    def _wire_buttons(self) -> None:
        self.refresh_button.on_click(self._guard("Refresh", self.on_refresh))
        self.cancel_button.on_click(self._guard("Cancel", self.on_cancel))
        self.confirm_button.on_click(self._guard("Cancel", self.on_confirm_cancel))
        self.keep_button.on_click(self._guard("Keep running", self.on_keep_running))
        self.resubmit_button.on_click(self._guard("Resubmit failed", self.on_resubmit))
        self.show_failed_button.on_click(self._guard("Show failed rows", self.on_show_failed))

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
                self.error.value = view.note_html(f"The panel could not update: {exc}", "danger")

    def _render(self, snap: JobSnapshot) -> None:
        c = snap.counts
        # The slow part (merging for the preview) first, so the widgets then change
        # together: the bar does not turn green long before the preview appears.
        final_key = (c["total"], *(c[s] for s in states.NOT_SUCCEEDED), len(snap.batches))
        preview = None
        if snap.finished and final_key != self._final_key:  # once per ending, not per poll
            try:
                preview = self._preview_output()
            except Exception as exc:  # the counts and the buttons still have to show
                log.exception("nbbatch: no preview for job %s", snap.job_id)
                preview = _text_output(f"No preview: {exc}")
        v = self.values(snap)
        self.header.value = v.header
        self.batches.value = v.batches
        self.counts.value = v.counts
        self.timing.value = v.timing
        self.cost.value = v.cost
        self.error.value = v.error
        self.cancel_button.disabled = v.cancel_disabled
        if v.stop_confirming:
            self._set_confirming(False)
        if snap.finished and self.message_text.startswith(_TRANSIENT_MESSAGES):
            self._say("")  # what a button started is over: the notes and summary say how
        self.resubmit_button.disabled = v.resubmit_disabled
        self.resubmit_button.description = v.resubmit_description
        self.show_failed_button.disabled = v.show_failed_disabled
        if self._showing_failed and not v.showing_failed:
            self._showing_failed = False
            self.failed_rows.outputs = ()
        self.show_failed_button.description = v.show_failed_description
        self.summary.value = v.summary
        if snap.finished:
            if preview is not None:
                self._final_key = final_key
                self.preview.outputs = (preview,)
                if self._showing_failed:
                    self.failed_rows.outputs = (self._failed_output(),)
        else:
            self._final_key = None
            self.preview.outputs = ()
        # The bar last: once it changes, everything else already shows the same state.
        self.bar_state = v.bar_state
        self.progress.value = v.progress
        self._save(snap)

    def values(self, snap: JobSnapshot) -> view.PanelValues:
        """What the widgets show for ``snap`` (see :func:`nbbatch._panelview.panel_values`)."""
        return view.panel_values(
            snap,
            at_most=self.job.spec.max_tokens is not None,
            polling_active=self.job.polling_active,
            confirming=self._confirming,
            showing_failed=self._showing_failed,
        )

    #: The bar's colour for a snapshot (kept here for callers of ``JobPanel.bar_style``).
    bar_style = staticmethod(view.bar_style)

    # -- cost -------------------------------------------------------------------------------
    def cost_figures(self, snap: JobSnapshot) -> tuple[pricing.Cost, int, int]:
        """(cost, input tokens, output tokens) to show for ``snap`` (see
        :func:`nbbatch._panelview.cost_figures`)."""
        return view.cost_figures(snap)

    # -- tables -----------------------------------------------------------------------------
    def _preview_output(self) -> dict[str, Any]:
        """The end-of-job preview: a few rows (those that did not succeed first) of the
        merged DataFrame, the result columns first, highlighted."""
        frame, status, where = self._merged()
        bad = frame[status].isin(states.NOT_SUCCEEDED).to_numpy()
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
        frame = frame[frame[status].isin(states.NOT_SUCCEEDED)]
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
                status = columns.name_of(Role.STATUS, self.job.output)
                return self.job.merge(), status, "job.merge()"
            except MergeError:
                names = [columns.name_of(r, None) for r in (Role.STATUS, Role.OUTPUT, Role.ERROR)]
                frame = self.job.results()[[*names, "label"]]
                return frame, names[0], "job.results()"

    def _result_columns(self, frame: pd.DataFrame, status: str) -> tuple[list[str], list[str]]:
        """(result columns, the user's columns): results first, beside the index; the
        raw structured reply is left to ``job.merge()``."""
        if status == columns.name_of(Role.STATUS, None):  # job.results()
            names = [columns.name_of(r, None) for r in (Role.STATUS, Role.OUTPUT, Role.ERROR)]
            return names, [c for c in frame.columns if c == "label"]
        role = columns.roles(self.job.output, self.job.spec.response_format, lineage=True)
        added = [c for c in self.job.output_columns() if c in frame.columns]
        result = [c for c in added if role.get(c) is not Role.RAW]
        values = [c for c in result if role.get(c) not in (Role.STATUS, Role.ERROR)]
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
        self.message.value = view.note_html(text, kind) if text else ""

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
            self._unsubscribe = job.subscribe(self.render)

    def _ensure_polling(self) -> None:
        """Make sure a poller follows the job's open batches (``start_polling`` starts a
        fresh one when the last one has finished or is about to)."""
        self.job.start_polling().poke()


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
    output = columns.output_of(status)
    table = styling.to_html(frame, output, cell_width=CELL_WIDTH)
    body = (
        f'<div class="{css_class}" style="{view.TEXT} overflow-x: auto; max-width: 100%;">'
        f'<div style="{view.MUTED}{view.FONT} margin: 4px 0;">{view.esc(note)}</div>{table}</div>'
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
        _warn_no_panel(exc)
        display({"text/plain": plain_text(snap)}, raw=True)


def _warn_no_panel(exc: Exception) -> None:
    """Say why the live panel could not be shown (the text is shown instead), pointing
    at the caller of :func:`display_job` or :func:`mimebundle`."""
    warnings.warn(
        f"nbbatch: the live panel could not be shown ({type(exc).__name__}: {exc}); "
        "showing text instead. Check that ipywidgets is installed in the kernel and "
        "jupyterlab_widgets in JupyterLab.",
        RuntimeWarning,
        stacklevel=3,
    )


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
        _warn_no_panel(exc)
        return {"text/plain": text}
    _shown[job.id] = run
    return bundle
