"""Collecting: poll a job's open batches, read the ended ones, and apply its failure policy.

A batch that ended is downloaded once (its raw files are kept beside the ledger until
its results are recorded, then removed: the parsed results are the record), parsed
into Arrow by the provider, reconciled against the leaders it was sent (every one gets
exactly one result; unknown and repeated lines are reported, never merged), checked
against the schema when one was asked for, and recorded as one result file. Once no
batch is open, transient failures are sent again (``retries``), then through the
real-time API (``fallback="realtime"``), then the failure-rate alert is raised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import _pack, _quota, _results, _send
from . import _rowstore as rowstore
from ._context import is_loopback
from ._errors import BatchFailedError, NbbatchError, ProviderError
from ._send import unsent as unsent  # where the job and the stages look for it
from .providers.base import BatchInfo, RequestSpec, http_status

if TYPE_CHECKING:
    from ._context import JobContext

log = logging.getLogger("nbbatch")


def realtime_checked(table: pa.Table, spec: RequestSpec) -> pa.Table:
    """A real-time result table (with its ``truncated`` column) in the row-result shape,
    with replies checked against the schema when one was asked for."""
    from . import _structured as structured
    from .providers.base import ROW_RESULT_SCHEMA

    cut = set(table.filter(table.column("truncated")).column("custom_id").to_pylist())
    scores = ["score"] if "score" in table.schema.names else []  # see rowstore.SCORE
    table = table.select([*ROW_RESULT_SCHEMA.names, *scores])
    if spec.response_format is None:
        return table
    return _results.check_structured(table, structured.schema_of(spec.response_format), cut)


def poll_batch(ctx: JobContext, batch: dict[str, Any]) -> None:
    """Poll one batch not yet collected; collect it if it has ended."""
    batch_id = batch["batch_id"]
    ledger, provider = ctx.ledger, ctx.provider
    try:
        if not batch["ended"]:
            info = provider.retrieve(batch_id)
            if info.status != batch["status"]:
                ledger.event(ctx.id, "status", f"batch {batch_id}: {info.status}")
                log.info("job %s: batch %s is %s", ctx.id, batch_id, info.status)
            ledger.update_batch(
                batch_id, info.status, info.ended, info.failure, info.raw, info.done
            )
            ctx.infos[batch_id] = info
            if not info.ended:
                return
        seen = ctx.infos.get(batch_id)
        if seen is None or not seen.ended:
            # What this handle saw last may be older than the ledger: another process
            # (the Lab server, while a kernel polls) recorded the end, then stopped short
            # of collecting. Collect the ended batch, never the running one remembered.
            seen = provider.retrieve(batch_id)
        refusal = provider.quota_refusal(info=seen)
        if refusal is not None:
            # Refused for the account's queue quota (nothing ran, nothing is paid): its
            # rows wait for a later wave, never failed.
            _quota.late_refusal(ctx, batch, seen, refusal)
            return
        collect(ctx, seen, batch["intent"], int(batch.get("stage") or 0))
    except ProviderError as exc:
        if not local_batch_gone(ctx, exc):
            raise
        end_backend_gone(ctx, batch)


def transient_note(ctx: JobContext, exc: ProviderError) -> tuple[str, bool]:
    """What a transient error means for this job, for its ``last_error``; and whether
    its backend is gone for good.

    No answer at all from a loopback address is not a passing hiccup: a stopped
    background emulator (``provider="local"``) is started again (the context gets the
    new provider); a private emulator (``nb.emulator.start()``) kept its batches in
    memory, so they are gone for good.
    """
    from urllib.parse import urlparse

    if http_status(exc.__cause__) is not None:
        return str(exc), False  # the backend answered (429, 5xx): it is there
    if ctx.local:
        from . import providers

        try:
            ctx.provider = providers.build(ctx.provider_name, local=True)
        except Exception as error:  # shown, and tried again on the next poll
            return f"{exc}; nbbatch's background emulator could not be started: {error}", False
        return f"{exc}; nbbatch's background emulator had stopped and was started again", False
    url = urlparse(ctx.provider.base_url)
    if is_loopback(url.geturl()):
        return (
            f"the emulator at {url.scheme}://{url.netloc} is not running (an emulator "
            "started with nb.emulator.start() keeps its batches in memory, so they ended "
            "with it): "
            "the pending rows can never finish there; close the job with job.forget()."
        ), True
    return str(exc), False


def local_batch_gone(ctx: JobContext, exc: ProviderError) -> bool:
    """Whether ``exc`` says the background emulator no longer knows a batch."""
    gone = http_status(exc.__cause__) == 404
    return gone and ctx.record.get("backend") == "local"


def end_backend_gone(ctx: JobContext, batch: dict[str, Any]) -> None:
    """The background emulator does not know this batch (its saved state was removed):
    its rows will never finish, so they end ``failed`` (``backend_gone``).

    Not ``retryable``: automatic retries are for a request's passing failure; losing
    the backend is something to see and decide on, with ``job.resubmit_failed()``.
    """
    batch_id = batch["batch_id"]
    message = (
        f"nbbatch's background emulator no longer knows batch {batch_id} (its saved "
        "state under the ledger home was removed, or the batch is over 30 days old), so "
        "these rows will never finish there; job.resubmit_failed() sends them again."
    )
    positions = ctx.ledger.sent_positions(ctx.id, batch["intent"])
    failed = rowstore.failure_table(positions, "failed", "backend_gone", message, False)
    ctx.ledger.update_batch(batch_id, "gone", True, message, {})
    ctx.ledger.record_results(ctx.id, batch["intent"], failed, f"batch {batch_id}: backend gone")
    ctx.infos.pop(batch_id, None)
    ctx.warn(message)


def hashes(ctx: JobContext, positions: np.ndarray, stage: int = 0) -> np.ndarray:
    """The request hashes of the rows at ``positions``, to record with their results (a
    later job reuses an answer whose exact request it would send): the manifest's for
    stage 0; for an escalation stage, the same prompts hashed under its parameters.

    Only those rows are read: the whole column is 8 bytes a row, for every batch."""
    state = ctx.ledger.row_state(ctx.id)
    if stage == 0:
        return state.manifest_column("request_hash", positions).to_numpy()
    from . import _plan as plan

    salt = ctx.stage_salt(stage)
    if salt is None or not len(positions):
        return np.zeros(len(positions), dtype=np.uint64)
    return plan.prompt_hashes(state.manifest_column("prompt", positions), salt)


def collect(ctx: JobContext, info: BatchInfo, intent: str, stage: int = 0) -> None:
    """Read an ended batch's result files (once: they are kept on disk) and record
    one reconciled result per leader it was sent (in escalation ``stage``)."""
    positions = ctx.ledger.sent_positions(ctx.id, intent)
    raws = read_result_files(ctx, info, len(positions))
    spec = ctx.stage_spec(stage)
    provider = ctx.provider
    size = _pack.batch_size(ctx, intent, stage)
    if size > 1:  # a batch of packs (submit(pack=N)): each row's answer from its pack's
        collect_packs(ctx, info, raws, intent, spec, positions, size)
        return
    try:
        tables = [provider.parse_results(raw, spec) for raw in raws]
    except Exception as exc:
        raise unreadable(ctx, info, exc) from exc
    state = ctx.ledger.row_state(ctx.id)
    sent_ids = state.manifest_column("custom_id", positions)
    rec = _results.reconcile(
        sent_ids,
        tables,
        batch_failure=info.failure,
        failure_code=info.failure_code,
        unfinished=info.unfinished,
    )
    table = rec.table
    if spec.response_format is not None:
        try:
            table = _check_structured(ctx, table, raws, spec)
        except Exception as exc:
            raise unreadable(ctx, info, exc) from exc
    where = pc.index_in(table.column("custom_id"), value_set=sent_ids).to_numpy(
        zero_copy_only=False
    )
    note = rec.note(info.batch_id)
    results = rowstore.result_table(positions[where], table, hashes(ctx, positions, stage)[where])
    ctx.ledger.record_results(ctx.id, intent, results, note)
    # The parsed results are the record now: the raw download is not kept twice (a
    # poll before this point fetches it again rather than reuse a broken copy).
    forget_result_files(ctx, info)
    if rec.unknown or rec.duplicates or rec.missing:
        ctx.warn(note)
    if info.failure:
        ctx.warn(f"batch {info.batch_id} failed as a whole: {info.failure}")


def collect_packs(
    ctx: JobContext,
    info: BatchInfo,
    raws: list[bytes],
    intent: str,
    spec: RequestSpec,
    positions: np.ndarray,
    size: int,
) -> None:
    """Record one result per row of an ended batch of packs (``submit(pack=N)``;
    ``positions``: its rows, in the order they were packed), each row's answer taken
    from its pack's (see :func:`nbbatch._pack.packed_results`)."""
    secret = ctx.policy.get("pack_secret")  # the item ids and checks, when it has one
    packed = _pack.packed_spec(spec, size, checked=bool(secret))
    try:
        tables = [ctx.provider.parse_results(raw, packed) for raw in raws]
    except Exception as exc:  # as for unpacked batches: fetched again, nothing recorded
        raise unreadable(ctx, info, exc) from exc
    row_ids = ctx.row_state().manifest_column("custom_id", positions)
    texts = _pack.item_texts(ctx, positions) if secret else None
    table, note, warn = _pack.packed_results(
        info, tables, spec, positions, row_ids, size, secret=secret, texts=texts
    )
    results = rowstore.result_table(positions, table, hashes(ctx, positions, 0))
    ctx.ledger.record_results(ctx.id, intent, results, note)
    forget_result_files(ctx, info)  # recorded: the raw download is not kept twice
    if warn:
        ctx.warn(note)
    if info.failure:
        ctx.warn(f"batch {info.batch_id} failed as a whole: {info.failure}")


