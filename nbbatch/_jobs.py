"""The jobs already in the ledger: ``nb.attach``, ``nb.jobs``, ``nb.ledger_path`` and
``nb.compare``, and the listing's cost and unreadable-record texts the CLI and the sidebar
share.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import orjson
import pandas as pd

from . import _health, _planning, pricing
from . import providers as _providers
from . import states as _states
from ._errors import InputError, JobNotFoundError
from ._ledger import Ledger
from ._ledger import default as _default_ledger
from ._ledger import home as _ledger_home
from .job import (
    LOCAL_POLLING,
    REMOTE_POLLING,
    BatchJob,
    is_loopback,
)
from .providers.base import Provider, RequestSpec

if TYPE_CHECKING:
    from ._comparison import Comparison
from . import _inputs

log = logging.getLogger("nbbatch")


def attach(
    job_id: str,
    *,
    client: Any = None,
    data: pd.DataFrame | pd.Series | None = None,
    escalate_when: Any = None,
) -> BatchJob:
    """Rebuild a job from the ledger (also in a new kernel) and carry on with it.

    The job talks to the same provider endpoint as before, with ``client`` if given, else
    with a key meant for that endpoint only: the environment variable its key came from
    at submit, or, for a job whose key was given on ``client=``, the environment's key
    when it is that same key (a private emulator on a loopback address gets a placeholder
    key); otherwise :class:`ConfigError` asks for ``client=``. A ``provider="local"`` job
    talks to nbbatch's background emulator wherever it answers now (started if it does
    not run).
    ``data`` (optional) is the DataFrame the job was submitted with, so ``merge()`` works
    without arguments. A cascade goes on by itself where it was left (its next stage
    starts when the current one ends); one whose ``escalate_when`` was a function needs
    it again here, ``escalate_when=fn`` (a function is not kept in the ledger).
    """
    ledger = _default_ledger()
    record = ledger.job(job_id)
    if record is None:
        raise JobNotFoundError(
            f"No job {job_id!r} in the ledger ({ledger.path}): `nbbatch jobs` (or nb.jobs()) "
            "lists the jobs it holds; set NBBATCH_HOME if the job was submitted with another "
            "ledger."
        )
    name = record["provider"]
    background = record.get("backend") == "local"
    local = background or is_loopback(record.get("base_url"))
    if client is None:
        # Only a key meant for the recorded address (or the emulator's placeholder).
        client = _providers.rebuild_client(record, _ledger_home())
    impl = _providers.build(name, client)
    plan_checks = None
    if record["status"] == _planning.PLANNING:  # planned again here if its planner died
        policy = record["policy"]
        plan_checks = _inputs.plan_checks(
            impl, RequestSpec(**record["spec"]), (policy.get("cascade") or {}).get("models")
            or [record["model"]], policy.get("max_cost"),
            ledger if policy.get("reuse", True) else None, pack=policy.get("pack"),
            template=record["template"],
        )  # fmt: skip
    when_fn = None if escalate_when is None else _escalate_when_again(record, escalate_when)
    polling = LOCAL_POLLING if local else REMOTE_POLLING
    return BatchJob(
        record, impl, ledger, data=data, polling=polling, escalate_when=when_fn,
        plan_checks=plan_checks,
    )  # fmt: skip


def _escalate_when_again(record: dict[str, Any], escalate_when: Any) -> Any:
    """A cascade's ``escalate_when`` function, given again to ``attach`` (a function
    is not kept in the ledger): refused for a job that is no cascade, or a string."""
    from . import _escalate

    if not record["policy"].get("cascade"):
        raise InputError(
            f"job {record['id']} is not a cascade: escalate_when has nothing to do; use "
            "job.escalate(model=..., where=...) to send rows on another model."
        )
    _, when_fn = _escalate.escalate_when_of(escalate_when)
    if when_fn is None:
        raise InputError(
            "escalate_when given to nb.attach must be a function (a string one is "
            "kept in the ledger already)."
        )
    return when_fn


def ledger_path() -> Path:
    """The ledger file this process uses: ``$NBBATCH_HOME/ledger.sqlite3``, else in the
    user data directory (``~/.local/share/nbbatch`` on Linux)."""
    return _ledger_home() / "ledger.sqlite3"


def jobs(ledger: Ledger | None = None) -> pd.DataFrame:
    """Every job in the ledger, newest first: id, created, provider, model, rows, status,
    the row counts per state, ``cost``: dollars paid so far at the batch price, from
    the token usage the results reported (NaN for a model with no known price), the
    ``deadline`` given to submit (NaT for none) and whether the job is ``overdue``
    (rows still pending after it). ``model`` names each stage's model in order for a
    job that escalates (``gpt-4o-mini -> gpt-4o``); ``status`` is ``failed`` for a
    cascade that could not choose the rows of its next stage."""

    ledger = ledger or _default_ledger()
    records = ledger.jobs()
    now = time.time()
    table = []
    for r in records:
        try:
            table.append(_listed(ledger, r, now))
        except Exception as exc:  # one broken record must not hide the others
            table.append(_unreadable(r, exc))
    columns = ["id", "created", "provider", "model", "rows", "status", *_states.SHOWN, "cost",
               "deadline", "overdue"]  # fmt: skip
    return pd.DataFrame(table, columns=columns)


#: The status ``nb.jobs()``, ``nbbatch jobs`` and the sidebar give a job whose ledger
#: record cannot be read (a damaged file, or a value an older version let through).
UNREADABLE = "unreadable"


def unreadable_text(job_id: str, exc: BaseException) -> str:
    """Why a job cannot be handled, and what to do, for the CLI and the sidebar."""
    return (
        f"the ledger's record of job {job_id} cannot be read ({type(exc).__name__}: {exc}); "
        f"the other jobs are not affected. Remove it with `nbbatch forget {job_id} --force`."
    )


def _unreadable(record: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """A listing row for a job whose record is broken: what can be read of it."""
    log.warning("nbbatch: %s", unreadable_text(str(record.get("id")), exc))
    created = record.get("created")
    return {
        "id": record.get("id"),
        "created": pd.Timestamp(created, unit="s", tz="UTC")
        if isinstance(created, int | float)
        else pd.NaT,
        "provider": _shown_provider(record) if isinstance(record.get("provider"), str) else None,
        "model": record.get("model"),
        "rows": record.get("n_rows") if isinstance(record.get("n_rows"), int) else 0,
        "status": UNREADABLE,
        **dict.fromkeys(_states.SHOWN, 0),
        "cost": float("nan"),
        "deadline": pd.NaT,
        "overdue": False,
    }


def _listed(ledger: Ledger, r: dict[str, Any], now: float) -> dict[str, Any]:
    """One job's row of :func:`jobs`."""
    c = r["summary"].get("counts", {})
    paid = r["summary"].get("usage", {}).get("batch", (0, 0, 0, 0))
    pending = c.get("pending", 0)
    ended = r["status"] if r["status"] in ("cancelled", "failed") else "completed"
    status = "running" if pending else ended
    from . import _escalate
    from .snapshot import models_text as _models_text

    staged = "stages" in r["summary"] or "cascade" in orjson.loads(r.get("policy") or "{}")
    stages = ledger.stages(r["id"]) if staged else []
    return {
        "id": r["id"],
        "created": pd.Timestamp(r["created"], unit="s", tz="UTC"),
        "provider": _shown_provider(r),
        # A job that escalates: each stage's model in order (gpt-4o-mini -> gpt-4o).
        "model": _models_text(_escalate.job_models(r, stages)) if staged else r["model"],
        "rows": r["n_rows"],
        "status": status,
        **{s: c.get(s, 0) for s in _states.TERMINAL},
        "pending": pending,
        "cost": _paid(r["provider"], r["model"], tuple(paid[:3]))
        if "stages" not in r["summary"]
        else _paid_stages(ledger, r),
        "deadline": pd.Timestamp(r["deadline"], unit="s", tz="UTC")
        if r.get("deadline") is not None
        else pd.NaT,
        "overdue": _health.overdue_text(r.get("deadline"), pending, now) is not None,
    }


