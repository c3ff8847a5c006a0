"""Answers of Gemini's generateContent and embedContent, as the service gives them.

One request in, its response (or the reason it is refused) out, through the built-in
responder or the user's own: used by the real-time routes and by a batch as it runs
(see :mod:`._gemini`). The checks are :mod:`._validate_gemini`'s.
"""

from __future__ import annotations

from typing import Any

from . import _models, _responder, _validate_gemini
from ._faults import Fate
from ._wire import text_of

#: The two kinds of batch: generateContent requests, or embedContent requests.
GENERATE, EMBED = "generate", "embed"


def request_problem(req: Any) -> str | None:
    """Why a GenerateContentRequest would be refused, or None when it is fine."""
    return _validate_gemini.request_problem(req)


def embed_problem(req: Any, model: str = "") -> str | None:
    """Why an EmbedContentRequest to ``model`` would be refused, or None when it is fine."""
    return _validate_gemini.embed_problem(req, model)


def problem_of(kind: str, req: Any, model: str = "") -> str | None:
    """Why a request of a ``kind`` batch (``generate`` or ``embed``) would be refused."""
    return embed_problem(req, model) if kind == EMBED else request_problem(req)


def embed(req: dict[str, Any], model: str = "") -> dict[str, Any]:
    """The response to one EmbedContentRequest: a deterministic unit vector of the
    content's text (the same vectors as the OpenAI routes) of the model's full size unless
    ``outputDimensionality`` shortens it, and its token count."""
    text = _text(req.get("content"))
    dims = req.get("outputDimensionality") or req.get("output_dimensionality")
    vector = _responder.embedding_vector(text, dims or _models.embedding_dimensions(model))
    # tokenCount is an int64, which Google's JSON writes as a string.
    return {"embedding": {"values": vector}, "tokenCount": str(_responder.count_tokens(len(text)))}


def _text(content: Any) -> str:
    """The text parts of one Content object, joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, dict):
        return ""
    return "".join(
        p.get("text", "") for p in content.get("parts") or [] if isinstance(p, dict)
    ) or text_of(content.get("parts"))


def prompt_chars(kind: str, req: Any) -> int:
    """Characters of input a request carries (system, every turn; an embedding's text),
    from which its prompt tokens are counted."""
    if not isinstance(req, dict):
        return 0
    if kind == EMBED:
        return len(_text(req.get("content")))
    system = req.get("systemInstruction") or req.get("system_instruction")
    return len(_text(system)) + sum(len(_text(c)) for c in req.get("contents") or [])


def row_text(kind: str, req: Any) -> str:
    """The text a request carries for the model (where the fault markers are read)."""
    if kind == EMBED:
        return _text(req.get("content")) if isinstance(req, dict) else ""
    return last_user(req)


def last_user(req: Any) -> str:
    """The text of the last user turn of a request."""
    if not isinstance(req, dict):
        return ""
    turns = [
        c
        for c in req.get("contents") or []
        if isinstance(c, dict) and c.get("role", "user") == "user"
    ]
    return _text(turns[-1]) if turns else ""


def _config(req: dict[str, Any]) -> dict[str, Any]:
    config = req.get("generationConfig") or req.get("generation_config") or {}
    return config if isinstance(config, dict) else {}


def schema_of(req: Any) -> dict[str, Any] | None:
    """The schema a structured reply must follow (JSON Schema or the OpenAPI subset)."""
    if not isinstance(req, dict):
        return None
    config = _config(req)
    for key in ("responseJsonSchema", "response_json_schema", "responseSchema", "response_schema"):
        schema = config.get(key)
        if isinstance(schema, dict):
            return _lower_types(schema)
    return None


def _lower_types(schema: Any) -> Any:
    """The OpenAPI subset spells types in capitals (``STRING``); JSON Schema does not."""
    if isinstance(schema, dict):
        out = {k: _lower_types(v) for k, v in schema.items()}
        if isinstance(out.get("type"), str):
            out["type"] = out["type"].lower()
        return out
    if isinstance(schema, list):
        return [_lower_types(v) for v in schema]
    return schema


def _get(d: Any, camel: str, snake: str) -> Any:
    return (d.get(camel) if camel in d else d.get(snake)) if isinstance(d, dict) else None


def forced_function(req: Any) -> tuple[str, dict[str, Any]] | None:
    """The function a request forces the model to call, with its parameters schema, or
    None: function-calling mode ``ANY`` makes the model call one of the declared
    functions (of ``allowedFunctionNames`` when given); the emulator calls the first.
    (ai.google.dev/gemini-api/docs/function-calling, "Function calling modes".)"""
    config = _get(
        _get(req, "toolConfig", "tool_config"), "functionCallingConfig", "function_calling_config"
    )
    if str(_get(config, "mode", "mode") or "").upper() != "ANY":
        return None
    allowed = _get(config, "allowedFunctionNames", "allowed_function_names") or None
    for tool in _get(req, "tools", "tools") or []:
        for decl in _get(tool, "functionDeclarations", "function_declarations") or []:
            name = _get(decl, "name", "name")
            if not isinstance(name, str) or (allowed and name not in allowed):
                continue
            schema = _get(decl, "parametersJsonSchema", "parameters_json_schema") or _get(
                decl, "parameters", "parameters"
            )
            if not isinstance(schema, dict):
                schema = {"type": "object", "properties": {}}
            return name, _lower_types(schema)
    return None


def prompt_tokens_of(req: dict[str, Any]) -> int:
    """The prompt tokens of a GenerateContentRequest: its system instruction and contents
    (what ``usageMetadata.promptTokenCount`` and countTokens report)."""
    return _responder.count_tokens(prompt_chars(GENERATE, req))


def generate(
    req: dict[str, Any],
    fate: Fate,
    model: str,
    suffix: str,
    responder: _responder.Responder | None = None,
) -> dict[str, Any]:
    """A GenerateContentResponse (REST JSON) for one request. ``responder`` is the
    user's own (None: the built-in one; it raises :class:`~._responder.ResponderError`
    when it fails)."""
    config = _config(req)
    system = req.get("systemInstruction") or req.get("system_instruction")
    schema = schema_of(req)
    forced = forced_function(req)
    if forced is not None:  # the reply is a call of that function, with valid arguments
        schema = forced[1]
    stop = config.get("stopSequences") or config.get("stop_sequences") or ()
    request = _responder.Request(
        "gemini",
        ":generateContent",
        model.removeprefix("models/"),
        last_user(req),
        _text(system) if system else None,
        schema,
        req,
    )
    reply = _responder.respond(
        last_user(req),
        fate=fate,
        schema=schema,
        json_mode=schema is None and config.get("responseMimeType") == "application/json",
        max_tokens=config.get("maxOutputTokens") or config.get("max_output_tokens"),
        stop=[stop] if isinstance(stop, str) else list(stop),
        responder=responder,
        request=request,
    )
    prompt_tokens = prompt_tokens_of(req)
    part: dict[str, Any] = {"text": reply.text}
    if forced is not None:
        args = reply.value if isinstance(reply.value, dict) else {}
        part = {"functionCall": {"name": forced[0], "args": args}}
    return {
        "candidates": [
            {
                "content": {"parts": [part], "role": "model"},
                "finishReason": "MAX_TOKENS" if reply.finish == "length" else "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": reply.output_tokens,
            "totalTokenCount": prompt_tokens + reply.output_tokens,
        },
        "modelVersion": model.removeprefix("models/"),
        "responseId": suffix,
    }
