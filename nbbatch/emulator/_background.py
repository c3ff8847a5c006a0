"""The background emulator behind ``provider="local"``: one process per ledger home.

A job's batches must outlive the kernel that submitted them, so ``provider="local"``
does not run the emulator inside the kernel: it runs it as a detached process of its
own (``python -m nbbatch.emulator --background``), started on first use and shared by
every kernel that uses the same home. Its files and batches are kept under
``HOME/emulator/`` (see :mod:`._persist`), so even a new emulator process serves the
batches of the last one. It exits by itself after a period without requests
(``NBBATCH_EMULATOR_IDLE_SECONDS``, default four hours). Its batches take the shared
timings (about 4 s); ``NBBATCH_EMULATOR_SPEED`` divides all of them (tests run it
fast) and ``NBBATCH_EMULATOR_PROCESSING_SECONDS`` then sets the processing time itself.
Both variables are read when the process starts.

Files under ``HOME/emulator/``::

    server.json    pid, port and url of the running (or last) process, written by it
                   atomically; liveness = that pid alive and an answer at that url
    lock           taken while a process is being started, so two kernels start one
    emulator.log   the process's output (errors only)
    data/ files/ batches/   its saved state

The caller passes the home folder: the emulator knows nothing of the ledger.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from ._files import write_atomic

IDLE_ENV = "NBBATCH_EMULATOR_IDLE_SECONDS"
#: How long each batch spends in progress (default: the shared timings' 3 s).
PROCESSING_ENV = "NBBATCH_EMULATOR_PROCESSING_SECONDS"
#: A factor that divides every stage's time (validating, processing, finalizing).
SPEED_ENV = "NBBATCH_EMULATOR_SPEED"
DEFAULT_IDLE_SECONDS = 4 * 3600.0
#: How long a starting process may take before we give up on it (the machine may be busy).
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Background:
    """Where the background emulator of a home answers."""

    pid: int
    port: int
    url: str

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def gemini_base_url(self) -> str:
        return self.url + "/gemini"


def state_dir(home: str | Path) -> Path:
    """The background emulator's folder under a ledger home."""
    return Path(home).expanduser() / "emulator"


def idle_seconds() -> float:
    """The idle period after which the background emulator exits (from the environment)."""
    return _seconds(IDLE_ENV, DEFAULT_IDLE_SECONDS)


def _seconds(variable: str, default: float) -> float:
    raw = os.environ.get(variable)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{variable} must be a number of seconds, found {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{variable} must be positive, found {raw!r}")
    return value


def find(home: str | Path) -> Background | None:
    """The home's background emulator if it runs and answers, else None."""
    info = _read_info(state_dir(home))
    if info is None or not _pid_alive(info.pid) or not _answers(info.url):
        return None
    return info


def background(home: str | Path) -> Background:
    """The home's background emulator, started now (detached) if it does not run.

    Safe to call from several processes at once: a file lock lets only one start it,
    and the others find the one it started.
    """
    found = find(home)
    if found is not None:
        return found
    folder = state_dir(home)
    with _locked(folder):
        found = find(home)  # another process may have started it while we waited
        if found is not None:
            return found
        return _spawn(folder)


def stop_background(home: str | Path, timeout: float = 10.0) -> bool:
    """Stop the home's background emulator (its state stays on disk for the next one).

    Returns True if a running emulator was stopped.
    """
    folder = state_dir(home)
    info = _read_info(folder)
    if info is None or not _pid_alive(info.pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(info.pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(info.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    return True


# ---------------------------------------------------------------------- the process


def serve(folder: Path, port: int, idle: float) -> None:
    """Run the background emulator until SIGTERM or ``idle`` seconds without a request.

    Called in the detached process by ``python -m nbbatch.emulator --background``.
    """
    from ._emulator import SHARED_TIMINGS, start

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    speed = _seconds(SPEED_ENV, 1.0)  # a positive number, as seconds are
    timings = {name: value / speed for name, value in SHARED_TIMINGS.items()}
    timings["processing_seconds"] = _seconds(PROCESSING_ENV, timings["processing_seconds"])
    try:  # the port it had before, so base_urls recorded by jobs stay valid
        emu = start(port=port, state_dir=folder, **timings)  # type: ignore[arg-type]
    except OSError:
        emu = start(port=0, state_dir=folder, **timings)  # type: ignore[arg-type]
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    info = {"pid": os.getpid(), "port": emu.port, "url": emu.url, "started": time.time()}
    write_atomic(folder / "server.json", orjson.dumps(info))
    try:
        while not stopping and emu.idle_seconds < idle:
            time.sleep(0.2)  # a signal cuts the sleep short; the flag is seen at once
    finally:
        # server.json stays: a dead pid marks it stale, and the next process reads from
        # it the port to ask for again.
        emu.stop()


def detach() -> None:
    """Become a daemon: fork, and let the parent exit so the starter is not our parent
    (it then never has to reap us, and we outlive it)."""
    if os.fork() > 0:
        os._exit(0)


# ---------------------------------------------------------------------- helpers


def _spawn(folder: Path) -> Background:
    old = _read_info(folder)
    _remove_info(folder, old.pid if old else None)
    port = old.port if old is not None else 0
    command = [
        sys.executable,
        "-m",
        "nbbatch.emulator",
        "--background",
        "--state-dir",
        str(folder),
        "--port",
        str(port),
        "--idle-seconds",
        str(idle_seconds()),
    ]
    log = folder / "emulator.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as out:
        starter = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd=folder,
        )
    starter.wait()  # it forks the server and exits at once
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        info = _read_info(folder)
        if info is not None and _pid_alive(info.pid) and _answers(info.url):
            return info
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(
        f"the nbbatch background emulator did not start within {START_TIMEOUT:.0f} s "
        f"(log: {log}):\n{tail}"
    )


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _read_info(folder: Path) -> Background | None:
    try:
        raw = orjson.loads((folder / "server.json").read_bytes())
        return Background(pid=int(raw["pid"]), port=int(raw["port"]), url=str(raw["url"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_info(folder: Path, pid: int | None) -> None:
    """Remove server.json if it still describes process ``pid`` (never a newer one's)."""
    info = _read_info(folder)
    if info is None or info.pid == pid:
        (folder / "server.json").unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _answers(url: str) -> bool:
    """Whether an nbbatch emulator answers at ``url`` (a quick, authenticated GET)."""
    request = urllib.request.Request(
        url + "/v1/batches?limit=1", headers={"Authorization": "Bearer local-emulator"}
    )
    # Loopback only: never through a proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            return response.status == 200 and orjson.loads(response.read()).get("object") == "list"
    except (OSError, ValueError):
        return False
