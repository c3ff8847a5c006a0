"""What only Gemini has: its key variables, its request lines, its result lines, and the
resumable upload its SDK speaks (the shared behaviour runs over every provider elsewhere)."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest
from google.genai import _api_client

import nbbatch as nb
from nbbatch import emulator
from nbbatch.providers import build
from nbbatch.providers.base import RequestSpec
from nbbatch.providers.gemini import parse_lines

from .conftest import batches_created, gemini_client

DF = pd.DataFrame({"text": ["one", "two", "three"]})


def test_without_a_key_the_error_names_both_variables_and_nothing_is_sent():
    with pytest.raises(nb.ConfigError, match="GOOGLE_API_KEY or GEMINI_API_KEY"):
        nb.submit(DF, "{text}", model="gemini-2.5-flash")


def test_a_model_of_another_provider_with_a_gemini_client_is_refused(emu):
    before = batches_created(emu)
    with pytest.raises(nb.ConfigError, match="model of openai"):
        nb.submit(DF, "{text}", model="gpt-4o-mini", client=gemini_client(emu))
    assert batches_created(emu) == before


def test_a_request_line_carries_system_limits_and_schema_in_gemini_words(emu):
    provider = build("gemini", gemini_client(emu))
    schema = {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}
    spec = RequestSpec(
        model="gemini-2.5-flash",
        endpoint=provider.default_endpoint,
        system="Be brief.",
        max_tokens=50,
        temperature=0.3,
        response_format={"type": "json_schema", "json_schema": {"name": "X", "schema": schema}},
        params={"top_k": 5},
    )
    raw = provider.encode(pa.array(["id-1"]), pa.array(['say "hi"\n']), spec)
    line = json.loads(raw)
    assert line["key"] == "id-1"
    request = line["request"]
    assert request["contents"] == [{"role": "user", "parts": [{"text": 'say "hi"\n'}]}]
    assert request["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    config = request["generationConfig"]
    assert config["maxOutputTokens"] == 50 and config["temperature"] == 0.3
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == schema
    assert config["topK"] == 5


def test_result_lines_thoughts_blocks_and_errors_are_normalised():
    lines = [
        {
            "key": "a",
            "response": {
                "candidates": [
                    {
                        "content": {
                            "parts": [{"text": "thinking...", "thought": True}, {"text": "Yes"}]
                        },
                        "finishReason": "STOP",
                    }
                ],
                "usageMetadata": {
                    "promptTokenCount": 10,
                    "candidatesTokenCount": 2,
                    "thoughtsTokenCount": 30,
                    "cachedContentTokenCount": 4,
                },
            },
        },
        {"key": "b", "response": {"promptFeedback": {"blockReason": "SAFETY"}}},
        {
            "key": "c",
            "error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"},
        },
        {"key": "d", "status": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}},
    ]
    raw = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    rows = {r["custom_id"]: r for r in parse_lines(raw).to_pylist()}
    a = rows["a"]
    # Thoughts are not the answer, but they are billed as output.
    assert a["status"] == "succeeded" and a["output"] == "Yes"
    assert (a["input_tokens"], a["output_tokens"], a["cached_tokens"]) == (10, 32, 4)
    assert rows["b"]["status"] == "failed" and rows["b"]["error_type"] == "prompt_blocked"
    assert "SAFETY" in rows["b"]["error_message"] and rows["b"]["retryable"] is False
    assert rows["c"]["error_type"] == "resource_exhausted" and rows["c"]["retryable"] is True
    assert rows["d"]["error_type"] == "invalid_argument" and rows["d"]["retryable"] is False


def test_an_upload_in_several_chunks_arrives_whole(emu, monkeypatch):
    # The SDK sends 8 MiB chunks; smaller ones make a three-row job a many-chunk upload,
    # so the emulator's offsets and "upload, finalize" are really exercised.
    monkeypatch.setattr(_api_client, "CHUNK_SIZE", 64)
    client = gemini_client(emu)
    df = pd.DataFrame({"text": [f"row {i} " + "x" * 50 for i in range(5)]})
    emu.clear_log()
    job = nb.submit(df, "{text}", model="gemini-2.5-flash", client=client, wait=True)
    uploads = [p for m, p in emu.request_log if m == "POST" and p.startswith("/gemini/upload/")]
    assert len(uploads) > 5  # the start request, then one request per 64-byte chunk
    assert job.counts["succeeded"] == 5
    out = job.merge(df)
    assert out["response"].tolist() == [emulator.echo_text(t) for t in df["text"]]


def test_sdk_errors_are_classified_by_their_http_code():
    from google.genai import errors

    from nbbatch import BatchFailedError, ProviderError
    from nbbatch.providers.gemini import _provider_error

    def err(cls, code, status):
        return cls(code, {"error": {"code": code, "message": "m", "status": status}})

    busy = _provider_error(err(errors.ServerError, 503, "UNAVAILABLE"), "creating a batch")
    assert isinstance(busy, ProviderError) and busy.transient
    bad = _provider_error(err(errors.ClientError, 400, "INVALID_ARGUMENT"), "creating a batch")
    assert isinstance(bad, BatchFailedError) and not bad.transient
    key = _provider_error(err(errors.ClientError, 401, "UNAUTHENTICATED"), "reading a batch")
    assert "GEMINI_API_KEY" in str(key) and not key.transient


def test_downloads_are_retried_although_the_sdk_does_not_retry_them():
    # Every GET fails twice in a row before it is served: batches.get gets through on the
    # client's own retries, files.download only on the provider's (one call here, not the
    # poll loop, which would also try again on its next round).
    with emulator.start(processing_seconds=0.05, http_error_rate=1.0) as emu:
        provider = build("gemini", gemini_client(emu))
        spec = RequestSpec(model="gemini-2.5-flash", endpoint=provider.default_endpoint)
        lines = provider.encode(pa.array(["a", "b"]), pa.array(["x", "y"]), spec)
        info = provider.create(lines, spec, {"nbbatch_job": "t"})
        while not info.ended:
            info = provider.retrieve(info.batch_id)
        (raw,) = provider.fetch_results(info)
        assert sorted(r["custom_id"] for r in parse_lines(raw).to_pylist()) == ["a", "b"]
        downloads = [p for m, p in emu.request_log if m == "GET" and p.endswith(":download")]
        assert len(downloads) == 3  # two simulated 500s, then the file
