"""Appending changes: acceptance, idempotency, ordering and concurrency on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from automerge.core import Document

from fieldsync.model.documents import load_document
from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import create_entity, splice_text, update_entity
from fieldsync.store.changelog import Accepted, ChangeLog, Rejected
from tests.entities import activity_values, location_values, new_id, plan_values
from tests.store.state import project_state


async def test_new_entity_is_logged_cached_and_projected(
    pool: asyncpg.Pool, project: uuid.UUID
) -> None:
    log = ChangeLog(pool)
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
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT title, status, tasks_total, tasks_done, deleted, last_seq "
            "FROM rm_activities WHERE project_id = $1 AND entity_id = $2",
            project,
            activity_id,
        )
        cached = await conn.fetchrow(
            "SELECT saved || tail AS document, heads FROM documents WHERE entity_id = $1",
            activity_id,
        )
        sender = await conn.fetchval(
            "SELECT DISTINCT sender FROM changes WHERE project_id = $1", project
        )
    assert tuple(row) == ("Core sampling, day 1", "planned", 2, 1, False, 3)
    assert sorted(load_document(cached["document"]).get_heads()) == sorted(doc.get_heads())
    assert sorted(cached["heads"]) == sorted(doc.get_heads())
    assert sender == "user-1"


async def test_reappending_returns_original_seqs_and_logs_nothing(
    pool: asyncpg.Pool, project: uuid.UUID
) -> None:
    log = ChangeLog(pool)
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
    pool: asyncpg.Pool, project: uuid.UUID
) -> None:
    entity = new_id()
    _, change = create_entity("location", location_values())
    logs = [ChangeLog(pool) for _ in range(5)]  # five independent caches, like five processes

    results = await asyncio.gather(
        *(
            log.append(project, [EntityChanges("location", entity, [change])], sender="u")
            for log in logs
        )
    )

    assert all(r == [Accepted(entity, (1,))] for r in results)
    state = await project_state(pool, project)
    assert state.head == 1
    assert len(state.log) == 1


async def test_changes_within_a_push_may_arrive_out_of_dependency_order(
    pool: asyncpg.Pool, project: uuid.UUID
) -> None:
    log = ChangeLog(pool)
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


async def test_concurrent_offline_edits_merge(pool: asyncpg.Pool, project: uuid.UUID) -> None:
    log = ChangeLog(pool)
    entity = new_id()
    origin, created = create_entity("activity", activity_values(new_id()))
    await log.append(project, [EntityChanges("activity", entity, [created])], sender="a")
    tablet_a, tablet_b = origin.fork(), origin.fork()
    edit_a = update_entity(tablet_a, "activity", {"status": "confirmed"})
    edit_b = splice_text(tablet_b, "description", 0, 0, "Bring spare bits. ")

    await log.append(project, [EntityChanges("activity", entity, [edit_a])], sender="a")
    await log.append(project, [EntityChanges("activity", entity, [edit_b])], sender="b")

    tablet_a.merge(tablet_b)
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT heads, saved || tail AS document FROM documents WHERE entity_id = $1", entity
        )
        status = await conn.fetchval(
            "SELECT status FROM rm_activities WHERE entity_id = $1", entity
        )
    assert sorted(row["heads"]) == sorted(tablet_a.get_heads())
    assert status == "confirmed"


async def test_a_process_with_a_stale_cache_reloads_the_document(
    pool: asyncpg.Pool, project: uuid.UUID
) -> None:
    """Two change logs on one database (two server processes) both append to an entity."""
    first_process, second_process = ChangeLog(pool), ChangeLog(pool)
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
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT name, address FROM rm_locations WHERE entity_id = $1", entity
        )
    assert tuple(row) == ("Renamed by process two", "Moved by process one")


async def test_cached_document_stays_equal_to_the_log_across_compactions(
    pool: asyncpg.Pool, project: uuid.UUID
) -> None:
    log = ChangeLog(pool)
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
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT saved, tail, tail_changes, change_count, heads FROM documents "
            "WHERE entity_id = $1",
            entity,
        )
    cached = load_document(row["saved"] + row["tail"])
    assert row["change_count"] == 301
    assert row["saved"], "the document was compacted at least once"
    assert row["tail_changes"] < 301
    assert sorted(cached.get_heads()) == sorted(replayed.get_heads()) == sorted(row["heads"])
    assert cached.text(cached.get(b"\x00", "description")[1]) == replayed.text(  # type: ignore[index]
        replayed.get(b"\x00", "description")[1]  # type: ignore[index]
    )


async def test_writers_and_a_cursor_reader_see_a_gapless_ordered_log(
    pool: asyncpg.Pool, project: uuid.UUID
) -> None:
    writers, pushes, per_push = 8, 12, 3
    log = ChangeLog(pool)
    acked: list[int] = []

    async def writer(index: int) -> None:
        own_log = ChangeLog(pool) if index % 2 else log  # mix shared and separate caches
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
    pool: asyncpg.Pool, project: uuid.UUID
) -> None:
    log = ChangeLog(pool)
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
