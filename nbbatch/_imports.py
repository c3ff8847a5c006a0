"""Run a callback once a module has been imported, whenever that happens.

``df.nbbatch`` must work whether the user imports pandas before nbbatch or after it,
yet ``import nbbatch`` should not import pandas itself (it would cost most of a second
of start-up to the command line, which often never needs it). So the accessor is
registered right after pandas finishes importing: at once if it already has, else by
a finder on ``sys.meta_path`` that wraps pandas' own loader and removes itself.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any


def when_imported(name: str, callback: Callable[[], object]) -> None:
    """Call ``callback()`` once the top-level module ``name`` is fully imported."""
    if name in sys.modules:
        callback()
        return
    sys.meta_path.insert(0, _AfterImport(name, callback))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it asks the other finders for ``name``'s spec and makes
    its loader call the callback after the module has run. It stays in place until
    then: a library that only asks whether pandas exists (``find_spec``) without
    importing it must not use it up."""

    def __init__(self, name: str, callback: Callable[[], object]) -> None:
        self.name = name
        self.callback = callback
        self._asking = False  # inside our own find_spec: let the other finders answer

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> Any:
        if fullname != self.name or self._asking:
            return None
        self._asking = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._asking = False
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module
        finder = self

        def exec_module(module: ModuleType) -> None:
            run(module)
            if finder in sys.meta_path:  # once: the module is imported now
                sys.meta_path.remove(finder)
                finder.callback()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
