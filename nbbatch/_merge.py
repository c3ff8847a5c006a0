"""Find a job's rows again in a DataFrame, and check they are the rows that were sent.

``merge`` must never put an answer on the wrong row. Finding rows by label is not
enough: two frames with a default RangeIndex share every label, and a frame sorted and
re-indexed since submit keeps the labels but not the rows. So each row found is also
re-rendered with the job's template and compared, by request hash, with what was sent
for it (vectorised: one render and one hash pass over the frame). The one exception is
a frame whose Arrow text columns are the very data submitted in this process, rows in
place: that data cannot have changed (see :class:`plan.Witness`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from . import _plan, _prompt, states
from . import _rowstore as rowstore
from . import columns as _columns
from ._checks import ContextLimit
from ._errors import InputError, MergeError
from ._files import names_folder
from .providers.base import is_embeddings

if TYPE_CHECKING:
    from ._context import JobContext

#: How many differing rows a MergeError shows.
SHOWN = 2
#: Rows rendered at a time when merge checks a frame.
VERIFY_ROWS = 131_072


def merge_job(
    ctx: JobContext, data: Any, *, verify: bool, native: bool = True, lineage: bool = False
) -> Any:
    """``data`` plus the job's result columns: find each row's position in the job (by
    position, or by label), check it still renders the request sent for it, warn while
    the job runs, and add the columns (see :meth:`BatchJob.merge`). The result is of
    ``data``'s own kind (polars for polars...), or pandas with ``native=False``; with
    ``lineage``, each row's lineage columns too (see :mod:`nbbatch.columns`)."""
    from . import _frames as frames

    names = frames.column_names(data)
    # Only the columns the check reads become pandas: the result columns are joined to
    # ``data`` itself (frames.like), so its other columns, often most of its bytes
    # (a million reviews), are never converted.
    used = _prompt.parse(ctx.record["template"]).columns
    id_column = ctx.record.get("id_column")
    df = frames.to_pandas(frames.select(data, [*used, id_column]))
    frame = df.to_frame() if isinstance(df, pd.Series) else df
    added = ctx.output_columns(lineage)
    clash = [n for n in added if n in (frame.columns if names is None else names)]
    if clash:
        raise MergeError(
            f"the DataFrame already has column(s) {clash}; drop them first or submit with "
            "another output= name.",
            job_id=ctx.id,
        )
    state = ctx.ledger.row_state(ctx.id)
    take = align(
        _plan.row_keys(frame[id_column] if id_column else frame.index),
        state.manifest.column("key").to_numpy(),
        ctx.id,
    )
    if verify:
        _verify(ctx, df, state, take)
    ctx.warn_if_running("merge()")
    out = merged(
        frame,
        state,
        take,
        ctx.output,
        ctx.spec.response_format,
        embeddings=is_embeddings(ctx.endpoint),
        job=ctx,
        lineage=lineage,
    )
    return frames.like(data, out, added) if native else out


def sent_hashes(ctx: JobContext, state: rowstore.RowState) -> tuple[str, np.ndarray]:
    """(salt, request hash of every row) to verify rows against: the job's own, or, for
    a job hashed before salts were kept or under another scheme (another polars
    version), its stored prompts hashed again."""
    salt = ctx.record.get("salt")
    sent = state.manifest.column("request_hash").to_numpy()
    if salt is None or ctx.record.get("hash_scheme") != _plan.HASH_SCHEME:
        prompts = state.manifest.column("prompt")
        salt = "nbbatch-verify01"
        sent = np.zeros(len(prompts), dtype=np.uint64)
        valid = prompts.is_valid().to_numpy(zero_copy_only=False)
        if valid.any():
            sent[valid] = _plan.prompt_hashes(prompts.filter(valid), salt)
    return str(salt), sent


