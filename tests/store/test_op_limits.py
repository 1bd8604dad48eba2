"""The op count of each stored document is derived from the log: a rebuild recounts it
(PostgreSQL's ``documents.op_count``; the bounds themselves are in
``tests/store/contract/test_op_limits.py``, on every storage)."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from fieldsync.model.automerge_format.changes import parse_change
from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import create_entity, update_entity
from fieldsync.store.changelog import ChangeLog
from fieldsync.store.rebuild import rebuild_read_models
from tests.entities import location_values, new_id


@pytest.mark.parametrize("stale", [0, 999])
async def test_rebuild_recounts_the_ops_of_every_document(
    pool: asyncpg.Pool, project: uuid.UUID, stale: int
) -> None:
    doc, created = create_entity("location", location_values())
    entity = new_id()
    log = ChangeLog(pool)
    await log.append(project, [EntityChanges("location", entity, [created])], "u")
    edit = update_entity(doc, "location", {"name": "Depot"})
    await log.append(project, [EntityChanges("location", entity, [edit])], "u")
    async with pool.acquire() as conn:
        counted = await conn.fetchval("SELECT op_count FROM documents WHERE entity_id = $1", entity)
        # A document from before the count began (0), or any other drift.
        await conn.execute("UPDATE documents SET op_count = $2 WHERE entity_id = $1", entity, stale)
    report = await rebuild_read_models(pool, project)
    assert report.consistent
    async with pool.acquire() as conn:
        recounted = await conn.fetchval(
            "SELECT op_count FROM documents WHERE entity_id = $1", entity
        )
    assert recounted == counted == parse_change(created).op_count + parse_change(edit).op_count
