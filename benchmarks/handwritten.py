"""Baseline: the same job as bench_e2e.py, written by hand with the official SDK.

This is the script a careful user writes without nbbatch: requests built vectorised with
polars, chunked under the provider's limits, submitted with the ``openai`` or
``anthropic`` SDK, polled every 0.5 s, results downloaded as raw bytes, parsed with
pyarrow's JSON reader and an explicit reduced schema, and scattered back into a copy of
the frame by ``custom_id`` (the row's position). No retries of failed rows, no ledger,
no checks that the frame is unchanged: only the happy path, done efficiently.

    python benchmarks/handwritten.py [--rows 100000] [--provider openai|anthropic]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

if TYPE_CHECKING:
    import pandas as pd

TEMPLATE = "Classify this {} review: {}"  # "Classify this {product} review: {review}"
COLUMNS = ("product", "review")
MAX_TOKENS = 20
POLL_SECONDS = 0.5
ENDPOINT = "/v1/chat/completions"
OUTPUT = "answer"
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
# Per-batch limits: OpenAI 50,000 requests and 200 MB per input file; Anthropic 100,000
# requests and 256 MB per create request. The byte caps keep the same margin as nbbatch.
MAX_REQUESTS = {"openai": 50_000, "anthropic": 100_000}
MAX_BYTES = {"openai": 190 * 1024 * 1024, "anthropic": 240 * 1024 * 1024}

# Only the fields read: the rest of each line is skipped by the parser.
OPENAI_SCHEMA = pa.schema(
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
                                (
                                    "choices",
                                    pa.list_(
                                        pa.struct(
                                            [("message", pa.struct([("content", pa.string())]))]
                                        )
                                    ),
                                )
                            ]
                        ),
                    )
                ]
            ),
        ),
    ]
)
ANTHROPIC_SCHEMA = pa.schema(
    [
        ("custom_id", pa.string()),
        (
            "result",
            pa.struct(
                [
                    ("type", pa.string()),
                    (
                        "message",
                        pa.struct([("content", pa.list_(pa.struct([("text", pa.string())])))]),
                    ),
                ]
            ),
        ),
    ]
)


# -- build ------------------------------------------------------------------------------
def _line_frame(frame: pl.DataFrame, start: int, provider: str) -> pl.DataFrame:
    """One request per row of ``frame`` (rows ``start``.. of the whole job), as the
    columns of a JSONL line."""
    custom_id = pl.int_range(start, start + frame.height).cast(pl.String)
    prompt = pl.format(TEMPLATE, *COLUMNS)
    messages = pl.concat_list(pl.struct(role=pl.lit("user"), content=prompt))
    model = pl.lit(MODELS[provider])
    if provider == "openai":
        return frame.select(
            custom_id=custom_id,
            method=pl.lit("POST"),
            url=pl.lit(ENDPOINT),
            body=pl.struct(model=model, messages=messages, max_tokens=pl.lit(MAX_TOKENS)),
        )
    return frame.select(
        custom_id=custom_id,
        params=pl.struct(model=model, max_tokens=pl.lit(MAX_TOKENS), messages=messages),
    )


def _chunks(frame: pl.DataFrame, provider: str) -> Iterator[bytes]:
    """The JSONL of each batch: at most the provider's request count, and split in half
    again while a chunk's bytes exceed its byte cap."""
    step = MAX_REQUESTS[provider]
    pending = [(start, frame.slice(start, step)) for start in range(0, frame.height, step)]
    while pending:
        start, part = pending.pop(0)
        buf = io.BytesIO()
        _line_frame(part, start, provider).write_ndjson(buf)
        data = buf.getvalue()
        if len(data) <= MAX_BYTES[provider] or part.height == 1:
            yield data
        else:
            half = part.height // 2
            pending[:0] = [(start, part.slice(0, half)), (start + half, part.slice(half))]


def _requests(jsonl: bytes) -> list[dict[str, Any]]:
    """The request dicts Anthropic's ``batches.create`` takes, from polars' NDJSON.

    Choice: one orjson call per chunk, on the lines turned into a JSON array (a raw
    newline cannot occur inside a JSON string, so replacing them with commas is safe).
    That is several times faster than polars' ``to_dicts()`` or orjson line by line.
    """
    return orjson.loads(b"[" + jsonl.rstrip(b"\n").replace(b"\n", b",") + b"]")


