"""Prompt templates: parse and validate a template, render it for every row at once.

A template is plain text with ``{column}`` placeholders. Only bare names are allowed:
attribute access, indexing, conversions (``!r``) and format specs (``:>10``) are
rejected, because a template must never be able to reach into Python objects. Literal
braces are written ``{{`` and ``}}`` (prompts often contain JSON examples). Text inside
the data is never interpreted: rendering concatenates strings column-wise with pyarrow.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ._errors import TemplateError

#: The placeholder name of a Series' values when written as ``{}``.
SERIES_FIELD = ""


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text and column names, alternating.

    ``pieces[0]`` is literal text, then ``fields[i]`` is followed by ``pieces[i + 1]``.
    """

    text: str
    pieces: tuple[str, ...]
    fields: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        """The distinct column names the template uses, in order of first use."""
        return tuple(dict.fromkeys(self.fields))


def parse(text: str, columns: Iterable[Any] = ()) -> Template:
    """Parse ``text`` into a :class:`Template`, rejecting anything but ``{name}``.

    A name in ``columns`` (the data's) is a placeholder even when it holds a space or a
    quote (``{product name}``); other such braces are taken for literal text."""
    if not isinstance(text, str):
        raise TemplateError(f"The prompt must be a string, got {type(text).__name__}.")
    pieces: list[str] = [""]
    fields: list[str] = []
    known = {c for c in columns if isinstance(c, str)}
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:  # unbalanced braces
        raise TemplateError(
            f"The prompt template is malformed ({exc}). Placeholders look like {{column}}; "
            "write a literal brace as {{ or }} (for example in a JSON example)."
        ) from None
    for literal, field, spec, conversion in parsed:
        pieces[-1] += literal
        if field is None:
            continue
        shown = (
            "{"
            + field
            + (f"!{conversion}" if conversion else "")
            + (f":{spec}" if spec else "")
            + "}"
        )
        if field in known and not spec and not conversion:
            fields.append(field)  # a real column, whatever its name holds
            pieces.append("")
            continue
        _check_placeholder(shown, field, spec, conversion)
        fields.append(field)
        pieces.append("")
    return Template(text=text, pieces=tuple(pieces), fields=tuple(fields))


def _check_placeholder(written: str, field: str, spec: str | None, conversion: str | None) -> None:
    """Refuse a placeholder that is not a plain ``{column}`` (``written`` as the prompt has it),
    saying what it looks like and what to write instead."""
    if any(ch in field for ch in "\"' \n\t") or (spec or "").startswith(" "):
        raise TemplateError(
            f"{written} looks like literal text in braces (a JSON example?), not a "
            "placeholder. Write literal braces doubled: {{ and }}."
        )
    if conversion:
        raise TemplateError(
            f"Placeholder {written} uses a conversion (!{conversion}); only plain "
            f"{{column}} placeholders are allowed. Write {{{field}}} instead."
        )
    if spec:
        raise TemplateError(
            f"Placeholder {written} has a format spec (:{spec}); only plain {{column}} "
            "placeholders are allowed. Format the column in pandas before submitting."
        )
    if "." in field or "[" in field:
        raise TemplateError(
            f"Placeholder {written} uses attribute or index access, which templates do "
            "not allow. Put the value in a column of its own and name that column. "
            "If you meant literal braces, write {{ and }}."
        )
    if field.isdigit():
        raise TemplateError(
            f"Placeholder {written} is positional; name a column instead (or use {{}} "
            "with a Series)."
        )


def shown(text: str, limit: int = 60) -> str:
    """A prompt for a message: quoted, and cut to ``limit`` characters."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def check_columns(template: Template, available: Sequence[str], *, series: bool = False) -> None:
    """Raise :class:`TemplateError` unless every placeholder names an available column."""
    missing = [f for f in template.columns if f not in available]
    if not missing:
        return
    shown = ", ".join("{}" if f == SERIES_FIELD else f"{{{f}}}" for f in missing)
    names = [c for c in available if c != SERIES_FIELD]
    if series:
        hint = "With a Series, write {} for its values" + (
            f" (or {{{names[0]}}}, its name)." if names else "."
        )
    else:
        hint = f"Columns are: {names}."
    raise TemplateError(f"The prompt template names {shown}, which is not a column. {hint}")


def _as_text(values: pd.Series) -> pa.Array:
    """One column as an Arrow string array, missing values (None, NaN, NaT, NA) as null."""
    missing = values.isna().to_numpy()
    if pd.api.types.is_string_dtype(values.dtype) and not pd.api.types.is_object_dtype(
        values.dtype
    ):
        arr = pa.array(values, type=pa.large_string(), from_pandas=True)
    else:
        # Objects or numbers: str() of each present value; mixed objects stay honest.
        text = (
            values.astype(object).map(_to_str, na_action="ignore").to_numpy(dtype=object, copy=True)
        )
        text[missing] = None
        arr = pa.array(text, type=pa.large_string(), from_pandas=True)
    return arr


def _to_str(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def render(template: Template, columns: dict[str, pd.Series]) -> pa.Array:
    """Render the template for every row; a row with a missing value in a used column is null.

    ``columns`` maps each placeholder name to its values (all the same length).
    Vectorised: one Arrow ``binary_join_element_wise`` over literals and columns.
    """
    arrays = {name: _as_text(columns[name]) for name in template.columns}
    n = len(next(iter(columns.values()))) if columns else 0
    if not template.fields:
        return pa.array(np.full(n, template.pieces[0], dtype=object), type=pa.large_string())
    parts: list[pa.Array | pa.Scalar] = []
    for i, field in enumerate(template.fields):
        if template.pieces[i]:
            parts.append(pa.scalar(template.pieces[i], type=pa.large_string()))
        parts.append(arrays[field])
    if template.pieces[-1]:
        parts.append(pa.scalar(template.pieces[-1], type=pa.large_string()))
    if len(parts) == 1:
        return parts[0]
    joined = pc.binary_join_element_wise(*parts, pa.scalar("", type=pa.large_string()))
    return joined  # nulls propagate: a missing value makes the whole row null
