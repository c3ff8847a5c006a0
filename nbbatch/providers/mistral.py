"""Mistral's batch jobs through the official ``mistralai`` SDK.

Upload a JSONL file (``client.files.upload(..., purpose="batch")``), create a job on
one endpoint and one model (``client.batch.jobs.create``), poll it
(``client.batch.jobs.get``), and download its ``output_file`` and ``error_file``
(``client.files.download``). The guide is https://docs.mistral.ai/capabilities/batch
(also https://docs.mistral.ai/inference/batch-processing.md); routes and field names are
those of the SDK itself (mistralai 3.8: ``mistralai/client/jobs.py``, ``files.py``,
``models_.py``, ``models/batchjob.py``).

The SDK is imported lazily (inside the methods): registering this provider imports
nothing, and ``import nbbatch`` stays fast.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
import pyarrow as pa

from .._errors import InputError, ProviderError
from . import _jsonl, _params
from .base import (
    ROW_RESULT_SCHEMA,
    BatchInfo,
    Provider,
    RequestSpec,
    copy_capped,
    empty_results,
    failure_row,
    http_status,
    is_transient,
    read_capped,
    sdk_error,
)

if TYPE_CHECKING:
    from mistralai.client import Mistral

log = logging.getLogger("nbbatch")

ENDPOINTS = ("/v1/chat/completions",)
# The statuses of models/batchjobstatus.py; the last four end a job.
ENDED = frozenset({"SUCCESS", "FAILED", "TIMEOUT_EXCEEDED", "CANCELLED"})
#: A job stopped early: its rows without a result line end in this state.
_STOPPED = {"TIMEOUT_EXCEEDED": "expired", "CANCELLED": "cancelled"}

# Per-request body keys nbbatch fills itself. Mistral takes ``max_tokens`` and refuses
# OpenAI's ``max_completion_tokens`` with a 422 "extra_forbidden" (the error quoted in
# github.com/Gitlawb/openclaude/issues/739: its validator rejects every unknown field),
# so unknown keys are refused here, before anything is sent.
_OWNED = {
    "model": "model= (a Mistral batch job runs one model, given when the job is created)",
    "messages": "the prompt template (and system= for a system message)",
    "max_tokens": "max_tokens=",
    "response_format": "response_format=",
}


def _endpoint() -> _params.Endpoint:
    from mistralai.client import models

    # top_p is a probability mass (the SDK's docstring: "the tokens with top_p
    # probability mass"), so it lies in [0, 1]; a temperature below 0 has no meaning.
    # Mistral publishes no upper bound for temperature (the SDK only "recommends
    # between 0.0 and 0.7"), so none is checked.
    return _params.Endpoint(
        "/v1/chat/completions",
        models.ChatCompletionRequestTypedDict,
        owned=_OWNED,
        ranges={"temperature": (0.0, None), "top_p": (0.0, 1.0)},
    )


def _check_response_format(response_format: dict[str, Any] | None) -> None:
    """``response_format`` against the SDK's ``ResponseFormat`` model, by the wire names
    (its TypedDict names the schema ``schema_definition``; on the wire it is ``schema``,
    as in OpenAI's shape, which nbbatch builds)."""
    if response_format is None:
        return
    import pydantic
    from mistralai.client import models

    try:
        models.ResponseFormat.model_validate(response_format)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(
            f"response_format is not one Mistral takes: {first['msg']} (at {where}); "
            "nothing was sent.",
            provider="mistral",
        ) from None


class MistralProvider(Provider):
    """Mistral's Batch API (``client.batch.jobs``), through ``mistralai.client.Mistral``."""

    name = "mistral"
    label: ClassVar[str] = "Mistral"
    default_endpoint = "/v1/chat/completions"
    key_variables: ClassVar[tuple[str, ...]] = ("MISTRAL_API_KEY",)
    # The SDK reads no address from the environment (SDKConfiguration.get_server_details
    # knows only server_url= and its named servers).
    base_url_variable: ClassVar[str | None] = None
    client_types: ClassVar[tuple[str, ...]] = ("mistralai.client.sdk:Mistral",)
    model_prefixes: ClassVar[tuple[str, ...]] = (
        *("mistral-", "ministral-", "open-mistral", "open-mixtral", "codestral-"),
        *("magistral-", "pixtral-", "devstral-"),
    )
    prices_provider: ClassVar[str | None] = "mistral"
    emulator_prefix: ClassVar[str | None] = "/mistral"

    # "For large batches of up to 1M requests" (docs.mistral.ai/capabilities/batch);
    # a file "can be a maximum of 512 MB" (the SDK's files.upload docstring). nbbatch
    # keeps a margin under the size.
    max_requests = 1_000_000
    max_bytes = 500 * 1024 * 1024
    # Mistral publishes no batch queue quota (neither the guide nor the SDK's error
    # types name one), so nothing is refused for it here.

    client: Mistral

    # -- the client --------------------------------------------------------------------
    @classmethod
    def make_client(cls, *, api_key: str | None, base_url: str | None) -> Any:
        """A ``Mistral`` client for ``api_key`` at ``base_url`` (None: api.mistral.ai)."""
        from mistralai.client import Mistral

        return Mistral(api_key=api_key, server_url=base_url, retry_config=_retries())

    @classmethod
    def sync_client(cls, client: Any) -> Any:
        """``Mistral`` has the synchronous and the asynchronous calls on one client."""
        return client

    @classmethod
    def address_of(cls, client: Any) -> str:
        """Where a ``Mistral`` client sends requests (it has no ``base_url``)."""
        return base_url_of(client)

    @classmethod
    def rebind(cls, client: Any, http_client: Any) -> Any:
        """A copy of ``client`` that sends through ``http_client``: ``Mistral`` has no
        ``with_options``, it takes its httpx2 client as ``client=`` when made."""
        from mistralai.client import Mistral

        config = client.sdk_configuration
        return Mistral(
            api_key=key_of(client),
            server_url=config.get_server_details()[0],
            client=http_client,
            retry_config=config.retry_config,
            timeout_ms=config.timeout_ms,
        )

    @property
    def base_url(self) -> str:
        """Where the client sends requests (``server_url``, or the SDK's default)."""
        return base_url_of(self.client)

    # -- requests ----------------------------------------------------------------------
    def body(self, spec: RequestSpec, prompt: Any) -> dict[str, Any]:
        """The request body of one line. It carries no ``model``: the job names it once
        ("The model field inside body is optional when you specify the model at job
        creation time", docs.mistral.ai/inference/batch-processing.md)."""
        messages = [] if spec.system is None else [{"role": "system", "content": spec.system}]
        messages.append({"role": "user", "content": prompt})
        body: dict[str, Any] = {"messages": messages}
        if spec.max_tokens is not None:
            body["max_tokens"] = spec.max_tokens
        if spec.temperature is not None:
            body["temperature"] = spec.temperature
        if spec.response_format is not None:
            body["response_format"] = spec.response_format
        body.update(spec.params)
        return body

    def validate(self, spec: RequestSpec) -> None:
        """Check ``spec`` against the SDK's ``ChatCompletionRequestTypedDict``."""
        self._check_endpoint(spec.endpoint)
        _params.check_max_tokens(spec.max_tokens)
        _params.check(_endpoint(), spec.params, {"temperature": spec.temperature})
        _check_response_format(spec.response_format)

    def find_model(self, model: str) -> bool | list[str] | None:
        """``models.retrieve``, and when it says no such model, ``models.list``."""
        from mistralai.client import errors

        try:
            self.client.models.retrieve(model_id=model)
            return True
        except errors.MistralError as exc:
            if exc.status_code not in (400, 404, 405, 422):
                raise self._error(exc, f"looking up model {model!r}") from exc
        except Exception as exc:
            raise self._error(exc, f"looking up model {model!r}") from exc
        # A 404 can mean "no such model" or "no such route" (a proxy): the list tells.
        try:
            listed = self.client.models.list()
        except errors.MistralError as exc:
            if exc.status_code in (404, 405):
                return None
            raise self._error(exc, "listing models") from exc
        except Exception as exc:
            raise self._error(exc, "listing models") from exc
        ids: list[str] = []
        for card in listed.data or []:
            ids.append(str(getattr(card, "id", "")))
            ids.extend(getattr(card, "aliases", None) or [])
        return True if model in ids else ids

    def encode(self, custom_ids: pa.Array, prompts: pa.Array, spec: RequestSpec) -> bytes:
        self._check_endpoint(spec.endpoint)
        # One line per request: {"custom_id", "body"} (the guide's input format).
        line = {"custom_id": _jsonl.ID_SENTINEL, "body": self.body(spec, _jsonl.PROMPT_SENTINEL)}
        return _jsonl.encode_lines(custom_ids, prompts, line)

    # -- jobs --------------------------------------------------------------------------
    def create(self, jsonl: bytes, spec: RequestSpec, metadata: dict[str, str]) -> BatchInfo:
        name = f"nbbatch-{metadata.get('nbbatch_job', 'job')}.jsonl"
        try:
            uploaded = self.client.files.upload(
                file={"file_name": name, "content": jsonl}, purpose="batch"
            )
            job = self.client.batch.jobs.create(
                input_files=[uploaded.id],
                model=spec.model,
                endpoint=spec.endpoint,  # type: ignore[arg-type]  # checked in validate()
                metadata=metadata,
            )
        except Exception as exc:
            raise self._error(exc, "creating a batch job") from exc
        return _info(job)

    def retrieve(self, batch_id: str) -> BatchInfo:
        try:
            return _info(self.client.batch.jobs.get(job_id=batch_id))
        except Exception as exc:
            raise self._error(exc, f"reading batch job {batch_id}") from exc

    def cancel(self, batch_id: str) -> BatchInfo:
        from mistralai.client import errors

        try:
            return _info(self.client.batch.jobs.cancel(job_id=batch_id))
        except errors.MistralError as exc:
            if exc.status_code in (400, 409):  # ended already: nothing to cancel
                return self.retrieve(batch_id)
            raise self._error(exc, f"cancelling batch job {batch_id}") from exc
        except Exception as exc:
            raise self._error(exc, f"cancelling batch job {batch_id}") from exc

    def _jobs(self) -> Iterator[Any]:
        """Every job of the account, newest first (``order_by="-created"``), page by page."""
        page = 0
        while True:
            listed = self.client.batch.jobs.list(page=page, page_size=100, order_by="-created")
            data = listed.data or []
            yield from data
            if not data or (page + 1) * 100 >= listed.total:
                return
            page += 1

    def find_batch(
        self, metadata: dict[str, str], n_requests: int, since: float, known: set[str]
    ) -> BatchInfo | None:
        # Newest first; nbbatch tags every job with its job and part in metadata.
        try:
            for job in self._jobs():
                if job.created_at < since - 60:
                    return None
                meta = job.metadata or {}
                if job.id not in known and all(meta.get(k) == v for k, v in metadata.items()):
                    return _info(job)
        except Exception as exc:
            raise self._error(exc, "looking for an unrecorded batch job") from exc
        return None

    def list_batches(self) -> Iterator[BatchInfo]:
        try:
            for job in self._jobs():
                yield _info(job)
        except Exception as exc:
            raise self._error(exc, "listing batch jobs") from exc

    def delete_batch(self, info: BatchInfo) -> None:
        # A job's files can be deleted (DELETE /v1/files/{file_id}); the job stays
        # listed (jobs.delete only "requests the deletion").
        from mistralai.client import errors

        files = [*(info.raw.get("input_files") or [])]
        files += [info.raw.get("output_file"), info.raw.get("error_file")]
        for file_id in filter(None, files):
            try:
                self.client.files.delete(file_id=file_id)
            except errors.MistralError as exc:
                if exc.status_code == 404:
                    continue  # deleted already
                raise self._error(exc, f"deleting file {file_id}") from exc

    def _files(self, info: BatchInfo) -> list[str]:
        return [f for f in (info.raw.get("output_file"), info.raw.get("error_file")) if f]

    def fetch_results(self, info: BatchInfo, *, max_bytes: int | None = None) -> list[bytes]:
        files: list[bytes] = []
        for file_id in self._files(info):
            left = None if max_bytes is None else max_bytes - sum(map(len, files))
            try:
                # files.download returns the streamed response: refused past the cap
                # before it is all read.
                resp = self.client.files.download(file_id=file_id)
                try:
                    files.append(read_capped(resp.iter_bytes(), left, f"file {file_id}"))
                finally:
                    resp.close()
            except ProviderError:
                raise
            except Exception as exc:
                raise self._error(exc, f"downloading file {file_id}") from exc
        return files

    def download_results(self, info: BatchInfo, sink: Any, *, max_bytes: int | None) -> None:
        written = 0
        for file_id in self._files(info):
            left = None if max_bytes is None else max_bytes - written
            try:
                resp = self.client.files.download(file_id=file_id)
                try:
                    with sink.new() as out:
                        written += copy_capped(resp.iter_bytes(), out, left, f"file {file_id}")
                finally:
                    resp.close()
            except ProviderError:
                raise
            except Exception as exc:
                raise self._error(exc, f"downloading file {file_id}") from exc

    def parse_results(self, raw: bytes, spec: RequestSpec) -> pa.Table:
        return parse_lines(raw)

    def truncated(self, raw: bytes, spec: RequestSpec) -> pa.Table:
        """Lines whose reply stopped at the token limit (``finish_reason: "length"``)."""
        ids, cut = [], []
        for obj in _lines(raw):
            body = _body(obj)
            choice = (body.get("choices") or [None])[0] if isinstance(body, dict) else None
            ids.append(str(obj.get("custom_id")))
            cut.append(isinstance(choice, dict) and choice.get("finish_reason") == "length")
        return pa.table({"custom_id": pa.array(ids, pa.string()), "truncated": cut})

    # -- real time ---------------------------------------------------------------------
    def realtime(self, custom_id: str, prompt: str, spec: RequestSpec) -> dict[str, Any]:
        """One request through ``client.chat.complete`` with the body a line carries."""
        from mistralai.client import errors

        self._check_endpoint(spec.endpoint)
        body = {"model": spec.model, **self.body(spec, prompt)}
        try:
            reply = self.client.chat.complete(**body)
        except errors.MistralError as exc:
            kind, message = _error_of(_json(exc.body))
            kind = kind or f"http_{exc.status_code}"
            return failure_row(
                custom_id, kind, message or exc.message, is_transient(kind, exc.status_code)
            )
        except Exception as exc:
            if not _unreachable(exc):
                raise
            return failure_row(
                custom_id, "api_connection_error", f"could not reach Mistral: {exc}", True
            )
        row = _row(str(custom_id), reply.model_dump(mode="json"))
        choice = reply.choices[0] if reply.choices else None
        row["truncated"] = choice is not None and choice.finish_reason == "length"
        return row

    def _check_endpoint(self, endpoint: str) -> None:
        if endpoint not in ENDPOINTS:
            raise InputError(
                f"endpoint {endpoint!r} is not supported for Mistral; use one of "
                f"{list(ENDPOINTS)}.",
                provider=self.name,
            )

    # -- errors ------------------------------------------------------------------------
    def _error(self, exc: Exception, doing: str) -> ProviderError:
        return provider_error(exc, doing)


def provider_error(exc: Exception, doing: str) -> ProviderError:
    """Our error for an SDK error (``MistralError`` carries ``status_code``; a request
    that got no answer raises httpx2's own error, or the SDK's ``NoResponseError``)."""
    from mistralai.client import errors

    if isinstance(exc, errors.ResponseValidationError):
        exc = ValueError(str(exc))  # an answer not in the API's shape
    return sdk_error(
        exc,
        doing,
        provider="mistral",
        label="Mistral",
        key_variable="MISTRAL_API_KEY",
        unreachable=_unreachable(exc),
        bad_key=http_status(exc) == 401,
    )


def _unreachable(exc: BaseException) -> bool:
    import httpx2
    from mistralai.client import errors

    return isinstance(exc, httpx2.TransportError | errors.NoResponseError)


def _retries() -> Any:
    """What the SDK retries: nothing unless told (``retry_config`` is unset by default);
    retry what the other SDKs retry (429, 5xx, no answer) for up to 10 seconds."""
    from mistralai.client.utils import BackoffStrategy, RetryConfig

    return RetryConfig("backoff", BackoffStrategy(500, 4_000, 2.0, 10_000), True)


def key_of(client: Any) -> str | None:
    """The key a ``Mistral`` client sends (None when it has none of its own: the SDK
    then reads ``MISTRAL_API_KEY`` on each request)."""
    security = getattr(getattr(client, "sdk_configuration", None), "security", None)
    key = getattr(security, "api_key", None)
    return key if isinstance(key, str) and key else None


def base_url_of(client: Any) -> str:
    """Where a ``Mistral`` client sends requests."""
    return str(client.sdk_configuration.get_server_details()[0])


def _info(job: Any) -> BatchInfo:
    status = str(job.status)
    failure = None
    if status == "FAILED":
        failure = "; ".join(e.message for e in job.errors or []) or (
            "Mistral failed the batch job without saying why"
        )
    return BatchInfo(
        batch_id=job.id,
        status=status,
        ended=status in ENDED,
        total=job.total_requests or 0,
        done=job.completed_requests or 0,
        failed=job.failed_requests or 0,
        failure=failure,
        unfinished=_STOPPED.get(status),
        raw=job.model_dump(mode="json"),
    )


# -- result lines --------------------------------------------------------------------------
# A line of the output or error file: {"id", "custom_id", "response": {"status_code",
# "body"}, "error"}: the SDK's own example reads ``res["response"]["body"]``
# (github.com/mistralai/client-python, examples/mistral/jobs/
# async_batch_job_chat_completion_inline.py), and a failed line "carries an error"
# (langchain4j's MistralAiBatchResultEntry). Mistral's error bodies are flat:
# {"object": "error", "message", "type", "param", "code"} (quoted in
# github.com/tmc/langchaingo/issues/1233), or {"detail": [...]} for a 422 (quoted in
# github.com/Gitlawb/openclaude/issues/739). The error file's exact shape is not
# published, so every one of these places is read.


def _lines(raw: bytes) -> Iterator[dict[str, Any]]:
    for line in raw.splitlines():
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a corrupt line fails only its own row (reconciled as missing)
        if isinstance(obj, dict) and isinstance(obj.get("custom_id"), str):
            yield obj


def _body(obj: dict[str, Any]) -> Any:
    response = obj.get("response")
    return response.get("body") if isinstance(response, dict) else None


def _json(text: Any) -> Any:
    try:
        return orjson.loads(text) if isinstance(text, str | bytes) else text
    except orjson.JSONDecodeError:
        return text


def _error_of(body: Any) -> tuple[str | None, str | None]:
    """(type, message) of one of Mistral's error bodies, as far as it says."""
    if isinstance(body, dict):
        error = body.get("error")
        inner: dict[str, Any] = error if isinstance(error, dict) else body
        detail = inner.get("detail")
        if isinstance(detail, list) and detail:
            first = detail[0] if isinstance(detail[0], dict) else {}
            where = ".".join(str(p) for p in first.get("loc") or [])
            kind = first.get("type") or "invalid_request_error"
            return str(kind), f"{first.get('msg', detail[0])}" + (f" ({where})" if where else "")
        kind = inner.get("type") or inner.get("code")
        message = inner.get("message") or (detail if isinstance(detail, str) else None)
        return (str(kind) if kind else None), (str(message) if message else None)
    if isinstance(body, str) and body:
        return None, body
    return None, None


def _row(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """A succeeded row from a chat completion body."""
    choices = body.get("choices") or [{}]
    message = (choices[0] or {}).get("message") or {}
    content = message.get("content")
    if isinstance(content, list):  # content chunks: keep the text ones
        content = "".join(c.get("text") or "" for c in content if isinstance(c, dict))
    usage = body.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return {
        "custom_id": custom_id,
        "status": "succeeded",
        "output": content,
        "error_type": None,
        "error_message": None,
        "retryable": None,
        "input_tokens": usage.get("prompt_tokens"),
        "output_tokens": usage.get("completion_tokens"),
        "cached_tokens": details.get("cached_tokens") if isinstance(details, dict) else None,
        "truncated": False,
    }


def parse_lines(raw: bytes) -> pa.Table:
    """Normalise the lines of an output or error file into :data:`ROW_RESULT_SCHEMA`."""
    if not raw or raw.isspace():
        return empty_results()
    rows = []
    for obj in _lines(raw):
        custom_id = obj["custom_id"]
        given = obj.get("response")
        response: dict[str, Any] = given if isinstance(given, dict) else {}
        status = response.get("status_code")
        body = response.get("body")
        if isinstance(status, int) and 200 <= status < 300 and isinstance(body, dict):
            rows.append(_row(custom_id, body))
            continue
        kind, message = _error_of(body)
        line_kind, line_message = _error_of(obj.get("error"))
        kind = kind or line_kind or (f"http_{status}" if isinstance(status, int) else None)
        kind = kind or "unknown_error"
        message = message or line_message or "the provider gave no message"
        code = status if isinstance(status, int) else None
        rows.append(failure_row(custom_id, kind, message, is_transient(kind, code)))
    for row in rows:
        row.pop("truncated", None)
    return pa.Table.from_pylist(rows, schema=ROW_RESULT_SCHEMA)
