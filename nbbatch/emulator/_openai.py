"""OpenAI Files + Batches API (and the real-time endpoints) as the SDK sees them.

Wire shapes follow ``batch-protocols.md`` §2 and the OpenAPI subset: file objects,
batch objects with unix-second timestamps, cursor-paged lists, ``{"error": {...}}``
bodies, and output / error JSONL lines ``{id, custom_id, response, error}``.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import _models, _quotas, _responder, _validate_openai
from ._faults import (
    FAIL_MARKER,
    TRANSIENT_MARKER,
    Fate,
    RowInfo,
    int_hash,
)
from ._openai_replies import Answer, answer
from ._state import BatchRecord, Store, StoredFile, iter_lines, schedule, write_lines
from ._validate_openai import inspect
from ._wire import (
    NO_RETRY,
    ApiError,
    JSONResponse,
    creating,
    downloading,
    json_body,
    listing_models,
    new_id,
    showing,
    showing_model,
)

#: The ``endpoint`` values the SDK allows; the emulator serves the first three.
ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
SERVED_ENDPOINTS = ENDPOINTS[:3]
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
# Service limits (module constants so tests can lower them).
MAX_REQUESTS = 50_000
MAX_INPUT_BYTES = 200 * 1024 * 1024
MAX_EMBEDDING_INPUTS = 50_000
MAX_REPORTED_ERRORS = 100
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
DEFAULT_FILE_SECONDS = 30 * 24 * 3600

EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
CANCELLED_MESSAGE = "This request was not executed because the batch was cancelled."


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


# =================================================================== files


def file_json(f: StoredFile) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "expires_at": f.expires_at,
        "status_details": None,
    }


def _copy_limited(src: BinaryIO, dest: Path, limit: int) -> int:
    with dest.open("wb") as out:
        shutil.copyfileobj(src, out, 1024 * 1024)
        size = out.tell()
    if size > limit:
        dest.unlink(missing_ok=True)
        raise ApiError(
            400, f"File is too large: {size} bytes; the limit is {limit} bytes.", param="file"
        )
    return size


def _expiry(anchor: Any, seconds: Any, param: str) -> int:
    """Validate an ``expires_after`` pair and return its seconds."""
    if anchor != "created_at":
        raise ApiError(400, "expires_after.anchor must be 'created_at'.", param=f"{param}.anchor")
    try:
        value = int(seconds)
    except (TypeError, ValueError):
        value = -1
    if not 3600 <= value <= 2592000:
        raise ApiError(
            400, "expires_after.seconds must be between 3600 and 2592000.", param=f"{param}.seconds"
        )
    return value


async def create_file(request: Request) -> Response:
    store = _store(request)
    async with request.form(max_part_size=1024 * 1024) as form:
        purpose = form.get("purpose")
        upload = form.get("file")
        if not isinstance(purpose, str) or purpose not in UPLOAD_PURPOSES:
            raise ApiError(
                400,
                f"purpose must be one of {list(UPLOAD_PURPOSES)}, got {purpose!r}.",
                param="purpose",
            )
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "Missing required parameter: 'file'.", param="file")
        lifetime: int | None = DEFAULT_FILE_SECONDS if purpose == "batch" else None
        if "expires_after[anchor]" in form or "expires_after[seconds]" in form:
            lifetime = _expiry(
                form.get("expires_after[anchor]"),
                form.get("expires_after[seconds]"),
                "expires_after",
            )
        filename = upload.filename or "upload"
        if purpose == "batch" and not filename.lower().endswith(".jsonl"):
            # The service's refusal of a batch input not named *.jsonl, as quoted in
            # github.com/BerriAI/litellm/pull/37527 (type invalid_request_error, no
            # param or code); the Batch guide asks for a .jsonl file.
            raise ApiError(400, "Invalid file format for Batch API. Must be .jsonl")
        path = store.new_path("upload-")
        size = await run_in_threadpool(_copy_limited, upload.file, path, MAX_UPLOAD_BYTES)
    stored = store.add_upload(new_id("file-"), filename, purpose, path, size, lifetime)
    return JSONResponse(file_json(stored))


def _file_or_404(store: Store, file_id: str) -> StoredFile:
    f = store.get_file(file_id)
    if f is None or f.purpose == "anthropic":  # Anthropic's files are not OpenAI's
        raise ApiError(404, f"No such File object: {file_id}", param="id")
    return f


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be an integer between {low} and {high}.", param=name)
    return value


def _page(items: list[Any], after: str | None, limit: int) -> tuple[list[Any], bool]:
    """The ``limit`` items after the one with id ``after`` and whether more follow."""
    if after is not None:
        ids = [x.id for x in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    return items[:limit], len(items) > limit


async def list_files(request: Request) -> Response:
    store = _store(request)
    limit = _int_param(request, "limit", 10000, 1, 10000)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "order must be 'asc' or 'desc'.", param="order")
    files = sorted(
        (f for f in store.list_files() if f.purpose != "anthropic"),  # Anthropic's Files API
        key=lambda f: f.seq,
        reverse=order == "desc",
    )
    purpose = request.query_params.get("purpose")
    if purpose:
        files = [f for f in files if f.purpose == purpose]
    page, more = _page(files, request.query_params.get("after"), limit)
    return JSONResponse(
        {
            "object": "list",
            "data": [file_json(f) for f in page],
            # The OpenAPI schema makes both ids required strings, even for an empty page.
            "first_id": page[0].id if page else "",
            "last_id": page[-1].id if page else "",
            "has_more": more,
        }
    )


async def retrieve_file(request: Request) -> Response:
    return JSONResponse(file_json(_file_or_404(_store(request), request.path_params["file_id"])))


async def delete_file(request: Request) -> Response:
    store = _store(request)
    file_id = request.path_params["file_id"]
    if not store.delete_file(file_id):
        raise ApiError(404, f"No such File object: {file_id}", param="id")
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


file_content = downloading(_file_or_404)


# =================================================================== batches


@dataclass(frozen=True)
class Outcome:
    """What a finished OpenAI batch produced."""

    output: StoredFile | None
    errors: StoredFile | None
    completed: int
    failed: int
    usage: dict[str, Any]


def _usage(input_tokens: int = 0, output_tokens: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _never_ran(code: str) -> dict[str, Any]:
    """The line of a row the batch never ran (``code``: "cancelled" or "expired")."""
    message = CANCELLED_MESSAGE if code == "cancelled" else EXPIRED_MESSAGE
    return {"response": None, "error": {"code": f"batch_{code}", "message": message}}


@dataclass
class Run:
    """One run of a batch's rows: the replies' unix time, what the rows added up to
    (those that succeeded, a row the simulated provider bug leaves without a line
    included, and their tokens) and the prompt prefixes sent so far (prompt caching is
    per batch, in input order)."""

    created: int
    completed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    prefixes: set[int] = field(default_factory=set)


@dataclass(eq=False)
class LinesBatch(BatchRecord):
    """A batch whose input is a JSONL file of requests and whose results are two JSONL
    files in processing order, the lines that succeeded and the lines that failed:
    OpenAI's shape, which its compatible services and Mistral's batch jobs share.

    A subclass says what a row's line is (:meth:`line`), how a results file is named
    (:meth:`describe`) and where it is kept (:meth:`keep`).
    """

    store: Store | None = None
    input_path: Path | None = None

    def generate(self, cut: int | None, reason: str) -> Outcome:
        """Run every row that got to run and write the output and error files."""
        assert self.store is not None and self.input_path is not None
        stopped = self.stopped(cut)
        lines: list[bytes | None] = [None] * self.n
        is_error = bytearray(self.n)
        run = Run(int(self.store.clock.unix(self.started)))
        for i, raw in enumerate(iter_lines(self.input_path)):
            if i >= self.n:
                break
            line, failed = self.line(i, raw, Fate(self.fates[i]), reason if stopped[i] else "", run)
            if line is not None:
                lines[i] = orjson.dumps(line) + b"\n"
                is_error[i] = failed
        self.store.release_input(self.input_path)
        output = self._file(
            [i for i in self.order if lines[i] and not is_error[i]], lines, "output"
        )
        errors = self._file([i for i in self.order if lines[i] and is_error[i]], lines, "error")
        usage = _usage(run.input_tokens, run.output_tokens)
        return Outcome(output, errors, run.completed, sum(is_error), usage)

    def line(
        self, i: int, raw: bytes, fate: Fate, stopped: str, run: Run
    ) -> tuple[dict[str, Any] | None, bool]:
        """Row ``i``'s result line (None: no line) and whether it goes to the error file;
        ``stopped``: why the row never ran ("cancelled", "expired"; "" when it was not
        stopped). Counts what ran in ``run``."""
        raise NotImplementedError

    def describe(self, kind: str, path: Path, size: int) -> StoredFile:
        """The stored file of the ``kind`` ("output" or "error") results at ``path``."""
        raise NotImplementedError

    def keep(self, f: StoredFile) -> None:
        """Make a results file the API serves."""
        assert self.store is not None
        self.store.add_file(f)

    def _file(self, rows: list[int], lines: list[bytes | None], kind: str) -> StoredFile | None:
        if not rows:
            return None
        assert self.store is not None
        path = self.store.new_path(f"{kind}-")
        return self.describe(kind, path, write_lines(path, rows, lines))

    def accept(self, outcome: Outcome) -> None:
        assert self.store is not None
        for f in (outcome.output, outcome.errors):
            if f is not None:
                f.seq = self.store.next_seq()
                self.keep(f)


@dataclass(eq=False)
class OpenAIBatch(LinesBatch):
    endpoint: str = ""
    input_file_id: str = ""
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    model: str | None = None
    errors: list[dict[str, Any]] | None = None
    est_tokens: int = 0
    output_seconds: int = DEFAULT_FILE_SECONDS
    #: models served besides the real OpenAI ones (an OpenAI-compatible variant's own)
    extra_models: tuple[str, ...] = ()
    #: whether it counts in OpenAI's per-model batch queue: not an Azure OpenAI batch
    #: (Azure limits each deployment's queue instead) nor a compatible variant's
    openai_queue: bool = True

    def line(
        self, i: int, raw: bytes, fate: Fate, stopped: str, run: Run
    ) -> tuple[dict[str, Any] | None, bool]:
        """A row that never ran is an error line (``batch_cancelled`` / ``batch_expired``);
        one that ran has its endpoint's status and body, in the error file from 400."""
        row = orjson.loads(raw)
        line_id = f"batch_req_{int_hash(self.id, i):016x}"
        line: dict[str, Any] = {"id": line_id, "custom_id": row["custom_id"]}
        if stopped or fate == Fate.EXPIRE:
            line.update(_never_ran(stopped or "expired"))
            return line, True
        assert self.store is not None
        ans = answer(  # its body was checked when the batch was created
            self.endpoint,
            row.get("body"),
            fate,
            run.created,
            line_id,
            responder=self.store.responder,
            prefix_cache=run.prefixes,
            models=(*self.knobs.models, *self.extra_models),
            checked=True,
        )
        if ans.status < 400:
            run.completed += 1
            run.input_tokens += ans.input_tokens
            run.output_tokens += ans.output_tokens
        if fate == Fate.MISSING:
            return None, False  # the simulated provider bug: executed, but no line at all
        request_id = f"req_{int_hash(line_id, 'request'):016x}"
        line["response"] = {"status_code": ans.status, "request_id": request_id, "body": ans.body}
        line["error"] = None
        return line, ans.status >= 400

    def describe(self, kind: str, path: Path, size: int) -> StoredFile:
        assert self.store is not None
        now = int(self.store.clock.unix(self.processed))
        return StoredFile(
            id=new_id("file-"),
            filename=f"{self.id}_{kind}.jsonl",
            purpose="batch_output",
            bytes=size,
            created_at=now,
            expires_at=now + self.output_seconds,
            path=path,
            seq=0,
        )


