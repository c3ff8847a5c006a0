"""A deadline that means something: with ``on_deadline="flex"`` or ``"realtime"``, rows
not done when it arrives stop waiting for their batch and go through the real-time API
(OpenAI flex processing at batch prices, or full price); with ``"wait"`` nothing
changes. Every row still ends in exactly one terminal state."""

from __future__ import annotations

import datetime as dt

import openai
import pytest

import nbbatch as nb
from nbbatch import emulator

from ._helpers import run_cli
from .conftest import anthropic_client, openai_client

PROMPT = "Summarise: {body}"


def _frame(n: int):
    import pandas as pd

    return pd.DataFrame({"body": [f"row {i}" for i in range(n)]})


@pytest.fixture
def slow():
    """An emulator whose batches would take ten minutes; flex answers are sometimes
    refused (and retried)."""
    with emulator.start(processing_seconds=600, flex_unavailable_rate=0.3) as emu:
        yield emu


def _texts(job) -> str:
    return "\n".join(note.text for note in job.snapshot().notes)


def test_rows_not_done_at_the_deadline_go_through_flex_at_batch_prices(slow):
    client = openai_client(slow)
    df = _frame(12)
    job = nb.submit(df, PROMPT, model="o4-mini", client=client,
                    deadline=dt.timedelta(seconds=2), on_deadline="flex")  # fmt: skip
    import io

    from nbbatch import _panelview as panelview
    from nbbatch._console import ConsoleReporter

    printed = io.StringIO()
    job.subscribe(ConsoleReporter(printed))
    job.wait(timeout=120, progress=False)
    assert job.counts["succeeded"] == 12 and job.counts["pending"] == 0
    # The cost beside the other way is in the console's notes and the panel's history.
    assert "with flex; real time would have cost" in printed.getvalue()
    assert "with flex; real time would have cost" in panelview.error_html(job.snapshot())
    out = job.merge(df)
    assert out["response"].tolist() == [
        emulator.echo_text(PROMPT.format(body=b)) for b in df["body"]
    ]
    assert slow.stats()["realtime_requests"] >= 12  # each row once, refusals retried
    notes = _texts(job)
    if slow.stats()["openai_batches_created"]:  # sent before the deadline: cancelled at it
        assert "deadline reached: cancelling 1 open batches" in notes
    assert "deadline reached: sending 12 unfinished rows through OpenAI flex processing" in notes
    # Flex is billed at batch prices: the job's batch cost is what the rows cost.
    assert "with flex; real time would have cost" in notes
    cost = job.cost
    assert cost.batch is not None and cost.realtime is not None and cost.batch < cost.realtime


def test_realtime_on_deadline_pays_full_price(slow):
    client = anthropic_client(slow)
    job = nb.submit(_frame(6), PROMPT, model="claude-haiku-4-5", client=client,
                    deadline=dt.timedelta(seconds=2), on_deadline="realtime")  # fmt: skip
    job.wait(timeout=120, progress=False)
    assert job.counts["succeeded"] == 6 and job.counts["realtime"] == 6
    assert "through the real-time API (full price)" in _texts(job)
    # What they cost beside a batch, in the notes the panel and console show.
    assert "rows sent after the deadline cost" in _texts(job)
    assert "in real time; a batch would have cost" in _texts(job)


def test_wait_on_deadline_keeps_waiting_for_the_batch(slow):
    client = openai_client(slow)
    job = nb.submit(_frame(4), PROMPT, model="gpt-5-mini", client=client,
                    deadline=dt.timedelta(seconds=1))  # fmt: skip
    with pytest.raises(TimeoutError):
        job.wait(timeout=4, progress=False)  # the batch takes ten minutes: still waiting
    assert job.counts["pending"] == 4 and slow.stats()["realtime_requests"] == 0
    job.cancel()


def test_on_deadline_is_checked_at_submit(oai):
    with pytest.raises(nb.InputError, match="on_deadline must be one of"):
        nb.submit(_frame(2), PROMPT, model="gpt-4o-mini", client=oai, deadline="1h",
                  on_deadline="later")  # fmt: skip
    with pytest.raises(nb.InputError, match="no deadline was given"):
        nb.submit(_frame(2), PROMPT, model="gpt-4o-mini", client=oai, on_deadline="flex")
    with emulator.start() as emu:
        with pytest.raises(nb.InputError, match="flex processing"):
            nb.submit(_frame(2), PROMPT, model="claude-haiku-4-5", client=anthropic_client(emu),
                      deadline="1h", on_deadline="flex")  # fmt: skip
    assert isinstance(oai, openai.OpenAI)


