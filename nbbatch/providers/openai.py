"""OpenAI Batch API through the official ``openai`` SDK.

Upload a JSONL file (``purpose="batch"``), create a batch on one endpoint, poll it, and
download its output and error files. Result lines are normalised with pyarrow's JSON
reader and an explicit reduced schema (fast for millions of lines); a file the reader
cannot take falls back to orjson line by line.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from .._errors import InputError, ProviderError
from . import _jsonl, _params
from ._lazy import lazy_module
from .base import (
    ROW_RESULT_SCHEMA,
    SCORE_FIELD,
    BatchInfo,
    Provider,
    Refusal,
    RequestSpec,
    connection_failure,
    copy_capped,
    empty_results,
    failure_row,
    is_transient,
    look_up_model,
    read_capped,
    reply_settings_set,
    retryable_of,
    scored,
    sdk_kwargs,
    success_row,
    sync_twin,
    tier_row,
    tier_value,
    unless_ok,
)

if TYPE_CHECKING:
    import openai
else:  # imported on first use: registering the provider imports no SDK
    openai = lazy_module("openai")

log = logging.getLogger("nbbatch")

ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings")
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})

_SAMPLING: dict[str, tuple[float | None, float | None]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "frequency_penalty": (-2.0, 2.0),
    "presence_penalty": (-2.0, 2.0),
}


#: What each endpoint accepts: the SDK's own params type, and the keys nbbatch fills
#: (built on first use, as it needs the SDK).
@functools.cache
def endpoint_params() -> dict[str, _params.Endpoint]:
    """Each endpoint's :class:`_params.Endpoint` (the SDK's params type, our own keys)."""
    from openai.types import embedding_create_params
    from openai.types.chat import completion_create_params
    from openai.types.responses import response_create_params

    return {
        "/v1/chat/completions": _params.Endpoint(
            "/v1/chat/completions",
            completion_create_params.CompletionCreateParamsBase,
            owned={
                "model": "model=",
                "messages": "the prompt template (and system= for a system message)",
                "max_completion_tokens": "max_tokens=",
                "response_format": "response_format=",
            },
            ranges=_SAMPLING,
        ),
        "/v1/responses": _params.Endpoint(
            "/v1/responses",
            response_create_params.ResponseCreateParamsBase,
            owned={
                "model": "model=",
                "input": "the prompt template",
                "instructions": "system=",
                "max_output_tokens": "max_tokens=",
            },
            ranges=_SAMPLING,
        ),
        "/v1/embeddings": _params.Endpoint(
            "/v1/embeddings",
            embedding_create_params.EmbeddingCreateParams,
            owned={"model": "model=", "input": "the prompt template"},
            ranges={},
        ),
    }


_cached = pa.struct([("cached_tokens", pa.int64())])
# Chat and embeddings count prompt/completion tokens; the Responses API input/output.
_chat_tokens = [
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("prompt_tokens_details", _cached),
]
_responses_tokens = [
    ("input_tokens", pa.int64()),
    ("output_tokens", pa.int64()),
    ("input_tokens_details", _cached),
]
_error = pa.struct([("message", pa.large_string()), ("type", pa.string()), ("code", pa.string())])
_chat_choices = pa.list_(
    pa.struct(
        [
            ("message", pa.struct([("content", pa.large_string())])),
            ("finish_reason", pa.string()),
        ]
    )
)
_responses_output = pa.list_(
    pa.struct(
        [
            ("type", pa.string()),
            ("content", pa.list_(pa.struct([("type", pa.string()), ("text", pa.large_string())]))),
        ]
    )
)
_embedding_data = pa.list_(pa.struct([("embedding", pa.list_(pa.float64()))]))
#: Chat choices with their token log-probabilities (read only when a job asks for them).
_chat_choices_scored = pa.list_(
    pa.struct(
        [
            ("message", pa.struct([("content", pa.large_string())])),
            ("finish_reason", pa.string()),
            (
                "logprobs",
                pa.struct([("content", pa.list_(pa.struct([("logprob", pa.float64())])))]),
            ),
        ]
    )
)


def line_schema(endpoint: str, *, errors: bool = True, scores: bool = False) -> pa.Schema:
    """The part of an output or error file line that nbbatch reads, for one endpoint.

    Reading only these fields (the rest is skipped by the parser) is what makes a
    million lines take about a second. ``errors=False`` leaves out the error fields,
    which an output file (all successes) does not need: a quarter faster again.
    ``scores=True`` reads chat's token log-probabilities too (see :func:`scored`).
    """
    reply: list[tuple[str, pa.DataType]]
    tokens = _chat_tokens
    if endpoint == "/v1/embeddings":
        reply = [("data", _embedding_data)]
    elif endpoint == "/v1/responses":
        reply = [("output", _responses_output), ("status", pa.string())]
        tokens = _responses_tokens
    else:
        reply = [("choices", _chat_choices_scored if scores else _chat_choices)]
    if not errors:
        body = pa.struct([*reply, ("usage", pa.struct(tokens))])
        return pa.schema(
            [
                ("custom_id", pa.string()),
                ("response", pa.struct([("status_code", pa.int64()), ("body", body)])),
            ]
        )
    body = pa.struct([*reply, ("usage", pa.struct(tokens)), ("error", _error)])
    return pa.schema(
        [
            ("custom_id", pa.string()),
            ("response", pa.struct([("status_code", pa.int64()), ("body", body)])),
            ("error", pa.struct([("code", pa.string()), ("message", pa.large_string())])),
        ]
    )


# The GPT-5 models of August 2025 and the o-series reasoning models refuse any
# temperature but the default 1 (``unsupported_value`` / ``unsupported_parameter``, the
# errors quoted in github.com/diffbot/code-gpt-docs/issues/445 and
# github.com/BeehiveInnovations/pal-mcp-server/issues/78); refused here before anything
# is sent (the emulator refuses it too). ``max_tokens=`` is always sent as
# ``max_completion_tokens``, which the reasoning models require.
_FIXED_TEMPERATURE = re.compile(
    r"^(gpt-5(-mini|-nano|-pro)?|o1(-mini)?|o3(-mini|-pro)?|o4-mini)(-\d{4}-\d{2}-\d{2})?$"
)


# Most output tokens one request may ask for, by model (a dated snapshot has its model's
# limit unless listed by itself). Each model's page, platform.openai.com/docs/models/<id>,
# gives it as "Max output tokens"; gpt-4o-2024-05-13 is the snapshot whose page gives
# 4,096. gpt-3.5-turbo's 4,096 is the figure in the service's own error quoted in
# github.com/ChatGPTNextWeb/NextChat/issues/3195. A model not listed is not checked.
OUTPUT_LIMITS: dict[str, int] = {
    "gpt-3.5-turbo": 4_096,
    "gpt-4o-2024-05-13": 4_096,
    "gpt-4o": 16_384,
    "gpt-4o-mini": 16_384,
    "gpt-4.1": 32_768,
    "gpt-4.1-mini": 32_768,
    "gpt-4.1-nano": 32_768,
    "o1": 100_000,
    "o3": 100_000,
    "o3-mini": 100_000,
    "o4-mini": 100_000,
    "gpt-5": 128_000,
    "gpt-5-mini": 128_000,
    "gpt-5-nano": 128_000,
}


# Flex processing (``service_tier="flex"``, used by ``on_deadline="flex"``) is offered on
# some models only. OpenAI's flex processing guide
# (https://platform.openai.com/docs/guides/flex-processing) first said it was "only
# available for o3 and o4-mini models"; it now says "Supported models are listed on the
# pricing page", whose Flex table we could not read. The GPT-5.4, GPT-5.5 and GPT-5.6
# families are listed as offering flex by third-party pages
# (https://docs.merge.dev/merge-gateway/features/service-tiers,
# https://testy.cool/blog/tools-tech/flex-inference). Other GPT-5 names (gpt-5, gpt-5-mini,
# gpt-5.1, gpt-5.2) were not confirmed, so they are not listed: widen this once the pricing
# page confirms them. A model not listed is refused by the service with a 400
# invalid_request_error, not served at the standard tier
# (https://learn.microsoft.com/azure/foundry/openai/how-to/flex-processing).
FLEX_MODELS = ("o3", "o4-mini")
#: Families whose every member offers flex (``gpt-5.4``, ``gpt-5.4-mini``, ...).
FLEX_FAMILIES = ("gpt-5.4", "gpt-5.5", "gpt-5.6")


def offers_flex(model: str) -> bool:
    """Whether OpenAI serves ``model`` with flex processing (``service_tier="flex"``);
    a dated snapshot (``o3-2025-04-16``) counts as its model."""
    if model in FLEX_MODELS or model in FLEX_FAMILIES:
        return True
    if any(re.fullmatch(re.escape(m) + r"-\d{4}-\d{2}-\d{2}", model) for m in FLEX_MODELS):
        return True
    return model.startswith(tuple(f + "-" for f in FLEX_FAMILIES))


def _check_model_rules(spec: RequestSpec) -> None:
    temperature = spec.temperature
    if temperature is not None and temperature != 1 and _FIXED_TEMPERATURE.match(spec.model):
        raise InputError(
            f"temperature={temperature!r} is refused by {spec.model}: it takes only the "
            "default temperature (1). Leave temperature unset, or use a model that takes one "
            "(gpt-4.1, or gpt-5.1 with reasoning off)."
        )


class OpenAIProvider(Provider):
    """The OpenAI Batch API (also proxies and the emulator, via the client)."""

    name = "openai"
    label = "OpenAI"
    default_endpoint = "/v1/chat/completions"
    key_variables = ("OPENAI_API_KEY",)
    base_url_variable = "OPENAI_BASE_URL"
    client_types: ClassVar[tuple[str, ...]] = ("openai:OpenAI", "openai:AsyncOpenAI")
    model_prefixes: ClassVar[tuple[str, ...]] = (
        *("gpt-", "chatgpt-", "text-embedding-3", "text-embedding-ada"),
        *("o1", "o3", "o4", "davinci", "babbage"),
    )
    claims_unknown_models = True
    prices_provider = "openai"
    emulator_prefix = "/v1"
    local_background = True
    # The service allows 50,000 requests and 200 MB per batch; keep a margin.
    max_requests = 50_000
    max_bytes = 190 * 1024 * 1024

    client: openai.OpenAI

    @classmethod
    def make_client(cls, *, api_key: str | None, base_url: str | None) -> Any:
        """An ``openai.OpenAI`` client."""
        return openai.OpenAI(api_key=api_key, base_url=base_url)

    @classmethod
    def sync_client(cls, client: Any) -> Any:
        """``openai.OpenAI`` with an ``AsyncOpenAI``'s key, address and settings."""
        if not isinstance(client, openai.AsyncOpenAI):
            return client
        return sync_twin(openai.OpenAI, client, "organization", "project")

    # The batch queue: input tokens queued per model; a batch over it is created, then
    # fails in validation with ``token_limit_exceeded`` and a message stating the limit.
    quota_unit = "tokens"
    quota_per_model = True
    refuses_late = True

    def quota_refusal(
        self, *, info: BatchInfo | None = None, error: BaseException | None = None
    ) -> Refusal | None:
        """A batch that failed validation with ``token_limit_exceeded``; its message
        states the limit ("... Limit: 2,000,000 enqueued tokens. ...", the shape in
        https://github.com/openai/openai-python/issues/2084)."""
        if info is None or info.failure_code != "token_limit_exceeded":
            return None
        return Refusal.stating(info.failure or "", _STATED_LIMIT)

    def under_review(self, status: str) -> bool:
        """Until validation is over, a batch may still fail for the queue quota."""
        return status == "validating"

    def discard_refused(self, info: BatchInfo) -> None:
        """Delete the refused batch's uploaded input file (it counts against the
        organisation's file storage, and is of no further use)."""
        file_id = info.raw.get("input_file_id")
        if not file_id:
            return
        try:
            self.client.files.delete(str(file_id))
        except openai.OpenAIError as exc:  # best effort: the file expires anyway
            log.info("nbbatch: input file %s of a refused batch not deleted: %s", file_id, exc)

    @classmethod
    def tier_limit(cls, tier: str, model: str) -> int | None:
        """OpenAI's published batch queue limit for ``model`` at usage ``tier``."""
        row = tier_row(QUEUE_TOKENS, model)
        return tier_value(row, tier) if row else None

    # -- requests --------------------------------------------------------------------------
    @classmethod
    def wire_endpoint(cls, endpoint: str) -> str:
        """``endpoint`` (``/v1/chat/completions``) as the batch API spells it in a request
        line's ``url`` and the batch's ``endpoint``."""
        return endpoint

    def body(self, spec: RequestSpec, prompt: Any) -> dict[str, Any]:
        """The request body for one prompt (used with a sentinel for the whole job)."""
        if spec.endpoint == "/v1/embeddings":
            body: dict[str, Any] = {"model": spec.model, "input": prompt}
        elif spec.endpoint == "/v1/responses":
            body = {"model": spec.model, "input": prompt}
            if spec.system is not None:
                body["instructions"] = spec.system
            if spec.max_tokens is not None:
                body["max_output_tokens"] = spec.max_tokens
            if spec.response_format is not None:
                body["text"] = {"format": _responses_format(spec.response_format)}
        else:
            messages = [] if spec.system is None else [{"role": "system", "content": spec.system}]
            messages.append({"role": "user", "content": prompt})
            body = {"model": spec.model, "messages": messages}
            if spec.max_tokens is not None:
                body["max_completion_tokens"] = spec.max_tokens
            if spec.response_format is not None:
                body["response_format"] = spec.response_format
        if spec.temperature is not None and spec.endpoint != "/v1/embeddings":
            body["temperature"] = spec.temperature
        body.update(spec.params)
        return body

    def validate(self, spec: RequestSpec) -> None:
        """Check ``spec`` against the SDK's params type of its endpoint."""
        endpoint = endpoint_params().get(spec.endpoint)
        if endpoint is None:
            raise InputError(
                f"endpoint {spec.endpoint!r} is not supported; use one of {list(ENDPOINTS)}."
            )
        _params.check_max_tokens(spec.max_tokens)
        if spec.endpoint == "/v1/embeddings":
            # body() leaves these out of an embeddings request: say so, not drop them.
            ignored = reply_settings_set(spec)
            if ignored:
                raise InputError(
                    f"{', '.join(ignored)} cannot be used with /v1/embeddings (an embedding "
                    "has no reply to shape); leave them unset."
                )
        # With a response_format, nbbatch fills the Responses API's ``text.format``.
        owned = {}
        if spec.endpoint == "/v1/responses" and spec.response_format is not None:
            owned = {"text": "response_format= (it fills text.format)"}
        _params.check(endpoint, spec.params, {"temperature": spec.temperature}, owned)
        _check_model_rules(spec)
        self.check_output_limit(spec)

    @classmethod
    def check_output_limit(cls, spec: RequestSpec) -> None:
        """A chat request over the model's output limit is refused by the service with
        a 400 ("max_tokens is too large: ... This model supports at most N completion
        tokens", quoted in the issue cited above :data:`OUTPUT_LIMITS`) for every row.
        Checked on /v1/chat/completions only: how the Responses API answers a
        ``max_output_tokens`` over the limit is not published. ``max_tokens=`` is sent
        as ``max_completion_tokens``, which nbbatch owns, so it is the only value."""
        if spec.endpoint == "/v1/chat/completions":
            _params.check_output_limit(
                OUTPUT_LIMITS, cls.label, cls.base_model(spec.model), spec.max_tokens
            )

    def find_model(self, model: str) -> bool | list[str] | None:
        """``models.retrieve``, and on a 404 ``models.list`` for the ids there are.

        An Azure OpenAI client names deployments, not models: not checked.
        """
        if isinstance(self.client, openai.AzureOpenAI):
            return None
        models = self.client.models
        return look_up_model(
            model,
            retrieve=lambda: models.retrieve(model),
            list_names=lambda: [m.id for m in models.list()],
            errors=(openai.OpenAIError, ValueError),
            wrap=lambda exc, doing: _provider_error(exc, doing, type(self)),
        )

    def encode(self, custom_ids: pa.Array, prompts: pa.Array, spec: RequestSpec) -> bytes:
        if spec.endpoint not in ENDPOINTS:
            raise InputError(
                f"endpoint {spec.endpoint!r} is not supported; use one of {list(ENDPOINTS)}."
            )
        line = {
            "custom_id": _jsonl.ID_SENTINEL,
            "method": "POST",
            "url": self.wire_endpoint(spec.endpoint),
            "body": self.body(spec, _jsonl.PROMPT_SENTINEL),
        }
        return _jsonl.encode_lines(custom_ids, prompts, line)

    # -- batches ---------------------------------------------------------------------------
    def create(self, jsonl: bytes, spec: RequestSpec, metadata: dict[str, str]) -> BatchInfo:
        name = f"nbbatch-{metadata.get('nbbatch_job', 'job')}.jsonl"
        try:
            uploaded = self.client.files.create(
                file=(name, jsonl, "application/jsonl"), purpose="batch"
            )
            batch = self.client.batches.create(
                input_file_id=uploaded.id,
                endpoint=self.wire_endpoint(spec.endpoint),  # type: ignore[arg-type]
                completion_window="24h",
                metadata=metadata,
            )
        except (openai.OpenAIError, ValueError) as exc:
            raise _provider_error(exc, "creating a batch", type(self)) from exc
        return _info(batch)

    def retrieve(self, batch_id: str) -> BatchInfo:
        try:
            return _info(self.client.batches.retrieve(batch_id))
        except (openai.OpenAIError, ValueError) as exc:
            raise _provider_error(exc, f"reading batch {batch_id}", type(self)) from exc

    def cancel(self, batch_id: str) -> BatchInfo:
        try:
            return _info(self.client.batches.cancel(batch_id))
        except openai.ConflictError:  # already ended: nothing to cancel
            return self.retrieve(batch_id)
        except (openai.OpenAIError, ValueError) as exc:
            raise _provider_error(exc, f"cancelling batch {batch_id}", type(self)) from exc

    def find_batch(
        self, metadata: dict[str, str], n_requests: int, since: float, known: set[str]
    ) -> BatchInfo | None:
        # Newest first; nbbatch tags every batch with its job and part in metadata.
        try:
            for batch in self.client.batches.list(limit=100):
                if batch.created_at < since - 60:
                    return None
                meta = batch.metadata or {}
                if batch.id not in known and all(meta.get(k) == v for k, v in metadata.items()):
                    return _info(batch)
        except (openai.OpenAIError, ValueError) as exc:
            raise _provider_error(exc, "looking for an unrecorded batch", type(self)) from exc
        return None

    def list_batches(self) -> Iterator[BatchInfo]:
        try:
            for batch in self.client.batches.list(limit=100):  # the SDK pages on
                yield _info(batch)
        except openai.OpenAIError as exc:
            raise _provider_error(exc, "listing batches", type(self)) from exc

    def delete_batch(self, info: BatchInfo) -> None:
        # The Batch API has no call to delete a batch; its files can be deleted
        # (DELETE /v1/files/{file_id}), the input, output and error file alike.
        for key in ("input_file_id", "output_file_id", "error_file_id"):
            file_id = info.raw.get(key)
            if not file_id:
                continue
            try:
                self.client.files.delete(file_id)
            except openai.NotFoundError:
                continue  # deleted already
            except openai.OpenAIError as exc:
                raise _provider_error(exc, f"deleting file {file_id}", type(self)) from exc

    def fetch_results(self, info: BatchInfo, *, max_bytes: int | None = None) -> list[bytes]:
        files: list[bytes] = []
        for key in ("output_file_id", "error_file_id"):
            file_id = info.raw.get(key)
            if file_id:
                left = None if max_bytes is None else max_bytes - sum(map(len, files))
                try:
                    # Streamed, so a file past the cap is refused before it is all read.
                    with self.client.files.with_streaming_response.content(file_id) as resp:
                        files.append(read_capped(resp.iter_bytes(), left, f"file {file_id}"))
                except (openai.OpenAIError, ValueError) as exc:
                    raise _provider_error(exc, f"downloading file {file_id}", type(self)) from exc
        return files

    def download_results(self, info: BatchInfo, sink: Any, *, max_bytes: int | None) -> None:
        written = 0
        for key in ("output_file_id", "error_file_id"):
            file_id = info.raw.get(key)
            if file_id:
                left = None if max_bytes is None else max_bytes - written
                try:
                    # Streamed to disk: never more than a chunk of it in memory.
                    with (
                        self.client.files.with_streaming_response.content(file_id) as resp,
                        sink.new() as out,
                    ):
                        written += copy_capped(resp.iter_bytes(), out, left, f"file {file_id}")
                except (openai.OpenAIError, ValueError) as exc:
                    raise _provider_error(exc, f"downloading file {file_id}", type(self)) from exc

    def parse_results(self, raw: bytes, spec: RequestSpec) -> pa.Table:
        return parse_lines(raw, spec.endpoint, scores=scored(spec))

    # -- real time ---------------------------------------------------------------------------
    def realtime(self, custom_id: str, prompt: str, spec: RequestSpec) -> dict[str, Any]:
        """One request through the real-time endpoint ``spec.endpoint``, with the body a
        batch line would carry, normalised like :func:`parse_lines` normalises a line."""
        body = self.body(spec, prompt)
        try:
            if spec.endpoint == "/v1/embeddings":
                # Ask for floats: the SDK's default (base64) is not what a batch returns.
                create: Any = self.client.embeddings.create
                body = {**body, "encoding_format": "float"}
            elif spec.endpoint == "/v1/responses":
                create = self.client.responses.create
            elif spec.endpoint == "/v1/chat/completions":
                create = self.client.chat.completions.create
            else:
                raise InputError(
                    f"endpoint {spec.endpoint!r} is not supported; use one of {list(ENDPOINTS)}."
                )
            reply = create(**sdk_kwargs(create, body))
        except openai.APIStatusError as exc:
            data = exc.body if isinstance(exc.body, dict) else {}
            kind = exc.type or exc.code or data.get("type") or f"http_{exc.status_code}"
            return failure_row(
                custom_id,
                kind,
                str(data.get("message") or exc.message),
                is_transient(kind, exc.status_code),
            )
        except openai.APIConnectionError as exc:
            return connection_failure(custom_id, exc, openai.APITimeoutError, self.label)
        return _realtime_row(custom_id, reply, spec.endpoint)

    def truncated(self, raw: bytes, spec: RequestSpec) -> pa.Table:
        """Which lines of an output file hold a reply cut off at the token limit
        (chat ``finish_reason: "length"``, Responses ``status: "incomplete"`` for
        ``max_output_tokens``)."""
        t = _jsonl.read_lines(raw, _TRUNCATION_SCHEMA)
        body = pc.struct_field(t.column("response").combine_chunks(), "body")
        if spec.endpoint == "/v1/responses":
            cut = pc.and_(
                pc.equal(pc.struct_field(body, "status"), "incomplete"),
                pc.equal(
                    pc.struct_field(body, ["incomplete_details", "reason"]), "max_output_tokens"
                ),
            )
        else:
            choices = pc.struct_field(body, "choices")
            first = pc.list_element(pc.fill_null(choices, pa.scalar([None], choices.type)), 0)
            cut = pc.equal(pc.struct_field(first, "finish_reason"), "length")
        return pa.table(
            {
                "custom_id": t.column("custom_id").combine_chunks(),
                "truncated": pc.fill_null(cut, False),
            }
        )


