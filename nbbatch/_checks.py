"""Checks of the arguments of ``submit`` and ``preview``, made before anything is
recorded or sent.

A value of the wrong type that slipped through (``system=123``) used to be recorded with
the job and then break every later reading of it, and with it ``nbbatch check`` for the
whole ledger. Each check here names the argument, what it found and what it takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
    _request_arguments(given)
    _job_arguments(given)


def _request_arguments(given: dict[str, Any]) -> None:
    """The arguments that shape the requests: the prompt, the system prompt, the output
    column, max_tokens, where the requests go and how rows are named or skipped."""
    if "prompt" in given:
        _text("prompt", given["prompt"], optional=False, example="'Classify: {review}'")
    output = given.get("output", "given")
    if not (isinstance(output, str) and output):
        raise InputError(
            f"output must be a non-empty column name, found {_kind(output)}; "
            "e.g. output='sentiment'."
        )
    if "system" in given:
        _text("system", given["system"], optional=True, example="'You are a careful annotator.'")
    max_tokens = given.get("max_tokens")
    if max_tokens is not None:
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise InputError(
                f"max_tokens must be a positive integer (or None), found {_kind(max_tokens)}."
            )
    for name in ("id_column", "endpoint", "provider"):
        value = given.get(name)
        if value is not None and not (isinstance(value, str) and value):
            raise InputError(f"{name} must be None or a string, found {_kind(value)}.")
    missing = given.get("missing", "skip")
    if missing not in ("skip", "empty"):
        raise InputError(f"missing must be 'skip' or 'empty', found {_kind(missing)}.")


def _job_arguments(given: dict[str, Any]) -> None:
    """The arguments that say how the job runs: its switches, budget, retries and
    alert, and the counts a preview takes."""
    for name in ("cache_system", "reuse", "force", "wait"):
        if name in given:
            _flag(name, given[name])
    for name in ("progress", "display"):
        if name in given:
            _auto_flag(name, given[name])
    if "max_cost" in given:
        _number("max_cost (dollars)", given["max_cost"], low=0.0)
    if "retries" in given:
        _count("retries", given["retries"], low=0, optional=False)
    if "alert_threshold" in given:
        _number(
            "alert_threshold (a share of the rows)", given["alert_threshold"], low=0.0, high=1.0
        )
    if "n" in given:
        _count("n", given["n"], low=0, optional=False)
    if "expected_output_tokens" in given:
        _count("expected_output_tokens", given["expected_output_tokens"], low=0, optional=True)


# ---------------------------------------------------------------- the context window

#: The approximation the estimate makes too: a token is about four characters.
CHARS_PER_TOKEN = 4

#: How far over the window the approximate count must be for a row to be skipped. Four
#: characters a token overcounts plain English by about a tenth, and a request the
#: provider refuses for its length costs nothing, whereas a row skipped in error loses
#: its answer: only rows clearly too long are skipped (the 2.5 M tokens of a whole
#: document pasted in a cell), and a borderline one is left to the provider to judge.
WINDOW_MARGIN = 1.25


@dataclass(frozen=True)
class ContextLimit:
    """The longest prompt a model takes, in tokens (its context window), and the
    characters of the system prompt every request carries besides the row's text."""

    model: str
    tokens: int
    system_chars: int = 0

    @classmethod
    def of(cls, model: str, system: str | None, provider: str | None = None) -> ContextLimit | None:
        """The limit of ``model`` at ``provider`` (None when nbbatch does not know its
        window)."""
        from . import pricing

        window = pricing.context_window(model, provider)
        return None if window is None else cls(model, window, len(system or ""))

    def tokens_of(self, prompts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """The approximate tokens of each request (0 for a missing prompt), vectorised
        from the prompts' lengths: no tokenizer runs, so a million rows stay fast."""
        chars = pc.fill_null(pc.utf8_length(prompts), 0).to_numpy(zero_copy_only=False)
        total = chars.astype(np.int64) + self.system_chars
        return -(-total // CHARS_PER_TOKEN)

    def too_long(self, prompts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """True where a request would clearly not fit in the model's context window."""
        return self.over(self.tokens_of(prompts))

    def over(self, tokens: np.ndarray) -> np.ndarray:
        """True where ``tokens`` (from :meth:`tokens_of`) are clearly over the window
        (by :data:`WINDOW_MARGIN`: the count is an approximation)."""
        return tokens > self.tokens * WINDOW_MARGIN

    def reason(self, tokens: int) -> str:
        """Why a row of ``tokens`` tokens is not sent, as its skip reason says it."""
        return (
            f"prompt of ~{short(tokens)} tokens exceeds {self.model}'s {short(self.tokens)} "
            "context window: not sent (the provider would refuse it); shorten the text or "
            "choose a model with a larger context window"
        )

    def as_dict(self) -> dict[str, Any]:
        """As the job's policy keeps it, so merge checks rows with the same limit."""
        return {"model": self.model, "tokens": self.tokens, "system_chars": self.system_chars}

    @classmethod
    def from_dict(cls, value: dict[str, Any] | None) -> ContextLimit | None:
        return None if not value else cls(**value)


def short(n: int) -> str:
    """A count for people: 2.5M, 128K, 950."""
    for size, unit in ((1_000_000, "M"), (1_000, "K")):
        if n >= size:
            text = f"{n / size:.1f}".removesuffix(".0")
            return f"{text}{unit}"
    return str(n)