@dataclass
class Validation:
    """What checking a batch input file found: each row (marked when its body is refused),
    the file's errors (at most :data:`MAX_REPORTED_ERRORS`), its model and sizes."""

    rows: list[RowInfo] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    prompt_chars: int = 0
    embedding_inputs: int = 0

    def fail(self, code: str, message: str, line: int | None = None, param: str | None = None):
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"code": code, "message": message, "param": param, "line": line})


def validate_input(path: Path, size: int, endpoint: str, models: Iterable[str] = ()) -> Validation:
    """Check a batch input file the way the service does; collect per-row data.

    A line whose body the service would refuse (a parameter out of range, an unknown
    model, ...) does not fail the file: it is marked, and fails on its own with the
    service's error when the batch runs. ``models``: names served besides the real ones.
    """
    v = Validation()
    if size > MAX_INPUT_BYTES:
        v.fail("file_too_large", f"The input file is {size} bytes; the limit is {MAX_INPUT_BYTES}.")
        return v
    seen: set[str] = set()
    count = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line:
                continue
            count += 1
            if count <= MAX_REQUESTS:  # past it, counted only: no need to parse the rest
                _check_line(v, line, lineno, seen, endpoint, models)
    if count == 0:
        v.fail("empty_file", "The input file is empty.")
    elif count > MAX_REQUESTS:
        v.fail("too_many_tasks", f"The input has {count} requests; the limit is {MAX_REQUESTS}.")
    elif endpoint == "/v1/embeddings" and v.embedding_inputs > MAX_EMBEDDING_INPUTS:
        v.fail(
            "too_many_tasks",
            f"The input has {v.embedding_inputs} embedding inputs; "
            f"the limit is {MAX_EMBEDDING_INPUTS}.",
        )
    return v


