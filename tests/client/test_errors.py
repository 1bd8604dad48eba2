"""What the server refuses becomes a typed exception and a status, not a retry loop."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from fieldsync.store.projects import add_member
from fieldsync_client import (
    AuthError,
    ConnectionState,
    IncompatibleServer,
    ProjectUnavailable,
)
from tests.client.conftest import ClientFactory, OnlineFactory, RestartableServer
from tests.client.helpers import logged_hashes, until
from tests.entities import plan_values
from tests.live_server import MemberFactory


async def test_a_refused_token_stops_sync_until_a_new_one(
    server: RestartableServer,
    project: uuid.UUID,
    member: MemberFactory,
    make_client: ClientFactory,
) -> None:
    _, token = await member(project)
    client = make_client(server.url, "not-a-jwt", "device")
    with pytest.raises(AuthError) as refused:
        await client.open_project(str(project))
    assert refused.value.code == "invalid_token"
    status = client.status
    assert status.connection is ConnectionState.STOPPED
    assert isinstance(status.last_error, AuthError)
    await asyncio.sleep(0.5)  # many backoff periods: it does not try again by itself
    assert client.status.connection is ConnectionState.STOPPED
    with pytest.raises(AuthError):
        await client.wait_synced(1)

    client.set_token(token)
    project_handle = await client.open_project(str(project))
    await client.wait_synced(10)
    assert project_handle.bootstrapped
    assert client.status.online
    assert client.status.last_error is None
    await project_handle.create("plan", plan_values())
    await client.wait_synced(10)


async def test_an_incompatible_server_is_a_typed_error(
    server: RestartableServer,
    project: uuid.UUID,
    member: MemberFactory,
    make_client: ClientFactory,
) -> None:
    _, token = await member(project)
    client = make_client(server.url, token, "future", protocol_versions=(99,))
    with pytest.raises(IncompatibleServer) as refused:
        await client.open_project(str(project))
    assert "1" in refused.value.message
    assert client.status.connection is ConnectionState.STOPPED
    assert isinstance(client.status.last_error, IncompatibleServer)


async def test_a_project_the_user_cannot_see(
    server: RestartableServer,
    project: uuid.UUID,
    other_project: uuid.UUID,
    member: MemberFactory,
    make_client: ClientFactory,
) -> None:
    _, token = await member(project)
    client = make_client(server.url, token, "device")
    with pytest.raises(ProjectUnavailable) as refused:
        await client.open_project(str(other_project))
    assert refused.value.project_id == str(other_project)
    assert str(other_project) not in client.projects
    # The connection and the user's own project are fine.
    mine = await client.open_project(str(project))
    await client.wait_synced(10)
    assert mine.bootstrapped
    assert mine.error is None


async def test_a_removed_membership_shows_and_keeps_the_outbox(
    server: RestartableServer, project: uuid.UUID, online: OnlineFactory, pool: asyncpg.Pool
) -> None:
    client, mine, _, user_id = await online(server.url, project)

    await server.stop()
    await mine.create("plan", plan_values("Made while still a member"))
    async with pool.acquire() as conn:
        await conn.execute(
            "DELETE FROM project_members WHERE project_id = $1 AND user_id = $2", project, user_id
        )
    await server.start()
    await until(lambda: mine.error is not None, what="the project to be refused")
    assert isinstance(client.status.last_error, ProjectUnavailable)
    assert mine.pending_count() == 1
    with pytest.raises(ProjectUnavailable):
        await client.wait_synced(5)
    assert await logged_hashes(pool, project) == []

    # Membership restored: the next connection syncs the project and pushes the outbox.
    async with pool.acquire() as conn:
        await add_member(conn, project, user_id, "lead")
    await server.stop()
    await server.start()
    await until(lambda: mine.error is None and client.status.online, what="the project back")
    await client.wait_synced(10)
    assert len(await logged_hashes(pool, project)) == 1
