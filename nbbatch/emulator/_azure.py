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
- real time is served per deployment, ``POST /deployments/{deployment}/chat/completions``
  (and ``/embeddings``) with the same ``api-version`` query and key, the data-plane
  inference paths of learn.microsoft.com/azure/ai-services/openai/reference ("Chat
  completions": ``POST {endpoint}/openai/deployments/{deployment-id}/chat/completions
  ?api-version=2024-10-21``). The deployment in the path, not the body's ``model``,
  picks the model; an unknown one is Azure's ``404 DeploymentNotFound``.
- a Microsoft Entra ID token (``Authorization: Bearer <token>``, what ``AzureOpenAI(
  azure_ad_token_provider=...)`` sends) is accepted in place of the ``api-key`` header
  (the reference's "Authentication" section names both).

- a deployment may have an enqueued-token limit (:data:`ENQUEUED_TOKEN_LIMITS`): the
  input tokens of its batches that have not ended. A batch over it is created and then
  fails validation with ``token_limit_exceeded``, its message stating the configured
  limit, as Azure's do (see :func:`refusal`). OpenAI's per-model queue limits
  (``start(tier=...)``, ``enqueued_token_limit``) are not Azure's: they neither apply to
  an Azure batch nor count it.

The status and wording of the other refusals below are the emulator's own (the pages
read do not quote Azure's error bodies for them).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any
from weakref import WeakKeyDictionary

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from . import _models, _openai, _responder
from ._state import Store
from ._wire import ApiError, JSONResponse

#: Where the variant is served (an AzureOpenAI client's base_url is the server's URL
#: plus this).
PREFIX = "/azure/openai"
#: Deployment name -> the model it serves (tests add theirs).
DEPLOYMENTS: dict[str, str] = {}
#: Deployment name -> the enqueued-token limit configured for it (none: no limit). On
#: Azure each global-batch deployment has its own, set when it is deployed.
ENQUEUED_TOKEN_LIMITS: dict[str, int] = {}
#: Per store: batch id -> the deployment its lines named (Azure counts the queue per
#: deployment; the shared batch records know only the model it serves).
_DEPLOYMENT_OF: WeakKeyDictionary[Store, dict[str, str]] = WeakKeyDictionary()
#: Azure's spelling of a batch endpoint -> the OpenAI one the shared handlers serve.
_ENDPOINTS = {"/chat/completions": "/v1/chat/completions", "/embeddings": "/v1/embeddings"}
_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?|v1|latest|preview")

Handler = Callable[[Request], Awaitable[Response]]


def _checked(handler: Handler) -> Handler:
    """``handler`` behind Azure's checks of the ``api-key`` header and ``api-version``."""

    async def checked(request: Request) -> Response:
        bearer = request.headers.get("authorization", "")
        token = bearer[7:].strip() if bearer[:7].lower() == "bearer " else ""
        if not request.headers.get("api-key", "").strip() and not token:
            raise ApiError(
                401,
                "Access denied: no api-key header and no 'Authorization: Bearer' Microsoft "
                "Entra ID token (Azure OpenAI takes one or the other).",
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


def _azure_lines(store: Store, file_id: str) -> str | None:
    """Rewrite an uploaded input file's lines from Azure's form to OpenAI's (``url``
    without ``/v1``, a deployment in ``model``), so the shared handlers read it; returns
    the deployment its first line names."""
    f = store.get_file(file_id)
    if f is None:
        return None  # the shared handler answers 404
    out = bytearray()
    named: str | None = None
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
                    named = named or body["model"]
                    body["model"] = DEPLOYMENTS.get(body["model"], body["model"])
            out += orjson.dumps(line) + b"\n"
        f.path.write_bytes(bytes(out))
        f.bytes = len(out)
    return named


def refusal(deployment: str, limit: int) -> str:
    """The validation error message of a batch over a deployment's enqueued-token limit,
    worded as Azure words it (quoted in learn.microsoft.com/en-us/answers/questions/
    2285577, "Azure OpenAI Batch API - token_limit_exceeded error": "The number of
    enqueued tokens has surpassed the configured limit of 30K for the deployment
    'gpt-4.1-batch'. Please either increase the limit or try again once the current
    jobs have finished.")."""
    return (
        f"The number of enqueued tokens has surpassed the configured limit of "
        f"{_short(limit)} for the deployment '{deployment}'. Please either increase the "
        "limit or try again once the current jobs have finished."
    )


def _short(n: int) -> str:
    """``30K``, ``2M``: how Azure states a round limit (else the plain number)."""
    for size, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "K")):
        if n >= size and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


