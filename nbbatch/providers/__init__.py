"""The provider registry: pick a provider by name, client or model, and build it.

Each provider is a :class:`~nbbatch.providers.base.Provider` subclass registered under a
name. ``"local"`` is not a provider of its own: it is the OpenAI or Anthropic provider
pointed at the embedded emulator.
"""

from __future__ import annotations

import os
from typing import Any

from .._errors import ConfigError
from .base import Provider

_REGISTRY: dict[str, type[Provider]] = {}


def register(name: str, cls: type[Provider]) -> None:
    """Make a provider class available under ``name``."""
    _REGISTRY[name] = cls


def names() -> list[str]:
    """The registered provider names."""
    return sorted(_REGISTRY)


def infer(provider: str | None, client: Any, model: str) -> tuple[str, bool]:
    """The provider name to use, and whether it runs on the embedded emulator.

    An explicit ``provider`` wins; else the client's SDK decides; else the model name
    (``claude-*`` is Anthropic, anything else OpenAI).
    """
    by_model = "anthropic" if model.startswith("claude") else "openai"
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
        module = type(client).__module__.split(".")[0]
        if module in _REGISTRY:
            return module, False
        raise ConfigError(
            f"client must be an official SDK client (openai.OpenAI or anthropic.Anthropic), "
            f"got {type(client).__name__}."
        )
    return by_model, False


def default_endpoint(name: str) -> str:
    """The endpoint a provider's requests go to unless ``endpoint=`` says otherwise."""
    return _REGISTRY[name].default_endpoint


def build(name: str, client: Any = None, *, local: bool = False) -> Provider:
    """Build the provider ``name`` around ``client`` (or a default client)."""
    cls = _REGISTRY[name]
    if client is None:
        client = default_client(name, local=local)
    return cls(sync_client(client))


_CLIENTS: dict[tuple[str, str | None, str | None], Any] = {}


def default_client(
    name: str, *, local: bool = False, base_url: str | None = None, key: str | None = None
) -> Any:
    """A client for ``name``: the embedded emulator when ``local``, else from the environment.

    Clients are made once per provider, address and key and then reused, so jobs share
    their connection pools.
    """
    if local:
        from .. import emulator

        emu = emulator.shared()
        base_url = emu.openai_base_url if name == "openai" else emu.anthropic_base_url
        key = "local-emulator"
    elif key is None:
        key = os.environ.get("OPENAI_API_KEY" if name == "openai" else "ANTHROPIC_API_KEY")
        if not key and not (name == "anthropic" and os.environ.get("ANTHROPIC_AUTH_TOKEN")):
            var = "OPENAI_API_KEY" if name == "openai" else "ANTHROPIC_API_KEY"
            raise ConfigError(
                f"No {name} API key: set {var}, or pass client=... (an official SDK client), "
                "or use provider='local' to try it free on the embedded emulator.",
                provider=name,
            )
    cache_key = (name, base_url, key)
    if cache_key not in _CLIENTS:
        if name == "openai":
            import openai

            _CLIENTS[cache_key] = openai.OpenAI(api_key=key, base_url=base_url)
        else:
            import anthropic

            _CLIENTS[cache_key] = anthropic.Anthropic(api_key=key, base_url=base_url)
    return _CLIENTS[cache_key]


def sync_client(client: Any) -> Any:
    """A synchronous client equivalent to ``client`` (nbbatch polls from a thread)."""
    import anthropic
    import openai

    if isinstance(client, openai.AsyncOpenAI):
        return openai.OpenAI(
            api_key=client.api_key,
            organization=client.organization,
            project=client.project,
            base_url=client.base_url,
            timeout=client.timeout,
            max_retries=client.max_retries,
            default_headers=client._custom_headers,
        )
    if isinstance(client, anthropic.AsyncAnthropic):
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
    from .anthropic import AnthropicProvider
    from .openai import OpenAIProvider

    register("openai", OpenAIProvider)
    register("anthropic", AnthropicProvider)


_register_builtin()
