"""The score column (``{output}_score``: the probability of a reply's least likely
token, for a job or a try that asked for ``logprobs=True``) wherever answers are read:
``merge``/``to_parquet`` had it; ``job.results()`` (as ``score``) and the real-time
path (``nb.try_now``, and a batch row answered by the real-time fallback) have it too.
End to end through the OpenAI SDK over HTTP to the emulator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator

from ._helpers import LABEL_SCHEMA as SCHEMA
from ._helpers import LABELS
from .conftest import client_for


def responder(request: emulator.Request) -> dict:
    return {"label": LABELS[int(request.prompt.split()[-1]) % 3]}


@pytest.fixture(scope="module")
def server():
    quality = {"gpt-4o-mini": 0.7}
    with emulator.start(processing_seconds=0.02, responder=responder, quality=quality) as s:
        yield s


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"text": [f"Review {i}" for i in range(n)]}, index=[f"r{i}" for i in range(n)]
    )


def test_results_carry_the_score_merge_has_a_fallback_row_included(server):
    df = frame(30)
    df.loc["r29", "text"] = f"{emulator.TRANSIENT_MARKER} Review 29"
    job = nb.submit(
        df, "{text}", model="gpt-4o-mini", response_format=SCHEMA, logprobs=True, retries=0,
        fallback="realtime", client=client_for("openai", server), display=False,
    )  # fmt: skip
    job.wait(timeout=120, progress=False)
    results = job.results()
    assert results["origin"].iloc[-1] == "realtime"
    merged = job.merge(df)
    score = results["score"].to_numpy(dtype=float)
    assert np.isfinite(score).all() and ((score > 0) & (score <= 1)).all()
    assert score == pytest.approx(merged["response_score"].to_numpy(dtype=float))
    assert results["score"].dtype == "Float64"
    # A job that asked for no log-probabilities has no score in its results.
    plain = nb.submit(
        df.iloc[:2], "{text}", model="gpt-4o-mini", client=client_for("openai", server),
        display=False,
    )  # fmt: skip
    plain.wait(timeout=120, progress=False)
    assert "score" not in plain.results().columns


def test_try_now_answers_with_the_score_a_batch_gives_the_same_rows(server):
    df = frame(12)
    client = client_for("openai", server)
    now = nb.try_now(
        df, "{text}", model="gpt-4o-mini", response_format=SCHEMA, logprobs=True, client=client
    )
    cols = list(now.columns)
    assert cols.index("response_score") == cols.index("response_error") + 1
    job = nb.submit(
        df, "{text}", model="gpt-4o-mini", response_format=SCHEMA, logprobs=True,
        client=client, display=False,
    )  # fmt: skip
    job.wait(timeout=120, progress=False)
    batch = job.merge(df)
    assert now["label"].tolist() == batch["label"].tolist()
    assert now["response_score"].to_numpy(dtype=float) == pytest.approx(
        batch["response_score"].to_numpy(dtype=float)
    )
    # Rows the model gets wrong are scored lower on the whole (the emulator's quality).
    wrong = now["label"] != [LABELS[i % 3] for i in range(12)]
    assert 0 < wrong.sum() < 12
    assert now["response_score"][wrong].mean() < now["response_score"][~wrong].mean()
    # Without logprobs=True, no score column.
    plain = nb.try_now(df.iloc[:2], "{text}", model="gpt-4o-mini", client=client)
    assert "response_score" not in plain.columns