def _queued(store: Store, deployment: str) -> int:
    """Input tokens of the deployment's batches that have not ended (a batch holds its
    tokens until it completes, fails, expires or is cancelled)."""
    t = store.now()
    total = 0
    for batch_id, named in _DEPLOYMENT_OF.get(store, {}).items():
        b = store.get_batch("openai", batch_id) if named == deployment else None
        if isinstance(b, _openai.OpenAIBatch) and not b.invalid and b.ended_at(t) is None:
            total += b.est_tokens
    return total


def _create_sync(store: Store, body: Any, deployment: str | None) -> dict[str, Any]:
    """Create the batch; over the deployment's limit it fails validation, as on Azure."""
    limit = ENQUEUED_TOKEN_LIMITS.get(deployment or "")
    if deployment is None or limit is None:
        return _openai.create_batch_sync(store, body, openai_queue=False)

    def check(v: _openai.Validation) -> None:
        tokens = _responder.count_tokens(v.prompt_chars)
        if not v.errors and _queued(store, deployment) + tokens > limit:
            v.fail("token_limit_exceeded", refusal(deployment, limit))

    with store.lock:  # the count, the new batch and its deployment, as one step
        made = _openai.create_batch_sync(store, body, check, openai_queue=False)
        _DEPLOYMENT_OF.setdefault(store, {})[made["id"]] = deployment
    return made


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
        named = await run_in_threadpool(_azure_lines, store, str(body.get("input_file_id")))
        return JSONResponse(await run_in_threadpool(_create_sync, store, body, named))
    return JSONResponse(await run_in_threadpool(_create_sync, store, body, None))


#: Azure's answer for a deployment the resource does not have (its code and message as
#: the service sends them, quoted in MicrosoftDocs/azure-docs#114013 and
#: chatboxai/chatbox#861: 404, ``{"error": {"code": "DeploymentNotFound", ...}}``).
DEPLOYMENT_NOT_FOUND = (
    "The API deployment for this resource does not exist. If you created the deployment "
    "within the last 5 minutes, please wait a moment and try again."
)


def _deployed_model(store: Store, deployment: str) -> str:
    """The model ``deployment`` serves: its entry in :data:`DEPLOYMENTS`, else a model of
    that name; else the resource has no such deployment."""
    model = DEPLOYMENTS.get(deployment, deployment)
    if _models.find("openai", model, store.knobs.models) is None:
        raise ApiError(404, DEPLOYMENT_NOT_FOUND, type="invalid_request_error",
                       code="DeploymentNotFound")  # fmt: skip
    return model


def _realtime(endpoint: str) -> Handler:
    """A real-time request to one deployment, answered as OpenAI's ``endpoint`` answers
    it for the model the deployment serves (the SDK also names the deployment in the
    body's ``model``; Azure goes by the path)."""
    shared = _openai.realtime_handler(endpoint)

    async def handler(request: Request) -> Response:
        store: Store = request.app.state.store
        model = _deployed_model(store, request.path_params["deployment"])
        try:
            body: Any = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise ApiError(400, "The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            return await shared(request)  # refused there, as OpenAI refuses it
        body["model"] = model
        data = orjson.dumps(body)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": data, "more_body": False}

        return await shared(Request(request.scope, receive))

    return handler


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
    Route(
        "/deployments/{deployment}/chat/completions",
        _realtime("/v1/chat/completions"),
        methods=["POST"],
    ),
    Route("/deployments/{deployment}/embeddings", _realtime("/v1/embeddings"), methods=["POST"]),
]

#: The variant's mount, one line in the server's route table.
mount = Mount(
    PREFIX,
    routes=[Route(r.path, _checked(r.endpoint), methods=sorted(r.methods or ())) for r in _routes],
)
