"""Looking inside a storage, for tests only: what each implementation holds, in one form.

The ports show what the server needs and no more; the contract tests also check what
storage keeps behind them (the log with its senders, each entity's stored document, the
read-model rows, the conflict records). Each implementation gets an inspector that reads
its own representation (SQL for PostgreSQL, the dicts for memory) into the same records,
so one test compares "before" and "after" on either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import asyncpg

from fieldsync.conflict.ledger import ConflictRow
from fieldsync.model.projections import PROJECTIONS
from fieldsync.store.conflicts import conflict_rows
from fieldsync.store.memory import MemoryStorage

Log = tuple[tuple[int, str, str, bytes, bytes, str], ...]  # seq, type, id, hash, change, sender


@dataclass(frozen=True)
class StoredDocument:
    entity_id: str
    entity_type: str
    heads: tuple[bytes, ...]  # sorted
    saved: bytes
    tail: bytes
    tail_changes: int
    change_count: int
    version: int
    op_count: int


@dataclass(frozen=True)
class ProjectState:
    head: int
    log: Log
    documents: tuple[StoredDocument, ...]
    read_models: tuple[tuple[str, tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]], ...]
    conflicts: tuple[ConflictRow, ...]


class Inspector(Protocol):
    async def state(self, project_id: UUID) -> ProjectState: ...

    async def document(self, entity_id: str) -> StoredDocument | None: ...

    async def read_model(self, entity_type: str, entity_id: str) -> dict[str, Any] | None:
        """The entity's read-model row by column (with ``last_seq``), or None."""
        ...


def _columns(entity_type: str) -> tuple[str, ...]:
    return (*PROJECTIONS[entity_type].columns, "last_seq")


class PostgresInspector:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def state(self, project_id: UUID) -> ProjectState:
        async with self._pool.acquire() as conn:
            head = await conn.fetchval(
                "SELECT head_seq FROM log_heads WHERE project_id = $1", project_id
            )
            log = await conn.fetch(
                "SELECT seq, entity_type, entity_id, hash, change, sender FROM changes "
                "WHERE project_id = $1 ORDER BY seq",
                project_id,
            )
            documents = await conn.fetch(
                "SELECT entity_id FROM documents WHERE project_id = $1 ORDER BY entity_id",
                project_id,
            )
            read_models = []
            for entity_type in sorted(PROJECTIONS):
                rows = await conn.fetch(
                    f"SELECT * FROM {PROJECTIONS[entity_type].table} WHERE project_id = $1 "
                    "ORDER BY entity_id",
                    project_id,
                )
                read_models.append(
                    (
                        entity_type,
                        tuple(
                            (r["entity_id"], tuple((c, r[c]) for c in _columns(entity_type)))
                            for r in rows
                        ),
                    )
                )
            conflicts = await conflict_rows(conn, project_id)
        stored = [await self.document(r["entity_id"]) for r in documents]
        return ProjectState(
            head,
            tuple(tuple(r.values()) for r in log),
            tuple(d for d in stored if d is not None),
            tuple(read_models),
            tuple(conflicts),
        )

    async def document(self, entity_id: str) -> StoredDocument | None:
        async with self._pool.acquire() as conn:
            r = await conn.fetchrow(
                "SELECT entity_id, entity_type, heads, saved, tail, tail_changes, change_count, "
                "version, op_count FROM documents WHERE entity_id = $1",
                entity_id,
            )
        if r is None:
            return None
        return StoredDocument(
            r["entity_id"],
            r["entity_type"],
            tuple(sorted(r["heads"])),
            r["saved"],
            r["tail"],
            r["tail_changes"],
            r["change_count"],
            r["version"],
            r["op_count"],
        )

    async def read_model(self, entity_type: str, entity_id: str) -> dict[str, Any] | None:
        async with self._pool.acquire() as conn:
            r = await conn.fetchrow(
                f"SELECT * FROM {PROJECTIONS[entity_type].table} WHERE entity_id = $1", entity_id
            )
        return None if r is None else {c: r[c] for c in _columns(entity_type)}


class MemoryInspector:
    def __init__(self, storage: MemoryStorage) -> None:
        self._state = storage.state

    async def state(self, project_id: UUID) -> ProjectState:
        project = self._state.projects[project_id]
        documents = [await self.document(key) for key in sorted(project.entities)]
        return ProjectState(
            project.head,
            tuple(
                (c.seq, c.entity_type, c.entity_id, c.hash, c.change, e.sender)
                for e in project.log
                for c in (e.change,)
            ),
            tuple(d for d in documents if d is not None),
            tuple(
                (
                    entity_type,
                    tuple(
                        (key, tuple((c, row[c]) for c in _columns(entity_type)))
                        for key, row in sorted(project.read_models[entity_type].items())
                    ),
                )
                for entity_type in sorted(PROJECTIONS)
            ),
            tuple(project.conflicts[key] for key in sorted(project.conflicts)),
        )

    async def document(self, entity_id: str) -> StoredDocument | None:
        e = self._state.entities.get(entity_id)
        if e is None:
            return None
        return StoredDocument(
            e.entity_id,
            e.entity_type,
            tuple(sorted(e.heads)),
            e.saved,
            e.tail,
            e.tail_changes,
            e.change_count,
            e.version,
            e.op_count,
        )

    async def read_model(self, entity_type: str, entity_id: str) -> dict[str, Any] | None:
        for project in self._state.projects.values():
            row = project.read_models[entity_type].get(entity_id)
            if row is not None:
                return {c: row[c] for c in _columns(entity_type)}
        return None
