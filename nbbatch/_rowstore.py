"""A job's per-row records as Arrow files, and the row states they add up to.

SQLite keeps what is small and transactional (jobs, batches, intents, events); what is
per row and bulky lives in Arrow IPC files beside it, each written once to a temporary
name, flushed and renamed before SQLite names it:

- the **manifest** (one per job, never changed): each input row's custom_id, key, label,
  rendered prompt, request hash, and the position of the row whose request it shares
  (its *leader*; -1 for a row not sent);
- **send** files (one per chunk sent, or put back): the leader positions of that chunk;
- **result** files (one per collected batch, real-time pass or reuse): one row per
  leader with its status, output, error and token counts.

SQLite's ``changes`` table lists the send and result files of a job in order. A row's
state is what the changes say, applied in that order (:class:`RowState`): a send puts
its rows in a batch, pending; a result for a batch applies only to rows still in that
batch (so a late batch never overwrites a newer attempt). Rows deduplicated onto a
leader show the leader's state. Everything is vectorised: no Python object per row.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .states import STATES

#: Row states' codes in :class:`RowState` arrays (the order of :data:`STATES`).
PENDING, SUCCEEDED, FAILED, EXPIRED, CANCELLED, SKIPPED = range(len(STATES))
#: Where a row's current result came from.
ORIGINS = ("batch", "reused", "realtime", "flex")
BATCH, REUSED, REALTIME, FLEX = range(len(ORIGINS))
#: How each origin is priced: flex processing at batch prices (see nbbatch._deadline).
PRICED = (((BATCH, FLEX), "batch"), ((REALTIME,), "realtime"))

MANIFEST_SCHEMA = pa.schema(
    [
        ("custom_id", pa.string()),
        ("key", pa.uint64()),  # hash of the row's label, to find it in a DataFrame
        ("label", pa.string()),  # the label as people read it
        ("prompt", pa.large_string()),  # null for a row not sent
        ("request_hash", pa.uint64()),  # the exact request (0 for a row not sent)
        ("leader", pa.int64()),  # position of the row sent for this one; -1: not sent
        ("skip_error", pa.string()),  # why a row is not sent
    ]
)

SEND_SCHEMA = pa.schema([("position", pa.int64())])

RESULT_SCHEMA = pa.schema(
    [
        ("position", pa.int64()),  # a leader's position in the manifest
        ("status", pa.string()),  # succeeded | failed | expired | cancelled
        ("output", pa.large_string()),
        ("error_type", pa.string()),
        ("error", pa.large_string()),  # "type: message", as merge shows it
        ("retryable", pa.bool_()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("cached_tokens", pa.int64()),
        ("request_hash", pa.uint64()),  # so a later job can reuse a success
    ]
)
#: An optional last column of a result file: the reply's score (see
#: ``providers.base.SCORE_FIELD``), kept only by jobs whose replies carry one; a file
#: without it reads as null scores.
SCORE = pa.field("score", pa.float64())


def write_table(path: Path, table: pa.Table) -> None:
    """Write ``table`` as an Arrow IPC file at ``path``, owner-only and atomically: to a
    temporary name, flushed to disk, then renamed, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            with pa.ipc.new_file(fh, table.schema) as writer:
                writer.write_table(table, max_chunksize=1 << 16)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def leaders_path(manifest: Path) -> Path:
    """Where the leaders of a manifest planned batch by batch are kept (see
    :func:`nbbatch._stream.finish_manifest`): beside it, ``<name>.leaders``."""
    return manifest.with_name(manifest.name + ".leaders")


def read_table(path: Path) -> pa.Table:
    """An Arrow IPC file, memory-mapped (its columns are not copied into memory)."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).read_all()


def read_batches(path: Path, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The record batches of an Arrow IPC file, one at a time, read rather than mapped:
    a mapping kept open would keep every page read in this process's memory."""
    with pa.OSFile(str(path)) as source:
        reader = pa.ipc.open_file(source)
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            yield batch if columns is None else batch.select(columns)


