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

from ._helpers import FakeTime
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


# -- batch embeddings -----------------------------------------------------------------------
AWKWARD = [
    'a "quoted" word, a back\\slash',
    "two\nlines\tand a tab",
    "ünïcödé 🙂 and 日本語",
    "same text twice",
    "  leading and trailing spaces  ",
    "same text twice",
]


def _vector(text: str, dims: int) -> list[float]:
    from nbbatch.emulator._responder import embedding_vector

    return embedding_vector(text, dims)


def test_embeddings_merge_one_vector_per_row_in_the_frames_order(emu):
    client = gemini_client(emu)
    df = pd.DataFrame({"text": AWKWARD}, index=pd.Index(["f", "b", "z", "a", "a2", "c"], name="k"))
    emu.clear_log()
    job = nb.submit(df, "{text}", model="gemini-embedding-001", client=client,
                    endpoint="embedContent", output="vec", output_dimensionality=16)  # fmt: skip
    out = job.wait(timeout=30, progress=False).merge(df)
    # Sent as an embeddings batch, not a generateContent one.
    creates = [p for m, p in emu.request_log if m == "POST" and ":async" in p]
    assert creates == ["/gemini/v1/models/gemini-embedding-001:asyncBatchEmbedContent"]
    assert out.index.equals(df.index) and out["text"].tolist() == AWKWARD
    assert (out["vec_status"] == "succeeded").all() and out["vec_error"].isna().all()
    assert out["vec"].tolist() == [_vector(t, 16) for t in AWKWARD]
    assert job.counts["deduplicated"] == 1  # the repeated text was embedded once
    # Usage is read from each line's tokenCount; gemini-embedding-001 has a price, and
    # the repeated text (the last row) is paid once.
    tokens = job.results()["input_tokens"]
    assert (tokens > 0).all()
    assert job.cost.batch == pytest.approx(tokens.iloc[:-1].sum() * 0.075 / 1e6)
    quick = nb.try_now(df, "{text}", model="gemini-embedding-001", client=client,
                       endpoint="embedContent", output="vec", output_dimensionality=16)  # fmt: skip
    assert quick["vec"].tolist() == out["vec"].tolist()


def test_embedding_failures_are_kept_per_row_and_resubmitted():
    texts = [f"document {i}" for i in range(8)] + [f"bad {emulator.FAIL_MARKER}"]
    df = pd.DataFrame({"text": texts})
    with emulator.start(processing_seconds=0.05, error_rate=0.25, seed=3) as server:
        client = gemini_client(server)
        job = nb.submit(df, "{text}", model="gemini-embedding-001", client=client,
                        endpoint="embedContent", output="vec", retries=0)  # fmt: skip
        job.wait(timeout=30, progress=False)
        res = job.results()
        transient = res[res["error_type"].isin(["internal", "unavailable"])]
        assert job.counts["failed"] == 1 + 2 and len(transient) == 2  # 25% of 8, + the marker
        assert transient["retryable"].tolist() == [True, True]
        bad = res.loc[res["status"] == "failed"].drop(transient.index)
        assert bad["error_type"].tolist() == ["invalid_argument"]
        assert bad["retryable"].tolist() == [False]
        kept = job.merge(df)
        ok = kept["vec_status"] == "succeeded"
        assert kept.loc[ok, "vec"].tolist() == [
            _vector(t, emulator.embedding_dimensions("gemini-embedding-001"))
            for t in df.loc[ok, "text"]
        ]
        before = batches_created(server)
        job.resubmit_failed().wait(timeout=30, progress=False)
        assert batches_created(server) == before + 1
        out = job.merge(df)
        assert out["vec_status"].tolist() == ["succeeded"] * 8 + ["failed"]
        assert out["vec"].tolist()[:8] == [
            _vector(t, emulator.embedding_dimensions("gemini-embedding-001")) for t in texts[:8]
        ]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"endpoint": "embedContent", "max_tokens": 5}, "max_tokens cannot be used with"),
        ({"endpoint": "embedContent", "dimensions": 8}, "Did you mean 'output_dimensionality'"),
        ({"endpoint": "embedContent", "output_dimensionality": 0}, "must be >= 1"),
        ({"endpoint": "/v1/embeddings"}, "pass endpoint='embedContent'"),
        ({}, "is an embedding model: pass endpoint='embedContent'"),
    ],
)
def test_embedding_requests_gemini_would_refuse_are_refused_before_sending(emu, kwargs, words):
    before = batches_created(emu)
    with pytest.raises(nb.InputError, match=words):
        nb.submit(DF, "{text}", model="gemini-embedding-001", client=gemini_client(emu), **kwargs)
    assert batches_created(emu) == before


