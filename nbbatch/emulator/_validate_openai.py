"""Per-request checks of OpenAI request bodies, as the service makes them.

A batch line the real service would refuse must fail here too, with the service's error
shape (``{"error": {message, type, param, code}}`` under a 400 or 404 status), or a client
bug passes on the emulator and fails in production. The accepted fields are read from the
official SDK's own request types (so they follow the installed SDK); the ranges and the
messages are the API reference's. Checks are plain dictionary look-ups, so the common
body costs a few microseconds: the emulator validates million-line batches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from openai.types import embedding_create_params
from openai.types.chat import completion_create_params
from openai.types.responses import response_create_params

from . import _models, _rules
from ._wire import text_of


@dataclass(frozen=True)
class Problem:
    """Why the service refuses one request: its HTTP status and error fields."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    type: str = "invalid_request_error"


def _keys(params_type: Any) -> frozenset[str]:
    return frozenset(params_type.__required_keys__ | params_type.__optional_keys__)


# ``stream`` lives on the SDK's streaming/non-streaming subclasses, not the base type.
FIELDS: dict[str, frozenset[str]] = {
    "/v1/chat/completions": _keys(completion_create_params.CompletionCreateParamsBase) | {"stream"},
    "/v1/responses": _keys(response_create_params.ResponseCreateParamsBase) | {"stream"},
    "/v1/embeddings": _keys(embedding_create_params.EmbeddingCreateParams),
}
CHAT_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
FORMAT_TYPES = ("text", "json_object", "json_schema")
SCHEMA_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
#: The Responses API's smallest ``max_output_tokens``.
MIN_OUTPUT_TOKENS = 16

_JSON_TYPES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a decimal",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def _kind(value: Any) -> str:
    return _JSON_TYPES.get(type(value), "an unknown type")


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _number(
    body: Mapping[str, Any],
    key: str,
    low: float | None,
    high: float | None,
    *,
    integer: bool = False,
    param: str | None = None,
) -> Problem | None:
    """The service's check of one numeric field (absent or null: fine)."""
    value = body.get(key)
    if value is None:
        return None
    param = param or key
    word = "integer" if integer else "decimal"
    ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type:
        expected = "an integer" if integer else "a decimal"
        return Problem(
            400,
            f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.",
            param,
            "invalid_type",
        )
    if low is not None and value < low:
        return Problem(
            400,
            f"Invalid '{param}': {word} below minimum value. Expected a value >= {_show(low)}, "
            f"but got {_show(value)} instead.",
            param,
            f"{word}_below_min_value",
        )
    if high is not None and value > high:
        return Problem(
            400,
            f"Invalid '{param}': {word} above maximum value. Expected a value <= {_show(high)}, "
            f"but got {_show(value)} instead.",
            param,
            f"{word}_above_max_value",
        )
    return None


def _missing(param: str) -> Problem:
    return Problem(
        400, f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    )


def _invalid_value(value: Any, allowed: Iterable[str], param: str) -> Problem:
    names = [f"'{a}'" for a in allowed]
    listed = ", ".join(names[:-1]) + f", and {names[-1]}" if len(names) > 2 else " and ".join(names)
    return Problem(
        400, f"Invalid value: '{value}'. Supported values are: {listed}.", param, "invalid_value"
    )


def _wrong_type(value: Any, expected: str, param: str) -> Problem:
    return Problem(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.",
        param,
        "invalid_type",
    )


def model_not_found(model: str) -> Problem:
    """The 404 an unknown model name gets."""
    return Problem(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        None,
        "model_not_found",
    )


