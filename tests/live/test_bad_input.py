"""Hostile and broken input over a real WebSocket: each case gets its specific error, the
connection survives where it can, other clients keep working and no stored data changes."""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid

import asyncpg
import msgpack

from fieldsync.auth.tokens import issue_token
from fieldsync.live.outbox import OutboxLimits
from fieldsync.model.limits import Limits
from fieldsync.model.writer import create_entity, update_entity
from fieldsync.store.projects import create_account, create_project
from fieldsync.sync.errors import CloseCode, ErrorCode
from fieldsync.sync.messages import (
    EntityAccepted,
    EntityPush,
    EntityRejected,
    Error,
    Hello,
    ProjectCursor,
    ProjectError,
    Push,
    PushResult,
    Subscribe,
)
from tests.entities import activity_values, location_values, new_id
from tests.live.test_sync import push
from tests.live_server import TEST_SECRET, MemberFactory, running_server
from tests.store.state import project_state
from tests.sync_client import SyncClient


async def connected(base: str, token: str) -> SyncClient:
    client = await SyncClient.connect(base)
    await client.hello(token)
    return client


async def still_works(client: SyncClient, project: uuid.UUID, push_id: int) -> None:
    """The connection still takes a real push and answers it."""
    _, change = create_entity("location", location_values())
    result = await push(client, project, push_id, EntityPush("location", new_id(), (change,)))
    assert isinstance(result.results[0], EntityAccepted)


async def expect_error(client: SyncClient, code: ErrorCode) -> Error:
    message = await client.next_unabsorbed()
    assert isinstance(message, Error), message
    assert message.code == code.value, message
    return message


async def expect_closed(client: SyncClient, close_code: int) -> None:
    messages, code = await client.read_until_closed()
    assert messages == []
    assert code == close_code


async def test_malformed_frames_get_errors_and_the_connection_survives(
    sync_server: str, project: uuid.UUID, member: MemberFactory, pool: asyncpg.Pool
) -> None:
    _, token = await member(project)
    client = await connected(sync_server, token)
    bystander = await connected(sync_server, token)
    before = await project_state(pool, project)

    await client.ws.send(b"\xc1\xff not msgpack")
    await expect_error(client, ErrorCode.MALFORMED_FRAME)
    await client.ws.send("a text frame")
    await expect_error(client, ErrorCode.MALFORMED_FRAME)
    await client.ws.send(msgpack.packb([1, 2, 3]))
    await expect_error(client, ErrorCode.MALFORMED_FRAME)
    await client.ws.send(msgpack.packb({"t": "teleport", "where": "mars"}))
    error = await expect_error(client, ErrorCode.UNKNOWN_MESSAGE_TYPE)
    assert "push" in error.message
    await client.ws.send(msgpack.packb({"t": "push", "push_id": 9, "project_id": 5}))
    await expect_error(client, ErrorCode.INVALID_MESSAGE)
    await client.ws.send(b"\x00" * (Limits().max_frame_bytes + 1))
    await expect_error(client, ErrorCode.FRAME_TOO_LARGE)
    await client.send(Hello((1,), token, "again"))
    await expect_error(client, ErrorCode.ALREADY_HANDSHAKEN)

    assert await project_state(pool, project) == before
    await still_works(client, project, 1)
    await still_works(bystander, project, 1)
    await client.close()
    await bystander.close()


async def test_handshake_failures(
    sync_server: str, project: uuid.UUID, member: MemberFactory
) -> None:
    user, token = await member(project)

    early = await SyncClient.connect(sync_server)
    await early.send(Push(1, str(project), ()))
    error = await early.expect(Error)
    assert (error.code, error.fatal) == (ErrorCode.HANDSHAKE_REQUIRED.value, True)
    await expect_closed(early, CloseCode.POLICY_VIOLATION)

    future = await SyncClient.connect(sync_server)
    await future.send(Hello((7, 8), token, "from-the-future"))
    error = await future.expect(Error)
    assert error.code == ErrorCode.UNSUPPORTED_VERSION.value
    assert "1" in error.message
    await expect_closed(future, CloseCode.UNSUPPORTED_VERSION)

    cases = [
        ("not-a-token", ErrorCode.INVALID_TOKEN),
        (issue_token(b"another-secret-entirely-32-bytes-long", user), ErrorCode.INVALID_TOKEN),
        (issue_token(TEST_SECRET, user, ttl_seconds=-3600), ErrorCode.TOKEN_EXPIRED),
    ]
    for bad_token, code in cases:
        client = await SyncClient.connect(sync_server)
        await client.send(Hello((1,), bad_token, "bad", (ProjectCursor(str(project), None),)))
        error = await client.expect(Error)
        assert error.code == code.value
        assert error.fatal
        await expect_closed(client, CloseCode.UNAUTHORIZED)


