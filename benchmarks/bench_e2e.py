"""Benchmark: a whole job end to end, nbbatch beside the script a careful user writes.

For each size and provider, two runs on the same data, each in its own process with its
own emulator process (so every figure is that process's own):

- **nbbatch**, through its public API: ``nb.submit(...)``, ``job.wait()``,
  ``job.merge(df)``;
- **by hand** (``benchmarks/handwritten.py``): polars request lines, the official SDK,
  pyarrow's JSON reader, a scatter by custom_id.

Printed per run: the time until ``submit`` returns control, client wall time, the
emulator's own busy time (first batch created to last ended, as it reports them), the
client's time beyond it, merge time, peak memory above the DataFrame (VmHWM, reset
after the frame is built, so it counts the pages of mapped files too; and the sampled
peak of anonymous memory alone), and bytes written to disk by the client and the
emulator (``/proc/<pid>/io`` write_bytes), beside request and result bytes. Then the
ratios the issue sets targets for.

The emulator shares the machine's cores with the client: nbbatch collects finished
batches while later ones upload, which a real provider does not feel but the emulator
does (its busy time grows), so the client's wall time is printed as a ratio too.

    python benchmarks/bench_e2e.py [--rows 1000000 100000] [--provider openai anthropic]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _write_bytes(pid: str = "self") -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> int:
    """Reset the peak RSS mark (Linux) and return the RSS now, in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class AnonPeak:
    """Samples the process's anonymous memory (RssAnon: not the pages of files it maps,
    which the system can drop at any time) every 10 ms, keeping the highest."""

    def __init__(self) -> None:
        import threading

        self.base = _status("RssAnon")
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _status("RssAnon"))

    def stop(self) -> int:
        """Stop sampling; the peak above the start, in bytes."""
        self._stop.set()
        self._thread.join()
        return self.peak - self.base


def child(tool: str, n: int, provider: str, url: str) -> dict[str, Any]:
    """One run, in this process: returns its figures."""
    sys.path.insert(0, str(HERE))
    import handwritten

    df = handwritten.make_frame(n)
    gc.collect()
    base = _reset_peak()
    anon = AnonPeak()
    written = _write_bytes()
    if tool == "handwritten":
        t0 = time.perf_counter()
        fig = handwritten.run_handwritten(df, provider, url)
        total = time.perf_counter() - t0
        out = fig["frame"]
        ok = int(out[handwritten.OUTPUT].notna().sum())
        figures = {
            "submit_returns": fig["submit"],
            "merge": fig["merge"],
            "emulator_busy": fig["emulator_busy"],
            "batches": fig["batches"],
        }
    else:
        figures, total, ok = _run_nbbatch(df, provider, url, handwritten)
    os.sync()
    figures.update(
        total=total,
        peak=_status("VmHWM") - base,
        anon_peak=anon.stop(),
        disk=_write_bytes() - written,
        answered=ok,
    )
    return figures


def _run_nbbatch(df: Any, provider: str, url: str, handwritten: Any) -> tuple[dict, float, int]:
    import anthropic
    import openai

    import nbbatch as nb

    if provider == "openai":
        client: Any = openai.OpenAI(base_url=url + "/v1", api_key="bench", max_retries=5)
    else:
        client = anthropic.Anthropic(base_url=url, api_key="bench", max_retries=5)
    t0 = time.perf_counter()
    job = nb.submit(df, "Classify this {product} review: {review}",
                    model=handwritten.MODELS[provider], client=client,
                    max_tokens=handwritten.MAX_TOKENS, display=False)  # fmt: skip
    submit_returns = time.perf_counter() - t0
    job.polling = nb.PollPolicy(0.5, 2.0)
    job.wait(progress=False)
    t1 = time.perf_counter()
    out = job.merge(df)
    merge = time.perf_counter() - t1
    total = time.perf_counter() - t0
    ok = int((out["response_status"] == "succeeded").sum())
    figures = {
        "submit_returns": submit_returns,
        "merge": merge,
        "emulator_busy": _busy(job, client, provider),
        "batches": len(job.batch_ids),
        "result_bytes": result_bytes(job),
    }
    return figures, total, ok


def result_bytes(job: Any) -> int:
    """The bytes of the result files the provider returned for ``job``'s batches, read
    again from the provider after the timings (nbbatch keeps only what it parsed)."""
    provider = job._ctx.provider
    return sum(
        len(raw)
        for batch_id in job.batch_ids
        for raw in provider.fetch_results(provider.retrieve(batch_id))
    )


def _busy(job: Any, client: Any, provider: str) -> float:
    """Seconds from the first batch's creation to the last one's end, as reported."""
    starts, ends = [], []
    for b in job.batch_ids:
        if provider == "openai":
            batch = client.batches.retrieve(b)
            starts.append(batch.created_at)
            ends.append(batch.completed_at or batch.created_at)
        else:
            batch = client.messages.batches.retrieve(b)
            starts.append(batch.created_at.timestamp())
            ends.append((batch.ended_at or batch.created_at).timestamp())
    return max(ends) - min(starts)


