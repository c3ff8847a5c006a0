"""What the notebook panel shows, as plain values: one pure function of a snapshot.

:func:`panel_values` turns a :class:`~nbbatch.snapshot.JobSnapshot` (and the few things
the panel itself knows: whether a poller runs, which buttons were
pressed) into :class:`PanelValues`, the HTML and the button states of every part. It
needs no kernel and no widget, so tests call it directly; :class:`nbbatch._panel.JobPanel`
only copies the values onto its widgets. :func:`plain_text` and :func:`static_html` are
the same job for viewers without widgets.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from . import pricing, states, styling
from .pricing import money
from .snapshot import JobSnapshot, format_seconds
from .snapshot import rows as count_rows

#: Batches listed by name (the newest); older ones are counted.
BATCHES_SHOWN = 4
#: Past notes shown under "Earlier" (the newest); older ones are counted.
MAX_HISTORY = 3
#: How ``last_error`` starts when the background poller stopped on an error.
POLLING_STOPPED = "polling stopped"
#: How ``last_error`` starts when an error stopped the background sender.
SENDING_STOPPED = "sending stopped"

#: (cost, input tokens, output tokens), as the panel shows them.
Estimate = tuple[pricing.Cost, int, int]

BAR_COLOURS = {  # the bar's collected part, by state; its "ready" part is lighter
    "info": "var(--jp-brand-color1, #1976d2)",
    "success": "var(--jp-success-color1, #388e3c)",
    "warning": "var(--jp-warn-color1, #f57c00)",
    "danger": "var(--jp-error-color1, #d32f2f)",
}
COUNT_COLOURS = {
    "total": "rgba(128, 128, 128, 0.18)",
    "ready": "rgba(33, 150, 243, 0.10)",
    "succeeded": "rgba(67, 160, 71, 0.25)",
    **{state: styling.ROW_COLOURS[state] for state in states.NOT_SUCCEEDED},
    "skipped": "rgba(128, 128, 128, 0.12)",
    "pending": "rgba(33, 150, 243, 0.20)",
}
TEXT = "color: var(--jp-ui-font-color1, inherit);"
MUTED = "color: var(--jp-ui-font-color2, inherit);"
# ipywidgets' HTML widget sets a 28px line height for one-line labels; ours wrap.
FONT = "font-size: var(--jp-ui-font-size1, 13px); line-height: 1.5;"


def esc(value: object) -> str:
    return html.escape(str(value))


def clock(t: float | None) -> str:
    """Seconds since the epoch as local ``HH:MM:SS`` ('-' for None)."""
    return "-" if t is None else time.strftime("%H:%M:%S", time.localtime(t))


def bar_style(snap: JobSnapshot) -> str:
    """``danger`` when an error stopped polling, ``info`` while running, ``success``
    when every row succeeded (or was skipped), else ``warning``."""
    if snap.last_error and snap.last_error.startswith(POLLING_STOPPED):
        return "danger"
    if snap.failure:
        return "danger"
    if not snap.finished:
        return "info"
    bad = sum(snap.counts[s] for s in states.NOT_SUCCEEDED)
    return "success" if bad == 0 else "warning"


def header_html(snap: JobSnapshot) -> str:
    host = urlparse(snap.base_url).hostname or ""
    # A provider's own address goes unsaid; any other (a proxy, an emulator) is shown.
    own = ("api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com")
    via = f" &middot; via {esc(host)}" if host and not host.endswith(own) else ""
    return (
        f'<div style="{TEXT} line-height: 1.4;">'
        f'<span style="font-size: var(--jp-ui-font-size2, 14px); font-weight: 600;">'
        f"nbbatch job {esc(snap.job_id)}</span><br>"
        f'<span style="{MUTED}{FONT}">{esc(snap.provider)} &middot; '
        f"<code>{esc(snap.models_text)}</code> &middot; {esc(snap.endpoint)} &middot; "
        f"{count_rows(snap.n_rows)}{via}</span></div>"
    )


def batches_html(snap: JobSnapshot) -> str:
    # The provider's unit: requests (identical rows share one), never rows.
    if not snap.batches:
        return f'<div style="{MUTED}{FONT}">no provider batch yet</div>'
    shown = snap.batches[-BATCHES_SHOWN:]
    items = [
        f'<span class="nbbatch-batch" style="margin-right: 12px; overflow-wrap: anywhere;">'
        f'<code style="word-break: break-all;">{esc(b.batch_id)}</code> '
        f"{esc(b.status.replace('_', ' '))} "
        f'<span style="{MUTED}">({batch_requests(b)}, {esc(b.label)})</span></span>'
        for b in shown
    ]
    more = len(snap.batches) - len(shown)
    if more:
        items.insert(0, f'<span style="{MUTED}">{more:,} older batches &middot; </span>')
    return (
        f'<div style="{TEXT}{FONT} display: flex; flex-wrap: wrap; row-gap: 2px;">'
        f'<span style="{MUTED} margin-right: 6px;">Batches:</span>{"".join(items)}</div>'
    )


def counts_html(snap: JobSnapshot) -> str:
    # Rows only (the user's unit); "ready" is the part of "pending" the provider has
    # already done, to be collected at the batch's end.
    chips = []
    for state in ("total", *states.SHOWN):
        n = snap.counts[state]
        dim = " opacity: 0.55;" if n == 0 and state != "total" else ""
        chips.append(chip(state, state, f"{n:,}", dim))
        if state == "pending" and snap.ready:
            chips.append(
                chip(
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
            f'<span class="nbbatch-extra" style="{MUTED} white-space: nowrap;'
            f' margin-right: 6px;">{esc(", ".join(extras))} &middot;</span>'
        )
    status = snap.status if snap.finished else f"provider: {snap.provider_status}"
    chips.append(
        f'<span class="nbbatch-status" style="{MUTED} white-space: nowrap;">'
        f"{esc(status.replace('_', ' '))}</span>"
    )
    return f'<div style="{TEXT}{FONT} line-height: 1.8;">{"".join(chips)}</div>'


def timing_html(snap: JobSnapshot, *, polling_active: bool) -> str:
    parts = [f"elapsed {format_seconds(snap.elapsed)}", f"last poll {clock(snap.last_poll)}"]
    if not snap.finished:
        if snap.next_poll is not None and snap.next_poll > snap.now:
            parts.append(f"next poll in {format_seconds(snap.next_poll - snap.now)}")
        elif polling_active:
            parts.append("polling in the background")
        else:
            parts.append("not polling (press Refresh now)")
        # Only with a rate measured from the provider's own progress; none is better
        # than a wrong one.
        if snap.eta is not None:
            parts.append(f"ETA ~{format_seconds(snap.eta)} at the provider's pace")
    return f'<div style="{MUTED}{FONT}">{" &middot; ".join(parts)}</div>'


def cost_figures(snap: JobSnapshot) -> Estimate:
    """(cost, input tokens, output tokens) to show for ``snap``: its own figures
    (reported usage plus the estimate for pending rows, priced by provider and model in
    one place, :func:`nbbatch.pricing.rates_for`)."""
    pending_in = int(getattr(snap, "pending_input_tokens", 0))
    pending_out = int(getattr(snap, "pending_output_tokens", 0))
    return snap.cost, snap.input_tokens + pending_in, snap.output_tokens + pending_out


def cost_html(snap: JobSnapshot, *, at_most: bool) -> str:
    cost, tokens_in, tokens_out = cost_figures(snap)
    label = f'<span style="{MUTED}">Cost:</span> '
    prices = f' <span style="{MUTED}">&middot; prices: {esc(pricing.source())}</span>'
    if cost.batch is None:
        text = (
            f"unknown price for <code>{esc(snap.model)}</code> "
            f'<span style="{MUTED}">(nbbatch.pricing.set_price sets one)</span>'
        )
        prices = f' <span style="{MUTED}">&middot; not in {esc(pricing.source())}</span>'
    elif cost.estimated:
        bound = " at most" if at_most else ""
        text = (
            f"<b>{esc(cost)}</b> "
            f'<span style="{MUTED}">(~{tokens_in:,} input + ~{tokens_out:,} output tokens'
            f"{bound}; an estimate until the results report their usage)</span>"
        )
    else:
        text = (
            f"<b>{esc(cost)}</b> &middot; saved {money(cost.saving or 0)} "
            f'<span style="{MUTED}">(reported usage: {tokens_in:,} input, '
            f"{tokens_out:,} output tokens)</span>"
        )
    line = f'<div class="nbbatch-cost-line" style="{TEXT}{FONT}">{label}{text}{prices}</div>'
    return line + stages_html(snap)


def error_html(snap: JobSnapshot) -> str:
    # What holds now (open retries, an alert on today's counts, a pending cancel),
    # then what is over, as history with its time.
    notes = "".join(
        note_html(n.text, "warning" if n.kind == "alert" else "info") for n in snap.current_notes
    )
    late = getattr(snap, "overdue", None)
    if late:
        notes = note_html(late, "warning") + notes
    if snap.failure:  # a cascade that could not go on: what and how to go on
        notes = note_html(snap.failure, "danger") + notes
    return notes + history_html(snap) + problem_html(snap)


def problem_html(snap: JobSnapshot) -> str:
    if not snap.last_error:
        return ""
    if snap.last_error.startswith(POLLING_STOPPED):
        return note_html(
            f"{snap.last_error}. The batches go on at the provider; press Refresh now to "
            "poll again.",
            "danger",
        )
    if snap.last_error.startswith(SENDING_STOPPED):
        return note_html(snap.last_error[0].upper() + snap.last_error[1:], "danger")
    return note_html(f"Polling error, retrying: {snap.last_error}", "warning")


def note_html(text: str, kind: str) -> str:
    colour = {
        "danger": styling.ROW_COLOURS["failed"],
        "warning": styling.ROW_COLOURS["expired"],
        "info": "rgba(33, 150, 243, 0.15)",
    }[kind]
    return (
        f'<div class="nbbatch-note nbbatch-note-{kind}" style="{TEXT}{FONT}'
        f" background: {colour}; padding: 4px 8px; border-radius: 3px; margin: 2px 0;"
        f' overflow-wrap: anywhere;">{esc(text)}</div>'
    )


def summary_html(snap: JobSnapshot) -> str:
    c = snap.counts
    took = format_seconds(snap.elapsed)
    if snap.status == "cancelled":
        head = f"Cancelled: {c['succeeded']:,} of {count_rows(c['total'])} succeeded"
    elif snap.failure:
        head = f"Stopped in error: {c['succeeded']:,} of {count_rows(c['total'])} succeeded"
    elif c["succeeded"] + c["skipped"] == c["total"]:
        head = (
            "Done: the row succeeded"
            if c["succeeded"] == 1
            else f"Done: all {c['succeeded']:,} rows succeeded"
        )
        if c["skipped"]:
            head = f"Done: {count_rows(c['succeeded'])} succeeded, {c['skipped']:,} skipped"
    else:
        head = f"Done: {c['succeeded']:,} of {count_rows(c['total'])} succeeded"
    bad = [f"{c[s]:,} {s}" for s in (*states.NOT_SUCCEEDED, states.SKIPPED) if c[s]]
    tail = f" ({', '.join(bad)})" if bad and not head.endswith("skipped") else ""
    hint = ""
    if snap.resubmittable:
        rows = "that row" if snap.resubmittable == 1 else f"those {snap.resubmittable:,} rows"
        hint = f" Resubmit failed sends only {rows} again."
    return (
        f'<div style="{TEXT}{FONT} margin-top: 4px;"><b>{esc(head + tail)}</b> '
        f'<span style="{MUTED}">in {took}.{hint}</span></div>'
    )


def batch_requests(batch: Any) -> str:
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


def chip(state: str, label: str, value: str, extra: str = "", title: str = "") -> str:
    tip = f' title="{esc(title)}"' if title else ""
    return (
        f'<span class="nbbatch-count nbbatch-count-{state}"{tip} style="display: inline-block;'
        f" padding: 1px 8px; margin: 2px 6px 2px 0; border-radius: 10px;"
        f' background: {COUNT_COLOURS[state]}; white-space: nowrap;{extra}">'
        f"{esc(label)} <b>{value}</b></span>"
    )


def history_html(snap: JobSnapshot) -> str:
    """Notes that are no longer current, the newest few, each with its time."""
    past = snap.history
    if not past:
        return ""
    lines = [
        f'<div class="nbbatch-past"><span style="font-variant-numeric: tabular-nums;">'
        f"{clock(n.time)}</span> {esc(n.text)}</div>"
        for n in past[-MAX_HISTORY:]
    ]
    if len(past) > MAX_HISTORY:
        lines.insert(0, f"<div>{len(past) - MAX_HISTORY:,} earlier notes</div>")
    return (
        f'<div class="nbbatch-history" style="{MUTED}{FONT} margin: 2px 0;'
        f' overflow-wrap: anywhere;">Earlier:{"".join(lines)}</div>'
    )


def percent(share: float) -> str:
    """0..1 as a whole percentage that says 100% only when it is (floor, not round)."""
    return "100%" if share >= 1 else f"{int(share * 100)}%"


def bar_html(snap: JobSnapshot, state: str) -> str:
    """The progress bar: rows collected in the state's colour, rows done at the provider
    but not yet collected lighter beside them, and the same in words (rows only)."""
    total = max(1, snap.counts["total"])
    done, ready = snap.done, snap.ready
    colour = BAR_COLOURS[state]
    if ready:
        words = (
            f"<b>{percent(snap.progress)}</b> &middot; {done:,} collected + ~{ready:,} done "
            f"at the provider, of {snap.counts['total']:,} rows"
        )
    else:
        of_rows = count_rows(snap.counts["total"])
        words = f"<b>{percent(snap.fraction)}</b> &middot; {done:,}/{of_rows}"
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
        f'</div></div><span class="nbbatch-percent" style="{TEXT}{FONT}'
        f' white-space: nowrap;">{words}</span></div>'
    )


def stages_html(snap: JobSnapshot) -> str:
    """A job that escalates: one line per stage (``stage 2 of 2: 312 rows on gpt-4o``)
    with its cost on its own model; nothing for other jobs."""
    lines = getattr(snap, "stage_lines", ())
    if not lines:
        return ""
    items = "".join(f"<div>{esc(line)}</div>" for line in lines)
    return f'<div class="nbbatch-stages" style="{MUTED}{FONT}">{items}</div>'


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
    state = bar_style(snap)
    if snap.finished:
        where = summary_html(snap)
    else:
        where = (
            f'<div style="{TEXT}{FONT}">Running ({esc(snap.provider_status)}) as of '
            f"{clock(snap.now)}</div>"
        )
    return (
        f'<div class="nbbatch-static" style="{TEXT} border: 1px solid'
        f" var(--jp-border-color2, rgba(128, 128, 128, 0.4)); padding: 6px 10px;"
        f' max-width: 100%; box-sizing: border-box;">'
        f'<div style="{FONT}"><b>nbbatch job {esc(snap.job_id)}</b>'
        f' <span style="{MUTED}">&middot; {esc(snap.provider)} &middot;'
        f" {esc(snap.models_text)} &middot; {count_rows(snap.n_rows)}</span></div>"
        f"{bar_html(snap, state)}{counts_html(snap)}{where}"
        f"{stages_html(snap)}{error_html(snap)}</div>"
    )


@dataclass(frozen=True)
class PanelValues:
    """Every value the panel's widgets take for one snapshot (see :func:`panel_values`)."""

    header: str
    bar_state: str  # info | success | warning | danger
    progress: str
    counts: str
    batches: str
    timing: str
    cost: str
    error: str
    summary: str  # "" while the job runs
    cancel_disabled: bool
    resubmit_disabled: bool
    resubmit_description: str
    show_failed_disabled: bool
    show_failed_description: str
    showing_failed: bool  # False once no row is left to show
    stop_confirming: bool  # the job ended while a cancel waited for its confirmation


