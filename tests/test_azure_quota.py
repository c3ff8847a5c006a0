"""Azure OpenAI's enqueued-token limit per global-batch deployment: a job several times
over it finishes in waves, every row succeeded, through an AzureOpenAI client over HTTP
to the emulator's Azure variant (a batch over the limit fails validation with
``token_limit_exceeded`` and a message stating the deployment's limit, as Azure's do)."""

from __future__ import annotations

import time

import openai
import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator
from nbbatch._ledger import default as default_ledger
from nbbatch.emulator import _azure
from nbbatch.providers.azure import AzureProvider
from nbbatch.providers.base import BatchInfo

VERSION = "2024-10-21"
ROWS = 300
#: ~40 tokens a row as the emulator counts them (150 characters, four a token).
TEXT = "x" * 140
#: A fifth of the job: 300 rows of ~40 tokens is ~12,000 tokens, stated by Azure as "2K".
LIMIT = 2_000
FAST = nb.PollPolicy(first=0.05, most=0.2)
DEPLOYMENT = "batch-4o-mini"


def frame(tag: str = "") -> pd.DataFrame:
    return pd.DataFrame({"text": [f"row {i:05d}{tag} {TEXT}" for i in range(ROWS)]})


@pytest.fixture
def deployment(monkeypatch):
    """A global-batch deployment of gpt-4o-mini with an enqueued-token limit."""
    monkeypatch.setitem(_azure.DEPLOYMENTS, DEPLOYMENT, "gpt-4o-mini")
    monkeypatch.setitem(AzureProvider.deployments, DEPLOYMENT, "gpt-4o-mini")
    monkeypatch.setitem(_azure.ENQUEUED_TOKEN_LIMITS, DEPLOYMENT, LIMIT)
    return DEPLOYMENT


def run(df: pd.DataFrame, client: openai.AzureOpenAI) -> nb.BatchJob:
    job = nb.submit(df, "{text}", model=DEPLOYMENT, client=client, display=False)
    job.polling = FAST
    return job.wait(timeout=180, progress=False)


def refusals(job: nb.BatchJob) -> int:
    return int(default_ledger().waves(job.id).get("refusals") or 0)


@pytest.mark.slow
def test_a_job_six_times_over_the_deployment_limit_succeeds_in_waves(deployment):
    # Batches last long enough for the queue to fill (a faster one drains between creates).
    with emulator.start(processing_seconds=0.5) as server:
        client = openai.AzureOpenAI(base_url=server.url + AzureProvider.emulator_prefix,
                                    api_key="k", api_version=VERSION)  # fmt: skip
        try:
            job = run(frame(), client)
            assert job.counts["succeeded"] == ROWS and job.counts["failed"] == 0
            accepted = [b for b in job.snapshot().batches if b.status != "refused"]
            assert len(accepted) >= 6  # at least six waves of one batch
            assert sum(b.n_requests for b in accepted) == ROWS  # every row sent once
            assert (job.merge()["response_status"] == "succeeded").all()
            # Azure states the limit: one refusal teaches it.
            assert refusals(job) == 1
            refused = [b for b in job.snapshot().batches if b.status == "refused"]
            raw = client.batches.retrieve(refused[0].batch_id)
            assert raw.errors is not None and raw.errors.data is not None
            [error] = raw.errors.data
            assert error.code == "token_limit_exceeded"
            assert f"configured limit of 2K for the deployment '{DEPLOYMENT}'" in str(error.message)
            # Learned for the account and deployment: the next job is never refused.
            again = run(frame(tag="b"), client)
            assert again.counts["succeeded"] == ROWS
            assert refusals(again) == 0
        finally:
            client.close()


def test_another_deployment_of_the_same_model_has_its_own_queue(deployment, monkeypatch):
    monkeypatch.setitem(_azure.DEPLOYMENTS, "other-4o-mini", "gpt-4o-mini")
    with emulator.start(processing_seconds=600) as server:
        client = openai.AzureOpenAI(base_url=server.url + AzureProvider.emulator_prefix,
                                    api_key="k", api_version=VERSION)  # fmt: skip
        try:
            ids = []
            for name in (DEPLOYMENT, "other-4o-mini", DEPLOYMENT):
                line = (
                    f'{{"custom_id":"r","method":"POST","url":"/chat/completions","body":'
                    f'{{"model":"{name}","messages":[{{"role":"user","content":"{TEXT * 40}"}}]}}}}'
                )
                f = client.files.create(file=("in.jsonl", line.encode()), purpose="batch")
                ids.append(client.batches.create(input_file_id=f.id, endpoint="/chat/completions",
                                                 completion_window="24h").id)  # fmt: skip
            second = client.batches.retrieve(ids[2])
            deadline = time.monotonic() + 60
            while second.status == "validating" and time.monotonic() < deadline:
                time.sleep(0.05)
                second = client.batches.retrieve(ids[2])
            # ~1,400 tokens each: the deployment holds one, not two; the other deployment
            # of the same model has no limit, and its batch counts against nobody's.
            assert second.status == "failed"
            assert second.errors and second.errors.data
            assert second.errors.data[0].code == "token_limit_exceeded"
            for batch_id in ids[:2]:
                assert client.batches.retrieve(batch_id).status != "failed"
        finally:
            client.close()


@pytest.mark.parametrize(
    ("stated", "limit"),
    [("30K", 30_000), ("2M", 2_000_000), ("1.5M", 1_500_000), ("12,345", 12_345)],
)
def test_the_stated_limit_is_read_from_azures_words(stated, limit):
    message = _azure.refusal("gpt-4.1-batch", 1).replace("1 for", f"{stated} for")
    info = BatchInfo(batch_id="b", status="failed", ended=True, total=0, done=0, failed=0,
                     failure=message, failure_code="token_limit_exceeded")  # fmt: skip
    provider = AzureProvider.__new__(AzureProvider)
    refusal = provider.quota_refusal(info=info)
    assert refusal is not None and refusal.limit == limit
