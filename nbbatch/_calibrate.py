"""A cascade calibrated to a quality target: ``escalate_when="auto"``.

``nb.submit(df, prompt, model=["gpt-4o-mini", "gpt-4o"], response_format=Review,
escalate_when="auto", target=0.95, score="confidence")`` first runs a pilot: a seeded
sample of the rows (``pilot_rows=1000`` by default, drawn by ``nb.pilot``'s sampler,
:func:`nbbatch._agreement.sample_of`) on both models, as two small jobs.
On the pilot, a row *agrees* when the small model's answer equals the large model's in
every output field but the score. :func:`pick_threshold` then chooses the threshold on
the score that escalates as few rows as possible while the rows it keeps on the small
model are expected to agree with the large model on at least ``target`` of them (by a
logistic curve of agreement against the score fitted to every pilot row, so the few
pilot rows near one cut move it little); the cascade escalates
the rows scored below it (and the rows the small model failed). The chosen threshold,
the expected agreement on the rows kept (with its 95% interval, see
:func:`agreement_interval`) and the expected escalation share are kept in
the job's policy (``job.calibration``), noted and logged before the job is sent, and,
when the cascade starts its second stage, the share it escalates is checked against the
expected one (a note when it is off by more than the pilot's sampling error allows).
Once the cascade has ended, the job's answers on the pilot's rows are compared with the
large model's pilot answers (:func:`sample_note`): they should agree as the pilot
expected, unless the models answered differently the second time.

No pilot row is paid twice: the job's identical requests take the small model's pilot
answers (the ledger's reuse), and its stage on the large model the large model's (see
:func:`nbbatch._escalate.reuse_answers`), unless ``reuse=False`` (or ``pack=``, for the
small model).

The score is a numeric field of the structured output (``score="confidence"``), or
OpenAI's token log-probabilities (``score="logprobs"``): every request of the pilot and
of the job then asks for them (``logprobs: true``), and each row's score is the
probability of its reply's least likely token, kept as ``{output}_score`` (see
``providers.base.SCORE_FIELD``). The least likely token rather than the mean
log-probability: a reply is as unsure as the one token that carries its answer, and a
mean dilutes that token with the sure ones around it. Refused before anything is sent:
log-probabilities with ``pack=`` (the items of one packed answer cannot be scored
apart), on another provider than OpenAI, or on another endpoint than chat completions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from . import columns, states
from ._errors import InputError

if TYPE_CHECKING:
    from ._context import JobContext

#: Rows of the pilot, by default.
PILOT_ROWS = 1000
#: A small ridge on the agreement curve's two coefficients, so a pilot whose rows all
#: agree (or whose scores separate agreeing rows perfectly) still gives a finite curve.
RIDGE = 1e-3
#: The agreement curve's log-odds are a polynomial in the score, of one degree per
#: ROWS_PER_DEGREE pilot rows up to MAX_DEGREE (a straight logistic line for a small
#: pilot; a quartic for the default 1,000 rows). A straight line is biased where
#: agreement rises steeply over a narrow band of scores (token probabilities): the
#: kept rows then agreed 2 points under the target on simulated pilots of 1,000 rows.
MAX_DEGREE = 4
ROWS_PER_DEGREE = 250
#: The realised escalation share may differ from the pilot's by this many standard
#: errors (of a share measured on the pilot) before a note says so; and at least by
#: MIN_GAP.
SIGMAS = 3.0
MIN_GAP = 0.02


@dataclass(frozen=True)
class Calibration:
    """What a calibrated cascade chose, and what it expects (see the module docstring)."""

    score: str
    target: float
    threshold: float  # rows scored below it are escalated
    expected_agreement: float  # on the pilot rows kept on the small model
    expected_escalation: float  # share of the pilot rows escalated
    pilot_rows: int  # pilot rows both models answered (the ones measured)
    reached: bool  # False: no threshold short of escalating every row meets the target
    pilot_jobs: tuple[str, ...] = ()
    pilot_cost: float | None = None  # what the pilot's two jobs were billed (batch prices)
    # The 95% interval of the agreement on the rows kept (see agreement_interval); None
    # in a job calibrated before it was kept.
    agreement_low: float | None = None
    agreement_high: float | None = None

    @property
    def expected_overall(self) -> float:
        """Expected agreement with the large model over every row (escalated rows take
        the large model's answer)."""
        return 1.0 - (1.0 - self.expected_escalation) * (1.0 - self.expected_agreement)

    def expression(self, output: str) -> str:
        """The ``escalate_when`` expression this calibration stands for (with
        log-probabilities, a row without a score is escalated too)."""
        if self.score == LOGPROBS:
            column = f"{output}_score"
            return (
                f"{output}_status != 'succeeded' or {column} is None or "
                f"{column} < {self.threshold!r}"
            )
        return f"{output}_status != 'succeeded' or {self.score} < {self.threshold!r}"

    def text(self) -> str:
        """One line for notes, the log and the job's repr."""
        name = "the answer's least likely token's probability" if self.score == LOGPROBS else None
        interval = ""
        if self.agreement_low is not None and self.agreement_high is not None:
            interval = f" (95% interval {self.agreement_low:.1%} to {self.agreement_high:.1%})"
        head = (
            f"calibrated cascade: escalate {name or self.score} < {self.threshold:.4g} "
            f"(target {self.target:.1%}): expected agreement with the large model "
            f"{self.expected_agreement:.1%}{interval} on the rows kept, "
            f"{self.expected_escalation:.1%} of rows escalated (pilot of "
            f"{self.pilot_rows:,} rows)"
        )
        if not self.reached:
            head += "; no threshold reaches the target, so every row is escalated"
        return head

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for the job's policy in the ledger."""
        out = asdict(self)
        out["pilot_jobs"] = list(self.pilot_jobs)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """The calibration a job's policy keeps."""
        values = dict(data)
        values["pilot_jobs"] = tuple(values.get("pilot_jobs") or ())
        return cls(**values)


#: ``score=`` for OpenAI's token log-probabilities rather than a field of the answer.
LOGPROBS = "logprobs"


def check_arguments(
    models: Any,
    response_format: Any,
    score: Any,
    target: Any,
    pilot_rows: Any,
    *,
    provider: str = "openai",
    endpoint: str | None = None,
    pack: Any = None,
) -> None:
    """Refuse, before anything is sent, a calibrated cascade that cannot be run
    (``provider``: the provider's name; ``endpoint`` and ``pack`` as submit has them)."""
    if not isinstance(models, list | tuple) or len(models) != 2:
        raise InputError(
            "escalate_when='auto' calibrates a cascade of two models, cheapest first: "
            f"model=['gpt-4o-mini', 'gpt-4o']; found model={models!r}."
        )
    if isinstance(target, bool) or not isinstance(target, int | float) or not 0 < target <= 1:
        raise InputError(
            "escalate_when='auto' needs target=, the agreement with the large model to keep "
            f"on the rows not escalated, a share between 0 and 1 (e.g. 0.95); found {target!r}."
        )
    if isinstance(pilot_rows, bool) or not isinstance(pilot_rows, int) or pilot_rows < 20:
        raise InputError(
            f"pilot_rows= is the number of sample rows (20 or more); found {pilot_rows!r}."
        )
    if score == LOGPROBS:
        _check_logprobs(provider, endpoint, pack)
        return
    if not isinstance(score, str) or not score.isidentifier():
        raise InputError(
            "escalate_when='auto' needs score=, the name of a numeric field of the "
            f"structured output (e.g. score='confidence'); found {score!r}."
        )
    if response_format is None:
        raise InputError(
            f"score={score!r} is a field of the structured output: escalate_when='auto' "
            "needs a response_format with that numeric field."
        )
    from . import _structured as structured

    schema = structured.schema_of(structured.response_format(response_format))
    node = (schema.get("properties") or {}).get(score)
    kinds = node.get("type") if isinstance(node, dict) else None
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if not any(k in ("number", "integer") for k in kinds):
        fields = structured.columns_of(schema)
        raise InputError(
            f"score={score!r} must be a numeric top-level field of the response_format; "
            f"its fields are {fields}."
        )


def _check_logprobs(provider: str, endpoint: str | None, pack: Any) -> None:
    """Refuse ``score="logprobs"`` where the replies cannot carry them."""
    fix = "or add a numeric confidence field to the response_format and pass score='confidence'"
    if provider != "openai":
        # Anthropic's Messages API returns no token log-probabilities (a feature request
        # its SDK maintainers closed with no plans: github.com/anthropics/
        # anthropic-sdk-python/issues/392). Gemini has generationConfig.responseLogprobs,
        # but the Gemini API refuses it on current models ("Logprobs is not enabled for
        # models/gemini-2.5-flash-lite", github.com/Vela-Research/think-reason-learn/
        # issues/34; "... for models/gemini-2.5-pro", github.com/mscraftsman/
        # generative-ai/issues/135), and whether batch mode returns it is not published.
        raise InputError(
            f"score='logprobs' needs OpenAI's token log-probabilities; {provider} does not "
            f"return them in batch. Use an OpenAI model, {fix}."
        )
    if endpoint not in (None, "/v1/chat/completions"):
        raise InputError(
            "score='logprobs' reads chat completions' token log-probabilities; "
            f"endpoint={endpoint!r} has none nbbatch reads. Use the default endpoint "
            f"(/v1/chat/completions), {fix}."
        )
    if pack is not None:
        raise InputError(
            "score='logprobs' cannot be used with pack=: the items of one packed answer "
            "share its token log-probabilities and cannot be scored apart. Drop pack=, "
            f"{fix}."
        )


def check_budget(
    data: Any,
    sample: Any,
    prompt: str,
    models: list[str],
    max_cost: float,
    options: dict[str, Any],
    *,
    response_format: Any,
    pack: Any,
    preview: Callable[..., Any],
) -> None:
    """Refuse, before the pilot is sent, a calibrated cascade whose pilot (its sample on
    both models) and job (the cascade's upper bound, as ``max_cost`` checks any cascade:
    its first stage, then every row on the large model) together may cost more than
    ``max_cost``. With reuse on, the first stage's rows are those the pilot did not
    answer (its answers are taken, not paid again); without it (or with ``pack=``, or
    rows whose labels repeat) the whole table. The job itself is checked once more after
    the pilot, the same way, against what the pilot left of ``max_cost``. ``preview``
    is ``nb.preview`` (passed in: this module does not import the entry points)."""
    from .pricing import money

    named: tuple[str, ...] = ("provider", "client", "system", "max_tokens", "temperature")
    named += ("id_column", "endpoint", "missing", "cache_system")
    kwargs: dict[str, Any] = {k: options.get(k) for k in named if k in options}
    params = {k: v for k, v in options.items() if k not in (*named, "retries", "fallback", "reuse")}
    reuse = options.get("reuse", True) and pack is None and data.index.is_unique

    def upper_bound(rows: Any, model: Any, rows_pack: Any) -> float:
        if not len(rows):
            return 0.0
        est = preview(
            rows, prompt, model=model, n=1,
            escalate_when="failed" if isinstance(model, list) else None,
            response_format=response_format, pack=rows_pack, **kwargs, **params,
        ).estimate  # fmt: skip
        if est.upper_bound is None:
            raise InputError(
                f"max_cost={max_cost} cannot be checked: nbbatch has no price for model "
                f"{models[0]!r} or {models[1]!r}. Set one with nb.pricing.set(model, "
                "input=..., output=...) or drop max_cost."
            )
        return float(est.upper_bound)

    pilot = upper_bound(sample, models, None)
    rest = data[~data.index.isin(sample.index)] if reuse else data
    # As the job's own check counts it: later stages as if every row went on to them.
    job = upper_bound(rest, models[0], pack) + upper_bound(data, models[1], None)
    if pilot + job > max_cost:
        raise InputError(
            f"The calibrated cascade's pilot ({len(sample):,} rows on {models[0]} and "
            f"{models[1]}: {money(pilot)}) and its job (at most {money(job)}, as if every "
            "row were escalated: an upper bound) "
            f"come to {money(pilot + job)}, above max_cost={money(max_cost)}; nothing was "
            "sent. Lower pilot_rows= or max_tokens, send fewer rows, or raise max_cost."
        )


def pick_threshold(
    scores: np.ndarray, agree: np.ndarray, failed: np.ndarray, target: float
) -> tuple[float, float, float, bool]:
    """(threshold, agreement on the rows kept, escalation share, target reached) for
    pilot rows with the small model's ``scores``, whether its answer ``agree``s with the
    large model's, and whether it ``failed`` (always escalated; its score and agreement
    are ignored).

    Rows scored at or above the threshold are kept; the threshold kept is the lowest
    (the fewest rows escalated) whose kept rows are expected to agree on at least
    ``target`` of them, by the agreement curve :func:`agreement_curve` fits to every
    pilot row: the expected agreement of the rows kept is the mean of the curve over
    them. Not the kept rows' measured agreement: where agreement flattens near the
    target, the lowest cut whose measured agreement reaches it is the pilot's luckiest
    (the whole table falls short of it), and a cut that must clear it by a margin
    escalates a tenth more of the rows for a few tenths of a point whenever the pilot's
    sample is unlucky there. A smooth curve fitted to every row is not moved as much by
    the few rows near one cut. The agreement returned is the measured one on the rows
    kept (what the cascade's checks afterwards compare with).
    Rows with equal scores go together. When none reaches the target, every row is
    escalated (the threshold is above every score)."""
    scores = np.asarray(scores, dtype=float)
    agree = np.asarray(agree, dtype=bool)
    failed = np.asarray(failed, dtype=bool)
    n = len(scores)
    if n == 0:
        return math.inf, 1.0, 1.0, False
    ok = ~failed & ~np.isnan(scores)
    order = np.argsort(-scores[ok], kind="stable")
    s = scores[ok][order]
    a = agree[ok][order]
    kept_agree = np.cumsum(a)
    counts = np.arange(1, len(s) + 1)
    # A cut is only possible after the last row of a run of equal scores.
    ends = np.flatnonzero(np.append(s[1:] != s[:-1], True)) if len(s) else np.array([], int)
    expected = np.cumsum(agreement_curve(s, a)) / counts
    # A tolerance for rounding: a pilot whose rows all agree expects exactly 1.0.
    good = ends[expected[ends] >= target - 1e-9]
    if not len(good):
        top = float(s[0]) if len(s) else 0.0
        return _above(top), 1.0, 1.0, False
    k = int(good.max())  # keep rows 0..k
    threshold = float(s[k])
    agreement = float(kept_agree[k] / counts[k])
    escalated = (n - (k + 1)) / n
    return threshold, agreement, escalated, True


#: The normal quantile of a two-sided 95% interval.
_Z95 = 1.959963984540054


def agreement_interval(
    scores: np.ndarray, agree: np.ndarray, failed: np.ndarray, threshold: float
) -> tuple[float, float]:
    """The 95% Wilson score interval of the agreement on the pilot rows a ``threshold``
    keeps (scored at or above it, not failed): what the rows the whole job keeps are
    expected to agree on, as far as the pilot's sample can say. The same rows chose the
    threshold, which makes the interval a little optimistic; the cascade's checks and
    the benchmark compare what happened with it. (Wilson's closed form, so a cascade
    needs no scipy: ``_agreement.share_interval`` gives the same figures.)"""
    scores = np.asarray(scores, dtype=float)
    ok = ~np.asarray(failed, dtype=bool) & ~np.isnan(scores)
    kept = ok & (scores >= threshold)
    n = int(kept.sum())
    if n == 0:
        return 0.0, 1.0
    p = float(np.asarray(agree, dtype=bool)[kept].mean())
    z2 = _Z95**2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def agreement_curve(scores: np.ndarray, agree: np.ndarray) -> np.ndarray:
    """Each row's expected agreement given its score: a logistic curve whose log-odds
    are a polynomial of the score (of one degree per :data:`ROWS_PER_DEGREE` rows, up
    to :data:`MAX_DEGREE`), fitted to every row by Newton's method with a small
    :data:`RIDGE`. A few numbers summarise the whole pilot, so the rows near one
    threshold move it little. Rows whose scores or answers are all alike get the
    pilot's agreement."""
    x = np.asarray(scores, dtype=float)
    y = np.asarray(agree, dtype=float)
    if not len(x):
        return x
    spread = float(x.std())
    if spread == 0.0 or y.min() == y.max():  # nothing to fit: every row alike
        return np.full(len(x), y.mean())
    degree = int(min(MAX_DEGREE, max(1, len(x) // ROWS_PER_DEGREE)))
    z = (x - x.mean()) / spread
    return _logistic(np.column_stack([z**k for k in range(degree + 1)]), y)


def _logistic(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The fitted probabilities of a logistic regression of ``y`` on ``design``."""
    w = np.zeros(design.shape[1])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(design @ w)))
        gradient = design.T @ (y - p) - RIDGE * w
        hessian = (design.T * (p * (1 - p))) @ design + RIDGE * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w += step
        if np.abs(step).max() < 1e-10:
            break
    return np.asarray(1.0 / (1.0 + np.exp(-(design @ w))))


def _above(value: float) -> float:
    """A number above ``value`` that an expression can hold (never infinity)."""
    return float(value) + max(1.0, abs(float(value)))


def agreement_mask(small: Any, large: Any, fields: list[str]) -> np.ndarray:
    """Whether each row's answers agree in every one of ``fields`` (two pandas frames
    aligned row by row; two missing values agree)."""
    same = np.ones(len(small), dtype=bool)
    for name in fields:
        a = small[name].to_numpy(dtype=object)
        b = large[name].to_numpy(dtype=object)
        same &= np.array([_equal(x, y) for x, y in zip(a, b, strict=True)], dtype=bool)
    return same


def _equal(x: Any, y: Any) -> bool:
    missing_x = x is None or (isinstance(x, float) and math.isnan(x))
    missing_y = y is None or (isinstance(y, float) and math.isnan(y))
    if missing_x or missing_y:
        return missing_x and missing_y
    return bool(x == y)


def realised_note(calibration: Calibration, escalated: int, answered: int) -> tuple[str, bool]:
    """The note on the share a cascade escalated against the pilot's expectation, and
    whether it is off (by more than the pilot's sampling error allows)."""
    if answered <= 0:
        return "", False
    share = escalated / answered
    p = calibration.expected_escalation
    n = max(calibration.pilot_rows, 1)
    allowed = max(MIN_GAP, SIGMAS * math.sqrt(max(p * (1 - p), 1.0 / n) / n))
    off = abs(share - p) > allowed
    text = (
        f"calibrated cascade: {escalated:,} of {answered:,} rows escalated ({share:.1%}); "
        f"the pilot expected {p:.1%}"
    )
    if off:
        text += (
            f", more than {allowed:.1%} off: the pilot's sample may not represent these rows "
            "(a larger pilot_rows=, or a stratified sample, would say more), so the expected "
            f"agreement of {calibration.expected_agreement:.1%} is uncertain"
        )
    return text, off


#: The pilot rows' realised agreement may differ from the expected one by this much
#: before a note says so (the same rows, answered again: only a model answering
#: differently the second time moves it).
SAMPLE_GAP = 0.01
_SAMPLE_HEAD = "calibrated cascade: on the pilot's rows"


def sample_note(ctx: JobContext, calibration: Calibration) -> tuple[str, bool] | None:
    """Once a calibrated cascade has ended: how its answers on the pilot's rows agree
    with the large model's pilot answers, against what the pilot expected (every pilot
    row, escalated or not), and whether that is off by more than :data:`SAMPLE_GAP`.
    None when the pilot's job is no longer in the ledger, or its rows cannot be matched."""
    import pandas as pd

    from . import _merge as merge

    if len(calibration.pilot_jobs) < 2 or ctx.ledger.job(calibration.pilot_jobs[1]) is None:
        return None
    pilot = ctx.ledger.row_state(calibration.pilot_jobs[1])
    state = ctx.row_state()
    index = pd.Index(state.manifest.column("key").to_numpy())
    if not index.is_unique:
        return None
    take = index.get_indexer(pilot.manifest.column("key").to_numpy())
    found = np.flatnonzero(take >= 0)
    rf = ctx.spec.response_format
    mine = merge.merged(
        pd.DataFrame(index=pd.RangeIndex(len(found))), state, take[found], ctx.output, rf
    )
    theirs = merge.merged(
        pd.DataFrame(index=pd.RangeIndex(len(found))), pilot, found, ctx.output, rf
    )
    status = columns.name_of(columns.Role.STATUS, ctx.output)
    both = (mine[status].to_numpy(dtype=object) == states.SUCCEEDED) & (
        theirs[status].to_numpy(dtype=object) == states.SUCCEEDED
    )
    if not both.any():
        return None
    from . import _structured as structured

    fields = [
        f for f in structured.columns_of(structured.schema_of(rf or {})) if f != calibration.score
    ]
    agree = agreement_mask(mine[both], theirs[both], fields)
    realised = float(agree.mean())
    expected = calibration.expected_overall
    off = abs(realised - expected) > SAMPLE_GAP
    text = (
        f"{_SAMPLE_HEAD} ({int(both.sum()):,}) the job's answers agree with the large "
        f"model's pilot answers on {realised:.1%}; the pilot expected {expected:.1%}"
    )
    if off:
        text += (
            ": the models answered these rows differently the second time (a sampling "
            "temperature?), so the threshold was chosen on answers the job did not get"
        )
    return text, off


def noted_sample(ctx: JobContext) -> bool:
    """Whether this session noted the pilot rows' realised agreement already."""
    return any(n.text.startswith(_SAMPLE_HEAD) for n in ctx.notes)