def _check_line(
    v: Validation,
    line: bytes,
    lineno: int,
    seen: set[str],
    endpoint: str,
    models: Iterable[str],
) -> None:
    """Check one line of a batch input file into ``v`` (``seen``: the custom ids so far)."""
    row = _parse_line(v, line, lineno)
    if row is None or not _check_custom_id(v, row["custom_id"], lineno, seen):
        return
    cid, body = row["custom_id"], row["body"]
    if row["method"] != "POST":
        v.fail("invalid_method", "Only POST is supported.", lineno, "method")
    if row["url"] != endpoint:
        v.fail(
            "invalid_url",
            f"The url '{row['url']}' does not match the batch endpoint '{endpoint}'.",
            lineno,
            "url",
        )
    if not isinstance(body, dict):
        v.fail("invalid_body", "body must be a JSON object.", lineno, "body")
        return
    if not _check_model(v, body.get("model"), lineno):
        return
    if _validate_openai.problem(endpoint, body, models) is not None:
        v.rows.append(RowInfo(cid, 0, "", False, invalid=True))
        return
    info = inspect(endpoint, body)
    v.prompt_chars += info.prompt_chars
    v.embedding_inputs += len(info.embedding_inputs)
    v.rows.append(RowInfo(cid, 0, info.last_user, info.schema is not None))


