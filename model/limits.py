"""Size bounds on everything a client can send; one definition shared by store and protocol."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that keep one client from exhausting memory, CPU or storage.

    A change over ``max_change_bytes`` (inflated), an entity batch over
    ``max_changes_per_entity`` or a document growing past ``max_document_bytes`` is refused;
    so is a WebSocket frame over ``max_frame_bytes`` or a push of more than
    ``max_entities_per_batch`` entities.
    """

    max_change_bytes: int = 256 * 1024
    max_changes_per_entity: int = 1_000
    max_entities_per_batch: int = 500
    max_document_bytes: int = 16 * 1024 * 1024
    max_frame_bytes: int = 8 * 1024 * 1024


DEFAULT_LIMITS = Limits()
