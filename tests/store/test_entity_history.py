"""A change hash is unique in a project's log, enforced by PostgreSQL itself as well.

The append path refuses a change logged under another entity (``tests/store/contract/
test_entity_history.py``, on every storage); this is the database's own constraint under it.
"""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import create_entity
from fieldsync.store.changelog import Accepted, ChangeLog
from tests.entities import activity_values, new_id


@pytest.fixture
def log(pool: asyncpg.Pool) -> ChangeLog:
    return ChangeLog(pool)


async def created(log: ChangeLog, project: uuid.UUID) -> tuple[str, bytes, object]:
    entity = new_id()
    doc, first = create_entity("activity", activity_values(new_id(), title="X's own title"))
    [result] = await log.append(project, [EntityChanges("activity", entity, [first])], "u")
    assert isinstance(result, Accepted)
    return entity, first, doc


async def test_the_database_refuses_one_hash_under_two_entities(
    pool: asyncpg.Pool, log: ChangeLog, project: uuid.UUID
) -> None:
    x, _, _ = await created(log, project)
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO changes (project_id, seq, entity_type, entity_id, hash, actor, "
                "actor_seq, change, sender) SELECT project_id, 99, entity_type, 'other', hash, "
                "actor, actor_seq, change, sender FROM changes WHERE project_id = $1 "
                "AND entity_id = $2",
                project,
                x,
            )
