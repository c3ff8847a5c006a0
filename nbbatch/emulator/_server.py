"""The HTTP side: a starlette app served by uvicorn on a loopback socket in a thread.

A thin ASGI front layer does what every request needs before routing: record it in the
request log, give it a request id (sent back as ``x-request-id`` and ``request-id``),
inject HTTP faults, check that some API key was sent, and normalise the path (OpenAI
routes are accepted with ``/v1``, without it, or with a doubled ``/v1/v1``).

An emulator with a token (the background one behind ``provider="local"``) answers only
requests that carry it, on every route, and answers ``GET /nbbatch/identify?nonce=N``
without it so that a client can check the listener is its own before sending the token.
An emulator on a loopback address answers only requests whose ``Host`` names a loopback
address and its port, so a web page cannot reach it through a renamed address (DNS
rebinding).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import (
    _anthropic,
    _anthropic_files,
    _azure,
    _bedrock,
    _gemini,
    _groq,
    _mistral,
    _openai,
    _together,
)
from ._identity import IDENTIFY_PATH, identity_proof
from ._state import Store
from ._wire import ApiError, JSONResponse, anthropic_error_body, openai_error_body

_OPENAI_PREFIXES = (
    "/files",
    "/batches",
    "/chat/",
    "/responses",
    "/embeddings",
    "/messages",
    "/models",
)
_REALTIME = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/messages")
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def normalize_path(path: str) -> str:
    """Map ``/v1/v1/x`` and ``/x`` onto ``/v1/x`` (see batch-protocols.md §1.1)."""
    while path.startswith("/v1/v1/"):
        path = path[3:]
    if not path.startswith("/v1/") and path.startswith(_OPENAI_PREFIXES):
        path = "/v1" + path
    return path


def is_gemini(path: str) -> bool:
    return path.startswith(_gemini.PREFIX + "/")


def _is_realtime(method: str, path: str) -> bool:
    if method != "POST":
        return False
    return path in _REALTIME or (is_gemini(path) and path.endswith(":generateContent"))


def is_anthropic(path: str) -> bool:
    return path.startswith("/v1/messages")


def error_response(
    path: str,
    status: int,
    message: str,
    request_id: str,
    *,
    type: str | None = None,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    anthropic: bool = False,
    details: list[Any] | None = None,
) -> Response:
    """An error in the wire shape of whichever API ``path`` belongs to (``anthropic``: a
    path both APIs have, asked by an Anthropic client)."""
    if is_gemini(path):
        return JSONResponse(
            _gemini.error_body(status, message, details), status_code=status, headers=headers
        )
    if _bedrock.is_bedrock(path):
        body, aws_type = _bedrock.error_body(status, message, type)
        return JSONResponse(
            body, status_code=status, headers={**(headers or {}), "x-amzn-ErrorType": aws_type}
        )
    if anthropic or is_anthropic(path):
        kind = type if type and type in _ANTHROPIC_TYPES.values() or type == "api_error" else None
        kind = kind or _ANTHROPIC_TYPES.get(status, "api_error")
        body = anthropic_error_body(kind, message, request_id)
    else:
        kind = type or ("server_error" if status >= 500 else "invalid_request_error")
        body = openai_error_body(message, kind, param, code)
    return JSONResponse(body, status_code=status, headers=headers)


class Front:
    """ASGI middleware: log, request id, HTTP faults, auth, path normalisation."""

    def __init__(self, app: ASGIApp, emulator: Any) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        emu = self.emulator
        method: str = scope["method"]
        path = normalize_path(scope["path"])
        request_id = "req_" + secrets.token_hex(12)
        id_headers = [(b"x-request-id", request_id.encode()), (b"request-id", request_id.encode())]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *id_headers]}
            await send(message)

        headers = dict(scope.get("headers") or [])
        query = scope.get("query_string", b"")
        # Refused before anything else (and not counted as activity: a stranger's
        # requests must not keep an idle background emulator alive).
        response = _refused(emu, method, path, headers, query, request_id)
        if response is None and emu.token is not None and path == IDENTIFY_PATH:
            response = _identify(emu, scope)
        if response is None:
            emu.record_request(method, scope["path"], realtime=_is_realtime(method, path))
            response = _simulated_fault(emu, method, path, request_id)
        if response is None:
            response = _unauthenticated(emu, method, path, headers, query, request_id)
        if response is not None:
            await response(scope, receive, send_with_id)
            return
        scope = {**scope, "path": path, "raw_path": path.encode(), "nbbatch_request_id": request_id}
        await self.app(scope, receive, send_with_id)


def _refused(
    emu: Any, method: str, path: str, headers: dict[bytes, bytes], query: bytes, request_id: str
) -> Response | None:
    """The answer to a request refused before routing (see :func:`_refusal`), or None."""
    refusal = _refusal(emu, method, path, headers, query)
    if refusal is None:
        return None
    status, message = refusal
    return error_response(
        path,
        status,
        message,
        request_id,
        type=("authentication_error" if status == 401 else "permission_error")
        if is_anthropic(path)
        else "invalid_request_error",
        code="invalid_api_key" if status == 401 else None,
    )


def _simulated_fault(emu: Any, method: str, path: str, request_id: str) -> Response | None:
    """The HTTP error the fault knobs answer this request with, or None."""
    status = emu.http_fault(method, path)
    if status is None:
        return None
    message = f"Simulated HTTP {status} (nbbatch emulator http_error_rate); retry."
    kind = "rate_limit_error" if status == 429 else None
    if not is_anthropic(path) and status == 429:
        kind = "requests"
    return error_response(
        path,
        status,
        message,
        request_id,
        type=kind,
        code="rate_limit_exceeded" if status == 429 and not is_anthropic(path) else None,
        headers={"retry-after-ms": "10"},
    )


def _unauthenticated(
    emu: Any, method: str, path: str, headers: dict[bytes, bytes], query: bytes, request_id: str
) -> Response | None:
    """The 401 of a request without a key (any key will do here: an emulator with a
    token checked it before), or the error of an Anthropic request without a header
    the service requires; None when the request may go on."""
    if not _presented_keys(headers) and not _upload_chunk(emu, method, path, query):
        return error_response(
            path,
            401,
            "No API key provided: send 'Authorization: Bearer <key>', 'x-api-key' or "
            "'x-goog-api-key' "
            "(the nbbatch emulator accepts any key).",
            request_id,
            type="authentication_error" if is_anthropic(path) else "invalid_request_error",
            code="invalid_api_key",
        )
    missing = _anthropic_header_problem(path, headers)
    if missing is not None:
        return error_response(path, missing[0], missing[1], request_id, anthropic=True)
    return None


X_API_KEY_REQUIRED = "x-api-key header is required"


def _anthropic_header_problem(path: str, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
    """(status, message) when an Anthropic request lacks a header the service requires.

    Every request to the Anthropic API carries its key and the API version in
    ``anthropic-version`` (platform.claude.com/docs/en/api/overview, "Authentication";
    docs/en/api/versioning); without them it answers 401 "x-api-key header is required"
    or 400 "anthropic-version: header is required" (the messages quoted in
    n8n-io/n8n#37930 and PipedreamHQ/pipedream#9697). The key goes in ``x-api-key``, or
    as a bearer token, which is how the official SDK (anthropic 2.x) sends it; a Gemini
    ``x-goog-api-key`` is not one. The Files API's requests are told from OpenAI's by
    ``anthropic-version`` itself, so there only the key is checked.
    """
    auth = headers.get(b"authorization", b"")
    has_key = bool(headers.get(b"x-api-key", b"").strip()) or (
        auth[:7].lower() == b"bearer " and bool(auth[7:].strip())
    )
    if path.startswith("/v1/files") and headers.get(b"anthropic-version"):
        return None if has_key else (401, X_API_KEY_REQUIRED)
    if not is_anthropic(path):
        return None
    if not has_key:
        return 401, X_API_KEY_REQUIRED
    if not headers.get(b"anthropic-version", b"").strip():
        return 400, "anthropic-version: header is required"
    return None


_SIGV4 = re.compile(rb"^AWS4-HMAC-SHA256 Credential=([^/,\s]+)/")


def _presented_keys(headers: dict[bytes, bytes]) -> list[bytes]:
    """The API keys a request carries, in any of the APIs' headers (Azure's ``api-key``)."""
    keys = []
    auth = headers.get(b"authorization", b"")
    if auth[:7].lower() == b"bearer " and auth[7:].strip():
        keys.append(auth[7:].strip())
    # boto3 signs with SigV4 ("AWS4-HMAC-SHA256 Credential=<access key id>/..."): the
    # access key id is what it presents (the emulator checks no signature).
    found = _SIGV4.match(auth)
    if found:
        keys.append(found.group(1))
    for name in (b"x-api-key", b"x-goog-api-key", b"api-key"):
        value = headers.get(name, b"").strip()
        if value:
            keys.append(value)
    return keys


_UPLOAD_CHUNK = re.compile(rf"^{_gemini.PREFIX}/upload/v\d+(?:alpha|beta)?\d*/files$")


def _upload_chunk(emu: Any, method: str, path: str, query: bytes) -> bool:
    """Whether the request sends bytes to a Gemini upload URL this emulator handed out.

    google-genai sends the chunks of a resumable upload without its key (the real upload
    URL carries its own authority), so the URL's ``upload_id`` is the credential: 96
    random bits, given only in answer to a start request that carried the key, and valid
    only until that upload is finalized. Any other id needs the key like every route.
    """
    if _together.upload_allowed(emu.store, method, path, query):
        return True  # Together's storage URL: its token is the credential
    if method != "POST" or not _UPLOAD_CHUNK.match(path):
        return False
    upload_id = QueryParams(query).get("upload_id")
    return bool(upload_id) and upload_id in emu.store.uploads


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refusal(
    emu: Any, method: str, path: str, headers: dict[bytes, bytes], query: bytes
) -> tuple[int, str] | None:
    """Why a request is refused before routing (status, message), or None."""
    host: str = emu.host
    if _is_loopback(host):
        port = emu.port
        shown = f"[{host}]" if ":" in host else host
        allowed = {f"{name}:{port}" for name in (shown, "127.0.0.1", "localhost", "[::1]")}
        sent = headers.get(b"host", b"").decode("latin-1").strip().lower()
        if sent not in allowed:
            return 403, (
                f"Host {sent!r} is not this emulator's address ({shown}:{port}); the nbbatch "
                "emulator answers only requests addressed to its loopback address (a web page "
                "reaching it under another name is refused). Use its url as the base_url."
            )
    token: str | None = emu.token
    if token is None or (method == "GET" and path == IDENTIFY_PATH):
        return None
    expected = token.encode()
    # compare_digest: the time taken says nothing about how much of a guess was right.
    if any(hmac.compare_digest(key, expected) for key in _presented_keys(headers)):
        return None
    if _upload_chunk(emu, method, path, query):
        return None
    return 401, (
        "This nbbatch background emulator answers only its owner: send the key kept in "
        "its home's emulator/secret file (nbbatch does so by itself for provider='local'; "
        "the file is readable by the home's owner only)."
    )


def _identify(emu: Any, scope: Scope) -> Response:
    """The answer to ``GET /nbbatch/identify?nonce=N``: proof that this emulator holds the
    token, bound to its pid and port, so a client learns whether the listener is its own
    emulator without sending the token to a stranger on a reused port."""
    nonce = QueryParams(scope.get("query_string", b"")).get("nonce", "")
    if not 16 <= len(nonce) <= 128 or not (nonce.isascii() and nonce.isalnum()):
        return JSONResponse(
            openai_error_body(
                "nonce must be 16 to 128 letters or digits", "invalid_request_error", "nonce", None
            ),
            status_code=400,
        )
    pid = os.getpid()
    proof = identity_proof(emu.token, pid, emu.port, nonce)
    return JSONResponse({"object": "nbbatch.identity", "pid": pid, "proof": proof})


def _request_id(request: Request) -> str:
    return str(request.scope.get("nbbatch_request_id", ""))


def _asked_by_anthropic(request: Request) -> bool:
    """Whether a request to a path both APIs have comes from an Anthropic client."""
    return "anthropic-version" in request.headers


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(
        request.url.path,
        exc.status,
        exc.message,
        _request_id(request),
        type=exc.type,
        param=exc.param,
        code=exc.code,
        headers=exc.headers,
        anthropic=_asked_by_anthropic(request),
        details=exc.details,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = (
        f"Unknown route {request.method} {request.url.path} (nbbatch emulator). "
        "OpenAI clients need base_url '.../v1', Anthropic clients the bare server URL."
        if exc.status_code == 404
        else str(exc.detail)
    )
    return error_response(request.url.path, exc.status_code, message, _request_id(request))


async def _crash(request: Request, exc: Exception) -> Response:
    return error_response(
        request.url.path,
        500,
        f"nbbatch emulator internal error: {type(exc).__name__}: {exc}",
        _request_id(request),
        headers={"x-should-retry": "false"},
    )


def _by_api(
    openai_handler: Callable[[Request], Awaitable[Response]],
    anthropic_handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """One handler for a path both APIs have: the Anthropic SDK (and Anthropic's
    documented curl form) always sends ``anthropic-version``, OpenAI's never does."""

    async def handler(request: Request) -> Response:
        if "anthropic-version" in request.headers:
            return await anthropic_handler(request)
        return await openai_handler(request)

    return handler


