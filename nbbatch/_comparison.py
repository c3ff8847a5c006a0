"""Two jobs over the same rows, side by side: what changed, how much, and why.

``job.compare(other)`` (or ``nb.compare(a, b)``) takes a job ``a`` (before) and a job
``b`` (after): a re-run, a new prompt version, another model. Rows are matched by the
row identity the ledger keeps for each job (the key of its ``id_column`` or index
label), never by position alone when labels tell rows apart; jobs over different rows
are refused, naming how many rows differ. Only rows with unique labels can be matched
in another order: two jobs over frames with repeated labels compare only when their
rows come in the very same order.

What a :class:`Comparison` holds:

- ``changed``: the rows whose answer differs (a field's value, or whether it succeeded),
  one column per field before and after, indexed by the row's label;
- per output field: churn (the share of rows answered in both whose value changed) and
  the shift of its distribution: counts per label, or mean and quartiles for numbers,
  with a test statistic (chi-square of homogeneity for labels, two-sample
  Kolmogorov-Smirnov for numbers; its p-value when scipy is installed, which nbbatch
  does not require), or exact and normalised match for free text;
- each job's cost and time (from submit to its last row), and its lineage (models,
  prompt version hashes, see :func:`nbbatch._plan.prompt_version`), so the comparison
  says what changed besides the answers.

Its ``text/plain`` repr is a compact table; its HTML adds a small churn chart when
matplotlib is installed (imported only then).
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pandas as pd

from . import _rowstore as rowstore
from . import columns
from ._errors import InputError
from .providers.base import is_embeddings

if TYPE_CHECKING:
    from ._context import JobContext
    from .pricing import Cost

#: A string field with at most this many distinct values (in both jobs), and no more
#: than half as many as values, is a label; other strings are free text.
MAX_LABELS = 50
#: Label values shown per field in the text repr.
SHOWN_LABELS = 4


@dataclass(frozen=True)
class FieldShift:
    """How one output field changed between the two jobs."""

    name: str
    kind: str  # "label" | "number" | "text"
    compared: int  # rows answered in both
    changed: int  # of those, rows whose value differs
    before: dict[str, Any]  # label counts, or mean/quartiles, or {} for text
    after: dict[str, Any]
    statistic: str | None = None  # "chi2" | "ks" | "normalised match"
    value: float | None = None
    p_value: float | None = None  # only with scipy installed

    @property
    def churn(self) -> float:
        """The share of rows answered in both whose value changed (0 with none)."""
        return self.changed / self.compared if self.compared else 0.0


@dataclass(frozen=True)
class Side:
    """One job's part of a comparison: who it is and what it cost."""

    job_id: str
    models: tuple[str, ...]
    prompt_hashes: tuple[str, ...]
    counts: dict[str, int]
    cost: Cost | None
    seconds: float | None  # from submit to its end; None while it runs


