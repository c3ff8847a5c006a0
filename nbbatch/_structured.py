"""Structured output: a pydantic model or JSON schema in, one column per field out.

Three steps, each usable on its own:

1. :func:`response_format` turns a pydantic model or a JSON-schema dict into OpenAI's
   chat ``response_format`` (``{"type": "json_schema", "json_schema": {...}}``) with the
   schema made *strict-compatible*. That one dict is what a job records; the providers
   translate it to their own wire shape (the Responses API's ``text.format``,
   Anthropic's ``output_config.format``).
2. :func:`parse_outputs` parses every reply text and validates it against the schema;
   a reply that is not JSON, does not match, or was cut off at the token limit is a
   per-row ``invalid_output`` failure with a message saying which.
3. :func:`to_columns` spreads the parsed values into columns.

Column naming rule (:func:`columns_of`): one column per leaf field, in the schema's
property order; a nested object (also an optional one, ``X | None``, and one reached
through ``$ref``) is flattened into its fields joined with ``"."`` - ``address.city`` -
the way ``pandas.json_normalize`` names them. Arrays stay one column of lists; an object
without declared properties (a free-form dict), a union of several object types and a
recursive reference stay one column holding the value as it came.

pandas is not needed here: columns are plain lists, ready for ``DataFrame.assign``.
"""

from __future__ import annotations

import copy
import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ._errors import InputError

#: OpenAI's rule for ``json_schema.name``; other characters are replaced by ``_``.
_NAME_OK = re.compile(r"[^a-zA-Z0-9_-]")
_DEFAULT_NAME = "response"
#: Prefix of every structured-output failure message; also the row's error type.
INVALID_OUTPUT = "invalid_output"


# ---------------------------------------------------------------------- response_format


def response_format(obj: Any) -> dict[str, Any]:
    """The strict OpenAI-chat ``response_format`` for a pydantic model or JSON schema.

    ``obj`` may be a pydantic ``BaseModel`` subclass, a JSON-schema dict whose root is an
    object, or an already wrapped ``{"type": "json_schema", "json_schema": {...}}``.
    The result is ``{"type": "json_schema", "json_schema": {"name", "schema",
    "strict": True}}``, where in the schema every object has ``additionalProperties:
    false`` and lists all its properties as required, a property that was optional
    becomes nullable (so the model answers ``null`` instead of leaving it out) and
    ``$defs``/``$ref`` stay as pydantic emits them. The input is never modified.

    Raises :class:`~nbbatch.InputError` for anything else.
    """
    schema, name, description = _schema_given(obj)
    _check_root(schema)
    copied = copy.deepcopy(schema)
    strict = _strict(copied, copied)
    inner_out: dict[str, Any] = {"name": _NAME_OK.sub("_", name)[:64] or _DEFAULT_NAME}
    if description:
        inner_out["description"] = description
    inner_out["schema"] = strict
    inner_out["strict"] = True
    return {"type": "json_schema", "json_schema": inner_out}


def _schema_given(obj: Any) -> tuple[dict[str, Any], str, str | None]:
    """(schema, name, description) of what ``response_format=`` was given: a pydantic
    model class, a wrapped ``json_schema`` response format, or a JSON schema."""
    description: str | None = None
    if _is_pydantic_model(obj):
        schema = obj.model_json_schema()
        name = obj.__name__
    elif isinstance(obj, Mapping):
        if obj.get("type") == "json_schema" and isinstance(obj.get("json_schema"), Mapping):
            inner = obj["json_schema"]
            if not isinstance(inner.get("schema"), Mapping):
                raise InputError(
                    "response_format has type 'json_schema' but its json_schema has no "
                    "'schema' dict; pass {'type': 'json_schema', 'json_schema': {'name': ..., "
                    "'schema': {...}}}, a JSON schema, or a pydantic model."
                )
            schema = dict(inner["schema"])
            name = str(inner.get("name") or schema.get("title") or _DEFAULT_NAME)
            description = inner.get("description")
        elif obj.get("type") in ("json_object", "text"):
            raise InputError(
                f"response_format={{'type': {obj.get('type')!r}}} gives no schema, so replies "
                "cannot be split into columns; pass a pydantic model or a JSON schema."
            )
        else:
            schema = dict(obj)
            name = str(schema.get("title") or _DEFAULT_NAME)
    else:
        raise InputError(
            f"response_format must be a pydantic model class or a JSON schema dict, found "
            f"{type(obj).__name__}"
            + (" (an instance; pass the class itself)" if _is_pydantic_instance(obj) else "")
            + "."
        )
    return schema, name, description


