"""The server stops and starts again while a client is in the middle of pushing its outbox."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg

from fieldsync.model.limits import Limits
from fieldsync_client import ConnectionState
from tests.client.conftest import ClientFactory, RestartableServer
from tests.client.helpers import head_seq, logged_hashes, server_documents, until
from tests.entities import location_values
from tests.live_server import MemberFactory

COUNT = 300


async def test_a_server_restart_mid_push_and_clients_converge(
    database_url: str,
    project: uuid.UUID,
    member: MemberFactory,
    make_client: ClientFactory,
    pool: asyncpg.Pool,
) -> None:
    server = RestartableServer(database_url, limits=Limits(max_entities_per_batch=10))
    await server.start()
    try:
        _, token_a = await member(project)
        _, token_b = await member(project)
        client_a = make_client(server.url, token_a, "a")
        client_b = make_client(server.url, token_b, "b")
        a = await client_a.open_project(str(project))
        b = await client_b.open_project(str(project))
        await client_b.wait_synced(10)

        await server.stop()
        await until(lambda: client_a.status.connection is not ConnectionState.ONLINE)
        ids = [await a.create("location", location_values(i)) for i in range(COUNT)]
        await server.start()
        deadline = time.monotonic() + 20
        while not 0 < len(await logged_hashes(pool, project)) < COUNT // 2:
            assert time.monotonic() < deadline, "the push never started"
            await asyncio.sleep(0.002)
        await server.stop()  # in the middle of the outbox
        logged = len(await logged_hashes(pool, project))
        assert logged < COUNT
        await server.start()

        await client_a.wait_synced(20)
        await client_b.wait_synced(20)
        head = await head_seq(pool, project)
        await until(lambda: a.cursor == b.cursor == head, what="both at the head")
        hashes = await logged_hashes(pool, project)
        assert len(hashes) == len(set(hashes)) == COUNT
        assert list(await b.list("location")) == sorted(ids)
        documents = await server_documents(server.base, token_b, project)
        for entity_id in ids[:: COUNT // 10]:
            heads = sorted(documents[entity_id].get_heads())
            assert await a.heads(entity_id) == await b.heads(entity_id) == heads
    finally:
        await server.stop()
