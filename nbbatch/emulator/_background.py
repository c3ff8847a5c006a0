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
``NBBATCH_EMULATOR_TIER`` and ``NBBATCH_EMULATOR_QUOTAS`` give it batch queue quotas
(see :func:`quotas_from_env`). ``NBBATCH_EMULATOR_QUALITY``
(``gpt-4o-mini=0.88,gpt-4o=0.97``) gives models different quality (see
:mod:`._quality`). These variables are read when the process starts.

Files under ``HOME/emulator/`` (a folder only its owner can enter: made 0700, tightened
to 0700 when found looser, refused when it belongs to another user)::

    server.json    pid, port and url of the running (or last) process, written by it
                   atomically; liveness = that pid alive, ours, and a correct answer to
                   the identity challenge at that url
    secret         the home's random key (0600): the emulator answers only requests that
                   carry it, so other users of the machine cannot reach its files and
                   batches; a new one each time a process starts (nbbatch's clients
                   take it per request, see nbbatch.providers.loopback)
    lock           taken while a process is being started, so two kernels start one
    emulator.log   the process's output (errors only)
    data/ files/ batches/   its saved state

Before a client sends the key it checks that the listener is its own emulator: it asks
``GET /nbbatch/identify?nonce=N`` and expects an HMAC of the nonce, pid and port under the
key, so a stranger listening on a recorded port learns nothing. nbbatch's clients do so
before every request, not once when they are made. The process exits soon
after its ``server.json`` disappears (the home was removed) or names another process.

The caller passes the home folder: the emulator knows nothing of the ledger.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hmac
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ._files import write_atomic
from ._identity import IDENTIFY_PATH as IDENTIFY_PATH
from ._identity import identity_proof as identity_proof
from ._quality import QUALITY_ENV, parse_quality

IDLE_ENV = "NBBATCH_EMULATOR_IDLE_SECONDS"
#: How long each batch spends in progress (default: the shared timings' 3 s).
PROCESSING_ENV = "NBBATCH_EMULATOR_PROCESSING_SECONDS"
#: A factor that divides every stage's time (validating, processing, finalizing).
SPEED_ENV = "NBBATCH_EMULATOR_SPEED"
#: A usage tier whose published batch queue limits it applies (``tier-1`` ... ``tier-5``).
TIER_ENV = "NBBATCH_EMULATOR_TIER"
#: Explicit queue limits, ``name=value`` pairs separated by commas (the names of
#: ``nb.emulator.start``: enqueued_token_limit, anthropic_queue_limit,
#: anthropic_create_rate, gemini_enqueued_token_limit).
QUOTAS_ENV = "NBBATCH_EMULATOR_QUOTAS"
QUOTA_NAMES = (
    "enqueued_token_limit",
    "anthropic_queue_limit",
    "anthropic_create_rate",
    "gemini_enqueued_token_limit",
)
DEFAULT_IDLE_SECONDS = 4 * 3600.0
#: How long a starting process may take before we give up on it (the machine may be busy).
START_TIMEOUT = 60.0
#: How often the running process checks that its home still exists and names it.
HOME_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class Background:
    """Where the background emulator of a home answers."""

    pid: int
    port: int
    url: str
    #: The key every request must carry (never shown in a repr).
    token: str = field(default="", repr=False, compare=False)

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


def env_quality() -> dict[str, float] | None:
    """Each model's quality from ``$NBBATCH_EMULATOR_QUALITY`` (``gpt-4o-mini=0.88,...``),
    None when it is unset; ValueError naming the variable when it is malformed."""
    raw = os.environ.get(QUALITY_ENV)
    if not raw:
        return None
    try:
        return parse_quality(raw)
    except ValueError as exc:
        raise ValueError(f"{QUALITY_ENV}: {exc}") from None


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