def panel_values(
    snap: JobSnapshot,
    *,
    at_most: bool = False,
    polling_active: bool = False,
    confirming: bool = False,
    showing_failed: bool = False,
) -> PanelValues:
    """The panel's values for ``snap`` (its cost is the snapshot's; ``at_most``: an
    upper bound, ``max_tokens`` was set), ``polling_active``
    whether a background poller runs, ``confirming`` and ``showing_failed`` the state
    of the Cancel and Show failed rows buttons."""
    c = snap.counts
    bad = sum(c[s] for s in states.NOT_SUCCEEDED)
    showing_failed = showing_failed and bad > 0
    resubmittable = snap.resubmittable
    state = bar_style(snap)
    return PanelValues(
        header=header_html(snap),
        bar_state=state,
        progress=bar_html(snap, state),
        counts=counts_html(snap),
        batches=batches_html(snap),
        timing=timing_html(snap, polling_active=polling_active),
        cost=cost_html(snap, at_most=at_most),
        error=error_html(snap),
        summary=summary_html(snap) if snap.finished else "",
        cancel_disabled=snap.finished or confirming,
        resubmit_disabled=resubmittable == 0,
        resubmit_description=(
            f"Resubmit failed ({resubmittable:,})" if resubmittable else "Resubmit failed"
        ),
        show_failed_disabled=bad == 0,
        show_failed_description="Hide failed rows" if showing_failed else "Show failed rows",
        showing_failed=showing_failed,
        stop_confirming=snap.finished and confirming,
    )
