"""Per-request checks of Anthropic Messages parameters, as the service makes them.

The service validates every request of a batch on its own: one that it refuses ends
``errored`` with ``{"type": "invalid_request_error", "message": "<field>: <reason>"}``
(an unknown model: ``not_found_error``, ``"model: <name>"``), the others run. The
accepted fields are read from the official SDK's ``MessageCreateParams`` type, plus the
sampling fields the API still takes; ranges and messages follow the API reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from anthropic.types import message_count_tokens_params, message_create_params

from . import _models, _rules


@dataclass(frozen=True)
class Problem:
    """Why the service refuses one request: its error type and message."""

    message: str
    type: str = "invalid_request_error"
    status: int = 400


def _keys(params_type: Any) -> frozenset[str]:
    return frozenset(params_type.__required_keys__ | params_type.__optional_keys__)


#: Sampling fields the Messages API takes though the SDK's type no longer declares them.
SAMPLING = frozenset({"temperature", "top_p", "top_k"})
CREATE_FIELDS = _keys(message_create_params.MessageCreateParamsBase) | SAMPLING | {"stream"}
COUNT_FIELDS = _keys(message_count_tokens_params.MessageCountTokensParams)
#: Models on which ``temperature`` and ``top_p`` exclude each other.
ONE_SAMPLER = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-5", "claude-opus-4-1")
#: JSON Schema keywords structured outputs refuse (the SDK's ``transform_schema`` moves
#: them into the description for that reason).
UNSUPPORTED_KEYWORDS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "maxItems",
)


def _range(params: Mapping[str, Any], key: str, low: float, high: float | None) -> str | None:
    value = params.get(key)
    if value is None:
        return None
    integer = key == "top_k"
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        return f"{key}: Input should be a valid {'integer' if integer else 'number'}"
    if value < low:
        return f"{key}: Input should be greater than or equal to {low:g}"
    if high is not None and value > high:
        return f"{key}: Input should be less than or equal to {high:g}"
    return None


def problem(
    params: Any, extra_models: Iterable[str] = (), *, count_tokens: bool = False
) -> Problem | None:
    """Why the Messages API would refuse ``params``, or None when they are fine.

    ``count_tokens``: check them as ``/v1/messages/count_tokens`` does (no ``max_tokens``).
    """
    if not isinstance(params, dict):
        return Problem("params: Input should be a valid dictionary")
    fields = COUNT_FIELDS if count_tokens else CREATE_FIELDS
    for key in params:
        if key not in fields:
            return Problem(f"{key}: Extra inputs are not permitted")
    for key in ("model", "messages") if count_tokens else ("model", "max_tokens", "messages"):
        if key not in params:
            return Problem(f"{key}: Field required")
    model = params["model"]
    if not isinstance(model, str):
        return Problem("model: Input should be a valid string")
    if _models.find("anthropic", model, extra_models) is None:
        return Problem(f"model: {model}", "not_found_error", 404)
    why = (
        (None if count_tokens else _max_tokens(params))
        or _messages(params["messages"])
        or _system(params.get("system"))
        or _sampling(params, model)
    )
    if why:
        return Problem(why)
    if params.get("stream"):
        return Problem("stream: the nbbatch emulator does not stream responses")
    stop = params.get("stop_sequences")
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)
    ):
        return Problem("stop_sequences: Input should be a valid list of strings")
    why = _thinking(params.get("thinking"), None if count_tokens else params["max_tokens"])
    return Problem(why) if why else _output_config(params.get("output_config"))


def _max_tokens(params: Mapping[str, Any]) -> str | None:
    """A create request's ``max_tokens``: an integer from 1, within the model's limits."""
    max_tokens = params["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        return "max_tokens: Input should be a valid integer"
    if max_tokens < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    return _rules.anthropic_problem(params) or None


def _system(system: Any) -> str | None:
    if system is not None and not isinstance(system, str | list):
        return "system: Input should be a valid string"
    return None


def _sampling(params: Mapping[str, Any], model: str) -> str | None:
    """The sampling parameters' ranges; some models take only one of temperature and
    top_p."""
    why = (
        _range(params, "temperature", 0, 1)
        or _range(params, "top_p", 0, 1)
        or _range(params, "top_k", 0, None)
    )
    if why:
        return why
    if (
        params.get("temperature") is not None
        and params.get("top_p") is not None
        and model.startswith(ONE_SAMPLER)
    ):
        return (
            "`temperature` and `top_p` cannot both be specified for this model. "
            "Please use only one."
        )
    return None


def _messages(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    if not messages:
        return "messages: at least one message is required"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"messages.{i}: Input should be a valid dictionary"
        role = m.get("role")
        if role == "system":
            return (
                'messages: Unexpected role "system". The Messages API accepts a top-level '
                '`system` parameter, not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if "content" not in m:
            return f"messages.{i}.content: Field required"
        content = m["content"]
        if not isinstance(content, str | list):
            return f"messages.{i}.content: Input should be a valid list"
        if content == [] or (content == "" and (i < len(messages) - 1 or role == "user")):
            return (
                f"messages.{i}: all messages must have non-empty content except for the "
                "optional final assistant message"
            )
    return None


def _thinking(thinking: Any, max_tokens: int | None) -> str | None:
    if thinking is None:
        return None
    if not isinstance(thinking, dict) or thinking.get("type") not in (
        "enabled",
        "disabled",
        "adaptive",
    ):
        return "thinking: Input tag should be 'enabled', 'disabled' or 'adaptive'"
    if thinking["type"] != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool):
        return "thinking.enabled.budget_tokens: Field required"
    if budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if max_tokens is not None and max_tokens <= budget:
        return "`max_tokens` must be greater than `thinking.budget_tokens`."
    return None


def _output_config(config: Any) -> Problem | None:
    if config is None:
        return None
    if not isinstance(config, dict):
        return Problem("output_config: Input should be a valid dictionary")
    fmt = config.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return Problem("output_config.format.type: Input should be 'json_schema'")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        return Problem("output_config.format.schema: Field required")
    why = _schema_problem(schema)
    return Problem(f"output_config.format.schema: {why}") if why else None


def _schema_problem(node: Any) -> str | None:
    """The first part of a structured-output schema the service does not support."""
    if isinstance(node, list):
        return next((w for w in map(_schema_problem, node) if w), None)
    if not isinstance(node, dict):
        return None
    kind = node.get("type")
    for key in UNSUPPORTED_KEYWORDS:
        if key in node:
            return f"For '{kind}' type, property '{key}' is not supported"
    if node.get("minItems", 0) not in (0, 1):
        return "For 'array' type, 'minItems' values other than 0 or 1 are not supported"
    if (kind == "object" or "properties" in node) and node.get("additionalProperties") is not False:
        return "For 'object' type, 'additionalProperties' must be explicitly set to false"
    for key, value in node.items():
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            why = next((w for w in map(_schema_problem, value.values()) if w), None)
        elif key in ("items", "anyOf", "allOf", "oneOf", "prefixItems"):
            why = _schema_problem(value)
        else:
            continue
        if why:
            return why
    return None


# "{minimum: 0, maximum: 1}" at the end of a description: how the SDK's transform_schema
# (which nbbatch and messages.parse use) writes the keywords it moved there.
_MOVED = re.compile(r"\{(\w+: [^{}]*)\}\s*$")
_BOUND_KEYS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
_SIZE_KEYS = {"minLength", "maxLength", "minItems", "maxItems"}


def honoured_schema(node: Any) -> Any:
    """``node`` with the bounds that a description states put back as keywords.

    Claude reads a field's description and keeps to the bounds it states, so a reply from
    the real service to ``score`` described ``{minimum: 0, maximum: 1}`` lies in [0, 1];
    the emulator's replies must too. Only numbers and sizes the SDK moved are restored;
    anything else in the description stays prose.
    """
    if isinstance(node, list):
        return [honoured_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: honoured_schema(v) for k, v in node.items()}
    description = node.get("description")
    match = _MOVED.search(description) if isinstance(description, str) else None
    if match:
        for pair in match.group(1).split(", "):
            key, _, raw = pair.partition(": ")
            if key in _BOUND_KEYS | _SIZE_KEYS and key not in out:
                try:
                    value = float(raw)
                except ValueError:
                    continue
                out[key] = int(value) if key in _SIZE_KEYS or value.is_integer() else value
    return out
