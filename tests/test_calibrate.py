"""``escalate_when="auto"``: a cascade calibrated to a quality target on a pilot, end to
end through the OpenAI SDK and an emulator whose models differ in quality; and the
threshold choice itself, on any scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nbbatch as nb
from nbbatch import emulator
from nbbatch._agreement import sample_of
from nbbatch._calibrate import Calibration, agreement_curve, pick_threshold, realised_note
from nbbatch.datasets import SENTIMENT_SCHEMA as SCHEMA

from ._helpers import LABELS, truth
from ._helpers import numbered_rows as data
from .conftest import client_for


def responder(request: emulator.Request) -> dict:
    """The true label of row ``i``, with a high confidence (0.85 to 0.99)."""
    i = int(request.prompt.split()[-1])
    return {"label": truth(i), "confidence": 0.85 + (i % 15) / 100}


@pytest.fixture(scope="module")
def server():
    quality = {"gpt-4o-mini": 0.8, "gpt-4o": 1.0}
    with emulator.start(processing_seconds=0.02, responder=responder, quality=quality) as s:
        yield s


def test_auto_picks_a_threshold_that_meets_the_target_and_escalates_the_rest(server):
    df = data(300)
    job = nb.submit(
        df, "Review {i}", model=["gpt-4o-mini", "gpt-4o"], response_format=SCHEMA,
        escalate_when="auto", target=0.95, score="confidence", pilot_rows=120,
        client=client_for("openai", server), display=False,
    )  # fmt: skip
    cal = job.calibration
    assert isinstance(cal, Calibration) and cal.reached
    assert cal.pilot_rows == 120 and len(cal.pilot_jobs) == 2
    assert cal.expected_agreement >= 0.95
    # The small model disagrees on ~20% of rows, each with a lowered confidence
    # (at most 0.8 x 0.99): the threshold separates them.
    assert 0.1 < cal.expected_escalation < 0.35
    # The expected agreement comes with its 95% interval (Wilson, on the kept pilot rows),
    # shown before the job is sent.
    assert cal.agreement_low is not None and cal.agreement_high is not None
    assert cal.agreement_low < cal.expected_agreement <= cal.agreement_high <= 1.0
    notes = [n.text for n in job.snapshot().notes]
    assert any("calibrated cascade: escalate confidence <" in t for t in notes)  # shown first
    assert any(f"(95% interval {cal.agreement_low:.1%} to " in t for t in notes)
    job.wait(timeout=180, progress=False)
    out = job.merge()
    kept = out["response_model"] == "gpt-4o-mini"
    agree = (out["label"] == [truth(i) for i in range(300)])[kept].mean()
    assert agree >= 0.93  # on rows the pilot did not see, too (the large model is truth)
    assert cal.agreement_low <= agree <= cal.agreement_high  # checked afterwards
    assert (out.loc[~kept, "label"] == [truth(i) for i in np.flatnonzero(~kept)]).all()
    assert (out.loc[kept, "confidence"] >= cal.threshold).all()
    notes = [n.text for n in job.snapshot().notes]
    assert any("rows escalated" in t and "the pilot expected" in t for t in notes)
    assert not any("may not represent" in t for t in notes)  # as the pilot said
    assert any(" of 300 rows escalated" in t for t in notes)
    # The pilot's rows, answered again where escalated, agree as the pilot expected.
    sample = [t for t in notes if t.startswith("calibrated cascade: on the pilot's rows")]
    assert len(sample) == 1 and f"expected {cal.expected_overall:.1%}" in sample[0]
    assert "differently" not in sample[0]
    # No pilot row was paid twice: those kept on the small model take the small pilot's
    # answers, those escalated the large pilot's (the pilot's rows all answered).
    assert job.counts["reused"] == 120
    results = job.results()
    assert (results["origin"] == "reused").sum() == 120
    assert set(results.loc[results["origin"] == "reused", "model"]) == {"gpt-4o-mini", "gpt-4o"}
    again = nb.attach(job.id)
    assert again.calibration == cal
    # The pilot's rows are those nb.pilot's sampler draws with the same seed (one sampler).
    for pilot_job in cal.pilot_jobs:
        labels = set(nb.attach(pilot_job).results()["label"])
        assert labels == set(sample_of(df, 120, 0).index)


def test_auto_is_refused_clearly_before_anything_is_sent(server):
    client = client_for("openai", server)
    df = data(30)
    base = dict(response_format=SCHEMA, client=client, display=False)
    cases = [
        (dict(model=["gpt-4o-mini", "gpt-4o"], score="confidence"), "target="),
        (dict(model=["gpt-4o-mini", "gpt-4o"], target=0.95, score="label"), "numeric"),
        (dict(model=["gpt-4o-mini", "gpt-4o"], target=0.95, score=None), "score="),
        (dict(model=["gpt-4o-mini", "gpt-4o", "o3"], target=0.9, score="confidence"), "two"),
        (dict(model="gpt-4o", target=0.9, score="confidence"), "two models"),
    ]
    for kwargs, words in cases:
        with pytest.raises(nb.InputError, match=words):
            nb.submit(df, "Review {i}", escalate_when="auto", **{**base, **kwargs})
    with pytest.raises(nb.InputError, match="pandas DataFrame"):
        nb.submit(
            pa_table(df), "Review {i}", model=["gpt-4o-mini", "gpt-4o"], escalate_when="auto",
            target=0.9, score="confidence", **base,
        )  # fmt: skip
    with pytest.raises(nb.InputError, match="escalate_when='auto'"):
        nb.submit(df, "Review {i}", model=["gpt-4o-mini", "gpt-4o"], target=0.9, **base)
    with pytest.raises(nb.InputError, match="response_format"):
        nb.submit(df, "Review {i}", model=["gpt-4o-mini", "gpt-4o"], escalate_when="auto",
                  target=0.9, score="confidence", client=client, display=False)  # fmt: skip
    assert nb.jobs().empty  # nothing recorded, nothing sent


def pa_table(df: pd.DataFrame):
    import pyarrow as pa

    return pa.Table.from_pandas(df, preserve_index=False)


def test_existing_cascade_expressions_still_work_beside_auto(server):
    df = data(12)
    job = nb.submit(
        df, "Review {i}", model=["gpt-4o-mini", "gpt-4o"], response_format=SCHEMA,
        escalate_when="response_status != 'succeeded' or confidence < 0.85",
        client=client_for("openai", server), display=False,
    )  # fmt: skip
    job.wait(timeout=120, progress=False)
    assert job.calibration is None
    out = job.merge()
    kept = out["response_model"] == "gpt-4o-mini"
    assert 0 < kept.sum() < 12
    assert (out.loc[kept, "confidence"] >= 0.85).all()


# -- the threshold, on any pilot -------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9, 1.0]), st.booleans(), st.booleans()),
        min_size=1,
        max_size=60,
    ),
    st.sampled_from([0.5, 0.8, 0.9, 0.95, 1.0]),
)
def test_the_threshold_meets_the_target_with_the_fewest_rows_escalated(rows, target):
    scores = np.array([r[0] for r in rows])
    agree = np.array([r[1] for r in rows])
    failed = np.array([r[2] for r in rows])
    threshold, agreement, escalated, reached = pick_threshold(scores, agree, failed, target)
    kept = ~failed & (scores >= threshold)
    assert escalated == pytest.approx(1 - kept.sum() / len(rows))

    ok = ~failed
    curve = np.zeros(len(rows))
    curve[ok] = agreement_curve(scores[ok], agree[ok])

    def meets(rows: np.ndarray) -> bool:  # the fitted curve's mean over the rows kept
        return bool(curve[rows].mean() >= target - 1e-9)

    if reached:
        assert kept.any() and meets(kept)
        assert agreement == pytest.approx(agree[kept].mean())
        # No lower threshold (more rows kept) also meets the target.
        for t in np.unique(scores[~failed]):
            more = ~failed & (scores >= t)
            if more.sum() > kept.sum():
                assert not meets(more)
    else:
        assert not kept.any()
        for t in np.unique(scores[~failed]):
            assert not meets(~failed & (scores >= t))


def test_the_realised_share_note_says_when_it_is_off():
    cal = Calibration("confidence", 0.95, 0.8, 0.96, 0.2, 400, True)
    text, off = realised_note(cal, 2_050, 10_000)
    assert not off and "20.5%" in text and "20.0%" in text
    text, off = realised_note(cal, 4_000, 10_000)
    assert off and "may not represent" in text


def test_a_large_model_answering_the_pilot_rows_differently_later_is_said():
    """With reuse=False the pilot's rows are asked again, and answered otherwise."""
    seen: dict[str, int] = {}

    def fickle(request: emulator.Request) -> dict:
        answer = responder(request)
        if request.model == "gpt-4o":
            seen[request.prompt] = seen.get(request.prompt, 0) + 1
            if seen[request.prompt] > 1:  # the second time: another label
                answer["label"] = LABELS[(LABELS.index(answer["label"]) + 1) % 3]
        return answer

    quality = {"gpt-4o-mini": 0.7}
    with emulator.start(processing_seconds=0.02, responder=fickle, quality=quality) as server:
        job = nb.submit(
            data(200), "Review {i}", model=["gpt-4o-mini", "gpt-4o"], response_format=SCHEMA,
            escalate_when="auto", target=0.95, score="confidence", pilot_rows=100,
            client=client_for("openai", server), display=False, reuse=False,
        )  # fmt: skip
        job.wait(timeout=180, progress=False)
    assert job.counts["reused"] == 0  # reuse=False: the pilot's rows are asked again
    alerts = [n.text for n in job.snapshot().notes if n.kind == "alert"]
    assert any("pilot's rows" in t and "differently the second time" in t for t in alerts)


