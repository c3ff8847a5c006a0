"""The deterministic local responder: what the emulator answers instead of a model.

It is honest about being a simulator. A plain text reply is exactly::

    "[nbbatch emulator] echo: " + <the text of the last user message>

(see :func:`echo_text`; the text of a message whose content is a list of blocks is the
text of its text blocks joined with ``"\\n"``). When a JSON schema is requested the reply
is a JSON document valid against that schema, built by :func:`schema_instance`: strings
carry the first 40 characters of the last user message, enums, numbers and booleans are
picked from a hash of that message, arrays have 1 or 2 items, ``$ref``/``$defs``,
``anyOf``/``oneOf`` (first non-null branch), ``allOf``, ``const``, ``required`` and
``additionalProperties: false`` are honoured. ``pattern`` is not.

Numbers are spread over their whole range (``minimum`` to ``maximum``) and enum values
picked by a hash of the message and the field's path, so over a few dozen rows every enum
value appears and a filter such as ``confidence < 0.7`` keeps some rows and not others.

A *responder* of one's own replaces all this for text and structured replies
(``nb.emulator.start(responder=fn)``): ``fn(request)`` gets a :class:`Request` and returns
the reply text (``str``) or the structured value (``dict``, sent as JSON). Faults still
apply on top of it (an ``error_rate`` row never reaches it; ``truncate_rate`` cuts its
reply). An exception in ``fn`` fails that row with a 400 ``invalid_request_error`` whose
message names it, so a bug in a test double is seen, not retried.
:func:`keyword_responder` builds a small one for labels.

Token counts are ``ceil(characters / 4)``: input over all prompt text, output over the
reply text. Embeddings are unit vectors drawn from a SHAKE-256 hash of the input text.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from . import _packed, _quality
from ._faults import Fate, int_hash
from ._models import DEFAULT_EMBEDDING_DIMENSIONS

ECHO_PREFIX = "[nbbatch emulator] echo: "
JSON_MODE_KEY = "reply"  # json_object mode (no schema) answers {"reply": echo_text(...)}
SNIPPET_CHARS = 40
_MAX_DEPTH = 6  # below this depth optional properties and array items are left out


def echo_text(prompt: str) -> str:
    """The exact text reply the emulator gives to a last user message ``prompt``."""
    return ECHO_PREFIX + prompt


def count_tokens(chars: int) -> int:
    """Token estimate for ``chars`` characters of text: ``ceil(chars / 4)``."""
    return -(-chars // 4)


@dataclass(frozen=True)
class Request:
    """One request as a responder sees it."""

    provider: str  # "openai", "anthropic" or "gemini"
    endpoint: str  # "/v1/chat/completions", "/v1/responses", "/v1/messages", ":generateContent"
    model: str
    prompt: str  # the text of the last user message
    system: str | None = None  # the system prompt (or instructions) as text, if any
    schema: Mapping[str, Any] | None = None  # the JSON schema asked for, if any
    body: Mapping[str, Any] = field(default_factory=dict, repr=False)  # the request as sent


#: ``fn(request) -> str | dict``: what a responder of one's own is.
Responder = Callable[[Request], "str | dict[str, Any]"]


class ResponderError(Exception):
    """A user's responder raised; the row fails with this message."""


def default_responder(request: Request) -> str | dict[str, Any]:
    """What the emulator answers without a responder of one's own: the echo, or a value
    valid against the schema (see the module docstring)."""
    if request.schema is not None:
        value = schema_instance(request.schema, request.prompt)
        return value if isinstance(value, dict) else orjson.dumps(value).decode()
    return echo_text(request.prompt)


