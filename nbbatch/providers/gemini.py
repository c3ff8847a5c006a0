"""Gemini Batch Mode through the official ``google-genai`` SDK.

Requests go out as a JSONL file of ``{"key": custom_id, "request": GenerateContentRequest}``
lines, uploaded with ``files.upload`` (the SDK's resumable upload); the batch is made with
``batches.create(model=..., src="files/...")``, polled with ``batches.get`` and its
responses file (``dest.file_name``) read with ``files.download``. The request lines are
REST JSON (camelCase, as the service's protobuf JSON parser reads them), made by the SDK's
own pydantic types so a parameter the SDK does not know is refused before anything is
sent. Embeddings (``endpoint="embedContent"``) take the same path with
``{"key", "request": EmbedContentRequest}`` lines and ``batches.create_embeddings``.

Batches are read as the long-running operation the API returns
(``operations.get``), not ``batches.get``: the SDK's ``BatchJob`` drops the
operation's ``batchStats`` (progress) and its ``error`` (why a batch failed). See
``docs/protocols/gemini.md`` for the protocol and its gotchas.
"""

from __future__ import annotations

import difflib
import functools
import io
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pydantic

from .._errors import ConfigError, InputError, ProviderError
from . import _jsonl
from ._lazy import lazy_module
from .base import (
    ROW_RESULT_SCHEMA,
    BatchInfo,
    Provider,
    Refusal,
    RequestSpec,
    empty_results,
    failure_row,
    is_transient,
    joined_texts,
    look_up_model,
    read_capped,
    reply_settings_set,
    retryable_of,
    success_row,
    tier_row,
    tier_value,
    unless_ok,
)

if TYPE_CHECKING:
    from google import genai
    from google.genai import errors as genai_errors
    from google.genai import types
else:  # imported on first use: registering the provider imports no SDK
    genai = lazy_module("google.genai")
    genai_errors = lazy_module("google.genai.errors")
    types = lazy_module("google.genai.types")

#: The default endpoint: text replies (``batches.create``, ``models/M:batchGenerateContent``).
ENDPOINT = "generateContent"
#: Embedding vectors (``batches.create_embeddings``, ``models/M:asyncBatchEmbedContent``).
EMBED = "embedContent"
ENDPOINTS = (ENDPOINT, EMBED)
#: Keywords an embedding request takes (EmbedContentConfig's Gemini API fields), by their
#: REST names; the SDK's other fields (mime_type, auto_truncate, ...) are Vertex AI only.
EMBED_FIELDS = {
    "task_type": "taskType",
    "title": "title",
    "output_dimensionality": "outputDimensionality",
}
#: Tries of a responses-file download (the SDK does not retry downloads itself).
DOWNLOAD_ATTEMPTS = 3
#: Batch states after which nothing changes (the SDK's ``JobState`` names).
ENDED = frozenset(
    {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
)
#: Request-level fields a ``submit(**params)`` keyword may set besides generationConfig.
REQUEST_FIELDS = {"safety_settings": "safetySettings", "cached_content": "cachedContent"}
#: Keywords nbbatch fills itself, and the submit argument that sets each.
OWNED = {
    "max_output_tokens": "max_tokens=",
    "temperature": "temperature=",
    "response_mime_type": "response_format=",
    "response_schema": "response_format=",
    "response_json_schema": "response_format=",
    "system_instruction": "system=",
    "contents": "the prompt template",
    # The other providers' names for the same things, so a ported call hears what to use.
    "messages": "the prompt template",
    "system": "system=",
    "max_tokens": "max_tokens=",
    "max_completion_tokens": "max_tokens=",
    "generation_config": "max_tokens=, temperature= and the GenerationConfig keywords",
}

#: Bounds of numeric generationConfig fields (None: unbounded), from the API reference;
#: the SDK's types check only that they are numbers.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "top_k": (1, None),
    "candidate_count": (1, None),
    "max_output_tokens": (1, None),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}

_error = pa.struct([("code", pa.int64()), ("message", pa.large_string()), ("status", pa.string())])
_part = pa.struct([("text", pa.large_string()), ("thought", pa.bool_())])
_candidate = pa.struct(
    [("content", pa.struct([("parts", pa.list_(_part))])), ("finishReason", pa.string())]
)
_usage = pa.struct(
    [
        ("promptTokenCount", pa.int64()),
        ("candidatesTokenCount", pa.int64()),
        ("thoughtsTokenCount", pa.int64()),
        ("cachedContentTokenCount", pa.int64()),
    ]
)
#: The part of a responses line that nbbatch reads.
LINE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        (
            "response",
            pa.struct(
                [
                    ("candidates", pa.list_(_candidate)),
                    ("usageMetadata", _usage),
                    ("promptFeedback", pa.struct([("blockReason", pa.string())])),
                ]
            ),
        ),
        ("error", _error),
        ("status", _error),  # some write-ups name the per-line error "status"
    ]
)


