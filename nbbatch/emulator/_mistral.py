"""Mistral's Files, Batch jobs, Models and chat endpoints as its SDK (``mistralai``) sees
them, served under :data:`PREFIX` (a client made with ``server_url=emu.url + "/mistral"``).

Routes and field names are the SDK's (mistralai 3.8: ``client/files.py``, ``jobs.py``,
``models_.py``, ``models/batchjob.py``); the job's life cycle is the emulator's shared
one (:class:`~._state.BatchRecord`), named in Mistral's words: QUEUED, RUNNING,
SUCCESS, FAILED, TIMEOUT_EXCEEDED, CANCELLATION_REQUESTED, CANCELLED. Replies come
from the shared responder through the OpenAI chat reply builder (Mistral's chat
completion has the same ``choices`` / ``usage`` shape), reshaped to Mistral's fields.

Input lines are ``{"custom_id", "body"}`` (docs.mistral.ai/capabilities/batch); result
lines ``{"id", "custom_id", "response": {"status_code", "body"}, "error"}`` (the SDK's
example reads ``res["response"]["body"]``), successes in the output file and failures in
the error file. A job stopped early (cancelled, or its ``timeout_hours`` ran out) lists
only the requests that ran. Error bodies are Mistral's flat ones, ``{"object": "error",
"message", "type", "param", "code"}`` (quoted in github.com/tmc/langchaingo/issues/1233),
and ``{"detail": [...]}`` for a body with a field the API does not take (422
"extra_forbidden", quoted in github.com/Gitlawb/openclaude/issues/739).

Files live in a table of their own (per store), apart from OpenAI's.
"""

from __future__ import annotations

import shutil
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import _models
from ._faults import FAIL_MARKER, TRANSIENT_MARKER, Fate, RowInfo, int_hash
from ._openai import LinesBatch, Outcome, Run
from ._openai_replies import answer
from ._state import BatchRecord, Store, StoredFile, iter_lines, schedule
from ._validate_openai import inspect
from ._wire import (
    ApiError,
    JSONResponse,
    creating,
    downloading,
    json_body,
    listing_models,
    showing,
    showing_model,
)

PREFIX = "/mistral"
#: The endpoints the SDK's ``APIEndpoint`` names; the emulator serves the first.
ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/fim/completions",
    "/v1/moderations",
    "/v1/chat/moderations",
    "/v1/ocr",
    "/v1/classifications",
    "/v1/chat/classifications",
    "/v1/conversations",
    "/v1/audio/transcriptions",
)
SERVED_ENDPOINTS = ENDPOINTS[:1]
PURPOSES = ("fine-tune", "batch", "ocr", "agentic_safety")  # the SDK's FilePurpose
# "up to 1M requests" per job (docs.mistral.ai/capabilities/batch); files "can be a
# maximum of 512 MB" (the SDK's files.upload docstring). Module constants: tests lower them.
MAX_REQUESTS = 1_000_000
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
#: The fields of a chat completion request (the SDK's ChatCompletionRequest, 3.8); a
#: body with any other is refused, as Mistral's validator refuses it.
CHAT_FIELDS = frozenset(
    {
        *("model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop"),
        *("random_seed", "metadata", "response_format", "tools", "tool_choice"),
        *("presence_penalty", "frequency_penalty", "min_tokens", "repetition_penalty"),
        *("top_k", "logprobs", "top_logprobs", "prompt_logprobs", "top_prompt_logprobs"),
        *("n", "prediction", "parallel_tool_calls", "reasoning_effort", "prompt_mode"),
        *("guardrails", "prompt_cache_key", "service_tier", "safe_prompt"),
    }
)
#: Status of the shared life cycle -> Mistral's word.
STATUS = {
    "validating": "QUEUED",
    "in_progress": "RUNNING",
    "finalizing": "RUNNING",
    "completed": "SUCCESS",
    "failed": "FAILED",
    "expired": "TIMEOUT_EXCEEDED",
    "cancelling": "CANCELLATION_REQUESTED",
    "cancelled": "CANCELLED",
}
SERVER_ERROR = "Internal server error (simulated by the nbbatch emulator); retry."


class MistralError(Exception):
    """An error answer in Mistral's shape (``body``) with its HTTP ``status``."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message") or body)
        self.status = status
        self.body = body


def error_body(message: str, type: str, code: str | None = None) -> dict[str, Any]:
    """Mistral's flat error body."""
    return {"object": "error", "message": message, "type": type, "param": None, "code": code}


def _refuse(status: int, message: str, type: str = "invalid_request_error") -> MistralError:
    return MistralError(status, error_body(message, type))


