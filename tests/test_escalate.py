"""Escalation and cascades, end to end through the official SDKs and the emulator.

A row escalated to another model is sent once more, on that model only; a row not chosen
is never sent again; each row ends once per stage, and is paid once per model it was
answered on. The emulator's responder records every request it answers (the model is in
the request), which is what "paid" means on a real provider: an answer given.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import threading
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nbbatch as nb
from nbbatch import emulator
from nbbatch.datasets import SENTIMENT_SCHEMA

from ._helpers import run_until_killed
from .conftest import batch_ids_at, batches_created, client_for, model_for
from .test_durable import _Url, assert_every_row_terminal_once

LARGE = {"openai": "gpt-4o", "anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-pro"}


class Recorder:
    """A responder that answers ``"<model>: <prompt>"`` and counts what it answered;
    prompts containing ``hard`` fail on every model but the large ones."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def __call__(self, request: emulator.Request) -> str:
        if "hard" in request.prompt and request.model not in LARGE.values():
            raise ValueError(f"{request.model} cannot answer this")
        with self._lock:
            self.calls[(request.model, request.prompt)] += 1
        return f"{request.model}: {request.prompt}"

    def answered(self, model: str) -> Counter[str]:
        return Counter({p: n for (m, p), n in self.calls.items() if m == model})


def texts(n: int, hard_every: int = 0) -> pd.DataFrame:
    rows = [f"row {i}" + (" hard" if hard_every and i % hard_every == 0 else "") for i in range(n)]
    return pd.DataFrame({"text": rows})


@pytest.fixture
def faulty():
    """An emulator with transient row faults (retried by the job) and 5xx on polls."""
    recorder = Recorder()
    with emulator.start(
        processing_seconds=0.05, error_rate=0.2, http_error_rate=0.1, responder=recorder
    ) as server:
        yield server, recorder


def test_escalate_sends_only_the_chosen_rows_on_the_new_model_once(provider, faulty):
    server, recorder = faulty
    client = client_for(provider, server)
    small, large = model_for(client), LARGE[provider]
    df = texts(24)
    job = nb.submit(df, "{text}", model=small, client=client, display=False)
    job.wait(timeout=120, progress=False)
    assert job.counts["succeeded"] == 24
    assert "response_model" not in job.merge().columns  # a job that never escalates

    before = set(job.batch_ids)
    job.escalate(model=large, where=lambda out: out["text"].str.endswith(("1", "5")))
    job.wait(timeout=120, progress=False)
    assert_every_row_terminal_once(job, 24)
    chosen = df["text"].str.endswith(("1", "5"))
    out = job.merge()
    assert out["response_status"].eq("succeeded").all()
    want = [f"{large if c else small}: {t}" for t, c in zip(df["text"], chosen, strict=True)]
    assert out["response"].tolist() == want
    assert out["response_model"].tolist() == [large if c else small for c in chosen]
    # Paid once per model: every row answered once on the small model; only the chosen
    # rows on the large one, once each (transient faults were retried, never answered twice).
    assert recorder.answered(small) == Counter(df["text"])
    assert recorder.answered(large) == Counter(df["text"][chosen])
    # The new stage went in new batches; the old ones were not touched.
    assert before < set(job.batch_ids)
    stages = job.snapshot().stages
    assert [(s.model, s.rows) for s in stages] == [(small, 24), (large, int(chosen.sum()))]
    assert [s.requests for s in stages] == [24, int(chosen.sum())]
    # The job's token totals count both answers of an escalated row: both were paid.
    snap = job.snapshot()
    assert snap.input_tokens == sum(s.input_tokens for s in stages) > stages[0].input_tokens
    results = job.results()
    assert results["model"].tolist() == out["response_model"].tolist()
    # The large model's answers are recorded under its own request: a new job asking the
    # large model the same reuses them; one asking the small model reuses the small's.
    for model, rows in ((large, df[chosen]), (small, df)):
        again = nb.submit(rows, "{text}", model=model, client=client, display=False, force=True)
        again.wait(timeout=60, progress=False)
        assert again.counts["reused"] == len(rows)
        assert again.merge(rows)["response"].str.startswith(f"{model}: ").all()


