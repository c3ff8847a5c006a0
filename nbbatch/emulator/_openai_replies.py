"""Answers of the OpenAI endpoints (chat, responses, embeddings), as the service gives them.

One request body in, its HTTP status and JSON body out (with its token usage), through
the built-in responder or the user's own: used by the real-time routes and by a batch
as it runs (see :mod:`._openai`). The checks a body must pass first are
:mod:`._validate_openai`'s.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from . import _models, _responder, _validate_openai
from ._faults import (
    FAIL_MARKER,
    Fate,
    int_hash,
)
from ._validate_openai import Inspection, inspect
from ._wire import openai_error_body

SERVER_ERROR_MESSAGE = (
    "The server had an error while processing your request. Sorry about that! "
    "(simulated by the nbbatch emulator)"
)


@dataclass(frozen=True)
class Answer:
    """An endpoint's HTTP status and JSON body for one request, with its token usage."""

    status: int
    body: dict[str, Any]
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(slots=True)  # not frozen: made for every row, and a frozen init is slower
class _Call:
    """One request being answered: its body and what inspecting it found, its fate, the
    reply's time and id suffix, the responder that writes the text (None: the built-in
    one), the request as the responder sees it, and the prompt-prefix cache (None: none)."""

    body: dict
    info: Inspection
    fate: Fate
    created: int
    suffix: str
    responder: _responder.Responder | None
    request: _responder.Request
    prefix_cache: set[int] | None


def error_answer(status: int, message: str, type: str, param: str | None = None) -> Answer:
    return Answer(status, openai_error_body(message, type, param, None))


def answer(
    endpoint: str,
    body: Any,
    fate: Fate,
    created: int,
    seed_id: str,
    *,
    responder: _responder.Responder | None = None,
    prefix_cache: set[int] | None = None,
    models: Iterable[str] = (),
    checked: bool = False,
) -> Answer:
    """Run one request against the responder; ``seed_id`` makes the body's ids.

    ``responder`` is the user's own (None: the built-in one). ``prefix_cache`` holds the
    prompt prefixes already seen (see :func:`cached_prefix_tokens`); None: no caching.
    The body is checked as the service checks it (``models``: names served besides the
    real ones) unless ``checked`` says that was done when its batch was created.
    """
    if fate == Fate.FAIL or not checked:
        problem = _validate_openai.problem(endpoint, body, models)
        if problem is not None:
            return Answer(
                problem.status,
                openai_error_body(problem.message, problem.type, problem.param, problem.code),
            )
    if fate == Fate.FAIL:
        return error_answer(
            400,
            f"Request rejected by the nbbatch emulator ({FAIL_MARKER}).",
            "invalid_request_error",
        )
    if fate == Fate.TRANSIENT_ERROR:
        return error_answer(500, SERVER_ERROR_MESSAGE, "server_error")
    info = inspect(endpoint, body)
    suffix = f"{int_hash(seed_id):016x}"
    if endpoint == "/v1/embeddings":
        return _embeddings(body, info)
    tool = forced_tool(endpoint, body)
    if tool is not None:  # the reply is a call of that tool: its arguments follow its schema
        info = replace(info, schema=tool[1], json_mode=False)
    request = _responder.Request(
        "openai", endpoint, str(body["model"]), info.last_user, info.system, info.schema, body
    )
    call = _Call(body, info, fate, created, suffix, responder, request, prefix_cache)
    try:
        if tool is not None:
            return _tool_call(endpoint, call, tool)
        if endpoint == "/v1/responses":
            return _responses(call)
        return _chat(call)
    except _responder.ResponderError as exc:
        return error_answer(400, str(exc), "invalid_request_error")


#: The arguments schema of a function declared without ``parameters``.
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