def _responses_format(response_format: dict[str, Any]) -> dict[str, Any]:
    """Chat's ``response_format`` in the Responses API's ``text.format`` shape."""
    if response_format.get("type") == "json_schema":
        inner = dict(response_format.get("json_schema", {}))
        return {"type": "json_schema", **inner}
    return response_format


#: "Limit: 2,000,000 enqueued tokens" in a ``token_limit_exceeded`` message.
_STATED_LIMIT = re.compile(r"Limit:\s*([\d,]+)\s*enqueued tokens", re.IGNORECASE)

# The "Batch queue limit" (input tokens queued per model) for usage tiers 1 to 5, from
# each model's page, e.g. https://developers.openai.com/api/docs/models/gpt-4o-mini
# ("Rate limits" table); the rate-limits guide says it counts "the total number of input
# tokens queued for a given model" (https://developers.openai.com/api/docs/guides/
# rate-limits). Tier 1 of gpt-4o (90,000) and gpt-4o-mini (2,000,000) is also quoted in
# https://community.openai.com/t/1028595. Models not listed have no preset.
QUEUE_TOKENS: dict[str, tuple[int, ...]] = {
    "gpt-4o": (90_000, 1_350_000, 50_000_000, 200_000_000, 5_000_000_000),
    "gpt-4o-mini": (2_000_000, 20_000_000, 40_000_000, 1_000_000_000, 15_000_000_000),
    "gpt-4.1": (90_000, 1_350_000, 50_000_000, 200_000_000, 5_000_000_000),
    "gpt-4.1-mini": (2_000_000, 20_000_000, 40_000_000, 1_000_000_000, 15_000_000_000),
    "gpt-5-mini": (5_000_000, 20_000_000, 40_000_000, 1_000_000_000, 15_000_000_000),
    "gpt-5-nano": (2_000_000, 20_000_000, 40_000_000, 1_000_000_000, 15_000_000_000),
}


