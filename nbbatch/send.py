"""Sending: rows to provider-sized batches, one chunk at a time.

For each chunk: take its custom_ids and prompts from the manifest, encode the request
lines, record an *intent* in the ledger (the chunk's rows and a provisional id), upload
and create the batch, and confirm the provider's batch id the moment ``create`` returns.
A process that dies in between leaves the intent, which the job resolves on its next
refresh (see :meth:`BatchJob._resolve_intent`) without paying twice. Memory is bounded
by the chunk: the lines of one batch exist at a time.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from . import engines
from . import pack as _pack
from . import plan as _plan
from ._errors import BatchFailedError, NbbatchError, ProviderError
from .ledger import alive
from .providers.base import BatchInfo, RequestSpec, http_status

if TYPE_CHECKING:
    from .job import BatchJob

log = logging.getLogger("nbbatch")

#: How many times one create call is tried while the provider answers 429/5xx.
CREATE_TRIES = 4
#: After this many seconds an unconfirmed create call is presumed dead even if the
#: process that made it still runs (the SDKs time a call out after 600 s).
INTENT_TIMEOUT = 660.0


@dataclass
class Progress:
    """How far sending has gone, for the views: batches created of those expected, and
    bytes uploaded (the expected total is known once every chunk is encoded)."""

    created: int = 0
    expected: int = 0
    bytes_sent: int = 0
    rows: int = 0  # requests in this sending pass
    active: bool = True
    cancelled: bool = False  # set by job.cancel(): send no further chunk
    # While a large table is planned first (see nbbatch.planning): rows planned of all.
    planned: int = 0
    to_plan: int = 0

    def text(self) -> str:
        """E.g. ``uploading 7/20 batches (140 MB sent)``; ``building the batches`` before
        the first is encoded (how many there will be is not known yet); ``planning
        3.2M/10M rows`` while the rows are still planned."""
        if self.to_plan:
            return f"planning {_rows(self.planned)}/{_rows(self.to_plan)} rows"
        if not self.expected:
            return "building the batches"
        noun = "batch" if self.expected == 1 else "batches"
        sent = f" ({_size(self.bytes_sent)} sent)" if self.bytes_sent else ""
        return f"uploading {self.created}/{self.expected} {noun}{sent}"


def _size(n: int) -> str:
    """Bytes for people: 140 MB, 12 KB."""
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{max(1, round(n / 1e3)):,} KB"


def _rows(n: int) -> str:
    """``3.2M``, ``250k``, ``900``: a row count at a glance."""
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}".removesuffix(".0") + "M"
    if n >= 10_000:
        return f"{n / 1e3:.0f}k"
    return f"{n:,}"


def send_rows(
    job: BatchJob,
    positions: np.ndarray,
    attempt: int,
    *,
    max_requests: int | None = None,
    progress: Progress | None = None,
    lock: threading.RLock | None = None,
    stage: int = 0,
) -> None:
    """Send the leaders at ``positions`` as new batches of ``attempt``, with the request
    parameters of escalation ``stage`` (0: the job's own).

    ``lock`` is held around each chunk (intent, create, confirm), so a poll between
    chunks never sees a half-made intent. A create refused as a whole (400) ends that
    chunk's rows and the rest of this pass ``failed`` (``not_sent``, retryable) and
    raises; any other error leaves the rows of this chunk and the rest unsent (pending,
    in no batch) for the next pass, and raises.
    """
    if not len(positions):
        return
    provider = job._provider
    limit = max(1, min(provider.max_requests, max_requests or provider.max_requests))
    size = _pack.size_for(job.policy, stage, attempt)  # rows per request (pack=)
    progress = progress or Progress()
    progress.rows += len(positions)
    progress.expected += math.ceil(len(positions) / (limit * size))
    state = job._ledger.row_state(job.id)
    spec = job.stage_spec(stage)
    # Part names tell chunks apart at the provider (resolve_intent looks them up):
    # an escalation stage's own, so its attempt numbers never meet stage 0's.
    prefix = f"{attempt}" if stage == 0 else f"s{stage}.{attempt}"
    # A frame planned on a cluster's workers (Dask, Spark) comes with its request lines
    # encoded there, one per row: they are taken as they are, not encoded again here.
    built = engines.prebuilt(job, spec, stage) if size == 1 else None
    for start in range(0, len(positions), limit * size):
        block = positions[start : start + limit * size]
        jsonl = built.lines(block) if built is not None else None
        if jsonl is not None:
            ids = block  # one line per row
        elif size > 1:
            jsonl, ids = _pack.encode(job, block, spec, size)
        else:
            ids = state.manifest_column("custom_id", block)
            jsonl = provider.encode(ids, state.manifest_column("prompt", block), spec)
        ends = np.flatnonzero(np.frombuffer(jsonl, dtype=np.uint8) == 0x0A) + 1
        if len(ends) != len(ids):
            raise NbbatchError("internal error: one request line per row was not produced")
        pieces = list(_plan.chunk_bounds(ends, max_count=limit, max_bytes=provider.max_bytes))
        progress.expected += len(pieces) - 1
        for first, stop in pieces:
            if progress.cancelled:
                return
            begin, end = (int(ends[first - 1]) if first else 0), int(ends[stop - 1])
            # The whole block fits in one batch (the usual case): no copy of its bytes.
            chunk = jsonl if (begin, end) == (0, len(jsonl)) else jsonl[begin:end]
            k = progress.created + 1
            try:
                with lock or threading.RLock():
                    sent = _send_chunk(
                        job, block[first * size : stop * size], chunk, attempt,
                        f"{prefix}:{k}", spec, stage,
                    )  # fmt: skip
            except ProviderError:
                progress.active = False
                raise
            if not sent:  # the job was cancelled from another process
                progress.cancelled = True
                progress.active = False
                return
            progress.created += 1
            progress.bytes_sent += len(chunk)
            job._progress_changed()
        del jsonl
    progress.active = False


def _send_chunk(
    job: BatchJob,
    positions: np.ndarray,
    chunk: bytes,
    attempt: int,
    part: str,
    spec: RequestSpec,
    stage: int = 0,
) -> bool:
    """One chunk: intent, create (with retries while the provider is busy), confirm.

    False if the job was cancelled before the intent was recorded (nothing is sent). A
    cancel recorded while the create call was out finds only the intent, so the batch
    it made is cancelled here, the moment it is confirmed.
    """
    ledger = job._ledger
    intent = ledger.add_intent(job.id, part, attempt, positions, stage)
    if intent is None:
        return False
    metadata = {"nbbatch_job": job.id, "nbbatch_part": part}
    try:
        info = create(job, chunk, spec, metadata)
    except BatchFailedError as exc:
        # The provider refused this batch's content: sending it again as it is would be
        # refused again, so its rows end failed (retryable once something changes).
        ledger.drop_intent(job.id, intent, str(exc))
        exc.job_id = job.id
        raise
    except ProviderError as exc:
        if http_status(exc.__cause__) is None:
            # No answer (the connection failed): the batch may exist all the same, so
            # the next refresh looks for it at the provider before sending again.
            ledger.abandon_intent(intent)
        else:
            # The provider answered with an error (a 401, a 5xx after retries): no
            # batch, so the rows go back unsent for the next pass or nb.attach.
            ledger.release_intent(intent)
        raise
    except BaseException:
        ledger.abandon_intent(intent)  # an interrupt mid-call: as for no answer
        raise
    ledger.confirm_batch(intent, info.batch_id, info.status, info.raw)
    job._infos[info.batch_id] = info
    log.info("job %s: batch %s created with %d requests", job.id, info.batch_id, len(positions))
    cancel_if_job_cancelled(job, info)
    return True


def cancel_if_job_cancelled(job: BatchJob, info: BatchInfo) -> None:
    """A batch confirmed after its job was cancelled (elsewhere) is cancelled now."""
    if job._ledger.job_status(job.id) != "cancelled" or info.ended:
        return
    info = job._provider.cancel(info.batch_id)
    job._ledger.update_batch(info.batch_id, info.status, info.ended, info.failure, info.raw)
    job._infos[info.batch_id] = info
    log.info("job %s: batch %s cancelled as it was confirmed", job.id, info.batch_id)


def create(job: BatchJob, chunk: bytes, spec: RequestSpec, metadata: dict[str, str]) -> BatchInfo:
    """One create call, retried with backoff while the provider says it is busy."""
    delay = 1.0
    for tries in range(1, CREATE_TRIES + 1):
        try:
            return job._provider.create(chunk, spec, metadata)
        except ProviderError as exc:
            if not exc.transient or tries == CREATE_TRIES:
                raise
            job._warn(f"the provider is busy ({exc}); trying again in {delay:.0f} s")
            job.sleep(delay)
            delay = min(60.0, delay * 2)
    raise AssertionError("unreachable")


def resolve_intent(job: BatchJob, batch: dict[str, Any]) -> None:
    """A create call whose outcome was never recorded (its process died, or gave up on
    it): find the batch at the provider (it may exist, and be paid for) or, if there is
    none, put its rows back to be sent."""
    owner = orjson.loads(batch["raw"] or "{}")
    if alive(owner) and job.clock() - batch["created"] < INTENT_TIMEOUT:
        return  # another live process is still in that create call
    meta = {"nbbatch_job": job.id, "nbbatch_part": batch["part"]}
    known = set(job.batch_ids)
    # A batch of packs holds fewer requests than rows.
    size = _pack.size_for(job.policy, int(batch.get("stage") or 0), int(batch["attempt"]))
    requests = _pack.n_requests(batch["n_requests"], size)
    info = job._provider.find_batch(meta, requests, batch["created"], known)
    if info is not None:
        job._ledger.confirm_batch(batch["intent"], info.batch_id, info.status, info.raw)
        job._ledger.event(job.id, "resume", f"found batch {info.batch_id} at the provider")
        cancel_if_job_cancelled(job, info)
    else:
        job._ledger.release_intent(batch["intent"])
