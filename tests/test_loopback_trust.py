"""No key and no prompt reach a loopback listener that is not the one a job was sent to.

Each test plays a squatter of another user (``nobody``): once the emulator a job was
sent to has gone, it listens on the same port and keeps every byte it is sent. The
tests drive the public API and check that the squatter got nothing, and that nbbatch
says what happened and asks for ``client=``. They run only as root (the squatter is a
forked child that became ``nobody``).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Iterator
from http import server as http_server

import httpx
import openai
import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import _ledger as nb_ledger
from nbbatch import emulator
from nbbatch.emulator import FAIL_MARKER, _background

NOBODY = 65534
REAL_KEY = "sk-proj-realkeyoftheuser0123456789"
as_root = pytest.mark.skipif(
    not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to act as another user"
)
pytestmark = as_root


class _Keep(http_server.BaseHTTPRequestHandler):
    """Answers 200 with an empty JSON object, and writes what it got to ``out``."""

    out = -1

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        os.write(self.out, self.requestline.encode() + b"\n" + bytes(self.headers) + body)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def squatter(port: int) -> Iterator[list[bytes]]:
    """A process of user ``nobody`` listening on ``port`` (as soon as it is free) for
    the block; the list holds what it was sent, filled in when the block ends."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: stdlib only, nothing of ours to read
        try:
            os.close(read)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            _Keep.out = write
            deadline = time.monotonic() + 30
            while True:
                try:
                    server = http_server.HTTPServer(("127.0.0.1", port), _Keep)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        os._exit(1)
                    time.sleep(0.1)
            os.write(write, b"READY\n")
            server.serve_forever()
        finally:
            os._exit(0)
    os.close(write)
    ready = b""
    while not ready.startswith(b"READY\n"):
        assert select.select([read], [], [], 60)[0], "the squatter did not start"
        chunk = os.read(read, 4096)
        assert chunk, "the squatter could not take the port"
        ready += chunk
    seen: list[bytes] = []
    try:
        yield seen
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        rest = ready.removeprefix(b"READY\n")
        while chunk := os.read(read, 65536):
            rest += chunk
        os.close(read)
        seen.append(rest)


_OPEN: list[httpx.Client] = []  # the httpx clients a test made, to close at its end


def _pending_job(emu: emulator.Emulator, how: str, monkeypatch: pytest.MonkeyPatch) -> nb.BatchJob:
    """A job sent to ``emu`` with the environment's real key, not finished yet."""
    monkeypatch.setenv("OPENAI_API_KEY", REAL_KEY)
    df = pd.DataFrame({"text": ["first private prompt", "second private prompt"]})
    if how == "client without api_key":
        client = openai.OpenAI(base_url=emu.openai_base_url)  # takes OPENAI_API_KEY
        job = nb.submit(df, "{text}", model="gpt-4o-mini", client=client)
    elif how == "client of the older httpx package":
        # The SDKs also take an httpx (not httpx2) client: guarded all the same.
        http = httpx.Client()
        monkeypatch.setattr(f"{__name__}._OPEN", [*_OPEN, http])  # closed by the test
        legacy = openai.OpenAI(base_url=emu.openai_base_url, http_client=http)
        job = nb.submit(df, "{text}", model="gpt-4o-mini", client=legacy)
    else:
        monkeypatch.setenv("OPENAI_BASE_URL", emu.openai_base_url)
        job = nb.submit(df, "{text}", model="gpt-4o-mini")
    job.wait_sent()
    record = nb_ledger.default().job(job.id)
    assert record["credential"].startswith("loopback:") and record["key_hash"] is None
    return job


@pytest.mark.parametrize(
    "how", ["client without api_key", "client of the older httpx package", "OPENAI_BASE_URL"]
)
def test_a_squatter_on_a_dead_emulators_port_gets_no_key(nbbatch_home, monkeypatch, how):
    emu = emulator.start(processing_seconds=3600)
    job = _pending_job(emu, how, monkeypatch)
    port = emu.port
    emu.stop()
    with squatter(port) as seen:
        # The old handle polls: refused before anything is sent.
        with pytest.raises(Exception, match="loopback backend .* is gone"):
            job.refresh()
        # A new handle (nb.attach; the command line and the sidebar rebuild it alike)
        # opens, and says so as soon as it would ask the backend anything.
        with pytest.raises(nb.NbbatchError, match=rf"is gone.*nb.attach\('{job.id}', client="):
            nb.attach(job.id).refresh()
    for http in _OPEN:
        http.close()
    assert seen == [b""]


def test_the_job_is_polled_again_while_its_listener_lives(nbbatch_home, monkeypatch):
    with emulator.start(processing_seconds=0.2) as emu:
        job = _pending_job(emu, "client without api_key", monkeypatch)
        # Rebuilt from the ledger: the same listener, so it is polled (with a placeholder,
        # never the environment's key) and collected.
        again = nb.attach(job.id).wait()
        assert again.counts["succeeded"] == 2


def test_an_old_local_handle_never_reaches_a_squatter(nbbatch_home, monkeypatch):
    monkeypatch.setenv("NBBATCH_EMULATOR_SPEED", "20")
    df = pd.DataFrame({"text": ["kept", f"{FAIL_MARKER} resent private prompt"]})
    job = nb.submit(df, "{text}", model="gpt-4o-mini", provider="local", wait=True)
    assert job.counts["failed"] == 1
    old = emulator.background(nbbatch_home)
    os.kill(old.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _background._pid_alive(old.pid):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with squatter(old.port) as seen:
        job.resubmit_failed().wait()  # the failed row goes again, through the old handle
        new = emulator.background(nbbatch_home)
    assert seen == [b""]
    assert new.port != old.port and new.token != old.token  # the key rotated
    assert job.counts["failed"] == 1  # sent again, to the new emulator, and failed again