def _info(batch: Any) -> BatchInfo:
    counts = batch.request_counts
    total = counts.total if counts else 0
    completed = counts.completed if counts else 0
    failed = counts.failed if counts else 0
    failure = code = None
    if batch.status == "failed":
        errors = batch.errors.data if batch.errors and batch.errors.data else []
        failure = (
            "; ".join(
                (f"line {e.line}: " if e.line else "") + (e.message or e.code or "unknown error")
                for e in errors
            )
            or "the provider failed the batch without saying why"
        )
        code = errors[0].code if errors else None
    return BatchInfo(
        batch_id=batch.id,
        status=batch.status,
        ended=batch.status in ENDED,
        total=total,
        done=completed + failed,
        failed=failed,
        failure=failure,
        failure_code=code,
        raw=batch.model_dump(mode="json"),
    )


def _provider_error(
    exc: Exception, doing: str, cls: type[Provider] = OpenAIProvider
) -> ProviderError:
    return cls.wrap_sdk_error(
        exc,
        doing,
        unreachable=isinstance(exc, openai.APIConnectionError),
        bad_key=isinstance(exc, openai.AuthenticationError),
    )


# -- result lines --------------------------------------------------------------------------
def parse_lines(
    raw: bytes, endpoint: str = "/v1/chat/completions", *, scores: bool = False
) -> pa.Table:
    """Normalise the lines of an output or error file into :data:`ROW_RESULT_SCHEMA`;
    with ``scores``, plus :data:`SCORE_FIELD`: each reply's least likely token's
    probability (see :func:`_scores`)."""
    if not raw or raw.isspace():
        empty = empty_results()
        return empty.append_column(SCORE_FIELD, pa.nulls(0, pa.float64())) if scores else empty
    # An output file holds only successes: read it without the error fields first, and
    # only if some line is not a success read it again in full.
    lean = _jsonl.read_fast(raw, line_schema(endpoint, errors=False, scores=scores))
    if lean is not None and lean.num_rows and _all_succeeded(lean):
        table = _succeeded(lean, endpoint)
        ok = None
    else:
        lean = _jsonl.read_lines(raw, line_schema(endpoint, scores=scores))
        table = _normalise(lean, endpoint)
        ok = pc.equal(table.column("status"), "succeeded")
    if not scores:
        return table
    score = _scores(pc.struct_field(lean.column("response").combine_chunks(), "body"))
    if ok is not None:
        score = pc.if_else(ok, score, pa.scalar(None, pa.float64()))
    return table.append_column(SCORE_FIELD, score)


