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
import secrets
import shutil
import socket
import sqlite3
import threading
import time
import warnings
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


@migration
def m002_reuse_dedupe_intents(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        ALTER TABLE jobs ADD COLUMN fingerprint TEXT;   -- same data + request: same job
        ALTER TABLE jobs ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';  -- JSON: retries, ...
        CREATE INDEX jobs_fingerprint ON jobs(fingerprint);
        ALTER TABLE rows ADD COLUMN request_hash INTEGER; -- the exact request, 64-bit
        ALTER TABLE rows ADD COLUMN source TEXT;          -- leader custom_id if deduplicated
        ALTER TABLE rows ADD COLUMN origin TEXT;          -- batch, reused or realtime
        CREATE INDEX rows_succeeded_request ON rows(request_hash) WHERE status = 'succeeded';
        CREATE INDEX rows_source ON rows(job_id, source) WHERE source IS NOT NULL;
        ALTER TABLE batches ADD COLUMN done INTEGER NOT NULL DEFAULT 0; -- provider's progress
        ALTER TABLE batches ADD COLUMN part TEXT;  -- which chunk of which attempt
        """,
    )


@migration
def m003_salt_backend(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        ALTER TABLE jobs ADD COLUMN salt TEXT;     -- the request-hash salt at submit time
        ALTER TABLE jobs ADD COLUMN backend TEXT;  -- 'local': the background emulator
        """,
    )


