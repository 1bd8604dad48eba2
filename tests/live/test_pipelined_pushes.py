"""A client may send its next pushes before the answers of the earlier ones: the server
appends them in the order they arrived (a push that builds on the previous one's changes
finds them) and those that queue behind a running append share its next transaction."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from fieldsync.model.writer import create_entity, update_entity
from fieldsync.sync.messages import EntityAccepted, EntityPush, Push, PushResult
from tests.entities import location_values, new_id
from tests.live_server import MemberFactory, running_server
from tests.sync_client import SyncClient

pytestmark = pytest.mark.asyncio

PUSHES = 24


async def test_pushes_sent_at_once_are_appended_in_order_and_grouped(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    entity_id = new_id()
    doc, created = create_entity("location", location_values(0))
    # Each push holds one change that depends on the change of the push before it.
    changes = [created] + [
        update_entity(doc, "location", {"name": f"Site {n}"}) for n in range(1, PUSHES)
    ]
    async with running_server(database_url) as base:
        client = await SyncClient.connect(base)
        await client.hello(token)
        for push_id, change in enumerate(changes, start=1):
            await client.send(
                Push(push_id, str(project), (EntityPush("location", entity_id, (change,)),))
            )
        answers: dict[int, PushResult] = {}
        for _ in changes:
            answer = await client.expect(PushResult, within=20)
            answers[answer.push_id] = answer
        await client.close()

    seqs: list[int] = []
    for push_id in range(1, PUSHES + 1):
        [result] = answers[push_id].results
        assert isinstance(result, EntityAccepted), result  # never missing_dependencies
        seqs.extend(result.seqs)
    assert seqs == list(range(1, PUSHES + 1))  # logged in the order they were sent

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT xmin::text::bigint AS tx FROM changes WHERE project_id = $1", project
        )
    finally:
        await conn.close()
    assert len(rows) == PUSHES
    # Pushes that waited behind a running append went in together: fewer transactions.
    assert len({r["tx"] for r in rows}) < PUSHES
