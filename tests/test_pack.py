"""Row packing, ``nb.submit(..., pack=N)``: up to N rows in one request, each answer
mapped back to its own row, end to end through the official SDKs and the emulator.

The emulator answers each item of a pack as it answers that row sent alone, so a packed
job must merge to exactly what an unpacked one gives; its markers make it leave an item
out of a pack's answer or answer it with the wrong type, the stand-ins for a model that
does so, which must send just those rows again, on their own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import anthropic
import numpy as np
import openai
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbbatch as nb
from nbbatch import emulator
from nbbatch.datasets import SENTIMENT_SCHEMA as SCHEMA

from .conftest import batch_ids_at, client_for, model_for
from .test_durable import _Url, emu_process  # noqa: F401

TEMPLATE = "Summarise: {text}\nBe brief."
DROP, WRONG = "[[emulator:pack-drop]]", "[[emulator:pack-wrong]]"
LABELS = {"positive": ["love", "great"], "negative": ["broke", "refund"]}


def rows(n: int, duplicates: int = 0) -> pd.DataFrame:
    """``n`` distinct texts, then ``duplicates`` repeats of the second one."""
    texts = [f"text of row {i}" for i in range(n)] + ["text of row 1"] * duplicates
    return pd.DataFrame({"text": texts})


def expected(df: pd.DataFrame, template: str = TEMPLATE) -> list[str]:
    """The echo each row gets when sent alone: its own rendered prompt."""
    return [emulator.echo_text(template.format(text=t)) for t in df["text"]]


def requests_in(client, batch_id: str) -> int:
    """How many requests the provider holds in a batch."""
    if isinstance(client, anthropic.Anthropic):
        c = client.messages.batches.retrieve(batch_id).request_counts
        return c.processing + c.succeeded + c.errored + c.canceled + c.expired
    assert isinstance(client, openai.OpenAI)
    total = client.batches.retrieve(batch_id).request_counts
    assert total is not None
    return total.total


def submit(df, client, **kwargs) -> nb.BatchJob:
    kwargs.setdefault("model", model_for(client))
    return nb.submit(df, kwargs.pop("template", TEMPLATE), client=client, display=False,
                     progress=False, wait=True, **kwargs)  # fmt: skip


# -- every row its own answer ----------------------------------------------------------------
@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_every_row_gets_its_own_answer_out_of_its_pack(emu, provider):
    client = client_for(provider, emu)
    df = rows(45, duplicates=5)
    job = submit(df, client, pack=20)
    out = job.merge(df)
    assert out["response"].tolist() == expected(df)
    assert (out["response_status"] == "succeeded").all()
    assert job.counts["deduplicated"] == 5 and job.counts["succeeded"] == 50
    # 45 distinct rows in packs of 20: one batch of three requests, as the panel says.
    assert len(job.batch_ids) == 1
    assert [b.n_requests for b in job.snapshot().batches] == [3]
    if provider != "gemini":
        assert requests_in(client, job.batch_ids[0]) == 3


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_structured_answers_come_from_each_rows_own_text(provider):
    texts = [f"I love it, {i}" if i % 3 == 0 else f"it broke, {i}" if i % 3 == 1 else
             f"a box, {i}" for i in range(25)]  # fmt: skip
    df = pd.DataFrame({"text": texts})
    responder = emulator.keyword_responder(LABELS, default="neutral")
    with emulator.start(processing_seconds=0.05, responder=responder) as server:
        client = client_for(provider, server)
        packed = submit(df, client, template="{text}", response_format=SCHEMA, pack=8,
                        system="Label the review.", output="review")  # fmt: skip
        alone = submit(df, client, template="{text}", response_format=SCHEMA,
                       system="Label the review.", output="review")  # fmt: skip
        assert requests_in(client, packed.batch_ids[0]) == 4
    out = packed.merge(df)
    assert out["label"].tolist() == [["positive", "negative", "neutral"][i % 3] for i in range(25)]
    # Exactly what each row gets sent alone, field by field.
    pd.testing.assert_frame_equal(out, alone.merge(df))


# -- rows a pack's answer misses ------------------------------------------------------------
def test_rows_left_out_or_answered_wrongly_are_sent_again_on_their_own(emu):
    client = client_for("openai", emu)
    df = rows(30)
    df.loc[3, "text"] += f" {DROP}"
    df.loc[17, "text"] += f" {WRONG}"
    job = submit(df, client, pack=20)
    out = job.merge(df)
    assert out["response"].tolist() == expected(df)
    results = job.results()
    assert set(results.index[results["attempt"] == 2]) == {"3", "17"}
    # Two batches: the packs, then just the two rows, unpacked.
    first, second = job.batch_ids
    assert requests_in(client, first) == 2 and requests_in(client, second) == 2

    # Without retries they end failed, saying why; every other row keeps its answer.
    job = submit(df, client, pack=20, retries=0, reuse=False, force=True)
    out = job.merge(df)
    failed = out[out["response_status"] == "failed"]
    assert list(failed.index) == [3, 17]
    assert failed["response_error"].str.startswith("missing_from_pack").all()
    assert "no entry for this row" in failed.loc[3, "response_error"]
    assert "not text" in failed.loc[17, "response_error"]
    ok = out.drop(index=[3, 17])
    assert ok["response"].tolist() == expected(df.drop(index=[3, 17]))


def test_a_responder_failing_on_one_row_fails_that_row_only():
    def responder(request):
        if "row 4" in request.prompt:
            raise ValueError("no answer for row 4")
        return request.prompt.upper()

    df = rows(10)
    with emulator.start(processing_seconds=0.05, responder=responder) as server:
        job = submit(df, client_for("anthropic", server), pack=5)
    out = job.merge(df)
    assert out.loc[4, "response_status"] == "failed"
    assert "no answer for row 4" in out.loc[4, "response_error"]
    ok = out.drop(index=4)
    assert (ok["response"] == [TEMPLATE.format(text=t).upper() for t in ok["text"]]).all()


def test_a_pack_that_fails_as_a_whole_is_retried_row_by_row():
    df = rows(12)  # packs of 5, 5 and 2 rows; the emulator fails two of the three
    with emulator.start(processing_seconds=0.05, error_rate=0.5) as server:
        client = client_for("openai", server)
        job = submit(df, client, pack=5)
        first, second, *_ = job.batch_ids
        retried = int((job.results()["attempt"] >= 2).sum())
        assert requests_in(client, first) == 3
        assert retried in (7, 10) and requests_in(client, second) == retried
    assert job.merge(df)["response"].tolist() == expected(df)


def test_a_pack_answer_that_breaks_the_schema_sends_its_rows_again():
    df = pd.DataFrame({"text": [f"I love it, {i}" for i in range(8)]})
    # Every reply breaks its schema on a request's first try (the pack, then each row).
    with emulator.start(processing_seconds=0.05, invalid_output_rate=1.0) as server:
        job = submit(df, client_for("openai", server), template="{text}",
                     response_format=SCHEMA, pack=4)  # fmt: skip
    assert job.counts["succeeded"] == 8
    assert (job.results()["attempt"] == 3).all()
    assert len(job.batch_ids) == 3


def test_answers_with_wrong_ids_or_twice_the_same_id_fail_just_those_rows():
    # What the emulator never produces: a reply naming rows wrongly. In process.
    from nbbatch import _pack as pack
    from nbbatch.providers.base import ROW_RESULT_SCHEMA

    reply = {"answers": [
        {"id": "1", "answer": "one"}, {"id": 2, "answer": "two"}, {"id": "3", "answer": "x"},
        {"id": "3", "answer": "y"}, {"id": "9", "answer": "nine"}, {"id": "4", "answer": 4},
        {"answer": "no id"}, "not an entry",
    ]}  # fmt: skip
    line = {name: [None] for name in ROW_RESULT_SCHEMA.names}
    line.update(custom_id=["pack-0"], status=["succeeded"], output=[json.dumps(reply)],
                input_tokens=[10], output_tokens=[7], cached_tokens=[0])  # fmt: skip
    packs = pa.table(line, schema=ROW_RESULT_SCHEMA)
    ids = pa.array(["a", "b", "c", "d", "e"])
    table, wrong = pack.unpack(packs, np.arange(5), ids, 5, structured=False)
    rows = table.to_pylist()
    assert [r["status"] for r in rows] == ["succeeded", "succeeded"] + ["failed"] * 3
    assert [r["output"] for r in rows[:2]] == ["one", "two"]
    assert wrong == 3 and all(r["retryable"] for r in rows[2:])
    assert "two entries" in rows[2]["error_message"]
    assert "not text" in rows[3]["error_message"]
    assert "no entry" in rows[4]["error_message"]
    # The pack's tokens go to the rows it answered, whole, summing to what was billed.
    assert [r["input_tokens"] for r in rows] == [5, 5, None, None, None]
    assert [r["output_tokens"] for r in rows] == [4, 3, None, None, None]


# -- cost, estimate, preview ----------------------------------------------------------------
def test_packing_bills_a_third_or_less_and_the_estimate_says_so(emu):
    client = client_for("openai", emu)
    system = "Summarise the text in one short sentence, keeping names and numbers. " * 90
    df = rows(42, duplicates=18)  # 30% duplicates
    kwargs = {"model": "gpt-4o-mini", "system": system, "max_tokens": 30}
    est_alone = nb.preview(df, TEMPLATE, client=client, **kwargs).estimate
    est = nb.preview(df, TEMPLATE, client=client, pack=20, **kwargs).estimate
    assert est.cost.batch is not None and est_alone.cost.batch is not None
    assert est.cost.batch <= est_alone.cost.batch / 3
    assert "packed 20 rows a request: 42 rows in 3 requests" in est.summary()
    assert "batch unpacked" in est.summary()

    packed = submit(df, client, pack=20, **kwargs)
    alone = submit(df, client, **kwargs)
    assert not packed.cost.estimated and not alone.cost.estimated
    assert packed.cost.batch <= alone.cost.batch / 3
    assert packed.merge(df)["response"].tolist() == alone.merge(df)["response"].tolist()


def test_max_cost_counts_packed_requests(emu):
    client = client_for("openai", emu)
    system = "Summarise the text in one short sentence, keeping names and numbers. " * 90
    df = rows(40)
    kwargs = {"model": "gpt-4o-mini", "system": system, "max_tokens": 30}
    alone = nb.preview(df, TEMPLATE, client=client, **kwargs).estimate.cost.batch
    packed = nb.preview(df, TEMPLATE, client=client, pack=20, **kwargs).estimate.cost.batch
    budget = (alone + packed) / 2
    with pytest.raises(nb.InputError, match="above max_cost"):
        nb.submit(df, TEMPLATE, client=client, display=False, max_cost=budget, **kwargs)
    job = submit(df, client, pack=20, max_cost=budget, **kwargs)
    assert job.counts["succeeded"] == 40


def test_preview_shows_the_packed_request(emu):
    df = rows(7)
    shown = nb.preview(df, TEMPLATE, model="gpt-4o-mini", client=client_for("openai", emu),
                       pack=3, n=2)  # fmt: skip
    assert len(shown) == 2
    first = shown.iloc[0]
    assert first["custom_id"] == "pack of 3 from row 0"
    # The instruction once, the item standing in for each row's own part.
    assert first["prompt"].startswith("Summarise: <ITEM>\nBe brief.\n")
    assert first["prompt"].count("Summarise:") == 1
    # Each item under a random id of its own, and each answer asked to repeat its check.
    assert re.search(
        r'\[\{"id":"[0-9a-f]{10}","text":"text of row 0"\},\{"id":"[0-9a-f]{10}","text":'
        r'"text of row 1"\},',
        first["prompt"],
    )
    assert '"check"' in first["prompt"]
    assert "text of row 3" in shown.iloc[1]["prompt"]


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"pack": 0}, "pack must be a whole number"),
        ({"pack": True}, "pack must be a whole number"),
        ({"pack": "20"}, "pack must be a whole number"),
        ({"pack": 10, "endpoint": "/v1/embeddings", "model": "text-embedding-3-small"},
         "pack= cannot be used with embeddings"),
    ],
)  # fmt: skip
def test_pack_is_refused_clearly_before_anything_is_sent(emu, kwargs, says):
    client = client_for("openai", emu)
    before = emu.stats().get("openai_batches_created", 0)
    with pytest.raises(nb.InputError, match=says):
        nb.submit(rows(5), "{text}", client=client, display=False,
                  **{"model": "gpt-4o-mini", **kwargs})  # fmt: skip
    assert nb.jobs().empty
    assert emu.stats().get("openai_batches_created", 0) == before


# -- property ---------------------------------------------------------------------------------
texts = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(
    lambda t: t.strip() != ""
)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=st.lists(texts, min_size=1, max_size=25), size=st.integers(2, 9))
def test_any_rows_in_any_pack_size_map_back_to_their_own_rows(emu, values, size):
    df = pd.DataFrame({"text": values})
    job = submit(df, client_for("openai", emu), template="<{text}>", pack=size, force=True)
    out = job.merge(df)
    assert out["response"].tolist() == [emulator.echo_text(f"<{t}>") for t in values]
    assert job.counts["succeeded"] == len(values)


# -- a process killed inside a create call --------------------------------------------------
CHILD = """
    import os, sys, anthropic, openai, pandas as pd, nbbatch as nb
    from nbbatch import _ledger as ledger
    from nbbatch.providers.anthropic import AnthropicProvider
    from nbbatch.providers.openai import OpenAIProvider

    # Two packs of 5 rows a batch: 50 rows, 5 batches.
    OpenAIProvider.max_requests = AnthropicProvider.max_requests = 2
    original = ledger.Ledger.confirm_batch
    calls = []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the third batch exists at the provider, unrecorded
            os._exit(9)
        return original(*args, **kwargs)

    ledger.Ledger.confirm_batch = dying
    url = os.environ["URL"]
    if os.environ["PROVIDER"] == "openai":
        client, model = openai.OpenAI(base_url=url + "/v1", api_key="k"), "gpt-4o-mini"
    else:
        client, model = anthropic.Anthropic(base_url=url, api_key="k"), "claude-haiku-4-5"
    df = pd.DataFrame({"text": [f"row {i}" for i in range(50)]})
    job = nb.submit(df, "{text}", model=model, client=client, display=False, pack=5)
    print(job.id, flush=True)
    job.wait(progress=False)
"""


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_packed_job_killed_inside_create_resumes_without_paying_twice(
    emu_process,  # noqa: F811
    nbbatch_home,
    provider,
):
    env = {**os.environ, "URL": emu_process, "NBBATCH_HOME": str(nbbatch_home),
           "PROVIDER": provider}  # fmt: skip
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert child.returncode == 9, child.stderr
    client = client_for(provider, _Url(emu_process))
    assert len(batch_ids_at(client)) == 3
    job = nb.attach(child.stdout.split()[0], client=client)
    job.wait(timeout=120, progress=False)
    df = pd.DataFrame({"text": [f"row {i}" for i in range(50)]})
    assert job.merge(df)["response"].tolist() == [emulator.echo_text(f"row {i}") for i in range(50)]
    # The batch made inside the dead process was found (as two packs), not sent again;
    # the two not sent went in one more batch (this process has the real limits).
    assert len(batch_ids_at(client)) == 4
    assert sorted(job.batch_ids) == sorted(batch_ids_at(client))
