"""Structured outputs into columns, cost before and after, and trying prompts in real time,
through the public API and the real SDKs against the emulator."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import pandas as pd
import pytest
from pydantic import BaseModel

import nbbatch as nb
from nbbatch import _structured as structured
from nbbatch import emulator

from .conftest import client_for, model_for


class Address(BaseModel):
    city: str
    country: str


class Review(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    confidence: float
    tags: list[str]
    shipping_to: Address


FIELDS = ["sentiment", "confidence", "tags", "shipping_to.city", "shipping_to.country"]
TEXTS = ["Loved it, arrived in Paris", "Broke at once", "It is fine", "Great kettle"]


def reviews() -> pd.DataFrame:
    return pd.DataFrame({"text": TEXTS}, index=["a", "b", "c", "d"])


def test_a_pydantic_model_becomes_columns(client):
    df = reviews()
    job = nb.submit(df, "Analyse: {text}", model=model_for(client), client=client,
                    response_format=Review, output="review")  # fmt: skip
    out = job.wait(timeout=30, progress=False).merge()
    assert list(out.columns) == ["text", *FIELDS, "review_status", "review_error", "review_raw"]
    assert (out["review_status"] == "succeeded").all()
    assert out["sentiment"].isin(["positive", "negative", "neutral"]).all()
    assert out["tags"].map(lambda v: isinstance(v, list)).all()
    assert out["shipping_to.city"].map(lambda v: isinstance(v, str)).all()
    schema = structured.schema_of(job.spec.response_format)
    for raw in out["review_raw"]:
        jsonschema.validate(json.loads(raw), schema)


def test_a_json_schema_dict_works_the_same(client):
    schema = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": ["spam", "ham"]},
            "score": {"type": "integer"},
        },
        "required": ["label", "score"],
    }  # fmt: skip
    job = nb.submit(reviews(), "{text}", model=model_for(client), client=client,
                    response_format=schema)  # fmt: skip
    out = job.wait(timeout=30, progress=False).merge()
    assert out["label"].isin(["spam", "ham"]).all()
    assert out["score"].map(lambda v: isinstance(v, int)).all()


@pytest.mark.parametrize("fault", ["invalid_output_rate", "truncate_rate"])
def test_invalid_or_cut_off_replies_fail_and_succeed_on_resubmit(provider, fault):
    with emulator.start(processing_seconds=0.05, **{fault: 1.0}) as emu:
        client = client_for(provider, emu)
        job = nb.submit(reviews(), "{text}", model=model_for(client), client=client,
                        response_format=Review, retries=0)  # fmt: skip
        out = job.wait(timeout=30, progress=False).merge()
        assert (out["response_status"] == "failed").all()
        assert out["response_error"].str.startswith("invalid_output").all()
        if fault == "truncate_rate":
            assert out["response_error"].str.contains("max_tokens").all()
        assert out["response_raw"].notna().all()  # the raw text is kept
        assert out["sentiment"].isna().all()
        out = job.resubmit_failed().wait(timeout=30, progress=False).merge()
        assert (out["response_status"] == "succeeded").all()
        assert out["sentiment"].notna().all()


def test_a_schema_field_that_would_overwrite_a_column_is_refused_first(client, emu):
    df = reviews().assign(sentiment="x")
    emu.clear_log()
    with pytest.raises(nb.InputError, match="sentiment"):
        nb.submit(df, "{text}", model=model_for(client), client=client, response_format=Review)
    assert emu.request_log == []


def test_cost_after_the_job_is_computed_from_reported_usage(client):
    job = nb.submit(reviews(), "{text}", model=model_for(client), client=client)
    before = job.cost
    assert before.estimated and before.batch is not None and before.batch > 0
    job.wait(timeout=30, progress=False)
    usage = job.results()[["input_tokens", "output_tokens", "cached_tokens"]].sum()
    p_in, p_cached, p_out = nb.pricing.price_of(job.model)
    fresh = usage["input_tokens"] - usage["cached_tokens"]
    realtime = (
        fresh * p_in + usage["cached_tokens"] * p_cached + usage["output_tokens"] * p_out
    ) / 1e6
    cost = job.cost
    assert not cost.estimated
    assert cost.realtime == pytest.approx(realtime)
    assert cost.batch == pytest.approx(realtime / 2)


def test_cached_system_prompt_reads_are_counted_at_the_cache_price(emu):
    client = client_for("anthropic", emu)
    system = "You are a careful annotator. " * 50
    job = nb.submit(reviews(), "{text}", model="claude-haiku-4-5", client=client,
                    system=system, cache_system=True)  # fmt: skip
    job.wait(timeout=30, progress=False)
    res = job.results()
    assert res["cached_tokens"].gt(0).sum() == 3  # the first request writes the cache
    snap = job.snapshot()
    assert snap.cached_tokens == res["cached_tokens"].sum()
    uncached = nb.pricing.cost(job.model, snap.input_tokens, snap.output_tokens, 0, estimated=False)
    assert job.cost.batch < uncached.batch


def test_unknown_models_have_an_unknown_price_and_prices_can_be_set(monkeypatch):
    monkeypatch.setattr(nb.pricing, "_OVERRIDES", {})
    assert str(nb.pricing.cost("my-own-model", 1000, 10, estimated=True)) == "unknown price"
    nb.pricing.set("my-own-model", input=2.0, output=4.0)
    assert nb.pricing.cost("my-own-model", 1_000_000, 0, estimated=False).realtime == 2.0


def test_preview_shows_requests_and_the_whole_jobs_estimate(emu):
    df = pd.DataFrame({"text": [f"review {i} " * 10 for i in range(100)]})
    emu.clear_log()
    pv = nb.preview(df, "Classify: {text}", model="gpt-4o-mini", n=3, max_tokens=5)
    assert emu.request_log == []
    assert len(pv) == 3 and list(pv.columns) == ["custom_id", "prompt", "input_tokens"]
    assert pv["prompt"].iloc[0] == "Classify: " + df["text"].iloc[0]
    est = pv.estimate
    assert est.rows == 100 and est.output_tokens == 500
    assert est.cost.batch == pytest.approx(est.cost.realtime / 2)
    assert "batch" in repr(pv) and "real time" in repr(pv)


def test_max_cost_refuses_an_expensive_job_and_sends_nothing(client, emu):
    df = pd.DataFrame({"text": ["x" * 4000] * 50})
    emu.clear_log()
    with pytest.raises(nb.InputError, match="above max_cost") as err:
        nb.submit(df, "{text}", model=model_for(client), client=client, max_cost=0.0001)
    assert "$" in str(err.value)
    # At most the free model lookup (made once per process, so only when this test runs
    # first): no upload, no batch.
    assert [r for r in emu.request_log if "/models" not in r[1]] == []
    assert nb.jobs().empty
    job = nb.submit(df.head(2), "{text}", model=model_for(client), client=client, max_cost=10.0)
    assert job.wait_sent().batch_ids


def test_try_now_answers_in_real_time_with_no_batch(client, emu):
    df = pd.DataFrame({"text": ["one", "[[emulator:fail]] two", None]})
    before = emu.stats()
    out = nb.try_now(df, "Q: {text}", model=model_for(client), client=client)
    after = emu.stats()
    batches = ("openai_batches_created", "anthropic_batches_created", "gemini_batches_created")
    assert sum(after[k] for k in batches) == sum(before[k] for k in batches)
    assert after["realtime_requests"] >= before["realtime_requests"] + 2
    assert out["response_status"].tolist() == ["succeeded", "failed", "skipped"]
    assert out["response"].iloc[0] == emulator.echo_text("Q: one")
    # In the provider's own words (Gemini: Google's INVALID_ARGUMENT status).
    assert out["response_error"].iloc[1].startswith(("invalid_request_error", "invalid_arg"))
    structured_out = nb.try_now(df.head(1), "{text}", model=model_for(client), client=client,
                                response_format=Review)  # fmt: skip
    assert structured_out["sentiment"].notna().all()


def test_embeddings_become_one_vector_column(emu):
    client = client_for("openai", emu)
    df = pd.DataFrame({"text": ["cat", "dog", "cat"]})
    job = nb.submit(df, "{text}", model="text-embedding-3-small", client=client,
                    endpoint="/v1/embeddings", output="vec")  # fmt: skip
    out = job.wait(timeout=30, progress=False).merge()
    vectors = out["vec"].tolist()
    assert all(len(v) == emulator.DEFAULT_EMBEDDING_DIMENSIONS for v in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert job.counts["deduplicated"] == 1
    quick = nb.try_now(df, "{text}", model="text-embedding-3-small", client=client,
                       endpoint="/v1/embeddings", output="vec")  # fmt: skip
    assert quick["vec"].tolist() == vectors
