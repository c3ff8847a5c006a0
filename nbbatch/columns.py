"""The result columns a job adds to each row, each declared once.

``merge``, ``to_parquet``, the CLI's ``collect``, the Dask/Spark merge and the
real-time ``run`` all build their per-row columns with :func:`build`, and the panel and
:mod:`nbbatch.styling` find a column by its :class:`Role`, so a new per-row column is
one :class:`Column` in :data:`COLUMNS` (its name, role, dtype, which jobs have it and
how its values are computed from a job's rows) plus its tests.

A column is named from the job's output name and its ``suffix`` (``{output}_status``);
``job.results()`` has the same value under the column's ``results`` name (``status``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import states

if TYPE_CHECKING:
    from . import _rowstore as rowstore
    from ._context import JobContext


class Role(enum.Enum):
    """What a result column says about its row."""

    OUTPUT = "output"  # the answer (one column per field of a structured reply)
    STATUS = "status"  # the row's state (see nbbatch.states)
    ERROR = "error"  # why it did not succeed
    SCORE = "score"  # how sure the model was of its answer (token log-probabilities)
    LINEAGE = "lineage"  # where the answer comes from (model, prompt version, batch...)
    TIMING = "timing"  # when it came
    RAW = "raw"  # the structured reply as received


class Has(enum.Enum):
    """Which jobs' results have a column."""

    ALWAYS = "always"
    STAGED = "staged"  # a job with escalation stages or a cascade, or with lineage
    LINEAGE = "lineage"  # merge(lineage=True), to_parquet, collect
    STRUCTURED = "structured"  # a job with a response_format
    SCORED = "scored"  # a job that asked for token log-probabilities (score="logprobs")


class Rows:
    """The rows (at positions ``take`` of a job) that result columns are computed for:
    their status words, replies and error messages, and, for the lineage columns, the
    job and its row state."""

    def __init__(
        self,
        output: str,
        response_format: dict[str, Any] | None,
        status: Any,
        replies: Any,
        errors: Any,
        *,
        job: JobContext | None = None,
        state: rowstore.RowState | None = None,
        take: np.ndarray | None = None,
        scores: Any = None,
    ) -> None:
        self.output, self.response_format = output, response_format
        self.status, self.replies, self.errors = status, replies, errors
        self.job, self.state, self.take = job, state, take
        # Each row's score, for rows that are no job's (the real-time path, try_now);
        # a job's rows read theirs from the row state.
        self.scores = scores
        self._codes: np.ndarray | None = None

    @classmethod
    def of_state(
        cls,
        state: rowstore.RowState,
        take: np.ndarray,
        output: str,
        response_format: dict[str, Any] | None,
        *,
        embeddings: bool = False,
        statuses: np.ndarray | None = None,
        job: JobContext | None = None,
    ) -> Rows:
        """The rows at ``take`` of a job's row state; ``statuses``: every row's state
        code, when the caller has them (``state.statuses()``)."""
        import orjson
        import pyarrow as pa

        codes = state.statuses() if statuses is None else statuses
        status: Any = pa.array(states.STATES, pa.string()).take(pa.array(codes[take]))
        replies: Any = state.column("output", take)
        errors: Any = state.column("error", take)
        if embeddings:
            vectors = np.empty(len(replies), dtype=object)  # one list per row, not 2-D
            for i, v in enumerate(replies.to_pylist()):
                vectors[i] = None if v is None else orjson.loads(v)
            replies = vectors
        if response_format is not None:  # parsed field by field: plain arrays
            status, replies = status.to_numpy(zero_copy_only=False), _plain(replies)
        else:  # pandas' own string columns straight from Arrow, no Python object per row
            status, replies = status.to_pandas().array, _plain(replies)
        errors = errors.to_pandas().array
        rows = cls(
            output, response_format, status, replies, errors, job=job, state=state, take=take
        )
        rows._codes = codes[take]  # worked out already: not again for the lineage columns
        return rows

    def _job(self) -> tuple[JobContext, rowstore.RowState, np.ndarray]:
        if self.job is None or self.state is None or self.take is None:
            raise ValueError("internal error: lineage columns need the job's row state")
        return self.job, self.state, self.take

    @property
    def codes(self) -> np.ndarray:
        """Each row's state code."""
        if self._codes is None:
            _, state, take = self._job()
            self._codes = state.statuses()[take]
        return self._codes

    @cached_property
    def unsent(self) -> np.ndarray:
        """Rows without a result: pending, or never sent."""
        codes = self.codes
        return (codes == states.STATES.index(states.PENDING)) | (
            codes == states.STATES.index(states.SKIPPED)
        )

    @cached_property
    def stage(self) -> np.ndarray:
        """Each row's escalation stage (of its latest attempt)."""
        _, state, take = self._job()
        return state.follow(state.stage)[take]


