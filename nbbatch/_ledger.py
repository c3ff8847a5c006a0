"""The ledger: a SQLite file for jobs, batches, intents and events, and Arrow files
beside it for each job's rows and results.

Nothing about a job lives only in memory. A provider batch id is written the moment
``create`` returns; each job's row manifest, the rows of every chunk sent and the results
of every batch collected are Arrow files (see :mod:`nbbatch._rowstore`), each written
atomically before SQLite refers to it, so a process killed at any point leaves the old
state or the new one. Raw result files are kept too, so a new kernel can attach to a job
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import platformdirs
import pyarrow as pa
import pyarrow.compute as pc

from . import _files

Migration = Callable[[sqlite3.Connection, Path], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    """Register a schema migration; they run once each, in the order defined, with the
    database (inside one transaction) and the folder of the job files."""
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: sqlite3.Connection, files: Path) -> None:
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
def m002_reuse_dedupe_intents(db: sqlite3.Connection, files: Path) -> None:
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
def m003_salt_backend(db: sqlite3.Connection, files: Path) -> None:
    _script(
        db,
        """
        ALTER TABLE jobs ADD COLUMN salt TEXT;     -- the request-hash salt at submit time
        ALTER TABLE jobs ADD COLUMN backend TEXT;  -- 'local': the background emulator
        """,
    )


@migration
def m004_rows_to_arrow(db: sqlite3.Connection, files: Path) -> None:
    """Per-row records leave SQLite for Arrow files (see :mod:`nbbatch._rowstore`):
    each job's rows become its manifest plus send and result files, listed in order in
    ``changes``; the ``rows`` table goes."""
    _script(
        db,
        """
        CREATE TABLE changes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL,
            kind TEXT NOT NULL,          -- send | result
            batch TEXT,                  -- the batch's intent id (NULL: see rowstore)
            attempt INTEGER NOT NULL DEFAULT 0,
            origin TEXT NOT NULL DEFAULT 'batch',  -- of a result: batch|reused|realtime
            file TEXT NOT NULL,          -- an Arrow IPC file in files/<job_id>/
            n INTEGER NOT NULL,
            at REAL NOT NULL
        );
        CREATE INDEX changes_job ON changes(job_id, seq);
        ALTER TABLE jobs ADD COLUMN summary TEXT;     -- JSON: counts and usage, kept current
        ALTER TABLE jobs ADD COLUMN sender TEXT;      -- JSON: the process sending its rows
        ALTER TABLE jobs ADD COLUMN hash_scheme TEXT; -- how its request hashes were made
        ALTER TABLE batches ADD COLUMN intent TEXT;   -- the id its rows were recorded under
        UPDATE batches SET intent = batch_id;
        CREATE INDEX batches_intent ON batches(intent);
        """,
    )
    for (job_id,) in db.execute("SELECT id FROM jobs").fetchall():
        _convert_rows(db, files, job_id)
    db.execute("DROP TABLE rows")


@migration
def m005_health(db: sqlite3.Connection, files: Path) -> None:
    """What monitoring needs: a job's deadline, when it ended, when cron collected it."""
    _script(
        db,
        """
        ALTER TABLE jobs ADD COLUMN deadline REAL;      -- seconds since the epoch, or NULL
        ALTER TABLE jobs ADD COLUMN ended_at REAL;      -- when every row was terminal
        ALTER TABLE jobs ADD COLUMN collected_at REAL;  -- written by collect --finished
        """,
    )


@migration
def m006_origin(db: sqlite3.Connection, files: Path) -> None:
    """Where a job was submitted from, for the JupyterLab sidebar: the notebook's path
    (the kernel's ``JPY_SESSION_NAME``) or the script's; NULL when unknown (older jobs)."""
    _script(db, "ALTER TABLE jobs ADD COLUMN origin TEXT;")


@migration
def m007_stages(db: sqlite3.Connection, files: Path) -> None:
    """Escalation (``job.escalate``, cascades): a job's rows can be sent again on another
    model. Each such *stage* has its own request parameters, recorded once; each send
    change and each batch says which stage its rows went in. Stage 0 is the job's own
    spec and has no row here."""
    _script(
        db,
        """
        CREATE TABLE stages (
            job_id TEXT NOT NULL,
            stage INTEGER NOT NULL,      -- 1, 2, ...: the order they were started in
            spec TEXT NOT NULL,          -- JSON: the request parameters (never a key)
            salt TEXT,                   -- the request-hash salt of those parameters
            first_attempt INTEGER NOT NULL,  -- retries are counted from it
            n_rows INTEGER NOT NULL,     -- rows sent again (deduplicated ones included)
            reason TEXT NOT NULL,        -- what chose the rows, in words
            created REAL NOT NULL,
            PRIMARY KEY (job_id, stage)
        );
        ALTER TABLE changes ADD COLUMN stage INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE batches ADD COLUMN stage INTEGER NOT NULL DEFAULT 0;
        """,
    )


@migration
def m008_credential_origin(db: sqlite3.Connection, files: Path) -> None:
    """Where a job's key came from (``env:VAR``, ``client``, ``local``) and, for a key
    given on ``client=``, its keyed hash (never the key): later polls send only a key
    meant for the job's address (see :mod:`nbbatch.providers.credentials`)."""
    _script(
        db,
        """
        ALTER TABLE jobs ADD COLUMN credential TEXT;
        ALTER TABLE jobs ADD COLUMN key_hash TEXT;
        """,
    )


@migration
def m009_sidebar_checked(db: sqlite3.Connection, files: Path) -> None:
    """When the provider last answered a poll of the job (epoch seconds), from any
    process: the sidebar shows it and marks a running job nobody has checked lately."""
    _script(db, "ALTER TABLE jobs ADD COLUMN checked_at REAL;")


