"""When a timed row (an activity, a summoning) falls in a window ``[from, to)``.

A row spans ``[starts_at, ends_at)``; it is in the window when the two overlap: it starts
before ``to`` and ends after ``from``. Two edge cases get a meaning of their own, so the SQL
and the in-memory filter can share one definition:

* a row of no length (``starts_at == ends_at``) is an instant, in the window when
  ``from <= starts_at < to``;
* a row whose end lies before its start (two merged edits can do that; the conflict rules
  report it) is taken as the instant ``starts_at``.

Both come down to one predicate: ``starts_at < to and (starts_at >= from or ends_at > from)``
(``store.queries`` writes the same in SQL). A missing bound is no bound.
"""

from __future__ import annotations

from datetime import datetime


def in_window(
    starts_at: datetime, ends_at: datetime, start: datetime | None, end: datetime | None
) -> bool:
    """Whether a row spanning ``[starts_at, ends_at)`` falls in ``[start, end)``."""
    if end is not None and not starts_at < end:
        return False
    return start is None or starts_at >= start or ends_at > start
