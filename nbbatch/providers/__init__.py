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
from pathlib import Path
from typing import Any

from .. import pricing as _pricing
from .._errors import ConfigError
from .base import Provider

#: name -> the provider class, or its ``"module:Class"`` path until first used
_REGISTRY: dict[str, type[Provider] | str] = {}


def register(cls: type[Provider] | str, name: str | None = None) -> None:
    """Make a provider class available under its :attr:`~Provider.name`.

    ``register(MyProvider)`` is all a new provider needs: nbbatch reads everything else
    (label, SDK client types, key and address variables, model names, prices, the
    emulator's path) from the class. ``cls`` may also be the class's
    ``"module:Class"`` path, imported on first use (then ``name`` is needed): the
    built-in ones are registered so, so that ``import nbbatch`` imports no provider.
    """
    if isinstance(cls, str):
        if name is None:
            raise ValueError("a provider registered by path needs its name")
        _REGISTRY[name] = cls
        return
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise TypeError(f"register() takes a Provider subclass, got {cls!r}")
    _REGISTRY[name or cls.name] = cls
    from .._scrub import key_variables

    key_variables(cls.key_variables + cls.token_variables)  # never quoted in a message


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


def classes() -> list[type[Provider]]:
    """The registered provider classes, in the order they were registered (their
    modules import no SDK until used)."""
    return [provider_class(name) for name in list(_REGISTRY)]


def infer(provider: str | None, client: Any, model: str) -> tuple[str, bool]:
    """The provider name to use, and whether it runs on the embedded emulator.

    An explicit ``provider`` wins; else the client's SDK decides; else the model name
    (``claude-*`` is Anthropic, ``gemini-*`` Gemini, anything else OpenAI).
    """
    if provider == "local":
        name = by_model_name(model)
        owner = provider_class(name)
        if not owner.local_background:
            raise ConfigError(
                f"provider='local' serves OpenAI, Anthropic and Gemini models, not {model!r} "
                f"({owner.label}). Start an emulator and pass a client aimed at its {name} "
                f"routes: emu = nb.emulator.start(); client=... at emu.url + "
                f"{owner.emulator_prefix!r}.",
                provider=name,
            )
        return name, True
    if provider is not None:
        if provider not in _REGISTRY:
            raise ConfigError(
                f"Unknown provider {provider!r}. Use one of {names() + ['local']} "
                "(or omit it to infer it from the client or model)."
            )
        return provider, False
    if client is not None:
        cls = _class_of_client(client)
        if cls is None:
            known = ", ".join(t.replace(":", ".") for c in classes() for t in c.client_types[:1])
            raise ConfigError(
                f"client must be an official SDK client ({known}), got {type(client).__name__}."
            )
        _check_family(cls, client, model)
        return cls.name, False
    return by_model_name(model), False


def _class_of_client(client: Any) -> type[Provider] | None:
    """The provider whose SDK client ``client`` is: the one naming the most specific of
    its classes (``AzureOpenAI`` is an ``OpenAI`` too, and Azure's)."""
    mro = [f"{k.__module__}:{k.__qualname__}" for k in type(client).__mro__]
    best: tuple[int, type[Provider]] | None = None
    for cls in classes():
        if not cls.owns_client(client):
            continue
        depth = min((mro.index(t) for t in cls.client_types if t in mro), default=len(mro))
        if best is None or depth < best[0]:
            best = (depth, cls)
    return None if best is None else best[1]


def class_of_client(client: Any) -> type[Provider]:
    """The provider class of SDK client ``client`` (see :func:`infer`)."""
    cls = _class_of_client(client)
    if cls is None:
        raise ConfigError(f"not an official SDK client nbbatch knows: {type(client).__name__}")
    return cls


def by_model_name(model: str) -> str:
    """The provider a model name belongs to, by the prefixes its class claims
    (``claude-*`` Anthropic, ``gemini-*`` Gemini, ...); anything else OpenAI."""
    owner = family_of(model)
    if owner is not None:
        return owner
    return next((c.name for c in classes() if c.claims_unknown_models), "openai")