def _check_structured(
    ctx: JobContext, table: pa.Table, raws: list[bytes], spec: RequestSpec
) -> pa.Table:
    """Replies that do not match the schema, or were cut off, fail ``invalid_output``."""
    from . import _structured as structured

    assert spec.response_format is not None
    cut: set[str] = set()
    for raw in raws:
        t = ctx.provider.truncated(raw, spec)
        cut.update(t.filter(t.column("truncated")).column("custom_id").to_pylist())
    return _results.check_structured(table, structured.schema_of(spec.response_format), cut)


#: Result bytes allowed per request sent, plus a fixed allowance: a reply is at most
#: the model's output limit (a few hundred KB as JSON); more is a broken or hostile
#: endpoint, refused before it fills the memory or the disk.
RESULT_BYTES_PER_REQUEST = 4 << 20
RESULT_BYTES_BASE = 64 << 20


def read_result_files(ctx: JobContext, info: BatchInfo, n_requests: int = 0) -> list[bytes]:
    """The batch's raw result files: from disk if an earlier release kept them with its
    ``.complete`` mark, else downloaded (at most :data:`RESULT_BYTES_PER_REQUEST` per
    request sent, plus :data:`RESULT_BYTES_BASE`) and kept, each written atomically,
    until :func:`collect` has recorded what they hold."""
    if not info.ended:
        raise NbbatchError(f"internal error: batch {info.batch_id} read before it ended")
    folder = ctx.ledger.files / ctx.id
    done = folder / f"{info.batch_id}.complete"
    if done.exists():
        return [p.read_bytes() for p in sorted(folder.glob(f"{info.batch_id}.*.jsonl"))]
    forget_result_files(ctx, info)  # a broken earlier download, not to be mixed in
    # Sized by what was sent, not by what the provider says the batch holds.
    cap = RESULT_BYTES_BASE + RESULT_BYTES_PER_REQUEST * max(n_requests or info.total, 1)
    # Written to disk as it arrives (the files are kept: the parsed results are the
    # record, so they are a cache, not synced), never held whole in memory meanwhile.
    sink = ResultSink(ctx.ledger.folder(ctx.id), info.batch_id)
    try:
        ctx.provider.download_results(info, sink, max_bytes=cap)
        if sink.size > cap:  # a provider that could not stream it
            raise too_large(ctx, info, cap)
    except BaseException:
        forget_result_files(ctx, info)
        raise
    return [path.read_bytes() for path in sink.paths]


