"""Rebuilding read models on PostgreSQL: damaged rows are restored from the log, and the
command does it. (That a rebuild equals the incremental read models is checked on every
storage: ``tests/store/contract/test_rebuild.py``.)"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg

from fieldsync.store.changelog import ChangeLog
from fieldsync.store.rebuild import rebuild_read_models
from tests.store.contract.test_rebuild import populate
from tests.store.state import project_state


async def test_rebuild_restores_damaged_read_models(
    pool: asyncpg.Pool, project: uuid.UUID
) -> None:
    log = ChangeLog(pool)
    await populate(log, project, seed=5)
    expected = await project_state(pool, project)
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM rm_locations WHERE project_id = $1", project)
        await conn.execute(
            "UPDATE rm_activities SET title = 'wrong' WHERE project_id = $1", project
        )
        damaged = await conn.fetchval(
            "DELETE FROM rm_conflicts WHERE conflict_id = (SELECT min(conflict_id) "
            "FROM rm_conflicts WHERE project_id = $1) RETURNING conflict_id",
            project,
        )
        await conn.execute(
            "INSERT INTO rm_conflicts (project_id, conflict_id, kind, entity_ids, fields, "
            "details, status, opened_seq) VALUES ($1, 'bogus', 'concurrent_edit', '{x}', "
            "'{title}', '{}', 'open', 1)",
            project,
        )

    report = await rebuild_read_models(pool, project)

    assert await project_state(pool, project) == expected
    assert damaged is not None
    assert report.conflicts_rewritten == sorted([damaged, "bogus"])


def test_rebuild_command(database_url: str, project: uuid.UUID) -> None:
    fieldsync = Path(sys.executable).with_name("fieldsync")
    done = subprocess.run(
        [str(fieldsync), "rebuild-read-models", "--project", str(project),
         "--database-url", database_url],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "rebuilt read models of 1 projects" in done.stdout + done.stderr
