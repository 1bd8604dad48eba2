"""Choosing which outbox rows go into the next push, within the server's limits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fieldsync.model.automerge_format.changes import ChangeFormatError, parse_change
from fieldsync_client.local_store import OutboxEntry

__all__ = ["ENTITY_OVERHEAD_BYTES", "EntityBatch", "plan_push"]

ENTITY_OVERHEAD_BYTES = 256  # msgpack keys, type and id of one entity entry, generously
CHANGE_OVERHEAD_BYTES = 8  # the bin header of one change
PUSH_OVERHEAD_BYTES = 256


@dataclass(frozen=True, slots=True)
class EntityBatch:
    """One entity's oldest pending changes, in the order they were made."""

    entity_type: str
    entity_id: str
    entries: tuple[OutboxEntry, ...]

    @property
    def changes(self) -> tuple[bytes, ...]:
        """What the push carries for the entity (``client_protocol.PushEntity``)."""
        return tuple(entry.change for entry in self.entries)


def plan_push(
    pending: Sequence[OutboxEntry],
    *,
    max_entities: int,
    max_changes_per_entity: int,
    max_bytes: int,
    max_ops: int | None = None,
) -> list[EntityBatch]:
    """The next push: entities in the order of their oldest pending change.

    Each entity gets its oldest changes (a prefix, so dependencies travel first); the push
    stays within ``max_entities``, ``max_changes_per_entity``, about ``max_bytes`` on
    the wire and ``max_ops`` ops. It holds at least one change whenever ``pending`` is not
    empty, even one over a bound (the server then refuses it with a reason the app can see).
    """
    grouped: dict[str, list[OutboxEntry]] = {}
    for entry in pending:
        grouped.setdefault(entry.entity_id, []).append(entry)
    batches: list[EntityBatch] = []
    size = PUSH_OVERHEAD_BYTES
    ops = 0
    for entity_id, entries in grouped.items():
        if len(batches) >= max_entities:
            break
        taken: list[OutboxEntry] = []
        extra = ENTITY_OVERHEAD_BYTES
        extra_ops = 0
        for entry in entries[:max_changes_per_entity]:
            cost = len(entry.change) + CHANGE_OVERHEAD_BYTES
            cost_ops = _op_count(entry.change)
            over_bytes = size + extra + cost > max_bytes
            over_ops = max_ops is not None and ops + extra_ops + cost_ops > max_ops
            if (over_bytes or over_ops) and (batches or taken):
                break
            taken.append(entry)
            extra += cost
            extra_ops += cost_ops
        if not taken:
            break
        batches.append(EntityBatch(taken[0].entity_type, entity_id, tuple(taken)))
        size += extra
        ops += extra_ops
        if len(taken) < min(len(entries), max_changes_per_entity):
            break  # the frame is full
    return batches


def _op_count(change: bytes) -> int:
    try:
        # This client made the change itself: no bound on inflating it is needed here.
        return parse_change(change, max_inflated_bytes=1 << 31).op_count
    except ChangeFormatError:
        return 0  # the server will refuse it with a reason; it costs no ops here
