"""Plain helpers several test files share (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from nbbatch import emulator
from nbbatch.providers.openai import OpenAIProvider

#: The three labels of the classification tests, in the order :func:`truth` cycles them.
LABELS = ["positive", "negative", "neutral"]

#: A structured output of one label, no score (a score comes from logprobs or a column).
LABEL_SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": LABELS}},
    "required": ["label"],
    "additionalProperties": False,
}


def truth(i: int) -> str:
    """The true label of row ``i`` (prompted as ``"Review {i}"``)."""
    return LABELS[i % 3]


def numbered_rows(n: int) -> pd.DataFrame:
    """``n`` rows with a column ``i`` of 0 to n-1, indexed ``r0``, ``r1``, ..."""
    return pd.DataFrame({"i": range(n)}, index=pd.Index([f"r{k}" for k in range(n)]))


#: The prompt of the tests whose answers the emulator echoes (:func:`echoed`).
PROMPT = "Classify: {text}"


def echoed(texts) -> list[str]:
    """What the emulator's default responder answers to :data:`PROMPT` on each text."""
    return [emulator.echo_text(PROMPT.format(text=t)) for t in texts]


def count_row_encodes(patch: pytest.MonkeyPatch) -> list[int]:
    """Patch the OpenAI provider's ``encode`` (on the class, so that every copy counts)
    to note how many rows each call in this process encodes, and return that list.

    The one line with an empty prompt that the batch queue's token estimate encodes, to
    learn what every line carries besides its prompt (nbbatch._quota), is not a row's
    and is not noted."""
    encoded: list[int] = []
    real = OpenAIProvider.encode

    def counted(self, ids, prompts, spec):
        if prompts.to_pylist() != [""]:
            encoded.append(len(ids))
        return real(self, ids, prompts, spec)

    patch.setattr(OpenAIProvider, "encode", counted)
    return encoded


def free_port() -> int:
    """A loopback port no one listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def jupyter_running(
    app: str,
    root: Path,
    base: Path,
    *,
    args: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
    seconds: float = 90,
) -> Iterator[tuple[str, str]]:
    """Jupyter's ``app`` (``"jupyter_server"`` or ``"jupyter lab"``, run by ``python -m``)
    serving ``root`` on a free loopback port with a random token, its config and runtime
    folders (and its log, ``jupyter.log``) in ``base``: yields (url, token) once it
    answers, and stops it after.

    Raises RuntimeError with the log's end when it does not answer within ``seconds``."""
    port, token = free_port(), secrets.token_hex(16)
    environ = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        **(env or {}),
    }
    cmd = [sys.executable, "-m", *app.split(), "--no-browser", f"--port={port}", "--allow-root",
           "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", *args]  # fmt: skip
    log_path = base / "jupyter.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(cmd, env=environ, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + seconds
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{app} did not start:\n{log_path.read_text()[-3000:]}"
                    ) from None
                time.sleep(0.3)
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()  # reaped, so no ResourceWarning (turned into an error) at teardown
        log.close()


def run_cli(
    *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``nbbatch ARGS`` in a new process, its output captured as text: with this
    process's environment (and so its NBBATCH_HOME) unless ``env`` is given."""
    return subprocess.run(
        [sys.executable, "-m", "nbbatch.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=dict(os.environ if env is None else env),
        timeout=120,
    )