def test_an_embedding_model_without_a_price_says_so(emu):
    # Google's older embedding model: genai-prices has no price for it.
    job = nb.submit(DF, "{text}", model="text-embedding-004", client=gemini_client(emu),
                    endpoint="embedContent", output="vec")  # fmt: skip
    job.wait(timeout=30, progress=False)
    assert job.counts["succeeded"] == 3
    assert str(job.cost) == "unknown price"


def test_embedding_lines_of_either_token_count_spelling_and_errors_are_normalised():
    lines = [
        {"key": "a", "response": {"embedding": {"values": [0.5, -0.25]}, "tokenCount": "7"}},
        {"key": "b", "response": {"embedding": {"values": [1.0]}, "tokenCount": 3}},
        {"key": "c", "error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}},
        {"key": "d", "response": {}},
    ]
    raw = b"".join(json.dumps(x).encode() + b"\n" for x in lines) + b"{not json\n"
    provider = build("gemini", gemini_client_stub())
    spec = RequestSpec(model="gemini-embedding-001", endpoint="embedContent")
    rows = {r["custom_id"]: r for r in provider.parse_results(raw, spec).to_pylist()}
    assert set(rows) == {"a", "b", "c", "d"}  # the corrupt line is left to reconciliation
    assert json.loads(rows["a"]["output"]) == [0.5, -0.25] and rows["a"]["input_tokens"] == 7
    assert rows["b"]["input_tokens"] == 3 and rows["b"]["status"] == "succeeded"
    assert rows["c"]["error_type"] == "unavailable" and rows["c"]["retryable"] is True
    assert rows["d"]["status"] == "failed" and "no embedding" in rows["d"]["error_message"]


def gemini_client_stub():
    """A client that is never called (parsing needs no network)."""
    from google import genai

    return genai.Client(api_key="unused")


# -- progress and failure, as the batch operation reports them ------------------------------
def test_batch_stats_feed_the_done_and_failed_counts_while_the_batch_runs():
    fake = FakeTime()
    with emulator.start(processing_seconds=100.0, error_rate=0.2, clock=fake.now) as server:
        df = pd.DataFrame({"text": [f"row {i}" for i in range(40)]})
        job = nb.submit(df, "{text}", model="gemini-2.5-flash", client=gemini_client(server),
                        retries=0)  # fmt: skip
        job.wait_sent()
        job.context.clock = fake.now
        (batch_id,) = job.batch_ids
        info = job._provider.retrieve(batch_id)
        assert (info.status, info.total, info.done, info.failed) == ("running", 40, 0, 0)
        fake.t += 50.0  # half way through processing: 20 requests done
        info = job._provider.retrieve(batch_id)
        assert (info.total, info.done) == (40, 20) and 0 <= info.failed <= 8
        snap = job.refresh()
        assert [b.done for b in snap.batches] == [20] and snap.ready == 20
        fake.t += 60.0
        info = job._provider.retrieve(batch_id)
        assert (info.status, info.total, info.done, info.failed) == ("succeeded", 40, 40, 8)


def test_a_failed_batch_gives_its_reason_to_every_row(emu, monkeypatch):
    from nbbatch.providers.gemini import GeminiProvider

    encode = GeminiProvider.encode

    def with_a_bad_line(self, custom_ids, prompts, spec):
        # The last line loses its request: the service cannot read the file, and the
        # whole batch fails once it is validated.
        *lines, last = encode(self, custom_ids, prompts, spec).splitlines()
        broken = {"key": json.loads(last)["key"]}
        return b"".join(line + b"\n" for line in [*lines, json.dumps(broken).encode()])

    monkeypatch.setattr(GeminiProvider, "encode", with_a_bad_line)
    job = nb.submit(DF, "{text}", model="gemini-2.5-flash", client=gemini_client(emu))
    job.wait(timeout=30, progress=False)
    (batch_id,) = job.batch_ids
    info = job._provider.retrieve(batch_id)
    assert info.status == "failed" and info.failure == ("Line 3: each line needs a 'request'.")
    res = job.results()
    assert res["status"].tolist() == ["failed"] * 3
    assert set(res["error_type"]) == {"batch_failed"} and not res["retryable"].any()
    assert set(job.merge(DF)["response_error"]) == {
        "batch_failed: Line 3: each line needs a 'request'."
    }
    assert any("failed as a whole" in w for w in job.snapshot().warnings)
