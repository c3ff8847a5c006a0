"""The one error tree of nbbatch.

Every error nbbatch raises on purpose is an :class:`NbbatchError`. Errors about the
user's input are raised *before* anything is sent to a provider (sending costs money)
and also subclass :class:`ValueError`, so generic handlers keep working::

    NbbatchError
    ├── TemplateError        the prompt template is unsafe or names no column   (ValueError)
    ├── InputError           the data or an argument cannot be used as given    (ValueError)
    ├── ConfigError          no provider can be chosen, or no client can be made
    ├── JobNotFoundError     no job with that id in the ledger                  (KeyError)
    ├── MergeError           a DataFrame does not match the job's rows          (ValueError)
    └── ProviderError        the provider refused or could not be reached
        └── BatchFailedError a whole provider batch failed (validation, capacity)

Warnings: :class:`JobRunningWarning` (a ``UserWarning``) when ``merge()`` or
``failed()`` is called on a job that is still running.

Messages say what happened, the likely cause and what to do. Errors about a job carry
``.job_id``; errors from a provider carry ``.provider``.
"""

from __future__ import annotations


class NbbatchError(Exception):
    """Base class of every error nbbatch raises on purpose."""

    def __init__(
        self, message: str, *, job_id: str | None = None, provider: str | None = None
    ) -> None:
        import sys

        from ._scrub import scrub, scrub_chain

        # An SDK's error text, quoted in ours, can carry the key it was given.
        super().__init__(scrub(message))
        # So can the SDK's error itself, chained under ours (``raise ... from exc``, or
        # raised while handling it): a traceback shows it, and a notebook keeps it.
        scrub_chain(sys.exc_info()[1])
        self.job_id = job_id
        self.provider = provider


class TemplateError(NbbatchError, ValueError):
    """The prompt template is unsafe, malformed, or names a column that does not exist."""


class InputError(NbbatchError, ValueError):
    """The data or an argument cannot be used as given."""


class ConfigError(NbbatchError):
    """No provider could be chosen, or no SDK client could be built."""


class JobNotFoundError(NbbatchError, KeyError):
    """No job with that id is recorded in the ledger."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class MergeError(NbbatchError, ValueError):
    """A DataFrame given to ``merge`` does not hold the rows the job was built from."""


class ProviderError(NbbatchError):
    """The provider refused a call or could not be reached.

    ``transient`` is true when the same call may well work later (connection refused,
    timeout, 429, 5xx); a poller shows those and tries again instead of raising.
    """

    def __init__(
        self,
        message: str,
        *,
        job_id: str | None = None,
        provider: str | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message, job_id=job_id, provider=provider)
        self.transient = transient


class BatchFailedError(ProviderError):
    """A whole provider batch failed, for example in validation or for capacity."""


class JobRunningWarning(UserWarning):
    """``merge()`` or ``failed()`` was called while rows are still pending: what they
    return is not final yet."""
