"""Sending: rows to provider-sized batches, one chunk at a time.

For each chunk: take its custom_ids and prompts from the manifest, encode the request
lines, record an *intent* in the ledger (the chunk's rows and a provisional id), upload
and create the batch, and confirm the provider's batch id the moment ``create`` returns.
A process that dies in between leaves the intent, which the job resolves on its next
refresh (see :func:`resolve_intent`) without paying twice. Memory is bounded
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

from . import _engines as engines
from . import _pack, _plan, _quota
from . import _rowstore as rowstore
from ._errors import BatchFailedError, NbbatchError, ProviderError
from ._ledger import QuotaClaim, QuotaFull, alive
from .providers.base import BatchInfo, RequestSpec, http_status

if TYPE_CHECKING:
    from ._context import JobContext

log = logging.getLogger("nbbatch")

#: How many times one create call is tried while the provider answers 429/5xx.
CREATE_TRIES = 4
#: Refusals for the account's batch queue one sending pass takes before it leaves the
#: rest for the next refresh (each teaches the limit; more means others fill the queue).
MAX_REFUSALS = 3
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
    # Set by a Ctrl-C in job.wait(): send no further chunk (nor plan further); the job
    # is not cancelled, and the next wait() sends the rest.
    stopped: bool = False
    # While a large table is planned first (see nbbatch._planning): rows planned of all.
    planned: int = 0
    to_plan: int = 0
    waiting: bool = False  # the account's batch queue is full: the rest waits

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
    ctx: JobContext,
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
    chunk's rows ``failed`` (``not_sent``, retryable) and raises, leaving the rest of this
    pass unsent (pending, in no batch) for the next pass (the next ``wait()``); any other
    error leaves the rows of this chunk and the rest unsent, and raises.
    """
    if not len(positions):
        return
    provider = ctx.provider
    limit = max(1, min(provider.max_requests, max_requests or provider.max_requests))
    size = _pack.size_for(ctx.policy, stage, attempt)  # rows per request (pack=)
    if provider.min_requests > 1:
        # A provider with a minimum batch size (Bedrock) would refuse a small last
        # piece (50,050 rows: 50,000 + 50): the same number of batches, evenly filled.
        requests = math.ceil(len(positions) / size)
        limit = max(1, math.ceil(requests / math.ceil(requests / limit)))
    progress = progress or Progress()
    progress.rows += len(positions)
    progress.expected += math.ceil(len(positions) / (limit * size))
    state = ctx.ledger.row_state(ctx.id)
    spec = ctx.stage_spec(stage)
    # Part names tell chunks apart at the provider (resolve_intent looks them up):
    # an escalation stage's own, so its attempt numbers never meet stage 0's.
    prefix = f"{attempt}" if stage == 0 else f"s{stage}.{attempt}"
    # A frame planned on a cluster's workers (Dask, Spark) comes with its request lines
    # encoded there, one per row: they are taken as they are, not encoded again here.
    built = engines.prebuilt(ctx, spec, stage) if size == 1 else None
    # The account's batch queue (see nbbatch._quota): batches sized to the room it has,
    # the rest left unsent for the next wave when it is full.
    queue = _quota.queue(ctx, spec)
    waved = False  # a batch went into a limited queue in this pass
    filling = False  # the queue's limit unknown, batches sized to fill it in steps
    sent_units = 0  # of the queue, in this pass
    refusals = 0
    if queue.cap is not None and not queue.probing and _quota.room(ctx, queue, len(positions)) == 0:
        # The queue is full: nothing to encode until a wave ends (every poll asks).
        _wait_for_room(ctx, progress, None, len(positions))
        return
    for start in range(0, len(positions), limit * size):
        block = positions[start : start + limit * size]
        jsonl, ends, ids = _encode_block(ctx, state, block, spec, size, built)
        units = _quota.line_units(provider, spec, jsonl, ends, ids)
        del ids
        per_row = float(units.sum()) / max(1, len(block))
        first = 0
        while first < len(ends):
            if progress.cancelled or progress.stopped or ctx.rerouting:
                return
            stop = _piece_end(ends, units, first, limit, provider.max_bytes, queue.piece)
            rest = int(units[first:].sum()) + int(per_row * (len(positions) - start - len(block)))
            allowed = _quota.room(ctx, queue, rest, math.ceil(per_row), sent_units)
            if allowed == 0 or refusals > MAX_REFUSALS:
                _wait_for_room(ctx, progress, per_row, len(positions) - start - first * size)
                return
            if allowed is not None:  # as much as fits the room left
                filling = filling or queue.limit is None
                fits = int(np.searchsorted(np.cumsum(units[first:stop]), allowed, "right"))
                stop = first + max(1, fits)
            if (first, stop) != (0, len(ends)):
                progress.expected += 1
            begin, end = (int(ends[first - 1]) if first else 0), int(ends[stop - 1])
            # The whole block fits in one batch (the usual case): no copy of its bytes.
            chunk = jsonl if (begin, end) == (0, len(jsonl)) else jsonl[begin:end]
            part = f"{prefix}:{progress.created + 1}"
            rows = block[first * size : stop * size]
            claim = _quota.claim(queue, int(units[first:stop].sum()))
            try:
                sent = _send_piece(
                    ctx, rows, chunk, attempt, part, spec, stage, progress, lock, claim
                )
            except QuotaFull:  # another job took the room first
                _wait_for_room(ctx, progress, per_row, len(positions) - start - first * size)
                return
            except _quota.QuotaRefused as exc:
                # Learn the limit, then size the next batch to it at once (room() says
                # when to wait instead).
                in_use = ctx.ledger.quota_in_use(queue.key, queue.model)
                _quota.refused(ctx, queue, exc.refusal, claim.units, in_use)
                queue = _quota.queue(ctx, spec)
                refusals += 1
                continue
            if not sent:
                return  # the job was cancelled from another process
            sent_units += claim.units
            if queue.limit is not None:
                left = len(positions) - start - stop * size
                _quota.batch_sent(ctx, queue, claim.units, per_row, left)
                waved = True
                queue = _quota.queue(ctx, spec)  # what was learned, for the next piece
            first = stop
        del jsonl
    if waved:
        _quota.waves_left(ctx, 0.0, 0)
    if filling and queue.limit is None:
        _quota.filled(ctx, queue)  # every row went in, none refused: the queue took it
    progress.active = False


