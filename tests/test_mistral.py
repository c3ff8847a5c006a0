"""Mistral's batch jobs: nbbatch through ``mistralai.client.Mistral`` over HTTP to the
emulator's Mistral variant (``emu.url + "/mistral"``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mistralai.client import Mistral

import nbbatch as nb
from nbbatch import emulator
from nbbatch.providers import build
from nbbatch.providers.base import RequestSpec
from nbbatch.providers.mistral import MistralProvider, parse_lines

from ._helpers import run_cli as nbbatch

MODEL = "mistral-small-latest"
_CLIENTS: list[Mistral] = []


def mistral_client(server: emulator.Emulator) -> Mistral:
    """The official Mistral SDK client on the emulator's Mistral routes."""
    client = Mistral(api_key="test-key", server_url=server.url + MistralProvider.emulator_prefix)
    _CLIENTS.append(client)
    return client


@pytest.fixture(scope="module")
def memu() -> Iterator[emulator.Emulator]:
    with emulator.start(processing_seconds=0.05) as server:
        yield server
    for client in _CLIENTS:
        client.sdk_configuration.client.close()  # type: ignore[union-attr]
    _CLIENTS.clear()


@pytest.fixture(autouse=True)
def _no_mistral_key(monkeypatch):
    """The SDK reads MISTRAL_API_KEY itself when a client has no key: none here."""
    monkeypatch.delenv("MISTRAL_API_KEY", raising=False)


def jobs_created(server: emulator.Emulator) -> int:
    return server.stats().get("mistral_batches_created", 0)


def test_submit_wait_merge_through_the_mistral_sdk(memu):
    df = pd.DataFrame({"text": ["one", "two", "three"]}, index=[10, 20, 30])
    before = jobs_created(memu)
    job = nb.submit(df, "Say {text}", model=MODEL, client=mistral_client(memu), max_tokens=50)
    job.wait(timeout=60, progress=False)
    assert job.counts["succeeded"] == 3
    assert jobs_created(memu) == before + 1
    out = job.merge()
    assert out.index.tolist() == [10, 20, 30]
    assert out["response"].tolist() == [f"[nbbatch emulator] echo: Say {t}" for t in df["text"]]
    results = job.results()
    assert (results["input_tokens"] > 0).all() and (results["output_tokens"] > 0).all()
    cost = job.snapshot().cost  # priced from genai-prices' Mistral table, at half price
    assert cost.batch is not None and cost.realtime is not None
    assert cost.batch == pytest.approx(cost.realtime / 2)
    record = job._ledger.job(job.id)  # what attach rebuilds the client from
    assert record is not None and record["provider"] == "mistral"
    assert record["base_url"] == memu.url + "/mistral"


def test_a_transient_line_is_resubmitted_and_a_refused_line_fails_alone():
    texts = ["fine", f"{emulator.TRANSIENT_MARKER} once", f"bad {emulator.FAIL_MARKER}", "ok"]
    df = pd.DataFrame({"text": texts})
    with emulator.start(processing_seconds=0.05) as server:
        job = nb.submit(df, "{text}", model=MODEL, client=mistral_client(server))
        job.wait(timeout=60, progress=False)
        assert job.counts["succeeded"] == 3 and job.counts["failed"] == 1, job.counts
        assert len(job.batch_ids) == 2  # the first pass, and the transient row again
        assert jobs_created(server) == 2
    out = job.merge()
    failed = out[out["response_status"] == "failed"]
    assert failed["text"].tolist() == [f"bad {emulator.FAIL_MARKER}"]
    assert "nbbatch emulator" in failed["response_error"].iloc[0]


def test_cancel_ends_every_row_and_the_job_cancelled():
    with emulator.start(processing_seconds=30.0) as server:
        df = pd.DataFrame({"text": [f"r{i}" for i in range(5)]})
        job = nb.submit(df, "{text}", model=MODEL, client=mistral_client(server))
        job.cancel()
        job.wait(timeout=30, progress=False)
        assert job.counts["cancelled"] == 5, job.counts
        assert job.status == "cancelled"
        assert job.merge()["response_status"].eq("cancelled").all()


def test_the_cli_attaches_to_a_mistral_job_on_the_emulator():
    with emulator.start(processing_seconds=600.0) as server:
        df = pd.DataFrame({"text": ["a", "b"]})
        job = nb.submit(df, "{text}", model=MODEL, client=mistral_client(server))
        while job.refresh().sending is not None or not job.batch_ids:
            time.sleep(0.05)  # until the job is created at the emulator
        result = nbbatch("status", job.id)
        assert result.returncode == 0, result.stderr
        assert job.id in result.stdout
        assert f"batch {job.batch_ids[0]}: RUNNING" in result.stdout
        job.cancel()