log = logging.getLogger("nbbatch")

# "Batch enqueued tokens" per model for usage tiers 1 to 3 (tokens of all active batch
# jobs of a model), from https://ai.google.dev/gemini-api/docs/rate-limits ("Batch API
# rate limits"). Models not listed have no preset.
QUEUE_TOKENS: dict[str, tuple[int, ...]] = {
    "gemini-3-pro-preview": (50_000_000, 500_000_000, 1_000_000_000),
    "gemini-3-flash-preview": (3_000_000, 400_000_000, 500_000_000),
    "gemini-2.5-pro": (5_000_000, 500_000_000, 1_000_000_000),
    "gemini-2.5-flash": (3_000_000, 400_000_000, 1_000_000_000),
    "gemini-2.5-flash-lite": (10_000_000, 500_000_000, 1_000_000_000),
    "gemini-2.0-flash": (10_000_000, 1_000_000_000, 5_000_000_000),
    "gemini-2.0-flash-lite": (10_000_000, 1_000_000_000, 5_000_000_000),
}


def _exhausted(exc: BaseException | None) -> bool:
    """Whether ``exc`` is the API's 429 ``RESOURCE_EXHAUSTED``."""
    return isinstance(exc, genai_errors.APIError) and (
        exc.code == 429 or exc.status == "RESOURCE_EXHAUSTED"
    )


