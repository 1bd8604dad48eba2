"""The resume storm at small scale: clients holding cursors reconnect at once to a fresh
server and resume from their cursors, with no snapshot and few database reads."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import asyncpg
from starlette.applications import Starlette

from fieldsync.live.admission import AdmissionLimits
from fieldsync.live.session import SyncServices
from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import create_entity
from fieldsync.store.changelog import ChangeLog
from fieldsync.sync.messages import Changes, ProjectCursor, SnapshotBegin, Synced
from tests.entities import location_values, new_id
from tests.live_server import MemberFactory, free_port, start_server, stop_server
from tests.sync_client import SyncClient

USERS_PER_PROJECT = 25
CLIENTS_PER_USER = 4  # 2 projects x 25 users x 4 devices: 200 clients
LOGGED = 20  # changes in each project's log


async def _log_changes(pool: asyncpg.Pool, project: uuid.UUID, count: int) -> int:
    batch = [
        EntityChanges("location", new_id(), [create_entity("location", location_values(n))[1]])
        for n in range(count)
    ]
    await ChangeLog(pool).append(project, batch, "test")
    async with pool.acquire() as conn:
        head: int = await conn.fetchval(
            "SELECT head_seq FROM log_heads WHERE project_id = $1", project
        )
    return head


async def _resume(base: str, token: str, project: uuid.UUID, cursor: int) -> list[object]:
    """Connect, resume from ``cursor``; every message up to ``synced``, which is last."""
    client = await SyncClient.connect(base)
    try:
        await client.hello(token, [ProjectCursor(str(project), cursor)])
        seen: list[object] = []
        while not seen or not isinstance(seen[-1], Synced):
            seen.append(await client.receive(within=30.0))
        return seen
    finally:
        await client.close()


async def _until(condition: Callable[[], bool], within: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_a_storm_of_resumes_goes_live_from_every_cursor_with_shared_reads(
    database_url: str,
    pool: asyncpg.Pool,
    project: uuid.UUID,
    other_project: uuid.UUID,
    member: MemberFactory,
) -> None:
    heads = {p: await _log_changes(pool, p, LOGGED) for p in (project, other_project)}
    clients: list[tuple[str, uuid.UUID, int]] = []
    for p in (project, other_project):
        for u in range(USERS_PER_PROJECT):
            _, token = await member(p)
            for d in range(CLIENTS_PER_USER):
                # A third of the devices are a few changes short of the head.
                behind = 1 + (u + d) % 5 if (u + d) % 3 == 0 else 0
                clients.append((token, p, heads[p] - behind))

    port = free_port()
    # A real storm comes from many addresses; here all come from one.
    spread = AdmissionLimits(max_unauthenticated_per_address=len(clients))
    server, task = await start_server(database_url, port, admission_limits=spread)
    try:
        app = server.config.app
        assert isinstance(app, Starlette)
        services: SyncServices = app.state.sync
        base = f"127.0.0.1:{port}"
        blocker = await asyncpg.connect(database_url)
        try:
            async with blocker.transaction():
                # The storm at its peak, whatever the pace of the loop and the clients: the
                # log reads wait behind these locks until every client's stream has started.
                await blocker.execute("LOCK TABLE log_heads, changes IN ACCESS EXCLUSIVE MODE")
                resuming = asyncio.gather(*(_resume(base, t, p, c) for t, p, c in clients))
                await _until(lambda: services.load.catching_up == len(clients))
                assert services.heads.reads == 2  # one under way per project, shared
        finally:
            await blocker.close()
        results = await resuming
        for (_, p, cursor), seen in zip(clients, results, strict=True):
            assert not any(isinstance(m, SnapshotBegin) for m in seen)
            synced = seen[-1]
            assert isinstance(synced, Synced)
            assert synced.cursor == heads[p]
            got = [c.seq for m in seen if isinstance(m, Changes) for c in m.changes]
            assert got == list(range(cursor + 1, heads[p] + 1))  # exactly what it lacked
        # One membership read per user at most; head and catch-up reads shared per project:
        # every client asked while one was under way. Per project, one catch-up read served
        # all its clients; a stream that reached the head before any stream had given the
        # feed its head asked once more, and a second read found nothing after the head.
        assert services.members.reads <= 2 * USERS_PER_PROJECT
        assert services.heads.reads == 2
        assert len(clients) <= services.catch_ups.served <= len(clients) + 2
        assert 2 <= services.catch_ups.reads <= 2 * 2
        # With the feed live at the head, a known member resuming at the head reads nothing.
        keeper = await SyncClient.connect(base)
        token, p, _ = clients[0]
        await keeper.hello(token, [ProjectCursor(str(p), heads[p])])
        assert isinstance(await keeper.receive(), Synced)
        reads = (services.members.reads, services.catch_ups.reads, services.heads.reads)
        assert services.hub.feed(p).head == heads[p]
        seen = await _resume(base, token, p, heads[p])
        assert [type(m) for m in seen] == [Synced]
        assert (services.members.reads, services.catch_ups.reads, services.heads.reads) == reads
        # The stream's task ends just after its ``synced`` is written: give it that turn.
        for _ in range(100):
            if services.load.catching_up == 0:
                break
            await asyncio.sleep(0.01)
        assert services.load.catching_up == 0
        await keeper.close()
    finally:
        await stop_server(server, task)
