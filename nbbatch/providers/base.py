"""The provider seam: a small interface every batch provider implements.

A provider knows one wire protocol and nothing of pandas. It turns prompts into the
provider's request lines, creates batches, reports their state, and normalises result
lines into the common row-result table (:data:`ROW_RESULT_SCHEMA`).
"""

from __future__ import annotations

import difflib
import io
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from .._errors import BatchFailedError, InputError, ProviderError

log = logging.getLogger("nbbatch")

#: (base_url, model) pairs a provider confirmed, so repeated submits skip the round trip.
_KNOWN_MODELS: set[tuple[str, str]] = set()

#: Terminal per-row states a provider can report for a request it was sent.
ROW_STATES = ("succeeded", "failed", "expired", "cancelled")

#: The common shape of normalised per-row results.
ROW_RESULT_SCHEMA = pa.schema(
    [
        ("custom_id", pa.string()),
        ("status", pa.string()),  # one of ROW_STATES
        ("output", pa.large_string()),  # reply text; JSON array text for an embedding
        ("error_type", pa.string()),  # e.g. rate_limit_error, invalid_request_error
        ("error_message", pa.large_string()),
        ("retryable", pa.bool_()),  # would sending the same request again likely work?
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("cached_tokens", pa.int64()),
    ]
)
#: An optional last column of a provider's results: a per-row score of the reply in
#: [0, 1] (OpenAI chat with token log-probabilities asked for: the least likely token's
#: probability); null where a reply has none. Only a provider that returns one adds it.
SCORE_FIELD = pa.field("score", pa.float64())


def scored(spec: RequestSpec) -> bool:
    """Whether a job's replies carry a score (:data:`SCORE_FIELD`): chat completions
    asked for token log-probabilities (``logprobs: true``, which ``score="logprobs"``
    sets)."""
    return spec.endpoint == "/v1/chat/completions" and spec.params.get("logprobs") is True


#: Error types that a retry of the unchanged request can fix, in either provider's words.
TRANSIENT_ERRORS = frozenset(
    {
        "rate_limit_error",
        "rate_limit_exceeded",
        "overloaded_error",
        "api_error",
        "server_error",
        "internal_server_error",
        "timeout_error",
        "timeout",
        "service_unavailable",
        "batch_expired",
        "expired",
        "missing_result",
    }
)


def is_embeddings(endpoint: str) -> bool:
    """Whether requests to ``endpoint`` return embedding vectors (kept as JSON array
    text) rather than text: OpenAI's ``/v1/embeddings`` path, Gemini's ``embedContent``."""
    return endpoint.endswith("/embeddings") or endpoint == "embedContent"


def reply_settings_set(spec: RequestSpec) -> list[str]:
    """The settings of ``spec`` that shape a reply (``system``, ``max_tokens``, ...), by
    name, that are set: an embedding request has no reply, so providers refuse them."""
    shaping = (
        ("system", spec.system),
        ("max_tokens", spec.max_tokens),
        ("temperature", spec.temperature),
        ("response_format", spec.response_format),
    )
    return [name for name, value in shaping if value is not None]


def http_status(exc: BaseException | None) -> int | None:
    """The HTTP status an SDK error carries, or None (no answer, or not an SDK error).

    openai and anthropic call it ``status_code``; google-genai calls it ``code``.
    """
    status = getattr(exc, "status_code", None)
    if status is None:
        code = getattr(exc, "code", None)
        # Only an int is an HTTP status: OpenAI-style errors have a string ``code``.
        status = code if isinstance(code, int) and not isinstance(code, bool) else None
    return status


def is_transient(error_type: str | None, status_code: int | None = None) -> bool:
    """Whether an error of this type (or HTTP status) is worth retrying unchanged."""
    if status_code is not None and (status_code == 429 or status_code >= 500):
        return True
    return (error_type or "") in TRANSIENT_ERRORS


def unless_ok(ok: pa.Array, kind: pa.DataType, *choices: Any) -> pa.Array:
    """A results column for the rows that did not succeed: null where ``ok``, else the
    first of ``choices`` (arrays, or scalars as the last resort) that is not null."""
    return pc.if_else(ok, pa.scalar(None, kind), pc.coalesce(*choices))


