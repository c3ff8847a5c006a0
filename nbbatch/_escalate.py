"""Escalation: some of a job's rows sent again on another model, as a stage of the job.

A job starts in stage 0, on its own request parameters. ``job.escalate(model=...,
where=...)`` starts stage 1, then 2...: the chosen rows are put back to be sent with the
stage's parameters (the job's, with another ``model`` and any overrides), recorded in the
ledger first (:meth:`~nbbatch._ledger.Ledger.add_stage`, one transaction), then sent,
collected and retried like any other rows. A row's result is that of its latest stage,
and ``merge`` names the model that gave it in ``{output}_model``. Each stage's tokens are
priced on its own model; an answer a later stage replaced was paid all the same, and
stays in the cost.

A cascade (``nb.submit(model=["gpt-4o-mini", "gpt-4o"], escalate_when=...)``) starts the
next stage by itself when one ends: :func:`cascade_next`, called once no batch is open
and the failure policy (retries, fallback) is done. What chooses its rows is kept in the
ledger when it can be ("failed", or an expression), so a new session that attaches goes
on with the cascade; a function lives only in the session that gave it (pass it again
with ``nb.attach(job_id, escalate_when=fn)``).

``where`` chooses rows by the merged DataFrame (pandas; the data submitted plus the
result columns, or only the result columns when the job was attached without its data):

- ``"failed"``: rows that ended ``failed`` or ``expired``;
- a function ``fn(merged) -> mask``, e.g. ``lambda out: out["confidence"] < 0.7``;
- any other string: an expression on its columns, e.g. ``"confidence < 0.7"``, parsed and
  evaluated by :mod:`nbbatch._expr` (never run as code: only column names, constants,
  comparisons, boolean operators and arithmetic), and checked when it is given;
- a boolean mask (array, list or Series) with one value per row, in the merged order.

Only rows that ended can be chosen (not pending, skipped or cancelled ones), and a row
already answered in a stage with exactly these parameters is not sent again: nothing is
paid twice for the same request. Rows whose request is identical (deduplicated) go
together, as they were sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import _expr, states
from . import _rowstore as rowstore
from ._errors import InputError, NbbatchError
from .providers.base import is_embeddings

if TYPE_CHECKING:
    from ._context import JobContext

#: The ``where`` that chooses the rows that ended failed or expired.
FAILED = "failed"
#: Request parameters an escalation keeps as they are: the result columns and the
#: endpoint are the job's.
FIXED = ("response_format", "endpoint")

Where = Any  # "failed" | str expression | Callable[[pd.DataFrame], mask] | mask


def check_where(where: Where) -> None:
    """Refuse, before anything is sent, a ``where`` of no kind above."""
    if isinstance(where, str):
        if not where.strip():
            raise InputError(
                "where must not be empty: 'failed', an expression, a function or a mask."
            )
        if where != FAILED:
            _expr.parse(where)  # refuses anything but a plain expression, before use
        return
    if callable(where) or isinstance(where, (pd.Series, np.ndarray, list, tuple, pd.Index)):
        return
    raise InputError(
        f"where must be 'failed', an expression such as 'confidence < 0.7', a function of "
        f"the merged DataFrame or a boolean mask, found {type(where).__name__}."
    )


def describe(where: Where) -> str:
    """What chose the rows, in a few words (the panel, the ledger's history)."""
    if isinstance(where, str):
        return "failed or expired rows" if where == FAILED else f"rows where {where}"
    if callable(where):
        return f"rows chosen by {getattr(where, '__name__', 'a function')}"
    return "rows chosen by a mask"


def storable(where: Where) -> str | None:
    """``where`` as the ledger keeps it for a cascade (None: a function or a mask,
    which live only in the session that gave them)."""
    return where if isinstance(where, str) else None


def stage_spec(ctx: JobContext, model: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The request parameters of a new stage: the job's own, with ``model`` and
    ``overrides``, checked as ``submit`` checks them (parameters, model at the provider,
    one request encoded) before anything is sent."""
    from . import providers
    from .providers.base import RequestSpec

    if not isinstance(model, str) or not model:
        raise InputError("model must be a non-empty string, e.g. model='gpt-4o'.")
    fixed = [k for k in (*FIXED, "model") if k in overrides]
    if fixed:
        raise InputError(
            f"an escalation keeps the job's {', '.join(fixed)}: the result columns must "
            "stay the same (pass model= for the model). Submit a new job to change them."
        )
    # A name of no known family: the provider's models endpoint decides.
    owner = providers.family_of(model) or ctx.provider_name
    if owner != ctx.provider_name:
        raise InputError(
            f"model {model!r} is a model of {owner}, but job {ctx.id} runs on "
            f"{ctx.provider_name}: an escalation stays with the job's provider. Choose a model "
            f"of {ctx.provider_name}.",
            job_id=ctx.id,
        )
    spec = dict(ctx.record["spec"])
    spec["model"] = model
    params = dict(spec.get("params") or {})
    for key, value in overrides.items():
        if key in spec and key != "params":
            spec[key] = value
        else:
            params[key] = value
    spec["params"] = params
    checked = RequestSpec(**spec)
    provider = ctx.provider
    provider.validate(checked)
    provider.check_model(model)
    state = ctx.ledger.row_state(ctx.id)
    first = np.flatnonzero(state.is_leader)[:1]
    provider.encode(
        state.manifest_column("custom_id", first), state.manifest_column("prompt", first), checked
    )
    return checked.as_dict()


def mask_of(ctx: JobContext, where: Where) -> np.ndarray:
    """``where`` evaluated: one bool per row of the ctx, in the merged order."""
    state = ctx.ledger.row_state(ctx.id)
    n = state.n
    if isinstance(where, str) and where == FAILED:
        status = state.statuses()
        return (status == rowstore.FAILED) | (status == rowstore.EXPIRED)
    if isinstance(where, str):
        frame = selection_frame(ctx)
        try:
            result = _expr.parse(where).evaluate(frame)
        except InputError as exc:
            exc.job_id = ctx.id
            raise
        except Exception as exc:  # a value pandas cannot compare, say
            raise InputError(
                f"where={where!r} could not be evaluated on the merged DataFrame: "
                f"{type(exc).__name__}: {exc}",
                job_id=ctx.id,
            ) from exc
    elif callable(where):
        frame = selection_frame(ctx)
        try:
            result = where(frame)
        except Exception as exc:
            raise InputError(
                f"where={describe(where)!r} could not be evaluated on the merged DataFrame "
                f"(columns {list(frame.columns)}): {type(exc).__name__}: {exc}",
                job_id=ctx.id,
            ) from exc
    else:
        result = where
    if isinstance(result, pd.Series) and isinstance(ctx.data, pd.DataFrame | pd.Series):
        # A Series is taken by position; one indexed otherwise than the data (another
        # frame, a sorted copy) would choose the wrong rows.
        if not result.index.equals(ctx.data.index):
            raise InputError(
                "where is a Series whose index is not the submitted data's: its values would "
                "land on other rows. Build it from job.merge(), or pass .to_numpy() for a "
                "mask by position.",
                job_id=ctx.id,
            )
    if isinstance(result, pd.Series | pd.Index):
        values = result.to_numpy(dtype=object, na_value=False)
    else:
        values = np.asarray(result, dtype=object)
    if values.ndim != 1 or len(values) != n:
        raise InputError(
            f"where gave {values.size if values.ndim != 1 else len(values):,} values, but "
            f"job {ctx.id} has {n:,} rows: a mask needs one value per row of the merged "
            "DataFrame, in its order.",
            job_id=ctx.id,
        )
    if not all(isinstance(v, bool | np.bool_) for v in values):
        kinds = sorted({type(v).__name__ for v in values if not isinstance(v, bool | np.bool_)})
        raise InputError(
            f"where must give True or False for each row, found values of type {kinds}.",
            job_id=ctx.id,
        )
    return values.astype(bool)


def selection_frame(ctx: JobContext) -> pd.DataFrame:
    """The merged DataFrame a ``where`` chooses rows by (pandas, whatever was
    submitted): the data of this session with the result columns, or, for a job
    attached without its data, the result columns alone (by position)."""
    import warnings

    from . import _engines as engines
    from . import _merge as merge
    from ._errors import JobRunningWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JobRunningWarning)
        # A Dask or Spark frame is not brought to the driver: its rows are chosen by
        # their result columns alone, as for a job attached without its data.
        if ctx.data is not None and engines.kind_of(ctx.data) is None:
            out: pd.DataFrame = merge.merge_job(ctx, ctx.data, verify=True, native=False)
            return out
        state = ctx.ledger.row_state(ctx.id)
        empty = pd.DataFrame(index=pd.RangeIndex(state.n))
        return merge.merged(
            empty,
            state,
            np.arange(state.n),
            ctx.output,
            ctx.spec.response_format,
            embeddings=is_embeddings(ctx.endpoint),
            job=ctx,
        )


def choose(ctx: JobContext, where: Where, spec: dict[str, Any]) -> tuple[np.ndarray, int]:
    """The leaders to send in a new stage with parameters ``spec``, and how many rows
    they stand for: the rows ``where`` chooses that ended (succeeded, failed or
    expired), less those already answered with exactly these parameters."""
    mask = mask_of(ctx, where)
    state = ctx.ledger.row_state(ctx.id)
    status = state.statuses()
    ended = (status == rowstore.SUCCEEDED) | (status == rowstore.FAILED)
    ended |= status == rowstore.EXPIRED
    leaders = np.unique(state.leader[mask & ended])
    specs = [ctx.stage_spec_dict(s) for s in range(len(ctx.stages) + 1)]
    same = np.array([s == spec for s in specs])
    again = same[state.stage[leaders]] & (state.status[leaders] == rowstore.SUCCEEDED)
    leaders = leaders[~again]
    rows = int(np.isin(state.leader, leaders).sum()) if len(leaders) else 0
    return leaders, rows


def check_can_escalate(ctx: JobContext, *, sending: bool) -> None:
    """An escalation starts from a job that has ended, not cancelled: rows still
    pending would otherwise be chosen (or not) on answers that are not in yet."""
    if ctx.cancelled:
        raise InputError(
            f"job {ctx.id} was cancelled; submit a new job instead of escalating it.",
            job_id=ctx.id,
        )
    pending = int(ctx.ledger.counts(ctx.id).get("pending", 0))
    if pending or sending:
        raise InputError(
            f"job {ctx.id} is still running ({pending:,} rows pending): escalate once it "
            "has ended (job.wait()), so the rows are chosen on their final answers. "
            "Nothing was sent.",
            job_id=ctx.id,
        )


def start_stage(
    ctx: JobContext, model: str, where: Where, overrides: dict[str, Any], *, automatic: bool
) -> int:
    """Start the next stage: check everything, choose the rows, record the stage with
    them (one transaction) and put them back to be sent; returns how many rows wait to
    be sent (the job then sends them in the background, and tells its views).

    A stage started by hand with no row to send is refused (``InputError``); a cascade's
    stage is recorded all the same (with no row), so the cascade knows it is done.
    """
    check_where(where)
    spec = stage_spec(ctx, model, overrides)
    leaders, rows = choose(ctx, where, spec)
    number = len(ctx.stages) + 1
    total = ctx.planned_stages
    if not len(leaders) and not automatic:
        raise InputError(
            f"no row to escalate: none of the {describe(where)} of job {ctx.id} ended in a "
            f"way that can be sent again (pending, skipped and cancelled rows cannot), or "
            f"they were already answered by {model} with these parameters. Nothing was sent.",
            job_id=ctx.id,
        )
    from . import _plan

    state = ctx.ledger.row_state(ctx.id)
    local = ctx.record.get("backend") == "local"
    salt = _plan.spec_hash(
        spec, ctx.provider_name, "local" if local else str(ctx.record["base_url"])
    )
    attempt = int(state.attempt.max()) + 1
    record = {
        "stage": number,
        "spec": spec,
        "salt": salt,
        "first_attempt": attempt,
        "n_rows": rows,
        "reason": describe(where),
    }
    if not ctx.ledger.add_stage(ctx.id, record, leaders):
        if automatic:
            return 0  # another session started it first: it sends it
        raise NbbatchError(
            f"stage {number} of job {ctx.id} was started meanwhile by another session (or "
            "the job was cancelled): job.refresh() shows it; nothing was sent here.",
            job_id=ctx.id,
        )
    head = f"stage {number + 1} of {max(total, number + 1)}"
    if rows and (ctx.policy.get("cascade") or {}).get("reuse"):
        reuse_answers(ctx, leaders, number)
    if rows:
        # Current while the stage's first attempt has rows pending (see nbbatch.notes).
        text = f"{head}: {rows:,} rows on {model} ({describe(where)})"
        ctx.note("resubmit", text, attempt)
        ctx.record["status"] = "running"
    else:
        ctx.note("event", f"{head}: no row to send on {model} ({describe(where)})")
    return rows


def reuse_answers(ctx: JobContext, leaders: np.ndarray, stage: int) -> int:
    """Give the ``leaders`` just put back in ``stage`` the answers of identical requests
    (this stage's parameters, the same prompt) that succeeded in earlier jobs, as
    ``reused`` results, so they are not sent (and paid) again: a calibrated cascade's
    pilot rows escalated to the model the pilot already ran them on. Returns how many."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from . import _plan as plan

    # This stage's request hashes of the leaders' prompts, as collect records them.
    salt = ctx.stage_salt(stage)
    if salt is None or not len(leaders):
        return 0
    prompts = ctx.ledger.row_state(ctx.id).manifest_column("prompt", leaders)
    wanted = plan.prompt_hashes(prompts, salt)
    answers = ctx.ledger.answers(wanted)
    if answers.num_rows == 0:
        return 0
    where = pc.index_in(pa.array(wanted, pa.uint64()), value_set=answers.column("request_hash"))
    found = where.is_valid().to_numpy(zero_copy_only=False)
    table = answers.take(where.filter(pa.array(found)))
    table = table.set_column(0, "position", pa.array(leaders[found], pa.int64()))
    n = int(found.sum())
    ctx.ledger.record_results(
        ctx.id, None, table, f"stage {stage}: {n} rows answered in earlier jobs reused", "reused"
    )
    return n


def _cascade_when(ctx: JobContext) -> Where | None:
    """What chooses the rows of the cascade's next stage in this session: the function
    given to this session, else what the ledger keeps (None: a function not given)."""
    cascade = ctx.policy.get("cascade") or {}
    return ctx.escalate_when if ctx.escalate_when is not None else cascade.get("when")


def stage_due(ctx: JobContext) -> bool:
    """Whether this session has a cascade stage still to start: a model is left, the job
    was neither cancelled nor stopped in error, and this session knows what chooses the
    rows. While it is due the job is not finished (``wait()`` goes on), even when every
    row of the current stage is terminal already (all reused from earlier jobs, say)."""
    cascade = ctx.policy.get("cascade")
    if not cascade or ctx.record.get("status") in ("cancelled", FAILED_JOB):
        return False
    return len(ctx.stages) + 1 < len(cascade["models"]) and _cascade_when(ctx) is not None


def cascade_next(ctx: JobContext) -> int:
    """Start the cascade's next stage if the job has one left (see the module
    docstring); called when a stage has ended and its failure policy is done. Returns
    the rows the new stage put back to be sent (0: none, or no stage started). When the
    rows cannot be chosen (an expression or function that fails on the results), the job
    ends ``failed``, in the ledger too, and ``wait()`` raises why."""
    cascade = ctx.policy.get("cascade")
    if not cascade or ctx.record.get("status") in ("cancelled", FAILED_JOB):
        return 0
    models = list(cascade["models"])
    done = len(ctx.stages)
    if done + 1 >= len(models):
        check_calibration_end(ctx, cascade)
        return 0
    when = _cascade_when(ctx)
    if when is None:
        ctx.warn_once(
            f"the cascade's stage {done + 2} on {models[done + 1]} waits for its "
            "escalate_when function, which lives only in the session that submitted: "
            f"nb.attach({ctx.id!r}, escalate_when=fn) goes on with it",
        )
        return 0
    try:
        rows = start_stage(ctx, models[done + 1], when, {}, automatic=True)
        check_calibration(ctx, cascade, done, rows)
        return rows
    except InputError as exc:
        _fail(ctx, done + 2, models[done + 1], when, exc)
        return 0


def check_calibration(ctx: JobContext, cascade: dict[str, Any], done: int, rows: int) -> None:
    """For a calibrated cascade (``escalate_when="auto"``) whose second stage just
    started with ``rows`` rows: a note comparing the share escalated with the pilot's
    expectation (an alert when it is off by more than the pilot's error allows)."""
    from ._calibrate import Calibration, realised_note

    kept = cascade.get("calibration")
    if not kept or done != 0:
        return
    # Every row sent was answered by the first stage (the cascade goes on once it has
    # ended): the rows escalated are pending again now, or answered (reused) already.
    counts = ctx.ledger.counts(ctx.id)
    answered = sum(
        int(counts.get(k, 0)) for k in states.STATES if k not in (states.SKIPPED, states.CANCELLED)
    )
    text, off = realised_note(Calibration.from_dict(kept), rows, answered)
    if text and off:
        ctx.warn(text, "alert")
    elif text:
        ctx.note("event", text)


def check_calibration_end(ctx: JobContext, cascade: dict[str, Any]) -> None:
    """For a calibrated cascade that has ended: a note (once a session) on its answers
    on the pilot's rows against the large model's pilot answers (an alert when they
    agree otherwise than the pilot expected)."""
    from ._calibrate import Calibration, noted_sample, sample_note

    kept = cascade.get("calibration")
    if not kept or noted_sample(ctx):
        return
    found = sample_note(ctx, Calibration.from_dict(kept))
    if found is None:
        return
    text, off = found
    if off:
        ctx.warn(text, "alert")
    else:
        ctx.note("event", text)


#: The ledger's status of a job whose cascade stopped in error, and its event kind.
FAILED_JOB = "failed"
_FAILED_EVENT = "cascade_failed"


def _fail(ctx: JobContext, number: int, model: str, when: Where, exc: InputError) -> None:
    """End the job in error: its cascade could not start stage ``number`` (its rows
    could not be chosen, or the model was refused meanwhile).
    Recorded in the ledger (status and the reason in its history) so every session and
    ``nbbatch jobs`` see it; the rows keep the results they have."""
    text = (
        f"the cascade stopped before stage {number} on {model} ({describe(when)}): "
        f"{str(exc).rstrip('. ')}. The results so far are kept; to go on, choose the rows "
        f"yourself: job.escalate({model!r}, where=...)."
    )
    ctx.record["status"] = FAILED_JOB
    ctx.ledger.set_job_status(ctx.id, FAILED_JOB)
    ctx.ledger.event(ctx.id, _FAILED_EVENT, text)
    ctx.warn_once(text, "alert")


def failure(ctx: JobContext) -> str | None:
    """Why the job ended ``failed`` (as any session recorded it), or None."""
    if ctx.record.get("status") != FAILED_JOB:
        return None
    rows = ctx.ledger.query(
        "SELECT message FROM events WHERE job_id = ? AND kind = ? ORDER BY at DESC LIMIT 1",
        (ctx.id, _FAILED_EVENT),
    )
    return str(rows[0][0]) if rows else f"job {ctx.id} ended failed"


def raise_if_failed(ctx: JobContext, snap: Any) -> None:
    """Raise :class:`~nbbatch.NbbatchError` for a job that ended ``failed``."""
    if snap.status == FAILED_JOB:
        raise NbbatchError(f"job {ctx.id}: {failure(ctx)}", job_id=ctx.id)


def batch_stages(
    ctx: JobContext, batches: list[dict[str, Any]]
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """For the views: a function giving a batch's stage, that stage's model and how
    many times its rows were sent before in that stage (its retry number)."""
    if not any(int(b.get("stage") or 0) for b in batches):
        return lambda b: {}  # no escalation: the batches are attempts of the job
    info = {int(s["stage"]): (s["spec"]["model"], int(s["first_attempt"])) for s in ctx.stages}

    def of(batch: dict[str, Any]) -> dict[str, Any]:
        stage = int(batch.get("stage") or 0)
        if stage == 0:
            return {}
        model, first = info.get(stage, ("", int(batch["attempt"])))
        return {"stage": stage, "model": model, "retry": int(batch["attempt"]) - first}

    return of


def job_models(record: dict[str, Any], stages: list[dict[str, Any]]) -> list[str]:
    """Each stage's model in order, for a job of the ledger: a cascade's models (those
    to come included), and the models of stages started by hand after them."""
    policy = record.get("policy") or {}
    if isinstance(policy, str):
        import orjson

        policy = orjson.loads(policy)
    started = [record["model"], *(s["spec"]["model"] for s in stages)]
    cascade = list((policy.get("cascade") or {}).get("models") or ())
    return [*cascade, *started[len(cascade) :]] if cascade else started


def check_when_columns(
    when: str | None,
    columns: list[Any],
    output: str,
    response_format: dict[str, Any] | None,
    scored: bool = False,
) -> None:
    """Refuse at submit a cascade's ``escalate_when`` expression that names a column the
    merged DataFrame of its first stage will not have: the data's ``columns`` plus the
    result columns (structured output's fields, ``{output}_status``, ``{output}_score``
    when ``scored``...). Found now, it costs nothing; found after stage 1, that stage
    would be paid for nothing."""
    if when is None or when == FAILED:
        return
    from ._context import output_columns

    have = [*columns, *output_columns(output, response_format, staged=True, scored=scored)]
    _expr.parse(when).check_columns(
        have, "the merged DataFrame (the data's columns and the result columns)"
    )


def escalate_when_of(value: Any) -> tuple[str | None, Callable[..., Any] | None]:
    """``escalate_when`` as the ledger keeps it (a string) and as this session keeps it
    (a function); a mask cannot choose rows of results that do not exist yet."""
    if isinstance(value, str):
        check_where(value)
        return value, None
    if callable(value):
        return None, value
    raise InputError(
        "escalate_when must be 'failed', an expression such as 'confidence < 0.7', or a "
        f"function of the merged DataFrame, found {type(value).__name__}."
    )
