"""This process's copies of hot entity documents, so an append need not reload them.

An entry is keyed by entity and tagged with its *version* (the seq of the entity's latest
logged change). Under the project's lock the store compares that version with the database
row: equal means the copy is the committed document, anything else means reload. Entries
are only ever committed documents; a merge works on a fork and is cached after commit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from uuid import UUID

from automerge.core import Document


@dataclass(frozen=True, slots=True)
class CachedDocument:
    version: int
    document: Document
    size_bytes: int  # stored size (saved + tail): a proxy for the memory it holds
    # The document's validated values, as the merge that produced it read them: the next
    # merge's "before" (write rules, conflict rows) without validating the document again.
    values: Mapping[str, object] | None = None


class DocumentCache:
    """A least-recently-used map from (project, entity) to a committed document, bounded
    both in entries and in stored bytes (documents may be up to 16 MiB each)."""

    def __init__(self, capacity: int = 10_000, max_bytes: int = 256 * 1024 * 1024) -> None:
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._bytes = 0
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
        if current is not None:
            self._bytes -= current.size_bytes
            del self._entries[key]
        if entry.size_bytes > self._max_bytes:
            return  # too big to keep: reloaded when next needed
        self._entries[key] = entry
        self._bytes += entry.size_bytes
        while len(self._entries) > self._capacity or self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size_bytes

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes
