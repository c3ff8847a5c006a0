"""What a job says about itself: which of its notes are still true, and the alert.

A note records something the job did or noticed (see :class:`~nbbatch.snapshot.Note`).
Some describe a state and are *current* while it lasts: a retry or resubmission while
its attempt has rows pending, a cancel until every row has ended, the failure-rate alert
while the counts are above the threshold (with today's numbers). Everything else is
history at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .snapshot import Note


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
    sent = sum(counts.get(s, 0) for s in ("succeeded", "failed", "expired", "cancelled"))
    bad = counts.get("failed", 0) + counts.get("expired", 0)
    if not sent or bad / sent <= threshold:
        return None
    return (
        f"{bad:,} of {sent:,} rows failed or expired ({bad / sent:.0%}, above the alert "
        f"threshold of {threshold:.0%}); see job.failed()"
    )
