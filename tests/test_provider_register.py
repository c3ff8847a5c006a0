"""``nbbatch.providers.register(MyProvider)`` is all a new provider needs: a provider
class defined here, outside the package, runs a job end to end on the emulator."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import openai
import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import pricing, providers
from nbbatch.providers.openai import OpenAIProvider


class ProxyClient(openai.OpenAI):
    """The SDK client of a made-up OpenAI-compatible batch service."""


class ProxyProvider(OpenAIProvider):
    """A made-up service speaking OpenAI's Batch API, under a name of its own."""

    name = "proxyco"
    label = "ProxyCo"
    key_variables = ("PROXYCO_API_KEY",)
    base_url_variable = "PROXYCO_BASE_URL"
    client_types = (f"{__name__}:ProxyClient",)
    model_prefixes = ("proxy-",)
    claims_unknown_models = False
    prices_provider = "openai"
    emulator_prefix = "/v1"

    @classmethod
    def make_client(cls, *, api_key: str | None, base_url: str | None) -> Any:
        return ProxyClient(api_key=api_key, base_url=base_url)

    @classmethod
    def base_model(cls, model: str) -> str:
        # The service's own names stand for OpenAI's models.
        return model.replace("proxy-", "gpt-", 1)

    def find_model(self, model: str) -> bool | list[str] | None:
        return None  # the emulator knows OpenAI's names only


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setattr(providers, "_REGISTRY", dict(providers._REGISTRY))
    providers.register(ProxyProvider)
    yield ProxyProvider


def test_a_provider_registered_from_outside_runs_a_job(emu, registered, monkeypatch):
    monkeypatch.setenv("PROXYCO_API_KEY", "proxy-key")
    monkeypatch.setenv("PROXYCO_BASE_URL", emu.openai_base_url)
    client = registered.make_client(api_key="proxy-key", base_url=emu.openai_base_url)
    assert "proxyco" in providers.names()
    # Inferred from its client and from its model names, with nothing else told.
    assert providers.infer(None, client, "proxy-4o-mini") == ("proxyco", False)
    assert providers.by_model_name("proxy-4o-mini") == "proxyco"
    df = pd.DataFrame({"text": ["a", "b", "c"]})
    # The emulator serves OpenAI's names: a proxy serving them is named explicitly.
    job = nb.submit(df, "{text}", model="gpt-4o-mini", client=client, provider="proxyco",
                    output="out", display=False)  # fmt: skip
    assert job.provider == "proxyco"
    out = job.wait(timeout=60, progress=False).merge()
    assert out["out"].notna().all()
    assert job.cost.batch is not None  # priced through its prices_provider
    # Its own key variable, base model and label are used everywhere.
    assert pricing.rates_for("proxyco", "proxy-4o-mini") == pricing.rates_for(
        "openai", "gpt-4o-mini"
    )
    client.close()


def test_a_registered_providers_key_variable_is_asked_for(registered, monkeypatch):
    monkeypatch.delenv("PROXYCO_API_KEY", raising=False)
    with pytest.raises(nb.ConfigError, match="No ProxyCo API key: set PROXYCO_API_KEY"):
        providers.default_client("proxyco")


def test_a_registered_providers_key_is_scrubbed_from_messages(registered, monkeypatch):
    from nbbatch._scrub import scrub

    monkeypatch.setenv("PROXYCO_API_KEY", "pc-secret-0123456789")
    assert "pc-secret" not in scrub("refused key pc-secret-0123456789")


def test_register_refuses_what_is_not_a_provider():
    with pytest.raises(TypeError, match="Provider subclass"):
        providers.register(object)  # type: ignore[arg-type]


def test_registering_the_built_ins_imports_no_sdk():
    code = (
        "import sys, nbbatch; from nbbatch import providers; providers.classes(); "
        "print(sorted(m for m in ('openai', 'anthropic', 'google.genai') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
