"""``score="logprobs"``: OpenAI's token log-probabilities as each row's score, and a
cascade calibrated on them; and the calibration pilot's cost inside ``max_cost``.

End to end through the official SDKs over HTTP to an emulator whose models differ in
quality (its log-probabilities are lower, on the whole, on the rows a model's quality
makes it disagree)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator

from ._helpers import LABEL_SCHEMA as SCHEMA
from ._helpers import numbered_rows as data
from ._helpers import truth
from .conftest import batches_created, client_for

QUALITY = {"gpt-4o-mini": 0.8, "gpt-4o": 1.0}


def responder(request: emulator.Request) -> dict:
    return {"label": truth(int(request.prompt.split()[-1]))}


@pytest.fixture(scope="module")
def server():
    with emulator.start(processing_seconds=0.02, responder=responder, quality=QUALITY) as s:
        yield s


def test_logprobs_give_each_row_a_score_that_is_lower_where_the_model_disagrees(server):
    df = data(200)
    job = nb.submit(
        df, "Review {i}", model="gpt-4o-mini", response_format=SCHEMA, logprobs=True,
        client=client_for("openai", server), display=False,
    )  # fmt: skip
    job.wait(timeout=120, progress=False)
    out = job.merge(df)
    cols = list(out.columns)
    assert cols.index("response_score") == cols.index("response_error") + 1
    assert cols[-1] == "response_raw"
    score = out["response_score"].to_numpy(dtype=float)
    assert ((score > 0) & (score <= 1)).all()
    agrees = (out["label"] == [truth(i) for i in range(200)]).to_numpy()
    assert 0 < (~agrees).sum() < 80
    # A score, not a sort key: the disagreeing rows are less sure on the whole, with overlap.
    assert score[~agrees].mean() < score[agrees].mean() - 0.15


def test_a_cascade_calibrated_on_logprobs_escalates_the_low_scored_rows(server):
    df = data(300)
    job = nb.submit(
        df, "Review {i}", model=["gpt-4o-mini", "gpt-4o"], response_format=SCHEMA,
        escalate_when="auto", target=0.95, score="logprobs", pilot_rows=150,
        client=client_for("openai", server), display=False,
    )  # fmt: skip
    cal = job.calibration
    assert cal is not None and cal.reached and cal.score == "logprobs"
    # Measured on the pilot's kept rows (the threshold is chosen on a fitted curve).
    assert cal.expected_agreement >= 0.88
    assert 0.05 < cal.expected_escalation < 0.6
    assert cal.pilot_cost is not None and cal.pilot_cost > 0
    notes = [n.text for n in job.snapshot().notes]
    assert any("least likely token's probability <" in t for t in notes)
    job.wait(timeout=180, progress=False)
    out = job.merge(df)
    kept = (out["response_model"] == "gpt-4o-mini").to_numpy()
    score = out["response_score"].to_numpy(dtype=float)
    # Rows kept on the small model scored at or above the threshold; the rest went on.
    assert (score[kept] >= cal.threshold).all()
    agree = (out["label"] == [truth(i) for i in range(300)]).to_numpy()
    assert agree[kept].mean() >= 0.9  # the large model is the truth here
    assert agree[~kept].all()
    # The escalated rows' score is the large model's (asked for log-probabilities too).
    assert np.isfinite(score[~kept]).all()


def test_logprobs_refused_where_they_cannot_be_had_before_anything_is_sent(server):
    df = data(30)
    base = dict(escalate_when="auto", target=0.9, score="logprobs", display=False)
    openai = client_for("openai", server)
    cases = [
        (dict(model=["gpt-4o-mini", "gpt-4o"], client=openai, pack=5), "pack="),
        (
            dict(model=["gpt-4o-mini", "gpt-4o"], client=openai, endpoint="/v1/responses"),
            "chat completions",
        ),
        (
            dict(
                model=["claude-haiku-4-5", "claude-sonnet-4-5"],
                client=client_for("anthropic", server),
            ),
            "anthropic does not return them",
        ),
        (
            dict(
                model=["gemini-2.5-flash-lite", "gemini-2.5-flash"],
                client=client_for("gemini", server),
            ),
            "gemini does not return them",
        ),
    ]
    before = batches_created(server)
    for kwargs, words in cases:
        with pytest.raises(nb.InputError, match=re.escape(words)):
            nb.submit(df, "Review {i}", response_format=SCHEMA, **{**base, **kwargs})
    assert batches_created(server) == before
    assert nb.jobs().empty


def _job_alone(df: pd.DataFrame, client) -> float:
    """The cascade's max_cost upper bound on ``df`` alone (no pilot)."""
    est = nb.preview(
        df, "Review {i}", model=["gpt-4o-mini", "gpt-4o"], escalate_when="failed",
        response_format=SCHEMA, max_tokens=20, client=client,
    ).estimate  # fmt: skip
    return float(est.upper_bound)


