"""The states a row of a job can be in, named once.

Every other module spells a set of row states through these names (``merge``'s
``failed()``, the panel's highlighting, the counts in summaries and listings...), so a
state added or regrouped is one edit here. The words themselves are what users see in
``{output}_status`` and ``job.results()["status"]``.

A provider's words for a whole *batch* ("completed", "in_progress", "ended"...) and a
job's own status ("running", "completed"...) are other vocabularies, not these.
"""

from __future__ import annotations

PENDING = "pending"
SUCCEEDED = "succeeded"
FAILED = "failed"
EXPIRED = "expired"
CANCELLED = "cancelled"
SKIPPED = "skipped"

#: Every row state, in the order of the codes :class:`nbbatch._rowstore.RowState` keeps.
STATES = (PENDING, SUCCEEDED, FAILED, EXPIRED, CANCELLED, SKIPPED)
#: Ended without an answer: highlighted, returned by ``job.failed()``.
NOT_SUCCEEDED = (FAILED, EXPIRED, CANCELLED)
#: Ended at the provider (every state a provider's result gives a row sent).
SENT = (SUCCEEDED, *NOT_SUCCEEDED)
#: What ``job.resubmit_failed()`` sends again (a cancelled row was cancelled on purpose).
RESUBMITTABLE = (FAILED, EXPIRED)
#: Rows without a result: not answered yet, or never sent.
UNSENT = (PENDING, SKIPPED)
#: States that never change again by themselves.
TERMINAL = (*SENT, SKIPPED)
#: The order counts are shown in (summaries, listings, the panel, the CLI).
SHOWN = (SUCCEEDED, *NOT_SUCCEEDED, SKIPPED, PENDING)