def test_flex_on_a_model_without_flex_processing_is_refused_at_submit(oai):
    # gpt-4o-mini has no flex processing: refused before anything is sent, naming the fix.
    with pytest.raises(nb.InputError, match="on_deadline='realtime'") as info:
        nb.submit(_frame(2), PROMPT, model="gpt-4o-mini", client=oai, deadline="1h",
                  on_deadline="flex")  # fmt: skip
    assert "'gpt-4o-mini' does not offer" in str(info.value)
    # In a cascade every model must offer it.
    with pytest.raises(nb.InputError, match="'gpt-4o' does not offer"):
        nb.submit(_frame(2), PROMPT, model=["o4-mini", "gpt-4o"], client=oai, deadline="1h",
                  on_deadline="flex", escalate_when="True")  # fmt: skip


def test_the_emulator_refuses_flex_on_a_model_without_it():
    with emulator.start() as emu:
        client = openai_client(emu)
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                service_tier="flex",
            )  # fmt: skip
        assert info.value.status_code == 400
        body = info.value.body
        assert isinstance(body, dict) and body["type"] == "invalid_request_error"
        assert body["param"] == "service_tier"
        # A dated snapshot of a model with flex is served flex.
        reply = client.chat.completions.create(
            model="o4-mini-2025-04-16", messages=[{"role": "user", "content": "hi"}],
            service_tier="flex",
        )  # fmt: skip
        assert reply.service_tier == "flex"


def test_rows_a_cancelled_batch_finished_keep_their_results_and_are_not_sent_again():
    # Batches take 3 s; the deadline comes about half way through the first one.
    with emulator.start(processing_seconds=3) as emu:
        df = _frame(40)
        job = nb.submit(df, PROMPT, model="o4-mini", client=openai_client(emu),
                        deadline=dt.timedelta(seconds=1.5), on_deadline="flex")  # fmt: skip
        job.wait(timeout=120, progress=False)
        assert job.counts["succeeded"] == 40 and job.counts["total"] == 40
        sent_late = emu.stats()["realtime_requests"]
        assert f"sending {sent_late} unfinished rows" in _texts(job)  # each once, no more
        out = job.merge(df)
        assert out["response"].tolist() == [
            emulator.echo_text(PROMPT.format(body=b)) for b in df["body"]
        ]


def test_preview_says_what_the_deadline_would_cost_before_sending():
    df = _frame(20)
    # Flex: at most the batch price for every row that misses the deadline.
    flex = nb.preview(df, PROMPT, model="o4-mini", provider="openai", deadline="2h",
                      on_deadline="flex")  # fmt: skip
    est = flex.estimate
    assert est.cost.batch is not None and est.cost.realtime is not None
    money = nb.pricing.money
    assert est.deadline == (
        "2h after submit: rows not done by then go through OpenAI flex processing, at "
        f"batch prices: at most {money(est.cost.batch)} if all 20 rows go that way, as "
        f"much as the batch ({money(est.cost.realtime)} in real time)"
    )
    assert f"deadline       {est.deadline}" in repr(flex)
    # Real time: the full price, and how much more than the batch.
    live = nb.preview(df, PROMPT, model="claude-haiku-4-5", provider="anthropic",
                      deadline=dt.timedelta(hours=1), on_deadline="realtime").estimate  # fmt: skip
    assert live.cost.batch is not None and live.cost.realtime is not None
    assert live.deadline.startswith("1:00:00 after submit: rows not done by then go through "
                                    "the real-time API, at full price: at most "
                                    f"{money(live.cost.realtime)} if all 20 rows")  # fmt: skip
    extra = money(live.cost.realtime - live.cost.batch)
    assert live.deadline.endswith(f"{extra} more than the batch's {money(live.cost.batch)}")
    # Wait: only a flag; no deadline: no line.
    wait = nb.preview(df, PROMPT, model="o4-mini", provider="openai", deadline="2h").estimate
    assert "only flags the job overdue" in wait.deadline
    plain = nb.preview(df, PROMPT, model="o4-mini", provider="openai")
    assert plain.estimate.deadline == "" and "deadline" not in repr(plain).split("\n\n")[0]


