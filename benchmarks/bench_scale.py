"""Benchmark: a table larger than the client wants to hold, from Parquet files to Parquet.

Two runs through nbbatch's public API, each in its own process beside its own emulator
process (so every figure is that process's own):

- **files**: ``--rows`` rows (10,000,000 by default, about 5 GB of text) written as
  ``--files`` Parquet files; ``nb.submit("…/*.parquet", …)``, ``job.wait()``,
  ``job.to_parquet(out)`` (every input column plus the results);
- **in memory**: ``--baseline`` rows (1,000,000) of the same data as a polars
  DataFrame; ``nb.submit(df, …)``, ``job.wait()``, ``job.merge(df)``.

Printed per run: the time until ``submit`` returns, client wall time, the emulator's
busy time (first batch created to last ended), the client's time beyond it, per row,
the time to write or merge the results, the peak memory of the client process (VmHWM,
which counts mapped file pages too, and the sampled peak of anonymous memory), and the
bytes it wrote. Then the issue's targets: peak <= 2 GB for the files run, and time per
row beyond the emulator within 1.2x of the in-memory run's; and, each beside the
baseline measured in the same run, submit returning within 3 s, merge at 1.0 s per
million rows (by hand: a polars join by custom_id), ``to_parquet`` within 20 s for ten
million rows (by hand: the files copied with one more column) and the client's disk
writes within 1.5x the request and result bytes the job moved.

Replies are classification-sized (``max_tokens=8``), so results are small beside the
requests, as for the classify and extract jobs this path is for.

    python benchmarks/bench_scale.py [--rows 10000000] [--files 20] [--baseline 1000000]
        [--provider anthropic]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_e2e import (  # noqa: E402
    AnonPeak,
    _busy,
    _reset_peak,
    _status,
    _write_bytes,
    result_bytes,
)

PROMPT = "Classify this {product} review: {review}"
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
MAX_TOKENS = 8
REVIEW_CHARS = 480  # with the id suffix, about 500 characters of text a row


def frame(start: int, stop: int) -> Any:
    """Rows ``start`` to ``stop`` of the benchmark's data, as a polars DataFrame: a
    product and a review of about 500 characters, each row's text its own."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(0)
    words = np.array('good bad great awful okay broke fast slow café naïve 😀 "quoted"'.split())
    reviews = []
    for _ in range(1000):
        text = ""
        while len(text) < REVIEW_CHARS:
            text += " ".join(rng.choice(words, 10)) + ". "
        reviews.append(text[:REVIEW_CHARS])
    index = pl.int_range(start, stop, eager=True)
    return pl.DataFrame(
        {
            "row": index,
            "product": pl.Series(["lamp", "boots", "kettle", "pillow"]).gather(index % 4),
            "review": pl.Series(reviews).gather(index % 1000) + " #" + index.cast(pl.String),
        }
    )


def write_files(folder: Path, rows: int, files: int) -> int:
    """Write the data as ``files`` Parquet files; return the bytes of text in them."""
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-rows // files)
    text = 0
    for i in range(files):
        part = frame(i * per, min(rows, (i + 1) * per))
        text += int(part["review"].str.len_bytes().sum() + part["product"].str.len_bytes().sum())
        part.write_parquet(folder / f"part-{i:03d}.parquet")
    return text