def _scores(body: pa.Array) -> pa.Array:
    """Each chat reply's score: the probability of its least likely token (null without
    log-probabilities). The minimum, not the mean: a reply is as unsure as its least sure
    token (the label it chose), and a mean dilutes that one token with the sure ones
    around it (field names, punctuation), the more so the longer the reply."""
    choices = pc.struct_field(body, "choices")
    first = pc.list_element(pc.fill_null(choices, pa.scalar([None], choices.type)), 0)
    content = pc.struct_field(first, ["logprobs", "content"])
    lengths = pc.fill_null(pc.list_value_length(content), 0).to_numpy(zero_copy_only=False)
    flat = pc.struct_field(pc.list_flatten(content), "logprob")
    values = pc.fill_null(flat, np.nan).to_numpy(zero_copy_only=False).astype(float)
    out = np.full(len(lengths), np.nan)
    has = lengths > 0
    if has.any():
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[has]
        out[has] = np.exp(np.minimum.reduceat(values, starts))
    return pa.array(out, pa.float64(), from_pandas=True)


def _all_succeeded(t: pa.Table) -> bool:
    code = pc.struct_field(t.column("response").combine_chunks(), "status_code")
    if code.null_count:
        return False
    low, high = pc.min_max(code).values()
    return low.as_py() >= 200 and high.as_py() < 300