def problem(endpoint: str, body: Any, extra_models: Iterable[str] = ()) -> Problem | None:
    """Why the service would refuse ``body`` sent to ``endpoint``, or None if it is fine.

    ``extra_models`` are names served besides the real ones (``start(models=...)``).
    """
    if not isinstance(body, dict):
        return Problem(400, "The request body must be a JSON object.")
    fields = FIELDS.get(endpoint)
    if fields is not None:
        for key in body:
            if key not in fields:
                return Problem(400, f"Unrecognized request argument supplied: {key}")
    model = body.get("model")
    if model is None:
        return Problem(400, "you must provide a model parameter", "model")
    if not isinstance(model, str):
        return _wrong_type(model, "a string", "model")
    if _models.find("openai", model, extra_models) is None:
        return model_not_found(model)
    if body.get("stream"):
        return Problem(400, "The nbbatch emulator does not stream responses.", "stream")
    if endpoint == "/v1/chat/completions":
        found = _chat(body)
    elif endpoint == "/v1/responses":
        found = _responses(body)
    elif endpoint == "/v1/embeddings":
        return _embeddings(body, model)
    else:
        return None
    if found is not None:
        return found
    rule = _rules.openai_problem(endpoint, body)
    return None if rule is None else Problem(400, rule[0], rule[1], rule[2])


def _sampling(body: Mapping[str, Any]) -> Problem | None:
    return (
        _number(body, "temperature", 0, 2)
        or _number(body, "top_p", 0, 1)
        or _number(body, "top_logprobs", 0, 20, integer=True)
    )


def _chat(body: Mapping[str, Any]) -> Problem | None:
    messages = body.get("messages")
    return (
        _messages(messages)
        or _sampling(body)
        or _number(body, "presence_penalty", -2, 2)
        or _number(body, "frequency_penalty", -2, 2)
        or _number(body, "n", 1, 128, integer=True)
        or _number(body, "max_tokens", 1, None, integer=True)
        or _number(body, "max_completion_tokens", 1, None, integer=True)
        or _number(body, "seed", None, None, integer=True)
        or _stop(body.get("stop"))
        or _response_format(body.get("response_format"), messages)
    )


def _messages(messages: Any) -> Problem | None:
    """Chat's ``messages``: a non-empty array of objects, each with a known role and a
    content (an assistant's may be left out)."""
    if messages is None:
        return _missing("messages")
    if not isinstance(messages, list):
        return _wrong_type(messages, "an array", "messages")
    if not messages:
        return Problem(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "messages",
            "empty_array",
        )
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return _wrong_type(m, "an object", f"messages[{i}]")
        role = m.get("role")
        if role is None:
            return _missing(f"messages[{i}].role")
        if role not in CHAT_ROLES:
            return _invalid_value(role, CHAT_ROLES, f"messages[{i}].role")
        content = m.get("content")
        if content is None and role != "assistant":
            return _missing(f"messages[{i}].content")
        if content is not None and not isinstance(content, str | list):
            return _wrong_type(content, "one of a string or array of objects", f"messages[{i}]")
    return None


def _stop(stop: Any) -> Problem | None:
    """Chat's ``stop``: a string or at most four of them."""
    if isinstance(stop, list) and len(stop) > 4:
        return Problem(
            400,
            "Invalid 'stop': array too long. Expected an array with maximum length 4, "
            f"but got an array with length {len(stop)} instead.",
            "stop",
            "array_above_max_length",
        )
    if stop is not None and not isinstance(stop, str | list):
        return _wrong_type(stop, "one of a string or array of strings", "stop")
    return None


def _format_type(fmt: Any, param: str) -> Problem | None:
    """What both APIs check of a structured-output format (chat's ``response_format``,
    the Responses API's ``text.format``): an object whose ``type`` is a known one."""
    if not isinstance(fmt, dict):
        return _wrong_type(fmt, "an object", param)
    kind = fmt.get("type")
    if kind is None:
        return _missing(f"{param}.type")
    if kind not in FORMAT_TYPES:
        return _invalid_value(kind, FORMAT_TYPES, f"{param}.type")
    return None


