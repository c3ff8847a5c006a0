"""Fault and timing knobs, and the deterministic decisions made from them.

Nothing here uses a global random number generator: every decision is a function of
``(seed, custom_id, attempt, fault name)`` hashed with BLAKE2b, so the same batch
submitted to a fresh emulator with the same knobs always gets the same faults.

Row faults are assigned *exactly*: a rate ``r`` over ``n`` eligible rows hits
``round(r * n)`` of them, namely those whose hash for that fault is smallest. That keeps
tests simple ("error_rate=0.1 on 200 rows gives 20 errors") while each row's fate still
comes from its own hash.

Faults apply per job: a row's attempt is 1 + the number of consecutive batches, up to
its last, in which it got a fault; once a row went well, its next appearance (a new job,
a re-run) is attempt 1 again. So ``fault_attempts=1`` means "a row fails at most once in
a row, and its retry succeeds", for every job sent to the emulator.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

#: Text markers a test can put in the last user message to force a per-row outcome.
FAIL_MARKER = "[[emulator:fail]]"
TRANSIENT_MARKER = "[[emulator:transient]]"


class Fate(IntEnum):
    """What happens to one request of a batch. Stored one byte per row."""

    OK = 0
    TRANSIENT_ERROR = 1  # server_error 500 / api_error, overloaded_error
    FAIL = 2  # non-transient 400 invalid_request_error (marker or invalid params)
    EXPIRE = 3  # never executed: the batch expired
    MISSING = 4  # executed but its line is silently dropped (simulated provider bug)
    INVALID_OUTPUT = 5  # succeeded, but the structured reply violates its schema
    TRUNCATE = 6  # succeeded, but cut short (finish_reason "length" / "max_tokens")


#: The usage tiers ``tier=`` takes (OpenAI's five; see _quotas.py for the figures).
TIERS = ("tier-1", "tier-2", "tier-3", "tier-4", "tier-5")

#: Fates after which the row is retried as its next attempt (a FAIL is permanent).
FAULTS = frozenset(
    {Fate.TRANSIENT_ERROR, Fate.EXPIRE, Fate.MISSING, Fate.INVALID_OUTPUT, Fate.TRUNCATE}
)

#: Knobs that decide per-row fates (the ones ``fault_attempts`` limits).
ROW_FAULTS = ("expire_rate", "missing_rate", "error_rate", "invalid_output_rate", "truncate_rate")


@dataclass(frozen=True)
class Knobs:
    """Timing and fault configuration (and the extra model names the models endpoints
    serve). Batches snapshot it when they are created."""

    validating_seconds: float = 0.0
    processing_seconds: float = 0.2
    finalizing_seconds: float = 0.0
    error_rate: float = 0.0
    expire_rate: float = 0.0
    missing_rate: float = 0.0
    invalid_output_rate: float = 0.0
    truncate_rate: float = 0.0
    http_error_rate: float = 0.0
    http_error_methods: tuple[str, ...] = ("GET",)
    http_error_statuses: tuple[int, ...] = (500, 429)
    fault_attempts: int | None = 1
    shuffle: bool = True
    seed: int = 0
    # Batch queue quotas (see _quotas.py): a usage tier's published figures, and
    # explicit limits that win over them. None everywhere: no limit.
    tier: str | None = None
    enqueued_token_limit: int | None = None  # OpenAI input tokens queued, per model
    anthropic_queue_limit: int | None = None  # Anthropic requests queued, all models
    anthropic_create_rate: int | None = None  # Anthropic batch creates per minute
    gemini_enqueued_token_limit: int | None = None  # Gemini input tokens queued, per model
    # OpenAI flex processing (real-time requests with service_tier="flex"): extra
    # latency, and the fraction answered 429 Resource Unavailable.
    flex_latency_seconds: float = 0.0
    flex_unavailable_rate: float = 0.0
    models: tuple[str, ...] = ()  # model names served besides the real ones (_models.py)
    # Gemini answers in request order, as documented; True reorders them as the service
    # has been seen to (googleapis/python-genai#1909), to test a client that matches by key.
    gemini_out_of_order: bool = False
    # Bedrock batch inference reads its input from and writes its output to S3: the S3
    # endpoint to use (None: $AWS_ENDPOINT_URL_S3), and the fewest records it runs.
    s3_endpoint: str | None = None
    bedrock_min_records: int = 100

    def replace(self, **changes: object) -> Knobs:
        """Return a copy with ``changes`` applied, checking names and ranges."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"unknown emulator knob(s) {unknown}; known: {sorted(names)}")
        if "http_error_methods" in changes:
            methods = changes["http_error_methods"]
            if isinstance(methods, str):
                methods = (methods,)
            changes["http_error_methods"] = tuple(str(m).upper() for m in methods)  # type: ignore[attr-defined]
        if "http_error_statuses" in changes:
            statuses = changes["http_error_statuses"]
            changes["http_error_statuses"] = tuple(int(s) for s in statuses)  # type: ignore[attr-defined]
        if "models" in changes:
            models = changes["models"]
            if isinstance(models, str):
                models = (models,)
            changes["models"] = tuple(models)  # type: ignore[arg-type]
        new = dataclasses.replace(self, **changes)  # type: ignore[arg-type]
        new.check()
        return new

    def check(self) -> None:
        """Raise ValueError when a knob is out of range."""
        for name in (
            "validating_seconds",
            "processing_seconds",
            "finalizing_seconds",
            "flex_latency_seconds",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in (*ROW_FAULTS, "http_error_rate", "flex_unavailable_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        if not self.http_error_statuses:
            raise ValueError("http_error_statuses must not be empty")
        if self.bedrock_min_records < 1:
            raise ValueError(f"bedrock_min_records must be >= 1, got {self.bedrock_min_records!r}")
        if self.fault_attempts is not None and self.fault_attempts < 0:
            raise ValueError("fault_attempts must be >= 0 or None")
        if self.tier is not None and self.tier not in TIERS:
            raise ValueError(f"tier must be one of {list(TIERS)} or None, got {self.tier!r}")
        for name in (
            "enqueued_token_limit",
            "anthropic_queue_limit",
            "anthropic_create_rate",
            "gemini_enqueued_token_limit",
        ):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if not all(isinstance(m, str) and m for m in self.models):
            raise ValueError(f"models must be non-empty strings, got {list(self.models)!r}")

    @property
    def row_faults_active(self) -> bool:
        """True when any per-row fault rate is non-zero (attempts must then be counted)."""
        return any(getattr(self, name) > 0 for name in ROW_FAULTS)


def unit_hash(seed: int, *parts: object) -> float:
    """A deterministic number in [0, 1) from ``seed`` and ``parts``."""
    text = "\x1f".join([str(seed), *(str(p) for p in parts)])
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def int_hash(*parts: object) -> int:
    """A deterministic 64-bit integer from ``parts`` (used for ids, enums, numbers)."""
    text = "\x1f".join(str(p) for p in parts)
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True)
class RowInfo:
    """What fault assignment needs to know about one request."""

    custom_id: str
    attempt: int  # 1 + consecutive earlier batches in which this custom_id got a fault
    text: str  # the last user message (markers are looked for here)
    has_schema: bool  # a structured reply was requested (invalid_output can apply)
    invalid: bool = False  # already known to fail (e.g. Anthropic params validation)


def assign_fates(rows: Sequence[RowInfo], knobs: Knobs) -> bytearray:
    """Decide the fate of every row of one batch; returns one ``Fate`` byte per row."""
    fates = bytearray(len(rows))
    eligible: list[int] = []
    for i, row in enumerate(rows):
        if row.invalid or FAIL_MARKER in row.text:
            fates[i] = Fate.FAIL
        elif TRANSIENT_MARKER in row.text:
            fates[i] = Fate.TRANSIENT_ERROR if row.attempt <= 1 else Fate.OK
        elif knobs.fault_attempts is None or row.attempt <= knobs.fault_attempts:
            eligible.append(i)
    if not eligible or not knobs.row_faults_active:
        return fates

    def pick(candidates: list[int], rate: float, name: str, fate: Fate) -> list[int]:
        """Give ``fate`` to exactly round(rate * len(candidates)) rows; return the rest."""
        k = _round_half_up(rate * len(candidates))
        if k <= 0:
            return candidates
        ranked = sorted(
            candidates,
            key=lambda i: unit_hash(knobs.seed, rows[i].custom_id, rows[i].attempt, name),
        )
        for i in ranked[:k]:
            fates[i] = fate
        chosen = set(ranked[:k])
        return [i for i in candidates if i not in chosen]

    # Each rate is a fraction of all eligible rows, so apply it to that count and pick
    # from the rows not yet hit by an earlier fault.
    total = len(eligible)
    remaining = eligible
    for name, fate in (
        ("expire_rate", Fate.EXPIRE),
        ("missing_rate", Fate.MISSING),
        ("error_rate", Fate.TRANSIENT_ERROR),
    ):
        rate = getattr(knobs, name)
        if rate > 0 and remaining:
            remaining = pick(remaining, min(1.0, rate * total / len(remaining)), name, fate)
    # Output faults are fractions of the rows that succeed.
    with_schema = [i for i in remaining if rows[i].has_schema]
    if knobs.invalid_output_rate > 0 and with_schema:
        left = set(
            pick(with_schema, knobs.invalid_output_rate, "invalid_output", Fate.INVALID_OUTPUT)
        )
        remaining = [i for i in remaining if not rows[i].has_schema or i in left]
    if knobs.truncate_rate > 0 and remaining:
        pick(remaining, knobs.truncate_rate, "truncate", Fate.TRUNCATE)
    return fates


def faulted(fates: bytearray) -> list[bool]:
    """Per row, whether its fate is a fault that makes its next appearance a retry."""
    return [f in FAULTS for f in fates]


def _round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (Python's round() goes to even)."""
    return int(math.floor(x + 0.5 + 1e-9))


def processing_order(n: int, knobs: Knobs, salt: str) -> list[int]:
    """The order in which rows are processed and written out (a permutation of range(n)).

    Deterministic from the seed and ``salt`` (the batch's content fingerprint), so the
    same input gives the same order, while different batches are shuffled differently.
    """
    order = list(range(n))
    if knobs.shuffle and n > 1:
        order.sort(key=lambda i: int_hash(knobs.seed, salt, i))
        if order == sorted(order):  # only possible for tiny n: make the shuffle visible
            order.reverse()
    return order


class HttpFaults:
    """Decides which HTTP requests get a retryable error instead of being served.

    Deterministic per ``(seed, method, path, n-th request to that method+path)``. At most
    two consecutive requests to the same method and path fail, so an SDK with its default
    ``max_retries=2`` always gets through.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], int] = {}
        self._streak: dict[tuple[str, str], int] = {}

    def decide(self, knobs: Knobs, method: str, path: str) -> int | None:
        """Return the HTTP status to fail this request with, or None to serve it."""
        if knobs.http_error_rate <= 0 or method.upper() not in knobs.http_error_methods:
            return None
        key = (method.upper(), path)
        n = self._seen.get(key, 0) + 1
        self._seen[key] = n
        streak = self._streak.get(key, 0)
        if streak < 2 and unit_hash(knobs.seed, method, path, n, "http") < knobs.http_error_rate:
            self._streak[key] = streak + 1
            statuses = knobs.http_error_statuses
            return statuses[int_hash(knobs.seed, method, path, n, "status") % len(statuses)]
        self._streak[key] = 0
        return None
