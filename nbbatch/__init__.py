"""nbbatch: run an LLM over every row of a DataFrame at batch-API prices, from Jupyter.

>>> import nbbatch as nb
>>> job = nb.submit(df, "Classify the sentiment of: {review}", model="gpt-4o-mini",
...                 output="sentiment")                        # doctest: +SKIP
>>> job.wait().merge(df)                                       # doctest: +SKIP
"""

from __future__ import annotations

import logging

from . import accessor as _accessor  # noqa: F401 - registers df.nbbatch
from . import emulator, pricing
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
from .api import Preview, attach, jobs, ledger_path, preview, submit, try_now
from .job import BatchJob, PollPolicy
from .snapshot import JobSnapshot
from .styling import highlight

__version__ = "0.1.0"

# A library logs, the application decides where it goes: silent unless configured
# (``logging.basicConfig(level="INFO")`` shows submit, status changes and completion).
logging.getLogger("nbbatch").addHandler(logging.NullHandler())

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
    "PollPolicy",
    "Preview",
    "ProviderError",
    "TemplateError",
    "attach",
    "emulator",
    "highlight",
    "jobs",
    "ledger_path",
    "preview",
    "pricing",
    "submit",
    "try_now",
]
