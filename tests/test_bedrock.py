"""AWS Bedrock batch inference, end to end: ``nb.submit`` through boto3 to the
emulator's Bedrock control plane, with the input and output in S3 served by moto's
S3 server (a real HTTP server on a loopback port), then ``wait`` and ``merge``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import settings as settings_hypothesis
from hypothesis import strategies as st

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")
botocore_exceptions = pytest.importorskip("botocore.exceptions")

import nbbatch as nb  # noqa: E402
from nbbatch import emulator  # noqa: E402
from nbbatch.emulator._faults import TRANSIENT_MARKER  # noqa: E402
from nbbatch.providers.base import RequestSpec  # noqa: E402
from nbbatch.providers.bedrock import BedrockBatch, BedrockProvider  # noqa: E402

from ._helpers import free_port  # noqa: E402

ROLE = "arn:aws:iam::123456789012:role/nbbatch-batch"
CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    """moto's S3 server on a free loopback port, for the module."""
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def bedrock_emu(s3_url: str) -> Iterator[emulator.Emulator]:
    """An emulator whose Bedrock jobs read and write S3 at moto (and run jobs of any
    size: the client's own minimum is what the tests check)."""
    with emulator.start(processing_seconds=0.05, s3_endpoint=s3_url, bedrock_min_records=1) as e:
        yield e


@pytest.fixture
def aws(s3_url: str, bedrock_emu: emulator.Emulator) -> Iterator[dict[str, Any]]:
    """boto3 clients aimed at moto (S3) and the emulator (Bedrock), and a fresh bucket."""
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", **KEYS)
    bedrock = boto3.client(
        "bedrock", endpoint_url=bedrock_emu.url + "/bedrock", region_name="us-east-1", **KEYS
    )
    bucket = f"nbb-{os.urandom(4).hex()}"
    s3.create_bucket(Bucket=bucket)
    yield {"s3": s3, "bedrock": bedrock, "bucket": bucket}
    s3.close()
    bedrock.close()


def settings(aws: dict[str, Any], **kw: Any) -> BedrockBatch:
    return BedrockBatch(
        f"s3://{aws['bucket']}/runs", ROLE, "us-east-1", bedrock=aws["bedrock"], s3=aws["s3"], **kw
    )


def reviews(n: int, text: str = "review {i}") -> pd.DataFrame:
    return pd.DataFrame({"text": [text.format(i=i) for i in range(n)]})


def keys(aws: dict[str, Any]) -> list[str]:
    listed = aws["s3"].list_objects_v2(Bucket=aws["bucket"])
    return [o["Key"] for o in listed.get("Contents", [])]


def test_submit_wait_merge_through_s3_and_the_bedrock_emulator(aws):
    data = reviews(120)
    job = nb.submit(data, "Sentiment of: {text}", model=CLAUDE, provider="bedrock",
                    client=settings(aws), output="answer", max_tokens=50)  # fmt: skip
    job.wait(timeout=120, progress=False)
    out = job.merge(data)
    assert (out["answer_status"] == "succeeded").all()
    assert out["answer"].notna().all() and (out["answer"].str.len() > 0).all()
    # The input went to S3 and Bedrock's output was read back from it.
    found = keys(aws)
    assert sum(k.endswith("/input.jsonl") for k in found) == 1
    assert sum(k.endswith("/input.jsonl.out") for k in found) == 1
    assert sum(k.endswith("/manifest.json.out") for k in found) == 1
    # Priced from genai-prices' AWS Bedrock table, at half the on-demand price.
    assert job.cost.batch is not None and job.cost.batch > 0


def test_converse_runs_a_model_that_is_not_anthropic(aws):
    data = reviews(100)
    job = nb.submit(data, "Topic of: {text}", model="amazon.nova-lite-v1:0", provider="bedrock",
                    endpoint="Converse", client=settings(aws), output="topic")  # fmt: skip
    out = job.wait(timeout=120, progress=False).merge(data)
    assert (out["topic_status"] == "succeeded").all()
    assert out["topic"].str.len().gt(0).all()


