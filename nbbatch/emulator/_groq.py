"""Groq's batch API as the ``groq`` SDK sees it, served under ``/groq``.

The SDK's base URL is the server's root (``https://api.groq.com``) and its paths start
with ``/openai/v1`` (groq 1.7, groq/resources/*.py), so a client made with
``base_url=emu.url + "/groq"`` reaches the routes below. The wire is OpenAI's (the
SDK's types are OpenAI's batch, file and model objects; errors are OpenAI-shaped), so
the OpenAI handlers serve files and batches run as OpenAI batches. What differs:

- the completion window may be any duration from ``24h`` to ``7d`` (the SDK's
  ``batches.create`` docstring), where OpenAI takes only ``24h``;
- batches take ``/v1/chat/completions`` only (the SDK's ``endpoint`` type);
- the models are Groq's (genai-prices' ``groq`` table), and a model object also says
  whether it is ``active``;
- the batch list is one page (the SDK's ``batches.list`` takes no cursor).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import _compat, _models, _openai
from ._wire import ApiError, JSONResponse, listing_models, showing, showing_model

#: Where the variant is mounted; the SDK adds ``/openai/v1/...``.
PREFIX = "/groq"
KIND = "groq"
_WINDOW = re.compile(r"(\d+)([hd])")


def check_window(window: Any) -> None:
    """``completion_window``: required, a duration from 24 hours to 7 days."""
    if window is None:
        raise ApiError(
            400, "Missing required parameter: 'completion_window'.", param="completion_window"
        )
    found = _WINDOW.fullmatch(str(window))
    hours = 0
    if found:
        hours = int(found.group(1)) * (24 if found.group(2) == "d" else 1)
    if not 24 <= hours <= 7 * 24:
        raise ApiError(
            400,
            f"completion_window must be a duration from 24h to 7d, got {window!r}.",
            param="completion_window",
        )


def _store(request: Request) -> Any:
    return request.app.state.store


async def create_batch(request: Request) -> Response:
    store = _store(request)
    body = await _openai.json_body(request)

    def run() -> dict[str, Any]:
        b = _compat.create_batch(store, KIND, body, purpose="batch", check_window=check_window)
        return _openai.batch_json(store, b, store.now())

    return JSONResponse(await run_in_threadpool(run))


retrieve_batch = showing(_compat.finder(KIND), _openai.batch_json, "batch_id")


async def cancel_batch(request: Request) -> Response:
    store = _store(request)
    _compat.batch_or_404(store, KIND, request.path_params["batch_id"])
    batch_id = request.path_params["batch_id"]
    return JSONResponse(await run_in_threadpool(_openai.cancel_sync, store, batch_id, KIND))


async def list_batches(request: Request) -> Response:
    store = _store(request)

    def run() -> dict[str, Any]:
        t = store.now()
        return {
            "object": "list",
            "data": [_openai.batch_json(store, b, t) for b in _compat.batches_of(store, KIND)],
        }

    return JSONResponse(await run_in_threadpool(run))


def _model_json(entry: _models.ModelEntry) -> dict[str, Any]:
    return {**_openai.model_json(entry), "owned_by": "Groq", "active": True}


def _unknown_model(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        type="invalid_request_error",
        code="model_not_found",
    )


list_models = listing_models(KIND, _model_json)
retrieve_model = showing_model(KIND, _model_json, "model", _unknown_model)


routes = [
    Route("/v1/files", _openai.create_file, methods=["POST"]),
    Route("/v1/files", _openai.list_files, methods=["GET"]),
    Route("/v1/files/{file_id}", _openai.retrieve_file, methods=["GET"]),
    Route("/v1/files/{file_id}", _openai.delete_file, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", _openai.file_content, methods=["GET"]),
    Route("/v1/batches", create_batch, methods=["POST"]),
    Route("/v1/batches", list_batches, methods=["GET"]),
    Route("/v1/batches/{batch_id}", retrieve_batch, methods=["GET"]),
    Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/chat/completions", _compat.realtime(KIND), methods=["POST"]),
    Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
]
