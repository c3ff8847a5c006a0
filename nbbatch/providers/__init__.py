"""The provider registry: pick a provider by name, client or model, and build it.

Each provider is a :class:`~nbbatch.providers.base.Provider` subclass registered under a
name. ``"local"`` is not a provider of its own: it is the OpenAI, Anthropic or Gemini
provider pointed at the embedded emulator.

The built-in providers are registered by module path and imported on first use: their
SDKs take seconds to import, and ``import nbbatch`` (and the ``nbbatch`` command) should
not wait for an SDK it may never use.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from .._errors import ConfigError
from .base import Provider

#: name -> the provider class, or its ``"module:Class"`` path until first used
_REGISTRY: dict[str, type[Provider] | str] = {}
#: name -> default endpoint, known without importing a class registered by path
_ENDPOINTS: dict[str, str] = {}


def register(name: str, cls: type[Provider] | str, *, default_endpoint: str | None = None) -> None:
    """Make a provider class available under ``name``.

    ``cls`` is the class, or its ``"module:Class"`` path to import on first use; a path
    needs ``default_endpoint`` (the class's own), so choosing an endpoint imports nothing.
    """
    if isinstance(cls, str):
        if default_endpoint is None:
            raise ValueError("a provider registered by path needs its default_endpoint")
        _ENDPOINTS[name] = default_endpoint
    else:
        _ENDPOINTS[name] = default_endpoint or cls.default_endpoint
    _REGISTRY[name] = cls


def provider_class(name: str) -> type[Provider]:
    """The provider class registered under ``name``, imported now if registered by path."""
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        _REGISTRY[name] = entry
    return entry


def names() -> list[str]:
    """The registered provider names."""
    return sorted(_REGISTRY)


def infer(provider: str | None, client: Any, model: str) -> tuple[str, bool]:
    """The provider name to use, and whether it runs on the embedded emulator.

    An explicit ``provider`` wins; else the client's SDK decides; else the model name
    (``claude-*`` is Anthropic, ``gemini-*`` Gemini, anything else OpenAI).
    """
    by_model = by_model_name(model)
    if provider == "local":
        return by_model, True
    if provider is not None:
        if provider not in _REGISTRY:
            raise ConfigError(
                f"Unknown provider {provider!r}. Use one of {names() + ['local']} "
                "(or omit it to infer it from the client or model)."
            )
        return provider, False
    if client is not None:
        module = type(client).__module__
        name = _SDK_MODULES.get(module.split(".")[0]) or _SDK_MODULES.get(
            ".".join(module.split(".")[:2])
        )
        if name in _REGISTRY:
            _check_family(name, client, model)
            return name, False
        raise ConfigError(
            f"client must be an official SDK client (openai.OpenAI, anthropic.Anthropic or "
            f"google.genai.Client), got {type(client).__name__}."
        )
    return by_model, False


#: The top module of each official SDK's client classes -> the provider it speaks to.
_SDK_MODULES = {"openai": "openai", "anthropic": "anthropic", "google.genai": "gemini"}

#: The environment variables a provider's API key is read from (kept with the rest of
#: what decides which key a job may use, in .credentials).
from .credentials import KEY_VARIABLES as KEY_VARIABLES  # noqa: E402

#: Google's embedding models whose names do not start with ``gemini``.
_GEMINI_EMBEDDING_MODELS = ("text-embedding-004", "embedding-001")


def by_model_name(model: str) -> str:
    """The provider a model name belongs to: ``claude-*`` Anthropic, ``gemini-*`` (or
    ``models/gemini-*``, or Google's ``text-embedding-004``) Gemini, anything else OpenAI."""
    if model.startswith("claude"):
        return "anthropic"
    if model.removeprefix("models/").startswith(("gemini", *_GEMINI_EMBEDDING_MODELS)):
        return "gemini"
    return "openai"


def base_url_of(client: Any) -> str:
    """Where an SDK client sends requests (recorded in the ledger; never a key)."""
    if hasattr(client, "base_url"):
        return str(client.base_url)
    options = getattr(getattr(client, "_api_client", None), "_http_options", None)
    url = getattr(options, "base_url", None)  # google.genai.Client keeps it there
    return str(url or "https://generativelanguage.googleapis.com/")


#: Model name prefixes that belong to one provider only.
_FAMILIES = {
    "anthropic": ("claude",),
    "gemini": ("gemini-", "models/gemini-", *_GEMINI_EMBEDDING_MODELS),
    "openai": (
        *("gpt-", "chatgpt-", "text-embedding-3", "text-embedding-ada"),
        *("o1", "o3", "o4", "davinci", "babbage"),
    ),
}


def family_of(model: str) -> str | None:
    """The provider whose model names ``model`` looks like (by prefix), or None for a
    name of no known family."""
    return next((o for o, prefixes in _FAMILIES.items() if model.startswith(prefixes)), None)


def _check_family(name: str, client: Any, model: str) -> None:
    """A model of one provider with the other provider's client is a mistake."""
    for owner, prefixes in _FAMILIES.items():
        if owner != name and model.startswith(prefixes):
            raise ConfigError(
                f"model {model!r} is a model of {owner}, but the client is "
                f"{name}.{type(client).__name__}. Pass a client of {owner} (or no client) "
                f"for this model, or choose a model of {name}; with a proxy that serves "
                f"{model!r} through the {name} API, say provider={name!r} explicitly.",
                provider=name,
            )


def default_endpoint(name: str) -> str:
    """The endpoint a provider's requests go to unless ``endpoint=`` says otherwise."""
    return _ENDPOINTS[name]


def build(name: str, client: Any = None, *, local: bool = False) -> Provider:
    """Build the provider ``name`` around ``client`` (or a default client)."""
    from .._scrub import remember
    from . import credentials, loopback

    cls = provider_class(name)
    given = client
    if client is None:
        client = default_client(name, local=local)
    else:
        remember(credentials.key_of(client))  # never quoted in a message of ours
    client = sync_client(client)
    # Where the key came from, for the ledger: later polls use only a key meant for
    # this address (see .credentials).
    credential: str | None
    if local:
        credential = "local"
    elif given is not None:
        credential = "client"
    else:
        credential = credentials.env_origin(name)
    url = base_url_of(client)
    origin = credential
    if not local and credentials.is_loopback(url):
        # Every request checks first that the listener is still the one sent to, and the
        # job is recorded as a loopback one: no environment key is ever sent there later.
        client, credential = loopback.guard(client, url)
    impl = cls(client)
    impl.credential = credential
    impl.key_origin = origin
    return impl


#: The environment variable each SDK reads its address from when given none.
_BASE_URL_VARIABLES = {
    "openai": "OPENAI_BASE_URL",
    "anthropic": "ANTHROPIC_BASE_URL",
    "gemini": "GOOGLE_GEMINI_BASE_URL",
}
_CLIENTS: dict[tuple[str, str | None, str | None], Any] = {}


def default_client(
    name: str,
    *,
    local: bool = False,
    base_url: str | None = None,
    key: str | None = None,
    token: str | None = None,
) -> Any:
    """A client for ``name``: the embedded emulator when ``local``, else from the environment.

    ``key`` (or, for Anthropic, a bearer ``token``) is the credential to send, when the
    caller chose it (see :mod:`.credentials`). Clients are made once per provider,
    address and key and then reused, so jobs share their connection pools.
    """
    if local:
        from .. import emulator
        from .._ledger import home

        return _local_client(name, emulator.background(home()), home())
    elif token is not None:
        key = None
    elif key is None:
        variables = KEY_VARIABLES[name]
        key = next((os.environ[v] for v in variables if os.environ.get(v)), None)
        if not key and not (name == "anthropic" and os.environ.get("ANTHROPIC_AUTH_TOKEN")):
            var = " or ".join(variables)
            raise ConfigError(
                f"No {name} API key: set {var}, or pass client=... (an official SDK client), "
                "or use provider='local' to try it free on the embedded emulator.",
                provider=name,
            )
    # Without base_url the SDK reads its address from the environment: a client made
    # for one address is never reused for another.
    where = base_url or os.environ.get(_BASE_URL_VARIABLES[name]) or None
    cache_key = (name, where, key or (token and f"token:{token}"))
    if cache_key not in _CLIENTS:
        if name == "openai":
            import openai

            _CLIENTS[cache_key] = openai.OpenAI(api_key=key, base_url=base_url)
        elif name == "gemini":
            _CLIENTS[cache_key] = _gemini_client(key, base_url)
        else:
            import anthropic

            _CLIENTS[cache_key] = anthropic.Anthropic(
                api_key=key, auth_token=token, base_url=base_url
            )
    return _CLIENTS[cache_key]


def _local_client(name: str, emu: Any, where: Path) -> Any:
    """A client for the background emulator of home ``where`` (running as ``emu``).

    It holds a placeholder, not the home's key: its guard puts the key on each request
    only after the emulator answering now proved it holds it, and sends the request to
    the port it answers on now (see .loopback)."""
    from . import credentials, loopback

    cache_key = (name, f"local:{where}", None)
    if cache_key not in _CLIENTS:
        base_url = {
            "openai": emu.openai_base_url,
            "anthropic": emu.anthropic_base_url,
            "gemini": emu.gemini_base_url,
        }[name]
        raw = default_client(name, base_url=base_url, key=credentials.PLACEHOLDER_KEY)
        _CLIENTS[cache_key] = loopback.guarded(raw, loopback.home_check(where), "local")
    return _CLIENTS[cache_key]


def _gemini_client(key: str | None, base_url: str | None) -> Any:
    from google import genai
    from google.genai import types

    # Unlike the other SDKs, google-genai retries nothing unless asked: retry what the
    # others retry (429, 5xx, no answer), three attempts in all.
    retry = types.HttpRetryOptions(attempts=3, initial_delay=0.5, max_delay=8.0)
    options = types.HttpOptions(base_url=base_url, retry_options=retry)
    return genai.Client(api_key=key, http_options=options)


def sync_client(client: Any) -> Any:
    """A synchronous client equivalent to ``client`` (nbbatch polls from a thread)."""
    # An SDK client exists only once its SDK is imported: never import one just to check.
    openai = sys.modules.get("openai")
    anthropic = sys.modules.get("anthropic")
    genai_client = sys.modules.get("google.genai.client")
    if genai_client is not None and isinstance(client, genai_client.AsyncClient):
        raise ConfigError(
            "pass the google.genai.Client itself, not its .aio client: nbbatch polls from a "
            "thread and uses the synchronous calls.",
            provider="gemini",
        )
    if openai is not None and isinstance(client, openai.AsyncOpenAI):
        return openai.OpenAI(
            api_key=client.api_key,
            organization=client.organization,
            project=client.project,
            base_url=client.base_url,
            timeout=client.timeout,
            max_retries=client.max_retries,
            default_headers=client._custom_headers,
        )
    if anthropic is not None and isinstance(client, anthropic.AsyncAnthropic):
        return anthropic.Anthropic(
            api_key=client.api_key,
            auth_token=client.auth_token,
            base_url=client.base_url,
            timeout=client.timeout,
            max_retries=client.max_retries,
            default_headers=client._custom_headers,
        )
    return client


def _register_builtin() -> None:
    # The endpoints repeat the classes' own; a test checks that they agree.
    here = __name__
    register("openai", f"{here}.openai:OpenAIProvider", default_endpoint="/v1/chat/completions")
    register("anthropic", f"{here}.anthropic:AnthropicProvider", default_endpoint="/v1/messages")
    register("gemini", f"{here}.gemini:GeminiProvider", default_endpoint="generateContent")


_register_builtin()


def rebuild_client(record: dict[str, Any], home: Path) -> Any:
    """A client for a recorded job, with only a key meant for its recorded address (see
    :mod:`.credentials`); raises :class:`ConfigError` saying what to pass when there is
    none."""
    from .._errors import ConfigError
    from . import credentials, loopback

    name = record["provider"]
    if record.get("backend") == "local":
        return default_client(name, local=True)
    base_url = record.get("base_url")
    credential = record.get("credential")
    if credentials.is_loopback(base_url):
        # Never an environment key, and only while the listener is the one sent to; a
        # job recorded before listeners were cannot tell, so it needs client= too.
        # When it is gone, the job still opens (its results are in the ledger) but every
        # request to another listener is refused before it is sent, with the message
        # that asks for client=.
        assert base_url is not None
        raw = default_client(name, base_url=base_url, key=credentials.PLACEHOLDER_KEY)
        return loopback.for_record(raw, base_url, credential, record["id"])
    if credential and credential.startswith("env:"):
        var = credential.removeprefix("env:")
        value = os.environ.get(var)
        if not value:
            raise ConfigError(
                f"job {record['id']} was submitted with the key in {var}, which is not set "
                f"now: set {var} again, or pass client= to nb.attach({record['id']!r}, "
                "client=...).",
                job_id=record["id"],
                provider=name,
            )
        return _client(name, base_url, var, value)
    if credential == "client":
        same = credentials.env_key_matching(name, record.get("key_hash"), home)
        if same is not None:
            return _client(name, base_url, *same)
    elif credential is None and not credentials.is_loopback(base_url):
        # Recorded before credentials were: the environment's key, at its own address only.
        origin = credentials.env_origin(name)
        if origin is not None:
            var = origin.removeprefix("env:")
            client = _client(name, None, var, os.environ[var])
            if base_url_of(client) == base_url:
                return client
    raise ConfigError(credentials.needs_client(record), job_id=record["id"], provider=name)


def _client(name: str, base_url: str | None, var: str, value: str) -> Any:
    """A client sending ``value`` (read from ``var``) to ``base_url``."""
    from . import credentials

    if var == credentials.ANTHROPIC_TOKEN:
        return default_client(name, base_url=base_url, token=value)
    return default_client(name, base_url=base_url, key=value)
