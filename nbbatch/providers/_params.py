"""Request parameters checked against the official SDK's own request types.

A batch runs for hours before the provider reports that a parameter was wrong, and then
it has failed every row. So the keywords a user passes through ``submit(**params)`` are
checked before anything is sent: each must be a field of the SDK's params ``TypedDict``
for the endpoint (read from the type itself, never copied by hand, so it follows the
installed SDK), its value must validate against that field's annotation (pydantic, a
dependency of both SDKs, in strict mode), and the sampling parameters must be in range.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic

from .._errors import InputError


@dataclass(frozen=True)
class Endpoint:
    """What one endpoint accepts.

    ``params_type`` is the SDK's TypedDict of the request body; ``extra`` adds fields the
    API takes but the SDK's types do not declare (name -> annotation); ``owned`` maps
    the body keys nbbatch fills itself to the ``submit`` argument that sets them;
    ``ranges`` gives (low, high) bounds of numeric fields (None: unbounded).
    """

    path: str
    params_type: type
    owned: Mapping[str, str]
    ranges: Mapping[str, tuple[float | None, float | None]]
    extra: Mapping[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """Every field the endpoint takes, name -> annotation."""
        return {**_hints(self.params_type), **self.extra}


@functools.cache
def _hints(params_type: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(params_type)
    except Exception:  # an annotation that does not resolve: keep the names, skip types
        return {name: Any for name in getattr(params_type, "__annotations__", {})}


@functools.cache
def _adapter(annotation: Any) -> pydantic.TypeAdapter[Any] | None:
    try:
        return pydantic.TypeAdapter(annotation)
    except Exception:  # a type pydantic cannot build a validator for: names only
        return None


def check(
    endpoint: Endpoint,
    params: Mapping[str, Any],
    values: Mapping[str, Any],
    owned: Mapping[str, str] | None = None,
) -> None:
    """Raise :class:`InputError` listing every problem with the request parameters.

    ``params`` are the extra keywords a user passed (checked by name and value);
    ``values`` are body fields nbbatch sets from its own arguments (``temperature``),
    checked by value only; ``owned`` adds keys nbbatch sets for this request only
    (``text`` on the Responses API when there is a ``response_format``).
    """
    fields = endpoint.fields()
    owned = {**endpoint.owned, **(owned or {})}
    problems = []
    for name, value in params.items():
        if name in owned:
            problems.append(
                f"{name!r} is set by nbbatch on {endpoint.path}; use {owned[name]} instead."
            )
        elif name == "stream":
            problems.append("stream is not available in a batch: results are never streamed.")
        elif name not in fields:
            problems.append(_unknown(name, fields, endpoint))
        else:
            problems.extend(_value_problems(endpoint, name, value, fields[name]))
    for name, value in values.items():
        if value is not None and name in fields:
            problems.extend(_value_problems(endpoint, name, value, fields[name]))
    if problems:
        sdk = f"{endpoint.params_type.__module__}.{endpoint.params_type.__name__}"
        raise InputError(
            "Request parameters that the provider would refuse for every row; nothing was "
            "sent:\n- " + "\n- ".join(problems) + f"\n(Checked against the SDK's {sdk}.)"
        )


def _unknown(name: str, fields: Mapping[str, Any], endpoint: Endpoint) -> str:
    accepted = sorted(set(fields) - set(endpoint.owned) - {"stream"})
    close = difflib.get_close_matches(name, accepted, n=1, cutoff=0.75)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (
        f"unknown parameter {name!r} for {endpoint.path}.{hint} Accepted: "
        f"{', '.join(accepted)} (a parameter newer than your installed SDK needs an "
        "upgrade of the SDK)."
    )


def _value_problems(endpoint: Endpoint, name: str, value: Any, annotation: Any) -> list[str]:
    if name == "n" and value not in (None, 1):
        return [f"n={value!r}: a batch request gives one reply per row; leave n unset."]
    adapter = _adapter(annotation)
    if adapter is not None:
        try:
            adapter.validate_python(value, strict=True)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            detail = f" (at {where})" if where else ""
            return [
                f"{name}={value!r} is not accepted: {first['msg']}{detail}; the field's type "
                f"is {_type_name(annotation)}."
            ]
    bounds = endpoint.ranges.get(name)
    if bounds is not None and isinstance(value, int | float) and not isinstance(value, bool):
        low, high = bounds
        if (
            math.isnan(value)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            if high is None:
                return [f"{name}={value!r} is out of range: it must be at least {low:g}."]
            return [f"{name}={value!r} is out of range: it must be between {low:g} and {high:g}."]
    return []


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("typing_extensions.", "")
    return text if len(text) <= 120 else text[:117] + "..."


def check_max_tokens(max_tokens: Any) -> None:
    """``max_tokens`` must be a whole number >= 1 (``True`` is not a number of tokens)."""
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise InputError(f"max_tokens must be a positive integer, found {max_tokens!r}.")


# ---------------------------------------------------------------- output limits

#: ``-YYYY-MM-DD`` or ``-YYYYMMDD`` at the end of a model name: a dated snapshot, which
#: has the output limit of the model it is a snapshot of (the same rule as the prices').
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


def output_limit(table: Mapping[str, int], model: str) -> int | None:
    """The most output tokens one request to ``model`` may ask for, from a provider's
    ``table`` (its published limits, by model name): the name itself first, then the
    model a dated snapshot belongs to. None when the limit is not known; such a model
    is not checked (a name merely starting like a known one is not that model)."""
    model = model.removeprefix("models/")
    for name in (model, _SNAPSHOT.sub("", model)):
        if name in table:
            return table[name]
    return None


def check_output_limit(
    table: Mapping[str, int], service: str, model: str, max_tokens: int | None
) -> None:
    """Refuse ``max_tokens`` above ``model``'s output limit in ``table``, naming the
    model, its limit and the fix; ``service`` names the provider for people
    (``"OpenAI"``). The provider refuses such a request with a 400 for every row, after
    the batch was uploaded and created; so it is refused here, before anything is sent."""
    limit = output_limit(table, model)
    if limit is None or max_tokens is None or max_tokens <= limit:
        return
    raise InputError(
        f"max_tokens={max_tokens} is more than {model} can write: its output limit is "
        f"{limit:,} tokens per request, and {service} would refuse every row; nothing was "
        f"sent. Use max_tokens={limit} or less, or a model with a larger output limit.",
        provider=service.lower(),
    )
