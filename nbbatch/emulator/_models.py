"""The models the emulator says it has, per provider, for the models endpoints.

Real model ids of the three providers (their aliases and dated snapshots), so that a
client asking ``models.retrieve("gtp-4o-mini")`` hears what the provider would say: no
such model. The list is the table below (ids with their creation dates) joined with the
models genai-prices knows for each provider: genai-prices is maintained as providers
ship models, and each of its models carries the rule that recognises the names it goes
by (``gpt-3.5-turbo-0125``, ``claude-sonnet-4-20250514``, ``gemini-2.0-flash-001``...),
so documented aliases and dated snapshots are accepted while a typo is not.
``start(models=[...])``, ``--models`` and ``$NBBATCH_EMULATOR_MODELS`` add names of
one's own; those are served by every API. The batch and real-time endpoints refuse a
model that is not known here, as the services do (OpenAI and Anthropic per request,
Gemini when the batch is created).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelEntry:
    """One model as the models endpoints describe it."""

    id: str
    created: int  # unix seconds
    display_name: str


def _family(alias: str, snapshots: Iterable[str], created: int, display: str) -> list[ModelEntry]:
    return [ModelEntry(alias, created, display)] + [
        ModelEntry(s, created, display) for s in snapshots
    ]


OPENAI: tuple[ModelEntry, ...] = tuple(
    _family("gpt-4o-mini", ["gpt-4o-mini-2024-07-18"], 1721172741, "GPT-4o mini")
    + _family(
        "gpt-4o",
        ["gpt-4o-2024-05-13", "gpt-4o-2024-08-06", "gpt-4o-2024-11-20"],
        1715367049,
        "GPT-4o",
    )
    + _family("gpt-4.1", ["gpt-4.1-2025-04-14"], 1744316542, "GPT-4.1")
    + _family("gpt-4.1-mini", ["gpt-4.1-mini-2025-04-14"], 1744318173, "GPT-4.1 mini")
    + _family("gpt-4.1-nano", ["gpt-4.1-nano-2025-04-14"], 1744321025, "GPT-4.1 nano")
    + _family("gpt-5", ["gpt-5-2025-08-07"], 1754425777, "GPT-5")
    + _family("gpt-5-mini", ["gpt-5-mini-2025-08-07"], 1754425867, "GPT-5 mini")
    + _family("gpt-5-nano", ["gpt-5-nano-2025-08-07"], 1754426384, "GPT-5 nano")
    + _family("o4-mini", ["o4-mini-2025-04-16"], 1744225351, "o4-mini")
    + _family("text-embedding-3-small", [], 1705948997, "text-embedding-3-small")
    + _family("text-embedding-3-large", [], 1705953180, "text-embedding-3-large")
)

ANTHROPIC: tuple[ModelEntry, ...] = tuple(
    _family("claude-haiku-4-5", ["claude-haiku-4-5-20251001"], 1759276800, "Claude Haiku 4.5")
    + _family("claude-sonnet-4-5", ["claude-sonnet-4-5-20250929"], 1759104000, "Claude Sonnet 4.5")
    + _family("claude-sonnet-4", ["claude-sonnet-4-20250514"], 1747180800, "Claude Sonnet 4")
    + _family("claude-opus-4-5", ["claude-opus-4-5-20251101"], 1761955200, "Claude Opus 4.5")
    + _family("claude-opus-4-1", ["claude-opus-4-1-20250805"], 1754352000, "Claude Opus 4.1")
    + _family(
        "claude-3-5-haiku-latest", ["claude-3-5-haiku-20241022"], 1729555200, "Claude Haiku 3.5"
    )
)

GEMINI: tuple[ModelEntry, ...] = tuple(
    _family("gemini-2.5-flash", [], 1750118400, "Gemini 2.5 Flash")
    + _family("gemini-2.5-flash-lite", [], 1753142400, "Gemini 2.5 Flash-Lite")
    + _family("gemini-2.5-pro", [], 1750118400, "Gemini 2.5 Pro")
    + _family("gemini-2.0-flash", ["gemini-2.0-flash-001"], 1738713600, "Gemini 2.0 Flash")
    + _family("gemini-embedding-001", [], 1752624000, "Gemini Embedding 001")
    + _family("text-embedding-004", [], 1715644800, "Text Embedding 004")
)

#: Mistral's "-latest" aliases that its batch guide and SDK examples use
#: (docs.mistral.ai/capabilities/batch: mistral-small-latest, codestral-latest,
#: ministral-3b-latest; the SDK's examples: mistral-medium-latest, mistral-large-latest).
#: Their creation dates are not published: they get genai-prices' date (see below).
MISTRAL_ALIASES = (
    "mistral-small-latest",
    "mistral-medium-latest",
    "mistral-large-latest",
    "codestral-latest",
    "ministral-3b-latest",
)

#: When models added with ``start(models=...)`` say they were created (2025-01-01).
ADDED_CREATED = 1735689600
#: When models known only from genai-prices say they were created: its data has no
#: release dates, so they all get one (2024-01-01), older than the table's.
PRICES_CREATED = 1704067200

#: Comma-separated model names every emulator started in this environment also serves.
MODELS_ENV = "NBBATCH_EMULATOR_MODELS"

#: genai-prices' provider id for each API the emulator serves.
_PRICES_PROVIDER = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "google",
    # The OpenAI-compatible services' variants (._groq, ._together) list only
    # genai-prices' models of theirs: the emulator has no table of its own for them.
    "groq": "groq",
    "together": "together",
    "mistral": "mistral",
}
#: Name prefixes of the models each API serves: genai-prices' "google" provider also
#: prices the Claude models Vertex AI resells, which the Gemini API does not serve.
_SERVED_PREFIXES = {
    "openai": None,
    "anthropic": ("claude",),
    "gemini": ("gemini", "gemma", "text-embedding", "embedding"),
    "groq": None,
    "together": None,
    "mistral": None,
}


def env_models() -> tuple[str, ...]:
    """The names ``$NBBATCH_EMULATOR_MODELS`` adds (comma-separated, blanks ignored)."""
    return tuple(n.strip() for n in os.environ.get(MODELS_ENV, "").split(",") if n.strip())


@functools.cache
def _prices_models(provider: str) -> tuple[Any, ...]:
    """genai-prices' models of ``provider`` that the API serves, as its ModelInfo objects.

    Ids that are patterns rather than names (fine-tune prefixes such as ``ft:gpt-4o``,
    ids ending in ``-``) are left out of the list but still recognise the names they
    match.
    """
    from genai_prices.data_snapshot import get_snapshot

    wanted = _PRICES_PROVIDER[provider]
    prefixes = _SERVED_PREFIXES[provider]
    for p in get_snapshot().providers:
        if p.id == wanted:
            return tuple(m for m in p.models if prefixes is None or m.id.startswith(prefixes))
    return ()


def _listable(model_id: str) -> bool:
    return not (":" in model_id or model_id.endswith("-") or ".ft-" in model_id)


@functools.cache
def _known(provider: str) -> tuple[ModelEntry, ...]:
    """The table's models of ``provider`` newest first, then genai-prices' others."""
    mistral = tuple(ModelEntry(m, PRICES_CREATED, m) for m in MISTRAL_ALIASES)
    tables = {"openai": OPENAI, "anthropic": ANTHROPIC, "gemini": GEMINI, "mistral": mistral}
    table = tables.get(provider, ())
    known = sorted(table, key=lambda m: -m.created)
    have = {m.id for m in known}
    more = [
        ModelEntry(m.id, PRICES_CREATED, m.name or m.id)
        for m in _prices_models(provider)
        if m.id not in have and _listable(m.id)
    ]
    return tuple(known) + tuple(more)


def catalogue(provider: str, extra: Iterable[str] = ()) -> list[ModelEntry]:
    """The models of ``provider`` ("openai", "anthropic" or "gemini"): the table's newest
    first, then genai-prices' others, then ``extra`` and ``$NBBATCH_EMULATOR_MODELS``."""
    known = list(_known(provider))
    have = {m.id for m in known}
    added: list[ModelEntry] = []
    for name in (*extra, *env_models()):
        if name not in have:
            have.add(name)
            added.append(ModelEntry(name, ADDED_CREATED, name))
    return known + added


