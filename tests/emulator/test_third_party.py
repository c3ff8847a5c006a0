"""A batch library nbbatch did not write (steadybatch, from the package index) runs its
documented flow against ``python -m nbbatch.emulator`` and gets what the services give:
every line back, checked against its schema, faults retried, and a client bug (a
parameter the service refuses) reported per line with the service's message."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import anthropic
import openai
import pytest

# A dev dependency (pyproject.toml): imported plainly so a missing install fails loudly
# instead of skipping the only check made by code nbbatch did not write.
import steadybatch
from google import genai
from google.genai import types as genai_types
from steadybatch import Outcome, Request, Runner
from steadybatch.providers.anthropic_batch import AnthropicBatch
from steadybatch.providers.gemini_batch import GeminiBatch
from steadybatch.providers.openai_batch import OpenAIBatch

SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["negative", "neutral", "positive"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["sentiment", "confidence"],
    "additionalProperties": False,
}
TEXTS = [f"ticket {i}: the product {'works' if i % 2 else 'broke'}" for i in range(12)]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """``python -m nbbatch.emulator`` in its own process, with a few faults; its URL."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nbbatch.emulator",
            "--validating-seconds=0",
            "--processing-seconds=0.1",
            "--finalizing-seconds=0",
            "--error-rate=0.1",
            "--missing-rate=0.1",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("nbbatch emulator serving on "), first
        yield first.split()[-1]
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


def requests(**kw: object) -> list[Request]:
    return [
        Request(key=f"t{i}", messages=[{"role": "user", "content": text}], **kw)  # type: ignore[arg-type]
        for i, text in enumerate(TEXTS)
    ]


def run(provider: object, model: str, reqs: list[Request]) -> steadybatch.RunReport:
    runner = Runner(provider, model, response_schema=SCHEMA, poll_every=0.05, max_attempts=3)  # type: ignore[arg-type]
    return runner.run(reqs)


def assert_all_ok(report: steadybatch.RunReport) -> None:
    assert report.ok == len(TEXTS) and report.failed == 0
    assert [r.key for r in report.results] == [f"t{i}" for i in range(len(TEXTS))]
    for r in report.results:
        assert r.data["sentiment"] in ("negative", "neutral", "positive")
        assert 0 <= r.data["confidence"] <= 1


def test_steadybatch_openai(server: str) -> None:
    with openai.OpenAI(base_url=f"{server}/v1", api_key="any") as client:
        report = run(OpenAIBatch(client), "gpt-4.1-mini", requests())
    assert_all_ok(report)
    assert report.lines_missing > 0 or report.lines_errored > 0  # faults were retried


def test_steadybatch_anthropic(server: str) -> None:
    with anthropic.Anthropic(base_url=server, api_key="any") as client:
        # steadybatch sends the schema as it is; Claude's structured outputs refuse
        # minimum/maximum, so it must go through the SDK's transform_schema first.
        provider = AnthropicBatch(client)
        runner = Runner(
            provider,
            "claude-haiku-4-5",
            response_schema=anthropic.transform_schema(SCHEMA),
            poll_every=0.05,
        )
        report = runner.run(requests())
    assert report.ok == len(TEXTS)
    for r in report.results:
        assert 0 <= r.data["confidence"] <= 1  # the bounds in the description held


def test_steadybatch_gemini(server: str) -> None:
    options = genai_types.HttpOptions(base_url=f"{server}/gemini")
    client = genai.Client(api_key="any", http_options=options)
    try:
        report = run(GeminiBatch(client), "gemini-2.5-flash", requests())
    finally:
        client.close()
    assert_all_ok(report)


def test_a_client_bug_fails_per_line_with_the_services_message(server: str) -> None:
    """temperature 5 is refused by OpenAI: every line ends an error naming the
    parameter, after steadybatch's retries, instead of passing on the emulator."""
    with openai.OpenAI(base_url=f"{server}/v1", api_key="any") as client:
        report = run(OpenAIBatch(client), "gpt-4.1-mini", requests(temperature=5.0))
    assert report.ok == 0
    errors = [r for r in report.results if r.outcome is Outcome.ERROR]
    assert errors and all("decimal_above_max_value" in (r.error or "") for r in errors)
    with anthropic.Anthropic(base_url=server, api_key="any") as client:
        bad = Runner(
            AnthropicBatch(client),
            "claude-haiku-4-5",
            response_schema=SCHEMA,
            poll_every=0.05,
            max_attempts=1,
        ).run(requests())
    # The schema's minimum/maximum are refused by Claude's structured outputs.
    assert bad.ok == 0 and all(
        "is not supported" in (r.error or "") for r in bad.results if r.outcome is Outcome.ERROR
    )
