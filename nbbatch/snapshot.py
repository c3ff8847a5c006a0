"""An immutable picture of a job at one moment: what every view renders.

The job produces snapshots; the notebook panel and the console reporter only turn them
into widgets or text, so all the arithmetic (counts, progress, ETA) lives here and is
testable without Jupyter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import pricing
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
    status: str  # running | completed | cancelled
    batches: tuple[BatchView, ...]
    created: float
    now: float
    last_poll: float | None = None
    next_poll: float | None = None
    last_error: str | None = None  # a transient polling error, shown and retried
    warnings: tuple[str, ...] = field(default_factory=tuple)
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

    @property
    def cost(self) -> Cost:
        """Batch cost vs what real time would cost: actual usage so far plus an estimate
        for pending rows; ``estimated`` until every row is terminal."""
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
        """True once every row is terminal."""
        return self.counts["pending"] == 0

    @property
    def elapsed(self) -> float:
        """Seconds since the job was created."""
        return max(0.0, self.now - self.created)

    @property
    def eta(self) -> float | None:
        """Seconds until every row is terminal at the rate so far, once a rate is known."""
        if self.finished:
            return 0.0
        sent_done = self.done - self.counts["skipped"]
        if sent_done <= 0 or self.elapsed <= 0:
            return None
        return self.counts["pending"] * self.elapsed / sent_done

    @property
    def provider_status(self) -> str:
        """The provider's words for the batches still open (or the last one), joined."""
        open_ = [b.status for b in self.batches if b.status not in _ENDED_WORDS]
        words = open_ or [b.status for b in self.batches[-1:]]
        return ", ".join(dict.fromkeys(words)) or "not sent"

    @property
    def resubmittable(self) -> int:
        """Rows that ``resubmit_failed`` would send again."""
        return sum(self.counts[s] for s in RESUBMITTABLE)

    def summary(self) -> str:
        """One line saying where the job is."""
        c = self.counts
        parts = [f"{c['succeeded']} succeeded"]
        parts += [f"{c[s]} {s}" for s in ("failed", "expired", "cancelled", "skipped") if c[s]]
        if c["pending"]:
            parts.append(f"{c['pending']} pending")
        head = f"{self.job_id} [{self.provider} {self.model}] {self.status}"
        if self.status == "running":
            head += f" ({self.provider_status})"
        return f"{head}: {self.done}/{c['total']} rows done - " + ", ".join(parts)


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
