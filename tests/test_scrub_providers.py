"""The new providers' keys and tokens never appear in what nbbatch shows or keeps.

An endpoint that answers 401 quoting every header it got (a hostile or broken proxy on
the address the user gave) makes each provider's own SDK raise its real error; the
error nbbatch raises, its whole chain (``__cause__``, ``__context__``) as a notebook
shows and saves it, and the ledger must not hold any key, token or signature.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pandas as pd
import pytest

import nbbatch as nb
from nbbatch._ledger import default as ledger

from .this_machine import needs_remote_host, remote_host

#: This machine's non-loopback address: not one nbbatch takes for an emulator's, so the
#: key the user gave goes there, as it would to a remote proxy.
HOST = remote_host() or "127.0.0.1"
pytestmark = [needs_remote_host]
SECRETS = {
    "azure": ["azure0client0key0abcdef0123456789"],
    "azure-entra": ["eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlMDEyMzQ1Njc4OQ"],
    "groq": ["gsk_groq0client0key0abcdef0123456789"],
    "together": ["together0client0key0abcdef0123456789"],
    "mistral": ["mistral0client0key0abcdef01234"],
    "bedrock": [
        "AKIACLIENTACCESSKEY0",
        "aws0client0secret0key0abcdef0123456789",
        "aws0client0session0token0abcdef0123456789",
    ],
}
MODELS = {
    "azure": "gpt-4o-mini",
    "azure-entra": "gpt-4o-mini",
    "groq": "llama-3.1-8b-instant",
    "together": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
    "mistral": "mistral-small-latest",
    "bedrock": "anthropic.claude-3-haiku-20240307-v1:0",
}


class Echo:
    """Answers every request 401 with a body quoting all of its headers (and for S3 and
    Bedrock, AWS's error shapes with the same text)."""

    def __init__(self, port: int = 0) -> None:
        self.seen: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                quoted = "; ".join(f"{k}: {v}" for k, v in self.headers.items())
                quoted += f"; url: {self.path}"
                outer.seen.append(quoted)
                message = f"invalid credentials, you sent {quoted}"
                body = {
                    "error": {"message": message, "type": "invalid_request_error"},
                    "message": message,
                    "detail": message,
                }
                payload = json.dumps(body).encode()
                self.send_response(401)
                self.send_header("content-type", "application/json")
                self.send_header("x-amzn-errortype", "UnrecognizedClientException")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        if not port:
            with socket.socket() as s:
                s.bind((HOST, 0))
                port = s.getsockname()[1]
        self.url = f"http://{HOST}:{port}"
        self.server = ThreadingHTTPServer((HOST, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echo() -> Iterator[Echo]:
    server = Echo()
    try:
        yield server
    finally:
        server.close()


_CLOSE: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLOSE:
        _CLOSE.pop()()


def client_for(provider: str, url: str) -> Any:
    """The provider's own SDK client for ``url`` with the test's secrets, no retries."""
    secret = SECRETS[provider][0]
    made: Any
    if provider in ("azure", "azure-entra"):
        import openai

        auth = {"api_key": secret} if provider == "azure" else {"azure_ad_token": secret}
        made = openai.AzureOpenAI(
            base_url=url + "/openai", api_version="2024-10-21", max_retries=0, **auth
        )
    elif provider == "groq":
        import groq

        made = groq.Groq(api_key=secret, base_url=url, max_retries=0)
    elif provider == "together":
        import together

        made = together.Together(api_key=secret, base_url=url, max_retries=0)
    elif provider == "mistral":
        from mistralai.client import Mistral

        made = Mistral(api_key=secret, server_url=url)
        _CLOSE.append(made.sdk_configuration.client.close)
        return made
    else:
        import boto3
        from botocore.config import Config

        from nbbatch.providers.bedrock import BedrockBatch

        key_id, key, token = SECRETS["bedrock"]
        keys = {
            "aws_access_key_id": key_id,
            "aws_secret_access_key": key,
            "aws_session_token": token,
            "region_name": "us-east-1",
            "endpoint_url": url,
            "config": Config(retries={"max_attempts": 1}),
        }
        s3 = boto3.client("s3", **keys)
        bedrock = boto3.client("bedrock", **keys)
        _CLOSE.extend([s3.close, bedrock.close])
        role = "arn:aws:iam::123456789012:role/nbbatch"
        return BedrockBatch("s3://bucket/runs", role, bedrock=bedrock, s3=s3, min_records=1)
    _CLOSE.append(made.close)
    return made


def _shown(exc: BaseException) -> str:
    """What a notebook shows (and saves) of ``exc``: its traceback, whole chain."""
    return "".join(traceback.format_exception(exc))


@pytest.mark.parametrize("provider", list(SECRETS))
def test_a_401_quoting_the_credentials_shows_and_keeps_none_of_them(
    nbbatch_home, echo, provider, caplog
):
    df = pd.DataFrame({"text": ["a review", "another review"]})
    extra: dict[str, Any] = {"provider": "bedrock"} if provider == "bedrock" else {}
    client = client_for(provider, echo.url)
    with pytest.raises(nb.NbbatchError) as raised:
        # Refused at submit, or by the background sender (then raised by wait).
        job = nb.submit(df, "{text}", model=MODELS[provider], client=client, **extra)
        job.wait(timeout=60, progress=False)
    sent = " ".join(echo.seen)
    assert echo.seen, "the request never reached the endpoint"
    shown = _shown(raised.value) + caplog.text
    kept = str(ledger().query("SELECT * FROM events")) + str(ledger().jobs())
    for secret in SECRETS[provider]:
        if secret in sent:  # what the endpoint could quote back
            assert secret not in shown and secret not in kept, secret
    # A signature of the request (SigV4's, in a header or a presigned URL) is no key,
    # but replayable: never shown either.
    assert "Signature=" not in shown or "Signature=***" in shown


def test_environment_credentials_and_presigned_urls_are_scrubbed(monkeypatch):
    import boto3
    from botocore.config import Config

    from nbbatch import _scrub

    env = {
        "AZURE_OPENAI_AD_TOKEN": "entra0token0from0the0environment0123",
        "MISTRAL_API_KEY": "mistral0env0key0abcdef012345",
        "TOGETHER_API_KEY": "together0env0key0abcdef012345",
        "AWS_ACCESS_KEY_ID": "ASIAENVACCESSKEYID00",
        "AWS_SECRET_ACCESS_KEY": "aws0env0secret0key0abcdef0123456789",
        "AWS_SESSION_TOKEN": "aws0env0session0token0abcdef0123456789",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # boto3's presigned URLs, as it makes them: its default query signature and SigV4.
    urls = []
    for config in (Config(), Config(signature_version="s3v4")):
        s3 = boto3.client("s3", region_name="us-east-1", config=config)
        urls.append(s3.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "o"}))
        s3.close()
    signatures = [re.search(r"Signature=([^&]+)", url) for url in urls]
    assert all(signatures)  # boto3 signed both
    text = _scrub.scrub(f"could not read {' or '.join(urls)}: {' '.join(env.values())}")
    for secret in [*env.values(), *(m.group(1) for m in signatures if m)]:
        assert secret not in text
    # What is no secret stays readable.
    assert "/b/o?" in text and "X-Amz-Signature=***" in text


#: Each provider's key variable and how to aim it at an emulator from the environment.
ENV_SETUP = {
    "groq": ("GROQ_API_KEY", {"GROQ_BASE_URL": "{url}/groq"}),
    "together": ("TOGETHER_API_KEY", {"TOGETHER_BASE_URL": "{url}/together"}),
    "azure": (
        "AZURE_OPENAI_API_KEY",
        {"AZURE_OPENAI_ENDPOINT": "{url}/azure", "OPENAI_API_VERSION": "2024-10-21"},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("provider", list(ENV_SETUP))
def test_the_sidebar_and_the_command_line_never_show_an_echoed_key(
    nbbatch_home, monkeypatch, provider
):
    from nbbatch import emulator
    from nbbatch.labext import views

    variable, aim = ENV_SETUP[provider]
    secret = f"{provider}0environment0key0abcdef0123456789"
    monkeypatch.setenv(variable, secret)
    df = pd.DataFrame({"text": ["a review", "another review"]})
    with emulator.start(host=HOST, processing_seconds=600) as emu:
        for name, value in aim.items():
            monkeypatch.setenv(name, value.format(url=emu.url))
        job = nb.submit(df, "{text}", model=MODELS[provider], provider=provider)
        job.wait_sent()
        port = emu.port
    echo = Echo(port)
    try:
        try:  # the sidebar's check: a warning, or an error it shows
            said = json.dumps(views.refresh(ledger(), job.id))
        except nb.NbbatchError as exc:
            said = _shown(exc)
        cli = subprocess.run(
            [sys.executable, "-m", "nbbatch.cli", "status", job.id],
            capture_output=True,
            text=True,
            env=dict(os.environ),
            timeout=180,
        )
    finally:
        echo.close()
    assert secret in " ".join(echo.seen)  # the key meant for this address was sent...
    assert "rejected" in said and "rejected" in cli.stderr
    kept = str(ledger().query("SELECT * FROM events")) + str(ledger().jobs())
    for shown in (said, cli.stdout + cli.stderr, kept):
        assert secret not in shown  # ...and never shown