def test_a_cascade_escalates_failed_rows_by_itself_and_prices_each_model(provider, faulty):
    server, recorder = faulty
    client = client_for(provider, server)
    small, large = model_for(client), LARGE[provider]
    df = texts(20, hard_every=4)  # rows 0, 4, 8...: the small model fails them
    hard = df["text"].str.contains("hard")
    job = nb.submit(df, "{text}", model=[small, large], client=client, display=False)
    assert job.output_columns()[-1] == "response_model"  # named from the start
    job.wait(timeout=120, progress=False)
    assert_every_row_terminal_once(job, 20)
    out = job.merge()
    assert out["response_status"].eq("succeeded").all()
    assert out["response_model"].tolist() == [large if h else small for h in hard]
    assert recorder.answered(large) == Counter(df["text"][hard])
    assert recorder.answered(small) == Counter(df["text"][~hard])
    snap = job.snapshot()
    assert snap.stage_lines[1].startswith(f"stage 2 of 2: {int(hard.sum())} rows on {large}")
    cost = job.cost
    assert [m for m, _ in cost.per_model] == [small, large]
    assert cost.baseline == large and not cost.estimated
    assert cost.batch == pytest.approx(sum(d for _, d in cost.per_model))
    # nb.jobs() (and the Lab sidebar, and nbbatch jobs) price each stage on its model too.
    assert nb.jobs().set_index("id").loc[job.id, "cost"] == pytest.approx(cost.batch)
    assert 0 < cost.batch < cost.realtime
    assert f"all on {large} in real time" in str(cost)
    # The views say it too: the text the notebook saves and the panel's cost line.
    from nbbatch import _panel as panel

    text = panel.plain_text(snap)
    assert f"stage 1 of 2: 20 rows on {small}" in text
    assert f"stage 2 of 2: {int(hard.sum())} rows on {large}" in text
    assert f"stage 2 of 2: {int(hard.sum())} rows on {large}" in panel.static_html(snap)


def test_a_cascade_on_structured_confidence_escalates_the_uncertain_rows(emu):
    """The keyword responder gives confident answers to rows with a keyword and spread,
    low ones to the rest: the function chooses those, and only those go to the large
    model."""
    labels = {"positive": ["love", "great"], "negative": ["broken", "awful"]}
    responder = emulator.keyword_responder(labels, default="neutral")
    schema = SENTIMENT_SCHEMA
    reviews = ["love it", "awful, broken", "it is a kettle", "great", "arrived on tuesday",
               "broken lid", "fine I guess", "great, love it"]  # fmt: skip
    df = pd.DataFrame({"review": reviews})
    with emulator.start(processing_seconds=0.05, responder=responder) as server:
        client = client_for("openai", server)
        job = nb.submit(
            df, "Classify: {review}", model=["gpt-4o-mini", "gpt-4o"], client=client,
            response_format=schema, escalate_when=lambda out: out["confidence"] < 0.7,
            display=False,
        )  # fmt: skip
        job.wait(timeout=60, progress=False)
    out = job.merge()
    vague = [r in ("it is a kettle", "arrived on tuesday", "fine I guess") for r in reviews]
    assert out["response_model"].tolist() == ["gpt-4o" if v else "gpt-4o-mini" for v in vague]
    assert out["response_status"].eq("succeeded").all()
    assert job.stages[0]["n_rows"] == 3 and "<lambda>" in job.stages[0]["reason"]


# -- kill and attach between the stages -------------------------------------------------------
EMULATOR = """
    import sys, time
    from nbbatch import emulator

    def responder(request):
        if "hard" in request.prompt and request.model in ("gpt-4o-mini", "claude-haiku-4-5"):
            raise ValueError("too hard")
        return f"{request.model}: {request.prompt}"

    server = emulator.start(processing_seconds=0.3, error_rate=0.1, responder=responder)
    print(server.url, flush=True)
    sys.stdin.read()  # until the test closes it
    server.stop()
"""

