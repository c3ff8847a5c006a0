"""Try before you batch: the same requests through the real-time APIs, concurrently."""

from __future__ import annotations

import threading
import time

import orjson
import pyarrow as pa
import pytest

from nbbatch import InputError, emulator
from nbbatch import _realtime as realtime
from nbbatch.providers import build, infer
from nbbatch.providers.base import ROW_RESULT_SCHEMA, RequestSpec

from .conftest import model_for


def _provider(client):
    return build(infer(None, client, model_for(client))[0], client)


def _spec(client, **kw) -> RequestSpec:
    provider = _provider(client)
    return RequestSpec(model=model_for(client), endpoint=provider.default_endpoint, **kw)


def _batch(provider, ids, prompts, spec) -> pa.Table:
    """The same rows through the batch API, for comparison."""
    info = provider.create(provider.encode(ids, prompts, spec), spec, {"nbbatch_job": "rt"})
    deadline = time.monotonic() + 30
    while not info.ended:
        assert time.monotonic() < deadline
        time.sleep(0.05)
        info = provider.retrieve(info.batch_id)
    tables = [provider.parse_results(raw, spec) for raw in provider.fetch_results(info)]
    return pa.concat_tables(tables).sort_by("custom_id")


def test_run_on_both_providers_with_one_failing_row(client):
    provider = _provider(client)
    prompts = ["Classify: great", f"Classify: {emulator.FAIL_MARKER} broken", "Classify: meh"]
    ids = pa.array(["r0", "r1", "r2"])
    table = realtime.run(provider, ids, pa.array(prompts), _spec(client, system="Be brief."))
    assert table.schema == ROW_RESULT_SCHEMA
    rows = table.to_pylist()
    assert [r["custom_id"] for r in rows] == ["r0", "r1", "r2"]
    assert [r["status"] for r in rows] == ["succeeded", "failed", "succeeded"]
    assert rows[0]["output"] == emulator.echo_text(prompts[0])
    assert rows[2]["output"] == emulator.echo_text(prompts[2])
    assert rows[0]["input_tokens"] > 0 and rows[0]["output_tokens"] > 0
    assert rows[0]["error_type"] is None and rows[0]["retryable"] is None
    failed = rows[1]
    assert failed["output"] is None
    assert failed["error_type"] in ("invalid_request_error", "invalid_argument")  # Gemini's
    assert emulator.FAIL_MARKER in failed["error_message"]
    assert failed["retryable"] is False


def test_real_time_rows_match_the_batch_rows(client):
    """Same statuses, outputs, error types and token counts as the batch path."""
    provider = _provider(client)
    spec = _spec(client, system="You label things.", max_tokens=200)
    ids = pa.array(["a", "b", "c"])
    prompts = pa.array(["first", f"second {emulator.FAIL_MARKER}", "third"])
    live = realtime.run(provider, ids, prompts, spec).sort_by("custom_id")
    batch = _batch(provider, ids, prompts, spec)
    for column in ("custom_id", "status", "output", "error_type", "retryable"):
        assert live.column(column).to_pylist() == batch.column(column).to_pylist(), column
    ok = [0, 2]
    for column in ("input_tokens", "output_tokens", "cached_tokens"):
        assert [live.column(column)[i].as_py() for i in ok] == [
            batch.column(column)[i].as_py() for i in ok
        ], column


def test_responses_endpoint(oai):
    provider = build("openai", oai)
    spec = RequestSpec(model="gpt-4o-mini", endpoint="/v1/responses", system="Short.")
    table = realtime.run(provider, pa.array(["x"]), pa.array(["hi there"]), spec)
    row = table.to_pylist()[0]
    assert row["status"] == "succeeded"
    assert row["output"] == emulator.echo_text("hi there")
    assert row["input_tokens"] > 0


