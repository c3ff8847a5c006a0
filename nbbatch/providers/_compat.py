"""OpenAI-compatible batch services (Groq, Together) through their own official SDKs.

They take the OpenAI batch input file (``{custom_id, method, url, body}`` lines of chat
completion bodies) and answer with OpenAI-shaped output and error lines, so encoding
and result parsing are the OpenAI provider's. What differs is the SDK (its client and
error classes), the file purpose, the batch object, the models endpoint and the
limits: :class:`CompatProvider` speaks through a few hooks that each service fills.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from .._errors import ConfigError, InputError, ProviderError
from .base import (
    BatchInfo,
    Provider,
    Refusal,
    RequestSpec,
    copy_capped,
    failure_row,
    is_transient,
    read_capped,
    sdk_error,
    sdk_kwargs,
)
from .openai import OpenAIProvider


class CompatProvider(OpenAIProvider):
    """An OpenAI-compatible batch service, spoken through its own SDK (``sdk_module``)."""

    # The OpenAI provider's model names and SDK clients are not this service's.
    client_types: ClassVar[tuple[str, ...]] = ()
    model_prefixes: ClassVar[tuple[str, ...]] = ()
    #: the SDK's module, and the names of its client classes (sync, async)
    sdk_module: ClassVar[str]
    sync_class: ClassVar[str]
    async_class: ClassVar[str]
    #: the base class of every error the SDK raises
    sdk_error_class: ClassVar[str]
    #: the request endpoints the service's batches take
    endpoints: ClassVar[tuple[str, ...]] = ("/v1/chat/completions",)

    # No published queue quota that a refusal states: nothing to wait for or refuse.
    refuses_late = False

    client: Any  # the service's own SDK client, not an openai.OpenAI

    def __init__(self, client: Any) -> None:
        if type(client).__module__.split(".")[0] != self.sdk_module:
            # Its errors, batch object and paths are the SDK's own: another SDK's client
            # (openai.OpenAI at the service's address, say) would be misread.
            raise ConfigError(
                f"provider={self.name!r} takes a client of its official SDK "
                f"({self.sdk_module}.{self.sync_class}), got {type(client).__name__}; pass "
                f"{self.sdk_module}.{self.sync_class}(api_key=...), or omit client= to use "
                f"{' or '.join(self.key_variables)}.",
                provider=self.name,
            )
        super().__init__(client)

    # -- the seam's class-level shape ------------------------------------------------------
    @classmethod
    def sdk(cls) -> Any:
        """The SDK module, imported on first use (``import nbbatch`` stays fast)."""
        try:
            return importlib.import_module(cls.sdk_module)
        except ImportError as exc:
            raise ConfigError(
                f"{cls.label} is reached through its official SDK, which is not installed: "
                f"pip install 'nbbatch[{cls.name}]' (or pip install {cls.sdk_module}).",
                provider=cls.name,
            ) from exc

    @classmethod
    def make_client(cls, *, api_key: str | None, base_url: str | None) -> Any:
        """The official SDK client for ``api_key`` at ``base_url`` (None: its default)."""
        return getattr(cls.sdk(), cls.sync_class)(api_key=api_key, base_url=base_url)

    @classmethod
    def sync_client(cls, client: Any) -> Any:
        """The synchronous client for ``client`` (nbbatch polls from a thread)."""
        sdk = cls.sdk()
        if isinstance(client, getattr(sdk, cls.async_class)):
            return getattr(sdk, cls.sync_class)(
                api_key=client.api_key,
                base_url=client.base_url,
                timeout=client.timeout,
                max_retries=client.max_retries,
                default_headers=client._custom_headers,
            )
        return client

    @classmethod
    def rebind(cls, client: Any, http_client: Any) -> Any:
        """A copy of ``client`` sending through ``http_client``."""
        return client.with_options(http_client=http_client)

    # -- no OpenAI queue quota -------------------------------------------------------------
    def quota_refusal(
        self, *, info: BatchInfo | None = None, error: BaseException | None = None
    ) -> Refusal | None:
        """These services publish no refusal that states a queue limit."""
        return None

    def under_review(self, status: str) -> bool:
        """No batch is refused late for a queue quota here."""
        return False

    def discard_refused(self, info: BatchInfo) -> None:
        """Nothing is refused for a quota, so nothing is left behind."""
        return None

    @classmethod
    def tier_limit(cls, tier: str, model: str) -> int | None:
        """No per-tier queue limit is published in a form nbbatch presets."""
        return None

    # -- errors ------------------------------------------------------------------------------
    def _errors(self) -> tuple[type[BaseException], ...]:
        return (getattr(self.sdk(), self.sdk_error_class), ValueError)

    def _error(self, exc: BaseException, doing: str) -> ProviderError:
        sdk = self.sdk()
        assert isinstance(exc, Exception)
        return sdk_error(
            exc,
            doing,
            provider=self.name,
            label=self.label,
            key_variable=" or ".join(self.key_variables),
            unreachable=isinstance(exc, sdk.APIConnectionError),
            bad_key=isinstance(exc, sdk.AuthenticationError),
        )

    # -- requests ----------------------------------------------------------------------------
    def validate(self, spec: RequestSpec) -> None:
        """Only the endpoints the service batches; then the OpenAI chat checks (the
        body is the OpenAI chat body: its keywords, types and ranges)."""
        if spec.endpoint not in self.endpoints:
            raise InputError(
                f"{self.label}'s batches take only {list(self.endpoints)}, not "
                f"{spec.endpoint!r}; use endpoint={self.endpoints[0]!r}.",
                provider=self.name,
            )
        super().validate(spec)

    def realtime(self, custom_id: str, prompt: str, spec: RequestSpec) -> dict[str, Any]:
        """One chat request through the SDK's ``chat.completions.create``, with the body a
        batch line would carry; the reply normalised as a batch output line is."""
        sdk = self.sdk()
        body = self.body(spec, prompt)
        create = self.client.chat.completions.create
        try:
            reply = create(**sdk_kwargs(create, body))
        except sdk.APIStatusError as exc:
            # The SDKs keep the error object (OpenAI's shape: message, type, code), or
            # the whole body when it has none.
            whole = exc.body if isinstance(exc.body, dict) else {}
            inner = whole.get("error")
            data: dict[str, Any] = inner if isinstance(inner, dict) else whole
            kind = str(data.get("type") or data.get("code") or f"http_{exc.status_code}")
            message = str(data.get("message") or exc.message)
            return failure_row(custom_id, kind, message, is_transient(kind, exc.status_code))
        except sdk.APIConnectionError as exc:
            timeout = isinstance(exc, sdk.APITimeoutError)
            kind = "timeout_error" if timeout else "api_connection_error"
            return failure_row(custom_id, kind, f"could not reach {self.label}: {exc}", True)
        return chat_row(custom_id, reply)

    # -- hooks each service fills ------------------------------------------------------------
    def _create(self, jsonl: bytes, spec: RequestSpec, metadata: dict[str, str]) -> Any:
        """Upload the input and create the batch; returns the SDK's batch object."""
        raise NotImplementedError

    def _info(self, batch: Any) -> BatchInfo:
        raise NotImplementedError

    def _batches(self) -> Iterable[Any]:
        """Every batch the account holds, newest first."""
        raise NotImplementedError

    def _created_at(self, batch: Any) -> float:
        raise NotImplementedError

    def _is_part(self, batch: Any, metadata: dict[str, str]) -> bool:
        """Whether ``batch`` was made for the job part ``metadata`` names."""
        raise NotImplementedError

    def _retrieve(self, batch_id: str) -> Any:
        return self.client.batches.retrieve(batch_id)

    def _content(self, file_id: str) -> AbstractContextManager[Any]:
        """A streamed download of one file (``iter_bytes()``)."""
        return self.client.files.with_streaming_response.content(file_id)

    # -- batches -------------------------------------------------------------------------------
    def create(self, jsonl: bytes, spec: RequestSpec, metadata: dict[str, str]) -> BatchInfo:
        try:
            batch = self._create(jsonl, spec, metadata)
        except self._errors() as exc:
            raise self._error(exc, "creating a batch") from exc
        return self._info(batch)

    def retrieve(self, batch_id: str) -> BatchInfo:
        try:
            return self._info(self._retrieve(batch_id))
        except self._errors() as exc:
            raise self._error(exc, f"reading batch {batch_id}") from exc

    def cancel(self, batch_id: str) -> BatchInfo:
        sdk = self.sdk()
        try:
            return self._info(self.client.batches.cancel(batch_id))
        except sdk.ConflictError:  # already ended: nothing to cancel
            return self.retrieve(batch_id)
        except self._errors() as exc:
            raise self._error(exc, f"cancelling batch {batch_id}") from exc

    def find_batch(
        self, metadata: dict[str, str], n_requests: int, since: float, known: set[str]
    ) -> BatchInfo | None:
        try:
            for batch in self._batches():
                if self._created_at(batch) < since - 60:
                    return None
                if batch.id not in known and self._is_part(batch, metadata):
                    return self._info(batch)
        except self._errors() as exc:
            raise self._error(exc, "looking for an unrecorded batch") from exc
        return None

    def list_batches(self) -> Iterator[BatchInfo]:
        try:
            batches = list(self._batches())
        except self._errors() as exc:
            raise self._error(exc, "listing batches") from exc
        for batch in batches:
            yield self._info(batch)

    def delete_batch(self, info: BatchInfo) -> None:
        # No call deletes a batch; its files can be deleted.
        sdk = self.sdk()
        for key in ("input_file_id", "output_file_id", "error_file_id"):
            file_id = info.raw.get(key)
            if not file_id:
                continue
            try:
                self.client.files.delete(file_id)
            except sdk.NotFoundError:
                continue
            except self._errors() as exc:
                raise self._error(exc, f"deleting file {file_id}") from exc

    def fetch_results(self, info: BatchInfo, *, max_bytes: int | None = None) -> list[bytes]:
        files: list[bytes] = []
        for key in ("output_file_id", "error_file_id"):
            file_id = info.raw.get(key)
            if file_id:
                left = None if max_bytes is None else max_bytes - sum(map(len, files))
                try:
                    with self._content(file_id) as resp:
                        files.append(read_capped(resp.iter_bytes(), left, f"file {file_id}"))
                except self._errors() as exc:
                    raise self._error(exc, f"downloading file {file_id}") from exc
        return files

    def download_results(self, info: BatchInfo, sink: Any, *, max_bytes: int | None) -> None:
        written = 0
        for key in ("output_file_id", "error_file_id"):
            file_id = info.raw.get(key)
            if file_id:
                left = None if max_bytes is None else max_bytes - written
                try:
                    with self._content(file_id) as resp, sink.new() as out:
                        written += copy_capped(resp.iter_bytes(), out, left, f"file {file_id}")
                except self._errors() as exc:
                    raise self._error(exc, f"downloading file {file_id}") from exc


