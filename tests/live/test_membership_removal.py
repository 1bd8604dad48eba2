"""Removing a member ends their live streams of the project within a second, whichever
process removes them, and refuses their pushes with a reason they can act on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid

import asyncpg
from starlette.applications import Starlette

from fieldsync.live.session import SyncServices, recheck_memberships
from fieldsync.model.writer import create_entity
from fieldsync.store.projects import add_member, remove_member
from fieldsync.sync.errors import ErrorCode
from fieldsync.sync.messages import (
    Changes,
    EntityAccepted,
    EntityPush,
    EntityRejected,
    Error,
    ProjectCursor,
    ProjectError,
    Push,
    PushResult,
    Synced,
)
from tests.entities import location_values, new_id
from tests.live.test_sync import push
from tests.live_server import MemberFactory, free_port, start_server, stop_server
from tests.sync_client import SyncClient
from tests.test_server_command import FIELDSYNC

REMOVAL_BOUND_SECONDS = 1.0


async def _live(base: str, token: str, *projects: uuid.UUID) -> SyncClient:
    client = await SyncClient.connect(base)
    await client.hello(token, [ProjectCursor(str(p), 0) for p in projects])
    waiting = {str(p) for p in projects}
    while waiting:  # the projects catch up concurrently, in any order
        message = await client.receive()
        assert client.absorb(message), message
        if isinstance(message, Synced):
            waiting.discard(message.project_id)
    return client


async def _removal_notice(client: SyncClient, project: uuid.UUID, within: float) -> ProjectError:
    message = await client.next_unabsorbed(within)
    assert message == ProjectError(
        str(project),
        ErrorCode.MEMBERSHIP_REMOVED.value,
        "you are no longer a member of this project",
    ), message
    return message


async def test_a_removed_member_loses_the_live_stream_within_a_second(
    sync_server: str,
    project: uuid.UUID,
    other_project: uuid.UUID,
    member: MemberFactory,
    pool: asyncpg.Pool,
) -> None:
    user, token = await member(project, "specialist")
    async with pool.acquire() as conn:
        from fieldsync.store.projects import add_member

        await add_member(conn, other_project, user, "lead")
    _, lead_token = await member(project)
    removed = await _live(sync_server, token, project, other_project)
    lead = await _live(sync_server, lead_token, project)

    async with pool.acquire() as conn:
        started = time.monotonic()
        assert await remove_member(conn, project, user) == "specialist"
    await _removal_notice(removed, project, within=5)
    elapsed = time.monotonic() - started
    print(f"removal -> project_error: {elapsed * 1000:.1f} ms")
    assert elapsed < REMOVAL_BOUND_SECONDS, f"the stream ended {elapsed:.3f} s after removal"

    # Nothing more of the project reaches them, while the lead's stream goes on.
    _, change = create_entity("location", location_values())
    await push(lead, project, 1, EntityPush("location", new_id(), (change,)))
    await lead.receive_changes_until(str(project), 1)
    # Their other project is still live: a change there arrives, and nothing of the first
    # project came before it.
    await push(removed, other_project, 1, EntityPush("location", new_id(), (change,)))
    while True:
        message = await removed.receive()
        assert not (isinstance(message, Changes) and message.project_id == str(project))
        if isinstance(message, Changes) and message.project_id == str(other_project):
            break
        removed.absorb(message)

    # A push on the same connection says why; a new connection learns nothing more than
    # a stranger would.
    await removed.send(Push(7, str(project), (EntityPush("location", new_id(), (change,)),)))
    refused = await removed.next_unabsorbed()
    assert refused == Error(
        ErrorCode.MEMBERSHIP_REMOVED.value, "you are no longer a member of this project", push_id=7
    ), refused
    fresh = await SyncClient.connect(sync_server)
    await fresh.hello(token, [ProjectCursor(str(project), 0)])
    unavailable = await fresh.next_unabsorbed()
    assert isinstance(unavailable, ProjectError)
    assert unavailable.code == ErrorCode.PROJECT_UNAVAILABLE.value
    for client in (removed, lead, fresh):
        await client.close()


async def test_a_removal_by_the_admin_command_ends_the_stream_too(
    sync_server: str, database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    """``fieldsync member remove`` is another process: the notice crosses the database."""
    user, token = await member(project, "viewer")
    watcher = await _live(sync_server, token, project)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    command = await asyncio.create_subprocess_exec(
        str(FIELDSYNC),
        "member",
        "remove",
        "--project",
        str(project),
        "--user",
        str(user),
        "--database-url",
        database_url,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(command.communicate(), 60)
    assert command.returncode == 0, err
    # The removal committed before the command exited, so this bound is a fair one.
    exited = time.monotonic()
    await _removal_notice(watcher, project, within=5)
    print(f"CLI exit -> project_error: {(time.monotonic() - exited) * 1000:.1f} ms")
    assert time.monotonic() - exited < REMOVAL_BOUND_SECONDS
    await watcher.close()


async def test_a_push_held_up_by_the_lock_when_the_member_is_removed_is_refused(
    sync_server: str, project: uuid.UUID, member: MemberFactory, pool: asyncpg.Pool
) -> None:
    """The rule is read again inside the append: a removal a moment earlier counts."""
    user, token = await member(project)
    client = await _live(sync_server, token, project)
    _, change = create_entity("location", location_values())
    async with pool.acquire() as holder, holder.transaction():
        # Hold the project's append lock so the push waits inside the server.
        await holder.execute("SELECT 1 FROM log_heads WHERE project_id = $1 FOR UPDATE", project)
        await client.send(Push(1, str(project), (EntityPush("location", new_id(), (change,)),)))
        await asyncio.sleep(0.3)
        async with pool.acquire() as conn:
            await remove_member(conn, project, user)
        await _removal_notice(client, project, within=5)
    result = await client.next_unabsorbed()
    assert isinstance(result, PushResult), result
    [rejected] = result.results
    assert isinstance(rejected, EntityRejected), rejected
    assert rejected.code == "membership_removed"
    async with pool.acquire() as conn:
        assert (
            await conn.fetchval("SELECT head_seq FROM log_heads WHERE project_id = $1", project)
            == 0
        )
    await client.close()


async def test_a_removal_whose_notice_was_missed_is_found_by_the_recheck(
    database_url: str,
    project: uuid.UUID,
    other_project: uuid.UUID,
    member: MemberFactory,
    pool: asyncpg.Pool,
) -> None:
    """The listener re-checks every stream when it (re)connects, since notices sent while it
    was away are lost: only the project the user left is ended."""
    user, token = await member(project)
    async with pool.acquire() as conn:
        await add_member(conn, other_project, user, "lead")
    port = free_port()
    server, task = await start_server(database_url, port, listen_for_notifications=False)
    try:
        client = await _live(f"127.0.0.1:{port}", token, project, other_project)
        async with pool.acquire() as conn:  # removed without a notice
            await conn.execute(
                "DELETE FROM project_members WHERE project_id = $1 AND user_id = $2",
                project,
                user,
            )
        app = server.config.app
        assert isinstance(app, Starlette)
        services: SyncServices = app.state.sync
        await recheck_memberships(services)
        await _removal_notice(client, project, within=5)
        with contextlib.suppress(TimeoutError):  # the other project's stream goes on
            extra = await client.next_unabsorbed(within=0.5)
            raise AssertionError(f"unexpected {extra!r}")
        await client.close()
    finally:
        await stop_server(server, task)


def _location() -> EntityPush:
    _, change = create_entity("location", location_values())
    return EntityPush("location", new_id(), (change,))


async def test_a_viewer_promoted_while_connected_may_push_at_once(
    sync_server: str, project: uuid.UUID, member: MemberFactory, pool: asyncpg.Pool
) -> None:
    """The level remembered for the stream is read again before a push is refused: a
    promotion, unlike a removal, is announced to no cache."""
    user, token = await member(project, "viewer")
    client = await _live(sync_server, token, project)
    await client.send(Push(1, str(project), (_location(),)))
    refused = await client.next_unabsorbed()
    assert refused == Error(
        ErrorCode.FORBIDDEN.value, "a viewer may not change this project", push_id=1
    ), refused
    async with pool.acquire() as conn:
        assert await add_member(conn, project, user, "lead") == "viewer"
    [accepted] = (await push(client, project, 2, _location())).results
    assert isinstance(accepted, EntityAccepted), accepted
    await client.close()


async def test_a_lead_demoted_while_connected_writes_nothing(
    sync_server: str, project: uuid.UUID, member: MemberFactory, pool: asyncpg.Pool
) -> None:
    """A push goes ahead on the level remembered, and the append's own check, under the
    project's lock, refuses what the member may no longer write."""
    user, token = await member(project, "lead")
    client = await _live(sync_server, token, project)
    [accepted] = (await push(client, project, 1, _location())).results
    assert isinstance(accepted, EntityAccepted), accepted
    async with pool.acquire() as conn:
        assert await add_member(conn, project, user, "viewer") == "lead"
    [rejected] = (await push(client, project, 2, _location())).results
    assert isinstance(rejected, EntityRejected), rejected
    assert rejected.code == "forbidden_create"
    async with pool.acquire() as conn:
        head = await conn.fetchval("SELECT head_seq FROM log_heads WHERE project_id = $1", project)
    assert head == 1
    await client.close()