def joined_texts(lists: pa.Array, texts: pa.Array) -> pa.Array:
    """Per row, the ``texts`` of its list's items (``texts``: one per item of the
    flattened ``lists``, "" for an item left out) joined into one string."""
    # Offsets rebased to 0: flatten starts at the first offset of a sliced array.
    offsets = pc.subtract(lists.offsets, lists.offsets[0])
    per_row = pa.ListArray.from_arrays(offsets, texts)
    return pc.binary_join(per_row, pa.scalar("", pa.large_string()))


def retryable_of(
    status: pa.Array, error_type: pa.Array, status_code: pa.Array | None = None
) -> pa.Array:
    """The ``retryable`` column of a results table: null for a succeeded row, else
    :func:`is_transient` of its error type (and HTTP status, where the lines carry one)."""
    codes = [None] * len(status) if status_code is None else status_code.to_pylist()
    return pa.array(
        [
            None if s == "succeeded" else is_transient(e, c)
            for s, e, c in zip(status.to_pylist(), error_type.to_pylist(), codes, strict=True)
        ],
        pa.bool_(),
    )


@dataclass(frozen=True)
class RequestSpec:
    """Everything about a request that is the same for every row of a job."""

    model: str
    endpoint: str
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    response_format: dict[str, Any] | None = None
    cache_system: bool = False  # mark the system prompt cacheable where the provider asks
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form, for the ledger."""
        return {
            "model": self.model,
            "endpoint": self.endpoint,
            "system": self.system,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "response_format": self.response_format,
            "cache_system": self.cache_system,
            "params": self.params,
        }


@dataclass(frozen=True)
class BatchInfo:
    """A provider batch's state, in common terms plus the provider's own words."""

    batch_id: str
    status: str  # the provider's word: validating, in_progress, ended, ...
    ended: bool  # no further change will come; results (if any) can be read
    total: int
    done: int  # requests finished so far (succeeded or not), as the provider reports
    failed: int  # requests reported failed so far
    failure: str | None = None  # why the whole batch failed (validation, capacity)
    failure_code: str | None = None
    #: "cancelled" or "expired" when the batch stopped early and its results list only
    #: the requests that ran (Gemini): requests without a line end in that state.
    unfinished: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The id names files beside the ledger (results, marks): one the provider made
        # up with a path or glob character in it must never get that far.
        if not isinstance(self.batch_id, str) or not _BATCH_ID.fullmatch(self.batch_id):
            raise ProviderError(
                f"the provider returned a batch id nbbatch cannot use, {self.batch_id!r}: "
                "expected letters, digits, '_', '-', '.' or ':' (at most 200, not starting "
                "with '.'). The endpoint is broken or not the provider: check its address."
            )


@dataclass(frozen=True)
class Refusal:
    """The provider refused a batch because its account's batch queue is full (nothing
    ran, nothing is paid): ``limit`` is the queue limit when the refusal states it (in
    the provider's unit, see :attr:`Provider.quota_unit`), ``message`` its words."""

    message: str
    limit: int | None = None

    @classmethod
    def stating(cls, message: str, limit_pattern: re.Pattern[str]) -> Refusal:
        """A refusal whose limit is read from its message: the first group of
        ``limit_pattern``, digits with thousands commas ("limit of 100,000"), if it matches."""
        found = limit_pattern.search(message)
        return cls(message, int(found.group(1).replace(",", "")) if found else None)


#: The usage tiers ``tier=`` takes: OpenAI numbers five; a provider that publishes fewer
#: gives its highest to the tiers above it.
TIERS = ("tier-1", "tier-2", "tier-3", "tier-4", "tier-5")


def tier_row(table: dict[str, tuple[int, ...]], model: str) -> tuple[int, ...] | None:
    """The published figures for ``model`` in ``table``: under its own name or as a
    dated or preview snapshot of a listed model (``gpt-4o-mini-2024-07-18``), the
    longest listed name that fits; None when the table does not list it."""
    name = model.removeprefix("models/")
    best = ""
    for key in table:
        fits = name == key or re.match(re.escape(key) + r"-(\d|preview)", name)
        if fits and len(key) > len(best):
            best = key
    return table[best] if best else None


def tier_value(row: tuple[int, ...], tier: str) -> int:
    """The figure of usage ``tier`` (one of :data:`TIERS`) in a row of published
    figures, the highest published one for tiers above the row's."""
    return row[min(TIERS.index(tier), len(row) - 1)]


#: What a provider's batch id may look like (every real one does).
_BATCH_ID = re.compile(r"[A-Za-z0-9_\-:][A-Za-z0-9_.\-:]{0,199}")


class Provider(ABC):
    """One batch API, spoken through its official SDK."""

    #: The registry name (``provider="..."``, recorded with every job).
    name: ClassVar[str]
    #: The name people know it by, in messages ("OpenAI", "Azure OpenAI").
    label: ClassVar[str] = ""
    default_endpoint: ClassVar[str]
    #: The environment variables its API key is read from, first set wins.
    key_variables: ClassVar[tuple[str, ...]] = ()
    #: Further variables holding a bearer token instead of a key (Anthropic's).
    token_variables: ClassVar[tuple[str, ...]] = ()
    #: The environment variable its SDK reads its address from when given none.
    base_url_variable: ClassVar[str | None] = None
    #: ``"module:Class"`` of the SDK clients that speak to it, matched against a client's
    #: class and its bases by name, so that no SDK is imported to recognise one.
    client_types: ClassVar[tuple[str, ...]] = ()
    #: Model names that belong to it alone (by prefix).
    model_prefixes: ClassVar[tuple[str, ...]] = ()
    #: Whether a model name no provider claims by prefix is this provider's (OpenAI's).
    claims_unknown_models: ClassVar[bool] = False
    #: The genai-prices provider id its prices are read from (None: by the model alone).
    prices_provider: ClassVar[str | None] = None
    #: The path under the embedded emulator's address where its variant is served, or
    #: None when the emulator does not speak it.
    emulator_prefix: ClassVar[str | None] = None
    #: What a batch costs as a share of the real-time price, for models whose batch
    #: rate genai-prices does not list: half at OpenAI, Anthropic, Gemini, Mistral and
    #: Bedrock (their published rule); a provider with another rule says so.
    batch_price_share: ClassVar[float] = 0.5
    #: Whether ``provider="local"`` (nbbatch's background emulator, which keeps its
    #: batches across its restarts) serves this provider's models.
    local_background: ClassVar[bool] = False
    #: the provider's limits per batch, less a safety margin
    max_requests: ClassVar[int]
    max_bytes: ClassVar[int]

    #: Where the client's key came from: ``env:VAR``, ``client`` (given on client=) or
    #: ``local`` (the background emulator); None when unknown. Recorded with a job.
    credential: str | None = None
    #: Where the key came from when ``credential`` says where the job went instead (a
    #: loopback job's ``loopback:...``): ``env:VAR`` or ``client``, for messages only.
    key_origin: str | None = None

    #: What the provider's batch queue quota counts: ``"tokens"`` (input tokens queued)
    #: or ``"requests"``; per model, or for all models together (``quota_per_model``).
    quota_unit: ClassVar[str] = "tokens"
    quota_per_model: ClassVar[bool] = True
    #: A batch over the quota is created and refused later, while it is reviewed
    #: (OpenAI fails it in validation), rather than refused by the create call.
    refuses_late: ClassVar[bool] = False

    def __init__(self, client: Any) -> None:
        self.client = client  # the official SDK client every call goes through

    # -- identity: what nbbatch needs to know of a provider before it has a client -----
    @classmethod
    def make_client(cls, *, api_key: str | None, base_url: str | None) -> Any:
        """The official SDK client for ``api_key`` at ``base_url`` (None: the SDK's
        default, which may come from :attr:`base_url_variable`)."""
        raise NotImplementedError(f"{cls.__name__} cannot make a client: pass client=...")

    @classmethod
    def make_token_client(cls, *, token: str, base_url: str | None) -> Any:
        """A client authenticating with a bearer ``token`` (from :attr:`token_variables`)."""
        raise NotImplementedError(f"{cls.__name__} takes no bearer token")

    @classmethod
    def sync_client(cls, client: Any) -> Any:
        """A synchronous client equivalent to ``client`` (nbbatch polls from a thread);
        by default ``client`` itself."""
        return client

    @classmethod
    def rebind(cls, client: Any, http_client: Any) -> Any:
        """A copy of ``client`` that sends through ``http_client`` (the loopback guard's)."""
        return client.with_options(http_client=http_client)

    @classmethod
    def owns_client(cls, client: Any) -> bool:
        """Whether ``client`` is one of :attr:`client_types` (or a subclass of one)."""
        names = {f"{k.__module__}:{k.__qualname__}" for k in type(client).__mro__}
        return any(t in names for t in cls.client_types)

    @classmethod
    def owns_model(cls, model: str) -> bool:
        """Whether ``model`` is named like one of this provider's own models."""
        return bool(cls.model_prefixes) and model.startswith(cls.model_prefixes)

    @classmethod
    def base_model(cls, model: str) -> str:
        """The model ``model`` stands for (an Azure deployment, an alias): what prices,
        limits and context windows are looked up by. By default ``model`` itself."""
        return model

    @classmethod
    def unknown_key(cls) -> str:
        """How to give a key, for a message: the variables, or client=."""
        variables = cls.key_variables + cls.token_variables
        return " or ".join(variables) if variables else "the client's key"

    @classmethod
    def wrap_sdk_error(
        cls, exc: Exception, doing: str, *, unreachable: bool, bad_key: bool
    ) -> ProviderError:
        """Our error for an SDK error while ``doing`` (see :func:`sdk_error`), naming this
        provider and where its key comes from."""
        return sdk_error(
            exc,
            doing,
            provider=cls.name,
            label=cls.label,
            key_variable=cls.unknown_key(),
            unreachable=unreachable,
            bad_key=bad_key,
        )

    def quota_refusal(
        self, *, info: BatchInfo | None = None, error: BaseException | None = None
    ) -> Refusal | None:
        """A :class:`Refusal` when the ended batch ``info``, or the create call's
        ``error`` (a :class:`ProviderError`, the SDK's error as its cause), says the
        account's batch queue is full; else None. Providers without a queue quota
        refuse nothing for it."""
        return None

    def under_review(self, status: str) -> bool:
        """Whether a batch in this provider ``status`` may still be refused for the
        queue quota (see :attr:`refuses_late`)."""
        return False

    def discard_refused(self, info: BatchInfo) -> None:
        """Free what a refused batch left behind at the provider (its uploaded input),
        where the provider allows it; never raises."""
        return None

    @classmethod
    def tier_limit(cls, tier: str, model: str) -> int | None:
        """The queue limit the provider publishes for usage ``tier`` (``"tier-1"`` ...)
        and ``model``, in :attr:`quota_unit`; None when it publishes none."""
        return None

    @property
    def base_url(self) -> str:
        """Where the client sends requests (recorded in the ledger; never a key)."""
        return type(self).address_of(self.client)

    @classmethod
    def address_of(cls, client: Any) -> str:
        """Where SDK ``client`` sends requests, as recorded with a job (never a key):
        enough, with the key, for :meth:`make_client` to make the same client again."""
        return str(client.base_url)

    def validate(self, spec: RequestSpec) -> None:
        """Raise :class:`~nbbatch.InputError` when the provider would refuse ``spec``'s
        parameters for every row (unknown keyword, wrong type, out of range). Sends
        nothing. Providers without checks accept everything here."""
        return None

    @property
    def min_requests(self) -> int:
        """The fewest requests the provider runs in one batch (1: any number)."""
        return 1

    def check_job_size(self, n_requests: int) -> None:
        """Raise :class:`~nbbatch.InputError` when the provider would refuse a job of
        ``n_requests`` requests for its size (Bedrock runs no job below a minimum).
        Sends nothing; providers without a minimum accept any size."""
        return None

    @classmethod
    def check_output_limit(cls, spec: RequestSpec) -> None:
        """Raise :class:`~nbbatch.InputError` when ``spec.max_tokens`` is above the output
        limit the provider publishes for ``spec.model`` (it would refuse every row).
        Needs no client, so ``preview`` checks it too; a model whose limit is not known
        is not checked, nor is a provider without a table of limits."""
        return None

    def check_model(self, model: str) -> None:
        """Raise :class:`~nbbatch.InputError` when the provider says it has no ``model``.

        Asks the provider's models endpoint through the SDK (one round trip, then
        remembered per address and model in this process). A rejected key (401)
        or no answer at all raises :class:`~nbbatch.ProviderError` naming where the key
        came from: a job recorded then would never move. When the endpoint is missing
        (some proxies) or answers 429/5xx, the check is skipped and logged at INFO on
        logger ``nbbatch``: the batch itself will still report a bad model.
        """
        key = (self.base_url, model)
        if key in _KNOWN_MODELS:
            return
        try:
            found = self.find_model(model)
        except ProviderError as exc:
            # Only the kind of failure: a refusal's text can quote part of the key.
            cause = exc.__cause__
            status = http_status(cause)
            # Not 403: a restricted key may lack the models scope (api.model.read)
            # and still be allowed to create batches; that check is skipped below.
            if status == 401 or (status is None and exc.transient):
                # A rejected key or no answer at all: a job recorded now would never
                # move, so say so before anything is recorded.
                raise self._unusable(model, status) from exc
            why = f"HTTP {status}" if status else type(cause or exc).__name__
            log.info("nbbatch: model %r not checked: asking %s failed (%s)", model, self.name, why)
            return
        if found is None:
            log.info(
                "nbbatch: model %r not checked: %s has no models endpoint", model, self.base_url
            )
            return
        if isinstance(found, list):
            close = difflib.get_close_matches(model, found, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            raise InputError(
                f"unknown model {model!r}{hint} {self.name} at {self.base_url} does not have "
                f"it; nothing was created. Its models include: {', '.join(sorted(found)[:12])}"
                f"{', ...' if len(found) > 12 else ''}.",
                provider=self.name,
            )
        _KNOWN_MODELS.add(key)

    def key_source(self) -> str:
        """Where this provider's key came from, in words, for an error message."""
        credential = self.key_origin or self.credential or ""
        if credential.startswith("env:"):
            return f"the key in {credential.removeprefix('env:')}"
        if credential == "client":
            return f"the key given on client= ({type(self.client).__name__}(api_key=...))"
        if credential == "local":
            return "the emulator's placeholder key"
        return "the API key"

    def _unusable(self, model: str, status: int | None) -> ProviderError:
        """The error for a models check that found the key rejected or no one there."""
        if status is None:
            return ProviderError(
                f"could not reach {self.name} at {self.base_url} while checking model "
                f"{model!r}; nothing was created. Check the address (the client's base_url) "
                "and the network, then submit again.",
                provider=self.name,
                transient=True,
            )
        credential = self.key_origin or self.credential or ""
        if credential.startswith("env:"):
            fix = f"set {credential.removeprefix('env:')} to a valid key, or pass client=..."
        elif credential == "client":
            fix = "give the client a valid api_key (the environment's keys were not used)"
        else:
            fix = "check the key"
        verb = "rejected"
        return ProviderError(
            f"{self.name} at {self.base_url} {verb} {self.key_source()} while checking model "
            f"{model!r}; nothing was created: {fix}.",
            provider=self.name,
        )

    def find_model(self, model: str) -> bool | list[str] | None:
        """Ask the provider about ``model``: True when it has it, else the ids it has,
        or None when it has no models endpoint. Raises ProviderError when it cannot be
        asked. Providers without a models endpoint return None."""
        return None

    @abstractmethod
    def encode(self, custom_ids: pa.Array, prompts: pa.Array, spec: RequestSpec) -> bytes:
        """The JSONL request lines for these rows, one per row, each ending in ``\\n``."""

    @abstractmethod
    def create(self, jsonl: bytes, spec: RequestSpec, metadata: dict[str, str]) -> BatchInfo:
        """Create one batch from encoded lines; returns as soon as the provider has it."""

    @abstractmethod
    def retrieve(self, batch_id: str) -> BatchInfo:
        """The batch's current state."""

    @abstractmethod
    def cancel(self, batch_id: str) -> BatchInfo:
        """Ask the provider to cancel the batch."""

    @abstractmethod
    def find_batch(
        self, metadata: dict[str, str], n_requests: int, since: float, known: set[str]
    ) -> BatchInfo | None:
        """A batch created at or after ``since`` (seconds since the epoch) for this job
        part, not among ``known`` ids, or None: used to recover a create call whose
        outcome was never recorded."""

    @abstractmethod
    def fetch_results(self, info: BatchInfo, *, max_bytes: int | None = None) -> list[bytes]:
        """The raw result files of an ended batch (possibly empty), as received.

        With ``max_bytes``, a download is stopped as soon as the files together pass
        it (:func:`read_capped`) rather than read whole into memory."""

    def list_batches(self) -> Iterator[BatchInfo]:
        """Every batch the account (or emulator) holds, newest first, for ``nbbatch
        clean`` to find the background emulator's batches no job refers to. A provider
        without a listing yields none."""
        return iter(())

    def delete_batch(self, info: BatchInfo) -> None:  # noqa: B027 - optional, no-op default
        """Remove what the provider keeps of an ended batch: its input and result files,
        and the batch itself where the API can delete one. Used when a job on nbbatch's
        background emulator is forgotten, so its copy goes too. A provider with no such
        calls keeps them; raises :class:`ProviderError` when a call fails."""
        return None

    def download_results(self, info: BatchInfo, sink: Any, *, max_bytes: int | None) -> None:
        """Write the raw result files of an ended batch into ``sink``: each file through
        ``with sink.new() as fh: fh.write(...)``, refused with :class:`BatchFailedError`
        once the files together pass ``max_bytes``. Providers whose SDK can stream a
        download write it chunk by chunk (:func:`copy_capped`), so a file is never held
        whole in memory; this default writes what :meth:`fetch_results` returns."""
        for raw in self.fetch_results(info, max_bytes=max_bytes):
            with sink.new() as fh:
                fh.write(raw)

    @abstractmethod
    def parse_results(self, raw: bytes, spec: RequestSpec) -> pa.Table:
        """Normalise one raw result file into a :data:`ROW_RESULT_SCHEMA` table."""

    def realtime(self, custom_id: str, prompt: str, spec: RequestSpec) -> dict[str, Any]:
        """Send one row's request through the provider's real-time API, now.

        Returns one row with the :data:`ROW_RESULT_SCHEMA` keys, normalised like a batch
        result line, plus ``truncated`` (the reply was cut off at the token limit). A
        refusal of that one request (4xx, 5xx, connection) is a ``failed`` row with its
        error, never an exception. Providers without a real-time API need not have it.
        """
        raise NotImplementedError(f"{type(self).__name__} has no real-time API")

    def truncated(self, raw: bytes, spec: RequestSpec) -> pa.Table:
        """``custom_id`` and ``truncated`` (bool) for each line of one raw result file:
        whether the reply was cut off at the token limit (not in ROW_RESULT_SCHEMA)."""
        raise NotImplementedError(f"{type(self).__name__} cannot tell truncated replies")


def read_capped(chunks: Iterable[bytes], max_bytes: int | None, what: str) -> bytes:
    """The bytes of a download, refused with :class:`BatchFailedError` as soon as they
    pass ``max_bytes``: a result larger than any reply to what was sent comes from a
    broken or hostile endpoint, and must not fill the memory first."""
    out = io.BytesIO()
    copy_capped(chunks, out, max_bytes, what)
    return out.getvalue()


def copy_capped(chunks: Iterable[bytes], out: IO[bytes], max_bytes: int | None, what: str) -> int:
    """Write a download to ``out`` chunk by chunk, refused with :class:`BatchFailedError`
    as soon as it passes ``max_bytes`` (never holding more than one chunk); returns the
    bytes written."""
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise BatchFailedError(
                f"{what} is larger than {max_bytes:,} bytes, more than any reply to the "
                "requests sent could be; nothing was recorded from it. The endpoint is "
                "broken or not the provider: check the job's address."
            )
        out.write(chunk)
    return size


def empty_results() -> pa.Table:
    """A row-result table with no rows."""
    return ROW_RESULT_SCHEMA.empty_table()


def sdk_kwargs(method: Any, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as keyword arguments for an SDK ``create`` method.

    A request body can hold keys the installed SDK has no argument for (``**params``
    passed through, or a field newer than the SDK); those go in ``extra_body`` so the
    real-time request carries exactly the body a batch line would.
    """
    import inspect

    try:
        names = set(inspect.signature(method).parameters)
    except (TypeError, ValueError):  # pragma: no cover - no signature: send all as extra
        names = set()
    known = {k: v for k, v in body.items() if k in names}
    extra = {k: v for k, v in body.items() if k not in names}
    if extra:
        known["extra_body"] = extra
    return known


def sync_twin(sync_type: Any, client: Any, *settings: str) -> Any:
    """A ``sync_type`` client with an async client's key, address, timeout, retries and
    headers, plus the named ``settings`` of the SDK's own (``organization``, ...): the
    openai and anthropic SDKs, generated alike, keep these under the same names."""
    return sync_type(
        api_key=client.api_key,
        **{name: getattr(client, name) for name in settings},
        base_url=client.base_url,
        timeout=client.timeout,
        max_retries=client.max_retries,
        default_headers=client._custom_headers,
    )


def look_up_model(
    model: str,
    *,
    retrieve: Callable[[], object],
    list_names: Callable[[], list[str]],
    errors: tuple[type[Exception], ...],
    wrap: Callable[[Exception, str], ProviderError],
    name: str | None = None,
) -> bool | list[str] | None:
    """:meth:`Provider.find_model` through an SDK: ``retrieve()`` the model; on a 404 or
    405, ``list_names()`` tells "no such model" (the names there are) from "no such
    route" (a proxy without the models API: None). ``errors`` are the SDK's (and the
    transport's); ``wrap`` turns one into our error; ``name`` is the model as listed
    when it differs from ``model``."""
    try:
        retrieve()
        return True
    except errors as exc:
        if http_status(exc) not in (404, 405):
            raise wrap(exc, f"looking up model {model!r}") from exc
    try:
        names = list_names()
    except errors as exc:
        if http_status(exc) in (404, 405):
            return None
        raise wrap(exc, "listing models") from exc
    return True if (model if name is None else name) in names else names


def connection_failure(
    custom_id: str, exc: Exception, timeout_type: type[Exception], label: str
) -> dict[str, Any]:
    """A real-time request the SDK got no answer to (worth retrying): its timeout error
    or another connection error."""
    kind = "timeout_error" if isinstance(exc, timeout_type) else "api_connection_error"
    return failure_row(custom_id, kind, f"could not reach {label}: {exc}", True)


def success_row(
    custom_id: str,
    output: str | None,
    input_tokens: int | None,
    output_tokens: int | None,
    cached_tokens: int | None,
    *,
    truncated: bool = False,
) -> dict[str, Any]:
    """One succeeded row in :data:`ROW_RESULT_SCHEMA` terms (plus ``truncated``)."""
    return {
        "custom_id": custom_id,
        "status": "succeeded",
        "output": output,
        "error_type": None,
        "error_message": None,
        "retryable": None,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cached_tokens": cached_tokens,
        "truncated": truncated,
    }


def failure_row(custom_id: str, kind: str, message: str, retryable: bool) -> dict[str, Any]:
    """One failed row in :data:`ROW_RESULT_SCHEMA` terms (plus ``truncated``), for a
    request that got no usable reply."""
    return {
        "custom_id": custom_id,
        "status": "failed",
        "output": None,
        "error_type": kind,
        "error_message": message,
        "retryable": retryable,
        "input_tokens": None,
        "output_tokens": None,
        "cached_tokens": None,
        "truncated": False,
    }


def sdk_error(
    exc: Exception,
    doing: str,
    *,
    provider: str,
    label: str,
    key_variable: str,
    unreachable: bool,
    bad_key: bool,
) -> ProviderError:
    """Our error for an SDK error: says what we were doing and what to check, and is
    marked transient when the same call may work later (no answer, 408/409/429/5xx).

    ``unreachable`` / ``bad_key`` say whether ``exc`` is the SDK's connection error or
    authentication error (each SDK has its own classes).
    """
    status = http_status(exc)
    transient = unreachable or (status is not None and (status in (408, 409, 429) or status >= 500))
    if isinstance(exc, ValueError) and status is None:
        # The SDK could not read the answer (not JSON, or not the API's shape): a proxy's
        # error page or a broken endpoint, which may answer properly next time.
        return ProviderError(
            f"{label} answered with something that is not its API's JSON while {doing} "
            f"({type(exc).__name__}: {exc}); nothing was recorded from it, and it is asked "
            "again on the next poll. Check the job's address if it goes on.",
            provider=provider,
            transient=True,
        )
    if unreachable:
        url = getattr(getattr(exc, "request", None), "url", "the provider")
        message = f"could not reach {label} at {url} while {doing}: {exc}"
    elif bad_key:
        # The key may have come from client= rather than the environment: name both.
        message = (
            f"{label} rejected the API key while {doing}; check {key_variable}, or the "
            f"api_key of the client= given ({exc})"
        )
    else:
        message = f"{label} refused the request while {doing}: {exc}"
    # A request refused as malformed or too large will not pass on a retry either.
    cls = BatchFailedError if status in (400, 413, 422) else ProviderError
    return cls(message, provider=provider, transient=transient)