def _parse_line(v: Validation, line: bytes, lineno: int) -> dict[str, Any] | None:
    """The line's JSON object with every field a line needs, or None (``v`` says why)."""
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        v.fail("invalid_json_line", "This line is not parseable as valid JSON.", lineno)
        return None
    if not isinstance(row, dict):
        v.fail("invalid_json_line", "This line is not a JSON object.", lineno)
        return None
    missing = [k for k in ("custom_id", "method", "url", "body") if k not in row]
    if missing:
        v.fail(
            "missing_required_parameter",
            f"Missing required parameter: '{missing[0]}'.",
            lineno,
            missing[0],
        )
        return None
    return row


def _check_custom_id(v: Validation, cid: Any, lineno: int, seen: set[str]) -> bool:
    """Whether ``cid`` is a non-empty string not used before in the file (recorded)."""
    if not isinstance(cid, str) or not cid:
        v.fail("invalid_custom_id", "custom_id must be a non-empty string.", lineno, "custom_id")
        return False
    if cid in seen:
        v.fail(
            "duplicate_custom_id",
            f"The custom_id '{cid}' is used more than once in this file.",
            lineno,
            "custom_id",
        )
        return False
    seen.add(cid)
    return True


def _check_model(v: Validation, model: Any, lineno: int) -> bool:
    """Whether the line names a model (the file's first one is the batch's; another
    one fails the file, the line still counting)."""
    if not isinstance(model, str):
        v.fail(
            "missing_required_parameter",
            "Missing required parameter: 'body.model'.",
            lineno,
            "body.model",
        )
        return False
    if v.model is None:
        v.model = model
    elif model != v.model:
        v.fail(
            "mismatched_model",
            f"All requests must use the same model; found '{model}' and '{v.model}'.",
            lineno,
            "body.model",
        )
    return True


