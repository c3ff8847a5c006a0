"""Azure OpenAI beyond the batch itself: real time (``nb.try_now``, ``fallback="realtime"``,
``on_deadline="realtime"``) through the deployment's data-plane chat route, and
Microsoft Entra ID tokens in place of a key. An ``openai.AzureOpenAI`` client over HTTP
to the emulator's Azure variant throughout."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import openai
import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator
from nbbatch.emulator import TRANSIENT_MARKER, _azure
from nbbatch.providers import credentials
from nbbatch.providers.azure import AzureProvider

VERSION = "2024-10-21"
_MADE: list[openai.AzureOpenAI] = []


@pytest.fixture(scope="module", autouse=True)
def _close_clients():
    yield
    for client in _MADE:
        client.close()


def azure_client(server, **auth) -> openai.AzureOpenAI:
    """An AzureOpenAI client on ``server``'s Azure variant (an api-key unless ``auth``
    names an Entra ID token or token provider)."""
    auth = auth or {"api_key": "azure-key"}
    client = openai.AzureOpenAI(
        base_url=server.url + AzureProvider.emulator_prefix, api_version=VERSION, **auth
    )
    _MADE.append(client)
    return client


@pytest.fixture
def deployment(monkeypatch):
    """A deployment named otherwise than its model, known to the emulator and to nbbatch."""
    monkeypatch.setitem(_azure.DEPLOYMENTS, "my-4o-deploy", "gpt-4o-mini")
    monkeypatch.setitem(AzureProvider.deployments, "my-4o-deploy", "gpt-4o-mini")
    return "my-4o-deploy"


class TokenProvider:
    """What ``azure.identity.get_bearer_token_provider`` returns: a callable giving a
    fresh token; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self) -> str:
        with self.lock:
            self.calls += 1
        return TOKEN


TOKEN = "entra-token-abc123-not-a-key"


def _ledger_path() -> Path:
    return Path(os.environ["NBBATCH_HOME"]) / "ledger.sqlite3"


def _recorded(job_id: str, column: str) -> object:
    """One column of a job's record in the ledger."""
    with sqlite3.connect(_ledger_path()) as db:
        return db.execute(f"SELECT {column} FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]


# ------------------------------------------------------------------ real time


def test_try_now_answers_through_the_deployment(emu, deployment):
    df = pd.DataFrame({"text": ["good soup", "cold soup"]})
    out = nb.try_now(df, "Sentiment of: {text}", model=deployment, client=azure_client(emu))
    assert (out["response_status"] == "succeeded").all()
    assert out["response"].str.contains("Sentiment of: good soup").iloc[0]


def test_an_unknown_deployment_is_azures_404_for_that_row(emu):
    out = nb.try_now(pd.DataFrame({"text": ["x"]}), "{text}", model="gpt-4o-mini",
                     client=azure_client(emu))  # fmt: skip
    assert out["response_status"].iloc[0] == "succeeded"
    client = azure_client(emu)
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(
            model="no-such-deploy", messages=[{"role": "user", "content": "hi"}]
        )
    assert err.value.code == "DeploymentNotFound"
    assert "deployment for this resource does not exist" in str(err.value)


def test_the_emulator_refuses_a_real_time_request_without_credentials(emu):
    # A key the server takes (x-api-key) but neither an api-key header nor a bearer token.
    plain = openai.OpenAI(
        base_url=emu.url + AzureProvider.emulator_prefix + "/deployments/gpt-4o-mini",
        api_key="k",
        default_query={"api-version": VERSION},
        default_headers={"Authorization": "Basic x", "x-api-key": "k"},
    )
    _MADE.append(plain)  # type: ignore[arg-type]
    with pytest.raises(openai.AuthenticationError, match="Entra ID"):
        plain.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])


def test_the_real_time_fallback_finishes_an_azure_job(emu, deployment):
    texts = [f"review {i}" for i in range(6)]
    texts[2] = f"review 2 {TRANSIENT_MARKER}"  # fails in the batch, for a reason that passes
    df = pd.DataFrame({"text": texts})
    job = nb.submit(df, "Sentiment of: {text}", model=deployment, client=azure_client(emu),
                    output="answer", retries=0, fallback="realtime", display=False)  # fmt: skip
    out = job.wait(timeout=120, progress=False).merge(df)
    assert (out["answer_status"] == "succeeded").all()
    assert job.counts["realtime"] == 1
    assert TRANSIENT_MARKER in out.loc[2, "answer"]
    # Priced at the full (real-time) rate of the model the deployment serves.
    assert job.cost.realtime is not None and job.cost.realtime > 0


@pytest.mark.slow
def test_on_deadline_realtime_sends_an_azure_job_through_the_deployment(deployment):
    with emulator.start(processing_seconds=600) as slow:
        df = pd.DataFrame({"text": [f"row {i}" for i in range(5)]})
        job = nb.submit(df, "Echo {text}", model=deployment, client=azure_client(slow),
                        deadline=dt.timedelta(seconds=2), on_deadline="realtime",
                        display=False)  # fmt: skip
        job.wait(timeout=120, progress=False)
        assert job.counts["succeeded"] == 5 and job.counts["realtime"] == 5
        out = job.merge(df)
        assert out["response"].str.contains("Echo row 3").any()


