"""The ``nbbatch`` command: follow and collect batch jobs from a terminal, cron or a server.

A thin layer over the library (:func:`nbbatch.attach`, :func:`nbbatch.jobs`); the help
texts below are what ``nbbatch --help`` prints, so they are plain text.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, states
from ._errors import InputError, NbbatchError
from ._files import names_folder

# The library (pandas, pyarrow, the SDKs) is imported by the commands that need it, so
# `nbbatch --help` and `--version` answer at once.
if TYPE_CHECKING:
    import pandas as pd

    from ._health import Problem
    from ._ledger import Ledger
    from .job import BatchJob
    from .providers.base import Provider
    from .snapshot import JobSnapshot

#: Exit codes, as ``nbbatch --help`` lists them.
OK, ERROR, USAGE, RUNNING, UNREACHABLE, ATTENTION = 0, 1, 2, 3, 4, 5

DESCRIPTION = """\
List, check, collect and cancel nbbatch jobs outside a notebook: in a terminal, a cron
job or a server. Jobs are the ones submitted with nbbatch.submit(...), read from the
local ledger."""

EPILOG = """\
exit codes:
  0    success
  1    error: unknown job, unusable file name, the provider refused a call, ...
  2    wrong usage of the command
  3    the job still has pending rows (collect without --wait, or --timeout passed)
  4    the provider could not be reached or answered with a temporary error
  5    check: at least one job needs attention (one line each on stdout)
  130  interrupted (Ctrl-C); the job goes on at the provider

