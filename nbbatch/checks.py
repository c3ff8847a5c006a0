"""Checks of the arguments of ``submit`` and ``preview``, made before anything is
recorded or sent.

A value of the wrong type that slipped through (``system=123``) used to be recorded with
the job and then break every later reading of it, and with it ``nbbatch check`` for the
whole ledger. Each check here names the argument, what it found and what it takes.
"""

from __future__ import annotations

import math
from typing import Any

from ._errors import InputError

_UNSET: Any = object()


def _kind(value: Any) -> str:
    return f"{value!r} (a {type(value).__name__})"


def _text(name: str, value: Any, *, optional: bool, example: str) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise InputError(
            f"{name} must be {'None or ' if optional else ''}a string, found {_kind(value)}; "
            f"e.g. {name}={example}."
        )
    sendable(name, value)


def sendable(name: str, text: str) -> None:
    """Refuse text holding a lone surrogate (not valid Unicode: no provider takes it),
    naming where it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end].encode("utf-8", "backslashreplace").decode()
        raise InputError(
            f"{name} holds {bad} at character {exc.start}, a lone surrogate: not valid "
            "Unicode, so it cannot be sent (often left by a bad copy and paste). Remove it, "
            f"e.g. {name} = {name}.encode('utf-8', 'replace').decode('utf-8')."
        ) from None


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InputError(f"{name} must be True or False, found {_kind(value)}.")


def _auto_flag(name: str, value: Any) -> None:
    if not (isinstance(value, bool) or value == "auto"):
        raise InputError(f"{name} must be True, False or 'auto', found {_kind(value)}.")


def _number(name: str, value: Any, *, low: float, high: float | None = None) -> None:
    """A real number (not a bool) in [low, high]; None is allowed (the default)."""
    if value is None:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and math.isfinite(value) and value >= low and (high is None or value <= high):
        return
    where = f"between {low:g} and {high:g}" if high is not None else f">= {low:g}"
    raise InputError(f"{name} must be None or a number {where}, found {_kind(value)}.")


def _count(name: str, value: Any, *, low: int, optional: bool) -> None:
    """A whole number (not a bool) >= low."""
    if value is None and optional:
        return
    if isinstance(value, int) and not isinstance(value, bool) and value >= low:
        return
    raise InputError(
        f"{name} must be {'None or ' if optional else ''}a whole number >= {low}, "
        f"found {_kind(value)}."
    )


def arguments(
    *,
    prompt: Any = _UNSET,
    output: Any = _UNSET,
    system: Any = _UNSET,
    max_tokens: Any = _UNSET,
    id_column: Any = _UNSET,
    endpoint: Any = _UNSET,
    provider: Any = _UNSET,
    missing: Any = _UNSET,
    cache_system: Any = _UNSET,
    max_cost: Any = _UNSET,
    retries: Any = _UNSET,
    alert_threshold: Any = _UNSET,
    reuse: Any = _UNSET,
    force: Any = _UNSET,
    wait: Any = _UNSET,
    progress: Any = _UNSET,
    display: Any = _UNSET,
    n: Any = _UNSET,
    expected_output_tokens: Any = _UNSET,
) -> None:
    """Check the type and range of each argument given (the others are left alone), so
    a bad one is refused with its name before the job is planned, recorded or sent.

    Values the providers judge (a temperature's range per provider, unknown request
    parameters) are checked later against the SDK's request types; here only what no
    provider could take."""
    given = {k: v for k, v in locals().items() if v is not _UNSET}
    if "prompt" in given:
        _text("prompt", prompt, optional=False, example="'Classify: {review}'")
    if "output" in given and not (isinstance(output, str) and output):
        raise InputError(
            f"output must be a non-empty column name, found {_kind(output)}; "
            "e.g. output='sentiment'."
        )
    if "system" in given:
        _text("system", system, optional=True, example="'You are a careful annotator.'")
    if "max_tokens" in given:
        _count("max_tokens", max_tokens, low=1, optional=True)
    for name in ("id_column", "endpoint", "provider"):
        if name in given:
            value = given[name]
            if value is not None and not (isinstance(value, str) and value):
                raise InputError(f"{name} must be None or a string, found {_kind(value)}.")
    if "missing" in given and missing not in ("skip", "empty"):
        raise InputError(f"missing must be 'skip' or 'empty', found {_kind(missing)}.")
    for name in ("cache_system", "reuse", "force", "wait"):
        if name in given:
            _flag(name, given[name])
    for name in ("progress", "display"):
        if name in given:
            _auto_flag(name, given[name])
    if "max_cost" in given:
        _number("max_cost (dollars)", max_cost, low=0.0)
    if "retries" in given:
        _count("retries", retries, low=0, optional=False)
    if "alert_threshold" in given:
        _number("alert_threshold (a share of the rows)", alert_threshold, low=0.0, high=1.0)
    if "n" in given:
        _count("n", n, low=0, optional=False)
    if "expected_output_tokens" in given:
        _count("expected_output_tokens", expected_output_tokens, low=0, optional=True)
