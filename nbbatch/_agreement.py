"""How well one column of answers agrees with another: the statistics of a pilot (and
:func:`sample_of`, the seeded sample that a pilot and a calibrated cascade measure).

Every figure comes from a library (scikit-learn for Cohen's kappa and the confusion
matrix, scipy for the Wilson and bootstrap intervals and Spearman's rank correlation),
except kappa inside the bootstrap, vectorised for speed and checked against
scikit-learn's (see :func:`kappa_of_codes`). Rows missing on either side (a failed row,
no label) are counted as disagreeing by :func:`row_agreement` (a row without an answer is not a good
answer) and left out of the per-field figures, which say how many rows they used.

- Labels (an enum, a boolean, or text with few distinct values): accuracy (share of rows
  equal) with its 95% Wilson interval, Cohen's kappa with a 95% percentile bootstrap
  interval, the confusion matrix (rows: the reference, columns: the setting).
- Numbers: mean absolute difference, Spearman's rank correlation, share exactly equal.
- Free text: share equal exactly and share equal once normalised (case, spaces and
  punctuation ignored), each with its Wilson interval.

The statistics need the ``pilot`` extra: ``pip install 'nbbatch[pilot]'``.
"""

from __future__ import annotations

import functools
import re
import unicodedata
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ._errors import ConfigError, InputError

#: The confidence of every interval.
LEVEL = 0.95
#: Bootstrap resamples for kappa's interval.
RESAMPLES = 1000
#: Text fields with at most this many distinct values (both sides) are compared as labels.
MAX_LABELS = 12


def optional(module: str, extra: str = "pilot") -> Any:
    """Import ``module`` (scipy, scikit-learn, matplotlib), or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"the pilot needs {module.split('.')[0]} ({exc}); install it with "
            f"pip install 'nbbatch[{extra}]'"
        ) from exc


@dataclass(frozen=True)
class Interval:
    """A figure with its 95% interval (``low``/``high`` NaN when it cannot be had)."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        if np.isnan(self.value):
            return "n/a"
        if np.isnan(self.low):
            return f"{self.value:.3f}"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def share_interval(hits: int, n: int, level: float = LEVEL) -> Interval:
    """The share ``hits / n`` with its Wilson score interval (scipy), 95% unless
    ``level`` says otherwise."""
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    stats = optional("scipy.stats", "pilot")
    ci = stats.binomtest(int(hits), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return Interval(hits / n, float(ci.low), float(ci.high))


def kind_of(reference: pd.Series, setting: pd.Series) -> str:
    """``"label"``, ``"number"`` or ``"text"``: how a field is compared."""
    both = pd.concat([reference, setting]).dropna()
    if both.empty:
        return "label"
    if pd.api.types.is_bool_dtype(both) or all(isinstance(v, bool) for v in both):
        return "label"
    if pd.api.types.is_numeric_dtype(both):
        return "number"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in both):
        return "number"
    return "label" if both.astype(str).nunique() <= MAX_LABELS else "text"


def normalise(text: Any) -> str:
    """Text as compared "normalised": Unicode NFKC, case-folded, punctuation dropped,
    runs of spaces made one."""
    folded = unicodedata.normalize("NFKC", str(text)).casefold()
    no_punct = "".join(" " if unicodedata.category(c).startswith("P") else c for c in folded)
    return re.sub(r"\s+", " ", no_punct).strip()