def _piece_end(
    ends: np.ndarray, units: np.ndarray, first: int, count: int, max_bytes: int, cap: int | None
) -> int:
    """Where the batch starting at line ``first`` ends: at most ``count`` lines,
    ``max_bytes`` bytes and (with a queue limit) ``cap`` units, and at least one line."""
    stop = next(_plan.chunk_bounds(ends[first:] - (int(ends[first - 1]) if first else 0),
                                   max_count=count, max_bytes=max_bytes))[1] + first  # fmt: skip
    if cap is not None:
        fits = int(np.searchsorted(np.cumsum(units[first:stop]), cap, side="right"))
        stop = first + max(1, min(stop - first, fits))
    return stop


def _wait_for_room(ctx: JobContext, progress: Progress, per_row: float | None, unsent: int) -> None:
    """The queue is full: the rest of this pass stays unsent for the next wave (what is
    left to send recorded, given ``per_row``, a row's share of the queue)."""
    progress.active = False
    progress.waiting = True
    if per_row is not None:
        _quota.waves_left(ctx, per_row, unsent)
    ctx.on_progress()


def _encode_block(
    ctx: JobContext,
    state: Any,
    block: np.ndarray,
    spec: RequestSpec,
    size: int,
    built: engines.Prebuilt | None,
) -> tuple[bytes, np.ndarray, Any]:
    """The request lines of the leaders at ``block`` (in packs of ``size`` rows when it
    is more than 1; as ``built`` on a cluster's workers, when they were), where each
    line ends, and the lines' custom ids where they are one a row (else None)."""
    jsonl = built.lines(block) if built is not None else None
    custom_ids = None
    if jsonl is not None:
        ids = block  # one line per row
    elif size > 1:
        jsonl, ids = _pack.encode(ctx, block, spec, size)
    else:
        ids = custom_ids = state.manifest_column("custom_id", block)
        jsonl = ctx.provider.encode(ids, state.manifest_column("prompt", block), spec)
    ends = np.flatnonzero(np.frombuffer(jsonl, dtype=np.uint8) == 0x0A) + 1
    if len(ends) != len(ids):
        raise NbbatchError("internal error: one request line per row was not produced")
    return jsonl, ends, custom_ids


