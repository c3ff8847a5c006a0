"""The JSON the sidebar reads: a small, stable view of the ledger.

Every function here reads the ledger (SQLite in WAL mode, so a read never blocks a
kernel writing and sees only committed transactions) and returns plain dicts of
JSON types. Only the actions (refresh, cancel, collect) talk to a provider, and none of
them sends rows.

Schema (``SCHEMA_VERSION``; fields are only ever added)::

    {"version": 1, "now": <epoch s>, "ledger": <path>, "jobs": [<job>, ...]}
    <job> = {"id", "origin" (str|null), "provider", "model", "endpoint", "rows",
             "counts": {"succeeded", "failed", "expired", "cancelled", "skipped", "pending"},
             "status": "running"|"completed"|"cancelled"|"failed"|"unreadable" (a broken
             ledger record: the alert says what to do), "created": <epoch s>,
             "age": <s>, "cost": <dollars|null>, "cost_estimated": bool,
             "cost_text": "$0.0133"|"unknown price" (as every view writes it),
             "overdue": bool, "alert": str|null, "attach": 'nb.attach("...")',
             "checked": <epoch s>|null (when its provider last answered a poll, from any
             process), "checked_age": <s>|null, "check_error": str|null (the server's
             last check failed, see :mod:`.checks`), "stale": bool (running, and no
             check for ``STALE_AFTER`` seconds, or the last one failed)}
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .. import states

if TYPE_CHECKING:
    from .._ledger import Ledger
    from ..job import BatchJob
    from ..providers.base import Provider

SCHEMA_VERSION = 1
#: The providers' completion window: a batch still open after it is overdue.
COMPLETION_WINDOW = 24 * 3600.0
#: Seconds a cancel waits for the provider to confirm before answering.
CANCEL_SETTLE = 3.0
#: Seconds after which a running job nobody has checked is marked stale: well past how
#: often a kernel (30 s at most) or the visible sidebar (``checks.CHECK_EVERY``) polls.
STALE_AFTER = 600.0
#: Row counts in the view, in display order.
COUNTED = states.SHOWN


class Conflict(Exception):
    """The action does not apply to the job as it is now (HTTP 409)."""


def jobs_view(
    ledger: Ledger,
    root_dir: str | None = None,
    now: float | None = None,
    check_errors: dict[str, tuple[float, str]] | None = None,
) -> dict:
    """Every job in ``ledger``, newest first, as the module docstring's schema;
    ``check_errors``: the server's failed checks (:meth:`.checks.Checks.errors`)."""
    from .. import _jobs
    from .. import _quota as quota

    now = time.time() if now is None else now
    table = _jobs.jobs(ledger)  # the public listing: status, counts and cost as nb.jobs()
    records = {r["id"]: r for r in ledger.jobs()}
    oldest_open = dict(
        ledger.query("SELECT job_id, MIN(created) FROM batches WHERE ended = 0 GROUP BY job_id")
    )
    out = []
    for row in table.to_dict("records"):
        record = records.get(row["id"])
        if record is None:  # forgotten between the two reads
            continue
        try:
            job = _job(row, record, oldest_open.get(row["id"]), root_dir, now)
            _add_checked(job, record, (check_errors or {}).get(row["id"]), now)
            # Sent in waves under the account's queue limit: which wave, how full.
            job["quota"] = (
                quota.status_line(ledger, row["id"], now) if job["status"] == "running" else None
            )
            out.append(job)
        except Exception as exc:  # one broken record must not empty the sidebar
            out.append(_unreadable(row, record, exc, now))
    return {
        "version": SCHEMA_VERSION,
        "now": now,
        "ledger": str(ledger.path),
        "jobs": out,
    }


def listing(
    root_dir: str | None = None, check_errors: dict[str, tuple[float, str]] | None = None
) -> dict[str, Any]:
    """:func:`jobs_view` of this process's ledger (``NBBATCH_HOME``, as the kernels the
    server starts use); an empty list, creating nothing, when there is no ledger yet."""
    from .._ledger import default, home

    path = home() / "ledger.sqlite3"
    if not path.exists():
        return {"version": SCHEMA_VERSION, "now": time.time(), "ledger": str(path), "jobs": []}
    return jobs_view(default(), root_dir, check_errors=check_errors)


