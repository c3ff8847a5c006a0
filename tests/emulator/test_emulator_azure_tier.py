"""``tier=`` sets OpenAI's per-model batch queue limits, which are not Azure OpenAI's:
an Azure batch is neither refused by them nor counted in OpenAI's queue (Azure limits
each deployment's queue, ``nbbatch.emulator._azure.ENQUEUED_TOKEN_LIMITS``)."""

from __future__ import annotations

from typing import Any

import openai
from emu_helpers import chat_line, jsonl, openai_client

from nbbatch import emulator

TIMINGS = {"validating_seconds": 1.0, "processing_seconds": 10.0, "finalizing_seconds": 1.0}
#: Two rows of 200,000 characters: 100,000 tokens as the emulator counts them, over
#: OpenAI's tier-1 queue limit for gpt-4o (90,000).
BIG = [chat_line(f"r{i}", "x" * 200_000, model="gpt-4o") for i in range(2)]


def _azure_client(emu: emulator.Emulator) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        base_url=emu.url + "/azure/openai", api_key="test", api_version="2024-10-21"
    )


def _azure_batch(client: openai.AzureOpenAI, rows: list[dict]) -> Any:
    lines = [{**r, "url": "/chat/completions"} for r in rows]
    file = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(
        input_file_id=file.id, endpoint="/chat/completions", completion_window="24h"
    )


def test_openais_tier_limits_do_not_apply_to_azure_batches(clock) -> None:
    with (
        emulator.start(clock=clock, tier="tier-1", **TIMINGS) as emu,
        _azure_client(emu) as azure,
        openai_client(emu) as oai,
    ):
        made = _azure_batch(azure, BIG)
        clock.advance(1.5)
        running = azure.batches.retrieve(made.id)
        assert running.status == "in_progress", running.errors
        # Nor does the Azure batch take room in OpenAI's queue: a small OpenAI batch of
        # the same model still fits its tier-1 limit.
        small = [chat_line("s", "x" * 4_000, model="gpt-4o")]
        file = oai.files.create(file=("in.jsonl", jsonl(small)), purpose="batch")
        fine = oai.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        clock.advance(1.5)
        assert oai.batches.retrieve(fine.id).status == "in_progress"
        # The same big batch sent to OpenAI is still over OpenAI's tier-1 figure.
        file = oai.files.create(file=("in.jsonl", jsonl(BIG)), purpose="batch")
        over = oai.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        clock.advance(1.5)
        refused = oai.batches.retrieve(over.id)
        assert refused.status == "failed"
        assert refused.errors is not None and refused.errors.data is not None
        assert refused.errors.data[0].code == "token_limit_exceeded"