def prompt_chars(state: RowState) -> tuple[int, int]:
    """(rows with a prompt, total prompt characters) of a job's manifest, read batch by
    batch (the prompts of millions of rows are never all in memory)."""
    rows = chars = 0
    batches: Any = (
        read_batches(state.path, ["prompt"]) if state.path else state.manifest.to_batches()
    )
    for batch in batches:
        lengths = pc.utf8_length(batch.column("prompt"))
        rows += int(pc.count(lengths).as_py())
        chars += int(pc.sum(lengths).as_py() or 0)
    return rows, chars


def manifest(
    custom_ids: pa.Array,
    keys: np.ndarray,
    labels: pa.Array,
    prompts: pa.Array,
    send_positions: np.ndarray,
    skip_positions: np.ndarray,
    skip_reasons: list[str],
    hashes: np.ndarray,
) -> pa.Table:
    """The manifest of a plan's rows (see the module docstring)."""
    n = len(custom_ids)
    full_prompts = _scatter(prompts, send_positions, n)
    leader = np.full(n, -1, dtype=np.int64)
    if len(send_positions):
        sent_hashes = hashes[send_positions]
        # The first row with each request hash is sent; the others follow it.
        _, first, inverse = np.unique(sent_hashes, return_index=True, return_inverse=True)
        leader[send_positions] = send_positions[first[inverse.ravel()]]
    errors = np.full(n, None, dtype=object)
    if len(skip_positions):
        errors[skip_positions] = [f"skipped: {reason}" for reason in skip_reasons]
    return pa.table(
        {
            "custom_id": custom_ids,
            "key": pa.array(keys, pa.uint64()),
            "label": labels,
            "prompt": full_prompts,
            "request_hash": pa.array(hashes, pa.uint64()),
            "leader": pa.array(leader),
            "skip_error": pa.array(errors, pa.string()),
        },
        schema=MANIFEST_SCHEMA,
    )


def _scatter(values: pa.Array, positions: np.ndarray, n: int) -> pa.Array:
    """An array of length ``n`` holding ``values`` at ``positions`` and null elsewhere."""
    if len(positions) == n:
        return values
    index = np.full(n, -1, dtype=np.int64)
    index[positions] = np.arange(len(positions))
    return values.take(pa.array(np.maximum(index, 0), mask=index < 0))


def result_table(positions: np.ndarray, table: pa.Table, hashes: np.ndarray) -> pa.Table:
    """A :data:`RESULT_SCHEMA` table from provider-normalised rows (``ROW_RESULT_SCHEMA``:
    ``error_message`` becomes ``error``, "type: message") for leaders at ``positions``,
    whose request hashes are ``hashes`` (one each, in the same order)."""
    message = pc.binary_join_element_wise(
        pc.cast(table.column("error_type"), pa.large_string()),
        pc.cast(table.column("error_message"), pa.large_string()),
        pa.scalar(": ", pa.large_string()),
    )
    columns = {
        "position": pa.array(positions, pa.int64()),
        "status": table.column("status"),
        "output": table.column("output"),
        "error_type": table.column("error_type"),
        "error": message,
        "retryable": table.column("retryable"),
        "input_tokens": table.column("input_tokens"),
        "output_tokens": table.column("output_tokens"),
        "cached_tokens": table.column("cached_tokens"),
        "request_hash": pa.array(hashes, pa.uint64()),
    }
    if SCORE.name in table.schema.names:
        columns[SCORE.name] = table.column(SCORE.name)
        return pa.table(columns).cast(RESULT_SCHEMA.append(SCORE))
    return pa.table(columns).cast(RESULT_SCHEMA)