def job_view(
    ledger: Ledger,
    job_id: str,
    root_dir: str | None = None,
    check_errors: dict[str, tuple[float, str]] | None = None,
) -> dict | None:
    """One job as in :func:`jobs_view`, or None if the ledger has no such job."""
    for job in jobs_view(ledger, root_dir, check_errors=check_errors)["jobs"]:
        if job["id"] == job_id:
            return job
    return None


def _job(
    row: dict[Any, Any],
    record: dict[str, Any],
    oldest_open: float | None,
    root_dir: str | None,
    now: float,
) -> dict[str, Any]:
    from .._health import alert_text
    from ..pricing import money

    counts = {state: int(row[state]) for state in COUNTED}
    created = float(record["created"])
    cost = float(row["cost"])
    policy = _json(record.get("policy"))
    running = row["status"] == "running"
    return {
        "id": row["id"],
        "origin": _origin(record.get("origin"), root_dir),
        "provider": row["provider"],
        "model": row["model"],
        "endpoint": record["endpoint"],
        "rows": int(row["rows"]),
        "counts": counts,
        "status": row["status"],
        "created": created,
        "age": max(0.0, now - created),
        # Dollars paid so far (from reported usage); null for a model with no known price.
        "cost": None if math.isnan(cost) else round(cost, 6),
        "cost_estimated": running,
        # Written by the one function every view and message uses, so the sidebar reads
        # $0.0133 as the panel and `nbbatch jobs` do.
        "cost_text": "unknown price" if math.isnan(cost) else money(cost),
        # Past the deadline given to submit (as nb.jobs() and nbbatch check say), or, with
        # none, a batch still open after the providers' 24-hour completion window.
        "overdue": bool(row.get("overdue"))
        or (running and oldest_open is not None and now - oldest_open > COMPLETION_WINDOW),
        "alert": alert_text(counts, policy.get("alert_threshold")),
        "attach": f'nb.attach("{row["id"]}")',
    }


def _add_checked(
    job: dict[str, Any], record: dict[str, Any], error: tuple[float, str] | None, now: float
) -> None:
    """When the job was last checked at its provider, and whether that is too long ago
    for a running job to be shown as live."""
    checked = record.get("checked_at")
    checked = float(checked) if isinstance(checked, int | float) else None
    # A failure older than the last good check (a kernel polled since) is history.
    failed = error is not None and (checked is None or error[0] > checked)
    since = max(checked or 0.0, job["created"])  # a job just submitted is not stale yet
    job["checked"] = checked
    job["checked_age"] = None if checked is None else max(0.0, now - checked)
    job["check_error"] = error[1] if failed and error is not None else None
    job["stale"] = job["status"] == "running" and (failed or now - since > STALE_AFTER)


def _unreadable(
    row: dict[Any, Any], record: dict[str, Any], exc: BaseException, now: float
) -> dict[str, Any]:
    """A job whose ledger record cannot be read, as much of it as can be shown, with
    what to do about it as its alert."""
    from .._jobs import UNREADABLE, unreadable_text

    created = record.get("created")
    created = float(created) if isinstance(created, int | float) else now
    return {
        "id": str(row["id"]),
        "origin": None,
        "provider": str(row.get("provider")),
        "model": str(row.get("model")),
        "endpoint": str(record.get("endpoint")),
        "rows": row["rows"] if isinstance(row.get("rows"), int) else 0,
        "counts": dict.fromkeys(COUNTED, 0),
        "status": UNREADABLE,
        "created": created,
        "age": max(0.0, now - created),
        "cost": None,
        "cost_estimated": False,
        "cost_text": "unknown price",
        "overdue": False,
        "alert": unreadable_text(str(row["id"]), exc),
        "attach": f'nb.attach("{row["id"]}")',
        "checked": None,
        "checked_age": None,
        "check_error": None,
        "stale": False,
    }


def _json(text: Any) -> dict[str, Any]:
    import orjson

    if isinstance(text, dict):
        return text
    try:
        value = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _origin(origin: str | None, root_dir: str | None) -> str | None:
    """A notebook's path relative to the server's root (how JupyterLab names it), else
    as recorded."""
    if not origin:
        return None
    if root_dir:
        try:
            return Path(origin).resolve().relative_to(Path(root_dir).resolve()).as_posix()
        except ValueError:
            pass
    return origin