def _succeeded(t: pa.Table, endpoint: str) -> pa.Table:
    """The row table of lines that all succeeded (no error columns to work out)."""
    body = pc.struct_field(t.column("response").combine_chunks(), "body")
    usage = pc.struct_field(body, "usage")
    n = t.num_rows
    input_tokens, output_tokens, cached = _tokens(usage, endpoint)
    return pa.table(
        [
            t.column("custom_id").combine_chunks(),
            pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int8)), ["succeeded"]).cast(
                pa.string()
            ),
            _output_text(body, endpoint),
            pa.nulls(n, pa.string()),
            pa.nulls(n, pa.large_string()),
            pa.nulls(n, pa.bool_()),
            input_tokens,
            output_tokens,
            cached,
        ],
        schema=ROW_RESULT_SCHEMA,
    )


def _tokens(usage: pa.Array, endpoint: str) -> tuple[pa.Array, pa.Array, pa.Array]:
    """(input, output, cached input) tokens from the usage objects of one endpoint."""
    prefix = "input" if endpoint == "/v1/responses" else "prompt"
    out = "output_tokens" if endpoint == "/v1/responses" else "completion_tokens"
    return (
        pc.struct_field(usage, f"{prefix}_tokens"),
        pc.struct_field(usage, out)
        if endpoint != "/v1/embeddings"
        else pa.nulls(len(usage), pa.int64()),
        pc.struct_field(usage, [f"{prefix}_tokens_details", "cached_tokens"]),
    )


