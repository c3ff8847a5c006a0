"""The background emulator behind ``provider="local"`` answers its owner only.

Each test plays an attack by another user of the machine (or a web page, or a process
squatting on a recorded port) against a real background emulator process, through the
official SDKs or plain HTTP, and checks that it is refused. Tests that need a second
user run only as root (they switch a forked child to ``nobody``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http import server as http_server
from pathlib import Path

import anthropic
import openai
import orjson
import pandas as pd
import pytest
from google import genai
from google.genai import errors as genai_errors

import nbbatch as nb
from nbbatch import emulator
from nbbatch.emulator import _background

NOBODY = 65534
as_root = pytest.mark.skipif(
    not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to act as another user"
)


def status_of(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None, body: bytes = b""
) -> int:
    """The HTTP status of one plain request (no proxy, whatever the environment says)."""
    request = urllib.request.Request(
        url, data=body if method == "POST" else None, method=method, headers=headers or {}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.close()
        return int(error.code)


def wait_dead(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _background._pid_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.1)


@pytest.fixture
def running(nbbatch_home: Path) -> _background.Background:
    """The home's background emulator, running."""
    return emulator.background(nbbatch_home)


# ------------------------------------------------------------------ no key, wrong key


def test_a_request_without_the_home_key_is_refused_by_every_api(running):
    with openai.OpenAI(
        base_url=running.openai_base_url, api_key="guessed", max_retries=0
    ) as client:
        with pytest.raises(openai.AuthenticationError):
            client.files.list()
    with anthropic.Anthropic(
        base_url=running.anthropic_base_url, api_key="guessed", max_retries=0
    ) as client:
        with pytest.raises(anthropic.AuthenticationError):
            client.messages.batches.list()
    gemini = genai.Client(api_key="guessed", http_options={"base_url": running.gemini_base_url})
    with pytest.raises(genai_errors.ClientError) as refused:
        gemini.batches.list()
    assert refused.value.code == 401
    gemini.close()
    # The Gemini upload URL used to need no key at all: only an id handed out to a keyed
    # start request may go without it.
    upload = f"{running.gemini_base_url}/upload/v1beta/files?upload_id=up0123456789abcdef"
    headers = {"x-goog-upload-command": "upload, finalize", "x-goog-upload-offset": "0"}
    assert status_of(upload, method="POST", headers=headers, body=b"x") == 401
    for path in ("/v1/files", "/v1/batches", "/v1/messages/batches", "/gemini/v1beta/files"):
        assert status_of(running.url + path) == 401, path
        assert status_of(running.url + path, headers={"x-api-key": "local-emulator"}) == 401, path


def test_the_home_key_opens_every_api(running):
    assert running.token and running.token not in repr(running)
    with openai.OpenAI(base_url=running.openai_base_url, api_key=running.token) as client:
        assert client.files.list().data == []
    with anthropic.Anthropic(base_url=running.anthropic_base_url, api_key=running.token) as client:
        assert client.messages.batches.list().data == []
    gemini = genai.Client(api_key=running.token, http_options={"base_url": running.gemini_base_url})
    assert list(gemini.batches.list()) == []
    gemini.close()


