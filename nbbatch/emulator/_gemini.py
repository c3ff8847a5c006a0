"""Gemini Batch Mode (and the Files API, real-time generateContent and embedContent) as
the SDK sees them.

Served under ``/gemini`` on the emulator's port, so ``google.genai.Client(http_options=
HttpOptions(base_url=emu.gemini_base_url))`` reaches it and nothing collides with the
OpenAI routes (both APIs have a ``/v1/files`` and a ``/v1/models``). Any API version
segment (``v1``, ``v1beta``, ...) is accepted; the SDK sends ``v1`` unless told otherwise.

Wire shapes follow ``docs/protocols/gemini.md``: the resumable upload protocol for
files (a ``start`` request answered with an ``x-goog-upload-url`` header, then
``upload, finalize`` chunks), batches as long-running operations
``{"name": "batches/…", "metadata": {…, "state": "BATCH_STATE_…", "output":
{"responsesFile": "files/…"}}}``, one output line per request that ran
(``{"key", "response"}`` or ``{"key", "error"}``), and Google's error body
``{"error": {"code", "message", "status"}}``. Batches of embeddings
(``models/M:asyncBatchEmbedContent``) run the same life cycle with EmbedContentRequest
lines, answered ``{"key", "response": {"embedding": {"values"}, "tokenCount"}}``.

The input file is read after ``create`` answers, as a service reading a 2 GB file would:
a file that cannot be read (a line that is not JSON, a line without a key or request, a
repeated key, too many requests) makes a batch that ends ``BATCH_STATE_FAILED`` with the
reason in the operation's ``error``. A create request that names no file, or a file that
is not there, is refused at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from . import _models, _quotas, _responder, _validate_gemini
from ._faults import (
    FAIL_MARKER,
    Fate,
    RowInfo,
    int_hash,
)
from ._gemini_replies import (
    EMBED,
    GENERATE,
    embed,
    embed_problem,
    generate,
    last_user,
    problem_of,
    prompt_chars,
    prompt_tokens_of,
    request_problem,
    row_text,
    schema_of,
)
from ._state import BatchRecord, Store, StoredFile, iter_lines, schedule, write_lines
from ._wire import ApiError, JSONResponse, new_id, rfc3339

PREFIX = "/gemini"
# Service limits (module constants so tests can lower them): 2 GB per file; the batch
# input file limit the docs give.
MAX_FILE_BYTES = 2 * 1024**3
MAX_REQUESTS = 100_000
#: A batch sent inline keeps its whole create request under 20 MB; a larger one goes in
#: an input file (ai.google.dev/gemini-api/docs/batch-api, "Inline requests"). Over it,
#: Google's front end answers 400 INVALID_ARGUMENT "Request payload size exceeds the
#: limit: N bytes." (its wording for every API's payload limit, as quoted in
#: github.com/quarkiverse/quarkus-langchain4j/issues/1705).
MAX_INLINE_BYTES = 20 * 1024 * 1024
#: Google's canonical status name for each HTTP status the emulator sends.
STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
FILE_PURPOSE = "gemini"  # how Gemini files are told apart from OpenAI's in the store


def error_body(status: int, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    """``{"error": {code, message, status[, details]}}`` as Google APIs send it."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": STATUS_NAMES.get(status, "INTERNAL" if status >= 500 else "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return {"error": error}


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _base(request: Request) -> str:
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return f"http://{host}{PREFIX}"


# =================================================================== batches


@dataclass(frozen=True)
class Outcome:
    """What a finished batch produced: its responses file (None when no row ran)."""

    output: StoredFile | None
    succeeded: int
    failed: int
    # An inline batch's answers, one per request in request order (None: a file batch).
    inlined: list[dict[str, Any]] | None = None


@dataclass(eq=False)
class GeminiBatch(BatchRecord):
    store: Store | None = None
    model: str = ""
    display_name: str = ""
    input_file: str = ""
    input_path: Path | None = None
    kind: str = GENERATE  # or EMBED
    failure: str = ""  # why the input could not be read (an invalid batch ends FAILED)
    inline: bool = False  # requests sent in the create call: answers come back inline
    est_tokens: int = 0  # input tokens it holds in the model's batch queue until it ends

    def generate(self, cut: int | None, reason: str) -> Outcome:
        """Run the rows that got to run; write one line per row that ran."""
        assert self.store is not None and self.input_path is not None
        stopped = self.stopped(cut)
        lines: list[bytes | None] = [None] * self.n
        inlined: list[dict[str, Any]] = []
        succeeded = failed = 0
        for i, raw in enumerate(iter_lines(self.input_path)):
            if i >= self.n:
                break
            fate = Fate(self.fates[i])
            row = orjson.loads(raw)
            if stopped[i] or fate == Fate.EXPIRE:
                if self.inline:  # inline answers are matched by position: keep the slot
                    why = "cancelled" if reason == "cancelled" else "expired"
                    inlined.append(_inline_entry(row, {"error": _never_ran(why)}))
                continue  # never ran: a stopped batch lists only the rows it ran
            # The line's own fields (its key, if any) come back with its answer.
            line: dict[str, Any] = {k: v for k, v in row.items() if k != "request"}
            answer = self._answer(i, row.get("request"), fate)
            line.update(answer)
            if "response" in answer:
                succeeded += 1
            else:
                failed += 1
            if self.inline:
                # No keys to match by, so the simulated lost line does not apply here.
                inlined.append(_inline_entry(row, line))
                continue
            if fate == Fate.MISSING and "response" in line:
                continue  # the simulated provider bug: executed, but no line at all
            lines[i] = orjson.dumps(line) + b"\n"
        self.store.release_input(self.input_path)
        # In request order, as documented ("The responses will be in the same order as the
        # input requests", ai.google.dev/api/batch-api#GenerateContentBatchOutput), unless
        # the knob asks for the processing order the service has been reported to return
        # (googleapis/python-genai#1909).
        shuffled = self.knobs.gemini_out_of_order
        if self.inline:
            if shuffled and len(inlined) == self.n:
                inlined = [inlined[i] for i in self.order]
            return Outcome(None, succeeded, failed, inlined)
        ran = [i for i in (self.order if shuffled else range(self.n)) if lines[i]]
        return Outcome(self._output_file(ran, lines), succeeded, failed)

    def _answer(self, i: int, req: Any, fate: Fate) -> dict[str, Any]:
        """Row ``i``'s ``{"response"}`` or ``{"error"}`` (a refused request, a fault, or
        the user's responder failing)."""
        assert self.store is not None
        problem = problem_of(self.kind, req, self.model)
        if fate == Fate.FAIL or problem:
            text = problem or f"Request rejected by the nbbatch emulator ({FAIL_MARKER})."
            return {"error": error_body(400, text)["error"]}
        if fate == Fate.TRANSIENT_ERROR:
            status = (500, 503)[int_hash(self.id, i, "kind") % 2]
            text = "Simulated server error (nbbatch emulator); retrying may succeed."
            return {"error": error_body(status, text)["error"]}
        assert isinstance(req, dict)
        if self.kind == EMBED:
            return {"response": embed(req, self.model)}
        suffix = f"{int_hash(self.id, i):016x}"
        try:
            return {"response": generate(req, fate, self.model, suffix, self.store.responder)}
        except _responder.ResponderError as exc:
            return {"error": error_body(400, str(exc))["error"]}

    def _output_file(self, ran: list[int], lines: list[bytes | None]) -> StoredFile | None:
        """The responses file of the rows that ran (None when none did)."""
        if not ran:
            return None
        assert self.store is not None
        path = self.store.new_path("gemini-output-")
        size = write_lines(path, ran, lines)
        now = int(self.store.clock.unix(self.processed))
        return StoredFile(
            id=new_id("gemout"),
            filename=f"{self.id}-responses.jsonl",
            purpose=FILE_PURPOSE,
            bytes=size,
            created_at=now,
            expires_at=now + 48 * 3600,
            path=path,
            seq=0,
        )

    def accept(self, outcome: Outcome) -> None:
        assert self.store is not None
        if outcome.output is not None:
            outcome.output.seq = self.store.next_seq()
            self.store.add_file(outcome.output)


def _inline_entry(row: dict[str, Any], line: dict[str, Any]) -> dict[str, Any]:
    """One InlinedResponse: the answer (or error) and the request's own metadata."""
    entry = {k: v for k, v in line.items() if k in ("response", "error")}
    if "error" in entry:  # a google.rpc.Status: the service's JobError has no status name
        entry["error"] = {k: v for k, v in entry["error"].items() if k != "status"}
    if row.get("metadata") is not None:
        entry["metadata"] = row["metadata"]
    return entry


def _never_ran(why: str) -> dict[str, Any]:
    return {
        "code": 504 if why == "expired" else 499,
        "message": f"The batch {why} before this request ran.",
    }


_STATES = {
    "validating": "BATCH_STATE_PENDING",
    "in_progress": "BATCH_STATE_RUNNING",
    "finalizing": "BATCH_STATE_RUNNING",
    "cancelling": "BATCH_STATE_RUNNING",  # Gemini has no "cancelling": it runs until it ends
    "completed": "BATCH_STATE_SUCCEEDED",
    "failed": "BATCH_STATE_FAILED",
    "cancelled": "BATCH_STATE_CANCELLED",
    "expired": "BATCH_STATE_EXPIRED",
}


def batch_json(store: Store, b: GeminiBatch, t: float) -> dict[str, Any]:
    """The batch as the long-running operation the API returns for it."""
    phase = b.phase(t)
    ended = b.ended_at(t)
    outcome: Outcome | None = store.outcome(b, t)
    name = f"batches/{b.id}"
    total = b.n
    if outcome is not None:
        ok, bad = outcome.succeeded, outcome.failed
    else:
        ok, bad = b.progress_counts(t)
    kind = "EmbedContentBatch" if b.kind == EMBED else "GenerateContentBatch"
    meta: dict[str, Any] = {
        "@type": f"type.googleapis.com/google.ai.generativelanguage.v1main.{kind}",
        "name": name,
        "model": b.model,
        "displayName": b.display_name,
        "inputConfig": {"fileName": b.input_file},
        "createTime": rfc3339(store.clock.unix(b.created)),
        "updateTime": rfc3339(store.clock.unix(ended if ended is not None else t)),
        "batchStats": {
            "requestCount": str(total),
            "successfulRequestCount": str(ok),
            "failedRequestCount": str(bad),
            "pendingRequestCount": str(0 if ended is not None else total - ok - bad),
        },
        "state": _STATES[phase],
    }
    op: dict[str, Any] = {"name": name, "metadata": meta}
    if ended is not None:
        meta["endTime"] = rfc3339(store.clock.unix(ended))
        op["done"] = True
        if outcome is not None and outcome.inlined is not None:
            field = "inlinedEmbedContentResponses" if b.kind == EMBED else "inlinedResponses"
            output = {field: {"inlinedResponses": outcome.inlined}}
            meta["output"] = output
            op["response"] = {
                "@type": f"type.googleapis.com/google.ai.generativelanguage.v1main.{kind}Output",
                **output,
            }
        elif outcome is not None and outcome.output is not None:
            meta["output"] = {"responsesFile": f"files/{outcome.output.id}"}
            op["response"] = {
                "@type": f"type.googleapis.com/google.ai.generativelanguage.v1main.{kind}Output",
                "responsesFile": f"files/{outcome.output.id}",
            }
        if phase == "failed":
            # A google.rpc.Status, as every long-running operation reports its failure.
            op["error"] = {
                "code": 400,
                "message": b.failure or "The batch input could not be read.",
            }
    return op


def _input_rows(store: Store, body: Any) -> tuple[Path, str, int]:
    """The batch's requests as a JSONL file of ``{"key", "request"}`` lines."""
    batch = body.get("batch") if isinstance(body, dict) else None
    config = batch.get("inputConfig") if isinstance(batch, dict) else None
    if not isinstance(config, dict):
        raise ApiError(400, "batch.inputConfig: required")
    # The SDK sends batches.create's source as fileName and create_embeddings' as
    # file_name; the service's JSON parser takes either spelling.
    file_name = config.get("fileName") or config.get("file_name")
    if file_name:
        name = str(file_name).removeprefix("files/")
        file = store.get_file(name)
        if file is None or file.purpose != FILE_PURPOSE:
            raise ApiError(404, f"File files/{name} not found.")
        return file.path, f"files/{name}", file.bytes
    inlined = (config.get("requests") or {}).get("requests")
    if not isinstance(inlined, list) or not inlined:
        raise ApiError(400, "batch.inputConfig: one of fileName or requests is required")
    path = store.new_path("gemini-inline-")
    with path.open("wb") as out:
        for i, item in enumerate(inlined):
            # Inline answers are matched by position; the key is only the row's name here.
            item = item if isinstance(item, dict) else {}
            line = {"key": str(i), "request": item.get("request"), "metadata": item.get("metadata")}
            out.write(orjson.dumps(line) + b"\n")
    return path, "", path.stat().st_size


class _Unreadable(Exception):
    """Why a batch's input file cannot be read: the batch will end FAILED."""


def read_input(path: Path, kind: str, model: str = "") -> tuple[list[RowInfo], int]:
    """The rows of an input file (named by their keys) and the characters of input they
    carry, or :class:`_Unreadable` with the first reason."""
    rows: list[RowInfo] = []
    chars = 0
    seen: set[str] = set()
    for lineno, raw in enumerate(iter_lines(path), 1):
        try:
            row = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _Unreadable(f"Line {lineno} of the input file is not valid JSON.") from None
        if not isinstance(row, dict) or "request" not in row:
            raise _Unreadable(f"Line {lineno}: each line needs a 'request'.")
        key = row.get("key")
        if key is None:
            # The key is optional: the service runs lines that carry other fields instead
            # and echoes those fields in their answers (a file of such lines is shown in
            # github.com/googleapis/go-genai/issues/513). The row needs a name of its own
            # here (fault fates, attempts): one no user key can take.
            key = f"\x00line {lineno}"
        elif not isinstance(key, str) or not key:
            raise _Unreadable(f"Line {lineno}: 'key' must be a non-empty string.")
        if key in seen:
            raise _Unreadable(f"Line {lineno}: duplicate key '{key}'.")
        seen.add(key)
        req = row["request"]
        chars += prompt_chars(kind, req)
        ok = problem_of(kind, req, model) is None
        text = row_text(kind, req) if ok else ""
        rows.append(RowInfo(key, 0, text, ok and kind == GENERATE and schema_of(req) is not None))
        if len(rows) > MAX_REQUESTS:
            raise _Unreadable(f"A batch holds at most {MAX_REQUESTS} requests.")
    if not rows:
        raise _Unreadable("The batch input holds no requests.")
    return rows, chars


def _in_flight_tokens(store: Store, model: str, t: float) -> int:
    """Input tokens of ``model`` in batch jobs that have not ended at ``t``."""
    return sum(
        b.est_tokens
        for b in store.list_batches("gemini")
        if isinstance(b, GeminiBatch) and b.model == model and b.ended_at(t) is None
    )


def create_batch_sync(store: Store, model: str, body: Any, kind: str = GENERATE) -> dict[str, Any]:
    """``batchGenerateContent`` (``kind`` generate) or ``asyncBatchEmbedContent``
    (embed): a request naming no input is refused; an input that cannot be read makes
    a batch that fails once validated, with the reason."""
    path, file_name, _size = _input_rows(store, body)
    knobs = store.knobs
    try:
        rows, chars = read_input(path, kind, model)
        failure = ""
    except _Unreadable as exc:
        rows, chars, failure = [], 0, str(exc)
    est_tokens = _responder.count_tokens(chars)
    with store.lock:  # the quota check and the new batch, as one step
        t = store.now()
        limit = _quotas.gemini_limit(knobs, model)
        if limit is not None and _in_flight_tokens(store, model, t) + est_tokens > limit:
            # Refused at once, no batch made (googleapis/python-genai#1901).
            if not file_name:  # the copy of inline requests made for this create
                path.unlink(missing_ok=True)
            raise ApiError(429, _quotas.GEMINI_REFUSAL, details=_quotas.GEMINI_REFUSAL_DETAILS)
        return _register(store, model, body, kind, path, file_name, rows, failure, est_tokens, t)


def _register(
    store: Store,
    model: str,
    body: Any,
    kind: str,
    path: Path,
    file_name: str,
    rows: list[RowInfo],
    failure: str,
    est_tokens: int,
    t: float,
) -> dict[str, Any]:
    """Create the batch job (under the store's lock)."""
    knobs = store.knobs
    fates = store.fates("gemini", rows, knobs)
    batch_id = new_id("", 10)
    display = ((body or {}).get("batch") or {}).get("displayName") or batch_id
    batch = GeminiBatch(
        **schedule(store, batch_id, len(rows), t),
        fates=fates,
        store=store,
        model=model,
        display_name=str(display),
        input_file=file_name,
        input_path=path,
        kind=kind,
        failure=failure,
        invalid=bool(failure),
        inline=not file_name,
        est_tokens=0 if failure else est_tokens,
    )
    store.add_batch("gemini", batch)
    return batch_json(store, batch, t)


def _batch_or_404(store: Store, batch_id: str) -> GeminiBatch:
    b = store.get_batch("gemini", batch_id)
    if not isinstance(b, GeminiBatch):
        raise ApiError(404, f"Batch batches/{batch_id} not found.")
    return b


def _cancel_sync(store: Store, batch_id: str) -> dict[str, Any]:
    with store.lock:
        b = _batch_or_404(store, batch_id)
        t = store.now()
        if b.ended_at(t) is not None:
            raise ApiError(400, f"Batch batches/{batch_id} has already ended.")
        b.request_cancel(t)
    return {}


# =================================================================== files


@dataclass
class _Upload:
    """A resumable upload between its ``start`` and its ``finalize``."""

    path: Path
    size: int
    mime_type: str
    display_name: str
    received: int = 0


def file_json(f: StoredFile, base: str) -> dict[str, Any]:
    """A File object (REST JSON; int64 sizes are strings)."""
    name = f"files/{f.id}"
    return {
        "name": name,
        "displayName": f.filename,
        "mimeType": "application/jsonl",
        "sizeBytes": str(f.bytes),
        "createTime": rfc3339(f.created_at),
        "updateTime": rfc3339(f.created_at),
        "expirationTime": rfc3339(f.expires_at or f.created_at + 48 * 3600),
        "uri": f"{base}/v1beta/{name}",
        "downloadUri": f"{base}/v1beta/{name}:download?alt=media",
        "state": "ACTIVE",
        "source": "GENERATED" if f.filename.endswith("-responses.jsonl") else "UPLOADED",
    }


async def _upload(request: Request, version: str) -> Response:
    store = _store(request)
    command = request.headers.get("x-goog-upload-command", "").replace(" ", "")
    upload_id = request.query_params.get("upload_id")
    if upload_id is None:
        if command != "start" or request.headers.get("x-goog-upload-protocol") != "resumable":
            raise ApiError(400, "Only the resumable upload protocol is served here.")
        body = await _json_body(request)
        meta = (body or {}).get("file") or {}
        size = int(request.headers.get("x-goog-upload-header-content-length") or 0)
        if size > MAX_FILE_BYTES:
            raise ApiError(400, f"The file is {size} bytes; the limit is {MAX_FILE_BYTES}.")
        upload_id = new_id("up", 12)
        store.uploads[upload_id] = _Upload(
            store.new_path("gemini-upload-"),
            size,
            str(meta.get("mimeType") or meta.get("mime_type") or ""),
            str(meta.get("displayName") or meta.get("display_name") or ""),
        )
        url = f"{_base(request)}/upload/{version}/files?upload_id={upload_id}"
        return JSONResponse(
            {}, headers={"x-goog-upload-url": url, "x-goog-upload-status": "active"}
        )
    up = store.uploads.get(upload_id)
    if up is None:
        raise ApiError(404, "Unknown upload id.")
    offset = int(request.headers.get("x-goog-upload-offset") or -1)
    if offset != up.received:
        raise ApiError(400, f"Upload offset {offset} given; {up.received} bytes received.")
    chunk = await request.body()
    with up.path.open("ab") as out:
        out.write(chunk)
    up.received += len(chunk)
    if "finalize" not in command.split(","):
        return JSONResponse({}, headers={"x-goog-upload-status": "active"})
    del store.uploads[upload_id]
    filename = up.display_name or "upload.jsonl"
    stored = store.add_upload(
        new_id("file", 10), filename, FILE_PURPOSE, up.path, up.received, 48 * 3600
    )
    return JSONResponse(
        {"file": file_json(stored, _base(request))}, headers={"x-goog-upload-status": "final"}
    )


def _file_or_404(store: Store, name: str) -> StoredFile:
    f = store.get_file(name)
    if f is None or f.purpose != FILE_PURPOSE:
        raise ApiError(404, f"File files/{name} not found.")
    return f


# =================================================================== models


def model_json(entry: _models.ModelEntry) -> dict[str, Any]:
    """A Model object."""
    return {
        "name": f"models/{entry.id}",
        "displayName": entry.display_name,
        "version": "001",
        "inputTokenLimit": 1048576,
        "outputTokenLimit": 65536,
        "supportedGenerationMethods": (
            ["embedContent", "batchEmbedContents", "asyncBatchEmbedContent"]
            if "embedding" in entry.id
            else ["generateContent", "batchGenerateContent"]
        ),
    }


def _model_or_404(store: Store, model: str) -> str:
    name = model.removeprefix("models/")
    problem = _validate_gemini.model_problem(name, store.knobs.models)
    if problem is not None:
        raise ApiError(404, problem)
    return f"models/{name}"


# =================================================================== routing


async def _json_body(request: Request, limit: int | None = None) -> Any:
    raw = await request.body()
    if limit is not None and len(raw) > limit:
        raise ApiError(400, f"Request payload size exceeds the limit: {limit} bytes.")
    if not raw:
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "Invalid JSON payload received.") from None