def build_app(store: Store) -> Starlette:
    """The starlette application serving both APIs from ``store``."""
    shared = [
        # Anthropic's Files API shares OpenAI's paths (listed first: they win).
        Route("/v1/files", _by_api(_openai.create_file, _anthropic_files.upload), methods=["POST"]),
        Route(
            "/v1/files", _by_api(_openai.list_files, _anthropic_files.list_files), methods=["GET"]
        ),
        Route(
            "/v1/files/{file_id}",
            _by_api(_openai.retrieve_file, _anthropic_files.retrieve),
            methods=["GET"],
        ),
        Route(
            "/v1/files/{file_id}",
            _by_api(_openai.delete_file, _anthropic_files.delete),
            methods=["DELETE"],
        ),
        Route(
            "/v1/files/{file_id}/content",
            _by_api(_openai.file_content, _anthropic_files.download),
            methods=["GET"],
        ),
        Route("/v1/models", _by_api(_openai.list_models, _anthropic.list_models), methods=["GET"]),
        Route(
            "/v1/models/{model}",
            _by_api(_openai.retrieve_model, _anthropic.retrieve_model),
            methods=["GET"],
        ),
    ]
    app = Starlette(
        routes=[
            *shared,
            *_openai.routes,
            *_anthropic.routes,
            *_gemini.routes,
            # OpenAI-compatible services, each under its own prefix (see their modules).
            Mount(_groq.PREFIX + "/openai", routes=_groq.routes),
            Mount(_together.PREFIX, routes=_together.routes),
            _azure.mount,
            *_mistral.routes,
            *_bedrock.routes,
        ],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _crash},
    )
    app.state.store = store
    return app


class Server:
    """uvicorn serving an app on a pre-bound socket, in a daemon thread."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.port: int = self.socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_config=None,  # never reconfigure the host process's logging
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            http="h11",
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self.socket]},
            name=f"nbbatch-emulator-{self.port}",
            daemon=True,
        )

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; return once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.socket.close()
                raise RuntimeError("the nbbatch emulator's HTTP server did not start")
            time.sleep(0.005)

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down (closing idle keep-alive connections) and join the thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.socket.close()
