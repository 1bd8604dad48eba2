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

    Ops are bounded apart from bytes: the change format run-length encodes its columns, so
    a change of a hundred bytes can declare hundreds of thousands of ops (a list of nulls),
    each of which costs memory and time once applied. A change may hold at most
    ``max_ops_per_change`` ops, a push ``max_ops_per_push`` (all its entities together),
    and an entity's document ``max_document_ops`` over its whole history.
    """

    max_change_bytes: int = 256 * 1024
    max_changes_per_entity: int = 1_000
    max_entities_per_batch: int = 500
    max_document_bytes: int = 16 * 1024 * 1024
    max_frame_bytes: int = 8 * 1024 * 1024
    max_ops_per_change: int = 200_000
    max_ops_per_push: int = 200_000
    max_document_ops: int = 1_000_000


DEFAULT_LIMITS = Limits()