@migration
def m010_quota(db: sqlite3.Connection, files: Path) -> None:
    """Batch queue quotas (see :mod:`nbbatch._quota`): the limits learned per account
    (provider, address and key fingerprint: ``key``) and model, what each batch holds
    of its account's queue (so every job of the ledger counts what the others have in
    flight), and each job's wave record, which the views render."""
    _script(
        db,
        """
        CREATE TABLE quota_limits (
            key TEXT NOT NULL,           -- provider, address and key fingerprint
            model TEXT NOT NULL,         -- '*' where the queue is shared by all models
            unit TEXT NOT NULL,          -- tokens | requests
            queue_limit INTEGER,         -- what may be queued at once (NULL: unknown)
            source TEXT,                 -- provider | probe
            ceiling INTEGER,             -- the least queued amount a refusal was seen at
            refused_at REAL,
            wave_seconds REAL,           -- how long a full wave took, last seen
            updated REAL NOT NULL,
            PRIMARY KEY (key, model)
        );
        ALTER TABLE batches ADD COLUMN quota_key TEXT;
        ALTER TABLE batches ADD COLUMN quota_model TEXT;
        ALTER TABLE batches ADD COLUMN quota_units INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX batches_quota ON batches(quota_key, quota_model, ended);
        ALTER TABLE jobs ADD COLUMN waves TEXT;  -- JSON: the job's waves, for the views
        """,
    )


