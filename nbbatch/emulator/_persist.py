"""Saving the emulator's files and batches on disk, so a new process serves them again.

Used by the background emulator behind ``provider="local"``: if its process stops (idle
exit, a reboot, a kill) the next one loads what the last one saved and carries on. A
batch's life cycle is a pure function of the clock (see :mod:`._state`), so with
wall-clock time saving its record is enough: status and counts come out the same, and
output not generated yet is generated again from the saved input.

Layout of the state directory (folders 0700, files 0600)::

    data/                          file bytes: uploads, batch inputs, outputs, results
    files/<id>.json                one file's metadata
    batches/<provider>/<id>.json   one batch's fields, with its outcome once known
    batches/<provider>/<id>.rows   its row fates (n bytes) and processing order (uint32)

State is written after each HTTP request that changed it, before the answer leaves,
so what a client was told (a batch id, a cancel) is on disk first. Every write goes to
a temporary file renamed into place, so a kill leaves the old or the new record.

Nothing deletes what nbbatch uploads, so a process that loads the state leaves out
batches and files created more than :data:`RETENTION_SECONDS` ago (30 days; a batch has
ended a day after it was created), and their bytes.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from array import array
from pathlib import Path
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import _anthropic, _gemini, _openai
from ._faults import Knobs
from ._files import write_atomic
from ._state import BatchRecord, Store, StoredFile

# provider -> (batch record class, outcome class)
_KINDS: dict[str, tuple[Any, Any]] = {
    "openai": (_openai.OpenAIBatch, _openai.Outcome),
    "anthropic": (_anthropic.AnthropicBatch, _anthropic.Outcome),
    "gemini": (_gemini.GeminiBatch, _gemini.Outcome),
}
#: Batches and files older than this are not loaded again (and their bytes deleted).
RETENTION_SECONDS = 30 * 24 * 3600.0
# Batch fields kept elsewhere (rows file, outcome) or rebuilt on load.
_NOT_SAVED = {"store", "knobs", "fates", "order", "outcome"}


class Persister:
    """Mirrors a :class:`Store` into a state directory and loads it back."""

    def __init__(self, store: Store, root: Path) -> None:
        self.store = store
        self.root = root
        self._lock = threading.Lock()
        self._files_dir = root / "files"
        self._batches_dir = root / "batches"
        for folder in (root, store.directory, self._files_dir, self._batches_dir):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for provider in _KINDS:
            (self._batches_dir / provider).mkdir(exist_ok=True, mode=0o700)
        # What is on disk: file ids, and per batch the state it was saved in.
        self._saved_files: set[str] = set()
        self._saved_batches: dict[tuple[str, str], tuple[float | None, bool]] = {}

    # ------------------------------------------------------------------ load

    def load(self) -> None:
        """Bring back every saved file and batch; drop data no record refers to."""
        store = self.store
        cutoff = time.time() - RETENTION_SECONDS
        files: list[StoredFile] = []
        batches: list[tuple[str, BatchRecord]] = []
        for path in sorted(self._files_dir.glob("*.json")):
            file = _file_from(orjson.loads(path.read_bytes()), store.directory)
            if file.created_at < cutoff:
                path.unlink()
                continue
            files.append(file)
        for provider, (cls, outcome_cls) in _KINDS.items():
            folder = self._batches_dir / provider
            for path in sorted(folder.glob("*.json")):
                rows = path.with_suffix(".rows")
                saved = orjson.loads(path.read_bytes())
                # No rows file: the process was killed between the two writes of a new batch.
                if not rows.exists() or saved["fields"]["created"] < cutoff:
                    path.unlink()
                    rows.unlink(missing_ok=True)
                    continue
                batches.append((provider, self._batch_from(saved, rows, cls, outcome_cls)))
        # Before any batch is registered: that starts generating output into new files.
        self._drop_unreferenced(files, [b for _, b in batches])
        for file in files:
            store.add_file(file)
            self._saved_files.add(file.id)
        for provider, batch in batches:
            store.restore_batch(provider, batch)
            self._saved_batches[(provider, batch.id)] = _state_of(batch)
        store.resume_seq(max([f.seq for f in files] + [b.seq for _, b in batches], default=0))

    def _batch_from(
        self, saved: dict[str, Any], rows: Path, cls: Any, outcome_cls: Any
    ) -> BatchRecord:
        data = rows.read_bytes()
        n = int(saved["fields"]["n"])
        order = array("I")
        order.frombytes(data[n:])
        fields = {k: _decode(v, self.store.directory) for k, v in saved["fields"].items()}
        outcome = saved.get("outcome")
        return cls(
            **fields,
            knobs=Knobs().replace(**saved["knobs"]),
            fates=bytearray(data[:n]),
            order=order.tolist(),
            outcome=None
            if outcome is None
            else outcome_cls(**_decode(outcome, self.store.directory)),
            store=self.store,
        )

    def _drop_unreferenced(self, files: list[StoredFile], batches: list[BatchRecord]) -> None:
        """Delete data files no record needs (output half-written when a process died)."""
        used = {f.path.name for f in files}
        for batch in batches:
            _collect_paths([getattr(batch, f.name) for f in dataclasses.fields(batch)], used)
        for path in self.store.directory.iterdir():
            if path.name not in used:
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ save

    def sync(self) -> None:
        """Write what changed since the last call (new, changed and removed records)."""
        store = self.store
        with self._lock:
            with store.lock:
                files = dict(store.files)
                batches = {
                    (provider, b.id): b for provider in _KINDS for b in store.list_batches(provider)
                }
                states = {key: _state_of(b) for key, b in batches.items()}
            for file_id in files.keys() - self._saved_files:
                data = orjson.dumps(_file_json(files[file_id]))
                write_atomic(self._files_dir / f"{file_id}.json", data)
                self._saved_files.add(file_id)
            for file_id in self._saved_files - files.keys():
                (self._files_dir / f"{file_id}.json").unlink(missing_ok=True)
                self._saved_files.discard(file_id)
            for key, state in states.items():
                if self._saved_batches.get(key) != state:
                    self._save_batch(key[0], batches[key], new=key not in self._saved_batches)
                    self._saved_batches[key] = state
            for key in self._saved_batches.keys() - states.keys():
                base = self._batches_dir / key[0] / key[1]
                base.with_suffix(".json").unlink(missing_ok=True)
                base.with_suffix(".rows").unlink(missing_ok=True)
                del self._saved_batches[key]

    def _save_batch(self, provider: str, batch: BatchRecord, *, new: bool) -> None:
        base = self._batches_dir / provider / batch.id
        fields = {
            f.name: _encode(getattr(batch, f.name))
            for f in dataclasses.fields(batch)
            if f.name not in _NOT_SAVED and not f.name.startswith("_")
        }
        outcome = batch.outcome
        saved = {
            "fields": fields,
            "knobs": dataclasses.asdict(batch.knobs),
            "outcome": None
            if outcome is None
            else {f.name: _encode(getattr(outcome, f.name)) for f in dataclasses.fields(outcome)},
        }
        # The JSON goes last: a record without its rows file is discarded on load.
        if new:
            write_atomic(
                base.with_suffix(".rows"), bytes(batch.fates) + array("I", batch.order).tobytes()
            )
        write_atomic(base.with_suffix(".json"), orjson.dumps(saved))


class SyncAfterRequest:
    """ASGI middleware: save the store's changes before each answer is sent."""

    def __init__(self, app: ASGIApp, persister: Persister) -> None:
        self.app = app
        self.persister = persister

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_synced(message: Message) -> None:
            if message["type"] == "http.response.start":
                await run_in_threadpool(self.persister.sync)
            await send(message)

        await self.app(scope, receive, send_synced)