def test_a_parameter_mistral_refuses_is_refused_before_anything_is_sent(memu):
    df = pd.DataFrame({"text": ["a"]})
    before = jobs_created(memu)
    # OpenAI's name for the limit: Mistral answers it 422 "extra_forbidden".
    with pytest.raises(nb.InputError, match="max_completion_tokens"):
        nb.submit(df, "{text}", model=MODEL, client=mistral_client(memu), max_completion_tokens=5)
    with pytest.raises(nb.InputError, match="top_p=1.5 is out of range"):
        nb.submit(df, "{text}", model=MODEL, client=mistral_client(memu), top_p=1.5)
    with pytest.raises(nb.InputError, match="random_seed"):
        nb.submit(df, "{text}", model=MODEL, client=mistral_client(memu), random_seed="x")
    assert jobs_created(memu) == before
    assert nb.jobs().empty


def test_an_unknown_model_is_refused_with_a_suggestion(memu):
    df = pd.DataFrame({"text": ["a"]})
    before = jobs_created(memu)
    with pytest.raises(nb.InputError, match="did you mean 'mistral-small-latest'"):
        nb.submit(df, "{text}", model="mistral-smal-latest", client=mistral_client(memu))
    assert jobs_created(memu) == before


def test_a_line_with_a_field_mistral_does_not_take_fails_alone_with_its_422(memu):
    """Per-line failures as the emulator writes them: the line's own 422, read back by
    the provider into a failed row of that custom_id only."""
    client = mistral_client(memu)
    lines = [
        {"custom_id": "good", "body": {"messages": [{"role": "user", "content": "hi"}]}},
        {"custom_id": "bad", "body": {"messages": [], "max_completion_tokens": 5}},
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.upload(
        file={"file_name": "in.jsonl", "content": content}, purpose="batch"
    )
    job = client.batch.jobs.create(
        input_files=[uploaded.id], model=MODEL, endpoint="/v1/chat/completions"
    )
    deadline = time.monotonic() + 30
    while job.status not in ("SUCCESS", "FAILED"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
        job = client.batch.jobs.get(job_id=job.id)
    assert (job.status, job.succeeded_requests, job.failed_requests) == ("SUCCESS", 1, 1)
    provider = build("mistral", client)
    spec = RequestSpec(model=MODEL, endpoint="/v1/chat/completions")
    info = provider.retrieve(job.id)
    rows = pd.concat(
        [provider.parse_results(raw, spec).to_pandas() for raw in provider.fetch_results(info)]
    ).set_index("custom_id")
    assert rows.loc["good", "status"] == "succeeded"
    assert rows.loc["bad", "status"] == "failed"
    assert rows.loc["bad", "error_type"] == "extra_forbidden"
    assert "max_completion_tokens" in rows.loc["bad", "error_message"]
    assert not rows.loc["bad", "retryable"]


def test_the_models_endpoint_lists_what_the_job_may_use(memu):
    client = mistral_client(memu)
    ids = [m.id for m in client.models.list().data or []]
    assert MODEL in ids and "codestral-latest" in ids
    assert build("mistral", client).find_model("mistral-large-latest") is True


def test_a_request_line_carries_mistrals_words_and_no_model():
    provider = MistralProvider(client=None)
    spec = RequestSpec(
        model=MODEL,
        endpoint="/v1/chat/completions",
        system="Be brief.",
        max_tokens=20,
        temperature=0.2,
        params={"random_seed": 7},
    )
    line = json.loads(provider.encode(pa.array(["id-1"]), pa.array(['say "hi"\n']), spec))
    assert line == {
        "custom_id": "id-1",
        "body": {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": 'say "hi"\n'},
            ],
            "max_tokens": 20,
            "temperature": 0.2,
            "random_seed": 7,
        },
    }


_CHARS = st.characters(blacklist_categories=("Cs",))  # JSON text holds no lone surrogate


@settings(max_examples=30, deadline=None)
@given(
    ids=st.lists(st.text(_CHARS, min_size=1, max_size=12), min_size=1, max_size=8, unique=True),
    text=st.text(_CHARS, max_size=40),
    status=st.sampled_from([200, 400, 422, 429, 500]),
)
def test_every_result_line_becomes_one_row_of_its_custom_id(ids, text, status):
    lines = []
    for cid in ids:
        if status == 200:
            body = {
                "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4},
            }
        else:
            body = {"object": "error", "message": text or "no", "type": "some_error", "code": None}
        line = {"id": "x", "custom_id": cid, "response": {"status_code": status, "body": body}}
        lines.append(json.dumps(line))
    table = parse_lines(("\n".join(lines) + "\n").encode()).to_pandas()
    assert table["custom_id"].tolist() == ids
    if status == 200:
        assert (table["status"] == "succeeded").all() and table["output"].eq(text).all()
    else:
        assert (table["status"] == "failed").all()
        assert table["retryable"].tolist() == [status >= 429] * len(ids)


def test_one_row_in_real_time_is_normalised_like_a_batch_line(memu):
    provider = build("mistral", mistral_client(memu))
    spec = RequestSpec(model=MODEL, endpoint="/v1/chat/completions", max_tokens=50)
    row = provider.realtime("r1", "hello", spec)
    assert row["status"] == "succeeded" and row["output"] == "[nbbatch emulator] echo: hello"
    assert row["input_tokens"] > 0 and row["truncated"] is False
    refused = provider.realtime("r2", f"bad {emulator.FAIL_MARKER}", spec)
    assert refused["status"] == "failed" and refused["error_type"] == "invalid_request_error"
    assert not refused["retryable"]


def test_failed_and_timed_out_rows_are_resubmitted_and_end_succeeded():
    """A job whose time ran out (TIMEOUT_EXCEEDED) lists only the rows that ran: the
    others end expired, and with the failed ones go out again in one new job."""
    df = pd.DataFrame({"text": [f"row {i}" for i in range(40)]})
    with emulator.start(processing_seconds=0.05, error_rate=0.2, expire_rate=0.1, seed=3) as emu:
        client = mistral_client(emu)
        job = nb.submit(df, "{text}", model=MODEL, client=client, retries=0)
        job.wait(timeout=60, progress=False)
        first = job.counts
        assert first["expired"] > 0 and first["failed"] > 0, first
        assert job.snapshot().batches[0].status == "TIMEOUT_EXCEEDED"
        retried = job.failed().index.tolist()
        assert len(retried) == first["expired"] + first["failed"]
        job.resubmit_failed().wait(timeout=60, progress=False)
        assert jobs_created(emu) == 2
        assert job.snapshot().batches[-1].n_requests == len(retried)
    out = job.merge()
    assert (out["response_status"] == "succeeded").all()
    assert out["response"].tolist() == [emulator.echo_text(t) for t in df["text"]]


def test_a_json_schema_reply_becomes_columns(memu):
    """The schema goes as ``json_schema.schema`` (the SDK's TypedDict calls it
    ``schema_definition``, its wire name is ``schema``): not refused as missing."""
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": ["spam", "ham"]}},
        "required": ["label"],
    }
    df = pd.DataFrame({"text": ["buy now", "hello"]})
    client = mistral_client(memu)
    out = nb.submit(df, "{text}", model=MODEL, client=client, response_format=schema)
    assert out.wait(timeout=60, progress=False).merge()["label"].isin(["spam", "ham"]).all()


