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

from . import health, pricing
from .pricing import Cost

#: Row states, in display order. ``pending`` is the only non-terminal one.
ROW_STATES = ("succeeded", "failed", "expired", "cancelled", "skipped", "pending")
#: Rows in these states can be sent again with ``resubmit_failed``.
RESUBMITTABLE = ("failed", "expired")


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

    def cost(self, finished: bool) -> Cost:
        """This stage on its model: batch usage plus pending estimate, and what the
        real-time fallback paid at full price."""
        actual = pricing.cost(
            self.model,
            self.input_tokens + self.pending_input_tokens,
            self.output_tokens + self.pending_output_tokens,
            self.cached_tokens,
            estimated=not finished,
        )
        if actual.batch is None or actual.realtime is None or not self.realtime_input_tokens:
            return actual
        extra = pricing.cost(
            self.model, self.realtime_input_tokens, self.realtime_output_tokens, estimated=False
        )
        assert extra.realtime is not None
        return Cost(actual.batch + extra.realtime, actual.realtime + extra.realtime, not finished)

    def line(self, of: int) -> str:
        """``stage 2 of 2: 312 rows on gpt-4o`` (and how many are pending)."""
        text = f"stage {self.stage + 1} of {of}: {self.rows:,} rows on {self.model}"
        if self.pending:
            text += f", {self.pending:,} pending"
        return text


#: Kinds of notes. ``alert``, ``retry``, ``resubmit``, ``cancel`` describe a state and are
#: current while it lasts; every other kind records an event and is history at once.
NOTE_KINDS = ("alert", "retry", "resubmit", "cancel", "fallback", "event")


@dataclass(frozen=True)
class Note:
    """Something the job did or noticed: when (seconds since the epoch), what kind (one of
    :data:`NOTE_KINDS`), the words, and whether it is still true (``current``) or history."""

    time: float
    kind: str
    text: str
    current: bool = False
    attempt: int | None = None  # the attempt a retry or resubmission sent


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
        actual = pricing.cost(
            self.model,
            self.input_tokens + self.pending_input_tokens,
            self.output_tokens + self.pending_output_tokens,
            self.cached_tokens,
            estimated=not self.finished,
        )
        if actual.batch is None or actual.realtime is None or not self.realtime:
            return actual
        extra = pricing.cost(
            self.model, self.realtime_input_tokens, self.realtime_output_tokens, estimated=False
        )
        assert extra.realtime is not None
        # Fallback rows were paid at the real-time price in both columns.
        batch, realtime = actual.batch + extra.realtime, actual.realtime + extra.realtime
        return Cost(batch, realtime, actual.estimated)

    def staged_cost(self) -> Cost:
        """Each stage priced on its own model and added up, against every row on the last
        model in real time, as a loop without nbbatch would send them (duplicates and
        rows answered in earlier jobs paid again): stage 0's tokens per request (every
        sent row went through it), cached share included, for every row it sent."""
        finished = self.finished
        per = [(s.model, s.cost(finished)) for s in self.stages]
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
        return ", ".join(dict.fromkeys(words)) or "not sent"

    @property
    def resubmittable(self) -> int:
        """Rows that ``resubmit_failed`` would send again."""
        return sum(self.counts[s] for s in RESUBMITTABLE)

    def summary(self) -> str:
        """One line saying where the job is."""
        c = self.counts
        parts = [f"{c['succeeded']:,} succeeded"]
        parts += [f"{c[s]:,} {s}" for s in ("failed", "expired", "cancelled", "skipped") if c[s]]
        if c["pending"]:
            parts.append(f"{c['pending']:,} pending")
        if self.ready:
            parts.append(f"~{self.ready:,} of them done at the provider")
        head = f"{self.job_id} [{self.provider} {self.models_text}] {self.status}"
        if self.status == "running":
            head += f" ({self.provider_status})"
        return f"{head}: {self.done:,}/{c['total']:,} rows done - " + ", ".join(parts)


def models_text(models: list[str]) -> str:
    """``gpt-4o-mini -> gpt-4o``: models in stage order, a model repeated by the next
    stage (other parameters) named once."""
    shown = [m for i, m in enumerate(models) if i == 0 or m != models[i - 1]]
    return " -> ".join(shown)


_ENDED_WORDS = frozenset({"completed", "failed", "expired", "cancelled", "ended"})


def format_seconds(seconds: float | None) -> str:
    """``75`` -> ``'1m 15s'``; None -> ``'-'``."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"
