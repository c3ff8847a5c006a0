"""Structured output: schemas made strict, replies parsed and validated, fields as columns.

Replies come from the emulator through the official SDKs over HTTP, on both providers.
"""

from __future__ import annotations

import sys
import time

import anthropic
import orjson
import pyarrow as pa
import pytest
from pydantic import BaseModel, Field

from nbbatch import InputError, emulator
from nbbatch import _realtime as realtime
from nbbatch import _structured as st
from nbbatch.providers import build, infer
from nbbatch.providers.base import RequestSpec

from .conftest import client_for, model_for


class Address(BaseModel):
    city: str
    zip: str | None = None


class Review(BaseModel):
    sentiment: str
    stars: int
    address: Address = Field(description="where the reviewer lives")
    previous: Address | None = None
    tags: list[str]
    note: str | None = None


DICT_SCHEMA = {
    "title": "Extraction",
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "company": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "size": {"type": "integer"}},
            "required": ["name"],
        },
        "emails": {"type": "array", "items": {"type": "string"}},
        "owner": {"$ref": "#/$defs/Person"},
    },
    "required": ["name", "company", "emails", "owner"],
    "$defs": {
        "Person": {
            "type": "object",
            "properties": {"first": {"type": "string"}, "last": {"type": "string"}},
            "required": ["first", "last"],
        }
    },
}


def _objects(node, found=None):
    """Every object schema inside ``node``."""
    found = [] if found is None else found
    if isinstance(node, dict):
        if "properties" in node:
            found.append(node)
        for value in node.values():
            _objects(value, found)
    elif isinstance(node, list):
        for value in node:
            _objects(value, found)
    return found


# ------------------------------------------------------------------------ response_format


def test_pydantic_model_becomes_strict_response_format():
    rf = st.response_format(Review)
    assert rf["type"] == "json_schema"
    assert rf["json_schema"]["name"] == "Review"
    assert rf["json_schema"]["strict"] is True
    schema = st.schema_of(rf)
    # Every object: no extra properties, every property required.
    for obj in _objects(schema):
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj["properties"])
    # $defs/$ref kept; the optional field is nullable; the described $ref inlined.
    assert "Address" in schema["$defs"]
    assert schema["properties"]["previous"]["anyOf"] == [
        {"$ref": "#/$defs/Address"},
        {"type": "null"},
    ]
    assert schema["properties"]["address"]["properties"]["city"] == {
        "title": "City",
        "type": "string",
    }
    assert {"type": "null"} in schema["$defs"]["Address"]["properties"]["zip"]["anyOf"]
    assert "default" not in schema["properties"]["note"]
    # The model's own schema is untouched.
    assert "additionalProperties" not in Review.model_json_schema()


def test_dict_schema_and_wrapped_form():
    rf = st.response_format(DICT_SCHEMA)
    assert rf["json_schema"]["name"] == "Extraction"
    schema = st.schema_of(rf)
    company = schema["properties"]["company"]
    assert company["required"] == ["name", "size"]
    assert company["properties"]["size"] == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert schema["$defs"]["Person"]["additionalProperties"] is False
    assert "additionalProperties" not in DICT_SCHEMA["properties"]["company"]  # not mutated
    # Already wrapped: accepted as is, and idempotent.
    assert st.response_format(rf) == rf
    wrapped = {"type": "json_schema", "json_schema": {"name": "x y!", "schema": DICT_SCHEMA}}
    assert st.response_format(wrapped)["json_schema"]["name"] == "x_y_"


@pytest.mark.parametrize(
    "bad, words",
    [
        (42, "pydantic model class or a JSON schema"),
        (Address(city="x"), "pass the class itself"),
        ({"type": "json_object"}, "gives no schema"),
        ({"type": "string"}, "must describe a JSON object"),
        ({"type": "object", "properties": {}}, "no properties"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "no 'schema'"),
        (
            {"type": "object", "properties": {"d": {"type": "object"}}},
            "without declared properties",
        ),
    ],
)
def test_unusable_response_formats_are_input_errors(bad, words):
    with pytest.raises(InputError, match=words):
        st.response_format(bad)


def test_free_form_dict_field_is_refused():
    class Counts(BaseModel):
        counts: dict[str, int]

    with pytest.raises(InputError, match="extra properties|without declared"):
        st.response_format(Counts)


