"""Whether a job needs attention: deadlines, the failure rate, completeness, errors; and
what a job says about itself (its notes, which of them still hold, the alert).

What a monitor asks without watching a notebook: did the nightly job finish in time,
did it fail too often, did every row it sent come back, did the provider refuse a batch.
The answers come from the ledger alone (a job's record, row counts and batches), so
``nbbatch check`` can give them from cron; the job, the panel and ``nbbatch jobs`` use
the same functions.

A note records something the job did or noticed (:class:`Note`). Some describe a state
and are *current* while it lasts: a retry or resubmission while its attempt has rows
pending, a cancel until every row has ended, the failure-rate alert while the counts are
above the threshold (with today's numbers). Everything else is history at once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import states
from ._errors import InputError

if TYPE_CHECKING:
    from ._context import JobContext
    from .snapshot import JobSnapshot

log = logging.getLogger("nbbatch")

#: A duration as ``deadline=`` takes it: ``"6h"``, ``"90m"``, ``"1d12h"``, ``"45s"``.
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])", re.IGNORECASE)
_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def deadline_at(deadline: Any, created: float) -> float | None:
    """``deadline`` (a :class:`datetime.timedelta`, a duration string like ``"6h"`` or
    ``"1h30m"``, or a :class:`datetime.datetime`; naive means local time) as seconds
    since the epoch, counted from ``created``; None for None."""
    if deadline is None:
        return None
    if isinstance(deadline, dt.timedelta):
        seconds = deadline.total_seconds()
    elif isinstance(deadline, dt.datetime):
        return deadline.timestamp()
    elif isinstance(deadline, str):
        text = deadline.strip()
        parts = _DURATION.findall(text)
        if not parts or _DURATION.sub("", text).strip():
            raise InputError(
                f"deadline={deadline!r} is not a duration: use a timedelta, a datetime, or "
                "a string like '6h', '90m', '1d' or '1h30m'."
            )
        seconds = sum(float(n) * _SECONDS[u.lower()] for n, u in parts)
    else:
        raise InputError(
            f"deadline must be a timedelta, a duration like '6h' or a datetime, "
            f"found {type(deadline).__name__}."
        )
    if seconds <= 0:
        raise InputError(f"deadline={deadline!r} must lie in the future.")
    return created + seconds


def format_seconds(seconds: float | None) -> str:
    """``75`` -> ``'1m 15s'``; None -> ``'-'``."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def when(timestamp: float) -> str:
    """Seconds since the epoch as ``2026-12-01 22:30 UTC``."""
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def overdue_text(deadline: float | None, pending: int, now: float) -> str | None:
    """The overdue note for a job with ``pending`` rows at ``now``, or None."""
    if deadline is None or pending == 0 or now <= deadline:
        return None
    return f"overdue: {pending:,} rows still pending after the deadline of {when(deadline)}"


def incomplete_text(missing: int, sent: int) -> str | None:
    """The completeness warning for a finished job, or None when every row came back."""
    if not missing:
        return None
    return (
        f"incomplete: {missing:,} of {sent:,} rows sent got no result from the provider "
        "(missing_result); job.resubmit_failed() sends them again"
    )


def missing_results(state: Any) -> int:
    """Rows of a job's row state (:class:`nbbatch._rowstore.RowState`) that ended failed
    because the provider returned no result for them."""
    import numpy as np
    import pyarrow.compute as pc

    from . import _rowstore as rowstore

    failed = state.statuses() == rowstore.STATES.index("failed")
    if not failed.any():
        return 0
    kinds = state.column("error_type")
    missing = pc.fill_null(pc.equal(kinds, "missing_result"), False).to_numpy(zero_copy_only=False)
    return int(np.count_nonzero(failed & missing))


@dataclass(frozen=True)
class Problem:
    """One reason a job needs attention: ``kind`` is ``overdue``, ``failure_rate``,
    ``incomplete``, ``errored``, ``unreachable``, ``waiting`` (rows to send that nothing
    sends) or ``unreadable`` (its ledger record is broken)."""

    job_id: str
    kind: str
    text: str

    def line(self) -> str:
        """The line ``nbbatch check`` prints."""
        return f"{self.job_id} {self.kind}: {self.text.removeprefix(self.kind + ': ')}"


