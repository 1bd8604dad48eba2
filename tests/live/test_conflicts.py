"""Conflict records reach clients over real WebSockets: live after the changes that caused
them (through either of two server processes), in snapshots, on catch-up from a cursor,
and in the HTTP snapshot."""

from __future__ import annotations

import gzip
import uuid

import httpx
import msgpack

from fieldsync.model.automerge_format.documents import load_document
from fieldsync.model.writer import create_entity, update_entity
from fieldsync.sync.codec import decode_server
from fieldsync.sync.messages import ConflictRecord, Conflicts, EntityPush, ProjectCursor
from tests.entities import activity_values, new_id
from tests.live.test_sync import push
from tests.live_server import MemberFactory, running_server
from tests.observability.test_metrics import scrape, value
from tests.sync_client import ProjectReplica, SyncClient


async def test_conflicts_follow_their_changes_everywhere(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, lead = await member(project)
    _, other_lead = await member(project)
    key = str(project)
    async with running_server(database_url) as first, running_server(database_url) as second:
        ana, ben = await SyncClient.connect(first), await SyncClient.connect(first)
        watcher = await SyncClient.connect(second)  # live on the other process
        await ana.hello(lead)
        await ben.hello(other_lead)
        await watcher.hello(lead, [ProjectCursor(key, None)])
        await watcher.sync_until_synced(key)

        entity = new_id()
        doc, created = create_entity("activity", activity_values(new_id()), actor=b"\x00" * 16)
        await push(ana, project, 1, EntityPush("activity", entity, (created,)))
        ana_doc, ben_doc = doc.fork(), doc.fork()
        ana_doc.set_actor(b"\x01" * 16)
        ben_doc.set_actor(b"\x02" * 16)
        north = update_entity(ana_doc, "activity", {"title": "North trench"})
        south = update_entity(ben_doc, "activity", {"title": "South trench"})
        await push(ana, project, 2, EntityPush("activity", entity, (north,)))
        await push(ben, project, 1, EntityPush("activity", entity, (south,)))

        await watcher.receive_changes_until(key, 3, within=10)
        live = watcher.replicas[key]
        while not live.conflicts:
            message = await watcher.receive(within=10)
            assert isinstance(message, Conflicts), message  # nothing else is due
            watcher.absorb(message)
        [record] = live.conflicts.values()
        # Found by the process the pushes went through, counted once there.
        counted = value(
            await scrape(first), "fieldsync_conflicts_found_total", kind="concurrent_edit"
        )
        assert counted == 1
        assert (
            value(await scrape(second), "fieldsync_conflicts_found_total", kind="concurrent_edit")
            == 0
        )
        assert (record.kind, record.status, record.entity_ids) == (
            "concurrent_edit",
            "open",
            (entity,),
        )
        assert record.fields == ("title",)
        assert record.opened_seq == 3
        assert record.details["values"] == {
            "kept": "South trench",
            "candidates": ["South trench", "North trench"],
        }

        # A newcomer's snapshot and a client catching up from before the conflict agree.
        newcomer = await SyncClient.connect(second)
        await newcomer.hello(lead, [ProjectCursor(key, None)])
        assert (await newcomer.sync_until_synced(key)).conflicts == live.conflicts
        late = await SyncClient.connect(first)
        late.replicas[key] = ProjectReplica(1, {entity: load_document(created)})
        await late.hello(lead, [ProjectCursor(key, 1)])
        assert (await late.sync_until_synced(key)).conflicts == live.conflicts

        # The lead, having seen both values, picks one: resolved, everywhere.
        ana_doc.merge(ben_doc)
        chosen = update_entity(ana_doc, "activity", {"title": "North trench"})
        await push(ana, project, 3, EntityPush("activity", entity, (chosen,)))
        for client in (watcher, newcomer, late):
            replica = client.replicas[key]
            await client.receive_changes_until(key, 4, within=10)
            while replica.conflicts[record.conflict_id].status != "resolved":
                client.absorb(await client.receive(within=10))
            assert replica.conflicts[record.conflict_id].resolved_seq == 4
            await client.close()

        async with httpx.AsyncClient(base_url=f"http://{first}") as http:
            response = await http.get(
                f"/projects/{key}/snapshot", headers={"Authorization": f"Bearer {lead}"}
            )
        assert response.status_code == 200
        body = response.content
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        found = _conflicts_in(body)
        assert [c.status for c in found] == ["resolved"]
        assert found[0].conflict_id == record.conflict_id
        await ana.close()
        await ben.close()


def _conflicts_in(body: bytes) -> list[ConflictRecord]:
    """The conflict records of an HTTP snapshot body, read with the protocol's decoder."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(body)
    records: list[ConflictRecord] = []
    for item in unpacker:
        if isinstance(item, dict) and item.get("t") == Conflicts.TYPE:
            message = decode_server(msgpack.packb(item, use_bin_type=True))
            assert isinstance(message, Conflicts)
            records.extend(message.conflicts)
    return records
