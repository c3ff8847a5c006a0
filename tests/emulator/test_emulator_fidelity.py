"""The emulator refuses and answers what the real services refuse and answer.

Driven only through the official SDKs, so the shapes checked are the ones a client
nbbatch did not write sees: a request the service would refuse fails on its own, with
the service's error, while the rest of its batch runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import anthropic
import jsonschema
import openai
import pytest
from emu_helpers import (
    anthropic_client,
    chat_line,
    jsonl,
    parse_jsonl,
    run_message_batch,
    run_openai_batch,
)
from emu_openapi import check
from google import genai
from google.genai import types as genai_types
from pydantic import BaseModel, Field

from nbbatch import emulator


def gemini(emu: emulator.Emulator) -> genai.Client:
    return genai.Client(
        api_key="test", http_options=genai_types.HttpOptions(base_url=emu.gemini_base_url)
    )


def openai_batch(oai: openai.OpenAI, rows: list[dict], endpoint: str = "/v1/chat/completions"):
    """Run ``rows`` as one batch; (batch, output lines, error lines) by custom_id."""
    b, out, err = run_openai_batch(oai, rows, endpoint)
    return b, {x["custom_id"]: x for x in out}, {x["custom_id"]: x for x in err}


def msg(custom_id: str, prompt: str = "hi", **params: Any) -> dict[str, Any]:
    base = {"model": "claude-haiku-4-5", "max_tokens": 64}
    messages = [{"role": "user", "content": prompt}]
    return {"custom_id": custom_id, "params": {**base, "messages": messages, **params}}


# -- OpenAI: per-line validation ----------------------------------------------------------
def test_openai_lines_the_service_refuses_fail_alone_with_its_errors(
    oai: openai.OpenAI,
) -> None:
    rows = [
        chat_line("ok", "hello"),
        chat_line("hot", "x", temperature=5),
        chat_line("top", "x", top_p=1.5),
        chat_line("typo", "x", temprature=0.5),
        # openbatch's shape: the Responses API's format on chat completions
        chat_line(
            "fmt", "x", response_format={"type": "json_schema", "schema": {"type": "object"}}
        ),
        chat_line("jsonword", "x", response_format={"type": "json_object"}),
        chat_line(
            "strict",
            "x",
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "s",
                    "strict": True,
                    "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                },
            },
        ),
    ]
    b, out, err = openai_batch(oai, rows)
    assert b.status == "completed"
    assert set(out) == {"ok"} and b.request_counts.completed == 1
    assert b.request_counts.failed == len(rows) - 1
    check("Batch", oai.batches.with_raw_response.retrieve(b.id).http_response.json())
    for cid, line in err.items():
        check("ErrorResponse", line["response"]["body"])
        assert line["error"] is None and line["response"]["body"]["error"]["type"] == (
            "invalid_request_error"
        ), cid
    e = {cid: line["response"]["body"]["error"] for cid, line in err.items()}
    status = {cid: line["response"]["status_code"] for cid, line in err.items()}
    assert e["hot"] == {
        "message": "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, "
        "but got 5 instead.",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "decimal_above_max_value",
    }
    assert status["hot"] == 400 and e["top"]["param"] == "top_p"
    assert e["typo"]["message"] == "Unrecognized request argument supplied: temprature"
    assert e["fmt"]["param"] == "response_format.json_schema"
    assert e["fmt"]["code"] == "missing_required_parameter"
    assert "must contain the word 'json'" in e["jsonword"]["message"]
    assert e["strict"]["code"] == "invalid_json_schema"
    assert "additionalProperties" in e["strict"]["message"]


def test_openai_lines_naming_an_unknown_model_fail_with_model_not_found(
    oai: openai.OpenAI,
) -> None:
    # One model per batch file (a mix fails the whole file, as on the service).
    b, out, err = openai_batch(oai, [chat_line(f"r{i}", "x", model="gpt-4o-mni") for i in range(3)])
    assert b.status == "completed" and not out and len(err) == 3
    for line in err.values():
        check("ErrorResponse", line["response"]["body"])
        assert line["response"]["status_code"] == 404
        body = line["response"]["body"]["error"]
        assert body["code"] == "model_not_found" and "`gpt-4o-mni`" in body["message"]


def test_openai_realtime_refuses_the_same_way(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], temperature=5
        )
    assert bad.value.code == "decimal_above_max_value" and bad.value.param == "temperature"
    with pytest.raises(openai.NotFoundError) as missing:
        oai.chat.completions.create(model="gpt-4o-mni", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as short:
        oai.responses.create(model="gpt-4o-mini", input="x", max_output_tokens=3)
    assert short.value.code == "integer_below_min_value"


def test_models_added_with_start_are_served(emu: emulator.Emulator) -> None:
    with emulator.start(processing_seconds=0.01, models=["house-model-7"]) as own:
        client = openai.OpenAI(base_url=own.openai_base_url, api_key="k")
        with client:
            reply = client.chat.completions.create(
                model="house-model-7", messages=[{"role": "user", "content": "x"}]
            )
    assert reply.choices[0].message.content == emulator.echo_text("x")


# -- embeddings -----------------------------------------------------------------------------
def test_embeddings_have_each_models_real_size(emu: emulator.Emulator, oai: openai.OpenAI) -> None:
    def embed(model: str, **kw: Any) -> openai.types.CreateEmbeddingResponse:
        return oai.embeddings.create(model=model, input="a", encoding_format="float", **kw)

    small, large = embed("text-embedding-3-small"), embed("text-embedding-3-large")
    short = embed("text-embedding-3-small", dimensions=64)
    assert [len(small.data[0].embedding), len(large.data[0].embedding)] == [1536, 3072]
    assert len(short.data[0].embedding) == 64
    raw = oai.embeddings.with_raw_response.create(
        model="text-embedding-3-large", input=["a", "b"], dimensions=256, encoding_format="float"
    ).http_response.json()
    check("CreateEmbeddingResponse", raw)
    assert [len(d["embedding"]) for d in raw["data"]] == [256, 256]
    with pytest.raises(openai.BadRequestError) as too_many:
        embed("text-embedding-3-small", dimensions=2000)
    assert too_many.value.param == "dimensions"
    g = gemini(emu)
    full = g.models.embed_content(model="gemini-embedding-001", contents="a")
    cut = g.models.embed_content(
        model="gemini-embedding-001",
        contents="a",
        config=genai_types.EmbedContentConfig(output_dimensionality=768),
    )
    assert full.embeddings and cut.embeddings
    assert [len(full.embeddings[0].values or []), len(cut.embeddings[0].values or [])] == [
        3072,
        768,
    ]


# -- Anthropic ------------------------------------------------------------------------------
def test_anthropic_requests_the_service_refuses_end_errored_alone(
    ant: anthropic.Anthropic,
) -> None:
    got = run_message_batch(
        ant,
        [
            msg("ok"),
            msg("hot", temperature=3.0),
            msg("both", temperature=0.5, top_p=0.9),
            msg("model", model="claude-hiaku-4-5"),
            msg("extra", frequency_penalty=1),
            {
                "custom_id": "system",
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 10,
                    "messages": [
                        {"role": "system", "content": "be brief"},
                        {"role": "user", "content": "x"},
                    ],
                },
            },
            msg(
                "bounds",
                output_config={
                    "format": {
                        "type": "json_schema",
                        "schema": {
                            "type": "object",
                            "properties": {"s": {"type": "number", "minimum": 0}},
                            "required": ["s"],
                            "additionalProperties": False,
                        },
                    }
                },
            ),
        ],
    )
    assert got["ok"].type == "succeeded"
    errors = {k: v.error.error for k, v in got.items() if k != "ok"}
    assert all(got[k].type == "errored" for k in errors)
    assert errors["hot"].type == "invalid_request_error"
    assert errors["hot"].message == "temperature: Input should be less than or equal to 1"
    assert "cannot both be specified" in errors["both"].message
    assert errors["model"].type == "not_found_error"
    assert errors["model"].message == "model: claude-hiaku-4-5"
    assert errors["extra"].message == "frequency_penalty: Extra inputs are not permitted"
    assert 'Unexpected role "system"' in errors["system"].message
    assert "'minimum' is not supported" in errors["bounds"].message


def test_anthropic_replies_keep_to_bounds_the_sdk_moved_into_descriptions(
    ant: anthropic.Anthropic,
) -> None:
    schema = {
        "type": "object",
        "properties": {
            "score": {"type": "number", "minimum": 0, "maximum": 1},
            "n": {"type": "integer", "minimum": 3, "maximum": 5},
            "tag": {"type": "string", "maxLength": 4},
        },
        "required": ["score", "n", "tag"],
        "additionalProperties": False,
    }
    sent = anthropic.transform_schema(schema)
    assert "minimum" not in sent["properties"]["score"]  # the SDK moved it
    fmt = {"format": {"type": "json_schema", "schema": sent}}
    got = run_message_batch(
        ant, [msg(f"r{i}", f"review number {i}", output_config=fmt) for i in range(30)]
    )
    for result in got.values():
        assert result.type == "succeeded"
        jsonschema.validate(json.loads(result.message.content[0].text), schema)


class Review(BaseModel):
    """A model a user writes: bounds on a number, an integer and a string."""

    score: float = Field(ge=0, le=1)
    stars: int = Field(ge=3, le=5)
    tag: str = Field(max_length=4)


def test_every_provider_keeps_to_the_bounds_of_a_pydantic_model(
    emu: emulator.Emulator, oai: openai.OpenAI, ant: anthropic.Anthropic
) -> None:
    """``score: float = Field(ge=0, le=1)``: every row of every provider parses, with the
    schema sent the way each service takes it (Claude: bounds moved into descriptions)."""
    prompts = [f"review number {i}, quite long text" for i in range(25)]
    schema = {**Review.model_json_schema(), "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "review", "schema": schema}}
    b, out, err = openai_batch(
        oai, [chat_line(f"r{i}", p, response_format=fmt) for i, p in enumerate(prompts)]
    )
    assert not err and len(out) == len(prompts)
    replies = [
        line["response"]["body"]["choices"][0]["message"]["content"] for line in out.values()
    ]

    sent = anthropic.transform_schema(Review)
    assert "maximum" not in sent["properties"]["score"]  # the SDK moved it
    claude = {"format": {"type": "json_schema", "schema": sent}}
    got = run_message_batch(
        ant, [msg(f"r{i}", p, output_config=claude) for i, p in enumerate(prompts)]
    )
    assert all(r.type == "succeeded" for r in got.values()) and len(got) == len(prompts)
    replies += [r.message.content[0].text for r in got.values()]  # type: ignore[union-attr]

    g = gemini(emu)
    config = {"response_mime_type": "application/json", "response_json_schema": schema}
    src: list[Any] = [
        {"contents": [{"parts": [{"text": p}], "role": "user"}], "config": config} for p in prompts
    ]
    job = _wait(g, str(g.batches.create(model="gemini-2.5-flash", src=src).name))
    assert job.dest is not None and job.dest.inlined_responses
    replies += [str(r.response.text) for r in job.dest.inlined_responses if r.response]

    assert len(replies) == 3 * len(prompts)
    for text in replies:
        Review.model_validate_json(text)  # raises on any value out of bounds


def test_anthropic_count_tokens_matches_the_usage_of_the_reply(ant: anthropic.Anthropic) -> None:
    params: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "Count these words please"}],
    }
    counted = ant.messages.count_tokens(**params)
    reply = ant.messages.create(max_tokens=50, **params)
    assert counted.input_tokens == reply.usage.input_tokens > 0
    with pytest.raises(anthropic.NotFoundError):
        ant.messages.count_tokens(**{**params, "model": "claude-nope"})


# -- Gemini ----------------------------------------------------------------------------------
def _wait(g: genai.Client, name: str) -> genai_types.BatchJob:
    job = g.batches.get(name=name)
    deadline = time.monotonic() + 60
    while not job.done:
        assert time.monotonic() < deadline
        time.sleep(0.02)
        job = g.batches.get(name=name)
    return job


def test_gemini_inline_batches_answer_in_request_order(emu: emulator.Emulator) -> None:
    g = gemini(emu)
    src: list[Any] = [
        {"contents": [{"parts": [{"text": f"question {i}"}], "role": "user"}]} for i in range(12)
    ]
    src[5] = {
        "contents": [{"parts": [{"text": "too hot"}], "role": "user"}],
        "config": {"temperature": 5},
    }
    job = g.batches.create(model="gemini-2.5-flash", src=src)
    job = _wait(g, str(job.name))
    assert job.state is not None and job.state.name == "JOB_STATE_SUCCEEDED"
    assert job.dest is not None and job.dest.file_name is None
    answers = job.dest.inlined_responses or []
    assert len(answers) == 12
    for i, answer in enumerate(answers):
        if i == 5:
            assert answer.response is None and answer.error is not None
            assert answer.error.code == 400 and "temperature" in (answer.error.message or "")
        else:
            assert answer.response is not None
            assert answer.response.text == emulator.echo_text(f"question {i}")


def test_gemini_refuses_unknown_models_and_bad_requests_per_line(
    emu: emulator.Emulator,
) -> None:
    g = gemini(emu)
    with pytest.raises(genai.errors.ClientError) as missing:
        g.batches.create(model="gemini-2.5-flsh", src=[{"contents": [{"parts": [{"text": "x"}]}]}])
    assert missing.value.code == 404
    lines = [
        {"key": "ok", "request": {"contents": [{"parts": [{"text": "x"}]}]}},
        {
            "key": "typo",
            "request": {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"topp": 1}},
        },
        {
            "key": "schema",
            "request": {
                "contents": [{"parts": [{"text": "x"}]}],
                "generationConfig": {"responseJsonSchema": {"type": "object"}},
            },
        },
    ]
    uploaded = g.files.upload(
        file=__import__("io").BytesIO(jsonl(lines)),
        config={"mime_type": "jsonl", "display_name": "in"},
    )
    job = _wait(g, str(g.batches.create(model="gemini-2.5-flash", src=str(uploaded.name)).name))
    assert job.dest is not None and job.dest.file_name
    out = {x["key"]: x for x in parse_jsonl(g.files.download(file=job.dest.file_name).decode())}
    assert "response" in out["ok"]
    assert 'Unknown name "topp"' in out["typo"]["error"]["message"]
    assert "response_mime_type" in out["schema"]["error"]["message"]


# -- expiry ----------------------------------------------------------------------------------
def test_an_expiring_batch_runs_to_its_window_with_some_requests_done(clock) -> None:
    """expire_rate 0.25: the window closes on the last quarter of the rows; until then
    the batch is in progress and its counts grow; it ends expired at its window."""
    with emulator.start(
        clock=clock,
        validating_seconds=1,
        processing_seconds=10,
        expire_rate=0.25,
        shuffle=False,
    ) as emu:
        g = gemini(emu)
        src: list[Any] = [{"contents": [{"parts": [{"text": f"p{i}"}]}]} for i in range(20)]
        job = g.batches.create(model="gemini-2.5-flash", src=src)
        with anthropic_client(emu) as ant:
            b = ant.messages.batches.create(
                requests=[msg(f"r{i}", f"p{i}") for i in range(20)]  # type: ignore[misc]
            )
        client = openai.OpenAI(base_url=emu.openai_base_url, api_key="k")
        with client:
            f = client.files.create(
                file=("in.jsonl", jsonl([chat_line(f"r{i}", f"p{i}") for i in range(20)])),
                purpose="batch",
            )
            ob = client.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            clock.advance(6)  # half-way through processing
            mid = client.batches.retrieve(ob.id)
            assert mid.status == "in_progress" and 0 < mid.request_counts.completed < 15
            clock.advance(5.1)  # past the window
            raw = client.batches.with_raw_response.retrieve(ob.id).http_response.json()
            check("Batch", raw)
            end = client.batches.retrieve(ob.id)
            assert end.status == "expired" and end.expired_at == end.expires_at
            assert end.request_counts.completed == 15 and end.request_counts.failed == 5
            assert end.expires_at - end.created_at < 60  # the scaled window, not 24 h
            err = parse_jsonl(client.files.content(str(end.error_file_id)).text)
            assert [e["error"]["code"] for e in err] == ["batch_expired"] * 5
        with anthropic_client(emu) as ant:
            ended = ant.messages.batches.retrieve(b.id)
            assert ended.processing_status == "ended" and ended.ended_at == ended.expires_at
            assert ended.request_counts.succeeded == 15 and ended.request_counts.expired == 5
        gj = g.batches.get(name=str(job.name))
        assert gj.state is not None and gj.state.name == "JOB_STATE_EXPIRED"
        answers = gj.dest.inlined_responses if gj.dest else None
        assert answers is not None and len(answers) == 20
        assert sum(a.response is not None for a in answers) == 15
        assert all(a.error is not None for a in answers if a.response is None)


# -- startup message -------------------------------------------------------------------------
def test_the_startup_message_gives_every_base_url() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbbatch.emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    text = "".join(lines)
    url = lines[0].split()[-1]
    assert f"{url}/v1" in text and f"{url}/gemini" in text and "genai.Client" in text