def test_embeddings_via_real_time_match_the_batch(oai):
    provider = build("openai", oai)
    spec = RequestSpec(model="text-embedding-3-small", endpoint="/v1/embeddings")
    ids = pa.array(["e0", "e1"])
    texts = pa.array(["a sentence", "another one"])
    live = realtime.run(provider, ids, texts, spec)
    vectors = [orjson.loads(t) for t in live.column("output").to_pylist()]
    assert [len(v) for v in vectors] == [1536] * 2  # text-embedding-3-small's size
    assert all(isinstance(x, float) for x in vectors[0])
    assert live.column("input_tokens").to_pylist() == [3, 3]
    batch = _batch(provider, ids, texts, spec)
    assert live.column("output").to_pylist() == batch.column("output").to_pylist()


def test_extra_params_reach_the_request(oai):
    """Keys the SDK method has no argument for still go into the body (extra_body)."""
    provider = build("openai", oai)
    spec = RequestSpec(
        model="gpt-4o-mini",
        endpoint="/v1/chat/completions",
        params={"stop": ["Classify"]},
    )
    table = realtime.run(provider, pa.array(["x"]), pa.array(["Classify: a"]), spec)
    row = table.to_pylist()[0]
    assert row["status"] == "succeeded"
    # The stop sequence was honoured: the echo is cut where "Classify" begins.
    assert row["output"] == emulator.echo_text("")
    # A key the SDK has no argument for reaches the service too, which refuses an
    # unknown one, as OpenAI does: the row fails naming it.
    spec = RequestSpec(
        model="gpt-4o-mini", endpoint="/v1/chat/completions", params={"nbbatch_unknown_field": 1}
    )
    row = realtime.run(provider, pa.array(["x"]), pa.array(["a"]), spec).to_pylist()[0]
    assert row["status"] == "failed"
    assert "Unrecognized request argument supplied: nbbatch_unknown_field" in row["error_message"]


def test_bad_parameters_raise_before_anything_is_sent(client, emu):
    provider = _provider(client)
    before = emu.stats()["realtime_requests"]
    endpoint = "/v1/nowhere"
    with pytest.raises(InputError):
        realtime.run(
            provider,
            pa.array(["a"]),
            pa.array(["x"]),
            RequestSpec(model=model_for(client), endpoint=endpoint),
        )
    with pytest.raises(InputError, match="pair up"):
        realtime.run(provider, pa.array(["a", "b"]), pa.array(["x"]), _spec(client))
    with pytest.raises(InputError, match="concurrency"):
        realtime.run(provider, pa.array(["a"]), pa.array(["x"]), _spec(client), concurrency=0)
    assert emu.stats()["realtime_requests"] == before
    assert (
        realtime.run(
            provider, pa.array([], pa.string()), pa.array([], pa.string()), _spec(client)
        ).num_rows
        == 0
    )


# ------------------------------------------------------------------ concurrency, retries


class Wrapped:
    """A provider whose real-time calls can be watched or made to fail first."""

    def __init__(
        self,
        inner,
        fail_first: int = 0,
        retryable: bool = True,
        raise_exc: bool = False,
        meet: float = 0.0,
    ):
        self.inner = inner
        self.meet = meet
        self.fail_first = fail_first
        self.retryable = retryable
        self.raise_exc = raise_exc
        self.calls: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.cond = threading.Condition()

    def encode(self, *args):
        return self.inner.encode(*args)

    def realtime(self, custom_id, prompt, spec):
        with self.cond:
            self.calls[custom_id] = self.calls.get(custom_id, 0) + 1
            n = self.calls[custom_id]
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.cond.notify_all()
            # Hold the call until another one is in flight too (or a short timeout):
            # concurrent workers meet here at once; a sequential loop would not.
            if self.meet:
                self.cond.wait_for(lambda: self.in_flight >= 2, timeout=self.meet)
        try:
            if self.raise_exc:
                raise RuntimeError("boom")
            if n <= self.fail_first:
                return {
                    "custom_id": custom_id,
                    "status": "failed",
                    "output": None,
                    "error_type": "rate_limit_error" if self.retryable else "invalid_request_error",
                    "error_message": "simulated",
                    "retryable": self.retryable,
                    "input_tokens": None,
                    "output_tokens": None,
                    "cached_tokens": None,
                    "truncated": False,
                }
            return self.inner.realtime(custom_id, prompt, spec)
        finally:
            with self.cond:
                self.in_flight -= 1


