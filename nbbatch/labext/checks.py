"""The sidebar's own checks of open jobs, so that it never shows a job as live that
nobody is following.

A job runs at its provider whether or not a kernel polls it. While the sidebar is
visible it asks the server (``POST /nbbatch/api/check``), when it opens and then every
``CHECK_EVERY`` seconds, to look at the jobs still running: the server polls them **one
at a time**, oldest check first, each as ``job.refresh(send=False)`` does (poll and
collect the batches already at the provider; never create a batch, so nothing new is
sent or paid for). A job some process checked in the last ``FRESH`` seconds (its kernel
polls it) is left alone. When a check fails (no key for the job in the server's
environment, the provider unreachable) the error is kept here and shown with the job,
which the view then marks stale (see :func:`.views.jobs_view`).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._ledger import Ledger

#: Seconds between two checks the sidebar asks for while it is visible: modest, as
#: each check polls every open batch of each running job once.
CHECK_EVERY = 60.0
#: A job checked (by anyone) within this many seconds is not checked again.
FRESH = 30.0


class Checks:
    """One server's checks: at most one sweep at a time, and the last failure per job
    (``errors``: job id -> (when, text), scrubbed of keys)."""

    def __init__(self) -> None:
        self._sweep = threading.Lock()
        self._lock = threading.Lock()
        self._errors: dict[str, tuple[float, str]] = {}

    def errors(self) -> dict[str, tuple[float, str]]:
        """The last failed check of each job whose latest check failed (a copy)."""
        with self._lock:
            return dict(self._errors)

    def note(self, job_id: str, error: str | None, at: float | None = None) -> None:
        """Record how a check of ``job_id`` went: ``error`` None when the provider
        answered."""
        from .._scrub import scrub

        with self._lock:
            if error is None:
                self._errors.pop(job_id, None)
            else:
                self._errors[job_id] = (time.time() if at is None else at, scrub(error))

    def check_open(self, ledger: Ledger, fresh: float = FRESH) -> dict[str, Any]:
        """Check every running job not checked in the last ``fresh`` seconds, one after
        the other: ``{"checked": [ids], "failed": [ids], "busy": bool}``, ``busy`` when
        another sweep was already under way (this one then does nothing)."""
        if not self._sweep.acquire(blocking=False):
            return {"checked": [], "failed": [], "busy": True}
        try:
            checked: list[str] = []
            failed: list[str] = []
            for job_id in due(ledger, time.time() - fresh):
                error = check_one(job_id)
                self.note(job_id, error)
                (failed if error else checked).append(job_id)
            return {"checked": checked, "failed": failed, "busy": False}
        finally:
            self._sweep.release()


def due(ledger: Ledger, before: float) -> list[str]:
    """Ids of the running jobs last checked before ``before`` (or never), the longest
    unchecked first. A job still being planned is left to the process planning it."""
    rows = ledger.query(
        "SELECT id FROM jobs WHERE status = 'running' AND COALESCE(checked_at, 0) < ? "
        "ORDER BY COALESCE(checked_at, 0), created",
        (before,),
    )
    return [str(r[0]) for r in rows]


def check_one(job_id: str) -> str | None:
    """Poll one job once without sending anything; the error text, or None when its
    provider answered."""
    from .. import _jobs

    try:
        snap = _jobs.attach(job_id).refresh(send=False)
    except Exception as exc:  # no key here, a refusal: shown with the job, never raised
        return f"{type(exc).__name__}: {exc}"
    return snap.last_error