def failure_table(
    positions: np.ndarray, status: str, error_type: str, message: str, retryable: bool
) -> pa.Table:
    """The same ending for every leader at ``positions`` (no output, no usage)."""
    n = len(positions)
    return pa.table(
        {
            "position": pa.array(positions, pa.int64()),
            "status": pa.array([status] * n, pa.string()),
            "output": pa.nulls(n, pa.large_string()),
            "error_type": pa.array([error_type] * n, pa.string()),
            "error": pa.array([f"{error_type}: {message}"] * n, pa.large_string()),
            "retryable": pa.array([retryable] * n, pa.bool_()),
            "input_tokens": pa.nulls(n, pa.int64()),
            "output_tokens": pa.nulls(n, pa.int64()),
            "cached_tokens": pa.nulls(n, pa.int64()),
            "request_hash": pa.array(np.zeros(n, dtype=np.uint64)),
        },
        schema=RESULT_SCHEMA,
    )


def _codes(values: pa.ChunkedArray | pa.Array, words: tuple[str, ...]) -> np.ndarray:
    """Each string's index in ``words`` as int8 (-1 for null or unknown)."""
    index = pc.index_in(values, value_set=pa.array(words, pa.string()))
    return pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int8)


class RowState:
    """Every row's latest state, from the manifest and the changes applied in order.

    Arrays are indexed by position. ``batch`` is an index into :attr:`batch_keys` (the
    intent id each chunk was recorded under; -1: in no batch); ``ref_file``/``ref_row``
    say where a row's result is (an index into :attr:`results`, and a row in it).
    Only leaders carry state; :meth:`follow` gives every row its leader's. ``stage`` is
    the escalation stage of a row's latest attempt (0: the job's own request).
    """

    def __init__(self, manifest: pa.Table, path: Path | None = None) -> None:
        self.manifest = manifest
        self.path = path  # the manifest's file, when it has one
        n = manifest.num_rows
        self.n = n
        # The narrowest types that hold any job (positions and rows fit in 31 bits):
        # for ten million rows these arrays are what a job keeps, ~30 bytes a row.
        # A manifest planned batch by batch has its leaders across batches beside it.
        leaders = leaders_path(path) if path is not None else None
        if leaders is not None and leaders.exists():
            self.leader = read_table(leaders).column(0).to_numpy().astype(np.int32)
        else:
            self.leader = manifest.column("leader").to_numpy().astype(np.int32)
        sent = self.leader >= 0
        self.status = np.where(sent, PENDING, SKIPPED).astype(np.int8)
        self.batch = np.full(n, -1, dtype=np.int32)
        self.attempt = np.zeros(n, dtype=np.int16)
        self.origin = np.zeros(n, dtype=np.int8)
        self.retryable = np.full(n, -1, dtype=np.int8)
        self.ref_file = np.full(n, -1, dtype=np.int32)
        self.ref_row = np.zeros(n, dtype=np.int32)
        self.batch_keys: list[str] = []
        self._batch_index: dict[str, int] = {}
        self.results: list[_Results] = []
        self._tokens: list[np.ndarray] = []  # (rows, 3) int32 per result file, in order
        self._all_tokens: np.ndarray | None = None  # the same, concatenated (cached)
        self.seq = 0  # the last change applied
        self.stage = np.zeros(n, dtype=np.int16)
        # Tokens of answers a later stage superseded (they were paid all the same):
        # (stage, origin code) -> [input, output, cached, requests].
        self._superseded: dict[tuple[int, int], np.ndarray] = {}
        # Follower index: each row's leader, or itself (a skipped row).
        self._follow = np.where(sent, self.leader, np.arange(n, dtype=np.int32))
        # Rows sent themselves (a skipped row's leader is -1): fixed by the plan, so
        # worked out once, not in every count (an int64 range per call, at 10M rows).
        self.is_leader = self.leader == np.arange(n, dtype=np.int32)
        self.deduplicated = int(sent.sum() - self.is_leader.sum())

    # -- applying changes ---------------------------------------------------------------
    def batch_index(self, key: str) -> int:
        """The index of a batch key, added if new."""
        if key not in self._batch_index:
            self._batch_index[key] = len(self.batch_keys)
            self.batch_keys.append(key)
        return self._batch_index[key]

    def apply_send(
        self, key: str | None, attempt: int, positions: np.ndarray, stage: int = 0
    ) -> None:
        """Rows sent in batch ``key`` (pending there), or put back unsent (``key`` None),
        in escalation ``stage``. A row moving to another stage keeps the tokens of the
        answer it had in the stage it leaves (see :meth:`usage_by_stage`)."""
        moved = positions[(self.stage[positions] != stage) & (self.ref_file[positions] >= 0)]
        if len(moved):
            tokens = self._tokens_at(moved)
            for old in np.unique(self.stage[moved]):
                for codes, _ in PRICED:
                    mine = (self.stage[moved] == old) & np.isin(self.origin[moved], codes)
                    if mine.any():
                        add = np.append(tokens[mine].sum(axis=0), int(mine.sum()))
                        key_ = (int(old), int(codes[0]))
                        self._superseded[key_] = self._superseded.get(key_, 0) + add
        self.stage[positions] = stage
        self.status[positions] = PENDING
        self.batch[positions] = -1 if key is None else self.batch_index(key)
        self.attempt[positions] = attempt
        self.origin[positions] = BATCH
        self.retryable[positions] = -1
        self.ref_file[positions] = -1

    def apply_result(
        self, key: str | None, origin: str, table: pa.Table, path: Path | None = None
    ) -> None:
        """Results; for batch ``key``, only to rows whose latest attempt went in it.

        With the ``path`` of the table's file, only that path is kept: the file is mapped
        again when its outputs are read, so the pages read now (and later) do not stay
        in this process for the job's lifetime (for millions of rows, gigabytes)."""
        positions = table.column("position").to_numpy()
        rows = np.arange(len(positions), dtype=np.int64)
        if key is not None:
            mine = self.batch[positions] == self.batch_index(key)
            positions, rows = positions[mine], rows[mine]
        status = _codes(table.column("status"), STATES)[rows]
        retry = table.column("retryable")
        retryable = pc.fill_null(pc.cast(retry, pa.int8()), -1).to_numpy(zero_copy_only=False)
        k = len(self.results)
        self.results.append(_Results(table, path))
        self._tokens.append(
            np.column_stack(
                [
                    pc.fill_null(table.column(c), 0).to_numpy(zero_copy_only=False)
                    for c in ("input_tokens", "output_tokens", "cached_tokens")
                ]
            )
            .reshape(-1, 3)
            .astype(np.int32)  # one request's tokens fit; sums are taken in int64
        )
        self._all_tokens = None
        self.status[positions] = status
        self.retryable[positions] = retryable[rows]
        self.origin[positions] = ORIGINS.index(origin)
        self.ref_file[positions] = k
        self.ref_row[positions] = rows

    # -- reading ----------------------------------------------------------------------------
    def follow(self, values: np.ndarray) -> np.ndarray:
        """``values`` (one per position, meaningful for leaders) for every row: a
        deduplicated row gets its leader's."""
        return values[self._follow]

    def statuses(self) -> np.ndarray:
        """Every row's state code (see :data:`STATES`)."""
        return self.follow(self.status)

    def counts(self) -> dict[str, int]:
        """Rows per state, plus ``reused``, ``deduplicated`` and ``realtime`` counts."""
        status = self.statuses()
        per = np.bincount(status, minlength=len(STATES))
        counts = {state: int(per[i]) for i, state in enumerate(STATES)}
        origin = self.follow(self.origin)
        answered = status != PENDING
        counts["reused"] = int(((origin == REUSED) & answered).sum())
        counts["realtime"] = int(((origin == REALTIME) & answered).sum())
        counts["deduplicated"] = self.deduplicated
        return counts

    def usage(self) -> dict[str, tuple[int, int, int, int]]:
        """Tokens paid for, per origin (``batch``, ``realtime``): (input, output, cached,
        requests with usage). Leaders only: a deduplicated row was not sent itself."""
        out = {"batch": (0, 0, 0, 0), "realtime": (0, 0, 0, 0)}
        answered = np.flatnonzero(self.ref_file >= 0)
        if not len(answered):
            return out
        tokens = self._tokens_at(answered)
        origin = self.origin[answered]
        for codes, name in PRICED:
            mine = np.isin(origin, codes)
            totals = tokens[mine].sum(axis=0, dtype=np.int64)
            out[name] = (int(totals[0]), int(totals[1]), int(totals[2]), int(mine.sum()))
        return out

    def _tokens_at(self, positions: np.ndarray) -> np.ndarray:
        """(input, output, cached) tokens of the current answers of leaders at
        ``positions`` (each must have one: ``ref_file >= 0``), one row each."""
        if self._all_tokens is None:
            # Kept once: the per-file arrays become this one (for millions of rows, two
            # copies would be hundreds of MB).
            self._all_tokens = np.concatenate(self._tokens) if self._tokens else None
            self._tokens = [] if self._all_tokens is None else [self._all_tokens]
        if self._all_tokens is None or not len(positions):
            return np.zeros((0, 3), dtype=np.int64)
        offsets = np.cumsum([0] + [r.rows for r in self.results])
        return self._all_tokens[offsets[self.ref_file[positions]] + self.ref_row[positions]]

    def usage_by_stage(self) -> dict[int, dict[str, tuple[int, int, int, int]]]:
        """Tokens paid for per escalation stage, as :meth:`usage` counts them, plus the
        answers a later stage superseded (a row escalated from stage 0 to stage 1 was paid
        for on both). Stages with nothing paid are left out."""
        out: dict[int, dict[str, Any]] = {}

        def add(stage: int, name: str, values: Any) -> None:
            per = out.setdefault(stage, {"batch": (0, 0, 0, 0), "realtime": (0, 0, 0, 0)})
            per[name] = tuple(int(a + b) for a, b in zip(per[name], values, strict=True))

        answered = np.flatnonzero(self.ref_file >= 0)
        tokens = self._tokens_at(answered)
        for codes, name in PRICED:
            for stage in np.unique(self.stage[answered]):
                mine = np.isin(self.origin[answered], codes) & (self.stage[answered] == stage)
                if mine.any():
                    add(int(stage), name, (*tokens[mine].sum(axis=0), int(mine.sum())))
            for (stage, origin), values in self._superseded.items():
                if origin == codes[0]:
                    add(stage, name, values)
        return out

    def per_batch(self) -> dict[str, tuple[int, int]]:
        """Per batch key: (rows still pending in it, its requests that succeeded)."""
        rows_batch = self.follow(self.batch)
        status = self.statuses()
        n = len(self.batch_keys)
        if not n:
            return {}
        inb = rows_batch >= 0
        pending = np.bincount(rows_batch[inb & (status == PENDING)], minlength=n)
        leaders = self.batch >= 0
        ok = np.bincount(self.batch[leaders & (self.status == SUCCEEDED)], minlength=n)
        return {key: (int(pending[i]), int(ok[i])) for i, key in enumerate(self.batch_keys)}

    def column(self, name: str, positions: np.ndarray | None = None) -> pa.Array:
        """A result column (``output``, ``error``, ``error_type``...) for every row (or the
        rows at ``positions``), followers included; null where there is no result. A
        skipped row's ``error`` says why it was skipped."""
        where = self._follow if positions is None else self._follow[positions]
        files = self.ref_file[where]
        rows = self.ref_row[where]
        typ = SCORE.type if name == SCORE.name else RESULT_SCHEMA.field(name).type
        present = sum(r.present.get(name, 0) for r in self.results)
        if not present:  # e.g. no errors at all: nothing to gather
            values = pa.nulls(len(where), typ)
        else:
            values = _gather(self.results, name, typ, files, rows)
        if name == "error":
            skipped = self.manifest.column("skip_error")
            if skipped.null_count == len(skipped):  # no row skipped: nothing to add
                return values
            if positions is not None:
                skipped = skipped.take(pa.array(positions))
            values = pc.coalesce(values, pc.cast(skipped, typ))
        return values

    def manifest_column(self, name: str, positions: np.ndarray | None = None) -> pa.Array:
        """A manifest column (``custom_id``, ``prompt``, ...), whole or at ``positions``.

        Read through a mapping of its own, closed on return: the pages read (a chunk's
        prompts) do not stay in this process's memory for the job's lifetime."""
        if positions is not None and self.path is not None:
            table = read_table(self.path)
            try:
                return _take(table.column(name), positions)
            finally:
                del table
        column = self.manifest.column(name)
        if positions is not None:
            return _take(column, positions)
        return column.combine_chunks()

    def summary(self) -> dict[str, Any]:
        """Counts and usage, as the ledger keeps them for listing jobs (and, for a job
        that escalates, usage per stage, each priced on its own model)."""
        out: dict[str, Any] = {"counts": self.counts(), "usage": self.usage()}
        if self.stage.any() or self._superseded:
            out["stages"] = {str(k): v for k, v in self.usage_by_stage().items()}
        return out