def _extra_forbidden(name: str, value: Any) -> dict[str, Any]:
    return {
        "detail": [
            {
                "type": "extra_forbidden",
                "loc": ["body", name],
                "msg": "Extra inputs are not permitted",
                "input": value,
            }
        ]
    }


# =================================================================== files

_FILES: weakref.WeakKeyDictionary[Store, dict[str, StoredFile]] = weakref.WeakKeyDictionary()


def _files(store: Store) -> dict[str, StoredFile]:
    with store.lock:
        return _FILES.setdefault(store, {})


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def file_json(f: StoredFile, lines: int | None = None) -> dict[str, Any]:
    """A file object (the SDK's CreateFileResponse / RetrieveFileResponse)."""
    sample = {"batch": "batch_request", "batch_result": "batch_result"}.get(f.purpose)
    return {
        "id": f.id,
        "object": "file",
        "size_bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": "batch" if f.purpose.startswith("batch") else f.purpose,
        "sample_type": sample or ("batch_error" if f.purpose == "batch_error" else "instruct"),
        "source": "mistral" if f.purpose != "batch" else "upload",
        "num_lines": lines,
        "mimetype": "application/jsonl",
        "expires_at": f.expires_at,
    }


def _copy(src: BinaryIO, dest: Path) -> int:
    with dest.open("wb") as out:
        shutil.copyfileobj(src, out, 1024 * 1024)
        return out.tell()


async def upload(request: Request) -> Response:
    store = _store(request)
    async with request.form(max_part_size=1024 * 1024) as form:
        purpose = form.get("purpose") or "fine-tune"
        upload = form.get("file")
        if not isinstance(purpose, str) or purpose not in PURPOSES:
            raise _refuse(422, f"purpose must be one of {list(PURPOSES)}, got {purpose!r}.")
        if upload is None or isinstance(upload, str):
            raise _refuse(422, "Missing required field: 'file'.")
        path = store.new_path("mistral-upload-")
        size = await run_in_threadpool(_copy, upload.file, path)
        filename = upload.filename or "upload.jsonl"
    if size > MAX_UPLOAD_BYTES:
        path.unlink(missing_ok=True)
        raise _refuse(413, f"File is too large: {size} bytes; the limit is {MAX_UPLOAD_BYTES}.")
    stored = StoredFile(
        id=str(uuid.uuid4()),
        filename=filename,
        purpose=purpose,
        bytes=size,
        created_at=int(store.clock.unix(store.now())),
        expires_at=None,
        path=path,
        seq=store.next_seq(),
    )
    with store.lock:
        _files(store)[stored.id] = stored
    store.count("files_uploaded")
    return JSONResponse(file_json(stored))


def _file_or_404(store: Store, file_id: str) -> StoredFile:
    f = _files(store).get(file_id)
    if f is None:
        raise _refuse(404, f"File {file_id} not found.", "not_found")
    return f


async def retrieve_file(request: Request) -> Response:
    f = _file_or_404(_store(request), request.path_params["file_id"])
    return JSONResponse({**file_json(f), "deleted": False})


async def delete_file(request: Request) -> Response:
    store = _store(request)
    file_id = request.path_params["file_id"]
    with store.lock:
        f = _files(store).pop(file_id, None)
        if f is None:
            raise _refuse(404, f"File {file_id} not found.", "not_found")
        running = any(
            isinstance(b, MistralBatch) and b.input_path == f.path and b.outcome is None
            for b in store.list_batches("mistral")
        )
        if not running:
            f.path.unlink(missing_ok=True)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


download = downloading(_file_or_404)


# =================================================================== batch jobs