def quotas_from_env() -> dict[str, object]:
    """The queue-quota knobs ``$NBBATCH_EMULATOR_TIER`` and ``$NBBATCH_EMULATOR_QUOTAS``
    ask for (empty: none), checked so a mistake names the variable and the fix."""
    knobs: dict[str, object] = {}
    tier = os.environ.get(TIER_ENV, "").strip()
    if tier:
        knobs["tier"] = tier
    raw = os.environ.get(QUOTAS_ENV, "").strip()
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in QUOTA_NAMES:
            raise ValueError(
                f"{QUOTAS_ENV} takes name=value pairs separated by commas, with names among "
                f"{list(QUOTA_NAMES)}; found {item!r}"
            )
        try:
            knobs[name] = int(value.strip().replace("_", ""))
        except ValueError:
            raise ValueError(
                f"{QUOTAS_ENV}: {name} must be a whole number, found {value!r}"
            ) from None
    return knobs


def find(home: str | Path) -> Background | None:
    """The home's background emulator if it runs, is this user's and proves it holds the
    home's key, else None."""
    return _find_in(state_dir(home))


def background(home: str | Path) -> Background:
    """The home's background emulator, started now (detached) if it does not run.

    Safe to call from several processes at once: a file lock lets only one start it,
    and the others find the one it started. Raises PermissionError when the home's
    ``emulator/`` folder belongs to another user.
    """
    folder = state_dir(home)
    own_folder(folder)
    found = _find_in(folder)
    if found is not None:
        return found
    env_quality()  # a malformed quality fails here, not in the detached process
    with _locked(folder):
        found = _find_in(folder)  # another process may have started it while we waited
        if found is not None:
            return found
        return _spawn(folder)


def stop_background(home: str | Path, timeout: float = 10.0) -> bool:
    """Stop the home's background emulator (its state stays on disk for the next one).

    Returns True if a running emulator was stopped.
    """
    folder = state_dir(home)
    info = _read_info(folder)
    # Only a process that is ours and is an emulator: a recorded pid may have been reused.
    if info is None or not _pid_ours(info.pid) or not _is_emulator(folder, info):
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

    own_folder(folder)
    token = read_secret(folder, create=True)
    speed = _seconds(SPEED_ENV, 1.0)  # a positive number, as seconds are
    timings = {name: value / speed for name, value in SHARED_TIMINGS.items()}
    timings["processing_seconds"] = _seconds(PROCESSING_ENV, timings["processing_seconds"])
    knobs: dict[str, object] = {**timings, **quotas_from_env(), "quality": env_quality()}
    try:  # the port it had before, so base_urls recorded by jobs stay valid
        emu = start(port=port, state_dir=folder, token=token, **knobs)  # type: ignore[arg-type]
    except OSError:
        emu = start(port=0, state_dir=folder, token=token, **knobs)  # type: ignore[arg-type]
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    info = {"pid": os.getpid(), "port": emu.port, "url": emu.url, "started": time.time()}
    write_atomic(folder / "server.json", orjson.dumps(info))
    homeless = False
    checked = time.monotonic()
    try:
        while not stopping and emu.idle_seconds < idle:
            time.sleep(0.2)  # a signal cuts the sleep short; the flag is seen at once
            if time.monotonic() - checked >= HOME_CHECK_SECONDS:
                checked = time.monotonic()
                # The home was removed (rm -rf), or another process took it over: no
                # client can find us any more, so serving on would only hold the port.
                recorded = _read_info(folder)
                homeless = recorded is None or recorded.pid != os.getpid()
                if homeless:
                    break
    finally:
        # server.json stays: a dead pid marks it stale, and the next process reads from
        # it the port to ask for again.
        if homeless:
            with contextlib.suppress(OSError):  # its state folder may be gone
                emu.stop()
        else:
            emu.stop()


def detach() -> None:
    """Become a daemon: fork, and let the parent exit so the starter is not our parent
    (it then never has to reap us, and we outlive it)."""
    if os.fork() > 0:
        os._exit(0)


# ---------------------------------------------------------------------- helpers