_VERSION = r"(?P<v>v\d+(?:alpha|beta)?\d*)"
_PATTERNS: list[tuple[str, re.Pattern[str], str]] = [
    (m, re.compile(p), h)
    for m, p, h in [
        ("POST", rf"^upload/{_VERSION}/files$", "upload"),
        ("GET", rf"^{_VERSION}/files$", "list_files"),
        ("GET", rf"^{_VERSION}/files/(?P<id>[^/:]+):download$", "download"),
        ("GET", rf"^{_VERSION}/files/(?P<id>[^/:]+)$", "get_file"),
        ("DELETE", rf"^{_VERSION}/files/(?P<id>[^/:]+)$", "delete_file"),
        ("POST", rf"^{_VERSION}/models/(?P<model>[^/:]+):batchGenerateContent$", "create"),
        (
            "POST",
            rf"^{_VERSION}/models/(?P<model>[^/:]+):asyncBatchEmbedContent$",
            "create_embeddings",
        ),
        ("POST", rf"^{_VERSION}/models/(?P<model>[^/:]+):batchEmbedContents$", "embed_now"),
        ("POST", rf"^{_VERSION}/models/(?P<model>[^/:]+):generateContent$", "realtime"),
        ("POST", rf"^{_VERSION}/models/(?P<model>[^/:]+):countTokens$", "count_tokens"),
        ("GET", rf"^{_VERSION}/models/(?P<model>[^/:]+)$", "get_model"),
        ("GET", rf"^{_VERSION}/models$", "list_models"),
        ("GET", rf"^{_VERSION}/batches$", "list_batches"),
        ("GET", rf"^{_VERSION}/batches/(?P<id>[^/:]+)$", "get_batch"),
        ("POST", rf"^{_VERSION}/batches/(?P<id>[^/:]+):cancel$", "cancel"),
        ("DELETE", rf"^{_VERSION}/batches/(?P<id>[^/:]+)$", "delete_batch"),
    ]
]


