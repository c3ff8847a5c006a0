"""Anthropic Message Batches through the official ``anthropic`` SDK.

Requests go out as ``messages.batches.create(requests=[{custom_id, params}])``; results
are streamed from the batch's ``results_url`` (through ``messages.batches.results``) and
kept as the raw bytes received, then normalised with pyarrow's JSON reader.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from .._errors import InputError, ProviderError
from . import _jsonl, _params
from ._lazy import lazy_module
from .base import (
    ROW_RESULT_SCHEMA,
    BatchInfo,
    Provider,
    Refusal,
    RequestSpec,
    connection_failure,
    copy_capped,
    empty_results,
    failure_row,
    is_transient,
    joined_texts,
    look_up_model,
    read_capped,
    retryable_of,
    sdk_kwargs,
    success_row,
    sync_twin,
    tier_value,
    unless_ok,
)

if TYPE_CHECKING:
    import anthropic
else:  # imported on first use: registering the provider imports no SDK
    anthropic = lazy_module("anthropic")

#: Anthropic requires max_tokens on every request; this is nbbatch's default when the
#: caller does not set one (enough for a paragraph or a small JSON object).
DEFAULT_MAX_TOKENS = 1024

# Most output tokens one request may ask for (max_tokens), by model: the aliases and the
# names a dated snapshot reduces to (claude-sonnet-4-20250514 -> claude-sonnet-4). From
# the "Max output" row of platform.claude.com/docs/en/about-claude/models/overview and
# each model's page (platform.claude.com/docs/en/models/<model>/overview, e.g. Opus 4.6's
# 128K); Sonnet 4's 64,000 is also the figure in the service's own error ("max_tokens:
# N > 64000, which is the maximum allowed number of output tokens for ...") quoted in
# github.com/OpenHands/OpenHands/issues/11090, and Sonnet 4.6's 128,000 the correction in
# the Effect-TS @effect/ai-anthropic 4.0.0-beta.106 release notes. Claude 3.7 Sonnet is
# left out: a beta header raises its limit. A model not listed is not checked.
OUTPUT_LIMITS: dict[str, int] = {
    "claude-3-haiku": 4_096,
    "claude-3-5-haiku": 8_192,
    "claude-3-5-haiku-latest": 8_192,
    "claude-sonnet-4": 64_000,
    "claude-sonnet-4-0": 64_000,
    "claude-opus-4": 32_000,
    "claude-opus-4-0": 32_000,
    "claude-opus-4-1": 32_000,
    "claude-sonnet-4-5": 64_000,
    "claude-haiku-4-5": 64_000,
    "claude-opus-4-5": 64_000,
    "claude-opus-4-6": 128_000,
    "claude-sonnet-4-6": 128_000,
}


#: What a Message Batches request accepts: the SDK's own params type, plus the sampling
#: parameters the API still takes although the SDK's types no longer declare them (built
#: on first use, as it needs the SDK).
@functools.cache
def endpoint_params() -> _params.Endpoint:
    """The Message Batches request's :class:`_params.Endpoint`."""
    from anthropic.types import message_create_params

    return _params.Endpoint(
        "/v1/messages",
        message_create_params.MessageCreateParamsNonStreaming,
        owned={
            "model": "model=",
            "messages": "the prompt template",
            "system": "system=",
            "max_tokens": "max_tokens=",
        },
        ranges={"temperature": (0.0, 1.0), "top_p": (0.0, 1.0), "top_k": (1, None)},
        extra={"temperature": float, "top_p": float, "top_k": int},
    )