def _paired(reference: pd.Series, setting: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    ok = reference.notna().to_numpy() & setting.notna().to_numpy()
    return reference.to_numpy()[ok], setting.to_numpy()[ok]


def compare_labels(reference: pd.Series, setting: pd.Series, *, seed: int = 0) -> dict[str, Any]:
    """Accuracy (Wilson interval), Cohen's kappa (bootstrap interval) and the confusion
    matrix of ``setting`` against ``reference`` over the rows both answered."""
    metrics = optional("sklearn.metrics", "pilot")
    stats = optional("scipy.stats", "pilot")
    ref, got = _paired(reference, setting)
    ref, got = ref.astype(str), got.astype(str)
    n = len(ref)
    labels = sorted(set(ref) | set(got))
    confusion = pd.DataFrame(
        metrics.confusion_matrix(ref, got, labels=labels) if n else np.zeros((0, 0), int),
        index=pd.Index(labels, name="reference"),
        columns=pd.Index(labels, name="setting"),
    )
    accuracy = share_interval(int((ref == got).sum()), n)
    codes = {label: i for i, label in enumerate(labels)}
    a = np.array([codes[v] for v in ref])
    b = np.array([codes[v] for v in got])

    value = float("nan")
    if n:
        # One label on both sides: agreement is all there is (sklearn would divide by 0).
        value = 1.0 if len(labels) < 2 else float(metrics.cohen_kappa_score(a, b))
    low = high = float("nan")
    if n >= 2:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # degenerate resamples say so; they are kept
            boot = stats.bootstrap(
                (a, b),
                functools.partial(kappa_of_codes, k=len(labels)),
                paired=True,
                vectorized=True,
                n_resamples=RESAMPLES,
                confidence_level=LEVEL,
                method="percentile",
                rng=np.random.default_rng(seed),
            )
        low, high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    return {
        "kind": "label",
        "rows": n,
        "accuracy": accuracy,
        "kappa": Interval(value, low, high),
        "confusion": confusion,
    }


def kappa_of_codes(x: np.ndarray, y: np.ndarray, *, k: int, axis: int = -1) -> np.ndarray:
    """Cohen's kappa of label codes ``x`` and ``y`` (0..k-1) along ``axis``, for many
    resamples at once: the statistic of kappa's bootstrap. Its point estimate is
    scikit-learn's ``cohen_kappa_score``; this vectorised form exists because the
    bootstrap calls it a thousand times per field and setting (scikit-learn takes some
    3 ms a call, so 3 s each), and a test checks it against scikit-learn."""
    x, y = np.moveaxis(np.asarray(x), axis, -1), np.moveaxis(np.asarray(y), axis, -1)
    observed = np.mean(x == y, axis=-1)
    chance = sum(np.mean(x == c, axis=-1) * np.mean(y == c, axis=-1) for c in range(k))
    chance = np.asarray(chance, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = (observed - chance) / (1.0 - chance)
    # All rows one label on both sides (chance agreement 1): perfect agreement.
    return np.where(chance >= 1.0, np.where(observed >= 1.0, 1.0, 0.0), kappa)


def compare_numbers(reference: pd.Series, setting: pd.Series) -> dict[str, Any]:
    """Mean absolute difference, Spearman's rank correlation and the share exactly equal."""
    stats = optional("scipy.stats", "pilot")
    ref, got = _paired(reference, setting)
    ref, got = ref.astype(float), got.astype(float)
    n = len(ref)
    rho = float("nan")
    if n >= 2 and np.ptp(ref) > 0 and np.ptp(got) > 0:
        rho = float(stats.spearmanr(ref, got).statistic)
    return {
        "kind": "number",
        "rows": n,
        "mean_abs_diff": float(np.mean(np.abs(ref - got))) if n else float("nan"),
        "spearman": rho,
        "exact": share_interval(int(np.sum(ref == got)), n),
    }


def compare_texts(reference: pd.Series, setting: pd.Series) -> dict[str, Any]:
    """Share of rows with the same text, exactly and normalised (see :func:`normalise`)."""
    ref, got = _paired(reference, setting)
    n = len(ref)
    exact = int(sum(str(x) == str(y) for x, y in zip(ref, got, strict=True)))
    loose = int(sum(normalise(x) == normalise(y) for x, y in zip(ref, got, strict=True)))
    return {
        "kind": "text",
        "rows": n,
        "exact": share_interval(exact, n),
        "normalised": share_interval(loose, n),
    }


def compare(
    reference: pd.Series, setting: pd.Series, *, kind: str | None = None, seed: int = 0
) -> dict[str, Any]:
    """The figures of one field, by its kind (:func:`kind_of` when not given)."""
    kind = kind or kind_of(reference, setting)
    if kind == "label":
        return compare_labels(reference, setting, seed=seed)
    if kind == "number":
        return compare_numbers(reference, setting)
    return compare_texts(reference, setting)


def row_agreement(
    reference: pd.DataFrame, setting: pd.DataFrame, kinds: dict[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    """(rows the reference answered, rows where the setting agrees on them): a row agrees
    when every label field is equal and every text field equal once normalised; numbers
    count only when there is no label or text field (then equal exactly). A row the
    setting did not answer disagrees."""
    fields = [f for f, k in kinds.items() if k != "number"] or list(kinds)
    answered = reference[fields].notna().all(axis=1).to_numpy()
    agree = np.ones(len(reference), dtype=bool)
    for f in fields:
        ref, got = reference[f].to_numpy(), setting[f].to_numpy()
        if kinds[f] == "text":
            same = np.array([normalise(x) == normalise(y) for x, y in zip(ref, got, strict=True)])
        else:
            same = np.array([str(x) == str(y) for x, y in zip(ref, got, strict=True)])
        agree &= same & setting[f].notna().to_numpy()
    return answered, agree & answered


def sample_of(frame: pd.DataFrame, n: int, seed: int, stratify: str | None = None) -> pd.DataFrame:
    """``n`` rows of ``frame`` drawn with ``seed`` (all of them when it has fewer);
    with ``stratify``, ``n`` rows in proportion to that column's values (about ``n`` when
    a value has a single row)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise InputError(f"pilot: n must be a whole number of rows, at least 2, found {n!r}.")
    if len(frame) <= n:
        return frame
    if stratify is None:
        return frame.sample(n=n, random_state=seed)
    if stratify not in frame.columns:
        raise InputError(
            f"pilot: stratify={stratify!r} is not a column; columns: {list(frame.columns)}."
        )
    selection = optional("sklearn.model_selection")
    labels = frame[stratify].astype(str)  # missing values are a stratum of their own
    try:  # exactly n rows, each value's share kept (scikit-learn's stratified split)
        sample, _ = selection.train_test_split(
            frame, train_size=n, stratify=labels, random_state=seed
        )
    except ValueError:  # a value with a single row cannot be split: about n rows instead
        groups = frame.groupby(labels, group_keys=False, sort=True)
        sample = groups.sample(frac=n / len(frame), random_state=seed)
    return sample
