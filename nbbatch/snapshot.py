"""An immutable picture of a job at one moment: what every view renders.

The job produces snapshots; the notebook panel and the console reporter only turn them
into widgets or text, so all the arithmetic (counts, progress, ETA) lives here and is
testable without Jupyter.

Two units are kept apart: *rows* (the user's unit: every count, the bar, the ETA) and
*requests* (the provider's unit: identical rows are sent as one request). Provider
progress is converted to rows per batch (:attr:`JobSnapshot.ready`); batch lines say
"requests".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _health as health
from . import _scrub, pricing, states
from ._health import NOTE_KINDS as NOTE_KINDS  # kept with the job's health, named here too
from ._health import Note as Note
from ._health import format_seconds as format_seconds  # where the views look for it
from .pricing import Cost

if TYPE_CHECKING:
    from ._context import JobContext
    from ._quota import WaveView
    from ._rowstore import RowState

#: Row states, in display order. ``pending`` is the only non-terminal one.
ROW_STATES = states.SHOWN


@dataclass(frozen=True)
class BatchView:
    """One provider batch as the views show it."""

    batch_id: str
    status: str
    n_requests: int
    attempt: int
    done: int = 0  # requests the provider reports finished (OpenAI reports it as it goes)
    rows: int = 0  # rows still pending on this batch (deduplicated rows included)
    succeeded: int = 0  # its requests that succeeded (once collected)
    # The escalation stage its rows went in (0: the job's own model), that stage's
    # model, and how many times these rows had been sent in that stage before (retries).
    stage: int = 0
    model: str = ""
    retry: int = 0

    @property
    def label(self) -> str:
        """What this batch is to the job: ``attempt 2`` (a retry of the first stage), or
        ``stage 2 (gpt-4o)`` (an escalation, not a retry), ``stage 2 (gpt-4o), retry 1``."""
        if self.stage == 0:
            return f"attempt {self.attempt}"
        text = f"stage {self.stage + 1} ({self.model})" if self.model else f"stage {self.stage + 1}"
        return f"{text}, retry {self.retry}" if self.retry > 0 else text

    @property
    def ready(self) -> int:
        """Rows of this batch done at the provider but not yet collected: the provider's
        request count scaled to this batch's pending rows (exact without duplicates)."""
        if self.n_requests <= 0 or self.rows <= 0:
            return 0
        return self.rows * min(self.done, self.n_requests) // self.n_requests


def usage_cost(
    model: str,
    provider: str | None,
    finished: bool,
    paid: tuple[int, int, int],
    pending: tuple[int, int],
    fallback: tuple[int, int] | None,
) -> Cost:
    """Batch cost vs real time on ``model`` (at ``provider``): the tokens ``paid`` at
    batch price (input, output, cached input) plus the ``pending`` rows' estimate
    (input, output), and the real-time ``fallback``'s tokens (input, output; None when
    it answered no row) at full price in both columns; estimated until ``finished``."""
    actual = pricing.cost(
        model,
        paid[0] + pending[0],
        paid[1] + pending[1],
        paid[2],
        estimated=not finished,
        provider=provider,
    )
    if actual.batch is None or actual.realtime is None or fallback is None:
        return actual
    extra = pricing.cost(model, fallback[0], fallback[1], estimated=False, provider=provider)
    assert extra.realtime is not None
    # Fallback rows were paid at the real-time price in both columns.
    return Cost(actual.batch + extra.realtime, actual.realtime + extra.realtime, actual.estimated)