# -- submit / wait / collect per provider -----------------------------------------------
def _submit(client: Any, provider: str, frame: pl.DataFrame) -> list[str]:
    ids = []
    for i, data in enumerate(_chunks(frame, provider)):
        if provider == "openai":
            upload = client.files.create(file=(f"batch-{i:03d}.jsonl", data), purpose="batch")
            batch = client.batches.create(
                input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h"
            )
        else:
            batch = client.messages.batches.create(requests=_requests(data))
        ids.append(batch.id)
    return ids


def _wait(client: Any, provider: str, ids: list[str]) -> list[Any]:
    """Poll every batch not yet ended, every POLL_SECONDS; the batches as they ended."""
    done: dict[str, Any] = {}
    while True:
        for batch_id in ids:
            if batch_id in done:
                continue
            if provider == "openai":
                batch = client.batches.retrieve(batch_id)
                if batch.status in ("failed", "expired", "cancelled"):
                    raise RuntimeError(f"batch {batch_id} ended {batch.status}: {batch.errors}")
                if batch.status == "completed":
                    done[batch_id] = batch
            else:
                batch = client.messages.batches.retrieve(batch_id)
                if batch.processing_status == "ended":
                    done[batch_id] = batch
        if len(done) == len(ids):
            return [done[b] for b in ids]
        time.sleep(POLL_SECONDS)


def _download(client: Any, provider: str, batch: Any) -> bytes:
    if provider == "openai":
        if batch.output_file_id is None:  # every request failed
            return b""
        return client.files.content(batch.output_file_id).content
    # The raw JSONL as received, not the SDK's line-by-line json.loads into models.
    response = client.messages.batches.with_raw_response.results(batch.id)
    return response.http_response.read()


def _answers(raw: bytes, provider: str) -> tuple[pa.Array, pa.Array]:
    """(custom_ids, answer texts) of one results file; a failed row's text is null."""
    schema = OPENAI_SCHEMA if provider == "openai" else ANTHROPIC_SCHEMA
    if not raw.strip():
        return pa.array([], pa.string()), pa.array([], pa.string())
    table = pajson.read_json(
        pa.BufferReader(raw),
        parse_options=pajson.ParseOptions(
            explicit_schema=schema, unexpected_field_behavior="ignore"
        ),
    )
    if provider == "openai":
        choices = pc.struct_field(table["response"], ["body", "choices"])
        text = pc.struct_field(pc.list_element(choices, 0), ["message", "content"])
    else:
        content = pc.struct_field(table["result"], ["message", "content"])
        ok = pc.equal(pc.struct_field(table["result"], "type"), "succeeded")
        text = pc.if_else(ok, pc.struct_field(pc.list_element(content, 0), "text"), None)
    return table["custom_id"].combine_chunks(), text.combine_chunks()


def _scatter(df: pd.DataFrame, ids: pa.Array, texts: pa.Array) -> pd.DataFrame:
    """A copy of ``df`` with the answers in column OUTPUT, placed by custom_id (the row's
    position); rows with no result get a missing value."""
    rows = pc.cast(ids, pa.int64()).to_numpy()
    take = np.full(len(df), -1, dtype=np.int64)
    take[rows] = np.arange(len(rows))
    indices = pa.array(take, mask=take < 0)
    out = df.copy()
    out[OUTPUT] = texts.take(indices).to_pandas().array
    return out


