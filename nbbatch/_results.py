"""Reconcile a batch's normalised result lines against the custom_ids it was sent.

Every custom_id sent ends with exactly one result: its first line if it has one, or a
``missing_result`` failure if the provider returned none. Lines whose custom_id was
never sent, and repeated lines, are reported and never merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .providers.base import ROW_RESULT_SCHEMA, SCORE_FIELD, empty_results, is_transient


@dataclass
class Reconciled:
    """One result row per sent custom_id, plus what did not fit."""

    table: pa.Table  # ROW_RESULT_SCHEMA, exactly one row per sent custom_id
    missing: int = 0  # sent ids with no line
    unknown: list[str] = field(default_factory=list)  # ids in lines that were never sent
    duplicates: list[str] = field(default_factory=list)  # ids with more than one line

    def note(self, batch_id: str) -> str:
        """A one-line account for the job's history."""
        counts = pc.value_counts(self.table.column("status")).to_pylist()
        parts = [f"{c['counts']} {c['values']}" for c in counts]
        extra = []
        if self.missing:
            extra.append(f"{self.missing} missing (no result line; marked failed)")
        if self.unknown:
            extra.append(
                f"{len(self.unknown)} lines for ids never sent (ignored): {self.unknown[:5]}"
            )
        if self.duplicates:
            extra.append(
                f"{len(self.duplicates)} repeated lines (first kept): {self.duplicates[:5]}"
            )
        return f"batch {batch_id}: " + ", ".join(parts + extra)


def _failures(
    ids: pa.Array, error_type: str, message: str, retryable: bool, status: str = "failed"
) -> pa.Table:
    n = len(ids)
    return pa.table(
        {
            "custom_id": ids,
            "status": pa.array([status] * n, pa.string()),
            "output": pa.nulls(n, pa.large_string()),
            "error_type": pa.array([error_type] * n, pa.string()),
            "error_message": pa.array([message] * n, pa.large_string()),
            "retryable": pa.array([retryable] * n, pa.bool_()),
            "input_tokens": pa.nulls(n, pa.int64()),
            "output_tokens": pa.nulls(n, pa.int64()),
            "cached_tokens": pa.nulls(n, pa.int64()),
        },
        schema=ROW_RESULT_SCHEMA,
    )


def reconcile(
    sent: Sequence[str] | pa.Array,
    tables: Sequence[pa.Table],
    *,
    batch_failure: str | None = None,
    failure_code: str | None = None,
    unfinished: str | None = None,
) -> Reconciled:
    """Match result lines to the ids sent; see the module docstring for the rules.

    ``batch_failure`` is set when the provider failed the whole batch: rows with no line
    then carry that reason instead of ``missing_result``. ``unfinished`` ("cancelled" or
    "expired") is set when the batch stopped early and lists only the requests that ran
    (Gemini): rows with no line end in that state, as other providers' lines say.
    """
    sent_ids = sent if isinstance(sent, pa.Array) else pa.array(list(sent), pa.string())
    table = pa.concat_tables(tables) if tables else empty_results()
    ids = table.column("custom_id").combine_chunks()
    # One hash pass: each line's position among the ids sent (null: never sent). The
    # rest is integer work: a position seen twice is a repeated line.
    where = pc.index_in(ids, value_set=sent_ids)
    known = where.is_valid().to_numpy(zero_copy_only=False)
    pos = pc.fill_null(where, -1).to_numpy(zero_copy_only=False)
    hits = np.bincount(pos[known], minlength=len(sent_ids))
    seen = hits > 0
    repeated = np.zeros(len(ids), dtype=bool)
    if hits.size and hits.max() > 1:  # rare: keep each id's first line only
        first = np.zeros(len(ids), dtype=bool)
        order = np.flatnonzero(known)
        _, first_at = np.unique(pos[order], return_index=True)
        first[order[first_at]] = True
        repeated = known & ~first
    keep = known & ~repeated
    kept = table if keep.all() else table.filter(pa.array(keep))
    result = Reconciled(
        table=kept,
        unknown=ids.filter(pa.array(~known)).to_pylist(),
        duplicates=ids.filter(pa.array(repeated)).to_pylist(),
    )
    if kept.num_rows == len(sent_ids):  # one line for every id sent: nothing is absent
        return result
    absent = sent_ids.filter(pa.array(~seen))
    if len(absent):
        fill = _absent(absent, batch_failure, failure_code, unfinished)
        if unfinished is None and batch_failure is None:
            result.missing = len(absent)
        if SCORE_FIELD.name in kept.schema.names:  # the lines carry a score; absent rows none
            fill = fill.append_column(SCORE_FIELD, pa.nulls(len(absent), SCORE_FIELD.type))
            result.table = pa.concat_tables([kept.cast(fill.schema), fill])
        else:
            result.table = pa.concat_tables([kept.cast(ROW_RESULT_SCHEMA), fill])
    return result


def _absent(
    absent: pa.Array, batch_failure: str | None, failure_code: str | None, unfinished: str | None
) -> pa.Table:
    """Results for the ids sent that got no line: ended as the batch did (stopped early:
    ``unfinished``; failed as a whole: ``batch_failure``), else ``missing_result``."""
    if unfinished is not None:
        return _failures(
            absent,
            unfinished,
            f"the batch was {unfinished} before this request ran",
            is_transient(unfinished),
            status=unfinished,
        )
    if batch_failure is not None:
        code = failure_code or "batch_failed"
        transient = is_transient(code) or code == "token_limit_exceeded"
        return _failures(absent, code, batch_failure, transient)
    return _failures(
        absent, "missing_result", "the provider returned no result line for this request", True
    )


__all__ = ["Reconciled", "reconcile", "check_structured"]


def check_structured(table: pa.Table, schema: dict[str, Any], truncated: set[str]) -> pa.Table:
    """Turn succeeded rows whose reply is not valid against ``schema`` (or was cut off at
    the token limit, ``truncated`` custom_ids) into ``invalid_output`` failures.

    The raw reply stays in ``output`` (merge shows it as ``{output}_raw``); such rows are
    retryable, since another try, or a larger ``max_tokens``, can succeed.
    """
    from . import _structured as structured

    status = table.column("status").to_pylist()
    ids = table.column("custom_id").to_pylist()
    outputs = table.column("output").to_pylist()
    ok = [i for i, s in enumerate(status) if s == "succeeded"]
    if not ok:
        return table
    parsed = structured.parse_outputs(
        [outputs[i] for i in ok], schema, truncated=[ids[i] in truncated for i in ok]
    )
    if parsed.n_invalid == 0:
        return table
    error_type = table.column("error_type").to_pylist()
    message = table.column("error_message").to_pylist()
    retryable = table.column("retryable").to_pylist()
    prefix = f"{structured.INVALID_OUTPUT}: "
    for i, good, why in zip(ok, parsed.ok, parsed.errors, strict=True):
        if not good:
            status[i], error_type[i], retryable[i] = "failed", structured.INVALID_OUTPUT, True
            message[i] = (why or "").removeprefix(prefix)
    return (
        table.set_column(1, "status", pa.array(status, pa.string()))
        .set_column(3, "error_type", pa.array(error_type, pa.string()))
        .set_column(4, "error_message", pa.array(message, pa.large_string()))
        .set_column(5, "retryable", pa.array(retryable, pa.bool_()))
    )