def find(provider: str, model: str, extra: Iterable[str] = ()) -> ModelEntry | None:
    """The entry for ``model``, or None when the provider has no such model.

    A name that is not listed but that one of genai-prices' models recognises (an alias
    or a dated snapshot) is found too, under its own name. Called for every batch line,
    so the answer is cached.
    """
    return _find(provider, model, tuple(extra), os.environ.get(MODELS_ENV, ""))


@functools.lru_cache(maxsize=4096)
def _find(provider: str, model: str, extra: tuple[str, ...], env: str) -> ModelEntry | None:
    for m in _known(provider):
        if m.id == model:
            return m
    if model in extra or model in env_models():
        return ModelEntry(model, ADDED_CREATED, model)
    for info in _prices_models(provider):
        if _names(info.match, model):
            family = next((m for m in _known(provider) if m.id == info.id), None)
            created = family.created if family else PRICES_CREATED
            return ModelEntry(model, created, info.name or model)
    return None


def _names(clause: Any, model: str) -> bool:
    """Whether genai-prices' match rule ``clause`` recognises ``model`` as a name the
    service answers to.

    Its prefix rules are made for prices, where any suffix is still the same model, so
    ``claude-haiku-4-5`` would recognise the typo ``claude-haiku-4-5x``. A service
    answers only to the prefix itself, to the prefix and a separated suffix (a dated
    snapshot ``-20251001``, a version after ``@``), or to a date the prefix begins
    (``claude-sonnet-4-2025`` + ``0514``). The other rules are taken as they are.
    """
    if hasattr(clause, "or_"):
        return any(_names(c, model) for c in clause.or_)
    if hasattr(clause, "and_"):
        return all(_names(c, model) for c in clause.and_)
    prefix = getattr(clause, "starts_with", None)
    if not isinstance(prefix, str) or not clause.is_match(model):
        return bool(clause.is_match(model))
    rest = model[len(prefix) :]
    if not rest or rest[0] in "-@" or not prefix[-1].isalnum():
        return True
    return re.fullmatch(r"(?:.*-)?\d{4}", prefix) is not None and rest[:4].isdigit()