@dataclass(frozen=True)
class StageView:
    """One stage of a job that escalates (stage 0: the job's own model), as the views
    show it: its model, the rows sent in it, those still pending there, and the tokens
    paid on it (answers a later stage replaced included: they were paid)."""

    stage: int
    model: str
    rows: int
    pending: int = 0
    reason: str = ""  # what chose its rows (later stages)
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    requests: int = 0  # requests with reported usage, at batch price
    realtime_input_tokens: int = 0
    realtime_output_tokens: int = 0
    pending_input_tokens: int = 0
    pending_output_tokens: int = 0

    def cost(self, finished: bool, provider: str | None = None) -> Cost:
        """This stage on its model (at ``provider``): batch usage plus pending estimate,
        and what the real-time fallback paid at full price."""
        fallback = (self.realtime_input_tokens, self.realtime_output_tokens)
        return usage_cost(
            self.model,
            provider,
            finished,
            (self.input_tokens, self.output_tokens, self.cached_tokens),
            (self.pending_input_tokens, self.pending_output_tokens),
            fallback if self.realtime_input_tokens else None,
        )

    def line(self, of: int) -> str:
        """``stage 2 of 2: 312 rows on gpt-4o`` (and how many are pending)."""
        text = f"stage {self.stage + 1} of {of}: {rows(self.rows)} on {self.model}"
        if self.pending:
            text += f", {self.pending:,} pending"
        return text