def run_one(tool: str, n: int, provider: str) -> dict[str, Any]:
    """One run in a fresh process beside a fresh emulator process."""
    emu = subprocess.Popen(
        [sys.executable, "-m", "nbbatch.emulator", "--validating-seconds", "0",
         "--processing-seconds", "0.5", "--finalizing-seconds", "0"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert emu.stdout is not None
    url = emu.stdout.readline().split()[-1]
    emu_written = _write_bytes(str(emu.pid))
    try:
        env = {**os.environ, "NBBATCH_HOME": tempfile.mkdtemp(prefix="nbbatch-bench-")}
        proc = subprocess.run(
            [sys.executable, __file__, "--child", tool, str(n), provider, url],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        if proc.returncode:
            raise SystemExit(f"{tool} run failed:\n{proc.stderr[-3000:]}")
        figures = json.loads(proc.stdout.strip().splitlines()[-1])
        figures["emulator_disk"] = _write_bytes(str(emu.pid)) - emu_written
        return figures
    finally:
        emu.terminate()
        emu.wait(10)
        emu.stdout.close()


def request_bytes(n: int, provider: str) -> int:
    """Bytes of the job's request lines, as the hand-written script builds them."""
    sys.path.insert(0, str(HERE))
    import handwritten
    import polars as pl

    frame = pl.from_pandas(handwritten.make_frame(n))
    return sum(len(chunk) for chunk in handwritten._chunks(frame, provider))


def report(n: int, provider: str, nb_: dict[str, Any], hand: dict[str, Any]) -> None:
    """Print one size and provider: the issue's table with the ratios."""

    def beyond(f: dict[str, Any]) -> float:
        return f["total"] - f["emulator_busy"]

    req, res = request_bytes(n, provider), nb_["result_bytes"]
    print(f"\n{n:,} rows, {provider}: {nb_['batches']} batches (by hand: {hand['batches']}), "
          f"{os.cpu_count()} cores")  # fmt: skip
    rows = [
        ("submit returns control (s)", nb_["submit_returns"], hand["submit_returns"], "<= 3 s"),
        ("client wall time (s)", nb_["total"], hand["total"], ""),
        ("emulator busy (s)", nb_["emulator_busy"], hand["emulator_busy"], ""),
        ("client time beyond the emulator (s)", beyond(nb_), beyond(hand), "<= 1.3x by hand"),
        ("merge into the DataFrame (s)", nb_["merge"], hand["merge"], "<= 1.0 s at 1M rows"),
        ("peak memory above the frame (MB)", nb_["peak"] / 1e6, hand["peak"] / 1e6, "<= 1000"),
        ("  of which not mapped files (MB)", nb_["anon_peak"] / 1e6, hand["anon_peak"] / 1e6, ""),
        ("disk written, client (MB)", nb_["disk"] / 1e6, hand["disk"] / 1e6, ""),
        ("disk written, emulator (MB)", nb_["emulator_disk"] / 1e6, hand["emulator_disk"] / 1e6,
         ""),
    ]  # fmt: skip
    print(f"  {'':40s} {'nbbatch':>10s} {'by hand':>10s}  target")
    for name, a, b, target in rows:
        print(f"  {name:40s} {a:10.2f} {b:10.2f}  {target}")
    ratio = beyond(nb_) / max(beyond(hand), 1e-9)
    print(f"  ratio, client wall time, nbbatch / by hand: {nb_['total'] / hand['total']:.2f}")
    disk = (nb_["disk"] + nb_["emulator_disk"]) / max(req + res, 1)
    print(f"  ratio, client time beyond the emulator, nbbatch / by hand: {ratio:.2f}")
    print(f"  request bytes {req / 1e6:,.0f} MB, result bytes {res / 1e6:,.0f} MB; "
          f"disk written / (request + result): {disk:.2f}")  # fmt: skip
    client = nb_["disk"] / max(req + res, 1)
    print(f"  client disk written / (request + result): {client:.2f} (target <= 1.5; "
          f"by hand {hand['disk'] / max(req + res, 1):.2f})")  # fmt: skip
    print(f"  every row answered: nbbatch {nb_['answered'] == n}, by hand {hand['answered'] == n}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        tool, n, provider, url = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
        print(json.dumps(child(tool, n, provider, url)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 100_000])
    ap.add_argument("--provider", nargs="+", default=["openai", "anthropic"],
                    choices=["openai", "anthropic"])  # fmt: skip
    args = ap.parse_args()
    for n in args.rows:
        for provider in args.provider:
            nb_ = run_one("nbbatch", n, provider)
            hand = run_one("handwritten", n, provider)
            report(n, provider, nb_, hand)
    return 0


if __name__ == "__main__":
    sys.exit(main())
