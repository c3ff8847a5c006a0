"""Bedrock model ids: the emulator refuses an unknown one when the job is created, as
Bedrock does (400 ValidationException), and nbbatch refuses it before uploading
anything, naming the model and the fix."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")
botocore_exceptions = pytest.importorskip("botocore.exceptions")

import nbbatch as nb  # noqa: E402
from nbbatch import emulator  # noqa: E402
from nbbatch.providers.bedrock import BedrockBatch  # noqa: E402

ROLE = "arn:aws:iam::123456789012:role/nbbatch-batch"
CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
UNKNOWN = "anthropic.claude-nonexistent-v1:0"
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def bedrock_emu(s3_url: str) -> Iterator[emulator.Emulator]:
    with emulator.start(
        processing_seconds=0.05, s3_endpoint=s3_url, bedrock_min_records=1, models=["my.own-v1:0"]
    ) as e:
        yield e


@pytest.fixture
def aws(s3_url: str, bedrock_emu: emulator.Emulator) -> Iterator[dict[str, Any]]:
    s3 = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", **KEYS)
    bedrock = boto3.client(
        "bedrock", endpoint_url=bedrock_emu.url + "/bedrock", region_name="us-east-1", **KEYS
    )
    bucket = f"nbb-{os.urandom(4).hex()}"
    s3.create_bucket(Bucket=bucket)
    yield {"s3": s3, "bedrock": bedrock, "bucket": bucket}
    s3.close()
    bedrock.close()


def _create(aws: dict[str, Any], model: str) -> dict[str, Any]:
    key = f"in-{os.urandom(3).hex()}.jsonl"
    aws["s3"].put_object(Bucket=aws["bucket"], Key=key, Body=b"")
    made: dict[str, Any] = aws["bedrock"].create_model_invocation_job(
        jobName=f"j{os.urandom(4).hex()}", roleArn=ROLE, modelId=model,
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{aws['bucket']}/{key}"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{aws['bucket']}/out/"}},
    )  # fmt: skip
    return made


def _keys(aws: dict[str, Any]) -> list[str]:
    listed = aws["s3"].list_objects_v2(Bucket=aws["bucket"])
    return [o["Key"] for o in listed.get("Contents", [])]


@pytest.mark.parametrize(
    "model",
    [
        UNKNOWN,
        "gpt-4o-mini",
        "us.anthropic.claude-nonexistent-v1:0",
        "arn:aws:bedrock:us-east-1::foundation-model/nope.nope-v1:0",
    ],
)
def test_the_emulator_refuses_an_unknown_model_at_create(aws, model):
    with pytest.raises(botocore_exceptions.ClientError) as refused:
        _create(aws, model)
    error = refused.value.response["Error"]
    assert error["Code"] == "ValidationException"
    assert error["Message"] == "The provided model identifier is invalid."
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


@pytest.mark.parametrize(
    "model",
    [
        CLAUDE,
        "us.anthropic.claude-3-haiku-20240307-v1:0",  # a cross-Region inference profile
        f"arn:aws:bedrock:us-east-1::foundation-model/{CLAUDE}",
        "amazon.nova-lite-v1:0",
        "my.own-v1:0",  # added with start(models=...)
    ],
)
def test_the_emulator_takes_known_ids_profiles_and_arns(aws, model):
    assert _create(aws, model)["jobArn"]


def test_the_emulator_lists_its_foundation_models(aws):
    ids = [m["modelId"] for m in aws["bedrock"].list_foundation_models()["modelSummaries"]]
    assert CLAUDE in ids and "amazon.nova-lite-v1:0" in ids and "my.own-v1:0" in ids
    assert UNKNOWN not in ids


def test_nbbatch_refuses_an_unknown_bedrock_model_before_uploading(aws, bedrock_emu):
    before = bedrock_emu.stats()["bedrock_batches_created"]
    settings = BedrockBatch(
        f"s3://{aws['bucket']}/runs", ROLE, "us-east-1", bedrock=aws["bedrock"], s3=aws["s3"],
        min_records=1,
    )  # fmt: skip
    df = pd.DataFrame({"text": ["a", "b"]})
    with pytest.raises(nb.InputError) as refused:
        nb.submit(df, "{text}", model="anthropic.claude-3-haiku-20240307-v1:1",
                  provider="bedrock", client=settings, max_tokens=20)  # fmt: skip
    message = str(refused.value)
    assert "unknown model 'anthropic.claude-3-haiku-20240307-v1:1'" in message
    assert f"did you mean {CLAUDE!r}" in message and "nothing was created" in message
    assert _keys(aws) == []  # nothing uploaded
    assert bedrock_emu.stats()["bedrock_batches_created"] == before
    assert nb.jobs().empty  # nothing recorded
    # A cross-Region inference profile of a listed model is taken.
    job = nb.submit(df, "{text}", model="us." + CLAUDE, provider="bedrock", client=settings,
                    max_tokens=20)  # fmt: skip
    assert job.wait(timeout=120, progress=False).counts["succeeded"] == 2
