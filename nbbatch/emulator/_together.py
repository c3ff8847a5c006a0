"""Together AI's batch API as the ``together`` SDK sees it, served under ``/together``.

The SDK's base URL is the server's root (``https://api.together.ai``) and its paths
start with ``/v1`` (together 3.1), so a client made with ``base_url=emu.url +
"/together"`` reaches the routes below. Batches run as OpenAI batches (the input and
output lines are OpenAI's); what differs is served here:

- uploads go the SDK's way (together/lib/resources/files.py): ``POST /v1/files`` with
  the file's name, type, purpose and checksum answers ``302`` with the storage URL in
  ``Location`` and the file id in ``X-Together-File-Id``; the bytes are ``PUT`` there
  without the API key (a real one is a signed storage URL; here a one-time token in the
  URL is the credential, as for Gemini's upload URLs); ``POST
  /v1/files/{id}/preprocess`` then makes the file. Batch inputs have purpose
  ``"batch-api"``;
- the batch object is Together's (together/types/batch_job.py): upper-case statuses
  ``VALIDATING, IN_PROGRESS, COMPLETED, FAILED, EXPIRED, CANCELLED``
  (https://docs.together.ai/docs/inference/batch/manage), ``progress`` in percent,
  ISO times, ``error`` text, no request counts, no metadata; create answers
  ``{"job": ..., "warning": null}`` and the list is a bare JSON array;
- the completion window is 24 hours and "cannot be changed"
  (https://docs.together.ai/docs/inference/batch/overview): any other is refused;
- an output file's lines are ``{"id": "br_...", "custom_id", "response": {"status_code",
  "body"}}``: OpenAI's without ``error`` and ``request_id``. That is the shape of a real
  output file loaded in Together's own cookbook (togethercomputer/together-cookbook,
  Evals/Batch_Inference_Evals.ipynb, "Step 3": its columns are ``id`` (``br_...``),
  ``custom_id`` and ``response`` ``{'status_code': 200, 'body': {'choices': ...}}``);
  the docs say only that output lines carry the ``custom_id`` and come in any order
  (docs.together.ai/docs/batch-inference, "Retrieving the batch results"). Error-file
  lines are not shown anywhere we read: they stay OpenAI's;
- ``GET /v1/models`` is a bare JSON array of ``{id, object, created, type,
  display_name, ...}`` (https://docs.together.ai/reference/models), of genai-prices'
  ``together`` models.
"""

from __future__ import annotations

import datetime as _dt
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import _compat, _models, _openai
from ._state import Store, StoredFile
from ._wire import ApiError, JSONResponse, showing

PREFIX = "/together"
KIND = "together"
#: The purposes the SDK's FilePurpose type allows (together/types/file_purpose.py).
PURPOSES = ("fine-tune", "calibration", "eval", "batch-api")
BATCH_PURPOSE = "batch-api"
#: "Up to 100 MB per input file" (the overview page's rate limits).
MAX_INPUT_BYTES = 100 * 1024 * 1024

_STATUS = {
    "validating": "VALIDATING",
    "in_progress": "IN_PROGRESS",
    "finalizing": "IN_PROGRESS",  # Together names no finalizing step
    "cancelling": "IN_PROGRESS",  # nor a cancelling one: it runs until it stops
    "completed": "COMPLETED",
    "failed": "FAILED",
    "expired": "EXPIRED",
    "cancelled": "CANCELLED",
}
_UPLOAD_PATH = re.compile(rf"^{PREFIX}/v1/files/([A-Za-z0-9][A-Za-z0-9._-]*)/upload$")


@dataclass
class _Pending:
    """An upload between its start and its preprocess call."""

    token: str
    filename: str
    purpose: str
    path: Path | None = None
    size: int = 0


def _key(file_id: str) -> str:
    return f"together:{file_id}"


def upload_allowed(store: Store, method: str, path: str, query: bytes) -> bool:
    """Whether a keyless request puts bytes to an upload URL this emulator handed out
    (its token, 128 random bits, given only in answer to a request with the key)."""
    found = _UPLOAD_PATH.match(path) if method == "PUT" else None
    if found is None:
        return False
    pending = store.uploads.get(_key(found.group(1)))
    token = QueryParams(query).get("token") or ""
    return isinstance(pending, _Pending) and hmac.compare_digest(pending.token, token)


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _iso(store: Store, t: float | None) -> str | None:
    if t is None:
        return None
    return _dt.datetime.fromtimestamp(store.clock.unix(t), _dt.UTC).isoformat()


