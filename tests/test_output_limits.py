"""``max_tokens`` above a model's published output limit is refused before anything is
sent (submit, preview, a cascade's later model, resubmit_failed and escalate), and a value
at the limit is sent and answered."""

from __future__ import annotations

import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator
from nbbatch.emulator import _rules
from nbbatch.providers import anthropic as anthropic_provider
from nbbatch.providers import openai as openai_provider

from .conftest import batch_ids_at, batches_created, client_for

DF = pd.DataFrame({"text": ["a", "b", "c"]})


def refused(emu, client, match: str, **kwargs) -> str:
    """Submit, expect an InputError matching ``match``, and check nothing was sent."""
    before, ids = batches_created(emu), batch_ids_at(client)
    uploads = emu.stats()["files_uploaded"]
    with pytest.raises(nb.InputError, match=match) as info:
        nb.submit(DF, "{text}", client=client, display=False, **kwargs)
    assert batches_created(emu) == before and batch_ids_at(client) == ids
    assert emu.stats()["files_uploaded"] == uploads
    assert nb.jobs().empty
    return str(info.value)


def test_over_the_limit_on_openai_is_refused_before_any_batch_exists():
    with emulator.start(processing_seconds=0.05) as emu:
        client = client_for("openai", emu)
        message = refused(emu, client, "output limit", model="gpt-4o-mini", max_tokens=100_000)
        assert batch_ids_at(client) == [] and batches_created(emu) == 0
    # The model, its limit and the fix.
    assert "gpt-4o-mini" in message and "16,384 tokens" in message
    assert "max_tokens=16384 or less" in message and "nothing was sent" in message


def test_over_the_limit_on_anthropic_is_refused_before_any_batch_exists():
    with emulator.start(processing_seconds=0.05) as emu:
        client = client_for("anthropic", emu)
        message = refused(emu, client, "output limit", model="claude-haiku-4-5", max_tokens=64_001)
        assert batch_ids_at(client) == []
    assert "claude-haiku-4-5" in message and "64,000 tokens" in message
    assert "max_tokens=64000 or less" in message


def test_a_dated_snapshot_has_its_model_limit_unless_its_own_is_published(emu):
    anthropic = client_for("anthropic", emu)
    refused(emu, anthropic, "64,000", model="claude-haiku-4-5-20251001", max_tokens=64_001)
    openai = client_for("openai", emu)
    # gpt-4o-2024-05-13 writes at most 4,096 tokens, the later gpt-4o snapshots 16,384.
    refused(emu, openai, "4,096", model="gpt-4o-2024-05-13", max_tokens=4_097)
    with pytest.raises(nb.InputError, match="16,384"):
        nb.preview(DF, "{text}", model="gpt-4o-2024-08-06", max_tokens=16_385)
    nb.preview(DF, "{text}", model="gpt-4o-2024-08-06", max_tokens=4_097)


@pytest.mark.parametrize(
    ("provider", "model", "limit"),
    [("openai", "gpt-4o-mini", 16_384), ("anthropic", "claude-haiku-4-5", 64_000)],
)
def test_a_value_at_the_limit_is_sent_and_answered(emu, provider, model, limit):
    client = client_for(provider, emu)
    before = batches_created(emu)
    job = nb.submit(DF, "{text}", model=model, client=client, max_tokens=limit, display=False)
    job.wait(timeout=60, progress=False)
    assert batches_created(emu) == before + 1
    assert job.counts["succeeded"] == len(DF)


def test_preview_refuses_it_with_no_client_or_key():
    with pytest.raises(nb.InputError, match="gpt-4o-mini") as info:
        nb.preview(DF, "{text}", model="gpt-4o-mini", max_tokens=100_000)
    assert "max_tokens=16384 or less" in str(info.value)
    at_limit = nb.preview(DF, "{text}", model="gpt-4o-mini", max_tokens=16_384)
    assert "Estimate for 3 requests on gpt-4o-mini" in str(at_limit.estimate)


def test_a_cascade_s_later_model_is_checked_before_the_first_stage_is_sent(emu):
    client = client_for("openai", emu)
    # 20,000 suits gpt-4.1-mini (32,768) but not gpt-4o-mini, the second stage.
    models = ["gpt-4.1-mini", "gpt-4o-mini"]
    message = refused(emu, client, "gpt-4o-mini", model=models, max_tokens=20_000)
    assert "16,384" in message
    with pytest.raises(nb.InputError, match="gpt-4o-mini"):
        nb.preview(DF, "{text}", model=models, max_tokens=20_000)


def test_resubmit_failed_and_escalate_check_their_new_values_before_sending(emu):
    client = client_for("openai", emu)
    df = pd.DataFrame({"text": ["fine", f"broken {emulator.FAIL_MARKER}"]})
    job = nb.submit(df, "{text}", model="gpt-4.1-mini", client=client, display=False)
    job.wait(timeout=60, progress=False)
    assert job.counts["failed"] == 1
    before, ids = batches_created(emu), batch_ids_at(client)
    with pytest.raises(nb.InputError, match="gpt-4.1-mini can write: its output limit is 32,768"):
        job.resubmit_failed(max_tokens=40_000)
    with pytest.raises(nb.InputError, match="16,384"):
        job.escalate("gpt-4o-mini", max_tokens=20_000)
    assert batches_created(emu) == before and batch_ids_at(client) == ids
    # At the limit both go on.
    job.resubmit_failed(max_tokens=32_768).wait(timeout=60, progress=False)
    assert batches_created(emu) == before + 1


def test_a_model_without_a_known_limit_is_not_checked():
    with emulator.start(processing_seconds=0.05, models=["gpt-4o-house"]) as emu:
        client = client_for("openai", emu)
        job = nb.submit(
            DF, "{text}", model="gpt-4o-house", client=client, max_tokens=100_000, display=False
        )
        job.wait(timeout=60, progress=False)
        assert job.counts["succeeded"] == len(DF)


def test_the_client_s_limits_agree_with_the_emulator_s():
    """Both follow the providers' published figures; a change to one must reach the other."""
    assert openai_provider.OUTPUT_LIMITS == _rules.OPENAI_OUTPUT_LIMITS
    for family, limit in _rules.ANTHROPIC_OUTPUT_LIMITS.items():
        assert anthropic_provider.OUTPUT_LIMITS[family] == limit