def _check_create_body(store: Store, body: Any) -> StoredFile:
    """Synchronous checks of ``POST /batches`` (400 like the service)."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    for key in ("input_file_id", "endpoint", "completion_window"):
        if key not in body:
            raise ApiError(400, f"Missing required parameter: '{key}'.", param=key)
    if body["endpoint"] not in ENDPOINTS:
        raise ApiError(
            400,
            f"endpoint must be one of {list(ENDPOINTS)}, got {body['endpoint']!r}.",
            param="endpoint",
        )
    if body["endpoint"] not in SERVED_ENDPOINTS:
        raise ApiError(
            400,
            f"The nbbatch emulator does not implement {body['endpoint']}; "
            f"it serves {list(SERVED_ENDPOINTS)}.",
            param="endpoint",
        )
    if body["completion_window"] != "24h":
        raise ApiError(400, "completion_window must be '24h'.", param="completion_window")
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict) or len(metadata) > 16:
            raise ApiError(
                400, "metadata must be an object with at most 16 pairs.", param="metadata"
            )
        for k, val in metadata.items():
            if not isinstance(val, str) or len(k) > 64 or len(val) > 512:
                raise ApiError(
                    400,
                    "metadata keys must be at most 64 characters and values strings of at "
                    "most 512 characters.",
                    param="metadata",
                )
    f = store.get_file(str(body["input_file_id"]))
    if f is None:
        raise ApiError(
            400,
            f"Invalid input_file_id: no such file '{body['input_file_id']}'.",
            param="input_file_id",
        )
    if f.purpose != "batch":
        raise ApiError(
            400,
            f"The input file must have purpose 'batch', not '{f.purpose}'.",
            param="input_file_id",
        )
    return f


def _in_flight_tokens(store: Store, model: str | None, t: float) -> int:
    """Input tokens of ``model`` in OpenAI batches that have not ended at ``t`` (a batch
    holds its tokens until it completes, fails, expires or is cancelled)."""
    total = 0
    for b in store.list_batches("openai"):
        assert isinstance(b, OpenAIBatch)
        if b.model != model or not b.openai_queue:
            continue
        if not b.invalid and b.ended_at(t) is None:
            total += b.est_tokens
    return total


def create_batch_sync(
    store: Store,
    body: Any,
    check: Callable[[Validation], None] | None = None,
    *,
    openai_queue: bool = True,
) -> dict[str, Any]:
    """``POST /batches``: check, validate the input file, and register the batch.
    ``check``: a variant's own check of the validated file (Azure's queue quota), run
    under the store's lock with the registration; ``openai_queue``: whether OpenAI's
    per-model queue limits apply (not to Azure OpenAI, whose limits are per deployment)."""
    f = _check_create_body(store, body)
    endpoint = body["endpoint"]
    v = validate_input(f.path, f.bytes, endpoint, store.knobs.models)
    limited = openai_queue and _quotas.openai_limit(store.knobs, v.model) is not None
    if check is None and not limited:
        # no quota: creates need not wait on others
        return register_batch(store, body, f, v, openai_queue=openai_queue)
    with store.lock:  # the quota check and the new batch, as one step
        if check is not None:
            check(v)
        return register_batch(store, body, f, v, openai_queue=openai_queue)


def register_batch(
    store: Store,
    body: Any,
    f: StoredFile,
    v: Validation,
    *,
    kind: str = "openai",
    extra_models: tuple[str, ...] = (),
    openai_queue: bool = True,
) -> dict[str, Any]:
    """Create the batch of a validated input file (under the store's lock when a quota
    applies). ``kind``: the store's name for the API it belongs to (an OpenAI-compatible
    variant keeps its batches apart), ``extra_models`` the variant's own models;
    ``openai_queue``: whether it counts in, and is checked against, OpenAI's per-model
    batch queue (``tier=``, ``enqueued_token_limit``): OpenAI's own batches only."""
    t = store.now()
    est_tokens = _responder.count_tokens(v.prompt_chars)
    openai_queue = openai_queue and kind == "openai"
    if openai_queue:
        _check_queue(store, v, est_tokens, t)
    output_seconds = _output_seconds(body)
    invalid = bool(v.errors)
    n = 0 if invalid else len(v.rows)
    batch = OpenAIBatch(
        **schedule(store, new_id("batch_"), n, t),
        fates=bytearray() if invalid else store.fates(kind, v.rows, store.knobs),
        invalid=invalid,
        store=store,
        endpoint=body["endpoint"],
        input_file_id=f.id,
        input_path=f.path,
        completion_window=str(body.get("completion_window") or "24h"),
        metadata=body.get("metadata"),
        model=v.model,
        errors=v.errors or None,
        est_tokens=0 if invalid else est_tokens,
        output_seconds=output_seconds,
        extra_models=extra_models,
        openai_queue=openai_queue,
    )
    store.add_batch(kind, batch)
    return batch_json(store, batch, t)