def _send_piece(
    ctx: JobContext,
    rows: np.ndarray,
    chunk: bytes,
    attempt: int,
    part: str,
    spec: RequestSpec,
    stage: int,
    progress: Progress,
    lock: threading.RLock | None,
    claim: QuotaClaim | None = None,
) -> bool:
    """Send one chunk as a batch, holding ``lock``, and count it in ``progress``;
    False when the job was cancelled meanwhile (nothing sent). A full queue raises
    :class:`~nbbatch._ledger.QuotaFull` (nothing sent) or
    :class:`~nbbatch._quota.QuotaRefused` (the provider refused it; its rows unsent)."""
    try:
        with lock or threading.RLock():
            sent = _send_chunk(ctx, rows, chunk, attempt, part, spec, stage, claim)
    except _quota.QuotaRefused:
        raise
    except ProviderError:
        progress.active = False
        raise
    if not sent:
        progress.cancelled = True
        progress.active = False
        return False
    progress.created += 1
    progress.bytes_sent += len(chunk)
    ctx.on_progress()
    return True


def _send_chunk(
    ctx: JobContext,
    positions: np.ndarray,
    chunk: bytes,
    attempt: int,
    part: str,
    spec: RequestSpec,
    stage: int = 0,
    claim: QuotaClaim | None = None,
) -> bool:
    """One chunk: intent, create (with retries while the provider is busy), confirm.

    False if the job was cancelled before the intent was recorded (nothing is sent). A
    cancel recorded while the create call was out finds only the intent, so the batch
    it made is cancelled here, the moment it is confirmed.
    """
    ledger = ctx.ledger
    intent = ledger.add_intent(ctx.id, part, attempt, positions, stage, claim)
    if intent is None:
        return False
    metadata = {"nbbatch_job": ctx.id, "nbbatch_part": part}
    try:
        info = create(ctx, chunk, spec, metadata)
    except _quota.QuotaRefused:
        ledger.release_intent(intent)  # no batch: the rows wait for the next wave
        raise
    except BatchFailedError as exc:
        # The provider refused this batch's content: sending it again as it is would be
        # refused again, so its rows end failed (retryable once something changes).
        ledger.drop_intent(ctx.id, intent, str(exc))
        exc.job_id = ctx.id
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
    refusal = ctx.provider.quota_refusal(info=info) if info.ended else None
    if refusal is not None:
        # Created and refused at once for the account's queue (no validation time):
        # its rows wait, unsent, for room, as for a refusal seen on a later poll.
        ledger.refuse_batch(info.batch_id, refusal.message, info.raw)
        ctx.provider.discard_refused(info)
        raise _quota.QuotaRefused(refusal, ctx.provider_name)
    ctx.infos[info.batch_id] = info
    log.info("job %s: batch %s created with %d requests", ctx.id, info.batch_id, len(positions))
    cancel_if_job_cancelled(ctx, info)
    return True


def cancel_if_job_cancelled(ctx: JobContext, info: BatchInfo) -> None:
    """A batch confirmed after its job was cancelled (elsewhere) is cancelled now."""
    if ctx.ledger.job_status(ctx.id) != "cancelled" or info.ended:
        return
    info = ctx.provider.cancel(info.batch_id)
    ctx.ledger.update_batch(info.batch_id, info.status, info.ended, info.failure, info.raw)
    ctx.infos[info.batch_id] = info
    log.info("job %s: batch %s cancelled as it was confirmed", ctx.id, info.batch_id)


def create(ctx: JobContext, chunk: bytes, spec: RequestSpec, metadata: dict[str, str]) -> BatchInfo:
    """One create call, retried with backoff while the provider says it is busy."""
    delay = 1.0
    for tries in range(1, CREATE_TRIES + 1):
        try:
            return ctx.provider.create(chunk, spec, metadata)
        except ProviderError as exc:
            refusal = ctx.provider.quota_refusal(error=exc)
            if refusal is not None:  # the queue is full: waiting, not retrying, helps
                raise _quota.QuotaRefused(refusal, exc.provider) from exc
            if not exc.transient or tries == CREATE_TRIES:
                raise
            ctx.warn(f"the provider is busy ({exc}); trying again in {delay:.0f} s")
            ctx.sleep(delay)
            delay = min(60.0, delay * 2)
    raise AssertionError("unreachable")


