"""Azure OpenAI's variant of the Batch API, served under ``/azure/openai``.

An ``openai.AzureOpenAI(base_url=emu.url + "/azure/openai", api_version=...)`` client
speaks to it. It is OpenAI's Batch API (the same handlers, state and results) with
Azure's differences, after learn.microsoft.com/azure/ai-foundry/openai/how-to/batch:

- every request carries an ``api-version`` query parameter and the key in an ``api-key``
  header (what the SDK's AzureOpenAI sends); one without either is refused.
- a request line's ``url`` and the batch's ``endpoint`` are ``/chat/completions`` (or
  ``/embeddings``), without ``/v1``;
- a line's ``model`` names a *deployment*. :data:`DEPLOYMENTS` maps a deployment to
  the model it serves; a deployment named like a model serves that model.

The status and wording of the refusals below are the emulator's own (the pages read do
not quote Azure's error bodies for them).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from . import _openai
from ._state import Store
from ._wire import ApiError, JSONResponse

#: Where the variant is served (an AzureOpenAI client's base_url is the server's URL
#: plus this).
PREFIX = "/azure/openai"
#: Deployment name -> the model it serves (tests add theirs).
DEPLOYMENTS: dict[str, str] = {}
#: Azure's spelling of a batch endpoint -> the OpenAI one the shared handlers serve.
_ENDPOINTS = {"/chat/completions": "/v1/chat/completions", "/embeddings": "/v1/embeddings"}
_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?|v1|latest|preview")

Handler = Callable[[Request], Awaitable[Response]]


def _checked(handler: Handler) -> Handler:
    """``handler`` behind Azure's checks of the ``api-key`` header and ``api-version``."""

    async def checked(request: Request) -> Response:
        if not request.headers.get("api-key") and not request.headers.get("authorization"):
            raise ApiError(
                401,
                "Access denied: no api-key header (Azure OpenAI takes the key in 'api-key').",
                type="invalid_request_error",
                code="401",
            )
        version = request.query_params.get("api-version")
        if not version:
            raise ApiError(404, "Resource not found: the api-version query parameter is missing.")
        if not _API_VERSION.fullmatch(version):
            raise ApiError(404, f"Resource not found: api-version {version!r} is not supported.")
        return await handler(request)

    return checked


def _azure_lines(store: Store, file_id: str) -> None:
    """Rewrite an uploaded input file's lines from Azure's form to OpenAI's (``url``
    without ``/v1``, a deployment in ``model``), so the shared handlers read it."""
    f = store.get_file(file_id)
    if f is None:
        return  # the shared handler answers 404
    out = bytearray()
    with store.lock:
        for raw in f.path.read_bytes().splitlines():
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                out += raw + b"\n"  # refused as such by the shared validation
                continue
            if isinstance(line, dict):
                url = line.get("url")
                line["url"] = _ENDPOINTS.get(url, url) if isinstance(url, str) else url
                body = line.get("body")
                if isinstance(body, dict) and isinstance(body.get("model"), str):
                    body["model"] = DEPLOYMENTS.get(body["model"], body["model"])
            out += orjson.dumps(line) + b"\n"
        f.path.write_bytes(bytes(out))
        f.bytes = len(out)


async def create_batch(request: Request) -> Response:
    """``POST /openai/batches`` with Azure's endpoint spelling."""
    store: Store = request.app.state.store
    try:
        body: Any = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise ApiError(400, "The request body is not valid JSON.") from None
    if isinstance(body, dict):
        endpoint = body.get("endpoint")
        if endpoint not in _ENDPOINTS:
            raise ApiError(
                400,
                f"endpoint must be one of {list(_ENDPOINTS)} on Azure OpenAI, got {endpoint!r}.",
                param="endpoint",
            )
        body["endpoint"] = _ENDPOINTS[endpoint]
        await run_in_threadpool(_azure_lines, store, str(body.get("input_file_id")))
    return JSONResponse(await run_in_threadpool(_openai.create_batch_sync, store, body))


_routes = [
    Route("/files", _openai.create_file, methods=["POST"]),
    Route("/files", _openai.list_files, methods=["GET"]),
    Route("/files/{file_id}", _openai.retrieve_file, methods=["GET"]),
    Route("/files/{file_id}", _openai.delete_file, methods=["DELETE"]),
    Route("/files/{file_id}/content", _openai.file_content, methods=["GET"]),
    Route("/batches", create_batch, methods=["POST"]),
    Route("/batches", _openai.list_batches, methods=["GET"]),
    Route("/batches/{batch_id}", _openai.retrieve_batch, methods=["GET"]),
    Route("/batches/{batch_id}/cancel", _openai.cancel_batch, methods=["POST"]),
]

#: The variant's mount, one line in the server's route table.
mount = Mount(
    PREFIX,
    routes=[Route(r.path, _checked(r.endpoint), methods=sorted(r.methods or ())) for r in _routes],
)