# ---------------------------------------------------------------------- encoding


def _state_of(batch: BatchRecord) -> tuple[float | None, bool]:
    """What can change in a batch after it is created: a cancel, and its outcome."""
    return batch.cancel_at, batch.outcome is not None


def _file_json(f: StoredFile) -> dict[str, Any]:
    return {**{k: _encode(v) for k, v in dataclasses.asdict(f).items()}, "path": f.path.name}


def _file_from(saved: dict[str, Any], directory: Path) -> StoredFile:
    return StoredFile(**{**saved, "path": directory / saved["path"]})


def _encode(value: Any) -> Any:
    """JSON-able form of a record field: paths by name (inside the data directory),
    stored files in full, everything else as it is."""
    if isinstance(value, Path):
        return {"__path__": value.name}
    if isinstance(value, StoredFile):
        return {"__file__": _file_json(value)}
    return value


def _decode(value: Any, directory: Path) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__path__"}:
            return directory / value["__path__"]
        if set(value) == {"__file__"}:
            return _file_from(value["__file__"], directory)
        return {k: _decode(v, directory) for k, v in value.items()}
    return value


def _collect_paths(values: list[Any], into: set[str]) -> None:
    for value in values:
        if isinstance(value, Path):
            into.add(value.name)
        elif isinstance(value, StoredFile):
            into.add(value.path.name)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            _collect_paths([getattr(value, f.name) for f in dataclasses.fields(value)], into)
