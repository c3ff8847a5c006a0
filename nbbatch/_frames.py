"""The kinds of table nbbatch takes, brought to one shape and given back in their own.

Every check and every rendering works on a pandas DataFrame (or Series), so a polars
DataFrame or LazyFrame, a pyarrow Table or Dataset go through exactly the same
validation, planning and merge as pandas does: they are converted once through Arrow
(integers stay integers: ``1``, not ``1.0``), with a RangeIndex, so rows are named by
position or by ``id_column``. ``merge`` then hands the result back as the kind it was
given. A path or glob of Parquet files and an Arrow dataset are *streamed* (see
:mod:`nbbatch._stream`): ``submit`` plans them a record batch at a time and
``job.to_parquet`` writes them back the same way; ``merge`` still reads them whole (for
what fits in memory) and gives a pyarrow Table back.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from ._errors import InputError

#: The kinds, by the name ``kind_of`` gives them.
PANDAS, POLARS, POLARS_LAZY, ARROW, ARROW_DATASET, PARQUET = (
    "pandas",
    "polars",
    "polars-lazy",
    "arrow",
    "arrow-dataset",
    "parquet",
)


def kind_of(data: Any) -> str | None:
    """Which kind of table ``data`` is, or None for anything else. Libraries that are
    not imported cannot have made ``data``, so they are not imported to ask."""
    import sys

    if isinstance(data, (pd.DataFrame, pd.Series)):
        return PANDAS
    if "polars" in sys.modules:
        import polars as pl

        if isinstance(data, pl.DataFrame):
            return POLARS
        if isinstance(data, pl.LazyFrame):
            return POLARS_LAZY
    if isinstance(data, pa.Table):
        return ARROW
    if isinstance(data, (str, os.PathLike)):
        return PARQUET
    if "pyarrow.dataset" in sys.modules:
        import pyarrow.dataset as ds

        if isinstance(data, ds.Dataset):
            return ARROW_DATASET
    return None


def streamed(data: Any) -> bool:
    """Whether ``data`` is read in record batches, never whole (see :mod:`nbbatch._stream`):
    Parquet files and Arrow datasets, which may be larger than memory."""
    return kind_of(data) in (PARQUET, ARROW_DATASET)


def to_pandas(data: Any) -> pd.DataFrame | pd.Series:
    """``data`` as pandas (pandas itself is returned as it is)."""
    kind = kind_of(data)
    if kind == PANDAS:
        return data
    if kind is None:
        return data  # plan.as_frame explains what it takes
    return from_arrow(_arrow_table(data, kind))


def column_names(data: Any) -> list[str] | None:
    """The column names of a polars or Arrow table (None for other kinds)."""
    kind = kind_of(data)
    if kind == POLARS:
        return list(data.columns)
    if kind == POLARS_LAZY:
        return list(data.collect_schema().names())
    if kind == ARROW:
        return list(data.column_names)
    return None


def select(data: Any, columns: list[str | None]) -> Any:
    """A polars or Arrow table with only ``columns`` (those it has; None entries are
    ignored), in its own kind; other kinds as they are."""
    names = column_names(data)
    if names is None:
        return data
    keep = [c for c in dict.fromkeys(columns) if c is not None and c in names]
    return data.select(keep) if keep else data  # no columns would mean no rows, in polars


def _arrow_table(data: Any, kind: str) -> pa.Table:
    if kind == POLARS:
        return data.to_arrow()
    if kind == POLARS_LAZY:
        return data.collect().to_arrow()
    if kind == ARROW_DATASET:
        return data.to_table()
    if kind == PARQUET:
        return read_parquet(data)
    return data


def parquet_files(path: str | os.PathLike[str] | list[str]) -> list[str]:
    """The Parquet files a path names: a file, a folder of ``*.parquet`` files, or a
    glob (or a list of files, taken as they are); a clear error when there are none."""
    if isinstance(path, list):
        missing = [f for f in path if not Path(f).exists()]
        if missing:
            raise InputError(
                f"{len(missing)} of the job's Parquet files are gone (e.g. {missing[0]!r}); "
                "pass the data to read instead."
            )
        return path
    text = os.fspath(path)
    if any(c in text for c in "*?["):
        files = sorted(glob.glob(text, recursive=True))
    elif Path(text).is_dir():
        files = sorted(str(p) for p in Path(text).rglob("*.parquet"))
    elif Path(text).exists():
        files = [text]
    else:
        raise InputError(
            f"data is {text!r}, which is neither a table nor an existing file. Pass a "
            "DataFrame or Table, or the path (or glob) of Parquet files; the prompt "
            "template comes second."
        )
    if not files:
        raise InputError(f"{text!r} matches no Parquet file; check the path and the pattern.")
    return files


def read_parquet(path: str | os.PathLike[str]) -> pa.Table:
    """Every file a path names, as one table (see :func:`parquet_schema`)."""
    import pyarrow.parquet as pq

    files, schema = parquet_schema(path)
    return pa.concat_tables(pq.read_table(f, schema=schema) for f in files)


def parquet_schema(path: str | os.PathLike[str] | list[str]) -> tuple[list[str], pa.Schema]:
    """The Parquet files a path names and their one schema, read from the files' footers
    alone. A column missing from some files, or of another type in some, is an error
    naming them (a dataset would fill the gaps with nulls and send prompts without their
    text)."""
    import pyarrow.parquet as pq

    files = parquet_files(path)
    schemas = {}
    for f in files:
        try:
            schemas[f] = pq.read_schema(f)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"cannot read {f} as Parquet: {exc}") from None
    first_file, first = files[0], schemas[files[0]]
    for f, schema in schemas.items():
        if schema.names != first.names:
            lost = sorted(set(first.names) ^ set(schema.names))
            raise InputError(
                f"the Parquet files do not have the same columns: {f} and {first_file} "
                f"differ in {lost}. Give files of one schema (or select them with a "
                "narrower glob)."
            )
        for field in schema:
            other = first.field(field.name).type
            if field.type != other:
                raise InputError(
                    f"column {field.name!r} is {field.type} in {f} but {other} in "
                    f"{first_file}; the files must agree on each column's type."
                )
    return files, first


_NULLABLE = {
    pa.int8(): pd.Int8Dtype(),
    pa.int16(): pd.Int16Dtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(),
    pa.uint8(): pd.UInt8Dtype(),
    pa.uint16(): pd.UInt16Dtype(),
    pa.uint32(): pd.UInt32Dtype(),
    pa.uint64(): pd.UInt64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
}


def from_arrow(table: pa.Table) -> pd.DataFrame:
    """An Arrow table as pandas: nullable integers and booleans stay what they are."""
    # Views of strings (polars' own layout) are read as plain strings.
    fields = [
        pa.field(f.name, pa.large_string()) if f.type == pa.string_view() else f
        for f in table.schema
    ]
    return table.cast(pa.schema(fields)).to_pandas(types_mapper=_NULLABLE.get)


def like(data: Any, merged: pd.DataFrame, added: list[str]) -> Any:
    """The ``added`` columns of ``merged`` (a pandas frame built from ``data``) joined to
    ``data`` in ``data``'s own kind: a polars DataFrame for polars (a LazyFrame for a
    LazyFrame), a pyarrow Table for Arrow, pandas for pandas."""
    kind = kind_of(data)
    if kind in (PANDAS, None):
        return merged
    columns = pa.Table.from_pandas(merged[added], preserve_index=False)
    if kind in (POLARS, POLARS_LAZY):
        import polars as pl

        base = data.collect() if kind == POLARS_LAZY else data
        added_frame = pl.from_arrow(columns)
        assert isinstance(added_frame, pl.DataFrame)
        out = base.hstack(added_frame.get_columns())
        # A LazyFrame in, a LazyFrame out: the caller's pipeline stays lazy after merge.
        return out.lazy() if kind == POLARS_LAZY else out
    table = _arrow_table(data, kind)
    for name in added:
        table = table.append_column(name, columns.column(name))
    return table


def rows(data: Any, merged: pd.DataFrame, added: list[str], mask: Any) -> Any:
    """The rows of :func:`like`'s result where ``mask`` (a numpy bool array) holds."""
    if kind_of(data) in (PANDAS, None):
        return merged[mask]
    whole = like(data, merged, added)
    if kind_of(data) == POLARS_LAZY:
        whole = whole.collect()  # the rows picked, shown: a frame, not a plan
    if isinstance(whole, pa.Table):
        return whole.filter(pa.array(mask))
    import polars as pl

    return whole.filter(pl.Series(mask))


def as_arrow(table: Any) -> pa.Table:
    """A merged result (pandas, polars or Arrow) as a pyarrow Table; a pandas index that
    carries information (not a plain RangeIndex) is kept as a column."""
    if isinstance(table, pa.Table):
        return table
    if isinstance(table, pd.DataFrame):
        return pa.Table.from_pandas(table)
    if kind_of(table) == POLARS_LAZY:
        table = table.collect()
    return table.to_arrow()