#: How many numbers each embedding model returns when the request does not shorten it.
EMBEDDING_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "gemini-embedding-001": 3072,
    "text-embedding-004": 768,
}
#: The size for embedding models added with ``start(models=...)``.
DEFAULT_EMBEDDING_DIMENSIONS = 1536


def embedding_dimensions(model: str) -> int:
    """The full size of an embedding of ``model`` (also the most ``dimensions`` may ask)."""
    return EMBEDDING_DIMENSIONS.get(model.removeprefix("models/"), DEFAULT_EMBEDDING_DIMENSIONS)


@functools.lru_cache(maxsize=4096)
def family(provider: str, model: str) -> str | None:
    """genai-prices' id of the model ``model`` names (``claude-sonnet-4-0`` for
    ``claude-sonnet-4-20250514``, ``o3`` for ``o3-2025-04-16``), or None for a name it does
    not know (names added with ``models=``): the key of the per-model rules in
    :mod:`._rules`."""
    for info in _prices_models(provider):
        if info.id == model:
            return str(info.id)
    for info in _prices_models(provider):
        if info.is_match(model):
            return str(info.id)
    return None


# The models OpenAI serves with flex processing (service_tier="flex"). Its flex guide
# (https://platform.openai.com/docs/guides/flex-processing) named "o3 and o4-mini"; it now
# points to the pricing page, whose Flex table we could not read. Third-party pages list
# the GPT-5.4, GPT-5.5 and GPT-5.6 families
# (https://docs.merge.dev/merge-gateway/features/service-tiers). Kept apart from the
# client's list (nbbatch.providers.openai) because the emulator imports nothing from it.
OPENAI_FLEX_MODELS = ("o3", "o4-mini")
OPENAI_FLEX_FAMILIES = ("gpt-5.4", "gpt-5.5", "gpt-5.6")


def offers_flex(model: str) -> bool:
    """Whether OpenAI serves ``model`` with flex processing (a dated snapshot counts)."""
    if model in OPENAI_FLEX_MODELS or model in OPENAI_FLEX_FAMILIES:
        return True
    if any(re.fullmatch(re.escape(m) + r"-\d{4}-\d{2}-\d{2}", model) for m in OPENAI_FLEX_MODELS):
        return True
    return model.startswith(tuple(f + "-" for f in OPENAI_FLEX_FAMILIES))
