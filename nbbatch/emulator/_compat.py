"""What the OpenAI-compatible variants (``._groq``, ``._together``) share.

Both take OpenAI batch input files and write OpenAI output and error lines, so a batch
of theirs is an :class:`~._openai.OpenAIBatch` run by the OpenAI code. What a variant
adds is checked here: the input file's purpose, the endpoint, the completion window,
and its own models (genai-prices' table of that provider, plus ``start(models=...)``).
Each variant keeps its batches under its own name in the store, so the OpenAI routes
never list them, and the other way round.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from . import _models, _openai
from ._openai import OpenAIBatch
from ._state import Store, StoredFile
from ._wire import ApiError

#: The one endpoint both services' batches take (Groq's SDK types it as the only
#: value; Together's batch guide names it as the available endpoint for chat).
CHAT = "/v1/chat/completions"


def _ensure(store: Store, kind: str) -> None:
    """Make room for the variant's batches in the store (it names only its own three)."""
    with store.lock:
        store.batches.setdefault(kind, {})
        store.counters.setdefault(f"{kind}_batches_created", 0)


def batches_of(store: Store, kind: str) -> list[Any]:
    """The variant's batches, newest first (none yet: an empty list)."""
    _ensure(store, kind)
    return store.list_batches(kind)


def batch_or_404(store: Store, kind: str, batch_id: str) -> OpenAIBatch:
    """One of the variant's batches, or the 404 its API answers."""
    _ensure(store, kind)
    return _openai.batch_or_404(store, batch_id, kind)


def finder(kind: str) -> Callable[[Store, str], OpenAIBatch]:
    """The lookup of one of the variant's batches by id (see :func:`._wire.showing`)."""

    def find(store: Store, batch_id: str) -> OpenAIBatch:
        return batch_or_404(store, kind, batch_id)

    return find


def model_ids(kind: str) -> tuple[str, ...]:
    """The ids of the variant's own models."""
    return tuple(m.id for m in _models.catalogue(kind))


def create_batch(
    store: Store,
    kind: str,
    body: Any,
    *,
    purpose: str,
    check_window: Callable[[Any], None],
) -> OpenAIBatch:
    """Check a create request the variant's way, then run it as an OpenAI batch."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    for key in ("input_file_id", "endpoint"):
        if key not in body:
            raise ApiError(400, f"Missing required parameter: '{key}'.", param=key)
    if body["endpoint"] != CHAT:
        raise ApiError(
            400, f"endpoint must be {CHAT!r}, got {body['endpoint']!r}.", param="endpoint"
        )
    check_window(body.get("completion_window"))
    f = _input_file(store, str(body["input_file_id"]), purpose)
    own = model_ids(kind)
    v = _openai.validate_input(f.path, f.bytes, CHAT, (*store.knobs.models, *own))
    if not v.errors and v.model and _models.find(kind, v.model, store.knobs.models) is None:
        # The emulator's choice: a model the service does not serve fails the batch in
        # validation (the OpenAI check above would take an OpenAI model name).
        v.fail(
            "model_not_found",
            f"The model `{v.model}` does not exist or you do not have access to it.",
            param="body.model",
        )
    _ensure(store, kind)
    made = _openai.register_batch(store, body, f, v, kind=kind, extra_models=own)
    return batch_or_404(store, kind, made["id"])


def _input_file(store: Store, file_id: str, purpose: str) -> StoredFile:
    f = store.get_file(file_id)
    if f is None:
        raise ApiError(
            400, f"Invalid input_file_id: no such file '{file_id}'.", param="input_file_id"
        )
    if f.purpose != purpose:
        raise ApiError(
            400,
            f"The input file must have purpose '{purpose}', not '{f.purpose}'.",
            param="input_file_id",
        )
    return f


def realtime(kind: str) -> Callable[[Request], Awaitable[Response]]:
    """``POST .../v1/chat/completions`` of a variant: answered as OpenAI's real-time chat
    answers it (the same body, reply and fault markers; both services' chat API is
    OpenAI's), for the variant's own models only; another is the 404 its API answers."""

    async def handler(request: Request) -> Response:
        store: Store = request.app.state.store
        body = await _openai.json_body(request)
        model = body.get("model") if isinstance(body, dict) else None
        if isinstance(model, str) and _models.find(kind, model, store.knobs.models) is None:
            raise ApiError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return await _openai.realtime_handler(CHAT, model_ids(kind))(request)

    return handler
