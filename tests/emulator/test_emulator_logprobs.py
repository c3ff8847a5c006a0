"""Token log-probabilities on the emulator's chat completions (``logprobs: true``).

Asked for, a reply carries ``choices[].logprobs`` in the real shape; a row the model's
quality makes disagree has a less likely answer token, on the whole, than a row it
answers as the responder does, so a threshold on the answer's probability finds most
of those rows (the two overlap, as a real model's do).
Driven through the official OpenAI SDK over HTTP, real time and in a batch.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from emu_openapi import check

from nbbatch import emulator

LABELS = ("positive", "negative", "neutral")
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": list(LABELS)}},
    "required": ["label"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA, "strict": True}}


def truth(prompt: str) -> str:
    return LABELS[sum(map(ord, prompt)) % 3]


def responder(request: emulator.Request) -> dict[str, Any]:
    return {"label": truth(request.prompt)}


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    quality = {"gpt-4o-mini": 0.88, "gpt-4o": 0.97}
    with emulator.start(processing_seconds=0.02, responder=responder, quality=quality) as emu:
        made = openai.OpenAI(base_url=emu.openai_base_url, api_key="k", timeout=60)
        yield made
        made.close()


def body(model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "response_format": FORMAT,
        **extra,
    }


def min_prob(choice: dict[str, Any]) -> float:
    return min(math.exp(t["logprob"]) for t in choice["logprobs"]["content"])


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4o"])
def test_disagreeing_rows_have_less_likely_tokens(client: openai.OpenAI, model: str) -> None:
    agree, disagree = [], []
    for i in range(120):
        prompt = f"review number {i}"
        reply = client.chat.completions.create(**body(model, prompt, logprobs=True))
        data = reply.model_dump()
        check("CreateChatCompletionResponse", data)
        choice = data["choices"][0]
        tokens = choice["logprobs"]["content"]
        assert "".join(t["token"] for t in tokens) == choice["message"]["content"]
        assert all(t["top_logprobs"] == [] for t in tokens)
        label = json.loads(choice["message"]["content"])["label"]
        (agree if label == truth(prompt) else disagree).append(min_prob(choice))
    share = {"gpt-4o-mini": 0.88, "gpt-4o": 0.97}[model]
    assert abs(len(agree) / 120 - share) < 0.08
    assert disagree  # some rows disagree, and they are less sure on the whole
    assert all(0.25 <= p <= 0.85 for p in disagree) and all(0.5 <= p < 1 for p in agree)
    # Most agreeing rows are surer than most disagreeing ones, but the ranges overlap
    # (as a real model's do): the chance an agreeing row outscores a disagreeing one.
    wins = sum(a > d for a in agree for d in disagree) / (len(agree) * len(disagree))
    assert wins > 0.75


def test_logprobs_only_when_asked_and_top_logprobs_in_order(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(**body("gpt-4o-mini", "review number 1"))
    assert plain.choices[0].logprobs is None
    reply = client.chat.completions.create(
        **body("gpt-4o-mini", "review number 1", logprobs=True, top_logprobs=3)
    )
    data = reply.model_dump()
    check("CreateChatCompletionResponse", data)
    for token in data["choices"][0]["logprobs"]["content"]:
        top = token["top_logprobs"]
        assert len(top) == 3 and top[0]["token"] == token["token"]
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert sum(math.exp(t["logprob"]) for t in top) <= 1.0


def test_a_batch_returns_the_same_logprobs(client: openai.OpenAI) -> None:
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": body("gpt-4o-mini", f"review number {i}", logprobs=True),
        }
        for i in range(5)
    ]
    raw = "\n".join(json.dumps(line) for line in lines).encode()
    file = client.files.create(file=("in.jsonl", io.BytesIO(raw)), purpose="batch")
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id
    out = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert len(out) == 5
    for line in out:
        i = int(line["custom_id"][1:])
        live = client.chat.completions.create(
            **body("gpt-4o-mini", f"review number {i}", logprobs=True)
        )
        got = line["response"]["body"]["choices"][0]["logprobs"]
        assert got == live.model_dump()["choices"][0]["logprobs"]
