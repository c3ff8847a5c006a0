"""The emulator's in-memory store: files, batches, attempt counters, and the clock.

A batch's life cycle is not driven by a ticking thread: it is a pure function of the
clock. When a batch is created its timeline is fixed (end of validating, end of
processing, end of finalizing) together with the fate of every row and the order in
which rows are processed, so its status, counts and timestamps can be computed for any
instant. Only the output (files / results) needs work; it is generated in a background
worker as soon as the batch is created, and regenerated with a cut-off when a cancel
(or the 24-hour window) stops it part-way.

File contents live on disk in a private temporary directory, so a million-row job does
not hold gigabytes of JSON in memory.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._faults import (
    TRANSIENT_MARKER,
    Fate,
    Knobs,
    RowInfo,
    assign_fates,
    faulted,
    processing_order,
    unit_hash,
)
from ._quotas import CreateRate

WINDOW_SECONDS = 24 * 3600.0
#: How long "cancelling" lasts when finalizing_seconds is 0, so a cancel is observable.
MIN_CANCEL_SECONDS = 0.05

# Fates that end as a succeeded response / an error when the row runs.
_SUCCESS_FATES = (Fate.OK, Fate.MISSING, Fate.INVALID_OUTPUT, Fate.TRUNCATE)
_ERROR_FATES = (Fate.TRANSIENT_ERROR, Fate.FAIL)


class Clock:
    """Reads the (injectable) clock and maps its readings to unix time."""

    def __init__(self, clock: Callable[[], float] | None = None, *, wall: bool = False) -> None:
        # ``wall``: readings are unix time itself, so timelines saved by one process mean
        # the same in the next (the background emulator, see _persist.py).
        self.now: Callable[[], float] = time.time if wall else clock or time.monotonic
        self._origin = 0.0 if wall else self.now()
        self._epoch = 0.0 if wall else time.time()

    def unix(self, t: float) -> float:
        """Unix time (seconds) of clock reading ``t``."""
        return self._epoch + (t - self._origin)


@dataclass(eq=False)
class StoredFile:
    """An OpenAI file: metadata in memory, bytes on disk."""

    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    expires_at: int | None
    path: Path
    seq: int


@dataclass(frozen=True)
class ResultsOutcome:
    """What a finished batch whose results are one file (in processing order) produced:
    that file and its counts by kind (Anthropic's Message Batches and Bedrock's jobs)."""

    results: Path
    counts: dict[str, int]


@dataclass(eq=False)
class BatchRecord:
    """Provider-neutral part of a batch: timeline, row fates, processing order, output.

    Subclasses (in ``_openai.py`` / ``_anthropic.py``) add their fields and implement
    :meth:`generate`.
    """

    id: str
    seq: int
    knobs: Knobs
    n: int
    created: float  # clock readings
    started: float  # end of validating
    processed: float  # end of in_progress
    finished: float  # end of finalizing
    fates: bytearray
    order: list[int]  # row indices in processing (and output) order
    invalid: bool = False  # failed validation: ends "failed" once validating is over
    cancel_at: float | None = None
    cancel_done: float | None = None
    outcome: Any = None  # the provider's final outcome, once known
    _futures: dict[tuple[int | None, str], Future[Any]] = field(default_factory=dict)
    _ordered_fates: bytes = b""
    _expiring: int = -1  # how many rows the window leaves undone (-1: not counted yet)

    def __post_init__(self) -> None:
        # A batch that expires is one its window closed on: the rows it never reached
        # are the last ones in processing order, the rows before them ran as usual.
        if self.has_expire_rows:
            stays = [i for i in self.order if self.fates[i] != Fate.EXPIRE]
            self.order = stays + [i for i in self.order if self.fates[i] == Fate.EXPIRE]

    @property
    def expiring(self) -> int:
        """How many rows the batch's window closes on before they run (expire_rate)."""
        if self._expiring < 0:
            self._expiring = self.fates.count(Fate.EXPIRE)
        return self._expiring

    @property
    def expires(self) -> float:
        """When the completion window closes: 24 h after creation, or, for a batch that
        expires, the end of its (scaled) processing time, which its window cuts short."""
        if self.has_expire_rows:
            return self.processed
        return self.created + WINDOW_SECONDS

    @property
    def has_expire_rows(self) -> bool:
        return self.expiring > 0

    def phase(self, t: float) -> str:
        """OpenAI-style status at clock time ``t``."""
        if self.cancel_at is not None:
            assert self.cancel_done is not None
            return "cancelling" if t < self.cancel_done else "cancelled"
        if t < self.started:
            return "validating"
        if self.invalid:
            return "failed"
        if self.expires < self.processed and t >= self.expires:
            return "expired"  # the 24 h window ran out while processing
        if t < self.processed:
            return "in_progress"
        if self.has_expire_rows:
            return "expired"
        if t < self.finished:
            return "finalizing"
        return "completed"

    def ended_at(self, t: float) -> float | None:
        """Clock time at which the batch ended, or None if it has not ended at ``t``."""
        phase = self.phase(t)
        if phase == "cancelled":
            return self.cancel_done
        if phase == "failed":
            return self.started
        if phase == "expired":
            return min(self.processed, self.expires)
        if phase == "completed":
            return self.finished
        return None

    def done_rows(self, t: float) -> int:
        """How many rows (in processing order) have been executed by clock time ``t``."""
        if self.invalid or t < self.started:
            return 0
        span = self.processed - self.started
        reach = self.n - self.expiring  # an expiring batch never gets past these
        if t >= self.processed or span <= 0:
            return reach
        return min(reach, int(reach * (t - self.started) / span))

    def cut(self) -> tuple[int | None, str]:
        """Rows executed before the batch was stopped early, and why (for the output)."""
        if self.cancel_at is not None:
            return self.done_rows(self.cancel_at), "cancelled"
        if self.expires < self.processed:
            return self.done_rows(self.expires), "expired"
        return None, ""

    def progress_counts(self, t: float) -> tuple[int, int]:
        """(completed, failed) among the rows executed by ``t``, before the batch ends."""
        if not self._ordered_fates:
            self._ordered_fates = bytes(self.fates[i] for i in self.order)
        done = self._ordered_fates[: self.done_rows(t)]
        completed = sum(done.count(f) for f in _SUCCESS_FATES)
        failed = sum(done.count(f) for f in _ERROR_FATES)
        return completed, failed

    def stopped(self, cut: int | None) -> bytearray:
        """Per row, 1 when a stop after the first ``cut`` rows (in processing order)
        kept it from running; all 0 when ``cut`` is None (nothing stopped the batch)."""
        flags = bytearray(self.n)
        if cut is not None:
            for i in self.order[cut:]:
                flags[i] = 1
        return flags

    def request_cancel(self, t: float) -> None:
        """Start cancelling at clock time ``t``; a batch already cancelling keeps its
        first time. It stays "cancelling" for the finalizing time (at least
        :data:`MIN_CANCEL_SECONDS`, so the state can be seen)."""
        if self.cancel_at is None:
            self.cancel_at = t
            self.cancel_done = t + max(self.knobs.finalizing_seconds, MIN_CANCEL_SECONDS)

    def generate(self, cut: int | None, reason: str) -> Any:
        """Build the provider's outcome (files, counts). Implemented by subclasses."""
        raise NotImplementedError

    def accept(self, outcome: Any) -> None:
        """Called once with the outcome that became final (e.g. to publish files)."""


