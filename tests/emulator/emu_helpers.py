"""Plain helpers for the emulator tests (requests without an SDK, JSONL building)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import anthropic
import openai

from nbbatch import emulator


def raw(
    url: str,
    method: str = "GET",
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One HTTP request without an SDK: (status, headers, parsed JSON or raw bytes)."""
    data = json.dumps(body).encode() if body is not None else None
    hdrs = {"Authorization": "Bearer test", "Content-Type": "application/json"}
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, got, payload = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        status, got, payload = err.code, dict(err.headers), err.read()
        err.close()
    got = {k.lower(): v for k, v in got.items()}
    if got.get("content-type", "").startswith("application/json"):
        return status, got, json.loads(payload)
    return status, got, payload


def chat_line(custom_id: str, prompt: str, model: str = "gpt-4o-mini", **body: Any) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": prompt}], **body},
    }


def message_request(custom_id: str, prompt: str, **params: Any) -> dict:
    """One Message Batches request (``claude-haiku-4-5``, 1024 tokens unless ``params``
    say otherwise), asking ``prompt`` unless ``params`` give the messages."""
    base = {"model": "claude-haiku-4-5", "max_tokens": 1024}
    base.update(params)
    base.setdefault("messages", [{"role": "user", "content": prompt}])
    return {"custom_id": custom_id, "params": base}


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def parse_jsonl(text: str) -> list[dict]:
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.split("\n") if line]


def openai_client(emu: emulator.Emulator, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=emu.openai_base_url, api_key="test", _strict_response_validation=True, **kw
    )


def anthropic_client(emu: emulator.Emulator, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=emu.anthropic_base_url, api_key="test", _strict_response_validation=True, **kw
    )


def run_openai_batch(
    client: openai.OpenAI, rows: list[dict], endpoint: str = "/v1/chat/completions"
) -> tuple[Any, list[dict], list[dict]]:
    """Run ``rows`` as one batch to its end: (batch, output lines, error lines)."""
    f = client.files.create(file=("in.jsonl", jsonl(rows)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h")
    deadline = time.monotonic() + 60
    while b.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
        b = client.batches.retrieve(b.id)
    out = parse_jsonl(client.files.content(b.output_file_id).text) if b.output_file_id else []
    err = parse_jsonl(client.files.content(b.error_file_id).text) if b.error_file_id else []
    return b, out, err


def run_message_batch(client: anthropic.Anthropic, requests: list[dict]) -> dict[str, Any]:
    """Run ``requests`` as one Message Batch to its end: each result by custom_id."""
    b = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
    deadline = time.monotonic() + 60
    while b.processing_status != "ended":
        assert time.monotonic() < deadline
        time.sleep(0.02)
        b = client.messages.batches.retrieve(b.id)
    return {r.custom_id: r.result for r in client.messages.batches.results(b.id)}
