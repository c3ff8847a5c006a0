"""Anthropic Message Batches (and real-time Messages) through the real SDK, strict mode."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import anthropic
import jsonschema
import pytest
from emu_helpers import anthropic_client, raw
from emu_helpers import message_request as req

from nbbatch import emulator
from nbbatch.emulator import _anthropic

#: The headers every request to the Anthropic API carries (key and API version).
ANT = {"x-api-key": "test", "anthropic-version": "2023-06-01"}


def wait_ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        b = client.messages.batches.retrieve(batch_id)
        if b.processing_status == "ended":
            return b
        assert time.monotonic() < deadline, b
        time.sleep(0.02)


def results(client: anthropic.Anthropic, batch_id: str) -> dict[str, Any]:
    return {r.custom_id: r.result for r in client.messages.batches.results(batch_id)}


def test_life_cycle_with_clock(clocked: emulator.Emulator, clock) -> None:
    with anthropic_client(clocked) as client:
        requests = [req(f"ok-{i}", f"hello {i}") for i in range(5)]
        requests.append(req("bad-1", "x", max_tokens=0))
        requests.append(req("bad-2", "x", model=None))
        del requests[-1]["params"]["model"]
        requests.append(req("fail-3", f"x {emulator.FAIL_MARKER}"))
        b = client.messages.batches.create(requests=requests)
        assert b.processing_status == "in_progress" and b.results_url is None
        assert isinstance(b.created_at, datetime)
        assert (b.expires_at - b.created_at).total_seconds() == 24 * 3600
        with pytest.raises(anthropic.AnthropicError, match="results_url"):
            list(client.messages.batches.results(b.id))
        status, _, body = raw(f"{clocked.url}/v1/messages/batches/{b.id}/results", headers=ANT)
        assert status == 400 and body["type"] == "error"
        clock.advance(6)
        mid = client.messages.batches.retrieve(b.id)
        assert mid.request_counts.processing == 8 and mid.request_counts.succeeded == 0
        clock.advance(6)
        done = client.messages.batches.retrieve(b.id)
        assert done.processing_status == "ended" and done.ended_at is not None
        assert done.results_url == f"{clocked.url}/v1/messages/batches/{b.id}/results"
        counts = done.request_counts
        assert (counts.processing, counts.succeeded, counts.errored) == (0, 5, 3)
        got = results(client, b.id)
        assert set(got) == {r["custom_id"] for r in requests}
        for i in range(5):
            result = got[f"ok-{i}"]
            assert result.type == "succeeded"
            msg = result.message
            assert msg.id.startswith("msg_") and msg.role == "assistant"
            assert msg.content[0].text == emulator.echo_text(f"hello {i}")
            assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
            assert msg.usage.service_tier == "batch"
            assert msg.usage.cache_read_input_tokens == 0
        assert got["bad-1"].type == "errored"
        assert got["bad-1"].error.error.type == "invalid_request_error"
        assert "max_tokens" in got["bad-1"].error.error.message
        assert "model" in got["bad-2"].error.error.message
        assert got["fail-3"].error.error.type == "invalid_request_error"
        status, headers, body = raw(done.results_url, headers=ANT)
        assert headers["content-type"].startswith("application/x-jsonl")
        assert body.endswith(b"}\n") and b"\n\n" not in body


def test_synchronous_create_errors(emu: emulator.Emulator, ant: anthropic.Anthropic) -> None:
    bad = [
        [req("has space", "x")],
        [req("a" * 65, "x")],
        [req("dup", "x"), req("dup", "y")],
        [],
    ]
    for requests in bad:
        with pytest.raises(anthropic.BadRequestError) as err:
            ant.messages.batches.create(requests=requests)
        assert err.value.type == "invalid_request_error"
        assert err.value.request_id and err.value.request_id.startswith("req_")
    status, headers, body = raw(f"{emu.url}/v1/messages/batches", "POST", {}, headers=ANT)
    assert status == 400 and set(body) == {"type", "error", "request_id"}
    assert headers["request-id"] == body["request_id"]


def test_limits(ant: anthropic.Anthropic, monkeypatch) -> None:
    monkeypatch.setattr(_anthropic, "MAX_REQUESTS", 3)
    with pytest.raises(anthropic.BadRequestError, match="at most 3"):
        ant.messages.batches.create(requests=[req(f"r{i}", "x") for i in range(4)])
    monkeypatch.setattr(_anthropic, "MAX_BODY_BYTES", 200)
    with pytest.raises(anthropic.APIStatusError) as info:
        ant.messages.batches.create(requests=[req("r", "x" * 300)])
    assert info.value.status_code == 413
    assert info.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]


def test_list_pagination(emu: emulator.Emulator, ant: anthropic.Anthropic) -> None:
    created = [ant.messages.batches.create(requests=[req("a", "x")]).id for _ in range(5)]
    newest_first = created[::-1]
    emu.clear_log()
    listed = [b.id for b in ant.messages.batches.list(limit=2)]
    assert listed[:5] == newest_first
    assert len(emu.request_log) >= 3
    page = ant.messages.batches.list(limit=2, after_id=newest_first[0])
    assert [b.id for b in page.data] == newest_first[1:3]
    assert page.has_more and page.first_id == newest_first[1] and page.last_id == newest_first[2]
    page = ant.messages.batches.list(limit=2, before_id=newest_first[3])
    assert [b.id for b in page.data] == newest_first[1:3] and page.has_more
    back = [b.id for b in ant.messages.batches.list(limit=1, before_id=newest_first[2])]
    assert back == newest_first[:2][::-1]  # the SDK pages backwards with before_id=first_id
    with pytest.raises(anthropic.BadRequestError):
        ant.messages.batches.list(limit=1001)


def test_cancel_and_delete(clocked: emulator.Emulator, clock) -> None:
    with anthropic_client(clocked) as client:
        b = client.messages.batches.create(requests=[req(f"r{i}", "x") for i in range(10)])
        with pytest.raises(anthropic.BadRequestError):
            client.messages.batches.delete(b.id)  # still processing
        clock.advance(1 + 3)  # 30 % processed
        c = client.messages.batches.cancel(b.id)
        assert c.processing_status == "canceling" and c.cancel_initiated_at is not None
        assert client.messages.batches.cancel(b.id).processing_status == "canceling"
        clock.advance(1)
        done = client.messages.batches.retrieve(b.id)
        assert done.processing_status == "ended"
        assert (done.request_counts.succeeded, done.request_counts.canceled) == (3, 7)
        types = [r.type for r in results(client, b.id).values()]
        assert types.count("canceled") == 7
        with pytest.raises(anthropic.BadRequestError):
            client.messages.batches.cancel(b.id)
        deleted = client.messages.batches.delete(b.id)
        assert deleted.id == b.id and deleted.type == "message_batch_deleted"
        with pytest.raises(anthropic.NotFoundError) as err:
            client.messages.batches.retrieve(b.id)
        assert err.value.type == "not_found_error"


def test_prompt_caching(ant: anthropic.Anthropic) -> None:
    system = [
        {"type": "text", "text": "S" * 400, "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "uncached tail"},
    ]
    requests = [req(f"r{i}", f"q{i}", system=system) for i in range(3)]
    requests.append(req("plain", "q", system="S" * 400))
    b = ant.messages.batches.create(requests=requests)
    wait_ended(ant, b.id)
    got = {k: v.message.usage for k, v in results(ant, b.id).items()}
    assert got["r0"].cache_creation_input_tokens == 100
    assert got["r0"].cache_read_input_tokens == 0
    for key in ("r1", "r2"):
        assert got[key].cache_read_input_tokens == 100
        assert got[key].cache_creation_input_tokens == 0
    total = 400 + len("uncached tail") + 1 + 2  # joined blocks + the user message
    assert got["r0"].input_tokens == -(-total // 4) - 100
    assert got["plain"].cache_creation_input_tokens == 0


def test_structured_outputs(ant: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": ["positive", "negative", "neutral"]},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["label", "score"],
        "additionalProperties": False,
    }
    tool = {"name": "classify", "description": "d", "input_schema": schema}
    requests = [
        req("tool", "great film", tools=[tool], tool_choice={"type": "tool", "name": "classify"}),
        # Structured outputs refuse minimum/maximum: the SDK moves them into descriptions,
        # and the reply still keeps to them, as Claude's does.
        req(
            "fmt",
            "bad film",
            output_config={
                "format": {"type": "json_schema", "schema": anthropic.transform_schema(schema)}
            },
        ),
        req("stop", "alpha beta gamma", stop_sequences=["gamma"]),
        req("long", "y" * 200, max_tokens=5),
    ]
    b = ant.messages.batches.create(requests=requests)
    wait_ended(ant, b.id)
    got = {k: v.message for k, v in results(ant, b.id).items()}
    block = got["tool"].content[0]
    assert block.type == "tool_use" and block.name == "classify"
    assert block.id.startswith("toolu_") and got["tool"].stop_reason == "tool_use"
    jsonschema.validate(block.input, schema)
    import json

    jsonschema.validate(json.loads(got["fmt"].content[0].text), schema)
    assert got["stop"].stop_reason == "stop_sequence" and got["stop"].stop_sequence == "gamma"
    assert got["stop"].content[0].text == emulator.echo_text("alpha beta ")
    assert got["long"].stop_reason == "max_tokens" and got["long"].usage.output_tokens == 5
    assert got["long"].content[0].text == emulator.echo_text("y" * 200)[:20]


def test_realtime_messages_strict(emu: emulator.Emulator, ant: anthropic.Anthropic) -> None:
    msg = ant.messages.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        system="sys",
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "block one"}]},
        ],
    )
    assert msg.content[0].text == emulator.echo_text("block one")
    assert msg.usage.service_tier == "standard" and msg.usage.input_tokens == 3
    with pytest.raises(anthropic.BadRequestError):
        ant.messages.create(
            model="claude-haiku-4-5", max_tokens=0, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.BadRequestError):
        ant.messages.create(
            model="claude-haiku-4-5",
            max_tokens=5,
            messages=[{"role": "user", "content": emulator.FAIL_MARKER}],
        )
    emu.clear_log()
    prompt = f"{emulator.TRANSIENT_MARKER} {time.time()}"
    ok = ant.messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": prompt}]
    )
    assert ok.content[0].text == emulator.echo_text(prompt)
    assert len(emu.request_log) == 2  # one 529, retried by the SDK


def test_auth_and_headers(emu: emulator.Emulator) -> None:
    url = f"{emu.url}/v1/messages/batches"
    status, headers, body = raw(url, headers={"Authorization": ""})
    assert status == 401 and body["error"]["type"] == "authentication_error"
    status, headers, body = raw(
        url,
        headers={
            "Authorization": "",
            "x-api-key": "k",
            "anthropic-version": "2023-06-01",
            "x-stainless-timeout": "NOT_GIVEN",
        },
    )
    assert status == 200 and headers["request-id"].startswith("req_")
    status, _, body = raw(f"{emu.url}/v1/v1/messages/batches", headers=ANT)
    assert status == 200
    status, _, body = raw(f"{url}/msgbatch_nope", headers=ANT)
    assert status == 404 and body["error"] == {
        "type": "not_found_error",
        "message": "Message batch not found",
    }
