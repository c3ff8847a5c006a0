"""Groq and Together in real time: ``nb.try_now`` and the real-time fallback through each
service's own SDK (``chat.completions.create``) over HTTP to the emulator's variant."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator

from .test_compat_providers import (  # noqa: F401  (_close: closes the clients made here)
    SERVICES,
    TOGETHER_MODEL,
    _close,
    client_of,
    model_of,
)

PROMPT = "Classify: {text}"


@pytest.fixture(scope="module")
def emu() -> Iterator[emulator.Emulator]:
    """An emulator of this module's own (its request log read by the tests)."""
    with emulator.start(processing_seconds=0.05) as server:
        yield server


@pytest.mark.parametrize("service", SERVICES)
def test_try_now_answers_through_the_services_chat_api(service, emu):
    emu.clear_log()
    df = pd.DataFrame({"text": ["good soup", f"bad {emulator.FAIL_MARKER}", "fine"]})
    out = nb.try_now(df, PROMPT, model=model_of(service), client=client_of(service, emu),
                     max_tokens=50)  # fmt: skip
    assert out["response_status"].tolist() == ["succeeded", "failed", "succeeded"]
    assert out["response"].iloc[0] == emulator.echo_text(PROMPT.format(text="good soup"))
    assert emulator.FAIL_MARKER in out["response_error"].iloc[1]
    # Through the variant's own chat route, never OpenAI's.
    prefix = "/groq/openai/v1/" if service == "groq" else "/together/v1/"
    sent = [path for _, path in emu.request_log]
    assert sent.count(prefix + "chat/completions") >= 3
    assert "/v1/chat/completions" not in sent


@pytest.mark.parametrize("service", SERVICES)
def test_a_model_the_service_does_not_serve_fails_that_row(service, emu):
    out = nb.try_now(pd.DataFrame({"text": ["x"]}), PROMPT, model="gpt-4o-mini",
                     provider=service, client=client_of(service, emu))  # fmt: skip
    assert out["response_status"].iloc[0] == "failed"
    assert "does not exist" in out["response_error"].iloc[0]


def test_together_real_time_sends_max_tokens(emu):
    """Together's chat API takes ``max_tokens``: the real-time body is the batch line's."""
    emu.clear_log()
    client = client_of("together", emu)
    out = nb.try_now(pd.DataFrame({"text": ["x" * 400]}), "{text}", model=TOGETHER_MODEL,
                     client=client, max_tokens=3)  # fmt: skip
    assert out["response_status"].iloc[0] == "succeeded"
    # Cut off at three tokens (about four characters each, as the emulator counts).
    assert len(out["response"].iloc[0]) <= 3 * 4


@pytest.mark.parametrize("service", SERVICES)
def test_the_real_time_fallback_finishes_the_job(service, emu):
    texts = [f"review {i}" for i in range(6)]
    texts[4] = f"review 4 {emulator.TRANSIENT_MARKER}"
    df = pd.DataFrame({"text": texts})
    job = nb.submit(df, PROMPT, model=model_of(service), client=client_of(service, emu),
                    retries=0, fallback="realtime", display=False)  # fmt: skip
    out = job.wait(timeout=120, progress=False).merge(df)
    assert (out["response_status"] == "succeeded").all()
    assert job.counts["realtime"] == 1
    assert job.cost.realtime is not None and job.cost.realtime > 0


@pytest.mark.slow
@pytest.mark.parametrize("service", SERVICES)
def test_on_deadline_realtime_sends_the_rows_through_the_services_chat_api(service):
    import datetime as dt

    with emulator.start(processing_seconds=600) as slow:
        df = pd.DataFrame({"text": [f"row {i}" for i in range(4)]})
        job = nb.submit(df, PROMPT, model=model_of(service), client=client_of(service, slow),
                        deadline=dt.timedelta(seconds=2), on_deadline="realtime",
                        display=False)  # fmt: skip
        job.wait(timeout=120, progress=False)
        assert job.counts["succeeded"] == 4 and job.counts["realtime"] == 4
        out = job.merge(df)
        assert out["response"].tolist() == [
            emulator.echo_text(PROMPT.format(text=t)) for t in df["text"]
        ]
