"""How a :class:`~nbbatch.piloting.Pilot` looks: text, static HTML and a notebook widget.

It only renders what the pilot computed. The widget holds the settings table (each
setting's agreement with its 95% interval, kappa, the sample's cost and the projected
cost of the whole table, the recommended setting marked), an agreement-versus-cost chart
and the confusion matrix as a heatmap (matplotlib, drawn off screen to PNG), with a
slider for the target and a choice of the setting whose confusion matrix is shown. The
static HTML (the same table and pictures) and the text are what a saved notebook, or a
viewer without widgets, shows.
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._agreement import optional
from .pricing import money

if TYPE_CHECKING:
    from .piloting import Pilot

MARK = "\u2605"  # the recommended setting


def _compared_with(p: Pilot) -> str:
    if p.truth:
        return "human labels (" + ", ".join(f"{f} = {c}" for f, c in p.truth.items()) + ")"
    assert p.reference is not None
    return p.reference.name


def _headline(p: Pilot) -> str:
    shown = (
        f"recommended for agreement >= {p.target:g}: {p.recommended.name}"
        if p.recommended is not None
        else f"no setting's agreement clears {p.target:g} at its 95% lower bound"
    )
    kind = "real time" if p.realtime else "batch"
    if p.inconclusive:  # a cheaper setting the sample cannot decide on
        names = ", ".join(x.name for x in p.inconclusive)
        shown += f"; inconclusive: {names} (its interval holds the target; pilot.extend())"
    return (
        f"Pilot on {len(p.sample)} of {len(p.data)} rows ({kind}), compared with "
        f"{_compared_with(p)}; {shown}"
    )


def display_table(p: Pilot) -> pd.DataFrame:
    """The settings table as shown: intervals and money as text."""
    t = p.table

    def interval(value: float, low: float, high: float) -> str:
        if np.isnan(value):
            return ""
        return f"{value:.3f} [{low:.3f}, {high:.3f}]" if not np.isnan(low) else f"{value:.3f}"

    def dollars(value: Any) -> str:
        return "unknown" if value is None or pd.isna(value) else money(float(value))

    rows = []
    for name, r in t.iterrows():
        mark = MARK if p.recommended is not None and name == p.recommended.name else ""
        rows.append(
            {
                "": mark + (" reference" if r["reference"] else ""),
                "setting": name,
                "agreement [95%]": interval(r["agreement"], r["agreement_low"], r["agreement_high"])
                # A later look of an extended pilot decides on a wider interval.
                + ("" if r["level"] == 0.95 else f" at {r['level']:.1%}"),
                "kappa [95%]": interval(r["kappa"], r["kappa_low"], r["kappa_high"]),
                "rows": int(r["rows"]),
                "failed": int(r["failed"]),
                "sample cost": dollars(r["sample_cost"]),
                "projected cost": dollars(r["projected_cost"]),
                "requests": int(r["requests"]),
                "batches": "" if pd.isna(r["batches"]) else int(r["batches"]),
                "sample time": f"{r['sample_seconds']:.0f} s",
                "waves": int(r["waves"]),
                "projected time": f"{r['projected_seconds']:.0f} s",
            }
        )
    return pd.DataFrame(rows)


def plain_text(p: Pilot) -> str:
    """The pilot as text: headline, settings table, the confusion matrix shown."""
    lines = [_headline(p), "", display_table(p).to_string(index=False)]
    confusion = p.confusion()
    if confusion is not None:
        lines += ["", f"Confusion matrix of {p.shown_setting().name} (rows: reference):"]
        lines.append(confusion.to_string())
    return "\n".join(lines)


# ------------------------------------------------------------------ pictures


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return buffer.getvalue()


def _figure(width: float, height: float) -> tuple[Any, Any]:
    optional("matplotlib")
    from matplotlib.figure import Figure  # no pyplot state: safe off the main thread

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot()


def chart_png(p: Pilot) -> bytes:
    """Agreement (with its 95% interval) against projected cost, one point per setting;
    the target as a line, the recommended setting as a star."""
    fig, ax = _figure(5.2, 3.2)
    t = p.table
    cost = t["projected_cost"].astype(float)
    x = cost.where(cost.notna(), 0.0)
    y = t["agreement"].astype(float)
    below = (y - t["agreement_low"]).clip(lower=0).fillna(0)
    above = (t["agreement_high"] - y).clip(lower=0).fillna(0)
    ax.errorbar(x, y, yerr=[below, above], fmt="o", color="#4878a8", capsize=3)
    for name, xv, yv in zip(t.index, x, y, strict=True):
        ax.annotate(str(name), (xv, yv), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.axhline(p.target, color="#b8860b", linestyle="--", linewidth=1)
    if p.recommended is not None:
        r = p.recommended.name
        ax.plot([x[r]], [y[r]], marker="*", markersize=16, color="#d62728", linestyle="none")
    ax.set_xlabel("projected cost of the whole table ($)")
    ax.set_ylabel("agreement with the reference")
    ax.set_title("Agreement vs cost", fontsize=9)
    return _png(fig)


def confusion_png(p: Pilot, setting: Any = None) -> bytes | None:
    """The confusion matrix of ``setting`` (default: the one shown) as a heatmap."""
    matrix = p.confusion(setting)
    if matrix is None or matrix.empty:
        return None
    name = setting if isinstance(setting, str) else p.shown_setting().name
    fig, ax = _figure(3.4, 3.0)
    values = matrix.to_numpy()
    image = ax.imshow(values, cmap="Blues")
    ax.set_xticks(range(len(matrix.columns)), [str(c) for c in matrix.columns], rotation=45)
    ax.set_yticks(range(len(matrix.index)), [str(i) for i in matrix.index])
    for (i, j), v in np.ndenumerate(values):
        dark = v > values.max() / 2
        ax.text(j, i, str(v), ha="center", va="center", color="white" if dark else "black")
    ax.set_xlabel(str(name), fontsize=8)
    ax.set_ylabel("reference", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046)
    return _png(fig)


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"/>'


def static_html(p: Pilot) -> str:
    """The headline, the settings table, the chart and the confusion matrix as HTML."""
    table = display_table(p).to_html(index=False, escape=True, classes="nbbatch-pilot")
    shown = p.shown_setting().name
    return (
        f"<div class='nbbatch-pilot'><p><b>{html.escape(_headline(p))}</b></p>{table}"
        f"<div style='display:flex;gap:12px;flex-wrap:wrap'>"
        f"{_img(chart_png(p), 'agreement against projected cost')}"
        f"{_img(confusion_png(p), f'confusion matrix of {shown}')}</div></div>"
    )


# ------------------------------------------------------------------ the widget


def widget(p: Pilot) -> Any:
    """An ipywidgets view: the target slider and the setting chooser redraw the table,
    the mark and the pictures."""
    import ipywidgets as w

    head = w.HTML()
    table = w.HTML()
    chart = w.Image(format="png")
    heat = w.Image(format="png")
    target = w.FloatSlider(
        value=p.target, min=0.5, max=1.0, step=0.01, description="target", readout_format=".2f"
    )
    others = [s.name for s in p.settings if s != p.reference] or [p.settings[0].name]
    chooser = w.Dropdown(options=others, value=p.shown_setting().name, description="confusion")

    def redraw(*_: Any) -> None:
        p.recommend(target.value)
        head.value = f"<b>{html.escape(_headline(p))}</b>"
        table.value = display_table(p).to_html(index=False, classes="nbbatch-pilot")
        chart.value = chart_png(p)
        heat.value = confusion_png(p, chooser.value) or b""

    target.observe(redraw, names="value")
    chooser.observe(redraw, names="value")
    redraw()
    return w.VBox([head, table, w.HBox([target, chooser]), w.HBox([chart, heat])])


def mimebundle(p: Pilot) -> dict[str, Any]:
    """The widget, and for viewers without widgets the static HTML and the text."""
    try:
        bundle = dict(widget(p)._repr_mimebundle_() or {})
    except ImportError:  # no ipywidgets: the static views only
        bundle = {}
    bundle["text/plain"] = plain_text(p)
    bundle["text/html"] = static_html(p)
    return bundle