def _check_queue(store: Store, v: Validation, est_tokens: int, t: float) -> None:
    """Fail ``v`` when its tokens would take the model's batch queue over its limit:
    over it the batch is still created, and fails validation, as OpenAI's do."""
    limit = _quotas.openai_limit(store.knobs, v.model)
    if not v.errors and limit is not None:
        if _in_flight_tokens(store, v.model, t) + est_tokens > limit:
            v.fail("token_limit_exceeded", _quotas.openai_refusal(v.model, limit))


def _output_seconds(body: dict[str, Any]) -> int:
    """How long the batch's output files live (``output_expires_after``, else 30 days)."""
    oea = body.get("output_expires_after")
    if oea is None:
        return DEFAULT_FILE_SECONDS
    if not isinstance(oea, dict):
        raise ApiError(400, "output_expires_after must be an object.", param="output_expires_after")
    return _expiry(oea.get("anchor"), oea.get("seconds"), "output_expires_after")


def batch_json(store: Store, b: BatchRecord, t: float) -> dict[str, Any]:
    """The Batch object as seen at clock time ``t``."""
    assert isinstance(b, OpenAIBatch)
    phase = b.phase(t)

    def unix(x: float | None) -> int | None:
        return None if x is None else int(store.clock.unix(x))

    outcome: Outcome | None = store.outcome(b, t)
    ran = not b.invalid and t >= b.started and (b.cancel_at is None or b.cancel_at >= b.started)
    if b.invalid:
        counts = {"total": 0, "completed": 0, "failed": 0}
    elif outcome is not None:
        counts = {"total": b.n, "completed": outcome.completed, "failed": outcome.failed}
    else:
        done, failed = b.progress_counts(b.cancel_at if b.cancel_at is not None else t)
        counts = {"total": b.n, "completed": done, "failed": failed}
    ended = b.ended_at(t)
    return {
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "model": b.model,
        "errors": {"object": "list", "data": b.errors} if b.errors else None,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": phase,
        "output_file_id": outcome.output.id if outcome and outcome.output else None,
        "error_file_id": outcome.errors.id if outcome and outcome.errors else None,
        "created_at": unix(b.created),
        "in_progress_at": unix(b.started) if ran else None,
        "expires_at": unix(b.expires),
        "finalizing_at": unix(b.processed) if phase in ("finalizing", "completed") else None,
        "completed_at": unix(ended) if phase == "completed" else None,
        "failed_at": unix(ended) if phase == "failed" else None,
        "expired_at": unix(ended) if phase == "expired" else None,
        "cancelling_at": unix(b.cancel_at),
        "cancelled_at": unix(ended) if phase == "cancelled" else None,
        "request_counts": counts,
        "usage": outcome.usage if outcome is not None else _usage(),
        "metadata": b.metadata,
    }