def _take(column: pa.ChunkedArray, positions: np.ndarray) -> pa.Array:
    """``column`` at ``positions``, touching only the chunks between the first and the
    last position: Arrow's take on a chunked column joins all its chunks first, which for
    the prompts of millions of rows is gigabytes copied to take a hundred thousand."""
    if not len(positions):
        return column.slice(0, 0).combine_chunks()
    low, high = int(positions.min()), int(positions.max())
    part = column.slice(low, high - low + 1)
    taken = part.take(pa.array(positions - low, pa.int64()))
    return taken.combine_chunks() if isinstance(taken, pa.ChunkedArray) else taken


class _Results:
    """One result file as a row state keeps it: the table itself, or (when it came from
    a file) only its path, mapped again each time it is read."""

    def __init__(self, table: pa.Table, path: Path | None) -> None:
        self._table = None if path is not None else table
        self.path = path
        self.rows = len(table)
        # Nulls per column are in the file's metadata: no page of the data is read.
        self.present = {n: len(table) - table.column(n).null_count for n in table.schema.names}

    def column(self, name: str) -> pa.ChunkedArray:
        """Column ``name`` (mapped afresh when the table is kept by path)."""
        table = self._table if self._table is not None else None
        if table is None:
            assert self.path is not None
            table = read_table(self.path)
        if name not in table.schema.names:  # an optional column (the score) it lacks
            return pa.chunked_array([pa.nulls(self.rows, SCORE.type)])
        return table.column(name)


def _gather(
    results: list[_Results], name: str, typ: pa.DataType, files: np.ndarray, rows: np.ndarray
) -> pa.Array:
    """Column ``name`` of the result files at (``files``, ``rows``), null where ``files``
    is -1: taken file by file (each file's own column only), then put in order."""
    if len(files) and files[0] >= 0 and (files[1:] >= files[:-1]).all():
        # Each file's rows in one run, the files in order (a whole job merged as it was
        # sent, a chunk after another): the files' parts joined are the column already.
        ends = np.flatnonzero(files[1:] != files[:-1]) + 1
        bounds = [0, *ends.tolist(), len(files)]
        return pa.concat_arrays(
            [
                _take(results[files[a]].column(name), rows[a:b]).cast(typ)
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            ]
        )
    parts = [pa.nulls(1, typ)]  # position 0: the null for rows without a result
    index = np.zeros(len(files), dtype=np.int64)
    start = 1
    for f in np.unique(files[files >= 0]):
        where = np.flatnonzero(files == f)
        parts.append(_take(results[f].column(name), rows[where]))
        index[where] = np.arange(start, start + len(where))
        start += len(where)
    joined = pa.concat_arrays([p.cast(typ) for p in parts])
    return joined.take(pa.array(index))
