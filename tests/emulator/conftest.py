"""Shared fixtures for the emulator tests: emulators, strict SDK clients, a fake clock."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import openai
import pytest
from emu_helpers import anthropic_client, openai_client

from nbbatch import emulator


class FakeClock:
    """A clock the test moves by hand: ``clock.advance(5)``."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture(scope="module")
def emu() -> Iterator[emulator.Emulator]:
    """A fast emulator shared by a test module (no shuffle surprises: shuffle is on)."""
    with emulator.start(processing_seconds=0.05) as e:
        yield e


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def clocked(clock: FakeClock) -> Iterator[emulator.Emulator]:
    """An emulator whose time only moves when the test advances ``clock``."""
    with emulator.start(
        clock=clock, validating_seconds=1, processing_seconds=10, finalizing_seconds=1
    ) as e:
        yield e


@pytest.fixture
def oai(emu: emulator.Emulator) -> Iterator[openai.OpenAI]:
    with openai_client(emu) as client:
        yield client


@pytest.fixture
def ant(emu: emulator.Emulator) -> Iterator[anthropic.Anthropic]:
    with anthropic_client(emu) as client:
        yield client