_content = pa.list_(pa.struct([("type", pa.string()), ("text", pa.large_string())]))
_usage = pa.struct(
    [
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("cache_creation_input_tokens", pa.int64()),
        ("cache_read_input_tokens", pa.int64()),
    ]
)
#: The part of a results line that nbbatch reads.
LINE_SCHEMA = pa.schema(
    [
        ("custom_id", pa.string()),
        (
            "result",
            pa.struct(
                [
                    ("type", pa.string()),
                    (
                        "message",
                        pa.struct(
                            [("content", _content), ("stop_reason", pa.string()), ("usage", _usage)]
                        ),
                    ),
                    (
                        "error",
                        pa.struct(
                            [
                                (
                                    "error",
                                    pa.struct(
                                        [("type", pa.string()), ("message", pa.large_string())]
                                    ),
                                )
                            ]
                        ),
                    ),
                ]
            ),
        ),
    ]
)


#: Turns the newline ending each request line into the comma of a JSON array.
_COMMAS = bytes.maketrans(b"\n", b",")


#: "limit of 100,000 batch requests" in a processing-queue refusal.
_STATED_LIMIT = re.compile(r"limit of\s*([\d,]+)\s*(?:batch )?requests", re.IGNORECASE)

# "Maximum batch requests in processing queue" for usage tiers 1 to 4, shared by all
# models, from https://docs.anthropic.com/en/api/rate-limits ("Message Batches API
# Rate Limits"): a request stays in the queue until it has been processed.
QUEUE_REQUESTS = (100_000, 200_000, 300_000, 500_000)


def _error_message(exc: anthropic.APIStatusError) -> str:
    """The ``error.message`` of an API error's body, else its text."""
    body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error")
    inner: dict[str, Any] = error if isinstance(error, dict) else body
    return str(inner.get("message") or exc.message or exc)