def base_url_of(client: Any) -> str:
    """Where an SDK client sends requests (recorded in the ledger; never a key)."""
    cls = _class_of_client(client)
    if cls is not None:
        return cls.address_of(client)
    return str(client.base_url)


def family_of(model: str) -> str | None:
    """The provider whose model names ``model`` looks like (by prefix), or None for a
    name of no known family."""
    return next((c.name for c in classes() if c.owns_model(model)), None)


def _check_family(cls: type[Provider], client: Any, model: str) -> None:
    """A model of one provider with the other provider's client is a mistake."""
    owner = family_of(model)
    if owner is not None and owner != cls.name and not cls.owns_model(model):
        name = cls.name
        raise ConfigError(
            f"model {model!r} is a model of {owner}, but the client is "
            f"{name}.{type(client).__name__}. Pass a client of {owner} (or no client) "
            f"for this model, or choose a model of {name}; with a proxy that serves "
            f"{model!r} through the {name} API, say provider={name!r} explicitly.",
            provider=name,
        )


def default_endpoint(name: str) -> str:
    """The endpoint a provider's requests go to unless ``endpoint=`` says otherwise."""
    return provider_class(name).default_endpoint


def build(name: str, client: Any = None, *, local: bool = False) -> Provider:
    """Build the provider ``name`` around ``client`` (or a default client)."""
    from .._scrub import remember
    from . import credentials, loopback

    cls = provider_class(name)
    given = client
    if client is None:
        client = default_client(name, local=local)
    else:
        for secret in credentials.secrets_of(client):
            remember(secret)  # never quoted in a message of ours
    synced = cls.sync_client(client)
    made = synced is not client  # made here from an async client: nbbatch closes it
    client = synced
    # Where the key came from, for the ledger: later polls use only a key meant for
    # this address (see .credentials).
    credential: str | None
    if local:
        credential = "local"
    elif given is not None:
        credential = "client"
    else:
        credential = credentials.env_origin(cls.key_variables + cls.token_variables)
    url = base_url_of(client)
    origin = credential
    if not local and credentials.is_loopback(url):
        # Every request checks first that the listener is still the one sent to, and the
        # job is recorded as a loopback one: no environment key is ever sent there later.
        client, credential = loopback.guard(client, url, cls.rebind)
    impl = cls(client)
    impl.credential = credential
    impl.key_origin = origin
    if made and callable(getattr(synced, "close", None)):
        loopback.close_with(impl, synced)
    return impl


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
    cls = provider_class(name)
    if local:
        from .. import emulator
        from .._ledger import home

        return _local_client(cls, emulator.background(home()), home())
    elif token is not None:
        key = None
    elif key is None:
        key = next((os.environ[v] for v in cls.key_variables if os.environ.get(v)), None)
        # A bearer token in the environment is read by the SDK itself (Anthropic's).
        if not key and not any(os.environ.get(v) for v in cls.token_variables):
            raise ConfigError(
                f"No {cls.label} API key: set {cls.unknown_key()}, or pass client=... (an "
                "official SDK client), or use provider='local' to try it free on the "
                f"embedded emulator.{_keys_of_others(cls)}",
                provider=name,
            )
    # Without base_url the SDK reads its address from the environment: a client made
    # for one address is never reused for another.
    variable = cls.base_url_variable
    where = base_url or (os.environ.get(variable) if variable else None) or None
    cache_key = (name, where, key or (token and f"token:{token}"))
    if cache_key not in _CLIENTS:
        if token is not None:
            _CLIENTS[cache_key] = cls.make_token_client(token=token, base_url=base_url)
        else:
            _CLIENTS[cache_key] = cls.make_client(api_key=key, base_url=base_url)
    return _CLIENTS[cache_key]


def _keys_of_others(cls: type[Provider]) -> str:
    """A hint naming the other providers whose key is set: a model name nbbatch does not
    place (``llama-3.1-8b-instant``) is taken for OpenAI's, and a user with only
    GROQ_API_KEY set is told to say ``provider='groq'``. Names variables, never keys."""
    hints = []
    for other in classes():
        if other is cls:
            continue
        found = next((v for v in other.key_variables if os.environ.get(v)), None)
        if found is not None:
            hints.append(f"{found} is set: for a {other.label} model, pass provider={other.name!r}")
    return f" ({'; '.join(hints)}.)" if hints else ""