# ------------------------------------------------------------------------------- columns


def test_columns_flatten_nested_objects_and_keep_lists():
    names = [
        "sentiment",
        "stars",
        "address.city",
        "address.zip",
        "previous.city",
        "previous.zip",
        "tags",
        "note",
    ]
    assert st.columns_of(Review.model_json_schema()) == names
    assert st.columns_of(st.schema_of(st.response_format(Review))) == names
    assert st.columns_of(DICT_SCHEMA) == [
        "name",
        "company.name",
        "company.size",
        "emails",
        "owner.first",
        "owner.last",
    ]
    values = [
        {
            "sentiment": "good",
            "stars": 5,
            "address": {"city": "Oslo", "zip": None},
            "previous": None,
            "tags": ["a", "b"],
            "note": None,
        },
        None,
    ]
    cols = st.to_columns(values, Review.model_json_schema())
    assert list(cols) == names
    assert cols["address.city"] == ["Oslo", None]
    assert cols["previous.city"] == [None, None]
    assert cols["tags"] == [["a", "b"], None]
    assert all(len(c) == 2 for c in cols.values())


def test_recursive_model_stops_flattening():
    class Node(BaseModel):
        name: str
        parent: Node | None = None
        children: list[Node] = []

    # pydantic's schema: the root is a $ref to Node, so parent refers back at once.
    assert st.columns_of(Node.model_json_schema()) == ["name", "parent", "children"]
    # The strict form inlines the root (it must be an object), so parent flattens once
    # and stops where Node repeats. Lists of Node are always one column.
    rf = st.response_format(Node)
    assert st.columns_of(st.schema_of(rf)) == [
        "name",
        "parent.name",
        "parent.parent",
        "parent.children",
        "children",
    ]


# ----------------------------------------------------------------------------- parsing


def test_parse_outputs_reports_each_kind_of_invalid_reply():
    schema = st.schema_of(st.response_format(DICT_SCHEMA))
    good = {
        "name": "Ada",
        "company": {"name": "ACME", "size": None},
        "emails": [],
        "owner": {"first": "A", "last": "L"},
    }
    missing = {k: v for k, v in good.items() if k != "owner"}
    wrong = {**good, "owner": {"first": "A", "last": 3}}
    texts = [
        orjson.dumps(good).decode(),
        orjson.dumps(missing).decode(),
        orjson.dumps(wrong).decode(),
        '{"name": "Ad',
        None,
        orjson.dumps(good).decode(),
    ]
    parsed = st.parse_outputs(texts, schema, truncated=[False, False, False, True, False, True])
    assert parsed.ok == [True, False, False, False, False, False]
    assert parsed.values[0] == good
    assert parsed.values[1:] == [None] * 5
    assert parsed.errors[0] is None
    assert parsed.errors[1] == (
        "invalid_output: reply does not match the schema: 'owner' is a required property"
    )
    assert parsed.errors[2] == (
        "invalid_output: reply does not match the schema: 3 is not of type 'string' (at owner.last)"
    )
    assert parsed.errors[3].startswith("invalid_output: reply was cut off at max_tokens")
    assert parsed.errors[4] == "invalid_output: the reply has no text"
    assert parsed.errors[5].startswith("invalid_output: reply was cut off")
    assert parsed.n_invalid == 5
    # Not JSON at all, without the truncation flag.
    assert (
        st.parse_outputs(["nope"], schema)
        .errors[0]
        .startswith("invalid_output: reply is not valid JSON: ")
    )


def _review_texts(n: int) -> list[str]:
    return [
        orjson.dumps(
            {
                "sentiment": f"ok {i}",
                "stars": i % 5,
                "address": {"city": "x", "zip": None},
                "previous": None if i % 2 else {"city": "y", "zip": "1"},
                "tags": ["t"] * (i % 3),
                "note": None,
            }
        ).decode()
        for i in range(n)
    ]


def test_parse_outputs_is_fast_enough_for_many_rows():
    schema = st.schema_of(st.response_format(Review))
    texts = _review_texts(20_000)  # all different: each is validated
    start = time.perf_counter()
    parsed = st.parse_outputs(texts, schema)
    elapsed = time.perf_counter() - start
    assert all(parsed.ok)
    assert elapsed < 10  # about 0.2 s with fastjsonschema here; guards against blow-ups


