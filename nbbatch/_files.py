"""Writing result files a user asked for, safely: private, atomic, never through a link.

Results are often private (customer texts, model answers). A file nbbatch writes for the
user (``nbbatch collect --out``, the sidebar's Parquet, ``job.to_parquet``) is written to
a fresh temporary name beside it, created exclusively by :func:`tempfile.mkstemp` (so a
link planted at a guessable name is never followed), then given mode ``0600`` (or less,
when the user's umask asks for less) and renamed over the target, which replaces a
link there rather than writing through it.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: The most a result file is opened to: its owner only.
PRIVATE = 0o600
_umask_lock = threading.Lock()


def names_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is written as a folder: it ends in a slash (or the system's
    separator), as ``"summaries/"`` does, whether or not the folder exists yet."""
    text = os.fspath(path)
    return text.endswith(tuple(sep for sep in ("/", os.sep, os.altsep) if sep))


def umask() -> int:
    """This process's umask (read from /proc where it can be, else set and put back)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def result_mode() -> int:
    """The mode of a result file: ``0600``, less what the umask takes away."""
    return PRIVATE & ~umask()


@contextmanager
def private_output(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A new, empty temporary file beside ``target`` for the caller to write (by name);
    once the block ends without error it gets :func:`result_mode` and replaces
    ``target`` atomically; otherwise it is removed and ``target`` is left as it was."""
    target = Path(target)
    # The target's suffix last: writers choose the format (and compression) by it.
    fd, name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, result_mode())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def private_tree(folder: Path) -> None:
    """Make ``folder`` and every folder under it 0700 and every file 0600 (what a
    library wrote with the process's umask), never following a link."""
    os.chmod(folder, 0o700, follow_symlinks=False)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o700, follow_symlinks=False)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, PRIVATE)


def private_dirs(folder: str | os.PathLike[str]) -> Path:
    """Make ``folder`` and each missing folder above it owner-only (0700), whatever the
    umask (``mkdir(parents=True)`` makes the parents with the umask's mode: 0777 under
    umask 000). Folders that exist are left as they are."""
    folder = Path(folder)
    missing = []
    at = folder
    while not at.exists():
        missing.append(at)
        if at.parent == at:
            break
        at = at.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile by another process
        os.chmod(path, 0o700)
    return folder
