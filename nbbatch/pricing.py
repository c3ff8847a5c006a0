"""Prices per million tokens, and what a job costs at batch and real-time prices.

The table is a dated data file, ``prices.json`` (see :data:`PRICES_DATE`); providers
change prices, so treat every figure as an estimate and override with :func:`set_price`
(``nb.pricing.set``). A model that is not in the table, nor a dated snapshot of one,
has an unknown price: nbbatch says so rather than show a wrong number.
Batch prices are half the real-time prices at OpenAI, Anthropic and Gemini alike.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from importlib import resources


def _load() -> tuple[str, dict[str, tuple[float, float, float]]]:
    raw = json.loads(resources.files(__package__).joinpath("prices.json").read_text())
    models = {
        name: (p["input"], p["cached_input"], p["output"]) for name, p in raw["models"].items()
    }
    return raw["date"], models


#: model -> (input, cached input, output) in US dollars per million tokens, real-time,
#: from ``prices.json``. A dated snapshot (``gpt-4o-mini-2024-07-18``,
#: ``claude-haiku-4-5-20251001``) has its model's price; any other name has none.
PRICES_DATE, _REALTIME = _load()

#: ``-YYYY-MM-DD`` or ``-YYYYMMDD`` at the end of a model name: a dated snapshot; Gemini
#: numbers its stable versions instead (``gemini-2.0-flash-001``).
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{3})$")
BATCH_DISCOUNT = 0.5


def set_price(
    model: str, *, input: float, output: float, cached_input: float | None = None
) -> None:
    """Set (or override) a model's real-time price in dollars per million tokens."""
    _REALTIME[model] = (input, input if cached_input is None else cached_input, output)


#: ``nb.pricing.set("my-model", input=1.0, output=2.0)``
set = set_price  # noqa: A001 - the name users reach for, inside this module only


def price_of(model: str) -> tuple[float, float, float] | None:
    """(input, cached input, output) real-time dollars per million tokens, or None.

    Only a model in the table, or a dated snapshot of one, has a price: a name that
    merely starts like a known model (``gpt-4o-mni``) is unknown, not ``gpt-4o``.
    """
    model = model.removeprefix("models/")  # Gemini's resource name of a model
    if model in _REALTIME:
        return _REALTIME[model]
    return _REALTIME.get(_SNAPSHOT.sub("", model))


@dataclass(frozen=True)
class Cost:
    """A cost in US dollars at batch and at real-time prices (None when unknown)."""

    batch: float | None
    realtime: float | None
    estimated: bool  # True until every row's real token usage is known

    @property
    def saving(self) -> float | None:
        """What the batch price saves over real time."""
        if self.batch is None or self.realtime is None:
            return None
        return self.realtime - self.batch

    def __str__(self) -> str:
        if self.batch is None or self.realtime is None:
            return "unknown price"
        label = "estimate " if self.estimated else ""
        return f"{label}{money(self.batch)} batch vs {money(self.realtime)} real time"


def money(dollars: float) -> str:
    """Dollars for people: cents from one cent up, else enough decimals to show three
    significant digits (never scientific notation)."""
    if dollars == 0 or abs(dollars) >= 0.01:
        return f"${dollars:,.2f}"
    decimals = 2 - math.floor(math.log10(abs(dollars)))
    return f"${dollars:.{decimals}f}"


def cost(
    model: str, input_tokens: int, output_tokens: int, cached_tokens: int = 0, *, estimated: bool
) -> Cost:
    """The cost of this many tokens on ``model`` (cached tokens are part of the input)."""
    price = price_of(model)
    if price is None:
        return Cost(None, None, estimated)
    p_in, p_cached, p_out = price
    fresh = max(0, input_tokens - cached_tokens)
    realtime = (fresh * p_in + cached_tokens * p_cached + output_tokens * p_out) / 1e6
    return Cost(realtime * BATCH_DISCOUNT, realtime, estimated)
