"""Service details a client meets before its first reply: token-counting endpoints,
Anthropic's Files API and required headers, upload and body-size rules, Gemini input
files whose lines carry no key, and the order Gemini answers in. Driven through the
official SDKs (plain HTTP only where an SDK would add the header under test)."""

from __future__ import annotations

import io
from typing import Any

import anthropic
import openai
import pytest
from emu_helpers import chat_line, jsonl, parse_jsonl, raw
from google import genai
from test_emulator_fidelity import _wait, gemini

from nbbatch import emulator
from nbbatch.emulator import _gemini


# -- token counting ----------------------------------------------------------------------------
def test_openai_responses_input_tokens_match_the_usage_of_the_reply(oai: openai.OpenAI) -> None:
    kw: dict[str, Any] = {
        "model": "gpt-4.1-mini",
        "input": "How many tokens is this question?",
        "instructions": "Answer briefly.",
    }
    counted = oai.responses.input_tokens.count(**kw)
    assert counted.object == "response.input_tokens" and counted.input_tokens > 0
    reply = oai.responses.create(**kw)
    assert reply.usage is not None and reply.usage.input_tokens == counted.input_tokens
    with pytest.raises(openai.NotFoundError):
        oai.responses.input_tokens.count(model="gpt-4.1-mni", input="x")


def test_gemini_count_tokens_matches_the_usage_of_the_reply(emu: emulator.Emulator) -> None:
    g = gemini(emu)
    counted = g.models.count_tokens(model="gemini-2.5-flash", contents="How many tokens is this?")
    assert counted.total_tokens and counted.total_tokens > 0
    reply = g.models.generate_content(model="gemini-2.5-flash", contents="How many tokens is this?")
    assert reply.usage_metadata is not None
    assert reply.usage_metadata.prompt_token_count == counted.total_tokens
    with pytest.raises(genai.errors.ClientError) as info:
        g.models.count_tokens(model="gemini-2.5-flsh", contents="x")
    assert info.value.code == 404


# -- Anthropic: Files API and headers -------------------------------------------------------------
def test_anthropic_files_api_answers_in_anthropics_shapes(
    emu: emulator.Emulator, ant: anthropic.Anthropic, oai: openai.OpenAI
) -> None:
    uploaded = ant.files.upload(file=("notes.txt", b"some notes", "text/plain"))
    assert uploaded.id.startswith("file_") and uploaded.type == "file"
    assert (uploaded.filename, uploaded.size_bytes) == ("notes.txt", 10)
    assert uploaded.mime_type == "text/plain" and uploaded.created_at.tzinfo is not None
    second = ant.files.upload(file=("more.txt", b"x", "text/plain"))
    assert ant.files.retrieve_metadata(uploaded.id).filename == "notes.txt"
    assert [f.id for f in ant.files.list(limit=1)] == [second.id, uploaded.id]  # pages followed
    assert uploaded.id not in [f.id for f in oai.files.list()]  # OpenAI's files are its own
    with pytest.raises(anthropic.BadRequestError):
        ant.files.download(uploaded.id)  # only files the API made can be downloaded
    deleted = ant.files.delete(uploaded.id)
    assert (deleted.id, deleted.type) == (uploaded.id, "file_deleted")
    with pytest.raises(anthropic.NotFoundError) as info:
        ant.files.retrieve_metadata(uploaded.id)
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert ant.beta.files.retrieve_metadata(second.id).id == second.id  # the beta path too


def test_anthropic_requires_its_key_and_version_headers(emu: emulator.Emulator) -> None:
    url = f"{emu.anthropic_base_url}/v1/messages/batches"
    google_key = {"Authorization": "", "x-goog-api-key": "k", "anthropic-version": "2023-06-01"}
    status, _, body = raw(url, headers=google_key)
    assert status == 401 and body["type"] == "error"
    assert body["error"] == {
        "type": "authentication_error",
        "message": "x-api-key header is required",
    }
    status, _, body = raw(url, headers={"Authorization": "", "x-api-key": "k"})
    assert status == 400
    assert body["error"] == {
        "type": "invalid_request_error",
        "message": "anthropic-version: header is required",
    }
    # The key as x-api-key (the documented curl form) or as the SDK's bearer token.
    for key in ({"Authorization": "", "x-api-key": "k"}, {"Authorization": "Bearer k"}):
        status, _, _ = raw(url, headers={**key, "anthropic-version": "2023-06-01"})
        assert status == 200
    # Anthropic's Files API without a key answers in Anthropic's shape.
    status, _, body = raw(
        f"{emu.anthropic_base_url}/v1/files",
        headers={"Authorization": "", "x-goog-api-key": "k", "anthropic-version": "2023-06-01"},
    )
    assert status == 401 and body["error"]["type"] == "authentication_error"
    # OpenAI's files route (no anthropic-version) still takes its bearer key.
    status, _, _ = raw(f"{emu.openai_base_url}/files")
    assert status == 200


