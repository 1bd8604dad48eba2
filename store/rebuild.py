"""Rebuilding read models from the change log alone, on PostgreSQL.

The rebuild replays each entity's logged changes into a fresh document, projects it with
the same code the append path uses, and replaces the project's read-model rows. It also
checks that the cached documents equal the replayed ones. It holds the project's log lock
so that no append interleaves with the replay. What to write is decided by
``store.replay`` (shared with the in-memory storage); this module reads and writes.

Conflicts are rebuilt as ``docs/conflicts.md`` describes. Only the conflict rows that
differ are written, and their ids go to ``conflict_feed`` at the project's head, so that
clients learn of a repair with the next change they receive.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg

from fieldsync.store.conflicts import conflict_rows, write_conflicts
from fieldsync.store.driver import translated
from fieldsync.store.log_heads import read_head
from fieldsync.store.readmodels import read_model_row, read_model_tables, upsert_read_models
from fieldsync.store.records import RebuildReport
from fieldsync.store.replay import ProjectRebuild, ReplayedEntity

__all__ = ["RebuildReport", "rebuild_read_models"]

_BATCH_ROWS = 500


@translated("rebuilding read models")
async def rebuild_read_models(pool: asyncpg.Pool, project_id: UUID | None) -> RebuildReport:
    """Rebuild one project's read models, or every project's when ``project_id`` is None."""
    report = RebuildReport()
    async with pool.acquire() as conn:
        if project_id is None:
            projects = [
                r["project_id"]
                for r in await conn.fetch("SELECT project_id FROM log_heads ORDER BY project_id")
            ]
        else:
            projects = [project_id]
        for project in projects:
            async with conn.transaction():
                await _rebuild_project(conn, project, report)
    return report


async def _rebuild_project(conn: Any, project_id: UUID, report: RebuildReport) -> None:
    locked = await read_head(conn, project_id, lock=True)
    for table in read_model_tables():
        await conn.execute(f"DELETE FROM {table} WHERE project_id = $1", project_id)
    cached_heads = {
        r["entity_id"]: set(r["heads"])
        for r in await conn.fetch(
            "SELECT entity_id, heads FROM documents WHERE project_id = $1", project_id
        )
    }
    rebuild = ProjectRebuild(report, cached_heads)
    rows: dict[str, list[tuple[object, ...]]] = defaultdict(list)
    pending = 0
    async for entity in _replay(conn, project_id):
        projected = rebuild.entity(entity)
        if projected is None:
            continue
        rows[projected.entity_type].append(
            read_model_row(
                project_id,
                projected.entity_type,
                projected.entity_id,
                projected.values,
                projected.last_seq,
            )
        )
        pending += 1
        if pending >= _BATCH_ROWS:
            await upsert_read_models(conn, rows)
            rows.clear()
            pending = 0
    await upsert_read_models(conn, rows)
    # Derived from the log like the heads; documents from before the count began get theirs.
    await conn.executemany(
        "UPDATE documents SET op_count = $3 WHERE project_id = $1 AND entity_id = $2 "
        "AND op_count <> $3",
        [(project_id, entity_id, ops) for entity_id, ops in rebuild.op_counts.items()],
    )
    before = {row.conflict_id: row for row in await conflict_rows(conn, project_id)}
    await write_conflicts(conn, project_id, rebuild.finish(before), locked)


async def _replay(conn: Any, project_id: UUID) -> AsyncIterator[ReplayedEntity]:
    """Each entity's logged changes in seq order, one entity at a time."""
    current: ReplayedEntity | None = None
    query = (
        "SELECT entity_id, entity_type, seq, sender, change FROM changes "
        "WHERE project_id = $1 ORDER BY entity_id, seq"
    )
    async for r in conn.cursor(query, project_id, prefetch=1000):
        if current is None or r["entity_id"] != current.entity_id:
            if current is not None:
                yield current
            current = ReplayedEntity(r["entity_type"], r["entity_id"])
        current.seqs.append(r["seq"])
        current.senders.append(r["sender"])
        current.changes.append(r["change"])
    if current is not None:
        yield current