@dataclass(frozen=True)
class JobSnapshot:
    """Everything a view shows about a job, at time ``now`` (seconds since the epoch)."""

    job_id: str
    provider: str
    model: str
    endpoint: str
    base_url: str
    n_rows: int
    counts: dict[str, int]  # every state in ROW_STATES plus "total"
    status: str  # running | completed | cancelled | failed (a cascade that could not go on)
    batches: tuple[BatchView, ...]
    created: float
    now: float
    last_poll: float | None = None
    next_poll: float | None = None
    last_error: str | None = None  # a transient polling error, shown and retried
    notes: tuple[Note, ...] = field(default_factory=tuple)  # oldest first
    # (time, rows done or ready) whenever that changed, since progress last went back
    # (a retry puts rows back to pending): what the ETA's rate is measured from.
    progress_samples: tuple[tuple[float, int], ...] = field(default_factory=tuple)
    # Tokens paid for at batch price, as reported by results (cached part of the input).
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    # Tokens paid at full price through the real-time fallback.
    realtime_input_tokens: int = 0
    realtime_output_tokens: int = 0
    # Estimated tokens of the rows still pending.
    pending_input_tokens: int = 0
    pending_output_tokens: int = 0
    reused: int = 0  # rows answered from an earlier job's identical request, not paid again
    deduplicated: int = 0  # rows sharing an identical request with another row of this job
    realtime: int = 0  # rows answered through the real-time fallback
    sending: str | None = None  # while batches are built and uploaded: how far
    deadline: float | None = None  # when every row should be done (seconds since the epoch)
    # A job that escalates: its stages so far, and a cascade's models (all of them).
    stages: tuple[StageView, ...] = ()
    cascade: tuple[str, ...] = ()
    # A cascade whose next stage this session will start (every row of the current one
    # may be terminal already): the job is not finished.
    stage_due: bool = False
    # Why the job ended ``failed`` (a cascade that could not choose its next rows).
    failure: str | None = None
    # A job sent in waves under its account's batch queue limit (see nbbatch._quota):
    # which wave, how full the queue is, and the ETA from the waves so far.
    waves: WaveView | None = None

    @property
    def quota_line(self) -> str | None:
        """``waiting for quota: wave 3 of 12 — 1.9M of 2M queued tokens in use for
        gpt-4o-mini, about 40m to go`` while a job goes in waves; else None."""
        if self.waves is None or self.finished:
            return None
        return self.waves.line()

    @property
    def last_model(self) -> str:
        """The model of a cascade's last stage, else of the last stage started."""
        if self.cascade and len(self.cascade) >= len(self.stages):
            return self.cascade[-1]
        return self.stages[-1].model if self.stages else self.model

    @property
    def models_text(self) -> str:
        """The model, or for a job that escalates each stage's model in order
        (``gpt-4o-mini -> gpt-4o``; a cascade's stages to come included)."""
        models = [s.model for s in self.stages] or [self.model]
        if self.cascade:
            models = [*self.cascade, *models[len(self.cascade) :]]
        return models_text(models)

    @property
    def overdue(self) -> str | None:
        """ "overdue: ..." when rows are still pending after the job's deadline, else None."""
        return health.overdue_text(self.deadline, self.counts["pending"], self.now)

    @property
    def cost(self) -> Cost:
        """Batch cost vs what real time would cost: actual usage so far plus an estimate
        for pending rows; ``estimated`` until every row is terminal. For a job that
        escalates, see :meth:`staged_cost`."""
        if self.stages:
            return self.staged_cost()
        fallback = (self.realtime_input_tokens, self.realtime_output_tokens)
        return usage_cost(
            self.model,
            self.provider,
            self.finished,
            (self.input_tokens, self.output_tokens, self.cached_tokens),
            (self.pending_input_tokens, self.pending_output_tokens),
            fallback if self.realtime else None,
        )

    def staged_cost(self) -> Cost:
        """Each stage priced on its own model and added up, against every row on the last
        model in real time, as a loop without nbbatch would send them (duplicates and
        rows answered in earlier jobs paid again): stage 0's tokens per request (every
        sent row went through it), cached share included, for every row it sent."""
        finished = self.finished
        per = [(s.model, s.cost(finished, self.provider)) for s in self.stages]
        batch = None if any(c.batch is None for _, c in per) else sum(c.batch or 0 for _, c in per)
        first = self.stages[0]
        last = self.last_model
        # Rows answered so far, from the requests that reported usage (the pending ones
        # are in the pending estimate).
        scale = (first.rows - first.pending) / first.requests if first.requests else 0.0
        baseline = pricing.cost(
            last,
            int((first.input_tokens + first.realtime_input_tokens) * scale)
            + first.pending_input_tokens,
            int((first.output_tokens + first.realtime_output_tokens) * scale)
            + first.pending_output_tokens,
            int(first.cached_tokens * scale),
            estimated=not finished,
            provider=self.provider,
        )
        return Cost(
            batch,
            baseline.realtime,
            not finished,
            per_model=tuple((m, c.batch) for m, c in per),
            baseline=last,
        )

    @property
    def stage_lines(self) -> tuple[str, ...]:
        """One line per stage of a job that escalates (``stage 2 of 2: 312 rows on
        gpt-4o``) with its cost, and the cascade's stages still to come."""
        finished = self.finished
        of = max(len(self.cascade), len(self.stages))
        lines = []
        for s in self.stages:
            cost = s.cost(finished).batch
            price = "unknown price" if cost is None else pricing.money(cost)
            lines.append(f"{s.line(of)} ({price})")
        if len(self.cascade) > len(self.stages):
            lines.append(
                f"stage {len(self.stages) + 1} of {of}: on {self.cascade[len(self.stages)]} "
                f"once stage {len(self.stages)} ends, for the rows escalate_when chooses"
            )
        return tuple(lines)

    @property
    def done(self) -> int:
        """Rows in a terminal state."""
        return self.counts["total"] - self.counts["pending"]

    @property
    def fraction(self) -> float:
        """Share of rows that are terminal, 0..1 (1 for an empty job)."""
        total = self.counts["total"]
        return 1.0 if total == 0 else self.done / total

    @property
    def finished(self) -> bool:
        """True once every row is terminal and no cascade stage is still to start."""
        return self.counts["pending"] == 0 and not self.stage_due

    @property
    def elapsed(self) -> float:
        """Seconds since the job was created."""
        return max(0.0, self.now - self.created)

    @property
    def ready(self) -> int:
        """Rows done at the provider but not yet collected (an estimate where identical
        rows share a request)."""
        return min(self.counts["pending"], sum(b.ready for b in self.batches))

    @property
    def progress(self) -> float:
        """Share of rows collected or done at the provider, 0..1 (1 for an empty job)."""
        total = self.counts["total"]
        return 1.0 if total == 0 else (self.done + self.ready) / total

    #: Samples of progress needed before an ETA is shown: two increases, not one.
    ETA_MIN_SAMPLES = 3

    @property
    def eta(self) -> float | None:
        """Seconds until every row is done at the provider, at the rate its own progress
        counts moved so far; None when there is no trustworthy rate (too few samples, no
        progress, progress overdue, or only collection left)."""
        if self.finished:
            return 0.0
        samples = self.progress_samples
        if len(samples) < self.ETA_MIN_SAMPLES:
            return None
        (t0, p0), (t1, p1) = samples[0], samples[-1]
        if t1 <= t0 or p1 <= p0:
            return None
        remaining = self.counts["total"] - self.done - self.ready
        if remaining <= 0:
            return None  # only collecting (or finalizing) is left: no rate for that
        left = remaining * (t1 - t0) / (p1 - p0) - (self.now - t1)
        return left if left > 0 else None  # overdue: say nothing rather than "0 s"

    @property
    def current_notes(self) -> tuple[Note, ...]:
        """Notes that are true now (retries still open, an alert on the current counts,
        a cancel not yet confirmed)."""
        return tuple(n for n in self.notes if n.current)

    @property
    def history(self) -> tuple[Note, ...]:
        """Notes that are no longer current, oldest first."""
        return tuple(n for n in self.notes if not n.current)

    @property
    def warnings(self) -> tuple[str, ...]:
        """The words of every note, current or history, oldest first."""
        return tuple(n.text for n in self.notes)

    @property
    def provider_status(self) -> str:
        """The provider's words for the batches still open (or the last one), joined."""
        open_ = [b.status for b in self.batches if b.status not in _ENDED_WORDS]
        words = open_ or [b.status for b in self.batches[-1:]]
        if self.sending:
            words = [self.sending, *words]
        if self.quota_line:
            words = [self.quota_line, *words]
        return ", ".join(dict.fromkeys(words)) or "not sent"

    @property
    def resubmittable(self) -> int:
        """Rows that ``resubmit_failed`` would send again."""
        return sum(self.counts[s] for s in states.RESUBMITTABLE)

    def summary(self) -> str:
        """One line saying where the job is."""
        c = self.counts
        parts = [f"{c['succeeded']:,} succeeded"]
        parts += [f"{c[s]:,} {s}" for s in (*states.NOT_SUCCEEDED, states.SKIPPED) if c[s]]
        if c["pending"]:
            parts.append(f"{c['pending']:,} pending")
        if self.ready:
            parts.append(f"~{self.ready:,} of them done at the provider")
        head = f"{self.job_id} [{self.provider} {self.models_text}] {self.status}"
        if self.status == "running":
            head += f" ({self.provider_status})"
        return f"{head}: {self.done:,}/{rows(c['total'])} done - " + ", ".join(parts)