def test_invoke_model_of_a_model_that_is_not_anthropic_is_refused_before_sending(aws):
    with pytest.raises(nb.InputError, match="endpoint='Converse'"):
        nb.submit(reviews(100), "{text}", model="amazon.nova-lite-v1:0", provider="bedrock",
                  client=settings(aws))  # fmt: skip
    assert keys(aws) == []


def test_a_job_below_bedrocks_minimum_is_refused_before_anything_is_sent(aws, bedrock_emu):
    before = bedrock_emu.stats()["bedrock_batches_created"]
    with pytest.raises(nb.InputError) as refused:
        nb.submit(reviews(5), "Sentiment of: {text}", model=CLAUDE, provider="bedrock",
                  client=settings(aws))  # fmt: skip
    message = str(refused.value)
    assert "at least 100 records" in message and "this one has 5" in message
    assert "provider='anthropic'" in message
    assert keys(aws) == []  # nothing uploaded
    assert bedrock_emu.stats()["bedrock_batches_created"] == before
    assert nb.jobs().empty  # nothing recorded


def test_missing_settings_are_named_with_their_fix(monkeypatch, aws):
    monkeypatch.delenv("NBBATCH_BEDROCK_BUCKET", raising=False)
    monkeypatch.delenv("NBBATCH_BEDROCK_ROLE_ARN", raising=False)
    with pytest.raises(nb.ConfigError, match="NBBATCH_BEDROCK_BUCKET"):
        BedrockBatch(role_arn=ROLE, bedrock=aws["bedrock"], s3=aws["s3"])
    with pytest.raises(nb.ConfigError, match="NBBATCH_BEDROCK_ROLE_ARN"):
        BedrockBatch("s3://b/p", bedrock=aws["bedrock"], s3=aws["s3"])
    with pytest.raises(nb.ConfigError, match="an IAM role's ARN"):
        BedrockBatch("s3://b/p", "my-role", bedrock=aws["bedrock"], s3=aws["s3"])


def test_a_failed_record_becomes_a_failed_row_and_is_resubmitted(aws):
    # Two records fail once (a transient error of Bedrock's: errorCode 429 or 500);
    # with retries=0 they end failed, with the reason, and resubmit_failed sends them
    # again (this account's quota lets a job of 2 records run: min_records=1).
    texts = [f"review {i}" for i in range(100)]
    texts[3] = f"review 3 {TRANSIENT_MARKER}"
    texts[50] = f"review 50 {TRANSIENT_MARKER}"
    data = pd.DataFrame({"text": texts})
    job = nb.submit(data, "Sentiment of: {text}", model=CLAUDE, provider="bedrock",
                    client=settings(aws, min_records=1), output="answer",
                    retries=0)  # fmt: skip
    out = job.wait(timeout=120, progress=False).merge(data)
    failed = out[out["answer_status"] == "failed"]
    assert list(failed.index) == [3, 50]
    assert failed["answer_error"].str.contains("Simulated HTTP").all()
    assert (out.drop(index=[3, 50])["answer_status"] == "succeeded").all()
    job.resubmit_failed()
    out = job.wait(timeout=120, progress=False).merge(data)
    assert (out["answer_status"] == "succeeded").all()


def test_a_retry_below_the_minimum_ends_its_rows_failed_naming_the_minimum(aws):
    # The automatic retry of a failed record would be a job of 1: refused before it is
    # sent (the job's notes say why; wait() returns the job), and the row ends failed
    # with the reason, never lost.
    texts = [f"review {i}" for i in range(100)]
    texts[7] = f"review 7 {TRANSIENT_MARKER}"
    data = pd.DataFrame({"text": texts})
    job = nb.submit(data, "Sentiment of: {text}", model=CLAUDE, provider="bedrock",
                    client=settings(aws), output="answer")  # fmt: skip
    assert job.wait(timeout=120, progress=False) is job
    assert any("at least 100 records" in w for w in job.snapshot().warnings)
    out = job.merge(data)
    assert len(out) == 100
    assert out.loc[7, "answer_status"] == "failed"
    assert "at least 100 records" in out.loc[7, "answer_error"]
    assert (out.drop(index=[7])["answer_status"] == "succeeded").all()