def _verify(
    ctx: JobContext,
    df: pd.DataFrame | pd.Series,
    state: rowstore.RowState,
    take: np.ndarray,
    hashes: tuple[str, np.ndarray] | None = None,
) -> None:
    """Check that each row of ``df`` renders the request sent for it (see verify_rows),
    against ``hashes`` (from :func:`sent_hashes`, worked out here when not given)."""
    frame, _ = _plan.as_frame(df)
    template = _prompt.parse(ctx.record["template"], frame.columns)
    missing = str(ctx.policy.get("missing", "skip"))
    limit = ContextLimit.from_dict(ctx.policy.get("context"))
    witness = _plan.witness(ctx.record.get("fingerprint"))
    if (
        witness is not None
        and len(take) == state.n
        and bool((take == np.arange(state.n)).all())
        and witness.holds(frame, _plan.witness_rules(template, missing, limit))
    ):
        # Each row where it was, its columns the very data rendered at submit (in this
        # process): its prompts are those sent, so rendering them again would only
        # find the same (for a million rows, most of merge's time).
        return
    salt, sent = hashes if hashes is not None else sent_hashes(ctx, state)
    prompts = state.manifest.column("prompt")

    def sent_prompts(positions: list[int]) -> list[str | None]:
        return prompts.take(pa.array(take[positions])).to_pylist()

    verify_rows(
        frame,
        template,
        missing=missing,
        limit=limit,
        salt=str(salt),
        sent=sent[take],
        sent_prompts=sent_prompts,
        job_id=ctx.id,
    )


def align(wanted: np.ndarray, keys: np.ndarray, job_id: str) -> np.ndarray:
    """Positions into the job's rows (row keys ``keys``) for each row key in ``wanted``."""
    if len(wanted) == len(keys) and np.array_equal(wanted, keys):
        return np.arange(len(keys))
    index = pd.Index(keys)
    if not index.is_unique:
        raise MergeError(
            f"job {job_id} was built from rows with duplicated labels, so rows can only be "
            "matched by position: pass the same DataFrame, in the same order.",
            job_id=job_id,
        )
    take = index.get_indexer(wanted)
    unknown = int((take < 0).sum())
    if unknown:
        raise MergeError(
            f"{unknown} of the {len(wanted)} rows given to merge() are not rows of job "
            f"{job_id} (matched by index label). Pass the DataFrame you submitted, or a "
            "subset of it with the same index.",
            job_id=job_id,
        )
    if not pd.Index(wanted).is_unique:
        raise MergeError("the DataFrame given to merge() has duplicated index labels.")
    return take


def verify_rows(
    frame: pd.DataFrame,
    template: _prompt.Template,
    *,
    missing: str,
    salt: str,
    sent: np.ndarray,
    limit: ContextLimit | None = None,
    sent_prompts: Callable[[list[int]], list[str | None]],
    job_id: str,
) -> None:
    """Raise a MergeError unless every row of ``frame`` renders the request that was sent
    for it: ``sent`` holds, aligned with ``frame``, the request hash recorded at submit
    (0 for a row not sent). ``sent_prompts(positions)`` gives the prompts sent for some
    rows of ``frame``, for the message. ``limit``: the context window submit skipped
    longer rows by."""

    # In parts: only a part's rendered text is held at once (for a million rows of
    # reviews, tens of MB instead of half a GB).
    differ = np.concatenate(
        [
            start
            + _differing(
                frame.iloc[start : start + VERIFY_ROWS],
                template,
                missing,
                salt,
                limit,
                sent[start : start + VERIFY_ROWS],
            )
            for start in range(0, max(len(frame), 1), VERIFY_ROWS)
        ]
    )
    if not len(differ):
        return
    shown = differ[:SHOWN].tolist()
    before = sent_prompts(shown)
    rendered, _ = _plan.render_rows(frame.iloc[shown], template, missing=missing)
    send = _sendable(rendered, template, limit)
    lines = [
        f"  row {frame.index[pos]!r}: "
        + _where_they_differ(old, rendered[i].as_py() if send[i] else None)
        for i, (pos, old) in enumerate(zip(shown, before, strict=True))
    ]
    raise MergeError(
        f"{len(differ):,} of the {len(frame):,} rows given to merge() do not hold the data "
        f"job {job_id} sent for them, so their answers would land on the wrong rows:\n"
        + "\n".join(lines)
        + "\nThe frame was probably sorted, re-indexed or edited since submit. Pass the "
        "DataFrame you submitted (or a subset of it with the same index); if you changed a "
        "column on purpose, call merge(df, verify=False).",
        job_id=job_id,
    )


