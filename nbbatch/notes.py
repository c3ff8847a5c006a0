"""What a job says about itself: kept with the rest of its health in :mod:`nbbatch.health`.

This module stays so that ``nbbatch.notes.mark_current`` and ``alert_text`` keep their
names.
"""

from __future__ import annotations

from .health import alert_text, mark_current

__all__ = ["alert_text", "mark_current"]
