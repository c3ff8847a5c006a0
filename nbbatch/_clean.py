"""Disk that no job needs any more, found and removed: what ``nbbatch clean`` does.

What a job needs stays: its record, manifest, rows sent and parsed results, and the
background emulator's batches of every job the ledger holds. What goes:

- a folder under ``files/`` whose job is not in the ledger (a forget or a crash
  that left it behind);
- raw result files of batches whose results are recorded (earlier releases kept them
  beside the parsed results, so they were stored twice);
- temporary files of a plan or a staging folder older than a day (a process that
  died while writing them);
- ended batches in the background emulator of ``provider="local"`` that no job in
  the ledger refers to (jobs forgotten before ``forget`` removed them, or a ledger
  replaced), with their files, deleted through the emulator's own API.

:func:`survey` finds them and says how many bytes each holds; :func:`remove` removes
what a survey found. Nothing here removes anything a job in the ledger refers to.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._ledger import Ledger
    from .providers.base import BatchInfo, Provider

log = logging.getLogger("nbbatch")

#: A temporary file or staging folder older than this was left by a process that died.
STALE_SECONDS = 24 * 3600


@dataclass
class Found:
    """One kind of thing no job needs: ``what`` in words, the paths to remove and the
    bytes they hold, or background-emulator batches to delete."""

    what: str
    paths: list[Path] = field(default_factory=list)
    batches: list[tuple[Provider, BatchInfo]] = field(default_factory=list)
    size: int = 0

    def line(self) -> str:
        """E.g. ``3 raw result files of collected batches: 12.4 MB``."""
        return f"{self.what}: {human_bytes(self.size)}" if self.paths else self.what


def survey(ledger: Ledger, *, emulator_too: bool = True) -> list[Found]:
    """Everything under the ledger's folder (and in its background emulator) that no
    job needs, by kind; kinds with nothing in them are left out."""
    jobs = {str(r["id"]) for r in ledger.jobs()}
    found = [_orphan_folders(ledger, jobs), _raw_results(ledger, jobs), _stale(ledger)]
    if emulator_too:
        found.append(_emulator_batches(ledger, jobs))
    return [f for f in found if f.paths or f.batches]


def remove(found: list[Found]) -> int:
    """Remove what :func:`survey` found; returns the bytes freed under the ledger's
    folder (the emulator's batches are deleted through its API, their size unknown)."""
    freed = 0
    for kind in found:
        for path in kind.paths:
            size = _size(path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            freed += size - _size(path)
        for provider, info in kind.batches:
            provider.delete_batch(info)
    return freed


def emulator_bytes(ledger: Ledger) -> int:
    """What the background emulator's folder holds on disk (its batches' files)."""
    return _size(ledger.files.parent / "emulator" / "data")


def human_bytes(n: int) -> str:
    """``12.4 MB``: bytes in the largest unit that keeps the number at least 1."""
    size = float(n)
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _orphan_folders(ledger: Ledger, jobs: set[str]) -> Found:
    paths = [p for p in sorted(ledger.files.glob("nbb-*")) if p.is_dir() and p.name not in jobs]
    return _found(("folder", "folders"), "of jobs no longer in the ledger", paths)


def _raw_results(ledger: Ledger, jobs: set[str]) -> Found:
    paths: list[Path] = []
    for job_id in sorted(jobs):
        folder = ledger.files / job_id
        for batch in ledger.batches(job_id):
            if batch["collected"]:
                paths += folder.glob(f"{batch['batch_id']}.*.jsonl")
                paths += folder.glob(f"{batch['batch_id']}.complete")
    return _found(
        ("raw result file", "raw result files"), "of batches whose results are recorded", paths
    )


def _stale(ledger: Ledger) -> Found:
    now = time.time()
    paths = [
        p
        for pattern in (".manifest-*", ".staging-*", ".*.tmp", "*/.*.tmp")
        for p in ledger.files.glob(pattern)
        if now - p.stat().st_mtime > STALE_SECONDS
    ]
    return _found(
        ("temporary file", "temporary files"), "left by processes that died", sorted(set(paths))
    )


def _emulator_batches(ledger: Ledger, jobs: set[str]) -> Found:
    """Ended batches in the background emulator that no job in the ledger refers to.
    Looked for only when the emulator has a folder here (it is started to answer)."""
    from . import providers

    kind = Found("in the background emulator that no job refers to")
    if not (ledger.files.parent / "emulator").is_dir():
        return kind
    known = {str(b["batch_id"]) for job_id in jobs for b in ledger.batches(job_id)}
    for name in ("openai", "anthropic", "gemini"):
        impl = providers.build(name, local=True)
        for info in impl.list_batches():
            if info.ended and info.batch_id not in known:
                kind.batches.append((impl, info))
    n = len(kind.batches)
    kind.what = f"{n:,} ended {'batch' if n == 1 else 'batches'} {kind.what}"
    return kind


def _found(noun: tuple[str, str], rest: str, paths: list[Path]) -> Found:
    """``paths`` as a :class:`Found`: "2 folders of ...", "1 folder of ..."."""
    what = f"{len(paths):,} {noun[0] if len(paths) == 1 else noun[1]} {rest}"
    return Found(what, paths, size=sum(_size(p) for p in paths))


def _size(path: Path) -> int:
    """Bytes under ``path`` (a file or a folder), 0 if it is gone."""
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0