async def dispatch(request: Request) -> Response:
    """Route ``/gemini/...``: Google's ``name:verb`` paths do not fit starlette's router."""
    rest = request.path_params["rest"]
    for method, pattern, handler in _PATTERNS:
        match = pattern.match(rest)
        if match and request.method == method:
            return await _HANDLERS[handler](request, **match.groupdict())
    raise ApiError(404, f"Unknown route {request.method} {request.url.path} (nbbatch emulator).")


async def _h_upload(request: Request, v: str) -> Response:
    return await _upload(request, v)


async def _h_get_file(request: Request, v: str, id: str) -> Response:
    return JSONResponse(file_json(_file_or_404(_store(request), id), _base(request)))


async def _h_list_files(request: Request, v: str) -> Response:
    store = _store(request)
    files = [f for f in store.list_files() if f.purpose == FILE_PURPOSE]
    return JSONResponse({"files": [file_json(f, _base(request)) for f in files]})


async def _h_download(request: Request, v: str, id: str) -> Response:
    f = _file_or_404(_store(request), id)
    if not f.filename.endswith("-responses.jsonl"):
        # As the service: uploaded files cannot be downloaded, only generated ones.
        raise ApiError(400, "Only generated files can be downloaded.")
    return FileResponse(f.path, media_type="application/octet-stream")