def schedule(
    store: Store, batch_id: str, n: int, t: float, *, finalizing: bool = True
) -> dict[str, Any]:
    """The provider-neutral fields of a batch of ``n`` rows created at clock time ``t``
    (every API's batch record takes them): its number in the store, its timeline from the
    store's knobs (validating, then processing, then finalizing where the API has that
    step) and the order its rows run in. The caller adds the fates and its own fields."""
    knobs = store.knobs
    started = t + knobs.validating_seconds
    processed = started + knobs.processing_seconds
    return {
        "id": batch_id,
        "seq": store.next_seq(),
        "knobs": knobs,
        "n": n,
        "created": t,
        "started": started,
        "processed": processed,
        "finished": processed + knobs.finalizing_seconds if finalizing else processed,
        "order": processing_order(n, knobs, batch_id),
    }


def write_lines(path: Path, rows: Sequence[int], lines: Sequence[bytes | None]) -> int:
    """Write ``lines[i]`` for each ``i`` of ``rows`` in that order (a missing line
    writes nothing) to ``path``, a few thousand at a time; return the bytes written."""
    with path.open("wb") as out:
        for start in range(0, len(rows), 4096):
            out.write(b"".join(lines[i] or b"" for i in rows[start : start + 4096]))
        return out.tell()


