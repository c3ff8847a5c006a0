"""Validate JSON bodies against the OpenAI OpenAPI subset (recipe from openai-openapi-subset.md).

Optional properties are made nullable first, because the live API sends ``null`` for
unset optional fields while the document types them as plain strings/integers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import referencing.jsonschema
from referencing import Registry, Resource

SUBSET = Path(
    os.environ.get("NBBATCH_OPENAPI_SUBSET", "/work/shared/reference/openai-openapi-subset.json")
)
_LOCAL_COPY = Path(__file__).with_name("openai-openapi-subset.json")


def optional_nullable(s: Any) -> Any:
    if isinstance(s, list):
        return [optional_nullable(v) for v in s]
    if not isinstance(s, dict):
        return s
    s = {k: optional_nullable(v) for k, v in s.items()}
    if isinstance(s.get("properties"), dict):
        required = set(s.get("required", []))
        s["properties"] = {
            k: v if k in required else {"anyOf": [v, {"type": "null"}]}
            for k, v in s["properties"].items()
        }
    return s


def _load() -> Registry:
    path = _LOCAL_COPY if _LOCAL_COPY.exists() else SUBSET
    doc = optional_nullable(json.loads(path.read_text()))
    return Registry().with_resource(
        "urn:openai",
        Resource.from_contents(doc, default_specification=referencing.jsonschema.DRAFT202012),
    )


_REGISTRY = _load()


def errors(schema_name: str, body: Any) -> list[str]:
    """Messages of every violation of ``components/schemas/<schema_name>`` by ``body``."""
    ref = {"$ref": f"urn:openai#/components/schemas/{schema_name}"}
    validator = jsonschema.Draft202012Validator(ref, registry=_REGISTRY)
    return [e.message for e in validator.iter_errors(body)]


def check(schema_name: str, body: Any) -> None:
    """Assert that ``body`` is a valid ``schema_name``."""
    problems = errors(schema_name, body)
    assert not problems, f"{schema_name} invalid: {problems}\n{json.dumps(body)[:2000]}"