def _normalise(t: pa.Table, endpoint: str) -> pa.Table:
    resp = t.column("response").combine_chunks()
    err = t.column("error").combine_chunks()
    status_code = pc.struct_field(resp, "status_code")
    body = pc.struct_field(resp, "body")
    usage = pc.struct_field(body, "usage")
    # Whole-line errors (the request never ran): expired, cancelled, or other.
    line_code = pc.struct_field(err, "code")
    line_msg = pc.struct_field(err, "message")
    body_err = pc.struct_field(body, "error")
    ok = pc.fill_null(
        pc.and_kleene(
            pc.is_null(line_code),
            pc.and_(pc.greater_equal(status_code, 200), pc.less(status_code, 300)),
        ),
        False,
    )
    status = _status_of(ok, line_code)
    error_type, error_message = _errors_of(ok, line_code, line_msg, body_err, status_code)
    retryable = (
        retryable_of(status, error_type, status_code)
        if not pc.all(ok).as_py()
        else pa.nulls(len(t), pa.bool_())
    )
    output = pc.if_else(ok, _output_text(body, endpoint), pa.scalar(None, pa.large_string()))
    input_tokens, output_tokens, cached = _tokens(usage, endpoint)
    return pa.table(
        [
            t.column("custom_id").combine_chunks(),
            status,
            output,
            error_type,
            error_message,
            retryable,
            input_tokens,
            output_tokens,
            cached,
        ],
        schema=ROW_RESULT_SCHEMA,
    )