async def _h_delete_file(request: Request, v: str, id: str) -> Response:
    store = _store(request)
    _file_or_404(store, id)
    store.delete_file(id)
    return JSONResponse({})


async def _h_create(request: Request, v: str, model: str) -> Response:
    store = _store(request)
    name = _model_or_404(store, model)  # a batch runs one model: refused at once
    body = await _json_body(request, MAX_INLINE_BYTES)
    return JSONResponse(await run_in_threadpool(create_batch_sync, store, name, body))


async def _h_create_embeddings(request: Request, v: str, model: str) -> Response:
    store = _store(request)
    name = _model_or_404(store, model)
    body = await _json_body(request, MAX_INLINE_BYTES)
    return JSONResponse(await run_in_threadpool(create_batch_sync, store, name, body, EMBED))


async def _h_get_batch(request: Request, v: str, id: str) -> Response:
    store = _store(request)
    b = _batch_or_404(store, id)
    return JSONResponse(await run_in_threadpool(batch_json, store, b, store.now()))


async def _h_list_batches(request: Request, v: str) -> Response:
    store = _store(request)
    size = int(request.query_params.get("pageSize") or 50)
    token = request.query_params.get("pageToken")
    items = [b for b in store.list_batches("gemini") if isinstance(b, GeminiBatch)]
    start = next((i + 1 for i, b in enumerate(items) if b.id == token), 0) if token else 0
    page = items[start : start + size]
    t = store.now()

    def render() -> list[dict[str, Any]]:
        return [batch_json(store, b, t) for b in page]

    body: dict[str, Any] = {"operations": await run_in_threadpool(render)}
    if start + size < len(items) and page:
        body["nextPageToken"] = page[-1].id
    return JSONResponse(body)