def rows(n: int) -> str:
    """``n`` with its noun: ``1 row``, ``1,200 rows``."""
    return f"{n:,} row" if n == 1 else f"{n:,} rows"


def models_text(models: list[str]) -> str:
    """``gpt-4o-mini -> gpt-4o``: models in stage order, a model repeated by the next
    stage (other parameters) named once."""
    shown = [m for i, m in enumerate(models) if i == 0 or m != models[i - 1]]
    return " -> ".join(shown)


_ENDED_WORDS = frozenset({"completed", "failed", "expired", "cancelled", "ended", "refused"})


class ProgressTrail:
    """Rows done or ready at the provider each time that changed: the ETA's rate. It
    starts over when progress goes back (a retry put rows back to pending)."""

    def __init__(self) -> None:
        self.base: int | None = None
        self.samples: list[tuple[float, int]] = []

    def add(
        self, counts: dict[str, int], views: tuple[BatchView, ...], now: float
    ) -> tuple[tuple[float, int], ...]:
        """Record the progress these counts and batches show at ``now``; the trail."""
        ready = min(counts["pending"], sum(v.ready for v in views))
        progress = counts["total"] - counts["pending"] + ready
        samples = self.samples
        last = samples[-1][1] if samples else self.base
        if last is None or progress < last:
            self.base, self.samples = progress, []
        elif progress != last:
            self.samples = [*samples[-29:], (now, progress)]
        return tuple(self.samples)


@dataclass(frozen=True)
class Session:
    """What this session knows of a job beyond its ledger: polling times, the last
    error, how far the background sender is, and the progress trail."""

    trail: ProgressTrail
    last_poll: float | None = None
    next_poll: float | None = None
    last_error: str | None = None
    sending: str | None = None


