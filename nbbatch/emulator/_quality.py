"""Models of different quality: each model agrees with the responder on a share of rows.

``start(responder=fn, quality={"gpt-4o-mini": 0.88, "gpt-4o": 0.97})`` makes
``gpt-4o-mini`` give ``fn``'s answer on 88% of rows and another answer on the rest, so
model choice (a pilot, a cascade) can be tried offline. Which rows disagree is a
deterministic function of the row's prompt (the last user message; a packed item's own
prompt), the model and the seed: a row disagrees on every run, in every pack size, on
every provider, and a larger quality only adds rows that agree. Models err on the same
rows more often than chance, as real ones do (:func:`difficulty`): on half of the rows
(:data:`SHARED_DIFFICULTY`) every model shares one difficulty, so there a stronger
model's errors fall among a weaker one's. Models the mapping does
not name agree always (quality 1.0); a dated snapshot (``gpt-4o-2024-08-06``,
``claude-haiku-4-5-20251001``) and Gemini's ``models/`` prefix take their base name's.

A disagreeing row gets, per field of its structured value (see :func:`disagree`):

- an enum (``Literal``) field: another allowed value; a boolean: the other one;
- a number or integer: a value moved by 10-40% of its range (or of itself), in bounds;
- a free-text string: a changed text (its first half, or ``"not "`` before one word);
  a plain-text reply among the responder's ``labels``: another label;
- a score field (``confidence``, ``score``, ``probability``, ``certainty``): a lower
  value (30-80% of the way from its minimum), so a score threshold finds many of them.

Fields with a ``const`` or a ``format`` (dates, e-mail addresses...) are left as they are.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from ._faults import int_hash

#: The background emulator's qualities: ``model=share,model=share``.
QUALITY_ENV = "NBBATCH_EMULATOR_QUALITY"
#: Number fields read as a score of the answer: lowered where a row disagrees.
SCORE_FIELDS = frozenset({"confidence", "score", "probability", "certainty"})
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8})$")  # -2024-08-06 (OpenAI), -20251001


def check_quality(quality: Mapping[str, Any]) -> dict[str, float]:
    """``quality`` as ``{model: share}``, or ValueError naming what is wrong."""
    if not isinstance(quality, Mapping):
        raise ValueError(
            f"quality must map model names to shares, e.g. {{'gpt-4o-mini': 0.88}}, "
            f"not {type(quality).__name__}"
        )
    out: dict[str, float] = {}
    for model, share in quality.items():
        if not isinstance(model, str) or not model:
            raise ValueError(f"quality: model names must be non-empty strings, found {model!r}")
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
            raise ValueError(
                f"quality[{model!r}] must be a share of rows between 0 and 1, found {share!r}"
            )
        out[base_model(model)] = float(share)
    return out


def parse_quality(text: str) -> dict[str, float]:
    """``"gpt-4o-mini=0.88,gpt-4o=0.97"`` as a mapping (``--quality`` and the
    environment variable), or ValueError naming the part that is wrong."""
    out: dict[str, Any] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        model, sep, share = part.partition("=")
        try:
            out[model.strip()] = float(share)
        except ValueError:
            sep = ""
        if not sep or not model.strip():
            raise ValueError(
                f"quality: {part.strip()!r} is not model=share; write e.g. "
                "gpt-4o-mini=0.88,gpt-4o=0.97"
            ) from None
    return check_quality(out)


def base_model(model: str) -> str:
    return _SNAPSHOT.sub("", model.removeprefix("models/"))


# ------------------------------------------------------------------ changing an answer


#: The share of rows on which every model has the same difficulty (see :func:`difficulty`).
#: Models' errors are correlated: over 350 LLMs on shared benchmarks, "larger and more
#: accurate models have highly correlated errors" and two models that both err pick the
#: same wrong answer 60% of the time (Kim et al., "Correlated Errors in Large Language
#: Models", ICML 2025, proceedings.mlr.press/v267/kim25e.html). That paper gives no
#: share of rows to copy here: half is this emulator's choice. With errors drawn apart
#: for each model (none shared), a large model's own errors fall evenly over the small
#: model's scores, and a cascade's agreement on its most confident rows stops rising at
#: the large model's quality, which no real pair of models of one family shows.
SHARED_DIFFICULTY = 0.5


def difficulty(seed: int, model: str, prompt: str) -> float:
    """A row's difficulty for ``model``, uniform in [0, 1): a model of quality ``q``
    agrees on the rows whose difficulty is below ``q``. On :data:`SHARED_DIFFICULTY` of
    the rows (chosen by the prompt alone) it is the same for every model, so there a
    model of higher quality errs only where every model of lower quality errs too; on
    the others each model draws its own. Either way a row is equally likely to be each
    value, so each model still agrees on its share of rows."""
    if int_hash("quality-shared", seed, prompt) / 2.0**64 < SHARED_DIFFICULTY:
        return int_hash("quality", seed, prompt) / 2.0**64
    return int_hash("quality", seed, base_model(model), prompt) / 2.0**64


def agrees(share: float, seed: int, model: str, prompt: str) -> bool:
    """Whether ``model`` of quality ``share`` gives the responder's answer to ``prompt``."""
    if share >= 1.0:
        return True
    return difficulty(seed, model, prompt) < share


