"""The text view of a job, for scripts, terminals and logs.

Like the notebook panel it only renders snapshots: one line whenever the job's state
changes, and while rows are pending a heartbeat line with the provider's own progress at
least every :data:`HEARTBEAT` seconds (when polls come that often; else at every poll),
so a log never goes quiet during a long batch.
:func:`attach` chooses whether to show it, the way ``tqdm.auto`` chooses a front end.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from . import states
from .snapshot import JobSnapshot, format_seconds
from .snapshot import rows as _rows

if TYPE_CHECKING:
    from .job import BatchJob

#: Seconds of job time (the job's clock) between lines while rows are pending.
HEARTBEAT = 30.0


def progress_line(snap: JobSnapshot) -> str:
    """One line saying where the job is, in rows (collected into the ledger) and, while
    batches are open, in requests (as the provider counts them), e.g.
    ``[ 1m 05s] nbb-... running (in_progress): 640/1,000 requests done at the provider;
    0/1,000 rows collected``.
    """
    c = snap.counts
    head = f"[{format_seconds(snap.elapsed):>7}] {snap.job_id} {snap.status}"
    parts = []
    if not snap.finished:
        head += f" ({snap.provider_status})"
        if snap.stages:  # a job that escalates: which stage runs
            head += f" [{snap.stage_lines[len(snap.stages) - 1].split(' (')[0]}]"
        sent = [
            b
            for b in snap.batches
            if not b.batch_id.startswith("intent-") and b.status != "refused"
        ]
        if sent:
            done = sum(b.done for b in sent)
            total = sum(b.n_requests for b in sent)
            parts.append(f"{done:,}/{total:,} requests done at the provider")
    ended = [f"{c[s]:,} {s}" for s in states.TERMINAL if c[s]]
    rows = f"{snap.done:,}/{_rows(c['total'])} collected"
    parts.append(rows + (f" ({', '.join(ended)})" if ended else ""))
    if not snap.finished and snap.eta is not None:
        parts.append(f"about {format_seconds(snap.eta)} left")
    if snap.overdue:
        parts.append(snap.overdue)
    return f"{head}: " + "; ".join(parts)


class ConsoleReporter:
    """Writes a line whenever the status or row counts change, and at least every
    ``every`` seconds while rows are pending.

    Time is the snapshots' own (``snap.now``, from the job's clock), so the heartbeat
    follows a test's fake clock. Lines come with the snapshots, that is with the polls,
    so a heartbeat is written early when the next poll (expected as far off as the last
    one) would come more than ``every`` seconds after the last line.
    """

    def __init__(self, stream: TextIO | None = None, *, every: float = HEARTBEAT) -> None:
        self.stream = stream
        self.every = every
        self._last: tuple[object, ...] | None = None
        self._warned = 0
        self._printed_at: float | None = None
        self._seen_at: float | None = None

    def __call__(self, snap: JobSnapshot) -> None:
        state = (
            snap.status,
            snap.provider_status,
            tuple(sorted(snap.counts.items())),
            snap.last_error,
        )
        gap = 0.0 if self._seen_at is None else max(0.0, snap.now - self._seen_at)
        self._seen_at = snap.now
        changed = state != self._last or len(snap.warnings) != self._warned
        due = (
            not snap.finished
            and self._printed_at is not None
            and snap.now - self._printed_at + gap >= self.every
        )
        if not changed and not due:
            return
        self._last = state
        self._printed_at = snap.now
        line = progress_line(snap)
        if snap.last_error:
            line += f" (retrying after: {snap.last_error})"
        stream = self.stream or sys.stderr
        print(line, file=stream, flush=True)
        for warning in snap.warnings[self._warned :]:
            print(f"          note: {warning}", file=stream, flush=True)
        self._warned = len(snap.warnings)


def in_notebook() -> bool:
    """True inside a Jupyter kernel, where the widget panel shows progress."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def attach(job: BatchJob, progress: bool | str) -> Callable[[], None]:
    """Subscribe a console reporter to ``job`` if ``progress`` asks for one.

    ``progress``: True (always), False (never) or ``"auto"`` (only outside a notebook).
    Returns the function that unsubscribes it.
    """
    if progress == "auto":
        progress = not in_notebook()
    if not progress:
        return lambda: None
    return job.subscribe(ConsoleReporter())