def test_preview_takes_a_calibrated_cascade_as_submit_does():
    df = data(5)
    shown = nb.preview(
        df, "Review {i}", model=["gpt-4o-mini", "gpt-4o"], response_format=SCHEMA,
        escalate_when="auto", target=0.95, score="confidence", pilot_rows=100, provider="local",
    )  # fmt: skip
    assert shown.estimate.upper_bound  # every row as if escalated: nothing sent to know more


def test_the_threshold_is_not_thrown_far_by_an_unlucky_pilot_where_agreement_is_flat():
    """A table whose agreement with the large model flattens near the target (the large
    model's own 3% of errors): escalating a tenth more rows buys under a point. Forty
    seeded pilots of 1,000 rows each choose a threshold; on the whole table each keeps
    agreement within 2 points of the target, and none escalates half of the rows (a
    threshold on the kept rows' measured agreement, cleared by half a standard error,
    escalated 99% on one of these pilots and more than 30% on twelve)."""
    rng = np.random.default_rng(0)
    n = 200_000
    small_ok = rng.random(n) < 0.88
    base = np.where(rng.random(n) < 0.1, rng.uniform(0.3, 0.7, n), rng.uniform(0.55, 0.99, n))
    score = np.where(small_ok, base, base * rng.uniform(0.3, 0.8, n))
    large_ok = rng.random(n) < 0.97
    agree = (small_ok & large_ok) | (~small_ok & ~large_ok & (rng.random(n) < 0.5))
    escalated, agreement = [], []
    for seed in range(40):
        rows = np.random.default_rng(seed + 1).choice(n, 1000, replace=False)
        threshold, _, _, reached = pick_threshold(
            score[rows], agree[rows], np.zeros(1000, dtype=bool), 0.95
        )
        assert reached
        kept = score >= threshold
        escalated.append(1 - kept.mean())
        agreement.append(agree[kept].mean())
    assert max(abs(a - 0.95) for a in agreement) <= 0.02
    assert max(escalated) < 0.5 and float(np.std(escalated)) < 0.08


