"""The public ``Emulator`` object, ``start()`` and the process-wide ``shared()`` one."""

from __future__ import annotations

import atexit
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ._faults import HttpFaults, Knobs
from ._persist import Persister, SyncAfterRequest
from ._quality import check_quality
from ._responder import Responder, with_quality
from ._server import Front, Server, build_app
from ._state import Store


class Emulator:
    """A running emulator of the OpenAI Batch, Anthropic Message Batches and Gemini Batch
    Mode APIs.

    Point the official SDKs at it::

        openai.OpenAI(base_url=emu.openai_base_url, api_key="any")
        anthropic.Anthropic(base_url=emu.anthropic_base_url, api_key="any")
        genai.Client(api_key="any", http_options={"base_url": emu.gemini_base_url})

    Use :func:`nbbatch.emulator.start` to create one; :meth:`stop` (or leaving a ``with``
    block) shuts it down and deletes its files, unless it keeps them in a ``state_dir``.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        knobs: Knobs,
        clock: Callable[[], float] | None,
        state_dir: Path | None = None,
        responder: Responder | None = None,
        token: str | None = None,
        quality: Mapping[str, float] | None = None,
    ) -> None:
        self._http_faults = HttpFaults()
        # With a token, every request must present it (see _server.Front).
        self._token = token
        self._host = host
        # A long-lived emulator (one with a state_dir) keeps only the latest requests.
        self._log: deque[tuple[str, str]] = deque(maxlen=None if state_dir is None else 10_000)
        self._lock = threading.Lock()
        self._stopped = False
        self._last_request = time.monotonic()
        self._persister: Persister | None = None
        if state_dir is None:
            self._store = Store(knobs, clock)
        else:
            if clock is not None:
                raise ValueError("an emulator with a state_dir runs on wall-clock time")
            self._store = Store(knobs, directory=state_dir / "data")
            self._persister = Persister(self._store, state_dir)
        self._quality = None if quality is None else check_quality(quality)
        self.responder = responder
        try:
            if self._persister is not None:
                self._persister.load()
            app: Any = Front(build_app(self._store), self)
            if self._persister is not None:
                app = SyncAfterRequest(app, self._persister)
            self._server = Server(app, host, port)
            self._server.start()
        except BaseException:
            self._store.close()
            raise
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self._server.port}"
        self.openai_base_url = self.url + "/v1"
        self.anthropic_base_url = self.url
        # Gemini lives under its own prefix: its /v1/files and /v1/models paths would
        # otherwise collide with OpenAI's.
        self.gemini_base_url = self.url + "/gemini"

    # ----------------------------------------------------------- public API

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def host(self) -> str:
        """The address it listens on (requests naming another Host are refused)."""
        return self._host

    @property
    def token(self) -> str | None:
        """The key every request must carry (a background emulator's), else None."""
        return self._token

    @property
    def store(self) -> Store:
        """Its batches, files and uploads (what the routes serve)."""
        return self._store

    @property
    def knobs(self) -> Knobs:
        """The current timing and fault configuration."""
        return self._store.knobs

    @property
    def responder(self) -> Responder | None:
        """The user's responder (None: the built-in echo); set it to change the answers of
        batches generated from then on."""
        answer: Responder | None = self._responder
        return answer

    @responder.setter
    def responder(self, fn: Responder | None) -> None:
        self._responder = fn
        if self._quality is not None:
            self._store.responder = with_quality(fn, self._quality, seed=self._store.knobs.seed)
        else:
            self._store.responder = fn

    @property
    def quality(self) -> dict[str, float] | None:
        """Each model's share of rows that agree with the responder (None: every model
        agrees always, unless the responder has a quality of its own); set it to change
        the answers of batches generated from then on."""
        return None if self._quality is None else dict(self._quality)

    @quality.setter
    def quality(self, quality: Mapping[str, float] | None) -> None:
        self._quality = None if quality is None else check_quality(quality)
        self.responder = self._responder

    def configure(self, **knobs: Any) -> None:
        """Change timing/fault knobs (same names as :func:`start`).

        Batches created afterwards use the new values; HTTP faults change at once.
        """
        with self._store.lock:
            self._store.knobs = self._store.knobs.replace(**knobs)
        if "seed" in knobs:
            self.responder = self._responder  # the quality's choice of rows follows the seed

    @property
    def request_log(self) -> list[tuple[str, str]]:
        """``(method, path)`` of every HTTP request received, in order (a copy)."""
        with self._lock:
            return list(self._log)

    @property
    def idle_seconds(self) -> float:
        """Seconds since the last HTTP request (or since the start)."""
        with self._lock:
            return time.monotonic() - self._last_request

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def stats(self) -> dict[str, int]:
        """Counters: batches created per provider, files uploaded, requests, real-time calls."""
        with self._store.lock:
            return dict(self._store.counters)

    def stop(self) -> None:
        """Stop serving and delete all stored files (with a ``state_dir``: save them
        there instead). Safe to call more than once."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.stop()
        if self._persister is not None:
            self._persister.sync()
        self._store.close()

    @property
    def running(self) -> bool:
        return not self._stopped

    def __enter__(self) -> Emulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<nbbatch Emulator {state} at {self.url}>"

    # ----------------------------------------------------------- used by the server

    def record_request(self, method: str, path: str, *, realtime: bool) -> None:
        """Count a request the server received (the request log, idle time, stats)."""
        with self._lock:
            self._log.append((method, path))
            self._last_request = time.monotonic()
        self._store.count("requests")
        if realtime:
            self._store.count("realtime_requests")

    def http_fault(self, method: str, path: str) -> int | None:
        """The HTTP error status to simulate for this request, or None (the fault knobs)."""
        with self._lock:
            return self._http_faults.decide(self._store.knobs, method, path)


def start(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    validating_seconds: float = 0.0,
    processing_seconds: float = 0.2,
    finalizing_seconds: float = 0.0,
    error_rate: float = 0.0,
    expire_rate: float = 0.0,
    missing_rate: float = 0.0,
    invalid_output_rate: float = 0.0,
    truncate_rate: float = 0.0,
    http_error_rate: float = 0.0,
    http_error_methods: Sequence[str] = ("GET",),
    http_error_statuses: Sequence[int] = (500, 429),
    fault_attempts: int | None = 1,
    shuffle: bool = True,
    seed: int = 0,
    tier: str | None = None,
    enqueued_token_limit: int | None = None,
    anthropic_queue_limit: int | None = None,
    anthropic_create_rate: int | None = None,
    gemini_enqueued_token_limit: int | None = None,
    flex_latency_seconds: float = 0.0,
    flex_unavailable_rate: float = 0.0,
    models: Sequence[str] = (),
    gemini_out_of_order: bool = False,
    s3_endpoint: str | None = None,
    bedrock_min_records: int = 100,
    clock: Callable[[], float] | None = None,
    state_dir: str | Path | None = None,
    responder: Responder | None = None,
    token: str | None = None,
    quality: Mapping[str, float] | None = None,
) -> Emulator:
    """Start an emulator on ``host``:``port`` (0 picks a free port) and return it.

    Timing: a batch spends ``validating_seconds`` validating, ``processing_seconds`` in
    progress (OpenAI counts grow linearly over it) and ``finalizing_seconds`` finalizing.
    Row faults (exact fractions of each batch's rows, chosen by hash):

    - ``error_rate``: transient per-row error (OpenAI 500 ``server_error``, Anthropic
      ``api_error`` / ``overloaded_error``);
    - ``expire_rate``: rows the batch's window closes on: the batch runs its other rows
      through ``processing_seconds`` (which stands for its 24 h window), then ends
      ``expired`` with those done; the rest are in the OpenAI error file as
      ``batch_expired`` and ``expired`` in Anthropic results;
    - ``missing_rate``: rows executed and counted but with no output line at all;
    - ``invalid_output_rate``: structured replies that violate their schema;
    - ``truncate_rate``: replies cut short (``length`` / ``max_tokens``).

    Faults apply per job: a row's attempt is 1 + the number of batches in a row, up to
    its last, in which it got a fault, and a row that went well starts again at 1 (a new
    job, a re-run). ``fault_attempts`` limits row faults to a row's first N attempts
    (None: always), so with the default 1 a faulted row succeeds when it is retried.
    ``http_error_rate`` answers that fraction of ``http_error_methods`` requests with one
    of ``http_error_statuses`` (never more than two in a row for the same request).
    Batch queue quotas (none by default; see :mod:`nbbatch.emulator._quotas`): ``tier``
    (``"tier-1"`` ... ``"tier-5"``) applies each provider's published limits for that
    usage tier, per model: OpenAI's enqueued input tokens (a batch over it is created
    and fails validation with ``token_limit_exceeded``), Anthropic's requests in the
    processing queue (all models together) and batch creates per minute (429
    ``rate_limit_error`` with ``retry-after``), Gemini's enqueued tokens (429
    ``RESOURCE_EXHAUSTED``). ``enqueued_token_limit`` (OpenAI, tokens per model),
    ``anthropic_queue_limit`` (requests), ``anthropic_create_rate`` (creates per minute)
    and ``gemini_enqueued_token_limit`` (tokens per model) set one limit explicitly,
    over the tier's. What is queued is released as each batch ends.
    OpenAI real-time requests with ``service_tier="flex"`` wait ``flex_latency_seconds``
    more, and ``flex_unavailable_rate`` of them get 429 "Resource Unavailable" (never
    more than two in a row); their replies say ``service_tier: "flex"``. A model without
    flex processing (only o3, o4-mini and the GPT-5.4/5.5/5.6 families have it) gets a 400
    ``invalid_request_error`` on ``service_tier``.
    ``clock`` (a callable returning seconds) replaces ``time.monotonic`` to drive time.
    The models endpoints (``GET /v1/models``, ``GET /v1/models/{id}``, both APIs) know
    the real models of each provider and their dated snapshots; ``models`` adds names
    of one's own (served by all three, as is ``$NBBATCH_EMULATOR_MODELS``, comma-separated);
    the batch and real-time endpoints refuse other names, per line, as the services do.
    Gemini batches answer in request order, inline and in their result file, as Google
    documents; ``gemini_out_of_order`` reorders both as the service has been reported to.
    Bedrock batch inference is served under ``/bedrock`` (a ``boto3.client("bedrock",
    endpoint_url=emu.url + "/bedrock")``): its jobs read their input from and write
    their output to S3 at ``s3_endpoint`` (default ``$AWS_ENDPOINT_URL_S3``; a moto
    server in the tests), and a job of fewer than ``bedrock_min_records`` records fails
    validation, as Bedrock's per-model minimum (100 by default) makes it.
    ``state_dir`` keeps files and batches in that folder, on wall-clock time, so another
    emulator started on the same folder serves them again (what the background emulator
    behind ``provider="local"`` does).
    ``responder`` answers text and structured requests instead of the built-in echo:
    ``fn(request) -> str | dict``, called with a :class:`~nbbatch.emulator.Request`
    (provider, endpoint, model, prompt, system, schema, body) for each row of a batch and
    each real-time call, so a pipeline can be tested offline against answers of one's
    own; faults apply on top (see :mod:`nbbatch.emulator._responder`).
    ``quality`` (``{"gpt-4o-mini": 0.88, "gpt-4o": 0.97}``) stands in for models of
    different quality: each named model gives the responder's answer (or the built-in
    one) on that share of rows and another allowed answer, with a lower score, on the
    rest; the rows are chosen by a hash of the row's prompt, the model and ``seed``, so
    they are the same on every run and in every pack size (see
    :mod:`nbbatch.emulator._quality`). Models not named always agree. It replaces a
    quality the responder has of its own (the demo responders of
    :mod:`nbbatch.datasets` have one).
    """
    if quality is not None:
        quality = check_quality(quality)  # a clear error before the server starts
    knobs = Knobs().replace(
        validating_seconds=validating_seconds,
        processing_seconds=processing_seconds,
        finalizing_seconds=finalizing_seconds,
        error_rate=error_rate,
        expire_rate=expire_rate,
        missing_rate=missing_rate,
        invalid_output_rate=invalid_output_rate,
        truncate_rate=truncate_rate,
        http_error_rate=http_error_rate,
        http_error_methods=tuple(http_error_methods),
        http_error_statuses=tuple(http_error_statuses),
        fault_attempts=fault_attempts,
        shuffle=shuffle,
        seed=seed,
        tier=tier,
        enqueued_token_limit=enqueued_token_limit,
        anthropic_queue_limit=anthropic_queue_limit,
        anthropic_create_rate=anthropic_create_rate,
        gemini_enqueued_token_limit=gemini_enqueued_token_limit,
        flex_latency_seconds=flex_latency_seconds,
        flex_unavailable_rate=flex_unavailable_rate,
        models=tuple(models),
        gemini_out_of_order=gemini_out_of_order,
        s3_endpoint=s3_endpoint,
        bedrock_min_records=bedrock_min_records,
    )
    folder = None if state_dir is None else Path(state_dir)
    return Emulator(
        host=host,
        port=port,
        knobs=knobs,
        clock=clock,
        state_dir=folder,
        responder=responder,
        token=token,
        quality=quality,
    )


#: Timings of the process-wide emulator: slow enough to watch, quick enough to wait for.
SHARED_TIMINGS = {"validating_seconds": 0.5, "processing_seconds": 3.0, "finalizing_seconds": 0.5}

_shared: Emulator | None = None
_shared_lock = threading.Lock()


def shared() -> Emulator:
    """A process-wide emulator, started on first use and stopped at interpreter exit."""
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.running:
            first = _shared is None
            _shared = start(**SHARED_TIMINGS)  # type: ignore[arg-type]
            if first:
                atexit.register(_stop_shared)
        return _shared


def _stop_shared() -> None:
    with _shared_lock:
        if _shared is not None:
            _shared.stop()
