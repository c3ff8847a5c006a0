"""A deadline that means something: rows not done by it go another way.

``submit(deadline=..., on_deadline=...)``: with ``"wait"`` (the default) a deadline only
marks a job overdue (see :mod:`nbbatch._health`). With ``"flex"`` or ``"realtime"``,
once it has passed:

1. nothing more is sent as a batch (the sender stops before its next chunk);
2. the job's open batches are cancelled; the rows they finished keep their results,
   as for any cancel;
3. once every batch is collected, the rows still unfinished (never sent, cancelled,
   expired, or failed for a reason another try can fix) are sent through the provider's
   real-time API: with ``"flex"``, OpenAI's flex processing (``service_tier="flex"``:
   billed at batch prices, slower, sometimes refused with 429, which is retried), with
   ``"realtime"`` at the full price. They are recorded with origin ``flex`` or
   ``realtime``, and the note says what they cost beside the other way.

Each is a function of the job's :class:`~nbbatch._context.JobContext`, run by the job's
poll (see :meth:`nbbatch.job.BatchJob.refresh`). A session holding such a job polls it
in the background from ``submit`` on (with or without the panel), and the poll after
the deadline is moved to the moment it arrives (:func:`until_due`), so it acts then.
Nothing acts while no session holds the job: the next that polls it and may send (a
new session's ``nb.attach(...).wait()``, ``nbbatch collect``) acts at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc

from . import _rowstore as rowstore
from ._errors import InputError, ProviderError

if TYPE_CHECKING:
    from ._context import JobContext

#: What ``on_deadline`` takes.
CHOICES = ("wait", "flex", "realtime")
#: Providers whose real-time API offers flex processing at batch prices.
FLEX_PROVIDERS = ("openai",)


def check(
    on_deadline: Any, deadline: Any, provider: str | None = None, models: Sequence[str] = ()
) -> None:
    """Refuse an ``on_deadline`` that cannot work, before anything is sent: an unknown
    choice, no deadline, or flex on a provider or model that has no flex processing."""
    if on_deadline not in CHOICES:
        raise InputError(f"on_deadline must be one of {list(CHOICES)}, found {on_deadline!r}.")
    if on_deadline != "wait" and deadline is None:
        raise InputError(
            f"on_deadline={on_deadline!r} says what to do at the deadline, but no deadline "
            "was given: add deadline='6h' (or a timedelta or datetime)."
        )
    if on_deadline == "flex" and provider is not None and provider not in FLEX_PROVIDERS:
        raise InputError(
            f"on_deadline='flex' needs OpenAI's flex processing; {provider} has none. "
            "Use on_deadline='realtime' (full price) or 'wait'."
        )
    if on_deadline == "flex" and provider == "openai":
        from .providers.openai import offers_flex

        for model in models:
            if not offers_flex(model):
                raise InputError(
                    f"on_deadline='flex' needs OpenAI's flex processing, which {model!r} "
                    "does not offer (OpenAI lists the models that do on its pricing page; "
                    "o3 and o4-mini among them). Use on_deadline='realtime' (full price) "
                    "or 'wait', or a model with flex processing."
                )


def acts(policy: dict[str, Any]) -> bool:
    """Whether a job with this policy does something at its deadline (flex or
    realtime), so a session holding it should poll when it arrives."""
    return policy.get("on_deadline", "wait") in ("flex", "realtime")


def until_due(ctx: JobContext, delay: float) -> float:
    """``delay`` (seconds to the next poll), shortened so that the poll comes as the
    deadline arrives when it acts and falls within ``delay``: the rows go another way
    then, not up to a whole poll interval later."""
    due = ctx.record.get("deadline")
    if due is None or not acts(ctx.policy):
        return delay
    left = float(due) - ctx.clock()
    # A moment past it, so that the poll finds it passed.
    return min(delay, left + 0.05) if left >= 0 else delay


def rerouting(ctx: JobContext) -> bool:
    """Whether the job's deadline has passed and its rows now go another way (the
    sender checks the same, ``JobContext.rerouting``, before each batch)."""
    return ctx.rerouting


def reroute(ctx: JobContext) -> None:
    """After the deadline: cancel open batches, then, once all are collected, send the
    unfinished rows through the real-time API (flex or full price), once a session."""
    if ctx.cancelled or ctx.deadline_sent:
        return
    batches = ctx.ledger.batches(ctx.id)
    open_batches = [
        b for b in batches if not b["ended"] and not b["batch_id"].startswith("intent-")
    ]
    if open_batches and not ctx.deadline_cancelled:
        for batch in open_batches:
            try:
                info = ctx.provider.cancel(batch["batch_id"])
            except ProviderError as exc:
                if not exc.transient:
                    raise
                return  # tried again on the next poll
            ctx.ledger.update_batch(info.batch_id, info.status, info.ended, info.failure, info.raw)
        ctx.deadline_cancelled = True
        ctx.warn(
            f"deadline reached: cancelling {len(open_batches)} open batches; rows they "
            f"finished keep their results, the rest go {_way(ctx)}"
        )
        # Looked at once more now: those the cancel ended at once are collected, so the
        # rest go in this poll rather than the next (which may be a while away).
        from ._collect import poll_batch

        for batch in ctx.ledger.batches(ctx.id):
            if not batch["collected"] and not batch["batch_id"].startswith("intent-"):
                poll_batch(ctx, batch)
    if any(not b["collected"] for b in ctx.ledger.batches(ctx.id)):
        return  # the cancelled batches' finished rows first
    state = ctx.row_state()
    positions = unfinished(state)
    ctx.deadline_sent = True
    if not len(positions):
        return
    _send_now(ctx, state, positions)


def unfinished(state: rowstore.RowState) -> np.ndarray:
    """Leaders not done: never sent, cancelled, expired, or failed for a reason another
    try can fix."""
    leaders = state.is_leader
    status = state.status
    waiting = (status == rowstore.PENDING) & (state.batch < 0)
    stopped = (status == rowstore.CANCELLED) | (status == rowstore.EXPIRED)
    fixable = (status == rowstore.FAILED) & (state.retryable == 1)
    return np.flatnonzero(leaders & (waiting | stopped | fixable))


def _way(ctx: JobContext) -> str:
    if ctx.policy.get("on_deadline") == "flex":
        return "through OpenAI flex processing (batch prices)"
    return "through the real-time API (full price)"


def _send_now(ctx: JobContext, state: rowstore.RowState, positions: np.ndarray) -> None:
    """Send the rows at ``positions`` through the real-time API, each on its stage's
    model, and record what came back; say what they cost beside the other way."""
    from . import _realtime as realtime
    from . import pricing
    from ._collect import hashes, realtime_checked
    from .providers.base import RequestSpec

    flex = ctx.policy.get("on_deadline") == "flex"
    origin = "flex" if flex else "realtime"
    ctx.warn(f"deadline reached: sending {len(positions):,} unfinished rows {_way(ctx)}")
    stages = state.stage[positions].copy()
    tokens = np.zeros(2, dtype=np.int64)
    for stage in np.unique(stages):
        mine = positions[stages == stage]
        spec = ctx.stage_spec(int(stage))
        if flex:
            spec = RequestSpec(
                **{**spec.as_dict(), "params": {**spec.params, "service_tier": "flex"}}
            )
        ids = state.manifest_column("custom_id", mine)
        prompts = state.manifest_column("prompt", mine)
        table = realtime.run(ctx.provider, ids, prompts, spec, with_truncated=True)
        table = realtime_checked(table, spec)
        where = pc.index_in(table.column("custom_id"), value_set=ids).to_numpy(zero_copy_only=False)
        results = rowstore.result_table(mine[where], table, hashes(ctx, mine, int(stage))[where])
        ctx.ledger.record_results(
            ctx.id, None, results, f"results sent after the deadline ({origin}) recorded",
            origin=origin,
        )  # fmt: skip
        for i, column in enumerate(("input_tokens", "output_tokens")):
            tokens[i] += int(pc.sum(pc.fill_null(table.column(column), 0)).as_py() or 0)
    cost = pricing.cost(
        ctx.model, int(tokens[0]), int(tokens[1]), estimated=False, provider=ctx.provider_name
    )
    if cost.batch is not None and cost.realtime is not None:
        paid, other = (cost.batch, cost.realtime) if flex else (cost.realtime, cost.batch)
        ctx.warn(
            f"{len(positions):,} rows sent after the deadline cost {pricing.money(paid)} "
            f"{'with flex' if flex else 'in real time'}; "
            # A batch's price, not "flex": most providers and models have no flex.
            f"{'real time' if flex else 'a batch'} would have cost {pricing.money(other)}"
        )
