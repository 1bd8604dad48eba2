"""Snapshot, push, pull and live fan-out over a real server and real WebSockets."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import msgpack

from fieldsync.model.writer import create_entity, splice_text, update_entity
from fieldsync.sync.messages import (
    EntityAccepted,
    EntityPush,
    ProjectCursor,
    Push,
    PushResult,
)
from tests.entities import activity_values, location_values, new_id
from tests.live_server import MemberFactory
from tests.sync_client import SyncClient


async def push(
    client: SyncClient, project: uuid.UUID, push_id: int, *entities: EntityPush
) -> PushResult:
    await client.send(Push(push_id, str(project), entities))
    result = await client.next_unabsorbed()
    assert isinstance(result, PushResult), result
    assert result.push_id == push_id
    return result


async def test_a_push_reaches_a_live_client_and_late_joiners_agree(
    sync_server: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token_a = await member(project)
    # b is a lead too: a specialist may only edit activities they are summoned to.
    _, token_b = await member(project, "lead")
    a, b = await SyncClient.connect(sync_server), await SyncClient.connect(sync_server)
    await a.hello(token_a, [ProjectCursor(str(project), None)])
    await b.hello(token_b, [ProjectCursor(str(project), None)])
    await a.sync_until_synced(str(project))
    await b.sync_until_synced(str(project))

    entity = new_id()
    doc, created = create_entity("activity", activity_values(new_id()))
    edited = splice_text(doc, "description", 0, 0, "Meet at the north gate. ")
    result = await push(a, project, 1, EntityPush("activity", entity, (created, edited)))
    assert result.results == (EntityAccepted(entity, (1, 2)),)

    await b.receive_changes_until(str(project), 2)
    assert b.replicas[str(project)].heads() == {entity: sorted(doc.get_heads())}

    # A retried push (its ack lost) gets the same seqs and logs nothing new.
    again = await push(a, project, 2, EntityPush("activity", entity, (created, edited)))
    assert again.results == (EntityAccepted(entity, (1, 2)),)

    later_edit = update_entity(doc, "activity", {"status": "confirmed"})
    await push(b, project, 1, EntityPush("activity", entity, (later_edit,)))

    from_zero, from_snapshot = (
        await SyncClient.connect(sync_server),
        await SyncClient.connect(sync_server),
    )
    await from_zero.hello(token_b, [ProjectCursor(str(project), 0)])
    await from_snapshot.hello(token_b, [ProjectCursor(str(project), None)])
    zero = await from_zero.sync_until_synced(str(project))
    snap = await from_snapshot.sync_until_synced(str(project))
    assert zero.cursor == snap.cursor == 3
    assert zero.heads() == snap.heads() == {entity: sorted(doc.get_heads())}
    for client in (a, b, from_zero, from_snapshot):
        await client.close()


async def test_snapshot_during_pushes_plus_live_changes_equals_the_final_state(
    sync_server: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    writer = await SyncClient.connect(sync_server)
    await writer.hello(token)
    documents = {new_id(): create_entity("location", location_values(i)) for i in range(20)}
    await push(writer, project, 0,
               *(EntityPush("location", e, (c,)) for e, (_, c) in documents.items()))

    async def keep_pushing() -> None:
        for n in range(1, 16):
            await push(writer, project, n, *(
                EntityPush("location", e, (update_entity(doc, "location", {"name": f"v{n}"}),))
                for e, (doc, _) in documents.items()
            ))

    pushing = asyncio.create_task(keep_pushing())
    readers = []
    for _ in range(4):
        reader = await SyncClient.connect(sync_server)
        await reader.hello(token, [ProjectCursor(str(project), None)])
        readers.append(reader)
        await asyncio.sleep(0.02)
    await pushing
    final_seq = 20 * 16
    expected = {e: sorted(doc.get_heads()) for e, (doc, _) in documents.items()}
    for reader in readers:
        await reader.receive_changes_until(str(project), final_seq, within=10)
        replica = reader.replicas[str(project)]
        assert replica.cursor == final_seq
        assert replica.heads() == expected
        await reader.close()
    await writer.close()


async def test_http_snapshot_is_gzipped_and_cached_by_cursor(
    sync_server: str, project: uuid.UUID, member: MemberFactory, pool: asyncpg.Pool
) -> None:
    _, token = await member(project)
    client = await SyncClient.connect(sync_server)
    await client.hello(token)
    entity = new_id()
    _, created = create_entity("location", location_values())
    await push(client, project, 1, EntityPush("location", entity, (created,)))
    await client.close()

    url = f"http://{sync_server}/projects/{project}/snapshot"
    headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"}
    async with httpx.AsyncClient() as http:
        first = await http.get(url, headers=headers)
        assert first.status_code == 200
        assert first.headers["content-encoding"] == "gzip"
        assert first.headers["etag"] == f'"{project}:1"'
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(first.content)  # httpx already inflated the gzip body
        records = list(unpacker)
        assert records[0] == {"t": "snapshot_begin", "project_id": str(project), "cursor": 1,
                              "entity_count": 1}
        assert records[1]["entity_id"] == entity
        assert records[-1] == {"t": "snapshot_end", "project_id": str(project), "cursor": 1}

        cached = await http.get(url, headers={**headers, "If-None-Match": first.headers["etag"]})
        assert cached.status_code == 304
        assert cached.content == b""
        etag = first.headers["etag"]
        # If-None-Match compares weakly (a compressing proxy weakens ETags), and may list
        # several tags or say "*".
        for matching in (f"W/{etag}", f'"{project}:0", {etag}', "*"):
            again = await http.get(url, headers={**headers, "If-None-Match": matching})
            assert again.status_code == 304, matching
        stale = await http.get(url, headers={**headers, "If-None-Match": f'W/"{project}:0"'})
        assert stale.status_code == 200

        raw = await http.get(url, headers={"Authorization": f"Bearer {token}",
                                           "Accept-Encoding": "identity"})
        assert raw.status_code == 200
        assert "content-encoding" not in raw.headers
        assert raw.content == msgpack.packb(records[0]) + b"".join(
            msgpack.packb(r) for r in records[1:]
        )

        unknown = await http.get(f"http://{sync_server}/projects/{uuid.uuid4()}/snapshot",
                                 headers=headers)
        _, stranger = await member(await _other_project(pool))
        forbidden = await http.get(url, headers={"Authorization": f"Bearer {stranger}"})
        assert unknown.status_code == forbidden.status_code == 404
        assert unknown.json() == forbidden.json()
        anonymous = await http.get(url)
        assert anonymous.status_code == 401


async def _other_project(pool: asyncpg.Pool) -> uuid.UUID:
    from fieldsync.store.projects import create_account, create_project

    async with pool.acquire() as conn:
        return await create_project(conn, await create_account(conn, "elsewhere"), "elsewhere")