@dataclass(eq=False)
class MistralBatch(LinesBatch):
    endpoint: str = ""
    model: str = ""
    input_files: list[str] = field(default_factory=list)
    metadata: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    problems: dict[int, dict[str, Any]] = field(default_factory=dict)  # line -> 422 body

    def line(
        self, i: int, raw: bytes, fate: Fate, stopped: str, run: Run
    ) -> tuple[dict[str, Any] | None, bool]:
        """A job stopped early lists only the requests that ran: a row that never ran
        (or that the simulated provider bug ran without a line) has no line."""
        if stopped or fate in (Fate.EXPIRE, Fate.MISSING):
            return None, False
        row = orjson.loads(raw)
        line_id = str(uuid.UUID(int=int_hash(self.id, i) << 64 | int_hash(self.id, -i - 1)))
        status, body = self._reply(i, row.get("body") or {}, fate, run.created, line_id)
        if status < 400:
            run.completed += 1
        line = {
            "id": line_id,
            "custom_id": row["custom_id"],
            "response": {"status_code": status, "body": body},
            "error": None if status < 400 else body,
        }
        return line, status >= 400

    def _reply(
        self, i: int, body: dict[str, Any], fate: Fate, created: int, line_id: str
    ) -> tuple[int, dict[str, Any]]:
        if i in self.problems:
            return 422, self.problems[i]
        if fate == Fate.FAIL:
            message = f"Request rejected by the nbbatch emulator ({FAIL_MARKER})."
            return 400, error_body(message, "invalid_request_error")
        if fate == Fate.TRANSIENT_ERROR:
            return 500, error_body(SERVER_ERROR, "internal_server_error")
        return chat_reply({**body, "model": self.model}, fate, created, line_id, self.store)

    def describe(self, kind: str, path: Path, size: int) -> StoredFile:
        assert self.store is not None
        return StoredFile(
            id=str(uuid.uuid4()),
            filename=f"{self.id}_{kind}.jsonl",
            purpose="batch_result" if kind == "output" else "batch_error",
            bytes=size,
            created_at=int(self.store.clock.unix(self.processed)),
            expires_at=None,
            path=path,
            seq=0,
        )

    def keep(self, f: StoredFile) -> None:
        """Mistral's files live in their own table."""
        assert self.store is not None
        with self.store.lock:
            _files(self.store)[f.id] = f


def chat_reply(
    body: dict[str, Any], fate: Fate, created: int, seed_id: str, store: Store | None
) -> tuple[int, dict[str, Any]]:
    """(status, body) of one chat request that passed the checks, in Mistral's shape."""
    # max_tokens is Mistral's name; the OpenAI reply builder reads it too.
    ans = answer(
        "/v1/chat/completions",
        body,
        fate,
        created,
        seed_id,
        responder=store.responder if store is not None else None,
        checked=True,
    )
    if ans.status >= 400:
        message = str((ans.body.get("error") or {}).get("message") or "request refused")
        return ans.status, error_body(message, "invalid_request_error")
    choice = ans.body["choices"][0]
    usage = ans.body["usage"]
    return 200, {
        "id": uuid.UUID(int=int_hash(seed_id, "chat") << 64 | int_hash(seed_id, 1)).hex,
        "object": "chat.completion",
        "model": body["model"],
        "created": created,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": choice["message"]["content"],
                    "tool_calls": None,
                },
                "finish_reason": choice["finish_reason"],
            }
        ],
        "usage": {
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
        },
    }


def body_problem(body: Any) -> dict[str, Any] | None:
    """The 422 body Mistral answers a chat request with when a field is not one it
    takes or ``messages`` is missing; None when the body passes."""
    if not isinstance(body, dict):
        return {
            "detail": [
                {"type": "dict_type", "loc": ["body"], "msg": "Input should be a valid dictionary"}
            ]
        }
    for name, value in body.items():
        if name not in CHAT_FIELDS:
            return _extra_forbidden(name, value)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return {
            "detail": [{"type": "missing", "loc": ["body", "messages"], "msg": "Field required"}]
        }
    return None


def _unknown_model(model: Any) -> MistralError:
    # The body of github.com/tmc/langchaingo/issues/1233 ("Invalid model: ...",
    # type invalid_model, code "1500"); its status is not quoted: 400 is ours.
    return MistralError(400, error_body(f"Invalid model: {model}", "invalid_model", "1500"))


def _check_create(store: Store, body: Any) -> tuple[StoredFile, str]:
    if not isinstance(body, dict):
        raise _refuse(422, "The request body must be a JSON object.")
    endpoint = body.get("endpoint")
    if endpoint not in ENDPOINTS:
        raise _refuse(422, f"endpoint must be one of {list(ENDPOINTS)}, got {endpoint!r}.")
    if endpoint not in SERVED_ENDPOINTS:
        raise _refuse(
            400, f"The nbbatch emulator does not serve {endpoint}; it serves {SERVED_ENDPOINTS}."
        )
    if body.get("requests"):
        raise _refuse(400, "The nbbatch emulator takes input_files, not inline requests.")
    model = body.get("model")
    if not isinstance(model, str) or _models.find("mistral", model, store.knobs.models) is None:
        raise _unknown_model(model)
    files = body.get("input_files")
    if not isinstance(files, list) or len(files) != 1:
        raise _refuse(400, "The nbbatch emulator takes exactly one input file per job.")
    f = _files(store).get(str(files[0]))
    if f is None or f.purpose != "batch":
        raise _refuse(404, f"Input file {files[0]} not found, or not uploaded for 'batch'.")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _refuse(422, "metadata must be an object.")
    return f, model


