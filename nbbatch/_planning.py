"""Planning a large table in the background, so ``submit`` returns at once.

A table read from Parquet files (or a file-backed Arrow dataset) with at least
:data:`BACKGROUND_ROWS` rows is not planned inside ``submit``: what can be checked on
its first rows (the template, the parameters, the model) is checked there, the job is
recorded with status ``planning`` and the row count the files' footers give, and
control comes back. The job's sender then plans every row (:func:`run`), record batch
by record batch, with the same checks as a table planned at once: ``id_column`` unique
and present over all the files, ids that can be custom_ids, at least one row to send,
no request above the provider's size limit, the budget (``max_cost``). Its views show
"planning 3.2M/10M rows" meanwhile. Once every row is planned, the manifest is moved
into the ledger in one step and sending starts; nothing is sent before that.

A failure while planning ends the job ``failed`` (in the ledger, for every process):
its rows are all counted ``failed``, nothing was sent, and ``job.wait()`` raises an
:class:`~nbbatch.InputError` saying what was wrong. A job whose planning process died
is planned again from its recorded files by the next session that sends it.

Such a job is "the same job" for ``submit`` when the same files (path, size,
modification time) are submitted with the same request (:func:`fingerprint`): telling
that from the rows' content would mean reading every row first.

A table held in memory (pandas, polars, Arrow) of at least :data:`MEMORY_BACKGROUND_ROWS`
rows is planned the same way, so ``submit`` returns at once whatever its size: submit
checks its first rows and records the job ``planning``, and the session's sender runs
the job's *planner* (``JobContext.planner``, made by submit: render, hash, every check
of a table planned at once, the same-job check by content) before anything is sent. The
rows live in that session only, so a job whose planning session ended cannot be planned
elsewhere: it ends failed, saying to submit the data again. When its rows turn out to be
a job already in the ledger (the same cell run twice, or two notebooks or threads
submitting the same rows at once, whichever was planned first), the job is dropped, with
nothing sent, and its session follows that job instead (:class:`SameJob`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from . import _prompt, _stream
from ._checks import ContextLimit
from ._errors import InputError, NbbatchError

if TYPE_CHECKING:
    from ._context import JobContext
    from ._send import Progress

#: Streamed tables with at least this many rows are planned in the background.
BACKGROUND_ROWS = 250_000
#: In-memory tables with at least this many rows are planned in the background too:
#: planning them takes about a second per 100,000 rows on a busy laptop, and submit
#: should never hold the kernel longer than that.
MEMORY_BACKGROUND_ROWS = 50_000
#: The job statuses of a job planned in the background, before it runs.
PLANNING, FAILED = "planning", "failed"

#: Plans an in-memory table's rows, with every check, to a finished manifest file
#: (given the id of the job planned and a function to report rows planned); see
#: JobContext.planner.
Planner = Callable[[str, Callable[[int], None]], Path]

#: What ``submit`` checks on a planned table before recording it (given the plan and
#: its source): rows to send, the request encodes, the size limit, the budget.
Checks = Callable[["_stream.StreamPlan", "_stream.Source"], None]


class _Stopped(Exception):
    """The job was cancelled while its rows were planned."""


class SameJob(Exception):
    """A table held in memory turned out, once planned, to be a job already in the
    ledger (``job_id``): the same rows and request, submitted by another cell, thread
    or process, perhaps still being planned there."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class _Paused(BaseException):
    """Planning stopped by a Ctrl-C in ``job.wait()``: the job stays ``planning``, and
    the next sender plans it again (a BaseException, as an interrupt is, so it is not
    taken for a failure)."""


def in_background(source: _stream.Source) -> bool:
    """Whether a table this large is planned in the background."""
    return source.n_rows >= BACKGROUND_ROWS


def memory_rows(data: Any) -> int | None:
    """The row count of an in-memory table (pandas, polars, Arrow) large enough to be
    planned in the background, else None (planned in ``submit``)."""
    from . import _frames as frames

    if frames.kind_of(data) not in (frames.PANDAS, frames.POLARS, frames.ARROW):
        return None
    n = len(data)
    return n if n >= MEMORY_BACKGROUND_ROWS else None


