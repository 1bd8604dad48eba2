"""This process's copies of hot entity documents, so an append need not reload them.

An entry is keyed by entity and tagged with its *version* (the seq of the entity's latest
logged change). Under the project's lock the store compares that version with the database
row: equal means the copy is the committed document, anything else means reload. Entries
are only ever committed documents; a merge works on a fork and is cached after commit.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from uuid import UUID

from automerge.core import Document


@dataclass(frozen=True, slots=True)
class CachedDocument:
    version: int
    document: Document


class DocumentCache:
    """A bounded least-recently-used map from (project, entity) to a committed document."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[tuple[UUID, str], CachedDocument] = OrderedDict()

    def get(self, project_id: UUID, entity_id: str) -> CachedDocument | None:
        entry = self._entries.get((project_id, entity_id))
        if entry is not None:
            self._entries.move_to_end((project_id, entity_id))
        return entry

    def put(self, project_id: UUID, entity_id: str, entry: CachedDocument) -> None:
        """Keep ``entry`` unless a newer version of the entity is already cached."""
        key = (project_id, entity_id)
        current = self._entries.get(key)
        if current is not None and current.version >= entry.version:
            return
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