def test_the_cli_attaches_to_a_bedrock_job_from_its_recorded_settings(aws, s3_url, tmp_path):
    data = reviews(100)
    job = nb.submit(data, "Sentiment of: {text}", model=CLAUDE, provider="bedrock",
                    client=settings(aws), output="answer")  # fmt: skip
    job.wait(timeout=120, progress=False)
    target = tmp_path / "out.csv"
    # A new process with no client: bucket, role, region and both endpoints come from
    # what the job recorded; AWS credentials from the environment, as boto3 reads them.
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    done = subprocess.run(
        [sys.executable, "-m", "nbbatch.cli", "collect", job.id, "--out", str(target)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "100 rows written" in done.stdout
    frame = pd.read_csv(target)
    assert (frame["answer_status"] == "succeeded").all()
    attached = nb.attach(job.id)
    assert attached.provider == "bedrock"


@pytest.fixture
def faulty(s3_url: str) -> Iterator[emulator.Emulator]:
    """An emulator that leaves some records out of the output, and is slow enough to
    stop a job while it runs."""
    with emulator.start(
        processing_seconds=3.0, s3_endpoint=s3_url, missing_rate=0.05, bedrock_min_records=1
    ) as e:
        yield e


@pytest.fixture
def faulty_client(aws, faulty) -> Iterator[BedrockBatch]:
    """A Bedrock batch client on :func:`faulty`'s control plane and moto's S3."""
    bedrock = boto3.client(
        "bedrock", endpoint_url=faulty.url + "/bedrock", region_name="us-east-1", **KEYS
    )
    try:
        yield BedrockBatch(
            f"s3://{aws['bucket']}/runs", ROLE, "us-east-1", bedrock=bedrock, s3=aws["s3"]
        )
    finally:
        bedrock.close()


def test_a_record_missing_from_the_output_is_a_failed_row_not_a_lost_one(faulty_client, faulty):
    data = reviews(100)
    job = nb.submit(data, "Sentiment of: {text}", model=CLAUDE, provider="bedrock",
                    client=faulty_client, output="answer", retries=0)  # fmt: skip
    out = job.wait(timeout=120, progress=False).merge(data)
    missing = out[out["answer_status"] != "succeeded"]
    assert len(missing) == 5  # 5% of 100, every one accounted for
    assert (missing["answer_status"] == "failed").all()
    assert missing["answer_error"].str.contains("no result").all()


def test_cancel_stops_the_job_and_its_unrun_records_end_cancelled(faulty_client, faulty):
    data = reviews(100)
    job = nb.submit(data, "Sentiment of: {text}", model=CLAUDE, provider="bedrock",
                    client=faulty_client, output="answer")  # fmt: skip
    give_up = time.monotonic() + 60  # submit returns at once: wait for the job to exist
    while not faulty.stats()["bedrock_batches_created"] and time.monotonic() < give_up:
        time.sleep(0.05)
    job.cancel()
    out = job.wait(timeout=120, progress=False).merge(data)
    statuses = set(out["answer_status"])
    assert "cancelled" in statuses
    assert statuses <= {"succeeded", "failed", "cancelled"}
    assert len(out) == 100
    listed = faulty_client.bedrock.list_model_invocation_jobs()["invocationJobSummaries"]
    assert listed[0]["status"] == "Stopped"


def test_a_job_over_the_record_limit_is_split_evenly_so_no_part_is_below_the_minimum(
    aws, monkeypatch
):
    # With at most 150 records a job, 210 rows would be 150 + 60, and Bedrock runs no
    # job of 60: they go as 105 + 105 instead. (The limit lowered, as the real 50,000
    # would take too long to run here.)
    monkeypatch.setattr(BedrockProvider, "max_requests", 150)
    data = reviews(210)
    job = nb.submit(data, "Sentiment of: {text}", model=CLAUDE, provider="bedrock",
                    client=settings(aws), output="answer")  # fmt: skip
    out = job.wait(timeout=120, progress=False).merge(data)
    assert (out["answer_status"] == "succeeded").all()
    inputs = [k for k in keys(aws) if k.endswith("/input.jsonl")]
    sizes = sorted(
        aws["s3"].get_object(Bucket=aws["bucket"], Key=k)["Body"].read().count(b"\n")
        for k in inputs
    )
    assert sizes == [105, 105]


def test_the_emulator_answers_bedrock_errors_in_aws_shape(aws):
    # botocore reads the error type from x-amzn-ErrorType: a ClientError with its code.
    with pytest.raises(botocore_exceptions.ClientError) as refused:
        aws["bedrock"].get_model_invocation_job(jobIdentifier="abcdefabcdef")
    assert refused.value.response["Error"]["Code"] == "ResourceNotFoundException"
    # A job whose input is not there is created, then fails validation, saying why.
    made = aws["bedrock"].create_model_invocation_job(
        jobName="nothing-there", roleArn=ROLE, modelId=CLAUDE,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{aws['bucket']}/none.jsonl"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{aws['bucket']}/out/"}},
    )  # fmt: skip
    job = aws["bedrock"].get_model_invocation_job(jobIdentifier=made["jobArn"])
    assert job["status"] == "Failed"
    assert "could not be read" in job["message"]