def _local_client(cls: type[Provider], emu: Any, where: Path) -> Any:
    """A client for the background emulator of home ``where`` (running as ``emu``).

    It holds a placeholder, not the home's key: its guard puts the key on each request
    only after the emulator answering now proved it holds it, and sends the request to
    the port it answers on now (see .loopback)."""
    from . import credentials, loopback

    cache_key = (cls.name, f"local:{where}", None)
    if cache_key not in _CLIENTS:
        if cls.emulator_prefix is None:
            raise ConfigError(
                f"the embedded emulator does not speak {cls.label}: pass client=... aimed "
                "at the provider.",
                provider=cls.name,
            )
        base_url = emu.url + cls.emulator_prefix
        raw = default_client(cls.name, base_url=base_url, key=credentials.PLACEHOLDER_KEY)
        check = loopback.home_check(where)
        _CLIENTS[cache_key] = loopback.guarded(raw, check, "local", cls.rebind)
    return _CLIENTS[cache_key]


def sync_client(client: Any) -> Any:
    """A synchronous client equivalent to ``client`` (nbbatch polls from a thread): the
    provider whose SDK client it is makes it."""
    cls = _class_of_client(client)
    return client if cls is None else cls.sync_client(client)


def _register_builtin() -> None:
    here = __name__
    register(f"{here}.openai:OpenAIProvider", "openai")
    register(f"{here}.anthropic:AnthropicProvider", "anthropic")
    register(f"{here}.gemini:GeminiProvider", "gemini")
    register(f"{here}.azure:AzureProvider", "azure")
    register(f"{here}.groq:GroqProvider", "groq")
    register(f"{here}.together:TogetherProvider", "together")
    register(f"{here}.mistral:MistralProvider", "mistral")
    register(f"{here}.bedrock:BedrockProvider", "bedrock")


_register_builtin()


def _price_table(name: str, model: str) -> tuple[str | None, str, float] | None:
    """(genai-prices provider id, model to look up, batch share of the real-time price)
    for ``model`` at provider ``name``, or None for a name not registered (see
    :func:`nbbatch.pricing.rates_for`)."""
    if name not in _REGISTRY:
        return None
    cls = provider_class(name)
    return cls.prices_provider, cls.base_model(model), cls.batch_price_share


_pricing.use_registry(_price_table)


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
    if name == "bedrock" and not credentials.is_loopback(base_url):
        return default_client(name, base_url=base_url)  # boto3's own credential chain
    if credentials.is_loopback(base_url):
        # Never an environment key, and only while the listener is the one sent to; a
        # job recorded before listeners were cannot tell, so it needs client= too.
        # When it is gone, the job still opens (its results are in the ledger) but every
        # request to another listener is refused before it is sent, with the message
        # that asks for client=.
        assert base_url is not None
        raw = default_client(name, base_url=base_url, key=credentials.PLACEHOLDER_KEY)
        rebind = provider_class(name).rebind
        return loopback.for_record(raw, base_url, credential, record["id"], rebind)
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
        variables = provider_class(name).key_variables + provider_class(name).token_variables
        same = credentials.env_key_matching(variables, record.get("key_hash"), home)
        if same is not None:
            return _client(name, base_url, *same)
    elif credential is None and not credentials.is_loopback(base_url):
        # Recorded before credentials were: the environment's key, at its own address only.
        cls = provider_class(name)
        origin = credentials.env_origin(cls.key_variables + cls.token_variables)
        if origin is not None:
            var = origin.removeprefix("env:")
            client = _client(name, None, var, os.environ[var])
            if base_url_of(client) == base_url:
                return client
    raise ConfigError(credentials.needs_client(record), job_id=record["id"], provider=name)


def _client(name: str, base_url: str | None, var: str, value: str) -> Any:
    """A client sending ``value`` (read from ``var``) to ``base_url``."""
    if var in provider_class(name).token_variables:
        return default_client(name, base_url=base_url, token=value)
    return default_client(name, base_url=base_url, key=value)
