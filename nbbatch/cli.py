"""``nbbatch``: the command line for cron jobs and servers.

    nbbatch jobs                          list the jobs in the ledger
    nbbatch status JOB                    poll once and print the job's state
    nbbatch collect JOB [--out F] [--wait]  write the results (parquet, csv or jsonl)
    nbbatch cancel JOB                    cancel the job's open batches

API keys come from the environment (``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``), as
for :func:`nbbatch.attach`; ``NBBATCH_HOME`` chooses the ledger.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from . import api
from ._errors import NbbatchError


def _jobs(args: argparse.Namespace) -> int:
    table = api.jobs()
    if table.empty:
        print("no jobs in the ledger")
    else:
        print(table.to_string(index=False))
    return 0


def _status(args: argparse.Namespace) -> int:
    job = api.attach(args.job)
    snap = job.refresh()
    print(snap.summary())
    for b in snap.batches:
        print(f"  batch {b.batch_id}: {b.status} ({b.n_requests} requests, attempt {b.attempt})")
    print(f"  cost: {snap.cost}")
    for w in snap.warnings:
        print(f"  warning: {w}")
    return 0


def _collect(args: argparse.Namespace) -> int:
    job = api.attach(args.job)
    snap = job.wait(progress=True).snapshot() if args.wait else job.refresh()
    frame = job.results()
    out = Path(args.out or f"{job.id}.parquet")
    if out.suffix == ".csv":
        frame.to_csv(out)
    elif out.suffix in (".jsonl", ".ndjson"):
        frame.reset_index().to_json(out, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(out)
    print(f"{len(frame)} rows written to {out}: {snap.summary()}")
    return 0 if snap.finished else 3


def _cancel(args: argparse.Namespace) -> int:
    snap = api.attach(args.job).cancel()
    print(snap.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (1 on an nbbatch error, 3 when
    ``collect`` finds the job still running)."""
    parser = argparse.ArgumentParser(prog="nbbatch", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("jobs", help="list the jobs in the ledger").set_defaults(run=_jobs)
    p = sub.add_parser("status", help="poll a job once and print its state")
    p.add_argument("job")
    p.set_defaults(run=_status)
    p = sub.add_parser("collect", help="write a job's results to a file")
    p.add_argument("job")
    p.add_argument("--out", help="results file: .parquet (default), .csv or .jsonl")
    p.add_argument("--wait", action="store_true", help="wait until every row is terminal")
    p.set_defaults(run=_collect)
    p = sub.add_parser("cancel", help="cancel a job's open batches")
    p.add_argument("job")
    p.set_defaults(run=_cancel)
    args = parser.parse_args(argv)
    pd.set_option("display.width", 200)
    try:
        return int(args.run(args))
    except NbbatchError as exc:
        print(f"nbbatch: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
