"""Prices per million tokens, and what a job costs at batch and real-time prices.

Prices come from `genai-prices <https://github.com/pydantic/genai-prices>`_, the price
data the Pydantic team keeps for thousands of models, with each provider's batch rates
and prompt-cache read and write prices. nbbatch reads the snapshot bundled with the
installed package and never starts its updater, so pricing makes no network call
(:func:`source` says which data and of when: the newest price change it records).
Upgrading ``genai-prices`` updates the prices.

On top of it, :func:`set_price` (``nb.pricing.set``) sets or overrides a model's
price; the batch price of a price set that way is half of it, the rule at OpenAI and
Anthropic, or the provider's own share where it publishes another (Groq's: 75%). A
model neither knows has an unknown price: nbbatch says so rather than show a wrong
number. Where the data has no batch rate for a model it knows, the batch price is the
provider's share of its real-time price (half for most: their published rule), and
:attr:`Rates.batch_rule` says so.

Prices with tiers by prompt length (a higher rate above 200,000 input tokens, say) are
taken at their base rate (Gemini Pro's higher rate above 200,000 prompt tokens
included): batch requests are priced one by one, and a request that
long is rare; treat every figure as an estimate.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

BATCH_DISCOUNT = 0.5
#: ``-YYYY-MM-DD`` or ``-YYYYMMDD`` at the end of a model name: a dated snapshot.
#: Gemini numbers its stable versions instead (``gemini-2.0-flash-001``).
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{3})$")


@dataclass(frozen=True)
class Rates:
    """A model's prices in US dollars per million tokens, real time and batch."""

    input: float
    cached_input: float  # a prompt-cache read
    cache_write: float  # a prompt-cache write (Anthropic; OpenAI's caching is free)
    output: float
    batch_input: float
    batch_cached_input: float
    batch_cache_write: float
    batch_output: float
    source: str  # "genai-prices 0.2.3 (data to 2026-12-01)" or "set with nb.pricing.set"
    batch_rule: bool = False  # batch rates are half the real-time ones by the rule, not data

    def realtime_cost(self, fresh: int, cached: int, written: int, output: int) -> float:
        """Dollars for these tokens at real-time prices."""
        return (
            fresh * self.input
            + cached * self.cached_input
            + written * self.cache_write
            + output * self.output
        ) / 1e6

    def batch_cost(self, fresh: int, cached: int, written: int, output: int) -> float:
        """Dollars for these tokens at batch prices."""
        return (
            fresh * self.batch_input
            + cached * self.batch_cached_input
            + written * self.batch_cache_write
            + output * self.batch_output
        ) / 1e6


_OVERRIDES: dict[str, Rates] = {}
_LOCK = threading.Lock()


def set_price(
    model: str,
    *,
    input: float,
    output: float,
    cached_input: float | None = None,
    cache_write: float | None = None,
) -> None:
    """Set (or override) a model's real-time price in dollars per million tokens; its
    batch price is half of it, or the provider's own share where that differs (a Groq
    job's is 75% of it: Groq discounts its batches 25%). ``cached_input`` (a cache read)
    and ``cache_write`` default to ``input``."""
    cached = input if cached_input is None else cached_input
    written = input if cache_write is None else cache_write
    _OVERRIDES[model] = Rates(
        input,
        cached,
        written,
        output,
        input * BATCH_DISCOUNT,
        cached * BATCH_DISCOUNT,
        written * BATCH_DISCOUNT,
        output * BATCH_DISCOUNT,
        source="set with nb.pricing.set",
    )


def _at_share(rates: Rates, share: float) -> Rates:
    """A price set with :func:`set_price` (batch at half) at the provider's own batch
    share of the real-time price: a Groq model's batch is 75% of the price set, as
    Groq discounts 25% (see ``batch_price_share`` on the provider classes)."""
    if share == BATCH_DISCOUNT:
        return rates
    return dataclasses.replace(
        rates,
        batch_input=rates.input * share,
        batch_cached_input=rates.cached_input * share,
        batch_cache_write=rates.cache_write * share,
        batch_output=rates.output * share,
    )


