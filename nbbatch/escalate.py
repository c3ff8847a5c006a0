"""Escalation: some of a job's rows sent again on another model, as a stage of the job.

A job starts in stage 0, on its own request parameters. ``job.escalate(model=...,
where=...)`` starts stage 1, then 2...: the chosen rows are put back to be sent with the
stage's parameters (the job's, with another ``model`` and any overrides), recorded in the
ledger first (:meth:`~nbbatch.ledger.Ledger.add_stage`, one transaction), then sent,
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
- any other string: an expression ``merged.eval`` evaluates, e.g. ``"confidence < 0.7"``;
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

from . import rowstore
from ._errors import InputError, NbbatchError
from .providers.base import is_embeddings
from .snapshot import Note

if TYPE_CHECKING:
    from .job import BatchJob

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


def stage_spec(job: BatchJob, model: str, overrides: dict[str, Any]) -> dict[str, Any]:
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
    owner = next(
        (name for name, prefixes in providers._FAMILIES.items() if model.startswith(prefixes)),
        job.provider,  # a name of no known family: the provider's models endpoint decides
    )
    if owner != job.provider:
        raise InputError(
            f"model {model!r} is a model of {owner}, but job {job.id} runs on "
            f"{job.provider}: an escalation stays with the job's provider. Choose a model "
            f"of {job.provider}.",
            job_id=job.id,
        )
    spec = dict(job._record["spec"])
    spec["model"] = model
    params = dict(spec.get("params") or {})
    for key, value in overrides.items():
        if key in spec and key != "params":
            spec[key] = value
        else:
            params[key] = value
    spec["params"] = params
    checked = RequestSpec(**spec)
    provider = job._provider
    provider.validate(checked)
    provider.check_model(model)
    state = job._ledger.row_state(job.id)
    first = np.flatnonzero(state.is_leader)[:1]
    provider.encode(
        state.manifest_column("custom_id", first), state.manifest_column("prompt", first), checked
    )
    return checked.as_dict()


def mask_of(job: BatchJob, where: Where) -> np.ndarray:
    """``where`` evaluated: one bool per row of the job, in the merged order."""
    state = job._ledger.row_state(job.id)
    n = state.n
    if isinstance(where, str) and where == FAILED:
        status = state.statuses()
        return (status == rowstore.FAILED) | (status == rowstore.EXPIRED)
    if isinstance(where, str) or callable(where):
        frame = selection_frame(job)
        try:
            result = frame.eval(where) if isinstance(where, str) else where(frame)
        except Exception as exc:
            raise InputError(
                f"where={describe(where)!r} could not be evaluated on the merged DataFrame "
                f"(columns {list(frame.columns)}): {type(exc).__name__}: {exc}",
                job_id=job.id,
            ) from exc
    else:
        result = where
    if isinstance(result, pd.Series) and isinstance(job._data, pd.DataFrame | pd.Series):
        # A Series is taken by position; one indexed otherwise than the data (another
        # frame, a sorted copy) would choose the wrong rows.
        if not result.index.equals(job._data.index):
            raise InputError(
                "where is a Series whose index is not the submitted data's: its values would "
                "land on other rows. Build it from job.merge(), or pass .to_numpy() for a "
                "mask by position.",
                job_id=job.id,
            )
    if isinstance(result, pd.Series | pd.Index):
        values = result.to_numpy(dtype=object, na_value=False)
    else:
        values = np.asarray(result, dtype=object)
    if values.ndim != 1 or len(values) != n:
        raise InputError(
            f"where gave {values.size if values.ndim != 1 else len(values):,} values, but "
            f"job {job.id} has {n:,} rows: a mask needs one value per row of the merged "
            "DataFrame, in its order.",
            job_id=job.id,
        )
    if not all(isinstance(v, bool | np.bool_) for v in values):
        kinds = sorted({type(v).__name__ for v in values if not isinstance(v, bool | np.bool_)})
        raise InputError(
            f"where must give True or False for each row, found values of type {kinds}.",
            job_id=job.id,
        )
    return values.astype(bool)


def selection_frame(job: BatchJob) -> pd.DataFrame:
    """The merged DataFrame a ``where`` chooses rows by (pandas, whatever was
    submitted): the data of this session with the result columns, or, for a job
    attached without its data, the result columns alone (by position)."""
    import warnings

    from . import engines, merge
    from ._errors import JobRunningWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JobRunningWarning)
        # A Dask or Spark frame is not brought to the driver: its rows are chosen by
        # their result columns alone, as for a job attached without its data.
        if job._data is not None and engines.kind_of(job._data) is None:
            out: pd.DataFrame = merge.merge_job(job, job._data, verify=True, native=False)
            return out
        state = job._ledger.row_state(job.id)
        empty = pd.DataFrame(index=pd.RangeIndex(state.n))
        return merge.with_models(
            job,
            merge.merged(
                empty,
                state,
                np.arange(state.n),
                job.output,
                job.spec.response_format,
                embeddings=is_embeddings(job.endpoint),
            ),
            np.arange(state.n),
        )


def choose(job: BatchJob, where: Where, spec: dict[str, Any]) -> tuple[np.ndarray, int]:
    """The leaders to send in a new stage with parameters ``spec``, and how many rows
    they stand for: the rows ``where`` chooses that ended (succeeded, failed or
    expired), less those already answered with exactly these parameters."""
    mask = mask_of(job, where)
    state = job._ledger.row_state(job.id)
    status = state.statuses()
    ended = (status == rowstore.SUCCEEDED) | (status == rowstore.FAILED)
    ended |= status == rowstore.EXPIRED
    leaders = np.unique(state.leader[mask & ended])
    specs = [job.stage_spec_dict(s) for s in range(len(job.stages) + 1)]
    same = np.array([s == spec for s in specs])
    again = same[state.stage[leaders]] & (state.status[leaders] == rowstore.SUCCEEDED)
    leaders = leaders[~again]
    rows = int(np.isin(state.leader, leaders).sum()) if len(leaders) else 0
    return leaders, rows


def start_stage(
    job: BatchJob, model: str, where: Where, overrides: dict[str, Any], *, automatic: bool
) -> int:
    """Start the next stage: check everything, choose the rows, record the stage with
    them (one transaction), then send them in the background; returns the rows sent.

    A stage started by hand with no row to send is refused (``InputError``); a cascade's
    stage is recorded all the same (with no row), so the cascade knows it is done.
    """
    check_where(where)
    spec = stage_spec(job, model, overrides)
    leaders, rows = choose(job, where, spec)
    number = len(job.stages) + 1
    total = job.planned_stages
    if not len(leaders) and not automatic:
        raise InputError(
            f"no row to escalate: none of the {describe(where)} of job {job.id} ended in a "
            f"way that can be sent again (pending, skipped and cancelled rows cannot), or "
            f"they were already answered by {model} with these parameters. Nothing was sent.",
            job_id=job.id,
        )
    from . import plan as _plan

    state = job._ledger.row_state(job.id)
    local = job._record.get("backend") == "local"
    salt = _plan.spec_hash(spec, job.provider, "local" if local else str(job._record["base_url"]))
    attempt = int(state.attempt.max()) + 1
    record = {
        "stage": number,
        "spec": spec,
        "salt": salt,
        "first_attempt": attempt,
        "n_rows": rows,
        "reason": describe(where),
    }
    if not job._ledger.add_stage(job.id, record, leaders):
        if automatic:
            return 0  # another session started it first: it sends it
        raise NbbatchError(
            f"stage {number} of job {job.id} was started meanwhile by another session (or "
            "the job was cancelled): job.refresh() shows it; nothing was sent here.",
            job_id=job.id,
        )
    head = f"stage {number + 1} of {max(total, number + 1)}"
    if rows:
        # Current while the stage's first attempt has rows pending (see nbbatch.notes).
        text = f"{head}: {rows:,} rows on {model} ({describe(where)})"
        job._notes.append(Note(job.clock(), "resubmit", text, attempt=attempt))
        job._record["status"] = "running"
        job._logged_done = False
        job._send_error = None
        job.start_sending(daemon=job._daemon_sender())
    else:
        text = f"{head}: no row to send on {model} ({describe(where)})"
        job._notes.append(Note(job.clock(), "event", text))
    job._notify(job.snapshot())
    return rows


def cascade_next(job: BatchJob) -> None:
    """Start the cascade's next stage if the job has one left (see the module
    docstring); called when a stage has ended and its failure policy is done."""
    cascade = job.policy.get("cascade")
    if not cascade:
        return
    models = list(cascade["models"])
    done = len(job.stages)
    if done + 1 >= len(models):
        return
    when: Where = job._escalate_when if job._escalate_when is not None else cascade.get("when")
    if when is None:
        job._warn_once(
            f"the cascade's stage {done + 2} on {models[done + 1]} waits for its "
            "escalate_when function, which lives only in the session that submitted: "
            f"nb.attach({job.id!r}, escalate_when=fn) goes on with it",
        )
        return
    try:
        start_stage(job, models[done + 1], when, {}, automatic=True)
    except InputError as exc:
        job._warn_once(f"the cascade stopped before stage {done + 2}: {exc}")


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