def _response_format(fmt: Any, messages: Any) -> Problem | None:
    """Chat's ``response_format``: JSON mode wants the word "json" in the messages, a
    JSON schema the checks of :func:`_json_schema` (``messages`` passed theirs)."""
    if fmt is None:
        return None
    problem = _format_type(fmt, "response_format")
    if problem:
        return problem
    kind = fmt["type"]
    if kind == "json_object" and not _mentions_json(m.get("content") for m in messages):
        return Problem(
            400,
            "'messages' must contain the word 'json' in some form, to use 'response_format' "
            "of type 'json_object'.",
            "messages",
        )
    if kind != "json_schema":
        return None
    inner = fmt.get("json_schema")
    if inner is None:
        return _missing("response_format.json_schema")
    if not isinstance(inner, dict):
        return _wrong_type(inner, "an object", "response_format.json_schema")
    return _json_schema(inner, "response_format.json_schema", "response_format")


def _json_schema(fmt: Mapping[str, Any], param: str, label: str) -> Problem | None:
    """The checks of a ``json_schema`` format: a valid name, an object schema, and the
    rules strict mode adds (every object closed, every property required)."""
    name = fmt.get("name")
    if name is None:
        return _missing(f"{param}.name")
    if not isinstance(name, str) or not SCHEMA_NAME.match(name):
        return Problem(
            400,
            f"Invalid '{param}.name': string does not match pattern. Expected a string that "
            "matches the pattern '^[a-zA-Z0-9_-]+$'.",
            f"{param}.name",
            "invalid_value",
        )
    schema = fmt.get("schema")
    if schema is not None and not isinstance(schema, dict):
        return _wrong_type(schema, "an object", f"{param}.schema")
    if fmt.get("strict") is True and isinstance(schema, dict):
        why = _strict_problem(schema, ())
        if why is not None:
            return Problem(
                400,
                f"Invalid schema for {label} '{name}': {why}",
                f"{param}.schema" if param.startswith("response_format") else param,
                "invalid_json_schema",
            )
    return None


def _strict_problem(node: Any, path: tuple[str, ...]) -> str | None:
    """What strict structured outputs refuse in ``node`` (None: nothing)."""
    if isinstance(node, list):
        for item in node:
            why = _strict_problem(item, path)
            if why:
                return why
        return None
    if not isinstance(node, dict):
        return None
    props = node.get("properties")
    if isinstance(props, dict) and (node.get("type") == "object" or "type" not in node):
        context = f"context=({', '.join(repr(p) for p in path)})"
        if node.get("additionalProperties") is not False:
            return (
                f"In {context}, 'additionalProperties' is required to be supplied and to be false."
            )
        missing = [p for p in props if p not in (node.get("required") or [])]
        if missing:
            return (
                f"In {context}, 'required' is required to be supplied and to be an array "
                f"including every key in properties. Missing '{missing[0]}'."
            )
    for key, value in node.items():
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            for name, sub in value.items():
                why = _strict_problem(sub, (*path, key, name))
                if why:
                    return why
        elif key in ("items", "anyOf", "allOf", "oneOf", "prefixItems"):
            why = _strict_problem(value, (*path, key))
            if why:
                return why
    return None


def _mentions_json(contents: Iterable[Any]) -> bool:
    for content in contents:
        if isinstance(content, str) and "json" in content.lower():
            return True
        if isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str) and "json" in text.lower():
                    return True
    return False


def _responses(body: Mapping[str, Any]) -> Problem | None:
    if body.get("input") is None:
        return _missing("input")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str | list):
        return _wrong_type(instructions, "a string", "instructions")
    problem = _sampling(body) or _number(
        body, "max_output_tokens", MIN_OUTPUT_TOKENS, None, integer=True
    )
    if problem:
        return problem
    text = body.get("text")
    if text is None:
        return None
    if not isinstance(text, dict):
        return _wrong_type(text, "an object", "text")
    fmt = text.get("format")
    if fmt is None:
        return None
    problem = _format_type(fmt, "text.format")
    if problem:
        return problem
    kind = fmt["type"]
    if kind == "json_object":
        raw = body.get("input")
        items = raw if isinstance(raw, list) else []
        texts = (
            [raw]
            if isinstance(raw, str)
            else [i.get("content") for i in items if isinstance(i, dict)]
        )
        if not _mentions_json([*texts, instructions]):
            return Problem(
                400,
                "Response input messages must contain the word 'json' in some form to use "
                "'text.format' of type 'json_object'.",
                "input",
            )
    if kind != "json_schema":
        return None
    if fmt.get("schema") is None:
        return _missing("text.format.schema")
    return _json_schema(fmt, "text.format", "text.format")