def disagree(
    value: Any, schema: Any, salt: tuple[Any, ...], resolve: Callable[[Any], Mapping[str, Any]]
) -> Any:
    """Another value than ``value`` where ``schema`` allows one (see the module
    docstring), chosen by a hash of ``salt`` and each field's path. ``resolve`` inlines a
    schema node's ``$ref``/``allOf`` and picks its ``anyOf`` branch."""
    return _change(value, schema, resolve, salt, "$", None)


def _change(
    value: Any,
    schema: Any,
    gen: Callable[[Any], Mapping[str, Any]],
    salt: tuple[Any, ...],
    path: str,
    name: Any,
) -> Any:
    node = gen(schema) if schema else {}
    if "const" in node or value is None:
        return value
    enum = node.get("enum")
    if isinstance(enum, list):
        others = [v for v in enum if v != value and v is not None]
        return others[int_hash(*salt, path) % len(others)] if others else value
    if isinstance(value, bool):
        return not value
    if isinstance(value, dict):
        props = node.get("properties") or {}
        return {
            k: _change(v, props.get(k, {}), gen, salt, f"{path}.{k}", k) for k, v in value.items()
        }
    if isinstance(value, list):
        items = node.get("items") or {}
        return [_change(v, items, gen, salt, f"{path}[{i}]", None) for i, v in enumerate(value)]
    if isinstance(value, int | float):
        is_score = isinstance(name, str) and name.lower() in SCORE_FIELDS
        return _other_number(value, node, salt, path, is_score)
    if isinstance(value, str):
        return other_text(value, node, salt, path, ())
    return value


def _other_number(
    value: float, node: Mapping[str, Any], salt: tuple[Any, ...], path: str, score: bool
) -> float:
    integer = isinstance(value, int) or node.get("type") == "integer"
    step = 1 if integer else 1e-6
    low, high = node.get("minimum"), node.get("maximum")
    if isinstance(node.get("exclusiveMinimum"), int | float):
        low = node["exclusiveMinimum"] + step
    if isinstance(node.get("exclusiveMaximum"), int | float):
        high = node["exclusiveMaximum"] - step
    u = int_hash(*salt, path, "n") / 2.0**64
    if score:  # lower: 30-80% of the way from the minimum (0 when there is none)
        floor = low if low is not None else min(0.0, float(value))
        moved = floor + (value - floor) * (0.3 + 0.5 * u)
    else:
        span = high - low if low is not None and high is not None else max(abs(value), 1.0)
        sign = 1 if int_hash(*salt, path, "s") % 2 else -1
        moved = value + sign * span * (0.1 + 0.3 * u)
        if (high is not None and moved > high) or (low is not None and moved < low):
            moved = value - sign * span * (0.1 + 0.3 * u)
    if low is not None:
        moved = max(moved, low)
    if high is not None:
        moved = min(moved, high)
    if integer:  # at least one step away, inside the bounds when they allow it
        whole = int(round(moved))
        for candidate in (whole, value + 1, value - 1) if not score else (whole, value - 1):
            inside = (low is None or candidate >= low) and (high is None or candidate <= high)
            if candidate != value and inside:
                return int(candidate)
        return int(value)
    return round(moved, 2) if round(moved, 2) != value else moved


def other_text(
    text: str, node: Mapping[str, Any], salt: tuple[Any, ...], path: str, labels: tuple[str, ...]
) -> str:
    if node.get("format"):
        return text
    if text in labels:
        others = [label for label in labels if label != text]
        return others[int_hash(*salt, path) % len(others)] if others else text
    words = text.split()
    changed = " ".join(words[: (len(words) + 1) // 2]) + "…" if len(words) > 1 else f"not {text}"
    low, high = int(node.get("minLength", 0)), node.get("maxLength")
    if len(changed) < low:
        changed += "." * (low - len(changed))
    if high is not None:
        changed = changed[: int(high)]
    return changed
