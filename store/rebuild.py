"""Rebuilding read models from the change log alone.

The rebuild replays each entity's logged changes into a fresh document, projects it with
the same code the append path uses, and replaces the project's read-model rows. It also
checks that the cached documents equal the replayed ones. It holds the project's log lock
so that no append interleaves with the replay.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg

from model.documents import contained, document_heads, load_document
from model.entities import SCHEMAS
from model.validation import inspect_document
from store.errors import UnknownProject
from store.readmodels import read_model_row, read_model_tables, upsert_read_models

_BATCH_ROWS = 500


@dataclass(slots=True)
class RebuildReport:
    projects: int = 0
    entities: int = 0
    changes: int = 0
    cache_mismatches: list[str] = field(default_factory=list)
    invalid_documents: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.cache_mismatches and not self.invalid_documents

    def __str__(self) -> str:
        text = (
            f"rebuilt read models of {self.projects} projects: {self.entities} entities "
            f"from {self.changes} changes"
        )
        if self.cache_mismatches:
            text += f"; cached documents differing from the log: {self.cache_mismatches}"
        if self.invalid_documents:
            text += f"; logged documents failing their schema: {self.invalid_documents}"
        return text


@dataclass(frozen=True, slots=True)
class _ReplayedEntity:
    entity_type: str
    entity_id: str
    last_seq: int
    changes: int
    document_bytes: bytes


async def rebuild_read_models(pool: asyncpg.Pool, project_id: UUID | None) -> RebuildReport:
    """Rebuild one project's read models, or every project's when ``project_id`` is None."""
    report = RebuildReport()
    async with pool.acquire() as conn:
        if project_id is None:
            projects = [r["project_id"] for r in await conn.fetch(
                "SELECT project_id FROM log_heads ORDER BY project_id")]
        else:
            projects = [project_id]
        for project in projects:
            async with conn.transaction():
                await _rebuild_project(conn, project, report)
    return report


async def _rebuild_project(conn: Any, project_id: UUID, report: RebuildReport) -> None:
    locked = await conn.fetchval(
        "SELECT head_seq FROM log_heads WHERE project_id = $1 FOR UPDATE", project_id
    )
    if locked is None:
        raise UnknownProject(project_id)
    for table in read_model_tables():
        await conn.execute(f"DELETE FROM {table} WHERE project_id = $1", project_id)
    cached_heads = {
        r["entity_id"]: set(r["heads"])
        for r in await conn.fetch(
            "SELECT entity_id, heads FROM documents WHERE project_id = $1", project_id
        )
    }
    rows: dict[str, list[tuple[object, ...]]] = defaultdict(list)
    pending = 0
    async for entity in _replay(conn, project_id):
        report.entities += 1
        report.changes += entity.changes
        document = load_document(entity.document_bytes)
        if set(document_heads(document)) != cached_heads.pop(entity.entity_id, None):
            report.cache_mismatches.append(entity.entity_id)
        schema = SCHEMAS[entity.entity_type]
        inspection = contained(lambda: inspect_document(schema, document))  # noqa: B023
        if inspection.violations:
            report.invalid_documents.append(entity.entity_id)
            continue
        rows[entity.entity_type].append(
            read_model_row(
                project_id, entity.entity_type, entity.entity_id, inspection.values,
                entity.last_seq,
            )
        )
        pending += 1
        if pending >= _BATCH_ROWS:
            await upsert_read_models(conn, rows)
            rows.clear()
            pending = 0
    await upsert_read_models(conn, rows)
    report.cache_mismatches.extend(sorted(cached_heads))
    report.projects += 1


async def _replay(conn: Any, project_id: UUID) -> AsyncIterator[_ReplayedEntity]:
    """Each entity's logged changes, concatenated in seq order, one entity at a time."""
    current: str | None = None
    entity_type = ""
    chunks: list[bytes] = []
    last_seq = 0
    query = (
        "SELECT entity_id, entity_type, seq, change FROM changes "
        "WHERE project_id = $1 ORDER BY entity_id, seq"
    )
    async for r in conn.cursor(query, project_id, prefetch=1000):
        if r["entity_id"] != current:
            if current is not None:
                yield _ReplayedEntity(entity_type, current, last_seq, len(chunks),
                                      b"".join(chunks))
            current, entity_type, chunks = r["entity_id"], r["entity_type"], []
        chunks.append(r["change"])
        last_seq = r["seq"]
    if current is not None:
        yield _ReplayedEntity(entity_type, current, last_seq, len(chunks), b"".join(chunks))