# =================================================================== files


def file_json(f: StoredFile) -> dict[str, Any]:
    """A file as together/types/file_response.py reads it."""
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "FileType": "jsonl",
        "purpose": f.purpose if f.purpose in PURPOSES else BATCH_PURPOSE,
        "processing_status": "COMPLETED",
    }


async def start_upload(request: Request) -> Response:
    """``POST /v1/files``: the storage URL to put the bytes to, as a 302."""
    store = _store(request)
    async with request.form() as form:
        purpose = form.get("purpose")
        name = form.get("file_name")
        kind = form.get("file_type")
    if not isinstance(purpose, str) or purpose not in PURPOSES:
        raise ApiError(400, f"purpose must be one of {list(PURPOSES)}, got {purpose!r}.")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "Missing required parameter: 'file_name'.", param="file_name")
    if kind != "jsonl":
        raise ApiError(400, f"file_type must be 'jsonl' for a batch input, got {kind!r}.")
    file_id = f"file-{uuid.uuid4()}"
    token = secrets.token_urlsafe(16)
    with store.lock:
        store.uploads[_key(file_id)] = _Pending(token, name, purpose)
    url = request.url
    location = f"{url.scheme}://{url.netloc}{PREFIX}/v1/files/{file_id}/upload?token={token}"
    return Response(status_code=302, headers={"Location": location, "X-Together-File-Id": file_id})


async def put_upload(request: Request) -> Response:
    """``PUT`` of the bytes to the storage URL (checked by :func:`upload_allowed`)."""
    store = _store(request)
    file_id = request.path_params["file_id"]
    pending = store.uploads.get(_key(file_id))
    if not isinstance(pending, _Pending) or pending.path is not None:
        raise ApiError(404, f"No upload in progress for {file_id}.")
    path = store.new_path("upload-")
    size = 0
    with path.open("wb") as out:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_INPUT_BYTES:
                out.close()
                path.unlink(missing_ok=True)
                raise ApiError(400, f"File is too large; the limit is {MAX_INPUT_BYTES} bytes.")
            out.write(chunk)
    pending.path, pending.size = path, size
    return Response(status_code=200)


async def preprocess(request: Request) -> Response:
    """``POST /v1/files/{id}/preprocess``: the uploaded bytes become the file."""
    store = _store(request)
    file_id = request.path_params["file_id"]
    with store.lock:
        pending = store.uploads.pop(_key(file_id), None)
    if not isinstance(pending, _Pending) or pending.path is None:
        raise ApiError(404, f"No uploaded bytes for file {file_id}.")
    stored = store.add_upload(
        file_id, pending.filename, pending.purpose, pending.path, pending.size
    )
    return JSONResponse(file_json(stored))


def _file_or_404(store: Store, file_id: str) -> StoredFile:
    f = store.get_file(file_id)
    if f is None or f.purpose in ("anthropic", "gemini"):
        raise ApiError(404, f"No such file: {file_id}", param="id")
    return f


def _output_lines(raw: bytes) -> bytes:
    """An output file's OpenAI lines in Together's shape (see the module's docstring)."""
    out = bytearray()
    for line in raw.splitlines():
        row = orjson.loads(line)
        response = row.get("response") or {}
        suffix = str(row.get("id", "")).removeprefix("batch_req_")
        out += orjson.dumps(
            {
                "id": f"br_{suffix}",
                "custom_id": row.get("custom_id"),
                "response": {
                    "status_code": response.get("status_code"),
                    "body": response.get("body"),
                },
            }
        )
        out += b"\n"
    return bytes(out)


def _is_output(store: Store, f: StoredFile) -> bool:
    """Whether ``f`` is the output file of one of Together's batches."""
    if f.purpose != "batch_output" or not f.filename.endswith("_output.jsonl"):
        return False
    batch_id = f.filename.removesuffix("_output.jsonl")
    return any(b.id == batch_id for b in _compat.batches_of(store, KIND))


async def file_content(request: Request) -> Response:
    """``GET /v1/files/{id}/content``: an output file in Together's line shape."""
    store = _store(request)
    f = store.get_file(request.path_params["file_id"])
    if f is None or not _is_output(store, f):
        return await _openai.file_content(request)
    data = await run_in_threadpool(lambda: _output_lines(f.path.read_bytes()))
    return Response(data, media_type="application/octet-stream")