async def _h_cancel(request: Request, v: str, id: str) -> Response:
    store = _store(request)
    return JSONResponse(await run_in_threadpool(_cancel_sync, store, id))


async def _h_delete_batch(request: Request, v: str, id: str) -> Response:
    store = _store(request)
    with store.lock:
        b = _batch_or_404(store, id)
        store.remove_batch("gemini", id)
    if b.input_file == "" and b.input_path is not None:
        b.input_path.unlink(missing_ok=True)
    return JSONResponse({})


async def _h_realtime(request: Request, v: str, model: str) -> Response:
    store = _store(request)
    name = _model_or_404(store, model)
    req = await _json_body(request)
    problem = request_problem(req)
    if problem is not None:
        raise ApiError(400, problem)
    text = last_user(req)
    if FAIL_MARKER in text:
        raise ApiError(400, f"Request rejected by the nbbatch emulator ({FAIL_MARKER}).")
    if store.realtime_overloaded("gemini-realtime", text):
        raise ApiError(503, "Simulated overload (nbbatch emulator); a retry will succeed.")
    try:
        return JSONResponse(generate(req, Fate.OK, name, new_id("", 8), store.responder))
    except _responder.ResponderError as exc:
        raise ApiError(400, str(exc)) from None


async def _h_count_tokens(request: Request, v: str, model: str) -> Response:
    """``models/{model}:countTokens``: ``{"totalTokens"}`` of ``contents`` or of a whole
    ``generateContentRequest`` (ai.google.dev/api/tokens#method:-models.counttokens), the
    same number generateContent reports as ``usageMetadata.promptTokenCount``."""
    store = _store(request)
    _model_or_404(store, model)
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "Invalid JSON payload received.")
    req = body.get("generateContentRequest") or body.get("generate_content_request")
    if req is None:
        req = {"contents": body.get("contents") or []}
    if not isinstance(req, dict):
        raise ApiError(400, "generateContentRequest must be an object.")
    return JSONResponse({"totalTokens": prompt_tokens_of(req)})


