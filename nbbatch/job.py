"""BatchJob: one DataFrame's rows going through a provider's batch API.

A job is the face a user holds: a view over its record in the ledger plus a provider to
talk to. Everything it learns (batch ids, statuses, results) is written to the ledger
first, so any process can rebuild the same job with :func:`nbbatch.attach`. The job owns
the background threads (the sender, the poller), calls the stages in order and tells its
views what happened; it holds none of the stages' logic. Each stage is a function of a
:class:`~nbbatch._context.JobContext` (the record, ledger, provider and session notes):
:mod:`nbbatch._send` (chunks, intents, create), :mod:`nbbatch._collect` (poll, download,
reconcile, retries, fallback), :mod:`nbbatch._escalate` (stages, cascades) and
:mod:`nbbatch._merge`, over the rows as :mod:`nbbatch._rowstore` keeps them; snapshots are
built by :func:`nbbatch.snapshot.build`. Views (the notebook panel, the console
reporter) subscribe to its snapshots; the job knows nothing of them. See
docs/architecture.md.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from . import _collect, _control, _deadline, _escalate, _health, _merge, _planning, _send
from . import _engines as engines
from . import _rowstore as rowstore
from . import snapshot as _snapshot
from ._context import JobContext, is_loopback, output_columns
from ._errors import BatchFailedError, InputError, MergeError, NbbatchError, ProviderError
from ._ledger import Ledger
from ._poller import Poller
from .pricing import Cost
from .providers.base import Provider, RequestSpec
from .snapshot import JobSnapshot

if TYPE_CHECKING:
    from ._calibrate import Calibration
    from ._comparison import Comparison

__all__ = [
    "LOCAL_POLLING",
    "REMOTE_POLLING",
    "BatchJob",
    "PollPolicy",
    "is_loopback",
    "new_job_id",
    "output_columns",
]

Listener = Callable[[JobSnapshot], None]
log = logging.getLogger("nbbatch")


class PollPolicy:
    """How long to wait between polls: ``first`` seconds, growing by ``factor`` to ``most``."""

    def __init__(self, first: float = 2.0, most: float = 60.0, factor: float = 1.5) -> None:
        if first <= 0 or most < first or factor < 1:
            raise InputError("poll intervals need 0 < first <= most and factor >= 1.")
        self.first, self.most, self.factor = first, most, factor

    def delays(self) -> Any:
        """An endless iterator of delays."""
        delay = self.first
        while True:
            yield delay
            delay = min(self.most, delay * self.factor)


#: Polling for real providers starts at 2 s and backs off to 30 s (so text progress has
#: fresh provider counts for its line every 30 s); the local emulator finishes in
#: seconds, so it is polled faster.
REMOTE_POLLING = PollPolicy(2.0, 30.0)
LOCAL_POLLING = PollPolicy(0.25, 2.0)
#: Seconds between two writes of a job's ``checked_at`` (when the provider last answered
#: for it) by one job object: fresh enough for the sidebar's "checked 12s ago".
CHECKED_EVERY = 5.0


def _weakly(method: Callable[..., None]) -> Callable[..., None]:
    """``method`` (bound to a job) called through a weak reference: what the job gives
    its context and threads, so they never keep a job nobody holds alive."""
    ref = weakref.WeakMethod(method)

    def call(*args: Any) -> None:
        bound = ref()
        if bound is not None:
            bound(*args)

    return call


def new_job_id() -> str:
    """A readable, unique job id: ``nbb-YYYYMMDD-HHMMSS-xxxxxx``."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"nbb-{stamp}-{secrets.token_hex(3)}"


