"""A consistent snapshot of a project on PostgreSQL: every entity document, and every
conflict record, as of exactly one seq.

The snapshot runs in one REPEATABLE READ, read-only transaction: the head seq and every
``documents`` row come from the same database snapshot, and appenders update both in the
same transaction, so each document is exactly the fold of the log up to that head. Rows are
read through a server-side cursor, so memory stays bounded however large the project is.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import asyncpg

from fieldsync.conflict.ledger import ConflictRow
from fieldsync.store.conflicts import conflict_rows
from fieldsync.store.driver import driver_errors, translated
from fieldsync.store.log_heads import read_head
from fieldsync.store.records import SnapshotEntity

__all__ = ["Snapshot", "SnapshotEntity", "open_snapshot"]

_ENTITIES = """
SELECT entity_type, entity_id, version, heads, saved || tail AS document
FROM documents WHERE project_id = $1 ORDER BY entity_id
"""


class Snapshot:
    """Entities of one project at ``cursor`` (``store.ports.Snapshot``); valid only inside
    ``open_snapshot``."""

    def __init__(self, conn: Any, project_id: UUID, cursor: int) -> None:
        self._conn = conn
        self.project_id = project_id
        self.cursor = cursor
        self.started = time.monotonic()  # for the snapshot metrics
        self.document_bytes = 0  # of the entities read so far

    @translated("reading a snapshot")
    async def count(self) -> int:
        """How many entities the snapshot holds."""
        count: int = await self._conn.fetchval(
            "SELECT count(*) FROM documents WHERE project_id = $1", self.project_id
        )
        return count

    async def entities(self, prefetch: int = 128) -> AsyncIterator[SnapshotEntity]:
        """Every entity, in entity-id order, fetched ``prefetch`` rows at a time."""
        with driver_errors("reading a snapshot"):
            async for r in self._conn.cursor(_ENTITIES, self.project_id, prefetch=prefetch):
                self.document_bytes += len(r["document"])
                yield SnapshotEntity(
                    r["entity_type"],
                    r["entity_id"],
                    r["version"],
                    tuple(r["heads"]),
                    r["document"],
                )

    @translated("reading a snapshot")
    async def conflicts(self) -> list[ConflictRow]:
        """Every conflict record (open and resolved) as of the snapshot's cursor."""
        return await conflict_rows(self._conn, self.project_id)


@asynccontextmanager
async def open_snapshot(pool: asyncpg.Pool, project_id: UUID) -> AsyncIterator[Snapshot]:
    """Hold a repeatable-read view of ``project_id`` while the caller streams it."""
    with driver_errors("taking a snapshot"):
        async with (
            pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            head = await read_head(conn, project_id)
            yield Snapshot(conn, project_id, int(head))
