"""OpenAI Files + Batches through the real SDK, every body checked against the OpenAPI subset."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest
from emu_helpers import chat_line, jsonl, openai_client, parse_jsonl, raw
from emu_openapi import check

from nbbatch import emulator
from nbbatch.emulator import _openai


def upload(client: openai.OpenAI, rows: list[dict], name: str = "in.jsonl") -> str:
    return client.files.create(file=(name, jsonl(rows)), purpose="batch").id


def wait_done(client: openai.OpenAI, batch_id: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        b = client.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "expired", "cancelled"):
            return b
        assert time.monotonic() < deadline, b
        time.sleep(0.02)


def batch_body(emu: emulator.Emulator, batch_id: str) -> dict:
    status, headers, body = raw(f"{emu.openai_base_url}/batches/{batch_id}")
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert headers["x-request-id"].startswith("req_")
    check("Batch", body)
    return body


def test_full_life_cycle_with_clock(clocked: emulator.Emulator, clock) -> None:
    client = openai_client(clocked)
    rows = [chat_line(f"row-{i}", f"prompt number {i}") for i in range(10)]
    file_id = upload(client, rows)
    b = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "t1"},
    )
    seen = {}
    for step in [0.5, 1.0, 5.0, 5.0, 0.5, 1.0]:
        body = batch_body(clocked, b.id)
        seen.setdefault(body["status"], body)
        clock.advance(step)
    body = batch_body(clocked, b.id)
    seen.setdefault(body["status"], body)
    assert list(seen) == ["validating", "in_progress", "finalizing", "completed"]
    assert seen["validating"]["in_progress_at"] is None
    assert seen["in_progress"]["request_counts"] == {"total": 10, "completed": 0, "failed": 0}
    final = seen["completed"]
    assert final["request_counts"] == {"total": 10, "completed": 10, "failed": 0}
    assert final["metadata"] == {"job": "t1"} and final["model"] == "gpt-4o-mini"
    for key in ("created_at", "in_progress_at", "finalizing_at", "completed_at"):
        assert isinstance(final[key], int)
    assert final["expires_at"] == final["created_at"] + 24 * 3600
    assert final["completed_at"] - final["created_at"] == 12
    assert final["error_file_id"] is None and final["failed_at"] is None
    usage = final["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0

    out = client.files.retrieve(final["output_file_id"])
    assert out.purpose == "batch_output"
    lines = parse_jsonl(client.files.content(out.id).text)
    assert sorted(line["custom_id"] for line in lines) == sorted(r["custom_id"] for r in rows)
    assert (
        sum(line["response"]["body"]["usage"]["total_tokens"] for line in lines)
        == usage["total_tokens"]
    )
    for line in lines:
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        check("CreateChatCompletionResponse", line["response"]["body"])
        i = line["custom_id"].split("-")[1]
        content = line["response"]["body"]["choices"][0]["message"]["content"]
        assert content == emulator.echo_text(f"prompt number {i}")
    client.close()


def test_progress_counts_grow_linearly(clocked: emulator.Emulator, clock) -> None:
    with openai_client(clocked) as client:
        file_id = upload(client, [chat_line(f"r{i}", f"p{i}") for i in range(100)])
        b = client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        clock.advance(1 + 2.5)  # a quarter of the processing time
        assert client.batches.retrieve(b.id).request_counts.completed == 25
        clock.advance(5)
        assert client.batches.retrieve(b.id).request_counts.completed == 75


def test_files_api_bodies(emu: emulator.Emulator, oai: openai.OpenAI) -> None:
    base = emu.openai_base_url
    ids = [upload(oai, [chat_line("a", "x")], name=f"f{i}.jsonl") for i in range(3)]
    f = oai.files.create(
        file=b"{}", purpose="user_data", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert f.filename == "upload" and f.expires_at == f.created_at + 3600
    status, _, body = raw(f"{base}/files/{ids[0]}")
    assert status == 200
    check("OpenAIFile", body)
    assert body["purpose"] == "batch" and body["expires_at"] == body["created_at"] + 30 * 86400
    status, _, listing = raw(f"{base}/files?limit=2&purpose=batch")
    check("ListFilesResponse", listing)
    assert listing["has_more"] is True and len(listing["data"]) == 2
    # auto-pagination through the SDK (order desc, then asc)
    all_ids = [x.id for x in oai.files.list(limit=1, purpose="batch")]
    assert all_ids[:3] == ids[::-1]
    asc = [x.id for x in oai.files.list(limit=2, order="asc", purpose="batch")]
    assert asc[-3:] == ids
    status, _, empty = raw(f"{base}/files?purpose=vision")
    check("ListFilesResponse", empty)
    # content is raw bytes even though the SDK sends Accept: application/json
    assert oai.files.content(ids[0]).content == jsonl([chat_line("a", "x")])
    status, _, deleted = raw(f"{base}/files/{ids[0]}", method="DELETE")
    check("DeleteFileResponse", deleted)
    assert deleted == {"id": ids[0], "object": "file", "deleted": True}
    with pytest.raises(openai.NotFoundError) as err:
        oai.files.retrieve(ids[0])
    assert err.value.request_id and err.value.request_id.startswith("req_")
    status, _, body = raw(f"{base}/files/{ids[0]}")
    assert status == 404
    check("ErrorResponse", body)


def test_upload_rejects_bad_purpose_and_expiry(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.files.create(file=b"x", purpose="nonsense")  # type: ignore[arg-type]
    assert err.value.param == "purpose"
    with pytest.raises(openai.BadRequestError):
        oai.files.create(
            file=b"x", purpose="batch", expires_after={"anchor": "created_at", "seconds": 10}
        )


def test_output_and_error_files_with_failures(emu: emulator.Emulator, oai: openai.OpenAI) -> None:
    rows = [
        chat_line("ok-1", "hello"),
        chat_line("fail-2", f"please fail {emulator.FAIL_MARKER}"),
        chat_line("bad-3", "x"),
    ]
    rows[2]["body"].pop("messages")
    b = oai.batches.create(
        input_file_id=upload(oai, rows), endpoint="/v1/chat/completions", completion_window="24h"
    )
    b = wait_done(oai, b.id)
    assert b.status == "completed"
    assert (b.request_counts.completed, b.request_counts.failed) == (1, 2)
    check("Batch", batch_body(emu, b.id))
    errors = parse_jsonl(oai.files.content(b.error_file_id).text)
    assert {e["custom_id"] for e in errors} == {"fail-2", "bad-3"}
    for e in errors:
        assert e["error"] is None and e["response"]["status_code"] == 400
        check("ErrorResponse", e["response"]["body"])
        assert e["response"]["body"]["error"]["type"] == "invalid_request_error"


def test_responses_and_embeddings_endpoints_in_a_batch(oai: openai.OpenAI) -> None:
    rows = [
        {
            "custom_id": "r1",
            "method": "POST",
            "url": "/v1/responses",
            "body": {"model": "gpt-4o-mini", "input": "Say hi", "instructions": "be brief"},
        }
    ]
    b = oai.batches.create(
        input_file_id=upload(oai, rows), endpoint="/v1/responses", completion_window="24h"
    )
    b = wait_done(oai, b.id)
    [line] = parse_jsonl(oai.files.content(b.output_file_id).text)
    resp = openai.types.responses.Response.model_validate(line["response"]["body"])
    assert resp.output_text == emulator.echo_text("Say hi")

    rows = [
        {
            "custom_id": "e1",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 16},
        },
        {
            "custom_id": "e2",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-3-small", "input": "a"},
        },
    ]
    b = oai.batches.create(
        input_file_id=upload(oai, rows), endpoint="/v1/embeddings", completion_window="24h"
    )
    b = wait_done(oai, b.id)
    lines = {x["custom_id"]: x for x in parse_jsonl(oai.files.content(b.output_file_id).text)}
    for line in lines.values():
        check("CreateEmbeddingResponse", line["response"]["body"])
    e1 = lines["e1"]["response"]["body"]["data"]
    e2 = lines["e2"]["response"]["body"]["data"]
    assert [len(d["embedding"]) for d in e1] == [16, 16]
    assert (
        len(e2[0]["embedding"]) == emulator.embedding_dimensions("text-embedding-3-small") == 1536
    )
    assert abs(sum(v * v for v in e2[0]["embedding"]) - 1) < 1e-9
    assert lines["e2"]["response"]["body"]["usage"] == {"prompt_tokens": 1, "total_tokens": 1}


def test_list_batches_pagination(emu: emulator.Emulator, oai: openai.OpenAI) -> None:
    file_id = upload(oai, [chat_line("a", "x")])
    created = [
        oai.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(5)
    ]
    emu.clear_log()
    listed = [b.id for b in oai.batches.list(limit=2)]
    assert listed[:5] == created[::-1]
    paths = [p for m, p in emu.request_log if m == "GET"]
    assert len(paths) >= 3
    status, _, page = raw(f"{emu.openai_base_url}/batches?limit=2&after={created[-1]}")
    check("ListBatchesResponse", page)
    assert [b["id"] for b in page["data"]] == created[-2:-4:-1]
    assert page["has_more"] is True and page["first_id"] == created[-2]
    status, _, body = raw(f"{emu.openai_base_url}/batches?limit=101")
    assert status == 400
    check("ErrorResponse", body)


def test_cancel_mid_batch_keeps_done_rows(clocked: emulator.Emulator, clock) -> None:
    with openai_client(clocked) as client:
        rows = [chat_line(f"r{i}", f"p{i}") for i in range(40)]
        b = client.batches.create(
            input_file_id=upload(client, rows),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        clock.advance(1 + 5)  # half way through processing
        c = client.batches.cancel(b.id)
        assert c.status == "cancelling" and c.cancelling_at is not None
        check("Batch", batch_body(clocked, b.id))
        clock.advance(1)
        b = client.batches.retrieve(b.id)
        assert b.status == "cancelled" and b.cancelled_at is not None
        check("Batch", batch_body(clocked, b.id))
        assert b.request_counts.completed == 20 and b.request_counts.failed == 20
        done = parse_jsonl(client.files.content(b.output_file_id).text)
        cancelled = parse_jsonl(client.files.content(b.error_file_id).text)
        assert len(done) == 20 and len(cancelled) == 20
        for line in cancelled:
            assert line["response"] is None and line["error"]["code"] == "batch_cancelled"
        # cancelling an ended batch is a fast-failing 409 (no SDK retries)
        clocked.clear_log()
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(b.id)
        assert len(clocked.request_log) == 1
        status, headers, body = raw(f"{clocked.openai_base_url}/batches/{b.id}/cancel", "POST")
        assert status == 409 and headers["x-should-retry"] == "false"
        check("ErrorResponse", body)


def test_cancel_while_validating(clocked: emulator.Emulator, clock) -> None:
    with openai_client(clocked) as client:
        b = client.batches.create(
            input_file_id=upload(client, [chat_line("a", "x")]),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        client.batches.cancel(b.id)
        clock.advance(1)
        b = client.batches.retrieve(b.id)
        assert b.status == "cancelled" and b.in_progress_at is None
        assert b.output_file_id is None
        [line] = parse_jsonl(client.files.content(b.error_file_id).text)
        assert line["error"]["code"] == "batch_cancelled"


def _fail(client: openai.OpenAI, content: bytes, endpoint: str = "/v1/chat/completions") -> Any:
    f = client.files.create(file=("in.jsonl", content), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h")
    return wait_done(client, b.id)


def _line(**changes: Any) -> dict:
    row = chat_line("x", "hi")
    row.update(changes)
    return row


@pytest.mark.parametrize(
    ("content", "code", "param", "line"),
    [
        (b'{"custom_id": "a", \n', "invalid_json_line", None, 1),
        (jsonl([chat_line("a", "x"), chat_line("a", "y")]), "duplicate_custom_id", "custom_id", 2),
        (
            jsonl([chat_line("a", "x"), chat_line("b", "y", model="gpt-4o")]),
            "mismatched_model",
            "body.model",
            2,
        ),
        (jsonl([_line(url="/v1/embeddings")]), "invalid_url", "url", 1),
        (jsonl([_line(method="GET")]), "invalid_method", "method", 1),
        (jsonl([{k: v for k, v in _line().items() if k != "custom_id"}]), None, "custom_id", 1),
        (b"", "empty_file", None, None),
    ],
)
def test_input_validation_fails_the_batch(
    emu: emulator.Emulator, oai: openai.OpenAI, content: bytes, code, param, line
) -> None:
    b = _fail(oai, content)
    assert b.status == "failed" and b.failed_at is not None
    assert b.output_file_id is None and b.error_file_id is None
    check("Batch", batch_body(emu, b.id))
    first = b.errors.data[0]
    assert first.code == (code or "missing_required_parameter")
    assert first.param == param and first.line == line


def test_too_many_requests_and_too_large(oai: openai.OpenAI, monkeypatch) -> None:
    rows = [chat_line(f"r{i}", "x") for i in range(5)]
    monkeypatch.setattr(_openai, "MAX_REQUESTS", 4)
    b = _fail(oai, jsonl(rows))
    assert b.status == "failed" and b.errors.data[0].code == "too_many_tasks"
    monkeypatch.setattr(_openai, "MAX_REQUESTS", 50_000)
    monkeypatch.setattr(_openai, "MAX_INPUT_BYTES", 100)
    b = _fail(oai, jsonl(rows))
    assert b.status == "failed" and b.errors.data[0].code == "file_too_large"


def test_fifty_thousand_and_one_lines(oai: openai.OpenAI) -> None:
    line = (
        b'{"custom_id":"r%d","method":"POST","url":"/v1/embeddings",'
        b'"body":{"model":"gpt-4o-mini","input":"x"}}\n'
    )
    content = b"".join(line % i for i in range(50_001))
    b = _fail(oai, content, "/v1/embeddings")
    assert b.status == "failed" and b.errors.data[0].code == "too_many_tasks"


def test_create_request_validation(emu: emulator.Emulator, oai: openai.OpenAI) -> None:
    file_id = upload(oai, [chat_line("a", "x")])
    user_file = oai.files.create(file=b"x", purpose="user_data").id
    cases: list[tuple[dict, str]] = [
        ({"input_file_id": "file-nope"}, "input_file_id"),
        ({"input_file_id": user_file}, "input_file_id"),
        ({"endpoint": "/v1/nope"}, "endpoint"),
        ({"endpoint": "/v1/moderations"}, "endpoint"),
        ({"completion_window": "48h"}, "completion_window"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"output_expires_after": {"anchor": "created_at", "seconds": 5}}, None),
    ]
    for change, param in cases:
        body = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            **change,
        }
        status, _, err = raw(f"{emu.openai_base_url}/batches", "POST", body)
        assert status == 400, change
        check("ErrorResponse", err)
        if param:
            assert err["error"]["param"] == param
    with pytest.raises(openai.BadRequestError):
        oai.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )


def test_enqueued_token_limit(clock) -> None:
    with emulator.start(clock=clock, processing_seconds=10, enqueued_token_limit=30) as emu:
        with openai_client(emu) as client:
            rows = [chat_line(f"r{i}", "x" * 40) for i in range(2)]  # 20 tokens

            def create() -> Any:
                return client.batches.create(
                    input_file_id=upload(client, rows),
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                )

            first, second = create(), create()
            clock.advance(0.001)
            assert client.batches.retrieve(first.id).status == "in_progress"
            failed = client.batches.retrieve(second.id)
            assert failed.status == "failed"
            assert failed.errors.data[0].code == "token_limit_exceeded"
            assert failed.request_counts.total == 0
            check("Batch", batch_body(emu, second.id))
            clock.advance(11)  # the first one is done: room again
            third = create()
            clock.advance(0.001)
            assert client.batches.retrieve(third.id).status == "in_progress"


def test_realtime_endpoints_strict(emu: emulator.Emulator, oai: openai.OpenAI) -> None:
    before = emu.stats()["realtime_requests"]
    chat = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": [{"type": "text", "text": "block prompt"}]},
        ],
    )
    assert chat.choices[0].message.content == emulator.echo_text("block prompt")
    assert chat.usage and chat.usage.prompt_tokens == 5  # ceil(len("be nice" + ...)/4)
    cut = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "x" * 100}],
        max_completion_tokens=3,
    )
    assert cut.choices[0].finish_reason == "length"
    assert cut.choices[0].message.content == emulator.echo_text("x" * 100)[:12]
    resp = oai.responses.create(model="gpt-4o-mini", input="hello", max_output_tokens=200)
    assert resp.output_text == emulator.echo_text("hello") and resp.status == "completed"
    emb = oai.embeddings.create(
        model="text-embedding-3-small", input=["a", "b"], encoding_format="float"
    )
    assert len(emb.data) == 2 and emb.usage.prompt_tokens == 2
    assert emu.stats()["realtime_requests"] == before + 4
    status, _, body = raw(
        f"{emu.openai_base_url}/chat/completions",
        "POST",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    check("CreateChatCompletionResponse", body)
    status, _, body = raw(
        f"{emu.openai_base_url}/embeddings", "POST", {"model": "gpt-4o-mini", "input": "hi"}
    )
    check("CreateEmbeddingResponse", body)


def test_realtime_default_base64_embeddings(emu: emulator.Emulator) -> None:
    # The SDK asks for base64 by default and decodes it; strict validation would reject
    # the base64 string (as with the real service), so use a lenient client here.
    with openai.OpenAI(base_url=emu.openai_base_url, api_key="k") as client:
        emb = client.embeddings.create(model="text-embedding-3-small", input="abc", dimensions=8)
    expected = emulator._responder.embedding_vector("abc", 8)
    assert emb.data[0].embedding == pytest.approx(expected, rel=1e-6)


def test_realtime_markers(emu: emulator.Emulator, oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": emulator.FAIL_MARKER}]
        )
    emu.clear_log()
    prompt = f"once {emulator.TRANSIENT_MARKER} {time.time()}"
    ok = oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
    )
    assert ok.choices[0].message.content == emulator.echo_text(prompt)
    assert len(emu.request_log) == 2  # the SDK retried the 500 once


def test_auth_paths_and_error_shapes(emu: emulator.Emulator) -> None:
    base = emu.openai_base_url
    status, headers, body = raw(f"{base}/batches", headers={"Authorization": ""})
    assert status == 401
    check("ErrorResponse", body)
    status, _, _ = raw(f"{base}/batches", headers={"Authorization": "", "x-api-key": "k"})
    assert status == 200
    for url in (f"{emu.url}/batches", f"{emu.url}/v1/v1/batches"):
        status, _, body = raw(url)
        assert status == 200 and body["object"] == "list"
    status, _, body = raw(f"{base}/nothing-here")
    assert status == 404
    check("ErrorResponse", body)
    with openai.OpenAI(base_url=emu.url, api_key="k", _strict_response_validation=True) as c:
        assert c.batches.list().data is not None  # base_url without /v1 still works


def test_bodies_are_json(emu: emulator.Emulator) -> None:
    status, headers, body = raw(f"{emu.openai_base_url}/files")
    assert headers["content-type"] == "application/json"
    json.dumps(body)
