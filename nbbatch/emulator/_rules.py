"""Per-model rules the services enforce beyond their request schemas.

The request schemas say which fields exist; some models still refuse some of them, or
some values. A client that sends ``max_tokens`` to ``o3`` passes a schema check and fails
in production, so the emulator refuses it too, with the service's error. Models are
keyed by genai-prices' id of their family (:func:`._models.family`), so an alias and its
dated snapshots share a rule. Names added with ``models=`` have no rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import _models

# OpenAI reasoning models (the o-series and the GPT-5 family) take
# ``max_completion_tokens``; ``max_tokens`` is refused with ``unsupported_parameter``.
# The error, as the service returns it, is quoted in reports against it such as
# github.com/griptape-ai/ComfyUI-Griptape/issues/312 (gpt-5) and
# github.com/teilomillet/gollm/issues/33 (o1, o3-mini); the reasoning guide
# (platform.openai.com/docs/guides/reasoning) documents max_completion_tokens.
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")

# The GPT-5 models of August 2025 (gpt-5, gpt-5-mini, gpt-5-nano) refuse any temperature
# but the default 1 with ``unsupported_value`` (the error quoted in
# github.com/diffbot/code-gpt-docs/issues/445 and tmc/langchaingo/issues/1355). The later
# gpt-5.x models accept it while reasoning is off (``reasoning_effort`` "none", their
# default), and refuse it with reasoning on (github.com/johny-b/llmcomp/issues/69 for
# gpt-5.4); the message litellm gives for that rule is in HKUDS/nanobot/issues/370.
# The o-series refuse it too: o3 with the same ``unsupported_value`` error, o3-mini with
# "Unsupported parameter: 'temperature' is not supported with this model."
# (``unsupported_parameter``); both errors are quoted side by side in
# github.com/BeehiveInnovations/pal-mcp-server/issues/78, the second also in
# github.com/appatalks/eva-agent/issues/83. o1 and o4-mini are given o3's rule and
# o1-mini o3-mini's by family: no source found quotes their own errors. Only values
# other than 1 are refused: whether the service takes an explicit 1 from o3-mini is not
# published either.
_FIXED_TEMPERATURE = (
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "gpt-5-pro",
    "o1",
    "o3",
    "o3-pro",
    "o4-mini",
)
_NO_TEMPERATURE = ("o1-mini", "o3-mini")

# Most output tokens one request may ask for, by genai-prices' family id.
# OpenAI: each model's page, platform.openai.com/docs/models/<id> ("Max output tokens");
# gpt-4o-2024-05-13 is the snapshot whose page gives 4,096. gpt-3.5-turbo: 4,096 (the
# error quoted in github.com/ChatGPTNextWeb/NextChat/issues/3195).
OPENAI_OUTPUT_LIMITS: dict[str, int] = {
    "gpt-3.5-turbo": 4_096,
    "gpt-4o-2024-05-13": 4_096,
    "gpt-4o": 16_384,
    "gpt-4o-mini": 16_384,
    "gpt-4.1": 32_768,
    "gpt-4.1-mini": 32_768,
    "gpt-4.1-nano": 32_768,
    "o1": 100_000,
    "o3": 100_000,
    "o3-mini": 100_000,
    "o4-mini": 100_000,
    "gpt-5": 128_000,
    "gpt-5-mini": 128_000,
    "gpt-5-nano": 128_000,
}
# Claude: the "Max output" row of platform.claude.com/docs/en/about-claude/models/overview
# and each model's page (platform.claude.com/docs/en/models/<model>/overview, e.g. Opus
# 4.6's 128K); Sonnet 4's 64,000 is also the figure in the service's own error quoted in
# github.com/OpenHands/OpenHands/issues/11090, and Sonnet 4.6's 128,000 is the correction
# in the Effect-TS @effect/ai-anthropic 4.0.0-beta.106 release notes. Claude 3.7 Sonnet
# is left out: a beta header raises its limit, which the emulator does not model.
ANTHROPIC_OUTPUT_LIMITS: dict[str, int] = {
    "claude-3-haiku": 4_096,
    "claude-3-5-haiku-latest": 8_192,
    "claude-sonnet-4-0": 64_000,
    "claude-opus-4-0": 32_000,
    "claude-opus-4-1": 32_000,
    "claude-sonnet-4-5": 64_000,
    "claude-haiku-4-5": 64_000,
    "claude-opus-4-5": 64_000,
    "claude-opus-4-6": 128_000,
    "claude-sonnet-4-6": 128_000,
}


def openai_reasoning(model: str) -> bool:
    """Whether ``model`` is an OpenAI reasoning model (takes ``max_completion_tokens``).

    The ``*-chat`` GPT-5 variants are the non-reasoning models behind ChatGPT."""
    fam = _models.family("openai", model)
    return fam is not None and fam.startswith(_REASONING_PREFIXES) and "-chat" not in model


def openai_problem(endpoint: str, body: Mapping[str, Any]) -> tuple[str, str, str | None] | None:
    """(message, param, code) of the 400 the service gives ``body`` for its model, or None.

    Checked after the schema checks, so values are of the right types here."""
    model = str(body.get("model"))
    fam = _models.family("openai", model)
    if fam is None:
        return None
    reasoning = openai_reasoning(model)
    if endpoint == "/v1/chat/completions" and reasoning and body.get("max_tokens") is not None:
        return (
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            "max_tokens",
            "unsupported_parameter",
        )
    temperature = body.get("temperature")
    if reasoning and temperature is not None and temperature != 1:
        if endpoint == "/v1/responses":
            reasoning_cfg = body.get("reasoning")
            effort = reasoning_cfg.get("effort") if isinstance(reasoning_cfg, dict) else None
        else:
            effort = body.get("reasoning_effort")
        if fam in _NO_TEMPERATURE:
            return (
                "Unsupported parameter: 'temperature' is not supported with this model.",
                "temperature",
                "unsupported_parameter",
            )
        fixed = fam in _FIXED_TEMPERATURE and "-chat" not in model
        if fixed or (fam.startswith("gpt-5.") and effort not in (None, "none")):
            return (
                f"Unsupported value: 'temperature' does not support {temperature!r} with this "
                "model. Only the default (1) value is supported.",
                "temperature",
                "unsupported_value",
            )
    # The *-chat GPT-5 variants share gpt-5's genai-prices entry but not its limit.
    limit = None if "-chat" in model else OPENAI_OUTPUT_LIMITS.get(fam)
    if limit is not None and endpoint == "/v1/chat/completions":
        for key in ("max_completion_tokens", "max_tokens"):
            asked = body.get(key)
            if isinstance(asked, int) and asked > limit:
                # No error code: the service sends "code": null for this one.
                return (
                    f"{key} is too large: {asked}. This model supports at most {limit} "
                    f"completion tokens, whereas you provided {asked}.",
                    key,
                    None,
                )
    # The Responses API's error for a max_output_tokens over the limit is not published
    # (nor quoted anywhere found), so that endpoint is not checked against the limits.
    return None


def anthropic_problem(params: Mapping[str, Any]) -> str | None:
    """The message of the 400 ``invalid_request_error`` the Messages API gives ``params``
    for its model, or None."""
    model = str(params.get("model"))
    fam = _models.family("anthropic", model)
    limit = ANTHROPIC_OUTPUT_LIMITS.get(fam) if fam else None
    asked = params.get("max_tokens")
    if limit is not None and isinstance(asked, int) and asked > limit:
        return (
            f"max_tokens: {asked} > {limit}, which is the maximum allowed number of output "
            f"tokens for {model}"
        )
    return None