async def retrieve_file(request: Request) -> Response:
    return JSONResponse(file_json(_file_or_404(_store(request), request.path_params["file_id"])))


async def delete_file(request: Request) -> Response:
    store = _store(request)
    file_id = request.path_params["file_id"]
    _file_or_404(store, file_id)
    store.delete_file(file_id)
    return JSONResponse({"id": file_id, "deleted": True})


# =================================================================== batches


def check_window(window: Any) -> None:
    """Together's window is 24 hours; it "cannot be changed"."""
    if window not in (None, "24h"):
        raise ApiError(
            400,
            f"completion_window cannot be changed from '24h', got {window!r}.",
            param="completion_window",
        )


def batch_json(store: Store, b: Any, t: float) -> dict[str, Any]:
    """A batch as together/types/batch_job.py reads it, from the OpenAI batch's state."""
    d = _openai.batch_json(store, b, t)
    counts = d["request_counts"]
    total = counts["total"] or 0
    done = counts["completed"] + counts["failed"]
    errors = (d.get("errors") or {}).get("data") or []
    source = store.get_file(d["input_file_id"])
    deadline = d.get("expires_at")
    ended = b.ended_at(t)
    return {
        "id": d["id"],
        "user_id": "emulator",
        "endpoint": d["endpoint"],
        "input_file_id": d["input_file_id"],
        "output_file_id": d["output_file_id"],
        "error_file_id": d["error_file_id"],
        "file_size_bytes": source.bytes if source is not None else None,
        "model_id": d.get("model"),
        "status": _STATUS[d["status"]],
        "progress": 100.0 if ended is not None else (100.0 * done / total if total else 0.0),
        "error": "; ".join(str(e.get("message")) for e in errors) or None,
        "created_at": _iso(store, b.created),
        "completed_at": _iso(store, ended),
        "job_deadline": None
        if deadline is None
        else _dt.datetime.fromtimestamp(deadline, _dt.UTC).isoformat(),
    }


async def create_batch(request: Request) -> Response:
    store = _store(request)
    body = await _openai.json_body(request)

    def run() -> dict[str, Any]:
        b = _compat.create_batch(
            store, KIND, body, purpose=BATCH_PURPOSE, check_window=check_window
        )
        return {"job": batch_json(store, b, store.now()), "warning": None}

    return JSONResponse(await run_in_threadpool(run))


retrieve_batch = showing(_compat.finder(KIND), batch_json, "batch_id")


async def cancel_batch(request: Request) -> Response:
    store = _store(request)
    batch_id = request.path_params["batch_id"]
    b = _compat.batch_or_404(store, KIND, batch_id)

    def run() -> dict[str, Any]:
        _openai.cancel_sync(store, batch_id, KIND)
        return batch_json(store, b, store.now())

    return JSONResponse(await run_in_threadpool(run))


async def list_batches(request: Request) -> Response:
    store = _store(request)

    def run() -> list[dict[str, Any]]:
        t = store.now()
        return [batch_json(store, b, t) for b in _compat.batches_of(store, KIND)]

    return JSONResponse(await run_in_threadpool(run))


# =================================================================== models


async def list_models(request: Request) -> Response:
    store = _store(request)
    data = [
        {
            "id": m.id,
            "object": "model",
            "created": m.created,
            "type": "chat",
            "display_name": m.display_name,
            "organization": m.id.split("/")[0] if "/" in m.id else "Together",
        }
        for m in _models.catalogue(KIND, store.knobs.models)
    ]
    return JSONResponse(data)


routes = [
    Route("/v1/files", start_upload, methods=["POST"]),
    Route("/v1/files/{file_id}/upload", put_upload, methods=["PUT"]),
    Route("/v1/files/{file_id}/preprocess", preprocess, methods=["POST"]),
    Route("/v1/files/{file_id}", retrieve_file, methods=["GET"]),
    Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
    Route("/v1/batches", create_batch, methods=["POST"]),
    Route("/v1/batches", list_batches, methods=["GET"]),
    Route("/v1/batches/{batch_id}", retrieve_batch, methods=["GET"]),
    Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/chat/completions", _compat.realtime(KIND), methods=["POST"]),
]