def _script(db: sqlite3.Connection, sql: str) -> None:
    # executescript() would commit the migration's transaction half-way; run each
    # statement inside it instead.
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def _owner_only(path: Path, mode: int) -> None:
    """Tighten ``path`` to ``mode`` when others can read it (a folder made by hand, or by
    an older release); warn instead when it belongs to someone else."""
    st = path.stat()
    if st.st_mode & 0o077 == 0:
        return
    if st.st_uid == os.getuid():
        path.chmod(mode)
        return
    warnings.warn(
        f"{path} can be read by other users and is not yours to tighten; the ledger holds "
        "prompts and results. Ask its owner to run: chmod go-rwx " + str(path),
        stacklevel=3,
    )


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
        for place in (folder, self.files):
            _owner_only(place, 0o700)
        # Owner-only before SQLite writes a byte into it (its -wal and -shm files take
        # the same mode from it).
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        _owner_only(self.path, 0o600)
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

    def write_file(self, job_id: str, name: str, data: bytes) -> Path:
        """Write ``data`` to ``files/<job_id>/<name>``, owner-only, atomically: to a
        temporary name first, then renamed, so a reader never sees half a file."""
        folder = self.files / job_id
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = folder / name
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read query and return all its rows."""
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    # -- jobs ----------------------------------------------------------------------------
    def add_job(
        self, job: dict[str, Any], rows: Iterable[tuple[Any, ...]], *, reuse: bool = True
    ) -> None:
        """Record a new job and its row manifest in one transaction.

        ``rows`` yields ``(custom_id, position, key, label, prompt, status, error,
        request_hash, source)``. With ``reuse``, pending rows whose exact request already
        succeeded in an earlier job take that result instead of being sent.
        """
        with self.transaction() as db:
            db.execute(
                "INSERT INTO jobs (id, created, provider, model, endpoint, output, template, "
                "spec, base_url, n_rows, id_column, status, fingerprint, policy, salt, backend) "
                "VALUES (:id, :created, :provider, :model, :endpoint, :output, :template, :spec, "
                ":base_url, :n_rows, :id_column, :status, :fingerprint, :policy, :salt, :backend)",
                {
                    "salt": None,
                    "backend": None,
                    **job,
                    "spec": orjson.dumps(job["spec"]).decode(),
                    "policy": orjson.dumps(job["policy"]).decode(),
                },
            )
            db.executemany(
                "INSERT INTO rows (job_id, custom_id, position, key, label, prompt, status, "
                "error, request_hash, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ((job["id"], *r) for r in rows),
            )
            self._event(db, job["id"], "submit", f"job created with {job['n_rows']} rows")
            if reuse:
                db.execute(
                    "UPDATE rows SET status = 'succeeded', origin = 'reused', output = prev.output,"
                    " input_tokens = prev.i, output_tokens = prev.o, cached_tokens = prev.c, "
                    "error = NULL, error_type = NULL FROM (SELECT request_hash AS h, output, "
                    "input_tokens AS i, output_tokens AS o, cached_tokens AS c FROM rows "
                    "WHERE status = 'succeeded' AND job_id != :job GROUP BY request_hash) AS prev"
                    " WHERE rows.job_id = :job AND rows.status = 'pending' "
                    "AND rows.request_hash = prev.h",
                    {"job": job["id"]},
                )

    def job(self, job_id: str) -> dict[str, Any] | None:
        """The job's record, or None."""
        with self._lock:
            cur = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
            row = cur.fetchone()
            if row is None:
                return None
            record = dict(zip([d[0] for d in cur.description], row, strict=True))
        record["spec"] = orjson.loads(record["spec"])
        record["policy"] = orjson.loads(record["policy"] or "{}")
        return record

    def find_job(self, fingerprint: str) -> str | None:
        """The newest job with this fingerprint (same data and request), if any."""
        rows = self.query(
            "SELECT id FROM jobs WHERE fingerprint = ? ORDER BY created DESC LIMIT 1",
            (fingerprint,),
        )
        return rows[0][0] if rows else None

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
    def add_intent(self, job_id: str, part: str, attempt: int, custom_ids: Sequence[str]) -> str:
        """Record, before a create call, that these rows are about to be sent.

        Returns a provisional batch id (``intent-...``) the rows point at until
        :meth:`confirm_batch` swaps in the provider's id. An intent left behind by a
        process that died mid-call is how a resumed job knows to look for that batch at
        the provider instead of paying for it twice.
        """
        intent = f"intent-{secrets.token_hex(8)}"
        with self.transaction() as db:
            owner = {"pid": os.getpid(), "host": socket.gethostname()}
            db.execute(
                "INSERT INTO batches (batch_id, job_id, attempt, created, n_requests, status, "
                "part, raw) VALUES (?, ?, ?, ?, ?, 'sending', ?, ?)",
                (intent, job_id, attempt, time.time(), len(custom_ids), part,
                 orjson.dumps(owner).decode()),
            )  # fmt: skip
            self._point_rows(db, job_id, intent, attempt, custom_ids)
        return intent

    @staticmethod
    def _point_rows(
        db: sqlite3.Connection, job_id: str, batch_id: str, attempt: int, custom_ids: Sequence[str]
    ) -> None:
        sets = (
            "SET batch_id = ?, attempt = ?, status = 'pending', output = NULL, error_type = NULL, "
            "error = NULL, retryable = NULL, origin = 'batch' WHERE job_id = ?"
        )
        args = [(batch_id, attempt, job_id, cid) for cid in custom_ids]
        db.executemany(f"UPDATE rows {sets} AND custom_id = ?", args)
        # Rows deduplicated onto these leaders follow them (two statements: an OR of
        # the two conditions would defeat both indexes).
        if db.execute(
            "SELECT 1 FROM rows WHERE job_id = ? AND source IS NOT NULL LIMIT 1", (job_id,)
        ).fetchone():
            db.executemany(f"UPDATE rows {sets} AND source = ?", args)

    def confirm_batch(self, intent: str, batch_id: str, status: str, raw: dict[str, Any]) -> None:
        """Swap a provisional id for the provider's batch id, the moment create returns."""
        with self.transaction() as db:
            db.execute(
                "UPDATE batches SET batch_id = ?, status = ?, raw = ? WHERE batch_id = ?",
                (batch_id, status, orjson.dumps(raw).decode(), intent),
            )
            db.execute("UPDATE rows SET batch_id = ? WHERE batch_id = ?", (batch_id, intent))
            job_id, n = db.execute(
                "SELECT job_id, n_requests FROM batches WHERE batch_id = ?", (batch_id,)
            ).fetchone()
            self._event(db, job_id, "batch", f"batch {batch_id} created with {n} requests")

    def release_intent(self, intent: str) -> None:
        """No batch came of that create call: its rows go back to pending and unsent."""
        with self.transaction() as db:
            row = db.execute("SELECT job_id FROM batches WHERE batch_id = ?", (intent,)).fetchone()
            db.execute("UPDATE rows SET batch_id = NULL WHERE batch_id = ?", (intent,))
            db.execute("DELETE FROM batches WHERE batch_id = ?", (intent,))
            if row:
                self._event(db, row[0], "resume", f"{intent}: no batch at the provider")

    def drop_intent(self, intent: str, reason: str) -> None:
        """The create call failed for sure: its rows end failed (``not_sent``, retryable)."""
        with self.transaction() as db:
            row = db.execute("SELECT job_id FROM batches WHERE batch_id = ?", (intent,)).fetchone()
            db.execute(
                "UPDATE rows SET status = 'failed', error_type = 'not_sent', error = ?, "
                "retryable = 1, batch_id = NULL WHERE batch_id = ?",
                (f"not_sent: {reason}", intent),
            )
            db.execute("DELETE FROM batches WHERE batch_id = ?", (intent,))
            if row:
                self._event(db, row[0], "error", f"rows not sent: {reason}")

    def update_batch(
        self,
        batch_id: str,
        status: str,
        ended: bool,
        failure: str | None,
        raw: dict[str, Any],
        done: int = 0,
    ) -> None:
        """Record a batch's latest state from the provider."""
        with self.transaction() as db:
            db.execute(
                "UPDATE batches SET status = ?, ended = ?, failure = ?, raw = ?, done = ? "
                "WHERE batch_id = ?",
                (status, int(ended), failure, orjson.dumps(raw).decode(), done, batch_id),
            )

    def batches(self, job_id: str) -> list[dict[str, Any]]:
        """The job's batches, oldest first."""
        with self._lock:
            cur = self._db.execute(
                "SELECT batch_id, attempt, created, n_requests, status, ended, collected, failure,"
                " done, part, raw FROM batches WHERE job_id = ? ORDER BY created, batch_id",
                (job_id,),
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def record_realtime(self, job_id: str, rows: Iterable[tuple[Any, ...]]) -> None:
        """Store results obtained through the real-time API (the fallback), marked so.

        ``rows`` as for :meth:`record_results`.
        """
        with self.transaction() as db:
            db.executemany(
                "UPDATE rows SET status = ?, output = ?, error_type = ?, error = ?, retryable = ?, "
                "input_tokens = ?, output_tokens = ?, cached_tokens = ?, origin = 'realtime' "
                "WHERE custom_id = ? AND job_id = ?",
                ((*r, job_id) for r in rows),
            )
            db.execute(
                "UPDATE rows SET status = l.status, output = l.output, error_type = l.error_type, "
                "error = l.error, retryable = l.retryable, origin = 'realtime' FROM rows AS l "
                "WHERE rows.job_id = :job AND rows.source IS NOT NULL AND l.job_id = :job "
                "AND l.custom_id = rows.source AND l.origin = 'realtime'",
                {"job": job_id},
            )
            self._event(db, job_id, "realtime", "results from the real-time fallback recorded")

    def succeeded_hashes(self, hashes: Any) -> Any:
        """For each request hash (a uint64 numpy array), whether an identical request
        already succeeded in some job (so a new job would reuse its answer)."""
        import numpy as np

        done = np.asarray(
            self.query("SELECT DISTINCT request_hash FROM rows WHERE status = 'succeeded'"),
            dtype=np.int64,
        ).ravel()
        return np.isin(np.asarray(hashes, dtype=np.uint64).view(np.int64), done)

    def sent_ids(self, batch_id: str) -> list[str]:
        """The custom_ids whose latest attempt went out in this batch (leaders only:
        deduplicated rows were not sent themselves)."""
        sql = "SELECT custom_id FROM rows WHERE batch_id = ? AND source IS NULL"
        return [r[0] for r in self.query(sql, (batch_id,))]

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
            # Rows deduplicated onto a leader in this batch get the leader's result.
            db.execute(
                "UPDATE rows SET status = l.status, output = l.output, error_type = l.error_type, "
                "error = l.error, retryable = l.retryable, input_tokens = l.input_tokens, "
                "output_tokens = l.output_tokens, cached_tokens = l.cached_tokens "
                "FROM rows AS l WHERE rows.job_id = :job AND rows.batch_id = :batch "
                "AND rows.source IS NOT NULL AND l.job_id = :job AND l.custom_id = rows.source",
                {"job": job_id, "batch": batch_id},
            )
            db.execute("UPDATE batches SET collected = 1 WHERE batch_id = ?", (batch_id,))
            self._event(db, job_id, "results", note)

    # -- rows ----------------------------------------------------------------------------
    def counts(self, job_id: str) -> dict[str, int]:
        """How many rows are in each state, and how many were reused from earlier jobs,
        deduplicated onto an identical request, or answered through the real-time API."""
        counts = dict(
            self.query(
                "SELECT status, COUNT(*) FROM rows WHERE job_id = ? GROUP BY status", (job_id,)
            )
        )
        reused, dedup, realtime = self.query(
            "SELECT COALESCE(SUM(origin = 'reused'), 0), COALESCE(SUM(source IS NOT NULL), 0), "
            "COALESCE(SUM(origin = 'realtime'), 0) FROM rows WHERE job_id = ?",
            (job_id,),
        )[0]
        counts.update(reused=reused, deduplicated=dedup, realtime=realtime)
        return counts

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

    def forget_job(self, job_id: str) -> bool:
        """Remove a job and everything recorded about it (rows, batches, events, result
        files). Returns False if there was no such job. Rows other jobs reused from it
        keep their copies."""
        with self.transaction() as db:
            for table in ("rows", "batches", "events"):
                db.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))
            found = db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
        shutil.rmtree(self.files / job_id, ignore_errors=True)
        return bool(found)


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
