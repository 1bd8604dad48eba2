"""Snapshots: every entity exactly as of the snapshot's cursor, even while appends commit."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

import pytest
from automerge.core import Document

from fieldsync.model.automerge_format.changes import parse_change
from fieldsync.model.automerge_format.documents import apply_changes
from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import create_entity, update_entity
from fieldsync.store.errors import UnknownProject
from fieldsync.store.ports import ChangeLogPort, Storage
from tests.entities import location_values, new_id


async def test_snapshot_taken_during_appends_plus_pull_equals_the_final_state(
    storage: Storage, log: ChangeLogPort, project: uuid.UUID
) -> None:
    entities = {new_id(): create_entity("location", location_values(i)) for i in range(12)}
    await log.append(
        project, [EntityChanges("location", e, [c]) for e, (_, c) in entities.items()], "u"
    )

    async def keep_appending() -> None:
        for n in range(15):
            batch = [
                EntityChanges("location", e, [update_entity(doc, "location", {"name": f"r{n}"})])
                for e, (doc, _) in entities.items()
            ]
            await log.append(project, batch, "u")
            await asyncio.sleep(0)

    appending = asyncio.create_task(keep_appending())
    snapshots: list[tuple[int, dict[str, Document]]] = []
    while not appending.done():
        async with storage.snapshots.open(project) as snapshot:
            docs = {}
            async for entity in snapshot.entities(prefetch=5):
                docs[entity.entity_id] = Document.load(entity.document)
                assert sorted(docs[entity.entity_id].get_heads()) == sorted(entity.heads)
            snapshots.append((snapshot.cursor, docs))
        await asyncio.sleep(0.005)
    await appending
    assert len({cursor for cursor, _ in snapshots}) > 2, "snapshots taken mid-stream"

    logged = (await log.read_since(project, 0, 10_000)).changes
    for cursor, docs in snapshots:
        # As of exactly the cursor: each document equals the replay of its changes <= cursor.
        upto: dict[str, list[bytes]] = defaultdict(list)
        for change in logged:
            if change.seq <= cursor:
                upto[change.entity_id].append(change.change)
        assert sorted(docs) == sorted(upto)
        for entity_id, doc in docs.items():
            replayed = Document.load(b"".join(upto[entity_id]))
            assert sorted(doc.get_heads()) == sorted(replayed.get_heads())
        # Continuing from the cursor by pull reaches the final state, nothing missing or doubled.
        pulled = (await log.read_since(project, cursor, 10_000)).changes
        assert [c.seq for c in pulled] == list(range(cursor + 1, len(logged) + 1))
        for change in pulled:
            docs[change.entity_id] = apply_changes(
                docs[change.entity_id], [parse_change(change.change)]
            )
        for entity_id, (original, _) in entities.items():
            assert sorted(docs[entity_id].get_heads()) == sorted(original.get_heads())


async def test_snapshot_of_an_unknown_project(storage: Storage) -> None:
    with pytest.raises(UnknownProject):
        async with storage.snapshots.open(uuid.uuid4()):
            pass


async def test_a_snapshot_stays_at_its_cursor_while_changes_commit(
    storage: Storage, log: ChangeLogPort, project: uuid.UUID
) -> None:
    """Documents, count and conflict records all as of the cursor, whatever commits while
    it is open (a new entity, an edit, a conflict opening)."""
    entity = new_id()
    doc, created = create_entity("location", location_values())
    ana, ben = doc.fork(), doc.fork()
    await log.append(project, [EntityChanges("location", entity, [created])], "u")
    await log.append(
        project,
        [EntityChanges("location", entity, [update_entity(ana, "location", {"name": "North"})])],
        "ana",
    )
    async with storage.snapshots.open(project) as snapshot:
        assert snapshot.project_id == project
        assert snapshot.cursor == 2
        later = update_entity(ben, "location", {"name": "South"})  # concurrent: a conflict
        _, other = create_entity("location", location_values(2))
        await log.append(
            project,
            [
                EntityChanges("location", entity, [later]),
                EntityChanges("location", new_id(), [other]),
            ],
            "ben",
        )
        assert await log.head(project) == 4
        assert await snapshot.count() == 1
        entities = [e async for e in snapshot.entities(prefetch=1)]
        assert await snapshot.conflicts() == []
    assert [e.entity_id for e in entities] == [entity]
    [seen] = entities
    assert (seen.entity_type, seen.version) == ("location", 2)
    assert sorted(Document.load(seen.document).get_heads()) == sorted(ana.get_heads())
    assert sorted(seen.heads) == sorted(ana.get_heads())
    assert snapshot.document_bytes == len(seen.document)

    async with storage.snapshots.open(project) as snapshot:
        assert snapshot.cursor == 4
        assert await snapshot.count() == 2
        [conflict] = await snapshot.conflicts()
    assert (conflict.kind, conflict.status, conflict.opened_seq) == ("concurrent_edit", "open", 3)
    assert conflict.entity_ids == (entity,)