def test_the_curve_bends_where_agreement_rises_steeply_over_a_narrow_band_of_scores():
    """Scores shaped like token probabilities: agreeing rows crowd near 1, disagreeing
    ones spread over 0.25-0.85. A straight logistic line overstates agreement in the
    band where the threshold falls (the kept rows agreed 93.1% on average against a 95%
    target); the curve of a 1,000-row pilot bends, and the kept rows agree as targeted
    on average over forty pilots."""
    rng = np.random.default_rng(0)
    n = 200_000
    agree = rng.random(n) < 0.8
    u = rng.random(n)
    answer = np.where(agree, 0.999 - 0.499 * u * u, 0.25 + 0.6 * u)
    score = np.minimum(answer, rng.uniform(0.95, 0.9995, n))
    realised = []
    for seed in range(40):
        rows = np.random.default_rng(seed + 1).choice(n, 1000, replace=False)
        threshold, _, _, _ = pick_threshold(
            score[rows], agree[rows], np.zeros(1000, dtype=bool), 0.95
        )
        realised.append(agree[score >= threshold].mean())
    assert abs(float(np.mean(realised)) - 0.95) < 0.005


def test_the_agreement_interval_is_wilsons_on_the_kept_rows():
    from nbbatch import _agreement
    from nbbatch._calibrate import agreement_interval

    rng = np.random.default_rng(3)
    scores = rng.uniform(size=400)
    agree = rng.uniform(size=400) < 0.6 + 0.4 * scores
    failed = rng.uniform(size=400) < 0.05
    kept = ~failed & (scores >= 0.3)
    low, high = agreement_interval(scores, agree, failed, 0.3)
    wilson = _agreement.share_interval(int(agree[kept].sum()), int(kept.sum()))
    assert (low, high) == pytest.approx((wilson.low, wilson.high))
    # An old calibration (kept before the interval was) still reads and shows.
    kept_dict = Calibration("confidence", 0.95, 0.8, 0.96, 0.2, 400, True).as_dict()
    old = Calibration.from_dict({k: v for k, v in kept_dict.items() if "agreement_" not in k})
    assert old.agreement_low is None and "interval" not in old.text()