def _output(rows: Rows) -> Any:
    """The reply, or one column per field of a structured ``response_format`` (the
    reply parsed; missing where the row did not succeed)."""
    if rows.response_format is None:
        return rows.replies
    from . import _structured as structured

    schema = structured.schema_of(rows.response_format)
    good = np.asarray(rows.status, dtype=object) == states.SUCCEEDED
    parsed = structured.parse_outputs(list(np.asarray(rows.replies, dtype=object)[good]), schema)
    values: list[dict[str, Any] | None] = [None] * len(rows.status)
    for i, v in zip(np.flatnonzero(good), parsed.values, strict=True):
        values[i] = v
    return structured.to_columns(values, schema)


def _score(rows: Rows) -> Any:
    """The probability of the reply's least likely token (see
    ``providers.base.SCORE_FIELD``); missing where the row has no reply or the reply
    no log-probabilities."""
    from . import _rowstore as rowstore

    if rows.scores is not None:
        return np.asarray(rows.scores, dtype=object)
    _, state, take = rows._job()
    return state.column(rowstore.SCORE.name, take).to_numpy(zero_copy_only=False)


def _model(rows: Rows) -> Any:
    """The model of the stage that answered the row."""
    job, _, _ = rows._job()
    models = np.array(job.models, dtype=object)[rows.stage]
    models[rows.unsent] = None
    return models


def _prompt_hash(rows: Rows) -> Any:
    """The version of template, system prompt and response_format of the stage that
    answered the row (see :func:`nbbatch._plan.prompt_version`)."""
    job, _, _ = rows._job()
    hashes = np.array(job.prompt_hashes(), dtype=object)[rows.stage]
    hashes[rows.unsent] = None
    return hashes


def _batch_id(rows: Rows) -> Any:
    """The provider's batch the answer came in; missing for an answer from the
    real-time fallback or reused from an earlier job."""
    from . import _rowstore as rowstore

    job, state, take = rows._job()
    names = {b["intent"]: b["batch_id"] for b in job.ledger.batches(job.id)}
    batch_names = np.array([*(names.get(k) for k in state.batch_keys), None], dtype=object)
    batch = state.follow(state.batch)[take]
    origin = state.follow(state.origin)[take]
    batch_ids = batch_names[np.where(batch < 0, len(batch_names) - 1, batch)]
    batch_ids[rows.unsent | (origin != rowstore.BATCH)] = None
    return batch_ids


def _attempt(rows: Rows) -> Any:
    """1 for the first send; later for retries and escalation stages; missing for a
    row never sent."""
    _, state, take = rows._job()
    attempt = pd.array(state.follow(state.attempt)[take].astype(np.int64), dtype="Int64")
    attempt[rows.codes == states.STATES.index(states.SKIPPED)] = pd.NA
    return attempt


def _latency(rows: Rows) -> Any:
    """Seconds from the job's submit to the moment the row's current result was
    recorded in the ledger (collected from its batch, answered in real time, or reused
    at submit); missing for a row pending or never sent. A retried or escalated row
    counts up to its latest result; a batch's results are recorded when a poll finds
    it ended, so the figure includes up to one poll interval of waiting."""
    job, state, take = rows._job()
    at = dict(
        job.ledger.query(
            "SELECT file, at FROM changes WHERE job_id = ? AND kind = 'result'", (job.id,)
        )
    )
    # state.results holds the result files in the order they were applied, each with
    # the path of its file: the file names the change, which says when it was recorded.
    recorded = np.array(
        [at.get(r.path.name, np.nan) if r.path is not None else np.nan for r in state.results]
        + [np.nan],
        dtype=np.float64,
    )
    ref = state.follow(state.ref_file)[take]
    seconds = recorded[ref] - float(job.record["created"])  # ref -1: the last, nan
    seconds[rows.unsent] = np.nan
    return seconds


@dataclass(frozen=True)
class Column:
    """One per-row result column."""

    suffix: str  # after the output name ("" for the answer itself)
    role: Role
    has: Has
    #: The pandas dtype the values are given (None: as computed, e.g. the reply's text,
    #: a structured field's type or an embedding's list).
    dtype: str | None
    #: How the values are computed from the rows; for a structured OUTPUT, a dict of
    #: one column per field.
    values: Callable[[Rows], Any]
    #: The same value's column in ``job.results()`` (None: not there).
    results: str | None = None

    def name(self, output: str) -> str:
        """The column's name for a job whose output name is ``output``."""
        return output + self.suffix


