"""Tables on a cluster: Dask and PySpark DataFrames, planned and encoded on the workers.

A Dask DataFrame (``nb.submit(ddf, ...)``) or a PySpark DataFrame is never brought to
the driver. Each partition is planned on a worker with the same :func:`plan.make_plan`
as an in-memory table (so every check and skip rule is the same) and its request lines
are encoded there too, with the provider's own encoder (a pure function of the request
parameters: no client, no key goes to the workers). A worker writes two Arrow files
per partition to a staging folder: the partition's manifest rows and its request lines.

The driver then only *records and sends*: it appends the manifest pieces into the
job's manifest (what must hold across partitions, unique ids and which rows share a
request, is worked out from 16 bytes a row), moves the request files into the job's
folder, and :mod:`nbbatch._send` uploads the lines the workers built (taking only the
rows it sends: duplicates and reused answers are left out, as for pandas).

Rows are named by their position in the frame (partition by partition, row by row),
or by ``id_column``. Each partition's row count is recorded with the job, so merging
back can find each partition's rows by position without a pass over the data, and
tell when the partitions changed. ``job.merge(ddf)`` returns a Dask DataFrame built
lazily, partition by partition: each partition reads its slice of a results file and
checks that its rows still render the requests sent for them. A Spark DataFrame is
merged the same way (``mapInArrow``), keeping its partitions and order.

The staging folder and the results files are beside the ledger, which suits a
``LocalCluster``, Spark's local mode, or workers that share the driver's disk. Workers
on other machines need a folder all of them and the driver can read and write: set
``NBBATCH_STAGING`` to it (a shared mount).

Neither library is imported by this module: they are imported only to handle a frame
they made.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import socket
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import _files, _plan, _prompt, _stream, states
from . import _frames as frames
from . import _rowstore as rowstore
from . import columns as _columns
from ._errors import InputError, MergeError
from .providers.base import RequestSpec

if TYPE_CHECKING:
    from ._context import JobContext

log = logging.getLogger("nbbatch")

DASK, SPARK = "dask", "spark"
#: Where workers and the driver exchange files, when not beside the ledger.
STAGING_ENV = "NBBATCH_STAGING"
#: Rows per row group of a results file (a partition reads only its groups).
RESULT_ROWS = 65_536
REQUEST_SCHEMA = pa.schema([("request", pa.large_binary())])


def kind_of(data: Any) -> str | None:
    """``"dask"`` for a Dask DataFrame, ``"spark"`` for a PySpark DataFrame, else None.
    A library not imported cannot have made ``data``, so it is not imported to ask."""
    if "dask.dataframe" in sys.modules:
        import dask.dataframe as dd

        if isinstance(data, dd.DataFrame):
            return DASK
        if isinstance(data, dd.Series):
            raise InputError(
                "data is a Dask Series; pass a Dask DataFrame (series.to_frame()) and name "
                "its column in the prompt."
            )
    if "pyspark.sql" in sys.modules:
        from pyspark.sql import DataFrame

        if isinstance(data, DataFrame):
            return SPARK
    return None


def columns_of(data: Any) -> list[str]:
    """The column names of a Dask or Spark frame (nothing computed)."""
    return [str(c) for c in data.columns]


def head(data: Any, n: int = 5) -> pd.DataFrame:
    """The first rows of a Dask or Spark frame as pandas, for the checks made before
    planning (placeholders, output names, request parameters)."""
    if kind_of(data) == DASK:
        # npartitions=-1: a first partition may be empty (after a filter).
        return data.head(n, npartitions=-1, compute=True).reset_index(drop=True)
    return frames.from_arrow(data.limit(n).toArrow())


def staging_root(default: Path) -> Path:
    """The folder where workers write their files: ``NBBATCH_STAGING`` or ``default``.

    ``NBBATCH_STAGING`` must be this user's own folder that no one else may write (made
    0700 if missing): its owner, or anyone who may write it, could read the prompts and
    rewrite the answers ``merge()`` returns. Raises :class:`InputError` otherwise."""
    root = os.environ.get(STAGING_ENV)
    if not root:
        return default
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise InputError(
            f"{STAGING_ENV}={root} belongs to another user (uid {st.st_uid}), who could read "
            "the prompts and rewrite the answers merge() returns; nothing was sent. Set "
            f"{STAGING_ENV} to a folder of your own (mkdir -m 700 ...)."
        )
    if st.st_mode & 0o022:
        raise InputError(
            f"{STAGING_ENV}={root} may be written by others (mode {st.st_mode & 0o777:o}), "
            "who could replace the files the workers write and so the answers merge() "
            f"returns; nothing was sent. Make it yours alone (chmod 700 {root}) or set "
            f"{STAGING_ENV} to a folder of your own."
        )
    return path


def _private_file(path: Path) -> None:
    """Create ``path`` empty, mode 0600, never through a link (a writer then opens it)."""
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))


def file_digest(path: Path) -> list[Any]:
    """``[size, sha256]`` of the file at ``path``."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return [size, digest.hexdigest()]


