"""End to end through the real SDK over HTTP to the emulator: submit, wait, merge."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator

from ._helpers import PROMPT
from ._helpers import echoed as expected
from .conftest import client_for, model_for, openai_client


def run(df, client, **kwargs) -> nb.BatchJob:
    job = nb.submit(df, PROMPT, model=model_for(client), client=client, output="label", **kwargs)
    return job.wait(timeout=30, progress=False)


def test_dataframe_round_trip_keeps_index_columns_and_order(client):
    df = pd.DataFrame(
        {"text": [f"review number {i}" for i in range(25)], "stars": range(25)},
        index=pd.RangeIndex(100, 125, name="rid"),
    )
    job = run(df, client)
    out = job.merge(df)
    assert list(out.columns) == ["text", "stars", "label", "label_status", "label_error"]
    assert out.index.equals(df.index)
    pd.testing.assert_frame_equal(out[["text", "stars"]], df)
    assert (out["label_status"] == "succeeded").all()
    assert out["label"].tolist() == expected(df["text"])
    assert out["label_error"].isna().all()
    assert job.counts == {
        "succeeded": 25, "failed": 0, "expired": 0, "cancelled": 0, "skipped": 0,
        "pending": 0, "total": 25, "reused": 0, "deduplicated": 0, "realtime": 0,
    }  # fmt: skip
    assert job.status == "completed"
    # merge() without arguments uses the submitted data
    pd.testing.assert_frame_equal(job.merge(), out)


def test_several_columns_in_one_template(client):
    df = pd.DataFrame({"title": ["A", "B"], "body": ["first", "second"]})
    job = nb.submit(df, "{title}: {body} ({title})", model=model_for(client), client=client)
    out = job.wait(timeout=30, progress=False).merge()
    assert out["response"].tolist() == [
        emulator.echo_text("A: first (A)"),
        emulator.echo_text("B: second (B)"),
    ]


@pytest.mark.parametrize("placeholder", ["{}", "{comment}"])
def test_series_round_trip(client, placeholder):
    s = pd.Series(["great", "awful", "fine"], index=["x", "y", "z"], name="comment")
    job = nb.submit(s, "Sentiment of: " + placeholder, model=model_for(client), client=client)
    out = job.wait(timeout=30, progress=False).merge()
    assert out.index.tolist() == ["x", "y", "z"]
    assert out["comment"].tolist() == s.tolist()
    assert out["response"].tolist() == [emulator.echo_text(f"Sentiment of: {v}") for v in s]


INDEXES = {
    "ints": pd.Index([5, 3, 99, -1]),
    "strings with spaces and unicode": pd.Index(["a b", "ünï cödé", "日本語", "a/b?c"]),
    "timestamps": pd.DatetimeIndex(pd.date_range("2024-01-01", periods=4, freq="h", tz="UTC")),
    "tuples": pd.MultiIndex.from_tuples([("a", 1), ("a", 2), ("b", 1), ("b", 2)]),
    "duplicates": pd.Index(["same", "same", "other", "same"]),
    "floats": pd.Index([0.5, 1.5, np.nan, 2.0]),
}


@pytest.mark.parametrize("kind", list(INDEXES))
def test_every_index_kind_maps_each_row_to_its_own_result(client, kind):
    df = pd.DataFrame({"text": [f"row {i} of {kind}" for i in range(4)]}, index=INDEXES[kind])
    job = run(df, client)
    out = job.merge(df)
    assert out.index.equals(df.index)
    assert out["label"].tolist() == expected(df["text"])
    ids = job.results().index
    assert ids.is_unique
    assert ids.str.fullmatch(r"[a-zA-Z0-9_-]{1,64}").all()


def test_custom_ids_are_meaningful_and_stable(client):
    df = pd.DataFrame({"text": ["a", "b"]}, index=["order 17", "order 18"])
    first = run(df, client).results().index.tolist()
    second = run(df, client).results().index.tolist()
    assert first == second == ["0-order_17", "1-order_18"]
    clean = pd.DataFrame({"text": ["a", "b"]}, index=["sku-1", "sku-2"])
    assert run(clean, client).results().index.tolist() == ["sku-1", "sku-2"]


def test_id_column_names_the_rows_and_aligns_a_reordered_frame(client):
    df = pd.DataFrame({"ticket": ["T-9", "T-2", "T-5"], "text": ["nine", "two", "five"]})
    job = run(df, client, id_column="ticket")
    assert job.results().index.tolist() == ["T-9", "T-2", "T-5"]
    shuffled = df.sample(frac=1, random_state=1).reset_index(drop=True)
    out = job.merge(shuffled)
    assert out["text"].tolist() == shuffled["text"].tolist()
    assert out["label"].tolist() == expected(shuffled["text"])


def test_merge_on_a_sorted_subset_matches_by_label(client):
    df = pd.DataFrame({"text": [f"t{i}" for i in range(6)]}, index=list("abcdef"))
    job = run(df, client)
    part = df.iloc[[4, 1]]
    out = job.merge(part)
    assert out.index.tolist() == ["e", "b"]
    assert out["label"].tolist() == expected(["t4", "t1"])
    with pytest.raises(nb.MergeError, match="not rows of job"):
        job.merge(pd.DataFrame({"text": ["zzz"]}, index=["zzz"]))


def test_unicode_and_very_long_text(client):
    texts = [
        'emoji 😀🎉 and "quotes", back\\slash, tab\t, newline\n end',
        "x" * 60_000,
        "\u2028 line separator and \x00 nul and \x1f control",
        "",
    ]
    df = pd.DataFrame({"text": texts})
    # The emulator, like the services, refuses more output tokens than the model has:
    # 16,384 is gpt-4o-mini's limit (the smallest of the three test models), and the
    # echo of 60,000 characters (about 15,000 tokens at 4 characters a token) fits in it.
    out = run(df, client, max_tokens=16_384).merge(df)
    assert out["label"].tolist() == expected(texts)


def test_results_arriving_out_of_order_are_matched_by_custom_id(provider, nbbatch_home):
    df = pd.DataFrame({"text": [f"item {i}" for i in range(40)]})
    # Gemini documents its results in request order, and the emulator keeps that order
    # unless asked to reorder them as the service has been reported to; ask, so that
    # matching by key is proven for Gemini too (OpenAI and Anthropic always reorder).
    with emulator.start(processing_seconds=0.05, gemini_out_of_order=True) as server:
        client = client_for(provider, server)
        job = run(df, client)
        (batch_id,) = job.batch_ids
        # The raw result file, as the provider serves it (nbbatch keeps only what it parsed).
        provider_ = job._ctx.provider
        raw = b"".join(provider_.fetch_results(provider_.retrieve(batch_id)))
    assert not list((nbbatch_home / "files" / job.id).glob(f"{batch_id}.*.jsonl"))
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    order = [line.get("custom_id", line.get("key")) for line in lines]  # Gemini: "key"
    assert sorted(order, key=int) == [str(i) for i in range(40)]
    assert order != sorted(order, key=int)  # the emulator really shuffled them
    assert job.merge(df)["label"].tolist() == expected(df["text"])


def test_a_failing_row_ends_failed_with_its_error_and_the_others_succeed(client):
    df = pd.DataFrame({"text": ["fine", "[[emulator:fail]] broken", "also fine"]})
    job = run(df, client)
    out = job.merge(df)
    assert out["label_status"].tolist() == ["succeeded", "failed", "succeeded"]
    assert pd.isna(out["label"].iloc[1])
    # In the provider's own words: Gemini names it with Google's status, INVALID_ARGUMENT.
    assert out["label_error"].iloc[1].startswith(("invalid_request_error", "invalid_argument"))
    assert out["label"].iloc[[0, 2]].tolist() == expected(["fine", "also fine"])
    assert job.counts["failed"] == 1 and job.counts["succeeded"] == 2
    failed = job.failed()
    assert failed.index.tolist() == [1]


def test_missing_values_are_skipped_with_a_reason_or_sent_empty(client):
    df = pd.DataFrame({"text": ["a", None, np.nan, "d"]})
    job = run(df, client)
    out = job.merge(df)
    assert out["label_status"].tolist() == ["succeeded", "skipped", "skipped", "succeeded"]
    assert "missing value" in out["label_error"].iloc[1]
    assert job.counts["skipped"] == 2 and job.counts["total"] == 4
    sent_empty = run(df, client, missing="empty").merge(df)
    assert sent_empty["label_status"].tolist() == ["succeeded"] * 4
    assert sent_empty["label"].iloc[1] == emulator.echo_text(PROMPT.format(text=""))


def test_system_max_tokens_temperature_and_extra_params_reach_the_body(emu):
    client = openai_client(emu)
    df = pd.DataFrame({"text": ["hello"]})
    job = nb.submit(
        df, PROMPT, model="gpt-4o-mini", client=client, system="Be brief.", max_tokens=500,
        temperature=0.2, seed=42, metadata={"tag": "x"},
    )  # fmt: skip
    job.wait(timeout=30, progress=False)
    batch = client.batches.retrieve(job.batch_ids[0])
    raw = client.files.content(batch.input_file_id).text
    body = json.loads(raw.splitlines()[0])["body"]
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["max_completion_tokens"] == 500
    assert body["temperature"] == 0.2
    assert body["seed"] == 42


@pytest.mark.parametrize("endpoint", ["/v1/responses", "/v1/embeddings"])
def test_other_openai_endpoints(emu, endpoint):
    client = openai_client(emu)
    df = pd.DataFrame({"text": ["one", "two"]})
    model = "text-embedding-3-small" if endpoint.endswith("embeddings") else "gpt-4o-mini"
    job = nb.submit(df, PROMPT, model=model, client=client, endpoint=endpoint)
    out = job.wait(timeout=30, progress=False).merge()
    assert (out["response_status"] == "succeeded").all()
    if endpoint.endswith("embeddings"):
        vectors = out["response"].tolist()
        assert all(isinstance(v, list) and len(v) > 8 for v in vectors)
        assert vectors[0] != vectors[1]
    else:
        assert out["response"].tolist() == expected(["one", "two"])


def test_an_empty_frame_is_refused_and_nothing_recorded(client):
    with pytest.raises(nb.InputError, match="no rows"):
        nb.submit(pd.DataFrame({"text": []}), PROMPT, model=model_for(client), client=client)
    assert nb.jobs().empty


# The same round trips on an account whose batch queue holds a fraction of each job:
# the jobs go in waves (see nbbatch._quota), and must end exactly as above.
TIGHT = {"enqueued_token_limit": 60, "anthropic_queue_limit": 8, "gemini_enqueued_token_limit": 60}


@pytest.fixture(scope="module")
def tight_emu():
    with emulator.start(processing_seconds=0.05, **TIGHT) as server:
        yield server


@pytest.fixture(params=["openai", "anthropic", "gemini"])
def tight(request, tight_emu):
    return client_for(request.param, tight_emu)


@pytest.mark.parametrize(
    ("case", "over"),
    [
        (test_dataframe_round_trip_keeps_index_columns_and_order, True),  # 4x the queue
        (test_series_round_trip, False),
        (test_id_column_names_the_rows_and_aligns_a_reordered_frame, False),
        (test_a_failing_row_ends_failed_with_its_error_and_the_others_succeed, False),
    ],
    ids=lambda f: f.__name__.removeprefix("test_")[:30] if callable(f) else str(f),
)
def test_round_trips_at_a_tight_queue_limit(tight, case, over):
    if case is test_series_round_trip:
        case(tight, "{comment}")
    else:
        case(tight)
    from nbbatch._ledger import default

    # A job over the queue went in waves: more batches than jobs.
    ((jobs, batches),) = default().query(
        "SELECT COUNT(DISTINCT job_id), COUNT(*) FROM batches WHERE status != 'refused'"
    )
    assert batches > jobs if over else batches >= jobs
