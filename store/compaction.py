"""When to replace an entity's stored ``saved + tail`` with a fresh ``save()``.

Saving costs time proportional to the whole document, appending to the tail costs only the
new bytes; a snapshot or a cache miss loads ``saved + tail`` and a long tail loads slowly.
Saving once the tail is as large as the saved part (or holds 16 + 1/8 of the document's
changes) keeps the amortised cost per change constant and the tail short: a saved document
loads about twice as fast as the same history as change chunks (bench/bootstrap.py).
"""

from __future__ import annotations

MIN_TAIL_BYTES = 8 * 1024
MIN_TAIL_CHANGES = 16


def should_compact(saved_bytes: int, tail_bytes: int, tail_changes: int, change_count: int) -> bool:
    """True when the entity's tail should be folded into a new saved document."""
    if tail_bytes > max(MIN_TAIL_BYTES, saved_bytes):
        return True
    return tail_changes >= MIN_TAIL_CHANGES + change_count // 8