class AnthropicProvider(Provider):
    """The Anthropic Message Batches API."""

    name = "anthropic"
    label = "Anthropic"
    default_endpoint = "/v1/messages"
    key_variables = ("ANTHROPIC_API_KEY",)
    token_variables = ("ANTHROPIC_AUTH_TOKEN",)
    base_url_variable = "ANTHROPIC_BASE_URL"
    client_types = ("anthropic:Anthropic", "anthropic:AsyncAnthropic")
    model_prefixes = ("claude",)
    prices_provider = "anthropic"
    emulator_prefix = ""
    local_background = True
    # The service allows 100,000 requests and 256 MB per batch; keep a margin (the
    # request body also wraps the lines in {"requests": [...]}).
    max_requests = 100_000
    max_bytes = 240 * 1024 * 1024

    client: anthropic.Anthropic

    @classmethod
    def make_client(cls, *, api_key: str | None, base_url: str | None) -> Any:
        """An ``anthropic.Anthropic`` client."""
        return anthropic.Anthropic(api_key=api_key, base_url=base_url)

    @classmethod
    def make_token_client(cls, *, token: str, base_url: str | None) -> Any:
        """An ``anthropic.Anthropic`` client sending a bearer token."""
        return anthropic.Anthropic(api_key=None, auth_token=token, base_url=base_url)

    @classmethod
    def sync_client(cls, client: Any) -> Any:
        """``anthropic.Anthropic`` with an ``AsyncAnthropic``'s key, address and settings."""
        if not isinstance(client, anthropic.AsyncAnthropic):
            return client
        return sync_twin(anthropic.Anthropic, client, "auth_token")

    # The batch queue: requests not yet processed, all models together; a create over
    # it is refused at once with 429 ``rate_limit_error``
    # (https://docs.anthropic.com/en/api/rate-limits, "Message Batches API").
    quota_unit = "requests"
    quota_per_model = False
    # The rate-limits page says only that a 429 describes "which rate limit was
    # exceeded, along with a retry-after header" (https://docs.anthropic.com/en/api/rate-limits);
    # the wording of a full processing queue is published nowhere, so whether it
    # states the limit is not known: a job whose limit is unknown fills the queue in
    # steps (see nbbatch._quota.fill_room), so one refusal finds it either way. A
    # figure in the message, when there is one, is used at once.
    quota_limit_stated = False

    def quota_refusal(
        self, *, info: BatchInfo | None = None, error: BaseException | None = None
    ) -> Refusal | None:
        """A create refused with 429 for the processing queue (not for the rate of
        calls, which is retried as any 429): its message names the queue, and the
        limit when it states one ("limit of 100,000 batch requests")."""
        cause = getattr(error, "__cause__", None)
        if not isinstance(cause, anthropic.RateLimitError):
            return None
        message = _error_message(cause)
        if "queue" not in message.lower():
            return None  # the per-minute rate of batch calls: wait and try again
        return Refusal.stating(message, _STATED_LIMIT)

    @classmethod
    def tier_limit(cls, tier: str, model: str) -> int | None:
        """Anthropic's published "Maximum batch requests in processing queue" at usage
        ``tier`` (one figure for all models)."""
        return tier_value(QUEUE_REQUESTS, tier)

    # -- requests --------------------------------------------------------------------------
    def params(self, spec: RequestSpec, prompt: Any) -> dict[str, Any]:
        """The Messages API parameters for one prompt."""
        if spec.endpoint != self.default_endpoint:
            raise InputError(
                f"endpoint {spec.endpoint!r} is not available on Anthropic; leave endpoint "
                "unset (Message Batches run /v1/messages)."
            )
        params: dict[str, Any] = {
            "model": spec.model,
            "max_tokens": spec.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": [{"role": "user", "content": prompt}],
        }
        if spec.system is not None:
            if spec.cache_system:
                # Mark the shared instruction cacheable: later requests read it at the
                # cache price instead of paying for it in full again.
                params["system"] = [
                    {"type": "text", "text": spec.system, "cache_control": {"type": "ephemeral"}}
                ]
            else:
                params["system"] = spec.system
        if spec.temperature is not None:
            params["temperature"] = spec.temperature
        if spec.response_format is not None:
            params["output_config"] = {"format": _output_format(spec.response_format)}
        params.update(spec.params)
        return params

    def validate(self, spec: RequestSpec) -> None:
        """Check ``spec`` against the SDK's Messages params type."""
        if spec.endpoint != self.default_endpoint:
            self.params(spec, "")  # raises the endpoint's error
        _params.check_max_tokens(spec.max_tokens)
        # With a response_format, nbbatch fills ``output_config.format``.
        owned = {}
        if spec.response_format is not None:
            owned = {"output_config": "response_format= (it fills output_config.format)"}
        _params.check(endpoint_params(), spec.params, {"temperature": spec.temperature}, owned)
        self.check_output_limit(spec)

    @classmethod
    def check_output_limit(cls, spec: RequestSpec) -> None:
        """Over the model's limit the service refuses every row with a 400 ("max_tokens:
        N > L, which is the maximum allowed number of output tokens for ..."); the
        default (:data:`DEFAULT_MAX_TOKENS`) is under every listed limit."""
        _params.check_output_limit(
            OUTPUT_LIMITS, cls.label, cls.base_model(spec.model), spec.max_tokens
        )

    def find_model(self, model: str) -> bool | list[str] | None:
        """``models.retrieve``, and on a 404 ``models.list`` for the ids there are."""
        models = self.client.models
        return look_up_model(
            model,
            retrieve=lambda: models.retrieve(model),
            list_names=lambda: [m.id for m in models.list(limit=1000)],
            errors=(anthropic.AnthropicError, ValueError),
            wrap=lambda exc, doing: _provider_error(exc, doing, type(self)),
        )

    def encode(self, custom_ids: pa.Array, prompts: pa.Array, spec: RequestSpec) -> bytes:
        line = {
            "custom_id": _jsonl.ID_SENTINEL,
            "params": self.params(spec, _jsonl.PROMPT_SENTINEL),
        }
        return _jsonl.encode_lines(custom_ids, prompts, line)

    # -- batches ---------------------------------------------------------------------------
    def create(self, jsonl: bytes, spec: RequestSpec, metadata: dict[str, str]) -> BatchInfo:
        # The lines are already the JSON of each request: they are sent as the body as
        # they are, through the SDK's own request path (auth, retries, the response
        # parsed as a MessageBatch). Handing the SDK a list of request dicts instead costs
        # some 8 KB of Python objects a request, 800 MB for a full batch of 100,000.
        lines = jsonl.translate(_COMMAS)  # one copy: each line's end becomes a comma
        body = b"".join((b'{"requests":[', memoryview(lines)[:-1], b"]}"))
        del lines
        try:
            batch = self.client.post(
                "/v1/messages/batches",
                cast_to=anthropic.types.messages.MessageBatch,
                content=body,
                options={"headers": {"Content-Type": "application/json"}},
            )
        except (anthropic.AnthropicError, ValueError) as exc:
            raise _provider_error(exc, "creating a batch", type(self)) from exc
        return _info(batch)

    def retrieve(self, batch_id: str) -> BatchInfo:
        try:
            return _info(self.client.messages.batches.retrieve(batch_id))
        except (anthropic.AnthropicError, ValueError) as exc:
            raise _provider_error(exc, f"reading batch {batch_id}", type(self)) from exc

    def cancel(self, batch_id: str) -> BatchInfo:
        try:
            return _info(self.client.messages.batches.cancel(batch_id))
        except anthropic.BadRequestError:  # already ended: nothing to cancel
            return self.retrieve(batch_id)
        except (anthropic.AnthropicError, ValueError) as exc:
            raise _provider_error(exc, f"cancelling batch {batch_id}", type(self)) from exc

    def find_batch(
        self, metadata: dict[str, str], n_requests: int, since: float, known: set[str]
    ) -> BatchInfo | None:
        # Message batches carry no metadata: match on creation time and size instead,
        # taking the oldest unknown batch of that size created after the attempt began.
        try:
            found = None
            for batch in self.client.messages.batches.list(limit=100):
                if batch.created_at.timestamp() < since - 60:
                    break
                info = _info(batch)
                if batch.id not in known and info.total == n_requests:
                    found = info
            return found
        except (anthropic.AnthropicError, ValueError) as exc:
            raise _provider_error(exc, "looking for an unrecorded batch", type(self)) from exc

    def list_batches(self) -> Iterator[BatchInfo]:
        try:
            for batch in self.client.messages.batches.list(limit=100):  # the SDK pages on
                yield _info(batch)
        except anthropic.AnthropicError as exc:
            raise _provider_error(exc, "listing batches", type(self)) from exc

    def delete_batch(self, info: BatchInfo) -> None:
        # DELETE /v1/messages/batches/{id}: an ended batch, its requests and results.
        try:
            self.client.messages.batches.delete(info.batch_id)
        except anthropic.NotFoundError:
            return  # deleted already
        except anthropic.AnthropicError as exc:
            raise _provider_error(exc, f"deleting batch {info.batch_id}", type(self)) from exc

    def fetch_results(self, info: BatchInfo, *, max_bytes: int | None = None) -> list[bytes]:
        if not info.raw.get("results_url"):
            return []
        with self._results(info) as chunks:
            # The raw bytes as received (kept in the ledger folder), decoded once below.
            return [read_capped(chunks, max_bytes, f"the results of {info.batch_id}")]

    def download_results(self, info: BatchInfo, sink: Any, *, max_bytes: int | None) -> None:
        if not info.raw.get("results_url"):
            return
        with self._results(info) as chunks, sink.new() as out:
            # Streamed to disk as received: never more than a chunk of it in memory.
            copy_capped(chunks, out, max_bytes, f"the results of {info.batch_id}")

    @contextlib.contextmanager
    def _results(self, info: BatchInfo) -> Iterator[Iterator[bytes]]:
        """The chunks of a batch's results as they arrive; the stream is closed after,
        and an SDK error while reading it becomes ours."""
        try:
            stream = self.client.messages.batches.results(info.batch_id)
            try:
                yield stream.http_response.iter_bytes()
            finally:
                stream.close()
        except (anthropic.AnthropicError, ValueError) as exc:
            raise _provider_error(
                exc, f"downloading results of {info.batch_id}", type(self)
            ) from exc

    def parse_results(self, raw: bytes, spec: RequestSpec) -> pa.Table:
        return parse_lines(raw)

    # -- real time ---------------------------------------------------------------------------
    def realtime(self, custom_id: str, prompt: str, spec: RequestSpec) -> dict[str, Any]:
        """One Messages API call with the params a batch request would carry, normalised
        like :func:`parse_lines` normalises a results line."""
        params = self.params(spec, prompt)
        create = self.client.messages.create
        try:
            reply = create(**sdk_kwargs(create, params))
        except anthropic.APIStatusError as exc:
            kind = str(exc.type or f"http_{exc.status_code}")
            message = exc.api_message or exc.message
            return failure_row(custom_id, kind, message, is_transient(kind, exc.status_code))
        except anthropic.APIConnectionError as exc:
            return connection_failure(custom_id, exc, anthropic.APITimeoutError, self.label)
        usage = reply.usage
        read = usage.cache_read_input_tokens or 0
        created = usage.cache_creation_input_tokens or 0
        return success_row(
            custom_id,
            # Text blocks joined, as _text does for batch results.
            "".join(b.text for b in reply.content if b.type == "text"),
            # Every input token, cached ones included, as in _normalise.
            usage.input_tokens + read + created,
            usage.output_tokens,
            read,
            truncated=reply.stop_reason == "max_tokens",
        )

    def truncated(self, raw: bytes, spec: RequestSpec) -> pa.Table:
        """Which results lines hold a reply cut off at ``max_tokens``."""
        t = _jsonl.read_lines(raw, LINE_SCHEMA)
        message = pc.struct_field(t.column("result").combine_chunks(), "message")
        cut = pc.equal(pc.struct_field(message, "stop_reason"), "max_tokens")
        return pa.table(
            {
                "custom_id": t.column("custom_id").combine_chunks(),
                "truncated": pc.fill_null(cut, False),
            }
        )