async def _h_embed_now(request: Request, v: str, model: str) -> Response:
    """Real-time ``models.embed_content``: ``{"requests": [EmbedContentRequest]}`` answered
    ``{"embeddings": [{"values"}]}`` in order, with the usage of them all."""
    store = _store(request)
    name = _model_or_404(store, model)
    body = await _json_body(request)
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        raise ApiError(400, "* BatchEmbedContentsRequest.requests: requests is not specified")
    embeddings, tokens = [], 0
    for req in requests:
        problem = embed_problem(req, name)
        if problem is not None:
            raise ApiError(400, problem)
        text = row_text(EMBED, req)
        if FAIL_MARKER in text:
            raise ApiError(400, f"Request rejected by the nbbatch emulator ({FAIL_MARKER}).")
        if store.realtime_overloaded("gemini-realtime", text):
            raise ApiError(503, "Simulated overload (nbbatch emulator); a retry will succeed.")
        answer = embed(req, name)
        embeddings.append(answer["embedding"])
        tokens += int(answer["tokenCount"])
    usage = {"promptTokenCount": tokens, "totalTokenCount": tokens}
    return JSONResponse({"embeddings": embeddings, "usageMetadata": usage})


async def _h_get_model(request: Request, v: str, model: str) -> Response:
    store = _store(request)
    name = _model_or_404(store, model).removeprefix("models/")
    entry = _models.find("gemini", name, store.knobs.models)
    assert entry is not None
    return JSONResponse(model_json(entry))


async def _h_list_models(request: Request, v: str) -> Response:
    store = _store(request)
    return JSONResponse(
        {"models": [model_json(m) for m in _models.catalogue("gemini", store.knobs.models)]}
    )


_HANDLERS: dict[str, Any] = {
    name.removeprefix("_h_"): fn for name, fn in globals().items() if name.startswith("_h_")
}

routes = [Route(PREFIX + "/{rest:path}", dispatch, methods=["GET", "POST", "DELETE"])]