def fingerprint(source: _stream.Source, parts: list[Any]) -> str | None:
    """What makes two submits of files the same job without reading their rows: the
    request (``parts``) and each file's path, size and modification time. None when the
    source has no local files to tell apart (an in-memory or remote dataset)."""
    files = source.files or list(getattr(source.dataset, "files", None) or [])
    if not files:
        return None
    try:
        stats = [[os.path.abspath(f), (st := os.stat(f)).st_size, st.st_mtime_ns] for f in files]
    except OSError:
        return None
    return hashlib.sha256(
        orjson.dumps(["background", *parts, stats, source.n_rows], default=str)
    ).hexdigest()


def planning(ctx: JobContext) -> bool:
    """Whether the job has no rows yet: still planning, or it ended while planned
    (failed or cancelled). Its manifest is what says so, for any process."""
    return not ctx.ledger.has_rows(ctx.id)


def cancel(ctx: JobContext) -> bool:
    """Cancel a job that has no rows yet (True); False for one that has them."""
    if not planning(ctx):
        return False
    if ctx.ledger.job_status(ctx.id) == PLANNING:
        ctx.ledger.end_planning(ctx.id, "cancelled", "cancelled while its rows were planned")
    ctx.record["status"] = ctx.ledger.job_status(ctx.id)
    return True


def source_of(ctx: JobContext) -> _stream.Source:
    """The rows to plan: the data given in this session, else the recorded files."""
    from . import _frames as frames

    if ctx.data is not None and frames.streamed(ctx.data):
        return _stream.Source.of(ctx.data)
    recorded = ctx.ledger.source(ctx.id) or {}
    source = _stream.Source.recorded(recorded)
    if source is None:
        held = "a table held in memory" if recorded.get("kind") == "memory" else "an Arrow dataset"
        raise InputError(
            f"job {ctx.id} was being planned from {held} in a session that "
            "ended, so its rows cannot be read again here; submit the data again.",
            job_id=ctx.id,
        )
    return source


def run(ctx: JobContext, progress: Progress | None) -> bool:
    """Plan every row of a job recorded with status ``planning``, check them, and move
    the manifest into the ledger (the job is then ``running``, its rows pending).

    True once the job has its rows. False, doing nothing, while another live sender of
    the job (another thread or process) holds it, or when it was cancelled. A failure
    ends the job ``failed`` and raises an :class:`InputError` with the reason; a cancel
    (``progress.cancelled``) ends it ``cancelled``. Either way nothing was sent.
    """
    ledger = ctx.ledger
    job_id = ctx.id  # the job followed may change (see _follow); its hold is this one's
    if not ledger.take_sending(job_id):
        return False
    try:
        status = ledger.job_status(ctx.id) or PLANNING
        ctx.record["status"] = status
        if status == FAILED:
            raise failure(ctx)
        if status != PLANNING:
            return not planning(ctx)  # planned meanwhile (elsewhere), or cancelled
        n = int(ctx.record["n_rows"])
        if progress is not None:
            progress.planned, progress.to_plan = 0, n

        def advance(rows: int) -> None:
            if progress is not None:
                if progress.cancelled:
                    raise _Stopped
                if progress.stopped:
                    raise _Paused
                progress.planned = rows
                ctx.on_progress()

        try:
            _plan(ctx, advance, ctx.plan_checks)
        except _Stopped:
            ledger.end_planning(ctx.id, "cancelled", "cancelled while its rows were planned")
            ctx.record["status"] = "cancelled"
            return False
        except _Paused:
            return False  # still planning: the next wait() (or nb.attach) plans it
        except SameJob as same:
            _follow(ctx, same.job_id)
            return not planning(ctx)
        except Exception as exc:  # an interrupt leaves it planning, for the next wait()
            message = (
                f"job {ctx.id} could not be planned, so nothing was sent: {exc} "
                "(the job has ended failed; fix the data and submit again)"
            )
            ledger.end_planning(ctx.id, FAILED, message)
            ctx.record["status"] = FAILED
            raise InputError(message, job_id=ctx.id) from exc
        ctx.record["status"] = "running"
        if progress is not None:
            progress.planned = n
        return True
    finally:
        if progress is not None:
            progress.to_plan = 0
        ledger.release_sending(job_id)