def _output_format(response_format: dict[str, Any]) -> dict[str, Any]:
    """OpenAI-style ``response_format`` in Anthropic's ``output_config.format`` shape.

    Anthropic's structured outputs accept a subset of JSON Schema and reject the rest
    with a 400 (``minimum``, ``maxLength``, ... "is not supported"), so the schema goes
    through the SDK's own ``transform_schema``, as ``messages.parse`` does: unsupported
    keywords move into the description. Replies are still validated against the full
    schema afterwards (:mod:`nbbatch._structured`).
    """
    if response_format.get("type") == "json_schema":
        inner = response_format.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, dict) else response_format.get("schema")
        if isinstance(schema, dict):
            try:
                return {"type": "json_schema", "schema": anthropic.transform_schema(schema)}
            except (TypeError, ValueError) as exc:
                raise InputError(
                    f"response_format's schema cannot be sent to Anthropic: {exc}"
                ) from exc
    raise InputError(
        f"Anthropic's structured output takes a JSON schema only (response_format type "
        f"{response_format.get('type')!r} given); pass a pydantic model or a JSON schema."
    )


def _info(batch: Any) -> BatchInfo:
    c = batch.request_counts
    total = c.processing + c.succeeded + c.errored + c.canceled + c.expired
    return BatchInfo(
        batch_id=batch.id,
        status=batch.processing_status,
        ended=batch.processing_status == "ended",
        total=total,
        done=total - c.processing,
        failed=c.errored + c.expired,
        raw=batch.model_dump(mode="json"),
    )