@dataclass
class Input:
    """What reading a job's input file found: each row (marked when its body is refused,
    with the 422 it gets), and the file's errors (which fail the whole job)."""

    rows: list[RowInfo] = field(default_factory=list)
    problems: dict[int, dict[str, Any]] = field(default_factory=dict)  # line -> 422 body
    errors: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.errors = [{"message": message, "count": 1}]  # the SDK's BatchError


def read_input(path: Path, model: str) -> Input:
    """Check a job's input file line by line (``{"custom_id", "body"}``)."""
    found = Input()
    seen: set[str] = set()
    for i, raw in enumerate(iter_lines(path)):
        if i >= MAX_REQUESTS:
            found.fail(f"The job has more than {MAX_REQUESTS} requests.")
            return found
        try:
            row = orjson.loads(raw)
        except orjson.JSONDecodeError:
            found.fail(f"Line {i + 1} is not valid JSON.")
            return found
        cid = row.get("custom_id") if isinstance(row, dict) else None
        if not isinstance(cid, str) or not cid or cid in seen:
            found.fail(f"Line {i + 1}: custom_id missing or repeated.")
            return found
        seen.add(cid)
        body = row.get("body")
        problem = body_problem(body)
        if problem is None and body.get("model") not in (None, model):
            message = f"Invalid model: {body.get('model')} (the job's model is {model})"
            problem = error_body(message, "invalid_model", "1500")
        if problem is not None:
            found.problems[i] = problem
            found.rows.append(RowInfo(cid, 0, "", False, invalid=True))
            continue
        info = inspect("/v1/chat/completions", {**body, "model": model})
        found.rows.append(RowInfo(cid, 0, info.last_user, info.schema is not None))
    if not found.rows:
        found.fail("The input file is empty.")
    return found


def create_job_sync(store: Store, body: Any) -> dict[str, Any]:
    """``POST /v1/batch/jobs``: check, read the input file, and register the job."""
    f, model = _check_create(store, body)
    found = read_input(f.path, model)
    rows, problems, errors = found.rows, found.problems, found.errors
    t = store.now()
    invalid = bool(errors)
    n = 0 if invalid else len(rows)
    job = MistralBatch(
        **schedule(store, str(uuid.uuid4()), n, t),
        fates=bytearray() if invalid else store.fates("mistral", rows, store.knobs),
        invalid=invalid,
        store=store,
        endpoint=body["endpoint"],
        model=model,
        input_files=[f.id],
        input_path=f.path,
        metadata=body.get("metadata"),
        errors=errors,
        problems=problems,
    )
    store.add_batch("mistral", job)
    return job_json(store, job, t)


def job_json(store: Store, b: BatchRecord, t: float) -> dict[str, Any]:
    """The BatchJob object as seen at clock time ``t``."""
    assert isinstance(b, MistralBatch)
    phase = b.phase(t)
    outcome: Outcome | None = store.outcome(b, t)
    if outcome is not None:
        succeeded, failed = outcome.completed, outcome.failed
    else:
        succeeded, failed = b.progress_counts(b.cancel_at if b.cancel_at is not None else t)
    ran = not b.invalid and t >= b.started and (b.cancel_at is None or b.cancel_at >= b.started)
    ended = b.ended_at(t)

    def unix(x: float | None) -> int | None:
        return None if x is None else int(store.clock.unix(x))

    return {
        "id": b.id,
        "object": "batch",
        "input_files": b.input_files,
        "metadata": b.metadata,
        "endpoint": b.endpoint,
        "model": b.model,
        "output_file": outcome.output.id if outcome and outcome.output else None,
        "error_file": outcome.errors.id if outcome and outcome.errors else None,
        "errors": b.errors,
        "outputs": None,
        "status": STATUS[phase],
        "created_at": unix(b.created),
        "total_requests": b.n,
        "completed_requests": succeeded + failed,
        "succeeded_requests": succeeded,
        "failed_requests": failed,
        "started_at": unix(b.started) if ran else None,
        "completed_at": unix(ended),
    }


def _job_or_404(store: Store, job_id: str) -> MistralBatch:
    b = store.get_batch("mistral", job_id)
    if not isinstance(b, MistralBatch):
        raise _refuse(404, f"Batch job {job_id} not found.", "not_found")
    return b


def _cancel_sync(store: Store, job_id: str) -> dict[str, Any]:
    with store.lock:
        b = _job_or_404(store, job_id)
        t = store.now()
        phase = b.phase(t)
        if phase in ("validating", "in_progress"):
            b.request_cancel(t)
        elif phase != "cancelling":
            raise _refuse(400, f"Batch job {job_id} cannot be cancelled: it is {STATUS[phase]}.")
    return job_json(store, b, t)