class GeminiProvider(Provider):
    """Gemini Batch Mode (the Gemini Developer API, not Vertex AI)."""

    name = "gemini"
    label = "Gemini"
    default_endpoint = ENDPOINT
    # The google-genai SDK itself prefers GOOGLE_API_KEY when both are set.
    key_variables = ("GOOGLE_API_KEY", "GEMINI_API_KEY")
    base_url_variable = "GOOGLE_GEMINI_BASE_URL"
    client_types = ("google.genai.client:Client",)
    # Google's embedding models whose names do not start with ``gemini``, too.
    model_prefixes = ("gemini", "text-embedding-004", "embedding-001")
    prices_provider = "google"
    emulator_prefix = "/gemini"
    local_background = True
    # A batch input file may be up to 2 GB; keep a margin. The docs give no request-count
    # limit (only enqueued tokens per model): 100,000 keeps a chunk's memory bounded.
    max_requests = 100_000
    max_bytes = 1_900 * 1024 * 1024

    client: genai.Client

    @classmethod
    def make_client(cls, *, api_key: str | None, base_url: str | None) -> Any:
        """A ``google.genai.Client`` that retries what the other SDKs retry."""
        # Unlike the other SDKs, google-genai retries nothing unless asked: retry what
        # the others retry (429, 5xx, no answer), three attempts in all.
        retry = types.HttpRetryOptions(attempts=3, initial_delay=0.5, max_delay=8.0)
        options = types.HttpOptions(base_url=base_url, retry_options=retry)
        return genai.Client(api_key=api_key, http_options=options)

    @classmethod
    def sync_client(cls, client: Any) -> Any:
        """The client itself; its ``.aio`` client is refused (nbbatch polls from a thread)."""
        if type(client).__name__ == "AsyncClient" and type(client).__module__.startswith(
            "google.genai"
        ):
            raise ConfigError(
                "pass the google.genai.Client itself, not its .aio client: nbbatch polls "
                "from a thread and uses the synchronous calls.",
                provider="gemini",
            )
        return client

    @classmethod
    def rebind(cls, client: Any, http_client: Any) -> Any:
        """A new ``genai.Client`` with the same key and options (it has no with_options)."""
        inner = client._api_client
        options = inner._http_options.model_copy(update={"httpx_client": http_client})
        return genai.Client(api_key=inner.api_key, http_options=options)

    @classmethod
    def address_of(cls, client: Any) -> str:
        """google.genai.Client keeps its address in its API client's options."""
        options = getattr(getattr(client, "_api_client", None), "_http_options", None)
        url = getattr(options, "base_url", None)
        return str(url or "https://generativelanguage.googleapis.com/")

    @classmethod
    def owns_model(cls, model: str) -> bool:
        """``gemini-*``, also as ``models/gemini-*``, and Google's embedding models."""
        return model.removeprefix("models/").startswith(cls.model_prefixes)

    @classmethod
    def owns_client(cls, client: Any) -> bool:
        """A ``google.genai.Client``, or its ``.aio`` client (refused by sync_client)."""
        return type(client).__module__.startswith("google.genai")

    # The batch queue: input tokens of the active batch jobs, per model; a create over
    # it is refused at once with 429 RESOURCE_EXHAUSTED, which states no limit (as
    # reported in https://github.com/googleapis/python-genai/issues/1901).
    quota_unit = "tokens"
    quota_per_model = True
    #: Its refusal never states the limit: a job whose limit is unknown fills the queue
    #: in steps (see nbbatch._quota.fill_room), so one refusal finds it.
    quota_limit_stated = False
    #: Accounts below the lowest published queue exist: Google's usage tiers start with a
    #: free tier, for which the "Batch API rate limits" table gives no figure
    #: (https://ai.google.dev/gemini-api/docs/rate-limits), so even a job within tier 1's
    #: queue fills it in steps (nbbatch._quota._fill_unknown).
    quota_below_tiers = True

    def quota_refusal(
        self, *, info: BatchInfo | None = None, error: BaseException | None = None
    ) -> Refusal | None:
        """A create refused with 429 ``RESOURCE_EXHAUSTED``."""
        cause = getattr(error, "__cause__", None)
        if not _exhausted(cause):
            return None
        return Refusal(str(getattr(cause, "message", None) or cause))

    @classmethod
    def tier_limit(cls, tier: str, model: str) -> int | None:
        """Gemini's published "Batch enqueued tokens" for ``model`` at usage ``tier``."""
        row = tier_row(QUEUE_TOKENS, model)
        return tier_value(row, tier) if row else None

    def __init__(self, client: Any) -> None:
        if getattr(client, "vertexai", False):
            raise ConfigError(
                "this google.genai.Client is set up for Vertex AI, whose batch jobs read "
                "from Cloud Storage or BigQuery; nbbatch runs the Gemini Developer API's "
                "Batch Mode. Make the client with api_key=... (GEMINI_API_KEY).",
                provider="gemini",
            )
        super().__init__(client)

    # -- requests --------------------------------------------------------------------------
    def generation_config(self, spec: RequestSpec) -> dict[str, Any]:
        """The generationConfig fields (snake_case, as the SDK's types name them)."""
        config: dict[str, Any] = {
            k: v for k, v in spec.params.items() if k not in REQUEST_FIELDS and k in _gen_fields()
        }
        if spec.max_tokens is not None:
            config["max_output_tokens"] = spec.max_tokens
        if spec.temperature is not None:
            config["temperature"] = spec.temperature
        if spec.response_format is not None:
            config["response_mime_type"] = "application/json"
            config["response_json_schema"] = _schema(spec.response_format)
        return config

    def request(self, spec: RequestSpec, prompt: Any) -> dict[str, Any]:
        """One request in REST JSON (what a batch line carries): a GenerateContentRequest,
        or for ``embedContent`` an EmbedContentRequest."""
        _check_endpoint(spec.endpoint)
        if spec.endpoint == EMBED:
            embed: dict[str, Any] = {"content": {"parts": [{"text": prompt}]}}
            embed.update({EMBED_FIELDS[k]: v for k, v in _embed_params(spec).items()})
            return embed
        req: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
        if spec.system is not None:
            req["systemInstruction"] = {"parts": [{"text": spec.system}]}
        config = types.GenerationConfig(**self.generation_config(spec))
        dumped = config.model_dump(mode="json", exclude_none=True, by_alias=True)
        if dumped:
            req["generationConfig"] = dumped
        for key, wire in REQUEST_FIELDS.items():
            if key in spec.params:
                req[wire] = spec.params[key]
        return req

    def validate(self, spec: RequestSpec) -> None:
        """Check ``spec`` against the SDK's ``GenerationConfig`` type (``EmbedContentConfig``
        for embeddings) and the API's ranges, sending nothing; every problem found is named
        in one :class:`InputError`."""
        _check_endpoint(spec.endpoint)
        problems = _embed_problems(spec) if spec.endpoint == EMBED else []
        if spec.endpoint == ENDPOINT and "embedding" in spec.model:
            problems.append(
                f"{spec.model!r} is an embedding model: pass endpoint='embedContent' to "
                "embed each row (generateContent is for text replies)."
            )
        for key in spec.params if spec.endpoint == ENDPOINT else ():
            if key == "stream":
                problems.append("stream is not available in a batch: results are never streamed.")
            elif key in OWNED:
                problems.append(f"{key!r} is set by nbbatch; use {OWNED[key]} instead.")
            elif key not in _gen_fields() and key not in REQUEST_FIELDS:
                known = sorted(_gen_fields() | set(REQUEST_FIELDS))
                close = difflib.get_close_matches(key, known, n=1)
                hint = ""
                if close:
                    via = f" ({OWNED[close[0]]} sets it)" if close[0] in OWNED else ""
                    hint = f" Did you mean {close[0]!r}?{via}"
                accepted = ", ".join(k for k in known if k not in OWNED)
                problems.append(
                    f"unknown parameter {key!r} for Gemini.{hint} Accepted: {accepted} (the "
                    "fields of google.genai.types.GenerationConfig, and two request fields)."
                )
        if not problems and spec.endpoint == ENDPOINT:
            config = self.generation_config(spec)
            try:
                types.GenerationConfig(**config)
            except pydantic.ValidationError as exc:
                for error in exc.errors():
                    where = ".".join(str(p) for p in error["loc"])
                    problems.append(
                        f"{where}={error.get('input')!r} is not accepted: {error['msg']}."
                    )
            for key, value in config.items():
                low, high = RANGES.get(key, (None, None))
                if not isinstance(value, int | float) or isinstance(value, bool):
                    continue
                if (low is not None and value < low) or (high is not None and value > high):
                    bound = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
                    problems.append(f"{key}={value!r} is out of range: it must be {bound}.")
        if problems:
            raise InputError(
                "Gemini would refuse these parameters; nothing was sent: " + " ".join(problems),
                provider="gemini",
            )

    def find_model(self, model: str) -> bool | list[str] | None:
        """``models.get``; on a 404, ``models.list`` for the names there are."""
        models = self.client.models
        return look_up_model(
            model,
            retrieve=lambda: models.get(model=model),
            list_names=lambda: [str(m.name).removeprefix("models/") for m in models.list()],
            errors=(Exception,),  # transport errors are httpx's, not the SDK's
            wrap=lambda exc, doing: _provider_error(exc, doing, type(self)),
            name=model.removeprefix("models/"),
        )

    def encode(self, custom_ids: pa.Array, prompts: pa.Array, spec: RequestSpec) -> bytes:
        line = {"key": _jsonl.ID_SENTINEL, "request": self.request(spec, _jsonl.PROMPT_SENTINEL)}
        return _jsonl.encode_lines(custom_ids, prompts, line)

    # -- batches ---------------------------------------------------------------------------
    def create(self, jsonl: bytes, spec: RequestSpec, metadata: dict[str, str]) -> BatchInfo:
        name = _display_name(metadata)
        uploaded = None
        try:
            uploaded = self.client.files.upload(
                file=io.BytesIO(jsonl),
                config=types.UploadFileConfig(display_name=name, mime_type="jsonl"),
            )
            if spec.endpoint == EMBED:
                with warnings.catch_warnings():
                    # The SDK warns on every call that create_embeddings is experimental;
                    # docs/protocols/gemini.md says so once, rather than every batch.
                    warnings.simplefilter("ignore", genai_errors.ExperimentalWarning)
                    job = self.client.batches.create_embeddings(
                        model=spec.model,
                        src=types.EmbeddingsBatchJobSource(file_name=str(uploaded.name)),
                        config=types.CreateEmbeddingsBatchJobConfig(display_name=name),
                    )
            else:
                job = self.client.batches.create(
                    model=spec.model,
                    src=str(uploaded.name),
                    config=types.CreateBatchJobConfig(display_name=name),
                )
        except Exception as exc:
            if _exhausted(exc) and uploaded is not None:
                self._delete_file(str(uploaded.name))  # refused: its input is of no use
            raise _provider_error(exc, "creating a batch", type(self)) from exc
        return _info(job)

    def _delete_file(self, name: str) -> None:
        """Delete an uploaded file, best effort (it expires after 48 hours anyway)."""
        try:
            self.client.files.delete(name=name)
        except Exception as exc:  # noqa: BLE001 - cleaning up must never fail a send
            log.info("nbbatch: uploaded file %s not deleted: %s", name, exc)

    def retrieve(self, batch_id: str) -> BatchInfo:
        # operations.get rather than batches.get: the same GET batches/<id>, read whole
        # (the SDK's BatchJob leaves out batchStats and the error of a failed batch).
        try:
            from ._gemini_ops import BatchOperation

            op = self.client.operations.get(
                BatchOperation.model_validate({"name": _name(batch_id)})
            )
        except Exception as exc:
            raise _provider_error(exc, f"reading batch {batch_id}", type(self)) from exc
        return _info(op.job(), (op.metadata or {}).get("batchStats"))

    def cancel(self, batch_id: str) -> BatchInfo:
        try:
            self.client.batches.cancel(name=_name(batch_id))  # answers an empty object
        except genai_errors.ClientError as exc:
            if exc.code not in (400, 409):  # already ended: nothing to cancel
                raise _provider_error(exc, f"cancelling batch {batch_id}", type(self)) from exc
        except Exception as exc:
            raise _provider_error(exc, f"cancelling batch {batch_id}", type(self)) from exc
        return self.retrieve(batch_id)

    def find_batch(
        self, metadata: dict[str, str], n_requests: int, since: float, known: set[str]
    ) -> BatchInfo | None:
        # Gemini batches carry no metadata, only a display name: nbbatch writes the job
        # and part there. Newest first.
        wanted = _display_name(metadata)
        try:
            for job in self.client.batches.list(config=types.ListBatchJobsConfig(page_size=100)):
                created = job.create_time.timestamp() if job.create_time else since
                if created < since - 60:
                    return None
                if _id(job) not in known and job.display_name == wanted:
                    return _info(job)
        except Exception as exc:
            raise _provider_error(exc, "looking for an unrecorded batch", type(self)) from exc
        return None

    def list_batches(self) -> Iterator[BatchInfo]:
        try:
            for job in self.client.batches.list(config=types.ListBatchJobsConfig(page_size=100)):
                yield _info(job)
        except Exception as exc:
            raise _provider_error(exc, "listing batches", type(self)) from exc

    def delete_batch(self, info: BatchInfo) -> None:
        # batches.delete and files.delete: the batch, its requests file and its
        # responses file.
        files = [(info.raw.get(key) or {}).get("file_name") for key in ("src", "dest")]
        calls: list[tuple[Callable[..., Any], str]] = [
            (self.client.batches.delete, _name(info.batch_id))
        ]
        calls += [(self.client.files.delete, str(name)) for name in files if name]
        for delete, name in calls:
            try:
                delete(name=name)
            except genai_errors.ClientError as exc:
                if exc.code != 404:  # 404: deleted already
                    raise _provider_error(exc, f"deleting {name}", type(self)) from exc
            except Exception as exc:
                raise _provider_error(exc, f"deleting {name}", type(self)) from exc

    def fetch_results(self, info: BatchInfo, *, max_bytes: int | None = None) -> list[bytes]:
        file_name = (info.raw.get("dest") or {}).get("file_name")
        if not file_name:
            return []
        # files.download goes around the SDK's retry_options (it retries nothing), so a
        # passing 429/5xx or dropped connection is retried here, as the other SDKs would.
        for attempt in range(DOWNLOAD_ATTEMPTS):
            try:
                raw = self.client.files.download(file=file_name)
            except Exception as exc:
                error = _provider_error(exc, f"downloading {file_name}", type(self))
                if not error.transient or attempt == DOWNLOAD_ATTEMPTS - 1:
                    raise error from exc
                time.sleep(0.5 * 2**attempt)
                continue
            # google-genai reads a download whole: the cap is checked after.
            return [read_capped([raw], max_bytes, file_name)]
        raise AssertionError("unreachable")  # pragma: no cover

    def parse_results(self, raw: bytes, spec: RequestSpec) -> pa.Table:
        return parse_embedding_lines(raw) if spec.endpoint == EMBED else parse_lines(raw)

    # -- real time ---------------------------------------------------------------------------
    def realtime(self, custom_id: str, prompt: str, spec: RequestSpec) -> dict[str, Any]:
        """One ``models.generate_content`` call with what a batch line would carry
        (``models.embed_content`` for ``embedContent``)."""
        self.request(spec, prompt)  # the same endpoint check as a batch
        fields = {**self.generation_config(spec)}
        if spec.system is not None:
            fields["system_instruction"] = spec.system
        fields.update({k: v for k, v in spec.params.items() if k in REQUEST_FIELDS})
        try:
            if spec.endpoint == EMBED:
                embedded = self.client.models.embed_content(
                    model=spec.model,
                    contents=prompt,
                    config=types.EmbedContentConfig(**_embed_params(spec)),
                )
            else:
                reply = self.client.models.generate_content(
                    model=spec.model, contents=prompt, config=types.GenerateContentConfig(**fields)
                )
        except genai_errors.APIError as exc:
            kind = str(exc.status or f"http_{exc.code}").lower()
            return failure_row(
                custom_id, kind, str(exc.message or exc), is_transient(kind, exc.code)
            )
        except Exception as exc:
            if _unreachable(exc):  # no answer: the same request may work later
                return failure_row(
                    custom_id, "api_connection_error", f"could not reach {self.label}: {exc}", True
                )
            # The SDK refused the request or the reply locally (its own checks).
            return failure_row(custom_id, "sdk_error", f"{type(exc).__name__}: {exc}", False)
        if spec.endpoint == EMBED:
            return _embedding_row(custom_id, embedded)
        body = reply.model_dump(mode="json", exclude_none=True, by_alias=True)
        row = parse_lines(_line(custom_id, body)).to_pylist()[0]
        cands = body.get("candidates") or [{}]
        row["truncated"] = cands[0].get("finishReason") == "MAX_TOKENS"
        return row

    def truncated(self, raw: bytes, spec: RequestSpec) -> pa.Table:
        """Which responses lines hold a reply cut off at ``max_output_tokens``."""
        if spec.endpoint == EMBED:  # an embedding is never cut short
            ids = parse_embedding_lines(raw).column("custom_id").combine_chunks()
            return pa.table({"custom_id": ids, "truncated": pa.array([False] * len(ids))})
        t = _jsonl.read_lines(raw, LINE_SCHEMA)
        first = _first_candidates(t)
        cut = pc.equal(pc.struct_field(first, "finishReason"), "MAX_TOKENS")
        return pa.table(
            {"custom_id": t.column("key").combine_chunks(), "truncated": pc.fill_null(cut, False)}
        )


