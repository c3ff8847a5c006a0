"""BatchJob: one DataFrame's rows going through a provider's batch API.

A job is a view over its record in the ledger plus a provider to talk to. Everything it
learns (batch ids, statuses, results) is written to the ledger first, so any process can
rebuild the same job with :func:`nbbatch.attach`. The job drives the stages and holds
none of their logic: :mod:`nbbatch.send` (chunks, intents, create), :mod:`nbbatch.collect`
(poll, download, reconcile, retries, fallback) and :mod:`nbbatch.merge`, over the rows
as :mod:`nbbatch.rowstore` keeps them. Views (the notebook panel, the console reporter)
subscribe to its snapshots; the job knows nothing of them.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import orjson
import pandas as pd

from . import _scrub, rowstore
from . import collect as _collect
from . import escalate as _escalate
from . import health as _health
from . import merge as _merge
from . import notes as _notes
from . import pack as _pack
from . import planning as _planning
from . import send as _send
from ._errors import InputError, JobRunningWarning, MergeError, NbbatchError, ProviderError
from ._files import private_output
from .ledger import Ledger
from .poller import Poller
from .pricing import Cost
from .providers.base import BatchInfo, Provider, RequestSpec, http_status, is_embeddings
from .snapshot import ROW_STATES, BatchView, JobSnapshot, Note, StageView, format_seconds

Listener = Callable[[JobSnapshot], None]
log = logging.getLogger("nbbatch")


def is_loopback(url: str | None) -> bool:
    """Whether ``url`` points at this machine (where only an emulator answers)."""
    return (urlparse(url or "").hostname or "") in ("127.0.0.1", "localhost", "::1")


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


def output_columns(
    output: str, response_format: dict[str, Any] | None, *, staged: bool = False
) -> list[str]:
    """The columns ``merge`` adds for this output name and response_format (and
    ``{output}_model`` for a job with escalation stages or a cascade)."""
    model = [f"{output}_model"] if staged else []
    if response_format is None:
        return [output, f"{output}_status", f"{output}_error", *model]
    from . import structured

    fields = structured.columns_of(structured.schema_of(response_format))
    return [*fields, f"{output}_status", f"{output}_error", *model, f"{output}_raw"]


def new_job_id() -> str:
    """A readable, unique job id: ``nbb-YYYYMMDD-HHMMSS-xxxxxx``."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"nbb-{stamp}-{secrets.token_hex(3)}"


