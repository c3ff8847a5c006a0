"""Shared fixtures: a private ledger per test, and emulator-backed SDK clients."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest

from nbbatch import emulator


@pytest.fixture(autouse=True)
def nbbatch_home(tmp_path, monkeypatch):
    """Every test gets its own ledger folder."""
    home = tmp_path / "nbbatch-home"
    monkeypatch.setenv("NBBATCH_HOME", str(home))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    return home


@pytest.fixture(scope="session")
def emu() -> Iterator[emulator.Emulator]:
    """One fast emulator for the session (tests that need faults start their own)."""
    with emulator.start(processing_seconds=0.05) as server:
        yield server


def openai_client(server: emulator.Emulator) -> openai.OpenAI:
    """An OpenAI SDK client on the emulator that validates every response strictly."""
    return openai.OpenAI(
        base_url=server.openai_base_url, api_key="test-key", _strict_response_validation=True
    )


def anthropic_client(server: emulator.Emulator) -> anthropic.Anthropic:
    """An Anthropic SDK client on the emulator that validates every response strictly."""
    return anthropic.Anthropic(
        base_url=server.anthropic_base_url, api_key="test-key", _strict_response_validation=True
    )


@pytest.fixture
def oai(emu) -> openai.OpenAI:
    return openai_client(emu)


PROVIDERS = ["openai"]


@pytest.fixture(params=PROVIDERS)
def client(request, emu):
    """An official SDK client on the emulator, once per provider."""
    return openai_client(emu) if request.param == "openai" else anthropic_client(emu)


def model_for(client) -> str:
    """A model name of the client's provider."""
    return "claude-haiku-4-5" if isinstance(client, anthropic.Anthropic) else "gpt-4o-mini"