def test_requests_really_run_concurrently(client):
    wrapped = Wrapped(_provider(client), meet=5.0)
    ids = pa.array([f"c{i}" for i in range(8)])
    table = realtime.run(wrapped, ids, pa.array(["x"] * 8), _spec(client), concurrency=4)
    assert table.column("status").to_pylist() == ["succeeded"] * 8
    assert 2 <= wrapped.max_in_flight <= 4


def test_concurrency_one_is_sequential(oai):
    wrapped = Wrapped(build("openai", oai), meet=0.2)
    spec = RequestSpec(model="gpt-4o-mini", endpoint="/v1/chat/completions")
    start = time.monotonic()
    realtime.run(wrapped, pa.array(["a", "b"]), pa.array(["x", "y"]), spec, concurrency=1)
    assert wrapped.max_in_flight == 1
    assert time.monotonic() - start < 30


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(realtime, "BACKOFF", 0.001)
    monkeypatch.setattr(realtime, "MAX_BACKOFF", 0.002)


def test_transient_failures_are_retried_until_they_succeed(oai, fast_backoff):
    wrapped = Wrapped(build("openai", oai), fail_first=2)
    spec = RequestSpec(model="gpt-4o-mini", endpoint="/v1/chat/completions")
    table = realtime.run(wrapped, pa.array(["a"]), pa.array(["x"]), spec, retries=3)
    assert table.column("status").to_pylist() == ["succeeded"]
    assert wrapped.calls == {"a": 3}


def test_retries_are_bounded_and_the_last_error_is_kept(oai, fast_backoff):
    wrapped = Wrapped(build("openai", oai), fail_first=10)
    spec = RequestSpec(model="gpt-4o-mini", endpoint="/v1/chat/completions")
    row = realtime.run(wrapped, pa.array(["a"]), pa.array(["x"]), spec, retries=2).to_pylist()[0]
    assert wrapped.calls == {"a": 3}
    assert (row["status"], row["error_type"], row["retryable"]) == (
        "failed",
        "rate_limit_error",
        True,
    )


def test_permanent_failures_are_not_retried(oai, fast_backoff):
    wrapped = Wrapped(build("openai", oai), fail_first=10, retryable=False)
    spec = RequestSpec(model="gpt-4o-mini", endpoint="/v1/chat/completions")
    realtime.run(wrapped, pa.array(["a"]), pa.array(["x"]), spec, retries=3)
    assert wrapped.calls == {"a": 1}


def test_an_exception_for_one_row_does_not_raise(oai):
    wrapped = Wrapped(build("openai", oai), raise_exc=True)
    spec = RequestSpec(model="gpt-4o-mini", endpoint="/v1/chat/completions")
    row = realtime.run(wrapped, pa.array(["a"]), pa.array(["x"]), spec).to_pylist()[0]
    assert row["status"] == "failed"
    assert row["error_type"] == "client_error"
    assert "RuntimeError: boom" in row["error_message"]


def test_transient_server_errors_end_in_success(client):
    """The emulator answers 500/529 once for this marker; the retries get through."""
    provider = _provider(client)
    prompt = f"{emulator.TRANSIENT_MARKER} {id(client)} {time.monotonic()}"
    row = realtime.run(provider, pa.array(["t"]), pa.array([prompt]), _spec(client)).to_pylist()[0]
    assert row["status"] == "succeeded"
    assert row["output"] == emulator.echo_text(prompt)


def test_anthropic_cached_system_prompt_counts_cache_reads(emu):
    from .conftest import anthropic_client

    provider = build("anthropic", anthropic_client(emu))
    system = f"A long shared instruction {time.monotonic()} " * 20
    spec = RequestSpec(
        model="claude-haiku-4-5", endpoint="/v1/messages", system=system, cache_system=True
    )
    first = realtime.run(provider, pa.array(["a"]), pa.array(["one"]), spec).to_pylist()[0]
    second = realtime.run(provider, pa.array(["b"]), pa.array(["one"]), spec).to_pylist()[0]
    assert first["cached_tokens"] == 0
    assert second["cached_tokens"] > 0
    # input_tokens counts every input token, cached ones included, as for a batch.
    assert second["input_tokens"] == first["input_tokens"]
