"""Azure OpenAI, Groq, Together, Mistral and Bedrock: no key and no prompt reach a loopback
listener that is not the one a job was sent to.

Each test makes the provider's own SDK client aimed at the emulator without a key, so
the SDK takes the real one from the environment (``AZURE_OPENAI_API_KEY``,
``GROQ_API_KEY``, ``TOGETHER_API_KEY``, ``MISTRAL_API_KEY``, the AWS variables), runs a
job with a failed row and leaves another job pending. Then the backend dies and a plain
socket server takes its port and keeps every byte it is sent: the old handles, a new
one (``nb.attach``), the sidebar's check, ``nbbatch check`` and a resubmit must send it
nothing, and say the backend is gone and ask for ``client=``. For Bedrock the prompts go
to S3 (moto's server here), a second loopback address: its death is a case of its own.
"""

from __future__ import annotations

import gc
import os
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pytest

import nbbatch as nb
from nbbatch import emulator
from nbbatch._ledger import default as ledger
from nbbatch.emulator import FAIL_MARKER
from nbbatch.labext import views

pytestmark = pytest.mark.slow

#: The real credentials in the environment (never to reach a squatter).
SECRETS = {
    "AZURE_OPENAI_API_KEY": "azure0real0key0abcdef0123456789",
    "GROQ_API_KEY": "gsk_groq0real0key0abcdef0123456789",
    "TOGETHER_API_KEY": "together0real0key0abcdef0123456789",
    "MISTRAL_API_KEY": "mistral0real0key0abcdef012345",
    "AWS_ACCESS_KEY_ID": "AKIAREALACCESSKEY000",
    "AWS_SECRET_ACCESS_KEY": "aws0real0secret0key0abcdef0123456789",
    "AWS_SESSION_TOKEN": "aws0real0session0token0abcdef0123456789",
}
MODELS = {
    "azure": "gpt-4o-mini",
    "groq": "llama-3.1-8b-instant",
    "together": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    "mistral": "mistral-small-latest",
    "bedrock": "anthropic.claude-3-haiku-20240307-v1:0",
}
PROMPTS = ["first private prompt", f"{FAIL_MARKER} second private prompt"]
#: The pending job's rows (another job than the first: not taken for a resend of it).
PENDING = ["third private prompt", "fourth private prompt"]


