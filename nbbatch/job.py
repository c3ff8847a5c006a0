"""BatchJob: one DataFrame's rows going through a provider's batch API.

A job is a view over its record in the ledger plus a provider to talk to. Everything it
learns (batch ids, statuses, results) is written to the ledger first, so any process can
rebuild the same job with :func:`nbbatch.attach`. Views (the notebook panel, the console
reporter) subscribe to its snapshots; the job knows nothing of them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import socket
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from . import merge as _merge
from . import plan as _plan
from . import results as _results
from ._errors import InputError, JobRunningWarning, MergeError, NbbatchError, ProviderError
from .ledger import Ledger
from .poller import Poller
from .pricing import Cost
from .providers.base import BatchInfo, Provider, RequestSpec
from .snapshot import RESUBMITTABLE, ROW_STATES, BatchView, JobSnapshot, Note

Listener = Callable[[JobSnapshot], None]
log = logging.getLogger("nbbatch")

#: How many times one create call is tried while the provider answers 429/5xx.
CREATE_TRIES = 4
#: After this many seconds an unconfirmed create call is presumed dead even if the
#: process that made it still runs (the SDKs time a call out after 600 s).
INTENT_TIMEOUT = 660.0


def _alive(owner: dict[str, Any]) -> bool:
    """Whether the process recorded in an intent still runs (on this machine)."""
    if owner.get("host") != socket.gethostname() or not owner.get("pid"):
        return owner.get("host") is not None  # another machine: presume alive
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_loopback(url: str | None) -> bool:
    """Whether ``url`` points at this machine (where only an emulator answers)."""
    return (urlparse(url or "").hostname or "") in ("127.0.0.1", "localhost", "::1")


def _ids_prompts(rows: Sequence[tuple[Any, ...]]) -> tuple[pa.Array, pa.Array]:
    """The (custom_id, prompt) columns of ledger rows as Arrow arrays."""
    return (
        pa.array([r[0] for r in rows], pa.string()),
        pa.array([r[1] for r in rows], pa.large_string()),
    )


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


def output_columns(output: str, response_format: dict[str, Any] | None) -> list[str]:
    """The columns ``merge`` adds for this output name and response_format."""
    if response_format is None:
        return [output, f"{output}_status", f"{output}_error"]
    from . import structured

    fields = structured.columns_of(structured.schema_of(response_format))
    return [*fields, f"{output}_status", f"{output}_error", f"{output}_raw"]


def realtime_checked(table: pa.Table, spec: RequestSpec) -> pa.Table:
    """A real-time result table (with its ``truncated`` column) in the row-result shape,
    with replies checked against the schema when one was asked for."""
    from . import structured
    from .providers.base import ROW_RESULT_SCHEMA

    cut = set(table.filter(table.column("truncated")).column("custom_id").to_pylist())
    table = table.select(ROW_RESULT_SCHEMA.names)
    if spec.response_format is None:
        return table
    return _results.check_structured(table, structured.schema_of(spec.response_format), cut)


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
        self._avg_prompt_tokens: float | None = None

    # -- identity ---------------------------------------------------------------------------
    @property
    def id(self) -> str:
        """The job id (use it with :func:`nbbatch.attach`)."""
        return str(self._record["id"])

    @property
    def provider(self) -> str:
        """``"openai"`` or ``"anthropic"``."""
        return str(self._record["provider"])

    @property
    def model(self) -> str:
        """The model every request asks for."""
        return str(self._record["model"])

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
        """``running`` until every row is terminal, then ``completed`` (or ``cancelled``)."""
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
        raw = self._ledger.counts(self.id)
        counts = {state: int(raw.get(state, 0)) for state in ROW_STATES}
        counts["total"] = int(self._record["n_rows"])
        batches = self._ledger.batches(self.id)
        status = "completed" if counts["pending"] == 0 else "running"
        if self._record.get("status") == "cancelled" and counts["pending"] == 0:
            status = "cancelled"
        # What was paid for: rows sent themselves (not reused from an earlier job, not
        # deduplicated onto another row), by route.
        usage = {
            origin: (int(i), int(o), int(c), int(n))
            for origin, i, o, c, n in self._ledger.query(
                "SELECT COALESCE(origin, 'batch'), COALESCE(SUM(input_tokens), 0), "
                "COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cached_tokens), 0), COUNT(*) "
                "FROM rows WHERE job_id = ? AND source IS NULL AND status != 'skipped' "
                "AND input_tokens IS NOT NULL GROUP BY 1",
                (self.id,),
            )
        }
        batch = usage.get("batch", (0, 0, 0, 0))
        realtime = usage.get("realtime", (0, 0, 0, 0))
        pending_in, pending_out = self._pending_estimate(counts["pending"])
        # Per batch: rows still pending on it, and its requests (leader rows) that succeeded.
        per_batch = {
            batch_id: (int(waiting), int(ok))
            for batch_id, waiting, ok in self._ledger.query(
                "SELECT batch_id, SUM(status = 'pending'), SUM(status = 'succeeded' AND "
                "source IS NULL) FROM rows WHERE job_id = ? AND batch_id IS NOT NULL "
                "GROUP BY batch_id",
                (self.id,),
            )
        }
        views = tuple(
            BatchView(
                b["batch_id"],
                b["status"],
                b["n_requests"],
                b["attempt"],
                done=int(b["done"] or 0),
                rows=per_batch.get(b["batch_id"], (0, 0))[0],
                succeeded=per_batch.get(b["batch_id"], (0, 0))[1],
            )
            for b in batches
        )
        now = self.clock()
        return JobSnapshot(
            job_id=self.id,
            provider=self.provider,
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
            last_error=self._last_error,
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
        )

    def _current_notes(
        self, counts: dict[str, int], batches: list[dict[str, Any]]
    ) -> tuple[Note, ...]:
        """The job's notes, each marked current while what it says still holds: a retry
        or resubmission while its attempt has a batch not yet collected, a cancel until
        every row has ended, the failure-rate alert while the counts now are above the
        threshold (with today's numbers); everything else is history."""
        open_attempts = {b["attempt"] for b in batches if not b["collected"]}
        finished = counts["pending"] == 0
        alert = self._alert_text(counts) if (self._alert_raised or finished) else None
        last_alert = max((i for i, n in enumerate(self._notes) if n.kind == "alert"), default=-1)
        notes = []
        for i, n in enumerate(self._notes):
            if n.kind in ("retry", "resubmit"):
                n = dataclasses.replace(n, current=n.attempt in open_attempts)
            elif n.kind == "cancel":
                n = dataclasses.replace(n, current=not finished)
            elif i == last_alert and alert is not None:
                n = dataclasses.replace(n, text=alert, current=True)
            notes.append(n)
        if alert is not None and last_alert < 0:  # e.g. attached to a finished job
            notes.append(Note(self.clock(), "alert", alert, current=True))
        return tuple(notes)

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

    def _pending_estimate(self, pending: int) -> tuple[int, int]:
        """Estimated (input, output) tokens of the rows still pending: 4 characters per
        token for the prompt, ``max_tokens`` (or 100) for the reply. Computed once."""
        if self._avg_prompt_tokens is None:
            n, chars = self.prompt_chars()
            system = len(self.spec.system or "")
            self._avg_prompt_tokens = (chars / max(n, 1) + system) / 4 + 4
        out = 0 if self.endpoint.endswith("embeddings") else (self.spec.max_tokens or 100)
        return int(pending * self._avg_prompt_tokens), pending * out

    # -- sending ----------------------------------------------------------------------------
    def _send(
        self,
        custom_ids: pa.Array,
        prompts: pa.Array,
        attempt: int,
        *,
        max_requests: int | None = None,
    ) -> None:
        """Encode, split into provider-sized batches and create them.

        Each chunk is written to the ledger as an *intent* before its create call and
        confirmed with the provider's batch id the moment the call returns, so a process
        that dies in between leaves a trace that :meth:`refresh` resolves without paying
        twice. A create refused for capacity (429) is retried with backoff; rows that
        could not be sent end ``failed`` (``not_sent``, retryable).
        """
        if not len(custom_ids):
            return
        with self._lock:  # a poller must never see a half-made intent as abandoned
            self.__send(custom_ids, prompts, attempt, max_requests)

    def __send(
        self, custom_ids: pa.Array, prompts: pa.Array, attempt: int, max_requests: int | None
    ) -> None:
        spec = self.spec
        jsonl = self._provider.encode(custom_ids, prompts, spec)
        ends = np.flatnonzero(np.frombuffer(jsonl, dtype=np.uint8) == 0x0A) + 1
        if len(ends) != len(custom_ids):
            raise NbbatchError("internal error: one request line per row was not produced")
        limit = min(self._provider.max_requests, max_requests or self._provider.max_requests)
        bounds = list(
            _plan.chunk_bounds(ends, max_count=max(1, limit), max_bytes=self._provider.max_bytes)
        )
        for k, (first, stop) in enumerate(bounds):
            start = int(ends[first - 1]) if first else 0
            chunk = jsonl[start : int(ends[stop - 1])]
            ids = custom_ids[first:stop].to_pylist()
            part = f"{attempt}:{k + 1}/{len(bounds)}"
            intent = self._ledger.add_intent(self.id, part, attempt, ids)
            metadata = {"nbbatch_job": self.id, "nbbatch_part": part}
            try:
                info = self._create(chunk, spec, metadata)
            except ProviderError as exc:
                self._ledger.drop_intent(intent, str(exc))
                for later in bounds[k + 1 :]:
                    rest = custom_ids[later[0] : later[1]].to_pylist()
                    self._ledger.drop_intent(
                        self._ledger.add_intent(self.id, part, attempt, rest), str(exc)
                    )
                exc.job_id = self.id
                raise
            self._ledger.confirm_batch(intent, info.batch_id, info.status, info.raw)
            self._infos[info.batch_id] = info
            log.info("job %s: batch %s created with %d requests", self.id, info.batch_id, len(ids))

    def _create(self, chunk: bytes, spec: RequestSpec, metadata: dict[str, str]) -> BatchInfo:
        """One create call, retried with backoff while the provider says it is busy."""
        delay = 1.0
        for tries in range(1, CREATE_TRIES + 1):
            try:
                return self._provider.create(chunk, spec, metadata)
            except ProviderError as exc:
                if not exc.transient or tries == CREATE_TRIES:
                    raise
                note = f"the provider is busy ({exc}); trying again in {delay:.0f} s"
                self._warn(note)
                self.sleep(delay)
                delay = min(60.0, delay * 2)
        raise AssertionError("unreachable")

    def _warn(self, message: str, kind: str = "event", attempt: int | None = None) -> None:
        """Note ``message`` (with its time and kind, see ``snapshot.NOTE_KINDS``) for the
        views, the ledger's history and the log."""
        self._notes.append(Note(self.clock(), kind, message, attempt=attempt))
        self._ledger.event(self.id, "warning", message)
        log.warning("nbbatch job %s: %s", self.id, message)

    def _send_unsent(self) -> None:
        """Send rows that are pending but in no batch: a process died before sending them."""
        rows = self._ledger.query(
            "SELECT custom_id, prompt, attempt FROM rows WHERE job_id = ? AND status = "
            "'pending' AND batch_id IS NULL AND source IS NULL ORDER BY position",
            (self.id,),
        )
        if rows:
            self._ledger.event(self.id, "resume", f"sending {len(rows)} rows not sent before")
            self._send(
                pa.array([r[0] for r in rows], pa.string()),
                pa.array([r[1] for r in rows], pa.large_string()),
                max(1, max(r[2] for r in rows)),
            )

    def _resolve_intent(self, batch: dict[str, Any]) -> None:
        """A create call whose outcome was never recorded (its process died): find the
        batch at the provider (it may exist, and be paid for) or, if there is none, put
        its rows back to be sent."""
        owner = orjson.loads(batch["raw"] or "{}")
        if _alive(owner) and self.clock() - batch["created"] < INTENT_TIMEOUT:
            return  # another live process is still in that create call
        meta = {"nbbatch_job": self.id, "nbbatch_part": batch["part"]}
        known = set(self.batch_ids)
        info = self._provider.find_batch(meta, batch["n_requests"], batch["created"], known)
        if info is not None:
            self._ledger.confirm_batch(batch["batch_id"], info.batch_id, info.status, info.raw)
            self._ledger.event(self.id, "resume", f"found batch {info.batch_id} at the provider")
        else:
            self._ledger.release_intent(batch["batch_id"])

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
            try:
                for batch in self._ledger.batches(self.id):
                    if batch["batch_id"].startswith("intent-"):
                        self._resolve_intent(batch)
                self._send_unsent()
                for batch in self._ledger.batches(self.id):
                    if not batch["collected"] and not batch["batch_id"].startswith("intent-"):
                        self._poll_batch(batch)
                self._after_collect()
            except ProviderError as exc:
                if not exc.transient:
                    exc.job_id = self.id
                    raise
                self._last_error = self._transient_note(exc)
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
        if getattr(exc.__cause__, "status_code", None) is not None:
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

    def _poll_batch(self, batch: dict[str, Any]) -> None:
        batch_id = batch["batch_id"]
        try:
            if not batch["ended"]:
                info = self._provider.retrieve(batch_id)
                if info.status != batch["status"]:
                    self._ledger.event(self.id, "status", f"batch {batch_id}: {info.status}")
                    log.info("job %s: batch %s is %s", self.id, batch_id, info.status)
                self._ledger.update_batch(
                    batch_id, info.status, info.ended, info.failure, info.raw, info.done
                )
                self._infos[batch_id] = info
                if not info.ended:
                    return
            info = self._infos.get(batch_id) or self._provider.retrieve(batch_id)
            self._collect(info)
        except ProviderError as exc:
            if not self._local_batch_gone(exc):
                raise
            self._end_backend_gone(batch_id)

    def _local_batch_gone(self, exc: ProviderError) -> bool:
        """Whether ``exc`` says the background emulator no longer knows a batch."""
        gone = getattr(exc.__cause__, "status_code", None) == 404
        return gone and self._record.get("backend") == "local"

    def _end_backend_gone(self, batch_id: str) -> None:
        """The background emulator does not know this batch (its saved state was removed):
        its rows will never finish, so they end ``failed`` (``backend_gone``).

        Not ``retryable``: automatic retries are for a request's passing failure; losing
        the backend is something to see and decide on, with ``job.resubmit_failed()``.
        """
        message = (
            f"nbbatch's background emulator no longer knows batch {batch_id} (its saved "
            "state under the ledger home was removed, or the batch is over 30 days old), so "
            "these rows will never finish there; job.resubmit_failed() sends them again."
        )
        ids = self._ledger.sent_ids(batch_id)
        rows = (
            ("failed", None, "backend_gone", f"backend_gone: {message}", 0, None, None, None, c)
            for c in ids
        )
        self._ledger.update_batch(batch_id, "gone", True, message, {})
        self._ledger.record_results(self.id, batch_id, rows, f"batch {batch_id}: backend gone")
        self._infos.pop(batch_id, None)
        self._warn(message)

    def _collect(self, info: BatchInfo) -> None:
        """Read an ended batch's result files (once: they are kept on disk) and record
        one reconciled result per row it was sent."""
        raws = self._read_result_files(info)
        spec = self.spec
        tables = [self._provider.parse_results(raw, spec) for raw in raws]
        rec = _results.reconcile(
            self._ledger.sent_ids(info.batch_id),
            tables,
            batch_failure=info.failure,
            failure_code=info.failure_code,
        )
        table = rec.table
        if spec.response_format is not None:
            table = self._check_structured(table, raws)
        note = rec.note(info.batch_id)
        self._ledger.record_results(self.id, info.batch_id, _results.ledger_rows(table), note)
        if rec.unknown or rec.duplicates or rec.missing:
            self._warn(note)
        if info.failure:
            self._warn(f"batch {info.batch_id} failed as a whole: {info.failure}")

    def _check_structured(self, table: pa.Table, raws: list[bytes]) -> pa.Table:
        """Replies that do not match the schema, or were cut off, fail ``invalid_output``."""
        from . import structured

        spec = self.spec
        assert spec.response_format is not None
        cut: set[str] = set()
        for raw in raws:
            t = self._provider.truncated(raw, spec)
            cut.update(t.filter(t.column("truncated")).column("custom_id").to_pylist())
        return _results.check_structured(table, structured.schema_of(spec.response_format), cut)

    def _after_collect(self) -> None:
        """Apply the job's failure policy once no batch is open: automatic retries of
        transient failures, then the real-time fallback, then the failure-rate alert."""
        if any(not b["collected"] for b in self._ledger.batches(self.id)):
            return
        if self._record.get("status") == "cancelled":
            return
        policy = self.policy
        retries = int(policy.get("retries", 0))
        rows = self._ledger.query(
            "SELECT r.custom_id, r.prompt, r.attempt, r.error_type, b.n_requests FROM rows r "
            "JOIN batches b ON b.batch_id = r.batch_id WHERE r.job_id = ? AND r.source IS NULL "
            "AND r.status IN ('failed', 'expired') AND r.retryable = 1 AND r.attempt <= ? "
            "ORDER BY r.position",
            (self.id, retries),
        )
        if rows:
            attempt = max(r[2] for r in rows) + 1
            capacity = [r for r in rows if r[3] == "token_limit_exceeded"]
            other = [r for r in rows if r[3] != "token_limit_exceeded"]
            # Counted in rows (identical rows share a request): what the chips count too.
            sent = 0
            if other:
                self._send(*_ids_prompts(other), attempt)
                sent = self._rows_in_attempt(attempt)
                self._warn_once(
                    f"retrying {sent:,} rows that failed transiently (attempt {attempt})",
                    "retry",
                    attempt,
                )
            if capacity:
                smaller = max(1, min(r[4] for r in capacity) // 2)
                self._send(*_ids_prompts(capacity), attempt, max_requests=smaller)
                self._warn(
                    f"{self._rows_in_attempt(attempt) - sent:,} rows refused for capacity "
                    f"(token_limit_exceeded): resending them in batches of at most {smaller} "
                    "requests",
                    "retry",
                    attempt,
                )
            return
        if policy.get("fallback") == "realtime":
            self._fallback_realtime()
        self._check_alert()

    def _rows_in_attempt(self, attempt: int) -> int:
        """Rows pending in ``attempt`` (leaders and the rows deduplicated onto them)."""
        sql = "SELECT COUNT(*) FROM rows WHERE job_id = ? AND attempt = ? AND status = 'pending'"
        return int(self._ledger.query(sql, (self.id, attempt))[0][0])

    def _warn_once(self, message: str, kind: str = "event", attempt: int | None = None) -> None:
        if all(n.text != message for n in self._notes):
            self._warn(message, kind, attempt)

    def _fallback_realtime(self) -> None:
        """Send rows still failing for transient reasons through the real-time API, at
        full price, marked ``realtime`` in the ledger."""
        from . import realtime

        rows = self._ledger.query(
            "SELECT custom_id, prompt, attempt FROM rows WHERE job_id = ? AND source IS NULL "
            "AND status IN ('failed', 'expired') AND retryable = 1 ORDER BY position",
            (self.id,),
        )
        if not rows:
            return
        self._warn(f"sending {len(rows)} still-failing rows through the real-time API (full price)")
        ids, prompts = _ids_prompts(rows)
        table = realtime.run(self._provider, ids, prompts, self.spec, with_truncated=True)
        table = realtime_checked(table, self.spec)
        self._ledger.record_realtime(self.id, _results.ledger_rows(table))

    def _check_alert(self) -> None:
        alert = self._alert_text(self._ledger.counts(self.id))
        if alert is not None and not self._alert_raised:
            self._alert_raised = True
            self._warn(alert, "alert")

    def _alert_text(self, counts: dict[str, int]) -> str | None:
        """The failure-rate alert for these counts, or None below the threshold."""
        threshold = self.policy.get("alert_threshold")
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

    def _log_progress(self, snap: JobSnapshot) -> None:
        if snap.finished and not self._logged_done:
            self._logged_done = True
            log.info("job %s finished: %s; cost %s", self.id, snap.summary(), snap.cost)

    @property
    def policy(self) -> dict[str, Any]:
        """The job's failure policy: ``retries``, ``fallback``, ``alert_threshold``."""
        return dict(self._record.get("policy") or {})

    def _read_result_files(self, info: BatchInfo) -> list[bytes]:
        folder = self._ledger.files / self.id
        done = folder / f"{info.batch_id}.complete"
        if done.exists():
            return [p.read_bytes() for p in sorted(folder.glob(f"{info.batch_id}.*.jsonl"))]
        raws = self._provider.fetch_results(info)
        for i, raw in enumerate(raws):
            self._ledger.write_file(self.id, f"{info.batch_id}.{i}.jsonl", raw)
        self._ledger.write_file(self.id, f"{info.batch_id}.complete", b"")
        return raws

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
                if snap.finished:
                    return self
                if timeout is not None and self.clock() - start + delay > timeout:
                    raise TimeoutError(self._timeout_message(snap, timeout))
                self._next_poll = self.clock() + delay
                self.sleep(delay)
                self._next_poll = None
            raise AssertionError("unreachable")
        finally:
            unsubscribe()

    def cancel(self) -> JobSnapshot:
        """Ask the provider to cancel every open batch. Rows already finished keep their
        results; the rest end ``cancelled`` once the provider confirms."""
        with self._lock:
            for batch in self._ledger.batches(self.id):
                if not batch["ended"] and not batch["batch_id"].startswith("intent-"):
                    try:
                        info = self._provider.cancel(batch["batch_id"])
                    except ProviderError as exc:
                        if not self._local_batch_gone(exc):
                            raise
                        self._end_backend_gone(batch["batch_id"])
                        continue
                    self._ledger.update_batch(
                        info.batch_id, info.status, info.ended, info.failure, info.raw
                    )
            self._ledger.set_job_status(self.id, "cancelled")
            self._record["status"] = "cancelled"
            self._ledger.event(self.id, "cancel", "cancel requested")
            self._notes.append(
                Note(self.clock(), "cancel", "cancel requested; open batches end as the "
                     "provider confirms (rows already finished keep their results)")
            )  # fmt: skip
        return self.refresh()

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
        """One row per input row, by position: custom_id, label, status, output, error,
        error_type, retryable, batch_id, attempt and token counts."""
        cols = [
            "custom_id", "position", "key", "label", "status", "batch_id", "attempt",
            "output", "error_type", "error", "retryable", "input_tokens", "output_tokens",
            "cached_tokens",
        ]  # fmt: skip
        frame = pd.DataFrame(self._ledger.rows(self.id), columns=cols)
        frame["retryable"] = pd.Series(
            [None if v is None else bool(v) for v in frame["retryable"].astype(object)],
            index=frame.index,
            dtype=object,
        )
        frame["output"] = self._decode_outputs(frame["output"])
        return frame.drop(columns=["key"]).set_index("custom_id")

    def _decode_outputs(self, values: pd.Series) -> pd.Series:
        if self.endpoint.endswith("/embeddings"):
            return values.map(lambda v: None if v is None else orjson.loads(v)).astype(object)
        return values

    def prompt_chars(self) -> tuple[int, int]:
        """(rows with a prompt, total prompt characters): for cost estimates before usage."""
        sql = "SELECT COUNT(prompt), COALESCE(SUM(LENGTH(prompt)), 0) FROM rows WHERE job_id = ?"
        n, chars = self._ledger.query(sql, (self.id,))[0]
        return int(n), int(chars)

    def merge(
        self, df: pd.DataFrame | pd.Series | None = None, *, verify: bool = True
    ) -> pd.DataFrame:
        """``df`` plus ``{output}``, ``{output}_status`` and ``{output}_error`` columns.

        ``df`` defaults to the data submitted in this session. Its index, columns and order
        are kept; each row gets the result of its own request, found by position when
        ``df`` is the submitted data, else by index label (or ``id_column``), so a sorted
        or filtered copy works too. Every row is then checked to still render the request
        that was sent for it: a frame whose rows changed under the same labels (another
        frame, a sort and re-index, an edited column) raises :class:`MergeError` rather
        than put answers on the wrong rows; ``verify=False`` skips that check, for a
        column changed on purpose. While the job runs, a warning says that pending rows
        are not finished yet.
        """
        if df is None:
            if self._data is None:
                raise MergeError(
                    f"job {self.id} was attached without its data; call job.merge(df) with "
                    "the DataFrame you submitted.",
                    job_id=self.id,
                )
            df = self._data
        frame = df.to_frame() if isinstance(df, pd.Series) else df
        names = self.output_columns()
        clash = [n for n in names if n in frame.columns]
        if clash:
            raise MergeError(
                f"the DataFrame already has column(s) {clash}; drop them first or submit with "
                "another output= name.",
                job_id=self.id,
            )
        rows = self.results()
        stored = _plan.row_keys(
            frame[self._record["id_column"]] if self._record.get("id_column") else frame.index
        )
        keys, sent = (
            np.asarray(
                self._ledger.query(
                    "SELECT key, COALESCE(request_hash, 0) FROM rows WHERE job_id = ? "
                    "ORDER BY position",
                    (self.id,),
                ),
                dtype=np.int64,
            )
            .reshape(-1, 2)
            .view(np.uint64)
            .T
        )
        take = _merge.align(stored, keys, self.id)
        if verify:
            self._verify(df, take, sent[take])
        self._warn_if_running("merge()")
        out = frame.copy()
        columns = _merge.result_columns(
            self.output,
            self.spec.response_format,
            rows["status"].to_numpy()[take],
            rows["output"].to_numpy()[take],
            rows["error"].to_numpy()[take],
        )
        for name, column in columns.items():
            out[name] = column
        return out

    def _verify(self, df: pd.DataFrame | pd.Series, take: np.ndarray, sent: np.ndarray) -> None:
        """Check that each row of ``df`` renders the request sent for it (see merge)."""
        from . import prompt as _prompt

        frame, _ = _plan.as_frame(df)
        salt = self._record.get("salt")
        if salt is None:
            # A job from before the salt was recorded: compare with the stored prompts.
            salt = "nbbatch-verify01"
            prompts = pa.array(
                [r[0] for r in self._ledger.query(
                    "SELECT prompt FROM rows WHERE job_id = ? ORDER BY position", (self.id,)
                )],
                pa.large_string(),
            )  # fmt: skip
            sent = np.zeros(len(prompts), dtype=np.uint64)
            valid = prompts.is_valid().to_numpy(zero_copy_only=False)
            if valid.any():
                sent[valid] = _plan.prompt_hashes(prompts.filter(valid), salt)
            sent = sent[take]

        def sent_prompts(positions: list[int]) -> list[str | None]:
            return [
                self._ledger.query(
                    "SELECT prompt FROM rows WHERE job_id = ? AND position = ?",
                    (self.id, int(take[p])),
                )[0][0]
                for p in positions
            ]

        _merge.verify_rows(
            frame,
            _prompt.parse(self._record["template"]),
            missing=str(self.policy.get("missing", "skip")),
            salt=str(salt),
            sent=sent,
            sent_prompts=sent_prompts,
            job_id=self.id,
        )

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
        the reply as received, with a response_format)."""
        return output_columns(self.output, self.spec.response_format)

    def failed(self) -> pd.DataFrame:
        """The merged rows that did not succeed (failed, expired or cancelled); while the
        job runs, a warning says these are only the failures so far."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", JobRunningWarning)  # warned once, below
            merged = self.merge() if self._data is not None else self.results()
        self._warn_if_running("failed()")
        col = f"{self.output}_status" if self._data is not None else "status"
        return merged[merged[col].isin(["failed", "expired", "cancelled"])]

    def resubmit_failed(self, **overrides: Any) -> BatchJob:
        """Send again only the rows that ended ``failed`` or ``expired``, as new batches.

        Rows that succeeded keep their results and are not paid for again. Transient
        failures were already retried automatically (``retries``), so what is left is
        usually a failure the request itself causes (``invalid_request_error``, a reply
        cut off at ``max_tokens``): pass ``overrides`` to change request parameters for the
        new batches (e.g. ``max_tokens=500``), or the same request may fail the same way.
        Returns this job, which now also follows the new batches.
        """
        with self._lock:
            marks = ",".join("?" * len(RESUBMITTABLE))
            rows = self._ledger.query(
                "SELECT custom_id, prompt, attempt FROM rows WHERE job_id = ? AND source IS NULL "
                f"AND status IN ({marks}) ORDER BY position",
                (self.id, *RESUBMITTABLE),
            )
            if not rows:
                return self
            if overrides:
                self._apply_overrides(overrides)
            attempt = max(r[2] for r in rows) + 1
            self._ledger.event(self.id, "resubmit", f"resubmitting {len(rows)} rows")
            self._ledger.set_job_status(self.id, "running")
            self._record["status"] = "running"
            ids = pa.array([r[0] for r in rows], pa.string())
            self._send(ids, pa.array([r[1] for r in rows], pa.large_string()), attempt)
            n = self._rows_in_attempt(attempt)
            self._notes.append(
                Note(self.clock(), "resubmit", f"resubmitted {n:,} failed or expired rows "
                     f"(attempt {attempt}); only those are sent and paid for again",
                     attempt=attempt)
            )  # fmt: skip
        self._notify(self.snapshot())
        return self

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