def failed_view(ledger: Ledger, job_id: str, limit: int = 100) -> dict[str, Any]:
    """The job's rows that did not succeed (failed, expired, cancelled), with their errors:
    ``{"job_id", "total": <all such rows>, "rows": [{"id", "status", "error_type",
    "error"}, ...]}`` (the first ``limit`` of them, in input order). Reads the ledger
    only: a row still pending at the provider is not counted until it is collected."""
    results = _offline(ledger, job_id).results()
    bad = results[results["status"].isin(states.NOT_SUCCEEDED)]
    rows = [
        {
            "id": str(r["label"]),
            "status": str(r["status"]),
            "error_type": None if _missing(r["error_type"]) else str(r["error_type"]),
            "error": None if _missing(r["error"]) else str(r["error"]),
        }
        for r in bad.head(limit).to_dict("records")
    ]
    return {"job_id": job_id, "total": int(len(bad)), "rows": rows}


def _offline(ledger: Ledger, job_id: str) -> BatchJob:
    """The job as the ledger has it, with no provider client: reading its rows needs
    neither a key nor a running emulator."""
    from .._errors import JobNotFoundError
    from ..job import BatchJob

    record = ledger.job(job_id)
    if record is None:
        raise JobNotFoundError(f"No job {job_id!r} in the ledger at {ledger.path}.")
    return BatchJob(record, cast("Provider", None), ledger)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def collect(ledger: Ledger, job_id: str, root_dir: str, folder: str = "") -> dict[str, Any]:
    """What ``nbbatch collect`` does: poll the job once (downloading batches that
    ended), then write its results, one line per input row, to
    ``<folder>/<job_id>.parquet`` under ``root_dir``, atomically. ``folder`` is relative
    to ``root_dir`` and may not leave it. Returns ``{"path", "rows", "warning", "job"}``;
    ``warning`` is a transient polling error (the file then holds what the ledger had)."""
    from .. import _jobs, cli
    from .._files import private_output

    root = Path(root_dir).resolve()
    target_dir = (root / folder).resolve()
    if target_dir != root and root not in target_dir.parents:
        raise ValueError(f"folder {folder!r} is outside the server's root")
    if not target_dir.is_dir():
        raise ValueError(f"folder {folder!r} does not exist")
    target = target_dir / f"{job_id}.parquet"
    if target.is_dir():  # os.replace cannot put a file there
        raise ValueError(
            f"{target.relative_to(root).as_posix()} is a folder; rename or remove it, or "
            "collect into another folder"
        )
    job = _jobs.attach(job_id)
    snap = job.refresh(send=False)  # collects what ended; never sends (see refresh)
    frame = cli.results_table(job)
    # A fresh private file (never a guessable name a link could be planted at).
    with private_output(target) as tmp:
        frame.to_parquet(tmp, index=False)
    return {
        "path": target.relative_to(root).as_posix(),
        "rows": int(len(frame)),
        "pending": snap.counts["pending"],
        "warning": snap.last_error,
        "job": job_view(ledger, job_id, root_dir),
    }


def refresh(ledger: Ledger, job_id: str, root_dir: str | None = None) -> dict[str, Any]:
    """Poll the job's provider once ("check now"): ``{"warning", "job"}``, ``warning``
    a transient error (the provider unreachable, say) or null. It only looks, as
    ``job.refresh(send=False)``: rows not sent yet, retries and a cascade's next stage
    are sent by a kernel that attaches to the job (``nb.attach``), never from here."""
    from .. import _jobs

    snap = _jobs.attach(job_id).refresh(send=False)
    return {"warning": snap.last_error, "job": job_view(ledger, job_id, root_dir)}


def cancel(ledger: Ledger, job_id: str, root_dir: str | None = None) -> dict[str, Any]:
    """Cancel the job at its provider, as ``job.cancel()`` (rows already finished keep
    their results): ``{"warning", "job"}``."""
    from .. import _jobs

    job = _jobs.attach(job_id)
    if job.snapshot().finished:
        raise Conflict(f"job {job_id} has finished: there is nothing left to cancel")
    snap = job.cancel()
    # A provider confirms a cancel a moment later (the emulator in 50 ms, a real one in
    # seconds to minutes): look again briefly, so the answer shows the outcome when it
    # is quick; otherwise whoever polls the job (its kernel, "check now") records it.
    deadline = time.monotonic() + CANCEL_SETTLE
    while not snap.finished and not snap.last_error and time.monotonic() < deadline:
        time.sleep(0.25)
        snap = job.refresh(send=False)  # a cancelled job sends nothing more
    return {"warning": snap.last_error, "job": job_view(ledger, job_id, root_dir)}