@dataclass(frozen=True)
class Comparison:
    """Job ``before`` against job ``after`` over the same rows; see the module docstring."""

    before: Side
    after: Side
    rows: int
    matched_by: str
    fields: tuple[FieldShift, ...]
    changed: pd.DataFrame = field(repr=False)

    @property
    def churn(self) -> pd.Series:
        """Per field, the share of rows answered in both whose value changed."""
        return pd.Series({f.name: f.churn for f in self.fields}, name="churn", dtype=float)

    def summary(self) -> pd.DataFrame:
        """One row per field: kind, rows compared, changed, churn, the distributions
        before and after (in a few words) and the test statistic."""
        return pd.DataFrame(
            [
                {
                    "field": f.name,
                    "kind": f.kind,
                    "compared": f.compared,
                    "changed": f.changed,
                    "churn": f.churn,
                    "before": _distribution(f, f.before),
                    "after": _distribution(f, f.after),
                    "test": _test(f),
                }
                for f in self.fields
            ]
        ).set_index("field")

    def lineage_changes(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        """What differs in the jobs' lineage: ``{"model": (before, after), ...}``."""
        out = {}
        if self.before.models != self.after.models:
            out["model"] = (self.before.models, self.after.models)
        if self.before.prompt_hashes != self.after.prompt_hashes:
            out["prompt_hash"] = (self.before.prompt_hashes, self.after.prompt_hashes)
        return out

    # -- display -------------------------------------------------------------------------
    def lines(self) -> list[str]:
        """The text repr, line by line."""
        b, a = self.before, self.after
        n_changed = len(self.changed)
        share = n_changed / self.rows if self.rows else 0.0
        out = [
            f"Comparison of {b.job_id} (before) and {a.job_id} (after): {self.rows:,} rows "
            f"matched by {self.matched_by}",
            f"  lineage: {_lineage_text(self)}",
            f"  changed rows: {n_changed:,} ({share:.1%}); see .changed",
        ]
        if self.fields:
            width = max(5, *(len(f.name) for f in self.fields))
            out.append(f"  {'field':<{width}}  {'kind':<6}  {'churn':>6}  before -> after")
            for f in self.fields:
                test = _test(f)
                out.append(
                    f"  {f.name:<{width}}  {f.kind:<6}  {f.churn:>6.1%}  "
                    f"{_distribution(f, f.before)} -> {_distribution(f, f.after)}"
                    + (f"  ({test})" if test else "")
                )
        out.append(f"  cost: {_cost_text(b.cost)} -> {_cost_text(a.cost)}")
        out.append(f"  time: {_seconds_text(b.seconds)} -> {_seconds_text(a.seconds)}")
        out.append(f"  rows: {_counts_text(b.counts)} -> {_counts_text(a.counts)}")
        return out

    def __repr__(self) -> str:
        return "\n".join(self.lines())

    def _repr_html_(self) -> str:
        b, a = self.before, self.after
        head = html.escape(self.lines()[0])
        table = self.summary().to_html(
            float_format=lambda v: f"{v:.3g}", classes="nbbatch-compare", border=0
        )
        side = pd.DataFrame(
            {
                "before": [b.job_id, _cost_text(b.cost), _seconds_text(b.seconds)],
                "after": [a.job_id, _cost_text(a.cost), _seconds_text(a.seconds)],
            },
            index=["job", "cost", "time"],
        ).to_html(border=0)
        chart = churn_chart(self)
        img = f'<img alt="churn per field" src="data:image/png;base64,{chart}">' if chart else ""
        return (
            f"<div><p><b>{head}</b><br>lineage: {html.escape(_lineage_text(self))}<br>"
            f"changed rows: {len(self.changed):,} (<code>.changed</code>)</p>"
            f"{table}{side}{img}</div>"
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {"text/plain": repr(self), "text/html": self._repr_html_()}


def churn_chart(comparison: Comparison) -> str | None:
    """A small horizontal bar chart of churn per field, as base64 PNG, or None when
    matplotlib is not installed (or there is no field)."""
    if not comparison.fields:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = [f.name for f in comparison.fields]
    fig, ax = plt.subplots(figsize=(4, 0.4 + 0.3 * len(names)), dpi=80)
    try:
        ax.barh(names, [100 * f.churn for f in comparison.fields], color="#4c78a8")
        ax.set_xlabel("rows changed (%)")
        ax.set_xlim(0, 100)
        ax.invert_yaxis()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# -- building a comparison -------------------------------------------------------------------
def compare(
    before: JobContext,
    after: JobContext,
    costs: tuple[Cost | None, Cost | None] = (None, None),
) -> Comparison:
    """Compare job ``before`` with job ``after`` (see the module docstring)."""
    if before.id == after.id:
        raise InputError(f"compare() needs two jobs; both are {before.id}.", job_id=before.id)
    for ctx in (before, after):
        if is_embeddings(ctx.endpoint):
            raise InputError(
                f"job {ctx.id} returns embeddings, which compare() does not diff: compare "
                "the vectors of job.results() yourself (a cosine distance, say).",
                job_id=ctx.id,
            )
        ctx.warn_if_running("compare()")
    state_b, state_a = before.row_state(), after.row_state()
    take, matched_by = match_rows(before, state_b, after, state_a)
    names = shared_fields(before, after)
    frame_b = _answers(before, state_b, np.arange(state_b.n))
    frame_a = _answers(after, state_a, take)
    ok_b = frame_b["_status"].to_numpy() == "succeeded"
    ok_a = frame_a["_status"].to_numpy() == "succeeded"
    both = ok_b & ok_a
    any_diff = ok_b != ok_a
    shifts = []
    changed_cols: dict[str, Any] = {}
    for shown, (col_b, col_a) in names.items():
        vb = _comparable(frame_b[col_b].to_numpy(dtype=object))
        va = _comparable(frame_a[col_a].to_numpy(dtype=object))
        differs = both & ~_same(vb, va)
        any_diff |= differs
        shifts.append(_shift(shown, vb[both], va[both], int(differs.sum())))
        changed_cols[f"{shown}_before"] = frame_b[col_b].to_numpy(dtype=object)
        changed_cols[f"{shown}_after"] = frame_a[col_a].to_numpy(dtype=object)
    changed_cols["status_before"] = frame_b["_status"].to_numpy(dtype=object)
    changed_cols["status_after"] = frame_a["_status"].to_numpy(dtype=object)
    labels = state_b.manifest_column("label").to_pandas()
    changed = pd.DataFrame(changed_cols, index=pd.Index(labels, name="row"))
    changed.insert(0, "position", np.arange(state_b.n))
    changed = changed[any_diff]
    return Comparison(
        before=_side(before, costs[0]),
        after=_side(after, costs[1]),
        rows=state_b.n,
        matched_by=matched_by,
        fields=tuple(shifts),
        changed=changed,
    )


def match_rows(
    before: JobContext,
    state_b: rowstore.RowState,
    after: JobContext,
    state_a: rowstore.RowState,
) -> tuple[np.ndarray, str]:
    """For each row of ``before``, its position in ``after``, and what matched them.

    Rows are matched by their key (the ``id_column``'s value, else the index label, as
    the ledger keeps it), so jobs over the same rows in another order compare; keys that
    repeat can only be matched in the same order. Different rows are refused."""
    keys_b = state_b.manifest.column("key").to_numpy()
    keys_a = state_a.manifest.column("key").to_numpy()
    id_b, id_a = before.record.get("id_column"), after.record.get("id_column")
    by = f"id_column {id_b!r}" if id_b else "index label"
    if id_b != id_a:
        by = f"{_by(id_b)} in {before.id} and {_by(id_a)} in {after.id}"
    if len(keys_b) == len(keys_a) and np.array_equal(keys_b, keys_a):
        return np.arange(len(keys_a)), by
    index_a, index_b = pd.Index(keys_a), pd.Index(keys_b)
    if not index_a.is_unique or not index_b.is_unique:
        raise InputError(
            f"jobs {before.id} and {after.id} have rows with repeated labels (by {by}) and "
            "not in the same order, so their rows cannot be matched: submit both with an "
            "id_column of unique values, or over the same frame in the same order.",
            job_id=after.id,
        )
    take = index_a.get_indexer(keys_b)
    missing_b = int((take < 0).sum())
    extra_a = int((~index_a.isin(index_b)).sum())
    if missing_b or extra_a:
        raise InputError(
            f"jobs {before.id} and {after.id} are over different rows (matched by {by}): "
            f"{missing_b:,} of the {len(keys_b):,} rows of {before.id} are not in "
            f"{after.id}, and {extra_a:,} of the {len(keys_a):,} rows of {after.id} are not "
            f"in {before.id}. compare() needs the same rows; submit both jobs over the "
            "same frame (or give both the same id_column).",
            job_id=after.id,
        )
    return take, by


def _by(id_column: str | None) -> str:
    return f"id_column {id_column!r}" if id_column else "index label"


def shared_fields(before: JobContext, after: JobContext) -> dict[str, tuple[str, str]]:
    """The output fields both jobs have: shown name -> (column in before, in after).
    Two structured jobs share the fields of the same name; two text jobs, their output
    (whatever each named it). A structured job and a text one are refused."""
    from . import _structured as structured

    rf_b, rf_a = before.spec.response_format, after.spec.response_format
    if rf_b is None and rf_a is None:
        shown = before.output if before.output == after.output else "output"
        return {shown: (before.output, after.output)}
    if rf_b is None or rf_a is None:
        raise InputError(
            f"job {before.id if rf_b is None else after.id} answers in free text and the "
            "other with a response_format, so they have no field in common to compare.",
            job_id=after.id,
        )
    fields_b = structured.columns_of(structured.schema_of(rf_b))
    fields_a = set(structured.columns_of(structured.schema_of(rf_a)))
    common = {n: (n, n) for n in fields_b if n in fields_a}
    if not common:
        raise InputError(
            f"jobs {before.id} and {after.id} have no output field in common "
            f"({fields_b} against {sorted(fields_a)}).",
            job_id=after.id,
        )
    return common


def _answers(ctx: JobContext, state: rowstore.RowState, take: np.ndarray) -> pd.DataFrame:
    """The job's answers at positions ``take``: its result columns and ``_status``."""
    import warnings

    from . import _merge as merge
    from ._errors import JobRunningWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JobRunningWarning)
        out = merge.merged(
            pd.DataFrame(index=pd.RangeIndex(len(take))),
            state,
            take,
            ctx.output,
            ctx.spec.response_format,
        )
    out["_status"] = out[columns.name_of(columns.Role.STATUS, ctx.output)].to_numpy(dtype=object)
    return out


def _comparable(values: np.ndarray) -> np.ndarray:
    """Values that compare by ``==``: lists and objects as canonical JSON text, missing
    ones (None, NaN, NA) as None."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        if isinstance(v, (list, dict, tuple, np.ndarray)):
            out[i] = orjson.dumps(
                v.tolist() if isinstance(v, np.ndarray) else v, option=orjson.OPT_SORT_KEYS
            ).decode()
        elif v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            out[i] = None
        else:
            out[i] = v
    return out


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise equality where two missing values are the same."""
    return np.array([x == y for x, y in zip(a, b, strict=True)], dtype=bool)


def _kind(before: np.ndarray, after: np.ndarray) -> str:
    values = [v for v in (*before, *after) if v is not None]
    if values and all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
        for v in values
    ):
        return "number"
    if all(isinstance(v, (str, bool, np.bool_)) for v in values):
        # Labels repeat: a few values over many rows. Text mostly differs row to row.
        distinct = len(set(values))
        if not values or distinct <= min(MAX_LABELS, max(2, len(values) // 2)):
            return "label"
    return "text"


def _shift(name: str, before: np.ndarray, after: np.ndarray, changed: int) -> FieldShift:
    kind = _kind(before, after)
    compared = len(before)
    if kind == "number":
        xb = np.array([v for v in before if v is not None], dtype=float)
        xa = np.array([v for v in after if v is not None], dtype=float)
        value, p = _ks(xb, xa)
        return FieldShift(
            name, kind, compared, changed, _numbers(xb), _numbers(xa), "ks", value, p
        )  # fmt: skip
    if kind == "label":
        cb = _label_counts(before)
        ca = _label_counts(after)
        value, p = _chi2(cb, ca)
        return FieldShift(name, kind, compared, changed, cb, ca, "chi2", value, p)
    norm_b = np.array([_normalised(v) for v in before], dtype=object)
    norm_a = np.array([_normalised(v) for v in after], dtype=object)
    matched = float(_same(norm_b, norm_a).mean()) if compared else 1.0
    return FieldShift(name, kind, compared, changed, {}, {}, "normalised match", matched)


def _label_counts(values: np.ndarray) -> dict[str, int]:
    counts = pd.Series([str(v) for v in values if v is not None], dtype=object).value_counts()
    return {str(k): int(v) for k, v in counts.items()}


def _numbers(values: np.ndarray) -> dict[str, Any]:
    if not len(values):
        return {"n": 0}
    q = np.quantile(values, [0.25, 0.5, 0.75])
    return {
        "n": len(values),
        "mean": float(values.mean()),
        "q25": float(q[0]),
        "median": float(q[1]),
        "q75": float(q[2]),
    }


def _normalised(value: Any) -> Any:
    """Text compared without case, surrounding space and repeated whitespace."""
    return " ".join(value.lower().split()) if isinstance(value, str) else value


def _chi2(before: dict[str, int], after: dict[str, int]) -> tuple[float | None, float | None]:
    """The chi-square statistic of homogeneity of two label count tables (and its
    p-value with scipy), None when there is nothing to test (one label, no rows)."""
    labels = sorted(set(before) | set(after))
    table = np.array([[before.get(k, 0) for k in labels], [after.get(k, 0) for k in labels]])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return None, None
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0) / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    try:
        from scipy import stats
    except ImportError:
        return statistic, None
    return statistic, float(stats.chi2.sf(statistic, table.shape[1] - 1))


def _ks(before: np.ndarray, after: np.ndarray) -> tuple[float | None, float | None]:
    """The two-sample Kolmogorov-Smirnov statistic (largest gap between the two
    empirical distributions; its p-value with scipy), None without values."""
    if not len(before) or not len(after):
        return None, None
    grid = np.union1d(before, after)
    cdf_b = np.searchsorted(np.sort(before), grid, side="right") / len(before)
    cdf_a = np.searchsorted(np.sort(after), grid, side="right") / len(after)
    statistic = float(np.abs(cdf_b - cdf_a).max())
    try:
        from scipy import stats
    except ImportError:
        return statistic, None
    import warnings

    with warnings.catch_warnings():
        # Ties defeat its exact method; it says so and uses the asymptotic one.
        warnings.simplefilter("ignore", RuntimeWarning)
        return statistic, float(stats.ks_2samp(before, after).pvalue)


def _side(ctx: JobContext, cost: Cost | None) -> Side:
    record = ctx.ledger.job(ctx.id) or ctx.record
    ended = record.get("ended_at")
    seconds = None if ended is None else max(0.0, float(ended) - float(record["created"]))
    counts = {k: v for k, v in ctx.ledger.counts(ctx.id).items() if v}
    return Side(
        job_id=ctx.id,
        models=tuple(dict.fromkeys(ctx.models)),
        prompt_hashes=tuple(dict.fromkeys(ctx.prompt_hashes())),
        counts=counts,
        cost=cost,
        seconds=seconds,
    )


# -- words -----------------------------------------------------------------------------------
def _distribution(f: FieldShift, values: dict[str, Any]) -> str:
    if f.kind == "label":
        top = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{k} {v:,}" for k, v in top[:SHOWN_LABELS])
        return shown + (f", +{len(top) - SHOWN_LABELS} more" if len(top) > SHOWN_LABELS else "")
    if f.kind == "number":
        if not values.get("n"):
            return "no value"
        return (
            f"mean {values['mean']:.3g} [q25 {values['q25']:.3g}, median "
            f"{values['median']:.3g}, q75 {values['q75']:.3g}]"
        )
    return "text"


def _test(f: FieldShift) -> str:
    if f.value is None:
        return ""
    if f.statistic == "normalised match":
        return f"normalised match {f.value:.1%}"
    text = f"{f.statistic} {f.value:.3g}"
    return text + (f", p {f.p_value:.3g}" if f.p_value is not None else "")


def _lineage_text(c: Comparison) -> str:
    changes = c.lineage_changes()
    parts = []
    for name, values in (
        ("model", (c.before.models, c.after.models)),
        ("prompt", (c.before.prompt_hashes, c.after.prompt_hashes)),
    ):
        key = "prompt_hash" if name == "prompt" else name
        b, a = (" + ".join(v) for v in values)
        parts.append(f"{name} {b} -> {a}" if key in changes else f"{name} {b} (same)")
    return "; ".join(parts)


def _cost_text(cost: Cost | None) -> str:
    if cost is None or cost.batch is None:
        return "unknown"
    from .pricing import money

    return money(cost.batch) + (" (estimate)" if cost.estimated else "")


def _seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "still running"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _counts_text(counts: dict[str, int]) -> str:
    shown = [k for k in rowstore.STATES if counts.get(k)]
    return ", ".join(f"{counts[k]:,} {k}" for k in shown) or "no rows"
