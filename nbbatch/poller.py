"""Background polling: a daemon thread that refreshes a job until it ends.

The kernel stays free: the thread sleeps on an event between polls (so "refresh now"
and "stop" take effect at once), backs off as the job's :class:`~nbbatch.job.PollPolicy`
says, keeps transient errors in the job's snapshots instead of raising them, and holds
the job only weakly, so a job nobody references any more stops being polled.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING

from ._errors import NbbatchError

if TYPE_CHECKING:
    from .job import BatchJob

log = logging.getLogger("nbbatch")


class Poller:
    """Polls one job in a daemon thread; see the module docstring."""

    def __init__(self, job: BatchJob) -> None:
        self._job = weakref.ref(job)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.error: BaseException | None = None  # a non-transient error that ended polling
        self.exiting = False  # set the moment the loop decides to end
        self._thread = threading.Thread(
            target=self._run, name=f"nbbatch-poll-{job.id}", daemon=True
        )

    def start(self) -> Poller:
        """Start the thread (once)."""
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """True while the thread is polling (and not about to stop)."""
        return self._thread.is_alive() and not self.exiting

    def poke(self) -> None:
        """Poll now instead of at the next scheduled time."""
        self._wake.set()

    def stop(self) -> None:
        """Stop polling (the job goes on at the provider)."""
        self._stop.set()
        self._wake.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end."""
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self.exiting = True

    def _loop(self) -> None:
        job = self._job()
        delays = job.polling.delays() if job else iter(())
        del job
        for delay in delays:
            if self._stop.is_set():
                return
            job = self._job()
            if job is None:  # nobody holds the job any more
                return
            # Known before the refresh, so the snapshot it publishes can say when next.
            job._next_poll = job.clock() + delay
            try:
                snap = job.refresh()
            except NbbatchError as exc:  # not transient: show it and stop
                self.error = exc
                log.warning("nbbatch: polling job %s stopped: %s", job.id, exc)
                job._next_poll = None
                job._set_poll_error(exc)
                return
            if snap.finished:
                job._next_poll = None
                self.exiting = True
                return
            del job, snap
            if self._wake.wait(delay):
                self._wake.clear()