def _hosts_refused(server: emulator.Emulator | _background.Background, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    assert status_of(server.url + "/v1/files", headers=headers) == 200
    port = server.port
    for host in (f"attacker.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}"):
        assert status_of(server.url + "/v1/files", headers={**headers, "Host": host}) == 403, host
    named = {**headers, "Host": f"localhost:{port}"}
    assert status_of(server.url + "/v1/files", headers=named) == 200


def test_a_request_naming_another_host_is_refused(nbbatch_home):
    # A web page that points a name of its own at 127.0.0.1 (DNS rebinding) sends that
    # name as Host; with the right key or not, no emulator on loopback answers it: not a
    # private one (any key), not the background one (its key).
    with emulator.start() as private:
        _hosts_refused(private, "any")
    running = emulator.background(nbbatch_home)
    _hosts_refused(running, running.token)


@pytest.mark.slow
def test_a_local_gemini_job_runs_with_the_key_through_upload_and_download(monkeypatch):
    monkeypatch.setenv("NBBATCH_EMULATOR_SPEED", "20")
    df = pd.DataFrame({"text": ["alpha", "beta"]})
    job = nb.submit(df, "Say: {text}", model="gemini-2.5-flash", provider="local", wait=True)
    merged = job.merge(df)
    assert merged["response"].tolist() == [emulator.echo_text(f"Say: {t}") for t in df["text"]]


# ------------------------------------------------------------------ another user


def _as_nobody(action: str, home: Path, url: str) -> dict[str, object]:
    """Run ``action`` in a forked child that became user ``nobody``; what it saw."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only what is loaded already (nobody cannot read our files)
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            seen: dict[str, object] = {}
            if action == "steal":
                for name in ("secret", "server.json"):
                    try:
                        (home / "emulator" / name).read_bytes()
                        seen[name] = "read"
                    except PermissionError:
                        seen[name] = "refused"
                seen["list"] = status_of(url + "/v1/files", headers={"x-api-key": "guessed"})
                seen["delete"] = status_of(url + "/v1/files/file-x", method="DELETE")
            os.write(write, json.dumps(seen).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        out = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(out)


@as_root
def test_another_user_can_neither_read_the_key_nor_list_files(nbbatch_home, running):
    seen = _as_nobody("steal", nbbatch_home, running.url)
    assert seen == {"secret": "refused", "server.json": "refused", "list": 401, "delete": 401}


@contextlib.contextmanager
def process_of_nobody() -> Iterator[int]:
    """A live process of another user (a pid a server.json might name after reuse)."""
    sleeper = subprocess.Popen(["sleep", "300"], user=NOBODY, group=NOBODY)
    try:
        yield sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()


@as_root
def test_find_ignores_a_server_json_or_pid_of_another_user(nbbatch_home, running):
    folder = nbbatch_home / "emulator"
    assert _background.find(nbbatch_home) == running
    original = (folder / "server.json").read_bytes()
    with process_of_nobody() as pid:
        fake = {**orjson.loads(original), "pid": pid}
        (folder / "server.json").write_bytes(orjson.dumps(fake))
        assert _background.find(nbbatch_home) is None
    (folder / "server.json").write_bytes(original)
    os.chown(folder / "server.json", NOBODY, NOBODY)  # planted by another user
    assert _background.find(nbbatch_home) is None
    os.chown(folder / "server.json", 0, 0)
    assert _background.find(nbbatch_home) == running


@as_root
def test_an_emulator_folder_of_another_user_is_refused(nbbatch_home):
    folder = nbbatch_home / "emulator"
    folder.mkdir(parents=True, mode=0o700)
    os.chown(folder, NOBODY, NOBODY)
    with pytest.raises(PermissionError, match="belongs to another user.*NBBATCH_HOME"):
        emulator.background(nbbatch_home)


def test_a_loose_emulator_folder_is_tightened(nbbatch_home):
    folder = nbbatch_home / "emulator"
    folder.mkdir(parents=True)
    folder.chmod(0o755)  # made by hand, or by an older release
    emulator.background(nbbatch_home)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / "secret").stat().st_mode & 0o777 == 0o600


# ------------------------------------------------------------------ a squatter


class _Squatter(http_server.BaseHTTPRequestHandler):
    """Answers everything as an emulator would, and keeps what it was sent."""

    seen: list[bytes] = []
    pid = 0

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append(self.requestline.encode() + bytes(self.headers) + body)
        reply = {"object": "list", "data": [], "pid": self.pid, "proof": "0" * 64}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


def squat(port: int) -> http_server.ThreadingHTTPServer:
    """A squatter listening on ``port`` as soon as it is free (a killed process's other
    threads may hold its sockets a moment after its main thread is reported dead)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return http_server.ThreadingHTTPServer(("127.0.0.1", port), _Squatter)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_squatter_on_the_recorded_port_never_receives_the_key(nbbatch_home, running):
    folder = nbbatch_home / "emulator"
    os.kill(running.pid, signal.SIGKILL)
    wait_dead(running.pid, timeout=30)
    # Another process takes the port, and the pid in server.json is alive again (reused:
    # here, this very process).
    _Squatter.seen, _Squatter.pid = [], os.getpid()
    squatter = squat(running.port)
    thread = threading.Thread(target=squatter.serve_forever, daemon=True)
    thread.start()
    try:
        info = {"pid": os.getpid(), "port": running.port, "url": running.url}
        (folder / "server.json").write_bytes(orjson.dumps(info))
        assert _background.find(nbbatch_home) is None
        fresh = emulator.background(nbbatch_home)  # a real one, elsewhere
        token = running.token
        # A new process has a new key: one a stranger learned before is no use now.
        assert fresh.port != running.port and fresh.token != token
        df = pd.DataFrame({"text": ["a"]})
        nb.submit(df, "{text}", model="gpt-4o-mini", provider="local").wait_sent()
    finally:
        squatter.shutdown()
        squatter.server_close()
    sent = b"".join(_Squatter.seen)
    assert token.encode() not in sent
    assert all(line.startswith(b"GET /nbbatch/identify?nonce=") for line in _Squatter.seen)


def test_an_identity_relayed_from_another_port_is_not_believed(running):
    # The proof is bound to the port (and pid) of the emulator that made it, so a
    # squatter that asks the real emulator and relays its answer gains nothing.
    nonce = "n" * 32
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{running.url}/nbbatch/identify?nonce={nonce}") as response:
        answer = json.loads(response.read())
    assert answer["proof"] == _background.identity_proof(
        running.token, running.pid, running.port, nonce
    )
    assert answer["proof"] != _background.identity_proof(
        running.token, running.pid, running.port + 1, nonce
    )


# ------------------------------------------------------------------ life time


def test_removing_the_home_stops_its_background_emulator(nbbatch_home, running):
    shutil.rmtree(nbbatch_home)
    wait_dead(running.pid, timeout=30)
    assert not nbbatch_home.exists()  # and it did not bring its folder back on the way out


def test_the_cli_still_reaches_the_local_job(nbbatch_home, monkeypatch):
    monkeypatch.setenv("NBBATCH_EMULATOR_SPEED", "20")
    df = pd.DataFrame({"text": ["a", "b"]})
    job = nb.submit(df, "{text}", model="claude-haiku-4-5", provider="local", wait=True)
    status = subprocess.run(
        [sys.executable, "-m", "nbbatch.cli", "status", job.id],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert status.returncode == 0, status.stderr
    assert "2 succeeded" in status.stdout