CHILD = """
    import os, anthropic, openai, pandas as pd, nbbatch as nb
    from nbbatch import _ledger as ledger

    url, provider, mode = os.environ["ARGS"].split()
    if provider == "openai":
        client, models = openai.OpenAI(base_url=url + "/v1", api_key="k"), ["gpt-4o-mini", "gpt-4o"]
    else:
        client = anthropic.Anthropic(base_url=url, api_key="k")
        models = ["claude-haiku-4-5", "claude-sonnet-4-5"]
    name, before = {"before-stage": ("add_stage", True), "after-stage": ("add_stage", False),
                    "stage-sent": ("confirm_batch", False)}[mode]
    original = getattr(ledger.Ledger, name)

    def die(self, *args, **kwargs):
        stage = (args[1]["stage"] if name == "add_stage" else
                 self.query("SELECT stage FROM batches WHERE intent = ?", (args[0],))[0][0])
        if stage == 1 and before:
            os._exit(9)
        result = original(self, *args, **kwargs)
        if stage == 1:
            os._exit(9)
        return result

    setattr(ledger.Ledger, name, die)
    df = pd.DataFrame({"text": [f"row {i}" + (" hard" if i % 5 == 0 else "") for i in range(30)]})
    job = nb.submit(df, "{text}", model=models, client=client, escalate_when="failed",
                    display=False)
    print(job.id, flush=True)
    job.wait(progress=False)
    print("finished", flush=True)
"""


@pytest.fixture
def emu_with_responder():
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(EMULATOR)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    url = proc.stdout.readline().strip()
    try:
        yield url
    finally:
        proc.stdin.close()
        proc.wait(10)
        proc.stdout.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["before-stage", "after-stage", "stage-sent"])
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_cascade_killed_between_its_stages_resumes_after_attach(
    emu_with_responder, nbbatch_home, mode, provider
):
    url = emu_with_responder
    small, large = {"openai": ("gpt-4o-mini", "gpt-4o"),
                    "anthropic": ("claude-haiku-4-5", "claude-sonnet-4-5")}[provider]  # fmt: skip
    job_id = run_until_killed(CHILD, f"{url} {provider} {mode}", nbbatch_home).split()[0]
    client = client_for(provider, _Url(url))
    at_provider = len(batch_ids_at(client))

    job = nb.attach(job_id, client=client)
    # What the dead process left: stage 1 ended; stage 2 not started, started and not
    # sent, or sent in one batch.
    assert len(job.stages) == (0 if mode == "before-stage" else 1)
    job.wait(timeout=120, progress=False)
    assert_every_row_terminal_once(job, 30)
    df = pd.DataFrame({"text": [f"row {i}" + (" hard" if i % 5 == 0 else "") for i in range(30)]})
    out = job.merge(df)
    hard = df["text"].str.contains("hard")
    assert out["response_status"].eq("succeeded").all()
    assert out["response"].tolist() == [
        f"{large if h else small}: {t}" for t, h in zip(df["text"], hard, strict=True)
    ]
    assert [s["n_rows"] for s in job.stages] == [int(hard.sum())]
    # Stage 2 went out in exactly one batch (plus a retry batch for its faulted rows),
    # whichever process sent it; none was sent twice.
    stage2 = [b for b in job._ledger.batches(job.id) if b["stage"] == 1]
    assert sum(b["n_requests"] for b in stage2 if b["attempt"] == stage2[0]["attempt"]) == 6
    assert sorted(job.batch_ids) == sorted(batch_ids_at(client))
    assert len(batch_ids_at(client)) >= at_provider