async def test_projects_the_user_may_not_see_and_cursors_ahead(
    sync_server: str, project: uuid.UUID, member: MemberFactory, pool: asyncpg.Pool
) -> None:
    _, token = await member(project)
    async with pool.acquire() as conn:
        elsewhere = await create_project(conn, await create_account(conn, "other"), "other")
    client = await SyncClient.connect(sync_server)
    await client.hello(token, [ProjectCursor(str(elsewhere), None),
                               ProjectCursor(str(uuid.uuid4()), 0),
                               ProjectCursor("not-a-uuid", 0)])
    answers = [await client.expect(ProjectError) for _ in range(3)]
    assert {a.code for a in answers} == {ErrorCode.PROJECT_UNAVAILABLE.value}
    assert len({a.message for a in answers}) == 1, "forbidden and unknown look the same"

    await client.send(Subscribe(ProjectCursor(str(project), 99)))
    error = await client.expect(ProjectError)
    assert error.code == ErrorCode.CURSOR_AHEAD.value
    await still_works(client, project, 1)
    await client.close()


async def test_bad_changes_are_rejected_per_entity_and_store_nothing(
    sync_server: str, project: uuid.UUID, member: MemberFactory, pool: asyncpg.Pool
) -> None:
    _, token = await member(project)
    async with pool.acquire() as conn:
        elsewhere = await create_project(conn, await create_account(conn, "other"), "other")
    _, other_token = await member(elsewhere)
    other = await connected(sync_server, other_token)
    foreign_entity = new_id()
    foreign_doc, foreign_change = create_entity("activity", activity_values(new_id()))
    await push(other, elsewhere, 1, EntityPush("activity", foreign_entity, (foreign_change,)))

    client = await connected(sync_server, token)
    entity = new_id()
    doc, created = create_entity("activity", activity_values(new_id()))
    await push(client, project, 1, EntityPush("activity", entity, (created,)))
    before = await project_state(pool, project)
    before_other = await project_state(pool, elsewhere)

    orphan_doc = doc.fork()
    update_entity(orphan_doc, "activity", {"title": "never pushed"})
    orphan = update_entity(orphan_doc, "activity", {"status": "done"})
    cases = [
        (EntityPush("activity", entity, (b"\x85\x6f\x4a\x83 garbage",)), "undecodable_change"),
        (EntityPush("activity", entity, (orphan,)), "missing_dependencies"),
        (EntityPush("activity", entity, (update_entity(doc.fork(), "activity",
                                                        {"status": "lost"}),)),
         "schema_violation"),
        (EntityPush("activity", foreign_entity,
                    (update_entity(foreign_doc, "activity", {"status": "done"}),)),
         "wrong_project"),
        (EntityPush("spaceship", new_id(), (created,)), "unknown_entity_type"),
    ]
    for push_id, (entity_push, code) in enumerate(cases, start=2):
        result = await push(client, project, push_id, entity_push)
        [outcome] = result.results
        assert isinstance(outcome, EntityRejected), outcome
        assert outcome.code == code, outcome
        assert outcome.message

    assert await project_state(pool, project) == before
    assert await project_state(pool, elsewhere) == before_other
    await still_works(client, project, 99)
    await still_works(other, elsewhere, 99)
    await client.close()
    await other.close()


async def test_a_push_without_entities_is_answered_and_logs_nothing(
    sync_server: str, project: uuid.UUID, member: MemberFactory, pool: asyncpg.Pool
) -> None:
    _, token = await member(project)
    client = await connected(sync_server, token)
    before = await project_state(pool, project)
    await client.send(Push(8, str(project), ()))
    answer = await client.next_unabsorbed()
    assert isinstance(answer, PushResult)
    assert (answer.push_id, answer.results) == (8, ())
    assert await project_state(pool, project) == before
    # A project the user is not in gets the same refusal as any push there.
    await client.send(Push(9, str(uuid.uuid4()), ()))
    error = await expect_error(client, ErrorCode.PROJECT_UNAVAILABLE)
    assert error.push_id == 9
    await still_works(client, project, 10)
    await client.close()


