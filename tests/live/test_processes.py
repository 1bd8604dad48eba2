"""Two server processes (two apps, each with its own pool, cache and feeds) on one database:
a change committed through one reaches live clients of the other."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fieldsync.model.writer import create_entity, update_entity
from fieldsync.sync.messages import EntityPush, ProjectCursor
from tests.entities import location_values, new_id
from tests.live.test_sync import push
from tests.live_server import MemberFactory, running_server
from tests.sync_client import SyncClient


async def _relay(first: str, second: str, project: uuid.UUID, token: str) -> float:
    """Push through ``first``; return how long ``second``'s live client took to see it all."""
    pusher, receiver = await SyncClient.connect(first), await SyncClient.connect(second)
    await pusher.hello(token)
    await receiver.hello(token, [ProjectCursor(str(project), 0)])
    await receiver.sync_until_synced(str(project))
    entity = new_id()
    doc, created = create_entity("location", location_values())
    started = time.monotonic()
    await push(pusher, project, 1, EntityPush("location", entity, (created,)))
    for n in range(2, 12):
        change = update_entity(doc, "location", {"name": f"Site v{n}"})
        await push(pusher, project, n, EntityPush("location", entity, (change,)))
    await receiver.receive_changes_until(str(project), 11, within=10)
    elapsed = time.monotonic() - started
    assert receiver.replicas[str(project)].heads() == {entity: sorted(doc.get_heads())}
    await pusher.close()
    await receiver.close()
    return elapsed


async def test_changes_cross_processes_live(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    async with running_server(database_url) as first, running_server(database_url) as second:
        assert await _relay(first, second, project, token) < 5


async def test_without_notifications_the_head_check_still_delivers(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    """Every notification lost: clients still converge, through the periodic head check."""
    _, token = await member(project)
    async with running_server(
        database_url, listen_for_notifications=False, head_poll_seconds=0.2
    ) as first, running_server(
        database_url, listen_for_notifications=False, head_poll_seconds=0.2
    ) as second:
        assert await _relay(first, second, project, token) < 10


async def test_every_process_delivers_every_other_processes_commits_promptly(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    """Three processes, a live client on each, pushes through each in turn: every change
    reaches every client within a second, with the head check too slow to be what did it."""
    _, token = await member(project)
    quiet: dict[str, Any] = {"head_poll_seconds": 60.0}
    async with (
        running_server(database_url, **quiet) as a,
        running_server(database_url, **quiet) as b,
        running_server(database_url, **quiet) as c,
    ):
        bases = (a, b, c)
        clients = [await SyncClient.connect(base) for base in bases]
        for client in clients:
            await client.hello(token, [ProjectCursor(str(project), 0)])
            await client.sync_until_synced(str(project))
        entity = new_id()
        doc, created = create_entity("location", location_values())
        await push(clients[0], project, 1, EntityPush("location", entity, (created,)))
        for client in clients:
            await client.receive_changes_until(str(project), 1, within=5)
        slowest = 0.0
        for n in range(2, 11):
            pusher = clients[n % 3]
            change = update_entity(doc, "location", {"name": f"Site v{n}"})
            started = time.monotonic()
            await push(pusher, project, n, EntityPush("location", entity, (change,)))
            for client in clients:
                await client.receive_changes_until(str(project), n, within=5)
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 1.0, f"slowest cross-process delivery took {slowest:.3f} s"
        expected = {entity: sorted(doc.get_heads())}
        for client in clients:
            assert client.replicas[str(project)].heads() == expected
            assert client.replicas[str(project)].seen_seqs == list(range(1, 11))
            await client.close()