def _changed(path: Path) -> str:
    return (
        f"the file {path} is not the one the worker wrote (its size or SHA-256 differs): "
        "someone changed it in the staging folder; nothing of it was used. Submit again, "
        f"with {STAGING_ENV} a folder of your own."
    )


@dataclass(frozen=True)
class Work:
    """What a worker needs to plan and encode its partitions (picklable: no client)."""

    template: str
    id_column: str | None
    missing: str
    salt: str
    as_labels: bool
    provider: str
    spec: RequestSpec
    folder: str


@dataclass
class Planned:
    """A frame planned on its workers: the job's plan file and what to record."""

    plan: _stream.StreamPlan
    source: dict[str, Any]  # recorded as the job's source.json
    staging: Path  # the request files, until moved into the job's folder

    def move_requests(self, job_folder: Path) -> None:
        """Move the workers' request files into the job's folder (they are sent from
        there, also after a restart), then drop the staging folder."""
        target = job_folder / "requests"
        target.mkdir(parents=True, exist_ok=True, mode=0o700)
        digests = self.source.get("digests", {})
        for name in self.source["requests"]:
            shutil.move(str(self.staging / name), str(target / name))
            # Checked once moved: in the job's folder no one else can change it any more.
            # One that changed is dropped, and the driver encodes those rows itself from
            # the checked manifest (as for a job whose files were never moved in).
            if file_digest(target / name) != digests.get(name):
                (target / name).unlink()
                log.warning("%s; the driver encodes its rows itself", _changed(self.staging / name))
        shutil.rmtree(self.staging, ignore_errors=True)

    def discard(self) -> None:
        """Drop everything planned (a job not recorded after all)."""
        self.plan.discard()
        shutil.rmtree(self.staging, ignore_errors=True)


# -- on the workers -------------------------------------------------------------------------


def _unshared(what: str, path: Path) -> str:
    return (
        f"the worker {socket.gethostname()} cannot see the {what} {path}, which the driver "
        f"wrote: set {STAGING_ENV} to a folder that the driver and every worker share (a "
        "shared mount)."
    )


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"


def count_rows(frame: pd.DataFrame, id_column: str | None) -> tuple[int, bool]:
    """A partition's row count and whether its ``id_column`` values are valid custom_ids."""
    if not id_column or not len(frame):
        return len(frame), True
    labels = _plan.label_text(frame[id_column])
    valid = pc.all(pc.match_substring_regex(labels, _plan.CUSTOM_ID_PATTERN.pattern)).as_py()
    return len(frame), bool(valid)


def plan_partition(
    work: Work, part: int, offset: int, parts: Iterable[pd.DataFrame]
) -> dict[str, Any]:
    """Plan and encode one partition (its rows in ``parts``, in order, starting at
    position ``offset`` of the whole frame) into two files in ``work.folder``: its
    manifest rows and its request lines (null for a row not sent). Returns what the
    driver needs: the rows, why the first skipped row is not sent, the hash scheme and
    where it ran."""
    from . import providers

    template = _prompt.parse(work.template)
    encoder = providers.provider_class(work.provider)(None)
    folder = Path(work.folder)
    if not folder.is_dir():
        raise InputError(_unshared("staging folder", folder))
    names = (f"plan-{part:06d}.arrow", f"requests-{part:06d}.arrow")
    tmp = [folder / f".{name}.{secrets.token_hex(4)}.tmp" for name in names]
    n = 0
    first_skip = None
    try:
        for t in tmp:
            _private_file(t)
        with (
            pa.OSFile(str(tmp[0]), "wb") as msink,
            pa.ipc.new_file(msink, rowstore.MANIFEST_SCHEMA) as manifest,
            pa.OSFile(str(tmp[1]), "wb") as rsink,
            pa.ipc.new_file(rsink, REQUEST_SCHEMA) as requests,
        ):
            for frame in parts:
                if not len(frame):
                    continue
                rows = _plan_piece(work, template, frame, offset + n)
                hashes = _plan.request_hashes(rows, work.salt)
                if first_skip is None and rows.skip_reasons:
                    first_skip = rows.skip_reasons[0]
                manifest.write_table(rows.manifest(hashes))
                requests.write_table(_request_table(rows, encoder, work.spec))
                n += rows.n_rows
        # What the driver checks before it uses them (it gets this through the engine,
        # not through the shared folder).
        digests = {name: file_digest(t) for t, name in zip(tmp, names, strict=True)}
        for t, name in zip(tmp, names, strict=True):
            os.replace(t, folder / name)
    finally:
        for t in tmp:
            t.unlink(missing_ok=True)
    return {
        "part": part,
        "rows": n,
        "first_skip": first_skip,
        "scheme": _plan.HASH_SCHEME,
        "worker": _worker_name(),
        "digests": digests,
    }