@pytest.mark.parametrize("fast", [True, False], ids=["fastjsonschema", "jsonschema-only"])
def test_both_validation_paths_agree(monkeypatch, fast):
    """Without fastjsonschema, jsonschema alone gives the same verdicts and messages,
    and neither writes schema defaults into the values."""
    monkeypatch.setattr(st, "_VALIDATORS", {})
    if not fast:
        monkeypatch.setitem(sys.modules, "fastjsonschema", None)  # import fails
    schema = st.schema_of(st.response_format(Review))
    assert (st._validators(schema)[1] is not None) is fast
    good = _review_texts(3)
    bad = good[0].replace('"stars":0', '"stars":"zero"')
    parsed = st.parse_outputs([*good, bad], schema)
    assert parsed.ok == [True, True, True, False]
    assert parsed.errors[3] == (
        "invalid_output: reply does not match the schema: 'zero' is not of type 'integer' "
        "(at stars)"
    )
    assert parsed.values[0] == orjson.loads(good[0])


def test_remote_refs_are_never_fetched(monkeypatch):
    """A schema with a remote $ref is refused up front: resolving it means fetching it."""
    monkeypatch.setattr(st, "_VALIDATORS", {})
    schema = {
        "type": "object",
        "properties": {"a": {"$ref": "https://example.invalid/a.json"}},
        "required": ["a"],
    }
    with pytest.raises(InputError, match="another document"):
        st.response_format(schema)
    with pytest.raises(InputError, match="another document"):
        st.parse_outputs(['{"a": 1}'], schema)


# ------------------------------------------------------- through the SDKs to the emulator


def _provider(client):
    name, _ = infer(None, client, model_for(client))
    return build(name, client)


@pytest.mark.parametrize("fmt", [Review, DICT_SCHEMA], ids=["pydantic", "dict"])
def test_emulator_replies_validate_into_columns(client, fmt):
    rf = st.response_format(fmt)
    schema = st.schema_of(rf)
    provider = _provider(client)
    spec = RequestSpec(
        model=model_for(client), endpoint=provider.default_endpoint, response_format=rf
    )
    prompts = [f"Review {i}: the soup was {'good' if i % 2 else 'cold'}" for i in range(6)]
    table = realtime.run(
        provider,
        pa.array([f"r{i}" for i in range(6)]),
        pa.array(prompts),
        spec,
        with_truncated=True,
    )
    assert table.column("status").to_pylist() == ["succeeded"] * 6
    parsed = st.parse_outputs(
        table.column("output").to_pylist(), schema, table.column("truncated").to_pylist()
    )
    assert parsed.ok == [True] * 6, parsed.errors
    columns = st.to_columns(parsed.values, schema)
    assert list(columns) == st.columns_of(schema)
    first = columns[st.columns_of(schema)[0]]
    assert all(isinstance(v, str) for v in first)
    list_col = "tags" if fmt is Review else "emails"
    assert all(isinstance(v, list) for v in columns[list_col])


def test_responses_api_structured_output_validates(oai):
    rf = st.response_format(Review)
    provider = build("openai", oai)
    spec = RequestSpec(model="gpt-4o-mini", endpoint="/v1/responses", response_format=rf)
    table = realtime.run(provider, pa.array(["a", "b"]), pa.array(["x", "y"]), spec)
    parsed = st.parse_outputs(table.column("output").to_pylist(), st.schema_of(rf))
    assert parsed.ok == [True, True], parsed.errors


def test_request_shapes_follow_each_sdk(emu):
    """The one response_format becomes each API's own structured-output parameter."""
    rf = st.response_format(Review)
    schema = st.schema_of(rf)
    oai = build("openai", client_for("openai", emu))
    claude = build("anthropic", client_for("anthropic", emu))

    chat = oai.body(RequestSpec("gpt-4o-mini", "/v1/chat/completions", response_format=rf), "p")
    assert chat["response_format"] == rf  # openai ResponseFormatJSONSchema
    resp = oai.body(RequestSpec("gpt-4o-mini", "/v1/responses", response_format=rf), "p")
    # openai ResponseFormatTextJSONSchemaConfigParam
    assert resp["text"]["format"] == {
        "type": "json_schema",
        "name": "Review",
        "schema": schema,
        "strict": True,
    }
    spec = RequestSpec("claude-haiku-4-5", "/v1/messages", response_format=rf)
    fmt = claude.params(spec, "p")["output_config"]["format"]  # anthropic JSONOutputFormatParam
    assert fmt == {"type": "json_schema", "schema": anthropic.transform_schema(schema)}
    bad = RequestSpec("claude-haiku-4-5", "/v1/messages", response_format={"type": "json_object"})
    with pytest.raises(InputError, match="JSON schema only"):
        claude.params(bad, "p")