# -- bad input: refused before anything is sent ------------------------------------------------
@pytest.fixture
def finished(emu):
    client = client_for("openai", emu)
    job = nb.submit(texts(6, hard_every=0), "{text}", model="gpt-4o-mini", client=client,
                    display=False)  # fmt: skip
    return job.wait(timeout=60, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"model": "gpt-4o-nonexistent"}, "gpt-4o-nonexistent"),
        ({"model": "claude-sonnet-4-5"}, "stays with the job's provider"),
        ({"model": ""}, "non-empty"),
        ({"model": "gpt-4o", "where": [True] * 5}, "5 values, but job"),
        ({"model": "gpt-4o", "where": np.ones(7, dtype=bool)}, "7 values"),
        ({"model": "gpt-4o", "where": [1, 0, 1, 0, 1, 0]}, "True or False"),
        ({"model": "gpt-4o", "where": lambda out: out["nope"] > 1}, "could not be evaluated"),
        ({"model": "gpt-4o", "where": "nope > 1"}, "names column 'nope'"),
        ({"model": "gpt-4o", "where": 3}, "where must be"),
        ({"model": "gpt-4o", "where": "failed"}, "no row to escalate"),  # none failed
        ({"model": "gpt-4o", "where": [False] * 6}, "no row to escalate"),
        ({"model": "gpt-4o", "response_format": {"type": "json_object"}}, "keeps the job's"),
        ({"model": "gpt-4o", "temperature": "hot"}, "temperature"),
    ],
)
def test_bad_escalations_are_refused_before_anything_is_sent(finished, emu, kwargs, words):
    before = batches_created(emu)
    with pytest.raises(nb.NbbatchError) as raised:
        finished.escalate(**kwargs)
    assert words in str(raised.value)
    assert batches_created(emu) == before
    assert finished.stages == [] and finished.status == "completed"


def test_escalating_a_running_job_or_rows_already_on_that_model_is_refused(emu):
    client = client_for("openai", emu)
    job = nb.submit(texts(6), "{text}", model="gpt-4o-mini", client=client, display=False)
    with pytest.raises(nb.InputError, match="still running"):
        job.escalate(model="gpt-4o", where=[True] * 6)
    job.wait(timeout=60, progress=False)
    job.escalate(model="gpt-4o", where=[True, True, False, False, False, False])
    job.wait(timeout=60, progress=False)
    before = batches_created(emu)
    # Rows 0 and 1 were answered by gpt-4o with these parameters: never paid twice.
    with pytest.raises(nb.InputError, match="already answered by gpt-4o"):
        job.escalate(model="gpt-4o", where=[True, True, False, False, False, False])
    # With other parameters they are another request, and go.
    job.escalate(model="gpt-4o", where=[True, False, False, False, False, False], max_tokens=50)
    job.wait(timeout=60, progress=False)
    assert batches_created(emu) == before + 1
    assert job.merge()["response_model"].tolist()[:3] == ["gpt-4o", "gpt-4o", "gpt-4o-mini"]
    assert [s["spec"]["max_tokens"] for s in job.stages] == [None, 50]


def test_a_bad_cascade_is_refused_before_anything_is_recorded(emu):
    client = client_for("openai", emu)
    df = texts(4)
    cases = [
        ({"model": ["gpt-4o-mini"]}, "two or more"),
        ({"model": ["gpt-4o-mini", "gpt-4o-mini"]}, "each model once"),
        ({"model": ["gpt-4o-mini", "claude-sonnet-4-5"]}, "one provider"),
        ({"model": ["gpt-4o-mini", "gpt-4o-nonexistent"]}, "gpt-4o-nonexistent"),
        ({"model": ["gpt-4o-mini", "gpt-4o"], "escalate_when": 3}, "escalate_when must be"),
        ({"model": "gpt-4o-mini", "escalate_when": "failed"}, "a list of models"),
    ]
    before = batches_created(emu)
    for kwargs, words in cases:
        with pytest.raises(nb.NbbatchError) as raised:
            nb.submit(df, "{text}", client=client, display=False, **kwargs)
        assert words in str(raised.value), kwargs
    assert nb.jobs().empty and batches_created(emu) == before