def _status_of(ok: pa.Array, line_code: pa.Array) -> pa.Array:
    """nbbatch's row status: succeeded (a 2xx answer), expired or cancelled (the line's
    error says the batch ended first), else failed."""
    return pc.if_else(
        ok,
        "succeeded",
        pc.if_else(
            pc.fill_null(pc.equal(line_code, "batch_expired"), False),
            "expired",
            pc.if_else(
                pc.fill_null(pc.equal(line_code, "batch_cancelled"), False), "cancelled", "failed"
            ),
        ),
    )


def _errors_of(
    ok: pa.Array,
    line_code: pa.Array,
    line_msg: pa.Array,
    body_err: pa.Array,
    status_code: pa.Array,
) -> tuple[pa.Array, pa.Array]:
    """(error type, error message) of each row that did not succeed (null where it did):
    the line's error, else the body's, else the HTTP status."""
    error_type = unless_ok(
        ok,
        pa.string(),
        line_code,
        pc.struct_field(body_err, "type"),
        pc.struct_field(body_err, "code"),
        pc.binary_join_element_wise("http_", pc.cast(status_code, pa.string()), ""),
        pa.scalar("unknown_error"),
    )
    error_message = unless_ok(
        ok,
        pa.large_string(),
        pc.cast(line_msg, pa.large_string()),
        pc.cast(pc.struct_field(body_err, "message"), pa.large_string()),
        pa.scalar("the provider gave no message", pa.large_string()),
    )
    return error_type, error_message


