"""A module imported on first attribute access, so a provider's SDK is imported only
when the provider is used (registering it, or recognising a model, imports nothing)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class _LazyModule:
    """Stands for module ``name`` until an attribute is read, then is that module's."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)


def lazy_module(name: str) -> Any:
    """Module ``name``, imported when first used (``except lazy.Error:`` included)."""
    return _LazyModule(name)