def build(ctx: JobContext, session: Session) -> JobSnapshot:
    """The job as its ledger (and this session) has it now: no network call."""
    # Imported here: escalate brings pandas, whose import hook loads the accessor and
    # with it the views, which import this module.
    from . import _escalate as escalate
    from . import _planning as planning
    from . import _quota as quota
    from ._send import unsent

    if planning.planning(ctx):
        return planning_snapshot(ctx, session)
    state = ctx.row_state()
    raw = state.counts()
    counts = row_counts(raw, int(ctx.record["n_rows"]))
    batches = ctx.ledger.batches(ctx.id)
    # A cascade stage this session still starts keeps the job running.
    stage_due = counts["pending"] == 0 and escalate.stage_due(ctx)
    status = job_status(ctx, counts, stage_due)
    staged = ctx.staged
    batch, realtime = paid_tokens(state, staged=staged)
    pending_in, pending_out = pending_estimate(ctx, counts["pending"])
    views = batch_views(ctx, batches, state.per_batch())
    now = ctx.clock()
    return JobSnapshot(
        job_id=ctx.id,
        # "local": an emulator run must never read as spending at the provider.
        provider="local" if ctx.local else ctx.provider_name,
        model=ctx.model,
        endpoint=ctx.endpoint,
        base_url=str(ctx.record.get("base_url") or ""),
        n_rows=counts["total"],
        counts=counts,
        status=status,
        batches=views,
        created=float(ctx.record["created"]),
        now=now,
        last_poll=session.last_poll,
        next_poll=session.next_poll,
        # Shown by the panel, the console, the CLI and the sidebar: never with a key.
        last_error=None if session.last_error is None else _scrub.scrub(session.last_error),
        notes=current_notes(ctx, state, counts, now),
        progress_samples=session.trail.add(counts, views, now),
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
        sending=session.sending,
        deadline=ctx.record.get("deadline"),
        stages=stage_views(ctx, state, counts) if staged else (),
        cascade=tuple((ctx.policy.get("cascade") or {}).get("models") or ()),
        stage_due=stage_due,
        failure=escalate.failure(ctx) if status == "failed" else None,
        waves=quota.view(ctx.ledger, ctx.id, bool(len(unsent(state))), now),
    )


def row_counts(raw: dict[str, int], n_rows: int) -> dict[str, int]:
    """The rows in each state of ROW_STATES (0 for a state none is in) and ``total``."""
    counts = {state: int(raw.get(state, 0)) for state in ROW_STATES}
    counts["total"] = n_rows
    return counts


def current_notes(
    ctx: JobContext, state: RowState, counts: dict[str, int], now: float
) -> tuple[Note, ...]:
    """The job's notes, those of attempts with rows still pending (in a batch not
    collected, or not sent yet) marked current, and its cost alert once raised."""
    from . import _rowstore as rowstore

    open_attempts = set(np.unique(state.attempt[state.status == rowstore.PENDING]).tolist())
    finished = counts["pending"] == 0
    alert = ctx.alert_text(counts) if (ctx.alert_raised or finished) else None
    return health.mark_current(ctx.notes, open_attempts, finished, alert, now)


def planning_snapshot(ctx: JobContext, session: Session) -> JobSnapshot:
    """The snapshot of a job with no rows yet (see :mod:`nbbatch._planning`): all pending
    while planned ("planning 3.2M/10M rows" as its sending text), all failed or cancelled
    if it ended so."""
    from ._planning import FAILED, PLANNING, failure

    status = str(ctx.record.get("status"))
    n = int(ctx.record["n_rows"])
    counts = row_counts({{PLANNING: "pending", FAILED: "failed"}.get(status, "cancelled"): n}, n)
    text = None
    if status == PLANNING:
        live = session.sending is not None and session.sending.startswith("planning")
        text = session.sending if live else "planning"
    return JobSnapshot(
        job_id=ctx.id,
        provider="local" if ctx.local else ctx.provider_name,  # as once planned
        model=ctx.model,
        endpoint=ctx.endpoint,
        base_url=str(ctx.record.get("base_url") or ""),
        n_rows=n,
        counts=counts,
        status={PLANNING: "running", FAILED: "failed"}.get(status, "cancelled"),
        batches=(),
        created=float(ctx.record["created"]),
        now=ctx.clock(),
        last_poll=session.last_poll,
        last_error=f"sending stopped: {failure(ctx)}" if status == FAILED else session.last_error,
        notes=tuple(ctx.notes),
        sending=text,
        deadline=ctx.record.get("deadline"),
    )


