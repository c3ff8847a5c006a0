"""The responder: echo format, schema-shaped replies, emulator object basics."""

from __future__ import annotations

import json
import socket
from enum import StrEnum
from typing import Literal

import jsonschema
import openai
import pydantic
import pytest
from emu_helpers import openai_client

from nbbatch import emulator
from nbbatch.emulator import _responder


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Address(pydantic.BaseModel):
    street: str
    number: int = pydantic.Field(ge=1, le=999)


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=10)
    age: int = pydantic.Field(ge=0, lt=130)
    height: float = pydantic.Field(gt=0, le=2.5)
    colour: Colour
    kind: Literal["a", "b"]
    home: Address
    others: list[Address]
    nickname: str | None = None
    tags: list[str] = pydantic.Field(min_length=1, max_length=3)
    active: bool


def test_echo_text() -> None:
    assert emulator.echo_text("hi") == "[nbbatch emulator] echo: hi"


@pytest.mark.parametrize("prompt", ["hello world", "", "x" * 100, 'emoji 🎉 "quotes"'])
def test_pydantic_schema_with_defs(prompt: str) -> None:
    schema = Person.model_json_schema()
    assert "$defs" in schema
    value = _responder.schema_instance(schema, prompt)
    jsonschema.validate(value, schema)
    Person.model_validate(value)
    assert value == _responder.schema_instance(schema, prompt)  # deterministic


def test_invalid_instance_is_invalid() -> None:
    schema = Person.model_json_schema()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_responder.invalid_instance(schema, "p"), schema)
    closed = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "additionalProperties": False,
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_responder.invalid_instance(closed, "p"), closed)
    for simple in ({"type": "string"}, {"type": "array", "items": {"type": "integer"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(_responder.invalid_instance(simple, "p"), simple)


def test_enums_vary_with_prompt() -> None:
    schema = {"type": "string", "enum": ["a", "b", "c", "d"]}
    values = {_responder.schema_instance(schema, f"p{i}") for i in range(40)}
    assert values == {"a", "b", "c", "d"}


def test_strings_carry_a_snippet() -> None:
    value = _responder.schema_instance(
        {"type": "object", "properties": {"s": {"type": "string"}}},
        "The quick brown fox jumps over the lazy dog again",
    )
    assert value == {"s": "The quick brown fox jumps over the lazy "}


def test_chat_json_schema_and_json_object(emu: emulator.Emulator, oai: openai.OpenAI) -> None:
    # Not strict: strict mode refuses this schema (optional fields, open objects), as the
    # service does.
    schema = Person.model_json_schema()
    reply = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Describe Ann"}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "Person", "schema": schema, "strict": False},
        },
    )
    Person.model_validate_json(reply.choices[0].message.content or "")
    reply = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "x in json"}],  # json_object needs the word
        response_format={"type": "json_object"},
    )
    content = reply.choices[0].message.content or ""
    assert json.loads(content) == {"reply": emulator.echo_text("x in json")}
    resp = oai.responses.create(
        model="gpt-4o-mini",
        input=[{"role": "user", "content": "Describe Bob"}],
        text={
            "format": {"type": "json_schema", "name": "Person", "schema": schema, "strict": False}
        },
    )
    Person.model_validate_json(resp.output_text)


def test_several_emulators_and_stop(emu: emulator.Emulator) -> None:
    with emulator.start() as other:
        assert other.url != emu.url
        assert other.openai_base_url == other.url + "/v1" and other.anthropic_base_url == other.url
        with openai_client(other) as client:
            client.batches.list()
        assert other.stats()["requests"] == 1 and other.request_log == [("GET", "/v1/batches")]
        other.clear_log()
        assert other.request_log == []
    other.stop()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", other.port), timeout=1).close()


def test_shared_is_reused() -> None:
    first = emulator.shared()
    assert emulator.shared() is first
    assert first.knobs.processing_seconds == 3.0


def test_command_line_serves_until_ctrl_c() -> None:
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "nbbatch.emulator", "--processing-seconds", "0.1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        url = first.rsplit(" ", 1)[-1].strip()
        assert url.startswith("http://127.0.0.1:")
        with openai.OpenAI(base_url=url + "/v1", api_key="k") as client:
            assert client.batches.list().data == []
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        if proc.stdout:
            proc.stdout.close()
        proc.wait()