def _provider_error(
    exc: Exception, doing: str, cls: type[Provider] = AnthropicProvider
) -> ProviderError:
    return cls.wrap_sdk_error(
        exc,
        doing,
        unreachable=isinstance(exc, anthropic.APIConnectionError),
        bad_key=isinstance(exc, anthropic.AuthenticationError),
    )


# -- result lines --------------------------------------------------------------------------
def parse_lines(raw: bytes) -> pa.Table:
    """Normalise a results file into :data:`ROW_RESULT_SCHEMA`."""
    if not raw or raw.isspace():
        return empty_results()
    return _normalise(_jsonl.read_lines(raw, LINE_SCHEMA))


def _normalise(t: pa.Table) -> pa.Table:
    result = t.column("result").combine_chunks()
    kind = pc.struct_field(result, "type")
    message = pc.struct_field(result, "message")
    usage = pc.struct_field(message, "usage")
    status = _status_of(kind)
    ok = pc.equal(status, "succeeded")
    error_type, error_message = _errors_of(ok, kind, pc.struct_field(result, ["error", "error"]))
    retryable = retryable_of(status, error_type)
    read = pc.fill_null(pc.struct_field(usage, "cache_read_input_tokens"), 0)
    created = pc.fill_null(pc.struct_field(usage, "cache_creation_input_tokens"), 0)
    fresh = pc.struct_field(usage, "input_tokens")
    # Anthropic counts cached input apart from input_tokens; nbbatch's input_tokens is
    # every input token, with cached_tokens the part read from the cache.
    input_tokens = pc.add(pc.add(fresh, read), created)
    return pa.table(
        [
            t.column("custom_id").combine_chunks(),
            status,
            pc.if_else(ok, _text(pc.struct_field(message, "content")), None),
            error_type,
            error_message,
            retryable,
            input_tokens,
            pc.struct_field(usage, "output_tokens"),
            pc.if_else(pc.is_null(fresh), None, read),
        ],
        schema=ROW_RESULT_SCHEMA,
    )