def keyword_responder(
    labels: Mapping[str, Sequence[str]], *, default: str, field: str | None = None
) -> Responder:
    """A small stand-in for a classifier: the label whose keywords the prompt mentions
    most (whole words, any case; ties go to the label listed first), else ``default``.

    A plain-text request gets the label as its reply. A structured one gets the default
    responder's value with the label in ``field`` (default: every string property whose
    ``enum`` holds the label), and a ``confidence`` number property, when the schema has
    one, set from how many keywords matched (none: 0.35 to 0.6, spread by a hash of the
    prompt; one: 0.75; more: 0.9 and up), so low-confidence rows are the ambiguous ones.
    """
    patterns = {
        label: [re.compile(rf"\b{re.escape(w)}\b", re.IGNORECASE) for w in words]
        for label, words in labels.items()
    }

    def respond_with_keywords(request: Request) -> str | dict[str, Any]:
        hits = {
            label: sum(bool(p.search(request.prompt)) for p in ps) for label, ps in patterns.items()
        }
        best = max(hits, key=lambda k: hits[k]) if hits else default
        n = hits.get(best, 0)
        label = best if n else default
        if request.schema is None:
            return label
        value = schema_instance(request.schema, request.prompt)
        if not isinstance(value, dict):
            return orjson.dumps(value).decode()
        props = _Generator(request.schema, request.prompt).resolve(request.schema)
        for name, sub in (props.get("properties") or {}).items():
            sub = _Generator(request.schema, request.prompt).resolve(sub)
            if name == field or (field is None and label in (sub.get("enum") or ())):
                value[name] = label
            elif name == "confidence" and sub.get("type") in ("number", "integer"):
                spread = int_hash(request.prompt, "confidence") % 26 / 100
                value[name] = (
                    0.35 + spread if n == 0 else (0.75 if n == 1 else min(0.99, 0.85 + 0.05 * n))
                )
        return value

    # The allowed plain-text answers: a model of lower quality answers another of them.
    respond_with_keywords.labels = (*labels, default)  # type: ignore[attr-defined]
    return respond_with_keywords


@dataclass(frozen=True)
class Reply:
    """A reply before it is wrapped in a provider's wire shape."""

    text: str  # the reply text (the JSON text for structured replies)
    value: Any  # the structured value (a dict for tool calls), None for plain text
    finish: str  # "stop", "length" or "stop_sequence"
    stop_sequence: str | None
    output_tokens: int


def respond(
    prompt: str,
    *,
    fate: Fate = Fate.OK,
    schema: Mapping[str, Any] | None = None,
    json_mode: bool = False,
    max_tokens: int | None = None,
    stop: Sequence[str] = (),
    responder: Responder | None = None,
    request: Request | None = None,
) -> Reply:
    """Answer the last user message ``prompt``.

    ``schema`` asks for a JSON value valid against it (or deliberately invalid when
    ``fate`` is ``INVALID_OUTPUT``); ``json_mode`` for some JSON object; ``fate`` ``TRUNCATE``
    cuts the reply in half; ``max_tokens`` cuts it to ``4 * max_tokens`` characters.
    ``responder`` (with the ``request`` it is given) replaces the built-in answers;
    it raises :class:`ResponderError` when it fails.
    """
    # Per-model quality over the built-in answers: applied after each of them.
    builtin = responder if isinstance(responder, QualityResponder) and not responder.inner else None
    packed = None  # several rows in one request: each answered as if sent alone
    if schema is not None and fate != Fate.INVALID_OUTPUT:
        packed = _packed.answer(prompt, schema, lambda p, s: respond_item(p, s, responder, request))
    if packed is not None:
        value, text = packed, orjson.dumps(packed).decode()
    elif (
        responder is not None
        and builtin is None
        and request is not None
        and fate != Fate.INVALID_OUTPUT
    ):
        value, text = _users_answer(responder, request, schema is not None or json_mode)
    else:
        value, text = _builtin_answer(prompt, fate, schema, json_mode, builtin, request)
    return _finish(text, value, fate, max_tokens, stop)