def _differing(
    frame: pd.DataFrame,
    template: _prompt.Template,
    missing: str,
    salt: str,
    limit: ContextLimit | None,
    sent: np.ndarray,
) -> np.ndarray:
    """Positions of the rows of ``frame`` whose request now differs from the one sent
    (``sent``: its hash, 0 for a row not sent).

    A row is sent when its prompt renders (no missing value), is not blank and fits the
    context window (``limit``). Only the first is checked on every row: a row whose
    prompt hashes as the one sent holds that very prompt, which was not blank and did
    fit, so the other two can only matter where the hash differs from a 0 sent, and are
    checked on those rows alone (for a million rows, a pass over every prompt's
    characters saved)."""
    rendered, _ = _plan.render_rows(frame, template, missing=missing)
    valid = rendered.is_valid().to_numpy(zero_copy_only=False)
    now = np.zeros(len(frame), dtype=np.uint64)
    if valid.all():
        now = _plan.prompt_hashes(rendered, salt)
    elif valid.any():
        now[valid] = _plan.prompt_hashes(rendered.filter(valid), salt)
    differ = np.flatnonzero(now != sent)
    unsent = differ[sent[differ] == 0]  # rendered now, not sent then: blank or too long?
    if len(unsent):
        kept = _sendable(rendered.take(pa.array(unsent)), template, limit)
        differ = np.setdiff1d(differ, unsent[~kept], assume_unique=True)
    return differ


def _sendable(
    rendered: pa.Array, template: _prompt.Template, limit: ContextLimit | None
) -> np.ndarray:
    """Whether each rendered prompt would be sent: present, not blank, and within the
    context window ``limit`` (as submit decides)."""
    send = rendered.is_valid().to_numpy(zero_copy_only=False) & ~_plan.blank(rendered, template)
    if limit is not None:
        send &= ~limit.too_long(rendered)
    return send


def merged(
    frame: pd.DataFrame,
    state: rowstore.RowState,
    take: np.ndarray,
    output: str,
    response_format: dict[str, Any] | None,
    *,
    embeddings: bool = False,
    statuses: np.ndarray | None = None,
    job: JobContext | None = None,
    lineage: bool = False,
) -> pd.DataFrame:
    """A copy of ``frame`` with the result columns of the job's rows at ``take`` (one
    position per row of ``frame``, from :func:`align`); ``statuses``: every row's state
    code, when the caller has them (``state.statuses()``). With the ``job`` (its
    context), ``{output}_model`` for a job with escalation stages, and with ``lineage``
    the lineage columns (see :mod:`nbbatch.columns`)."""
    rows = _columns.Rows.of_state(
        state, take, output, response_format, embeddings=embeddings, statuses=statuses, job=job
    )
    staged = job is not None and job.staged
    scored = job is not None and job.scored
    # A shallow copy: pandas copies on write, so the caller's frame stays untouched and
    # its columns are not duplicated in memory.
    out = frame.copy(deep=False)
    built = _columns.build(rows, staged=staged, lineage=lineage, scored=scored)
    for name, column in built.items():
        out[name] = column
    return out


def results_table(state: rowstore.RowState, batch_names: list[str | None]) -> pa.Table:
    """Every row's result, by position: custom_id, position, label, status, batch_id,
    attempt, origin (where the answer came from: ``batch``, ``realtime`` or ``reused``
    from an earlier job), output, error_type, error, retryable and token counts."""
    n = state.n
    batch = state.follow(state.batch)
    names = pa.array([*batch_names, None], pa.string())
    columns: dict[str, Any] = {
        "custom_id": state.manifest_column("custom_id"),
        "position": pa.array(np.arange(n)),
        "label": state.manifest_column("label"),
        "status": pa.array(np.asarray(rowstore.STATES, dtype=object)[state.statuses()]),
        "batch_id": names.take(pa.array(np.where(batch < 0, len(batch_names), batch))),
        "attempt": pa.array(state.follow(state.attempt)),
        "origin": pa.array(np.asarray(rowstore.ORIGINS, dtype=object)[state.follow(state.origin)]),
    }
    for name in ("output", "error_type", "error", "retryable"):
        columns[name] = state.column(name)
    for name in ("input_tokens", "output_tokens", "cached_tokens"):
        columns[name] = state.column(name)
    return pa.table(columns)


