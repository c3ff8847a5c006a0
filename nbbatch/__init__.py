"""nbbatch: run an LLM over every row of a DataFrame at batch-API prices, from Jupyter.

>>> import nbbatch as nb
>>> job = nb.submit(df, "Classify the sentiment of: {review}", model="gpt-4o-mini",
...                 output="sentiment")                        # doctest: +SKIP
>>> job.wait().merge(df)                                       # doctest: +SKIP

The names below are loaded on first use (``nb.submit`` imports pandas, pyarrow and the
rest then), so ``import nbbatch`` and the ``nbbatch`` command start at once. The
``df.nbbatch`` accessor is registered as soon as pandas is imported, before or after
nbbatch.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from . import _scrub
from ._errors import (
    BatchFailedError,
    ConfigError,
    InputError,
    JobNotFoundError,
    JobRunningWarning,
    MergeError,
    NbbatchError,
    ProviderError,
    TemplateError,
)
from ._imports import when_imported

if TYPE_CHECKING:
    from . import emulator, pricing
    from ._jobs import attach, compare, jobs, ledger_path
    from ._preview import Preview, preview, try_now
    from ._submit import submit
    from .job import BatchJob, PollPolicy
    from .piloting import Pilot, Setting, pilot
    from .snapshot import JobSnapshot
    from .styling import highlight

__version__ = "0.1.0"

# A library logs, the application decides where it goes: silent unless configured
# (``logging.basicConfig(level="INFO")`` shows submit, status changes and completion).
logging.getLogger("nbbatch").addHandler(logging.NullHandler())
# No API key reaches a log line, whatever an SDK's error text quotes.
_scrub.install_log_filter(logging.getLogger("nbbatch"))

#: Public name -> the module that defines it (a module itself when the name is one).
_LAZY = {
    "Preview": "_preview",
    "attach": "_jobs",
    "compare": "_jobs",
    "jobs": "_jobs",
    "ledger_path": "_jobs",
    "preview": "_preview",
    "submit": "_submit",
    "try_now": "_preview",
    "BatchJob": "job",
    "PollPolicy": "job",
    "JobSnapshot": "snapshot",
    "Pilot": "piloting",
    "Setting": "piloting",
    "pilot": "piloting",
    "highlight": "styling",
    "emulator": "emulator",
    "pricing": "pricing",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nbbatch' has no attribute {name!r}")
    loaded = importlib.import_module(f"{__name__}.{module}")
    value = loaded if module == name else getattr(loaded, name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


# df.nbbatch: pandas is imported by whoever has a DataFrame; register the accessor then.
when_imported("pandas", lambda: importlib.import_module(f"{__name__}.accessor"))

__all__ = [
    "BatchFailedError",
    "BatchJob",
    "ConfigError",
    "InputError",
    "JobNotFoundError",
    "JobRunningWarning",
    "JobSnapshot",
    "MergeError",
    "NbbatchError",
    "Pilot",
    "PollPolicy",
    "Setting",
    "Preview",
    "ProviderError",
    "TemplateError",
    "attach",
    "compare",
    "emulator",
    "highlight",
    "jobs",
    "ledger_path",
    "pilot",
    "preview",
    "pricing",
    "submit",
    "try_now",
]