class Squatter:
    """A plain socket server on ``port`` that keeps every byte it is sent and answers
    each connection 200 with an empty JSON object (as a proxy that plays along would)."""

    def __init__(self, port: int) -> None:
        self.got = b""
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Backend:
    """The emulator (and, for Bedrock, moto's S3 server) a provider's jobs go to, and
    that provider's SDK client for it, made without a key."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.moto: Any = None
        self.s3_port = 0
        self._closing: list[Callable[[], Any]] = []
        options: dict[str, Any] = {}
        if provider == "bedrock":
            from moto.server import ThreadedMotoServer

            self.s3_port = _free_port()
            self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=self.s3_port, verbose=False)
            self.moto.start()
            options = {"s3_endpoint": self.s3_url, "bedrock_min_records": 1}
        self.emu = emulator.start(processing_seconds=0.05, **options)

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def client(self) -> Any:
        """The provider's SDK client aimed at the emulator, with no key given (None for
        a provider aimed at it by its address variable, GROQ_BASE_URL)."""
        url = self.emu.url
        made: Any
        if self.provider == "groq-env":
            os.environ["GROQ_BASE_URL"] = url + "/groq"  # restored by the fixture
            return None
        if self.provider == "azure":
            import openai

            made = openai.AzureOpenAI(base_url=url + "/azure/openai", api_version="2024-10-21")
        elif self.provider == "groq":
            import groq

            made = groq.Groq(base_url=url + "/groq")
        elif self.provider == "together":
            import together

            made = together.Together(base_url=url + "/together")
        elif self.provider == "mistral":
            from mistralai.client import Mistral

            made = Mistral(server_url=url + "/mistral")
            self._closing.append(made.sdk_configuration.client.close)
            return made
        else:
            import boto3

            from nbbatch.providers.bedrock import BedrockBatch

            s3 = boto3.client("s3", endpoint_url=self.s3_url, region_name="us-east-1")
            bedrock = boto3.client(
                "bedrock", endpoint_url=url + "/bedrock", region_name="us-east-1"
            )
            s3.create_bucket(Bucket="private-bucket")
            self._closing += [s3.close, bedrock.close]
            role = "arn:aws:iam::123456789012:role/nbbatch"
            return BedrockBatch(
                "s3://private-bucket/runs", role, "us-east-1", bedrock=bedrock, s3=s3, min_records=1
            )
        self._closing.append(made.close)
        return made

    def close(self) -> None:
        for close in self._closing:
            close()
        self.emu.stop()
        if self.moto is not None:
            self.moto.stop()


@pytest.fixture
def secrets_in_env(nbbatch_home: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


def _submit(backend: Backend, client: Any, texts: list[str]) -> nb.BatchJob:
    df = pd.DataFrame({"text": texts})
    extra: dict[str, Any] = {}
    if backend.provider == "bedrock":
        extra = {"provider": "bedrock", "max_tokens": 20}
    elif client is None:
        extra = {"provider": backend.provider.removesuffix("-env")}
    model = MODELS[backend.provider.removesuffix("-env")]
    return nb.submit(df, "{text}", model=model, client=client, **extra)


def _jobs(backend: Backend) -> tuple[nb.BatchJob, nb.BatchJob]:
    """A finished job with a failed row, and a job left pending."""
    client = backend.client()
    done = _submit(backend, client, PROMPTS).wait(timeout=120, progress=False)
    assert done.counts["failed"] == 1 and done.counts["succeeded"] == 1
    backend.emu.configure(processing_seconds=3600)
    pending = _submit(backend, client, PENDING)
    pending.wait_sent()
    for job in (done, pending):
        record = ledger().job(job.id)
        assert record is not None
        # Recorded as a loopback job, with no key and no key hash: whatever key the SDK
        # took from the environment is never sent there again by nbbatch.
        assert record["credential"].startswith("loopback:") and record["key_hash"] is None
    return done, pending


def _check_command() -> str:
    result = subprocess.run(
        [sys.executable, "-m", "nbbatch.cli", "check"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=180,
    )
    return result.stdout + result.stderr


def _leaked(got: bytes) -> list[str]:
    text = got.decode("latin-1")
    found = [name for name, value in SECRETS.items() if value in text]
    return found + [p for p in PROMPTS + PENDING if p in text]


@pytest.fixture
def backend(
    request: pytest.FixtureRequest, secrets_in_env: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    monkeypatch.setenv("GROQ_BASE_URL", "unset")  # whatever it was, put back after
    monkeypatch.delenv("GROQ_BASE_URL")
    made = Backend(request.param)
    try:
        yield made
    finally:
        made.close()


@pytest.mark.parametrize(
    "backend", ["azure", "groq", "groq-env", "together", "mistral", "bedrock"], indirect=True
)
def test_a_squatter_on_a_dead_backends_port_gets_no_key_and_no_prompt(backend):
    done, pending = _jobs(backend)
    port = backend.emu.port
    backend.emu.stop()
    squatter = Squatter(port)
    try:
        gone = r"is gone.*client="
        with pytest.raises(nb.NbbatchError, match=gone):
            pending.refresh()  # the handle that submitted it
        with pytest.raises(nb.NbbatchError, match=rf"is gone.*nb.attach\('{pending.id}', client="):
            nb.attach(pending.id).refresh()
        with pytest.raises(nb.NbbatchError, match=gone):
            views.refresh(ledger(), pending.id)  # the sidebar's check
        said = _check_command()
        assert pending.id in said and "is gone" in said
        with pytest.raises(nb.NbbatchError, match=gone):
            done.resubmit_failed().wait(timeout=60, progress=False)
        with pytest.raises(nb.NbbatchError, match=gone):
            nb.attach(done.id).resubmit_failed().wait(timeout=60, progress=False)
    finally:
        squatter.close()
    assert squatter.got == b"", _leaked(squatter.got)


@pytest.mark.parametrize("backend", ["bedrock"], indirect=True)
def test_a_squatter_on_a_dead_s3_endpoints_port_gets_no_key_and_no_prompt(backend):
    # Bedrock's prompts are uploaded to S3, and its answers read from there: S3 on a
    # loopback address is guarded like the Bedrock endpoint itself.
    done, pending = _jobs(backend)
    backend.moto.stop()
    squatter = Squatter(backend.s3_port)
    try:
        gone = r"is gone.*client="
        with pytest.raises(nb.NbbatchError, match=gone):
            done.resubmit_failed().wait(timeout=60, progress=False)
        with pytest.raises(nb.NbbatchError, match=gone):
            nb.attach(done.id).resubmit_failed().wait(timeout=60, progress=False)
        pending.refresh()  # Bedrock is still there: the job is still pending
        assert pending.counts["pending"] == 2
    finally:
        squatter.close()
    backend.moto = None
    assert squatter.got == b"", _leaked(squatter.got)


def _run_async_client_job(service: str, emu: emulator.Emulator, text: str) -> None:
    """A job through the service's async SDK client (nbbatch makes a sync one from it)
    on ``emu``, collected, then polled again from a new handle."""
    url = emu.url + f"/{service}"
    if service == "groq":
        import groq

        client: Any = groq.AsyncGroq(api_key="test-key", base_url=url)
    else:
        import together

        client = together.AsyncTogether(api_key="test-key", base_url=url)
    df = pd.DataFrame({"text": [f"{text} one", f"{text} two"]})
    job = nb.submit(df, "{text}", model=MODELS[service], client=client)
    job.wait(timeout=120, progress=False).merge(df)
    nb.attach(job.id).refresh()


@pytest.mark.parametrize("service", ["groq", "together"])
def test_the_http_clients_nbbatch_opens_are_closed(nbbatch_home, service):
    # Groq's and Together's SDKs send through the older httpx: the sync client nbbatch
    # makes from an async one, and the client its loopback guard wraps, are closed by
    # nbbatch when the job's handle is dropped, never left for the garbage collector to
    # find with a socket open.
    with emulator.start(processing_seconds=0.05) as emu:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always", ResourceWarning)
            for i in range(2):
                _run_async_client_job(service, emu, f"round {i}")
                gc.collect()
    unclosed = [str(w.message) for w in seen if "unclosed" in str(w.message)]
    assert unclosed == []


def test_a_job_outlives_the_client_it_was_given(nbbatch_home):
    # mistralai closes the connection pool it made when its client is collected; the
    # guarded copy nbbatch polls with sends through that pool, so dropping the client
    # given on client= must not close it under the job.
    from mistralai.client import Mistral

    with emulator.start(processing_seconds=0.2) as emu:
        client = Mistral(api_key="test-key", server_url=emu.url + "/mistral")
        df = pd.DataFrame({"text": ["kept one", "kept two"]})
        job = nb.submit(df, "{text}", model=MODELS["mistral"], client=client)
        del client
        gc.collect()
        assert job.wait(timeout=120, progress=False).counts["succeeded"] == 2
        del job
        gc.collect()