#: Every per-row result column, in the order they are added.
COLUMNS: tuple[Column, ...] = (
    Column("", Role.OUTPUT, Has.ALWAYS, None, _output, "output"),
    Column("_status", Role.STATUS, Has.ALWAYS, None, lambda r: r.status, "status"),
    Column("_error", Role.ERROR, Has.ALWAYS, None, lambda r: r.errors, "error"),
    Column("_score", Role.SCORE, Has.SCORED, "Float64", _score),
    Column("_model", Role.LINEAGE, Has.STAGED, "string", _model, "model"),
    Column("_prompt_hash", Role.LINEAGE, Has.LINEAGE, "string", _prompt_hash, "prompt_hash"),
    Column("_batch_id", Role.LINEAGE, Has.LINEAGE, "string", _batch_id, "batch_id"),
    Column("_attempt", Role.LINEAGE, Has.LINEAGE, "Int64", _attempt, "attempt"),
    Column("_latency_s", Role.TIMING, Has.LINEAGE, "Float64", _latency),
    Column("_raw", Role.RAW, Has.STRUCTURED, None, lambda r: r.replies),
)


def _has(column: Column, structured: bool, staged: bool, lineage: bool, scored: bool) -> bool:
    return {
        Has.ALWAYS: True,
        Has.SCORED: scored,
        Has.STAGED: staged or lineage,
        Has.LINEAGE: lineage,
        Has.STRUCTURED: structured,
    }[column.has]


def of_job(
    response_format: dict[str, Any] | None,
    *,
    staged: bool = False,
    lineage: bool = False,
    scored: bool = False,
) -> list[Column]:
    """The columns a job's results have, in order: the answer, ``_status``, ``_error``;
    ``_model`` for a job with escalation stages or a cascade; with ``lineage``,
    ``_model`` whatever the job and the other lineage and timing columns; ``_raw`` with
    a ``response_format``; ``_score`` for a ``scored`` job."""
    structured = response_format is not None
    return [c for c in COLUMNS if _has(c, structured, staged, lineage, scored)]


def names(
    output: str,
    response_format: dict[str, Any] | None,
    *,
    staged: bool = False,
    lineage: bool = False,
    scored: bool = False,
) -> list[str]:
    """The names of the columns :func:`of_job` lists (a structured reply's fields in
    place of the answer's column)."""
    return list(roles(output, response_format, staged=staged, lineage=lineage, scored=scored))


def roles(
    output: str,
    response_format: dict[str, Any] | None,
    *,
    staged: bool = False,
    lineage: bool = False,
    scored: bool = False,
) -> dict[str, Role]:
    """Each result column's name and role, in order (see :func:`of_job`)."""
    out: dict[str, Role] = {}
    for column in of_job(response_format, staged=staged, lineage=lineage, scored=scored):
        if column.role is Role.OUTPUT and response_format is not None:
            from . import _structured as structured

            fields = structured.columns_of(structured.schema_of(response_format))
            out.update(dict.fromkeys(fields, Role.OUTPUT))
        else:
            out[column.name(output)] = column.role
    return out


def build(
    rows: Rows, *, staged: bool = False, lineage: bool = False, scored: bool = False
) -> dict[str, Any]:
    """Every result column's values for ``rows``, by name, in order."""
    out: dict[str, Any] = {}
    for column in of_job(rows.response_format, staged=staged, lineage=lineage, scored=scored):
        values = column.values(rows)
        if isinstance(values, dict):  # a structured reply's fields
            out.update(values)
            continue
        out[column.name(rows.output)] = (
            values if column.dtype is None else pd.array(values, dtype=column.dtype)
        )
    return out


def column_of(role: Role) -> Column:
    """The (first) column of ``role``."""
    return next(c for c in COLUMNS if c.role is role)


def name_of(role: Role, output: str | None) -> str:
    """The name of the column of ``role`` (STATUS, ERROR...) for output name
    ``output``; with ``output=None``, its name in ``job.results()``."""
    column = column_of(role)
    if output is None:
        assert column.results is not None
        return column.results
    return column.name(output)


def output_of(status: str) -> str | None:
    """The output name a status column belongs to (``x_status`` -> ``x``), or None for
    ``job.results()``'s ``status`` or a column that is no status column."""
    suffix = column_of(Role.STATUS).suffix
    return status[: -len(suffix)] if status.endswith(suffix) else None


def _plain(values: Any) -> Any:
    """An Arrow array as pandas takes it (numpy object arrays pass through)."""
    import pyarrow as pa

    return values.to_pandas().array if isinstance(values, pa.Array) else values
