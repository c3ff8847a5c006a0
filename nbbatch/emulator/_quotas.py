"""The providers' batch queue quotas: published figures per usage tier, and the counting.

Each provider caps how much work an account may have waiting in its batch queue, and
refuses more in its own way:

- OpenAI counts the input tokens of every unfinished batch, per model. A batch over the
  limit is still created; it fails validation with ``token_limit_exceeded`` and a
  message stating the limit (see :func:`openai_refusal`).
- Anthropic counts the requests of all models together that have not been processed
  yet, and limits the rate of calls to the Message Batches API; a create over either is
  refused at once with ``429 rate_limit_error`` and a ``retry-after`` header.
- Gemini counts the input tokens of every active batch job, per model; a create over
  the limit is refused at once with ``429 RESOURCE_EXHAUSTED``.

A knob set explicitly (``enqueued_token_limit``, ``anthropic_queue_limit``,
``anthropic_create_rate``, ``gemini_enqueued_token_limit``) wins over the tier's
figure; with neither there is no limit (the default). What is queued is computed from
the batches themselves, so it is released as a batch ends (completes, fails, expires
or is cancelled) and stays right across a restart of the background emulator.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from ._faults import TIERS, Knobs

# ``tier=`` takes TIERS, OpenAI's five usage tiers; the other providers publish fewer,
# and a higher name takes their highest published tier.

# OpenAI "Batch queue limit" per model and usage tier (enqueued input tokens), from each
# model's page, e.g. https://developers.openai.com/api/docs/models/gpt-4o-mini (the
# "Rate limits" table); the rate-limits guide says the limit counts "the total number
# of input tokens queued for a given model"
# (https://developers.openai.com/api/docs/guides/rate-limits).
OPENAI_QUEUE_TOKENS: Mapping[str, tuple[int, ...]] = {
    "gpt-4o": (90_000, 1_350_000, 50_000_000, 200_000_000, 5_000_000_000),
    "gpt-4o-mini": (2_000_000, 20_000_000, 40_000_000, 1_000_000_000, 15_000_000_000),
    "gpt-4.1": (90_000, 1_350_000, 50_000_000, 200_000_000, 5_000_000_000),
    "gpt-4.1-mini": (2_000_000, 20_000_000, 40_000_000, 1_000_000_000, 15_000_000_000),
    "gpt-5-mini": (5_000_000, 20_000_000, 40_000_000, 1_000_000_000, 15_000_000_000),
    "gpt-5-nano": (2_000_000, 20_000_000, 40_000_000, 1_000_000_000, 15_000_000_000),
}
# Models without a figure above (ones we did not look up, or names of one's own) get
# gpt-4o-mini's: a stand-in so a tier limits every model, not a published figure.
OPENAI_FALLBACK = "gpt-4o-mini"

# Anthropic Message Batches API limits per usage tier (1-4), shared across all models:
# "Maximum requests per minute (RPM)" to the Batches API and "Maximum batch requests in
# processing queue", from https://docs.anthropic.com/en/api/rate-limits ("Message
# Batches API Rate Limits"). A batch request stays in the queue "when it has yet to be
# successfully processed by the model". (A later version of that page names its tiers
# Start, Build and Scale, with 200,000 / 300,000 / 500,000 queued requests: the same
# figures as tiers 2-4 here.)
ANTHROPIC_BATCH_RPM = (50, 1_000, 2_000, 4_000)
ANTHROPIC_QUEUE_REQUESTS = (100_000, 200_000, 300_000, 500_000)

# Gemini "Batch enqueued tokens" per model and tier (1-3): "the maximum number of tokens
# that can be enqueued for batch processing across all your active batch jobs for a
# given model", from https://ai.google.dev/gemini-api/docs/rate-limits ("Batch API rate
# limits"; there is no free-tier Batch API figure).
GEMINI_QUEUE_TOKENS: Mapping[str, tuple[int, ...]] = {
    "gemini-3-pro-preview": (50_000_000, 500_000_000, 1_000_000_000),
    "gemini-3-flash-preview": (3_000_000, 400_000_000, 500_000_000),
    "gemini-2.5-pro": (5_000_000, 500_000_000, 1_000_000_000),
    "gemini-2.5-flash": (3_000_000, 400_000_000, 1_000_000_000),
    "gemini-2.5-flash-lite": (10_000_000, 500_000_000, 1_000_000_000),
    "gemini-2.0-flash": (10_000_000, 1_000_000_000, 5_000_000_000),
    "gemini-2.0-flash-lite": (10_000_000, 1_000_000_000, 5_000_000_000),
}
# Models the table does not name (embedding models, names of one's own) get
# gemini-2.5-flash's figure: a stand-in, not a published figure.
GEMINI_FALLBACK = "gemini-2.5-flash"

#: The explicit quota knobs (names as in ``start()``) and the tier one.
QUOTA_KNOBS = (
    "tier",
    "enqueued_token_limit",
    "anthropic_queue_limit",
    "anthropic_create_rate",
    "gemini_enqueued_token_limit",
)


def _tier_index(tier: str | None, published: int) -> int | None:
    """0-based row of ``tier`` in a table of ``published`` tiers (clamped), or None."""
    if tier is None:
        return None
    return min(TIERS.index(tier), published - 1)


def _lookup(table: Mapping[str, tuple[int, ...]], model: str, fallback: str) -> tuple[int, ...]:
    """The row for ``model``: its own name or a dated snapshot of it (``gpt-4o-2024-08-06``,
    ``gemini-2.5-flash-preview-09-2025``), the longest name that fits, else the fallback."""
    name = model.removeprefix("models/")
    best = ""
    for key in table:
        fits = name == key or re.match(re.escape(key) + r"-(\d|preview)", name)
        if fits and len(key) > len(best):
            best = key
    return table[best or fallback]


def openai_limit(knobs: Knobs, model: str | None) -> int | None:
    """Enqueued input tokens allowed for ``model`` on OpenAI (None: no limit)."""
    if knobs.enqueued_token_limit is not None:
        return knobs.enqueued_token_limit
    row = _lookup(OPENAI_QUEUE_TOKENS, model or "", OPENAI_FALLBACK)
    index = _tier_index(knobs.tier, len(row))
    return None if index is None else row[index]


def anthropic_queue_limit(knobs: Knobs) -> int | None:
    """Batch requests allowed in Anthropic's processing queue, all models together."""
    if knobs.anthropic_queue_limit is not None:
        return knobs.anthropic_queue_limit
    index = _tier_index(knobs.tier, len(ANTHROPIC_QUEUE_REQUESTS))
    return None if index is None else ANTHROPIC_QUEUE_REQUESTS[index]


