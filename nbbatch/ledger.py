"""The ledger: a SQLite file that records every job, its rows and its batches.

Nothing about a job lives only in memory. A provider batch id is written the moment
``create`` returns, each row's latest state is kept beside its ``custom_id`` and row key,
and raw result files are kept next to the database, so a new kernel can attach to a job
and merge again without downloading anything twice. API keys are never written.

The file lives in ``$NBBATCH_HOME`` if set, else the user data directory (platformdirs),
created with owner-only permissions. Schema changes are numbered migration functions,
recorded in the ``migrations`` table.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import platformdirs

MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = []


def migration(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    """Register a schema migration; they run once each, in the order defined."""
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            created REAL NOT NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            output TEXT NOT NULL,
            template TEXT NOT NULL,
            spec TEXT NOT NULL,          -- JSON: the request parameters (never a key)
            base_url TEXT,
            n_rows INTEGER NOT NULL,
            id_column TEXT,
            status TEXT NOT NULL         -- running | ended | cancelled
        );
        CREATE TABLE rows (
            job_id TEXT NOT NULL REFERENCES jobs(id),
            custom_id TEXT NOT NULL,
            position INTEGER NOT NULL,   -- the row's position in the submitted data
            key INTEGER NOT NULL,        -- 64-bit hash of its label, to find it again
            label TEXT NOT NULL,
            prompt TEXT,                 -- the rendered prompt (NULL when skipped)
            status TEXT NOT NULL,        -- pending|succeeded|failed|expired|cancelled|skipped
            batch_id TEXT,               -- the batch its latest attempt was sent in
            attempt INTEGER NOT NULL DEFAULT 0,
            output TEXT,
            error_type TEXT,
            error TEXT,
            retryable INTEGER,
            input_tokens INTEGER,
            output_tokens INTEGER,
            cached_tokens INTEGER,
            PRIMARY KEY (job_id, custom_id)
        ) WITHOUT ROWID;
        CREATE INDEX rows_batch ON rows(batch_id);
        CREATE TABLE batches (
            batch_id TEXT PRIMARY KEY,
            job_id TEXT NOT NULL REFERENCES jobs(id),
            attempt INTEGER NOT NULL,
            created REAL NOT NULL,
            n_requests INTEGER NOT NULL,
            status TEXT NOT NULL,        -- the provider's word
            ended INTEGER NOT NULL DEFAULT 0,
            collected INTEGER NOT NULL DEFAULT 0,  -- results read and reconciled
            failure TEXT,
            raw TEXT                     -- the provider's last batch object, JSON
        );
        CREATE INDEX batches_job ON batches(job_id);
        CREATE TABLE events (
            job_id TEXT NOT NULL,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            message TEXT NOT NULL
        );
        CREATE INDEX events_job ON events(job_id);
        """,
    )


def _script(db: sqlite3.Connection, sql: str) -> None:
    # executescript() would commit the migration's transaction half-way; run each
    # statement inside it instead.
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def home() -> Path:
    """The folder holding the ledger: ``$NBBATCH_HOME`` or the user data directory."""
    env = os.environ.get("NBBATCH_HOME")
    return Path(env) if env else Path(platformdirs.user_data_dir("nbbatch", appauthor=False))


