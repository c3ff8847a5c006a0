"""OpenAI flex processing in the emulator: ``service_tier="flex"`` real-time requests
are answered as flex, later, and some are refused with 429 Resource Unavailable."""

from __future__ import annotations

import openai
import pytest
from emu_helpers import openai_client

from nbbatch import emulator

MESSAGES = [{"role": "user", "content": "hello"}]


def test_flex_requests_are_answered_as_flex() -> None:
    with emulator.start() as emu, openai_client(emu) as client:
        chat = client.chat.completions.create(
            model="o4-mini", messages=MESSAGES, service_tier="flex"
        )  # type: ignore[call-overload]
        assert chat.service_tier == "flex"
        assert chat.choices[0].message.content == emulator.echo_text("hello")
        response = client.responses.create(model="o4-mini", input="hello", service_tier="flex")
        assert response.service_tier == "flex"
        plain = client.chat.completions.create(model="o4-mini", messages=MESSAGES)  # type: ignore[call-overload]
        assert plain.service_tier == "default"


def test_flex_capacity_refusals_are_429_and_a_retry_gets_through() -> None:
    with emulator.start(flex_unavailable_rate=1.0) as emu:
        with openai_client(emu, max_retries=0) as client:
            with pytest.raises(openai.RateLimitError) as caught:
                client.chat.completions.create(
                    model="o4-mini", messages=MESSAGES, service_tier="flex"
                )  # type: ignore[call-overload]
            assert caught.value.status_code == 429
            assert "Resource Unavailable" in str(caught.value)
            # Requests without flex are never refused for it.
            client.chat.completions.create(model="o4-mini", messages=MESSAGES)  # type: ignore[call-overload]
        with openai_client(emu) as client:  # the SDK's two retries: never three in a row
            chat = client.chat.completions.create(
                model="o4-mini", messages=MESSAGES, service_tier="flex"
            )  # type: ignore[call-overload]
            assert chat.service_tier == "flex"


def test_flex_latency_can_outlast_a_client_timeout() -> None:
    with emulator.start(flex_latency_seconds=2.0) as emu:
        with openai_client(emu, max_retries=0, timeout=0.2) as client:
            with pytest.raises(openai.APITimeoutError):
                client.chat.completions.create(
                    model="o4-mini", messages=MESSAGES, service_tier="flex"
                )  # type: ignore[call-overload]
            client.chat.completions.create(model="o4-mini", messages=MESSAGES)  # type: ignore[call-overload]


def test_flex_knobs_are_checked() -> None:
    with pytest.raises(ValueError, match="flex_unavailable_rate must be between 0 and 1"):
        emulator.start(flex_unavailable_rate=2.0)
