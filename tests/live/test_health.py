"""``/healthz`` answers from the database watch: a pool busy with clients' work is not a
database that went away, and a balancer must not take a busy process out."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx

from fieldsync.model.writer import create_entity
from fieldsync.sync.messages import EntityAccepted, EntityPush, ProjectCursor, Push, PushResult
from tests.entities import location_values, new_id
from tests.live_server import MemberFactory, running_server
from tests.sync_client import SyncClient

_LOCK_WAITERS = """
SELECT count(*) FROM pg_stat_activity
WHERE wait_event_type = 'Lock' AND query LIKE '%log_heads%FOR UPDATE%'
"""


async def test_healthz_says_ok_while_every_pooled_connection_is_busy(
    database_url: str, project: uuid.UUID, member: MemberFactory, pool: asyncpg.Pool
) -> None:
    _, token = await member(project)
    async with running_server(database_url, pool_min_size=1, pool_max_size=1) as base:
        client = await SyncClient.connect(base)
        await client.hello(token, [ProjectCursor(str(project), None)])
        await client.sync_until_synced(str(project))
        _, change = create_entity("location", location_values())
        entity = new_id()
        async with pool.acquire() as holder, holder.transaction():
            # The project's log lock held here: the push waits for it on the server's one
            # pooled connection.
            await holder.execute(
                "SELECT 1 FROM log_heads WHERE project_id = $1 FOR UPDATE", project
            )
            await client.send(Push(1, str(project), (EntityPush("location", entity, (change,)),)))
            for _ in range(500):
                if await pool.fetchval(_LOCK_WAITERS) == 1:
                    break
                await asyncio.sleep(0.02)
            assert await pool.fetchval(_LOCK_WAITERS) == 1
            async with httpx.AsyncClient() as http:
                health = await http.get(f"http://{base}/healthz", timeout=10)
            assert (health.status_code, health.json()) == (200, {"status": "ok"})
        result = await client.next_unabsorbed()
        assert isinstance(result, PushResult), result
        assert result.results == (EntityAccepted(entity, (1,)),)
        await client.close()