def _convert_rows(db: sqlite3.Connection, files: Path, job_id: str) -> None:
    """One job of a ledger from before m004: its ``rows`` as Arrow files and changes."""
    import numpy as np
    import pyarrow as pa

    from . import _rowstore as rowstore

    rows = db.execute(
        "SELECT custom_id, key, label, prompt, status, batch_id, attempt, output, error_type, "
        "error, retryable, input_tokens, output_tokens, cached_tokens, request_hash, source, "
        "origin FROM rows WHERE job_id = ? ORDER BY position",
        (job_id,),
    ).fetchall()
    folder = files / job_id
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    (cid, key, label, prompt, status, batch, attempt, output, etype, error, retry, i_tok,
     o_tok, c_tok, rhash, source, origin) = (list(c) for c in zip(*rows, strict=True)) if rows \
        else [[] for _ in range(17)]  # fmt: skip
    at = {c: p for p, c in enumerate(cid)}
    leader = [
        -1 if s == "skipped" else (at[src] if src is not None else p)
        for p, (s, src) in enumerate(zip(status, source, strict=True))
    ]
    hashes = np.array([h or 0 for h in rhash], dtype=np.int64).view(np.uint64)
    (salt,) = db.execute("SELECT salt FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if salt is not None and rows:
        # Hashed again the way new jobs hash, so later jobs can reuse these answers.
        from . import _plan as plan

        has = np.array([p is not None and s != "skipped" for p, s in zip(prompt, status,
                        strict=True)])  # fmt: skip
        hashes = np.zeros(len(rows), dtype=np.uint64)
        if has.any():
            texts = pa.array(prompt, pa.large_string()).filter(pa.array(has))
            hashes[has] = plan.prompt_hashes(texts, salt)
        db.execute("UPDATE jobs SET hash_scheme = ? WHERE id = ?", (plan.HASH_SCHEME, job_id))
    manifest = pa.table(
        {
            "custom_id": pa.array(cid, pa.string()),
            "key": pa.array(np.array(key, dtype=np.int64).view(np.uint64)),
            "label": pa.array(label, pa.string()),
            "prompt": pa.array(prompt, pa.large_string()),
            "request_hash": pa.array(hashes),
            "leader": pa.array(leader, pa.int64()),
            "skip_error": pa.array(
                [e if s == "skipped" else None for s, e in zip(status, error, strict=True)],
                pa.string(),
            ),
        },
        schema=rowstore.MANIFEST_SCHEMA,
    )
    rowstore.write_table(folder / MANIFEST, manifest)
    leaders = [p for p in range(len(cid)) if leader[p] == p]

    def result(positions: list[int], name: str, batch_key: str | None, kind: str) -> None:
        if not positions:
            return
        table = pa.table(
            {
                "position": pa.array(positions, pa.int64()),
                "status": pa.array([status[p] for p in positions], pa.string()),
                "output": pa.array([output[p] for p in positions], pa.large_string()),
                "error_type": pa.array([etype[p] for p in positions], pa.string()),
                "error": pa.array([error[p] for p in positions], pa.large_string()),
                "retryable": pa.array(
                    [None if retry[p] is None else bool(retry[p]) for p in positions], pa.bool_()
                ),
                "input_tokens": pa.array([i_tok[p] for p in positions], pa.int64()),
                "output_tokens": pa.array([o_tok[p] for p in positions], pa.int64()),
                "cached_tokens": pa.array([c_tok[p] for p in positions], pa.int64()),
                "request_hash": pa.array(hashes[positions]),
            },
            schema=rowstore.RESULT_SCHEMA,
        )
        rowstore.write_table(folder / name, table)
        _insert_change(db, job_id, "result", batch_key, 0, kind, name, len(positions))

    done = [p for p in leaders if status[p] not in ("pending", "skipped")]
    result([p for p in done if origin[p] == "reused"], "reused.arrow", None, "reused")
    order = [b for (b,) in db.execute(
        "SELECT batch_id FROM batches WHERE job_id = ? ORDER BY created, batch_id", (job_id,)
    )]  # fmt: skip
    for b in order:
        sent = [p for p in leaders if batch[p] == b]
        if not sent:
            continue
        name = f"send-{b}.arrow"
        rowstore.write_table(folder / name, pa.table({"position": pa.array(sent, pa.int64())}))
        _insert_change(db, job_id, "send", b, max(attempt[p] for p in sent), "batch", name,
                       len(sent))  # fmt: skip
        answered = [p for p in sent if p in set(done) and origin[p] in (None, "batch")]
        result(answered, f"results-{b}.arrow", b, "batch")
    unsent = [p for p in done if batch[p] is None and origin[p] in (None, "batch")]
    result(unsent, "results-not-sent.arrow", None, "batch")
    result([p for p in done if origin[p] == "realtime"], "realtime-0.arrow", None, "realtime")
    state = _replay(db, files, job_id, staged=False)
    db.execute(
        "UPDATE jobs SET summary = ? WHERE id = ?",
        (orjson.dumps(state.summary()).decode(), job_id),
    )


def _insert_change(
    db: sqlite3.Connection,
    job_id: str,
    kind: str,
    batch: str | None,
    attempt: int,
    origin: str,
    file: str,
    n: int,
    stage: int = 0,
) -> None:
    if stage:
        db.execute(
            "INSERT INTO changes (job_id, kind, batch, attempt, origin, file, n, at, stage) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, kind, batch, attempt, origin, file, n, time.time(), stage),
        )
        return
    # Stage 0 leaves the column to its default: m004 writes changes before m007 made it.
    db.execute(
        "INSERT INTO changes (job_id, kind, batch, attempt, origin, file, n, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (job_id, kind, batch, attempt, origin, file, n, time.time()),
    )


def _replay(
    db: sqlite3.Connection, files: Path, job_id: str, state: Any = None, *, staged: bool = True
) -> Any:  # -> rowstore.RowState
    """The job's row state: ``state`` (or a new one from the manifest) brought up to the
    latest change. ``staged=False`` reads a ``changes`` table from before m007 (while
    m004 converts a ledger), which has no ``stage`` column yet."""
    from . import _rowstore as rowstore

    folder = files / job_id
    if state is None:
        state = rowstore.RowState(rowstore.read_table(folder / MANIFEST), folder / MANIFEST)
    for seq, kind, batch, attempt, origin, file, stage in db.execute(
        "SELECT seq, kind, batch, attempt, origin, file, "
        + ("stage" if staged else "0")
        + " FROM changes "
        "WHERE job_id = ? AND seq > ? ORDER BY seq",
        (job_id, state.seq),
    ).fetchall():
        table = rowstore.read_table(folder / file)
        if kind == "send":
            state.apply_send(batch, attempt, table.column("position").to_numpy(), stage)
        else:
            state.apply_result(batch, origin, table, folder / file)
        del table  # unmapped: the pages read to apply it leave this process's memory
        state.seq = seq
    return state


#: The name of a job's manifest file.
MANIFEST = "manifest.arrow"
#: Where a job's rows came from, for tables read from files (see :mod:`nbbatch._stream`).
SOURCE = "source.json"


def _script(db: sqlite3.Connection, sql: str) -> None:
    # executescript() would commit the migration's transaction half-way; run each
    # statement inside it instead.
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def _owner_only(path: Path, mode: int) -> None:
    """Tighten ``path`` to ``mode`` when others can read it (a folder made by hand, or by
    an older release); refuse it when it belongs to someone else, who could read the
    prompts and results in it and rewrite what the ledger says."""
    st = path.stat()
    if st.st_uid != os.getuid():
        from ._errors import ConfigError

        raise ConfigError(
            f"{path} belongs to another user (uid {st.st_uid}); the ledger holds prompts, "
            "results and what was paid, which its owner could read and rewrite. Set "
            "NBBATCH_HOME to a folder of your own."
        )
    if st.st_mode & 0o077:
        path.chmod(mode)


def owner() -> dict[str, Any]:
    """This thread, as recorded in an intent or a sending lease."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "thread": threading.get_ident()}


def alive(record: dict[str, Any]) -> bool:
    """Whether the process recorded by :func:`owner` still runs (on this machine; one on
    another machine is presumed alive)."""
    if record.get("host") != socket.gethostname() or not record.get("pid"):
        return record.get("host") is not None
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def home() -> Path:
    """The folder holding the ledger: ``$NBBATCH_HOME`` or the user data directory."""
    env = os.environ.get("NBBATCH_HOME")
    return Path(env) if env else Path(platformdirs.user_data_dir("nbbatch", appauthor=False))


@dataclass(frozen=True)
class QuotaClaim:
    """What a batch about to be created takes of its account's queue: ``units``
    (tokens or requests) of the queue of account ``key`` for ``model``, allowed while
    what is queued stays within ``cap`` (None: no known limit, only counted)."""

    key: str
    model: str
    units: int
    cap: int | None = None


class QuotaFull(Exception):
    """A batch would not fit its account's queue: ``in_use`` is queued already."""

    def __init__(self, in_use: int) -> None:
        super().__init__(f"the queue holds {in_use:,} already")
        self.in_use = in_use


def _in_use(db: sqlite3.Connection, key: str, model: str) -> int:
    """What open batches hold of the queue of account ``key`` for ``model``."""
    (total,) = db.execute(
        "SELECT COALESCE(SUM(quota_units), 0) FROM batches "
        "WHERE quota_key = ? AND quota_model = ? AND ended = 0",
        (key, model),
    ).fetchone()
    return int(total)


class Ledger:
    """One ledger: a SQLite file plus the job files beside it; safe to share between
    threads and between processes."""

    def __init__(self, path: Path | None = None) -> None:
        folder = (path.parent if path else home()).expanduser()
        _files.private_dirs(folder)  # and the folders above it it makes, under any umask
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
        self._states: dict[str, Any] = {}  # job id -> rowstore.RowState, kept current
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
                    fn(db, self.files)
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

    def folder(self, job_id: str) -> Path:
        """The folder of a job's files (made if missing)."""
        folder = self.files / job_id
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return folder

    def source(self, job_id: str) -> dict[str, Any] | None:
        """Where a job's rows came from (:data:`SOURCE`), or None for an in-memory table."""
        try:
            return dict(orjson.loads((self.files / job_id / SOURCE).read_bytes()))
        except FileNotFoundError:
            return None

    def write_file(self, job_id: str, name: str, data: bytes, *, sync: bool = True) -> Path:
        """Write ``data`` to ``files/<job_id>/<name>``, owner-only, atomically: to a
        temporary name first, then renamed, so a reader never sees half a file.
        ``sync=False`` skips flushing to disk, for a cache that can be fetched again."""
        folder = self.folder(job_id)
        target = folder / name
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                if sync:
                    os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    def _write_table(self, job_id: str, name: str, table: pa.Table) -> str:
        from . import _rowstore as rowstore

        rowstore.write_table(self.folder(job_id) / name, table)
        return name

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
        self,
        job: dict[str, Any],
        manifest: pa.Table | Path,
        *,
        reuse: bool = True,
        source: dict[str, Any] | None = None,
        unless_same: bool = False,
    ) -> str | None:
        """Record a new job with its row manifest (see :mod:`nbbatch._rowstore`): a table,
        or a finished manifest file (a table planned batch by batch), moved into place.
        ``source`` says where the rows came from (Parquet files and their row counts),
        kept as ``source.json`` to check them when merging back.

        The manifest file is written first, then the job is recorded in one transaction.
        With ``reuse``, rows whose exact request already succeeded in an earlier job take
        that result instead of being sent.

        ``unless_same``: the job is recorded only if no job with its fingerprint is
        there (see :meth:`find_job`); that job's id is returned otherwise, and nothing of
        this one kept. The look and the insert are one write transaction, so two
        submits of the same rows at once (threads, or processes on this ledger) make
        one job, never two that both send. None when the job was recorded.
        """
        from . import _rowstore as rowstore

        leader = None
        if isinstance(manifest, Path):
            target = self.folder(job["id"]) / MANIFEST
            if rowstore.leaders_path(manifest).exists():
                os.replace(rowstore.leaders_path(manifest), rowstore.leaders_path(target))
                leader = rowstore.read_table(rowstore.leaders_path(target)).column(0).to_numpy()
            os.replace(manifest, target)
            manifest = rowstore.read_table(target)
        else:
            self._write_table(job["id"], MANIFEST, manifest)
        if source is not None:
            self.write_file(job["id"], SOURCE, orjson.dumps(source))
        reused = self._reused(manifest, leader) if reuse else None
        if reused is not None:
            self._write_table(job["id"], "reused.arrow", reused)
        with self.transaction() as db:
            twin = _twin(db, job) if unless_same else None
            if twin is not None:
                shutil.rmtree(self.files / job["id"], ignore_errors=True)
                return twin
            _insert_job(db, job)
            if reused is not None:
                _insert_change(db, job["id"], "result", None, 0, "reused", "reused.arrow",
                               reused.num_rows)  # fmt: skip
            self._event(db, job["id"], "submit", f"job created with {job['n_rows']} rows")
            self._summarise(db, job["id"])
        assert rowstore  # imported for the manifest's schema in type checkers
        return None

    def add_planning_job(
        self, job: dict[str, Any], source: dict[str, Any], *, unless_same: bool = False
    ) -> str | None:
        """Record a job whose rows are planned in the background (status ``planning``,
        see :mod:`nbbatch._planning`): no manifest yet; ``source`` (its files) is kept
        so any session can plan them. :meth:`add_manifest` adds the rows.
        ``unless_same`` as for :meth:`add_job`: the id of the job already there with
        this fingerprint, found and nothing recorded in one transaction; else None."""
        self.write_file(job["id"], SOURCE, orjson.dumps(source))
        n = int(job["n_rows"])
        summary = {"counts": {"pending": n}, "planning": True}
        with self.transaction() as db:
            twin = _twin(db, job) if unless_same else None
            if twin is not None:
                shutil.rmtree(self.files / job["id"], ignore_errors=True)
                return twin
            _insert_job(db, {**job, "status": "planning"}, summary=summary)
            self._event(db, job["id"], "submit", f"job created with {n} rows, planning them")
        return None

    def add_manifest(self, job_id: str, manifest: Path, *, reuse: bool = True) -> bool:
        """Give a job recorded with :meth:`add_planning_job` its planned manifest file
        (moved into place) and make it ``running``, in one transaction with the results
        it reuses from earlier jobs. False, keeping nothing, if it was cancelled
        meanwhile."""
        from . import _rowstore as rowstore

        target = self.folder(job_id) / MANIFEST
        leaders = rowstore.leaders_path(manifest)
        leader = None
        if leaders.exists():
            os.replace(leaders, rowstore.leaders_path(target))
            leader = rowstore.read_table(rowstore.leaders_path(target)).column(0).to_numpy()
        os.replace(manifest, target)
        table = rowstore.read_table(target)
        reused = self._reused(table, leader) if reuse else None
        del table
        if reused is not None:
            self._write_table(job_id, "reused.arrow", reused)
        with self.transaction() as db:
            (status,) = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if status == "planning":
                db.execute("UPDATE jobs SET status = 'running' WHERE id = ?", (job_id,))
                if reused is not None:
                    _insert_change(db, job_id, "result", None, 0, "reused", "reused.arrow",
                                   reused.num_rows)  # fmt: skip
                self._event(db, job_id, "planned", "every row planned")
                self._summarise(db, job_id)
                return True
        for name in (MANIFEST, MANIFEST + ".leaders", "reused.arrow"):
            (self.folder(job_id) / name).unlink(missing_ok=True)
        return False

    def end_planning(self, job_id: str, status: str, message: str) -> None:
        """A job whose planning failed (or was cancelled) ends with nothing sent: every
        row counted ``failed`` (``cancelled``), ``message`` kept as its error."""
        with self.transaction() as db:
            row = db.execute("SELECT n_rows FROM jobs WHERE id = ?", (job_id,)).fetchone()
            n = int(row[0]) if row else 0
            state = "failed" if status == "failed" else "cancelled"
            summary = {"counts": {state: n, "pending": 0}, "error": message}
            db.execute(
                "UPDATE jobs SET status = ?, summary = ?, ended_at = ? WHERE id = ?",
                (status, orjson.dumps(summary).decode(), time.time(), job_id),
            )
            self._event(db, job_id, "error" if status == "failed" else "cancel", message)

    def _reused(self, manifest: pa.Table, leader: Any = None) -> pa.Table | None:
        """Results of earlier jobs for this manifest's leaders' exact requests (``leader``:
        each row's, when not the manifest's own column)."""
        import numpy as np

        if leader is None:
            leader = manifest.column("leader").to_numpy()
        leaders = np.flatnonzero(leader == np.arange(len(leader)))
        hashes = manifest.column("request_hash").to_numpy()[leaders]
        answers = self.answers(hashes)
        if answers.num_rows == 0:
            return None
        where = pc.index_in(pa.array(hashes), value_set=answers.column("request_hash"))
        found = where.is_valid().to_numpy(zero_copy_only=False)
        table = answers.take(where.filter(pa.array(found)))
        return table.set_column(0, "position", pa.array(leaders[found], pa.int64()))

    def answers(self, hashes: Any) -> pa.Table:
        """Succeeded results (``rowstore.RESULT_SCHEMA``) in any job for these request
        hashes (uint64), one per hash."""
        from . import _rowstore as rowstore
        from ._plan import HASH_SCHEME

        wanted = pa.array(hashes, pa.uint64())
        found = []
        for job_id, file in self.query(
            "SELECT c.job_id, c.file FROM changes c JOIN jobs j ON j.id = c.job_id "
            "WHERE c.kind = 'result' AND j.hash_scheme = ? ORDER BY c.seq",
            (HASH_SCHEME,),
        ):
            try:
                table = rowstore.read_table(self.files / job_id / file)
            except (OSError, pa.ArrowInvalid):
                continue  # a file removed by hand: nothing to reuse from it
            keep = pc.and_(
                pc.equal(table.column("status"), "succeeded"),
                pc.is_in(table.column("request_hash"), value_set=wanted),
            )
            found.append(table.filter(keep))
        if not found:
            return rowstore.RESULT_SCHEMA.empty_table()
        # Files with a score and files without (see rowstore.SCORE) join with null scores.
        table = pa.concat_tables(found, promote_options="default")
        _, first = np.unique(table.column("request_hash").to_numpy(), return_index=True)
        return table.take(pa.array(np.sort(first)))

    def succeeded_hashes(self, hashes: Any) -> Any:
        """For each request hash (a uint64 numpy array), whether an identical request
        already succeeded in some job (so a new job would reuse its answer)."""
        known = self.answers(hashes).column("request_hash")
        return pc.is_in(pa.array(hashes, pa.uint64()), value_set=known).to_numpy(
            zero_copy_only=False
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

    def claim_fingerprint(
        self, job_id: str, fingerprint: str, *, force: bool = False
    ) -> str | None:
        """Give a job planned in the background its fingerprint, unless another job
        already has it: that job's id then (nothing changed), else None.

        Looking and recording are one write transaction, so two jobs of the same rows
        planned at once (two threads, or two processes on this ledger) cannot both
        miss each other and both send: the second to get here finds the first.
        ``force`` records the fingerprint whatever other job has it."""
        with self.transaction() as db:
            if not force:
                row = db.execute(_SAME_JOB + " AND id != ?" + _NEWEST, (fingerprint, job_id))
                found = row.fetchone()
                if found is not None:
                    return str(found[0])
            db.execute("UPDATE jobs SET fingerprint = ? WHERE id = ?", (fingerprint, job_id))
        return None

    def find_job(self, fingerprint: str) -> str | None:
        """The newest job with this fingerprint (same data and request), if any.

        A job that ended (failed or cancelled) before anything was sent, such as one
        refused by ``max_cost`` while its rows were planned in the background, is passed
        over: it holds nothing to attach to, and its error advises submitting again."""
        rows = self.query(_SAME_JOB + _NEWEST, (fingerprint,))
        return rows[0][0] if rows else None

    def job_status(self, job_id: str) -> str | None:
        """The job's recorded status (``running``, ``cancelled``, ...), as any process
        last set it."""
        rows = self.query("SELECT status FROM jobs WHERE id = ?", (job_id,))
        return rows[0][0] if rows else None

    def set_job_status(self, job_id: str, status: str) -> None:
        """Record the job's overall status."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET status = ? WHERE id = ?", (status, job_id))

    def set_job_time(self, job_id: str, name: str, at: float | None) -> None:
        """Record when the job ended (``ended_at``), was collected (``collected_at``) or
        last checked at its provider (``checked_at``)."""
        if name not in ("ended_at", "collected_at", "checked_at"):
            raise ValueError(f"not a time of a job: {name!r}")
        with self.transaction() as db:
            db.execute(f"UPDATE jobs SET {name} = ? WHERE id = ?", (at, job_id))

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
        from ._scrub import scrub

        # Events are shown by the sidebar and kept on disk: never with a key in them.
        db.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?)", (job_id, time.time(), kind, scrub(message))
        )

    # -- row state -----------------------------------------------------------------------
    def row_state(self, job_id: str) -> Any:  # -> rowstore.RowState
        """The job's rows as the latest change left them (kept in memory, brought up to
        date from the files of changes recorded since, by any process)."""
        with self._lock:
            if job_id not in self._states and not self.has_rows(job_id):
                self._not_planned(job_id)
            state = _replay(self._db, self.files, job_id, self._states.get(job_id))
            self._states[job_id] = state
            return state

    def _not_planned(self, job_id: str) -> None:
        """Raise the error for a job that has no rows yet (see :mod:`nbbatch._planning`)."""
        from ._errors import InputError, JobNotFoundError, NbbatchError

        record = self.job(job_id)
        if record is None:  # forgotten (by this process or another), or never here
            raise JobNotFoundError(
                f"job {job_id} is not in the ledger at {self.path}: it was forgotten "
                "(job.forget() or `nbbatch forget`), which removed its rows and result "
                "files, so there is nothing to merge or read. Submit the data again to get "
                "answers; nb.jobs() lists the jobs the ledger holds.",
                job_id=job_id,
            )
        status = record.get("status")
        if status == "planning":
            raise NbbatchError(
                f"job {job_id} is still planning its {record.get('n_rows', 0):,} rows in the "
                "background, so it has no rows or results yet: job.wait_sent() (or "
                "job.wait()) blocks until they are planned.",
                job_id=job_id,
            )
        summary = orjson.loads((self.jobs_summary(job_id)) or "{}")
        raise InputError(
            str(summary.get("error") or f"job {job_id} has no rows: it ended {status}"),
            job_id=job_id,
        )

    def has_rows(self, job_id: str) -> bool:
        """Whether the job has its rows (a manifest): not one still planning, or whose
        planning failed or was cancelled (see :mod:`nbbatch._planning`)."""
        return (self.files / job_id / MANIFEST).exists()

    def jobs_summary(self, job_id: str) -> str | None:
        """The job's summary as SQLite keeps it (JSON text), or None."""
        rows = self.query("SELECT summary FROM jobs WHERE id = ?", (job_id,))
        return rows[0][0] if rows else None

    def _summarise(self, db: sqlite3.Connection, job_id: str) -> None:
        """Keep the job's counts and usage in SQLite, for listing jobs without files."""
        state = _replay(db, self.files, job_id, self._states.get(job_id))
        self._states[job_id] = state
        db.execute(
            "UPDATE jobs SET summary = ? WHERE id = ?",
            (orjson.dumps(state.summary()).decode(), job_id),
        )

    def counts(self, job_id: str) -> dict[str, int]:
        """How many rows are in each state, and how many were reused from earlier jobs,
        deduplicated onto an identical request, or answered through the real-time API.
        A job with no rows yet (still planning, or it ended so) has its recorded ones."""
        if not self.has_rows(job_id):
            recorded = orjson.loads(self.jobs_summary(job_id) or "{}").get("counts")
            if recorded is not None:
                return {"pending": 0, **recorded}
        return dict(self.row_state(job_id).counts())

    def sent_positions(self, job_id: str, intent: str) -> Any:
        """The positions of the leaders sent in the batch recorded as ``intent``."""
        from . import _rowstore as rowstore

        rows = self.query(
            "SELECT file FROM changes WHERE job_id = ? AND kind = 'send' AND batch = ? "
            "ORDER BY seq DESC LIMIT 1",
            (job_id, intent),
        )
        if not rows:
            return np.zeros(0, dtype=np.int64)
        return rowstore.read_table(self.files / job_id / rows[0][0]).column("position").to_numpy()

    # -- batches -------------------------------------------------------------------------
    def add_intent(
        self,
        job_id: str,
        part: str,
        attempt: int,
        positions: Any,
        stage: int = 0,
        claim: QuotaClaim | None = None,
    ) -> str | None:
        """Record, before a create call, that the leaders at ``positions`` are about to
        be sent.

        Returns a provisional batch id (``intent-...``), which stays the batch's
        ``intent`` when :meth:`confirm_batch` swaps in the provider's id. An intent left
        behind by a process that died mid-call is how a resumed job knows to look for
        that batch at the provider instead of paying for it twice. ``stage`` is the
        escalation stage the rows go in (0: the job's own request parameters).

        Returns None, recording nothing, if the job was cancelled (by any process): the
        check and the record are one transaction, so a cancel elsewhere either comes
        first and stops this send, or comes after and finds the intent.

        With a ``claim``, the batch holds ``claim.units`` of its account's queue: when
        what the ledger's open batches already hold (every job's) plus these would pass
        ``claim.cap``, nothing is recorded and :class:`QuotaFull` is raised. Check and
        record are one transaction, so two jobs sending at once never both take the
        last room.
        """
        intent = f"intent-{secrets.token_hex(8)}"
        name = self._write_table(
            job_id, f"send-{intent}.arrow", pa.table({"position": pa.array(positions, pa.int64())})
        )
        with self.transaction() as db:
            (status,) = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if status == "cancelled":
                (self.files / job_id / name).unlink(missing_ok=True)
                return None
            if claim is not None and claim.cap is not None:
                in_use = _in_use(db, claim.key, claim.model)
                if in_use and in_use + claim.units > claim.cap:
                    (self.files / job_id / name).unlink(missing_ok=True)
                    raise QuotaFull(in_use)
            db.execute(
                "INSERT INTO batches (batch_id, intent, job_id, attempt, created, n_requests, "
                "status, part, raw, stage, quota_key, quota_model, quota_units) "
                "VALUES (?, ?, ?, ?, ?, ?, 'sending', ?, ?, ?, ?, ?, ?)",
                (intent, intent, job_id, attempt, time.time(), len(positions), part,
                 orjson.dumps(owner()).decode(), stage,
                 claim.key if claim else None, claim.model if claim else None,
                 claim.units if claim else 0),
            )  # fmt: skip
            _insert_change(
                db, job_id, "send", intent, attempt, "batch", name, len(positions), stage
            )
            self._summarise(db, job_id)
        return intent

    def confirm_batch(self, intent: str, batch_id: str, status: str, raw: dict[str, Any]) -> None:
        """Record the provider's batch id for an intent, the moment create returns."""
        with self.transaction() as db:
            db.execute(
                "UPDATE batches SET batch_id = ?, status = ?, raw = ? WHERE intent = ?",
                (batch_id, status, orjson.dumps(raw).decode(), intent),
            )
            job_id, n = db.execute(
                "SELECT job_id, n_requests FROM batches WHERE batch_id = ?", (batch_id,)
            ).fetchone()
            self._event(db, job_id, "batch", f"batch {batch_id} created with {n} requests")

    def release_intent(self, intent: str) -> None:
        """No batch came of that create call: its rows go back to pending and unsent."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT c.job_id, c.attempt, c.file, c.n, c.stage FROM changes c "
                "WHERE c.batch = ? AND c.kind = 'send' ORDER BY seq DESC LIMIT 1",
                (intent,),
            ).fetchone()
            db.execute("DELETE FROM batches WHERE intent = ?", (intent,))
            if row:
                job_id, attempt, file, n, stage = row
                _insert_change(db, job_id, "send", None, attempt, "batch", file, n, stage)
                self._event(db, job_id, "resume", f"{intent}: no batch at the provider")
                self._summarise(db, job_id)

    def refuse_batch(self, batch_id: str, failure: str, raw: dict[str, Any]) -> None:
        """A batch the provider refused for its queue quota (it ran nothing, nothing is
        paid): it ends ``refused``, holds no quota, and its rows go back to pending and
        unsent, to go in a later wave (never failed)."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT c.job_id, c.attempt, c.file, c.n, c.stage FROM changes c "
                "JOIN batches b ON c.batch = b.intent WHERE b.batch_id = ? AND c.kind = 'send' "
                "ORDER BY c.seq DESC LIMIT 1",
                (batch_id,),
            ).fetchone()
            db.execute(
                "UPDATE batches SET status = 'refused', ended = 1, collected = 1, failure = ?, "
                "raw = ?, quota_units = 0 WHERE batch_id = ?",
                (failure, orjson.dumps(raw).decode(), batch_id),
            )
            if row:
                job_id, attempt, file, n, stage = row
                _insert_change(db, job_id, "send", None, attempt, "batch", file, n, stage)
                self._event(db, job_id, "quota", f"batch {batch_id} refused for quota: {failure}")
                self._summarise(db, job_id)

    def quota_in_use(self, key: str, model: str) -> int:
        """What the ledger's open batches (every job's, intents included) hold of the
        queue of account ``key`` for ``model``."""
        with self._lock:
            return _in_use(self._db, key, model)

    def quota_batches(self, key: str, model: str) -> list[tuple[str, str]]:
        """``(batch_id, job_id)`` of the ledger's open batches in the queue of account
        ``key`` for ``model`` that the provider confirmed (intents left out)."""
        rows = self.query(
            "SELECT batch_id, job_id FROM batches WHERE quota_key = ? AND quota_model = ? "
            "AND ended = 0 AND batch_id NOT LIKE 'intent-%'",
            (key, model),
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    def quota_open(self, key: str, model: str) -> list[str]:
        """The statuses of the ledger's open batches in the queue of account ``key``
        for ``model`` (``sending`` for a create call not yet answered)."""
        rows = self.query(
            "SELECT status FROM batches WHERE quota_key = ? AND quota_model = ? AND ended = 0",
            (key, model),
        )
        return [str(r[0]) for r in rows]

    def quota_limit(self, key: str, model: str) -> dict[str, Any] | None:
        """What was learned of the queue limit of account ``key`` for ``model``."""
        rows = self.query(
            "SELECT unit, queue_limit, source, ceiling, refused_at, wave_seconds, updated "
            "FROM quota_limits "
            "WHERE key = ? AND model = ?",
            (key, model),
        )
        if not rows:
            return None
        names = ("unit", "limit", "source", "ceiling", "refused_at", "wave_seconds", "updated")
        return dict(zip(names, rows[0], strict=True))

    def set_quota_limit(self, key: str, model: str, **values: Any) -> None:
        """Record what was learned of a queue limit (``unit``, ``limit``, ``source``,
        ``ceiling``, ``refused_at``, ``wave_seconds``); values not given are kept."""
        columns = {"unit": "unit", "limit": "queue_limit", "source": "source",
                   "ceiling": "ceiling", "refused_at": "refused_at",
                   "wave_seconds": "wave_seconds"}  # fmt: skip
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO quota_limits (key, model, unit, updated) "
                "VALUES (?, ?, ?, ?)",
                (key, model, values.get("unit") or "tokens", time.time()),
            )
            for name, value in values.items():
                db.execute(
                    f"UPDATE quota_limits SET {columns[name]} = ?, updated = ? "
                    "WHERE key = ? AND model = ?",
                    (value, time.time(), key, model),
                )

    def waves(self, job_id: str) -> dict[str, Any]:
        """The job's wave record (see :mod:`nbbatch._quota`), or {}."""
        rows = self.query("SELECT waves FROM jobs WHERE id = ?", (job_id,))
        return dict(orjson.loads(rows[0][0])) if rows and rows[0][0] else {}

    def set_waves(self, job_id: str, waves: dict[str, Any]) -> None:
        """Replace the job's wave record."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET waves = ? WHERE id = ?", (orjson.dumps(waves).decode(), job_id)
            )

    def take_sending(self, job_id: str) -> bool:
        """Become the job's one sender, unless a live one holds it (False then). The
        holder is recorded with :func:`owner`; a dead process's hold lapses."""
        me = owner()
        with self.transaction() as db:
            row = db.execute("SELECT sender FROM jobs WHERE id = ?", (job_id,)).fetchone()
            holder = orjson.loads(row[0]) if row and row[0] else None
            if holder is not None and holder != me and alive(holder):
                if holder.get("pid") != me["pid"] or holder.get("thread") in _live_threads():
                    return False
            db.execute(
                "UPDATE jobs SET sender = ? WHERE id = ?", (orjson.dumps(me).decode(), job_id)
            )
        return True

    def sending_elsewhere(self, job_id: str) -> bool:
        """Whether a live sender other than this process holds the job (see
        :meth:`take_sending`): its rows not sent yet are being sent."""
        rows = self.query("SELECT sender FROM jobs WHERE id = ?", (job_id,))
        holder = orjson.loads(rows[0][0]) if rows and rows[0][0] else None
        return holder is not None and holder.get("pid") != owner()["pid"] and alive(holder)

    def release_sending(self, job_id: str) -> None:
        """Give up being the job's sender (see :meth:`take_sending`)."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET sender = NULL WHERE id = ?", (job_id,))

    def requeue(self, job_id: str, positions: Any, attempt: int, stage: int = 0) -> None:
        """Put the leaders at ``positions`` back to pending, in no batch, to be sent as
        ``attempt`` of ``stage`` (``resubmit_failed``)."""
        name = self._write_table(
            job_id,
            f"requeue-{attempt}-{secrets.token_hex(4)}.arrow",
            pa.table({"position": pa.array(positions, pa.int64())}),
        )
        with self.transaction() as db:
            _insert_change(db, job_id, "send", None, attempt, "batch", name, len(positions), stage)
            self._summarise(db, job_id)

    # -- escalation stages -----------------------------------------------------------------
    def stages(self, job_id: str) -> list[dict[str, Any]]:
        """The job's escalation stages (1, 2, ...), oldest first, ``spec`` decoded."""
        with self._lock:
            cur = self._db.execute(
                "SELECT stage, spec, salt, first_attempt, n_rows, reason, created FROM stages "
                "WHERE job_id = ? ORDER BY stage",
                (job_id,),
            )
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        for r in rows:
            r["spec"] = orjson.loads(r["spec"])
        return rows

    def add_stage(self, job_id: str, stage: dict[str, Any], positions: Any) -> bool:
        """Start escalation stage ``stage["stage"]``: record its request parameters and
        put the leaders at ``positions`` back to pending in it, unsent, in one
        transaction, so no process ever sees a stage without its rows (or rows without
        their stage). False, recording nothing, when that stage exists already (another
        process started it first) or the job was cancelled."""
        number, attempt = int(stage["stage"]), int(stage["first_attempt"])
        name = self._write_table(
            job_id,
            f"stage-{number}-{secrets.token_hex(4)}.arrow",
            pa.table({"position": pa.array(positions, pa.int64())}),
        )
        with self.transaction() as db:
            (status,) = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            taken = db.execute(
                "SELECT 1 FROM stages WHERE job_id = ? AND stage = ?", (job_id, number)
            ).fetchone()
            if status == "cancelled" or taken:
                (self.files / job_id / name).unlink(missing_ok=True)
                return False
            db.execute(
                "INSERT INTO stages (job_id, stage, spec, salt, first_attempt, n_rows, reason, "
                "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, number, orjson.dumps(stage["spec"]).decode(), stage.get("salt"),
                 attempt, int(stage["n_rows"]), stage["reason"], time.time()),
            )  # fmt: skip
            if len(positions):
                _insert_change(
                    db, job_id, "send", None, attempt, "batch", name, len(positions), number
                )
                # It runs again, so it ends again and is collected again.
                db.execute(
                    "UPDATE jobs SET status = 'running', ended_at = NULL, collected_at = NULL "
                    "WHERE id = ?",
                    (job_id,),
                )
            self._event(
                db, job_id, "escalate",
                f"stage {number}: {stage['n_rows']} rows on {stage['spec']['model']} "
                f"({stage['reason']})",
            )  # fmt: skip
            self._summarise(db, job_id)
        if not len(positions):
            (self.files / job_id / name).unlink(missing_ok=True)
        return True

    def abandon_intent(self, intent: str) -> None:
        """This process gives up waiting on a create call whose outcome it does not know:
        the next refresh (here or in any process) looks for the batch at the provider."""
        with self.transaction() as db:
            db.execute("UPDATE batches SET raw = '{}' WHERE intent = ?", (intent,))

    def drop_intent(self, job_id: str, intent: str, reason: str) -> None:
        """The create call was refused for sure: its rows end failed (``not_sent``,
        retryable)."""
        from . import _rowstore as rowstore

        positions = self.sent_positions(job_id, intent)
        n = len(positions)
        failed = rowstore.failure_table(positions, "failed", "not_sent", reason, True)
        name = self._write_table(job_id, f"results-{intent}.arrow", failed)
        with self.transaction() as db:
            db.execute("DELETE FROM batches WHERE intent = ?", (intent,))
            _insert_change(db, job_id, "result", intent, 0, "batch", name, n)
            self._event(db, job_id, "error", f"rows not sent: {reason}")
            self._summarise(db, job_id)

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
                "SELECT batch_id, intent, attempt, created, n_requests, status, ended, collected,"
                " failure, done, part, raw, stage, quota_key, quota_model, quota_units "
                "FROM batches WHERE job_id = ? "
                "ORDER BY created, batch_id",
                (job_id,),
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def record_results(
        self, job_id: str, intent: str | None, table: pa.Table, note: str, origin: str = "batch"
    ) -> None:
        """Store results (``rowstore.RESULT_SCHEMA``) and, for a batch (its ``intent``),
        mark it collected, in one transaction once the file is written. Results of a
        batch apply only to rows whose latest attempt went in it, so a late batch never
        overwrites a newer attempt; ``intent=None`` applies to the rows as they are (the
        real-time fallback, ``origin="realtime"``)."""
        name = f"results-{intent}.arrow" if intent else f"{origin}-{secrets.token_hex(4)}.arrow"
        self._write_table(job_id, name, table)
        with self.transaction() as db:
            _insert_change(db, job_id, "result", intent, 0, origin, name, table.num_rows)
            if intent is not None:
                db.execute("UPDATE batches SET collected = 1 WHERE intent = ?", (intent,))
            self._event(db, job_id, "results", note)
            self._summarise(db, job_id)

    def jobs(self) -> list[dict[str, Any]]:
        """Every job, newest first (``summary``: its counts and usage, see rowstore)."""
        with self._lock:
            cur = self._db.execute("SELECT * FROM jobs ORDER BY created DESC")
            names = [d[0] for d in cur.description]
            records = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        for r in records:
            try:
                r["summary"] = orjson.loads(r["summary"] or "{}")
            except orjson.JSONDecodeError:  # a damaged cache of counts: the listing goes on
                r["summary"] = {}
        return records

    def forget_job(self, job_id: str) -> bool:
        """Remove a job and everything recorded about it (batches, events, changes and
        its files). Returns False if there was no such job. Rows other jobs reused from
        it keep their copies."""
        with self.transaction() as db:
            for table in ("changes", "batches", "events", "stages"):
                db.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))
            found = db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
            self._states.pop(job_id, None)
        shutil.rmtree(self.files / job_id, ignore_errors=True)
        return bool(found)


