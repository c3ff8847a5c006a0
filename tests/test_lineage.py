"""Every result row says where its answer comes from: model, prompt version, batch and
attempt, in ``job.results()``, ``merge(lineage=True)``, ``to_parquet`` and ``collect``,
the same values on every path. Through the OpenAI SDK and the emulator."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

import nbbatch as nb
from nbbatch import emulator

from ._helpers import run_cli

LINEAGE = ["model", "prompt_hash", "batch_id", "attempt"]


def values(column) -> list:
    """A column's values, None for missing ones (pandas gives NA, Parquet None)."""
    return [None if pd.isna(v) else v for v in column]


def _job(oai, df, prompt="Say {text}", **kwargs):
    job = nb.submit(df, prompt, model="gpt-4o-mini", client=oai, display=False, **kwargs)
    job.wait(timeout=120, progress=False)
    return job


def test_lineage_is_the_same_in_results_merge_to_parquet_and_collect(oai, tmp_path):
    df = pd.DataFrame({"text": ["a", "b", None, "a"]})  # a missing value: skipped
    job = _job(oai, df)
    results = job.results()
    assert {"batch_id", "attempt", "model", "prompt_hash", "origin"} <= set(results.columns)

    plain = job.merge()
    assert "response_model" not in plain.columns  # merge() stays as it was by default
    out = job.merge(lineage=True)
    # The lineage columns (and the timing one) are those merge(lineage=True) adds.
    names = [c for c in job.output_columns(lineage=True) if c not in job.output_columns()]
    assert {f"response_{n}" for n in LINEAGE} <= set(names)
    assert list(out.columns) == ["text", *job.output_columns(lineage=True)]
    assert values(out["response_model"]) == ["gpt-4o-mini", "gpt-4o-mini", None, "gpt-4o-mini"]
    assert values(out["response_batch_id"]) == [job.batch_ids[0]] * 2 + [None, job.batch_ids[0]]
    assert out["response_attempt"].tolist()[:2] == [1, 1]
    assert out["response_attempt"].isna().tolist() == [False, False, True, False]
    hashes = out["response_prompt_hash"].dropna().unique()
    assert len(hashes) == 1 and len(hashes[0]) == 12

    written = pq.read_table(job.to_parquet(tmp_path / "out.parquet")).to_pandas()
    for name in names:
        assert values(written[name]) == values(out[name]), name
    bare = pq.read_table(job.to_parquet(tmp_path / "bare.parquet", lineage=False))
    assert "response_model" not in bare.column_names

    target = tmp_path / "collected.parquet"
    run = run_cli("collect", job.id, "--out", str(target))
    assert run.returncode == 0, run.stderr
    collected = pd.read_parquet(target)
    for name in names:
        assert values(collected[name]) == values(out[name]), name


def test_the_prompt_hash_tells_prompt_versions_apart_but_not_models(oai):
    df = pd.DataFrame({"text": ["x", "y"]})
    first = _job(oai, df).merge(lineage=True)["response_prompt_hash"]
    reworded = _job(oai, df, prompt="Repeat {text}").merge(lineage=True)["response_prompt_hash"]
    system = _job(oai, df, system="Be brief.").merge(lineage=True)["response_prompt_hash"]
    other = nb.submit(df, "Say {text}", model="gpt-4o", client=oai, display=False)
    other.wait(timeout=120, progress=False)
    same = other.merge(lineage=True)["response_prompt_hash"]
    assert first.nunique() == 1
    assert len({first[0], reworded[0], system[0]}) == 3
    assert same[0] == first[0]  # another model, the same prompt version


def test_retries_and_escalation_stages_show_in_attempt_model_and_batch(tmp_path):
    seen: dict[str, int] = {}

    def flaky(request: emulator.Request) -> str:
        seen[request.prompt] = seen.get(request.prompt, 0) + 1
        if request.prompt.endswith("2") and seen[request.prompt] == 1:
            raise ValueError("a transient fault")
        return request.prompt

    with emulator.start(processing_seconds=0.02, responder=flaky) as server:
        from .conftest import client_for

        client = client_for("openai", server)
        df = pd.DataFrame({"text": [f"row {i}" for i in range(4)]})
        job = nb.submit(df, "{text}", model="gpt-4o-mini", client=client, display=False)
        job.wait(timeout=120, progress=False)
        if job.counts.get("failed"):  # a fault the provider reports as failed: resend
            job.resubmit_failed()
            job.wait(timeout=120, progress=False)
        job.escalate("gpt-4o", where=[False, True, False, False])
        job.wait(timeout=120, progress=False)
        out = job.merge(lineage=True)
    assert out["response_model"].tolist() == ["gpt-4o-mini", "gpt-4o", "gpt-4o-mini", "gpt-4o-mini"]
    attempts = out["response_attempt"].tolist()
    assert attempts[2] > attempts[0] == 1  # row 2 was sent again
    assert attempts[1] > attempts[2] or attempts[1] > 1  # the escalation is a later attempt
    batches = out["response_batch_id"].tolist()
    assert batches[1] != batches[0] and batches[2] != batches[0]
    assert out["response_prompt_hash"].nunique() == 1  # same prompt on both models


@pytest.mark.parametrize("existing", ["response_batch_id"])
def test_a_frame_holding_a_lineage_column_is_refused_before_merging(oai, existing):
    df = pd.DataFrame({"text": ["a"]})
    job = _job(oai, df)
    with pytest.raises(nb.MergeError, match=existing):
        job.merge(df.assign(**{existing: 1}), lineage=True)
    assert existing in job.merge(df.assign(**{existing: 1})).columns  # no clash without


def test_an_answer_from_the_real_time_fallback_names_no_batch(oai, tmp_path):
    df = pd.DataFrame({"text": ["a", f"{emulator.TRANSIENT_MARKER} b"]})
    job = _job(oai, df, retries=0, fallback="realtime")
    results = job.results()
    assert results["origin"].tolist() == ["batch", "realtime"]
    out = job.merge(lineage=True)
    assert out["response_status"].tolist() == ["succeeded", "succeeded"]
    assert values(out["response_batch_id"]) == [job.batch_ids[0], None]
    assert values(out["response_model"]) == ["gpt-4o-mini", "gpt-4o-mini"]
    written = pq.read_table(job.to_parquet(tmp_path / "out.parquet")).to_pandas()
    assert values(written["response_batch_id"]) == [job.batch_ids[0], None]