def test_a_function_escalate_when_is_given_again_to_attach(emu):
    client = client_for("openai", emu)
    job = nb.submit(texts(4), "{text}", model="gpt-4o-mini", client=client, display=False)
    with pytest.raises(nb.InputError, match="not a cascade"):
        nb.attach(job.id, client=client, escalate_when=lambda out: out.index < 2)
    cascade = nb.submit(
        texts(4, hard_every=0), "Q: {text}", model=["gpt-4o-mini", "gpt-4o"], client=client,
        escalate_when=lambda out: out.index < 2, display=False,
    )  # fmt: skip
    cascade.wait_sent()
    # A new session without the function: stage 1 ends and the cascade says what it needs.
    other = nb.attach(cascade.id, client=client)
    other.wait(timeout=60, progress=False)
    assert other.stages == []
    assert any("escalate_when function" in w for w in other.snapshot().warnings)
    again = nb.attach(cascade.id, client=client, escalate_when=lambda out: out.index < 2)
    again.wait(timeout=60, progress=False)  # the stage starts on the first refresh
    assert [s["n_rows"] for s in again.stages] == [2]
    assert again.results()["model"].tolist() == ["gpt-4o", "gpt-4o", "gpt-4o-mini", "gpt-4o-mini"]


# -- cost before: preview and max_cost --------------------------------------------------------
def test_preview_and_max_cost_count_later_stages_as_an_upper_bound(emu):
    client = client_for("openai", emu)
    df = pd.DataFrame({"text": ["a fairly long review text " * 20 + str(i) for i in range(200)]})
    one = nb.preview(df, "{text}", model="gpt-4o-mini", client=client).estimate
    both = nb.preview(df, "{text}", model=["gpt-4o-mini", "gpt-4o"], client=client).estimate
    large = nb.preview(df, "{text}", model="gpt-4o", client=client).estimate
    assert both.cost == one.cost  # the first stage in full, as on its own
    assert [e.model for e in both.later] == ["gpt-4o"]
    assert both.upper_bound == pytest.approx(one.cost.batch + large.cost.batch)
    assert "upper bound" in both.summary() and "stage 2 of 2: gpt-4o" in both.summary()
    # A budget the first stage fits but the bound does not: refused, and says why.
    budget = (one.cost.batch + both.upper_bound) / 2
    before = batches_created(emu)
    with pytest.raises(nb.InputError, match="upper bound"):
        nb.submit(df, "{text}", model=["gpt-4o-mini", "gpt-4o"], client=client,
                  max_cost=budget, display=False)  # fmt: skip
    assert batches_created(emu) == before
    job = nb.submit(df, "{text}", model="gpt-4o-mini", client=client, max_cost=budget,
                    display=False)  # fmt: skip
    job.wait(timeout=60, progress=False)


# -- properties ------------------------------------------------------------------------------
@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    groups=st.lists(st.integers(0, 5), min_size=4, max_size=12),
    chosen=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_any_mask_escalates_exactly_its_rows_and_their_identical_twins(emu, groups, chosen):
    """Rows with identical text share one request: choosing any of them escalates the
    request, so all of them take the large model's answer; no other row moves."""
    client = client_for("openai", emu)
    df = pd.DataFrame({"text": [f"text {g}" for g in groups]})
    mask = np.array(chosen[: len(df)])
    if not mask.any():
        mask[0] = True
    job = nb.submit(df, "{text}", model="gpt-4o-mini", client=client, display=False,
                    force=True, reuse=False)  # fmt: skip
    job.wait(timeout=60, progress=False)
    job.escalate(model="gpt-4o", where=pd.Series(mask, index=df.index))
    job.wait(timeout=60, progress=False)
    hit = set(df["text"][mask])
    want = ["gpt-4o" if t in hit else "gpt-4o-mini" for t in df["text"]]
    out = job.merge(df)
    assert out["response_model"].tolist() == want
    assert out["response_status"].eq("succeeded").all()
    assert job.stages[0]["n_rows"] == sum(t in hit for t in df["text"])
    assert job.snapshot().stages[1].requests == len(hit)