def _check_root(schema: dict[str, Any]) -> None:
    """Refuse a schema the providers' structured outputs cannot take: not an object with
    properties at the root, or a reference to another document."""
    root = _resolve(schema, schema)
    if _type_of(root) != "object" or not isinstance(root.get("properties"), Mapping):
        raise InputError(
            "response_format's schema must describe a JSON object with properties (the "
            "providers' structured outputs require an object at the root, and each "
            f"property becomes a column); found a schema of type {_type_of(root)!r}."
        )
    if not _local_refs_only(schema):
        raise InputError(
            "response_format's schema has a $ref to another document; structured outputs "
            "take local references only (#/$defs/...). Inline the referenced schema."
        )
    if not root["properties"]:
        raise InputError(
            "response_format's schema has no properties, so there is nothing to ask for."
        )


def schema_of(response_format_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON schema inside a ``response_format`` made by :func:`response_format`."""
    inner = response_format_dict.get("json_schema")
    if response_format_dict.get("type") != "json_schema" or not isinstance(inner, Mapping):
        raise InputError(
            "expected a response_format of type 'json_schema' (see nbbatch._structured."
            f"response_format), found type {response_format_dict.get('type')!r}."
        )
    schema = inner.get("schema")
    if not isinstance(schema, Mapping):
        raise InputError("the response_format's json_schema has no 'schema' dict.")
    return dict(schema)


def _is_pydantic_model(obj: Any) -> bool:
    # Imported lazily: pydantic is only needed by users who pass a model.
    if not inspect.isclass(obj):
        return False
    try:
        import pydantic
    except ImportError:  # pragma: no cover - no pydantic, so obj cannot be a model
        return False
    return issubclass(obj, pydantic.BaseModel)


def _is_pydantic_instance(obj: Any) -> bool:
    try:
        import pydantic
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, pydantic.BaseModel)


def _strict(node: Any, root: dict[str, Any], refs: tuple[str, ...] = ()) -> Any:
    """Make ``node`` (part of the deep copy ``root``; changed in place) acceptable to
    strict structured outputs.

    Mirrors what the OpenAI SDK does for its own ``parse`` helpers (additionalProperties
    false, every property required, no null defaults, a ``$ref`` with siblings inlined),
    plus nullable optional fields, so that the request is valid in strict mode and the
    model may still leave an optional value empty (by answering ``null``).
    """
    if isinstance(node, list):
        return [_strict(n, root, refs) for n in node]
    if not isinstance(node, dict):
        return node
    if node is root:
        # Definitions first, so an inlined $ref below copies an already strict schema.
        for key in ("$defs", "definitions"):
            if isinstance(node.get(key), dict):
                node[key] = {k: _strict(v, root, refs) for k, v in node[key].items()}
    ref = node.get("$ref")
    if isinstance(ref, str) and len(node) > 1:
        # The API rejects a $ref with siblings ({"$ref": ..., "description": ...}, which
        # pydantic emits for a described sub-model): inline the target, as the SDK does.
        target = _lookup(root, ref)
        if ref in refs or not isinstance(target, dict):
            # A recursive model: inlining would never end; keep the bare reference.
            return {"$ref": ref}
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return _strict({**copy.deepcopy(target), **siblings}, root, (*refs, ref))
    _strict_object(node, root, refs)
    for key in ("items", "not", "if", "then", "else", "contains"):
        if isinstance(node.get(key), dict):
            node[key] = _strict(node[key], root, refs)
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if isinstance(node.get(key), list):
            node[key] = [_strict(v, root, refs) for v in node[key]]
    if "default" in node and node["default"] is None:
        # A null default says nothing once the field is nullable (the SDK drops it too).
        del node["default"]
    return node


def _strict_object(node: dict[str, Any], root: dict[str, Any], refs: tuple[str, ...]) -> None:
    """The object part of :func:`_strict`: its properties made strict (optional ones
    nullable), all of them required and no others allowed; an object strict mode
    cannot express (free-form, or open to extra properties) refused."""
    props = node.get("properties")
    kind = node.get("type")
    is_object = kind == "object" or (isinstance(kind, list) and "object" in kind)
    if not isinstance(props, dict) and is_object:
        # Strict mode has no free-form objects: it would force the reply to be {}.
        raise InputError(
            "response_format has an object without declared properties (a free-form dict "
            f"such as dict[str, ...]; title {node.get('title')!r}); strict structured "
            "outputs cannot express it. Use a model with named fields, or a list of "
            "{key, value} objects."
        )
    if isinstance(props, dict):
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) or extra is True:
            raise InputError(
                "response_format has an object that allows extra properties "
                f"(title {node.get('title')!r}); strict structured outputs require "
                "additionalProperties: false. Remove it or list the fields."
            )
        required = set(node.get("required") or [])
        node["properties"] = {
            k: _strict(v if k in required else _nullable(v), root, refs) for k, v in props.items()
        }
        node["required"] = list(props)
        node["additionalProperties"] = False


def _nullable(node: Any) -> Any:
    """``node`` that also accepts ``null`` (unchanged if it already does)."""
    if not isinstance(node, dict):
        return node
    kind = node.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return node
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list) and any(
            isinstance(b, dict) and b.get("type") == "null" for b in node[key]
        ):
            return node
    # Wrap it the way pydantic writes ``X | None`` (anyOf with null) rather than as a
    # type list, which Anthropic's schema transform does not take; annotations stay
    # outside so the SDKs and the model still see them.
    outer = {k: node[k] for k in ("title", "description", "default") if k in node}
    inner = {k: v for k, v in node.items() if k not in outer}
    return {"anyOf": [inner, {"type": "null"}], **outer}


# ------------------------------------------------------------------------ schema walking


def _lookup(root: Mapping[str, Any], ref: str) -> Any:
    """Follow a local JSON pointer ``#/$defs/X``; None for anything else."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in ref[1:].lstrip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _resolve(node: Any, root: Mapping[str, Any], followed: list[str] | None = None) -> Any:
    """``node`` with a top-level ``$ref`` followed (siblings kept) and ``allOf`` merged.

    Each ``$ref`` followed is appended to ``followed`` (to detect recursive models).
    """
    for _ in range(32):
        if not isinstance(node, Mapping) or "$ref" not in node:
            break
        target = _lookup(root, node["$ref"])
        if not isinstance(target, Mapping):
            break
        if followed is not None:
            followed.append(node["$ref"])
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    if isinstance(node, Mapping) and isinstance(node.get("allOf"), list):
        merged: dict[str, Any] = {k: v for k, v in node.items() if k != "allOf"}
        for part in node["allOf"]:
            part = _resolve(part, root, followed)
            if not isinstance(part, Mapping):
                continue
            for key, val in part.items():
                if key == "properties":
                    merged["properties"] = {**merged.get("properties", {}), **val}
                elif key == "required":
                    merged["required"] = [*merged.get("required", []), *val]
                else:
                    merged.setdefault(key, val)
        node = merged
    return node


def _type_of(node: Any) -> str | None:
    if not isinstance(node, Mapping):
        return None
    kind = node.get("type")
    if isinstance(kind, list):
        rest = [k for k in kind if k != "null"]
        kind = rest[0] if len(rest) == 1 else None
    if kind is None and "properties" in node:
        return "object"
    return kind if isinstance(kind, str) else None


def _object_branch(
    node: Any, root: Mapping[str, Any], followed: list[str]
) -> Mapping[str, Any] | None:
    """The object schema ``node`` flattens into, or None if it is a leaf column.

    An object with declared properties flattens; so does ``anyOf``/``oneOf`` of exactly
    one such object and ``null`` (how an optional nested model looks).
    """
    node = _resolve(node, root, followed)
    if not isinstance(node, Mapping):
        return None
    for key in ("anyOf", "oneOf"):
        if isinstance(node.get(key), list):
            non_null = [
                b
                for b in node[key]
                if not (isinstance(b, Mapping) and _resolve(b, root).get("type") == "null")
            ]
            if len(non_null) == 1:
                return _object_branch(non_null[0], root, followed)
            return None
    props = node.get("properties")
    if _type_of(node) == "object" and isinstance(props, Mapping) and props:
        return node
    return None


def _leaf_paths(schema: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Every leaf field's path of keys, in the schema's property order."""
    out: list[tuple[str, ...]] = []

    def walk(node: Mapping[str, Any], prefix: tuple[str, ...], refs: frozenset[str]) -> None:
        for name, sub in node["properties"].items():
            path = (*prefix, name)
            followed: list[str] = []
            target = _object_branch(sub, schema, followed)
            # A recursive model (Node with parent: Node | None) would flatten forever:
            # the field that refers back to a model being flattened stays one column.
            if target is None or refs.intersection(followed):
                out.append(path)
            else:
                walk(target, path, refs.union(followed))

    root_refs: list[str] = []
    root = _object_branch(schema, schema, root_refs)
    if root is None:
        raise InputError("the schema does not describe a JSON object with properties.")
    walk(root, (), frozenset(root_refs))
    return out


def columns_of(schema: Mapping[str, Any]) -> list[str]:
    """The column names :func:`to_columns` will make for ``schema``, in order.

    Known before anything is sent, so a caller can refuse names that clash with the
    DataFrame's columns. See the module docstring for the naming rule.
    """
    return [".".join(p) for p in _leaf_paths(schema)]


def to_columns(
    values: Sequence[Mapping[str, Any] | None], schema: Mapping[str, Any]
) -> dict[str, list[Any]]:
    """One list per column of :func:`columns_of`, one item per value.

    A value that is None (a failed row), or a nested object that is null or missing,
    gives None in the columns below it. Lists are kept as lists.
    """
    paths = _leaf_paths(schema)
    columns: dict[str, list[Any]] = {".".join(p): [] for p in paths}
    cols = list(columns.values())
    for value in values:
        for path, col in zip(paths, cols, strict=True):
            node: Any = value
            for key in path:
                node = node.get(key) if isinstance(node, Mapping) else None
                if node is None:
                    break
            col.append(node)
    return columns


# ------------------------------------------------------------------------- parse outputs


@dataclass
class Parsed:
    """The outcome of :func:`parse_outputs`, one item per reply."""

    values: list[dict[str, Any] | None]  # the parsed object, None when not ok
    ok: list[bool]
    errors: list[str | None]  # "invalid_output: ..." when not ok, else None

    @property
    def n_invalid(self) -> int:
        """How many replies were not usable."""
        return len(self.ok) - sum(self.ok)


_VALIDATORS: dict[bytes, tuple[Any, Any]] = {}  # canonical schema JSON -> validators

#: Keywords of JSON Schema 2019-09/2020-12 that fastjsonschema (draft 7) would ignore;
#: a schema using any of them is checked by jsonschema alone.
_NEWER_KEYWORDS = frozenset(
    {
        "prefixItems",
        "unevaluatedItems",
        "unevaluatedProperties",
        "dependentSchemas",
        "dependentRequired",
        "$dynamicRef",
        "$dynamicAnchor",
        "$recursiveRef",
        "$anchor",
        "minContains",
        "maxContains",
    }
)


def validator_for(schema: Mapping[str, Any]) -> Any:
    """A compiled ``jsonschema`` validator for ``schema`` (cached; ``$defs`` work)."""
    return _validators(schema)[0]


def _validators(schema: Mapping[str, Any]) -> tuple[Any, Any]:
    """(jsonschema validator, fast check or None), compiled once per schema.

    jsonschema is the judge and writes the error messages. It takes ~100 us for a small
    object, minutes for a million replies, so when ``fastjsonschema`` is installed its
    compiled check (20x faster) decides the common case, "valid"; a reply it rejects
    is judged again by jsonschema, so the two can never disagree on a failure.
    """
    key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    cached = _VALIDATORS.get(key)
    if cached is None:
        import jsonschema

        if not _local_refs_only(schema):
            # Resolving it would mean fetching it; nbbatch never does that.
            raise InputError("the schema has a $ref to another document; inline it.")
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise InputError(
                f"the response_format schema is not a valid JSON schema: {exc.message}"
            ) from exc
        cached = (cls(schema), _fast_check(schema, key))
        if len(_VALIDATORS) > 64:  # bounded: schemas are few, but a loop could make many
            _VALIDATORS.clear()
        _VALIDATORS[key] = cached
    return cached


def _fast_check(schema: Mapping[str, Any], canonical: bytes) -> Any:
    """fastjsonschema's compiled validator for ``schema``, or None when not usable."""
    if any(f'"{k}":'.encode() in canonical for k in _NEWER_KEYWORDS):
        return None
    try:
        import fastjsonschema
    except ImportError:
        return None
    try:
        # No format checks: jsonschema (the judge) does not check formats either.
        # use_default=False: it would otherwise write defaults into the parsed values.
        return fastjsonschema.compile(
            dict(schema), use_default=False, use_formats=False, detailed_exceptions=False
        )
    except Exception:  # a schema it cannot compile: jsonschema alone then
        return None


def _local_refs_only(node: Any) -> bool:
    """Whether every ``$ref`` in ``node`` points inside the schema (``#...``)."""
    if isinstance(node, Mapping):
        ref = node.get("$ref")
        if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
            return False
        return all(_local_refs_only(v) for v in node.values())
    if isinstance(node, list):
        return all(_local_refs_only(v) for v in node)
    return True


def parse_outputs(
    texts: Sequence[str | None],
    schema: Mapping[str, Any],
    truncated: Sequence[bool] | None = None,
) -> Parsed:
    """Parse and validate each reply text against ``schema``.

    Pass the output texts of succeeded rows (a None text counts as invalid, so mask
    rows that failed for other reasons). ``truncated`` marks replies the provider cut off
    at the token limit; they are invalid whatever they contain, because a cut reply that
    happens to parse is still not the whole answer. Identical texts (common: a label
    column) are judged once.
    """
    if truncated is not None and len(truncated) != len(texts):
        raise ValueError(f"truncated has {len(truncated)} items for {len(texts)} texts")
    validator, fast = _validators(schema)
    values: list[dict[str, Any] | None] = []
    ok: list[bool] = []
    errors: list[str | None] = []
    verdicts: dict[str, str | None] = {}  # text -> error (None: valid)

    def judge(value: Any) -> str | None:
        if fast is not None:
            try:
                fast(value)
                return None
            except Exception:  # JsonSchemaValueException: let jsonschema say why
                pass
        if validator.is_valid(value):
            return None
        return f"{INVALID_OUTPUT}: reply does not match the schema: {_why(validator, value)}"

    for i, text in enumerate(texts):
        error: str | None = None
        value: Any = None
        if truncated is not None and truncated[i]:
            error = f"{INVALID_OUTPUT}: reply was cut off at max_tokens (raise max_tokens)"
        elif text is None:
            error = f"{INVALID_OUTPUT}: the reply has no text"
        else:
            try:
                value = orjson.loads(text)  # a fresh object per row, even for equal texts
            except orjson.JSONDecodeError as exc:
                error = f"{INVALID_OUTPUT}: reply is not valid JSON: {exc}"
            else:
                if text in verdicts:
                    error = verdicts[text]
                else:
                    error = verdicts[text] = judge(value)
        if error is None:
            values.append(value)
            ok.append(True)
            errors.append(None)
        else:
            values.append(None)
            ok.append(False)
            errors.append(error)
    return Parsed(values, ok, errors)


def _why(validator: Any, value: Any) -> str:
    """The most relevant validation error, with where it is when not at the root."""
    from jsonschema.exceptions import best_match

    error = best_match(validator.iter_errors(value))
    if error is None:  # pragma: no cover - is_valid said it was invalid
        return "unknown reason"
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"{error.message} (at {where.lstrip('.')})" if where else error.message