def _status_of(kind: pa.Array) -> pa.Array:
    """nbbatch's row status for each result ``type`` (anything unknown: failed)."""
    return pc.fill_null(
        pc.if_else(
            pc.equal(kind, "succeeded"),
            "succeeded",
            pc.if_else(
                pc.equal(kind, "errored"),
                "failed",
                pc.if_else(
                    pc.equal(kind, "canceled"),
                    "cancelled",
                    pc.if_else(pc.equal(kind, "expired"), "expired", "failed"),
                ),
            ),
        ),
        "failed",
    )


def _errors_of(ok: pa.Array, kind: pa.Array, err: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(error type, error message) of each row that did not succeed (null where it did):
    the error's own, else what an expired or cancelled request means."""
    error_type = unless_ok(
        ok,
        pa.string(),
        pc.struct_field(err, "type"),
        pc.if_else(pc.equal(kind, "expired"), "expired", None),
        pc.if_else(pc.equal(kind, "canceled"), "canceled", None),
        pa.scalar("unknown_error"),
    )
    error_message = unless_ok(
        ok,
        pa.large_string(),
        pc.struct_field(err, "message"),
        pc.if_else(
            pc.equal(kind, "expired"),
            pa.scalar("the batch ended before this request ran", pa.large_string()),
            None,
        ),
        pc.if_else(
            pc.equal(kind, "canceled"),
            pa.scalar("the batch was cancelled before this request ran", pa.large_string()),
            None,
        ),
        pa.scalar("the provider gave no message", pa.large_string()),
    )
    return error_type, error_message


def _text(content: pa.Array) -> pa.Array:
    """The text blocks of each message, joined (vectorised over every row)."""
    content = pc.fill_null(content, pa.scalar([], content.type))
    blocks = content.flatten()
    texts = pc.if_else(
        pc.equal(pc.struct_field(blocks, "type"), "text"),
        pc.fill_null(pc.struct_field(blocks, "text"), ""),
        pa.scalar("", pa.large_string()),
    )
    return joined_texts(content, texts)
