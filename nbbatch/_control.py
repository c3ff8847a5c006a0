"""What a user's commands do to a job's record: cancel, forget, resubmit, new parameters.

Each is a function of the job's :class:`~nbbatch._context.JobContext` that records the
change in the ledger first (so every process sees it) and says what happened; the job
(:class:`nbbatch.job.BatchJob`) stops or starts its threads around it and tells its
views.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _rowstore as rowstore
from . import _send
from ._errors import InputError, NbbatchError, ProviderError
from .providers.base import RequestSpec

log = logging.getLogger("nbbatch")

if TYPE_CHECKING:
    from ._context import JobContext


def cancel(ctx: JobContext) -> None:
    """Record the job cancelled, end its unsent rows ``cancelled`` and ask the provider
    to cancel every open batch (a batch the background emulator lost ends
    ``backend_gone``)."""
    from . import _collect

    # Recorded first: a sender in another process (a kernel, while the Lab sidebar
    # cancels) then either sees it before its next chunk and stops, or has recorded
    # that chunk's intent already, and cancels the batch it makes.
    ctx.ledger.set_job_status(ctx.id, "cancelled")
    ctx.record["status"] = "cancelled"
    _send.cancel_unsent(ctx)
    for batch in ctx.ledger.batches(ctx.id):
        if not batch["ended"] and not batch["batch_id"].startswith("intent-"):
            try:
                info = ctx.provider.cancel(batch["batch_id"])
            except ProviderError as exc:
                if not _collect.local_batch_gone(ctx, exc):
                    raise
                _collect.end_backend_gone(ctx, batch)
                continue
            ctx.ledger.update_batch(info.batch_id, info.status, info.ended, info.failure, info.raw)
    ctx.ledger.event(ctx.id, "cancel", "cancel requested")
    ctx.note(
        "cancel",
        "cancel requested; open batches end as the provider confirms (rows already "
        "finished keep their results)",
    )


def check_forgettable(ctx: JobContext, *, backend_dead: bool) -> None:
    """Refuse to forget a job whose backend can still run some of its batches (they
    would go on, unwatched, and at a real provider be billed)."""
    open_batches = [b for b in ctx.ledger.batches(ctx.id) if not b["ended"]]
    if not open_batches or backend_dead:
        return
    pending = ctx.ledger.counts(ctx.id).get("pending", 0)
    fix = (
        "its cancel is not confirmed yet: job.wait() until it is"
        if ctx.cancelled
        else "call job.cancel() first (or `nbbatch cancel JOB`)"
    )
    raise NbbatchError(
        f"job {ctx.id} still has {pending} pending rows in {len(open_batches)} open "
        f"batches that can still run: {fix}, or forget(force=True) to drop it anyway (the "
        "batches then go on unwatched).",
        job_id=ctx.id,
        provider=ctx.provider_name,
    )


def drop_local_copy(ctx: JobContext) -> int:
    """For a job on nbbatch's background emulator (``provider="local"``): delete its
    ended batches and their files there, so that forgetting the job frees that disk too
    (the emulator otherwise keeps them 30 days). Returns how many batches went; one that
    cannot be deleted now is logged and left (``nbbatch clean`` finds it later)."""
    if not ctx.local:
        return 0  # a real provider's files are the account's business, not nbbatch's
    dropped = 0
    for batch in ctx.ledger.batches(ctx.id):
        if batch["batch_id"].startswith("intent-"):
            continue
        try:
            info = ctx.provider.retrieve(batch["batch_id"])
            if info.ended:  # one still running (forget(force=True)) is left to end
                ctx.provider.delete_batch(info)
                dropped += 1
        except ProviderError as exc:
            log.warning("nbbatch job %s: batch %s not deleted from the local emulator: %s",
                        ctx.id, batch["batch_id"], exc)  # fmt: skip
    return dropped


def requeue_failed(ctx: JobContext, overrides: dict[str, Any]) -> int:
    """Put the rows that ended ``failed`` or ``expired`` back to be sent, each in the
    stage it failed in, with ``overrides`` applied to the job's parameters first;
    returns the attempt they go in (0: no such row, nothing changed)."""
    state = ctx.row_state()
    leaders = state.is_leader
    bad = (state.status == rowstore.FAILED) | (state.status == rowstore.EXPIRED)
    positions = np.flatnonzero(leaders & bad)
    if not len(positions):
        return 0
    if overrides and (state.stage[positions] > 0).any():
        raise InputError(
            f"some failed rows of job {ctx.id} failed in an escalation stage, whose "
            "parameters resubmit_failed(**overrides) does not change: "
            "job.escalate(model=..., where='failed', **overrides) sends them with other "
            "parameters. Nothing was sent.",
            job_id=ctx.id,
        )
    if overrides:
        apply_overrides(ctx, overrides)
    attempt = int(state.attempt[positions].max()) + 1
    ctx.ledger.event(ctx.id, "resubmit", f"resubmitting {len(positions)} rows")
    ctx.ledger.set_job_status(ctx.id, "running")
    # It ends again, and says so; collect --finished writes its new results.
    ctx.ledger.set_job_time(ctx.id, "ended_at", None)
    ctx.ledger.set_job_time(ctx.id, "collected_at", None)
    ctx.record["status"] = "running"
    # Put back to be sent, then sent by the background sender (or the next refresh):
    # the kernel stays free however many rows failed.
    stages = state.stage[positions].copy()
    for stage in np.unique(stages):  # each row again in the stage it failed in
        ctx.ledger.requeue(ctx.id, positions[stages == stage], attempt, int(stage))
    n = ctx.rows_in_attempt(attempt)
    ctx.note(
        "resubmit",
        f"resubmitted {n:,} failed or expired rows (attempt {attempt}); only those are "
        "sent and paid for again",
        attempt,
    )
    return attempt


def apply_overrides(ctx: JobContext, overrides: dict[str, Any]) -> None:
    """Change request parameters for the batches sent from now on; checked as
    ``submit`` checks them, before anything is sent."""
    spec = dict(ctx.record["spec"])
    for key, value in overrides.items():
        if key in spec and key != "params":
            spec[key] = value
        else:
            spec["params"] = {**spec["params"], key: value}
    checked = RequestSpec(**spec)
    ctx.provider.validate(checked)
    if checked.model != ctx.model:
        ctx.provider.check_model(checked.model)
    ctx.record["spec"] = spec
    ctx.ledger.set_job_spec(ctx.id, spec)
