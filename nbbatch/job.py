"""BatchJob: one DataFrame's rows going through a provider's batch API.

A job is a view over its record in the ledger plus a provider to talk to. Everything it
learns (batch ids, statuses, results) is written to the ledger first, so any process can
rebuild the same job with :func:`nbbatch.attach`. Views (the notebook panel, the console
reporter) subscribe to its snapshots; the job knows nothing of them.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from . import plan as _plan
from . import results as _results
from ._errors import InputError, MergeError, NbbatchError, ProviderError
from .ledger import Ledger
from .poller import Poller
from .providers.base import BatchInfo, Provider, RequestSpec
from .snapshot import RESUBMITTABLE, ROW_STATES, BatchView, JobSnapshot

Listener = Callable[[JobSnapshot], None]


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


#: Polling for real providers starts at 2 s and backs off to a minute; the local
#: emulator finishes in seconds, so it is polled faster.
REMOTE_POLLING = PollPolicy(2.0, 60.0)
LOCAL_POLLING = PollPolicy(0.25, 2.0)


def new_job_id() -> str:
    """A readable, unique job id: ``nbb-YYYYMMDD-HHMMSS-xxxxxx``."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"nbb-{stamp}-{secrets.token_hex(3)}"


class BatchJob:
    """A batch job over the rows of a DataFrame; see the module docstring.

    Build one with :func:`nbbatch.submit` or :func:`nbbatch.attach`, not directly.
    """

    # Injected so tests can run a 24-hour batch in milliseconds.
    clock: Callable[[], float] = staticmethod(time.time)  # type: ignore[assignment]
    sleep: Callable[[float], None] = staticmethod(time.sleep)  # type: ignore[assignment]

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
        """Rows per state: ``total, succeeded, failed, expired, cancelled, skipped, pending``."""
        return self.snapshot().counts

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
        tokens = self._ledger.query(
            "SELECT COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), "
            "COALESCE(SUM(cached_tokens), 0) FROM rows WHERE job_id = ?",
            (self.id,),
        )[0]
        return JobSnapshot(
            job_id=self.id,
            provider=self.provider,
            model=self.model,
            endpoint=self.endpoint,
            base_url=str(self._record.get("base_url") or ""),
            n_rows=counts["total"],
            counts=counts,
            status=status,
            batches=tuple(
                BatchView(b["batch_id"], b["status"], b["n_requests"], b["attempt"])
                for b in batches
            ),
            created=float(self._record["created"]),
            now=self.clock(),
            last_poll=self._last_poll,
            next_poll=self._next_poll,
            last_error=self._last_error,
            input_tokens=int(tokens[0]),
            output_tokens=int(tokens[1]),
            cached_tokens=int(tokens[2]),
        )

    # -- sending ----------------------------------------------------------------------------
    def _send(self, custom_ids: pa.Array, prompts: pa.Array, attempt: int) -> None:
        """Encode, split into provider-sized batches and create them, recording each one
        the moment the provider returns it. Rows that could not be sent end ``failed``
        (``not_sent``) so nothing stays pending for ever."""
        spec = self.spec
        jsonl = self._provider.encode(custom_ids, prompts, spec)
        ends = np.flatnonzero(np.frombuffer(jsonl, dtype=np.uint8) == 0x0A) + 1
        if len(ends) != len(custom_ids):
            raise NbbatchError("internal error: one request line per row was not produced")
        bounds = list(
            _plan.chunk_bounds(
                ends, max_count=self._provider.max_requests, max_bytes=self._provider.max_bytes
            )
        )
        for k, (first, stop) in enumerate(bounds):
            start = int(ends[first - 1]) if first else 0
            chunk = jsonl[start : int(ends[stop - 1])]
            ids = custom_ids[first:stop].to_pylist()
            metadata = {"nbbatch_job": self.id, "nbbatch_part": f"{k + 1}/{len(bounds)}"}
            try:
                info = self._provider.create(chunk, spec, metadata)
            except ProviderError as exc:
                unsent = custom_ids[first:].to_pylist()
                self._ledger.record_unsent(self.id, unsent, f"{exc}")
                exc.job_id = self.id
                raise
            self._ledger.add_batch(self.id, info.batch_id, attempt, ids, info.status, info.raw)
            self._infos[info.batch_id] = info

    # -- polling ----------------------------------------------------------------------------
    def refresh(self) -> JobSnapshot:
        """Poll every open batch once, collect the ones that ended, and return a snapshot.

        A transient error (connection refused, 429, 5xx) is kept in the snapshot's
        ``last_error`` and tried again on the next refresh; other errors raise.
        """
        with self._lock:
            self._last_error = None
            for batch in self._ledger.batches(self.id):
                if batch["collected"]:
                    continue
                try:
                    self._poll_batch(batch)
                except ProviderError as exc:
                    if not exc.transient:
                        exc.job_id = self.id
                        raise
                    self._last_error = str(exc)
            self._last_poll = self.clock()
            snap = self.snapshot()
        self._notify(snap)
        return snap

    def _poll_batch(self, batch: dict[str, Any]) -> None:
        batch_id = batch["batch_id"]
        if not batch["ended"]:
            info = self._provider.retrieve(batch_id)
            if info.status != batch["status"]:
                self._ledger.event(self.id, "status", f"batch {batch_id}: {info.status}")
            self._ledger.update_batch(batch_id, info.status, info.ended, info.failure, info.raw)
            self._infos[batch_id] = info
            if not info.ended:
                return
        info = self._infos.get(batch_id) or self._provider.retrieve(batch_id)
        self._collect(info)

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
        self._ledger.record_results(
            self.id, info.batch_id, _results.ledger_rows(rec.table), rec.note(info.batch_id)
        )

    def _read_result_files(self, info: BatchInfo) -> list[bytes]:
        folder = self._ledger.files / self.id
        done = folder / f"{info.batch_id}.complete"
        if done.exists():
            return [p.read_bytes() for p in sorted(folder.glob(f"{info.batch_id}.*.jsonl"))]
        raws = self._provider.fetch_results(info)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for i, raw in enumerate(raws):
            (folder / f"{info.batch_id}.{i}.jsonl").write_bytes(raw)
        done.touch()
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
        sleeps between polls, backing off as set by ``job.polling``. ``progress`` prints one
        line per change to stderr (``"auto"``: only outside a notebook, where the panel shows
        progress instead).
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
                    raise TimeoutError(
                        f"job {self.id} still has {snap.counts['pending']} pending rows after "
                        f"{timeout} s; it goes on at the provider: call wait() again later, or "
                        f"nb.attach({self.id!r}) from another session."
                    )
                self._next_poll = self.clock() + delay
                self.sleep(delay)
            raise AssertionError("unreachable")
        finally:
            unsubscribe()

    def cancel(self) -> JobSnapshot:
        """Ask the provider to cancel every open batch. Rows already finished keep their
        results; the rest end ``cancelled`` once the provider confirms."""
        with self._lock:
            for batch in self._ledger.batches(self.id):
                if not batch["ended"]:
                    info = self._provider.cancel(batch["batch_id"])
                    self._ledger.update_batch(
                        info.batch_id, info.status, info.ended, info.failure, info.raw
                    )
            self._ledger.set_job_status(self.id, "cancelled")
            self._record["status"] = "cancelled"
            self._ledger.event(self.id, "cancel", "cancel requested")
        return self.refresh()

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
        frame["retryable"] = frame["retryable"].map({1: True, 0: False}).astype(object)
        frame["output"] = self._decode_outputs(frame["output"])
        return frame.drop(columns=["key"]).set_index("custom_id")

    def _decode_outputs(self, values: pd.Series) -> pd.Series:
        if self.endpoint.endswith("/embeddings"):
            return values.map(lambda v: None if v is None else orjson.loads(v)).astype(object)
        return values

    def merge(self, df: pd.DataFrame | pd.Series | None = None) -> pd.DataFrame:
        """``df`` plus ``{output}``, ``{output}_status`` and ``{output}_error`` columns.

        ``df`` defaults to the data submitted in this session. Its index, columns and order
        are kept; each row gets the result of its own request, found by position when
        ``df`` is the submitted data, else by index label (or ``id_column``), so a sorted
        or filtered copy works too.
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
        names = [self.output, f"{self.output}_status", f"{self.output}_error"]
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
        keys = (
            np.asarray(
                self._ledger.query(
                    "SELECT key FROM rows WHERE job_id = ? ORDER BY position", (self.id,)
                ),
                dtype=np.int64,
            )
            .ravel()
            .view(np.uint64)
        )
        take = self._align(stored, keys)
        out = frame.copy()
        out[names[0]] = rows["output"].to_numpy()[take]
        out[names[1]] = rows["status"].to_numpy()[take]
        out[names[2]] = rows["error"].to_numpy()[take]
        return out

    def _align(self, wanted: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Positions into the job's rows for each row of the DataFrame being merged."""
        if len(wanted) == len(keys) and np.array_equal(wanted, keys):
            return np.arange(len(keys))
        index = pd.Index(keys)
        if not index.is_unique:
            raise MergeError(
                f"job {self.id} was built from rows with duplicated labels, so rows can only "
                "be matched by position: pass the same DataFrame, in the same order.",
                job_id=self.id,
            )
        take = index.get_indexer(wanted)
        unknown = int((take < 0).sum())
        if unknown:
            raise MergeError(
                f"{unknown} of the {len(wanted)} rows given to merge() are not rows of job "
                f"{self.id} (matched by index label). Pass the DataFrame you submitted, or a "
                "subset of it with the same index.",
                job_id=self.id,
            )
        if not pd.Index(wanted).is_unique:
            raise MergeError("the DataFrame given to merge() has duplicated index labels.")
        return take

    def failed(self) -> pd.DataFrame:
        """The merged rows that did not succeed (failed, expired or cancelled)."""
        merged = self.merge() if self._data is not None else self.results()
        col = f"{self.output}_status" if self._data is not None else "status"
        return merged[merged[col].isin(["failed", "expired", "cancelled"])]

    def resubmit_failed(self, **overrides: Any) -> BatchJob:
        """Send again only the rows that ended ``failed`` or ``expired``, as new batches.

        Rows that succeeded keep their results and are not paid for again. ``overrides``
        change request parameters for the new batches (e.g. ``max_tokens=500``).
        Returns this job, which now also follows the new batches.
        """
        with self._lock:
            marks = ",".join("?" * len(RESUBMITTABLE))
            rows = self._ledger.query(
                "SELECT custom_id, prompt, attempt FROM rows WHERE job_id = ? "
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
        self._notify(self.snapshot())
        return self

    def _apply_overrides(self, overrides: dict[str, Any]) -> None:
        spec = dict(self._record["spec"])
        for key, value in overrides.items():
            if key in spec and key != "params":
                spec[key] = value
            else:
                spec["params"] = {**spec["params"], key: value}
        self._record["spec"] = spec
        self._ledger.set_job_spec(self.id, spec)

    # -- display ----------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"<BatchJob {self.snapshot().summary()}>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """In a notebook: the live panel (and polling); always with a text/plain fallback."""
        from . import panel

        return panel.mimebundle(self)
