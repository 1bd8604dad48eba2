"""The server on the in-memory storage, over real uvicorn, real WebSockets and real HTTP:
no PostgreSQL anywhere (``create_app(storage=MemoryStorage())``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import msgpack
import pytest

from fieldsync.auth.tokens import issue_token
from fieldsync.live.status import DATABASE_UNAVAILABLE
from fieldsync.model.documents import load_document
from fieldsync.model.writer import create_entity, splice_text, update_entity
from fieldsync.store.memory import MemoryStorage
from fieldsync.sync.errors import ErrorCode
from fieldsync.sync.messages import (
    EntityAccepted,
    EntityPush,
    Error,
    ProjectCursor,
    Push,
    PushResult,
    Status,
)
from tests.entities import activity_values, location_values, new_id
from tests.live_server import TEST_SECRET, running_server
from tests.sync_client import SyncClient


async def _project(memory: MemoryStorage, *levels: str) -> tuple[uuid.UUID, list[str]]:
    account = await memory.admin.create_account("In memory")
    project = await memory.admin.create_project(account, "In memory")
    tokens = []
    for level in levels:
        user = await memory.admin.create_user(f"{level} {uuid.uuid4().hex[:6]}")
        await memory.admin.add_member(project, user, level)
        tokens.append(issue_token(TEST_SECRET, user))
    return project, tokens


async def _push(client: SyncClient, project: uuid.UUID, push_id: int,
                *entities: EntityPush) -> PushResult:  # fmt: skip
    await client.send(Push(push_id, str(project), entities))
    result = await client.next_unabsorbed()
    assert isinstance(result, PushResult), result
    return result


@pytest.fixture
async def memory_server() -> AsyncIterator[tuple[str, MemoryStorage]]:
    memory = MemoryStorage()
    async with running_server(None, storage=memory) as base:
        yield base, memory


async def test_push_live_delivery_and_snapshots_on_memory_storage(
    memory_server: tuple[str, MemoryStorage],
) -> None:
    base, memory = memory_server
    project, (token_a, token_b) = await _project(memory, "lead", "lead")
    a, b = await SyncClient.connect(base), await SyncClient.connect(base)
    await a.hello(token_a, [ProjectCursor(str(project), None)])
    await b.hello(token_b, [ProjectCursor(str(project), None)])
    await a.sync_until_synced(str(project))
    await b.sync_until_synced(str(project))

    entity = new_id()
    doc, created = create_entity("activity", activity_values(new_id()))
    edited = splice_text(doc, "description", 0, 0, "Meet at the north gate. ")
    result = await _push(a, project, 1, EntityPush("activity", entity, (created, edited)))
    assert result.results == (EntityAccepted(entity, (1, 2)),)

    await b.receive_changes_until(str(project), 2)  # live, as it committed
    assert b.replicas[str(project)].heads() == {entity: sorted(doc.get_heads())}
    again = await _push(a, project, 2, EntityPush("activity", entity, (created, edited)))
    assert again.results == (EntityAccepted(entity, (1, 2)),)  # a retry logs nothing
    later = update_entity(doc, "activity", {"status": "confirmed"})
    await _push(b, project, 1, EntityPush("activity", entity, (later,)))
    await a.receive_changes_until(str(project), 3)

    from_snapshot, from_zero = await SyncClient.connect(base), await SyncClient.connect(base)
    await from_snapshot.hello(token_b, [ProjectCursor(str(project), None)])
    await from_zero.hello(token_b, [ProjectCursor(str(project), 0)])
    snapshot = await from_snapshot.sync_until_synced(str(project))
    zero = await from_zero.sync_until_synced(str(project))
    assert snapshot.cursor == zero.cursor == 3
    assert snapshot.heads() == zero.heads() == {entity: sorted(doc.get_heads())}
    for client in (a, b, from_snapshot, from_zero):
        await client.close()

    async with httpx.AsyncClient() as http:
        answer = await http.get(
            f"http://{base}/projects/{project}/snapshot",
            headers={"Authorization": f"Bearer {token_a}", "Accept-Encoding": "gzip"},
        )
        health = await http.get(f"http://{base}/healthz")
    assert answer.status_code == 200
    assert answer.headers["etag"] == f'"{project}:3"'
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(answer.content)
    records = list(unpacker)
    assert records[0]["cursor"] == 3
    assert records[1]["entity_id"] == entity
    assert sorted(load_document(records[1]["document"]).get_heads()) == sorted(doc.get_heads())
    assert records[-1] == {"t": "snapshot_end", "project_id": str(project), "cursor": 3}
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


async def test_two_apps_on_one_memory_storage_behave_like_two_processes() -> None:
    memory = MemoryStorage()
    project, (token,) = await _project(memory, "lead")
    async with running_server(None, storage=memory) as first, running_server(
        None, storage=memory
    ) as second:
        writer, reader = await SyncClient.connect(first), await SyncClient.connect(second)
        await writer.hello(token)
        await reader.hello(token, [ProjectCursor(str(project), 0)])
        await reader.sync_until_synced(str(project))
        entity = new_id()
        doc, created = create_entity("location", location_values())
        result = await _push(writer, project, 1, EntityPush("location", entity, (created,)))
        assert result.results == (EntityAccepted(entity, (1,)),)
        # Committed in the first app, told to the second by a notification, read by cursor.
        await reader.receive_changes_until(str(project), 1, within=5)
        assert reader.replicas[str(project)].heads() == {entity: sorted(doc.get_heads())}
        for client in (writer, reader):
            await client.close()


async def test_a_failing_memory_storage_degrades_the_server_until_it_recovers() -> None:
    memory = MemoryStorage()
    project, (token,) = await _project(memory, "lead")
    async with running_server(None, storage=memory, database_check_seconds=0.05) as base:
        client = await SyncClient.connect(base)
        await client.hello(token)
        memory.fail()
        down = await client.next_unabsorbed()
        assert isinstance(down, Status)
        assert (down.state, down.code) == ("degraded", DATABASE_UNAVAILABLE)
        _, created = create_entity("location", location_values())
        await client.send(Push(1, str(project), (EntityPush("location", new_id(), (created,)),)))
        refused = await client.next_unabsorbed()
        assert isinstance(refused, Error)
        assert (refused.code, refused.push_id) == (ErrorCode.SERVER_UNAVAILABLE.value, 1)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://{base}/healthz")).status_code == 503
        memory.recover()
        up = await client.next_unabsorbed()
        assert isinstance(up, Status)
        assert up.state == "ok"
        entity = new_id()
        result = await _push(client, project, 2, EntityPush("location", entity, (created,)))
        assert result.results == (EntityAccepted(entity, (1,)),)
        await client.close()