create_batch = creating(create_batch_sync)


def batch_or_404(store: Store, batch_id: str, kind: str = "openai") -> OpenAIBatch:
    b = store.get_batch(kind, batch_id)
    if b is None:
        raise ApiError(404, f"No batch found with id '{batch_id}'.", param="batch_id")
    assert isinstance(b, OpenAIBatch)
    return b


retrieve_batch = showing(batch_or_404, batch_json, "batch_id")


def cancel_sync(store: Store, batch_id: str, kind: str = "openai") -> dict[str, Any]:
    with store.lock:
        b = batch_or_404(store, batch_id, kind)
        t = store.now()
        phase = b.phase(t)
        if phase in ("validating", "in_progress"):
            b.request_cancel(t)
        elif phase != "cancelling":
            raise ApiError(
                409,
                f"Cannot cancel a batch with status '{phase}'.",
                param="batch_id",
                headers=NO_RETRY,
            )
    return batch_json(store, b, t)


async def cancel_batch(request: Request) -> Response:
    store = _store(request)
    return JSONResponse(
        await run_in_threadpool(cancel_sync, store, request.path_params["batch_id"])
    )


def _list_sync(store: Store, after: str | None, limit: int) -> dict[str, Any]:
    page, more = _page(store.list_batches("openai"), after, limit)
    t = store.now()
    return {
        "object": "list",
        "data": [batch_json(store, b, t) for b in page],
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": more,
    }


async def list_batches(request: Request) -> Response:
    store = _store(request)
    limit = _int_param(request, "limit", 20, 1, 100)
    after = request.query_params.get("after")
    return JSONResponse(await run_in_threadpool(_list_sync, store, after, limit))


# =================================================================== real time


async def _flex_wait(store: Store) -> None:
    """What flex processing adds to a real-time request: "slower response times and
    occasional resource unavailability" (https://developers.openai.com/api/docs/guides/
    flex-processing), the latter a "429 Resource Unavailable" that is not charged. The
    guide gives only that status and title, so the rest of the error body is ours.
    Only the models that offer flex are served it (see :func:`_refuse_flex`)."""
    knobs = store.knobs
    if knobs.flex_latency_seconds > 0:
        await asyncio.sleep(knobs.flex_latency_seconds)
    if store.flex_unavailable():
        raise ApiError(
            429,
            "Resource Unavailable: flex processing has no capacity for this request right "
            "now; you are not charged for it. Retry later, or send it without "
            "service_tier='flex'.",
            type="resource_unavailable",
            headers={"retry-after-ms": "10"},
        )


def _refuse_flex(model: Any) -> None:
    """A model without flex processing is refused with a 400 invalid_request_error, not
    served at the standard tier (Azure OpenAI's flex guide says so of the same API:
    https://learn.microsoft.com/azure/foundry/openai/how-to/flex-processing; OpenAI's
    guide gives no error body, so the message is ours)."""
    if isinstance(model, str) and not _models.offers_flex(model):
        raise ApiError(
            400,
            f"The model {model!r} does not support service_tier 'flex'. Flex processing "
            "is offered on some models only (see the pricing page); send the request "
            "without service_tier, or use a model that offers it.",
            param="service_tier",
        )