def child(mode: str, data: str, provider: str, url: str, out: str) -> dict[str, Any]:
    """One run, in this process: its figures."""
    import anthropic
    import openai

    import nbbatch as nb

    source: Any = data
    if mode == "memory":
        source = frame(0, int(data))
    base = _reset_peak()
    anon = AnonPeak()
    written = _write_bytes()
    if provider == "openai":
        client: Any = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=5)
    else:
        client = anthropic.Anthropic(base_url=url, api_key="bench", max_retries=5)
    t0 = time.perf_counter()
    job = nb.submit(source, PROMPT, model=MODELS[provider], client=client,
                    max_tokens=MAX_TOKENS, display=False)  # fmt: skip
    submit_returns = time.perf_counter() - t0
    job.polling = nb.PollPolicy(0.5, 2.0)
    job.wait(progress=False)
    t1 = time.perf_counter()
    if mode == "memory":
        merged = job.merge(source)
        answered = int((merged["response_status"] == "succeeded").sum())
    else:
        import pyarrow.parquet as pq

        job.to_parquet(out)
        answered = int(pq.ParquetFile(out).metadata.num_rows)
    write = time.perf_counter() - t1
    total = time.perf_counter() - t0
    os.sync()
    disk = _write_bytes() - written
    # What the job moved: request lines uploaded (as its sender counted them) and the
    # result files the provider returned (read again from it: nbbatch keeps only what
    # it parsed).
    sending = getattr(job, "_sending", None)
    request_bytes = int(getattr(sending, "bytes_sent", 0) or 0)
    returned = result_bytes(job)
    # The same write by hand, in this process after the job: the floor nbbatch's is
    # measured against (read the rows, add a column, write Parquet; no check).
    t2 = time.perf_counter()
    if mode == "memory":
        by_hand = _merge_by_hand(source, merged["response"])
    else:
        by_hand = _copy_by_hand(data, out + ".hand")
    by_hand = time.perf_counter() - t2
    return {
        "request_bytes": request_bytes,
        "result_bytes": returned,
        "write_by_hand": by_hand,
        "rows": job.counts["total"],
        "succeeded": job.counts["succeeded"],
        "answered": answered,
        "batches": len(job.batch_ids),
        "submit_returns": submit_returns,
        "write": write,
        "total": total,
        "emulator_busy": _busy(job, client, provider),
        "peak": _status("VmHWM"),
        "peak_above_start": _status("VmHWM") - base,
        "anon_peak": anon.stop() + anon.base,
        "disk": disk,
    }


def _merge_by_hand(df: Any, answers: Any) -> float:
    """A polars frame given a column of answers scattered by custom_id, as the
    hand-written script does it (see handwritten.py): the bar for ``job.merge``."""
    import numpy as np
    import polars as pl

    ids = pl.Series(np.arange(len(df)).astype(str))
    order = np.argsort(np.random.default_rng(0).permutation(len(df)))  # results arrive shuffled
    table = pl.DataFrame(
        {"custom_id": ids.gather(order), "answer": pl.Series(answers).gather(order)}
    )
    lookup = pl.DataFrame({"custom_id": ids}).join(table, on="custom_id", how="left")
    return float(len(df.with_columns(lookup["answer"])))