def _users_answer(responder: Responder, request: Request, structured: bool) -> tuple[Any, str]:
    """(value, text) of the user's own responder: a str is the reply (its JSON value
    when ``structured``, None if it is not JSON), a dict a structured value."""
    try:
        answer = responder(request)
    except Exception as exc:
        raise ResponderError(
            f"the emulator's responder raised {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(answer, dict):
        return answer, orjson.dumps(answer).decode()
    if not isinstance(answer, str):
        raise ResponderError(
            f"the emulator's responder returned {type(answer).__name__}; "
            "it must return a str (the reply) or a dict (a structured value)"
        )
    value = None
    if structured:
        try:
            value = orjson.loads(answer)
        except orjson.JSONDecodeError:
            value = None
    return value, answer


def _builtin_answer(
    prompt: str,
    fate: Fate,
    schema: Mapping[str, Any] | None,
    json_mode: bool,
    builtin: QualityResponder | None,
    request: Request | None,
) -> tuple[Any, str]:
    """(value, text) of the built-in answers: an instance of ``schema`` (an invalid one
    for ``INVALID_OUTPUT``), a JSON-mode object, or the echo of the prompt; ``builtin``
    applies each model's quality to them."""
    if schema is not None:
        if fate == Fate.INVALID_OUTPUT:
            value = invalid_instance(schema, prompt)
        else:
            value = schema_instance(schema, prompt)
            if builtin is not None and request is not None:
                value = builtin.apply(replace(request, schema=schema), value)
        return value, orjson.dumps(value).decode()
    if json_mode:
        value = {JSON_MODE_KEY: echo_text(prompt)}
        if builtin is not None and request is not None:
            value = builtin.apply(request, value)
        return value, orjson.dumps(value).decode()
    text = echo_text(prompt)
    if builtin is not None and request is not None:
        text = builtin.apply(request, text)
    return None, text


def _finish(
    text: str, value: Any, fate: Fate, max_tokens: int | None, stop: Sequence[str]
) -> Reply:
    """The reply as sent: cut at its first stop sequence, in half for ``TRUNCATE``, and
    to ``max_tokens``; a reply cut for length has no structured value."""
    finish, stop_sequence = "stop", None
    hits = [(text.find(s), s) for s in stop if s and s in text]
    if hits:
        cut, stop_sequence = min(hits)
        text, finish = text[:cut], "stop_sequence"
    if fate == Fate.TRUNCATE:
        text, finish, stop_sequence = text[: len(text) // 2], "length", None
    output_tokens = max(1, count_tokens(len(text)))
    if max_tokens is not None and output_tokens > max_tokens:
        text, finish, stop_sequence = text[: max(0, max_tokens) * 4], "length", None
        output_tokens = max(0, max_tokens)
    if finish == "length":
        value = None  # a cut-short structured reply has no usable value
    return Reply(text, value, finish, stop_sequence, output_tokens)


def embedding_vector(text: str, dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS) -> list[float]:
    """A deterministic unit vector of ``dimensions`` floats for ``text``."""
    raw = hashlib.shake_256(text.encode("utf-8", "surrogatepass")).digest(2 * dimensions)
    ints = struct.unpack(f"<{dimensions}h", raw)
    norm = math.sqrt(sum(v * v for v in ints)) or 1.0
    return [v / norm for v in ints]


# --------------------------------------------------------------------------- schemas


def schema_instance(schema: Mapping[str, Any], prompt: str) -> Any:
    """A JSON value valid against ``schema``, derived deterministically from ``prompt``."""
    return _Generator(schema, prompt).value(schema, "$", 0)


def invalid_instance(schema: Mapping[str, Any], prompt: str) -> Any:
    """A JSON value that violates ``schema`` (best effort: ``{}`` accepts everything).

    For an object with required properties the first required one is left out; with
    ``additionalProperties: false`` an unexpected property is added; otherwise the value
    has the wrong JSON type.
    """
    gen = _Generator(schema, prompt)
    resolved = gen.resolve(schema)
    kind = gen.kind(resolved, 0)
    if kind == "object":
        valid = gen.value(resolved, "$", 0)
        required = [r for r in resolved.get("required", []) if r in valid]
        if required:
            del valid[required[0]]
            return valid
        if resolved.get("additionalProperties") is False:
            valid["nbbatch_emulator_unexpected"] = True
            return valid
        return ["nbbatch emulator: deliberately invalid output"]
    if kind == "array":
        return {"nbbatch_emulator": "deliberately invalid output"}
    return ["nbbatch emulator: deliberately invalid output"]


class _Generator:
    """Walks a JSON schema and builds a value valid against it."""

    def __init__(self, root: Mapping[str, Any], prompt: str) -> None:
        self.root = root
        self.prompt = prompt
        self.snippet = prompt[:SNIPPET_CHARS] or "nbbatch emulator"

    def lookup(self, ref: str) -> Mapping[str, Any]:
        """Follow a local ``$ref`` (``#/$defs/X``, ``#/definitions/X``, ``#``)."""
        if not ref.startswith("#"):
            raise ValueError(f"only local $ref are supported, got {ref!r}")
        node: Any = self.root
        for part in ref[1:].lstrip("/").split("/"):
            if part:
                node = node[part.replace("~1", "/").replace("~0", "~")]
        result: Mapping[str, Any] = node
        return result

    def resolve(self, schema: Any) -> Mapping[str, Any]:
        """Inline ``$ref`` and ``allOf`` so the result can be read directly."""
        if not isinstance(schema, Mapping):
            return {} if schema is True else {"not": {}}
        for _ in range(32):  # guards against a ref cycle without progress
            if "$ref" not in schema:
                break
            target = self.lookup(schema["$ref"])
            schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        if "allOf" in schema:
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self.resolve(part)
                for key, val in part.items():
                    if key == "properties":
                        merged["properties"] = {**merged.get("properties", {}), **val}
                    elif key == "required":
                        merged["required"] = [*merged.get("required", []), *val]
                    else:
                        merged.setdefault(key, val)
            schema = merged
        return schema

    def branch(self, schema: Mapping[str, Any], depth: int) -> Mapping[str, Any]:
        """Pick the branch of ``anyOf``/``oneOf`` to follow (first non-null one)."""
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [self.resolve(o) for o in schema[key]]
                rest = {k: v for k, v in schema.items() if k != key}
                non_null = [o for o in options if o.get("type") != "null"]
                if depth > _MAX_DEPTH and len(non_null) < len(options):
                    return {"type": "null"}
                chosen = non_null[0] if non_null else options[0]
                return self.branch(self.resolve({**rest, **chosen}), depth)
        return schema

    def kind(self, schema: Mapping[str, Any], depth: int) -> str:
        """The JSON type to produce for ``schema``."""
        kind = schema.get("type")
        if isinstance(kind, list):
            non_null = [k for k in kind if k != "null"]
            if not non_null or (depth > _MAX_DEPTH and "null" in kind):
                return "null"
            kind = non_null[0]
        if isinstance(kind, str):
            return kind
        if "properties" in schema or "required" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        return "string"

    def pick(self, path: str, n: int) -> int:
        """A deterministic index in range(n) for the value at ``path``."""
        return int_hash(self.prompt, path) % n

    def value(self, schema: Any, path: str, depth: int) -> Any:
        """Build the value for ``schema`` at JSON path ``path``."""
        schema = self.branch(self.resolve(schema), depth)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            options = [v for v in schema["enum"] if v is not None] or list(schema["enum"])
            return options[self.pick(path, len(options))]
        kind = self.kind(schema, depth)
        if kind == "object":
            return self.object(schema, path, depth)
        if kind == "array":
            return self.array(schema, path, depth)
        if kind == "string":
            return self.string(schema, path)
        if kind == "integer":
            return self.integer(schema, path)
        if kind == "number":
            return self.number(schema, path)
        if kind == "boolean":
            return self.pick(path, 2) == 0
        return None

    def object(self, schema: Mapping[str, Any], path: str, depth: int) -> dict[str, Any]:
        required = set(schema.get("required", []))
        out: dict[str, Any] = {}
        for name, sub in schema.get("properties", {}).items():
            if depth > _MAX_DEPTH and name not in required:
                continue
            out[name] = self.value(sub, f"{path}.{name}", depth + 1)
        for name in required - out.keys():  # required but not described: any string
            out[name] = self.snippet
        return out

    def array(self, schema: Mapping[str, Any], path: str, depth: int) -> list[Any]:
        prefix = list(schema.get("prefixItems", []))
        items = schema.get("items", {})
        low = int(schema.get("minItems", 0))
        high = int(schema.get("maxItems", max(low, 2)))
        count = low if depth > _MAX_DEPTH else 1 + self.pick(path + "#n", 2)
        count = max(low, min(high, max(count, len(prefix) if items is False else 0)))
        out: list[Any] = []
        for i in range(count):
            sub = prefix[i] if i < len(prefix) else items
            item = self.value(sub, f"{path}[{i}]", depth + 1)
            if schema.get("uniqueItems") and item in out:
                if len(out) >= low:
                    continue
                item = self.value(sub, f"{path}[{i}]#retry", depth + 1)
            out.append(item)
        return out

    def string(self, schema: Mapping[str, Any], path: str) -> str:
        fmt = schema.get("format")
        if fmt == "date-time":
            text = "2024-01-01T00:00:00Z"
        elif fmt == "date":
            text = "2024-01-01"
        elif fmt == "time":
            text = "00:00:00Z"
        elif fmt == "email":
            text = "emulator@example.com"
        elif fmt in ("uri", "url"):
            text = "https://example.com/nbbatch-emulator"
        elif fmt == "uuid":
            text = str(uuid.UUID(int=int_hash(self.prompt, path) << 64 | int_hash(path)))
        else:
            text = self.snippet
        low = int(schema.get("minLength", 0))
        high = schema.get("maxLength")
        if len(text) < low:
            text += "." * (low - len(text))
        if high is not None:
            text = text[: int(high)]
        return text

    def bounds(self, schema: Mapping[str, Any], step: float) -> tuple[float, float]:
        low = schema.get("minimum")
        high = schema.get("maximum")
        if "exclusiveMinimum" in schema and not isinstance(schema["exclusiveMinimum"], bool):
            low = schema["exclusiveMinimum"] + step
        if "exclusiveMaximum" in schema and not isinstance(schema["exclusiveMaximum"], bool):
            high = schema["exclusiveMaximum"] - step
        if low is None:
            low = 0 if high is None else high - 100
        if high is None:
            high = low + 100
        return float(low), float(high)

    def integer(self, schema: Mapping[str, Any], path: str) -> int:
        low_f, high_f = self.bounds(schema, 1)
        low, high = math.ceil(low_f), math.floor(high_f)
        if high < low:
            return low
        value = low + int_hash(self.prompt, path) % (high - low + 1)
        multiple = schema.get("multipleOf")
        if isinstance(multiple, int) and multiple > 0:
            up = -(-value // multiple) * multiple
            down = (value // multiple) * multiple
            value = up if up <= high else down
        return value

    def number(self, schema: Mapping[str, Any], path: str) -> float:
        low, high = self.bounds(schema, 1e-6)
        fraction = int_hash(self.prompt, path) / 2.0**64
        value = round(low + fraction * (high - low), 2)
        return min(max(value, low), high)


def respond_item(
    prompt: str, schema: Mapping[str, Any] | None, responder: Any, request: Any
) -> Any:
    """One item's answer, as :func:`respond` would give the item sent alone:
    the user's responder (given the request with the item's prompt and schema), else the
    echo or a value valid against ``schema``."""
    if responder is None or request is None:
        if schema is None:
            return echo_text(prompt)
        return schema_instance(schema, prompt)
    try:
        value = responder(replace(request, prompt=prompt, schema=schema))
    except Exception as exc:
        raise ResponderError(
            f"the emulator's responder raised {type(exc).__name__}: {exc}"
        ) from exc
    if schema is not None and isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value  # wrong, as the responder made it: the client sees that
    return value


# --------------------------------------------------------------------------- quality


@dataclass(frozen=True)
class QualityResponder:
    """A responder whose answers agree with ``inner``'s (None: the emulator's built-in
    answers) on each model's share of rows in ``quality``; see the module docstring.

    ``labels`` are the allowed answers of a plain-text reply (a classifier's labels), so
    a disagreeing plain-text row gets another of them.
    """

    inner: Any  # Responder | None
    quality: Mapping[str, float]
    seed: int = 0
    labels: tuple[str, ...] = field(default=())

    def __call__(self, request: Any) -> str | dict[str, Any]:
        answer = default_responder(request) if self.inner is None else self.inner(request)
        return self.apply(request, answer)

    def share(self, model: str) -> float:
        """The share of rows on which ``model`` agrees (1.0 for a model not named)."""
        return self.quality.get(_quality.base_model(model), 1.0)

    def agrees(self, model: str, prompt: str) -> bool:
        """Whether ``model`` gives the responder's answer to the row ``prompt``."""
        return _quality.agrees(self.share(model), self.seed, model, prompt)

    def apply(self, request: Any, answer: Any) -> Any:
        """``answer`` (the responder's) as ``request.model`` gives it for this row."""
        if self.agrees(request.model, request.prompt):
            return answer
        salt = (self.seed, _quality.base_model(request.model), request.prompt)
        labels = self.labels or tuple(getattr(self.inner, "labels", ()) or ())
        if isinstance(answer, str) and request.schema is not None:
            try:
                value = orjson.loads(answer)
            except orjson.JSONDecodeError:
                return answer  # not a value: nothing to disagree with
            changed = _disagree(value, request.schema, salt)
            return changed if isinstance(changed, dict) else orjson.dumps(changed).decode()
        if isinstance(answer, str):
            return _quality.other_text(answer, {}, salt, "$", labels)
        return _disagree(answer, request.schema or {}, salt)


def with_quality(
    responder: Any,
    quality: Mapping[str, float],
    *,
    seed: int = 0,
    labels: Sequence[str] = (),
) -> QualityResponder:
    """``responder`` (None: the built-in answers) with per-model quality (see
    :class:`QualityResponder`). A responder that already has a quality gets this one
    instead."""
    if isinstance(responder, QualityResponder):
        labels = labels or responder.labels
        responder = responder.inner
    return QualityResponder(responder, _quality.check_quality(quality), seed, tuple(labels))


def _disagree(value: Any, schema: Mapping[str, Any], salt: tuple[Any, ...]) -> Any:
    gen = _Generator(schema, "")
    return _quality.disagree(value, schema, salt, lambda node: gen.branch(gen.resolve(node), 0))