#: ``nb.pricing.set("my-model", input=1.0, output=2.0)``
set = set_price  # noqa: A001 - the name users reach for, inside this module only


def rates(model: str) -> Rates | None:
    """``model``'s prices (yours from :func:`set_price` first), or None when unknown,
    the provider guessed from the model's name: :func:`rates_for` when it is known."""
    return rates_for(None, model)


def rates_for(provider: str | None, model: str) -> Rates | None:
    """The prices of ``model`` at provider ``provider`` (a registered name; None: by the
    model's name), or None when unknown: the one look-up every estimate, snapshot and
    view uses. The provider's class says which genai-prices table prices it
    (:attr:`~nbbatch.providers.base.Provider.prices_provider`) and which model a name
    stands for (:meth:`~nbbatch.providers.base.Provider.base_model`: an Azure
    deployment is priced as its model). Yours from :func:`set_price` come first, under
    the name given or the model it stands for.

    A dated snapshot (``gpt-4o-mini-2024-07-18``) has its model's price when the data
    does not list it by itself; a name that merely starts like a known model
    (``gpt-4o-mni``) is unknown.
    """
    table, base, share = _table_of(provider, model)
    for given in dict.fromkeys((model.removeprefix("models/"), base)):
        for name in (given, _SNAPSHOT.sub("", given)):
            if name in _OVERRIDES:
                return _at_share(_OVERRIDES[name], share)
    found = _from_data(base, table, share)
    if found is None and _SNAPSHOT.search(base):
        found = _from_data(_SNAPSHOT.sub("", base), table, share)
    return found


#: (provider name, model) -> (genai-prices provider id, the model it stands for), or
#: None for an unknown name: the provider registry's answer (nbbatch.providers sets it
#: on import, so that pricing imports nothing of it).
_Registry = Callable[[str, str], "tuple[str | None, str, float] | None"]
_registry: list[_Registry] = []


def use_registry(lookup: _Registry) -> None:
    """Ask ``lookup`` which genai-prices table prices a provider's model, which model a
    name stands for, and the share of the real-time price a batch costs where the data
    has no batch rate (the provider registry calls this once)."""
    _registry[:] = [lookup]


def _table_of(provider: str | None, model: str) -> tuple[str | None, str, float]:
    """(genai-prices provider id, model name to look up, batch share of the real-time
    price where the data has no batch rate) for ``model`` at ``provider``."""
    found = _registry[0](provider, model) if provider is not None and _registry else None
    if found is not None:
        table, base, share = found
        base = base.removeprefix("models/")
        return table or _provider_id(base), base, share
    model = model.removeprefix("models/")  # Gemini's resource name of a model
    return _provider_id(model), model, BATCH_DISCOUNT


def price_of(model: str, provider: str | None = None) -> tuple[float, float, float] | None:
    """(input, cached input, output) real-time dollars per million tokens, or None."""
    r = rates_for(provider, model)
    return None if r is None else (r.input, r.cached_input, r.output)


def source() -> str:
    """Where the prices come from and of when, for the panel and ``nb.preview``:
    ``"genai-prices 0.2.3 (data to 2026-12-01)"``."""
    return _data_source()


#: Input limits, in tokens, of embedding models, which genai-prices gives no context
#: window for (the providers' model pages state them).
_EMBEDDING_WINDOWS = {
    "text-embedding-3-small": 8191,
    "text-embedding-3-large": 8191,
    "text-embedding-ada-002": 8191,
    "gemini-embedding-001": 2048,
    "text-embedding-004": 2048,
}