def _copy_by_hand(glob: str, out: str) -> float:
    """The files read batch by batch and written back with one more column: the bar for
    ``job.to_parquet`` (no check, no lookup of results)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nbbatch import _frames as frames

    files = frames.parquet_files(glob)
    schema = pq.ParquetFile(files[0]).schema_arrow.append(pa.field("response", pa.string()))
    rows = 0
    with pq.ParquetWriter(out, schema) as writer:
        for name in files:
            for batch in pq.ParquetFile(name).iter_batches(batch_size=65_536):
                column = pa.array(["positive"] * batch.num_rows, pa.string())
                writer.write_table(pa.Table.from_batches([batch]).append_column("response", column))
                rows += batch.num_rows
    os.unlink(out)
    return float(rows)


def run(mode: str, data: str, provider: str, work: Path) -> dict[str, Any]:
    """One run in a fresh process beside a fresh emulator process."""
    emu = subprocess.Popen(
        [sys.executable, "-m", "nbbatch.emulator", "--validating-seconds", "0",
         "--processing-seconds", "0.5", "--finalizing-seconds", "0"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "TMPDIR": str(work)},
    )  # fmt: skip
    assert emu.stdout is not None
    url = emu.stdout.readline().split()[-1]
    home = work / f"home-{mode}"
    out = work / f"out-{mode}.parquet"
    try:
        env = {**os.environ, "NBBATCH_HOME": str(home)}
        proc = subprocess.run(
            [sys.executable, __file__, "--child", mode, data, provider, url, str(out)],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        if proc.returncode:
            raise SystemExit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    finally:
        emu.terminate()
        emu.wait(30)
        emu.stdout.close()
        shutil.rmtree(home, ignore_errors=True)
        out.unlink(missing_ok=True)


def report(files: dict[str, Any], memory: dict[str, Any], text_bytes: int, n_files: int) -> None:
    """The issue's table, with the ratios its targets are set on, then each target
    beside its figure and the baseline measured in the same run."""

    def per_row(f: dict[str, Any]) -> float:
        return (f["total"] - f["emulator_busy"]) / f["rows"] * 1e6

    gb = text_bytes / 1e9
    print(f"\n{files['rows']:,} rows in {n_files} Parquet files ({gb:.1f} GB of text) beside "
          f"{memory['rows']:,} rows in a polars DataFrame; {os.cpu_count()} cores")  # fmt: skip
    rows = [
        ("batches", files["batches"], memory["batches"], ""),
        ("submit returns control (s)", files["submit_returns"], memory["submit_returns"], ""),
        ("client wall time (s)", files["total"], memory["total"], ""),
        ("emulator busy (s)", files["emulator_busy"], memory["emulator_busy"], ""),
        ("client time beyond the emulator (s)", files["total"] - files["emulator_busy"],
         memory["total"] - memory["emulator_busy"], ""),
        ("  per million rows (s)", per_row(files), per_row(memory), "files <= 1.2x memory"),
        ("to_parquet / merge (s)", files["write"], memory["write"], ""),
        ("client peak memory, VmHWM (MB)", files["peak"] / 1e6, memory["peak"] / 1e6,
         "files <= 2000"),
        ("  of which anonymous (MB)", files["anon_peak"] / 1e6, memory["anon_peak"] / 1e6, ""),
        ("disk written, client (GB)", files["disk"] / 1e9, memory["disk"] / 1e9, ""),
    ]  # fmt: skip
    print(f"  {'':40s} {'files':>10s} {'in memory':>10s}  target")
    for name, a, b, target in rows:
        print(f"  {name:40s} {a:10.2f} {b:10.2f}  {target}")
    print(f"  ratio, time per row beyond the emulator, files / in memory: "
          f"{per_row(files) / per_row(memory):.2f}")  # fmt: skip
    print(f"  every row answered: files {files['succeeded'] == files['rows']}, "
          f"in memory {memory['succeeded'] == memory['rows']}")  # fmt: skip

    # Targets scale with the row count where they are set for ten million rows.
    scale = files["rows"] / 10_000_000
    moved = files["request_bytes"] + files["result_bytes"]
    checks = [
        ("submit returns, files (s)", files["submit_returns"], 3.0,
         f"in memory {memory['submit_returns']:.2f}"),
        (f"merge, {memory['rows']:,} rows in memory (s)", memory["write"],
         1.0 * memory["rows"] / 1_000_000, f"by hand {memory['write_by_hand']:.2f}"),
        ("to_parquet, files (s)", files["write"], 20.0 * scale,
         f"by hand {files['write_by_hand']:.2f}"),
        ("disk written, files (GB)", files["disk"] / 1e9, 1.5 * moved / 1e9,
         f"request + result {moved / 1e9:.2f}"),
        ("client peak memory, files (MB)", files["peak"] / 1e6, 2000.0,
         f"in memory {memory['peak'] / 1e6:.0f}"),
    ]  # fmt: skip
    print(f"\n  {'target (scaled to this size)':40s} {'measured':>10s} {'target':>10s}  baseline")
    for name, value, target, baseline in checks:
        mark = "ok" if value <= target else "MISSED"
        print(f"  {name:40s} {value:10.2f} {target:10.2f}  {baseline}  {mark}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(*sys.argv[2:7])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--baseline", type=int, default=1_000_000)
    ap.add_argument("--provider", choices=["openai", "anthropic"], default="anthropic")
    ap.add_argument("--work", help="a folder with room for the files (default: a temporary one)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nbbatch-scale-", dir=args.work))
    try:
        t0 = time.perf_counter()
        text = write_files(work / "data", args.rows, args.files)
        print(f"wrote {args.rows:,} rows in {args.files} files in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
        memory = run("memory", str(args.baseline), args.provider, work)
        print(f"in memory: {memory}", flush=True)
        files = run("files", str(work / "data" / "*.parquet"), args.provider, work)
        print(f"files: {files}", flush=True)
        report(files, memory, text, args.files)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