# ------------------------------------------------------------------ Entra ID


def test_an_entra_token_provider_runs_a_job_and_no_token_is_stored(emu, deployment):
    tokens = TokenProvider()
    client = azure_client(emu, azure_ad_token_provider=tokens)
    df = pd.DataFrame({"text": ["a", "b", "c"]})
    job = nb.submit(df, "{text}", model=deployment, client=client, display=False)
    job.wait(timeout=60, progress=False)
    assert job.counts["succeeded"] == 3
    assert tokens.calls > 0  # every request asked the provider for a token
    # Real time with the same client.
    out = nb.try_now(df.head(1), "{text}", model=deployment, client=client)
    assert out["response_status"].iloc[0] == "succeeded"
    # Neither the token nor any hash of a stand-in key is recorded.
    home = os.environ["NBBATCH_HOME"]
    for root, _dirs, files in os.walk(home):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                assert TOKEN.encode() not in fh.read(), name
    record = nb.jobs().set_index("id").loc[job.id]
    assert record["provider"] == "azure"


def test_a_static_entra_token_runs_a_job(emu):
    client = azure_client(emu, azure_ad_token=TOKEN)
    job = nb.submit(pd.DataFrame({"text": ["x"]}), "{text}", model="gpt-4o-mini",
                    client=client, display=False)  # fmt: skip
    assert job.wait(timeout=60, progress=False).counts["succeeded"] == 1


def test_an_entra_job_asks_for_client_and_never_sends_the_environment_key(
    emu, deployment, monkeypatch
):
    """On a real (non-loopback) Azure endpoint the job records that its credential came
    from the client, with no key hash: attach and the command line ask for client=
    even with AZURE_OPENAI_API_KEY set. The emulator's address is loopback, so the test
    makes nbbatch take it for a remote one (what the emulator cannot be)."""
    monkeypatch.setattr(credentials, "is_loopback", lambda url: False)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "an-environment-key")
    tokens = TokenProvider()
    client = azure_client(emu, azure_ad_token_provider=tokens)
    job = nb.submit(pd.DataFrame({"text": ["a", "b"]}), "{text}", model=deployment,
                    client=client, display=False)  # fmt: skip
    assert _recorded(job.id, "credential") == "client"
    # No hash of a key either: an Entra client holds none (the SDK's stand-in for a
    # missing key is no key of the user's).
    assert _recorded(job.id, "key_hash") is None
    with pytest.raises(nb.ConfigError, match="client="):
        nb.attach(job.id)
    again = nb.attach(job.id, client=client)
    assert again.wait(timeout=60, progress=False).counts["succeeded"] == 2


def test_the_command_line_asks_for_client_for_an_entra_job(emu, deployment, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(credentials, "is_loopback", lambda url: False)
        client = azure_client(emu, azure_ad_token_provider=TokenProvider())
        job = nb.submit(pd.DataFrame({"text": ["a"]}), "{text}", model=deployment,
                        client=client, display=False)  # fmt: skip
        job.wait(timeout=60, progress=False)
    # The record names a remote endpoint, as one submitted to Azure itself would.
    remote = "https://example.openai.azure.com/openai/?api-version=" + VERSION
    with sqlite3.connect(_ledger_path()) as db:
        db.execute("UPDATE jobs SET base_url = ? WHERE id = ?", (remote, job.id))
    env = {**os.environ, "AZURE_OPENAI_API_KEY": "an-environment-key"}
    done = subprocess.run([sys.executable, "-m", "nbbatch.cli", "status", job.id],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert done.returncode != 0
    assert "client=" in done.stderr, done.stderr


def test_an_entra_token_in_the_environment_runs_and_attaches_a_job(emu, monkeypatch):
    """``AZURE_OPENAI_AD_TOKEN`` (the SDK's variable) without a key: the job is sent
    with the token, records where it came from, and a new session attaches with it."""
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("AZURE_OPENAI_AD_TOKEN", TOKEN)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", emu.url + "/azure")  # the SDK adds /openai
    monkeypatch.setenv("OPENAI_API_VERSION", VERSION)
    monkeypatch.setattr(credentials, "is_loopback", lambda url: False)  # a remote endpoint
    job = nb.submit(pd.DataFrame({"text": ["a", "b"]}), "{text}", model="gpt-4o-mini",
                    provider="azure", display=False)  # fmt: skip
    assert _recorded(job.id, "credential") == "env:AZURE_OPENAI_AD_TOKEN"
    assert _recorded(job.id, "key_hash") is None
    again = nb.attach(job.id)
    assert again.wait(timeout=60, progress=False).counts["succeeded"] == 2
    _MADE.append(again._ctx.provider.client)


def test_embeddings_in_real_time_through_the_deployment(emu, monkeypatch):
    monkeypatch.setitem(_azure.DEPLOYMENTS, "my-embed", "text-embedding-3-small")
    monkeypatch.setitem(AzureProvider.deployments, "my-embed", "text-embedding-3-small")
    out = nb.try_now(pd.DataFrame({"text": ["a cat", "a dog"]}), "{text}", model="my-embed",
                     endpoint="/v1/embeddings", client=azure_client(emu))  # fmt: skip
    assert (out["response_status"] == "succeeded").all()
    assert out["response"].str.startswith("[").all()  # the vector, as a batch gives it