def _output_text(body: pa.Array, endpoint: str) -> pa.Array:
    """The reply of each body: chat message content, Responses output text, or the
    embedding vector as JSON text."""
    if endpoint == "/v1/embeddings":
        data = pc.struct_field(body, "data").to_pylist()
        return pa.array(
            [None if not d else orjson.dumps(d[0]["embedding"]).decode() for d in data],
            pa.large_string(),
        )
    if endpoint == "/v1/responses":
        items = pc.struct_field(body, "output").to_pylist()
        return pa.array([_responses_text(i) for i in items], pa.large_string())
    choices = pc.struct_field(body, "choices")
    first = pc.list_element(pc.fill_null(choices, pa.scalar([None], choices.type)), 0)
    return pc.cast(pc.struct_field(first, ["message", "content"]), pa.large_string())


def _responses_text(items: list[dict[str, Any]] | None) -> str | None:
    if not items:
        return None
    texts = [
        part.get("text") or ""
        for item in items
        if item.get("type") == "message"
        for part in item.get("content") or []
        if part.get("type") == "output_text"
    ]
    return "".join(texts) if texts else None


# -- real time -----------------------------------------------------------------------------
#: The part of an output line that tells whether the reply was cut off.
_TRUNCATION_SCHEMA = pa.schema(
    [
        ("custom_id", pa.string()),
        (
            "response",
            pa.struct(
                [
                    (
                        "body",
                        pa.struct(
                            [
                                ("choices", pa.list_(pa.struct([("finish_reason", pa.string())]))),
                                ("status", pa.string()),
                                ("incomplete_details", pa.struct([("reason", pa.string())])),
                            ]
                        ),
                    )
                ]
            ),
        ),
    ]
)


def _realtime_row(custom_id: str, reply: Any, endpoint: str) -> dict[str, Any]:
    """A real-time reply in the terms :func:`parse_lines` gives a batch line."""
    usage = reply.usage
    truncated = False
    cached = None
    extra: dict[str, Any] = {}
    if endpoint == "/v1/embeddings":
        # Like a batch line: the first vector as JSON text, no completion tokens.
        text = orjson.dumps(reply.data[0].embedding).decode() if reply.data else None
        input_tokens = usage.prompt_tokens if usage else None
        output_tokens = None
    elif endpoint == "/v1/responses":
        text = _responses_text(reply.model_dump(mode="json").get("output"))
        details = reply.incomplete_details
        truncated = reply.status == "incomplete" and getattr(details, "reason", None) == (
            "max_output_tokens"
        )
        input_tokens = usage.input_tokens if usage else None
        output_tokens = usage.output_tokens if usage else None
        if usage and usage.input_tokens_details:
            cached = usage.input_tokens_details.cached_tokens
    else:
        choice = reply.choices[0] if reply.choices else None
        text = choice.message.content if choice else None
        tokens = choice.logprobs.content if choice and choice.logprobs else None
        if tokens:  # asked for (see scored): the least likely token's probability
            extra["score"] = math.exp(min(t.logprob for t in tokens))
        truncated = choice is not None and choice.finish_reason == "length"
        input_tokens = usage.prompt_tokens if usage else None
        output_tokens = usage.completion_tokens if usage else None
        if usage and usage.prompt_tokens_details:
            cached = usage.prompt_tokens_details.cached_tokens
    row = success_row(custom_id, text, input_tokens, output_tokens, cached, truncated=truncated)
    return {**row, **extra}