def chat_row(custom_id: str, reply: Any) -> dict[str, Any]:
    """A chat completion of either SDK in the terms a batch output line is read in (the
    SDKs' reply types differ in their optional parts, so only the common ones are read)."""
    choices = getattr(reply, "choices", None) or []
    choice = choices[0] if choices else None
    message = getattr(choice, "message", None)
    usage = getattr(reply, "usage", None)
    details = getattr(usage, "prompt_tokens_details", None)
    return {
        "custom_id": custom_id,
        "status": "succeeded",
        "output": getattr(message, "content", None),
        "error_type": None,
        "error_message": None,
        "retryable": None,
        "input_tokens": getattr(usage, "prompt_tokens", None),
        "output_tokens": getattr(usage, "completion_tokens", None),
        "cached_tokens": getattr(details, "cached_tokens", None),
        "truncated": getattr(choice, "finish_reason", None) == "length",
    }


def part_file_name(metadata: dict[str, str]) -> str:
    """The input file's name for a job part: it names the part, so that a batch whose
    create call went unrecorded can be found again on a service whose batches carry
    no metadata (Together)."""
    job = metadata.get("nbbatch_job", "job")
    part = metadata.get("nbbatch_part")
    return f"nbbatch-{job}.jsonl" if part is None else f"nbbatch-{job}-p{part}.jsonl"


__all__ = ["CompatProvider", "Provider", "chat_row", "part_file_name"]