def _plan_piece(
    work: Work, template: _prompt.Template, frame: pd.DataFrame, start: int
) -> _plan.Plan:
    """The plan of one piece of a partition, its first row at position ``start`` of the
    whole frame (rows named by position unless an ``id_column`` names them)."""
    if not work.id_column:
        frame = frame.set_axis(pd.RangeIndex(start, start + len(frame)))
    rows = _plan.make_plan(frame, template, id_column=work.id_column, missing=work.missing)
    if not work.as_labels:
        rows.custom_ids = _plan.make_custom_ids(rows.labels, start, as_labels=False)
    return rows


def _request_table(rows: _plan.Plan, encoder: Any, spec: RequestSpec) -> pa.Table:
    """The request line of each row of ``rows`` (null for a row not sent), encoded by
    the provider ``encoder``."""
    lines = b""
    if len(rows.send_positions):
        ids = rows.custom_ids.take(pa.array(rows.send_positions, pa.int64()))
        lines = encoder.encode(ids, rows.prompts, spec)
    return pa.table([_per_row(lines, rows.send_positions, rows.n_rows)], REQUEST_SCHEMA)


def _per_row(lines: bytes, positions: np.ndarray, n: int) -> pa.Array:
    """The encoded ``lines`` (one per row at ``positions``) as one binary value per row
    of ``n``, null where no request is sent: the line bytes are not copied."""
    ends = np.flatnonzero(np.frombuffer(lines, dtype=np.uint8) == 0x0A) + 1
    if len(ends) != len(positions):
        raise AssertionError("one request line per row was not produced")
    offsets = np.concatenate([[0], ends]).astype(np.int64)
    sent = pa.Array.from_buffers(
        pa.large_binary(), len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(lines)]
    )
    if len(positions) == n:
        return sent
    index = np.full(n, -1, dtype=np.int64)
    index[positions] = np.arange(len(positions))
    return sent.take(pa.array(np.maximum(index, 0), mask=index < 0))


# -- on the driver: planning ----------------------------------------------------------------


def plan(
    data: Any,
    template: str,
    *,
    id_column: str | None,
    missing: str,
    salt: str,
    provider: str,
    spec: RequestSpec,
    folder: Path,
    fingerprint_of: list[Any],
) -> Planned:
    """Plan a Dask or Spark frame on its workers (see the module docstring); the plan
    file goes to ``folder`` (beside the ledger), the workers' files to a staging folder.
    Nothing is recorded in the ledger here."""
    if missing not in ("skip", "empty"):
        raise InputError(f"missing must be 'skip' or 'empty', found {missing!r}.")
    if id_column is not None and id_column not in columns_of(data):
        raise InputError(
            f"id_column {id_column!r} is not a column. Columns are: {columns_of(data)}."
        )
    kind = kind_of(data)
    used = list(
        dict.fromkeys([*_prompt.parse(template).columns, *([id_column] if id_column else [])])
    )
    root = staging_root(folder)
    _sweep(root)
    staging = root / f".staging-{secrets.token_hex(6)}"
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging.chmod(0o700)  # whatever the umask
    planned = None
    try:
        engine = _Dask(data, used) if kind == DASK else _Spark(data, used)
        counts = engine.counts(id_column)
        total = sum(rows for rows, _ in counts)
        if total == 0:
            raise InputError(
                "data has no rows, so there is nothing to send; nothing was recorded. Check "
                "the filter that produced it."
            )
        as_labels = all(valid for _, valid in counts)  # positions always are
        work = Work(template, id_column, missing, salt, as_labels, provider, spec, str(staging))
        offsets = np.concatenate([[0], np.cumsum([rows for rows, _ in counts])]).tolist()
        summaries = sorted(engine.plan(work, offsets), key=lambda s: s["part"])
        planned = _assemble(summaries, counts, staging, folder, id_column, fingerprint_of)
        source = {
            "kind": kind,
            "partitions": [rows for rows, _ in counts],
            "workers": sorted({s["worker"] for s in summaries}),
            "requests": [f"requests-{s['part']:06d}.arrow" for s in summaries],
            "digests": {name: digest for s in summaries for name, digest in s["digests"].items()},
            "provider": provider,
            "spec": orjson.loads(orjson.dumps(spec.as_dict())),
        }
        return Planned(plan=planned, source=source, staging=staging)
    except BaseException:
        if planned is not None:
            planned.discard()
        shutil.rmtree(staging, ignore_errors=True)
        raise