environment:
  NBBATCH_HOME                        the folder of the ledger
  keys for jobs on each provider      (jobs on an emulator need none)
    OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY (or GOOGLE_API_KEY),
    AZURE_OPENAI_API_KEY, MISTRAL_API_KEY, GROQ_API_KEY, TOGETHER_API_KEY,
    AWS_ACCESS_KEY_ID or AWS_PROFILE (Bedrock: boto3's own chain)"""

JOB_HELP = "a job id, as `nbbatch jobs` lists it"


def _jobs(args: argparse.Namespace) -> int:
    import pandas as pd

    from . import _jobs
    from ._ledger import default as _default_ledger
    from .pricing import money

    pd.set_option("display.width", 200)
    table = _jobs.jobs()
    if table.empty:
        print("no jobs in the ledger")
        return OK
    table["created"] = table["created"].dt.strftime("%Y-%m-%d %H:%M:%S")
    table = table.rename(columns={"created": "created (UTC)"})
    for column in ("rows", *states.SHOWN):
        table[column] = table[column].map("{:,}".format)
    ledger = _default_ledger()
    estimates = {}
    for job_id in table.loc[table["status"] == "running", "id"]:
        try:  # the money a running job will cost, not the $0.00 it has paid so far
            estimates[job_id] = _jobs.estimated_cost(ledger, job_id)
        except Exception:  # noqa: BLE001 - a job that cannot be estimated shows what it paid
            continue
    table["cost"] = [
        f"~{money(e)} (est.)"
        if (e := estimates.get(i)) is not None
        else ("unknown" if pd.isna(c) else money(c))
        for i, c in zip(table["id"], table["cost"], strict=True)
    ]
    if table["deadline"].isna().all():
        table = table.drop(columns=["deadline", "overdue"])  # nobody set one: say nothing
    else:
        table["deadline"] = table["deadline"].map(
            lambda d: "-" if pd.isna(d) else d.strftime("%Y-%m-%d %H:%M")
        )
        table["overdue"] = table["overdue"].map({True: "OVERDUE", False: ""})
    print(table.to_string(index=False))
    _wave_lines(ledger, list(table.loc[table["status"] == "running", "id"]))
    return OK


def _wave_lines(ledger: Any, job_ids: list[str]) -> None:
    """Below the table, for each running job sent in waves, where its waves are."""
    import time

    from . import _quota as quota

    for job_id in job_ids:
        line = quota.status_line(ledger, job_id, time.time())
        if line:
            print(f"{job_id}: {line}")


def _status(args: argparse.Namespace) -> int:
    from . import _jobs

    job = _jobs.attach(args.job)
    snap = _poll(job, send=args.send)
    if snap.last_error:
        # Polling retries these quietly in a notebook; a command must say so and fail.
        _say(snap.last_error, job.id)
        return UNREACHABLE
    print(snap.summary())
    for b in snap.batches:
        print(
            f"  batch {b.batch_id}: {b.status}, {b.done:,}/{b.n_requests:,} requests done "
            f"({b.label})"
        )
    print(f"  cost: {snap.cost}")
    if snap.failure:
        print(f"  error: {snap.failure}")
    for w in snap.warnings:
        print(f"  note: {_for_shell(w, job.id)}")
    waiting = None if args.send else job.waiting_to_send()
    if waiting:
        print(
            f"  waiting: {waiting}; nothing was sent. `nbbatch status {job.id} --send` "
            "sends them (and pays for them)."
        )
    return OK


def _poll(job: BatchJob, *, send: bool) -> JobSnapshot:
    """Poll ``job`` once. Without ``send`` nothing is sent (see ``refresh(send=False)``);
    with it, what the job sends now (rows an upload left, retries, the real-time
    fallback, a cascade's next stage) is said on stderr first: a command never pays
    without a word."""
    if not send:
        return job.refresh(send=False)
    waiting = job.waiting_to_send()
    if waiting:
        _say(f"job {job.id}: sending {waiting} (they are paid for)", job.id)
    return job.refresh()


#: Result file formats by suffix, as ``collect --out`` accepts them.
WRITERS: dict[str, Callable[[pd.DataFrame, Path], Any]] = {
    ".parquet": lambda f, p: f.to_parquet(p, index=False),
    ".csv": lambda f, p: inert_cells(f).to_csv(p, index=False),
    ".jsonl": lambda f, p: f.to_json(p, orient="records", lines=True, force_ascii=False),
    ".ndjson": lambda f, p: f.to_json(p, orient="records", lines=True, force_ascii=False),
    ".json": lambda f, p: f.to_json(p, orient="records", force_ascii=False),
    ".xlsx": lambda f, p: inert_cells(f).to_excel(p, index=False),
}

#: A text cell starting with one of these is taken for a formula by spreadsheets (OWASP
#: ASVS 5.0 requirement 1.2.10, https://asvs.emil.hemdal.se/1.2.10, names = + - @, tab
#: and NUL; a carriage return is added as some spreadsheets skip it before a formula).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\0")


def inert_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every text cell that a spreadsheet would run as a formula (a
    model's answer, or a row's own text, starting with ``=``, ``+``, ``-``, ``@``...)
    prefixed with a single quote, which spreadsheets take as "this is text"."""
    out = frame.copy(deep=False)
    for name in out.columns:
        column = out[name]
        if column.dtype.kind in "biufcmM":  # numbers, booleans, times: no text in them
            continue

        def inert(value: Any) -> Any:
            if isinstance(value, str) and value.startswith(FORMULA_START):
                return "'" + value
            return value

        out[name] = column.map(inert)
    return out


FORMATS = ".parquet, .csv, .jsonl (or .ndjson), .json or .xlsx"


def write_results(frame: pd.DataFrame, out: Path) -> None:
    """Write ``frame`` to ``out`` in the format its suffix names, owner-only (0600, or
    less with a stricter umask), through a fresh temporary file renamed into place."""
    from ._files import private_output

    with private_output(out) as tmp:
        WRITERS[out.suffix.lower()](frame, tmp)


def _check_out(out: Path) -> None:
    """Refuse a results file that cannot be written, before waiting for anything."""
    if out.is_dir():
        return  # JOB.parquet in that folder
    suffix = out.suffix.lower()
    if suffix not in WRITERS:
        raise InputError(
            f"cannot write {str(out)!r}: the file name must end in {FORMATS}, "
            f"which chooses the format."
        )
    if suffix == ".xlsx" and importlib.util.find_spec("openpyxl") is None:
        raise InputError(
            "writing .xlsx needs the openpyxl package, which is not installed: "
            "`pip install openpyxl`, or write .parquet, .csv, .jsonl or .json instead."
        )
    if not out.parent.is_dir():
        raise InputError(
            f"cannot write {str(out)!r}: the folder {str(out.parent)!r} does not exist. "
            "Create it first, or choose another --out."
        )


def results_table(job: BatchJob) -> pd.DataFrame:
    """What ``collect`` writes, one line per input row in input order: the row's id (the
    job's ``id_column``, else ``id`` for the index label), ``row``, its position in the
    submitted data (0-based: index labels may repeat, positions do not), then the
    columns ``merge(lineage=True)`` adds, as ``to_parquet`` writes them (see
    :meth:`BatchJob.output_columns`)."""
    from typing import cast

    import numpy as np
    import pandas as pd

    from . import _merge
    from ._context import JobContext
    from ._ledger import default as _default_ledger

    # The job's rows read as merge and to_parquet read them, so the columns are the same;
    # reading them needs no provider client.
    ledger = _default_ledger()
    ctx = JobContext(ledger.job(job.id) or {}, cast("Provider", None), ledger)
    state = ctx.row_state()
    id_name = ctx.record.get("id_column") or "id"
    out = pd.DataFrame({id_name: _ids(state.manifest_column("label").to_pandas())})
    if _merge.ROW_COLUMN != id_name:
        out[_merge.ROW_COLUMN] = np.arange(len(out), dtype=np.int64)
    return _merge.result_rows(ctx, out, lineage=True)


def _ids(labels: pd.Series) -> pd.Series:
    """The ledger keeps each row's label as text: give integer labels back as integers
    (only when the text is exactly the integer's, so ``"007"`` stays text)."""
    import pandas as pd

    labels = labels.reset_index(drop=True)
    numbers = pd.to_numeric(labels, errors="coerce")  # int64 only when every label parses
    if numbers.dtype.kind == "i" and (numbers.astype(str) == labels).all():
        return numbers
    return labels


def _refreshed(job_id: str, *, send: bool) -> tuple[BatchJob | None, str | None]:
    """The job, polled once if it has rows pending (see :func:`_poll`), or the reason it
    could not be."""
    from . import _jobs

    try:
        job = _jobs.attach(job_id)
        if job.snapshot().finished:
            return job, None
        snap = _poll(job, send=send)
    except NbbatchError as exc:
        return None, str(exc)
    return job, snap.last_error


def _collect_finished(args: argparse.Namespace) -> int:
    """``collect --finished --out-dir DIR``: every finished job not collected yet, once."""
    import time

    from ._ledger import default as _default_ledger

    if args.job or args.out or args.wait or args.timeout is not None:
        raise InputError("--finished collects every finished job: give no JOB, --out or --wait.")
    if not args.out_dir:
        raise InputError("--finished needs --out-dir DIR: the folder to write the files in.")
    folder = Path(args.out_dir)
    suffix = args.format if args.format.startswith(".") else f".{args.format}"
    if not folder.is_dir():
        raise InputError(
            f"cannot write to --out-dir {str(folder)!r}: that folder does not exist. Create "
            f"it first (`mkdir -p {folder}`), or choose another --out-dir."
        )
    _check_out(folder / f"job{suffix}")
    ledger = _default_ledger()
    written = 0
    for record in ledger.jobs():
        if record.get("collected_at") is not None:
            continue
        try:
            # Cron carries each job on, as a kernel would (announced): retries included.
            job, problem = _refreshed(record["id"], send=True)
            if job is None or not job.snapshot().finished:
                if problem:  # said, not fatal: the next run tries again
                    _say(f"{record['id']} not collected: {problem}", record["id"])
                continue
            if not ledger.has_rows(job.id):  # it could not be planned: nothing to write
                _say(f"{job.id} not collected: it ended failed, nothing sent: "
                     f"{job.snapshot().last_error}", job.id)  # fmt: skip
                ledger.set_job_time(job.id, "collected_at", time.time())
                continue
            out = folder / f"{job.id}{suffix}"
            frame = results_table(job)
            write_results(frame, out)
        except OSError:
            raise  # the folder cannot be written: no job can be, stop here
        except Exception as exc:  # one broken job must not stop the others' collection
            print(f"nbbatch: {record['id']} not collected: {_unreadable(record, exc)}",
                  file=sys.stderr)  # fmt: skip
            continue
        ledger.set_job_time(job.id, "collected_at", time.time())
        written += 1
        print(f"{len(frame):,} {_rows(len(frame))} written to {out}: {job.snapshot().summary()}")
    if not written:
        print("no finished jobs left to collect")
    return OK


def _check(args: argparse.Namespace) -> int:
    """One line per job that needs attention; exit 5 if any does."""
    from . import _health as health
    from ._ledger import default as _default_ledger

    ledger = _default_ledger()
    found: list[health.Problem] = []
    for record in ledger.jobs():
        job_id = record["id"]
        try:
            found += _job_problems(ledger, record, poll=not args.no_poll)
        except Exception as exc:  # one broken job must not hide the others' problems
            found.append(health.Problem(job_id, "unreadable", _unreadable(record, exc)))
    for p in found:
        print(_for_shell(p.line(), p.job_id))
    return ATTENTION if found else OK


def _job_problems(ledger: Ledger, record: dict[str, Any], *, poll: bool) -> list[Problem]:
    """What needs attention in one job, polled first if it has rows pending and
    ``poll``."""
    import time

    from . import _health as health

    job_id = record["id"]
    found = []
    if poll and record["summary"].get("counts", {}).get("pending"):
        job, problem = _refreshed(job_id, send=False)  # a check never sends
        if problem:
            found.append(health.Problem(job_id, "unreachable", problem))
        elif job is not None and (waiting := job.waiting_to_send()):
            # What a kernel would have sent and nothing now sends (an upload killed
            # midway): said, with the command that sends it.
            send = f"`nbbatch status {job_id} --send` sends them"
            found.append(health.Problem(job_id, "waiting", f"{waiting}; nothing was sent: {send}"))
    record = ledger.job(job_id) or record
    counts = ledger.counts(job_id)
    missing = 0
    if not counts.get("pending") and counts.get("failed") and ledger.has_rows(job_id):
        missing = health.missing_results(ledger.row_state(job_id))
    return found + health.problems(
        record, counts, ledger.batches(job_id), missing=missing, now=time.time()
    )


def _unreadable(record: dict[str, Any], exc: BaseException) -> str:
    from ._jobs import unreadable_text

    return unreadable_text(str(record.get("id")), exc)


def _rows(n: int) -> str:
    return "row" if n == 1 else "rows"


def _collect(args: argparse.Namespace) -> int:
    if args.finished:
        return _collect_finished(args)
    if not args.job:
        raise InputError("collect needs a JOB, or --finished --out-dir DIR for every finished job.")
    if args.out_dir:
        raise InputError("--out-dir goes with --finished; for one job use --out FILE.")
    if args.timeout is not None and not args.wait:
        raise InputError("--timeout needs --wait (it says how long to wait).")
    out = Path(args.out) if args.out else None
    # "--out results/" names a folder, created once the job is found
    folder = bool(args.out) and names_folder(args.out)
    if out is not None and not folder:
        _check_out(out)  # before anything else: a bad name should not cost a long wait
    from . import _jobs
    from ._ledger import default as _default_ledger

    job = _jobs.attach(args.job)
    out = out or Path(f"{job.id}.parquet")
    if folder:
        out.mkdir(parents=True, exist_ok=True)
    if out.is_dir():
        out = out / f"{job.id}.parquet"
    code = OK
    if args.wait:
        waiting = job.waiting_to_send()
        if waiting:
            _say(f"job {job.id}: sending {waiting} (they are paid for)", job.id)
        try:
            job.wait(args.timeout, progress=True)
        except TimeoutError:
            pending = job.snapshot().counts["pending"]
            print(
                f"nbbatch: job {job.id} still has {pending:,} pending rows after "
                f"{args.timeout:g} s; {job.whereabouts()}: run "
                f"`nbbatch collect {job.id} --wait` again later.",
                file=sys.stderr,
            )
            code = RUNNING
        snap = job.snapshot()
    else:
        snap = _poll(job, send=False)  # writes what is there; --wait carries the job on
        if snap.last_error:
            _say(snap.last_error, job.id)
            code = UNREACHABLE
        elif job.waiting_to_send():
            _say(
                f"job {job.id}: {job.waiting_to_send()}; nothing was sent. `nbbatch collect "
                f"{job.id} --wait` sends them and waits for their answers.",
                job.id,
            )
    source = _default_ledger().source(job.id) or {}
    if out.suffix.lower() == ".parquet" and source.get("kind") == "parquet":
        # A job planned from Parquet files: their columns and the results, written
        # batch by batch from the files, as large as they are.
        job.to_parquet(out, verify=not args.no_verify)
        rows = job.counts["total"]
    else:
        frame = results_table(job)
        rows = len(frame)
        try:
            write_results(frame, out)
        except (ValueError, TypeError) as exc:  # e.g. a value the format cannot hold
            raise InputError(
                f"cannot write the results as {out.suffix}: {exc}. Try .parquet or .jsonl."
            ) from exc
    print(f"{rows:,} {_rows(rows)} written to {out}: {snap.summary()}")
    if code == OK and not snap.finished:
        code = RUNNING
    return code


def _cancel(args: argparse.Namespace) -> int:
    from . import _jobs

    job = _jobs.attach(args.job)
    # Batches that ended at the provider are collected first: a job with nothing left to
    # run is not "cancelled" (its answers are all in), it is done.
    # Without sending: a poll that sends would, past an on_deadline="flex"/"realtime"
    # deadline, first pay for the unfinished rows the user is cancelling.
    before = job.refresh(send=False)
    if before.finished and not before.last_error:
        print(f"job {job.id} has already finished; nothing to cancel. {before.summary()}")
        return OK
    snap = job.cancel()
    print(snap.summary())
    if not snap.finished:
        print(
            f"  the provider ends the open batches shortly; `nbbatch status {job.id}` shows "
            "when it has (rows already done keep their results)."
        )
    return OK


def _forget(args: argparse.Namespace) -> int:
    from . import _jobs
    from ._errors import JobNotFoundError
    from ._ledger import default as _default_ledger

    try:
        _jobs.attach(args.job).forget(force=args.force)
    except NbbatchError:
        raise  # main() gives its message, advice put as commands
    except Exception:
        # A record too broken to attach to: --force removes it from the ledger as it is.
        if not args.force:
            raise
        if not _default_ledger().forget_job(args.job):
            raise JobNotFoundError(f"No job {args.job!r} in the ledger.") from None
    print(f"job {args.job} removed from the ledger")
    return OK


def _clean(args: argparse.Namespace) -> int:
    """Remove (or with --dry-run only count) what no job needs: see :mod:`nbbatch._clean`."""
    from . import _clean as clean
    from ._ledger import default as _default_ledger

    ledger = _default_ledger()
    before = clean.emulator_bytes(ledger)
    found = clean.survey(ledger)
    if not found:
        print(f"nothing to clean under {ledger.files.parent}")
    elif args.dry_run:
        print(f"would remove, under {ledger.files.parent}:")
        for kind in found:
            print(f"  {kind.line()}")
        print("  (run `nbbatch clean` without --dry-run to remove them)")
    else:
        freed = clean.remove(found)
        for kind in found:
            print(f"removed {kind.line()}")
        freed += max(0, before - clean.emulator_bytes(ledger))
        print(f"freed {clean.human_bytes(freed)}")
    print(
        f"the background emulator's folder holds {clean.human_bytes(clean.emulator_bytes(ledger))}"
        " (batches of the jobs in the ledger; `nbbatch forget JOB` removes a job's)"
    )
    return OK


#: The library's advice in Python, as a shell user does it: the commands that do the same,
#: else the Python to run (``{job}`` is the job's id). Longest phrases first.
_SHELL_ADVICE = (
    ("job.wait() (or nb.attach({q}) in a new session) sends them",
     "`nbbatch collect {job} --wait` sends them"),
    ("job.wait() until it is", "`nbbatch collect {job} --wait` until it is"),
    ("call job.cancel() first (or `nbbatch cancel JOB`)", "run `nbbatch cancel {job}` first"),
    ("forget(force=True)", "`nbbatch forget {job} --force`"),
    ("job.cancel()", "`nbbatch cancel {job}`"),
    ("job.forget()", "`nbbatch forget {job}`"),
    ("job.resubmit_failed()", "nb.attach({q}).resubmit_failed() in Python"),
    ("job.failed()", "`nbbatch collect {job}` (or nb.attach({q}).failed() in Python)"),
    (" (or nb.jobs())", ""),
    # A MergeError of `collect` on Parquet files edited since submit (the advice
    # merge.verify_rows gives, word for word).
    ("rows given to merge()", "rows of the data"),
    ("The frame was probably sorted, re-indexed or edited since submit. Pass the "
     "DataFrame you submitted (or a subset of it with the same index); if you changed a "
     "column on purpose, call merge(df, verify=False).",
     "The files were probably edited, replaced or re-ordered since submit. Put back the "
     "files you submitted; if you changed a column on purpose, "
     "`nbbatch collect {job} --no-verify` writes them anyway (each answer on the row at "
     "its position), or `nbbatch collect {job} --out {job}.csv` writes the answers alone, "
     "without the files' columns."),
)  # fmt: skip


def _for_shell(message: str, job_id: str | None) -> str:
    """``message`` with its Python advice put as the commands that do the same."""
    job = job_id or "JOB"
    for python, shell in _SHELL_ADVICE:
        python = python.format(q=repr(job))
        message = message.replace(python, shell.format(job=job, q=repr(job)))
    return message


def _say(message: str, job_id: str | None = None) -> None:
    """Print an error or a warning for a shell user, on stderr."""
    print(f"nbbatch: {_for_shell(message, job_id)}", file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    """The command line's argument parser."""
    top = argparse.ArgumentParser(
        prog="nbbatch",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"nbbatch {__version__}")
    sub = top.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="what to do; `nbbatch COMMAND --help` describes each",
    )
    p = sub.add_parser(
        "jobs", help="list the jobs in the ledger", description="List the jobs in the ledger."
    )
    p.set_defaults(run=_jobs)
    p = sub.add_parser(
        "status",
        help="poll a job once and print its state (never sends without --send)",
        description="Poll a job's open batches once and print its state. Nothing is sent\n"
        "(nothing paid for): rows waiting to be sent are listed, and --send sends them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job", metavar="JOB", help=JOB_HELP)
    p.add_argument(
        "--send",
        action="store_true",
        help="also send what the job has waiting (rows an interrupted upload left, "
        "retries, the real-time fallback, a cascade's next stage), saying what; without "
        "it, status only polls and never sends or pays",
    )
    p.set_defaults(run=_status)
    p = sub.add_parser(
        "collect",
        help="write a job's results to a file",
        description="Write a job's results to a file: one line per input row with its id,\n"
        "its output column(s), status and error (for a job submitted from Parquet files,\n"
        "every column of the files and the results).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job", metavar="JOB", nargs="?", help=JOB_HELP)
    p.add_argument(
        "--out",
        metavar="FILE",
        help=f"the results file; its suffix chooses the format: {FORMATS} "
        "(default: JOB.parquet in the current folder; a folder: JOB.parquet in it). For a "
        "job submitted from Parquet files, a .parquet file holds their columns too, "
        "written a batch at a time from the files",
    )
    p.add_argument(
        "--wait", action="store_true", help="wait until every row is done, printing progress"
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="with --wait: stop waiting after this many seconds, write what is done and "
        "exit with 3",
    )
    p.add_argument(
        "--finished",
        action="store_true",
        help="instead of one JOB: poll every job not collected yet once, and write each "
        "finished one to --out-dir as JOB.parquet (each job once: the ledger records it); "
        "for cron",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="for a job submitted from Parquet files: write their rows with the results even "
        "if the files changed since submit (each answer goes to the row at its position), "
        "instead of refusing",
    )
    p.add_argument("--out-dir", metavar="DIR", help="with --finished: the folder to write to")
    p.add_argument(
        "--format",
        default=".parquet",
        choices=sorted(WRITERS),
        help="with --finished: the files' format (default .parquet)",
    )
    p.set_defaults(run=_collect)
    p = sub.add_parser(
        "check",
        help="print the jobs that need attention; exit 5 if any does",
        description="Poll every running job once, then print one line per job that needs\n"
        "attention: overdue (rows pending after its deadline), failure rate above its\n"
        "alert threshold, incomplete (rows sent that got no result), errored (a batch\n"
        "failed as a whole), unreachable, waiting (rows to send that nothing sends: a check\n"
        "never sends), or unreadable (a broken ledger record). Prints\n"
        "nothing and exits 0 when all is well,\n"
        "so cron mails only trouble; exits 5 when a job needs attention.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--no-poll", action="store_true", help="judge from the ledger alone, without polling"
    )
    p.set_defaults(run=_check)
    p = sub.add_parser(
        "cancel",
        help="cancel a job's open batches",
        description="Cancel a job's open batches; rows already done keep their results.",
    )
    p.add_argument("job", metavar="JOB", help=JOB_HELP)
    p.set_defaults(run=_cancel)
    p = sub.add_parser(
        "forget",
        help="remove a job from the ledger",
        description="Remove a job from the ledger: its rows, batches, events and result files.\n"
        "A job with batches that can still run is refused: cancel it first, or --force.",
    )
    p.add_argument("job", metavar="JOB", help=JOB_HELP)
    p.add_argument(
        "--force", action="store_true", help="forget it even if some of its batches can still run"
    )
    p.set_defaults(run=_forget)
    p = sub.add_parser(
        "clean",
        help="remove files no job needs (--dry-run: only say how many bytes)",
        description="Remove what no job in the ledger needs: folders of jobs no longer in the\n"
        "ledger, raw result files kept beside recorded results, temporary files of processes\n"
        "that died, and ended batches in the background emulator (provider='local') that no\n"
        "job refers to. A job's own files are never touched: `nbbatch forget JOB` removes\n"
        "those.",
    )
    p.add_argument("--dry-run", action="store_true", help="only list what would go, and its size")
    p.set_defaults(run=_clean)
    return top


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (listed in ``nbbatch --help``)."""
    args = parser().parse_args(argv)
    try:
        code = int(args.run(args))
        sys.stdout.flush()  # here, so a closed pipe is caught below, not at exit
        return code
    except BrokenPipeError:
        # `nbbatch jobs | head`: the reader had what it wanted. Quietly, as `ls | head`;
        # stdout is pointed at /dev/null so Python's own flush at exit does not fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return OK
    except NbbatchError as exc:
        _say(str(exc), getattr(args, "job", None) or exc.job_id)
        return ERROR
    except OSError as exc:  # a file that cannot be written: a message, not a traceback
        print(f"nbbatch: {exc}", file=sys.stderr)
        return ERROR
    except KeyboardInterrupt:
        print("nbbatch: interrupted; the job goes on at the provider.", file=sys.stderr)
        return 130
    except Exception as exc:
        job_id = getattr(args, "job", None)
        if not job_id:
            raise
        # A job that cannot be handled, most often because its ledger record is damaged
        # (or was written by a version that let a bad value through): a message with the
        # way out, not a traceback. Not every such error is the record's, so it is not
        # called unreadable outright: forgetting a good job would lose its results.
        print(
            f"nbbatch: job {job_id} could not be handled ({type(exc).__name__}: {exc}). "
            f"If its record in the ledger is damaged, `nbbatch forget {job_id} --force` "
            "removes it; the other jobs are not affected.",
            file=sys.stderr,
        )
        return ERROR


if __name__ == "__main__":
    sys.exit(main())