def test_rows_the_last_model_fails_stay_on_it_and_resubmit_there(emu):
    """A row the large model fails too ends failed there (and says so);
    resubmit_failed sends it on the model of the stage it failed in, not the first."""
    client = client_for("openai", emu)
    df = pd.DataFrame({"text": ["fine", f"broken {emulator.FAIL_MARKER}", "also fine"]})
    job = nb.submit(df, "{text}", model=["gpt-4o-mini", "gpt-4o"], client=client,
                    display=False)  # fmt: skip
    job.wait(timeout=60, progress=False)
    out = job.merge()
    assert out["response_status"].tolist() == ["succeeded", "failed", "succeeded"]
    assert out["response_model"].tolist() == ["gpt-4o-mini", "gpt-4o", "gpt-4o-mini"]
    with pytest.raises(nb.InputError, match="escalation stage"):
        job.resubmit_failed(max_tokens=20)
    before = len(job.batch_ids)
    job.resubmit_failed()
    job.wait(timeout=60, progress=False)
    batches = job._ledger.batches(job.id)
    assert len(batches) == before + 1 and batches[-1]["stage"] == 1
    assert batches[-1]["n_requests"] == 1
    assert job.merge()["response_model"].tolist()[1] == "gpt-4o"


def test_a_series_mask_indexed_otherwise_than_the_data_is_refused(finished, emu):
    before = batches_created(emu)
    shuffled = pd.Series([True, False] * 3, index=[5, 4, 3, 2, 1, 0])
    with pytest.raises(nb.InputError, match="index is not the submitted data"):
        finished.escalate(model="gpt-4o", where=shuffled)
    assert batches_created(emu) == before


def test_a_cancelled_job_is_not_escalated(emu):
    client = client_for("openai", emu)
    job = nb.submit(texts(6), "{text}", model="gpt-4o-mini", client=client, display=False)
    job.wait_sent()
    job.cancel()
    job.wait(timeout=60, progress=False)
    before = batches_created(emu)
    with pytest.raises(nb.InputError, match="was cancelled"):
        job.escalate(model="gpt-4o", where=[True] * 6)
    assert batches_created(emu) == before and job.stages == []


# -- a first stage answered entirely from earlier jobs -----------------------------------------
def test_a_cascade_whose_first_stage_is_all_reused_still_runs_stage_2(emu):
    """Every row of stage 1 is reused from an earlier job, so no batch is sent for it:
    wait() still starts stage 2 on the large model and returns once it has ended."""
    client = client_for("openai", emu)
    df = texts(6)
    nb.submit(df, "{text}", model="gpt-4o-mini", client=client, display=False).wait(
        timeout=60, progress=False
    )
    before = batches_created(emu)
    job = nb.submit(
        df, "{text}", model=["gpt-4o-mini", "gpt-4o"], client=client, display=False,
        escalate_when=lambda out: out.index % 2 == 0,
    )  # fmt: skip
    job.wait(timeout=60, progress=False)
    assert job.counts["reused"] == 3  # the rows stage 2 did not take keep the reused answers
    assert [s["n_rows"] for s in job.stages] == [3]
    out = job.merge()
    assert out["response_model"].tolist() == ["gpt-4o", "gpt-4o-mini"] * 3
    assert out["response_status"].eq("succeeded").all()
    assert batches_created(emu) == before + 1  # stage 2 alone, once
    assert job.status == "completed" and job.snapshot().finished
    row = nb.jobs().set_index("id").loc[job.id]
    assert row["status"] == "completed" and row["pending"] == 0


# -- escalate_when: checked at submit, and a failure later ends the job in error --------------
SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
    "required": ["label", "score"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("when", "words"),
    [
        ("scor < 0.3", "Did you mean 'score'?"),
        ("nope > 1", "names column 'nope'"),
        ("score <", "not valid"),
        ("@pd.io.common.os.system('id')", "'@'"),
        ("score.__class__ == 1", "an attribute"),
        ("len(text) > 3", "a call"),
    ],
)
def test_a_bad_escalate_when_is_refused_at_submit_before_anything_is_sent(emu, when, words):
    client = client_for("openai", emu)
    before = batches_created(emu)
    with pytest.raises(nb.InputError) as raised:
        nb.submit(
            texts(4), "{text}", model=["gpt-4o-mini", "gpt-4o"], client=client,
            response_format=SCHEMA, escalate_when=when, display=False,
        )  # fmt: skip
    assert words in str(raised.value)
    assert nb.jobs().empty and batches_created(emu) == before