def anthropic_create_rate(knobs: Knobs) -> int | None:
    """Batch creates allowed per minute on Anthropic (None: no limit)."""
    if knobs.anthropic_create_rate is not None:
        return knobs.anthropic_create_rate
    index = _tier_index(knobs.tier, len(ANTHROPIC_BATCH_RPM))
    return None if index is None else ANTHROPIC_BATCH_RPM[index]


def gemini_limit(knobs: Knobs, model: str) -> int | None:
    """Enqueued input tokens allowed for ``model`` in Gemini Batch Mode (None: no limit)."""
    if knobs.gemini_enqueued_token_limit is not None:
        return knobs.gemini_enqueued_token_limit
    row = _lookup(GEMINI_QUEUE_TOKENS, model, GEMINI_FALLBACK)
    index = _tier_index(knobs.tier, len(row))
    return None if index is None else row[index]


def openai_refusal(model: str | None, limit: int) -> str:
    """The validation error message of a batch over OpenAI's enqueued-token limit.

    Worded as the API words it, e.g. in openai/openai-python#2084: "Enqueued token limit
    reached for gpt-4o-mini in organization org-... Limit: 2,000,000 enqueued tokens.
    Please try again once some in_progress batches have been completed."
    """
    return (
        f"Enqueued token limit reached for {model} in organization org-emulator. "
        f"Limit: {limit:,} enqueued tokens. Please try again once "
        "some in_progress batches have been completed."
    )


def anthropic_queue_refusal(limit: int, queued: int, requested: int) -> str:
    """The message of a create refused for Anthropic's processing-queue limit.

    Anthropic documents the status, error type and ``retry-after`` header of a rate
    limit refusal, and that the 429 describes "which rate limit was exceeded"
    (https://docs.anthropic.com/en/api/rate-limits, /en/api/errors), but not this
    limit's wording nor whether it states the figure (looked up in Anthropic's docs,
    its SDK's issues and public code: nothing published), so the text is our own: it
    names the processing queue, as the client looks for, and states the figures.
    """
    return (
        f"This request would exceed your organization's limit of {limit:,} batch requests "
        f"in the Message Batches processing queue ({queued:,} queued, {requested:,} in "
        "this batch). Please try again once some batches have been processed."
    )


def anthropic_rate_refusal(rate: int) -> str:
    """The message of a create refused for the Message Batches API request rate (our
    wording, as for :func:`anthropic_queue_refusal`)."""
    return (
        f"This request would exceed your organization's rate limit of {rate:,} requests "
        "per minute to the Message Batches API. Please retry after the time given in the "
        "retry-after header."
    )


#: Gemini's text for a refused batch create, as users report it (langchain4j/langchain4j
#: #3942, googleapis/js-genai#1264, googleapis/python-genai#1901: 429, RESOURCE_EXHAUSTED).
GEMINI_REFUSAL = (
    "You exceeded your current quota, please check your plan and billing details. For "
    "more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
)
#: The google.rpc.Help detail that comes with it.
GEMINI_REFUSAL_DETAILS = [
    {
        "@type": "type.googleapis.com/google.rpc.Help",
        "links": [
            {
                "description": "Learn more about Gemini API quotas",
                "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
            }
        ],
    }
]


class CreateRate:
    """A token bucket of batch creates: Anthropic documents its limits as one ("your
    capacity is continuously replenished up to your maximum limit"), so a full minute's
    worth may come at once and then one more every ``60 / rate`` seconds."""

    def __init__(self) -> None:
        self._tokens: float | None = None
        self._at = 0.0

    def take(self, rate: int, t: float) -> float:
        """Take one create at clock time ``t``: 0.0 if allowed, else the seconds to wait."""
        per_second = rate / 60.0
        if self._tokens is None:
            self._tokens = float(rate)
        else:
            self._tokens = min(float(rate), self._tokens + (t - self._at) * per_second)
        self._at = t
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / per_second


def retry_after(seconds: float) -> str:
    """A ``retry-after`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
