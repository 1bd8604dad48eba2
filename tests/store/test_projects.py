"""Projects are created together with their change-log head."""

from __future__ import annotations

import uuid

import asyncpg


async def test_new_project_has_an_empty_log(pool: asyncpg.Pool, project: uuid.UUID) -> None:
    async with pool.acquire() as conn:
        head = await conn.fetchval(
            "SELECT head_seq FROM log_heads WHERE project_id = $1", project
        )
        logged = await conn.fetchval("SELECT count(*) FROM changes WHERE project_id = $1", project)
    assert head == 0
    assert logged == 0