class Store:
    """All emulator state. Every method is thread-safe.

    With ``directory`` the store keeps file bytes there (not in a temporary directory
    deleted on close) and reads wall-clock time, so :mod:`._persist` can bring its
    batches back in another process.
    """

    def __init__(
        self,
        knobs: Knobs,
        clock: Callable[[], float] | None = None,
        *,
        directory: Path | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.knobs = knobs
        self.clock = Clock(clock, wall=directory is not None)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="nbbatch-emulator-")
            directory = Path(self._tmp.name)
        self.directory = directory
        self._seq = itertools.count(1)
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, dict[str, BatchRecord]] = {
            "openai": {},
            "anthropic": {},
            "gemini": {},
            "bedrock": {},
        }
        self._attempts: dict[str, dict[str, int]] = {
            "openai": {},
            "anthropic": {},
            "gemini": {},
            "bedrock": {},
        }
        # Gemini resumable uploads between their start and their finalize.
        self.uploads: dict[str, Any] = {}
        self._pending_unlink: set[Path] = set()
        # Prompt-cache prefixes already "written" by real-time Anthropic requests, and
        # the prefixes real-time OpenAI requests sent (its cache is automatic).
        self.realtime_cache: set[str] = set()
        self.openai_prefixes: set[int] = set()
        # Anthropic's batch-create rate (a token bucket; see _quotas.py).
        self.anthropic_creates = CreateRate()
        # Flex requests seen, and how many in a row were refused (see flex_unavailable).
        self._flex_seen = 0
        self._flex_streak = 0
        # The user's own responder (nb.emulator.start(responder=...)); None: built in.
        self.responder: Any = None
        self.counters = {
            "openai_batches_created": 0,
            "anthropic_batches_created": 0,
            "gemini_batches_created": 0,
            "bedrock_batches_created": 0,
            "files_uploaded": 0,
            "requests": 0,
            "realtime_requests": 0,
        }
        # One worker: batches are generated one after another, which bounds memory.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="nbbatch-emulator-output")
        self._closed = False

    # ------------------------------------------------------------------ basics

    def now(self) -> float:
        return self.clock.now()

    def next_seq(self) -> int:
        return next(self._seq)

    def new_path(self, prefix: str) -> Path:
        """A fresh path inside the emulator's private directory."""
        fd, name = tempfile.mkstemp(prefix=prefix, dir=self.directory)
        os.close(fd)
        return Path(name)

    def resume_seq(self, last: int) -> None:
        """Continue numbering after ``last`` (a restored store's highest sequence number)."""
        self._seq = itertools.count(last + 1)

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counters[name] += n

    def close(self) -> None:
        """Stop the output worker and delete every stored file (unless the store keeps
        them in its own ``directory``). Idempotent."""
        with self.lock:
            if self._closed:
                return
            self._closed = True
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._tmp is not None:
            self._tmp.cleanup()

    # ------------------------------------------------------------------ files

    def add_file(self, file: StoredFile) -> None:
        with self.lock:
            self.files[file.id] = file

    def add_upload(
        self,
        file_id: str,
        filename: str,
        purpose: str,
        path: Path,
        size: int,
        lifetime: int | None = None,
    ) -> StoredFile:
        """Keep a file a client uploaded (its bytes at ``path``), created now and
        expiring ``lifetime`` seconds later (None: never), and count the upload."""
        now = int(self.clock.unix(self.now()))
        stored = StoredFile(
            id=file_id,
            filename=filename,
            purpose=purpose,
            bytes=size,
            created_at=now,
            expires_at=now + lifetime if lifetime else None,
            path=path,
            seq=self.next_seq(),
        )
        self.add_file(stored)
        self.count("files_uploaded")
        return stored

    def get_file(self, file_id: str) -> StoredFile | None:
        with self.lock:
            return self.files.get(file_id)

    def list_files(self) -> list[StoredFile]:
        with self.lock:
            return list(self.files.values())

    def delete_file(self, file_id: str) -> bool:
        """Forget a file; its bytes go once no unfinished batch still has to read them."""
        with self.lock:
            file = self.files.pop(file_id, None)
            if file is None:
                return False
            in_use = any(
                getattr(b, "input_path", None) == file.path and b.outcome is None
                for records in self.batches.values()
                for b in records.values()
            )
            if in_use:
                self._pending_unlink.add(file.path)
            else:
                file.path.unlink(missing_ok=True)
            return True

    def release_input(self, path: Path) -> None:
        """Called when a batch no longer needs ``path``; unlinks it if it was deleted."""
        with self.lock:
            if path in self._pending_unlink:
                self._pending_unlink.discard(path)
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ batches

    def add_batch(self, provider: str, batch: BatchRecord) -> None:
        """Register a new batch and start generating its output in the background."""
        with self.lock:
            # A provider not named in __init__ (an emulator variant of its own) gets
            # its table and counter on its first batch.
            self.batches.setdefault(provider, {})[batch.id] = batch
            counter = f"{provider}_batches_created"
            self.counters[counter] = self.counters.get(counter, 0) + 1
            if not batch.invalid:
                self._submit(batch, None, "")

    def restore_batch(self, provider: str, batch: BatchRecord) -> None:
        """Register a batch saved by an earlier process; output is made again only if
        that process had not finished it."""
        with self.lock:
            self.batches.setdefault(provider, {})[batch.id] = batch
            if batch.outcome is None and not batch.invalid:
                self._submit(batch, None, "")

    def get_batch(self, provider: str, batch_id: str) -> BatchRecord | None:
        with self.lock:
            return self.batches.get(provider, {}).get(batch_id)

    def list_batches(self, provider: str) -> list[BatchRecord]:
        """Batches newest first."""
        with self.lock:
            return sorted(self.batches.get(provider, {}).values(), key=lambda b: -b.seq)

    def remove_batch(self, provider: str, batch_id: str) -> BatchRecord | None:
        with self.lock:
            return self.batches.get(provider, {}).pop(batch_id, None)

    def attempts(self, provider: str, custom_ids: list[str]) -> list[int]:
        """Each custom_id's attempt number: 1 + the number of consecutive batches, up to
        the last one it was in, in which it got a fault (see :meth:`record_faults`).

        A custom_id whose last appearance went well starts again at 1, so a new job (or
        a re-run) with the same ids meets the fault knobs afresh, while the automatic
        retry of a faulted row is attempt 2, 3, ...
        """
        with self.lock:
            seen = self._attempts.setdefault(provider, {})
            if not seen:
                return [1] * len(custom_ids)
            return [seen.get(cid, 0) + 1 for cid in custom_ids]

    def realtime_overloaded(self, kind: str, text: str) -> bool:
        """Whether a real-time request answers "overloaded" this time: the first attempt
        of a prompt carrying the transient marker does, the next one does not (recorded
        under ``kind``, e.g. ``"anthropic-realtime"``)."""
        if TRANSIENT_MARKER not in text:
            return False
        attempt = self.attempts(kind, [text])[0]
        self.record_faults(kind, [text], [attempt], [attempt == 1])
        return attempt == 1

    def flex_unavailable(self) -> bool:
        """Whether this flex request is refused for capacity (``flex_unavailable_rate``,
        decided by hash of the seed and the request's number; never more than two in a
        row, so a client retrying as the SDKs do gets through)."""
        with self.lock:
            knobs = self.knobs
            if knobs.flex_unavailable_rate <= 0:
                return False
            self._flex_seen += 1
            refused = (
                self._flex_streak < 2
                and unit_hash(knobs.seed, "flex", self._flex_seen) < knobs.flex_unavailable_rate
            )
            self._flex_streak = self._flex_streak + 1 if refused else 0
            return refused

    def fates(self, provider: str, rows: list[RowInfo], knobs: Knobs) -> bytearray:
        """Each request's fate in a new batch: its attempt (how many batches in a row
        faulted its custom_id) looked up, the fates drawn, and the faults remembered."""
        ids = [r.custom_id for r in rows]
        attempts = self.attempts(provider, ids)
        fates = assign_fates(
            [dataclasses.replace(r, attempt=a) for r, a in zip(rows, attempts, strict=True)],
            knobs,
        )
        self.record_faults(provider, ids, attempts, faulted(fates))
        return fates

    def record_faults(
        self, provider: str, custom_ids: list[str], attempts: list[int], faulted: list[bool]
    ) -> None:
        """Remember the custom_ids that got a fault at these attempts; forget the rest.

        Only faulted ids are kept, so memory is bounded by the faults, not by the rows.
        """
        with self.lock:
            seen = self._attempts.setdefault(provider, {})
            for cid, attempt, hit in zip(custom_ids, attempts, faulted, strict=True):
                if hit:
                    seen[cid] = attempt
                elif seen:
                    seen.pop(cid, None)

    def _submit(self, batch: BatchRecord, cut: int | None, reason: str) -> Future[Any]:
        key = (cut, reason)
        future = batch._futures.get(key)
        if future is None:
            future = self._executor.submit(batch.generate, cut, reason)
            batch._futures[key] = future
        return future

    def outcome(self, batch: BatchRecord, t: float) -> Any:
        """The batch's final outcome if it has ended at ``t`` (waits for generation)."""
        if batch.invalid or batch.ended_at(t) is None:
            return None
        with self.lock:
            if batch.outcome is not None:
                return batch.outcome
            cut, reason = batch.cut()
            future = self._submit(batch, cut, reason)
            for key, other in list(batch._futures.items()):
                if other is not future:  # an output made before a cancel is not needed
                    other.cancel()
                    del batch._futures[key]
        result = future.result()
        with self.lock:
            if batch.outcome is None:
                batch.outcome = result
                batch._futures.clear()
                batch.accept(result)
            return batch.outcome


def iter_lines(path: Path) -> Iterator[bytes]:
    """Non-blank lines of a JSONL file, without their line endings."""
    with path.open("rb") as fh:
        for raw in fh:
            line = raw.strip()
            if line:
                yield line