@functools.cache
def _gen_fields() -> frozenset[str]:
    """The fields of the SDK's GenerationConfig (read on first use: it needs the SDK)."""
    return frozenset(types.GenerationConfig.model_fields)


#: Other providers' names for an embedding keyword, and Gemini's.
_EMBED_ALIASES = {"dimensions": "output_dimensionality", "input_type": "task_type"}


def _check_endpoint(endpoint: str) -> None:
    if endpoint not in ENDPOINTS:
        hint = " (OpenAI's name)" if endpoint.endswith("/embeddings") else ""
        raise InputError(
            f"endpoint {endpoint!r}{hint} is not available on Gemini: leave endpoint unset for "
            f"text replies ({ENDPOINT!r}), or pass endpoint={EMBED!r} for embeddings.",
            provider="gemini",
        )


def _embed_params(spec: RequestSpec) -> dict[str, Any]:
    """The embedding keywords of ``spec`` (snake_case, as EmbedContentConfig names them)."""
    return {k: v for k, v in spec.params.items() if k in EMBED_FIELDS}


def _embed_problems(spec: RequestSpec) -> list[str]:
    """What Gemini would refuse in an embedding request (an empty list: nothing)."""
    problems = []
    unused = reply_settings_set(spec)
    if unused:
        problems.append(
            f"{', '.join(unused)} cannot be used with {EMBED} (an embedding has no reply to "
            "shape); leave them unset."
        )
    for key in spec.params:
        if key not in EMBED_FIELDS:
            close = _EMBED_ALIASES.get(key) or next(
                iter(difflib.get_close_matches(key, list(EMBED_FIELDS), n=1)), None
            )
            hint = f" Did you mean {close!r}?" if close else ""
            problems.append(
                f"unknown parameter {key!r} for a Gemini embedding.{hint} Accepted: "
                f"{', '.join(EMBED_FIELDS)}."
            )
    if not problems:
        try:
            types.EmbedContentConfig(**_embed_params(spec))
        except pydantic.ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(p) for p in error["loc"])
                problems.append(f"{where}={error.get('input')!r} is not accepted: {error['msg']}.")
        dims = spec.params.get("output_dimensionality")
        if isinstance(dims, int) and dims < 1:
            problems.append(f"output_dimensionality={dims!r} is out of range: it must be >= 1.")
    return problems