def _shown_provider(record: dict[str, Any]) -> str:
    """The provider as people should read it: ``local`` for a job run on nbbatch's
    emulator (its wire format is still the named provider's), so emulator runs are never
    taken for real spending."""
    return "local" if record.get("backend") == "local" else str(record["provider"])


def estimated_cost(ledger: Ledger, job_id: str) -> float | None:
    """A running job's batch cost as its panel shows it: what its finished rows paid plus
    an estimate for the rows still pending. Reads the ledger only (no provider call);
    None when the price or the job is unknown."""
    record = ledger.job(job_id)
    if record is None:
        return None
    # No client: the snapshot reads the ledger alone.
    return BatchJob(record, cast("Provider", None), ledger).snapshot().cost.batch


def _paid_stages(ledger: Ledger, record: dict[str, Any]) -> float:
    """Dollars paid at batch price by a job that escalates: each stage on its model."""
    models = {0: record["model"]}
    models.update({s["stage"]: s["spec"]["model"] for s in ledger.stages(record["id"])})
    return sum(
        _paid(
            record["provider"], models.get(int(stage), record["model"]), tuple(usage["batch"][:3])
        )
        for stage, usage in record["summary"]["stages"].items()
    )


def _paid(provider: str, model: str, usage: tuple[int, ...]) -> float:
    batch = pricing.cost(model, *usage[:3], estimated=False, provider=provider).batch
    return float("nan") if batch is None else batch


def compare(before: BatchJob, after: BatchJob) -> Comparison:
    """Job ``before`` against job ``after`` over the same rows (a re-run, a new prompt
    version, another model): the changed rows, per-field churn and distribution shift,
    cost and time side by side, and what changed in lineage. The same as
    ``before.compare(after)``; see :meth:`BatchJob.compare`."""
    if not isinstance(before, BatchJob):
        raise InputError(
            f"compare() takes two jobs (nb.attach(job_id) gives one), found "
            f"{type(before).__name__}."
        )
    return before.compare(after)