def _where_they_differ(sent: str | None, now: str | None, width: int = 60) -> str:
    """``sent ..., now ...`` for one row, each cut to the same window around the first
    character where they differ, so that a change past the first ``width`` characters
    still shows (two texts cut to the same prefix would look equal)."""
    if sent is None or now is None:
        return f"sent {_short(sent, width)}, now {_short(now, width)}"
    at = next(
        (i for i, (a, b) in enumerate(zip(sent, now, strict=False)) if a != b),
        min(len(sent), len(now)),
    )
    start = max(0, at - width // 3)

    def window(text: str) -> str:
        piece = text[start : start + width]
        return repr(("…" if start else "") + piece + ("…" if start + width < len(text) else ""))

    where = f" (they differ from character {at + 1})" if start else ""
    return f"sent {window(sent)}, now {window(now)}{where}"


def _short(text: str | None, width: int = 60) -> str:
    if text is None:
        return "nothing (row not sent)"
    return repr(text if len(text) <= width else text[: width - 1] + "…")


def write_parquet(
    ctx: JobContext,
    source: Any,
    target: Path,
    *,
    columns: list[str] | None,
    verify: bool,
    lineage: bool = False,
) -> int:
    """Write ``source``'s rows (a :class:`stream.Source`: the files the job was planned
    from) with the job's result columns to the Parquet file ``target``, record batch by
    record batch, never holding the whole table; return the rows written.

    Each batch is checked as ``merge`` checks a frame: same row keys (``id_column``),
    and, with ``verify``, every row still renders the request sent for it."""
    import pyarrow.parquet as pq

    from . import _frames as frames

    state = ctx.ledger.row_state(ctx.id)
    added = ctx.output_columns(lineage)
    keep = list(source.columns if columns is None else columns)
    _check_parquet_source(ctx, source, state.n, keep, added)
    id_column = ctx.record.get("id_column")
    template = _prompt.parse(ctx.record["template"], source.columns)
    checked = list(dict.fromkeys([*template.columns, *([id_column] if id_column else [])]))
    read = list(dict.fromkeys([*keep, *checked]))
    # Worked out once for the whole job, not per record batch: for ten million rows,
    # each is a pass over every row, which per batch made the write quadratic.
    keys = state.manifest.column("key").to_numpy() if id_column else None
    hashes = sent_hashes(ctx, state) if verify else None
    statuses = state.statuses()
    schema = _result_schema(ctx, state, added, lineage=lineage)

    def prepared(batch: pa.RecordBatch, offset: int) -> pa.Table:
        """One record batch of the data, checked, with its result columns."""
        take = np.arange(offset, offset + batch.num_rows)
        frame = frames.from_arrow(pa.Table.from_batches([batch]).select(checked))
        frame.index = pd.RangeIndex(take[0], take[-1] + 1) if len(take) else frame.index
        if keys is not None:
            _check_batch_keys(ctx, frame[id_column], keys[take], take[0])
        if hashes is not None:
            _verify(ctx, frame, state, take, hashes)
        out = merged(
            frame.iloc[:, :0], state, take, ctx.output, ctx.spec.response_format,
            embeddings=is_embeddings(ctx.endpoint), statuses=statuses, job=ctx,
            lineage=lineage,
        )  # fmt: skip
        results = pa.Table.from_pandas(out, preserve_index=False).cast(schema)
        table = pa.Table.from_batches([batch]).select(keep)
        for name in added:
            table = table.append_column(schema.field(name), results.column(name))
        return table

    with pq.ParquetWriter(target, pa.schema([*source.schema_of(keep), *schema])) as writer:
        return _write_ahead(writer, source.batches(read), prepared)


def _check_parquet_source(
    ctx: JobContext, source: Any, n_rows: int, keep: list[str], added: list[str]
) -> None:
    """Refuse files that are not the job's (another row count), and ``columns=`` that
    name a column the data lacks or one of the job's result columns."""
    if source.n_rows != n_rows:
        raise MergeError(
            f"the data has {source.n_rows:,} rows but job {ctx.id} was planned from "
            f"{n_rows:,}: the files changed since submit. Pass the files you submitted.",
            job_id=ctx.id,
        )
    unknown = [c for c in keep if c not in source.columns]
    if unknown:
        raise MergeError(f"no column(s) {unknown} in the data; columns are {source.columns}.")
    clash = [c for c in keep if c in added]
    if clash:
        raise MergeError(f"the data already has column(s) {clash}; leave them out of columns=.")


def _check_batch_keys(ctx: JobContext, ids: pd.Series, keys: np.ndarray, first: int) -> None:
    """Refuse a record batch whose ``id_column`` values (``ids``) are not the rows the
    job planned there (``keys``, from row ``first`` on)."""
    if not np.array_equal(_plan.row_keys(ids), keys):
        raise MergeError(
            f"the rows of the data are not those of job {ctx.id} (by "
            f"{ctx.record.get('id_column')!r}, around row {first:,}): the files changed "
            "since submit.",
            job_id=ctx.id,
        )


def _write_ahead(
    writer: Any,
    batches: Iterable[pa.RecordBatch],
    prepare: Callable[[pa.RecordBatch, int], pa.Table],
) -> int:
    """Write ``prepare(batch, offset)`` of each batch in turn (``offset``: the position
    of its first row); returns the rows read. The next batch is prepared (read, checked
    and merged) in a thread while this one is written: both mostly run in Arrow,
    outside the GIL, so two cores share them."""
    offset = 0
    with ThreadPoolExecutor(1, thread_name_prefix="nbbatch-write") as pool:
        pending = None
        for batch in batches:
            ahead = pool.submit(prepare, batch, offset)
            offset += batch.num_rows
            if pending is not None:
                writer.write_table(pending.result())
            pending = ahead
        if pending is not None:
            writer.write_table(pending.result())
    return offset


def _result_schema(
    ctx: JobContext, state: rowstore.RowState, added: list[str], *, lineage: bool = False
) -> pa.Schema:
    """The Arrow types of the result columns, from a sample of rows that succeeded and
    some that did not (a column with no value in the sample is text)."""
    status = state.statuses()
    good = np.flatnonzero(status == rowstore.SUCCEEDED)[:1000]
    other = np.flatnonzero(status != rowstore.SUCCEEDED)[:10]
    sample = np.concatenate([good, other])
    out = merged(
        pd.DataFrame(index=pd.RangeIndex(len(sample))), state, sample, ctx.output,
        ctx.spec.response_format, embeddings=is_embeddings(ctx.endpoint), job=ctx,
        lineage=lineage,
    )  # fmt: skip
    table = pa.Table.from_pandas(out[added], preserve_index=False)
    return pa.schema(
        pa.field(f.name, pa.large_string()) if pa.types.is_null(f.type) else f for f in table.schema
    )


def result_rows(ctx: JobContext, frame: pd.DataFrame, *, lineage: bool = False) -> pd.DataFrame:
    """``frame`` (one row per row of the job, by position) with every row's result
    columns, as ``merge`` adds them, without the submitted data (the CLI's ``collect``)."""
    state = ctx.row_state()
    return merged(
        frame, state, np.arange(state.n), ctx.output, ctx.spec.response_format,
        embeddings=is_embeddings(ctx.endpoint), job=ctx, lineage=lineage,
    )  # fmt: skip


def results_frame(ctx: JobContext) -> pd.DataFrame:
    """One row per input row of the job, by position, indexed by custom_id: label,
    status, output, error, error_type, retryable, batch_id, attempt, token counts, and
    the stage, model and prompt version hash each row's result comes from (see
    ``BatchJob.results``)."""
    state = ctx.row_state()
    names = {b["intent"]: b["batch_id"] for b in ctx.ledger.batches(ctx.id)}
    table = results_table(state, [names.get(key) for key in state.batch_keys])
    frame = table.to_pandas()
    frame["retryable"] = pd.Series(table.column("retryable").to_pylist(), dtype=object)
    if is_embeddings(ctx.endpoint):
        # A row without a vector (failed, pending) reads back as None or NaN.
        frame["output"] = (
            frame["output"].map(lambda v: orjson.loads(v) if isinstance(v, str) else None)
        ).astype(object)
    stage = state.follow(state.stage)
    frame["stage"] = stage
    frame["model"] = np.array(ctx.models, dtype=object)[stage]
    frame["prompt_hash"] = np.array(ctx.prompt_hashes(), dtype=object)[stage]
    if ctx.scored:  # the score merge adds as {output}_score (see nbbatch.columns)
        scores = state.column(rowstore.SCORE.name).to_numpy(zero_copy_only=False)
        frame["score"] = pd.array(scores, dtype="Float64")
    return frame.set_index("custom_id")


def to_parquet(
    ctx: JobContext,
    target: Path,
    data: Any,
    *,
    columns: list[str] | None,
    verify: bool,
    merge: Callable[..., Any],
    lineage: bool = True,
) -> Path:
    """Write the merged rows to ``target`` (see ``BatchJob.to_parquet``): data from
    files or an Arrow dataset record batch by record batch, a table in memory through
    ``merge`` (the job's). Written to a temporary name, then renamed."""
    import pyarrow.parquet as pq

    from . import _frames as frames
    from . import _stream
    from ._files import private_output

    data = data if data is not None else ctx.data
    source = None
    if data is not None and frames.streamed(data):
        source = _stream.Source.of(data)
    elif data is None and (recorded := ctx.ledger.source(ctx.id)) is not None:
        source = _stream.Source.recorded(recorded)
    # A fresh private file, renamed into place (see nbbatch._files).
    with private_output(target) as tmp:
        if source is not None:
            ctx.warn_if_running("to_parquet()")
            write_parquet(ctx, source, tmp, columns=columns, verify=verify, lineage=lineage)
        else:
            table = frames.as_arrow(merge(data, verify=verify, lineage=lineage))
            if columns is not None:
                table = table.select([*columns, *ctx.output_columns(lineage)])
            pq.write_table(with_row_position(table), tmp)
    return target


def failed_rows(ctx: JobContext) -> pd.DataFrame:
    """The merged rows that did not succeed (see ``BatchJob.failed``): of the data
    submitted in this session, else of the results; while the job runs, one warning
    says these are only the failures so far."""
    import warnings

    from . import _frames as frames
    from ._errors import JobRunningWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JobRunningWarning)  # warned once, below
        if ctx.data is None:
            merged = results_frame(ctx)
            bad = merged["status"].isin(states.NOT_SUCCEEDED)
            ctx.warn_if_running("failed()")
            return merged[bad]
        merged = merge_job(ctx, ctx.data, verify=True, native=False)
    ctx.warn_if_running("failed()")
    status = _columns.name_of(_columns.Role.STATUS, ctx.output)
    bad = merged[status].isin(states.NOT_SUCCEEDED)
    return frames.rows(ctx.data, merged, ctx.output_columns(), bad.to_numpy())


