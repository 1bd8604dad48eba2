"""A member removed while their SDK client is connected and holds unsent changes: the app
is told (a typed error, each change rejected with the reason), nothing is dropped silently."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from fieldsync.store.projects import remove_member
from fieldsync_client import MembershipRemoved, ProjectUnavailable, RejectedChange
from tests.client.conftest import ClientFactory, RestartableServer
from tests.client.helpers import head_seq, until
from tests.entities import location_values
from tests.live_server import MemberFactory

EDITS = 30


async def test_a_full_outbox_is_rejected_with_the_reason_when_the_member_is_removed(
    server: RestartableServer,
    project: uuid.UUID,
    member: MemberFactory,
    make_client: ClientFactory,
    pool: asyncpg.Pool,
) -> None:
    user, token = await member(project)
    client = make_client(server.url, token, "removed")
    opened = await client.open_project(str(project))
    await client.wait_synced(10)
    told: list[list[RejectedChange]] = []
    opened.on_rejected(told.append)

    async with pool.acquire() as holder, holder.transaction():
        # Hold the project's append lock: the first push waits inside the server and the
        # rest of the edits pile up in the outbox, as on a slow link.
        await holder.execute("SELECT 1 FROM log_heads WHERE project_id = $1 FOR UPDATE", project)
        for index in range(EDITS):
            await opened.create("location", location_values(index))
        assert opened.pending_count() == EDITS
        await asyncio.sleep(0.2)  # the first push is on its way
        async with pool.acquire() as conn:
            await remove_member(conn, project, user)
        await until(lambda: isinstance(opened.error, MembershipRemoved), 5, "the removal notice")
    await until(lambda: opened.pending_count() == 0, 10, "the outbox to be settled")

    error = opened.error
    assert isinstance(error, MembershipRemoved)
    assert isinstance(error, ProjectUnavailable)  # apps that only know the older type
    assert error.code == "membership_removed"
    assert isinstance(client.status.last_error, MembershipRemoved)
    rejected = await opened.rejected_changes()
    assert len(rejected) == EDITS
    assert {r.code for r in rejected} == {"membership_removed"}
    assert sum(len(batch) for batch in told) == EDITS
    assert client.status.rejected == EDITS
    assert await head_seq(pool, project) == 0  # none of them was logged
    assert await opened.list("location") == {}  # and the local copy matches the server's


async def test_a_member_removed_while_offline_keeps_the_outbox_pending(
    server: RestartableServer,
    project: uuid.UUID,
    member: MemberFactory,
    make_client: ClientFactory,
    pool: asyncpg.Pool,
) -> None:
    """On a new connection the server cannot tell a removal from never having been a
    member: the project is unavailable and the changes wait, visible, for a re-admission."""
    user, token = await member(project)
    client = make_client(server.url, token, "away")
    opened = await client.open_project(str(project))
    await client.wait_synced(10)
    await server.stop()
    await until(lambda: not client.status.online, 5, "offline")
    for index in range(3):
        await opened.create("location", location_values(index))
    async with pool.acquire() as conn:
        await remove_member(conn, project, user)
    await server.start()
    await until(lambda: opened.error is not None, 10, "the project to be refused")
    error = opened.error
    assert isinstance(error, ProjectUnavailable)
    assert not isinstance(error, MembershipRemoved)
    assert error.code == "project_unavailable"
    assert opened.pending_count() == 3
    assert await opened.rejected_changes() == []
