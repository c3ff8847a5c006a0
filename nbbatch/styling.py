"""Highlighting rows that did not succeed, for notebooks.

:func:`highlight` turns a merged DataFrame (``job.merge()``), ``job.failed()`` or
``job.results()`` into a pandas ``Styler`` whose failed, expired and cancelled rows are
tinted and whose error messages stand out::

    import nbbatch as nb
    nb.highlight(job.merge())     # or job.failed(), job.results()

A large frame is shown as its rows that did not succeed plus a sample of the others
(``max_rows``), so 100,000 rows do not become megabytes of HTML in the notebook.

The tints are semi-transparent over the theme's own page colour (so a table's zebra
stripes never mix with them) and read in JupyterLab's light *and* dark themes; text,
error messages included, keeps the theme's text colour, which meets WCAG AA (4.5:1) on
every tint in both (:func:`contrast` checks it). Cell values are HTML-escaped: model
output is data, never markup.

``Styler`` needs ``jinja2``. Where it is missing, :func:`to_html` still renders the same
highlighting with inline styles, so the notebook panel never depends on it.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import states
from .columns import Role, name_of, output_of

if TYPE_CHECKING:
    from pandas.io.formats.style import Styler
    from pandas.io.formats.style_render import CSSDict

#: Row tint per status. Semi-transparent so light and dark themes both show it.
ROW_COLOURS: dict[str, str] = {
    states.FAILED: "rgba(229, 57, 53, 0.22)",
    states.EXPIRED: "rgba(255, 160, 0, 0.25)",
    states.CANCELLED: "rgba(128, 128, 128, 0.25)",
    states.PENDING: "rgba(33, 150, 243, 0.12)",
}
#: Colour of status words and error messages: the theme's text colour (bold), not its red,
#: which reads below 4.5:1 on a red tint; the tint and the weight make them stand out.
ERROR_TEXT = "var(--jp-content-font-color1, inherit)"
#: The page colour under a tint: opaque, so a table's zebra stripes do not show through.
PAGE = "var(--jp-layout-color0, Canvas)"
#: What those variables are in JupyterLab's two themes: (page, text) as CSS colours.
THEMES: dict[str, tuple[str, str]] = {
    "light": ("#ffffff", "rgba(0, 0, 0, 0.87)"),
    "dark": ("#111111", "#ffffff"),
}
#: A frame longer than this is shown as its rows that did not succeed plus a sample.
MAX_ROWS = 60
#: Rows that succeeded shown with the failures of a long frame.
SAMPLE_ROWS = 10
#: Rows that did not succeed shown at most (``job.failed()`` has them all).
MAX_FAILED_ROWS = 1000


def status_column(frame: pd.DataFrame, output: str | None = None) -> str:
    """The column holding each row's status: ``{output}_status`` for a merged frame,
    ``status`` for ``job.results()``; with ``output=None`` the first one found."""
    status = Role.STATUS
    candidates = [name_of(status, output)] if output else []
    candidates += [c for c in frame.columns if isinstance(c, str) and output_of(c) is not None]
    candidates.append(name_of(status, None))
    for name in candidates:
        if name in frame.columns:
            return name
    raise KeyError(
        f"no status column in the DataFrame (looked for {candidates[0]!r} and 'status'); "
        "pass a frame from job.merge(), job.failed() or job.results()."
    )


def error_column(frame: pd.DataFrame, status: str) -> str | None:
    """The error column that goes with ``status`` (``x_status`` -> ``x_error``)."""
    name = name_of(Role.ERROR, output_of(status))
    return name if name in frame.columns else None


def row_styles(statuses: pd.Series) -> np.ndarray:
    """One CSS declaration string per row (empty for rows that need no tint)."""
    values = statuses.astype(object).to_numpy()
    out = np.full(len(values), "", dtype=object)
    for state, colour in ROW_COLOURS.items():
        out[values == state] = tint(colour)
    return out


def tint(colour: str) -> str:
    """CSS for a cell tinted with ``colour`` over the opaque page colour."""
    return f"background: linear-gradient({colour}, {colour}), {PAGE};"


def _rgba(colour: str) -> tuple[float, float, float, float]:
    colour = colour.strip()
    if colour.startswith("#"):
        h = colour[1:]
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), 1.0
    parts = [float(p) for p in colour[colour.index("(") + 1 : colour.rindex(")")].split(",")]
    return parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else 1.0


def _over(top: str | tuple[float, ...], under: tuple[float, ...]) -> tuple[float, ...]:
    r, g, b, a = _rgba(top) if isinstance(top, str) else top
    return tuple(a * c + (1 - a) * u for c, u in zip((r, g, b), under[:3], strict=True)) + (1.0,)


def _luminance(rgb: tuple[float, ...]) -> float:
    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(rgb[0]) + 0.7152 * channel(rgb[1]) + 0.0722 * channel(rgb[2])


def contrast(text: str, background: str, *under: str) -> float:
    """WCAG contrast ratio of ``text`` on ``background``, semi-transparent colours laid
    over ``under`` (top first, the last one opaque), e.g. ``contrast(text, tint, page)``."""
    base: tuple[float, ...] = _rgba(under[-1] if under else background)
    for layer in (*reversed(under[:-1]), background) if under else ():
        base = _over(layer, base)
    lighter, darker = sorted((_luminance(_over(text, base)), _luminance(base)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def _error_cells(frame: pd.DataFrame, status: str) -> tuple[np.ndarray, list[int]]:
    """Positions of the rows that did not succeed, and of their status and error columns."""
    bad = np.flatnonzero(frame[status].isin(states.NOT_SUCCEEDED).to_numpy())
    cols = []
    for name in (status, error_column(frame, status)):
        j = frame.columns.get_loc(name) if name is not None else None
        if isinstance(j, int):
            cols.append(j)
    return bad, cols


def shown_rows(frame: pd.DataFrame, status: str, max_rows: int | None = MAX_ROWS) -> np.ndarray:
    """Positions of the rows to show: all of them up to ``max_rows``, else the rows that did
    not succeed (up to :data:`MAX_FAILED_ROWS`) and the first :data:`SAMPLE_ROWS` others."""
    if max_rows is None or len(frame) <= max_rows:
        return np.arange(len(frame))
    bad = frame[status].isin(states.NOT_SUCCEEDED).to_numpy()
    return np.union1d(np.flatnonzero(bad)[:MAX_FAILED_ROWS], np.flatnonzero(~bad)[:SAMPLE_ROWS])


ERROR_CELL = f"color: {ERROR_TEXT}; font-weight: 600;"
#: Every cell: text reads from the left and from the top (notebooks right-align tables,
#: which suits numbers, not sentences), and long texts wrap instead of stretching.
CELL = "text-align: left; vertical-align: top; max-width: 32em;"
#: The widest a cell gets by default (the notebook panel asks for narrower ones).
CELL_WIDTH = "32em"


def highlight(
    frame: pd.DataFrame,
    output: str | None = None,
    *,
    max_rows: int | None = MAX_ROWS,
    cell_width: str = CELL_WIDTH,
) -> Styler:
    """A ``Styler`` of ``frame`` with rows that did not succeed highlighted.

    ``frame`` is ``job.merge()``, ``job.failed()`` or ``job.results()``; ``output`` is the
    job's output name (``job.output``), found from the columns when omitted. Failed rows
    are tinted red, expired amber, cancelled grey, pending blue; their status and error
    cells are bold. A frame longer than ``max_rows`` shows every row that did not succeed
    (up to :data:`MAX_FAILED_ROWS`) and the first :data:`SAMPLE_ROWS` others, in their
    order, with a caption saying so (``max_rows=None`` shows all). Values, index and
    column labels are HTML-escaped. Works with a non-unique index. ``cell_width`` is the
    widest a cell gets before its text wraps.
    """
    status = status_column(frame, output)
    whole = len(frame)
    take = shown_rows(frame, status, max_rows)
    if len(take) < whole:
        frame = frame.iloc[take]
    tints = row_styles(frame[status])
    bad, cols = _error_cells(frame, status)
    # Rules by row/column *position* (Styler's rowI/colJ classes, scoped to this table's
    # id), because Styler.apply refuses frames whose index labels repeat.
    cell = CELL.replace(CELL_WIDTH, cell_width)
    rules: list[CSSDict] = [{"selector": sel, "props": cell} for sel in ("td", "th")]
    rules += [{"selector": f".row{i}", "props": tints[i]} for i in np.flatnonzero(tints != "")]
    rules += [{"selector": f"td.row{i}.col{j}", "props": ERROR_CELL} for i in bad for j in cols]
    styler = frame.style  # raises ImportError without jinja2
    styler = styler.set_table_styles(rules, overwrite=False)
    if len(frame) < whole:
        n_bad = len(bad)
        styler = styler.set_caption(
            f"{len(frame):,} of {whole:,} rows: the {n_bad:,} that did not succeed"
            f"{'' if n_bad == len(frame) else ' and a sample of the others'} "
            "(highlight(df, max_rows=None) shows every row)"
        )
    styler = styler.format(escape="html", na_rep="")
    styler = styler.format_index(escape="html", axis=0).format_index(escape="html", axis=1)
    return styler


def to_html(frame: pd.DataFrame, output: str | None = None, cell_width: str = CELL_WIDTH) -> str:
    """``frame`` (every row of it) as an HTML table with :func:`highlight`'s colours.

    Uses the ``Styler`` when ``jinja2`` is installed, else an equivalent table with inline
    styles (so the notebook panel works in a kernel without ``jinja2``).
    """
    try:
        return highlight(frame, output, max_rows=None, cell_width=cell_width).to_html()
    except ImportError:
        pass
    status = status_column(frame, output)
    tints = row_styles(frame[status])
    bad, cols = _error_cells(frame, status)
    is_bad = np.zeros(len(frame), dtype=bool)
    is_bad[bad] = True
    cell = CELL.replace(CELL_WIDTH, cell_width)
    head = "".join(f"<th>{_esc(c)}</th>" for c in frame.columns)
    body = []
    for i, (label, row) in enumerate(zip(frame.index, frame.itertuples(index=False), strict=True)):
        error = [ERROR_CELL if is_bad[i] and j in cols else "" for j in range(len(row))]
        tds = "".join(
            f'<td style="{cell} {tints[i]} {error[j]}">{_esc(v)}</td>' for j, v in enumerate(row)
        )
        body.append(f'<tr><th style="{cell} {tints[i]}">{_esc(label)}</th>{tds}</tr>')
    return f"<table><thead><tr><th></th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _esc(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return html.escape(str(value))
