"""Shared fixtures: a private ledger per test, and emulator-backed SDK clients."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import anthropic
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from nbbatch import emulator


@pytest.fixture(autouse=True)
def nbbatch_home(tmp_path, monkeypatch):
    """Every test gets its own ledger folder, and leaves no background emulator and no
    background sender behind (a sender still uploading would send into the next test)."""
    home = tmp_path / "nbbatch-home"
    monkeypatch.setenv("NBBATCH_HOME", str(home))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    yield home
    for thread in threading.enumerate():
        if thread.name.startswith("nbbatch-send-"):
            thread.join(60)
    emulator.stop_background(home)


@pytest.fixture(scope="session")
def emu() -> Iterator[emulator.Emulator]:
    """One fast emulator for the session (tests that need faults start their own)."""
    with emulator.start(processing_seconds=0.05) as server:
        yield server


# Clients live until the session ends and are closed then, so no pooled socket is left
# for the garbage collector (a ResourceWarning, which the suite treats as an error).
# They are kept per emulator *object*, not per URL: a later emulator may get the port of
# a stopped one, and a pooled connection to the old server must never be reused.
# A short timeout turns a server that never answers into a failure, not a hang.
_CLIENTS: dict[tuple[str, int, str], openai.OpenAI | anthropic.Anthropic | genai.Client] = {}
_SERVERS: list[object] = []  # held, so that no later emulator can reuse an id() above
TIMEOUT = 60.0


@pytest.fixture(scope="session", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    for c in _CLIENTS.values():
        c.close()


def _client(sdk: type, name: str, server: emulator.Emulator, base_url: str):
    """One strict SDK client per (SDK, emulator object), made on first use."""
    key = (name, id(server), base_url)
    if key not in _CLIENTS:
        _SERVERS.append(server)
        if sdk is genai.Client:
            # google-genai validates every response with its pydantic types already; it
            # retries nothing unless told, so retry as the other SDKs do by default.
            retry = genai_types.HttpRetryOptions(attempts=3, initial_delay=0.01, max_delay=0.05)
            options = genai_types.HttpOptions(
                base_url=base_url, timeout=int(TIMEOUT * 1000), retry_options=retry
            )
            _CLIENTS[key] = genai.Client(api_key="test-key", http_options=options)
        else:
            _CLIENTS[key] = sdk(
                base_url=base_url,
                api_key="test-key",
                timeout=TIMEOUT,
                _strict_response_validation=True,
            )
    return _CLIENTS[key]


def openai_client(server: emulator.Emulator) -> openai.OpenAI:
    """An OpenAI SDK client on the emulator that validates every response strictly."""
    return _client(openai.OpenAI, "openai", server, server.openai_base_url)


def anthropic_client(server: emulator.Emulator) -> anthropic.Anthropic:
    """An Anthropic SDK client on the emulator that validates every response strictly."""
    return _client(anthropic.Anthropic, "anthropic", server, server.anthropic_base_url)


def gemini_client(server: emulator.Emulator) -> genai.Client:
    """A google-genai client on the emulator's Gemini routes."""
    return _client(genai.Client, "gemini", server, server.gemini_base_url)


@pytest.fixture
def oai(emu) -> openai.OpenAI:
    return openai_client(emu)


PROVIDERS = ["openai", "anthropic", "gemini"]


@pytest.fixture(params=PROVIDERS)
def provider(request) -> str:
    """Each provider name in turn."""
    return request.param


def client_for(provider: str, server: emulator.Emulator):
    """The official SDK client of ``provider`` on ``server``."""
    if provider == "gemini":
        return gemini_client(server)
    return openai_client(server) if provider == "openai" else anthropic_client(server)


@pytest.fixture
def client(provider, emu):
    """An official SDK client on the session emulator, once per provider."""
    return client_for(provider, emu)


def batches_created(server: emulator.Emulator) -> int:
    """How many batches the emulator has been asked to create, all providers."""
    stats = server.stats()
    return (
        stats["openai_batches_created"]
        + stats["anthropic_batches_created"]
        + stats["gemini_batches_created"]
    )


def batch_ids_at(client) -> list[str]:
    """The ids of every batch the client's provider holds, newest first, as nbbatch
    names them (a Gemini batch ``batches/x`` is ``x``)."""
    if isinstance(client, genai.Client):
        return [str(b.name).removeprefix("batches/") for b in client.batches.list()]
    if isinstance(client, anthropic.Anthropic):
        return [b.id for b in client.messages.batches.list()]
    return [b.id for b in client.batches.list()]


def model_for(client) -> str:
    """A model name of the client's provider."""
    if isinstance(client, genai.Client):
        return "gemini-2.5-flash"
    return "claude-haiku-4-5" if isinstance(client, anthropic.Anthropic) else "gpt-4o-mini"


@pytest.fixture(scope="module")
def dask_cluster():
    """A local Dask cluster of two worker processes, so what runs on the workers is
    visibly not the driver and what they write crosses a process boundary."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as c:
        with distributed.Client(c) as client:
            yield client


@pytest.fixture
def together(tmp_path, monkeypatch):
    """Submits (and background planners) of the same rows wait for each other after
    looking for the same job (see ``look_together``): the folder they meet in."""
    from nbbatch._ledger import Ledger

    from ._helpers import look_together

    monkeypatch.setattr(Ledger, "find_job", Ledger.find_job)  # restored after the test
    folder = tmp_path / "lookers"
    folder.mkdir()
    look_together(folder)
    return folder