class ResultSink:
    """Where a provider writes a batch's raw result files: ``BATCH.<i>.jsonl`` in the
    job's folder, each 0600, under a temporary name until it is whole."""

    def __init__(self, folder: Path, batch_id: str) -> None:
        self.folder, self.batch_id = folder, batch_id
        self.paths: list[Path] = []
        self.size = 0

    @contextlib.contextmanager
    def new(self) -> Iterator[BinaryIO]:
        """A new result file to write; in place once the block ends without error."""
        target = self.folder / f"{self.batch_id}.{len(self.paths)}.jsonl"
        tmp = self.folder / f".{target.name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                yield out
                self.size += out.tell()
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        self.paths.append(target)


def forget_result_files(ctx: JobContext, info: BatchInfo) -> None:
    """Remove the batch's downloaded files and mark (to be downloaded again)."""
    folder = ctx.ledger.files / ctx.id
    (folder / f"{info.batch_id}.complete").unlink(missing_ok=True)
    for path in folder.glob(f"{info.batch_id}.*.jsonl"):
        path.unlink(missing_ok=True)


def too_large(ctx: JobContext, info: BatchInfo, cap: int) -> ProviderError:
    """The error for results larger than any reply to what was sent could be."""
    return ProviderError(
        f"the results of batch {info.batch_id} are larger than {cap:,} bytes, more than "
        "any reply to the requests sent could be; nothing was recorded from them. The "
        "endpoint is broken or not the provider: check the job's address.",
        job_id=ctx.id,
        provider=ctx.provider_name,
    )