def forced_tool(endpoint: str, body: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """The function a request forces the model to call, with its parameters schema, or None.

    ``tool_choice`` "required" makes the model call one of the tools (the emulator calls
    the first function), a named choice that one; "auto" and "none" leave it free, and
    the emulator then answers in text. Chat declares ``{"type": "function", "function":
    {"name", "parameters"}}`` and names ``{"type": "function", "function": {"name"}}``;
    the Responses API flattens both (``{"type": "function", "name", "parameters"}``).
    (platform.openai.com/docs/guides/function-calling, "Tool choice".)
    """
    choice = body.get("tool_choice")
    tools = body.get("tools")
    if choice in (None, "auto", "none") or not isinstance(tools, list):
        return None
    chat = endpoint == "/v1/chat/completions"
    functions: list[tuple[str, Mapping[str, Any]]] = []
    for t in tools:
        if not isinstance(t, dict) or t.get("type") != "function":
            continue
        spec = t.get("function") if chat else t
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            params = spec.get("parameters")
            functions.append((spec["name"], params if isinstance(params, dict) else {}))
    if choice == "required":
        wanted = functions[0][0] if functions else None
    elif isinstance(choice, dict) and choice.get("type") == "function":
        named = choice.get("function") if chat else choice
        wanted = named.get("name") if isinstance(named, dict) else None
    else:
        return None
    for name, params in functions:
        if name == wanted:
            return name, params or EMPTY_PARAMETERS
    return None


def _tool_call(endpoint: str, call: _Call, tool: tuple[str, Mapping[str, Any]]) -> Answer:
    """The answer of a request that forces a tool call: the call, its arguments valid
    against the tool's schema (as chat's ``tool_calls`` or a Responses ``function_call``)."""
    body, info, suffix = call.body, call.info, call.suffix
    reply = _responder.respond(
        info.last_user,
        fate=call.fate,
        schema=info.schema,
        responder=call.responder,
        request=call.request,
    )
    # The reply around the call is the plain one, without the responder or the cache.
    plain = replace(call, responder=None, prefix_cache=None)
    prompt_tokens = _responder.count_tokens(info.prompt_chars)
    call_id = f"call_{suffix}"
    if endpoint == "/v1/responses":
        result = _responses(plain).body
        result["output"] = [
            {
                "id": f"fc_{suffix}",
                "type": "function_call",
                "status": "completed",
                "call_id": call_id,
                "name": tool[0],
                "arguments": reply.text,
            }
        ]
        result["tool_choice"] = body.get("tool_choice")
        result["tools"] = body.get("tools") or []
        result["usage"]["output_tokens"] = reply.output_tokens
        result["usage"]["total_tokens"] = result["usage"]["input_tokens"] + reply.output_tokens
        return Answer(200, result, prompt_tokens, reply.output_tokens)
    result = _chat(plain).body
    result["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "annotations": [],
        "tool_calls": [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": tool[0], "arguments": reply.text},
            }
        ],
    }
    result["choices"][0]["finish_reason"] = "tool_calls"
    usage = result["usage"]
    usage["completion_tokens"] = reply.output_tokens
    usage["total_tokens"] = usage["prompt_tokens"] + reply.output_tokens
    return Answer(200, result, prompt_tokens, reply.output_tokens)


#: OpenAI caches a prompt's prefix by itself from this many tokens on, in steps of
#: CACHE_INCREMENT tokens (its prompt-caching guide), and reports the cached part as
#: ``cached_tokens``.
CACHE_MIN_TOKENS = 1024
CACHE_INCREMENT = 128