def context_window(model: str, provider: str | None = None) -> int | None:
    """The most tokens a request to ``model`` (at ``provider``, see :func:`rates_for`)
    may hold (its context window), from genai-prices' data (a dated snapshot as its
    model), or None when unknown."""
    table, model, _ = _table_of(provider, model)
    for name in (model, _SNAPSHOT.sub("", model)):
        if name in _EMBEDDING_WINDOWS:
            return _EMBEDDING_WINDOWS[name]
        with _LOCK:
            window = _window_cached(name, table, id(_snapshot()))
        if window is not None:
            return window
    return None


@cache
def _window_cached(model: str, table: str | None, snapshot_id: int) -> int | None:
    try:
        _, info = _snapshot().find_provider_model(model, None, table, None)
    except LookupError:
        return None
    window = getattr(info, "context_window", None)
    return window if isinstance(window, int) and window > 0 else None


@dataclass(frozen=True)
class Cost:
    """A cost in US dollars at batch and at real-time prices (None when unknown).

    For a job that escalates, ``batch`` adds up each stage on its own model
    (``per_model``) and ``realtime`` is what every row would have cost on the last
    model in real time (``baseline`` names that model)."""

    batch: float | None
    realtime: float | None
    estimated: bool  # True until every row's real token usage is known
    per_model: tuple[tuple[str, float | None], ...] = ()  # (model, batch dollars) by stage
    baseline: str | None = None  # the model of the real-time comparison, for a cascade

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
        if self.baseline is not None:
            parts = ", ".join(
                f"{m} {'unknown' if d is None else money(d)}" for m, d in self.per_model
            )
            return (
                f"{label}{money(self.batch)} batch ({parts}) vs {money(self.realtime)} "
                f"all on {self.baseline} in real time"
            )
        return f"{label}{money(self.batch)} batch vs {money(self.realtime)} real time"


def money(dollars: float) -> str:
    """Dollars for people, the one way every view, message and command writes a cost:
    three significant digits below a dollar, trailing zeros dropped down to cents
    ($0.0133, $0.0096, $0.25, $0.0000077), cents from a dollar up ($12.34, $1,234.56),
    never scientific notation. Two decimals alone would show $0.0133 as "$0.01"."""
    sign = "-" if dollars < 0 else ""
    size = float(f"{abs(dollars):.3g}")  # rounded first, so 0.09999 is $0.10, not $0.1000
    if size == 0 or size >= 1:
        return f"{sign}${abs(dollars):,.2f}"
    decimals = 2 - math.floor(math.log10(size))
    text = f"{size:.{decimals}f}".rstrip("0")
    whole, _, cents = text.partition(".")
    return f"{sign}${whole}.{cents.ljust(2, '0')}"


def cost(
    model: str,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int = 0,
    *,
    cache_write_tokens: int = 0,
    estimated: bool,
    provider: str | None = None,
) -> Cost:
    """The cost of this many tokens on ``model`` at ``provider`` (see :func:`rates_for`):
    ``input_tokens`` counts every input token, of which ``cached_tokens`` were read from
    the prompt cache and ``cache_write_tokens`` written to it."""
    r = rates_for(provider, model)
    if r is None:
        return Cost(None, None, estimated)
    fresh = max(0, input_tokens - cached_tokens - cache_write_tokens)
    args = (fresh, cached_tokens, cache_write_tokens, output_tokens)
    return Cost(r.batch_cost(*args), r.realtime_cost(*args), estimated)


# ------------------------------------------------------------------ the genai-prices data


#: A Bedrock model id (``anthropic.claude-...-v1:0``), or a cross-Region inference profile
#: of one (``us.anthropic.claude-...``).
_BEDROCK_ID = re.compile(
    r"^(?:(?:us|eu|apac|au|jp|ca|global)\.)?"
    r"(?:anthropic|amazon|meta|mistral|cohere|ai21|deepseek|qwen|writer|twelvelabs)\.[a-z0-9]"
)


