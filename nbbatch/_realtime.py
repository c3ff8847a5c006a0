"""Try before you batch: send a few rows through the real-time API, concurrently.

A batch takes minutes to hours and is paid for in full; tuning a prompt on it is slow
and dear. :func:`run` sends the very requests a batch would carry (the providers build
the body the same way) through the provider's real-time endpoint instead, on a small
thread pool, and returns the same row-result table a batch produces, so the rest of
nbbatch (merge, structured columns, cost) treats both paths alike. Real-time calls cost
the full price, which is why this is meant for a handful of rows.

Retries: the official SDKs already retry a 429/5xx/overloaded/connection error twice
(honouring ``retry-after``). On top of that each row gets ``retries`` more attempts with
a bounded, jittered exponential backoff, because a burst of parallel requests is exactly
what trips rate limits. A row that still fails, or fails for good (4xx), ends ``failed``
with the provider's error; nothing here raises for one row.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from ._errors import InputError
from .providers.base import ROW_RESULT_SCHEMA, SCORE_FIELD, Provider, RequestSpec, failure_row

#: The row-result schema plus ``truncated``: the reply was cut off at the token limit.
REALTIME_SCHEMA = ROW_RESULT_SCHEMA.append(pa.field("truncated", pa.bool_()))

#: Backoff before retry n (1-based) is min(MAX_BACKOFF, BACKOFF * 2 ** (n - 1)) seconds,
#: times a random factor in [0.5, 1) so parallel workers do not retry in lockstep.
BACKOFF = 0.5
MAX_BACKOFF = 8.0


def run(
    provider: Provider,
    custom_ids: pa.Array | Sequence[str],
    prompts: pa.Array | Sequence[str | None],
    spec: RequestSpec,
    *,
    concurrency: int = 8,
    retries: int = 3,
    with_truncated: bool = False,
) -> pa.Table:
    """Send one real-time request per row, ``concurrency`` at a time.

    Returns a :data:`~nbbatch.providers.base.ROW_RESULT_SCHEMA` table with one row per
    custom_id, in the order given (statuses, error types, ``retryable`` and token counts
    mean what they mean for a batch result). ``with_truncated=True`` adds the
    ``truncated`` column (:data:`REALTIME_SCHEMA`), which structured output needs to
    tell a reply cut off at ``max_tokens`` from one that is merely malformed.

    The request parameters are checked before anything is sent (an unusable endpoint or
    response_format raises :class:`~nbbatch.InputError`, as ``submit`` does).
    """
    ids = custom_ids.to_pylist() if isinstance(custom_ids, pa.Array) else list(custom_ids)
    texts = prompts.to_pylist() if isinstance(prompts, pa.Array) else list(prompts)
    if len(ids) != len(texts):
        raise InputError(f"{len(ids)} custom_ids for {len(texts)} prompts; they must pair up.")
    if not isinstance(concurrency, int) or concurrency < 1:
        raise InputError(f"concurrency must be a positive integer, found {concurrency!r}.")
    if not isinstance(retries, int) or retries < 0:
        raise InputError(f"retries must be a non-negative integer, found {retries!r}.")
    schema = REALTIME_SCHEMA if with_truncated else ROW_RESULT_SCHEMA
    if not ids:
        return schema.empty_table()
    # Build one request line the batch way: it validates endpoint and parameters, so a
    # mistake is an error here, before the first paid request, not a failure per row.
    provider.encode(pa.array(ids[:1], pa.string()), pa.array(["check"], pa.string()), spec)

    stop = threading.Event()  # set on interrupt: waiting retries give up at once
    rows: list[dict[str, Any] | None] = [None] * len(ids)

    def one(i: int) -> None:
        rows[i] = _send(provider, ids[i], texts[i], spec, retries, stop)

    pool = ThreadPoolExecutor(max_workers=min(concurrency, len(ids)), thread_name_prefix="nbbatch")
    try:
        futures = [pool.submit(one, i) for i in range(len(ids))]
        for f in futures:
            f.result()  # `one` never raises for a row; this re-raises only a bug
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    # A reply with a score (see providers.base.SCORE_FIELD) keeps it as the last column.
    if any(row is not None and SCORE_FIELD.name in row for row in rows):
        schema = schema.append(SCORE_FIELD)
    # from_pylist ignores the extra "truncated" key when the schema lacks it.
    return pa.Table.from_pylist(rows, schema=schema)


def _send(
    provider: Provider,
    custom_id: str,
    prompt: str | None,
    spec: RequestSpec,
    retries: int,
    stop: threading.Event,
) -> dict[str, Any]:
    """One row: the request, retried while the failure is transient and tries remain."""
    if prompt is None:
        return failure_row(custom_id, "invalid_request_error", "the row has no prompt", False)
    attempt = 0
    while True:
        attempt += 1
        try:
            row = provider.realtime(custom_id, prompt, spec)
        except Exception as exc:  # a client-side bug or an unexpected SDK error
            row = failure_row(custom_id, "client_error", f"{type(exc).__name__}: {exc}", False)
        if row.get("status") != "failed" or not row.get("retryable") or attempt > retries:
            return row
        delay = min(MAX_BACKOFF, BACKOFF * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        if stop.wait(delay):
            return row
