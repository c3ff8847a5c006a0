"""Prices from genai-prices' bundled data, overrides on top, and OpenAI's automatic prefix
caching in the estimate and in the actual cost (through the SDK and the emulator)."""

from __future__ import annotations

import re

import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import pricing

from .conftest import client_for


def test_models_the_old_table_lacked_have_batch_and_cache_prices():
    for model in ("claude-sonnet-4-6", "gpt-5.6", "gemini-2.5-flash"):
        r = pricing.rates(model)
        assert r is not None, model
        assert 0 < r.batch_input < r.input and 0 < r.batch_output < r.output
    haiku = pricing.rates("claude-haiku-4-5")
    assert haiku is not None
    # Anthropic's cache writes cost more than plain input, reads a tenth of it.
    assert haiku.cache_write > haiku.input > haiku.cached_input
    written = pricing.cost("claude-haiku-4-5", 1_000_000, 0, cache_write_tokens=1_000_000,
                           estimated=False)  # fmt: skip
    assert written.realtime == pytest.approx(haiku.cache_write)
    assert re.fullmatch(r"genai-prices [\d.]+ \(data to \d{4}-\d\d-\d\d\)", pricing.source())
    embed = nb.preview(pd.DataFrame({"t": ["a"]}), "{t}", model="text-embedding-3-small",
                       endpoint="/v1/embeddings").estimate  # fmt: skip
    assert "no batch rate there: half the real-time price" in embed.summary()


def test_overrides_win_and_unknown_models_stay_unknown(monkeypatch):
    monkeypatch.setattr(pricing, "_OVERRIDES", {})
    assert pricing.rates("house-model-3") is None
    assert str(pricing.cost("house-model-3", 10, 10, estimated=True)) == "unknown price"
    nb.pricing.set("gpt-4o-mini", input=10.0, output=20.0)
    assert pricing.cost("gpt-4o-mini", 1_000_000, 0, estimated=False).batch == 5.0
    assert pricing.rates("gpt-4o-mini-2024-07-18").source == "set with nb.pricing.set"


def test_pricing_never_starts_the_price_updater():
    from genai_prices import update_prices

    pricing.cost("gpt-4o", 1, 1, estimated=True)
    assert update_prices._shared_updater.thread is None
    assert not pricing.rates("gpt-4o").source.endswith("updater)")


def test_a_long_shared_instruction_is_cached_by_openai_in_the_estimate_and_the_cost(emu):
    system = "Label the review by the house rules below.\n" + "Rule: be exact. " * 380
    df = pd.DataFrame({"text": ["good kettle", "bad lamp", "fine boots", "okay bag"]})
    model = "gpt-5-mini"  # its batch rate has a cache-read price
    est = nb.preview(df, "{text}", model=model, system=system, provider="local").estimate
    assert est.cached_tokens > 0 and "caches a shared prefix" in est.summary()
    assert "genai-prices" in est.summary()
    client = client_for("openai", emu)
    job = nb.submit(df, "{text}", model=model, client=client, system=system)
    job.wait(timeout=30, progress=False)
    cached = job.results()["cached_tokens"].tolist()
    assert sorted(cached)[0] == 0  # the first request writes the cache
    hits = [c for c in cached if c]
    assert len(hits) == 3 and all(c >= 1024 and (c - 1024) % 128 == 0 for c in hits)
    snap = job.snapshot()
    uncached = pricing.cost(model, snap.input_tokens, snap.output_tokens, estimated=False)
    assert job.cost.batch < uncached.batch
    from nbbatch._panel import JobPanel

    assert f"prices: {pricing.source()}" in JobPanel(job).cost.value