def _provider_id(model: str) -> str | None:
    """The genai-prices provider of a model name, for an unambiguous look-up."""
    name = model.lower()
    if _BEDROCK_ID.match(name):
        return "aws"  # a Bedrock model id: priced from genai-prices' AWS Bedrock table
    if name.startswith("claude"):
        return "anthropic"
    if name.startswith("gemini"):
        return "google"
    if name.startswith(("gpt-", "o1", "o3", "o4", "text-embedding", "chatgpt", "davinci")):
        return "openai"
    return None  # let genai-prices find the provider from the model name


def _snapshot() -> Any:
    """genai-prices' price data: the snapshot bundled with the package (nbbatch never
    starts its updater, so no network call; a user who starts it gets fresh prices)."""
    from genai_prices import data_snapshot

    return data_snapshot.get_snapshot()


@cache
def _from_data_cached(
    model: str, table: str | None, share: float, snapshot_id: int
) -> Rates | None:
    snapshot = _snapshot()
    try:
        _, info = snapshot.find_provider_model(model, None, table, None)
    except LookupError:
        return None
    now = _dt.datetime.now(_dt.UTC)
    standard = info.get_prices(now)
    batch = info.get_prices(now, {"processing": "batch"})
    p_in = _rate(standard, "input_mtok")
    p_out = _rate(standard, "output_mtok")
    if p_in is None:
        return None  # priced in other units (images, seconds): not a token model here
    p_out = p_out or 0.0
    p_read = _rate(standard, "cache_read_mtok")
    p_write = _rate(standard, "cache_write_mtok")
    p_read = p_in if p_read is None else p_read
    p_write = p_in if p_write is None else p_write
    rule = batch.__dict__ == standard.__dict__  # no batch rate in the data
    if rule:
        # The provider's published rule (half at most; see Provider.batch_price_share).
        b_in, b_read, b_write, b_out = (p * share for p in (p_in, p_read, p_write, p_out))
    else:
        b_in = _rate(batch, "input_mtok") or p_in
        b_out = _rate(batch, "output_mtok") or p_out
        read = _rate(batch, "cache_read_mtok")
        write = _rate(batch, "cache_write_mtok")
        # A cache read the batch rate does not restate stays as the data has it (never
        # above a fresh batch token); a write keeps its ratio to the input price.
        b_read = min(b_in, p_read if read is None else read)
        b_write = write if write is not None else (p_write * b_in / p_in if p_in else b_in)
    return Rates(p_in, p_read, p_write, p_out, b_in, b_read, b_write, b_out, _data_source(), rule)


def _from_data(model: str, table: str | None, share: float = BATCH_DISCOUNT) -> Rates | None:
    with _LOCK:
        return _from_data_cached(model, table, share, id(_snapshot()))


def _rate(prices: Any, key: str) -> float | None:
    """A price in dollars per million tokens (a tiered one at its base rate)."""
    value = getattr(prices, key, None)
    if value is None:
        return None
    value = getattr(value, "base", value)
    return float(value)


@cache
def _source_of(snapshot_id: int) -> str:
    from importlib.metadata import version

    snapshot = _snapshot()
    where = "" if not snapshot.from_auto_update else ", updated by its updater"
    return f"genai-prices {version('genai-prices')} (data to {_data_date(snapshot)}{where})"


def _data_source() -> str:
    return _source_of(id(_snapshot()))


def _data_date(snapshot: Any) -> str:
    """The newest price change the data records that is already in force: how fresh it
    is (later dates are announced changes)."""
    today = _dt.date.today()
    newest = _dt.date.min
    for provider in snapshot.providers:
        for model in provider.models:
            prices = model.prices if isinstance(model.prices, list) else []
            constraints = [p.constraint for p in prices]
            constraints += [v.constraint for v in model.price_variants or ()]
            for c in constraints:
                start = getattr(c, "start_date", None)
                if start is not None and newest < start <= today:
                    newest = start
    return newest.isoformat() if newest > _dt.date.min else "unknown"
