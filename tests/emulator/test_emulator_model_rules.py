"""Per-model rules: what one model refuses though the request schema allows it, refused
by the emulator with the service's error, per line, in batches and real-time calls."""

from __future__ import annotations

import anthropic
import openai
import pytest
from emu_helpers import chat_line, run_message_batch
from test_emulator_fidelity import msg, openai_batch

from nbbatch import emulator


def _chat(oai: openai.OpenAI, model: str, **kw: object) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        oai.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hi"}],
            **kw,  # type: ignore[arg-type]
        )
    return info.value


def test_reasoning_models_refuse_max_tokens(oai: openai.OpenAI) -> None:
    for model in ("o3", "o4-mini-2025-04-16", "gpt-5-mini", "gpt-5.1"):
        err = _chat(oai, model, max_tokens=100)
        assert (err.code, err.param) == ("unsupported_parameter", "max_tokens")
        assert "max_completion_tokens" in err.message
        ok = oai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=100
        )
        assert ok.choices[0].message.content
    # Models that are not reasoning models still take max_tokens.
    for model in ("gpt-4o-mini", "gpt-4.1", "gpt-5-chat-latest"):
        oai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=100
        )


def test_reasoning_max_tokens_fails_its_batch_line_alone(oai: openai.OpenAI) -> None:
    rows = [
        chat_line("bad", "hi", model="o3", max_tokens=50),
        chat_line("good", "hi", model="o3", max_completion_tokens=50),
    ]
    _, out, err = openai_batch(oai, rows)
    assert out["good"]["response"]["status_code"] == 200
    body = err["bad"]["response"]["body"]["error"]
    assert (body["code"], body["param"], body["type"]) == (
        "unsupported_parameter",
        "max_tokens",
        "invalid_request_error",
    )


def test_gpt5_refuses_a_temperature_other_than_the_default(oai: openai.OpenAI) -> None:
    err = _chat(oai, "gpt-5-2025-08-07", temperature=0.2)
    assert (err.code, err.param) == ("unsupported_value", "temperature")
    assert "Only the default (1) value is supported" in err.message
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(model="gpt-5-nano", input="hi", temperature=0)
    assert info.value.code == "unsupported_value"
    # The default is accepted, and so are other models' temperatures.
    oai.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "hi"}], temperature=1
    )
    oai.chat.completions.create(
        model="gpt-4.1", messages=[{"role": "user", "content": "hi"}], temperature=0.2
    )
    # gpt-5.1 takes a temperature while reasoning is off, its default, not with it on.
    oai.chat.completions.create(
        model="gpt-5.1", messages=[{"role": "user", "content": "hi"}], temperature=0.2
    )
    err = _chat(oai, "gpt-5.1", temperature=0.2, reasoning_effort="high")
    assert err.code == "unsupported_value"
    # The o-series: o3 as GPT-5, o3-mini refusing the parameter itself.
    assert _chat(oai, "o3", temperature=0.2).code == "unsupported_value"
    err = _chat(oai, "o3-mini-2025-01-31", temperature=0.2)
    assert (err.code, err.param) == ("unsupported_parameter", "temperature")


def test_openai_refuses_more_output_tokens_than_the_model_has(oai: openai.OpenAI) -> None:
    err = _chat(oai, "gpt-4o-mini", max_tokens=16_385)
    assert err.param == "max_tokens" and err.code is None
    assert "supports at most 16384 completion tokens" in err.message
    err = _chat(oai, "o3", max_completion_tokens=100_001)
    assert err.param == "max_completion_tokens"
    oai.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=16_384
    )


def test_claude_refuses_more_output_tokens_than_the_model_has(
    emu: emulator.Emulator, ant: anthropic.Anthropic
) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        ant.messages.create(
            model="claude-sonnet-4-20250514",
            max_tokens=64_001,
            messages=[{"role": "user", "content": "hi"}],
            timeout=30,  # else the SDK asks for streaming before sending
        )
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert info.value.body["error"]["message"] == (  # type: ignore[index]
        "max_tokens: 64001 > 64000, which is the maximum allowed number of output tokens "
        "for claude-sonnet-4-20250514"
    )
    results = run_message_batch(
        ant,
        [
            msg("over", model="claude-opus-4-1", max_tokens=32_001),
            msg("at", model="claude-opus-4-1", max_tokens=32_000),
        ],
    )
    assert results["at"].type == "succeeded"
    assert results["over"].type == "errored"
    assert "32000" in results["over"].error.error.message  # type: ignore[union-attr]


def test_models_of_ones_own_have_no_per_model_rules() -> None:
    with emulator.start(models=["o3-like-acme"]) as emu:
        client = openai.OpenAI(base_url=emu.openai_base_url, api_key="k")
        with client:
            client.chat.completions.create(
                model="o3-like-acme",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=10**6,
                temperature=0.3,
            )
