"""Per-request checks of Gemini GenerateContent / EmbedContent requests, as the service
makes them.

A batch request the service refuses gets its own error (``{"code": 400, "message",
"status": "INVALID_ARGUMENT"}``) while the others run. The JSON parser takes both the
camelCase and the snake_case spelling of a field and refuses names it does not know
("Unknown name ... Cannot find field."); ranges follow the API reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from . import _models


def _both(*names: str) -> frozenset[str]:
    """Each camelCase name and its snake_case spelling."""
    snake = (re.sub(r"(?<!^)([A-Z])", r"_\1", n).lower() for n in names)
    return frozenset(names) | frozenset(snake)


REQUEST_FIELDS = _both(
    "model",
    "contents",
    "tools",
    "toolConfig",
    "safetySettings",
    "systemInstruction",
    "generationConfig",
    "cachedContent",
    "labels",
)
CONFIG_FIELDS = _both(
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "enableEnhancedCivicAnswers",
    "speechConfig",
    "thinkingConfig",
    "imageConfig",
    "mediaResolution",
)
EMBED_FIELDS = _both("model", "content", "taskType", "title", "outputDimensionality")
MIME_TYPES = ("text/plain", "application/json", "text/x.enum")
#: Numeric generationConfig fields: (camelCase, snake_case, low, high, integer).
RANGES = (
    ("temperature", "temperature", 0.0, 2.0, False),
    ("topP", "top_p", 0.0, 1.0, False),
    ("topK", "top_k", 1, None, True),
    ("candidateCount", "candidate_count", 1, 8, True),
    ("maxOutputTokens", "max_output_tokens", 1, None, True),
    ("presencePenalty", "presence_penalty", -2.0, 2.0, False),
    ("frequencyPenalty", "frequency_penalty", -2.0, 2.0, False),
)
MAX_STOP_SEQUENCES = 5


def _get(d: Mapping[str, Any], camel: str, snake: str) -> Any:
    return d.get(camel, d.get(snake))


def _unknown(d: Mapping[str, Any], known: frozenset[str], where: str) -> str | None:
    for key in d:
        if key not in known:
            return (
                f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': "
                "Cannot find field."
            )
    return None


def _request_object(req: Any, kind: str, fields: frozenset[str]) -> str | None:
    """Why ``req`` is not a ``kind`` object of known ``fields`` (what every request
    of a batch is checked for first), or None."""
    if not isinstance(req, dict):
        article = "an" if kind[0] in "AEIOU" else "a"
        return f"request: must be {article} {kind} object"
    return _unknown(req, fields, "request")


def model_problem(model: str, extra_models: Iterable[str] = ()) -> str | None:
    """The 404 message for a model the service does not have (None: it has it)."""
    name = model.removeprefix("models/")
    if _models.find("gemini", name, extra_models) is None:
        return f"models/{name} is not found for API version v1beta, or is not supported."
    return None


def request_problem(req: Any) -> str | None:
    """Why a GenerateContentRequest would be refused, or None when it is fine."""
    why = _request_object(req, "GenerateContentRequest", REQUEST_FIELDS)
    if why:
        return why
    contents = req.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for i, content in enumerate(contents):
        if not isinstance(content, dict):
            return f"* GenerateContentRequest.contents[{i}]: must be a Content object"
        if content.get("role", "user") not in ("user", "model"):
            return "Please use a valid role: user, model."
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            return (
                f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            )
    config = _get(req, "generationConfig", "generation_config")
    if config is None:
        return None
    if not isinstance(config, dict):
        return "generationConfig: must be an object"
    return _config_problem(config)


def _config_problem(config: Mapping[str, Any]) -> str | None:
    why = _unknown(config, CONFIG_FIELDS, "generation_config")
    if why:
        return why
    for camel, snake, low, high, integer in RANGES:
        value = _get(config, camel, snake)
        if value is None:
            continue
        kind = int if integer else int | float
        if isinstance(value, bool) or not isinstance(value, kind):
            return f"* GenerateContentRequest.generation_config.{snake}: must be a number"
        if value < low or (high is not None and value > high):
            span = f"[{low}, {high}]" if high is not None else f">= {low}"
            return f"* GenerateContentRequest.generation_config.{snake}: must be in {span}"
    stop = _get(config, "stopSequences", "stop_sequences")
    if isinstance(stop, list) and len(stop) > MAX_STOP_SEQUENCES:
        return (
            "* GenerateContentRequest.generation_config.stop_sequences: at most "
            f"{MAX_STOP_SEQUENCES} stop sequences are allowed"
        )
    mime = _get(config, "responseMimeType", "response_mime_type")
    if mime is not None and mime not in MIME_TYPES:
        return (
            f"* GenerateContentRequest.generation_config.response_mime_type: allowed mimetypes "
            f"are {', '.join(repr(m) for m in MIME_TYPES)}, but got {mime!r}"
        )
    schema = _get(config, "responseSchema", "response_schema")
    json_schema = _get(config, "responseJsonSchema", "response_json_schema")
    if schema is not None and json_schema is not None:
        return (
            "* GenerateContentRequest.generation_config: response_schema and "
            "response_json_schema cannot both be set"
        )
    if (schema is not None or json_schema is not None) and mime not in (
        "application/json",
        "text/x.enum",
    ):
        return (
            "* GenerateContentRequest.generation_config.response_mime_type: a response schema "
            "needs response_mime_type 'application/json' (or 'text/x.enum')"
        )
    return None


def embed_problem(req: Any, model: str = "") -> str | None:
    """Why an EmbedContentRequest would be refused, or None when it is fine."""
    why = _request_object(req, "EmbedContentRequest", EMBED_FIELDS)
    if why:
        return why
    content = req.get("content")
    if not isinstance(content, dict) or not any(
        isinstance(p, dict) and p.get("text") for p in content.get("parts") or []
    ):
        return "* EmbedContentRequest.content: content is not specified"
    dims = _get(req, "outputDimensionality", "output_dimensionality")
    if dims is None:
        return None
    if not isinstance(dims, int) or isinstance(dims, bool) or dims < 1:
        return "* EmbedContentRequest.output_dimensionality: must be a positive integer"
    most = _models.embedding_dimensions(model) if model else None
    if most is not None and dims > most:
        return (
            f"* EmbedContentRequest.output_dimensionality: must be at most {most} for "
            f"{model.removeprefix('models/')}, got {dims}"
        )
    return None
