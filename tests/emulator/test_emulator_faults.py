"""Fault knobs: exact counts, per job, determinism, fault_attempts, markers, HTTP faults,
shuffle."""

from __future__ import annotations

from typing import Any

import jsonschema
import openai
import pandas as pd
import pytest
from emu_helpers import (
    anthropic_client,
    chat_line,
    message_request,
    openai_client,
    raw,
    run_message_batch,
    run_openai_batch,
)
from emu_openapi import check

import nbbatch as nb
from nbbatch import emulator

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["a", "b"]}},
    "required": ["label"],
    "additionalProperties": False,
}


def rows(n: int, **body: Any) -> list[dict]:
    return [chat_line(f"r{i}", f"prompt {i}", **body) for i in range(n)]


def test_error_rate_exact_and_resubmission_succeeds() -> None:
    with emulator.start(processing_seconds=0.01, error_rate=0.1) as emu:
        with openai_client(emu) as client:
            b, out, err = run_openai_batch(client, rows(200))
            assert b.status == "completed"
            assert (b.request_counts.completed, b.request_counts.failed) == (180, 20)
            assert len(out) == 180 and len(err) == 20
            for e in err:
                assert e["response"]["status_code"] == 500
                assert e["response"]["body"]["error"]["type"] == "server_error"
            failed_ids = {e["custom_id"] for e in err}
            again = [r for r in rows(200) if r["custom_id"] in failed_ids]
            b2, out2, err2 = run_openai_batch(client, again)
            assert len(out2) == 20 and not err2 and b2.error_file_id is None


def test_faults_apply_to_every_job_not_only_the_first() -> None:
    with emulator.start(processing_seconds=0.01, error_rate=0.1) as emu:
        with openai_client(emu) as client:
            for _ in range(2):  # the same custom_ids again: a new job, faults again
                _, out, err = run_openai_batch(client, rows(100))
                assert len(err) == 10 and len(out) == 90
                failed_ids = {e["custom_id"] for e in err}
                # ... and the retry of the faulted rows succeeds
                _, out2, err2 = run_openai_batch(
                    client, [r for r in rows(100) if r["custom_id"] in failed_ids]
                )
                assert len(out2) == 10 and not err2
        with anthropic_client(emu) as client:
            requests = [message_request(f"r{i}", f"p{i}", max_tokens=20) for i in range(50)]
            for _ in range(2):
                got = run_message_batch(client, requests)
                errored = [r for r in requests if got[r["custom_id"]].type == "errored"]
                assert len(errored) == 5
                again = run_message_batch(client, errored)
                assert {r.type for r in again.values()} == {"succeeded"}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_two_jobs_in_a_row_both_meet_the_faults_and_both_recover(provider: str) -> None:
    df = pd.DataFrame({"text": [f"row {i}" for i in range(40)]})
    with emulator.start(processing_seconds=0.02, error_rate=0.1) as emu:
        sdk = openai_client if provider == "openai" else anthropic_client
        model = "gpt-4o-mini" if provider == "openai" else "claude-haiku-4-5"
        with sdk(emu) as client:
            for _ in range(2):
                job = nb.submit(
                    df, "{text}", model=model, client=client, force=True, reuse=False,
                    display=False,
                )  # fmt: skip
                job.wait(timeout=30, progress=False)
                assert job.counts["succeeded"] == 40
                attempts = job.results()["attempt"]
                # 10 % failed transiently at first and succeeded on the automatic retry.
                assert (attempts == 2).sum() == 4 and (attempts == 1).sum() == 36


def test_faults_are_deterministic() -> None:
    picked = []
    for _ in range(2):
        with emulator.start(processing_seconds=0.01, error_rate=0.2, seed=7) as emu:
            with openai_client(emu) as client:
                _, _, err = run_openai_batch(client, rows(50))
                picked.append(sorted(e["custom_id"] for e in err))
    assert picked[0] == picked[1] and len(picked[0]) == 10


def test_fault_attempts_none_fails_every_time() -> None:
    with emulator.start(processing_seconds=0.01, error_rate=1.0, fault_attempts=None) as emu:
        with openai_client(emu) as client:
            for _ in range(2):
                b, out, err = run_openai_batch(client, rows(3))
                assert len(err) == 3 and not out


def test_expire_missing_truncate_invalid_openai() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}}
    with emulator.start(processing_seconds=0.01, expire_rate=0.1, missing_rate=0.05) as emu:
        with openai_client(emu) as client:
            b, out, err = run_openai_batch(client, rows(100))
            assert b.status == "expired" and b.expired_at is not None
            check("Batch", raw(f"{emu.openai_base_url}/batches/{b.id}")[2])
            assert b.finalizing_at is None and b.completed_at is None
            expired = [e for e in err if e["error"] and e["error"]["code"] == "batch_expired"]
            assert len(expired) == 10 and all(e["response"] is None for e in expired)
            assert len(out) == 85  # 5 silently missing
            assert b.request_counts.completed == 90 and b.request_counts.failed == 10
        emu.configure(expire_rate=0, missing_rate=0, invalid_output_rate=0.5, truncate_rate=0.25)
        with openai_client(emu) as client:
            b, out, err = run_openai_batch(
                client, [chat_line(f"s{i}", f"p{i}", response_format=fmt) for i in range(20)]
            )
            assert b.status == "completed" and not err
            valid = invalid = truncated = 0
            for line in out:
                choice = line["response"]["body"]["choices"][0]
                if choice["finish_reason"] == "length":
                    truncated += 1
                    continue
                try:
                    jsonschema.validate(
                        __import__("json").loads(choice["message"]["content"]), SCHEMA
                    )
                    valid += 1
                except jsonschema.ValidationError:
                    invalid += 1
            assert (invalid, truncated, valid) == (10, 3, 7)  # truncate: 25 % of the 10 left


