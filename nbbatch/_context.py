"""What the stages of a job work on: its record, its ledger, its provider, its notes.

A :class:`JobContext` is the part of a job the stages (:mod:`nbbatch._send`,
:mod:`nbbatch._collect`, :mod:`nbbatch._merge`, :mod:`nbbatch._escalate`) and the snapshot
(:func:`nbbatch.snapshot.build`) need, and nothing else: no threads, no views, no public
API. The job (:class:`nbbatch.job.BatchJob`) owns one, hands it to each stage in turn,
and tells its views what happened. Reads of the job's parameters (its stages, their
request specs, its policy) live here, so every stage reads them the same way.

Notes (what the job did or noticed, see :class:`~nbbatch.snapshot.Note`) are kept here
too: a stage that warns appends a note, and the job's next snapshot shows it.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _health as health
from . import _rowstore as rowstore
from ._errors import JobRunningWarning, NbbatchError
from ._health import Note
from ._ledger import Ledger
from .providers.base import BatchInfo, Provider, RequestSpec
from .providers.base import scored as _scored
from .providers.credentials import is_loopback as is_loopback

log = logging.getLogger("nbbatch")


def output_columns(
    output: str,
    response_format: dict[str, Any] | None,
    *,
    staged: bool = False,
    lineage: bool = False,
    scored: bool = False,
) -> list[str]:
    """The columns ``merge`` adds for this output name and response_format (and
    ``{output}_model`` for a job with escalation stages or a cascade); with ``lineage``,
    ``{output}_model`` whatever the job and the other lineage columns; a ``scored`` job
    (token log-probabilities asked for) has ``{output}_score`` after ``{output}_error``
    (see :mod:`nbbatch.columns`, where each is declared)."""
    from . import columns

    return columns.names(output, response_format, staged=staged, lineage=lineage, scored=scored)


def _nothing() -> None:
    """The default progress callback: nobody listens."""


@dataclass(eq=False)
class JobContext:
    """A job's record, ledger, provider and session notes; see the module docstring."""

    record: dict[str, Any]
    provider: Provider
    ledger: Ledger
    #: The data submitted in this session (None when attached without it).
    data: Any = None
    # Injected so tests can run a 24-hour batch in milliseconds.
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    #: What this session last saw of each batch at the provider.
    infos: dict[str, BatchInfo] = field(default_factory=dict)
    #: What the job did or noticed in this session, oldest first.
    notes: list[Note] = field(default_factory=list)
    #: The failure-rate alert fired in this session.
    alert_raised: bool = False
    #: A cascade's escalate_when when it is a function: it lives in this session only
    #: (see nbbatch._escalate); a string one is in the job's policy.
    escalate_when: Callable[..., Any] | None = None
    #: What submit checks once a table planned in the background is planned (its
    #: budget...): see nbbatch._planning. Set by submit and attach, for this session.
    plan_checks: Callable[..., None] | None = None
    #: Plans the rows of an in-memory table recorded ``planning`` (set by submit, for
    #: this session: the rows live here); see nbbatch._planning.
    planner: Callable[..., Path] | None = None
    #: After the deadline (``on_deadline`` flex/realtime, see nbbatch._deadline): this
    #: session cancelled the open batches, and sent the unfinished rows.
    deadline_cancelled: bool = False
    deadline_sent: bool = False
    #: Called after each chunk is sent, so the views can show the upload's progress.
    on_progress: Callable[[], None] = _nothing
    #: Average prompt tokens per row, for pending estimates (computed once).
    prompt_tokens: float | None = None

    # -- the job's parameters ----------------------------------------------------------------
    @property
    def id(self) -> str:
        """The job id."""
        return str(self.record["id"])

    @property
    def provider_name(self) -> str:
        """``"openai"``, ``"anthropic"`` or ``"gemini"``."""
        return str(self.record["provider"])

    @property
    def model(self) -> str:
        """The model of stage 0."""
        return str(self.record["model"])

    @property
    def endpoint(self) -> str:
        """The provider endpoint the requests go to."""
        return str(self.record["endpoint"])

    @property
    def output(self) -> str:
        """The name of the output column."""
        return str(self.record["output"])

    @property
    def spec(self) -> RequestSpec:
        """The request parameters of stage 0."""
        return RequestSpec(**self.record["spec"])

    @property
    def policy(self) -> dict[str, Any]:
        """The job's failure policy: ``retries``, ``fallback``, ``alert_threshold``..."""
        return dict(self.record.get("policy") or {})

    @property
    def local(self) -> bool:
        """Whether the job runs in nbbatch's background emulator (``provider="local"``)."""
        return self.record.get("backend") == "local"

    @property
    def rerouting(self) -> bool:
        """Whether the job's deadline has passed and its unfinished rows go another way
        (``on_deadline`` flex or realtime, see nbbatch._deadline): nothing more is sent
        as a batch."""
        way = self.policy.get("on_deadline", "wait")
        due = self.record.get("deadline")
        return way in ("flex", "realtime") and due is not None and self.clock() >= float(due)

    @property
    def cancelled(self) -> bool:
        """Whether the job was cancelled (as this session last read its record)."""
        return self.record.get("status") == "cancelled"

    @property
    def stages(self) -> list[dict[str, Any]]:
        """The escalation stages started (1, 2, ...), as the ledger records them."""
        return self.ledger.stages(self.id)

    @property
    def planned_stages(self) -> int:
        """A cascade's models, or the stages started so far (1 for a job never escalated)."""
        cascade = self.policy.get("cascade") or {}
        return max(len(cascade.get("models") or ()), len(self.stages) + 1)

    @property
    def staged(self) -> bool:
        """Whether the job escalates (a cascade, or a stage started)."""
        return bool(self.policy.get("cascade")) or bool(self.stages)

    @property
    def scored(self) -> bool:
        """Whether the job's replies carry a score (``{output}_score``: token
        log-probabilities asked for, see ``providers.base.scored``)."""
        return _scored(self.spec)

    @property
    def models(self) -> list[str]:
        """The model of each stage started so far, stage 0 first."""
        return [self.stage_spec_dict(s)["model"] for s in range(len(self.stages) + 1)]

    def stage_spec_dict(self, stage: int) -> dict[str, Any]:
        """The request parameters of ``stage`` as recorded (0: the job's own)."""
        if stage == 0:
            return dict(self.record["spec"])
        for s in self.stages:
            if s["stage"] == stage:
                return dict(s["spec"])
        raise NbbatchError(f"internal error: job {self.id} has no stage {stage}", job_id=self.id)

    def stage_spec(self, stage: int) -> RequestSpec:
        """The request parameters of ``stage`` (0: the job's own)."""
        return self.spec if stage == 0 else RequestSpec(**self.stage_spec_dict(stage))

    def stage_salt(self, stage: int) -> str | None:
        """The request-hash salt of ``stage``'s parameters (None when not recorded)."""
        if stage == 0:
            return self.record.get("salt")
        return next((s["salt"] for s in self.stages if s["stage"] == stage), None)

    def tries(self, state: rowstore.RowState, positions: np.ndarray) -> np.ndarray:
        """How many times each leader at ``positions`` was sent in its current stage."""
        first = np.ones(len(self.stages) + 1, dtype=np.int64)
        for s in self.stages:
            first[s["stage"]] = s["first_attempt"]
        stage = state.stage[positions]
        return np.asarray(state.attempt[positions] - first[stage] + 1)

    def output_columns(self, lineage: bool = False) -> list[str]:
        """The columns ``merge`` adds for this job (with ``lineage``: see
        :func:`output_columns`)."""
        return output_columns(
            self.output,
            self.spec.response_format,
            staged=self.staged,
            lineage=lineage,
            scored=self.scored,
        )

    def prompt_hashes(self) -> list[str]:
        """The prompt version hash of each stage started so far, stage 0 first (see
        :func:`nbbatch._plan.prompt_version`)."""
        from ._plan import prompt_version

        template = str(self.record["template"])
        return [
            prompt_version(template, self.stage_spec_dict(s)) for s in range(len(self.stages) + 1)
        ]

    # -- rows ----------------------------------------------------------------------------------
    def row_state(self) -> rowstore.RowState:
        """The job's rows as the ledger has them now."""
        return self.ledger.row_state(self.id)

    def pending(self) -> int:
        """Rows still pending."""
        return int(self.ledger.counts(self.id).get("pending", 0))

    def rows_in_attempt(self, attempt: int) -> int:
        """Rows pending in ``attempt`` (leaders and the rows deduplicated onto them)."""
        state = self.row_state()
        pending = state.statuses() == rowstore.PENDING
        return int((pending & (state.follow(state.attempt) == attempt)).sum())

    # -- notes ---------------------------------------------------------------------------------
    def note(self, kind: str, text: str, attempt: int | None = None) -> None:
        """Keep a note for the views, without the ledger's history or the log."""
        self.notes.append(Note(self.clock(), kind, text, attempt=attempt))

    def warn(self, message: str, kind: str = "event", attempt: int | None = None) -> None:
        """Note ``message`` (with its time and kind, see ``snapshot.NOTE_KINDS``) for the
        views, the ledger's history and the log."""
        self.note(kind, message, attempt)
        self.ledger.event(self.id, "warning", message)
        log.warning("nbbatch job %s: %s", self.id, message)

    def warn_once(self, message: str, kind: str = "event", attempt: int | None = None) -> None:
        """:meth:`warn`, unless this very message was noted already."""
        if all(n.text != message for n in self.notes):
            self.warn(message, kind, attempt)

    def alert_text(self, counts: dict[str, int]) -> str | None:
        """The failure-rate alert for these counts, or None below the threshold."""
        return health.alert_text(counts, self.policy.get("alert_threshold"))

    def check_alert(self) -> None:
        """Raise the failure-rate alert (once a session) when the counts call for it."""
        alert = self.alert_text(self.ledger.counts(self.id))
        if alert is not None and not self.alert_raised:
            self.alert_raised = True
            self.warn(alert, "alert")

    def warn_if_running(self, what: str) -> None:
        """Warn that a job's answers are not all in yet, so an empty or partial result is
        not read as final."""
        pending = self.pending()
        if pending:
            warnings.warn(
                f"job {self.id} is still running: {pending:,} of {self.record['n_rows']:,} "
                f"rows are pending, so {what} shows only what has finished so far. "
                "job.wait() blocks until every row is done.",
                JobRunningWarning,
                stacklevel=3,
            )