def _embeddings(body: Mapping[str, Any], model: str) -> Problem | None:
    raw = body.get("input")
    if raw is None:
        return _missing("input")
    if raw == "" or raw == [] or not isinstance(raw, str | list):
        return Problem(
            400,
            "'$.input' is invalid. Please check the API reference: "
            "https://platform.openai.com/docs/api-reference.",
            "input",
        )
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        return _invalid_value(fmt, ("float", "base64"), "encoding_format")
    problem = _number(body, "dimensions", 1, None, integer=True)
    if problem or body.get("dimensions") is None:
        return problem
    most = _models.embedding_dimensions(model)
    if body["dimensions"] > most:
        return Problem(
            400,
            f"Invalid 'dimensions': integer above maximum value. Expected a value <= {most}, "
            f"but got {body['dimensions']} instead.",
            "dimensions",
            "integer_above_max_value",
        )
    return None


# ============================================================ reading a body


@dataclass(frozen=True)
class Inspection:
    """What the emulator needs to know about one request body before running it."""

    last_user: str
    prompt_chars: int
    schema: Mapping[str, Any] | None
    json_mode: bool
    embedding_inputs: list[str] = field(default_factory=list)
    system: str | None = None  # system/developer messages or instructions, as text
    prompt_text: str = ""  # every message in order: what a prefix cache matches on


def inspect(endpoint: str, body: Mapping[str, Any]) -> Inspection:
    """Extract the prompt text and the requested output format from a request body."""
    if endpoint == "/v1/embeddings":
        raw = body.get("input")
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
            inputs = [" ".join(map(str, raw))]  # one pre-tokenised input
        elif isinstance(raw, list):
            inputs = [x if isinstance(x, str) else " ".join(map(str, x)) for x in raw]
        else:
            inputs = []
        return Inspection(inputs[-1] if inputs else "", sum(map(len, inputs)), None, False, inputs)
    if endpoint == "/v1/responses":
        raw = body.get("input")
        texts: list[tuple[str, str]] = []
        if isinstance(raw, str):
            texts.append(("user", raw))
        elif isinstance(raw, list):
            for item in raw:
                if isinstance(item, dict) and "role" in item:
                    texts.append((str(item["role"]), text_of(item.get("content"))))
        instructions = body.get("instructions")
        chars = len(instructions) if isinstance(instructions, str) else 0
        if isinstance(instructions, str):
            texts.insert(0, ("instructions", instructions))
            chars = 0  # counted with the messages below
        fmt = (body.get("text") or {}).get("format") or {}
        schema = fmt.get("schema") if fmt.get("type") == "json_schema" else None
        json_mode = fmt.get("type") == "json_object"
    else:
        texts = [
            (str(m.get("role")), text_of(m.get("content")))
            for m in body.get("messages") or []
            if isinstance(m, dict)
        ]
        chars = 0
        fmt = body.get("response_format") or {}
        schema = None
        if fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema") or {}
        json_mode = fmt.get("type") == "json_object"
    users = [t for role, t in texts if role == "user"]
    chars += sum(len(t) for _, t in texts)
    system = [t for role, t in texts if role in ("system", "developer", "instructions")]
    return Inspection(
        users[-1] if users else "",
        chars,
        schema,
        json_mode,
        system="\n".join(system) if system else None,
        prompt_text="".join(f"\x00{role}\x01{t}" for role, t in texts),
    )
