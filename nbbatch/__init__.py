"""nbbatch: run an LLM over every row of a DataFrame at batch-API prices, from Jupyter.

>>> import nbbatch as nb
>>> job = nb.submit(df, "Classify the sentiment of: {review}", model="gpt-4o-mini",
...                 output="sentiment")                        # doctest: +SKIP
>>> job.wait().merge(df)                                       # doctest: +SKIP
"""

from __future__ import annotations

from . import emulator
from ._errors import (
    BatchFailedError,
    ConfigError,
    InputError,
    JobNotFoundError,
    MergeError,
    NbbatchError,
    ProviderError,
    TemplateError,
)
from .api import attach, jobs, submit
from .job import BatchJob, PollPolicy
from .snapshot import JobSnapshot

__version__ = "0.1.0"

__all__ = [
    "BatchFailedError",
    "BatchJob",
    "ConfigError",
    "InputError",
    "JobNotFoundError",
    "JobSnapshot",
    "MergeError",
    "NbbatchError",
    "PollPolicy",
    "ProviderError",
    "TemplateError",
    "attach",
    "emulator",
    "jobs",
    "submit",
]