#: The column a written result file gives each row's position in the submitted data.
ROW_COLUMN = "row"


def with_row_position(table: pa.Table) -> pa.Table:
    """``table`` with a first column ``row``: each row's position (0-based) in the data,
    so rows whose labels repeat can be told apart in the file. Left as it is when the
    table has a ``row`` column of its own already."""
    if ROW_COLUMN in table.column_names:
        return table
    return table.add_column(0, ROW_COLUMN, pa.array(np.arange(table.num_rows), pa.int64()))


def parquet_target(path: str | os.PathLike[str], job_id: str) -> Path:
    """Where ``to_parquet(path)`` writes: ``<job id>.parquet`` inside a folder (one
    named with a trailing slash is created), else ``path``; a file whose folder does
    not exist is refused before anything is written."""
    if names_folder(path):
        Path(path).mkdir(parents=True, exist_ok=True)
    path = Path(path)
    if path.is_dir():
        return path / f"{job_id}.parquet"
    if not path.parent.is_dir():
        raise InputError(
            f"cannot write {str(path)!r}: the folder {str(path.parent)!r} does not exist. "
            "Create it first, give another path, or end the path with '/' to write "
            f"{job_id}.parquet into a new folder of that name."
        )
    return path


def write_results(
    ctx: JobContext, target: Path, *, rows_per_group: int, lineage: bool = False
) -> pa.Schema:
    """Write every row's result columns (those ``merge`` adds), by position, to the
    Parquet file ``target``, with ``position``, ``key`` and ``request_hash`` beside them,
    in row groups of ``rows_per_group`` rows, so that a partition of a distributed frame
    reads only its own slice (see :mod:`nbbatch._engines`). Returns the file's schema."""
    import pyarrow.parquet as pq

    state = ctx.ledger.row_state(ctx.id)
    added = ctx.output_columns(lineage)
    schema = _result_schema(ctx, state, added, lineage=lineage)
    full = pa.schema(
        [("position", pa.int64()), ("key", pa.uint64()), ("request_hash", pa.uint64()), *schema]
    )
    keys = state.manifest.column("key")
    hashes = state.manifest.column("request_hash")
    with pq.ParquetWriter(target, full) as writer:
        for start in range(0, state.n, rows_per_group):
            take = np.arange(start, min(state.n, start + rows_per_group))
            out = merged(
                pd.DataFrame(index=pd.RangeIndex(len(take))), state, take, ctx.output,
                ctx.spec.response_format, embeddings=is_embeddings(ctx.endpoint), job=ctx,
                lineage=lineage,
            )  # fmt: skip
            results = pa.Table.from_pandas(out, preserve_index=False).cast(schema)
            at = pa.array(take)
            table = pa.table(
                [at, keys.take(at), hashes.take(at), *(results.column(n) for n in added)],
                schema=full,
            )
            writer.write_table(table, row_group_size=rows_per_group)
    return full
