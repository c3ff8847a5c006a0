"""Prices per million tokens, and what a job costs at batch and real-time prices.

The table is a snapshot (see :data:`PRICES_DATE`); providers change prices, so treat
every figure as an estimate and override with :func:`set_price`. A model that is not in
the table has an unknown price: nbbatch says so rather than show a wrong number.
Batch prices are half the real-time prices at both OpenAI and Anthropic.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_DATE = "2026-11-01"

#: model prefix -> (input, cached input, output) in US dollars per million tokens,
#: real-time. The longest matching prefix wins, so dated snapshots match their family.
_REALTIME: dict[str, tuple[float, float, float]] = {
    "gpt-4o-mini": (0.15, 0.075, 0.60),
    "gpt-4o": (2.50, 1.25, 10.00),
    "gpt-4.1-nano": (0.10, 0.025, 0.40),
    "gpt-4.1-mini": (0.40, 0.10, 1.60),
    "gpt-4.1": (2.00, 0.50, 8.00),
    "gpt-5-nano": (0.05, 0.005, 0.40),
    "gpt-5-mini": (0.25, 0.025, 2.00),
    "gpt-5": (1.25, 0.125, 10.00),
    "o4-mini": (1.10, 0.275, 4.40),
    "text-embedding-3-small": (0.02, 0.02, 0.0),
    "text-embedding-3-large": (0.13, 0.13, 0.0),
    "claude-haiku-4-5": (1.00, 0.10, 5.00),
    "claude-sonnet-4-5": (3.00, 0.30, 15.00),
    "claude-sonnet-4": (3.00, 0.30, 15.00),
    "claude-opus-4-1": (15.00, 1.50, 75.00),
    "claude-opus-4-5": (5.00, 0.50, 25.00),
    "claude-3-5-haiku": (0.80, 0.08, 4.00),
}
BATCH_DISCOUNT = 0.5


def set_price(
    model: str, *, input: float, output: float, cached_input: float | None = None
) -> None:
    """Set (or override) a model's real-time price in dollars per million tokens."""
    _REALTIME[model] = (input, input if cached_input is None else cached_input, output)


def price_of(model: str) -> tuple[float, float, float] | None:
    """(input, cached input, output) real-time dollars per million tokens, or None."""
    matches = [p for p in _REALTIME if model == p or model.startswith(p + "-")]
    return _REALTIME[max(matches, key=len)] if matches else None


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
        if self.batch is None:
            return "unknown price"
        label = "estimate " if self.estimated else ""
        return f"{label}${self.batch:,.4f} batch vs ${self.realtime:,.4f} real time"


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