class BatchJob:
    """A batch job over the rows of a DataFrame; see the module docstring.

    Build one with :func:`nbbatch.submit` or :func:`nbbatch.attach`, not directly.
    """

    # Injected so tests can run a 24-hour batch in milliseconds.
    clock: Callable[[], float] = staticmethod(time.time)
    sleep: Callable[[float], None] = staticmethod(time.sleep)
    #: Set by a poll that found the job's private emulator gone (see _transient_note).
    _backend_dead = False

    def __init__(
        self,
        record: dict[str, Any],
        provider: Provider,
        ledger: Ledger,
        data: pd.DataFrame | pd.Series | None = None,
        polling: PollPolicy | None = None,
    ) -> None:
        self._record = record
        self._provider = provider
        self._ledger = ledger
        self._data = data
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        self.polling = polling or REMOTE_POLLING
        self._last_poll: float | None = None
        self._next_poll: float | None = None
        self._last_error: str | None = None
        self._infos: dict[str, BatchInfo] = {}
        self._poller: Poller | None = None
        self._notes: list[Note] = []  # what the job did or noticed, oldest first
        self._alert_raised = False  # the failure-rate alert fired in this session
        # Progress (rows done or ready at the provider) each time it changed: the ETA's rate.
        self._progress_base: int | None = None
        self._samples: list[tuple[float, int]] = []
        self._logged_done = False
        self._logged_overdue = False
        self._avg_prompt_tokens: float | None = None
        # The background sender (see start_sending), its progress, and the error that
        # stopped it: raised by the next wait(), which then tries again.
        self._sender: threading.Thread | None = None
        self._sending: _send.Progress | None = None
        self._send_error: BaseException | None = None
        # A cascade's escalate_when when it is a function: it lives in this session only
        # (see nbbatch.escalate); a string one is in the job's policy.
        self._escalate_when: Callable[..., Any] | None = None
        # What submit checks once a large table is planned in the background (its
        # budget...): see nbbatch.planning.
        self._plan_checks: _planning.Checks | None = None

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
        return [self.stage_spec_dict(s)["model"] for s in range(len(self.stages) + 1)]

    @property
    def stages(self) -> list[dict[str, Any]]:
        """The escalation stages started (1, 2, ...), as the ledger records them: their
        request ``spec``, ``n_rows`` sent, ``reason`` (what chose them) and more."""
        return self._ledger.stages(self.id)

    @property
    def planned_stages(self) -> int:
        """How many stages the job has or will have: a cascade's models, or the stages
        started so far (1 for a job never escalated)."""
        cascade = self.policy.get("cascade") or {}
        return max(len(cascade.get("models") or ()), len(self.stages) + 1)

    @property
    def staged(self) -> bool:
        """Whether the job escalates (a cascade, or a stage started): then ``merge``
        says in ``{output}_model`` which model answered each row."""
        return bool(self.policy.get("cascade")) or bool(self.stages)

    def stage_spec_dict(self, stage: int) -> dict[str, Any]:
        """The request parameters of ``stage`` as recorded (0: the job's own)."""
        if stage == 0:
            return dict(self._record["spec"])
        for s in self.stages:
            if s["stage"] == stage:
                return dict(s["spec"])
        raise NbbatchError(f"internal error: job {self.id} has no stage {stage}", job_id=self.id)

    def stage_spec(self, stage: int) -> RequestSpec:
        """The request parameters of ``stage`` (0: the job's own, :attr:`spec`)."""
        return self.spec if stage == 0 else RequestSpec(**self.stage_spec_dict(stage))

    def stage_salt(self, stage: int) -> str | None:
        """The request-hash salt of ``stage``'s parameters (None when not recorded)."""
        if stage == 0:
            return self._record.get("salt")
        return next((s["salt"] for s in self.stages if s["stage"] == stage), None)

    def tries(self, state: rowstore.RowState, positions: np.ndarray) -> np.ndarray:
        """How many times each leader at ``positions`` was sent in its current stage
        (its attempt counted from the stage's first): what ``retries`` limits."""
        first = np.ones(len(self.stages) + 1, dtype=np.int64)
        for s in self.stages:
            first[s["stage"]] = s["first_attempt"]
        stage = state.stage[positions]
        return np.asarray(state.attempt[positions] - first[stage] + 1)

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
        if _planning.planning(self):
            return _planning.snapshot(self)
        state = self._ledger.row_state(self.id)
        raw = state.counts()
        counts = {state_: int(raw.get(state_, 0)) for state_ in ROW_STATES}
        counts["total"] = int(self._record["n_rows"])
        batches = self._ledger.batches(self.id)
        stage_due = counts["pending"] == 0 and _escalate.stage_due(self)
        status = "completed" if counts["pending"] == 0 and not stage_due else "running"
        if self._record.get("status") in ("cancelled", "failed") and counts["pending"] == 0:
            status = self._record["status"]
        # What was paid for: rows sent themselves (not reused from an earlier job, not
        # deduplicated onto another row), by route.
        usage = state.usage()
        batch, realtime = usage["batch"], usage["realtime"]
        if self.staged:  # answers a later stage replaced were paid too: all stages' tokens
            stages = list(state.usage_by_stage().values())
            batch = tuple(sum(p["batch"][i] for p in stages) for i in range(4))
            realtime = tuple(sum(p["realtime"][i] for p in stages) for i in range(4))
        pending_in, pending_out = self._pending_estimate(counts["pending"])
        # Per batch: rows still pending on it, and its requests (leaders) that succeeded.
        per_batch = state.per_batch()
        # An escalation's batches are named by their stage and model, not as retries.
        stage_of = _escalate.batch_stages(self, batches)
        views = tuple(
            BatchView(
                b["batch_id"],
                b["status"],
                # The provider's requests: a batch of packs (pack=N) has fewer than rows.
                _pack.n_requests(
                    b["n_requests"],
                    _pack.size_for(self.policy, int(b.get("stage") or 0), int(b["attempt"])),
                ),
                b["attempt"],
                done=int(b["done"] or 0),
                rows=per_batch.get(b["intent"], (0, 0))[0],
                succeeded=per_batch.get(b["intent"], (0, 0))[1],
                **stage_of(b),
            )
            for b in batches
        )
        now = self.clock()
        sending = self._sending
        return JobSnapshot(
            job_id=self.id,
            # "local": an emulator run must never read as spending at the provider.
            provider="local" if self._record.get("backend") == "local" else self.provider,
            model=self.model,
            endpoint=self.endpoint,
            base_url=str(self._record.get("base_url") or ""),
            n_rows=counts["total"],
            counts=counts,
            status=status,
            batches=views,
            created=float(self._record["created"]),
            now=now,
            last_poll=self._last_poll,
            next_poll=self._next_poll,
            # Shown by the panel, the console, the CLI and the sidebar: never with a key.
            last_error=None if self._last_error is None else _scrub.scrub(self._last_error),
            notes=self._current_notes(counts, batches),
            progress_samples=self._sample_progress(counts, views, now),
            input_tokens=batch[0],
            output_tokens=batch[1],
            cached_tokens=batch[2],
            realtime_input_tokens=realtime[0],
            realtime_output_tokens=realtime[1],
            pending_input_tokens=pending_in,
            pending_output_tokens=pending_out,
            reused=int(raw.get("reused", 0)),
            deduplicated=int(raw.get("deduplicated", 0)),
            realtime=int(raw.get("realtime", 0)),
            sending=sending.text() if sending is not None and sending.active else None,
            deadline=self._record.get("deadline"),
            stages=self._stage_views(state, counts) if self.staged else (),
            cascade=tuple((self.policy.get("cascade") or {}).get("models") or ()),
            stage_due=stage_due,
            failure=_escalate.failure(self) if status == "failed" else None,
        )

    def _stage_views(
        self, state: rowstore.RowState, counts: dict[str, int]
    ) -> tuple[StageView, ...]:
        """Each stage started so far: its model, rows, pending rows and tokens paid."""
        stages = [{"stage": 0, "spec": self._record["spec"], "reason": "",
                   "n_rows": counts["total"] - counts["skipped"]}, *self.stages]  # fmt: skip
        usage = state.usage_by_stage()
        rows_stage = state.follow(state.stage)
        pending = np.bincount(
            rows_stage[state.statuses() == rowstore.PENDING], minlength=len(stages)
        )
        views = []
        for s in stages:
            number = int(s["stage"])
            paid = usage.get(number, {})
            batch, live = paid.get("batch", (0, 0, 0, 0)), paid.get("realtime", (0, 0, 0, 0))
            pending_in, pending_out = self._pending_estimate(int(pending[number]), s["spec"])
            views.append(
                StageView(
                    number,
                    str(s["spec"]["model"]),
                    int(s["n_rows"]),
                    int(pending[number]),
                    s["reason"],
                    batch[0],
                    batch[1],
                    batch[2],
                    batch[3] + live[3],
                    live[0],
                    live[1],
                    pending_in,
                    pending_out,
                )  # fmt: skip
            )
        return tuple(views)

    def _current_notes(
        self, counts: dict[str, int], batches: list[dict[str, Any]]
    ) -> tuple[Note, ...]:
        """The job's notes, each marked current while what it says still holds (see
        :func:`nbbatch.notes.mark_current`)."""
        # Attempts with rows still pending (in a batch not collected, or not sent yet).
        state = self._ledger.row_state(self.id)
        open_attempts = set(np.unique(state.attempt[state.status == rowstore.PENDING]).tolist())
        finished = counts["pending"] == 0
        alert = self._alert_text(counts) if (self._alert_raised or finished) else None
        return _notes.mark_current(self._notes, open_attempts, finished, alert, self.clock())

    def _sample_progress(
        self, counts: dict[str, int], views: tuple[BatchView, ...], now: float
    ) -> tuple[tuple[float, int], ...]:
        """Record rows done or ready at the provider when that changed (starting over
        when it went back: a retry put rows back to pending), for the ETA's rate."""
        ready = min(counts["pending"], sum(v.ready for v in views))
        progress = counts["total"] - counts["pending"] + ready
        samples = self._samples
        last = samples[-1][1] if samples else self._progress_base
        if last is None or progress < last:
            self._progress_base, self._samples = progress, []
        elif progress != last:
            self._samples = [*samples[-29:], (now, progress)]
        return tuple(self._samples)

    def _pending_estimate(
        self, pending: int, spec: dict[str, Any] | None = None
    ) -> tuple[int, int]:
        """Estimated (input, output) tokens of the rows still pending: 4 characters per
        token for the prompt, ``max_tokens`` (or 100) for the reply (of ``spec``, a
        stage's parameters, else the job's). The prompt average is computed once."""
        if self._avg_prompt_tokens is None:
            n, chars = self.prompt_chars()
            # Packed rows (pack=N) share the system prompt N ways on their first try.
            system = len(self.spec.system or "") / (self.policy.get("pack") or 1)
            self._avg_prompt_tokens = (chars / max(n, 1) + system) / 4 + 4
        max_tokens = (spec or self._record["spec"]).get("max_tokens")
        out = 0 if is_embeddings(self.endpoint) else (max_tokens or 100)
        return int(pending * self._avg_prompt_tokens), pending * out

    # -- sending ----------------------------------------------------------------------------
    def start_sending(self, *, daemon: bool = False) -> None:
        """Build and upload the rows not sent yet in a background thread, chunk by chunk
        (see :mod:`nbbatch.send`), so the caller gets control back at once. The views
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
        the batches end: after this, ``job.batch_ids`` lists every batch. Raises what
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

    def _warn(self, message: str, kind: str = "event", attempt: int | None = None) -> None:
        """Note ``message`` (with its time and kind, see ``snapshot.NOTE_KINDS``) for the
        views, the ledger's history and the log."""
        self._notes.append(Note(self.clock(), kind, message, attempt=attempt))
        self._ledger.event(self.id, "warning", message)
        log.warning("nbbatch job %s: %s", self.id, message)

    def _send_unsent(self, progress: _send.Progress | None = None) -> None:
        """Send the rows pending in no batch: not sent yet (a new job, a process that
        died before sending them) or put back by ``resubmit_failed``. A job whose rows
        are not planned yet is planned first (see :mod:`nbbatch.planning`)."""
        if _planning.planning(self) and not _planning.run(self, progress, self._plan_checks):
            return  # planned by another sender, or cancelled while planned
        if not len(_collect.unsent(self._ledger.row_state(self.id))):
            return
        if self._record.get("status") == "cancelled":
            # Rows put back after a cancel (a create call refused while it was made):
            # they end cancelled, never sent.
            self._cancel_unsent()
            return
        # One sender per job, across processes and job objects: rows another live one
        # is sending are left to it (so a second session never sends them again).
        if not self._ledger.take_sending(self.id):
            return
        try:
            state = self._ledger.row_state(self.id)  # as any sender before us left it
            positions = _collect.unsent(state).astype(np.int32)
            # Rows go in groups of one (stage, attempt), as one key each. Read now, into
            # arrays of their own: the state is live, and sending the first group changes
            # the attempts of its rows (read afterwards, they would be sent twice).
            keys = (state.stage[positions].astype(np.int64) << 16) | state.attempt[positions]
            # Usually one group: then no sort, and no copy of millions of positions.
            single = bool(len(keys)) and bool((keys == keys[0]).all())
            for key in keys[:1] if single else np.unique(keys):
                chosen = positions if single else positions[keys == key]
                _send.send_rows(
                    self, chosen, max(1, int(key) & 0xFFFF), progress=progress,
                    lock=self._lock, stage=int(key) >> 16,
                )  # fmt: skip
        finally:
            self._ledger.release_sending(self.id)

    # -- polling ----------------------------------------------------------------------------
    def refresh(self) -> JobSnapshot:
        """Poll every open batch once, collect the ones that ended, retry what the job's
        policy says to retry, and return a snapshot.

        A transient error (connection refused, 429, 5xx) is kept in the snapshot's
        ``last_error`` and tried again on the next refresh; other errors raise.
        """
        with self._lock:
            self._last_error = None
            self._backend_dead = False
            # Another process (the Lab sidebar, `nbbatch cancel`) may have cancelled it.
            self._record["status"] = self._ledger.job_status(self.id) or self._record["status"]
            try:
                for batch in self._ledger.batches(self.id):
                    if batch["batch_id"].startswith("intent-"):
                        _send.resolve_intent(self, batch)
                if not self.sending and self._send_error is None:
                    self._send_unsent()
                for batch in self._ledger.batches(self.id):
                    if not batch["collected"] and not batch["batch_id"].startswith("intent-"):
                        _collect.poll_batch(self, batch)
                if not _planning.planning(self):
                    _collect.after_collect(self)
            except ProviderError as exc:
                if not exc.transient:
                    exc.job_id = self.id
                    raise
                self._last_error = self._transient_note(exc)
            if self._send_error is not None:
                self._last_error = self._send_error_note()
            self._last_poll = self.clock()
            snap = self.snapshot()
        self._log_progress(snap)
        self._notify(snap)
        return snap

    def _transient_note(self, exc: ProviderError) -> str:
        """What a transient error means for this job, in ``last_error``.

        No answer at all from a loopback address is not a passing hiccup: a stopped
        background emulator (``provider="local"``) is started again; a private emulator
        (``nb.emulator.start()``) kept its batches in memory, so they are gone for good.
        """
        self._backend_dead = False
        if http_status(exc.__cause__) is not None:
            return str(exc)  # the backend answered (429, 5xx): it is there
        if self._record.get("backend") == "local":
            from . import providers

            try:
                self._provider = providers.build(self.provider, local=True)
            except Exception as error:  # shown, and tried again on the next poll
                return f"{exc}; nbbatch's background emulator could not be started: {error}"
            return f"{exc}; nbbatch's background emulator had stopped and was started again"
        url = urlparse(self._provider.base_url)
        if is_loopback(url.geturl()):
            self._backend_dead = True
            return (
                f"the emulator at {url.scheme}://{url.netloc} is not running (an emulator "
                "started with nb.emulator.start() keeps its batches in memory, so they ended "
                "with it): "
                "the pending rows can never finish there; close the job with job.forget()."
            )
        return str(exc)

    def _rows_in_attempt(self, attempt: int) -> int:
        """Rows pending in ``attempt`` (leaders and the rows deduplicated onto them)."""
        state = self._ledger.row_state(self.id)
        pending = state.statuses() == rowstore.PENDING
        return int((pending & (state.follow(state.attempt) == attempt)).sum())

    def _send_error_note(self) -> str:
        """What stopped sending, and what sends the rest."""
        if _planning.planning(self):
            return f"sending stopped: {self._send_error}"
        state = self._ledger.row_state(self.id)
        unsent = np.zeros(state.n, dtype=bool)
        unsent[_collect.unsent(state)] = True
        waiting = int(state.follow(unsent).sum())
        return (
            f"sending stopped: {self._send_error}; {waiting:,} rows are not sent yet: "
            f"job.wait() (or nb.attach({self.id!r}) in a new session) sends them"
        )

    def _warn_once(self, message: str, kind: str = "event", attempt: int | None = None) -> None:
        if all(n.text != message for n in self._notes):
            self._warn(message, kind, attempt)

    def _check_alert(self) -> None:
        alert = self._alert_text(self._ledger.counts(self.id))
        if alert is not None and not self._alert_raised:
            self._alert_raised = True
            self._warn(alert, "alert")

    def _alert_text(self, counts: dict[str, int]) -> str | None:
        """The failure-rate alert for these counts, or None below the threshold."""
        return _notes.alert_text(counts, self.policy.get("alert_threshold"))

    def _log_progress(self, snap: JobSnapshot) -> None:
        """Health signals on logger ``nbbatch`` and in the ledger: the end of the job
        (INFO, once, by the first process to see it end), a job left with rows that got
        no result (WARNING), and a job past its deadline (WARNING, once per session)."""
        if snap.overdue and not self._logged_overdue:
            self._logged_overdue = True
            self._ledger.event(self.id, "overdue", snap.overdue)
            log.warning("nbbatch job %s: %s", self.id, snap.overdue)
        if not snap.finished or self._logged_done:
            return
        self._logged_done = True
        record = self._ledger.job(self.id) or {}
        if record.get("ended_at") is not None:
            return  # its end was reported when it happened
        self._ledger.set_job_time(self.id, "ended_at", snap.now)
        c = snap.counts
        log.info(
            "nbbatch job %s ended after %s: %d of %d rows succeeded, %d failed, %d expired, "
            "%d cancelled, %d skipped; cost %s",
            self.id, format_seconds(snap.elapsed), c["succeeded"], c["total"], c["failed"],
            c["expired"], c["cancelled"], c["skipped"], snap.cost,
        )  # fmt: skip
        sent = sum(c[s] for s in ("succeeded", "failed", "expired", "cancelled"))
        gap = _health.incomplete_text(
            _health.missing_results(self._ledger.row_state(self.id)), sent
        )
        if gap:
            self._warn(gap)

    @property
    def policy(self) -> dict[str, Any]:
        """The job's failure policy: ``retries``, ``fallback``, ``alert_threshold``."""
        return dict(self._record.get("policy") or {})

    def start_polling(self) -> Poller:
        """Poll in a background thread until every row is terminal (the kernel stays free).

        Idempotent: a poller already running is returned as it is.
        """
        with self._lock:
            if self._poller is None or not self._poller.running:
                self._poller = Poller(self).start()
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
        from . import console

        unsubscribe = console.attach(self, progress)
        try:
            start = self.clock()
            for delay in self.polling.delays():
                snap = self.refresh()
                error = self._send_error
                if error is not None and not self.sending:
                    self._send_error = None  # raised once; the next wait() sends again
                    if isinstance(error, NbbatchError):
                        error.job_id = self.id
                    raise error
                if snap.finished:
                    _escalate.raise_if_failed(self, snap)
                    return self
                if timeout is not None and self.clock() - start + delay > timeout:
                    raise TimeoutError(self._timeout_message(snap, timeout))
                self._next_poll = self.clock() + delay
                sender = self._sender
                if sender is not None and sender.is_alive():
                    # Batches already created are collected while later ones upload;
                    # between polls, wait on the sender itself (it reports each chunk).
                    sender.join(delay)
                else:
                    self.sleep(delay)
                self._next_poll = None
            raise AssertionError("unreachable")
        finally:
            unsubscribe()

    def cancel(self) -> JobSnapshot:
        """Ask the provider to cancel every open batch. Rows already finished keep their
        results; the rest end ``cancelled`` once the provider confirms. Rows not sent
        yet (the background sender stops after the chunk it is on) end ``cancelled``
        at once."""
        self._stop_sending()
        if _planning.cancel(self):  # nothing was sent: its rows end cancelled
            self._notify(self.snapshot())
            return self.snapshot()
        with self._lock:
            # Recorded first: a sender in another process (a kernel, while the Lab
            # sidebar cancels) then either sees it before its next chunk and stops, or
            # has recorded that chunk's intent already, and cancels the batch it makes.
            self._ledger.set_job_status(self.id, "cancelled")
            self._record["status"] = "cancelled"
            self._cancel_unsent()
            for batch in self._ledger.batches(self.id):
                if not batch["ended"] and not batch["batch_id"].startswith("intent-"):
                    try:
                        info = self._provider.cancel(batch["batch_id"])
                    except ProviderError as exc:
                        if not _collect.local_batch_gone(self, exc):
                            raise
                        _collect.end_backend_gone(self, batch)
                        continue
                    self._ledger.update_batch(
                        info.batch_id, info.status, info.ended, info.failure, info.raw
                    )
            self._ledger.event(self.id, "cancel", "cancel requested")
            self._notes.append(
                Note(self.clock(), "cancel", "cancel requested; open batches end as the "
                     "provider confirms (rows already finished keep their results)")
            )  # fmt: skip
        return self.refresh()

    def _stop_sending(self) -> None:
        """Stop the background sender after the chunk it is on, and wait for it."""
        if self._sending is not None:
            self._sending.cancelled = True
        if self._sender is not None:
            self._sender.join()

    def _cancel_unsent(self) -> None:
        """Rows that were never sent end ``cancelled``."""
        positions = _collect.unsent(self._ledger.row_state(self.id))
        if len(positions):
            table = rowstore.failure_table(
                positions, "cancelled", "cancelled", "cancelled before it was sent", False
            )
            self._ledger.record_results(
                self.id, None, table, f"{len(positions):,} unsent requests cancelled"
            )

    @staticmethod
    def _daemon_sender() -> bool:
        """In a notebook the sender thread is a daemon (a kernel restart must not wait
        for it: the intents make a kill safe); elsewhere a script's exit waits for it."""
        from .console import in_notebook

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
        """Remove the job from the ledger: its rows, batches, events and result files.

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
                    self.refresh()  # learn which batches are still open, and where
                except NbbatchError:
                    pass  # what is open is judged from the ledger below
                open_batches = [b for b in self._ledger.batches(self.id) if not b["ended"]]
                if open_batches and not self._backend_dead:
                    pending = self._ledger.counts(self.id).get("pending", 0)
                    fix = (
                        "its cancel is not confirmed yet: job.wait() until it is"
                        if self._record.get("status") == "cancelled"
                        else "call job.cancel() first (or `nbbatch cancel JOB`)"
                    )
                    raise NbbatchError(
                        f"job {self.id} still has {pending} pending rows in "
                        f"{len(open_batches)} open batches that can still run: {fix}, or "
                        "forget(force=True) to drop it anyway (the batches then go on "
                        "unwatched).",
                        job_id=self.id,
                        provider=self.provider,
                    )
            self.stop_polling()
            self._ledger.forget_job(self.id)

    # -- results ----------------------------------------------------------------------------
    def results(self) -> pd.DataFrame:
        """One row per input row, by position, indexed by custom_id: label, status,
        output, error, error_type, retryable, batch_id, attempt and token counts."""
        state = self._ledger.row_state(self.id)
        table = _merge.results_table(state, self._batch_names(state))
        frame = table.to_pandas()
        frame["retryable"] = pd.Series(table.column("retryable").to_pylist(), dtype=object)
        frame["output"] = self._decode_outputs(frame["output"])
        # Which stage (and model) each row's result comes from.
        stage = state.follow(state.stage)
        frame["stage"] = stage
        frame["model"] = np.array(self.models, dtype=object)[stage]
        return frame.set_index("custom_id")

    def _batch_names(self, state: rowstore.RowState) -> list[str | None]:
        """The provider's batch id for each of the state's batch keys (intents)."""
        names = {b["intent"]: b["batch_id"] for b in self._ledger.batches(self.id)}
        return [names.get(key) for key in state.batch_keys]

    def _decode_outputs(self, values: pd.Series) -> pd.Series:
        if is_embeddings(self.endpoint):
            # A row without a vector (failed, pending) reads back as None or NaN.
            return values.map(lambda v: orjson.loads(v) if isinstance(v, str) else None).astype(
                object
            )
        return values

    def prompt_chars(self) -> tuple[int, int]:
        """(rows with a prompt, total prompt characters): for cost estimates before usage."""
        if _planning.planning(self):
            return 0, 0  # no rows planned yet
        return rowstore.prompt_chars(self._ledger.row_state(self.id))

    def merge(self, df: Any = None, *, verify: bool = True) -> Any:
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
        when it is computed (see :mod:`nbbatch.engines`).
        """
        if df is None:
            if self._data is None:
                raise MergeError(
                    f"job {self.id} was attached without its data; call job.merge(df) with "
                    "the DataFrame you submitted.",
                    job_id=self.id,
                )
            df = self._data
        from . import engines

        if engines.kind_of(df):  # Dask or Spark: merged lazily, partition by partition
            return engines.merge(self, df, verify=verify)
        return _merge.merge_job(self, df, verify=verify)

    def to_parquet(
        self,
        path: str | os.PathLike[str],
        data: Any = None,
        *,
        columns: list[str] | None = None,
        verify: bool = True,
    ) -> Path:
        """Write the merged rows to a Parquet file at ``path`` and return it: the input
        columns named in ``columns`` (all of them by default) and the columns ``merge``
        adds. ``data`` is what was submitted (a path of Parquet files, a table), by
        default the data of this session, or, for a job submitted from Parquet files,
        those files again (read where they were). Data from files or an Arrow dataset is
        written record batch by record batch, never held whole, so a table larger than
        memory can be written. Every row is checked as :meth:`merge` checks it (pass
        ``verify=False`` to skip that). Written to a temporary name, then renamed.
        ``path`` may be a folder: the file is then ``<job id>.parquet`` in it. Rows from
        a table in memory start with a ``row`` column, their position in the data
        (0-based), which tells apart rows whose index labels repeat. For a Dask or Spark
        frame, ``path`` is a folder of Parquet files written by the workers, partition
        by partition."""
        import pyarrow.parquet as pq

        from . import frames
        from . import stream as _stream

        data = data if data is not None else self._data
        from . import engines

        if engines.kind_of(data):  # a folder of files, written by the workers
            return engines.to_parquet(self, data, path, columns=columns, verify=verify)
        source = None
        if data is not None and frames.streamed(data):
            source = _stream.Source.of(data)
        elif data is None and (recorded := self._ledger.source(self.id)) is not None:
            source = _stream.Source.recorded(recorded)
        target = _merge.parquet_target(Path(path), self.id)
        # A fresh private file, renamed into place (see nbbatch._files).
        with private_output(target) as tmp:
            if source is not None:
                self._warn_if_running("to_parquet()")
                _merge.write_parquet(self, source, tmp, columns=columns, verify=verify)
            else:
                table = frames.as_arrow(self.merge(data, verify=verify))
                if columns is not None:
                    table = table.select([*columns, *self.output_columns()])
                table = _merge.with_row_position(table)
                pq.write_table(table, tmp)
        return target

    def _warn_if_running(self, what: str) -> None:
        """Warn that a job's answers are not all in yet, so an empty or partial result is
        not read as final."""
        pending = int(self._ledger.counts(self.id).get("pending", 0))
        if pending:
            warnings.warn(
                f"job {self.id} is still running: {pending:,} of {self._record['n_rows']:,} "
                f"rows are pending, so {what} shows only what has finished so far. "
                "job.wait() blocks until every row is done.",
                JobRunningWarning,
                stacklevel=3,
            )

    def output_columns(self) -> list[str]:
        """The columns ``merge`` adds: ``{output}`` (or one per field of a structured
        response_format), ``{output}_status``, ``{output}_error`` (and ``{output}_raw``,
        the reply as received, with a response_format), and ``{output}_model`` for a job
        that escalates (a cascade, or after :meth:`escalate`)."""
        return output_columns(self.output, self.spec.response_format, staged=self.staged)

    def failed(self) -> pd.DataFrame:
        """The merged rows that did not succeed (failed, expired or cancelled); while the
        job runs, a warning says these are only the failures so far."""
        from . import engines, frames

        if engines.kind_of(self._data):  # Dask or Spark: filtered lazily, on the workers
            return engines.failed(self, self._data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", JobRunningWarning)  # warned once, below
            if self._data is None:
                merged = self.results()
                bad = merged["status"].isin(["failed", "expired", "cancelled"])
                self._warn_if_running("failed()")
                return merged[bad]
            merged = _merge.merge_job(self, self._data, verify=True, native=False)
        self._warn_if_running("failed()")
        bad = merged[f"{self.output}_status"].isin(["failed", "expired", "cancelled"])
        return frames.rows(self._data, merged, self.output_columns(), bad.to_numpy())

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
            state = self._ledger.row_state(self.id)
            leaders = state.is_leader
            bad = (state.status == rowstore.FAILED) | (state.status == rowstore.EXPIRED)
            positions = np.flatnonzero(leaders & bad)
            if not len(positions):
                return self
            if overrides and (state.stage[positions] > 0).any():
                raise InputError(
                    f"some failed rows of job {self.id} failed in an escalation stage, "
                    "whose parameters resubmit_failed(**overrides) does not change: "
                    "job.escalate(model=..., where='failed', **overrides) sends them with "
                    "other parameters. Nothing was sent.",
                    job_id=self.id,
                )
            if overrides:
                self._apply_overrides(overrides)
            attempt = int(state.attempt[positions].max()) + 1
            self._ledger.event(self.id, "resubmit", f"resubmitting {len(positions)} rows")
            self._ledger.set_job_status(self.id, "running")
            # It ends again, and says so; collect --finished writes its new results.
            self._ledger.set_job_time(self.id, "ended_at", None)
            self._ledger.set_job_time(self.id, "collected_at", None)
            self._logged_done = False
            self._record["status"] = "running"
            # Put back to be sent, then sent by the background sender (or the next
            # refresh): the kernel stays free however many rows failed.
            stages = state.stage[positions].copy()
            for stage in np.unique(stages):  # each row again in the stage it failed in
                self._ledger.requeue(self.id, positions[stages == stage], attempt, int(stage))
            self._send_error = None
            n = self._rows_in_attempt(attempt)
            self._notes.append(
                Note(self.clock(), "resubmit", f"resubmitted {n:,} failed or expired rows "
                     f"(attempt {attempt}); only those are sent and paid for again",
                     attempt=attempt)
            )  # fmt: skip
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
        0.7"``; parsed by :mod:`nbbatch.expr`, never run as code), or a boolean mask
        with one value per row, in the merged order. ``merge`` then holds, per row, the
        answer of the last model that answered it, and ``{output}_model`` says which;
        ``job.cost`` prices each stage on its own model. Succeeded rows not chosen are
        never sent again, nor rows already answered with exactly these parameters.

        Everything is checked before anything is sent: the model (at the provider, and
        of the job's provider), the parameters, ``where`` (its length, its values), and
        that the job has ended (escalate after ``job.wait()``) and chose at least one
        row. See :mod:`nbbatch.escalate`.
        """
        from . import escalate as _escalate

        with self._lock:
            self._check_can_escalate()
            _escalate.start_stage(self, model, where, overrides, automatic=False)
        return self

    def _check_can_escalate(self) -> None:
        """An escalation starts from a job that has ended, not cancelled: rows still
        pending would otherwise be chosen (or not) on answers that are not in yet."""
        self.refresh()
        if self._record.get("status") == "cancelled":
            raise InputError(
                f"job {self.id} was cancelled; submit a new job instead of escalating it.",
                job_id=self.id,
            )
        pending = int(self._ledger.counts(self.id).get("pending", 0))
        if pending or self.sending:
            raise InputError(
                f"job {self.id} is still running ({pending:,} rows pending): escalate once it "
                "has ended (job.wait()), so the rows are chosen on their final answers. "
                "Nothing was sent.",
                job_id=self.id,
            )

    def _apply_overrides(self, overrides: dict[str, Any]) -> None:
        """Change request parameters for the batches sent from now on; checked as
        ``submit`` checks them, before anything is sent."""
        spec = dict(self._record["spec"])
        for key, value in overrides.items():
            if key in spec and key != "params":
                spec[key] = value
            else:
                spec["params"] = {**spec["params"], key: value}
        checked = RequestSpec(**spec)
        self._provider.validate(checked)
        if checked.model != self.model:
            self._provider.check_model(checked.model)
        self._record["spec"] = spec
        self._ledger.set_job_spec(self.id, spec)

    # -- display ----------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"<BatchJob {self.snapshot().summary()}>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In a notebook: the live panel (and polling) with a ``text/plain`` and a static
        ``text/html`` summary for viewers without widgets; elsewhere the text."""
        from . import panel

        return panel.mimebundle(self)

    def _ipython_display_(self) -> None:
        """IPython shows the job through :func:`nbbatch.panel.display_job`: an output
        whose saved text and summary follow the job to its end (a display handle)."""
        from . import panel

        panel.display_job(self)