def _name(batch_id: str) -> str:
    """The SDK's name for a batch: it refuses a bare id (``Invalid batch job name``)."""
    return batch_id if batch_id.startswith("batches/") else f"batches/{batch_id}"


def _id(job: types.BatchJob) -> str:
    """nbbatch's id for a batch: its name without ``batches/`` (ids name files on disk)."""
    return str(job.name).removeprefix("batches/")


def _display_name(metadata: dict[str, str]) -> str:
    return "nbbatch-" + "-".join(metadata[k] for k in sorted(metadata))


def _line(key: str, body: dict[str, Any]) -> bytes:
    return orjson.dumps({"key": key, "response": body}) + b"\n"


def _schema(response_format: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of an OpenAI-style ``response_format`` (what nbbatch keeps)."""
    if response_format.get("type") == "json_schema":
        inner = response_format.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, dict) else response_format.get("schema")
        if isinstance(schema, dict):
            return schema
    raise InputError(
        f"Gemini's structured output takes a JSON schema only (response_format type "
        f"{response_format.get('type')!r} given); pass a pydantic model or a JSON schema.",
        provider="gemini",
    )


def _count(stats: dict[str, Any], key: str) -> int:
    """An int64 count of ``batchStats`` (JSON sends int64 as a string)."""
    try:
        return int(stats.get(key) or 0)
    except (TypeError, ValueError):
        return 0


def _info(job: types.BatchJob, stats: dict[str, Any] | None = None) -> BatchInfo:
    """``stats`` is the operation's ``batchStats``; without it (``batches.create`` and
    ``batches.list`` answers, parsed by the SDK) progress counts are 0."""
    state = job.state.value if job.state is not None else "JOB_STATE_UNSPECIFIED"
    failure = code = None
    if state == "JOB_STATE_FAILED":
        message = job.error.message if job.error is not None else None
        failure, code = message or "Gemini reported the batch JOB_STATE_FAILED", "batch_failed"
    stats = stats if isinstance(stats, dict) else {}
    failed = _count(stats, "failedRequestCount")
    raw = job.model_dump(mode="json", exclude_none=True)
    if stats:
        raw["batch_stats"] = stats
    return BatchInfo(
        batch_id=_id(job),
        status=state.removeprefix("JOB_STATE_").lower(),
        ended=state in ENDED,
        total=_count(stats, "requestCount"),
        done=_count(stats, "successfulRequestCount") + failed,
        failed=failed,
        failure=failure,
        failure_code=code,
        unfinished={"JOB_STATE_CANCELLED": "cancelled", "JOB_STATE_EXPIRED": "expired"}.get(state),
        raw=raw,
    )


def _unreachable(exc: Exception) -> bool:
    """A transport failure (no answer): httpx's or httpx2's ``TransportError``, whichever
    the installed SDK runs on; the SDK wraps neither in a class of its own."""
    return any(cls.__name__ == "TransportError" for cls in type(exc).__mro__)


def _provider_error(
    exc: Exception, doing: str, cls: type[Provider] = GeminiProvider
) -> ProviderError:
    return cls.wrap_sdk_error(
        exc,
        doing,
        unreachable=_unreachable(exc),
        bad_key=isinstance(exc, genai_errors.APIError) and exc.code in (401, 403),
    )


# -- result lines --------------------------------------------------------------------------
def parse_lines(raw: bytes) -> pa.Table:
    """Normalise a responses file into :data:`ROW_RESULT_SCHEMA`."""
    if not raw or raw.isspace():
        return empty_results()
    return _normalise(_jsonl.read_lines(raw, LINE_SCHEMA))


def parse_embedding_lines(raw: bytes) -> pa.Table:
    """Normalise an embeddings responses file into :data:`ROW_RESULT_SCHEMA`: each
    ``{"key", "response": {"embedding": {"values": [...]}, "tokenCount"}}`` line a
    succeeded row whose output is the vector as JSON array text (as OpenAI's), each
    ``{"key", "error"}`` line a failed one. Read line by line: ``tokenCount`` is an
    int64, which JSON may carry as a string or a number."""
    rows = []
    for line in raw.splitlines():
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a corrupt line: its key is reconciled as missing
        if isinstance(obj, dict) and isinstance(obj.get("key"), str):
            rows.append(_embedding_result(obj))
    return pa.Table.from_pylist(rows, schema=ROW_RESULT_SCHEMA)


def _embedding_result(line: dict[str, Any]) -> dict[str, Any]:
    got = line.get("response")
    response: dict[str, Any] = got if isinstance(got, dict) else {}
    values = (response.get("embedding") or {}).get("values")
    error = line.get("error") or line.get("status")
    if isinstance(error, dict) or not values:
        error = error if isinstance(error, dict) else {}
        kind = str(error.get("status") or "unknown_error").lower()
        message = error.get("message") or "Gemini returned no embedding for this request"
        code = error.get("code") if isinstance(error.get("code"), int) else None
        return failure_row(line["key"], kind, str(message), is_transient(kind, code))
    try:
        tokens: int | None = int(response["tokenCount"])
    except (KeyError, TypeError, ValueError):
        tokens = None
    none_or_0 = None if tokens is None else 0
    return success_row(line["key"], orjson.dumps(values).decode(), tokens, none_or_0, none_or_0)


def _embedding_row(custom_id: str, reply: types.EmbedContentResponse) -> dict[str, Any]:
    """A real-time ``embed_content`` answer as one result row (plus ``truncated``)."""
    values = reply.embeddings[0].values if reply.embeddings else None
    usage = reply.usage_metadata
    tokens = usage.prompt_token_count if usage is not None else None
    line = {"key": custom_id, "response": {"embedding": {"values": values}, "tokenCount": tokens}}
    return {**_embedding_result(line), "truncated": False}


def _first_candidates(t: pa.Table) -> pa.Array:
    """Each line's first candidate (null when it has none), vectorised."""
    response = t.column("response").combine_chunks()
    cands = pc.struct_field(response, "candidates")
    cands = pc.fill_null(cands, pa.scalar([], cands.type))
    has = pc.greater(pc.list_value_length(cands), 0)
    first = pc.list_slice(cands, 0, 1)
    flat = pc.list_flatten(first)
    # Scatter the first candidates back to their rows; rows without one stay null.
    index = pc.if_else(has, pc.cumulative_sum(pc.cast(has, pa.int64())), None)
    return pc.take(flat, pc.subtract(index, 1))


def _normalise(t: pa.Table) -> pa.Table:
    response = t.column("response").combine_chunks()
    err = pc.coalesce(t.column("error").combine_chunks(), t.column("status").combine_chunks())
    first = _first_candidates(t)
    blocked = pc.struct_field(pc.struct_field(response, "promptFeedback"), "blockReason")
    answered = pc.and_(pc.is_valid(response), pc.is_valid(first))
    ok = pc.fill_null(pc.and_(answered, pc.is_null(err)), False)
    status = pc.if_else(ok, "succeeded", "failed")
    code = pc.struct_field(err, "code")
    error_type = unless_ok(
        ok,
        pa.string(),
        pc.utf8_lower(pc.struct_field(err, "status")),
        pc.if_else(pc.is_valid(blocked), "prompt_blocked", None),
        pa.scalar("unknown_error"),
    )
    error_message = unless_ok(
        ok,
        pa.large_string(),
        pc.struct_field(err, "message"),
        pc.cast(
            pc.binary_join_element_wise("Gemini blocked the prompt: ", blocked, ""),
            pa.large_string(),
        ),
        pa.scalar("the provider gave no message", pa.large_string()),
    )
    retryable = retryable_of(status, error_type, code)
    usage = pc.struct_field(response, "usageMetadata")
    thoughts = pc.fill_null(pc.struct_field(usage, "thoughtsTokenCount"), 0)
    candidates = pc.struct_field(usage, "candidatesTokenCount")
    prompt = pc.struct_field(usage, "promptTokenCount")
    # Thinking tokens are billed as output; promptTokenCount already holds cached ones.
    output_tokens = pc.if_else(
        pc.is_valid(usage), pc.add(pc.fill_null(candidates, 0), thoughts), None
    )
    cached = pc.if_else(
        pc.is_valid(prompt),
        pc.fill_null(pc.struct_field(usage, "cachedContentTokenCount"), 0),
        None,
    )
    return pa.table(
        [
            t.column("key").combine_chunks(),
            status,
            pc.if_else(ok, _text(first), None),
            error_type,
            error_message,
            retryable,
            prompt,
            output_tokens,
            cached,
        ],
        schema=ROW_RESULT_SCHEMA,
    )


def _text(first: pa.Array) -> pa.Array:
    """The text parts (thoughts left out) of each first candidate, joined."""
    parts = pc.struct_field(pc.struct_field(first, "content"), "parts")
    parts = pc.fill_null(parts, pa.scalar([], parts.type))
    flat = pc.list_flatten(parts)
    thought = pc.fill_null(pc.struct_field(flat, "thought"), False)
    texts = pc.if_else(
        thought, pa.scalar("", pa.large_string()), pc.fill_null(pc.struct_field(flat, "text"), "")
    )
    return joined_texts(parts, texts)
