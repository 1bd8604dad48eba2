"""Appending changes: acceptance, idempotency, ordering and concurrency, on every storage."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from automerge.core import Document

from fieldsync.model.documents import load_document
from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import create_entity, splice_text, update_entity
from fieldsync.store.errors import UnknownProject
from fieldsync.store.ports import ChangeLogPort, Storage
from fieldsync.store.records import Accepted, Rejected
from tests.entities import activity_values, location_values, new_id, plan_values
from tests.store.contract.inspect import Inspector


async def test_new_entity_is_logged_cached_and_projected(
    storage: Storage, inspector: Inspector, log: ChangeLogPort, project: uuid.UUID
) -> None:
    plan_id, activity_id = new_id(), new_id()
    _, plan_change = create_entity("plan", plan_values())
    doc, created = create_entity("activity", activity_values(plan_id))
    edited = update_entity(doc, "activity", {"title": "Core sampling, day 1"})

    results = await log.append(
        project,
        [
            EntityChanges("plan", plan_id, [plan_change]),
            EntityChanges("activity", activity_id, [created, edited]),
        ],
        sender="user-1",
    )

    assert results == [Accepted(plan_id, (1,)), Accepted(activity_id, (2, 3))]
    assert await log.head(project) == 3
    logged = (await log.read_since(project, 0)).changes
    assert [(c.seq, c.entity_id, c.change) for c in logged] == [
        (1, plan_id, plan_change),
        (2, activity_id, created),
        (3, activity_id, edited),
    ]
    row = await inspector.read_model("activity", activity_id)
    assert row is not None
    assert tuple(row[c] for c in ("title", "status", "tasks_total", "tasks_done", "deleted",
                                  "last_seq")) == ("Core sampling, day 1", "planned", 2, 1,
                                                   False, 3)  # fmt: skip
    cached = await inspector.document(activity_id)
    assert cached is not None
    assert sorted(load_document(cached.saved + cached.tail).get_heads()) == sorted(doc.get_heads())
    assert sorted(cached.heads) == sorted(doc.get_heads())
    senders = {entry[5] for entry in (await inspector.state(project)).log}
    assert senders == {"user-1"}


async def test_reappending_returns_original_seqs_and_logs_nothing(
    log: ChangeLogPort, project: uuid.UUID
) -> None:
    entity = new_id()
    doc, first = create_entity("location", location_values())
    await log.append(project, [EntityChanges("location", entity, [first])], sender="u")
    second = update_entity(doc, "location", {"name": "Upper quarry"})

    again = await log.append(
        project, [EntityChanges("location", entity, [first, second, first])], sender="u"
    )

    assert again == [Accepted(entity, (1, 2, 1))]
    assert await log.head(project) == 2


async def test_same_change_appended_concurrently_is_logged_once(
    storage: Storage, inspector: Inspector, project: uuid.UUID
) -> None:
    entity = new_id()
    _, change = create_entity("location", location_values())
    logs = [storage.change_log() for _ in range(5)]  # five independent caches: five processes

    results = await asyncio.gather(
        *(
            log.append(project, [EntityChanges("location", entity, [change])], sender="u")
            for log in logs
        )
    )

    assert all(r == [Accepted(entity, (1,))] for r in results)
    state = await inspector.state(project)
    assert state.head == 1
    assert len(state.log) == 1


async def test_changes_within_a_push_may_arrive_out_of_dependency_order(
    log: ChangeLogPort, project: uuid.UUID
) -> None:
    entity = new_id()
    doc, first = create_entity("activity", activity_values(new_id()))
    second = update_entity(doc, "activity", {"status": "confirmed"})
    third = splice_text(doc, "description", 0, 0, "Urgent: ")

    results = await log.append(
        project, [EntityChanges("activity", entity, [third, first, second])], sender="u"
    )

    # Logged in dependency order; seqs reported in the order they were sent.
    assert results == [Accepted(entity, (3, 1, 2))]
    assert [c.change for c in (await log.read_since(project, 0)).changes] == [first, second, third]


async def test_concurrent_offline_edits_merge(
    inspector: Inspector, log: ChangeLogPort, project: uuid.UUID
) -> None:
    entity = new_id()
    origin, created = create_entity("activity", activity_values(new_id()))
    await log.append(project, [EntityChanges("activity", entity, [created])], sender="a")
    tablet_a, tablet_b = origin.fork(), origin.fork()
    edit_a = update_entity(tablet_a, "activity", {"status": "confirmed"})
    edit_b = splice_text(tablet_b, "description", 0, 0, "Bring spare bits. ")

    await log.append(project, [EntityChanges("activity", entity, [edit_a])], sender="a")
    await log.append(project, [EntityChanges("activity", entity, [edit_b])], sender="b")

    tablet_a.merge(tablet_b)
    stored = await inspector.document(entity)
    row = await inspector.read_model("activity", entity)
    assert stored is not None
    assert row is not None
    assert sorted(stored.heads) == sorted(tablet_a.get_heads())
    assert row["status"] == "confirmed"


async def test_a_process_with_a_stale_cache_reloads_the_document(
    storage: Storage, inspector: Inspector, project: uuid.UUID
) -> None:
    """Two change logs on one storage (two server processes) both append to an entity."""
    first_process, second_process = storage.change_log(), storage.change_log()
    entity = new_id()
    doc, created = create_entity("location", location_values())
    await first_process.append(project, [EntityChanges("location", entity, [created])], "u")
    renamed = update_entity(doc, "location", {"name": "Renamed by process two"})
    await second_process.append(project, [EntityChanges("location", entity, [renamed])], "u")
    moved = update_entity(doc, "location", {"address": "Moved by process one"})

    results = await first_process.append(
        project, [EntityChanges("location", entity, [moved])], sender="u"
    )

    assert results == [Accepted(entity, (3,))]
    row = await inspector.read_model("location", entity)
    assert row is not None
    assert (row["name"], row["address"]) == ("Renamed by process two", "Moved by process one")


async def test_cached_document_stays_equal_to_the_log_across_compactions(
    inspector: Inspector, log: ChangeLogPort, project: uuid.UUID
) -> None:
    entity = new_id()
    doc, created = create_entity("activity", activity_values(new_id()))
    await log.append(project, [EntityChanges("activity", entity, [created])], sender="u")
    for round_ in range(30):
        changes = [
            splice_text(doc, "description", 0, 0, f"r{round_}.{i} ") for i in range(10)
        ]
        await log.append(project, [EntityChanges("activity", entity, changes)], sender="u")

    logged = (await log.read_since(project, 0, 10_000)).changes
    replayed = Document.load(b"".join(c.change for c in logged))
    row = await inspector.document(entity)
    assert row is not None
    cached = load_document(row.saved + row.tail)
    assert row.change_count == 301
    assert row.saved, "the document was compacted at least once"
    assert row.tail_changes < 301
    assert sorted(cached.get_heads()) == sorted(replayed.get_heads()) == sorted(row.heads)
    assert cached.text(cached.get(b"\x00", "description")[1]) == replayed.text(  # type: ignore[index]
        replayed.get(b"\x00", "description")[1]  # type: ignore[index]
    )


async def test_writers_and_a_cursor_reader_see_a_gapless_ordered_log(
    storage: Storage, log: ChangeLogPort, project: uuid.UUID
) -> None:
    writers, pushes, per_push = 8, 12, 3
    acked: list[int] = []

    async def writer(index: int) -> None:
        own_log = storage.change_log() if index % 2 else log  # mix shared and separate caches
        for push in range(pushes):
            entity = new_id()
            doc, created = create_entity("location", location_values(index))
            changes = [created] + [
                update_entity(doc, "location", {"name": f"w{index} p{push} e{i}"})
                for i in range(per_push - 1)
            ]
            [result] = await own_log.append(
                project, [EntityChanges("location", entity, changes)], sender=f"w{index}"
            )
            assert isinstance(result, Accepted)
            acked.extend(result.seqs)

    seen: list[int] = []
    done = asyncio.Event()

    async def reader() -> None:
        cursor = 0
        while True:
            finished = done.is_set()
            batch = (await log.read_since(project, cursor, limit=50)).changes
            for change in batch:
                seen.append(change.seq)
                cursor = change.seq
            if finished and not batch:
                return
            await asyncio.sleep(0.002)

    reading = asyncio.create_task(reader())
    await asyncio.gather(*(writer(i) for i in range(writers)))
    done.set()
    await reading

    total = writers * pushes * per_push
    assert sorted(acked) == list(range(1, total + 1))
    assert seen == list(range(1, total + 1)), "each change seen once, in seq order, no gaps"


async def test_rejection_in_one_entity_leaves_the_others_of_the_push_alone(
    log: ChangeLogPort, project: uuid.UUID
) -> None:
    good, bad = new_id(), new_id()
    _, change = create_entity("location", location_values())

    results = await log.append(
        project,
        [
            EntityChanges("location", bad, [b"\x85o\x4a\x83garbage"]),
            EntityChanges("location", good, [change]),
        ],
        sender="u",
    )

    assert isinstance(results[0], Rejected)
    assert results[1] == Accepted(good, (1,))


async def test_seqs_are_per_project_and_a_cursor_reads_only_its_project(
    log: ChangeLogPort, project: uuid.UUID, other_project: uuid.UUID
) -> None:
    _, first = create_entity("location", location_values(1))
    _, second = create_entity("location", location_values(2))
    a, b = new_id(), new_id()
    assert await log.append(project, [EntityChanges("location", a, [first])], "u") == [
        Accepted(a, (1,))
    ]
    assert await log.append(other_project, [EntityChanges("location", b, [second])], "u") == [
        Accepted(b, (1,))
    ]
    assert [c.entity_id for c in (await log.read_since(project, 0)).changes] == [a]
    assert [c.entity_id for c in (await log.read_since(other_project, 0)).changes] == [b]
    assert (await log.read_since(project, 1)).changes == []
    assert (await log.read_since(project, 1)).last_seq is None


async def test_an_unknown_project_has_no_head_and_takes_no_push(log: ChangeLogPort) -> None:
    nowhere = uuid.uuid4()
    _, change = create_entity("location", location_values())
    with pytest.raises(UnknownProject):
        await log.head(nowhere)
    with pytest.raises(UnknownProject):
        await log.append(nowhere, [EntityChanges("location", new_id(), [change])], "u")
    assert (await log.read_since(nowhere, 0)).changes == []
    assert await log.append(nowhere, [], "u") == []  # nothing to log: nothing asked


async def test_commits_are_heard_after_they_are_made(
    storage: Storage, project: uuid.UUID
) -> None:
    """What the app's fan-out and metrics hear: the changes newly logged, the new head."""
    heard: list[tuple[uuid.UUID, list[int]]] = []
    appended: list[tuple[uuid.UUID, int, int]] = []
    log = storage.change_log(
        on_commit=lambda p, piece: heard.append((p, [c.seq for c in piece.changes])),
        on_append=lambda p, head, n: appended.append((p, head, n)),
    )
    doc, created = create_entity("location", location_values())
    entity = new_id()
    await log.append(project, [EntityChanges("location", entity, [created])], "u")
    await log.append(project, [EntityChanges("location", entity, [created])], "u")  # a retry
    edit = update_entity(doc, "location", {"name": "Depot"})
    await log.append(project, [EntityChanges("location", entity, [edit])], "u")
    assert heard == [(project, [1]), (project, [2])]
    assert appended == [(project, 1, 1), (project, 1, 0), (project, 2, 1)]


async def test_a_failing_commit_listener_does_not_fail_the_push(
    storage: Storage, project: uuid.UUID
) -> None:
    def broken(project_id: uuid.UUID, piece: object) -> None:
        raise RuntimeError("listener bug")

    log = storage.change_log(on_commit=broken)
    _, created = create_entity("location", location_values())
    entity = new_id()
    assert await log.append(project, [EntityChanges("location", entity, [created])], "u") == [
        Accepted(entity, (1,))
    ]
    assert await log.head(project) == 1
