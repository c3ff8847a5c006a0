"""Plain helpers several test files share (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
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


class Listener:
    """Whoever binds an address after nbbatch's emulator there stopped: records the
    headers of every request and answers ``status`` with ``body(headers)`` (or
    ``body(headers, path)`` when it takes two arguments) as JSON, or as they are when
    they are bytes (a proxy's page that is not JSON). ``port`` 0: a free one."""

    def __init__(
        self,
        host: str,
        port: int,
        status: int = 503,
        body: Callable[..., Any] | None = None,
    ) -> None:
        self.seen: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.seen.append(headers)
                answer = body or (lambda h: {"error": {"message": "no"}})
                takes_path = answer.__code__.co_argcount == 2
                reply = answer(headers, self.path) if takes_path else answer(headers)
                payload = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("retry-after-ms", "1")  # the SDKs' retries, quickly
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.port: int = self.server.server_address[1]

    def sent(self, secret: str) -> bool:
        """Whether any request carried ``secret`` in a header."""
        return any(secret in value for h in self.seen for value in h.values())

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def interrupted_wait(script: str, folder: Path) -> tuple[str, str]:
    """Run ``script`` (it prints a job's id, then waits for the job, printing progress)
    in a new Python process, press Ctrl-C (SIGINT) once it has printed its first
    progress line, and return (the job's id, what it wrote to stderr) after it exited
    with an error."""
    path = folder / "wait.py"
    path.write_text(script)
    waiting = subprocess.Popen(
        [sys.executable, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=dict(os.environ),
    )  # fmt: skip
    assert waiting.stdout is not None and waiting.stderr is not None
    job_id = waiting.stdout.readline().strip()
    first = waiting.stderr.readline()  # wait() has printed its first progress line
    assert job_id in first, first
    waiting.send_signal(signal.SIGINT)
    _, error = waiting.communicate(timeout=300)
    assert waiting.returncode != 0
    return job_id, error


class FakeTime:
    """A clock that only moves when the job sleeps or the test says (the emulator and
    the job may share it: ``emulator.start(clock=fake.now)``)."""

    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def parquet_files(folder: Path, n_files: int = 2, rows: int = 10) -> str:
    """A glob of ``n_files`` Parquet files of ``rows`` rows each (a column ``body``),
    written into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(n_files):
        table = pa.table({"body": [f"ticket {f}-{i} about a cold soup" for i in range(rows)]})
        pq.write_table(table, folder / f"p{f}.parquet")
    return str(folder / "*.parquet")


def look_together(folder: Path, parties: int = 2) -> None:
    """Make every job planner (in this process and the others given the same
    ``folder``) that looks up a same job by its rows' fingerprint wait, after looking,
    until ``parties`` planners have looked: the worst interleaving of two planners of
    the same rows, made certain instead of left to the scheduler. Each one waits at
    most 20 s, so a planner that never looks this way (one that looks and records at
    once) is only slowed."""
    from nbbatch._ledger import Ledger

    find = Ledger.find_job

    def looked(self, fingerprint):
        found = find(self, fingerprint)
        if not fingerprint.startswith("planning-"):  # submit's own look is not a planner's
            (folder / f"looked-{os.getpid()}-{threading.get_ident()}").touch()
            deadline = time.monotonic() + 20
            while len(list(folder.glob("looked-*"))) < parties and time.monotonic() < deadline:
                time.sleep(0.02)
        return found

    Ledger.find_job = looked  # type: ignore[method-assign]


def modules_loaded(imports: str, packages: tuple[str, ...]) -> list[str]:
    """The modules of ``packages`` a new Python process holds after running
    ``imports`` (a line of Python), sorted."""
    code = (
        f"{imports}; import json, sys; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {packages!r})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def run_until_killed(script: str, args: str, home: Path) -> str:
    """Run ``script`` in a new Python process (``ARGS`` and ``NBBATCH_HOME`` set to
    ``args`` and ``home``) until it kills itself (SIGKILL, status 9, as a crash
    would); what it printed."""
    env = {**os.environ, "ARGS": args, "NBBATCH_HOME": str(home)}
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert child.returncode == 9, child.stderr
    return child.stdout