def test_preview_refuses_a_deadline_submit_would_refuse():
    with pytest.raises(nb.InputError, match="on_deadline='realtime'"):
        nb.preview(_frame(2), PROMPT, model="gpt-4o-mini", provider="openai", deadline="2h",
                   on_deadline="flex")  # fmt: skip
    with pytest.raises(nb.InputError, match="no deadline was given"):
        nb.preview(_frame(2), PROMPT, model="o4-mini", provider="openai", on_deadline="flex")


def _past_its_deadline(emu: emulator.Emulator) -> nb.BatchJob:
    """A 5-row job sent to ``emu`` with a deadline of one second and on_deadline=
    "realtime", that no session polls (as after a closed kernel), once the deadline
    has passed."""
    import time

    job = nb.submit(_frame(5), PROMPT, model="o4-mini", client=openai_client(emu),
                    deadline=dt.timedelta(seconds=1), on_deadline="realtime")  # fmt: skip
    job.stop_polling()  # this session stops watching it, as a closed kernel would
    job.wait_sent(timeout=60)
    due = job.snapshot().deadline
    assert due is not None
    while time.time() < due + 0.5:
        time.sleep(0.2)
    return job


def test_the_deadline_acts_at_the_next_poll_that_may_send_not_at_a_sidebar_check(tmp_path):
    from nbbatch._ledger import default as ledger
    from nbbatch.labext import views

    with emulator.start(processing_seconds=600) as emu:
        job = _past_its_deadline(emu)  # no session polls the job as its deadline passes
        # The sidebar's check (as its "check now") collects what ended but never sends.
        views.refresh(ledger(), job.id)
        assert emu.stats()["realtime_requests"] == 0
        assert job.counts["pending"] == 5
        # The next poll that may send, from any process, acts on the deadline.
        run = run_cli("collect", job.id, "--wait", "--out", str(tmp_path / "out.csv"))
        assert run.returncode == 0, run.stderr
        assert emu.stats()["realtime_requests"] == 5
        assert nb.attach(job.id).counts["realtime"] == 5


def test_cancelling_or_forgetting_a_job_past_its_deadline_sends_nothing():
    with emulator.start(processing_seconds=600) as emu:
        job = _past_its_deadline(emu)
        # forget() looks at which batches are open without sending, and refuses.
        with pytest.raises(nb.NbbatchError, match="call job.cancel"):
            job.forget()
        assert emu.stats()["realtime_requests"] == 0
        # `nbbatch cancel` cancels; it does not first pay for the rows past the deadline.
        run = run_cli("cancel", job.id)
        assert run.returncode == 0, run.stderr
        assert emu.stats()["realtime_requests"] == 0
        from nbbatch._ledger import default as ledger

        assert ledger().job_status(job.id) == "cancelled"


def test_the_session_that_submitted_the_job_acts_when_the_deadline_arrives():
    import time

    with emulator.start(processing_seconds=600) as emu:
        # No wait(), no panel (not a notebook): the session polls it in the background.
        job = nb.submit(_frame(5), PROMPT, model="o4-mini", client=openai_client(emu),
                        deadline=dt.timedelta(seconds=1), on_deadline="realtime")  # fmt: skip
        waited = time.monotonic() + 120
        while emu.stats()["realtime_requests"] < 5 and time.monotonic() < waited:
            time.sleep(0.1)  # nothing here looks at the job
        assert emu.stats()["realtime_requests"] == 5
        job.wait(timeout=60, progress=False)
        assert job.counts["realtime"] == 5 and job.counts["succeeded"] == 5


def test_a_long_poll_interval_still_polls_as_the_deadline_arrives(slow):
    client = anthropic_client(slow)
    job = nb.submit(_frame(4), PROMPT, model="claude-haiku-4-5", client=client,
                    deadline=dt.timedelta(seconds=2), on_deadline="realtime")  # fmt: skip
    job.stop_polling()
    # Polls ten minutes apart: the one after the submit's would come long after the
    # deadline, and wait() would give up at once; it is moved to the deadline instead,
    # and that poll cancels the batch, collects it and sends the rows.
    job.polling = nb.PollPolicy(first=600, most=600)
    job.wait(timeout=120, progress=False)
    assert job.counts["realtime"] == 4 and job.counts["succeeded"] == 4