class BatchJob:
    """A batch job over the rows of a DataFrame; see the module docstring.

    Build one with :func:`nbbatch.submit` or :func:`nbbatch.attach`, not directly.
    """

    #: Set by a poll that found the job's private emulator gone (see _transient_note).
    _backend_dead = False

    def __init__(
        self,
        record: dict[str, Any],
        provider: Provider,
        ledger: Ledger,
        data: pd.DataFrame | pd.Series | None = None,
        polling: PollPolicy | None = None,
        *,
        escalate_when: Callable[..., Any] | None = None,
        plan_checks: Callable[..., None] | None = None,
        planner: Callable[..., Path] | None = None,
    ) -> None:
        # What the stages work on (see nbbatch._context); a cascade's escalate_when, when
        # it is a function, and the checks of a table planned in the background live
        # there for this session only.
        self._ctx = JobContext(
            record,
            provider,
            ledger,
            data,
            escalate_when=escalate_when,
            plan_checks=plan_checks,
            planner=planner,
        )
        self._ctx.on_progress = _weakly(self._progress_changed)
        self._record = record
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        self.polling = polling or REMOTE_POLLING
        self._last_poll: float | None = None
        self._checked_written = 0.0  # when _record_checked last wrote (epoch seconds)
        self._next_poll: float | None = None  # while wait() sleeps: when it polls next
        self._last_error: str | None = None
        self._poller: Poller | None = None
        self._trail = _snapshot.ProgressTrail()  # the ETA's rate
        self._logged_done = False
        self._logged_overdue = False
        # The background sender (see start_sending), its progress, and the error that
        # stopped it: raised by the next wait(), which then tries again.
        self._sender: threading.Thread | None = None
        self._sending: _send.Progress | None = None
        self._send_error: BaseException | None = None
        calibration = self.calibration
        if calibration is not None:  # what a calibrated cascade expects, in its notes
            self._ctx.note("event", calibration.text())

    @property
    def context(self) -> JobContext:
        """What the stages work on (record, ledger, provider, stage specs, notes, the clock
        and the sleep): for nbbatch's own modules and tests, not part of the public API."""
        return self._ctx

    # The ledger and the provider, for a test that checks what they hold.
    @property
    def _ledger(self) -> Ledger:
        return self._ctx.ledger

    @property
    def _provider(self) -> Provider:
        return self._ctx.provider

    # -- identity ---------------------------------------------------------------------------
    @property
    def id(self) -> str:
        """The job id (use it with :func:`nbbatch.attach`)."""
        return str(self._record["id"])

    @property
    def provider(self) -> str:
        """``"openai"``, ``"anthropic"`` or ``"gemini"``."""
        return str(self._record["provider"])

    @property
    def model(self) -> str:
        """The model the job's requests ask for first (stage 0; see :attr:`models`)."""
        return str(self._record["model"])

    @property
    def models(self) -> list[str]:
        """The model of each stage started so far, stage 0 (the job's own) first; a
        cascade's later models follow as its stages start."""
        return self._ctx.models

    @property
    def stages(self) -> list[dict[str, Any]]:
        """The escalation stages started (1, 2, ...), as the ledger records them: their
        request ``spec``, ``n_rows`` sent, ``reason`` (what chose them) and more."""
        return self._ctx.stages

    @property
    def calibration(self) -> Calibration | None:
        """A calibrated cascade's threshold and what its pilot expects (see
        :mod:`nbbatch._calibrate`); None for any other job."""
        from ._calibrate import Calibration

        kept = (self._ctx.policy.get("cascade") or {}).get("calibration")
        return None if kept is None else Calibration.from_dict(kept)

    @property
    def endpoint(self) -> str:
        """The provider endpoint the requests go to."""
        return str(self._record["endpoint"])

    @property
    def output(self) -> str:
        """The name of the output column ``merge`` adds."""
        return str(self._record["output"])

    @property
    def spec(self) -> RequestSpec:
        """The request parameters shared by every row."""
        return RequestSpec(**self._record["spec"])

    @property
    def batch_ids(self) -> list[str]:
        """The provider batch ids, oldest first."""
        return [b["batch_id"] for b in self._ledger.batches(self.id)]

    @property
    def counts(self) -> dict[str, int]:
        """Rows per state: ``total, succeeded, failed, expired, cancelled, skipped,
        pending`` (these add up to ``total``), plus how many rows were ``reused`` from an
        earlier job, ``deduplicated`` onto an identical request, or answered through the
        ``realtime`` fallback."""
        snap = self.snapshot()
        return {
            **snap.counts,
            "reused": snap.reused,
            "deduplicated": snap.deduplicated,
            "realtime": snap.realtime,
        }

    @property
    def cost(self) -> Cost:
        """What the job costs: from the token usage the results report, and an estimate
        for rows still pending (``cost.estimated`` says which)."""
        return self.snapshot().cost

    @property
    def status(self) -> str:
        """``running`` until every row is terminal (and a cascade's stages have all
        started), then ``completed``, ``cancelled``, or ``failed`` when a cascade could
        not choose the rows of its next stage (``wait()`` raises why)."""
        return self.snapshot().status

    # -- views ------------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(snapshot)`` after every refresh; returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _notify(self, snap: JobSnapshot) -> None:
        for listener in list(self._listeners):
            listener(snap)

    def snapshot(self) -> JobSnapshot:
        """The job as the ledger has it now (no network call)."""
        sending = self._sending
        next_poll = self._next_poll
        if next_poll is None and self._poller is not None:
            next_poll = self._poller.next_poll
        session = _snapshot.Session(
            self._trail,
            last_poll=self._last_poll,
            next_poll=next_poll,
            last_error=self._last_error,
            sending=sending.text() if sending is not None and sending.active else None,
        )
        return _snapshot.build(self._ctx, session)

    # -- sending ----------------------------------------------------------------------------
    def start_sending(self, *, daemon: bool = False) -> None:
        """Build and upload the rows not sent yet in a background thread, chunk by chunk
        (see :mod:`nbbatch._send`), so the caller gets control back at once. The views
        show "uploading k/n batches"; an error that stops it is the job's ``last_error``
        and is raised by the next :meth:`wait`. Idempotent while it runs.

        The thread is not a daemon outside a notebook, so a script that submits and
        ends still sends everything before the interpreter exits.
        """
        with self._lock:
            if self.sending:
                return
            self._send_error = None
            self._sender = threading.Thread(
                target=self._send_in_background, name=f"nbbatch-send-{self.id}", daemon=daemon
            )
            self._sending = _send.Progress()
            self._sender.start()

    def wait_sent(self, timeout: float | None = None) -> BatchJob:
        """Block until every row is in a batch at the provider (or answered), not until
        the batches end: after this, ``job.batch_ids`` lists every batch. A job bigger
        than its account's batch queue has only its first wave sent then: the rest
        waits, unsent, for room (see :mod:`nbbatch._quota`). Raises what
        stopped the sending, or :class:`TimeoutError` after ``timeout`` seconds (the
        sending goes on)."""
        sender = self._sender
        if sender is not None:
            sender.join(timeout)
            if sender.is_alive():
                raise TimeoutError(f"job {self.id} is still uploading after {timeout} s")
        error, self._send_error = self._send_error, None
        if error is not None:
            raise error
        with self._lock:
            self._send_unsent()  # what no sender took (a new session, or put back)
        return self

    @property
    def sending(self) -> bool:
        """True while the background sender runs."""
        return self._sender is not None and self._sender.is_alive()

    def _send_in_background(self) -> None:
        try:
            self._send_unsent(self._sending)
        except ProviderError as exc:
            if not exc.transient:
                self._keep_send_error(exc)
            else:  # no answer, or busy: the next refresh finds or resends the chunk
                self._last_error = self._transient_note(exc)
                log.warning("nbbatch job %s: sending paused: %s", self.id, exc)
        except BaseException as exc:
            self._keep_send_error(exc)
        finally:
            if self._sending is not None:
                self._sending.active = False
            self._progress_changed()

    def _keep_send_error(self, exc: BaseException) -> None:
        """Keep what stopped the sender, for wait() to raise and the views to show."""
        self._send_error = exc
        self._last_error = f"sending stopped: {exc}"
        log.warning("nbbatch job %s: sending stopped: %s", self.id, exc)

    def _progress_changed(self) -> None:
        """A chunk was sent (or sending ended): tell the views."""
        self._notify(self.snapshot())

    def _send_unsent(self, progress: _send.Progress | None = None) -> None:
        """Send the rows pending in no batch (see :func:`nbbatch._send.send_unsent`),
        holding the job's lock around each chunk. A job whose rows are not planned yet
        is planned first (see :mod:`nbbatch._planning`)."""
        if _planning.planning(self._ctx) and not _planning.run(self._ctx, progress):
            return  # planned by another sender, or cancelled while planned
        state = self._ctx.row_state()
        waiting = _send.unsent(state)
        # Rows sent before (a cascade's next stage, retries put back, resubmit_failed):
        # a batch of them refused as a whole is the job's outcome, not an error of this
        # call. Its rows have ended failed (not_sent, with the reason) and wait() ends
        # the job normally; a refused first send stays the job's error (see submit).
        again = bool(len(waiting)) and bool(
            ((state.stage[waiting] > 0) | (state.attempt[waiting] > 1)).all()
        )
        del state, waiting
        try:
            _send.send_unsent(self._ctx, progress, self._lock)
        except BatchFailedError as exc:
            if not again:
                raise
            self._ctx.warn(
                f"the provider refused a batch of rows sent again ({exc}); they end "
                "failed (not_sent): job.resubmit_failed() sends them again",
                "retry",
            )

    # -- polling ----------------------------------------------------------------------------
    def refresh(self, *, send: bool = True) -> JobSnapshot:
        """Poll every open batch once, collect the ones that ended, retry what the job's
        policy says to retry, and return a snapshot.

        ``send=False`` only looks: it polls and collects the batches already at the
        provider and never creates one (no unsent rows, no retries, no real-time
        fallback, no next cascade stage), so nothing new is paid for;
        :meth:`waiting_to_send` says what waits. ``nbbatch status`` and the JupyterLab
        sidebar's checks poll this way.

        A transient error (connection refused, 429, 5xx) is kept in the snapshot's
        ``last_error`` and tried again on the next refresh; other errors raise.
        """
        with self._lock:
            self._last_error = None
            self._backend_dead = False
            asked = False  # whether this poll asked the provider anything
            reached = True  # and it answered every call
            # Another process (the Lab sidebar, `nbbatch cancel`) may have cancelled it.
            self._record["status"] = self._ledger.job_status(self.id) or self._record["status"]
            try:
                for batch in self._ledger.batches(self.id):
                    if batch["batch_id"].startswith("intent-"):
                        _send.resolve_intent(self._ctx, batch)  # looks; never creates
                if send and not self.sending and self._send_error is None:
                    self._send_unsent()
                for batch in self._ledger.batches(self.id):
                    if not batch["collected"] and not batch["batch_id"].startswith("intent-"):
                        asked = True
                        _collect.poll_batch(self._ctx, batch)
                if send and not self.sending and self._send_error is None:
                    # Batches that just ended made room in the account's queue: the
                    # next wave goes now, not a poll later (see nbbatch._quota).
                    self._send_unsent()
                if not send or _planning.planning(self._ctx):
                    pass  # ``send=False`` only looks; a table still planning waits
                elif _deadline.rerouting(self._ctx):
                    _deadline.reroute(self._ctx)  # past the deadline: the rest another way
                elif _collect.after_collect(self._ctx, sending=self.sending):
                    self._send_stage()  # a cascade's next stage put rows back to send
            except ProviderError as exc:
                if not exc.transient:
                    exc.job_id = self.id
                    raise
                self._last_error = self._transient_note(exc)
                reached = False
            if self._send_error is not None:
                self._last_error = self._send_error_note()
            self._last_poll = self._ctx.clock()
            if asked and reached:  # a job with nothing at the provider was not checked
                self._record_checked()
            snap = self.snapshot()
        self._log_progress(snap)
        self._notify(snap)
        return snap

    def _record_checked(self) -> None:
        """Note in the ledger when the provider last answered for this job, for every
        process to see (the sidebar shows it, and marks a running job nobody checks).
        At most every ``CHECKED_EVERY`` seconds: a kernel polls much more often."""
        now = time.time()
        if now - self._checked_written >= CHECKED_EVERY:
            self._ledger.set_job_time(self.id, "checked_at", now)
            self._checked_written = now

    def waiting_to_send(self) -> str | None:
        """What the next refresh that sends would send, in words (``"1,200 rows not sent
        yet"``, ``"12 failed rows to retry"``), or None when nothing waits."""
        with self._lock:
            return _collect.waiting_to_send(self._ctx)

    def _transient_note(self, exc: ProviderError) -> str:
        """What a transient error means for this job, in ``last_error`` (see
        :func:`nbbatch._collect.transient_note`)."""
        note, self._backend_dead = _collect.transient_note(self._ctx, exc)
        return note

    def _send_error_note(self) -> str:
        """What stopped sending, and what sends the rest."""
        if _planning.planning(self._ctx):
            return f"sending stopped: {self._send_error}"
        return _send.stopped_note(self._ctx, self._send_error)

    def _log_progress(self, snap: JobSnapshot) -> None:
        """Health signals on logger ``nbbatch`` and in the ledger (see
        :func:`nbbatch._health.log_progress`): the end once, the deadline once a session."""
        self._logged_overdue, self._logged_done = _health.log_progress(
            self._ctx, snap, overdue_logged=self._logged_overdue, done_logged=self._logged_done
        )

    def start_polling(self) -> Poller:
        """Poll in a background thread until every row is terminal (the kernel stays free).

        Idempotent: a poller already running is returned as it is.
        """
        with self._lock:
            if self._poller is None or not self._poller.running:
                ctx = self._ctx  # the poller's clock: the context, never the job itself
                self._poller = Poller(
                    self.id,
                    self.refresh,
                    self._set_poll_error,
                    delays=self.polling.delays(),
                    clock=lambda: ctx.clock(),
                    shorten=lambda delay: _deadline.until_due(ctx, delay),
                ).start()
            return self._poller

    def stop_polling(self) -> None:
        """Stop background polling; the batches go on at the provider."""
        if self._poller is not None:
            self._poller.stop()

    @property
    def polling_active(self) -> bool:
        """True while a background poller is running."""
        return self._poller is not None and self._poller.running

    def _set_poll_error(self, exc: BaseException) -> None:
        self._last_error = f"polling stopped: {exc}"
        self._notify(self.snapshot())

    def wait(
        self,
        timeout: float | None = None,
        *,
        progress: bool | str = "auto",
    ) -> BatchJob:
        """Block until every row is terminal (or ``timeout`` seconds pass) and return the job.

        Works in a notebook, a script and under papermill: it polls in this thread and
        sleeps between polls, backing off as set by ``job.polling``. ``progress`` prints a
        line to stderr on each change and at least every 30 s while rows are pending
        (``"auto"``: only outside a notebook, where the panel shows progress instead).
        """
        from . import _console as console

        unsubscribe = console.attach(self, progress)
        try:
            return self._wait(timeout)
        except KeyboardInterrupt:
            # Ctrl-C (or a notebook's "interrupt") stops the waiting, not the job: say so
            # in one line, not through the stack of whatever call it landed in.
            self._next_poll = None
            raise KeyboardInterrupt(self._interrupted()) from None
        finally:
            unsubscribe()

    def _raise_send_error(self) -> None:
        """Raise, once, the error that stopped the sender thread (once it has stopped)."""
        error = self._send_error
        if error is not None and not self.sending:
            self._send_error = None  # raised once; the next wait() sends again
            if isinstance(error, NbbatchError):
                error.job_id = self.id
            raise error

    def _interrupted(self) -> str:
        """What a Ctrl-C in :meth:`wait` leaves behind, and how to carry on. An upload in
        progress stops after the batch it is on (no batch is half-made: see
        :mod:`nbbatch._send`); the next wait() sends the rest."""
        if self._sending is not None and self.sending:
            self._sending.stopped = True
        return (
            f"stopped waiting for job {self.id}; {self.whereabouts()}. Wait again with "
            f"job.wait(), or nb.attach({self.id!r}).wait() in a new session "
            f"(`nbbatch status {self.id}` from a shell); rows not uploaded yet are sent then."
        )

    def _wait(self, timeout: float | None) -> BatchJob:
        """The polling loop of :meth:`wait`."""
        start = self._ctx.clock()
        for delay in self.polling.delays():
            snap = self.refresh()
            self._raise_send_error()
            if snap.finished:
                sender = self._sender
                if sender is not None and sender.is_alive():
                    # The thread that ended the job (a planner that failed) is about to
                    # record why: its own error says more than "ended failed".
                    sender.join(10)
                    self._raise_send_error()
                _escalate.raise_if_failed(self._ctx, snap)
                return self
            delay = _deadline.until_due(self._ctx, delay)  # a poll as the deadline arrives
            if timeout is not None and self._ctx.clock() - start + delay > timeout:
                raise TimeoutError(self._timeout_message(snap, timeout))
            self._next_poll = self._ctx.clock() + delay
            sender = self._sender
            if sender is not None and sender.is_alive():
                # Batches already created are collected while later ones upload;
                # between polls, wait on the sender itself (it reports each chunk).
                sender.join(delay)
            else:
                self._ctx.sleep(delay)
            self._next_poll = None
        raise AssertionError("unreachable")

    def cancel(self) -> JobSnapshot:
        """Ask the provider to cancel every open batch. Rows already finished keep their
        results; the rest end ``cancelled`` once the provider confirms. Rows not sent
        yet (the background sender stops after the chunk it is on) end ``cancelled``
        at once."""
        self._stop_sending()
        if _planning.cancel(self._ctx):  # nothing was sent: its rows end cancelled
            self._notify(self.snapshot())
            return self.snapshot()
        with self._lock:
            _control.cancel(self._ctx)
        return self.refresh()

    def _stop_sending(self) -> None:
        """Stop the background sender after the chunk it is on, and wait for it."""
        if self._sending is not None:
            self._sending.cancelled = True
        if self._sender is not None:
            self._sender.join()

    @staticmethod
    def _daemon_sender() -> bool:
        """In a notebook the sender thread is a daemon (a kernel restart must not wait
        for it: the intents make a kill safe); elsewhere a script's exit waits for it."""
        from ._console import in_notebook

        return in_notebook()

    def _timeout_message(self, snap: JobSnapshot, timeout: float) -> str:
        """Why wait() stopped, and where the job's batches are meanwhile (truthfully)."""
        head = f"job {self.id} still has {snap.counts['pending']:,} pending rows after {timeout} s"
        if self._backend_dead:
            return f"{head}; {self.whereabouts()}"
        return (
            f"{head}; {self.whereabouts()}: call wait() again later, or "
            f"nb.attach({self.id!r}) from another session."
        )

    def whereabouts(self) -> str:
        """Where the job's pending rows are being worked on, in a few words: at the
        provider, in nbbatch's background emulator, or (an emulator that stopped) nowhere."""
        if self._backend_dead and self._last_error:
            return self._last_error
        if self._record.get("backend") == "local":
            return "it goes on in nbbatch's background emulator"
        return "it goes on at the provider"

    def forget(self, *, force: bool = False) -> None:
        """Remove the job from the ledger: its rows, batches, events and result files,
        and for a ``provider="local"`` job its ended batches and files in the background
        emulator.

        Afterwards ``nb.attach(job.id)`` raises :class:`JobNotFoundError`, ``nb.jobs()``
        no longer lists it, and this object should not be used. A job whose backend can
        still run some of its batches is refused (they would go on, unwatched, and at a
        real provider be billed): ``job.cancel()`` first, or pass ``force=True``. A job
        whose backend is gone (a stopped ``nb.emulator.start()`` emulator) is forgotten
        without ``force``.
        """
        self._stop_sending()
        with self._lock:
            if not force:
                try:
                    self.refresh(send=False)  # which batches are still open, and where
                except NbbatchError:
                    pass  # what is open is judged from the ledger below
                _control.check_forgettable(self._ctx, backend_dead=self._backend_dead)
            self.stop_polling()
            _control.drop_local_copy(self._ctx)  # the background emulator's copy too
            self._ledger.forget_job(self.id)
            # A Dask/Spark merge's results file, when it is in NBBATCH_STAGING.
            engines.forget_staged(self.id, self._ledger.files / self.id)

    # -- results ----------------------------------------------------------------------------
    def results(self) -> pd.DataFrame:
        """One row per input row, by position, indexed by custom_id: label, status,
        output, error, error_type, retryable, token counts, and the row's lineage:
        ``batch_id`` (the provider's batch), ``attempt`` (1 for the first send),
        ``origin`` (``batch``, ``realtime`` for the real-time fallback, ``reused`` from an
        earlier job's identical request), ``stage``, ``model`` and ``prompt_hash`` (the
        version of template, system prompt and response_format its answer was asked
        with)."""
        return _merge.results_frame(self._ctx)

    def prompt_chars(self) -> tuple[int, int]:
        """(rows with a prompt, total prompt characters): for cost estimates before usage."""
        if _planning.planning(self._ctx):
            return 0, 0  # no rows planned yet
        return rowstore.prompt_chars(self._ledger.row_state(self.id))

    def merge(self, df: Any = None, *, verify: bool = True, lineage: bool = False) -> Any:
        """``df`` plus ``{output}``, ``{output}_status`` and ``{output}_error`` columns,
        as the same kind of table it is (pandas, a polars DataFrame or LazyFrame, a pyarrow
        Table).

        ``df`` defaults to the data submitted in this session. Its index, columns and order
        are kept; each row gets the result of its own request, found by position when
        ``df`` is the submitted data, else by index label (or ``id_column``), so a sorted
        or filtered copy works too. Every row is then checked to still render the request
        that was sent for it: a frame whose rows changed under the same labels (another
        frame, a sort and re-index, an edited column) raises :class:`MergeError` rather
        than put answers on the wrong rows; ``verify=False`` skips that check, for a
        column changed on purpose. While the job runs, a warning says that pending rows
        are not finished yet. A Dask or Spark frame comes back as a lazy frame of its
        kind, its partitions as submitted, each finding its rows by position and checked
        when it is computed (see :mod:`nbbatch._engines`).

        ``lineage=True`` adds, after ``{output}_error``, where each answer comes from:
        ``{output}_model``, ``{output}_prompt_hash``, ``{output}_batch_id`` and
        ``{output}_attempt`` (what :meth:`to_parquet` writes by default).
        """
        if df is None:
            if self._ctx.data is None:
                raise MergeError(
                    f"job {self.id} was attached without its data; call job.merge(df) with "
                    "the DataFrame you submitted.",
                    job_id=self.id,
                )
            df = self._ctx.data
        if engines.kind_of(df):  # Dask or Spark: merged lazily, partition by partition
            return engines.merge(self._ctx, df, verify=verify, lineage=lineage)
        return _merge.merge_job(self._ctx, df, verify=verify, lineage=lineage)

    def to_parquet(
        self,
        path: str | os.PathLike[str],
        data: Any = None,
        *,
        columns: list[str] | None = None,
        verify: bool = True,
        lineage: bool = True,
    ) -> Path:
        """Write the merged rows to a Parquet file at ``path`` and return it: the input
        columns named in ``columns`` (all of them by default) and the columns ``merge``
        adds. ``data`` is what was submitted (a path of Parquet files, a table), by
        default the data of this session, or, for a job submitted from Parquet files,
        those files again (read where they were). Data from files or an Arrow dataset is
        written record batch by record batch, never held whole, so a table larger than
        memory can be written. Every row is checked as :meth:`merge` checks it (pass
        ``verify=False`` to skip that). Written to a temporary name, then renamed.
        ``path`` may be a folder: the file is then ``<job id>.parquet`` in it (a path
        ending in ``/`` is a folder, created if need be). Rows from
        a table in memory start with a ``row`` column, their position in the data
        (0-based), which tells apart rows whose index labels repeat. For a Dask or Spark
        frame, ``path`` is a folder of Parquet files written by the workers, partition
        by partition. Each row carries its lineage (``merge(lineage=True)``'s columns:
        model, prompt version hash, batch id, attempt), so a file read months later
        still says what produced each answer; ``lineage=False`` leaves them out."""
        data = data if data is not None else self._ctx.data
        if engines.kind_of(data):  # a folder of files, written by the workers
            return engines.to_parquet(
                self._ctx, data, path, columns=columns, verify=verify, lineage=lineage
            )
        target = _merge.parquet_target(path, self.id)
        return _merge.to_parquet(
            self._ctx, target, data, columns=columns, verify=verify, merge=self.merge,
            lineage=lineage,
        )  # fmt: skip

    def compare(self, other: BatchJob) -> Comparison:
        """This job (before) against ``other`` (after) over the same rows: a re-run, a
        new prompt version, another model. Returns a :class:`~nbbatch._comparison.Comparison`:
        ``.changed`` (the rows whose answer differs, each field before and after),
        per-field churn and distribution shift (``.summary()``), cost and time side by
        side, and what changed in lineage (model, prompt version). Rows are matched by
        the ``id_column`` or index label each job recorded; jobs over different rows
        raise :class:`~nbbatch.InputError`. See :mod:`nbbatch._comparison`."""
        from ._comparison import compare as compare_jobs

        if not isinstance(other, BatchJob):
            raise InputError(
                f"compare() takes another job (nb.attach(job_id) gives one), found "
                f"{type(other).__name__}."
            )
        return compare_jobs(self._ctx, other._ctx, (self.cost, other.cost))

    def output_columns(self, lineage: bool = False) -> list[str]:
        """The columns ``merge`` adds: ``{output}`` (or one per field of a structured
        response_format), ``{output}_status``, ``{output}_error`` (and ``{output}_raw``,
        the reply as received, with a response_format), and ``{output}_model`` for a job
        that escalates (a cascade, or after :meth:`escalate`). With ``lineage``: those
        of ``merge(lineage=True)`` and ``to_parquet``."""
        return self._ctx.output_columns(lineage)

    def failed(self) -> pd.DataFrame:
        """The merged rows that did not succeed (failed, expired or cancelled); while the
        job runs, a warning says these are only the failures so far."""
        if engines.kind_of(self._ctx.data):  # Dask or Spark: filtered lazily, on the workers
            return engines.failed(self._ctx, self._ctx.data)
        return _merge.failed_rows(self._ctx)

    def resubmit_failed(self, **overrides: Any) -> BatchJob:
        """Send again only the rows that ended ``failed`` or ``expired``, as new batches.

        Rows that succeeded keep their results and are not paid for again. Transient
        failures were already retried automatically (``retries``), so what is left is
        usually a failure the request itself causes (``invalid_request_error``, a reply
        cut off at ``max_tokens``): pass ``overrides`` to change request parameters for the
        new batches (e.g. ``max_tokens=500``), or the same request may fail the same way.
        In a job with escalation stages each row goes again on the model of the stage it
        failed in (to change a later stage's parameters, use :meth:`escalate` with
        ``where="failed"``). Returns this job, which now also follows the new batches.
        """
        with self._lock:
            if not _control.requeue_failed(self._ctx, overrides):
                return self
            self._logged_done = False
            self._send_error = None
        self.start_sending(daemon=self._daemon_sender())
        self._notify(self.snapshot())
        return self

    def escalate(self, model: str, where: Any = "failed", **overrides: Any) -> BatchJob:
        """Send some of the job's rows again on another ``model`` (and optionally other
        request parameters, ``overrides``), at batch price, as the next stage of this
        job; returns this job, which now also follows the new batches.

        ``where`` chooses the rows: ``"failed"`` (rows that ended failed or expired), a
        function of the merged DataFrame giving a boolean mask (``lambda out:
        out["confidence"] < 0.7``), an expression on its columns (``"confidence <
        0.7"``; parsed by :mod:`nbbatch._expr`, never run as code), or a boolean mask
        with one value per row, in the merged order. ``merge`` then holds, per row, the
        answer of the last model that answered it, and ``{output}_model`` says which;
        ``job.cost`` prices each stage on its own model. Succeeded rows not chosen are
        never sent again, nor rows already answered with exactly these parameters.

        Everything is checked before anything is sent: the model (at the provider, and
        of the job's provider), the parameters, ``where`` (its length, its values), and
        that the job has ended (escalate after ``job.wait()``) and chose at least one
        row. See :mod:`nbbatch._escalate`.
        """
        with self._lock:
            self.refresh()  # an escalation starts from the job's final answers
            _escalate.check_can_escalate(self._ctx, sending=self.sending)
            if _escalate.start_stage(self._ctx, model, where, overrides, automatic=False):
                self._send_stage()
        self._notify(self.snapshot())
        return self

    def _send_stage(self) -> None:
        """A stage started (by hand or by a cascade) with rows put back to be sent: the
        job runs again, and the background sender sends them."""
        self._logged_done = False
        self._send_error = None
        self.start_sending(daemon=self._daemon_sender())

    # -- display ----------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"<BatchJob {self.snapshot().summary()}>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In a notebook: the live panel (and polling) with a ``text/plain`` and a static
        ``text/html`` summary for viewers without widgets; elsewhere the text."""
        from . import _panel as panel

        return panel.mimebundle(self)

    def _ipython_display_(self) -> None:
        """IPython shows the job through :func:`nbbatch._panel.display_job`: an output
        whose saved text and summary follow the job to its end (a display handle)."""
        from . import _panel as panel

        panel.display_job(self)
