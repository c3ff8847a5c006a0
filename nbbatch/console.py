"""The text view of a job: one line per change, for scripts, terminals and logs.

Like the notebook panel it only renders snapshots. :func:`attach` chooses whether to
show it, the way ``tqdm.auto`` chooses a front end.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from .snapshot import JobSnapshot, format_seconds

if TYPE_CHECKING:
    from .job import BatchJob


class ConsoleReporter:
    """Writes a line whenever the status, provider status or counts change."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._last: tuple[object, ...] | None = None
        self._warned = 0

    def __call__(self, snap: JobSnapshot) -> None:
        state = (
            snap.status,
            snap.provider_status,
            tuple(sorted(snap.counts.items())),
            snap.last_error,
        )
        if state == self._last and len(snap.warnings) == self._warned:
            return
        self._last = state
        line = f"[{format_seconds(snap.elapsed):>7}] {snap.summary()}"
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
