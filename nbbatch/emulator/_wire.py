"""Small helpers shared by both protocols: JSON responses, ids, API errors, times."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response


class JSONResponse(Response):
    """A JSON response serialised with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def new_id(prefix: str, nbytes: int = 12) -> str:
    """A random id such as ``batch_3f2a...`` (ids need not be reproducible, faults do)."""
    return prefix + secrets.token_hex(nbytes)


class ApiError(Exception):
    """Raised by a route; the server turns it into the provider's error response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        details: list[Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.details = details  # Google's error details (Gemini only)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


NO_RETRY = {"x-should-retry": "false"}


def openai_error_body(message: str, type: str, param: str | None, code: str | None) -> dict:
    """``{"error": {message, type, param, code}}`` as the OpenAI API sends it."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def anthropic_error_body(type: str, message: str, request_id: str | None) -> dict:
    """``{"type": "error", "error": {type, message}, "request_id"}`` as Anthropic sends it."""
    return {"type": "error", "error": {"type": type, "message": message}, "request_id": request_id}


def rfc3339(unix: float) -> str:
    """RFC 3339 UTC timestamp with microseconds, e.g. ``2024-09-24T18:37:24.100435Z``."""
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def text_of(content: Any) -> str:
    """The text of a message ``content``: a string, or the text of its text blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and block.get("type") in ("text", "input_text")
        ]
        return "\n".join(parts)
    return ""
