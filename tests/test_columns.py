"""The result columns are declared once (nbbatch.columns) and the row states named once
(nbbatch.states): every path that writes result columns gives the same ones, with the
same values. Through the OpenAI SDK and the emulator."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

import nbbatch as nb
from nbbatch import columns, emulator, states
from nbbatch.columns import Role

from ._helpers import run_cli

LATENCY = "response_latency_s"


def values(column) -> list:
    """A column's values, None for missing ones (pandas gives NA, Parquet None)."""
    return [None if pd.isna(v) else v for v in column]


def test_latency_counts_from_submit_to_each_rows_result_on_every_path(oai, tmp_path):
    df = pd.DataFrame({"text": ["a", f"{emulator.TRANSIENT_MARKER} b", None]})  # None: skipped
    before = time.time()
    job = nb.submit(
        df, "Say {text}", model="gpt-4o-mini", client=oai, display=False, retries=0,
        fallback="realtime",
    )  # fmt: skip
    job.wait(timeout=120, progress=False)
    after = time.time()

    assert LATENCY not in job.merge().columns  # a lineage column: merge() is unchanged
    out = job.merge(lineage=True)
    assert LATENCY in job.output_columns(lineage=True)
    assert str(out[LATENCY].dtype) == "Float64"
    batch, realtime, skipped = values(out[LATENCY])
    assert skipped is None  # never sent: no result, no latency
    assert 0 <= batch <= after - before
    # The real-time fallback answered after the batch was collected: later, so longer.
    assert batch <= realtime <= after - before

    written = pq.read_table(job.to_parquet(tmp_path / "out.parquet")).to_pandas()
    assert values(written[LATENCY]) == values(out[LATENCY])
    target = tmp_path / "collected.parquet"
    run = run_cli("collect", job.id, "--out", str(target))
    assert run.returncode == 0, run.stderr
    assert values(pd.read_parquet(target)[LATENCY]) == values(out[LATENCY])


def test_every_declared_column_is_added_in_order_with_its_role(oai):
    schema = {
        "type": "object",
        "properties": {"sentiment": {"type": "string"}, "stars": {"type": "integer"}},
        "required": ["sentiment", "stars"],
    }
    df = pd.DataFrame({"text": ["good", "bad"]})
    job = nb.submit(df, "Review: {text}", model="gpt-4o-mini", client=oai, display=False,
                    response_format=schema, output="review", logprobs=True)  # fmt: skip
    job.wait(timeout=120, progress=False)
    out = job.merge(lineage=True)
    added = job.output_columns(lineage=True)
    assert list(out.columns) == ["text", *added]
    roles = columns.roles(job.output, job.spec.response_format, lineage=True, scored=True)
    assert list(roles) == added
    # Every declared column shows for a structured job with lineage that asked for
    # log-probabilities, fields in place of the answer's own column.
    assert {roles[n] for n in added} == {c.role for c in columns.COLUMNS}
    assert [n for n in added if roles[n] is Role.OUTPUT] == ["sentiment", "stars"]
    assert columns.name_of(Role.STATUS, job.output) == "review_status"
    assert columns.name_of(Role.ERROR, None) == "error"  # job.results()'s name
    # Each column with a results() name holds the same values there.
    results = job.results().reset_index()
    for column in columns.COLUMNS:
        if column.results and column.role is not Role.OUTPUT:
            assert values(out[column.name(job.output)]) == values(results[column.results])


def test_the_row_states_are_spelled_only_in_nbbatch_states():
    """A set of row states (failed, expired...) is written through nbbatch.states, not
    as its words again: no tuple, list or set literal of two or more row-state words.
    A job's own statuses (running, completed, cancelled, failed) share two of the words:
    a literal of those two alone is a job's, not a row's. Left alone: the emulator (it
    imports nothing of the client side), the providers (the wire's own result words)
    and the ledger (its migrations are frozen)."""
    package = Path(nb.__file__).parent
    shared = {states.CANCELLED, states.FAILED}
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        if rel.parts[0] in ("emulator", "providers") or rel.name in ("states.py", "_ledger.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.Tuple, ast.List, ast.Set)) or len(node.elts) < 2:
                continue
            words = [e.value for e in node.elts if isinstance(e, ast.Constant)]
            if len(words) == len(node.elts) and set(words) <= set(states.STATES):
                if not set(words) <= shared:
                    found.append(f"{rel}:{node.lineno}: {words}")
    assert not found, "row states spelled again:\n" + "\n".join(found)
