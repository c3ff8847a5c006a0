"""Trust at the edges: keys go only where they were meant to, result files nbbatch
writes are private and never written through a planted link, and a broken or hostile
result file spoils at most its own rows.

Where the emulator cannot play the attacker, a small HTTP listener does: it binds the
address a job was sent to (after the emulator there stopped), records every request's
headers and answers what the test says. Everything else runs through the public API,
the official SDKs and the ``nbbatch`` command, as a user runs them.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import openai
import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator
from nbbatch._ledger import default as ledger
from nbbatch.labext import handlers, views

from ._helpers import Listener
from ._helpers import run_cli as _cli
from .conftest import model_for, openai_client
from .this_machine import needs_remote_host, remote_host

#: This machine's non-loopback address (nbbatch takes it for a remote proxy's).
REMOTE = remote_host() or "127.0.0.1"
ENV_KEY = "sk-proj-environment0secret0key0123456789"
CLIENT_KEY = "sk-proj-client0given0key0abcdefghijkl"


def reviews(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"review {i}" for i in range(n)]})


def _pending_job(host: str, key: str) -> tuple[nb.BatchJob, str, int]:
    """A job left pending on an emulator at ``host`` that has stopped since, with the
    address it was sent to."""
    with emulator.start(host=host, processing_seconds=600.0) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key=key, max_retries=0)
        job = nb.submit(reviews(), "{text}", model="gpt-4o-mini", client=client)
        job.wait_sent()
        url = urlparse(server.openai_base_url)
        client.close()
    assert url.hostname is not None and url.port is not None
    return job, url.hostname, url.port


# ------------------------------------------------------------ keys and where they go


@pytest.mark.slow
def test_the_env_key_never_reaches_whoever_binds_a_dead_private_emulators_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job, host, port = _pending_job("127.0.0.1", "private-emulator-key")
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    listener = Listener(host, port)
    try:
        # The listener is not the emulator the job was sent to: no poll reaches it at
        # all, and each way in says so and asks for client=.
        status = _cli("status", job.id)  # cron's poll
        assert status.returncode != 0 and "is gone" in status.stderr
        with pytest.raises(nb.NbbatchError, match="is gone"):
            views.refresh(ledger(), job.id)  # the sidebar's "check now"
        with pytest.raises(nb.NbbatchError, match=r"is gone.*client="):
            nb.attach(job.id).refresh()
        assert listener.seen == []
    finally:
        listener.close()


@pytest.mark.slow
@needs_remote_host
def test_a_proxy_job_is_polled_only_with_a_key_meant_for_the_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # This machine's non-loopback address: nbbatch takes it for a remote one.
    job, host, port = _pending_job(REMOTE, CLIENT_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    listener = Listener(host, port)
    try:
        with pytest.raises(nb.ConfigError, match=r"with a key given on client=; pass client="):
            nb.attach(job.id)
        result = _cli("status", job.id)
        assert result.returncode != 0
        assert f"nb.attach('{job.id}', client=...)" in result.stderr
        with pytest.raises(nb.ConfigError, match="pass client="):
            views.refresh(ledger(), job.id)
        assert listener.seen == []  # nothing at all went to the proxy
        # With the client given again, the job polls (and only that key is sent).
        client = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key=CLIENT_KEY)
        snap = nb.attach(job.id, client=client).refresh()
        client.close()
        assert snap.counts["pending"] == 3
        assert listener.sent(CLIENT_KEY) and not listener.sent(ENV_KEY)
    finally:
        listener.close()


@needs_remote_host
def test_a_proxy_job_submitted_with_the_env_key_polls_with_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    with emulator.start(host=REMOTE, processing_seconds=0.05) as server:
        client = openai.OpenAI(base_url=server.openai_base_url, api_key=ENV_KEY)
        job = nb.submit(reviews(), "{text}", model="gpt-4o-mini", client=client)
        job.wait_sent()
        client.close()
        record = ledger().job(job.id)
        assert record is not None and record["credential"] == "client"
        assert record["key_hash"] and ENV_KEY not in str(record)  # a keyed hash, not the key
        result = _cli(
            "collect", job.id, "--wait", "--timeout", "60", "--out", str(tmp_path / "r.csv")
        )
        assert "pass client=" not in result.stderr
        assert nb.attach(job.id).wait(timeout=60, progress=False).counts["succeeded"] == 3


def test_a_job_submitted_with_the_env_key_records_its_variable(
    emu: emulator.Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", emu.openai_base_url)
    job = nb.submit(reviews(), "{text}", model="gpt-4o-mini").wait(timeout=60, progress=False)
    record = ledger().job(job.id)
    assert record is not None
    # A loopback address is an emulator's: the job records who listened there, never a
    # key's variable, and is polled again without the environment's key.
    assert record["credential"].startswith("loopback:") and record["key_hash"] is None
    monkeypatch.delenv("OPENAI_API_KEY")
    assert nb.attach(job.id).refresh().counts["succeeded"] == len(reviews())


@pytest.mark.slow
@needs_remote_host
def test_the_sidebars_warning_never_shows_a_key_an_endpoint_echoes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job, host, port = _pending_job(REMOTE, ENV_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)  # the same key: polls may use it

    def echo(headers: dict[str, str]) -> dict[str, Any]:
        return {"error": {"message": f"overloaded; you sent {headers.get('authorization')}"}}

    listener = Listener(host, port, status=503, body=echo)
    try:
        out = views.refresh(ledger(), job.id)
        assert listener.sent(ENV_KEY)  # the key meant for this address was used...
        assert out["warning"] and "503" in out["warning"]
        assert ENV_KEY not in json.dumps(out)  # ...and is never shown
        assert ENV_KEY not in str(ledger().query("SELECT * FROM events"))
    finally:
        listener.close()


def test_the_scrubber_knows_every_key_shape_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "bearer-token-of-ours-123456")
    text = (
        "refused: AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW, token bearer-token-of-ours-123456, "
        "sk-ant-api03-abcdefghij; a task-manager is no key"
    )
    clean = handlers.scrub(text)
    assert "SyA1b2" not in clean and "bearer-token-of-ours" not in clean
    assert "abcdefghij" not in clean and "task-manager" in clean
    from nbbatch import _scrub

    _scrub.remember("a-key-given-on-a-client-object")
    assert "given-on" not in str(nb.ProviderError("bad key a-key-given-on-a-client-object"))


# ------------------------------------------------------------------- submit checks


def test_submit_to_an_unreachable_provider_raises_before_recording() -> None:
    with emulator.start() as server:
        url = server.openai_base_url  # a port nothing listens on once it stopped
    client = openai.OpenAI(base_url=url, api_key="k", max_retries=0)
    with pytest.raises(nb.ProviderError, match="could not reach openai .* nothing was created"):
        nb.submit(reviews(), "{text}", model="gpt-4o-mini", client=client)
    client.close()
    assert nb.jobs().empty


@pytest.mark.parametrize("given", ["client", "env"])
def test_a_rejected_key_at_submit_names_where_it_came_from(
    given: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with emulator.start() as server:
        url = urlparse(server.openai_base_url)
    assert url.hostname is not None and url.port is not None
    refuse = {"error": {"message": "Incorrect API key", "type": "invalid_request_error"}}
    listener = Listener(url.hostname, url.port, status=401, body=lambda h: refuse)
    try:
        if given == "client":
            client = openai.OpenAI(base_url=url.geturl(), api_key=CLIENT_KEY, max_retries=0)
            where = r"the key given on client= \(OpenAI\(api_key=...\)\)"
        else:
            monkeypatch.setenv("OPENAI_API_KEY", ENV_KEY)
            monkeypatch.setenv("OPENAI_BASE_URL", url.geturl())
            client = None
            where = "the key in OPENAI_API_KEY"
        with pytest.raises(nb.ProviderError, match=f"rejected {where}.*nothing was created"):
            nb.submit(reviews(), "{text}", model="gpt-4o-mini", client=client)
        assert nb.jobs().empty
        assert listener.seen[0]["authorization"].endswith(CLIENT_KEY if client else ENV_KEY)
    finally:
        listener.close()


# ------------------------------------------------------------------- files written


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _finished_and_victim(emu: emulator.Emulator, folder: Path) -> tuple[nb.BatchJob, Path]:
    """A finished 3-row job, and a file in ``folder`` a planted link may point at."""
    job = nb.submit(reviews(), "{text}", model="gpt-4o-mini", client=openai_client(emu))
    job.wait(timeout=60, progress=False)
    victim = folder / "victim.txt"
    victim.write_text("precious")
    return job, victim


def test_the_sidebars_parquet_is_private_and_never_written_through_a_planted_link(
    emu: emulator.Emulator, tmp_path: Path
) -> None:
    job, victim = _finished_and_victim(emu, tmp_path)
    # The name the old writer used: guessable from the job id and the server's pid.
    (tmp_path / f".{job.id}.parquet.{os.getpid()}.tmp").symlink_to(victim)
    old = os.umask(0o022)
    try:
        out = views.collect(ledger(), job.id, str(tmp_path))
    finally:
        os.umask(old)
    assert victim.read_text() == "precious"
    written = tmp_path / out["path"]
    assert not written.is_symlink() and _mode(written) == 0o600
    assert len(pd.read_parquet(written)) == 3


def test_collect_out_is_private_and_replaces_a_planted_link(
    emu: emulator.Emulator, tmp_path: Path
) -> None:
    job, victim = _finished_and_victim(emu, tmp_path)
    out = tmp_path / "results.csv"
    out.symlink_to(victim)
    old = os.umask(0o022)  # the usual umask: 0644 files unless nbbatch says otherwise
    try:
        result = _cli("collect", job.id, "--out", str(out))
        assert result.returncode == 0, result.stderr
        assert victim.read_text() == "precious"
        assert not out.is_symlink() and _mode(out) == 0o600
        assert len(pd.read_csv(out)) == 3
        os.umask(0o277)  # a user asking for less gets less
        assert _mode(job.to_parquet(tmp_path / "mine.parquet")) == 0o400
    finally:
        os.umask(old)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------- hostile or broken result files


def _submitted(client: Any, **kwargs: Any) -> nb.BatchJob:
    job = nb.submit(reviews(), "{text}", model=model_for(client), client=client, **kwargs)
    job.wait_sent()
    return job


def test_one_wrong_typed_line_fails_only_its_row(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _submitted(client, retries=0)
    download = job._provider.download_results

    def hostile(info: Any, sink: Any, **kwargs: Any) -> None:
        # The emulator writes only well-formed lines: one is swapped for a bad one here.
        download(info, sink, **kwargs)
        first, _, rest = sink.paths[0].read_bytes().partition(b"\n")
        sink.paths[0].write_bytes(b'{"custom_id": 5, "key": 5}\n' + rest)

    monkeypatch.setattr(job._provider, "download_results", hostile)
    snap = job.wait(timeout=60, progress=False).snapshot()
    assert snap.counts["succeeded"] == 2 and snap.counts["failed"] == 1
    (bad,) = views.failed_view(ledger(), job.id)["rows"]
    assert bad["error_type"] == "missing_result"
    assert views.job_view(ledger(), job.id)["counts"]["succeeded"] == 2  # the sidebar reads it


def test_a_result_file_that_cannot_be_read_is_downloaded_again(
    emu: emulator.Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _submitted(openai_client(emu))
    provider = job._provider
    download, parse = provider.download_results, provider.parse_results
    downloads: list[int] = []

    def truncated_once(info: Any, sink: Any, **kwargs: Any) -> None:
        download(info, sink, **kwargs)
        downloads.append(1)
        if len(downloads) == 1:
            whole = sink.paths[0].read_bytes()
            sink.paths[0].write_bytes(whole[: len(whole) // 2])

    def parse_whole_files_only(raw: bytes, spec: Any) -> Any:
        # A parser that cannot make sense of half a file (as a provider's might not).
        if not raw.endswith(b"\n"):
            raise ValueError("the file ends in the middle of a line")
        return parse(raw, spec)

    monkeypatch.setattr(provider, "download_results", truncated_once)
    monkeypatch.setattr(provider, "parse_results", parse_whole_files_only)
    while not job._ledger.batches(job.id)[0]["ended"]:
        snap = job.refresh()
    snap = job.refresh()
    if snap.counts["pending"]:  # the broken copy was not kept: this poll fetches it again
        assert "could not be read" in (snap.last_error or "")
        snap = job.refresh()
    assert len(downloads) == 2
    assert snap.counts["succeeded"] == 3 and snap.last_error is None


def test_results_larger_than_any_reply_are_refused_before_they_are_kept(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbbatch import _collect as collect

    job = _submitted(client)
    # 3 requests of a few bytes each: far less than any of the emulator's replies.
    monkeypatch.setattr(collect, "RESULT_BYTES_BASE", 0)
    monkeypatch.setattr(collect, "RESULT_BYTES_PER_REQUEST", 20)
    with pytest.raises(nb.ProviderError, match="larger than 60 bytes"):
        job.wait(timeout=60, progress=False)
    folder = job._ledger.files / job.id
    assert not list(folder.glob("*.complete")) and not list(folder.glob("*.jsonl"))
    assert job.snapshot().counts["pending"] == 3


def test_a_batch_id_from_the_provider_never_becomes_a_path(nbbatch_home: Path) -> None:
    with emulator.start() as server:
        url = urlparse(server.openai_base_url)
    assert url.hostname is not None and url.port is not None
    line = {
        "custom_id": "x",
        "response": {"status_code": 200, "body": {"choices": [{"message": {"content": "x"}}]}},
    }

    def fake_openai(headers: dict[str, str], path: str) -> Any:
        """Just enough of OpenAI's batch API to hand out a hostile batch id."""
        if path.startswith("/v1/models/"):
            return {"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "x"}
        if path == "/v1/files":
            return {"id": "file-in", "object": "file", "bytes": 1, "created_at": 0,
                    "filename": "in.jsonl", "purpose": "batch", "status": "processed"}  # fmt: skip
        if path.endswith("/content"):
            return line
        return {"id": "../../../escaped", "object": "batch", "status": "completed",
                "endpoint": "/v1/chat/completions", "input_file_id": "file-in",
                "completion_window": "24h", "created_at": 0, "output_file_id": "file-out",
                "request_counts": {"total": 3, "completed": 3, "failed": 0}}  # fmt: skip

    listener = Listener(url.hostname, url.port, status=200, body=fake_openai)
    client = openai.OpenAI(base_url=url.geturl(), api_key="k", max_retries=0)
    try:
        job = nb.submit(reviews(), "{text}", model="gpt-4o-mini", client=client)
        with pytest.raises(nb.ProviderError, match="batch id nbbatch cannot use"):
            job.wait(timeout=60, progress=False)
    finally:
        client.close()
        listener.close()
    assert not [p for p in nbbatch_home.parent.rglob("*escaped*")]