async def test_changes_sent_child_first_are_logged_parent_first(
    sync_server: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    client = await connected(sync_server, token)
    doc, created = create_entity("location", location_values())
    edit = update_entity(doc, "location", {"name": "Depot north"})
    entity = new_id()
    result = await push(client, project, 11, EntityPush("location", entity, (edit, created)))
    [accepted] = result.results
    assert isinstance(accepted, EntityAccepted)
    # Seqs follow the order sent; the log itself holds the parent first.
    assert accepted.seqs[0] == accepted.seqs[1] + 1
    await client.close()


async def test_a_viewer_may_read_but_not_push(
    sync_server: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project, "viewer")
    client = await connected(sync_server, token)
    _, change = create_entity("location", location_values())
    await client.send(Push(5, str(project), (EntityPush("location", new_id(), (change,)),)))
    error = await expect_error(client, ErrorCode.FORBIDDEN)
    assert error.push_id == 5
    await client.close()


async def test_a_client_that_never_reads_is_cut_off_and_others_stay_live(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    limits = OutboxLimits(soft_bytes=64 * 1024, hard_bytes=256 * 1024)
    async with running_server(database_url, outbox_limits=limits) as base:
        sleeper = await SyncClient.connect(base)
        await sleeper.hello(token, [ProjectCursor(str(project), 0)])
        await sleeper.sync_until_synced(str(project))
        sleeper.ws.transport.pause_reading()
        watcher = await connected(base, token)
        await watcher.send(Subscribe(ProjectCursor(str(project), 0)))
        await watcher.sync_until_synced(str(project))
        writer = await connected(base, token)
        started = time.monotonic()
        for n in range(250):
            # Incompressible, so the sleeper's socket buffers really fill up.
            noise = base64.b64encode(os.urandom(30_000)).decode()
            _, change = create_entity("location", {**location_values(n), "address": noise})
            await push(writer, project, n, EntityPush("location", new_id(), (change,)))
            await watcher.receive_changes_until(str(project), n + 1)
        assert time.monotonic() - started < 20, "fan-out was not stalled by the sleeper"
        sleeper.ws.transport.resume_reading()
        messages, code = await sleeper.read_until_closed()
        # Queued live frames were dropped: the error comes next, then the close.
        errors = [m for m in messages if isinstance(m, Error)]
        assert [e.code for e in errors] == [ErrorCode.TOO_SLOW.value]
        assert errors[0].fatal
        assert code == CloseCode.TOO_SLOW
        for client in (watcher, writer):
            await client.close()


async def test_connections_per_user_are_limited(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    async with running_server(database_url) as base:
        open_clients = [await connected(base, token) for _ in range(16)]
        extra = await SyncClient.connect(base)
        await extra.send(Hello((1,), token, "one-too-many"))
        error = await extra.expect(Error)
        assert error.code == ErrorCode.TOO_MANY_CONNECTIONS.value
        await expect_closed(extra, CloseCode.TOO_MANY_CONNECTIONS)
        await open_clients[0].close()
        await asyncio.sleep(0.2)
        replacement = await connected(base, token)
        for client in [*open_clients[1:], replacement]:
            await client.close()


async def test_a_dead_peer_is_found_by_heartbeats(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    """A client that stops answering pings is closed by the server."""
    _, token = await member(project)
    async with running_server(database_url, ping_interval=0.3) as base:
        ghost, alive = await SyncClient.connect(base), await SyncClient.connect(base)
        await ghost.hello(token)
        await alive.hello(token)
        ghost.ws.transport.pause_reading()  # like a tablet whose network vanished
        await asyncio.sleep(1.5)  # several ping intervals without an answer
        ghost.ws.transport.resume_reading()
        messages, code = await ghost.read_until_closed(within=5)
        assert messages == []
        assert code == CloseCode.INTERNAL_ERROR  # 1011: the keepalive ping timed out
        await still_works(alive, project, 1)  # answering pings, so still connected
        await alive.close()