def test_preview_prices_a_bedrock_job_before_anything_is_sent(aws):
    data = reviews(100)
    seen = nb.preview(data, "Sentiment of: {text}", model=CLAUDE, provider="bedrock",
                      client=settings(aws))  # fmt: skip
    text = str(seen)
    assert "anthropic_version" in text or "Sentiment of: review 0" in text
    assert "$" in text  # priced from genai-prices' AWS Bedrock table
    assert keys(aws) == []


def test_a_rebuilt_bedrock_client_sends_nothing_to_a_new_listener_on_the_port(aws, s3_url):
    first = emulator.start(processing_seconds=600.0, s3_endpoint=s3_url, bedrock_min_records=1)
    port = first.port
    bedrock = boto3.client(
        "bedrock", endpoint_url=first.url + "/bedrock", region_name="us-east-1", **KEYS
    )
    try:
        client = BedrockBatch(
            f"s3://{aws['bucket']}/runs", ROLE, "us-east-1", bedrock=bedrock, s3=aws["s3"]
        )
        job = nb.submit(reviews(100), "Sentiment of: {text}", model=CLAUDE,
                        provider="bedrock", client=client, output="answer")  # fmt: skip
        give_up = time.monotonic() + 60
        while not first.stats()["bedrock_batches_created"] and time.monotonic() < give_up:
            time.sleep(0.05)
        first.stop()
        with emulator.start(port=port, s3_endpoint=s3_url) as second:
            # Another process rebuilds the client from the record: the listener on the
            # port is not the one the job was sent to, so nothing is sent to it.
            done = subprocess.run(
                [sys.executable, "-m", "nbbatch.cli", "status", job.id],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert "Traceback" not in done.stderr, done.stderr
            with pytest.raises(nb.ProviderError, match="is gone"):
                job.refresh()  # this process's own client: guarded the same way
            assert not [p for _, p in second.request_log if p.startswith("/bedrock")]
    finally:
        bedrock.close()
        first.stop()


@settings_hypothesis(max_examples=50, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True), st.text(max_size=200)),
        min_size=1,
        max_size=20,
        unique_by=lambda r: r[0],
    )
)
def test_output_records_of_either_shape_parse_to_their_text_and_id(rows):
    # Messages (InvokeModel) and Converse outputs, and error records, whatever the ids
    # and the text: each line is one row, with its id, text and status.
    lines = []
    for i, (record_id, text) in enumerate(rows):
        if i % 3 == 0:
            out = {"content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                   "usage": {"input_tokens": 3, "output_tokens": 4}}  # fmt: skip
            lines.append({"recordId": record_id, "modelInput": {}, "modelOutput": out})
        elif i % 3 == 1:
            out = {"output": {"message": {"content": [{"text": text}]}}, "stopReason": "end_turn",
                   "usage": {"inputTokens": 3, "outputTokens": 4}}  # fmt: skip
            lines.append({"recordId": record_id, "modelInput": {}, "modelOutput": out})
        else:
            error = {"errorCode": 500, "errorMessage": text}
            lines.append({"recordId": record_id, "modelInput": {}, "error": error})
    raw = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    spec = RequestSpec(model=CLAUDE, endpoint="InvokeModel")
    table = BedrockProvider.parse_results(None, raw, spec).to_pylist()  # type: ignore[arg-type]
    assert [r["custom_id"] for r in table] == [r[0] for r in rows]
    for i, ((_, text), row) in enumerate(zip(rows, table, strict=True)):
        if i % 3 == 2:
            assert row["status"] == "failed"
            assert row["error_message"] == (text or "Bedrock gave no output for this record")
            assert row["retryable"] is True
        else:
            assert row["status"] == "succeeded" and row["output"] == text
            assert row["output_tokens"] == 4


def test_a_create_repeated_with_its_client_token_makes_no_second_job(aws, bedrock_emu):
    # boto3 fills clientRequestToken itself, so a create it sends again after a lost
    # answer names the same token: Bedrock (and the emulator) make one job of it.
    lines = b"".join(
        b'{"recordId":"r%d","modelInput":{"anthropic_version":"bedrock-2023-05-31",'
        b'"max_tokens":20,"messages":[{"role":"user","content":"hi"}]}}\n' % i
        for i in range(3)
    )
    aws["s3"].put_object(Bucket=aws["bucket"], Key="in.jsonl", Body=lines)
    ask = dict(
        jobName=f"once-{os.urandom(3).hex()}", roleArn=ROLE, modelId=CLAUDE,
        clientRequestToken="token-1-" + os.urandom(3).hex(),
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{aws['bucket']}/in.jsonl"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{aws['bucket']}/out/"}},
    )  # fmt: skip
    before = bedrock_emu.stats()["bedrock_batches_created"]
    first = aws["bedrock"].create_model_invocation_job(**ask)
    second = aws["bedrock"].create_model_invocation_job(**ask)
    assert first["jobArn"] == second["jobArn"]
    assert bedrock_emu.stats()["bedrock_batches_created"] == before + 1


