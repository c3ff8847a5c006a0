"""Forced tool calls: a request that makes the model call a tool (OpenAI ``tool_choice``
"required" or named, on chat and Responses; Gemini function-calling mode ``ANY``) is
answered with a call of that tool whose arguments follow its schema, as the services do
and as the emulator already did for Claude."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
from emu_helpers import chat_line
from google.genai import types as genai_types
from test_emulator_fidelity import gemini, openai_batch

from nbbatch import emulator

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
CHAT_TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "weather", "parameters": WEATHER}},
]


def test_chat_named_tool_choice_is_answered_with_that_call(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        tools=CHAT_TOOLS,
        tool_choice={"type": "function", "function": {"name": "weather"}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function"
    assert calls[0].function.name == "weather"  # type: ignore[union-attr]
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER)  # type: ignore[union-attr]


def test_chat_required_tool_choice_calls_a_tool_in_a_batch(oai: openai.OpenAI) -> None:
    rows = [
        chat_line("forced", "hi", tools=CHAT_TOOLS, tool_choice="required"),
        chat_line("free", "hi", tools=CHAT_TOOLS, tool_choice="auto"),
    ]
    _, out, _ = openai_batch(oai, rows)
    forced = out["forced"]["response"]["body"]["choices"][0]
    assert forced["finish_reason"] == "tool_calls"
    assert forced["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    free = out["free"]["response"]["body"]["choices"][0]
    assert free["finish_reason"] == "stop" and free["message"]["content"]


def test_responses_forced_function_call(oai: openai.OpenAI) -> None:
    tools: list[Any] = [{"type": "function", "name": "weather", "parameters": WEATHER}]
    for choice in ("required", {"type": "function", "name": "weather"}):
        resp = oai.responses.create(
            model="gpt-4.1-mini",
            input="weather in Oslo?",
            tools=tools,
            tool_choice=choice,  # type: ignore[arg-type]
        )
        assert [item.type for item in resp.output] == ["function_call"]
        call = resp.output[0]
        assert call.name == "weather" and call.call_id  # type: ignore[union-attr]
        jsonschema.validate(json.loads(call.arguments), WEATHER)  # type: ignore[union-attr]


def test_gemini_function_calling_mode_any(emu: emulator.Emulator) -> None:
    g = gemini(emu)
    decl = genai_types.FunctionDeclaration(name="weather", parameters_json_schema=WEATHER)
    config = genai_types.GenerateContentConfig(
        tools=[genai_types.Tool(function_declarations=[decl])],
        tool_config=genai_types.ToolConfig(
            function_calling_config=genai_types.FunctionCallingConfig(mode="ANY")
        ),
    )
    reply = g.models.generate_content(model="gemini-2.5-flash", contents="hi", config=config)
    calls = reply.function_calls or []
    assert len(calls) == 1 and calls[0].name == "weather"
    jsonschema.validate(calls[0].args, WEATHER)
    auto = genai_types.GenerateContentConfig(tools=[genai_types.Tool(function_declarations=[decl])])
    assert g.models.generate_content(model="gemini-2.5-flash", contents="hi", config=auto).text