class Ledger:
    """One SQLite ledger file; safe to share between threads and between processes."""

    def __init__(self, path: Path | None = None) -> None:
        folder = (path.parent if path else home()).expanduser()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path or folder / "ledger.sqlite3"
        self.files = folder / "files"
        self.files.mkdir(exist_ok=True, mode=0o700)
        # Owner-only before SQLite writes a byte into it.
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.path, timeout=30, check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        with self.transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, at REAL)")
            done = {r[0] for r in db.execute("SELECT name FROM migrations")}
            for fn in MIGRATIONS:
                if fn.__name__ not in done:
                    fn(db)
                    db.execute("INSERT INTO migrations VALUES (?, ?)", (fn.__name__, time.time()))

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): all or nothing, one writer at a time."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query and return all its rows."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    # -- jobs ----------------------------------------------------------------------------
    def add_job(self, job: dict[str, Any], rows: Iterable[tuple[Any, ...]]) -> None:
        """Record a new job and its row manifest in one transaction.

        ``rows`` yields ``(custom_id, position, key, label, prompt, status, error)``.
        """
        with self.transaction() as db:
            db.execute(
                "INSERT INTO jobs (id, created, provider, model, endpoint, output, template, "
                "spec, base_url, n_rows, id_column, status) VALUES (:id, :created, :provider, "
                ":model, :endpoint, :output, :template, :spec, :base_url, :n_rows, :id_column, "
                ":status)",
                {**job, "spec": orjson.dumps(job["spec"]).decode()},
            )
            db.executemany(
                "INSERT INTO rows (job_id, custom_id, position, key, label, prompt, status, error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                ((job["id"], *r) for r in rows),
            )
            self._event(db, job["id"], "submit", f"job created with {job['n_rows']} rows")

    def job(self, job_id: str) -> dict[str, Any] | None:
        """The job's record, or None."""
        with self._lock:
            cur = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
            row = cur.fetchone()
            if row is None:
                return None
            record = dict(zip([d[0] for d in cur.description], row, strict=True))
        record["spec"] = orjson.loads(record["spec"])
        return record

    def set_job_status(self, job_id: str, status: str) -> None:
        """Record the job's overall status."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET status = ? WHERE id = ?", (status, job_id))

    def set_job_spec(self, job_id: str, spec: dict[str, Any]) -> None:
        """Record changed request parameters (from ``resubmit_failed(**overrides)``)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET spec = ?, model = ? WHERE id = ?",
                (orjson.dumps(spec).decode(), spec["model"], job_id),
            )
            self._event(db, job_id, "spec", f"request parameters now {spec}")

    def event(self, job_id: str, kind: str, message: str) -> None:
        """Append to the job's history."""
        with self.transaction() as db:
            self._event(db, job_id, kind, message)

    @staticmethod
    def _event(db: sqlite3.Connection, job_id: str, kind: str, message: str) -> None:
        db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (job_id, time.time(), kind, message))

    # -- batches -------------------------------------------------------------------------
    def add_batch(
        self,
        job_id: str,
        batch_id: str,
        attempt: int,
        custom_ids: Sequence[str],
        status: str,
        raw: dict[str, Any],
    ) -> None:
        """Record a batch the provider just created, and point its rows at it."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO batches (batch_id, job_id, attempt, created, n_requests, status, raw)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    batch_id,
                    job_id,
                    attempt,
                    time.time(),
                    len(custom_ids),
                    status,
                    orjson.dumps(raw).decode(),
                ),
            )
            db.executemany(
                "UPDATE rows SET batch_id = ?, attempt = ?, status = 'pending', output = NULL, "
                "error_type = NULL, error = NULL, retryable = NULL WHERE job_id = ? "
                "AND custom_id = ?",
                ((batch_id, attempt, job_id, cid) for cid in custom_ids),
            )
            self._event(
                db, job_id, "batch", f"batch {batch_id} created with {len(custom_ids)} requests"
            )

    def update_batch(
        self, batch_id: str, status: str, ended: bool, failure: str | None, raw: dict[str, Any]
    ) -> None:
        """Record a batch's latest state from the provider."""
        with self.transaction() as db:
            db.execute(
                "UPDATE batches SET status = ?, ended = ?, failure = ?, raw = ? WHERE batch_id = ?",
                (status, int(ended), failure, orjson.dumps(raw).decode(), batch_id),
            )

    def batches(self, job_id: str) -> list[dict[str, Any]]:
        """The job's batches, oldest first."""
        with self._lock:
            cur = self._db.execute(
                "SELECT batch_id, attempt, created, n_requests, status, ended, collected, failure "
                "FROM batches WHERE job_id = ? ORDER BY created, batch_id",
                (job_id,),
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def sent_ids(self, batch_id: str) -> list[str]:
        """The custom_ids whose latest attempt went out in this batch."""
        return [
            r[0] for r in self.query("SELECT custom_id FROM rows WHERE batch_id = ?", (batch_id,))
        ]

    def record_results(
        self, job_id: str, batch_id: str, rows: Iterable[tuple[Any, ...]], note: str
    ) -> None:
        """Store a batch's reconciled results and mark it collected, in one transaction.

        ``rows`` yields ``(status, output, error_type, error, retryable, input_tokens,
        output_tokens, cached_tokens, custom_id)``. Only rows still pointing at this batch
        are touched, so a late batch can never overwrite a newer attempt.
        """
        with self.transaction() as db:
            db.executemany(
                "UPDATE rows SET status = ?, output = ?, error_type = ?, error = ?, retryable = ?, "
                "input_tokens = ?, output_tokens = ?, cached_tokens = ? "
                "WHERE custom_id = ? AND job_id = ? AND batch_id = ?",
                ((*r, job_id, batch_id) for r in rows),
            )
            db.execute("UPDATE batches SET collected = 1 WHERE batch_id = ?", (batch_id,))
            self._event(db, job_id, "results", note)

    def record_unsent(self, job_id: str, custom_ids: Sequence[str], reason: str) -> None:
        """Mark rows that could not be sent as failed (``not_sent``, retryable)."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE rows SET status = 'failed', error_type = 'not_sent', error = ?, "
                "retryable = 1 WHERE job_id = ? AND custom_id = ?",
                ((reason, job_id, cid) for cid in custom_ids),
            )
            self._event(db, job_id, "error", f"{len(custom_ids)} rows not sent: {reason}")

    # -- rows ----------------------------------------------------------------------------
    def counts(self, job_id: str) -> dict[str, int]:
        """How many rows are in each state."""
        return dict(
            self.query(
                "SELECT status, COUNT(*) FROM rows WHERE job_id = ? GROUP BY status", (job_id,)
            )
        )

    def rows(self, job_id: str, where: str = "", args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The job's rows by position: (custom_id, position, key, label, status, batch_id,
        attempt, output, error_type, error, retryable, input_tokens, output_tokens,
        cached_tokens)."""
        return self.query(
            "SELECT custom_id, position, key, label, status, batch_id, attempt, output, "
            "error_type, error, retryable, input_tokens, output_tokens, cached_tokens "
            f"FROM rows WHERE job_id = ? {where} ORDER BY position",
            (job_id, *args),
        )

    def jobs(self) -> list[dict[str, Any]]:
        """Every job, newest first."""
        with self._lock:
            cur = self._db.execute("SELECT * FROM jobs ORDER BY created DESC")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


_default: Ledger | None = None
_default_path: Path | None = None
_default_lock = threading.Lock()


def default() -> Ledger:
    """The process's ledger for the current ``NBBATCH_HOME`` (reopened if it changes)."""
    global _default, _default_path
    path = home() / "ledger.sqlite3"
    with _default_lock:
        if _default is None or _default_path != path:
            _default = Ledger(path)
            _default_path = path
        return _default
