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
row beyond the emulator within 1.2x of the in-memory run's.

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

from bench_e2e import AnonPeak, _busy, _reset_peak, _status, _write_bytes  # noqa: E402

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
    return {
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
        "disk": _write_bytes() - written,
    }


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
    """The issue's table, with the ratios its targets are set on."""

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
