"""Benchmark: one job submitted as a pandas DataFrame and as a Dask DataFrame on a
``LocalCluster``, on the embedded emulator, in the same run.

For each: how long ``submit`` takes to return, until every row is in a batch, until
every row is answered, and ``merge`` (computed, for Dask). The Dask job runs twice: the
first pays for the workers' first import of nbbatch, the second is the steady state.
Every row's answer is checked against its own input.

    python benchmarks/bench_dask.py [--rows 200000] [--partitions 8] [--workers 2]

On one machine the cluster cannot beat pandas (the same cores, plus the exchange of
files between processes): the figure to watch is the overhead, and that the driver
encodes nothing (the workers do).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ["NBBATCH_HOME"] = tempfile.mkdtemp(prefix="nbbatch-bench-dask-")

    import dask.dataframe as dd
    import distributed
    import openai
    import pandas as pd

    import nbbatch as nb
    from nbbatch import emulator

    prompt = "Classify: {text}"
    df = pd.DataFrame({"text": [f"review {i} " + "lorem ipsum " * 15 for i in range(args.rows)]})
    with (
        distributed.LocalCluster(
            n_workers=args.workers, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
        emulator.start(processing_seconds=0.05) as emu,
        openai.OpenAI(base_url=emu.openai_base_url, api_key="k") as client,
    ):
        ddf = dd.from_pandas(df, npartitions=args.partitions).persist()
        for name, data in (("pandas", df), ("dask (cold)", ddf), ("dask (warm)", ddf)):
            start = time.perf_counter()
            job = nb.submit(
                data, prompt, model="gpt-4o-mini", client=client, force=True, reuse=False,
                display=False,
            )  # fmt: skip
            returned = time.perf_counter() - start
            job.wait_sent()
            sent = time.perf_counter() - start
            job.wait(progress=False)
            done = time.perf_counter() - start
            start = time.perf_counter()
            out = job.merge(data)
            if name.startswith("dask"):
                out = out.compute()
            merged = time.perf_counter() - start
            want = [emulator.echo_text(prompt.format(text=t)) for t in out["text"]]
            assert out["response"].tolist() == want, "an answer is on the wrong row"
            print(
                f"{name:12} {args.rows:,} rows: submit returns {returned:5.1f} s, all sent "
                f"{sent:5.1f} s, all answered {done:5.1f} s, merge {merged:4.1f} s"
            )


if __name__ == "__main__":
    main()