def _realtime(
    endpoint: str, extra_models: tuple[str, ...] = ()
) -> Callable[[Request], Awaitable[Response]]:
    # extra_models: a variant's own model names (Groq's, Together's), taken as known.
    async def handler(request: Request) -> Response:
        store = _store(request)
        body = await json_body(request)
        models = (*store.knobs.models, *extra_models)
        valid = _validate_openai.problem(endpoint, body, models) is None
        info = inspect(endpoint, body) if valid else None
        fate = Fate.OK
        if info is not None and FAIL_MARKER in info.last_user:
            fate = Fate.FAIL
        elif info is not None and TRANSIENT_MARKER in info.last_user:
            # keyed by the text: the SDK's automatic retry of the 500 then succeeds
            attempt = store.attempts("openai-realtime", [info.last_user])[0]
            fate = Fate.TRANSIENT_ERROR if attempt == 1 else Fate.OK
            store.record_faults("openai-realtime", [info.last_user], [attempt], [attempt == 1])
        created = int(store.clock.unix(store.now()))

        def run() -> Answer:
            with store.lock:  # the real-time prefix cache is shared by all requests
                return answer(
                    endpoint,
                    body,
                    fate,
                    created,
                    new_id("rt"),
                    responder=store.responder,
                    prefix_cache=store.openai_prefixes,
                    models=models,
                )

        flex = isinstance(body, dict) and body.get("service_tier") == "flex"
        if flex:
            _refuse_flex(body.get("model"))
            await _flex_wait(store)
        ans = await run_in_threadpool(run)
        headers = {"retry-after-ms": "10"} if ans.status >= 500 else {}
        if flex and ans.status == 200 and isinstance(ans.body, dict):
            ans.body["service_tier"] = "flex"
        return JSONResponse(ans.body, status_code=ans.status, headers=headers)

    return handler


#: The real-time handler for an endpoint, for a variant serving it under its own paths
#: (Azure's per-deployment routes).
realtime_handler = _realtime


async def input_tokens(request: Request) -> Response:
    """``POST /v1/responses/input_tokens``: the input tokens a Responses request would use,
    the number its reply's ``usage.input_tokens`` reports; the body is a Responses
    request's (platform.openai.com/docs/api-reference/responses/input-tokens), answered
    ``{"object": "response.input_tokens", "input_tokens"}``."""
    store = _store(request)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str):
        raise ApiError(400, "you must provide a model parameter", param="model")
    if _models.find("openai", model, store.knobs.models) is None:
        problem = _validate_openai.model_not_found(model)
        raise ApiError(problem.status, problem.message, code=problem.code)
    info = inspect("/v1/responses", body)
    tokens = _responder.count_tokens(info.prompt_chars)
    return JSONResponse({"object": "response.input_tokens", "input_tokens": tokens})


# =================================================================== models


def model_json(entry: _models.ModelEntry) -> dict[str, Any]:
    """A Model object."""
    return {"id": entry.id, "object": "model", "created": entry.created, "owned_by": "system"}


def _unknown_model(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


#: ``GET /v1/models``: every model, in one page.
list_models = listing_models("openai", model_json)
#: ``GET /v1/models/{model}``; an unknown model is a 404 ``model_not_found``.
retrieve_model = showing_model("openai", model_json, "model", _unknown_model)


routes = [
    Route("/v1/files", create_file, methods=["POST"]),
    Route("/v1/files", list_files, methods=["GET"]),
    Route("/v1/files/{file_id}", retrieve_file, methods=["GET"]),
    Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
    Route("/v1/batches", create_batch, methods=["POST"]),
    Route("/v1/batches", list_batches, methods=["GET"]),
    Route("/v1/batches/{batch_id}", retrieve_batch, methods=["GET"]),
    Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
    Route("/v1/chat/completions", _realtime("/v1/chat/completions"), methods=["POST"]),
    Route("/v1/responses", _realtime("/v1/responses"), methods=["POST"]),
    Route("/v1/responses/input_tokens", input_tokens, methods=["POST"]),
    Route("/v1/embeddings", _realtime("/v1/embeddings"), methods=["POST"]),
]