# -- the job ----------------------------------------------------------------------------
def run_handwritten(df: pd.DataFrame, provider: str, url: str) -> dict[str, Any]:
    """Run the job for every row of ``df`` against the API at ``url`` (the emulator's
    base URL). Returns wall seconds per phase ("submit", "wait", "collect", of which
    "merge", and "total"), "emulator_busy" (the first batch's creation to the last one's
    end, as the provider reports them), "batches", and the answered copy as "frame"."""
    if provider == "openai":
        import openai

        client: Any = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=5)
    elif provider == "anthropic":
        import anthropic

        client = anthropic.Anthropic(base_url=url, api_key="bench", max_retries=5)
    else:
        raise ValueError(f"unknown provider {provider!r}")

    t0 = time.perf_counter()
    frame = pl.from_pandas(df[list(COLUMNS)])
    ids = _submit(client, provider, frame)
    del frame
    t1 = time.perf_counter()
    batches = _wait(client, provider, ids)
    t2 = time.perf_counter()
    parts = [_answers(_download(client, provider, b), provider) for b in batches]
    custom_ids = pa.concat_arrays([p[0] for p in parts])
    texts = pa.concat_arrays([p[1] for p in parts])
    t3 = time.perf_counter()
    out = _scatter(df, custom_ids, texts)
    t4 = time.perf_counter()

    if provider == "openai":
        starts = [float(b.created_at) for b in batches]
        ends = [float(b.completed_at or b.created_at) for b in batches]
    else:
        starts = [b.created_at.timestamp() for b in batches]
        ends = [(b.ended_at or b.created_at).timestamp() for b in batches]
    return {
        "submit": t1 - t0,
        "wait": t2 - t1,
        "collect": t4 - t2,
        "merge": t4 - t3,
        "total": t4 - t0,
        "emulator_busy": max(ends) - min(starts),
        "batches": len(batches),
        "frame": out,
    }


# -- command line -----------------------------------------------------------------------
def make_frame(n: int) -> pd.DataFrame:
    """The benchmark's data, as bench_e2e.py builds it."""
    import pandas as pd

    rng = np.random.default_rng(0)
    words = np.array('good bad great awful okay broke fast slow café naïve 😀 "quoted"'.split())
    reviews = [" ".join(rng.choice(words, 30)) for _ in range(1000)]
    products = np.tile(["lamp", "boots", "kettle", "pillow"], n // 4 + 1)[:n]
    return pd.DataFrame(
        {"product": products, "review": [reviews[i % 1000] + f" #{i}" for i in range(n)]}
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--provider", choices=["openai", "anthropic"], default="openai")
    args = ap.parse_args()
    df = make_frame(args.rows)
    with tempfile.TemporaryDirectory(prefix="handwritten-bench-") as home:
        emu = subprocess.Popen(
            [sys.executable, "-m", "nbbatch.emulator", "--validating-seconds", "0",
             "--processing-seconds", "0.5", "--finalizing-seconds", "0"],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "NBBATCH_HOME": home},
        )  # fmt: skip
        assert emu.stdout is not None
        try:
            url = emu.stdout.readline().split()[-1]
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            r = run_handwritten(df, args.provider, url)
            peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024 / 1e6
        finally:
            emu.terminate()
            emu.wait(10)
            emu.stdout.close()
    out = r["frame"]
    missing = int(out[OUTPUT].isna().sum())
    assert missing == 0, f"{missing} of {len(out)} rows got no answer"
    # The emulator echoes each prompt, cut to 4 * max_tokens characters: every answer must
    # be the start of its own row's echo (so none landed on the wrong row).
    echo = pl.from_pandas(out).select(
        pl.concat_str(pl.lit("[nbbatch emulator] echo: "), pl.format(TEMPLATE, *COLUMNS))
        .str.starts_with(pl.col(OUTPUT))
        .all()
    )
    assert echo.item(), "some answer is not its row's echo"
    n, total = args.rows, r["total"]
    print(f"handwritten baseline: {n:,} rows, {args.provider}, {r['batches']} batches, "
          f"{os.cpu_count()} cores\n")  # fmt: skip
    print(f"  submit (build, chunk, upload, create): {r['submit']:8.1f} s")
    print(f"  wait (poll every {POLL_SECONDS} s):              {r['wait']:8.1f} s")
    print(f"  collect (download, parse, scatter):    {r['collect']:8.1f} s")
    print(f"    of which merge (scatter into copy):  {r['merge']:8.2f} s")
    print(f"  client wall time, total:               {total:8.1f} s  ({n / total:,.0f} rows/s)")
    print(f"  client peak memory above the frame:    {peak_mb:8.0f} MB")
    print(f"  emulator busy (first create to last end): {r['emulator_busy']:5.1f} s")
    print(f"  client time not spent waiting on the emulator: {total - r['emulator_busy']:5.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