def own_folder(folder: Path) -> None:
    """Make ``folder`` (owner-only), tighten it to 0700 if it is looser (made by hand or
    by an older release), and refuse it when it belongs to another user: its files would
    be theirs to read or replace."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = folder.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(
            f"{folder} belongs to another user (uid {st.st_uid}); nbbatch's background "
            "emulator keeps prompts, results and its key there. Set NBBATCH_HOME to a "
            "folder of your own."
        )
    if st.st_mode & 0o077:
        folder.chmod(0o700)


def read_secret(folder: Path, *, create: bool = False) -> str | None:
    """The home's key from ``folder/secret`` (made now, random, 0600, when ``create``);
    None if there is none, or if the file is not this user's alone."""
    path = folder / "secret"
    if create:
        with contextlib.suppress(FileExistsError):
            # O_EXCL: two processes creating it at once agree on the one written first.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(32))
    raw = _read_own(path)
    token = raw.decode("ascii", errors="replace").strip() if raw is not None else ""
    return token or None


def rotate_secret(folder: Path) -> str:
    """Replace the home's key with a new random one (0600, atomically) and return it."""
    value = secrets.token_urlsafe(32)
    temporary = folder / f".secret.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(value)
        os.replace(temporary, folder / "secret")
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return value


def _read_own(path: Path) -> bytes | None:
    """The bytes of ``path`` if it is a regular file of this user that others cannot
    read or write (never through a symlink), else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(file.fileno())
        if st.st_uid != os.getuid() or st.st_mode & 0o077 or not stat.S_ISREG(st.st_mode):
            return None
        return file.read()


def _find_in(folder: Path) -> Background | None:
    info = _read_info(folder)
    if info is None or not _pid_ours(info.pid):
        return None
    token = read_secret(folder)
    if token is None or not _proves(info, token):
        return None
    return dataclasses.replace(info, token=token)


def _spawn(folder: Path) -> Background:
    # A new key for each process, made before it starts (it serves with this one): a key
    # that reached a stranger once (a squatter on the port of a process that exited) is
    # no use against this one. nbbatch's own clients take the key as it is now.
    rotate_secret(folder)
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
        found = _find_in(folder)
        if found is not None:
            return found
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
    """What server.json says, if it is this user's own file (one planted by another user,
    or readable by others, is not trusted)."""
    data = _read_own(folder / "server.json")
    if data is None:
        return None
    try:
        raw = orjson.loads(data)
        return Background(pid=int(raw["pid"]), port=int(raw["port"]), url=str(raw["url"]))
    except (ValueError, KeyError, TypeError):
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


def _pid_ours(pid: int) -> bool:
    """Whether ``pid`` runs (not a zombie) as this user: a pid of another user's process
    (a recycled pid, or a planted server.json) is never taken for our emulator."""
    if not _pid_alive(pid):
        return False
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: signal 0 succeeded, so (unless we are root) it is ours
        with contextlib.suppress(PermissionError):
            os.kill(pid, 0)
            return True
        return False


def _is_emulator(folder: Path, info: Background) -> bool:
    """Whether process ``info.pid`` is the background emulator: it proves the key, or (a
    hung one) its command line is the one ``_spawn`` runs."""
    token = read_secret(folder)
    if token is not None and _proves(info, token):
        return True
    try:
        command = Path(f"/proc/{info.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc to tell: as before, trust the pid
    return b"nbbatch.emulator" in command and b"--background" in command


def _proves(info: Background, token: str) -> bool:
    """Whether the listener at ``info.url`` proves it holds ``token`` as process
    ``info.pid`` on ``info.port``, without the token being sent."""
    nonce = secrets.token_hex(16)
    request = urllib.request.Request(f"{info.url}{IDENTIFY_PATH}?nonce={nonce}")
    # Loopback only: never through a proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            answer = orjson.loads(response.read())
    except (OSError, ValueError):
        return False
    if not isinstance(answer, dict) or not isinstance(answer.get("proof"), str):
        return False
    expected = identity_proof(token, info.pid, info.port, nonce)
    return answer.get("pid") == info.pid and hmac.compare_digest(answer["proof"], expected)