def test_an_unrecorded_create_is_found_again_by_its_part_and_no_other(aws):
    # A create whose answer was lost is looked for by its job name: this part's only
    # (part 1:1 is not part 1:10), made since the attempt began, not already known.
    provider = BedrockProvider(settings(aws, min_records=1))
    spec = RequestSpec(model=CLAUDE, endpoint="InvokeModel")
    line = (
        b'{"recordId":"a","modelInput":{"anthropic_version":"bedrock-2023-05-31",'
        b'"max_tokens":20,"messages":[{"role":"user","content":"hi"}]}}\n'
    )
    since = time.time()
    job = f"nbb-find-{os.urandom(3).hex()}"
    ten = provider.create(line, spec, {"nbbatch_job": job, "nbbatch_part": "1:10"})
    one = provider.create(line, spec, {"nbbatch_job": job, "nbbatch_part": "1:1"})
    found = provider.find_batch({"nbbatch_job": job, "nbbatch_part": "1:1"}, 1, since, set())
    assert found is not None and found.batch_id == one.batch_id != ten.batch_id
    known = {one.batch_id}
    assert provider.find_batch({"nbbatch_job": job, "nbbatch_part": "1:1"}, 1, since, known) is None


def test_a_real_time_fallback_ends_the_row_failed_saying_bedrock_has_none_here(aws):
    texts = [f"review {i}" for i in range(100)]
    texts[9] = f"review 9 {TRANSIENT_MARKER}"
    data = pd.DataFrame({"text": texts})
    job = nb.submit(data, "Sentiment of: {text}", model=CLAUDE, provider="bedrock",
                    client=settings(aws, min_records=1), output="answer", retries=0,
                    fallback="realtime")  # fmt: skip
    out = job.wait(timeout=120, progress=False).merge(data)
    assert out.loc[9, "answer_status"] == "failed"
    assert "batch inference only" in out.loc[9, "answer_error"]
    assert (out.drop(index=[9])["answer_status"] == "succeeded").all()
