"""Highlighting rows that did not succeed, for notebooks.

:func:`highlight` turns a merged DataFrame (``job.merge()``), ``job.failed()`` or
``job.results()`` into a pandas ``Styler`` whose failed, expired and cancelled rows are
tinted and whose error messages stand out::

    from nbbatch.styling import highlight
    highlight(job.failed(), job.output)

The tints are semi-transparent, so they sit on top of whatever background the theme
has and read well in JupyterLab's light *and* dark themes; text keeps the theme's own
colour. Cell values are HTML-escaped: model output is data, never markup.

``Styler`` needs ``jinja2``. Where it is missing, :func:`to_html` still renders the same
highlighting with inline styles, so the notebook panel never depends on it.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from pandas.io.formats.style import Styler
    from pandas.io.formats.style_render import CSSDict

#: Row tint per status. Semi-transparent so light and dark themes both show it.
ROW_COLOURS: dict[str, str] = {
    "failed": "rgba(229, 57, 53, 0.22)",
    "expired": "rgba(255, 160, 0, 0.25)",
    "cancelled": "rgba(128, 128, 128, 0.25)",
    "pending": "rgba(33, 150, 243, 0.12)",
}
#: Colour of status words and error messages: the theme's error colour, with a fallback
#: that is readable on white and on near-black, for renderers without JupyterLab's CSS.
ERROR_TEXT = "var(--jp-error-color1, #e53935)"
#: Statuses that count as "did not succeed".
NOT_SUCCEEDED = ("failed", "expired", "cancelled")


def status_column(frame: pd.DataFrame, output: str | None = None) -> str:
    """The column holding each row's status: ``{output}_status`` for a merged frame,
    ``status`` for ``job.results()``; with ``output=None`` the first one found."""
    candidates = [f"{output}_status"] if output else []
    candidates += [c for c in frame.columns if isinstance(c, str) and c.endswith("_status")]
    candidates.append("status")
    for name in candidates:
        if name in frame.columns:
            return name
    raise KeyError(
        f"no status column in the DataFrame (looked for {candidates[0]!r} and 'status'); "
        "pass a frame from job.merge(), job.failed() or job.results()."
    )


def error_column(frame: pd.DataFrame, status: str) -> str | None:
    """The error column that goes with ``status`` (``x_status`` -> ``x_error``)."""
    name = status[: -len("status")] + "error"
    return name if name in frame.columns else None


def row_styles(statuses: pd.Series) -> np.ndarray:
    """One CSS declaration string per row (empty for rows that need no tint)."""
    values = statuses.astype(object).to_numpy()
    out = np.full(len(values), "", dtype=object)
    for state, colour in ROW_COLOURS.items():
        out[values == state] = f"background-color: {colour};"
    return out


def _error_cells(frame: pd.DataFrame, status: str) -> tuple[np.ndarray, list[int]]:
    """Positions of the rows that did not succeed, and of their status and error columns."""
    bad = np.flatnonzero(frame[status].isin(NOT_SUCCEEDED).to_numpy())
    cols = []
    for name in (status, error_column(frame, status)):
        j = frame.columns.get_loc(name) if name is not None else None
        if isinstance(j, int):
            cols.append(j)
    return bad, cols


ERROR_CELL = f"color: {ERROR_TEXT}; font-weight: 600;"
#: Every cell: text reads from the left and from the top (notebooks right-align tables,
#: which suits numbers, not sentences), and long texts wrap instead of stretching.
CELL = "text-align: left; vertical-align: top; max-width: 32em;"


def highlight(frame: pd.DataFrame, output: str | None = None) -> Styler:
    """A ``Styler`` of ``frame`` with rows that did not succeed highlighted.

    ``frame`` is ``job.merge()``, ``job.failed()`` or ``job.results()``; ``output`` is the
    job's output name (``job.output``), found from the columns when omitted. Failed rows
    are tinted red, expired amber, cancelled grey, pending blue; their status and error
    cells use the theme's error colour. Values, index and column labels are HTML-escaped.
    Works with a non-unique index.
    """
    status = status_column(frame, output)
    tints = row_styles(frame[status])
    bad, cols = _error_cells(frame, status)
    # Rules by row/column *position* (Styler's rowI/colJ classes, scoped to this table's
    # id), because Styler.apply refuses frames whose index labels repeat.
    rules: list[CSSDict] = [{"selector": sel, "props": CELL} for sel in ("td", "th")]
    rules += [{"selector": f".row{i}", "props": tints[i]} for i in np.flatnonzero(tints != "")]
    rules += [{"selector": f"td.row{i}.col{j}", "props": ERROR_CELL} for i in bad for j in cols]
    styler = frame.style  # raises ImportError without jinja2
    styler = styler.set_table_styles(rules, overwrite=False)
    styler = styler.format(escape="html", na_rep="")
    styler = styler.format_index(escape="html", axis=0).format_index(escape="html", axis=1)
    return styler


def to_html(frame: pd.DataFrame, output: str | None = None) -> str:
    """``frame`` as an HTML table with :func:`highlight`'s colours.

    Uses the ``Styler`` when ``jinja2`` is installed, else an equivalent table with inline
    styles (so the notebook panel works in a kernel without ``jinja2``).
    """
    try:
        return highlight(frame, output).to_html()
    except ImportError:
        pass
    status = status_column(frame, output)
    tints = row_styles(frame[status])
    bad, cols = _error_cells(frame, status)
    is_bad = np.zeros(len(frame), dtype=bool)
    is_bad[bad] = True
    head = "".join(f"<th>{_esc(c)}</th>" for c in frame.columns)
    body = []
    for i, (label, row) in enumerate(zip(frame.index, frame.itertuples(index=False), strict=True)):
        error = [ERROR_CELL if is_bad[i] and j in cols else "" for j in range(len(row))]
        tds = "".join(
            f'<td style="{CELL} {tints[i]} {error[j]}">{_esc(v)}</td>' for j, v in enumerate(row)
        )
        body.append(f'<tr><th style="{CELL} {tints[i]}">{_esc(label)}</th>{tds}</tr>')
    return f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _esc(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return html.escape(str(value))
