"""Rows to provider-neutral requests: custom_ids, row keys, skipped rows, chunks.

A :class:`Plan` is everything a job needs to know about its rows before it talks to a
provider: one ``custom_id`` per input row (stable, unique, valid for every provider,
meaningful where the index allows), the rendered prompt of every row that will be sent,
the rows that will not be sent and why, and a 64-bit key per row that lets ``merge``
find the row again in a DataFrame.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from . import _prompt
from . import _rowstore as rowstore
from ._checks import ContextLimit
from ._errors import InputError

#: Both providers accept custom_ids matching this pattern.
CUSTOM_ID_PATTERN = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass
class Plan:
    """The rows of a job, before anything is sent.

    Attributes are aligned with the input rows (``n_rows`` long) except ``prompts``,
    which holds only the rows to send (``send_positions``).
    """

    custom_ids: pa.Array  # str, one per input row
    keys: np.ndarray  # uint64 hash of each row's index label (or id_column value)
    labels: pa.Array  # a readable form of each row's label, for people
    prompts: pa.Array  # rendered prompt of each row that is sent
    send_positions: np.ndarray  # positions (into the input) of the rows sent
    skip_positions: np.ndarray  # positions of rows not sent
    skip_reasons: list[str]  # why each of those is not sent
    too_long: int = 0  # of those, rows over the model's context window
    witness: Witness | None = None  # the very text rendered, when it can be told again

    @property
    def n_rows(self) -> int:
        """How many input rows the plan covers."""
        return len(self.custom_ids)

    def manifest(self, hashes: np.ndarray) -> pa.Table:
        """These rows as the job's manifest records them, with each row's request
        ``hashes`` (see :func:`request_hashes`)."""
        return rowstore.manifest(
            self.custom_ids, self.keys, self.labels, self.prompts, self.send_positions,
            self.skip_positions, self.skip_reasons, hashes,
        )  # fmt: skip


@dataclass(frozen=True)
class Witness:
    """What a plan rendered, kept so that ``merge`` can tell, without rendering every
    row again, that a frame still holds that very text: the rules it rendered by
    (the template as parsed, ``missing``, the context window) and a weak reference to
    the Arrow data of each column the template uses.

    Arrow data never changes: pandas replaces a column's Arrow array when a value is
    set, or a column sorted or filled, in place or not. So a column whose array is
    still the one rendered holds the same text, row for row. Columns of Python objects
    or numpy values can change in place, so none is kept for them (``merge`` renders).
    Only weak references: a witness keeps no data alive."""

    rules: tuple[_prompt.Template, str, str | None]
    columns: tuple[weakref.ref[pa.ChunkedArray], ...]

    def holds(self, frame: pd.DataFrame, rules: tuple[_prompt.Template, str, str | None]) -> bool:
        """Whether ``frame``'s columns are the very data rendered, under ``rules`` (see
        :func:`witness_rules`)."""
        if rules != self.rules:
            return False
        arrays = _arrow_columns(frame, rules[0].columns)
        return arrays is not None and all(
            ref() is array for ref, array in zip(self.columns, arrays, strict=True)
        )

    @property
    def alive(self) -> bool:
        """Whether the data it refers to is still in memory."""
        return all(ref() is not None for ref in self.columns)


def witness_rules(
    template: _prompt.Template, missing: str, limit: ContextLimit | None
) -> tuple[_prompt.Template, str, str | None]:
    """The rules a :class:`Witness` holds for: the rows rendered the same way."""
    window = None if limit is None else orjson.dumps(limit.as_dict(), option=orjson.OPT_SORT_KEYS)
    return template, missing, None if window is None else window.decode()


def _arrow_columns(frame: pd.DataFrame, names: tuple[str, ...]) -> list[pa.ChunkedArray] | None:
    """The Arrow data of pandas columns ``names``, or None when one is not Arrow data."""
    out = []
    for name in names:
        if list(frame.columns).count(name) != 1:
            return None
        values = frame[name].array
        data = getattr(values, "_pa_array", None)  # pandas' own field for it
        if not isinstance(values, pd.arrays.ArrowExtensionArray) or not isinstance(
            data, pa.ChunkedArray
        ):
            return None
        out.append(data)
    return out


def _witness(
    frame: pd.DataFrame, template: _prompt.Template, missing: str, limit: ContextLimit | None
) -> Witness | None:
    arrays = _arrow_columns(frame, template.columns)
    if arrays is None:
        return None
    return Witness(witness_rules(template, missing, limit), tuple(weakref.ref(a) for a in arrays))


#: Witnesses of the plans made in this process, by fingerprint (see :func:`witness`).
_WITNESSES: dict[str, Witness] = {}


def witness(fingerprint: str | None) -> Witness | None:
    """The witness of the plan with this fingerprint, made in this process, if any."""
    return None if fingerprint is None else _WITNESSES.get(fingerprint)


def as_frame(data: pd.DataFrame | pd.Series) -> tuple[pd.DataFrame, bool]:
    """The data as a DataFrame, and whether it was a Series.

    A Series becomes one column under :data:`prompt.SERIES_FIELD` (``{}``) and, when it
    has a name, under that name too. Data with no rows is refused: there is nothing to
    send, and a job of zero rows would only clutter the ledger.
    """
    if isinstance(data, pd.Series):
        cols = {_prompt.SERIES_FIELD: data}
        if isinstance(data.name, str) and data.name:
            cols[data.name] = data
        frame, is_series = pd.DataFrame(cols, index=data.index), True
    elif isinstance(data, pd.DataFrame):
        frame, is_series = data, False
    else:
        raise InputError(
            f"data must be a pandas DataFrame or Series, got {type(data).__name__}. "
            + _HINTS.get(type(data), "Build a pandas DataFrame from it first.")
        )
    if len(frame) == 0:
        raise InputError(
            "data has no rows, so there is nothing to send; nothing was recorded. Check the "
            "filter that produced it."
        )
    return frame, is_series


_HINTS = {
    dict: "For a dict of columns pass pd.DataFrame(your_dict); for texts keyed by id, "
    "pd.Series(your_dict) (the keys become the row ids).",
    list: "Wrap a list with pd.Series(your_list) or pd.DataFrame(your_list).",
    tuple: "Wrap a tuple with pd.Series(list(your_tuple)).",
    str: "data is the table; the prompt template comes second: nb.submit(df, 'prompt {col}').",
}


def row_keys(values: pd.Index | pd.Series) -> np.ndarray:
    """A 64-bit key per row label; equal labels give equal keys, whatever their order and
    whatever other labels stand beside them (so a subset of a frame finds its rows)."""
    if isinstance(values, pd.MultiIndex):
        # Level by level, so each level can take its own path below.
        keys = np.zeros(len(values), dtype=np.uint64)
        for level in range(values.nlevels):
            with np.errstate(over="ignore"):
                keys = keys * np.uint64(0x100000001B3) ^ row_keys(values.get_level_values(level))
        return keys
    series = pd.Series(values)
    if series.dtype == object:
        # Mixed objects (a tuple beside a string, a lone surrogate) defeat pandas'
        # hashing, and how it falls back depends on the other labels. Hash a typed,
        # escaped text of each label instead: repr() escapes lone surrogates.
        texts = np.array([f"{type(v).__name__}:{v!r}" for v in series], dtype=object)
        return pd.util.hash_array(texts)
    return pd.util.hash_pandas_object(series, index=False).to_numpy()


def label_text(values: pd.Index | pd.Series) -> pa.Array:
    """A readable string per row label (tuples joined with ``-``)."""
    if isinstance(values, pd.RangeIndex):  # the common case, up to millions of rows
        return pc.cast(pa.array(np.asarray(values)), pa.string())
    if isinstance(values, pd.MultiIndex):
        return pa.array(["-".join(_readable(part) for part in tup) for tup in values], pa.string())
    return pa.array([_readable(v) for v in values], pa.string())


def _readable(value: object) -> str:
    """``str(value)``, with lone surrogates (not valid Unicode) escaped as ``\\udxxx``."""
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def make_custom_ids(
    labels: pa.Array, offset: int = 0, *, as_labels: bool | None = None
) -> pa.Array:
    """custom_ids from row labels: the labels themselves when they are already unique,
    valid ids; otherwise ``{position}-{slug of the label}`` (unique because positions are).

    ``offset`` is the position of the first label (a batch of a larger table), and
    ``as_labels`` the choice already made for the whole table, when it is known."""
    n = len(labels)
    if as_labels is None:
        valid = pc.all(pc.match_substring_regex(labels, CUSTOM_ID_PATTERN.pattern)).as_py()
        as_labels = bool(n and valid and pc.count_distinct(labels).as_py() == n)
    if as_labels:
        return labels
    ids = []
    for pos, label in enumerate(labels.to_pylist(), start=offset):
        slug = _UNSAFE.sub("_", label).strip("_")
        ids.append(f"{pos}-{slug}"[:64].rstrip("-_") if slug else str(pos))
    return pa.array(ids, pa.string())


def make_plan(
    frame: pd.DataFrame,
    template: _prompt.Template,
    *,
    id_column: str | None = None,
    missing: str = "skip",
    limit: ContextLimit | None = None,
) -> Plan:
    """Build the plan for ``frame`` (validated template, see :func:`prompt.parse`).

    ``missing="skip"`` leaves rows with a missing value in a used column unsent (status
    ``skipped``); ``missing="empty"`` sends them with empty text in its place. With a
    ``limit``, rows whose request would not fit in the model's context window are not
    sent either (status ``skipped``, the reason says by how much).
    """
    if missing not in ("skip", "empty"):
        raise InputError(f"missing must be 'skip' or 'empty', found {missing!r}.")
    source = frame.index if id_column is None else _id_values(frame, id_column)
    labels = label_text(source)
    # A RangeIndex gives unique, valid ids as it is ("0", "1", ...): skip the checks.
    custom_ids = labels if isinstance(source, pd.RangeIndex) else make_custom_ids(labels)
    keys = row_keys(source)

    rendered, columns = render_rows(frame, template, missing=missing)
    empty = blank(rendered, template)
    valid = rendered.is_valid().to_numpy(zero_copy_only=False) & ~empty
    tokens = np.zeros(len(rendered), dtype=np.int64)
    over = np.zeros(len(rendered), dtype=bool)
    if limit is not None:  # vectorised on the lengths: a million rows stay fast
        tokens = limit.tokens_of(rendered)
        over = limit.over(tokens)
        valid &= ~over
    send = np.flatnonzero(valid)
    skip = np.flatnonzero(~valid)
    return Plan(
        custom_ids=custom_ids,
        keys=keys,
        labels=labels,
        prompts=rendered.filter(pa.array(valid)) if len(skip) else rendered,
        send_positions=send,
        skip_positions=skip,
        skip_reasons=_skip_reasons(skip, over, tokens, empty, columns, limit),
        too_long=int(over.sum()),
        witness=_witness(frame, template, missing, limit),
    )


def _id_values(frame: pd.DataFrame, id_column: str) -> pd.Series:
    """The ``id_column`` of ``frame``, refused unless it is there, complete and unique."""
    if id_column not in frame.columns:
        raise InputError(
            f"id_column {id_column!r} is not a column. Columns are: {list(frame.columns)}."
        )
    ids = frame[id_column]
    if ids.isna().any():
        raise InputError(
            f"id_column {id_column!r} has missing values; every row needs an id. "
            "Fill them or leave id_column unset to use the index."
        )
    dup = ids[ids.duplicated()]
    if len(dup):
        raise InputError(
            f"id_column {id_column!r} has duplicated values (e.g. {dup.iloc[0]!r}); ids "
            "must be unique. Leave id_column unset to use the index instead."
        )
    return ids


def _skip_reasons(
    skip: np.ndarray,
    over: np.ndarray,
    tokens: np.ndarray,
    empty: np.ndarray,
    columns: dict[str, pd.Series],
    limit: ContextLimit | None,
) -> list[str]:
    """Why each row at ``skip`` is not sent: over the context window (``over``, by its
    ``tokens``), an empty prompt, or a missing value in a used column."""
    reasons = []
    for pos in skip:
        if over[pos] and limit is not None:
            reasons.append(limit.reason(int(tokens[pos])))
            continue
        if empty[pos]:
            reasons.append(
                "the prompt renders to empty text: not sent (the providers refuse empty "
                "messages); fill the column(s) or drop the row"
            )
            continue
        absent = [name for name, col in columns.items() if pd.isna(col.iloc[pos])]
        reasons.append(
            f"missing value in column(s) {absent}: not sent (submit with missing='empty' to "
            "send empty text instead)"
        )
    return reasons


def render_rows(
    frame: pd.DataFrame, template: _prompt.Template, *, missing: str = "skip"
) -> tuple[pa.Array, dict[str, pd.Series]]:
    """Every row's rendered prompt (null where a used column is missing and ``missing``
    is ``"skip"``), and the used columns. Text that cannot be sent (a lone surrogate,
    which is not valid Unicode) is refused here, naming the column and the row."""
    dup = [name for name in template.columns if list(frame.columns).count(name) > 1]
    if dup:
        raise InputError(
            f"column {dup[0]!r} appears more than once in the data, so {{{dup[0]}}} is "
            "ambiguous; rename or drop the duplicate."
        )
    columns = {name: frame[name] for name in template.columns}
    if missing == "empty":
        columns = {name: col.where(col.notna(), "") for name, col in columns.items()}
    try:
        rendered = _prompt.render(template, columns)
    except UnicodeEncodeError:
        _refuse_surrogates(columns)
        raise
    return rendered, columns


def _refuse_surrogates(columns: dict[str, pd.Series]) -> None:
    """Raise an InputError naming the first cell that holds a lone surrogate."""
    for name, col in columns.items():
        for label, value in col.items():
            try:
                str(value).encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = str(value)[exc.start : exc.end].encode("utf-8", "backslashreplace")
                shown = "{}" if name == _prompt.SERIES_FIELD else repr(name)
                raise InputError(
                    f"column {shown} at row {_readable(label)!r} holds {bad.decode()}, a lone "
                    "surrogate: not valid Unicode, so it cannot be sent (common in scraped "
                    "text). Replace such characters first, e.g. df[col] = df[col].map(lambda "
                    "s: s.encode('utf-8', 'replace').decode('utf-8') if isinstance(s, str) "
                    "else s)."
                ) from None


def blank(rendered: pa.Array, template: _prompt.Template | None = None) -> np.ndarray:
    """True where a rendered prompt is empty or only whitespace (never, without looking,
    when the ``template``'s own text has a visible character)."""
    if template is not None and "".join(template.pieces).strip():
        return np.zeros(len(rendered), dtype=bool)
    trimmed = pc.utf8_trim_whitespace(rendered)
    return pc.fill_null(pc.equal(pc.utf8_length(trimmed), 0), False).to_numpy(zero_copy_only=False)


#: How request hashes are made: polars' 64-bit string hash, vectorised on the Arrow
#: data (a hundred times faster than hashing Python strings). It is stable within a
#: polars version only, so each job records the scheme its hashes were made with; a
#: job made under another one is checked by its stored prompts instead (see merge).
HASH_SCHEME = f"polars-{pl.__version__}"


def prompt_hashes(prompts: pa.Array | pa.ChunkedArray, salt: str) -> np.ndarray:
    """A 64-bit hash of each prompt under ``salt`` (what a request shares with others)."""
    seed = int.from_bytes(hashlib.blake2b(salt.encode(), digest_size=8).digest(), "little")
    return pl.Series(prompts).hash(seed=seed).to_numpy()


def chunk_bounds(
    line_ends: np.ndarray, *, max_count: int, max_bytes: int
) -> Iterator[tuple[int, int]]:
    """Split encoded lines into runs of at most ``max_count`` lines and ``max_bytes`` bytes.

    ``line_ends[i]`` is the byte offset just after line ``i`` (its ``\\n``). Yields
    ``(first, stop)`` line ranges. A single line larger than ``max_bytes`` is an error.
    """
    n = len(line_ends)
    first = 0
    start_byte = 0
    while first < n:
        limit = min(n, first + max_count)
        # the last line whose end fits within start_byte + max_bytes
        stop = int(np.searchsorted(line_ends[first:limit], start_byte + max_bytes, side="right"))
        stop += first
        if stop == first:
            size = int(line_ends[first] - start_byte)
            raise InputError(
                f"One request is {size:,} bytes, over the provider's batch limit of "
                f"{max_bytes:,} bytes. Shorten that row's text."
            )
        yield first, stop
        start_byte = int(line_ends[stop - 1])
        first = stop


def spec_hash(spec: dict[str, Any], provider: str, base_url: str) -> str:
    """A 16-character key for everything a request shares (provider, address, model,
    parameters): two rows' requests are identical when this and their prompts are."""
    blob = orjson.dumps([provider, base_url, spec], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def prompt_version(template: str, spec: dict[str, Any]) -> str:
    """A 12-character hash of a prompt's version: the template, the system prompt and
    the response_format (not the model or the sampling parameters, which lineage names
    on their own). Two jobs asked the same question when these are equal."""
    blob = orjson.dumps(
        [template, spec.get("system"), spec.get("response_format")], option=orjson.OPT_SORT_KEYS
    )
    return hashlib.blake2b(blob, digest_size=6).hexdigest()


def request_hashes(plan: Plan, salt: str) -> np.ndarray:
    """A 64-bit hash of each row's exact request (0 for rows not sent)."""
    out = np.zeros(plan.n_rows, dtype=np.uint64)
    if len(plan.send_positions):
        out[plan.send_positions] = prompt_hashes(plan.prompts, salt)
    return out


def fingerprint(
    plan: Plan,
    hashes: np.ndarray,
    salt: str,
    output: str,
    template: str,
    id_column: str | None,
) -> str:
    """Identifies a submit call: same data, template, request and output give the same
    fingerprint, so running the same cell twice finds the first job."""
    h = hashlib.sha256()
    h.update(orjson.dumps([salt, output, template, id_column, plan.n_rows]))
    h.update(plan.keys.tobytes())
    h.update(hashes.tobytes())
    h.update("\x00".join(plan.custom_ids.to_pylist()).encode())
    key = h.hexdigest()
    if plan.witness is not None:
        # Kept by the fingerprint, which the job records: its request hashes are those
        # of this very rendering. Witnesses of data no longer alive are let go.
        for old in [k for k, w in _WITNESSES.items() if not w.alive]:
            del _WITNESSES[old]
        _WITNESSES[key] = plan.witness
    return key