def unreadable(ctx: JobContext, info: BatchInfo, exc: Exception) -> ProviderError:
    """The error for result files that could not be parsed at all: forgotten, so the
    next poll downloads them again instead of failing on the same copy for ever."""
    forget_result_files(ctx, info)
    return ProviderError(
        f"the results of batch {info.batch_id} could not be read "
        f"({type(exc).__name__}: {exc}); nothing was recorded from them, and they are "
        "downloaded again on the next poll.",
        job_id=ctx.id,
        provider=ctx.provider_name,
        transient=True,
    )


def after_collect(ctx: JobContext, *, sending: bool = False) -> int:
    """Apply the job's failure policy once no batch is open and nothing waits to be
    sent (``sending``: the job's sender is still at work): automatic retries of
    transient failures (counted within each escalation stage), then the real-time
    fallback, then the failure-rate alert, then the next stage of a cascade
    (``submit(model=[...])``). Returns the rows a new cascade stage put back to be
    sent, which the job's background sender then sends."""
    batches = ctx.ledger.batches(ctx.id)
    if any(not b["collected"] for b in batches) or sending:
        return 0
    if ctx.record.get("status") == "cancelled":
        return 0
    state = ctx.ledger.row_state(ctx.id)
    if len(unsent(state)):
        return 0
    policy = ctx.policy
    retries = int(policy.get("retries", 0))
    failing = retryable_failures(state)
    failing = failing[ctx.tries(state, failing) <= retries]
    if len(failing):
        kinds = state.column("error_type", failing).to_numpy(zero_copy_only=False)
        failing = failing[kinds != "not_sent"]  # refused as sent: retrying would repeat it
        kinds = kinds[kinds != "not_sent"]
    if len(failing):
        # Read before anything is sent: the state is live, and sending changes it.
        stages = state.stage[failing].copy()
        for stage in np.unique(stages):
            mine = stages == stage
            _retry(ctx, state, failing[mine], kinds[mine], batches, int(stage))
        return 0
    if policy.get("fallback") == "realtime":
        fallback_realtime(ctx)
    ctx.check_alert()
    from . import _escalate as escalate

    return escalate.cascade_next(ctx)


def waiting_to_send(ctx: JobContext) -> str | None:
    """What a refresh that sends would send now, in words ("1,200 rows not sent yet"),
    or None: for a refresh that only polls (``job.refresh(send=False)``, ``nbbatch
    status``) to say what it left alone. Follows :func:`after_collect`'s order."""
    status = ctx.ledger.job_status(ctx.id)
    if ctx.ledger.sending_elsewhere(ctx.id):
        return None  # another live process (a kernel) is sending them now
    if status == "planning":
        return f"{int(ctx.record['n_rows']):,} rows still to be planned and sent"
    if status == "cancelled" or not ctx.ledger.has_rows(ctx.id):
        return None
    state = ctx.ledger.row_state(ctx.id)
    waiting = len(unsent(state))
    if waiting:
        return f"{waiting:,} {'row' if waiting == 1 else 'rows'} not sent yet"
    if any(not b["collected"] for b in ctx.ledger.batches(ctx.id)):
        return None  # retries and later stages wait for the open batches
    failing = retryable_failures(state)
    if len(failing):
        due = failing[ctx.tries(state, failing) <= int(ctx.policy.get("retries", 0))]
        kinds = state.column("error_type", due).to_numpy(zero_copy_only=False)
        retry = int((kinds != "not_sent").sum()) if len(due) else 0
        if retry:
            return f"{retry:,} failed {'row' if retry == 1 else 'rows'} to retry"
        if ctx.policy.get("fallback") == "realtime":
            return f"{len(failing):,} failing rows for the real-time fallback (full price)"
    from . import _escalate as escalate

    if escalate.stage_due(ctx):
        return "the cascade's next stage"
    return None