def test_an_anthropic_batch_over_the_size_limit_is_413_request_too_large(
    ant: anthropic.Anthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbbatch.emulator import _anthropic

    monkeypatch.setattr(_anthropic, "MAX_BODY_BYTES", 1000)  # the service's is 256 MB
    params = {"model": "claude-haiku-4-5", "max_tokens": 10}
    big = [
        {
            "custom_id": "a",
            "params": {**params, "messages": [{"role": "user", "content": "x" * 2000}]},
        }
    ]
    with pytest.raises(anthropic.APIStatusError) as info:
        ant.messages.batches.create(requests=big)  # type: ignore[arg-type]
    assert info.value.status_code == 413
    assert info.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]


# -- OpenAI uploads ---------------------------------------------------------------------------
def test_batch_uploads_must_be_jsonl_files(oai: openai.OpenAI) -> None:
    rows = jsonl([chat_line("a", "hi")])
    for name in ("input.json", "input.txt", "input"):
        with pytest.raises(openai.BadRequestError) as info:
            oai.files.create(file=(name, rows), purpose="batch")
        assert info.value.body["message"] == "Invalid file format for Batch API. Must be .jsonl"  # type: ignore[index]
    assert oai.files.create(file=("input.JSONL", rows), purpose="batch").id
    assert oai.files.create(file=("notes.txt", b"x"), purpose="user_data").id


# -- Gemini input size, keys and order ----------------------------------------------------------
def test_a_gemini_inline_batch_over_20_mb_is_refused(
    emu: emulator.Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_gemini, "MAX_INLINE_BYTES", 2000)  # the service's is 20 MB
    g = gemini(emu)
    src: list[Any] = [{"contents": [{"parts": [{"text": "x" * 100}]}]} for _ in range(30)]
    with pytest.raises(genai.errors.ClientError) as info:
        g.batches.create(model="gemini-2.5-flash", src=src)
    assert info.value.code == 400 and "payload size exceeds the limit" in str(info.value.message)
    assert g.batches.create(model="gemini-2.5-flash", src=src[:3]).name


def _upload(g: genai.Client, lines: list[dict]) -> str:
    f = g.files.upload(file=io.BytesIO(jsonl(lines)), config={"mime_type": "jsonl"})
    return str(f.name)


def _results(g: genai.Client, model: str, file_name: str) -> list[dict]:
    job = _wait(g, str(g.batches.create(model=model, src=file_name).name))
    assert job.state is not None and job.state.name == "JOB_STATE_SUCCEEDED"
    assert job.dest is not None and job.dest.file_name
    return parse_jsonl(g.files.download(file=job.dest.file_name).decode())


def test_gemini_file_lines_without_a_key_are_run(emu: emulator.Emulator) -> None:
    g = gemini(emu)
    lines = [
        {"request": {"contents": [{"parts": [{"text": "first"}]}]}, "id": "row-1"},
        {"key": "k2", "request": {"contents": [{"parts": [{"text": "second"}]}]}},
    ]
    out = _results(g, "gemini-2.5-flash", _upload(g, lines))
    assert len(out) == 2
    keyless = next(line for line in out if "key" not in line)
    assert keyless["id"] == "row-1" and "response" in keyless  # its own fields come back
    assert next(line for line in out if line.get("key") == "k2")["response"]


def test_gemini_answers_in_request_order_unless_told_otherwise() -> None:
    lines = [
        {"key": f"k{i}", "request": {"contents": [{"parts": [{"text": f"q{i}"}]}]}}
        for i in range(20)
    ]
    src: list[Any] = [line["request"] for line in lines]
    expected = [emulator.echo_text(f"q{i}") for i in range(20)]
    with emulator.start(processing_seconds=0.05) as emu:  # shuffle is on, as by default
        g = gemini(emu)
        out = _results(g, "gemini-2.5-flash", _upload(g, lines))
        assert [line["key"] for line in out] == [f"k{i}" for i in range(20)]
        job = _wait(g, str(g.batches.create(model="gemini-2.5-flash", src=src).name))
        got = [r.response.text for r in job.dest.inlined_responses]  # type: ignore[union-attr]
        assert got == expected
    with emulator.start(processing_seconds=0.05, gemini_out_of_order=True) as emu:
        g = gemini(emu)
        out = _results(g, "gemini-2.5-flash", _upload(g, lines))
        keys = [line["key"] for line in out]
        assert sorted(keys) == sorted(f"k{i}" for i in range(20)) and keys != sorted(keys)
        job = _wait(g, str(g.batches.create(model="gemini-2.5-flash", src=src).name))
        got = [r.response.text for r in job.dest.inlined_responses]  # type: ignore[union-attr]
        assert sorted(got) == sorted(expected) and got != expected