@pytest.mark.slow
def test_a_mistral_job_on_a_stopped_emulator_is_unreachable_and_gets_no_key(monkeypatch):
    """Attach rebuilds the job's client behind the loopback guard: with the emulator
    gone, the command says so (exit 4) and MISTRAL_API_KEY is never sent there."""
    with emulator.start(processing_seconds=600.0) as server:
        job = nb.submit(pd.DataFrame({"text": ["a"]}), "{text}", model=MODEL,
                        client=mistral_client(server))  # fmt: skip
        while job.refresh().sending is not None or not job.batch_ids:
            time.sleep(0.05)
        address = server.url.removeprefix("http://")
    monkeypatch.setenv("MISTRAL_API_KEY", "sk-secret-never-sent")
    result = nbbatch("status", job.id)
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr and address in result.stderr
    assert "sk-secret-never-sent" not in result.stderr + result.stdout


def test_a_mistral_model_without_a_client_needs_mistrals_key_and_no_local_backend():
    df = pd.DataFrame({"text": ["a"]})
    with pytest.raises(nb.ConfigError, match="MISTRAL_API_KEY"):
        nb.submit(df, "{text}", model=MODEL)
    with pytest.raises(nb.ConfigError, match="nb.emulator.start"):
        nb.submit(df, "{text}", model=MODEL, provider="local")
    assert nb.jobs().empty
