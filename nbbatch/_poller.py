"""Background polling: a daemon thread that refreshes a job until it ends.

The kernel stays free: the thread sleeps on an event between polls (so "refresh now"
and "stop" take effect at once), backs off as the job's :class:`~nbbatch.job.PollPolicy`
says, keeps transient errors in the job's snapshots instead of raising them, and holds
the job only weakly (its ``refresh`` and ``on_error`` methods, through weak references),
so a job nobody references any more stops being polled. It knows nothing else of the
job: it is given what to call.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from ._errors import NbbatchError

log = logging.getLogger("nbbatch")


class Poller:
    """Polls one job in a daemon thread; see the module docstring.

    ``refresh`` and ``on_error`` are bound methods of the job (held weakly); ``delays``
    the waits between polls; ``clock`` the job's clock and ``shorten`` what makes a
    wait shorter for something due sooner (neither may hold the job).
    """

    def __init__(
        self,
        job_id: str,
        refresh: Callable[[], Any],
        on_error: Callable[[BaseException], None],
        *,
        delays: Iterator[float],
        clock: Callable[[], float],
        shorten: Callable[[float], float] | None = None,
    ) -> None:
        self._refresh = weakref.WeakMethod(refresh)
        self._shorten = shorten  # a delay, shortened for an event due sooner (a deadline)
        self._on_error = weakref.WeakMethod(on_error)
        self._delays = delays
        self._clock = clock
        self.job_id = job_id
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.error: BaseException | None = None  # a non-transient error that ended polling
        self.exiting = False  # set the moment the loop decides to end
        #: When the next poll is due (seconds since the epoch), None once polling ended.
        self.next_poll: float | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"nbbatch-poll-{job_id}", daemon=True
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
        for delay in self._delays:
            if self._stop.is_set():
                return
            refresh = self._refresh()
            if refresh is None:  # nobody holds the job any more
                return
            if self._shorten is not None:
                delay = self._shorten(delay)
            # Known before the refresh, so the snapshot it publishes can say when next.
            self.next_poll = self._clock() + delay
            try:
                snap = refresh()
            except Exception as exc:  # not transient: show it and stop
                # Anything else (a full disk, a bug) ends polling the same visible way,
                # in the job's snapshot, rather than killing the thread unseen.
                self.error = exc
                log.warning(
                    "nbbatch: polling job %s stopped: %s", self.job_id, exc,
                    exc_info=not isinstance(exc, NbbatchError),
                )  # fmt: skip
                self.next_poll = None
                on_error = self._on_error()
                if on_error is not None:
                    on_error(exc)
                return
            if snap.finished:
                self.next_poll = None
                self.exiting = True
                return
            del refresh, snap
            if self._wake.wait(delay):
                self._wake.clear()