def _list_sync(store: Store, page: int, size: int, status: list[str]) -> dict[str, Any]:
    t = store.now()
    jobs = [job_json(store, b, t) for b in store.list_batches("mistral")]  # newest first
    if status:
        jobs = [j for j in jobs if j["status"] in status]
    return {"object": "list", "data": jobs[page * size : (page + 1) * size], "total": len(jobs)}


# =================================================================== handlers


def _handler(
    fn: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Answer a :class:`MistralError`, or an :class:`ApiError` of the shared helpers, in
    Mistral's shape (not the OpenAI one the shared error handler gives)."""

    async def handler(request: Request) -> Response:
        try:
            return await fn(request)
        except MistralError as exc:
            return JSONResponse(exc.body, status_code=exc.status)
        except ApiError as exc:
            body = error_body(exc.message, exc.type, exc.code)
            return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    return handler


async def cancel_job(request: Request) -> Response:
    store = _store(request)
    job_id = request.path_params["job_id"]
    return JSONResponse(await run_in_threadpool(_cancel_sync, store, job_id))


async def list_jobs(request: Request) -> Response:
    store = _store(request)
    query = request.query_params
    try:
        page = int(query.get("page", 0))
        size = int(query.get("page_size", 100))
    except ValueError:
        raise _refuse(422, "page and page_size must be integers.") from None
    status = query.getlist("status")
    return JSONResponse(await run_in_threadpool(_list_sync, store, page, max(size, 1), status))


def model_card(entry: _models.ModelEntry) -> dict[str, Any]:
    """A base model card (the SDK's BaseModelCard)."""
    return {
        "id": entry.id,
        "object": "model",
        "created": entry.created,
        "owned_by": "mistralai",
        "capabilities": {"completion_chat": True, "function_calling": True},
        "name": entry.display_name,
        "description": None,
        "aliases": [],
        "type": "base",
    }


def _no_such_model(model: str) -> MistralError:
    # Status ours (the quoted body is a chat request's, see _unknown_model).
    return MistralError(404, error_body(f"Invalid model: {model}", "invalid_model", "1500"))


list_models = listing_models("mistral", model_card)
retrieve_model = showing_model("mistral", model_card, "model_id", _no_such_model)


async def chat(request: Request) -> Response:
    """``POST /v1/chat/completions`` in real time."""
    store = _store(request)
    store.count("realtime_requests")  # the shared front counts only the paths it knows
    body = await json_body(request)
    problem = body_problem(body)
    if problem is not None:
        return JSONResponse(problem, status_code=422)
    if _models.find("mistral", str(body.get("model")), store.knobs.models) is None:
        raise _unknown_model(body.get("model"))
    info = inspect("/v1/chat/completions", body)
    fate = Fate.FAIL if FAIL_MARKER in info.last_user else Fate.OK
    if TRANSIENT_MARKER in info.last_user and store.realtime_overloaded(
        "mistral-realtime", info.last_user
    ):
        fate = Fate.TRANSIENT_ERROR
    created = int(store.clock.unix(store.now()))
    if fate == Fate.FAIL:
        message = f"Request rejected by the nbbatch emulator ({FAIL_MARKER})."
        raise MistralError(400, error_body(message, "invalid_request_error"))
    if fate == Fate.TRANSIENT_ERROR:
        raise MistralError(500, error_body(SERVER_ERROR, "internal_server_error"))
    status, reply = await run_in_threadpool(
        chat_reply, body, fate, created, uuid.uuid4().hex, store
    )
    return JSONResponse(reply, status_code=status)


def _route(path: str, fn: Callable[[Request], Awaitable[Response]], method: str) -> Route:
    return Route(PREFIX + path, _handler(fn), methods=[method])


routes = [
    _route("/v1/files", upload, "POST"),
    _route("/v1/files/{file_id}", retrieve_file, "GET"),
    _route("/v1/files/{file_id}", delete_file, "DELETE"),
    _route("/v1/files/{file_id}/content", download, "GET"),
    _route("/v1/batch/jobs", creating(create_job_sync), "POST"),
    _route("/v1/batch/jobs", list_jobs, "GET"),
    _route("/v1/batch/jobs/{job_id}", showing(_job_or_404, job_json, "job_id"), "GET"),
    _route("/v1/batch/jobs/{job_id}/cancel", cancel_job, "POST"),
    _route("/v1/models", list_models, "GET"),
    _route("/v1/models/{model_id}", retrieve_model, "GET"),
    _route("/v1/chat/completions", chat, "POST"),
]
