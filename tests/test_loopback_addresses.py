"""Every spelling of a loopback address is guarded like ``127.0.0.1``.

A job sent to ``http://127.0.0.2:PORT`` (all of 127.0.0.0/8 is this machine) must be
recorded as a loopback job: once its backend is gone, a plain socket server that takes
that address and port gets neither the environment's key nor a prompt.
"""

from __future__ import annotations

import socket
import threading

import openai
import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator
from nbbatch._ledger import default as ledger
from nbbatch.providers.credentials import is_loopback

REAL_KEY = "sk-proj-realkeyoftheuser0123456789"
PROMPTS = ["first private prompt", "second private prompt"]


def _can_bind(host: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((host, 0))
    except OSError:
        return False
    return True


class _Squatter:
    """A plain socket server on ``host``:``port`` that keeps every byte it is sent."""

    def __init__(self, host: str, port: int) -> None:
        self.got = b""
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(8)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.got += conn.recv(1 << 16)
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"content-length: 2\r\nconnection: close\r\n\r\n{}"
                    )
                except OSError:
                    pass

    def close(self) -> None:
        self._sock.close()
        self._thread.join(10)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/v1",
        "http://127.0.0.2:8000/v1",
        "http://127.255.255.254:8000",
        "http://127.1:8000",
        "http://2130706433:8000",
        "http://[::1]:8000",
        "http://[::ffff:127.0.0.1]:8000",
        "http://LOCALHOST:8000",
        "http://localhost.:8000",
        "http://emulator.localhost:8000",
        "http://0.0.0.0:8000",
        "http://[::]:8000",
    ],
)
def test_every_spelling_of_this_machine_is_loopback(url):
    assert is_loopback(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com/v1",
        "http://10.0.0.1:8000",
        "http://128.0.0.1:8000",
        "http://localhost.example.com:8000",
        "http://[2001:db8::1]:8000",
        "http://[bad",
        None,
    ],
)
def test_other_addresses_are_not_loopback(url):
    assert not is_loopback(url)


@pytest.mark.skipif(not _can_bind("127.0.0.2"), reason="this system has no 127.0.0.2")
def test_a_squatter_on_127_0_0_2_gets_no_key_and_no_prompt(nbbatch_home, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", REAL_KEY)
    emu = emulator.start(host="127.0.0.2", processing_seconds=3600)
    client = openai.OpenAI(base_url=emu.openai_base_url)  # takes OPENAI_API_KEY
    try:
        df = pd.DataFrame({"text": PROMPTS})
        job = nb.submit(df, "{text}", model="gpt-4o-mini", client=client)
        job.wait_sent()
        record = ledger().job(job.id)
        assert record is not None
        assert record["credential"].startswith("loopback:") and record["key_hash"] is None
    finally:
        port = emu.port
        emu.stop()
    squatter = _Squatter("127.0.0.2", port)
    try:
        with pytest.raises(nb.NbbatchError, match="is gone"):
            job.refresh()  # the handle that submitted it
        with pytest.raises(nb.NbbatchError, match=rf"is gone.*nb.attach\('{job.id}', client="):
            nb.attach(job.id).refresh()  # rebuilt from the ledger, as the CLI does
    finally:
        squatter.close()
        client.close()
    text = squatter.got.decode("latin-1")
    assert REAL_KEY not in text and not any(p in text for p in PROMPTS)
    assert squatter.got == b""


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "[::ffff:127.0.0.1]", "localhost."])
def test_a_recorded_bedrock_job_on_loopback_gets_no_aws_keys(host, monkeypatch):
    # Rebuilt from a job's recorded address (nb.attach, the command line): at a loopback
    # address the boto3 clients hold placeholder credentials, never the environment's.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAREALACCESSKEY000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws0real0secret0key")
    from nbbatch.providers.bedrock import BedrockBatch
    from nbbatch.providers.credentials import secrets_of

    url = f"http://{host}:8000/bedrock/?bucket=s3://b/p&role=arn:aws:iam::123456789012:role/r"
    settings = BedrockBatch.from_url(url)
    try:
        held = secrets_of(settings)
        assert "AKIAREALACCESSKEY000" not in held and "aws0real0secret0key" not in held
        assert "nbbatch-emulator" in held
    finally:
        settings.bedrock.close()
        settings.s3.close()
