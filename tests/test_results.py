"""Reconciliation rules for what the emulator cannot produce: repeated lines and lines
for ids never sent (a provider bug), checked on the real OpenAI line parser."""

from __future__ import annotations

import json

from nbbatch import _results as results
from nbbatch.providers.openai import parse_lines


def line(custom_id: str, content: str) -> str:
    body = {"choices": [{"message": {"content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1}}  # fmt: skip
    response = {"status_code": 200, "request_id": "r", "body": body}
    return json.dumps({"id": "x", "custom_id": custom_id, "response": response, "error": None})


def test_repeated_and_unknown_lines_are_reported_never_merged_and_absent_ids_fail():
    raw = "\n".join([line("b", "first b"), line("zz", "stranger"), line("b", "second b"),
                     line("a", "only a")]).encode() + b"\n"  # fmt: skip
    rec = results.reconcile(["a", "b", "c"], [parse_lines(raw)])
    rows = {r["custom_id"]: r for r in rec.table.to_pylist()}
    assert sorted(rows) == ["a", "b", "c"]  # exactly one row per id sent
    assert rows["b"]["output"] == "first b"
    assert rows["c"]["status"] == "failed" and rows["c"]["error_type"] == "missing_result"
    assert rows["c"]["retryable"] is True
    assert rec.unknown == ["zz"] and rec.duplicates == ["b"] and rec.missing == 1
    note = rec.note("batch_1")
    assert "never sent" in note and "repeated" in note and "missing" in note


def test_a_corrupt_line_falls_back_to_line_by_line_and_its_row_is_missing():
    raw = (line("a", "fine") + "\n{not json\n" + line("b", "also fine") + "\n").encode()
    rec = results.reconcile(["a", "b", "c"], [parse_lines(raw)])
    status = {r["custom_id"]: r["status"] for r in rec.table.to_pylist()}
    assert status == {"a": "succeeded", "b": "succeeded", "c": "failed"}


def test_a_whole_batch_failure_gives_every_row_its_reason():
    rec = results.reconcile(
        ["a", "b"], [], batch_failure="token limit", failure_code="token_limit_exceeded"
    )
    assert {r["error_type"] for r in rec.table.to_pylist()} == {"token_limit_exceeded"}
    assert all(r["retryable"] for r in rec.table.to_pylist())
