"""A cascade calibrated to a quality target: ``escalate_when="auto"``.

``nb.submit(df, prompt, model=["gpt-4o-mini", "gpt-4o"], response_format=Review,
escalate_when="auto", target=0.95, score="confidence")`` first runs a pilot: a seeded
sample of the rows (``pilot_rows=1000`` by default, drawn by ``nb.pilot``'s sampler,
:func:`nbbatch._agreement.sample_of`) on both models, as two small jobs.
On the pilot, a row *agrees* when the small model's answer equals the large model's in
every output field but the score. :func:`pick_threshold` then chooses the threshold on
the score that escalates as few rows as possible while the rows it keeps on the small
model agree with the large model on at least ``target`` of them (by the lower end of a
half-standard-error interval, so the pilot's luck carries over less to the table);
the cascade escalates
the rows scored below it (and the rows the small model failed). The chosen threshold,
the expected agreement on the rows kept and the expected escalation share are kept in
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

Only a numeric field of the structured output can be the score. OpenAI's token
log-probabilities (``score="logprobs"``) are refused: nbbatch does not yet keep them as
a per-row score (the emulator returns them when a chat completion asks).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import InputError

if TYPE_CHECKING:
    from ._context import JobContext

#: Rows of the pilot, by default.
PILOT_ROWS = 1000
#: The kept rows' agreement must clear the target by this many standard errors (the
#: lower end of a Wilson interval, about 69% one-sided): choosing the lowest threshold
#: whose measured agreement just reaches the target picks the pilot's luckiest cut,
#: and the whole table then falls short of it. More (1.0) overshoots the target and
#: escalates far more rows where agreement flattens near it; see the README's figures.
Z = 0.5
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

    @property
    def expected_overall(self) -> float:
        """Expected agreement with the large model over every row (escalated rows take
        the large model's answer)."""
        return 1.0 - (1.0 - self.expected_escalation) * (1.0 - self.expected_agreement)

    def expression(self, output: str) -> str:
        """The ``escalate_when`` expression this calibration stands for."""
        return f"{output}_status != 'succeeded' or {self.score} < {self.threshold!r}"

    def text(self) -> str:
        """One line for notes, the log and the job's repr."""
        head = (
            f"calibrated cascade: escalate {self.score} < {self.threshold:.4g} "
            f"(target {self.target:.1%}): expected agreement with the large model "
            f"{self.expected_agreement:.1%} on the rows kept, {self.expected_escalation:.1%} "
            f"of rows escalated (pilot of {self.pilot_rows:,} rows)"
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


def check_arguments(
    models: Any, response_format: Any, score: Any, target: Any, pilot_rows: Any
) -> None:
    """Refuse, before anything is sent, a calibrated cascade that cannot be run."""
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
    if score == "logprobs":
        raise InputError(
            "score='logprobs' is not supported yet: nbbatch does not keep token "
            "log-probabilities as a per-row score. Add a numeric confidence field to the "
            "response_format and pass score='confidence'."
        )
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


def pick_threshold(
    scores: np.ndarray, agree: np.ndarray, failed: np.ndarray, target: float
) -> tuple[float, float, float, bool]:
    """(threshold, agreement on the rows kept, escalation share, target reached) for
    pilot rows with the small model's ``scores``, whether its answer ``agree``s with the
    large model's, and whether it ``failed`` (always escalated; its score and agreement
    are ignored).

    Rows scored at or above the threshold are kept; the threshold kept is the lowest
    (the fewest rows escalated) whose kept rows agree on at least ``target`` of them,
    by the lower end of their agreement's interval (:data:`Z` standard errors), so a
    lucky pilot does not set a threshold the whole table misses. The agreement
    returned is the measured one.
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
    lower = wilson_lower(kept_agree[ends], counts[ends], Z)
    good = ends[lower >= target]
    if not len(good):
        top = float(s[0]) if len(s) else 0.0
        return _above(top), 1.0, 1.0, False
    k = int(good.max())  # keep rows 0..k
    threshold = float(s[k])
    agreement = float(kept_agree[k] / counts[k])
    escalated = (n - (k + 1)) / n
    return threshold, agreement, escalated, True


def wilson_lower(successes: np.ndarray, n: np.ndarray, z: float) -> np.ndarray:
    """The lower end of the Wilson score interval of ``successes`` out of ``n``."""
    n = np.asarray(n, dtype=float)
    p = np.asarray(successes, dtype=float) / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return np.asarray((centre - spread) / (1 + z2 / n))


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
    from . import _rowstore as rowstore

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
    status = f"{ctx.output}_status"
    both = (mine[status].to_numpy(dtype=object) == rowstore.STATES[rowstore.SUCCEEDED]) & (
        theirs[status].to_numpy(dtype=object) == rowstore.STATES[rowstore.SUCCEEDED]
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
