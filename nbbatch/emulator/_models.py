"""The models the emulator says it has, per provider, for the models endpoints.

Real model ids of both providers (their aliases and dated snapshots), so that a client
asking ``models.retrieve("gtp-4o-mini")`` hears what the provider would say: no such
model. ``start(models=[...])`` adds names of one's own; those are served by both APIs.
The batch and real-time endpoints refuse a model that is not listed here, as the
services do (OpenAI and Anthropic per request, Gemini when the batch is created).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


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

#: When models added with ``start(models=...)`` say they were created (2025-01-01).
ADDED_CREATED = 1735689600


def catalogue(provider: str, extra: Iterable[str] = ()) -> list[ModelEntry]:
    """The models of ``provider`` ("openai", "anthropic" or "gemini"), newest first, then
    ``extra``."""
    table = {"openai": OPENAI, "anthropic": ANTHROPIC, "gemini": GEMINI}[provider]
    known = sorted(table, key=lambda m: -m.created)
    have = {m.id for m in known}
    added = [ModelEntry(name, ADDED_CREATED, name) for name in extra if name not in have]
    return known + added


def find(provider: str, model: str, extra: Iterable[str] = ()) -> ModelEntry | None:
    """The entry for ``model``, or None when the provider has no such model."""
    return next((m for m in catalogue(provider, extra) if m.id == model), None)


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
