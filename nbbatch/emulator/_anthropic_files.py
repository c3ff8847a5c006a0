"""Anthropic's Files API (``/v1/files`` with ``anthropic-version``), in Anthropic's shapes.

OpenAI's Files API has the same paths; the server tells the two apart by the
``anthropic-version`` header every Anthropic request carries (see :mod:`._server`). The
shapes are the API reference's (platform.claude.com/docs/en/api/files-create and its
siblings) and the official SDK's ``FileMetadata`` / ``DeletedFile`` types:
``{"id": "file_...", "type": "file", "filename", "mime_type", "size_bytes",
"created_at", "downloadable"}``; a list is ``{"data", "has_more", "first_id",
"last_id", "next_page"}`` (newest first); a deleted file ``{"id", "type": "file_deleted"}``.
A file one uploaded cannot be downloaded, only files the API itself made (the Files
guide, platform.claude.com/docs/en/build-with-claude/files, "Downloading files"), so
every download from the emulator is refused with that reason.
"""

from __future__ import annotations

import mimetypes
import secrets
import string
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ._openai import _copy_limited
from ._state import Store, StoredFile
from ._wire import ApiError, JSONResponse, rfc3339

#: The purpose Anthropic's files are stored under (OpenAI's routes never show them).
PURPOSE = "anthropic"
#: The Files API takes files up to 500 MB (platform.claude.com/docs/en/api/overview,
#: "Request size limits").
MAX_FILE_BYTES = 500 * 1024 * 1024
_ID_CHARS = string.ascii_letters + string.digits


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _new_id() -> str:
    return "file_" + "".join(secrets.choice(_ID_CHARS) for _ in range(24))


def metadata(f: StoredFile) -> dict[str, Any]:
    """A file as Anthropic's API describes it."""
    mime = mimetypes.guess_type(f.filename)[0] or "application/octet-stream"
    return {
        "id": f.id,
        "type": "file",
        "filename": f.filename,
        "mime_type": mime,
        "size_bytes": f.bytes,
        "created_at": rfc3339(f.created_at),
        "downloadable": False,
    }


def _file_or_404(store: Store, file_id: str) -> StoredFile:
    f = store.get_file(file_id)
    if f is None or f.purpose != PURPOSE:
        raise ApiError(404, f"File not found: {file_id}", type="not_found_error")
    return f


async def upload(request: Request) -> Response:
    """``POST /v1/files`` (multipart ``file``)."""
    store = _store(request)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_FILE_BYTES:
        raise ApiError(
            413,
            f"Request exceeds the maximum allowed number of bytes ({MAX_FILE_BYTES}).",
            type="request_too_large",
        )
    async with request.form(max_part_size=1024 * 1024) as form:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "file: Field required")
        path = store.new_path("anthropic-file-")
        size = await run_in_threadpool(_copy_limited, upload.file, path, MAX_FILE_BYTES)
        filename = upload.filename or "upload"
    stored = store.add_upload(_new_id(), filename, PURPOSE, path, size)
    return JSONResponse(metadata(stored))


async def list_files(request: Request) -> Response:
    """``GET /v1/files``: newest first, ``limit`` (1-1000, default 20) a page, the next
    page named by ``page`` (or the older ``after_id`` / ``before_id`` cursors)."""
    store = _store(request)
    params = request.query_params
    try:
        limit = int(params.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 1000:
        raise ApiError(400, "limit: Input should be between 1 and 1000")
    files = sorted((f for f in store.list_files() if f.purpose == PURPOSE), key=lambda f: -f.seq)
    ids = [f.id for f in files]
    after = params.get("page") or params.get("after_id")
    before = params.get("before_id")
    if after in ids:
        files = files[ids.index(after) + 1 :]
    elif before in ids:
        files = files[: ids.index(before)][-limit:]
    page, more = files[:limit], len(files) > limit
    return JSONResponse(
        {
            "data": [metadata(f) for f in page],
            "has_more": more,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
            "next_page": page[-1].id if page and more else None,
        }
    )


async def retrieve(request: Request) -> Response:
    """``GET /v1/files/{file_id}``: the file's metadata."""
    return JSONResponse(metadata(_file_or_404(_store(request), request.path_params["file_id"])))


async def delete(request: Request) -> Response:
    """``DELETE /v1/files/{file_id}``."""
    store = _store(request)
    file_id = request.path_params["file_id"]
    _file_or_404(store, file_id)
    store.delete_file(file_id)
    return JSONResponse({"id": file_id, "type": "file_deleted"})


async def download(request: Request) -> Response:
    """``GET /v1/files/{file_id}/content``: refused for uploaded files."""
    f = _file_or_404(_store(request), request.path_params["file_id"])
    raise ApiError(
        400,
        f"File {f.id} is not downloadable: only files created by the API (code execution, "
        "skills) can be downloaded, not uploaded ones.",
    )