def test_max_cost_counts_the_calibration_pilot_before_anything_is_sent(server):
    client = client_for("openai", server)
    df = data(400)
    alone = _job_alone(df, client)
    kwargs = dict(
        model=["gpt-4o-mini", "gpt-4o"], response_format=SCHEMA, escalate_when="auto",
        target=0.95, score="logprobs", pilot_rows=200, max_tokens=20, client=client,
        display=False, reuse=False,
    )  # fmt: skip
    before = batches_created(server)
    # Enough for the job without a pilot, not for both: refused, naming both figures.
    with pytest.raises(nb.InputError) as info:
        nb.submit(df, "Review {i}", max_cost=alone * 1.01, **kwargs)
    text = str(info.value)
    assert "pilot (200 rows" in text and "its job (at most" in text
    assert "above max_cost" in text and "nothing was sent" in text
    money = re.findall(r"\$[0-9.,]+", text)
    assert len(money) >= 4  # the pilot's, the job's, their sum and max_cost
    assert batches_created(server) == before and nb.jobs().empty
    # With room for both, it runs, and pilot and job together stay within it.
    budget = alone * 1.6
    job = nb.submit(df, "Review {i}", max_cost=budget, **kwargs)
    cal = job.calibration
    assert cal is not None and cal.pilot_cost is not None and cal.pilot_cost > 0
    job.wait(timeout=180, progress=False)
    total = (job.cost.batch or 0) + cal.pilot_cost
    assert total <= budget


def test_with_reuse_the_job_does_not_count_the_pilots_rows_again(server):
    client = client_for("openai", server)
    df = data(400)
    figures = {}
    for reuse in (True, False):
        with pytest.raises(nb.InputError) as info:
            nb.submit(
                df, "Review {i}", model=["gpt-4o-mini", "gpt-4o"], response_format=SCHEMA,
                escalate_when="auto", target=0.95, score="logprobs", pilot_rows=200,
                max_tokens=20, client=client, display=False, max_cost=1e-6, reuse=reuse,
            )  # fmt: skip
        found = re.search(r"its job \(at most \$([0-9.]+)", str(info.value))
        assert found is not None
        figures[reuse] = float(found.group(1))
    # The small model's pilot answers are taken by the job's first stage, not paid again.
    assert figures[True] < figures[False]
    assert nb.jobs().empty


def test_the_score_survives_the_real_time_fallback_and_is_written_to_parquet(server, tmp_path):
    import pyarrow.parquet as pq

    df = pd.DataFrame({"i": [1, 2]}, index=["a", "b"])
    df["text"] = ["Review 1", f"{emulator.TRANSIENT_MARKER} Review 2"]
    job = nb.submit(
        df, "{text}", model="gpt-4o-mini", logprobs=True, retries=0, fallback="realtime",
        client=client_for("openai", server), display=False,
    )  # fmt: skip
    job.wait(timeout=120, progress=False)
    assert job.results()["origin"].tolist() == ["batch", "realtime"]
    out = job.merge(df)
    assert out["response_status"].tolist() == ["succeeded", "succeeded"]
    score = out["response_score"].to_numpy(dtype=float)
    assert np.isfinite(score).all() and ((score > 0) & (score <= 1)).all()
    written = pq.read_table(job.to_parquet(tmp_path / "out.parquet")).to_pandas()
    assert written["response_score"].to_numpy(dtype=float) == pytest.approx(score)
    # A job that did not ask for log-probabilities has no score column.
    plain = nb.submit(
        df.iloc[:1], "{text}", model="gpt-4o-mini", client=client_for("openai", server),
        display=False,
    )  # fmt: skip
    plain.wait(timeout=120, progress=False)
    assert "response_score" not in plain.merge(df.iloc[:1]).columns