def test_anthropic_faults_and_markers() -> None:
    with emulator.start(processing_seconds=0.01, error_rate=0.2, expire_rate=0.1) as emu:
        with anthropic_client(emu) as client:
            requests = [message_request(f"r{i}", f"p{i}", max_tokens=50) for i in range(20)]
            requests.append(
                {
                    "custom_id": "t",
                    "params": {
                        "model": "claude-haiku-4-5",
                        "max_tokens": 50,
                        "messages": [{"role": "user", "content": f"x {emulator.TRANSIENT_MARKER}"}],
                    },
                }
            )
            requests.append(
                {
                    "custom_id": "f",
                    "params": {
                        "model": "claude-haiku-4-5",
                        "max_tokens": 50,
                        "messages": [{"role": "user", "content": f"x {emulator.FAIL_MARKER}"}],
                    },
                }
            )
            got = run_message_batch(client, requests)
            types = [r.type for r in got.values()]
            assert types.count("expired") == 2 and types.count("errored") == 4 + 2
            assert got["t"].error.error.type in ("api_error", "overloaded_error")
            assert got["f"].error.error.type == "invalid_request_error"
            transient = [r.error.error.type for r in got.values() if r.type == "errored"]
            assert set(transient) <= {"api_error", "overloaded_error", "invalid_request_error"}
            retry = [r for r in requests if got[r["custom_id"]].type != "succeeded"]
            again = run_message_batch(client, retry)
            assert again["t"].type == "succeeded"
            assert again["f"].type == "errored"
            assert [k for k, v in again.items() if v.type != "succeeded"] == ["f"]


def test_markers_in_openai_batches(emu: emulator.Emulator, oai: openai.OpenAI) -> None:
    batch = [chat_line("t", f"a {emulator.TRANSIENT_MARKER}"), chat_line("f", emulator.FAIL_MARKER)]
    _, out, err = run_openai_batch(oai, batch)
    codes = {e["custom_id"]: e["response"]["status_code"] for e in err}
    assert codes == {"t": 500, "f": 400} and not out
    _, out, err = run_openai_batch(oai, batch)
    assert [o["custom_id"] for o in out] == ["t"]
    assert [e["custom_id"] for e in err] == ["f"]


def test_http_error_rate_is_absorbed_by_sdk_retries() -> None:
    with emulator.start(processing_seconds=0.01, http_error_rate=0.5) as emu:
        with openai_client(emu) as client:
            b, out, _ = run_openai_batch(client, rows(5))
            assert len(out) == 5
        with anthropic_client(emu) as client:
            got = run_message_batch(
                client,
                [
                    {
                        "custom_id": "a",
                        "params": {
                            "model": "claude-haiku-4-5",
                            "max_tokens": 9,
                            "messages": [{"role": "user", "content": "x"}],
                        },
                    }
                ],
            )
            assert got["a"].type == "succeeded"
        gets = [p for m, p in emu.request_log if m == "GET"]
        posts = [p for m, p in emu.request_log if m == "POST"]
        assert len(gets) > len(set(gets))  # some GETs were retried
        assert len(posts) == len(set(posts))  # creates are never faulted by default
        emu.configure(http_error_rate=1.0, http_error_statuses=(429,))
        with openai_client(emu, max_retries=0) as client:
            with pytest.raises(openai.RateLimitError):
                client.batches.list()


def test_shuffle_reorders_output(emu: emulator.Emulator, oai: openai.OpenAI) -> None:
    _, out, _ = run_openai_batch(oai, rows(30))
    ids = [o["custom_id"] for o in out]
    assert sorted(ids) == sorted(f"r{i}" for i in range(30)) and ids != [f"r{i}" for i in range(30)]
    with emulator.start(processing_seconds=0.01, shuffle=False) as plain:
        with openai_client(plain) as client:
            _, out, _ = run_openai_batch(client, rows(30))
    assert [o["custom_id"] for o in out] == [f"r{i}" for i in range(30)]


def test_configure_validates_knobs(emu: emulator.Emulator) -> None:
    with pytest.raises(TypeError):
        emu.configure(nonsense=1)
    with pytest.raises(ValueError):
        emu.configure(error_rate=2)
    with pytest.raises(ValueError):
        emulator.start(processing_seconds=-1)
