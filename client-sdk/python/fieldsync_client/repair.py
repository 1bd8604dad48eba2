"""What to send again when the server lacks dependencies of a pushed change.

The server answers ``missing_dependencies`` (with the missing hashes) when a pushed change
builds on changes it has never logged: an outbox row that was lost, or a server restored
from a backup that no longer has a change it once acknowledged. The local document still
holds those changes, so the push is repeated with them and everything they build on; the
server logs each change once, so the ones it already has cost nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fieldsync_client.local_store import OutboxEntry

__all__ = ["REPAIR_ROW", "HistoryChange", "Repairs", "missing_hashes", "with_ancestors"]

REPAIR_ROW = 0
"""The outbox id of a change sent again to fill a gap: it has no outbox row."""


@dataclass(frozen=True, slots=True)
class HistoryChange:
    hash: bytes
    deps: tuple[bytes, ...]
    change: bytes


def missing_hashes(details: Mapping[str, object]) -> frozenset[bytes] | None:
    """The hashes in a ``missing_dependencies`` rejection's details; None if unreadable."""
    listed = details.get("missing")
    if not isinstance(listed, list | tuple) or not listed:
        return None
    found: set[bytes] = set()
    for item in listed:
        if not isinstance(item, str) or len(item) != 64:
            return None
        try:
            found.add(bytes.fromhex(item))
        except ValueError:
            return None
    return frozenset(found)


def with_ancestors(
    history: Sequence[HistoryChange], wanted: frozenset[bytes]
) -> list[HistoryChange] | None:
    """The ``wanted`` changes and every change they depend on, in ``history``'s (causal)
    order; None when ``history`` does not hold all of them."""
    held = {change.hash for change in history}
    if not wanted <= held:
        return None
    needed = set(wanted)
    picked: list[HistoryChange] = []
    for change in reversed(history):
        if change.hash in needed:
            needed.update(change.deps)
            picked.append(change)
    picked.reverse()
    return picked


class Repairs:
    """The changes to send again, per project and entity, before the project's outbox: each
    entity's missing changes then go before its own. Kept for one connection (a new one
    learns again from the server what it lacks)."""

    def __init__(self) -> None:
        self._planned: dict[str, dict[str, list[OutboxEntry]]] = {}

    def entries(self, project_id: str) -> list[OutboxEntry]:
        planned = self._planned.get(project_id, {})
        return [entry for entries in planned.values() for entry in entries]

    def plan(self, project_id: str, entity_id: str, entries: list[OutboxEntry]) -> None:
        self._planned.setdefault(project_id, {})[entity_id] = entries

    def logged(self, project_id: str, entity_id: str, hashes: set[bytes]) -> None:
        """The server logged these changes of the entity: they need no resending."""
        planned = self._planned.get(project_id)
        if not planned or entity_id not in planned:
            return
        left = [entry for entry in planned[entity_id] if entry.hash not in hashes]
        if left:
            planned[entity_id] = left
        else:
            del planned[entity_id]

    def drop(self, project_id: str, entity_id: str | None = None) -> None:
        """Forget the entity's planned changes (its push was refused), or the project's."""
        if entity_id is None:
            self._planned.pop(project_id, None)
        else:
            self._planned.get(project_id, {}).pop(entity_id, None)