def test_anthropic_schema_drops_unsupported_keywords_into_descriptions():
    class Scored(BaseModel):
        label: str
        confidence: float = Field(ge=0, le=1)

    from nbbatch.providers.anthropic import _output_format

    fmt = _output_format(st.response_format(Scored))
    conf = fmt["schema"]["properties"]["confidence"]
    assert "minimum" not in conf and "maximum" not in conf
    assert "minimum: 0" in conf["description"]


# ------------------------------------------------------- invalid and truncated, batch path


def _run_batch(server, provider_name, rf, prompts, **spec_kw):
    """Send one batch straight through a provider and return (results, truncated)."""
    client = client_for(provider_name, server)
    provider = build(provider_name, client)
    spec = RequestSpec(
        model=model_for(client),
        endpoint=provider.default_endpoint,
        response_format=rf,
        **spec_kw,
    )
    ids = pa.array([f"row-{i}" for i in range(len(prompts))])
    info = provider.create(
        provider.encode(ids, pa.array(prompts), spec), spec, {"nbbatch_job": "t"}
    )
    deadline = time.monotonic() + 30
    while not info.ended:
        assert time.monotonic() < deadline, "batch did not end"
        time.sleep(0.05)
        info = provider.retrieve(info.batch_id)
    raws = provider.fetch_results(info)
    results = pa.concat_tables([provider.parse_results(r, spec) for r in raws])
    cut = pa.concat_tables([provider.truncated(r, spec) for r in raws])
    assert cut.column("custom_id").to_pylist() == results.column("custom_id").to_pylist()
    return results, cut.column("truncated").to_pylist()


@pytest.mark.parametrize("provider_name", ["openai", "anthropic"])
def test_invalid_replies_are_caught(provider_name):
    rf = st.response_format(DICT_SCHEMA)
    with emulator.start(processing_seconds=0.05, invalid_output_rate=1.0) as server:
        results, cut = _run_batch(server, provider_name, rf, ["one", "two", "three"])
    assert results.column("status").to_pylist() == ["succeeded"] * 3
    parsed = st.parse_outputs(results.column("output").to_pylist(), st.schema_of(rf), cut)
    assert parsed.ok == [False] * 3
    assert all(
        e.startswith("invalid_output: reply does not match the schema") for e in parsed.errors
    )


@pytest.mark.parametrize("provider_name", ["openai", "anthropic"])
def test_truncated_replies_are_caught(provider_name):
    rf = st.response_format(DICT_SCHEMA)
    with emulator.start(processing_seconds=0.05, truncate_rate=1.0) as server:
        results, cut = _run_batch(server, provider_name, rf, ["one", "two"])
    assert cut == [True, True]
    parsed = st.parse_outputs(results.column("output").to_pylist(), st.schema_of(rf), cut)
    assert parsed.ok == [False, False]
    assert all("cut off at max_tokens" in e for e in parsed.errors)


def test_truncation_in_real_time_is_flagged(client):
    rf = st.response_format(DICT_SCHEMA)
    provider = _provider(client)
    spec = RequestSpec(
        model=model_for(client),
        endpoint=provider.default_endpoint,
        response_format=rf,
        max_tokens=3,
    )
    table = realtime.run(provider, pa.array(["a"]), pa.array(["hello"]), spec, with_truncated=True)
    assert table.column("truncated").to_pylist() == [True]
    parsed = st.parse_outputs(
        table.column("output").to_pylist(), st.schema_of(rf), table.column("truncated").to_pylist()
    )
    assert parsed.errors == ["invalid_output: reply was cut off at max_tokens (raise max_tokens)"]