def job_status(ctx: JobContext, counts: dict[str, int], stage_due: bool) -> str:
    """``running`` while rows are pending or a cascade stage is still to start; then
    ``completed``, or ``cancelled`` / ``failed`` as the job's record says."""
    if counts["pending"] or stage_due:
        return "running"
    recorded = ctx.record.get("status")
    return str(recorded) if recorded in ("cancelled", "failed") else "completed"


def paid_tokens(state: RowState, *, staged: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(batch, real-time) token usage that was paid for: rows sent themselves (not
    reused from an earlier job, not deduplicated onto another row); in a job that
    escalates, every stage's (answers a later stage replaced were paid too)."""
    if staged:
        stages = list(state.usage_by_stage().values())
        batch = tuple(sum(p["batch"][i] for p in stages) for i in range(4))
        realtime = tuple(sum(p["realtime"][i] for p in stages) for i in range(4))
        return batch, realtime
    usage = state.usage()
    return tuple(usage["batch"]), tuple(usage["realtime"])


def batch_views(
    ctx: JobContext, batches: list[dict[str, Any]], per_batch: dict[str, tuple[int, int]]
) -> tuple[BatchView, ...]:
    """Each batch as the views show it: its provider requests, its rows still pending
    and its requests (leaders) that succeeded (from the row store's ``per_batch``), and
    an escalation's stage and model (named so, not as a retry)."""
    from . import _escalate as escalate  # not at the top: see build
    from . import _pack as pack

    stage_of = escalate.batch_stages(ctx, batches)
    return tuple(
        BatchView(
            b["batch_id"],
            b["status"],
            # The provider's requests: a batch of packs (pack=N) has fewer than rows.
            pack.n_requests(
                b["n_requests"],
                pack.size_for(ctx.policy, int(b.get("stage") or 0), int(b["attempt"])),
            ),
            b["attempt"],
            done=int(b["done"] or 0),
            rows=per_batch.get(b["intent"], (0, 0))[0],
            succeeded=per_batch.get(b["intent"], (0, 0))[1],
            **stage_of(b),
        )
        for b in batches
    )


def stage_views(ctx: JobContext, state: RowState, counts: dict[str, int]) -> tuple[StageView, ...]:
    """Each stage started so far: its model, rows, pending rows and tokens paid."""
    from . import _rowstore as rowstore

    stages = [{"stage": 0, "spec": ctx.record["spec"], "reason": "",
               "n_rows": counts["total"] - counts["skipped"]}, *ctx.stages]  # fmt: skip
    usage = state.usage_by_stage()
    rows_stage = state.follow(state.stage)
    pending = np.bincount(rows_stage[state.statuses() == rowstore.PENDING], minlength=len(stages))
    views = []
    for s in stages:
        number = int(s["stage"])
        paid = usage.get(number, {})
        batch, live = paid.get("batch", (0, 0, 0, 0)), paid.get("realtime", (0, 0, 0, 0))
        pending_in, pending_out = pending_estimate(ctx, int(pending[number]), s["spec"])
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


def pending_estimate(
    ctx: JobContext, pending: int, spec: dict[str, Any] | None = None
) -> tuple[int, int]:
    """Estimated (input, output) tokens of the rows still pending: 4 characters per
    token for the prompt, ``max_tokens`` (or 100) for the reply (of ``spec``, a stage's
    parameters, else the job's). The prompt average is computed once per session."""
    from . import _rowstore as rowstore
    from .providers.base import is_embeddings

    if ctx.prompt_tokens is None:
        n, chars = rowstore.prompt_chars(ctx.row_state())
        # Packed rows (pack=N) share the system prompt N ways on their first try.
        system = len(ctx.spec.system or "") / (ctx.policy.get("pack") or 1)
        ctx.prompt_tokens = (chars / max(n, 1) + system) / 4 + 4
    max_tokens = (spec or ctx.record["spec"]).get("max_tokens")
    out = 0 if is_embeddings(ctx.endpoint) else (max_tokens or 100)
    return int(pending * ctx.prompt_tokens), pending * out
