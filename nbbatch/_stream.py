"""Tables larger than memory: Parquet files and Arrow datasets, planned batch by batch.

A Parquet path (a file, a folder or a glob) or a ``pyarrow.dataset.Dataset`` is never
read whole. :class:`Source` reads it in record batches of :data:`BATCH_ROWS` rows, in a
fixed order (file by file, as sorted), reading only the columns the template and
``id_column`` use. :func:`plan_to_file` plans each batch with the same
:func:`plan.make_plan` as an in-memory table (so every check and every skip rule is the
same), and writes it straight to a manifest file; what must be known across batches
(``id_column`` unique over all files, valid custom_ids, which rows share a request) is
worked out from small per-row arrays: keys and request hashes, 16 bytes a row.

A row is named by ``id_column`` or, without one, by its position in the files (file by
file, row by row); the files and their row counts are recorded with the job
(:meth:`Source.describe`), so merging back can tell when they changed.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import _frames as frames
from . import _plan, _prompt
from . import _rowstore as rowstore
from ._checks import ContextLimit
from ._errors import InputError

#: Rows per record batch: large enough for vectorised work, small enough (tens of MB of
#: text) that a batch never matters to memory.
BATCH_ROWS = 65_536


@dataclass
class Source:
    """The rows of a Parquet dataset or an Arrow dataset, read in order, a batch at a time."""

    schema: pa.Schema
    files: list[str] = field(default_factory=list)  # Parquet files, in order
    rows_per_file: list[int] = field(default_factory=list)
    dataset: Any = None  # a pyarrow.dataset.Dataset (when not files)

    @classmethod
    def of(cls, data: Any) -> Source:
        """The source of a Parquet path or glob (schemas checked across the files, from
        their footers) or of a ``pyarrow.dataset.Dataset``."""
        if frames.kind_of(data) == frames.ARROW_DATASET:
            return cls(schema=data.schema, dataset=data)
        import pyarrow.parquet as pq

        files, schema = frames.parquet_schema(data)
        rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
        return cls(schema=schema, files=files, rows_per_file=rows)

    @classmethod
    def recorded(cls, description: dict[str, Any]) -> Source | None:
        """The source a job recorded (:meth:`describe`), when it was Parquet files."""
        if description.get("kind") != "parquet":
            return None
        return cls.of([f["path"] for f in description["files"]])

    @property
    def n_rows(self) -> int:
        """How many rows the source has."""
        if self.dataset is not None:
            return int(self.dataset.count_rows())
        return sum(self.rows_per_file)

    def schema_of(self, columns: list[str]) -> list[pa.Field]:
        """The fields of ``columns``, in that order."""
        return [self.schema.field(name) for name in columns]

    @property
    def columns(self) -> list[str]:
        """The column names."""
        return list(self.schema.names)

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The rows in order, a record batch at a time, with only ``columns``."""
        if self.dataset is not None:
            # One thread: the batches then come in the dataset's own order, every time.
            yield from self.dataset.to_batches(
                columns=columns, batch_size=BATCH_ROWS, use_threads=False
            )
            return
        import pyarrow.parquet as pq

        for name in self.files:
            with pq.ParquetFile(name) as f:
                yield from f.iter_batches(batch_size=BATCH_ROWS, columns=columns)

    def frames(self, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
        """The rows in order as pandas frames, indexed by position in the source."""
        offset = 0
        for batch in self.batches(columns):
            frame = frames.from_arrow(pa.Table.from_batches([batch]))
            frame.index = pd.RangeIndex(offset, offset + len(frame))
            offset += len(frame)
            yield frame

    def head(self, n: int = 100) -> pd.DataFrame:
        """The first ``n`` rows (every column), for checks that need a frame."""
        for frame in self.frames():
            return frame.iloc[:n]
        return frames.from_arrow(self.schema.empty_table())

    def describe(self) -> dict[str, Any]:
        """What a job records about where its rows came from: the files, in order, with
        their row counts and sizes (or the dataset's row count)."""
        if self.dataset is not None:
            return {"kind": "dataset", "rows": self.n_rows}
        return {
            "kind": "parquet",
            "files": [
                {"path": os.path.abspath(f), "rows": r, "bytes": os.path.getsize(f)}
                for f, r in zip(self.files, self.rows_per_file, strict=True)
            ],
        }


@dataclass
class StreamPlan:
    """A plan written to a manifest file, and what the job needs to know about it."""

    path: Path  # the manifest file (leaders not yet set: see finish_manifest)
    n_rows: int
    hashes: np.ndarray  # request hash per row (0: not sent)
    sent: np.ndarray  # bool per row: sent (not skipped)
    first_skip: str | None  # why the first skipped row is not sent
    fingerprint: str
    too_long: int = 0  # rows not sent because they exceed the model's context window
    longest: int = -1  # the position of the row with the longest prompt (-1: none sent)

    @property
    def send_positions(self) -> np.ndarray:
        """Positions of the rows sent."""
        return np.flatnonzero(self.sent)

    @property
    def n_skipped(self) -> int:
        """How many rows are not sent."""
        return int(self.n_rows - self.sent.sum())

    def head(self, n: int) -> tuple[pa.Array, pa.Array]:
        """The custom_ids and prompts of the first ``n`` rows sent."""
        ids, prompts = [], []
        for batch in rowstore.read_batches(self.path):
            keep = pc.is_valid(batch.column("prompt"))  # rows not sent have none
            part = batch.filter(keep)
            ids.append(part.column("custom_id"))
            prompts.append(part.column("prompt"))
            if sum(len(p) for p in prompts) >= n:
                break
        return (
            pa.concat_arrays(ids).slice(0, n) if ids else pa.array([], pa.string()),
            pa.concat_arrays(prompts).slice(0, n) if prompts else pa.array([], pa.large_string()),
        )

    def row(self, position: int) -> tuple[pa.Array, pa.Array]:
        """The custom_id and prompt of the row at ``position``, as one-row arrays."""
        offset = 0
        for batch in rowstore.read_batches(self.path, ["custom_id", "prompt"]):
            if position < offset + batch.num_rows:
                at = position - offset
                return batch.column(0).slice(at, 1), batch.column(1).slice(at, 1)
            offset += batch.num_rows
        raise IndexError(position)

    def discard(self) -> None:
        """Remove the manifest file (a job not recorded after all)."""
        self.path.unlink(missing_ok=True)


def plan_to_file(
    source: Source,
    template: _prompt.Template,
    folder: Path,
    *,
    id_column: str | None,
    missing: str,
    salt: str,
    fingerprint_of: list[Any],
    limit: ContextLimit | None = None,
    progress: Callable[[int], None] | None = None,
) -> StreamPlan:
    """Plan every row of ``source`` batch by batch into a manifest file in ``folder``.

    ``fingerprint_of`` is what else identifies the submit call (salt, output, template):
    the fingerprint covers it and every row's key, custom_id and request hash.
    ``progress(rows)`` is called with the rows planned so far after each batch (what
    it raises stops the planning, the file removed).
    """
    if missing not in ("skip", "empty"):
        raise InputError(f"missing must be 'skip' or 'empty', found {missing!r}.")
    n = source.n_rows
    if n == 0:
        raise InputError(
            "data has no rows, so there is nothing to send; nothing was recorded. Check the "
            "files (or the filter) that produced it."
        )
    columns = list(dict.fromkeys([*template.columns, *([id_column] if id_column else [])]))
    as_labels = _check_ids(source, id_column) if id_column else True
    plan = PlanFile(folder, n, ["stream", *fingerprint_of, id_column, n])
    first_skip = None
    too_long = 0
    longest, longest_bytes = -1, -1
    with plan:
        for frame in source.frames(columns):
            rows = _plan.make_plan(
                frame, template, id_column=id_column, missing=missing, limit=limit
            )
            if not as_labels:
                rows.custom_ids = _plan.make_custom_ids(rows.labels, plan.offset, as_labels=False)
            hashes = _plan.request_hashes(rows, salt)
            ids = _joined(rows.custom_ids)
            start = plan.append(rows.manifest(hashes), hashes, rows.keys, [ids])
            plan.sent[start + rows.send_positions] = True
            too_long += rows.too_long
            size, at = _longest_prompt(rows)
            if size > longest_bytes:
                longest_bytes, longest = size, start + at
            if first_skip is None and rows.skip_reasons:
                first_skip = rows.skip_reasons[0]
            if progress is not None:
                progress(plan.offset)
    return plan.result(first_skip, too_long=too_long, longest=longest)


def _longest_prompt(rows: _plan.Plan) -> tuple[int, int]:
    """The size in bytes of the longest prompt of ``rows`` and the position of its row
    ((-1, -1) when none is sent)."""
    if not len(rows.prompts):
        return -1, -1
    sizes = pc.binary_length(rows.prompts).to_numpy(zero_copy_only=False)
    at = int(np.argmax(sizes))
    return int(sizes[at]), int(rows.send_positions[at])


class PlanFile:
    """A plan's manifest file being written in ``folder``, piece by piece, with every
    row's request hash and sent flag, and the fingerprint over the ``fingerprint_of``
    values and each row's key, request hash and custom_id.

    Used as a context manager: the file is open inside the ``with`` block and removed
    if the block raises or leaves rows of the ``n`` announced unwritten.
    """

    def __init__(self, folder: Path, n: int, fingerprint_of: list[Any]) -> None:
        self.n = n
        self.hashes = np.zeros(n, dtype=np.uint64)
        self.sent = np.zeros(n, dtype=bool)
        self.offset = 0  # rows written so far
        self.digest = hashlib.sha256(orjson.dumps(fingerprint_of))
        self.path = folder / f".plan-{secrets.token_hex(6)}.arrow"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def __enter__(self) -> PlanFile:
        try:
            self._sink = pa.OSFile(str(self.path), "wb")
            self._writer = pa.ipc.new_file(self._sink, rowstore.MANIFEST_SCHEMA)
        except BaseException:
            self.discard()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            try:
                self._writer.close()
            finally:
                self._sink.close()
            if kind is None and self.offset != self.n:
                raise InputError("the data changed while it was read; submit again.")
        except BaseException:
            self.discard()
            raise
        if kind is not None:
            self.discard()

    def append(
        self,
        piece: pa.Table | pa.RecordBatch,
        hashes: np.ndarray,
        keys: np.ndarray,
        id_bytes: list[bytes],
    ) -> int:
        """Write the next manifest ``piece``: its rows' request ``hashes`` and ``keys``,
        and ``id_bytes``, the bytes of their custom_ids the fingerprint covers. Returns
        the position of its first row in the plan."""
        start = self.offset
        stop = start + piece.num_rows
        if stop > self.n:
            raise InputError("the data changed while it was read; submit again.")
        self.hashes[start:stop] = hashes
        self._writer.write(piece)
        self.digest.update(keys.tobytes())
        self.digest.update(self.hashes[start:stop].tobytes())
        for part in id_bytes:
            self.digest.update(part)
        self.offset = stop
        return start

    def discard(self) -> None:
        """Remove the file (its plan is refused)."""
        self.path.unlink(missing_ok=True)

    def result(self, first_skip: str | None, **known: Any) -> StreamPlan:
        """The written plan (``known``: the :class:`StreamPlan` figures the caller kept)."""
        return StreamPlan(
            path=self.path,
            n_rows=self.n,
            hashes=self.hashes,
            sent=self.sent,
            first_skip=first_skip,
            fingerprint=self.digest.hexdigest(),
            **known,
        )


def _joined(values: pa.Array) -> bytes:
    """The strings of ``values`` joined with NULs, as bytes, without a Python object
    per row: what the fingerprint covers of the custom_ids."""
    as_list = pa.LargeListArray.from_arrays(
        pa.array([0, len(values)], pa.int64()), values.cast(pa.large_string())
    )
    sep = pa.scalar("\x00", pa.large_string())
    return pc.binary_join(as_list, sep)[0].as_buffer().to_pybytes()


def _check_ids(source: Source, id_column: str) -> bool:
    """Check ``id_column`` over every file (present, no missing value, unique across
    files), reading that column alone; return whether its values can be the custom_ids
    as they are (all valid), else ids are made from positions."""
    if id_column not in source.columns:
        raise InputError(f"id_column {id_column!r} is not a column. Columns are: {source.columns}.")
    keys = []
    valid = True
    for frame in source.frames([id_column]):
        ids = frame[id_column]
        if ids.isna().any():
            raise InputError(
                f"id_column {id_column!r} has missing values (first at row "
                f"{int(frame.index[ids.isna().to_numpy()][0])}); every row needs an id. Fill "
                "them or leave id_column unset to use the position in the files."
            )
        keys.append(_plan.row_keys(ids))
        labels = _plan.label_text(ids)
        valid = valid and bool(
            pc.all(pc.match_substring_regex(labels, _plan.CUSTOM_ID_PATTERN.pattern)).as_py()
        )
    all_keys = np.concatenate(keys) if keys else np.empty(0, np.uint64)
    unique, counts = np.unique(all_keys, return_counts=True)
    if len(unique) < len(all_keys):
        twice = unique[counts > 1][:1]
        shown = next(
            (
                frame[id_column][np.isin(_plan.row_keys(frame[id_column]), twice)].iloc[0]
                for frame in source.frames([id_column])
                if np.isin(_plan.row_keys(frame[id_column]), twice).any()
            ),
            None,
        )
        raise InputError(
            f"id_column {id_column!r} has duplicated values across the data (e.g. {shown!r}); "
            "ids must be unique over all the files. Leave id_column unset to name rows by "
            "their position in the files."
        )
    return valid


def finish_manifest(plan: StreamPlan, target: Path) -> None:
    """Make the planned file the final manifest at ``target``, with each row's leader
    (the first row sent with the same request, across all batches) in a small file
    beside it (:func:`rowstore.leaders_path`), which a row state reads instead of the
    manifest's own column (whose leaders are only those within each record batch).

    The planned file is flushed to disk and renamed, never copied: for ten million rows
    it holds gigabytes of prompts, and writing them twice doubled what a job wrote."""
    leader = np.full(plan.n_rows, -1, dtype=np.int64)
    send = plan.send_positions
    if len(send):
        _, first, inverse = np.unique(plan.hashes[send], return_index=True, return_inverse=True)
        leader[send] = send[first[inverse.ravel()]]
    rowstore.write_table(
        rowstore.leaders_path(target), pa.table({"leader": pa.array(leader, pa.int64())})
    )
    fd = os.open(plan.path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(plan.path, target)


def sent_prompts(plan: StreamPlan, keep: np.ndarray) -> Iterator[pa.Array]:
    """The prompts of the rows sent where ``keep`` (one flag per row sent) holds, a
    record batch at a time."""
    flags = np.zeros(plan.n_rows, dtype=bool)
    flags[plan.send_positions[keep]] = True
    offset = 0
    for batch in rowstore.read_batches(plan.path):
        stop = offset + batch.num_rows
        yield batch.column("prompt").filter(pa.array(flags[offset:stop]))
        offset = stop