def test_an_escalate_when_on_input_and_structured_columns_is_accepted(emu):
    """The columns the merged frame will have: the data's, the structured fields and
    the status columns, so an expression on them is not refused."""
    client = client_for("openai", emu)
    job = nb.submit(
        texts(4), "{text}", model=["gpt-4o-mini", "gpt-4o"], client=client,
        response_format=SCHEMA, display=False,
        escalate_when="score < 0.3 or response_status != 'succeeded' or text == 'row 1'",
    )  # fmt: skip
    job.wait(timeout=60, progress=False)
    assert job.status == "completed"
    assert job.merge()["response_model"].tolist()[1] == "gpt-4o"


@pytest.mark.parametrize(
    ("when", "words"),
    [
        (lambda out: 1 / 0, "ZeroDivisionError"),
        (lambda out: [True, False], "2 values, but job"),
        (lambda out: out["text"], "True or False"),
    ],
)
def test_an_escalate_when_failing_after_stage_1_ends_the_job_failed(emu, when, words):
    client = client_for("openai", emu)
    job = nb.submit(
        texts(4), "{text}", model=["gpt-4o-mini", "gpt-4o"], client=client,
        escalate_when=when, display=False,
    )  # fmt: skip
    with pytest.raises(nb.NbbatchError) as raised:
        job.wait(timeout=60, progress=False)
    message = str(raised.value)
    assert words in message and "job.escalate('gpt-4o', where=" in message
    assert job.status == "failed" and job.stages == []
    from nbbatch import _panel as panel

    snap = job.snapshot()
    assert snap.finished and words in (snap.failure or "")
    assert panel.JobPanel.bar_style(snap) == "danger"
    assert f"error: {snap.failure}" in panel.plain_text(snap)
    assert "Stopped in error" in panel.static_html(snap)
    # Every session sees it: the ledger says failed, and wait() raises there too.
    assert nb.jobs().set_index("id").loc[job.id, "status"] == "failed"
    other = nb.attach(job.id, client=client, escalate_when=when)
    assert other.status == "failed"
    with pytest.raises(nb.NbbatchError, match="cascade stopped before stage 2"):
        other.wait(timeout=60, progress=False)
    # The rows keep stage 1's answers, and the user can go on by hand.
    assert job.merge()["response_model"].tolist() == ["gpt-4o-mini"] * 4
    job.escalate("gpt-4o", where=[True, False, False, False])
    job.wait(timeout=60, progress=False)
    assert job.status == "completed"
    assert job.merge()["response_model"].tolist()[0] == "gpt-4o"


def test_an_expression_naming_an_input_column_fails_cleanly_when_attached_without_data(emu):
    """A new session attaches without the data: the expression's input column is not
    there, and the job ends failed (not completed, not a crash of the poller)."""
    client = client_for("openai", emu)
    job = nb.submit(
        texts(4), "{text}", model=["gpt-4o-mini", "gpt-4o"], client=client,
        escalate_when="text == 'row 1'", display=False,
    )  # fmt: skip
    job.wait_sent()
    other = nb.attach(job.id, client=client)
    with pytest.raises(nb.NbbatchError, match="names column 'text'"):
        other.wait(timeout=60, progress=False)
    assert other.status == "failed"
    from .test_cli import nbbatch as run_cli

    status = run_cli("status", job.id)
    assert "failed" in status.stdout and "error: the cascade stopped" in status.stdout
    assert "names column 'text'" in status.stdout
    listed = run_cli("jobs")
    assert "failed" in listed.stdout