def _follow(ctx: JobContext, existing: str) -> None:
    """This job, planned, is the job ``existing`` (see :class:`SameJob`): it is removed
    from the ledger (nothing of it was sent) and the session follows ``existing``
    instead, as ``submit`` attaches to a job it finds at once, so two submits of the
    same rows make one job whichever was planned first. That job's rows are planned
    and sent by its own sender; this session only waits for them and merges."""
    placeholder = ctx.id
    record = ctx.ledger.job(existing)
    if record is None:  # forgotten meanwhile: nothing to follow, nothing sent
        raise InputError(f"job {placeholder} matched job {existing}, which is gone; submit again")
    if not str(ctx.record.get("fingerprint") or "").startswith("planning-"):
        # Not a job this session made but one it follows (whose planner died), which
        # others may follow too: never dropped; it ends failed, pointing to the other.
        raise InputError(
            f"this exact job was already submitted as {existing}: follow that one with "
            f"nb.attach({existing!r}), or submit with force=True to send it anew."
        )
    ctx.ledger.forget_job(placeholder)
    ctx.record.clear()
    ctx.record.update(record)
    # The planner stays: the rows are that job's too, so if its own session ends before
    # they are planned, this one plans them for it (its planner takes the job's id).
    ctx.warn(
        f"this exact job was already submitted as {existing} (job {placeholder}, the "
        "same rows, was not kept): following it instead of paying again (submit with "
        "force=True to send it anew)"
    )


def _plan(ctx: JobContext, advance: Callable[[int], None], checks: Checks | None) -> None:
    """Plan the job's rows to a manifest file, check them and record the manifest."""
    record = ctx.record
    ledger = ctx.ledger
    if ctx.planner is not None:  # a table held in memory: its planner checks it all
        target = ctx.planner(ctx.id, advance)
        _record_manifest(ctx, target)
        return
    source = source_of(ctx)
    if source.n_rows != int(record["n_rows"]):
        raise InputError("the data changed since submit (its row count differs)")
    planned = _stream.plan_to_file(
        source,
        _prompt.parse(record["template"]),
        ledger.files,
        id_column=record.get("id_column"),
        missing=str(record["policy"].get("missing", "skip")),
        salt=str(record["salt"]),
        fingerprint_of=[],
        # rows over the model's context window are skipped, as submit skips them
        limit=ContextLimit.from_dict(record["policy"].get("context")),
        progress=advance,
    )
    try:
        if checks is not None:
            checks(planned, source)
        target = ledger.files / f".manifest-{planned.path.stem}.arrow"
        _stream.finish_manifest(planned, target)
    except BaseException:
        planned.discard()
        raise
    _record_manifest(ctx, target)


def _record_manifest(ctx: JobContext, target: Path) -> None:
    """Move a finished manifest file into the ledger: the job has its rows."""
    ledger = ctx.ledger
    try:
        if not ledger.add_manifest(
            ctx.id, target, reuse=bool(ctx.record["policy"].get("reuse", True))
        ):
            raise _Stopped  # cancelled while the manifest was written
    finally:
        from ._rowstore import leaders_path

        leaders_path(target).unlink(missing_ok=True)
        target.unlink(missing_ok=True)


def failure(ctx: JobContext) -> NbbatchError:
    """The error of a job whose planning failed, as recorded (for any process)."""
    summary = orjson.loads(ctx.ledger.jobs_summary(ctx.id) or "{}")
    message = summary.get("error") or f"job {ctx.id} could not be planned, so nothing was sent"
    return InputError(str(message), job_id=ctx.id)


def longest_fits(planned: _stream.StreamPlan, encode: Callable[..., bytes], limit: int) -> None:
    """Raise an InputError when the request of the plan's longest prompt would be
    larger than a provider batch may be (``limit`` bytes): found now, before anything
    is sent, not when the chunk holding it is built."""
    if planned.longest < 0:
        return
    ids, prompts = planned.row(planned.longest)
    size = len(encode(ids, prompts))
    if size > limit:
        raise InputError(
            f"row {planned.longest:,} renders a request of {size:,} bytes, over the "
            f"provider's batch limit of {limit:,} bytes. Shorten that row's text."
        )
