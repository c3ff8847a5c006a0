"""Batch queue quotas in the emulator, seen through the official SDKs.

Each provider refuses work over its queue limit its own way (OpenAI: the batch is
created and fails validation; Anthropic and Gemini: the create gets a 429), counts what
is queued across batches (per model, except Anthropic's queue which all models share),
and frees it as batches end. Time is a fake clock the tests move by hand.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest
from emu_helpers import anthropic_client, chat_line, jsonl, openai_client
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from nbbatch import emulator
from nbbatch.emulator import _background

# One batch's timeline on the fake clock: 1 s validating, 10 s in progress, 1 s finalizing.
TIMINGS = {"validating_seconds": 1.0, "processing_seconds": 10.0, "finalizing_seconds": 1.0}


def _openai_batch(client: openai.OpenAI, rows: list[dict]) -> Any:
    file = client.files.create(file=("in.jsonl", jsonl(rows)), purpose="batch")
    return client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def _rows(n: int, chars: int, model: str = "gpt-4o-mini", tag: str = "r") -> list[dict]:
    """``n`` chat rows of ``chars`` characters each (the emulator counts chars / 4 tokens)."""
    return [chat_line(f"{tag}{i}", "x" * chars, model=model) for i in range(n)]


def _msg(custom_id: str, model: str = "claude-haiku-4-5") -> dict:
    return {
        "custom_id": custom_id,
        "params": {
            "model": model,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "hello"}],
        },
    }


def _gemini(emu: emulator.Emulator) -> genai.Client:
    return genai.Client(
        api_key="test", http_options=genai_types.HttpOptions(base_url=emu.gemini_base_url)
    )


def _gemini_src(n: int, chars: int) -> list[Any]:
    return [{"contents": [{"parts": [{"text": "x" * chars}], "role": "user"}]} for _ in range(n)]


# ------------------------------------------------------------------------- OpenAI


def test_openai_over_the_tier_limit_is_created_then_fails_with_the_limit(clock) -> None:
    # Tier 1 allows 90,000 queued tokens for gpt-4o and 2,000,000 for gpt-4o-mini.
    with (
        emulator.start(clock=clock, tier="tier-1", **TIMINGS) as emu,
        openai_client(emu) as client,
    ):
        big = _rows(2, 200_000, model="gpt-4o")  # 100,000 tokens
        refused = _openai_batch(client, big)
        assert refused.status == "validating"  # created: the refusal comes in validation
        clock.advance(1.5)
        failed = client.batches.retrieve(refused.id)
        assert failed.status == "failed"
        assert failed.errors is not None and failed.errors.data is not None
        error = failed.errors.data[0]
        assert error.code == "token_limit_exceeded"
        assert error.message is not None
        assert "Enqueued token limit reached for gpt-4o " in error.message
        assert "Limit: 90,000 enqueued tokens." in error.message
        # The same tokens fit gpt-4o-mini's tier-1 figure.
        fine = _openai_batch(client, _rows(2, 200_000, model="gpt-4o-mini"))
        clock.advance(1.5)
        assert client.batches.retrieve(fine.id).status == "in_progress"


def test_openai_queue_is_per_model_and_released_when_batches_end(clock) -> None:
    with (
        emulator.start(clock=clock, enqueued_token_limit=30, **TIMINGS) as emu,
        openai_client(emu) as client,
    ):
        first = _openai_batch(client, _rows(2, 40))  # 20 tokens of gpt-4o-mini
        other_model = _openai_batch(client, _rows(2, 40, model="gpt-4o"))
        over = _openai_batch(client, _rows(2, 40, tag="s"))
        clock.advance(1.5)
        assert client.batches.retrieve(first.id).status == "in_progress"
        assert client.batches.retrieve(other_model.id).status == "in_progress"
        assert client.batches.retrieve(over.id).status == "failed"

        # A failed batch holds nothing; a completed one frees its tokens.
        clock.advance(12)
        assert client.batches.retrieve(first.id).status == "completed"
        again = _openai_batch(client, _rows(2, 40, tag="t"))
        clock.advance(1.5)
        assert client.batches.retrieve(again.id).status == "in_progress"

        # Cancelled: the tokens come back once the cancel is done.
        client.batches.cancel(again.id)
        clock.advance(1)
        assert client.batches.retrieve(again.id).status == "cancelled"
        after_cancel = _openai_batch(client, _rows(2, 40, tag="u"))
        clock.advance(1.5)
        assert client.batches.retrieve(after_cancel.id).status == "in_progress"


def test_openai_expired_batch_releases_its_tokens(clock) -> None:
    with (
        emulator.start(clock=clock, enqueued_token_limit=30, expire_rate=1.0, **TIMINGS) as emu,
        openai_client(emu) as client,
    ):
        first = _openai_batch(client, _rows(2, 40))
        clock.advance(1.5)
        assert client.batches.retrieve(first.id).status == "in_progress"
        emu.configure(expire_rate=0.0)
        clock.advance(10)
        assert client.batches.retrieve(first.id).status == "expired"
        second = _openai_batch(client, _rows(2, 40, tag="s"))
        clock.advance(1.5)
        assert client.batches.retrieve(second.id).status == "in_progress"


# ---------------------------------------------------------------------- Anthropic


def test_anthropic_queue_limit_refuses_with_429_and_retry_after(clock) -> None:
    with (
        emulator.start(clock=clock, anthropic_queue_limit=5, **TIMINGS) as emu,
        anthropic_client(emu, max_retries=0) as client,
    ):
        first = client.messages.batches.create(requests=[_msg(f"a{i}") for i in range(4)])  # type: ignore[list-item]
        with pytest.raises(anthropic.RateLimitError) as caught:
            # Another model: the queue is shared by all models.
            client.messages.batches.create(
                requests=[_msg(f"b{i}", model="claude-sonnet-4-5") for i in range(2)]  # type: ignore[misc]
            )
        err = caught.value
        assert err.status_code == 429
        assert isinstance(err.body, dict)
        assert err.body["type"] == "error"
        assert err.body["error"]["type"] == "rate_limit_error"
        assert "5 batch requests" in err.body["error"]["message"]
        wait = int(err.response.headers["retry-after"])
        assert 1 <= wait <= 11  # room comes as the first batch is processed

        # Requests leave the queue as they are processed: half way through, 2 are left.
        clock.advance(1 + 5)
        client.messages.batches.create(requests=[_msg(f"c{i}") for i in range(3)])  # type: ignore[misc]
        with pytest.raises(anthropic.RateLimitError):
            client.messages.batches.create(requests=[_msg("d0")])  # type: ignore[list-item]

        # Ended (and cancelled) batches hold nothing.
        clock.advance(5)
        assert client.messages.batches.retrieve(first.id).processing_status == "ended"
        client.messages.batches.create(requests=[_msg("e0")])  # type: ignore[list-item]


def test_anthropic_cancelled_batch_releases_the_queue(clock) -> None:
    with (
        emulator.start(clock=clock, anthropic_queue_limit=3, **TIMINGS) as emu,
        anthropic_client(emu, max_retries=0) as client,
    ):
        first = client.messages.batches.create(requests=[_msg(f"a{i}") for i in range(3)])  # type: ignore[misc]
        with pytest.raises(anthropic.RateLimitError):
            client.messages.batches.create(requests=[_msg("b0")])  # type: ignore[list-item]
        client.messages.batches.cancel(first.id)
        clock.advance(1)
        assert client.messages.batches.retrieve(first.id).processing_status == "ended"
        client.messages.batches.create(requests=[_msg("c0")])  # type: ignore[list-item]


def test_anthropic_create_rate_is_a_token_bucket(clock) -> None:
    with (
        emulator.start(clock=clock, anthropic_create_rate=2, **TIMINGS) as emu,
        anthropic_client(emu, max_retries=0) as client,
    ):
        client.messages.batches.create(requests=[_msg("a")])  # type: ignore[list-item]
        client.messages.batches.create(requests=[_msg("b")])  # type: ignore[list-item]
        with pytest.raises(anthropic.RateLimitError) as caught:
            client.messages.batches.create(requests=[_msg("c")])  # type: ignore[list-item]
        assert caught.value.response.headers["retry-after"] == "30"  # 2 a minute: one per 30 s
        assert "2 requests per minute" in str(caught.value)
        clock.advance(30)
        client.messages.batches.create(requests=[_msg("c")])  # type: ignore[list-item]


def test_anthropic_tier_1_allows_fifty_creates_a_minute(clock) -> None:
    with (
        emulator.start(clock=clock, tier="tier-1", **TIMINGS) as emu,
        anthropic_client(emu, max_retries=0) as client,
    ):
        for i in range(50):
            client.messages.batches.create(requests=[_msg(f"r{i}")])  # type: ignore[list-item]
        with pytest.raises(anthropic.RateLimitError):
            client.messages.batches.create(requests=[_msg("one-more")])  # type: ignore[list-item]


# ------------------------------------------------------------------------- Gemini


def test_gemini_over_the_limit_is_refused_with_resource_exhausted(clock) -> None:
    with emulator.start(clock=clock, gemini_enqueued_token_limit=30, **TIMINGS) as emu:
        g = _gemini(emu)
        first = g.batches.create(model="gemini-2.5-flash", src=_gemini_src(2, 40))  # 20 tokens
        with pytest.raises(genai_errors.ClientError) as caught:
            g.batches.create(model="gemini-2.5-flash", src=_gemini_src(2, 40))
        err = caught.value
        assert err.code == 429
        assert err.status == "RESOURCE_EXHAUSTED"
        assert "You exceeded your current quota" in str(err.message)
        assert err.details["error"]["details"][0]["@type"] == "type.googleapis.com/google.rpc.Help"
        before = emu.stats()["gemini_batches_created"]
        # Per model: another model has its own queue.
        g.batches.create(model="gemini-2.5-pro", src=_gemini_src(2, 40))
        assert emu.stats()["gemini_batches_created"] == before + 1
        # Once the first job ends its tokens are free again.
        clock.advance(13)
        assert first.name is not None
        done = g.batches.get(name=first.name)
        assert done.state == genai_types.JobState.JOB_STATE_SUCCEEDED
        g.batches.create(model="gemini-2.5-flash", src=_gemini_src(2, 40))


def test_gemini_cancelled_job_releases_its_tokens(clock) -> None:
    with emulator.start(clock=clock, gemini_enqueued_token_limit=30, **TIMINGS) as emu:
        g = _gemini(emu)
        first = g.batches.create(model="gemini-2.5-flash", src=_gemini_src(2, 40))
        assert first.name is not None
        g.batches.cancel(name=first.name)
        clock.advance(1)
        assert g.batches.get(name=first.name).state == genai_types.JobState.JOB_STATE_CANCELLED
        g.batches.create(model="gemini-2.5-flash", src=_gemini_src(2, 40))


# -------------------------------------------------------------------------- knobs


def test_quota_knobs_are_checked() -> None:
    with pytest.raises(ValueError, match="tier must be one of"):
        emulator.start(tier="gold")
    with pytest.raises(ValueError, match="anthropic_queue_limit must be a positive integer"):
        emulator.start(anthropic_queue_limit=0)


def test_background_reads_quotas_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(_background.TIER_ENV, "tier-2")
    monkeypatch.setenv(
        _background.QUOTAS_ENV, "enqueued_token_limit=150_000, anthropic_create_rate=10"
    )
    assert _background.quotas_from_env() == {
        "tier": "tier-2",
        "enqueued_token_limit": 150_000,
        "anthropic_create_rate": 10,
    }
    monkeypatch.setenv(_background.QUOTAS_ENV, "queue=5")
    with pytest.raises(ValueError, match="NBBATCH_EMULATOR_QUOTAS takes name=value"):
        _background.quotas_from_env()


def test_cli_takes_a_tier() -> None:
    from nbbatch.emulator.__main__ import main

    with pytest.raises(SystemExit):
        main(["--tier", "tier-9"])


def test_the_background_emulator_applies_the_quotas_of_its_environment(
    nbbatch_home, monkeypatch
) -> None:
    import time

    monkeypatch.setenv(_background.QUOTAS_ENV, "enqueued_token_limit=5")
    running = emulator.background(nbbatch_home)
    client = openai.OpenAI(base_url=running.url + "/v1", api_key=running.token, max_retries=0)
    with client:
        batch = _openai_batch(client, _rows(2, 40))  # 20 tokens, over the 5 allowed
        deadline = time.monotonic() + 60
        while (batch := client.batches.retrieve(batch.id)).status == "validating":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert batch.status == "failed"
        assert batch.errors is not None and batch.errors.data is not None
        assert batch.errors.data[0].code == "token_limit_exceeded"