#: A staging folder older than this was left by a process that died while planning.
STALE_SECONDS = 24 * 3600


def _sweep(root: Path) -> None:
    """Remove staging folders left behind by submits that died while planning."""
    import time

    if not root.is_dir():
        return
    for old in root.glob(".staging-*"):
        try:
            if time.time() - old.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue  # another process removed it meanwhile


def _assemble(
    summaries: list[dict],
    counts: list[tuple[int, bool]],
    staging: Path,
    folder: Path,
    id_column: str | None,
    fingerprint_of: list[Any],
) -> _stream.StreamPlan:
    """Append the workers' manifest pieces, in partition order, into one plan file."""
    if [s["part"] for s in summaries] != list(range(len(counts))):
        raise InputError("some partitions were not planned; submit again.")
    changed = [
        s["part"] for s, (rows, _) in zip(summaries, counts, strict=True) if s["rows"] != rows
    ]
    if changed:
        raise InputError(
            f"partition {changed[0]} gave a different number of rows on a second reading: "
            "the frame is not deterministic (e.g. a random sample). persist() or checkpoint "
            "it first, then submit again."
        )
    schemes = {s["scheme"] for s in summaries}
    if schemes != {_plan.HASH_SCHEME}:
        raise InputError(
            f"the workers hash requests with {sorted(schemes)} but this process with "
            f"{_plan.HASH_SCHEME}: install the same polars version on the workers."
        )
    n = sum(s["rows"] for s in summaries)
    keys = np.zeros(n, dtype=np.uint64) if id_column else None
    plan = _stream.PlanFile(folder, n, ["engine", *fingerprint_of, id_column, n])
    with plan:
        for s in summaries:
            for batch in _piece_batches(staging, s):
                start = plan.append(
                    batch,
                    batch.column("request_hash").to_numpy(),
                    batch.column("key").to_numpy(),
                    [buf or b"" for buf in batch.column("custom_id").buffers()[1:]],
                )
                stop = start + batch.num_rows
                plan.sent[start:stop] = (
                    batch.column("prompt").is_valid().to_numpy(zero_copy_only=False)
                )
                if keys is not None:
                    keys[start:stop] = batch.column("key").to_numpy()
    if keys is not None:
        try:
            _check_unique_keys(plan.path, keys, id_column)
        except BaseException:
            plan.discard()
            raise
    first_skip = next((s["first_skip"] for s in summaries if s["first_skip"]), None)
    return plan.result(first_skip)


def _piece_batches(staging: Path, summary: dict) -> Iterator[pa.RecordBatch]:
    """The record batches of one worker's manifest piece, checked against the digest
    the worker reported; the piece is removed once read."""
    name = f"plan-{summary['part']:06d}.arrow"
    piece = staging / name
    # Read once, checked, then parsed from memory: what is used is what the worker
    # wrote, whatever happens to the file meanwhile.
    data = piece.read_bytes()
    if [len(data), hashlib.sha256(data).hexdigest()] != summary["digests"][name]:
        raise InputError(_changed(piece))
    yield from _batches_of(data)
    piece.unlink()


def _check_unique_keys(path: Path, keys: np.ndarray, id_column: str | None) -> None:
    """Refuse a plan whose ``id_column`` repeats a value across the partitions."""
    unique, seen = np.unique(keys, return_counts=True)
    if len(unique) < len(keys):
        raise InputError(
            f"id_column {id_column!r} has duplicated values across the partitions "
            f"(e.g. {_label_of(path, keys, unique[seen > 1][0])!r}); ids must be "
            "unique over the whole frame. Leave id_column unset to name rows by "
            "their position."
        )


def _batches_of(data: bytes) -> Iterator[pa.RecordBatch]:
    """The record batches of an Arrow IPC file held in memory."""
    reader = pa.ipc.open_file(pa.BufferReader(data))
    for i in range(reader.num_record_batches):
        yield reader.get_batch(i)