def resolve_intent(ctx: JobContext, batch: dict[str, Any]) -> None:
    """A create call whose outcome was never recorded (its process died, or gave up on
    it): find the batch at the provider (it may exist, and be paid for) or, if there is
    none, put its rows back to be sent."""
    owner = orjson.loads(batch["raw"] or "{}")
    if alive(owner) and ctx.clock() - batch["created"] < INTENT_TIMEOUT:
        return  # another live process is still in that create call
    meta = {"nbbatch_job": ctx.id, "nbbatch_part": batch["part"]}
    known = {b["batch_id"] for b in ctx.ledger.batches(ctx.id)}
    # A batch of packs holds fewer requests than rows.
    size = _pack.size_for(ctx.policy, int(batch.get("stage") or 0), int(batch["attempt"]))
    requests = _pack.n_requests(batch["n_requests"], size)
    info = ctx.provider.find_batch(meta, requests, batch["created"], known)
    if info is not None:
        ctx.ledger.confirm_batch(batch["intent"], info.batch_id, info.status, info.raw)
        ctx.ledger.event(ctx.id, "resume", f"found batch {info.batch_id} at the provider")
        cancel_if_job_cancelled(ctx, info)
    else:
        ctx.ledger.release_intent(batch["intent"])


def unsent(state: rowstore.RowState) -> np.ndarray:
    """Leaders pending in no batch: not sent yet, or put back to be sent."""
    leaders = state.is_leader
    return np.flatnonzero(leaders & (state.status == rowstore.PENDING) & (state.batch < 0))


def send_unsent(
    ctx: JobContext, progress: Progress | None = None, lock: threading.RLock | None = None
) -> None:
    """Send the rows pending in no batch: not sent yet (a new job, a process that died
    before sending them) or put back by ``resubmit_failed`` or a new stage; ``lock``
    is held around each chunk (see :func:`send_rows`)."""
    if not len(unsent(ctx.row_state())) or ctx.rerouting:
        return  # after the deadline the rest go another way (see nbbatch._deadline)
    if ctx.cancelled:
        # Rows put back after a cancel (a create call refused while it was made): they
        # end cancelled, never sent.
        cancel_unsent(ctx)
        return
    # One sender per job, across processes and job objects: rows another live one is
    # sending are left to it (so a second session never sends them again).
    if not ctx.ledger.take_sending(ctx.id):
        return
    try:
        state = ctx.row_state()  # as any sender before us left it
        positions = unsent(state).astype(np.int32)
        # Rows go in groups of one (stage, attempt), as one key each. Read now, into
        # arrays of their own: the state is live, and sending the first group changes
        # the attempts of its rows (read afterwards, they would be sent twice).
        keys = (state.stage[positions].astype(np.int64) << 16) | state.attempt[positions]
        # Usually one group: then no sort, and no copy of millions of positions.
        single = bool(len(keys)) and bool((keys == keys[0]).all())
        for key in keys[:1] if single else np.unique(keys):
            chosen = positions if single else positions[keys == key]
            send_rows(
                ctx, chosen, max(1, int(key) & 0xFFFF), progress=progress, lock=lock,
                stage=int(key) >> 16,
            )  # fmt: skip
    finally:
        ctx.ledger.release_sending(ctx.id)


def cancel_unsent(ctx: JobContext) -> None:
    """Rows that were never sent end ``cancelled``."""
    positions = unsent(ctx.row_state())
    if len(positions):
        table = rowstore.failure_table(
            positions, "cancelled", "cancelled", "cancelled before it was sent", False
        )
        ctx.ledger.record_results(
            ctx.id, None, table, f"{len(positions):,} unsent requests cancelled"
        )


def stopped_note(ctx: JobContext, error: BaseException | None) -> str:
    """What stopped sending (``error``), and what sends the rest."""
    state = ctx.row_state()
    waiting_rows = np.zeros(state.n, dtype=bool)
    waiting_rows[unsent(state)] = True
    waiting = int(state.follow(waiting_rows).sum())
    return (
        f"sending stopped: {error}; {waiting:,} rows are not sent yet: "
        f"job.wait() (or nb.attach({ctx.id!r}) in a new session) sends them"
    )