def _retry(
    ctx: JobContext,
    state: rowstore.RowState,
    failing: np.ndarray,
    kinds: np.ndarray,
    batches: list[dict[str, Any]],
    stage: int,
) -> None:
    """Send again the leaders at ``failing`` (all of one ``stage``), which failed
    transiently: those refused for capacity in smaller batches."""
    attempt = int(state.attempt[failing].max()) + 1
    batch_of = state.batch[failing].copy()
    capacity = kinds == "token_limit_exceeded"
    sent = 0
    other = failing[~capacity]
    if len(other) and _send_again(ctx, other, attempt, stage):
        sent = ctx.rows_in_attempt(attempt)
        ctx.warn_once(
            f"retrying {sent:,} rows that failed transiently (attempt {attempt})",
            "retry",
            attempt,
        )
    if capacity.any():
        sizes = {b["intent"]: b["n_requests"] for b in batches}
        keys = [state.batch_keys[i] for i in np.unique(batch_of[capacity])]
        smaller = max(1, min(sizes.get(k, ctx.provider.max_requests) for k in keys) // 2)
        if not _send_again(ctx, failing[capacity], attempt, stage, smaller):
            return
        ctx.warn(
            f"{ctx.rows_in_attempt(attempt) - sent:,} rows refused for capacity "
            f"(token_limit_exceeded): resending them in batches of at most {smaller} "
            "requests",
            "retry",
            attempt,
        )


def _send_again(
    ctx: JobContext, positions: np.ndarray, attempt: int, stage: int, most: int | None = None
) -> bool:
    """Send the leaders at ``positions`` again as ``attempt`` (in batches of at most
    ``most`` requests). A batch the provider refuses as a whole (a 400 on its upload or
    create) is the job's news, not an error of whoever polled: its rows have ended
    ``failed`` (``not_sent``, with the provider's reason; see ``_send.send_rows``),
    rows of this pass not reached keep their earlier failure, and the job goes on to
    its end; ``resubmit_failed()`` sends them again. False after such a refusal."""
    try:
        _send.send_rows(ctx, positions, attempt, max_requests=most, stage=stage)
        return True
    except BatchFailedError as exc:
        ctx.warn(
            f"the provider refused a batch of retried rows ({exc}); they end failed "
            "(not_sent): job.resubmit_failed() sends them again",
            "retry",
            attempt,
        )
        return False


def retryable_failures(state: rowstore.RowState) -> np.ndarray:
    """Leaders that failed or expired for a reason another try can fix."""
    leaders = state.is_leader
    bad = (state.status == rowstore.FAILED) | (state.status == rowstore.EXPIRED)
    return np.flatnonzero(leaders & bad & (state.retryable == 1))


def fallback_realtime(ctx: JobContext) -> None:
    """Send leaders still failing for transient reasons through the real-time API, at
    full price, recorded with origin ``realtime``."""
    from . import _realtime as realtime

    state = ctx.ledger.row_state(ctx.id)
    positions = retryable_failures(state)
    if not len(positions):
        return
    ctx.warn(f"sending {len(positions)} still-failing rows through the real-time API (full price)")
    stages = state.stage[positions].copy()
    for stage in np.unique(stages):
        # Each row on the model (and parameters) of the stage it failed in.
        mine = positions[stages == stage]
        spec = ctx.stage_spec(int(stage))
        ids = state.manifest_column("custom_id", mine)
        prompts = state.manifest_column("prompt", mine)
        table = realtime.run(ctx.provider, ids, prompts, spec, with_truncated=True)
        table = realtime_checked(table, spec)
        where = pc.index_in(table.column("custom_id"), value_set=ids).to_numpy(zero_copy_only=False)
        sent_hashes = hashes(ctx, mine, int(stage))
        results = rowstore.result_table(mine[where], table, sent_hashes[where])
        ctx.ledger.record_results(
            ctx.id, None, results, "results from the real-time fallback recorded",
            origin="realtime",
        )  # fmt: skip