def _label_of(path: Path, keys: np.ndarray, key: np.uint64) -> str:
    """The label of the first row with ``key`` in the plan file at ``path`` (for an
    error message: read only when there is one)."""
    position = int(np.flatnonzero(keys == key)[0])
    offset = 0
    for batch in rowstore.read_batches(path, ["label"]):
        if position < offset + batch.num_rows:
            return str(batch.column("label")[position - offset].as_py())
        offset += batch.num_rows
    return "?"


class _Dask:
    """Planning passes over a Dask DataFrame (``map_partitions``)."""

    def __init__(self, data: Any, used: list[str]) -> None:
        self.frame = data[used]

    def counts(self, id_column: str | None) -> list[tuple[int, bool]]:
        meta = pd.DataFrame(
            {"rows": pd.Series([], dtype="int64"), "valid": pd.Series([], dtype=bool)}
        )
        out = self.frame.map_partitions(_dask_count, id_column, meta=meta).compute()
        return [(int(r), bool(v)) for r, v in zip(out["rows"], out["valid"], strict=True)]

    def plan(self, work: Work, offsets: list[int]) -> list[dict]:
        meta = pd.DataFrame({"summary": pd.Series([], dtype=object)})
        out = self.frame.map_partitions(
            _dask_plan, work, offsets, meta=meta, enforce_metadata=False
        ).compute()
        return [orjson.loads(s) for s in out["summary"]]


def _dask_count(frame: pd.DataFrame, id_column: str | None) -> pd.DataFrame:
    rows, valid = count_rows(frame, id_column)
    return pd.DataFrame({"rows": [rows], "valid": [valid]})


def _dask_plan(
    frame: pd.DataFrame, work: Work, offsets: list[int], partition_info: Any = None
) -> pd.DataFrame:
    if partition_info is None:  # Dask's meta inference: nothing to plan
        return pd.DataFrame({"summary": pd.Series([], dtype=object)})
    part = int(partition_info["number"])
    summary = plan_partition(work, part, offsets[part], [frame])
    return pd.DataFrame({"summary": [orjson.dumps(summary).decode()]})