# -- where= strings are never run as code --------------------------------------------------------
@pytest.mark.parametrize(
    "where",
    [
        "@pd.io.common.os.system('touch {marker}')",
        "text.str.contains('x') | @__import__('os').system('touch {marker}')",
        "__import__('os').system('touch {marker}')",
        "response.__class__.__init__.__globals__",
    ],
)
def test_a_where_expression_never_runs_code(finished, emu, tmp_path, where):
    marker = tmp_path / "pwned"
    before = batches_created(emu)
    with pytest.raises(nb.InputError) as raised:
        finished.escalate(model="gpt-4o", where=where.format(marker=marker))
    assert not marker.exists(), "the expression ran a shell command"
    assert re.search("is not allowed|uses '@'", str(raised.value))
    assert batches_created(emu) == before and finished.stages == []


def test_a_stored_escalate_when_is_checked_again_by_the_session_that_polls(emu, tmp_path):
    """An expression written into the ledger by hand (or by an older version) is parsed
    by the polling session, never evaluated as code: the job ends failed."""
    client = client_for("openai", emu)
    job = nb.submit(
        texts(4), "{text}", model=["gpt-4o-mini", "gpt-4o"], client=client,
        escalate_when="response_status == 'failed'", display=False,
    )  # fmt: skip
    job.wait_sent()
    marker = tmp_path / "pwned"
    policy = dict(job.context.policy)
    policy["cascade"] = {**policy["cascade"], "when": f"@pd.io.common.os.system('touch {marker}')"}
    import orjson

    with job._ledger.transaction() as db:
        db.execute(
            "UPDATE jobs SET policy = ? WHERE id = ?", (orjson.dumps(policy).decode(), job.id)
        )
    other = nb.attach(job.id, client=client)
    try:
        other.wait(timeout=60, progress=False)
    except nb.NbbatchError as exc:
        assert "uses '@'" in str(exc)
    assert not marker.exists(), "the stored expression ran a shell command"
    assert other.status == "failed"


# -- the views name each stage's model; collect writes {output}_model ---------------------------
def test_a_cascade_is_named_by_its_stages_everywhere_and_collect_writes_its_models(emu, tmp_path):
    from nbbatch import _panel as panel
    from nbbatch import _panelview as panelview

    from .test_cli import nbbatch as run_cli

    client = client_for("openai", emu)
    df = texts(4)
    job = nb.submit(
        df, "{text}", model=["gpt-4o-mini", "gpt-4o"], client=client, display=False,
        escalate_when="text == 'row 1' or text == 'row 3'",
    )  # fmt: skip
    job.wait(timeout=60, progress=False)
    merged = job.merge()
    assert merged["response_model"].tolist() == ["gpt-4o-mini", "gpt-4o"] * 2

    out = tmp_path / "r.csv"
    result = run_cli("collect", job.id, "--out", str(out))
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["id", "row", *job.output_columns(lineage=True)]
    assert "response_model" in job.output_columns()  # a cascade names its model without asking
    assert frame["response_model"].tolist() == merged["response_model"].tolist()

    # The escalation's batch is stage 2 on its model, not a retry of the first.
    snap = job.snapshot()
    assert [b.label for b in snap.batches] == ["attempt 1", "stage 2 (gpt-4o)"]
    batches = panelview.batches_html(snap)
    assert "stage 2 (gpt-4o))" in batches and "attempt 2" not in batches
    # Every view names both models, in order.
    both = "gpt-4o-mini -> gpt-4o"
    assert f"[openai {both}] completed" in panel.plain_text(snap)
    assert "gpt-4o-mini -&gt; gpt-4o" in panel.static_html(snap)
    assert nb.jobs().set_index("id").loc[job.id, "model"] == both
    from nbbatch.labext import views

    sidebar = {j["id"]: j for j in views.jobs_view(job._ledger)["jobs"]}
    assert sidebar[job.id]["model"] == both
    status = run_cli("status", job.id)
    assert status.returncode == 0, status.stderr
    assert both in status.stdout and "(stage 2 (gpt-4o))" in status.stdout
    assert "attempt 2" not in status.stdout
    listed = run_cli("jobs")
    assert both in listed.stdout