#: The jobs with a fingerprint that a new job of the same rows would be (see
#: :meth:`Ledger.find_job`): all but those that ended with nothing sent.
_SAME_JOB = (
    "SELECT id FROM jobs WHERE fingerprint = ? AND NOT (status IN ('failed', "
    "'cancelled') AND NOT EXISTS (SELECT 1 FROM batches WHERE batches.job_id = jobs.id))"
)
_NEWEST = " ORDER BY created DESC LIMIT 1"


_JOB_COLUMNS = (
    "id", "created", "provider", "model", "endpoint", "output", "template", "spec",
    "base_url", "n_rows", "id_column", "status", "fingerprint", "policy", "salt", "backend",
    "hash_scheme", "deadline", "origin", "credential", "key_hash", "summary",
)  # fmt: skip
#: The columns a job's record may leave out (recorded before they were, or not known).
_JOB_OPTIONAL = ("salt", "backend", "hash_scheme", "deadline", "origin", "credential",
                 "key_hash", "summary")  # fmt: skip


def _insert_job(
    db: sqlite3.Connection, job: dict[str, Any], *, summary: dict[str, Any] | None = None
) -> None:
    """Inside a write transaction: insert ``job``'s row into ``jobs``, every column in one
    place (a job planned in the background and one planned at submit record the same
    fields, its key's origin among them)."""
    names = ", ".join(_JOB_COLUMNS)
    values = ", ".join(f":{c}" for c in _JOB_COLUMNS)
    row = {
        **dict.fromkeys(_JOB_OPTIONAL),
        **job,
        "spec": orjson.dumps(job["spec"]).decode(),
        "policy": orjson.dumps(job["policy"]).decode(),
    }
    if summary is not None:
        row["summary"] = orjson.dumps(summary).decode()
    db.execute(f"INSERT INTO jobs ({names}) VALUES ({values})", row)


def _twin(db: sqlite3.Connection, job: dict[str, Any]) -> str | None:
    """Inside a write transaction: the job already there with ``job``'s fingerprint."""
    found = db.execute(_SAME_JOB + " AND id != ?" + _NEWEST, (job["fingerprint"], job["id"]))
    row = found.fetchone()
    return str(row[0]) if row is not None else None


def _live_threads() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.ident is not None}


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