class _Spark:
    """Planning passes over a PySpark DataFrame (``mapInArrow``)."""

    def __init__(self, data: Any, used: list[str]) -> None:
        spark_python(data)
        self.frame = data.select(*used)

    def counts(self, id_column: str | None) -> list[tuple[int, bool]]:
        def count(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            part = _spark_partition()
            rows, valid = 0, True
            for frame in _spark_frames(batches):
                n, ok = count_rows(frame, id_column)
                rows, valid = rows + n, valid and ok
            yield pa.RecordBatch.from_pydict({"part": [part], "rows": [rows], "valid": [valid]})

        try:  # the first pass on the workers: where a worker without nbbatch shows
            got = self.frame.mapInArrow(count, "part long, rows long, valid boolean").collect()
        except Exception as exc:
            if "No module named" not in str(exc):
                raise
            raise InputError(_NO_NBBATCH_ON_WORKERS) from exc
        by_part = {int(r["part"]): (int(r["rows"]), bool(r["valid"])) for r in got}
        return [by_part[p] for p in range(len(by_part))]

    def plan(self, work: Work, offsets: list[int]) -> list[dict]:
        def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            part = _spark_partition()
            summary = plan_partition(work, part, offsets[part], _spark_frames(batches))
            yield pa.RecordBatch.from_pydict({"summary": [orjson.dumps(summary).decode()]})

        got = self.frame.mapInArrow(run, "summary string").collect()
        return [orjson.loads(r["summary"]) for r in got]


_NO_NBBATCH_ON_WORKERS = (
    "Spark's workers could not import nbbatch (or pandas, pyarrow): they run the Python "
    "that PYSPARK_PYTHON names, else `python3` on their PATH, not necessarily this "
    "notebook's. Set PYSPARK_PYTHON to a Python that has nbbatch installed (on a "
    "cluster: install nbbatch on every worker) before the SparkSession is created, e.g. "
    "os.environ['PYSPARK_PYTHON'] = sys.executable on one machine."
)


def spark_python(data: Any) -> None:
    """Make Spark's local workers run this Python, which can import nbbatch.

    Spark starts its Python workers with ``PYSPARK_PYTHON``, else ``python3`` from the
    PATH, which in a virtual environment or a conda kernel is often another Python
    without nbbatch (or pandas): every task then fails with ``No module named ...``. In
    local mode (``master`` ``local[...]``: the workers are on this machine) with
    ``PYSPARK_PYTHON`` unset, this interpreter is used, as the notebook's user meant.
    A cluster's workers are left as configured; if they cannot import nbbatch the first
    pass says what to set (:data:`_NO_NBBATCH_ON_WORKERS`)."""
    context = data.sparkSession.sparkContext
    if os.environ.get("PYSPARK_PYTHON") or not str(context.master).startswith("local"):
        return
    # Functions wrapped from now on (mapInArrow) carry the context's pythonExec; the
    # variable is for contexts made later in this process.
    context.pythonExec = sys.executable
    os.environ["PYSPARK_PYTHON"] = sys.executable


def _spark_partition() -> int:
    from pyspark import TaskContext

    context = TaskContext.get()
    assert context is not None, "not in a Spark task"
    return int(context.partitionId())


def _spark_frames(batches: Iterable[pa.RecordBatch]) -> Iterator[pd.DataFrame]:
    for batch in batches:
        yield frames.from_arrow(pa.Table.from_batches([batch]))


# -- on the driver: sending -----------------------------------------------------------------


class Prebuilt:
    """The request lines the workers encoded for a job, read by row position."""

    def __init__(self, folder: Path, names: list[str], counts: list[int]) -> None:
        self.paths = [folder / name for name in names]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._columns: dict[int, pa.Array] = {}

    @classmethod
    def of(
        cls, job_folder: Path, source: dict[str, Any] | None, provider: str, spec: RequestSpec
    ) -> Prebuilt | None:
        """The job's prebuilt lines when they are for these request parameters (the
        job's own, not an escalation stage's or after overrides), else None."""
        if not source or source.get("kind") not in (DASK, SPARK) or "requests" not in source:
            return None
        same = orjson.loads(orjson.dumps(spec.as_dict())) == source.get("spec")
        if not same or source.get("provider") != provider:
            return None
        folder = job_folder / "requests"
        if not all((folder / name).exists() for name in source["requests"]):
            return None  # not moved in (the process died while recording): encode here
        return cls(folder, source["requests"], source["partitions"])

    def _column(self, part: int) -> pa.Array:
        if part not in self._columns:
            table = rowstore.read_table(self.paths[part])
            self._columns[part] = table.column("request").combine_chunks()
        return self._columns[part]

    def lines(self, positions: np.ndarray) -> bytes | None:
        """The request lines of the rows at ``positions`` (ascending), in that order,
        joined; None when they cannot all be taken from the workers' files."""
        if not len(positions) or (len(positions) > 1 and not (np.diff(positions) > 0).all()):
            return None
        pieces: list[memoryview] = []
        first = int(np.searchsorted(self.starts, positions[0], side="right")) - 1
        last = int(np.searchsorted(self.starts, positions[-1], side="right")) - 1
        for part in range(first, last + 1):
            lo, hi = self.starts[part], self.starts[part + 1]
            a, b = np.searchsorted(positions, [lo, hi])
            if a == b:
                continue
            taken = self._column(part).take(pa.array(positions[a:b] - lo))
            if taken.null_count:
                return None
            offsets = np.frombuffer(taken.buffers()[1], dtype=np.int64)
            offsets = offsets[taken.offset : taken.offset + len(taken) + 1]
            pieces.append(memoryview(taken.buffers()[2])[offsets[0] : offsets[-1]])
        return b"".join(pieces)


def prebuilt(ctx: JobContext, spec: RequestSpec, stage: int) -> Prebuilt | None:
    """The prebuilt lines :func:`send.send_rows` takes for ``job``'s rows, if any."""
    if stage != 0:
        return None
    ledger = ctx.ledger
    source = ledger.source(ctx.id)
    if not source or source.get("kind") not in (DASK, SPARK):
        return None
    return Prebuilt.of(ledger.files / ctx.id, source, ctx.provider_name, spec)


# -- merging back ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeWork:
    """What a worker needs to merge its partition (picklable)."""

    job_id: str
    results: str  # the results Parquet file
    digest: list[Any]  # its [size, sha256], checked before a worker reads it
    offsets: list[int]
    added: list[str]
    template: str
    missing: str
    salt: str | None
    scheme: str | None
    id_column: str | None
    verify: bool


def merge(ctx: JobContext, data: Any, *, verify: bool = True, lineage: bool = False) -> Any:
    """``data`` (the Dask or Spark frame submitted) plus the job's result columns (with
    ``lineage``, its lineage columns too), of the same kind, built lazily partition by
    partition (see :meth:`BatchJob.merge`)."""
    from . import _merge

    kind = kind_of(data)
    counts = _partition_counts(ctx, data, kind, lineage)
    ctx.warn_if_running("merge()")
    folder = staging_root(ctx.ledger.folder(ctx.id))
    # One results file a job (0600): a new merge replaces the last one, and frames
    # merged earlier then say so rather than read other answers; forget() removes it.
    target = results_path(folder, ctx.id)
    tmp = folder / f".{target.name}.{secrets.token_hex(4)}.tmp"
    _private_file(tmp)
    try:
        schema = _merge.write_results(ctx, tmp, rows_per_group=RESULT_ROWS, lineage=lineage)
        digest = file_digest(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    work = MergeWork(
        job_id=ctx.id,
        results=str(target),
        digest=digest,
        offsets=np.concatenate([[0], np.cumsum(counts)]).tolist(),
        added=ctx.output_columns(lineage),
        template=ctx.record["template"],
        missing=str(ctx.policy.get("missing", "skip")),
        salt=ctx.record.get("salt"),
        scheme=ctx.record.get("hash_scheme"),
        id_column=ctx.record.get("id_column"),
        verify=verify,
    )
    added = pa.schema([schema.field(name) for name in work.added])
    if kind == DASK:
        meta = data._meta.copy()
        empty = frames.from_arrow(_plain_strings(added).empty_table())
        for name in work.added:
            meta[name] = empty[name].array
        return data.map_partitions(_dask_merge, work, meta=meta)
    return _spark_merge(data, work, added)


def _partition_counts(ctx: JobContext, data: Any, kind: str | None, lineage: bool) -> list[int]:
    """The rows of each partition the job was planned from, once ``data`` is checked
    to be a frame that can take its results: submitted as a Dask or Spark frame,
    partitioned as it was, without the result columns already."""
    source = ctx.ledger.source(ctx.id) or {}
    if source.get("kind") not in (DASK, SPARK):
        raise MergeError(
            f"job {ctx.id} was not submitted from a Dask or Spark frame; pass the data you "
            "submitted.",
            job_id=ctx.id,
        )
    counts = list(source["partitions"])
    parts = data.npartitions if kind == DASK else data.rdd.getNumPartitions()
    if parts != len(counts):
        raise MergeError(
            f"the frame has {parts} partitions but job {ctx.id} was planned from "
            f"{len(counts)}: pass the frame you submitted, partitioned as it was.",
            job_id=ctx.id,
        )
    clash = [c for c in ctx.output_columns(lineage) if c in columns_of(data)]
    if clash:
        raise MergeError(
            f"the DataFrame already has column(s) {clash}; drop them first or submit with "
            "another output= name.",
            job_id=ctx.id,
        )
    return counts


def results_path(folder: Path, job_id: str) -> Path:
    """Where a Dask/Spark merge of job ``job_id`` puts its results file in ``folder``."""
    return folder / f"results-{job_id}.parquet"


def forget_staged(job_id: str, default: Path) -> None:
    """Remove what a job left in the staging folder (its merge results file)."""
    try:
        root = staging_root(default)
    except InputError:
        return  # a staging folder not ours: nothing of ours is in it to remove
    results_path(root, job_id).unlink(missing_ok=True)


#: Results files this worker process checked: (path, inode, mtime, size) -> digest.
_checked: dict[tuple[str, int, int, int], list[Any]] = {}
_checked_lock = threading.Lock()


def _check_results(work: MergeWork) -> None:
    """Refuse a results file that is not the one the driver wrote: another owner, open
    to others, or another size or SHA-256 (hashed once per worker process and file)."""
    path = Path(work.results)
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise MergeError(_changed(path), job_id=work.job_id)
    key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
    with _checked_lock:
        known = _checked.get(key)
    if known is None:
        known = file_digest(path)
        with _checked_lock:
            _checked[key] = known
    if known != work.digest:
        raise MergeError(
            f"the results file of job {work.job_id} changed since this frame was merged "
            "(a later merge() replaced it, or someone changed it): merge again.",
            job_id=work.job_id,
        )


def merge_partition(work: MergeWork, part: int, frame: pd.DataFrame) -> pa.Table:
    """The result columns (``work.added``, an Arrow table) for partition ``part``
    (``frame``, whole), read from its slice of the results file and checked against
    its rows."""
    import pyarrow.parquet as pq

    from . import _merge

    lo, hi = work.offsets[part], work.offsets[part + 1]
    if not Path(work.results).exists():
        raise MergeError(_unshared("results file", Path(work.results)), job_id=work.job_id)
    _check_results(work)
    if len(frame) != hi - lo:
        raise MergeError(
            f"partition {part} has {len(frame):,} rows but had {hi - lo:,} when job "
            f"{work.job_id} was submitted: pass the frame you submitted.",
            job_id=work.job_id,
        )
    table = pq.read_table(work.results, filters=[("position", ">=", lo), ("position", "<", hi)])
    table = table.sort_by("position")
    if table.num_rows != hi - lo:
        raise MergeError(f"the results of job {work.job_id} are incomplete.", job_id=work.job_id)
    if work.id_column and not np.array_equal(
        _plan.row_keys(frame[work.id_column]), table.column("key").to_numpy()
    ):
        raise MergeError(
            f"the rows of partition {part} are not those of job {work.job_id} (by "
            f"{work.id_column!r}): pass the frame you submitted.",
            job_id=work.job_id,
        )
    if work.verify:
        if work.salt is None or work.scheme != _plan.HASH_SCHEME:
            raise MergeError(
                f"job {work.job_id}'s requests were hashed with {work.scheme}, the workers "
                f"hash with {_plan.HASH_SCHEME}: install the same polars version, or merge "
                "with verify=False.",
                job_id=work.job_id,
            )
        checked = frame if work.id_column else frame.set_axis(pd.RangeIndex(lo, hi))
        _merge.verify_rows(
            checked,
            _prompt.parse(work.template),
            missing=work.missing,
            salt=work.salt,
            sent=table.column("request_hash").to_numpy(),
            sent_prompts=lambda positions: [None] * len(positions),
            job_id=work.job_id,
        )
    return _plain_strings_table(table.select(work.added))


def _dask_merge(frame: pd.DataFrame, work: MergeWork, partition_info: Any = None) -> pd.DataFrame:
    if partition_info is None:
        # Without its number a partition cannot be found in the results: never guess.
        raise MergeError("internal error: Dask did not say which partition this is.")
    part = int(partition_info["number"])
    added = frames.from_arrow(merge_partition(work, part, frame))
    out = frame.copy(deep=False)
    for name in work.added:
        out[name] = added[name].array
    return out


def _spark_merge(data: Any, work: MergeWork, added: pa.Schema) -> Any:
    from pyspark.sql.pandas.types import from_arrow_schema
    from pyspark.sql.types import StructType

    spark_python(data)  # a new session (a restarted kernel) merging a local job
    out_schema = StructType([*data.schema.fields, *from_arrow_schema(_plain_strings(added)).fields])

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        part = _spark_partition()
        got = list(batches)
        if not got and work.offsets[part + 1] == work.offsets[part]:
            return  # an empty partition, as at submit
        whole = pa.Table.from_batches(got)
        results = merge_partition(work, part, frames.from_arrow(whole))
        table = whole
        for name in work.added:
            table = table.append_column(name, results.column(name))
        yield from table.to_batches()

    return data.mapInArrow(run, out_schema)


def _plain(t: pa.DataType) -> pa.DataType:
    return pa.string() if t in (pa.large_string(), pa.string_view()) else t


def _plain_strings(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_type(_plain(f.type)) for f in schema])


def _plain_strings_table(table: pa.Table) -> pa.Table:
    return table.cast(_plain_strings(table.schema))


def failed(ctx: JobContext, data: Any) -> Any:
    """The merged rows of ``data`` that did not succeed (failed, expired or cancelled),
    as a lazy frame of the same kind (see :meth:`BatchJob.failed`)."""
    out = merge(ctx, data)
    column = _columns.name_of(_columns.Role.STATUS, ctx.output)
    bad = list(states.NOT_SUCCEEDED)
    if kind_of(data) == DASK:
        return out[out[column].isin(bad)]
    return out.filter(out[column].isin(bad))


def to_parquet(
    ctx: JobContext, data: Any, path: str | os.PathLike[str], *, columns: list[str] | None,
    verify: bool, lineage: bool = True,
) -> Path:  # fmt: skip
    """Write the merged frame as a folder of Parquet files, one per partition, from the
    workers (Dask's ``to_parquet``, Spark's ``write.parquet``), with the lineage columns
    unless ``lineage=False``; return the folder."""
    out = merge(ctx, data, verify=verify, lineage=lineage)
    if columns is not None:
        keep = [*columns, *ctx.output_columns(lineage)]
        out = out[keep] if kind_of(data) == DASK else out.select(*keep)
    target = Path(path)
    if kind_of(data) == DASK:
        out.to_parquet(str(target), write_index=False)
    else:
        out.write.mode("overwrite").parquet(str(target))
    # The engines write with the process's umask: make the folder and its files private
    # like every other result file (the files are written on this machine or a shared
    # mount this process can reach).
    _files.private_tree(target)
    return target
