"""Azure OpenAI global batch: an AzureOpenAI client over HTTP to the emulator's Azure
variant (``/azure/openai``: api-version query, api-key header, deployments)."""

from __future__ import annotations

import os
import subprocess
import sys

import openai
import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import pricing, providers
from nbbatch.emulator import _azure
from nbbatch.providers.azure import AzureProvider

VERSION = "2024-10-21"
#: Clients made here, closed when the module's tests are done (no socket left to the
#: garbage collector).
_MADE: list[object] = []


@pytest.fixture(scope="module", autouse=True)
def _close_clients():
    yield
    for client in _MADE:
        client.close()  # type: ignore[attr-defined]


def azure_client(emu, version: str = VERSION) -> openai.AzureOpenAI:
    client = openai.AzureOpenAI(
        base_url=emu.url + AzureProvider.emulator_prefix, api_key="azure-key", api_version=version
    )
    _MADE.append(client)
    return client


@pytest.fixture
def deployment(monkeypatch):
    """A deployment named otherwise than its model, known to the emulator and to nbbatch."""
    monkeypatch.setitem(_azure.DEPLOYMENTS, "my-4o-deploy", "gpt-4o-mini")
    monkeypatch.setitem(AzureProvider.deployments, "my-4o-deploy", "gpt-4o-mini")
    return "my-4o-deploy"


def test_a_job_runs_through_an_azure_client_on_a_deployment(emu, deployment):
    df = pd.DataFrame({"text": ["good soup", "cold soup", "fine soup"]})
    job = nb.submit(df, "Sentiment of: {text}", model=deployment, client=azure_client(emu),
                    output="answer", display=False)  # fmt: skip
    assert job.provider == "azure"
    out = job.wait(timeout=60, progress=False).merge()
    assert out["answer"].notna().all() and len(out) == 3
    # Priced from genai-prices' Azure table, as the model the deployment serves.
    assert job.cost.batch is not None and job.cost.batch > 0
    assert pricing.rates_for("azure", deployment) == pricing.rates_for("azure", "gpt-4o-mini")
    assert pricing.rates_for("azure", deployment).batch_input > 0  # type: ignore[union-attr]
    # The api-version is part of the recorded address: a new process rebuilds the client.
    record = nb.jobs().set_index("id").loc[job.id]
    assert record["provider"] == "azure"
    done = subprocess.run(
        [sys.executable, "-m", "nbbatch.cli", "status", job.id],
        capture_output=True, text=True, env=dict(os.environ), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout and "3" in done.stdout


def test_attach_rebuilds_the_same_azure_client(emu):
    df = pd.DataFrame({"text": ["a", "b"]})
    job = nb.submit(df, "{text}", model="gpt-4o-mini", client=azure_client(emu), display=False)
    again = nb.attach(job.id)
    assert again.provider == "azure"
    assert again.wait(timeout=60, progress=False).snapshot().counts["succeeded"] == 2


def test_the_async_azure_client_becomes_a_sync_azure_client():
    """On main an AsyncAzureOpenAI became a plain openai.OpenAI without its api-version
    or its api-key header."""
    aio = openai.AsyncAzureOpenAI(
        azure_endpoint="https://example.openai.azure.com", api_key="k", api_version=VERSION
    )
    sync = providers.sync_client(aio)
    assert isinstance(sync, openai.AzureOpenAI)
    assert sync._api_version == VERSION and sync.api_key == "k"
    assert str(sync.base_url) == str(aio.base_url)
    assert providers.base_url_of(sync).endswith(f"?api-version={VERSION}")


def test_an_async_azure_client_runs_a_job(emu):
    aio = openai.AsyncAzureOpenAI(
        base_url=emu.url + AzureProvider.emulator_prefix, api_key="k", api_version=VERSION
    )
    job = nb.submit(pd.DataFrame({"text": ["x"]}), "{text}", model="gpt-4o-mini", client=aio,
                    display=False)  # fmt: skip
    assert job.wait(timeout=60, progress=False).snapshot().counts["succeeded"] == 1
    _MADE.append(job._ctx.provider.client)  # the synchronous copy nbbatch made


@pytest.mark.parametrize("version", [None, "yesterday"])
def test_a_missing_or_bad_api_version_is_refused_before_sending(emu, monkeypatch, version):
    monkeypatch.delenv("OPENAI_API_VERSION", raising=False)
    client = azure_client(emu, version="2024-10-21")
    client._api_version = version  # what a client built around the SDK's check holds
    before = emu.store.counters["files_uploaded"]
    with pytest.raises(nb.ConfigError, match="api-version"):
        nb.submit(pd.DataFrame({"text": ["x"]}), "{text}", model="gpt-4o-mini", client=client,
                  display=False)  # fmt: skip
    assert emu.store.counters["files_uploaded"] == before  # nothing was sent


def test_the_emulator_refuses_a_request_without_api_version(emu):
    plain = openai.OpenAI(base_url=emu.url + AzureProvider.emulator_prefix, api_key="k")
    _MADE.append(plain)
    with pytest.raises(openai.NotFoundError, match="api-version"):
        plain.batches.list()


def test_no_azure_key_names_the_variable(monkeypatch):
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    with pytest.raises(nb.ConfigError, match="AZURE_OPENAI_API_KEY"):
        providers.default_client("azure")
