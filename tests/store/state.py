"""Reading back everything the store holds for a project, to compare before and after."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from fieldsync.store.readmodels import read_model_tables


@dataclass(frozen=True)
class ProjectState:
    head: int
    log: tuple[tuple[Any, ...], ...]
    documents: tuple[tuple[Any, ...], ...]
    read_models: tuple[tuple[str, tuple[tuple[Any, ...], ...]], ...]
    conflicts: tuple[tuple[Any, ...], ...]


async def project_state(pool: asyncpg.Pool, project_id: UUID) -> ProjectState:
    async with pool.acquire() as conn:
        head = await conn.fetchval(
            "SELECT head_seq FROM log_heads WHERE project_id = $1", project_id
        )
        log = await conn.fetch(
            "SELECT seq, entity_type, entity_id, hash, change FROM changes "
            "WHERE project_id = $1 ORDER BY seq",
            project_id,
        )
        documents = await conn.fetch(
            "SELECT entity_id, entity_type, heads, saved, tail, tail_changes, change_count, "
            "version FROM documents WHERE project_id = $1 ORDER BY entity_id",
            project_id,
        )
        read_models = []
        for table in read_model_tables():
            rows = await conn.fetch(
                f"SELECT * FROM {table} WHERE project_id = $1 ORDER BY entity_id", project_id
            )
            read_models.append((table, tuple(tuple(r.values()) for r in rows)))
        conflicts = await conn.fetch(
            "SELECT * FROM rm_conflicts WHERE project_id = $1 ORDER BY conflict_id", project_id
        )
    return ProjectState(
        head,
        tuple(tuple(r.values()) for r in log),
        tuple(tuple(r.values()) for r in documents),
        tuple(read_models),
        tuple(tuple(r.values()) for r in conflicts),
    )
