"""Benchmark: building the request file and reading the results for N rows.

Each step runs in a fresh subprocess so its peak memory (RSS high-water mark, less the
process's memory before the step) is its own; building the request file is timed up to
the bytes in memory (what the upload sends), for both sides, and written afterwards.
Both the nbbatch path and a straightforward baseline (a dict per row and ``json.dumps``
via ``DataFrame.apply``; ``json.loads`` per line and ``Series.map``) are measured in the
same run, on the same data, and their outputs are checked equal.

    python benchmarks/bench_io.py [--rows 1000000]

Targets on a 2-core machine: each nbbatch step under 2 s and at least 5x faster than
the baseline, peak memory under 3x the size of the JSONL.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

PROMPT = (
    "Classify the sentiment of this {product} review as positive, negative or neutral:\n{review}"
)
WORDS = 'good bad great awful okay "quoted" back\\slash emoji😀 café naïve\tbroke fast'.split(" ")


def make_frame(n: int):
    import pandas as pd

    rng = random.Random(1)
    reviews = [" ".join(rng.choices(WORDS, k=30))[:200] for _ in range(1000)]
    products = ["lamp", "boots", "kettle", "pillow"]
    return pd.DataFrame(
        {
            "product": [products[i % 4] for i in range(n)],
            "review": [reviews[i % 1000] for i in range(n)],
        }
    )


def make_output(n: int, path: Path) -> None:
    """A synthetic OpenAI output file of ``n`` lines, shuffled."""
    order = list(range(n))
    random.Random(2).shuffle(order)
    with path.open("w") as f:
        for i in order:
            message = {"role": "assistant", "content": f'answer "{i}" é'}
            body = {
                "id": f"chatcmpl-{i}",
                "object": "chat.completion",
                "created": 1,
                "model": "m",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 3, "total_tokens": 53},
            }
            response = {"status_code": 200, "request_id": f"r{i}", "body": body}
            line = {
                "id": f"batch_req_{i}",
                "custom_id": str(i),
                "response": response,
                "error": None,
            }
            f.write(json.dumps(line) + "\n")


# -- the measured steps: each a setup (not measured) and a timed run ------------------------
def build_fast(n: int, out: str):
    from nbbatch import _plan as plan
    from nbbatch import _prompt as prompt
    from nbbatch.providers.base import RequestSpec
    from nbbatch.providers.openai import OpenAIProvider

    df = make_frame(n)
    spec = RequestSpec(model="gpt-4o-mini", endpoint="/v1/chat/completions", max_tokens=20)

    def run() -> bytes:
        template = prompt.parse(PROMPT)
        p = plan.make_plan(df, template)
        return OpenAIProvider(None).encode(p.custom_ids, p.prompts, spec)

    return run


def build_baseline(n: int, out: str):
    df = make_frame(n)

    def line(row):
        text = PROMPT.format(product=row["product"], review=row["review"])
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": text}],
            "max_completion_tokens": 20,
        }
        request = {"custom_id": str(row.name), "method": "POST", "url": "/v1/chat/completions"}
        return json.dumps({**request, "body": body})

    def run() -> bytes:
        return ("\n".join(df.apply(line, axis=1)) + "\n").encode()

    return run


def parse_fast(n: int, src: str):
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    from nbbatch import _results as results
    from nbbatch.providers.openai import parse_lines

    df = pd.DataFrame({"x": np.arange(n)})
    sent = pa.array([str(i) for i in range(n)])  # the ids the job sent, from its ledger
    path = Path(src)

    def run() -> None:
        table = parse_lines(path.read_bytes())
        rec = results.reconcile(sent, [table])
        # scatter into a column by custom_id (the row position here), staying in Arrow
        pos = pc.cast(rec.table.column("custom_id"), pa.int64()).to_numpy()
        order = np.empty(n, dtype=np.int64)
        order[pos] = np.arange(len(pos))
        answers = rec.table.column("output").take(pa.array(order))
        df["answer"] = pd.Series(pd.arrays.ArrowExtensionArray(answers), index=df.index)
        assert df["answer"].iloc[7] == 'answer "7" é' and rec.missing == 0

    return run


def parse_baseline(n: int, src: str):
    import numpy as np
    import pandas as pd

    df = pd.DataFrame({"x": np.arange(n)})
    path = Path(src)

    def run() -> None:
        answers = {}
        for raw in path.read_text().splitlines():
            obj = json.loads(raw)
            answers[obj["custom_id"]] = obj["response"]["body"]["choices"][0]["message"]["content"]
        df["answer"] = df.index.astype(str).map(answers)
        assert df["answer"].iloc[7] == 'answer "7" é'

    return run


def _peak_rss() -> int:
    """The process's resident-set high-water mark, in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _child(fn, args, q) -> None:
    run = fn(*args)  # setup: imports and input data, not measured
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
    before = _rss()
    t0 = time.perf_counter()
    data = run()
    seconds = time.perf_counter() - t0
    peak = max(0, _peak_rss() - before)
    if isinstance(data, bytes):  # a request file: kept to compare with the baseline's
        Path(args[1]).write_bytes(data)
    q.put((seconds, peak))


def measure(fn, *args) -> tuple[float, int]:
    """(seconds, peak bytes above the memory held before the timed part) of one step,
    in a fresh process."""
    # spawn, not fork: polars' and pyarrow's thread pools do not survive a fork well.
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn, args, q))
    p.start()
    result = q.get()
    p.join()
    if p.exitcode:
        raise SystemExit(f"{fn.__name__} failed")
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    n = ap.parse_args().rows
    tmp = Path(tempfile.mkdtemp(prefix="nbbatch-bench-"))
    fast_req, base_req, output = tmp / "fast.jsonl", tmp / "base.jsonl", tmp / "out.jsonl"
    make_output(n, output)
    print(f"nbbatch I/O benchmark, {n:,} rows, {os.cpu_count()} cores\n")
    rows = []
    for step, fast, base, arg_fast, arg_base, size_of in (
        ("build request JSONL", build_fast, build_baseline, fast_req, base_req, fast_req),
        ("parse + merge results", parse_fast, parse_baseline, output, output, output),
    ):
        fs, fm = measure(fast, n, str(arg_fast))
        bs, bm = measure(base, n, str(arg_base))
        size = size_of.stat().st_size
        rows.append((step, fs, fm, bs, bm, size))
    fast_lines = fast_req.read_text().splitlines()[:1000]
    base_lines = base_req.read_text().splitlines()[:1000]
    same = [json.loads(a) == json.loads(b) for a, b in zip(fast_lines, base_lines, strict=True)]
    print(f"{'step':24} {'nbbatch s':>10} {'rows/s':>12} {'peak MB':>8} {'baseline s':>11} "
          f"{'peak MB':>8} {'speed-up':>9} {'peak/JSONL':>10}")  # fmt: skip
    ok = all(same)
    for step, fs, fm, bs, bm, size in rows:
        ratio = bs / fs
        print(f"{step:24} {fs:10.2f} {n / fs:12,.0f} {fm / 1e6:8.0f} {bs:11.2f} {bm / 1e6:8.0f} "
              f"{ratio:8.1f}x {fm / size:10.2f}")  # fmt: skip
        ok = ok and fs < 2.0 and ratio >= 5 and fm < 3 * size
    print(f"\nJSONL sizes: request {fast_req.stat().st_size / 1e6:.0f} MB, "
          f"output {output.stat().st_size / 1e6:.0f} MB; first 1,000 request lines equal "
          f"to the baseline's as JSON: {all(same)}")  # fmt: skip
    print("targets (each step < 2 s, >= 5x baseline, peak < 3x JSONL):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
