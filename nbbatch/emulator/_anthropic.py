"""Anthropic Message Batches API (and real-time Messages) as the SDK sees them.

Wire shapes follow ``batch-protocols.md`` §3: MessageBatch objects with RFC 3339
timestamps, ``processing`` counts until the batch has ended, an absolute ``results_url``
on this server, JSONL results with one ``\\n`` per line, and
``{"type": "error", "error": {...}, "request_id"}`` error bodies.
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

from . import _models, _quotas, _responder, _validate_anthropic
from ._anthropic_replies import (
    error_json,
    last_user,
    message,
    params_chars,
    params_problem,
    structured,
)
from ._faults import (
    FAIL_MARKER,
    Fate,
    RowInfo,
    int_hash,
)
from ._state import BatchRecord, ResultsOutcome, Store, iter_lines, schedule, write_lines
from ._wire import NO_RETRY, ApiError, JSONResponse, new_id, parse_json, rfc3339

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Service limits (module constants so tests can lower them).
MAX_REQUESTS = 100_000
MAX_BODY_BYTES = 256 * 1024 * 1024


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


# =================================================================== batches


#: What a finished Message Batch produced.
Outcome = ResultsOutcome


@dataclass(eq=False)
class AnthropicBatch(BatchRecord):
    store: Store | None = None
    requests_path: Path | None = None

    def generate(self, cut: int | None, reason: str) -> Outcome:
        """Write the results JSONL (in processing order) and count the result types."""
        assert self.store is not None and self.requests_path is not None
        stopped = self.stopped(cut)
        lines: list[bytes | None] = [None] * self.n
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        cache: set[str] = set()  # prompt caching is per batch, in input order
        for i, raw in enumerate(iter_lines(self.requests_path)):
            fate = Fate(self.fates[i])
            request = orjson.loads(raw)
            suffix = f"{int_hash(self.id, i):016x}"
            result: dict[str, Any]
            if stopped[i]:
                result = {"type": "canceled" if reason == "cancelled" else "expired"}
            elif fate == Fate.EXPIRE:
                result = {"type": "expired"}
            elif fate == Fate.FAIL:
                problem = params_problem(request["params"], self.knobs.models)
                kind, text = (
                    (problem.type, problem.message)
                    if problem
                    else (
                        "invalid_request_error",
                        f"Request rejected by the nbbatch emulator ({FAIL_MARKER}).",
                    )
                )
                result = {"type": "errored", "error": error_json(kind, text, f"req_{suffix}")}
            elif fate == Fate.TRANSIENT_ERROR:
                kind = ("api_error", "overloaded_error")[int_hash(self.id, i, "kind") % 2]
                text = f"Simulated {kind} (nbbatch emulator); retrying the request may succeed."
                result = {"type": "errored", "error": error_json(kind, text, f"req_{suffix}")}
            else:
                try:
                    msg = message(
                        request["params"], fate, suffix, cache, "batch", self.store.responder
                    )
                    result = {"type": "succeeded", "message": msg}
                except _responder.ResponderError as exc:
                    err = error_json("invalid_request_error", str(exc), f"req_{suffix}")
                    result = {"type": "errored", "error": err}
            counts[result["type"]] += 1
            if fate == Fate.MISSING and result["type"] == "succeeded":
                continue  # the simulated provider bug: no line at all
            lines[i] = orjson.dumps({"custom_id": request["custom_id"], "result": result}) + b"\n"
        path = self.store.new_path("results-")
        write_lines(path, self.order, lines)
        return Outcome(path, counts)


def _check_requests(body: Any) -> list[dict[str, Any]]:
    """The synchronous checks of ``POST /v1/messages/batches``."""
    if not isinstance(body, dict) or "requests" not in body:
        raise ApiError(400, "requests: Field required")
    requests = body["requests"]
    if not isinstance(requests, list) or not requests:
        raise ApiError(400, "requests: List should have at least 1 item")
    if len(requests) > MAX_REQUESTS:
        raise ApiError(
            400, f"requests: a batch holds at most {MAX_REQUESTS} requests, got {len(requests)}"
        )
    seen: set[str] = set()
    for i, req in enumerate(requests):
        if not isinstance(req, dict) or "custom_id" not in req or "params" not in req:
            raise ApiError(400, f"requests.{i}: custom_id and params are required")
        cid = req["custom_id"]
        if not isinstance(cid, str) or not CUSTOM_ID.match(cid):
            raise ApiError(
                400, f"requests.{i}.custom_id: String should match pattern '{CUSTOM_ID.pattern}'"
            )
        if cid in seen:
            raise ApiError(400, f"requests.{i}.custom_id: duplicate custom_id '{cid}'")
        seen.add(cid)
    return requests


def _queued(b: BatchRecord, t: float) -> int:
    """Requests of batch ``b`` still in the processing queue at ``t``: those not yet
    processed (a cancelled batch's stay until the cancel is done)."""
    if b.ended_at(t) is not None:
        return 0
    upto = t if b.cancel_at is None else min(t, b.cancel_at)
    return b.n - b.done_rows(upto)


def _queue_room_in(store: Store, t: float, wanted: int, limit: int) -> float:
    """Seconds until ``wanted`` more requests fit in the queue (each batch leaves it as
    it is processed); when they never fit, until every batch now queued has ended."""
    batches = [b for b in store.list_batches("anthropic") if b.ended_at(t) is None]
    ends = sorted(b.processed if b.cancel_done is None else b.cancel_done for b in batches)
    for end in ends:
        if sum(_queued(b, end) for b in batches) + wanted <= limit:
            return end - t
    return (ends[-1] - t) if ends else 0.0


def _check_quotas(store: Store, wanted: int, t: float) -> None:
    """Refuse a create over the Message Batches API rate or processing-queue limit with
    429 ``rate_limit_error`` and ``retry-after``, as Anthropic does
    (https://docs.anthropic.com/en/api/rate-limits: "If you exceed any of the rate
    limits you will get a 429 error ... along with a retry-after header")."""
    knobs = store.knobs
    rate = _quotas.anthropic_create_rate(knobs)
    if rate is not None:
        wait = store.anthropic_creates.take(rate, t)
        if wait > 0:
            raise ApiError(
                429,
                _quotas.anthropic_rate_refusal(rate),
                type="rate_limit_error",
                headers={"retry-after": _quotas.retry_after(wait)},
            )
    limit = _quotas.anthropic_queue_limit(knobs)
    if limit is None:
        return
    queued = sum(_queued(b, t) for b in store.list_batches("anthropic"))
    if queued + wanted > limit:
        raise ApiError(
            429,
            _quotas.anthropic_queue_refusal(limit, queued, wanted),
            type="rate_limit_error",
            headers={"retry-after": _quotas.retry_after(_queue_room_in(store, t, wanted, limit))},
        )


def create_batch_sync(store: Store, body: Any, host: str) -> dict[str, Any]:
    requests = _check_requests(body)
    knobs = store.knobs
    if (
        _quotas.anthropic_create_rate(knobs) is None
        and _quotas.anthropic_queue_limit(knobs) is None
    ):
        return _register(store, requests, host)  # no quota: creates need not wait on others
    with store.lock:  # the quota checks and the new batch, as one step
        _check_quotas(store, len(requests), store.now())
        return _register(store, requests, host)


def _register(store: Store, requests: list[dict[str, Any]], host: str) -> dict[str, Any]:
    """Create the batch of checked ``requests`` (under the store's lock when a quota
    applies)."""
    knobs = store.knobs
    path = store.new_path("requests-")
    rows: list[RowInfo] = []
    with path.open("wb") as out:
        for req in requests:
            out.write(orjson.dumps({"custom_id": req["custom_id"], "params": req["params"]}))
            out.write(b"\n")
            params = req["params"]
            ok = params_problem(params, knobs.models) is None
            rows.append(
                RowInfo(
                    req["custom_id"],
                    0,
                    last_user(params) if ok else "",
                    ok and structured(params)[0] is not None,
                    invalid=not ok,
                )
            )
    fates = store.fates("anthropic", rows, knobs)
    t = store.now()
    batch = AnthropicBatch(
        # no finalizing phase on this API
        **schedule(store, new_id("msgbatch_"), len(rows), t, finalizing=False),
        fates=fates,
        store=store,
        requests_path=path,
    )
    store.add_batch("anthropic", batch)
    return batch_json(store, batch, t, host)


def batch_json(store: Store, b: BatchRecord, t: float, host: str) -> dict[str, Any]:
    """The MessageBatch object as seen at clock time ``t``."""
    phase = b.phase(t)
    ended = b.ended_at(t)
    outcome: Outcome | None = store.outcome(b, t)
    if outcome is not None:
        counts = dict(outcome.counts)
    else:
        counts = {"processing": b.n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    status = {"cancelling": "canceling"}.get(phase, "in_progress" if ended is None else "ended")
    return {
        "id": b.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": counts,
        "ended_at": rfc3339(store.clock.unix(ended)) if ended is not None else None,
        "created_at": rfc3339(store.clock.unix(b.created)),
        "expires_at": rfc3339(store.clock.unix(b.expires)),
        "archived_at": None,
        "cancel_initiated_at": rfc3339(store.clock.unix(b.cancel_at))
        if b.cancel_at is not None
        else None,
        "results_url": f"http://{host}/v1/messages/batches/{b.id}/results"
        if ended is not None
        else None,
    }


def _host(request: Request) -> str:
    return request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"


def _too_large(limit: int) -> ApiError:
    """Anthropic's answer to a body over an endpoint's size limit: 413
    ``request_too_large`` (platform.claude.com/docs/en/api/overview, "Request size
    limits": Message Batches 256 MB; docs/en/api/errors lists 413 request_too_large)."""
    return ApiError(
        413,
        f"Request exceeds the maximum allowed number of bytes ({limit}).",
        type="request_too_large",
        headers=NO_RETRY,
    )


async def _json_body(request: Request, limit: int | None = None) -> Any:
    length = request.headers.get("content-length")
    if limit is not None and length is not None and int(length) > limit:
        raise _too_large(limit)
    raw = await request.body()
    if limit is not None and len(raw) > limit:
        raise _too_large(limit)
    return parse_json(raw)


async def create_batch(request: Request) -> Response:
    store = _store(request)
    body = await _json_body(request, MAX_BODY_BYTES)
    result = await run_in_threadpool(create_batch_sync, store, body, _host(request))
    return JSONResponse(result)


def _batch_or_404(store: Store, batch_id: str) -> BatchRecord:
    b = store.get_batch("anthropic", batch_id)
    if b is None:
        raise ApiError(404, "Message batch not found", type="not_found_error")
    return b


async def retrieve_batch(request: Request) -> Response:
    store = _store(request)
    b = _batch_or_404(store, request.path_params["batch_id"])
    return JSONResponse(await run_in_threadpool(batch_json, store, b, store.now(), _host(request)))


async def list_batches(request: Request) -> Response:
    store = _store(request)
    raw_limit = request.query_params.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
        raise ApiError(400, "limit: Input should be between 1 and 1000")
    limit = int(raw_limit)
    items = store.list_batches("anthropic")  # newest first
    ids = [b.id for b in items]
    page, more = _page(items, ids, request, limit)
    t = store.now()
    host = _host(request)

    def render() -> list[dict[str, Any]]:
        return [batch_json(store, b, t, host) for b in page]

    return JSONResponse(
        {
            "data": await run_in_threadpool(render),
            "has_more": more,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }
    )


def _cancel_sync(store: Store, batch_id: str, host: str) -> dict[str, Any]:
    with store.lock:
        b = _batch_or_404(store, batch_id)
        t = store.now()
        if b.ended_at(t) is not None:
            raise ApiError(400, "Cannot cancel a batch that has already ended.", headers=NO_RETRY)
        b.request_cancel(t)
    return batch_json(store, b, t, host)


async def cancel_batch(request: Request) -> Response:
    store = _store(request)
    result = await run_in_threadpool(
        _cancel_sync, store, request.path_params["batch_id"], _host(request)
    )
    return JSONResponse(result)


async def delete_batch(request: Request) -> Response:
    store = _store(request)
    batch_id = request.path_params["batch_id"]
    with store.lock:
        b = _batch_or_404(store, batch_id)
        if b.ended_at(store.now()) is None:
            raise ApiError(
                400,
                "Batch is still processing; cancel it and wait for it to end before deleting.",
                headers=NO_RETRY,
            )
        store.remove_batch("anthropic", batch_id)
    assert isinstance(b, AnthropicBatch)
    for path in (b.requests_path, b.outcome.results if b.outcome else None):
        if path is not None:
            path.unlink(missing_ok=True)
    return JSONResponse({"id": batch_id, "type": "message_batch_deleted"})


async def batch_results(request: Request) -> Response:
    store = _store(request)
    b = _batch_or_404(store, request.path_params["batch_id"])
    outcome: Outcome | None = await run_in_threadpool(store.outcome, b, store.now())
    if outcome is None:
        raise ApiError(400, "Batch has not finished processing; results are not available yet.")
    return FileResponse(outcome.results, media_type="application/x-jsonl")


# =================================================================== real time


async def create_message(request: Request) -> Response:
    store = _store(request)
    params = await _json_body(request)
    problem = params_problem(params, store.knobs.models)
    if problem is not None:
        raise ApiError(problem.status, problem.message, type=problem.type)
    text = last_user(params)
    if FAIL_MARKER in text:
        raise ApiError(400, f"Request rejected by the nbbatch emulator ({FAIL_MARKER}).")
    if store.realtime_overloaded("anthropic-realtime", text):
        raise ApiError(
            529,
            "Simulated overload (nbbatch emulator); a retry will succeed.",
            type="overloaded_error",
            headers={"retry-after-ms": "10"},
        )
    suffix = new_id("", 8)
    with store.lock:  # the real-time prompt cache is shared by all requests
        try:
            result = message(
                params, Fate.OK, suffix, store.realtime_cache, "standard", store.responder
            )
        except _responder.ResponderError as exc:
            raise ApiError(400, str(exc)) from exc
    return JSONResponse(result)


async def count_tokens(request: Request) -> Response:
    """``POST /v1/messages/count_tokens``: the input tokens a Messages request would use,
    the same number its reply's usage reports (input plus cache reads and writes)."""
    store = _store(request)
    params = await _json_body(request)
    problem = _validate_anthropic.problem(params, store.knobs.models, count_tokens=True)
    if problem is not None:
        raise ApiError(problem.status, problem.message, type=problem.type)
    return JSONResponse({"input_tokens": _responder.count_tokens(params_chars(params))})


# =================================================================== models


def model_json(entry: _models.ModelEntry) -> dict[str, Any]:
    """A ModelInfo object."""
    return {
        "type": "model",
        "id": entry.id,
        "display_name": entry.display_name,
        "created_at": rfc3339(entry.created),
        "lifecycle": "active",
    }


async def list_models(request: Request) -> Response:
    """``GET /v1/models``: newest first, paged like the batch list."""
    store = _store(request)
    items = _models.catalogue("anthropic", store.knobs.models)
    raw_limit = request.query_params.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 1000:
        return _not_ok(request, 400, "invalid_request_error", "limit: between 1 and 1000")
    limit = int(raw_limit)
    ids = [m.id for m in items]
    page, more = _page(items, ids, request, limit)
    return JSONResponse(
        {
            "data": [model_json(m) for m in page],
            "has_more": more,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }
    )


async def retrieve_model(request: Request) -> Response:
    """``GET /v1/models/{model_id}``; an unknown model is a 404 ``not_found_error``."""
    store = _store(request)
    model = request.path_params["model"]
    entry = _models.find("anthropic", model, store.knobs.models)
    if entry is None:
        return _not_ok(request, 404, "not_found_error", f"model: {model}")
    return JSONResponse(model_json(entry))


def _not_ok(request: Request, status: int, kind: str, text: str) -> Response:
    # /v1/models is no /v1/messages path, so the server's error handler would answer in
    # OpenAI's shape: answer in Anthropic's here.
    request_id = str(request.scope.get("nbbatch_request_id", ""))
    return JSONResponse(error_json(kind, text, request_id), status_code=status)


routes = [
    Route("/v1/messages", create_message, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
    Route("/v1/messages/batches", create_batch, methods=["POST"]),
    Route("/v1/messages/batches", list_batches, methods=["GET"]),
    Route("/v1/messages/batches/{batch_id}", retrieve_batch, methods=["GET"]),
    Route("/v1/messages/batches/{batch_id}", delete_batch, methods=["DELETE"]),
    Route("/v1/messages/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
    Route("/v1/messages/batches/{batch_id}/results", batch_results, methods=["GET"]),
]


def _page(items: list[Any], ids: list[str], request: Request, limit: int) -> tuple[list[Any], bool]:
    """One page of ``items`` (whose ids are ``ids``) after ``after_id`` or before
    ``before_id``, at most ``limit`` long, and whether there are more."""
    after, before = request.query_params.get("after_id"), request.query_params.get("before_id")
    if after is not None:
        rest = items[ids.index(after) + 1 :] if after in ids else []
        return rest[:limit], len(rest) > limit
    if before is not None:
        rest = items[: ids.index(before)] if before in ids else []
        return rest[-limit:], len(rest) > limit
    return items[:limit], len(items) > limit