def problems(
    record: Mapping[str, Any],
    counts: Mapping[str, int],
    batches: Sequence[Mapping[str, Any]],
    *,
    missing: int,
    now: float,
) -> list[Problem]:
    """What needs attention in one job, from its ledger record, row counts, batches and
    its number of rows without a result (:func:`missing_results`)."""
    job_id = str(record["id"])
    found: list[Problem] = []
    late = overdue_text(record.get("deadline"), int(counts.get("pending", 0)), now)
    if late:
        found.append(Problem(job_id, "overdue", late))
    threshold = (record.get("policy") or {}).get("alert_threshold")
    alert = alert_text(dict(counts), threshold)
    if alert:
        found.append(Problem(job_id, "failure_rate", alert))
    sent = sum(int(counts.get(s, 0)) for s in states.SENT)
    if not counts.get("pending"):
        gap = incomplete_text(missing, sent)
        if gap:
            found.append(Problem(job_id, "incomplete", gap))
    unresolved = sum(int(counts.get(s, 0)) for s in states.RESUBMITTABLE)
    for b in batches if unresolved else ():  # a batch's failure its retries made good is over
        if b.get("failure"):
            found.append(
                Problem(job_id, "errored", f"batch {b['batch_id']} failed: {b['failure']}")
            )
    return found


#: Kinds of notes. ``alert``, ``retry``, ``resubmit``, ``cancel`` describe a state and are
#: current while it lasts; every other kind records an event and is history at once.
NOTE_KINDS = ("alert", "retry", "resubmit", "cancel", "fallback", "event")


@dataclass(frozen=True)
class Note:
    """Something the job did or noticed: when (seconds since the epoch), what kind (one of
    :data:`NOTE_KINDS`), the words, and whether it is still true (``current``) or history."""

    time: float
    kind: str
    text: str
    current: bool = False
    attempt: int | None = None  # the attempt a retry or resubmission sent


def mark_current(
    notes: Sequence[Note], open_attempts: set[int], finished: bool, alert: str | None, now: float
) -> tuple[Note, ...]:
    """``notes`` with ``current`` set as the module docstring says; ``alert`` is the
    alert on today's counts (None when below the threshold or not raised)."""
    last_alert = max((i for i, n in enumerate(notes) if n.kind == "alert"), default=-1)
    out = []
    for i, n in enumerate(notes):
        if n.kind in ("retry", "resubmit"):
            n = dataclasses.replace(n, current=n.attempt in open_attempts)
        elif n.kind == "cancel":
            n = dataclasses.replace(n, current=not finished)
        elif i == last_alert and alert is not None:
            n = dataclasses.replace(n, text=alert, current=True)
        out.append(n)
    if alert is not None and last_alert < 0:  # e.g. attached to a finished job
        out.append(Note(now, "alert", alert, current=True))
    return tuple(out)


def alert_text(counts: dict[str, int], threshold: float | None) -> str | None:
    """The failure-rate alert for these row counts, or None at or below ``threshold``."""
    if threshold is None:
        return None
    sent = sum(counts.get(s, 0) for s in states.SENT)
    bad = sum(counts.get(s, 0) for s in states.RESUBMITTABLE)
    if not sent or bad / sent <= threshold:
        return None
    return (
        f"{bad:,} of {sent:,} rows failed or expired ({bad / sent:.0%}, above the alert "
        f"threshold of {threshold:.0%}); see job.failed()"
    )


def log_progress(
    ctx: JobContext, snap: JobSnapshot, *, overdue_logged: bool, done_logged: bool
) -> tuple[bool, bool]:
    """Health signals on logger ``nbbatch`` and in the ledger: the end of the job (INFO,
    once, by the first process to see it end), a job left with rows that got no result
    (WARNING), and a job past its deadline (WARNING, once per session). Returns
    whether the overdue and the end were logged, for the next call."""
    if snap.overdue and not overdue_logged:
        overdue_logged = True
        ctx.ledger.event(ctx.id, "overdue", snap.overdue)
        log.warning("nbbatch job %s: %s", ctx.id, snap.overdue)
    if not snap.finished or done_logged:
        return overdue_logged, done_logged
    record = ctx.ledger.job(ctx.id) or {}
    if record.get("ended_at") is not None:
        return overdue_logged, True  # its end was reported when it happened
    ctx.ledger.set_job_time(ctx.id, "ended_at", snap.now)
    c = snap.counts
    log.info(
        "nbbatch job %s ended after %s: %d of %d rows succeeded, %d failed, %d expired, "
        "%d cancelled, %d skipped; cost %s",
        ctx.id, format_seconds(snap.elapsed), c["succeeded"], c["total"], c["failed"],
        c["expired"], c["cancelled"], c["skipped"], snap.cost,
    )  # fmt: skip
    sent = sum(c[s] for s in states.SENT)
    gap = incomplete_text(missing_results(ctx.row_state()), sent)
    if gap:
        ctx.warn(gap)
    return overdue_logged, True
