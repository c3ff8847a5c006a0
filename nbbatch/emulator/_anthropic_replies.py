"""Answers of Anthropic's Messages endpoint, as the service gives them.

One request's ``params`` in, its message (or error) out, through the built-in responder
or the user's own: used by the real-time route and by a batch as it runs (see
:mod:`._anthropic`). The checks the params must pass are :mod:`._validate_anthropic`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from . import _responder, _validate_anthropic
from ._faults import Fate
from ._wire import text_of


def params_problem(params: Any, models: Iterable[str] = ()) -> _validate_anthropic.Problem | None:
    """Why ``params`` would be refused by the Messages API, or None when they are fine
    (``models``: names served besides the real ones)."""
    return _validate_anthropic.problem(params, models)


def last_user(params: Mapping[str, Any]) -> str:
    users = [
        m for m in params.get("messages") or [] if isinstance(m, dict) and m.get("role") == "user"
    ]
    return text_of(users[-1].get("content")) if users else ""


def structured(params: Mapping[str, Any]) -> tuple[Mapping[str, Any] | None, str | None]:
    """The schema the reply must follow and, for a forced tool call, the tool's name."""
    choice = params.get("tool_choice") or {}
    tools = [t for t in params.get("tools") or [] if isinstance(t, dict) and "input_schema" in t]
    if isinstance(choice, dict) and choice.get("type") in ("tool", "any") and tools:
        wanted = choice.get("name")
        tool = next((t for t in tools if t.get("name") == wanted), None) if wanted else tools[0]
        if tool is not None:
            return _validate_anthropic.honoured_schema(tool["input_schema"]), str(tool["name"])
    fmt = (params.get("output_config") or {}).get("format") or {}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return _validate_anthropic.honoured_schema(fmt.get("schema") or {}), None
    return None, None


def _cached_prefix(system: Any) -> str:
    """System text up to the last block marked with ``cache_control`` ("" if none)."""
    if not isinstance(system, list):
        return ""
    last = max(
        (i for i, b in enumerate(system) if isinstance(b, dict) and b.get("cache_control")),
        default=-1,
    )
    return text_of(system[: last + 1]) if last >= 0 else ""


def params_chars(params: Mapping[str, Any]) -> int:
    """Characters of prompt text: the system prompt and every message."""
    system = params.get("system")
    chars = len(system) if isinstance(system, str) else len(text_of(system))
    return chars + sum(
        len(text_of(m.get("content"))) for m in params["messages"] if isinstance(m, dict)
    )


def message(
    params: Mapping[str, Any],
    fate: Fate,
    suffix: str,
    cache: set[str],
    tier: str,
    responder: _responder.Responder | None = None,
) -> dict[str, Any]:
    """A Message for ``params``. ``cache`` holds prompt-cache prefixes already written;
    ``responder`` is the user's own (None: the built-in one; it raises
    :class:`~._responder.ResponderError` when it fails)."""
    system = params.get("system")
    prompt_chars = params_chars(params)
    cached_tokens, created, read = _cache_use(system, cache)
    schema, tool = structured(params)
    stop = params.get("stop_sequences") or ()
    request = _responder.Request(
        "anthropic",
        "/v1/messages",
        str(params["model"]),
        last_user(params),
        system if isinstance(system, str) else (text_of(system) if system else None),
        schema,
        params,
    )
    reply = _responder.respond(
        last_user(params),
        fate=fate,
        schema=schema,
        max_tokens=params["max_tokens"],
        stop=[stop] if isinstance(stop, str) else list(stop),
        responder=responder,
        request=request,
    )
    content, stop_reason = _content(reply, tool, suffix)
    return {
        "id": f"msg_{suffix}",
        "type": "message",
        "role": "assistant",
        "model": params["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": reply.stop_sequence if stop_reason == "stop_sequence" else None,
        "usage": {
            "input_tokens": max(0, _responder.count_tokens(prompt_chars) - cached_tokens),
            "output_tokens": reply.output_tokens,
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": read,
            "service_tier": tier,
        },
    }


def _cache_use(system: Any, cache: set[str]) -> tuple[int, int, int]:
    """(tokens of the system prompt's cached prefix, of them written to the cache now,
    of them read from it): a prefix already in ``cache`` is read, a new one written."""
    cached = _cached_prefix(system)
    cached_tokens = _responder.count_tokens(len(cached))
    if not cached:
        return cached_tokens, 0, 0
    if cached in cache:
        return cached_tokens, 0, cached_tokens
    cache.add(cached)
    return cached_tokens, cached_tokens, 0


def _content(
    reply: _responder.Reply, tool: str | None, suffix: str
) -> tuple[list[dict[str, Any]], str]:
    """A Message's content and stop reason: the call of the forced ``tool`` (its input
    the structured value) or the reply's text."""
    if tool is not None:
        value = reply.value if reply.value is not None else {}
        if not isinstance(value, dict):
            value = {"nbbatch_emulator_invalid": value}
        call: dict[str, Any] = {"type": "tool_use", "id": f"toolu_{suffix}", "name": tool}
        call["input"] = value
        return [call], "max_tokens" if reply.finish == "length" else "tool_use"
    content: list[dict[str, Any]] = [{"type": "text", "text": reply.text, "citations": None}]
    stop_reason = {"length": "max_tokens", "stop_sequence": "stop_sequence"}.get(
        reply.finish, "end_turn"
    )
    return content, stop_reason


def error_json(type: str, message: str, request_id: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type, "message": message}, "request_id": request_id}
