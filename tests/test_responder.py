"""The emulator as the user's own test double: ``nb.emulator.start(responder=fn)``, and
the default answers' spread, through nb.submit and the real SDKs over HTTP."""

from __future__ import annotations

from typing import Literal

import pandas as pd
from pydantic import BaseModel, Field

import nbbatch as nb
from nbbatch import emulator
from nbbatch.datasets import reviews

from .conftest import client_for, model_for


class Graded(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    confidence: float = Field(ge=0, le=1)


def test_a_responder_answers_every_row_on_both_providers(provider):
    seen: list[emulator.Request] = []

    def fn(request: emulator.Request) -> dict:
        seen.append(request)
        return {"sentiment": "negative" if "broke" in request.prompt else "positive",
                "confidence": 0.5}  # fmt: skip

    df = pd.DataFrame({"text": ["It broke", "Lovely", "It broke again"]})
    with emulator.start(processing_seconds=0.05, responder=fn) as emu:
        client = client_for(provider, emu)
        job = nb.submit(df, "{text}", model=model_for(client), client=client,
                        system="Grade it.", response_format=Graded)  # fmt: skip
        out = job.wait(timeout=30, progress=False).merge()
    assert out["sentiment"].tolist() == ["negative", "positive", "negative"]
    assert (out["response_status"] == "succeeded").all()
    assert {r.provider for r in seen} == {provider}
    assert all(r.system == "Grade it." and r.schema is not None for r in seen)
    assert sorted(r.prompt for r in seen) == sorted(df["text"])


def test_a_responder_that_raises_fails_its_row_with_the_reason(provider):
    def fn(request: emulator.Request) -> str:
        if "bad" in request.prompt:
            raise ValueError("no rule for this one")
        return "fine"

    df = pd.DataFrame({"text": ["good", "bad"]})
    with emulator.start(processing_seconds=0.05, responder=fn) as emu:
        client = client_for(provider, emu)
        job = nb.submit(df, "{text}", model=model_for(client), client=client, retries=0)
        out = job.wait(timeout=30, progress=False).merge()
    assert out["response"].tolist()[0] == "fine"
    assert out["response_status"].tolist() == ["succeeded", "failed"]
    assert "no rule for this one" in out["response_error"].iloc[1]


def test_default_structured_answers_use_every_enum_value_and_spread_numbers(emu):
    client = client_for("openai", emu)
    df = reviews(30)
    job = nb.submit(df, "{review}", model="gpt-4o-mini", client=client, response_format=Graded)
    out = job.wait(timeout=30, progress=False).merge()
    assert set(out["sentiment"]) == {"positive", "negative", "neutral"}
    confident = out["confidence"] >= 0.7
    assert 0 < confident.sum() < len(out)  # a filter on it keeps some rows, not all
    assert out["confidence"].between(0, 1).all()


def test_keyword_responder_labels_reviews_as_a_stand_in_for_a_model(emu):
    fn = emulator.keyword_responder(
        {"positive": ["love", "great"], "negative": ["broke", "avoid"]}, default="neutral"
    )
    df = reviews(12)
    request = emulator.Request("openai", "/v1/chat/completions", "m", "I love it")
    assert fn(request) == "positive"
    with emulator.start(processing_seconds=0.05, responder=fn) as own:
        client = client_for("openai", own)
        job = nb.submit(df, "{review}", model="gpt-4o-mini", client=client,
                        response_format=Graded)  # fmt: skip
        out = job.wait(timeout=30, progress=False).merge()
    assert set(out["sentiment"]) <= {"positive", "negative", "neutral"}
    # Keyword hits are confident, misses are not.
    hit = out["review"].str.contains(r"\b(?:love|great|broke|avoid)\b", case=False)
    assert (out.loc[hit, "confidence"] >= 0.75).all()
    assert (out.loc[~hit, "confidence"] < 0.7).all()
    assert (out.loc[~hit, "sentiment"] == "neutral").all()
