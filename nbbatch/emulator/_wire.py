"""Small helpers every API shares: JSON requests and responses, ids, API errors, times,
and the route handlers that only read a request, run a step in a worker thread and
answer its result."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from . import _models

#: A route's handler.
Handler = Callable[[Request], Awaitable[Response]]


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


def store_of(request: Request) -> Any:
    """The emulator's store (a :class:`._state.Store`) serving ``request``."""
    return request.app.state.store


def parse_json(raw: bytes) -> Any:
    """A request body's JSON; a body that is not JSON is a 400."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "The request body is not valid JSON.") from None


async def json_body(request: Request) -> Any:
    """The request's JSON body (see :func:`parse_json`)."""
    return parse_json(await request.body())


def creating(make: Callable[[Any, Any], Any]) -> Handler:
    """The handler of a create request: ``make(store, body)`` (``body``: the request's
    JSON) runs in a worker thread, as it reads files, and its result is the answer."""

    async def handler(request: Request) -> Response:
        store = store_of(request)
        body = await json_body(request)
        return JSONResponse(await run_in_threadpool(make, store, body))

    return handler


def showing(
    find: Callable[[Any, str], Any], render: Callable[[Any, Any, float], Any], param: str
) -> Handler:
    """The handler of a ``GET`` of one batch: ``find(store, <path parameter param>)``
    looks it up (or raises the API's 404), ``render(store, batch, now)`` is the answer
    (in a worker thread: a batch that has just ended may wait for its output)."""

    async def handler(request: Request) -> Response:
        store = store_of(request)
        batch = find(store, request.path_params[param])
        return JSONResponse(await run_in_threadpool(render, store, batch, store.now()))

    return handler


def downloading(find: Callable[[Any, str], Any]) -> Handler:
    """The handler of a file's content: ``find(store, <path parameter file_id>)`` looks
    the stored file up (or raises the API's 404); its bytes are the answer."""

    async def handler(request: Request) -> Response:
        f = find(store_of(request), request.path_params["file_id"])
        return FileResponse(f.path, media_type="application/octet-stream")

    return handler


def listing_models(provider: str, render: Callable[[_models.ModelEntry], Any]) -> Handler:
    """``GET /v1/models`` answered ``{"object": "list", "data": [...]}``, every model of
    ``provider`` (and the emulator's own) in one page, each as ``render`` makes it: the
    shape OpenAI, Groq and Mistral share."""

    async def handler(request: Request) -> Response:
        known = _models.catalogue(provider, store_of(request).knobs.models)
        return JSONResponse({"object": "list", "data": [render(m) for m in known]})

    return handler


def showing_model(
    provider: str,
    render: Callable[[_models.ModelEntry], Any],
    param: str,
    unknown: Callable[[str], Exception],
) -> Handler:
    """``GET /v1/models/{<param>}``: the model as ``render`` makes it; a model
    ``provider`` does not serve raises the API's ``unknown(model)`` error."""

    async def handler(request: Request) -> Response:
        model = request.path_params[param]
        entry = _models.find(provider, model, store_of(request).knobs.models)
        if entry is None:
            raise unknown(model)
        return JSONResponse(render(entry))

    return handler
