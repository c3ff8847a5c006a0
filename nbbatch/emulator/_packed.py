"""Packed requests: several rows in one request, answered one item at a time.

A client may put several rows in one request (nbbatch's ``submit(..., pack=N)``): the
last user message holds an optional instruction in which ``<ITEM>`` stands for one
item, then the line ``=== nbbatch pack ===``, a guide, ``Items (JSON):`` and a JSON list
of ``{"id", "text"}`` items; the schema asked for is ``{"answers": [{"id", "answer"}]}``,
or ``{"answers": [{"id", "check", "answer"}]}`` where the guide asks each answer to
repeat its item's first five words as ``check``, which the emulator then does.
The emulator answers each item as it would answer that item sent alone (the instruction
with the item in place of ``<ITEM>``, through the same responder, the user's own
included), so a packed job gets the answers an unpacked one would.

An item whose answer the responder fails to give (it raises) is left out of the
answers, so only that row fails, once sent alone, as it would unpacked.
An item whose text holds :data:`DROP_MARKER` is left out of the answers, and one holding
:data:`WRONG_MARKER` is answered with a value of the wrong type: the stand-ins for a
model that skips or garbles an item, so a client's retry path can be tested. (Sent on
their own, such rows are answered normally.) An item holding :data:`SWAP_MARKER` gets
the id of the item after it, and that item its id, with each answer and check kept:
the stand-in for a model that mixes up which answer is whose.

This module reads the format from the wire only; it imports nothing of the client.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

ITEM = "<ITEM>"
MARK = "=== nbbatch pack ===\n"
ITEMS_LINE = "Items (JSON):\n"
#: Marker that makes the emulator leave an item out of a pack's answers.
DROP_MARKER = "[[emulator:pack-drop]]"
#: Marker that makes the emulator answer an item with a value of the wrong type.
WRONG_MARKER = "[[emulator:pack-wrong]]"
#: Marker that makes the emulator swap the ids of an item and the next one.
SWAP_MARKER = "[[emulator:pack-swap]]"
#: Words of an item a check repeats, and the most characters kept (as the guide asks).
CHECK_WORDS, CHECK_CHARS = 5, 60


def item_schema(schema: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The schema of one item's answer when ``schema`` asks for packed answers (with the
    root's ``$defs`` beside it, so its references resolve), else None."""
    props = schema.get("properties")
    if not isinstance(props, Mapping) or set(props) != {"answers"}:
        return None
    items = props["answers"].get("items") if isinstance(props["answers"], Mapping) else None
    inner = items.get("properties") if isinstance(items, Mapping) else None
    if not isinstance(inner, Mapping) or set(inner) not in (
        {"id", "answer"},
        {"id", "check", "answer"},
    ):
        return None
    answer = inner["answer"]
    if not isinstance(answer, Mapping):
        return None
    defs = schema.get("$defs")
    return {**answer, "$defs": defs} if isinstance(defs, Mapping) else answer


def split(prompt: str) -> tuple[str, str, list[dict[str, Any]]] | None:
    """(instruction prefix, suffix, items) of a packed prompt, or None if it is not one."""
    at = prompt.rfind(MARK)
    listed = prompt.rfind(ITEMS_LINE)
    if at < 0 or listed < at:
        return None
    try:
        items = orjson.loads(prompt[listed + len(ITEMS_LINE) :])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and isinstance(i.get("id"), str) and isinstance(i.get("text"), str)
        for i in items
    ):
        return None
    head = prompt[:at]
    if not head:
        return "", "", items
    head = head.removesuffix("\n")
    prefix, found, suffix = head.partition(ITEM)
    if not found:  # an instruction without the stand-in: it goes before each item
        return head + "\n", "", items
    return prefix, suffix, items


def answer(
    prompt: str,
    schema: Mapping[str, Any],
    respond_one: Callable[[str, Mapping[str, Any] | None], Any],
) -> dict[str, Any] | None:
    """The packed answer to ``prompt`` (None when it is not a packed request): each
    item's answer from ``respond_one(item_prompt, item_schema_or_None)``."""
    inner = item_schema(schema)
    parts = split(prompt) if inner is not None else None
    if inner is None or parts is None:
        return None
    prefix, suffix, items = parts
    text_only = inner.get("type") == "string"
    checked = "check" in schema["properties"]["answers"]["items"]["properties"]
    answers = []
    for item in items:
        if DROP_MARKER in item["text"]:
            continue
        try:
            value = respond_one(prefix + item["text"] + suffix, None if text_only else inner)
        except Exception:  # the item alone will say why (see below)
            # Left out, as a model may leave one out: the client sends the row again
            # alone, where the error fails that row only, as it would unpacked.
            continue
        if WRONG_MARKER in item["text"]:
            value = ["nbbatch emulator: deliberately wrong answer"]
        entry = {"id": item["id"], "answer": value}
        if checked:
            words = " ".join(item["text"].split()[:CHECK_WORDS])[:CHECK_CHARS]
            entry = {"id": item["id"], "check": words, "answer": value}
        answers.append(entry)
    for k, item in enumerate(items[:-1]):
        if SWAP_MARKER in item["text"]:
            ids = {e["id"]: e for e in answers}
            mine, theirs = ids.get(item["id"]), ids.get(items[k + 1]["id"])
            if mine is not None and theirs is not None:
                mine["id"], theirs["id"] = theirs["id"], mine["id"]
    return {"answers": answers}