def cached_prefix_tokens(text: str, prompt_tokens: int, seen: set[int] | None) -> int:
    """Tokens of ``text``'s longest prefix already sent (``seen``), as OpenAI reports them:
    0 below :data:`CACHE_MIN_TOKENS`, else a multiple of :data:`CACHE_INCREMENT` from it.
    Records this prompt's prefixes in ``seen`` for the requests after it."""
    if seen is None or prompt_tokens < CACHE_MIN_TOKENS:
        return 0
    hit = 0
    tokens = CACHE_MIN_TOKENS
    limit = min(prompt_tokens, len(text) // 4)  # 4 characters per token, as counted
    while tokens <= limit:
        key = int_hash(text[: tokens * 4])
        if key in seen:
            hit = tokens
        else:
            seen.add(key)
        tokens += CACHE_INCREMENT
    return hit


def _chat(call: _Call) -> Answer:
    body, info, request = call.body, call.info, call.request
    stop = body.get("stop") or ()
    reply = _responder.respond(
        info.last_user,
        fate=call.fate,
        schema=info.schema,
        json_mode=info.json_mode,
        max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"),
        stop=[stop] if isinstance(stop, str) else list(stop),
        responder=call.responder,
        request=request,
    )
    prompt_tokens = _responder.count_tokens(info.prompt_chars)
    cached = cached_prefix_tokens(info.prompt_text, prompt_tokens, call.prefix_cache)
    result = {
        "id": f"chatcmpl-{call.suffix}",
        "object": "chat.completion",
        "created": call.created,
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": reply.text,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": _logprobs(reply.text, body, call.responder, request),
                "finish_reason": "length" if reply.finish == "length" else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": reply.output_tokens,
            "total_tokens": prompt_tokens + reply.output_tokens,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
    }
    return Answer(200, result, prompt_tokens, reply.output_tokens)


#: The probability of a reply's least sure token (its *answer* token, e.g. the label):
#: on a row the model answers as the responder does, mostly high (drawn towards the
#: top of AGREE); on a row its quality makes it disagree, anywhere in DISAGREE. The two
#: ranges overlap, as a real model's are: a threshold on the answer's probability finds
#: most disagreeing rows but not all, and escalates some agreeing ones, so a calibrated
#: cascade with ``score="logprobs"`` has a real trade-off to choose.
AGREE = (0.5, 0.999)
DISAGREE = (0.25, 0.85)
#: Every other token of a reply (punctuation, field names...) is nearly sure.
SURE = (0.95, 0.9995)
#: Characters of reply text per token, as the emulator counts tokens.
TOKEN_CHARS = 4


def _logprobs(
    text: str, body: Mapping[str, Any], responder: Any, request: _responder.Request
) -> dict[str, Any] | None:
    """Chat's ``choices[].logprobs`` for ``text`` when the request asked for them
    (``logprobs: true``; ``top_logprobs: N`` adds N alternatives a token), else None.

    The text is cut into tokens of :data:`TOKEN_CHARS` characters. One of them (chosen
    by a hash of the row) is the answer token, whose probability depends on whether the
    model's quality makes this row disagree (:class:`._responder.QualityResponder`):
    drawn from :data:`AGREE` (skewed to its top) or :data:`DISAGREE`; every other token's
    from :data:`SURE`. A packed request is judged as one row (its own prompt)."""
    if body.get("logprobs") is not True:
        return None
    quality = responder if isinstance(responder, _responder.QualityResponder) else None
    agreed = quality is None or quality.agrees(request.model, request.prompt)
    u = int_hash("answer-prob", request.model, request.prompt) / 2.0**64
    low, high = AGREE if agreed else DISAGREE
    # Agreeing rows: most near the top of the range (1 - u^2 leans to 1).
    answer_p = high - (high - low) * u * u if agreed else low + (high - low) * u
    tokens = max(1, -(-len(text) // TOKEN_CHARS))
    answer_at = int_hash("answer-token", request.model, request.prompt) % tokens
    top = body.get("top_logprobs") or 0
    content = []
    for i in range(0, len(text), TOKEN_CHARS):
        token = text[i : i + TOKEN_CHARS]
        if i // TOKEN_CHARS == answer_at:
            p = answer_p
        else:
            v = int_hash("logprob", request.model, request.prompt, i) / 2.0**64
            p = SURE[0] + (SURE[1] - SURE[0]) * v
        entry: dict[str, Any] = {
            "token": token,
            "logprob": math.log(p),
            "bytes": list(token.encode()),
        }
        # The alternatives share what is left of the probability, most likely first.
        alternatives = [
            {
                "token": f"{token}{k}",
                "logprob": math.log((1 - p) / (2 ** (k + 1))),
                "bytes": list(f"{token}{k}".encode()),
            }
            for k in range(int(top) - 1)
        ]
        entry["top_logprobs"] = (
            [{k: entry[k] for k in ("token", "logprob", "bytes")}, *alternatives] if top else []
        )
        content.append(entry)
    return {"content": content, "refusal": None}


def _responses(call: _Call) -> Answer:
    body, info, suffix, created = call.body, call.info, call.suffix, call.created
    reply = _responder.respond(
        info.last_user,
        fate=call.fate,
        schema=info.schema,
        json_mode=info.json_mode,
        max_tokens=body.get("max_output_tokens"),
        responder=call.responder,
        request=call.request,
    )
    input_tokens = _responder.count_tokens(info.prompt_chars)
    cached = cached_prefix_tokens(info.prompt_text, input_tokens, call.prefix_cache)
    cut = reply.finish == "length"
    status = "incomplete" if cut else "completed"
    instructions = body.get("instructions")
    result = {
        "id": f"resp_{suffix}",
        "object": "response",
        "created_at": created,
        "status": status,
        "completed_at": None if cut else created,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "instructions": instructions if isinstance(instructions, str) else None,
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body["model"],
        "output": [
            {
                "id": f"msg_{suffix}",
                "type": "message",
                "role": "assistant",
                "status": status,
                "content": [
                    {"type": "output_text", "text": reply.text, "annotations": [], "logprobs": []}
                ],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "temperature": 1.0,
        "text": {"format": _text_format(body)},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": reply.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + reply.output_tokens,
        },
        "metadata": body.get("metadata") or {},
    }
    return Answer(200, result, input_tokens, reply.output_tokens)


def _text_format(body: dict) -> dict[str, Any]:
    """The ``text.format`` a Responses reply echoes: the request's JSON schema or JSON
    mode, else plain text."""
    fmt = (body.get("text") or {}).get("format") or {}
    if fmt.get("type") == "json_schema" and "name" in fmt and "schema" in fmt:
        return {k: fmt[k] for k in ("type", "name", "schema", "strict", "description") if k in fmt}
    if fmt.get("type") != "json_object":
        return {"type": "text"}
    return fmt


def _embeddings(body: dict, info: Inspection) -> Answer:
    if not info.embedding_inputs:
        return error_answer(
            400, "'input' must be a non-empty string or array.", "invalid_request_error", "input"
        )
    # Each model's full size unless ``dimensions`` shortens it (checked with the body).
    dims = body.get("dimensions") or _models.embedding_dimensions(str(body["model"]))
    if not isinstance(dims, int) or dims < 1:
        return error_answer(
            400, "dimensions must be a positive integer", "invalid_request_error", "dimensions"
        )
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for i, text in enumerate(info.embedding_inputs):
        vector: Any = _responder.embedding_vector(text, dims)
        if as_base64:
            vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    tokens = sum(_responder.count_tokens(len(t)) for t in info.embedding_inputs)
    result = {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return Answer(200, result, tokens, 0)
