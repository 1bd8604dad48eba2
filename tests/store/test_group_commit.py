"""Group commit on PostgreSQL: pushes to one project that queue behind a running append go
in together, in one transaction, and keep every guarantee of appending them one by one.

"One transaction" is checked in the database itself: every row a transaction writes
carries its id (``xmin``), so the changes of a group share one. The grouping (``store.
group_commit``) is also tested alone, without a database, for its waiting and cancelling.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any

import asyncpg
import pytest
from automerge.core import Document

from fieldsync.model.automerge_format.documents import load_document
from fieldsync.model.entities import SCHEMAS
from fieldsync.model.merge import EntityChanges
from fieldsync.model.rejections import RejectCode
from fieldsync.model.validation import inspect_document
from fieldsync.model.writer import create_entity, update_entity
from fieldsync.store.changelog import Accepted, AppendResult, ChangeLog, Rejected
from fieldsync.store.database import close_pool, create_pool
from fieldsync.store.errors import DatabaseFailed
from fieldsync.store.group_commit import GroupCommit
from fieldsync.store.projects import create_account, create_project
from fieldsync.store.readmodels import read_model_tables
from tests.conftest import create_migrated_database, drop_database
from tests.entities import (
    activity_values,
    location_values,
    new_id,
    plan_values,
    role_values,
    summoning_values,
)

Push = list[EntityChanges]


def _locations(count: int) -> Push:
    return [
        EntityChanges("location", new_id(), [create_entity("location", location_values(i))[1]])
        for i in range(count)
    ]


async def _transactions(pool: asyncpg.Pool, project: uuid.UUID) -> dict[int, list[int]]:
    """The seqs of the project's log by the transaction that wrote them."""
    rows = await pool.fetch(
        "SELECT xmin::text::bigint AS tx, seq FROM changes WHERE project_id = $1 ORDER BY seq",
        project,
    )
    found: dict[int, list[int]] = {}
    for r in rows:
        found.setdefault(r["tx"], []).append(r["seq"])
    return found


async def test_queued_pushes_go_in_one_transaction_gapless_logged_once_acked_after_commit(
    pool: asyncpg.Pool, project: uuid.UUID
) -> None:
    log = ChangeLog(pool)
    pushes = [_locations(3) for _ in range(6)]
    seen_at_ack: list[int] = []

    async def push_and_look(batch: Push) -> list[AppendResult]:
        results = await log.append(project, batch, "user-1")
        # Acknowledged only after the commit: another connection sees every seq now.
        seqs = [s for r in results if isinstance(r, Accepted) for s in r.seqs]
        seen_at_ack.append(
            await pool.fetchval(
                "SELECT count(*) FROM changes WHERE project_id = $1 AND seq = ANY($2::bigint[])",
                project,
                seqs,
            )
        )
        return results

    answers = await asyncio.gather(*(push_and_look(p) for p in pushes))

    # The first push found the project idle and went in alone; the five that queued behind
    # it went in together.
    assert (log.groups.groups, log.groups.grouped) == (2, 5)
    transactions = await _transactions(pool, project)
    assert sorted(len(seqs) for seqs in transactions.values()) == [3, 15]
    seqs = [s for results in answers for r in results if isinstance(r, Accepted) for s in r.seqs]
    assert seqs == list(range(1, 19))  # gapless, in arrival order
    assert seen_at_ack == [3] * 6
    logged = await pool.fetch(
        "SELECT entity_id, hash FROM changes WHERE project_id = $1 ORDER BY seq", project
    )
    assert len({r["hash"] for r in logged}) == len(logged) == 18
    assert [r["entity_id"] for r in logged] == [e.entity_id for p in pushes for e in p]
    assert (
        await pool.fetchval("SELECT head_seq FROM log_heads WHERE project_id = $1", project) == 18
    )


async def test_a_push_sees_the_pushes_before_it_in_its_group(
    pool: asyncpg.Pool, project: uuid.UUID
) -> None:
    log = ChangeLog(pool)
    entity = new_id()
    doc, created = create_entity("activity", activity_values(new_id(), title="Day 1"))
    renamed = update_entity(doc, "activity", {"title": "Day 1, north"})
    moved = update_entity(doc, "activity", {"status": "confirmed"})
    pushes = [
        _locations(1),  # runs alone; the rest queue behind it
        [EntityChanges("activity", entity, [created])],
        [EntityChanges("activity", entity, [renamed])],  # builds on the push before it
        [EntityChanges("activity", entity, [created, moved])],  # one logged, one new
    ]

    answers = await asyncio.gather(*(log.append(project, p, "user-1") for p in pushes))

    assert log.groups.groups == 2
    assert [a[0] for a in answers[1:]] == [
        Accepted(entity, (2,)),
        Accepted(entity, (3,)),
        Accepted(entity, (2, 4)),
    ]
    assert len(await _transactions(pool, project)) == 2
    row = await pool.fetchrow(
        "SELECT title, status, last_seq FROM rm_activities WHERE entity_id = $1", entity
    )
    assert tuple(row) == ("Day 1, north", "confirmed", 4)
    stored = await pool.fetchrow(
        "SELECT heads, saved, tail, change_count, version FROM documents WHERE entity_id = $1",
        entity,
    )
    assert (stored["change_count"], stored["version"]) == (3, 4)
    assert sorted(stored["heads"]) == sorted(doc.get_heads())
    assert sorted(load_document(stored["saved"] + stored["tail"]).get_heads()) == sorted(
        doc.get_heads()
    )
    # The process's cached copy is the committed one: the next push merges onto it.
    later = update_entity(doc, "activity", {"title": "Day 1, north ridge"})
    assert await log.append(project, [EntityChanges("activity", entity, [later])], "u") == [
        Accepted(entity, (5,))
    ]


async def test_a_rejected_entity_fails_no_other_entity_or_push_of_its_group(
    pool: asyncpg.Pool, project: uuid.UUID
) -> None:
    log = ChangeLog(pool)
    taken = new_id()
    _, plan_change = create_entity("plan", plan_values())
    _, orphan = create_entity("role", role_values())
    edit_of_unknown = update_entity(create_entity("role", role_values())[0], "role", {"name": "X"})
    good = _locations(2)
    pushes = [
        [EntityChanges("plan", taken, [plan_change])],
        good[:1],
        [
            EntityChanges("role", taken, [orphan]),  # the id is a plan's: WRONG_ENTITY_TYPE
            EntityChanges("role", new_id(), [edit_of_unknown]),  # MISSING_DEPENDENCIES
            *good[1:],
        ],
        _locations(1),
    ]

    answers = await asyncio.gather(*(log.append(project, p, "user-1") for p in pushes))

    assert log.groups.groups == 2
    assert answers[1] == [Accepted(good[0].entity_id, (2,))]
    wrong, missing, accepted = answers[2]
    assert isinstance(wrong, Rejected)
    assert wrong.rejection.code is RejectCode.WRONG_ENTITY_TYPE
    assert isinstance(missing, Rejected)
    assert missing.rejection.code is RejectCode.MISSING_DEPENDENCIES
    assert accepted == Accepted(good[1].entity_id, (3,))
    assert answers[3] == [Accepted(pushes[3][0].entity_id, (4,))]
    assert sorted(len(s) for s in (await _transactions(pool, project)).values()) == [1, 3]


async def test_a_database_error_fails_the_whole_group_and_acknowledges_none(
    pool: asyncpg.Pool, project: uuid.UUID
) -> None:
    log = ChangeLog(pool)
    pushes = [_locations(2) for _ in range(4)]

    async def lead(conn: Any) -> None:
        return None  # may write everything

    async def broken(conn: Any) -> None:
        await conn.execute("SELECT 1 / 0")  # the database refuses it mid-group

    rules = [lead, lead, broken, lead]
    answers = await asyncio.gather(
        *(
            log.append(project, p, "user-1", authorize=rule)
            for p, rule in zip(pushes, rules, strict=True)
        ),
        return_exceptions=True,
    )

    assert log.groups.groups == 2
    assert answers[0] == [Accepted(e.entity_id, (i + 1,)) for i, e in enumerate(pushes[0])]
    assert all(isinstance(a, DatabaseFailed) for a in answers[1:]), answers
    assert await pool.fetchval("SELECT head_seq FROM log_heads WHERE project_id = $1", project) == 2
    assert await pool.fetchval("SELECT count(*) FROM changes WHERE project_id = $1", project) == 2
    ids = [e.entity_id for p in pushes[1:] for e in p]
    assert await pool.fetchval("SELECT count(*) FROM documents WHERE entity_id = ANY($1)", ids) == 0
    # Sent again (as a client does after the error), they go in, gapless after the first.
    again = await asyncio.gather(*(log.append(project, p, "user-1") for p in pushes[1:]))
    assert [s for a in again for r in a if isinstance(r, Accepted) for s in r.seqs] == list(
        range(3, 9)
    )


# -- determinism: the same pushes grouped and one by one ----------------------------------


def _scenario() -> list[tuple[str, Push]]:
    """Pushes (sender, entities) whose order matters and that open conflicts of both
    families: a concurrent edit, a deleted reference, a summoning outside
    its activity (and a summoning of the same user to another activity)."""
    plan, location, role = new_id(), new_id(), new_id()
    first, second, one, two = new_id(), new_id(), new_id(), new_id()
    _, plan_change = create_entity("plan", plan_values())
    location_doc, location_change = create_entity("location", location_values())
    _, role_change = create_entity("role", role_values())
    first_doc, first_change = create_entity("activity", activity_values(plan, location))
    _, second_change = create_entity("activity", activity_values(plan, location, title="B"))
    one_doc, one_change = create_entity(
        "summoning", {**summoning_values(first, role), "user_id": "user-9"}
    )
    _, two_change = create_entity(
        "summoning", {**summoning_values(second, role), "user_id": "user-9"}
    )
    other = Document()
    other.merge(first_doc)
    ours = update_entity(first_doc, "activity", {"title": "Cores, north"})
    theirs = update_entity(other, "activity", {"title": "Cores, south"})
    gone = update_entity(location_doc, "location", {"deleted": True})
    late = update_entity(one_doc, "summoning", summoning_values(first, role, day=3))
    return [
        (
            "user-1",
            [
                EntityChanges("plan", plan, [plan_change]),
                EntityChanges("location", location, [location_change]),
                EntityChanges("role", role, [role_change]),
            ],
        ),
        (
            "user-1",
            [
                EntityChanges("activity", first, [first_change]),
                EntityChanges("activity", second, [second_change]),
            ],
        ),
        (
            "user-2",
            [
                EntityChanges("summoning", one, [one_change]),
                EntityChanges("summoning", two, [two_change]),
            ],
        ),
        ("user-1", [EntityChanges("activity", first, [ours])]),
        ("user-2", [EntityChanges("activity", first, [theirs])]),
        ("user-2", [EntityChanges("location", location, [gone])]),
        ("user-1", [EntityChanges("summoning", one, [late])]),
    ]


@pytest.fixture
async def second_pool(postgres_server_url: str) -> AsyncIterator[asyncpg.Pool]:
    url = await create_migrated_database(postgres_server_url, "fs_group")
    created = await create_pool(url, min_size=1, max_size=4)
    try:
        yield created
    finally:
        await close_pool(created)
        await drop_database(postgres_server_url, url)


async def _new_project(pool: asyncpg.Pool) -> uuid.UUID:
    async with pool.acquire() as conn:
        return await create_project(conn, await create_account(conn, "det"), "det")


async def _everything(pool: asyncpg.Pool, project: uuid.UUID) -> dict[str, list[Any]]:
    """What a project's append path stored, without its id."""
    out: dict[str, list[Any]] = {
        "changes": [
            tuple(r)
            for r in await pool.fetch(
                "SELECT seq, entity_type, entity_id, hash, change, sender FROM changes "
                "WHERE project_id = $1 ORDER BY seq",
                project,
            )
        ],
        "conflicts": [
            tuple(r)
            for r in await pool.fetch(
                "SELECT conflict_id, kind, entity_ids, fields, details, status, opened_seq, "
                "resolved_seq FROM rm_conflicts WHERE project_id = $1 ORDER BY conflict_id",
                project,
            )
        ],
        "conflict_feed": [
            tuple(r)
            for r in await pool.fetch(
                "SELECT seq, conflict_id FROM conflict_feed WHERE project_id = $1 "
                "ORDER BY seq, conflict_id",
                project,
            )
        ],
        "head": [
            await pool.fetchval("SELECT head_seq FROM log_heads WHERE project_id = $1", project)
        ],
    }
    documents = []
    for r in await pool.fetch(
        "SELECT * FROM documents WHERE project_id = $1 ORDER BY entity_id", project
    ):
        loaded = load_document(r["saved"] + r["tail"])
        values = inspect_document(SCHEMAS[r["entity_type"]], loaded).values
        documents.append(
            (
                r["entity_id"],
                sorted(r["heads"]),
                sorted(loaded.get_heads()),
                r["tail_changes"],
                r["change_count"],
                r["version"],
                r["op_count"],
                values,
            )
        )
    out["documents"] = documents
    for table in read_model_tables():
        rows = await pool.fetch(
            f"SELECT * FROM {table} WHERE project_id = $1 ORDER BY entity_id", project
        )
        out[table] = [{k: v for k, v in r.items() if k != "project_id"} for r in rows]
    return out


async def test_grouped_pushes_store_exactly_what_one_by_one_pushes_store(
    pool: asyncpg.Pool, second_pool: asyncpg.Pool
) -> None:
    scenario = _scenario()
    alone_project = await _new_project(pool)
    alone = ChangeLog(pool)
    alone_answers = [await alone.append(alone_project, p, s) for s, p in scenario]
    grouped_project = await _new_project(second_pool)
    grouped = ChangeLog(second_pool)
    grouped_answers = await asyncio.gather(
        *(grouped.append(grouped_project, p, s) for s, p in scenario)
    )

    assert alone.groups.groups == len(scenario)
    assert grouped.groups.groups == 2
    assert len(await _transactions(second_pool, grouped_project)) == 2
    assert grouped_answers == alone_answers
    assert all(isinstance(r, Accepted) for a in alone_answers for r in a)
    stored = await _everything(pool, alone_project)
    kinds = {row[1] for row in stored["conflicts"]}
    assert kinds == {"concurrent_edit", "deleted_reference", "summoning_outside_activity"}
    assert await _everything(second_pool, grouped_project) == stored


# -- the grouping alone ---------------------------------------------------------------------


class _Recorder:
    """A group runner that records its groups and holds each open until its gate opens."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.gates: list[asyncio.Event] = []

    async def run(self, key: str, items: Sequence[str]) -> list[str]:
        self.groups.append(list(items))
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if "boom" in items:
            raise RuntimeError("the group failed")
        return [f"{key}:{item}" for item in items]


async def _started(*calls: Awaitable[str]) -> list[asyncio.Task[str]]:
    tasks = []
    for call in calls:
        tasks.append(asyncio.ensure_future(call))
        for _ in range(2):  # each in turn reaches the queue, a leader's group starts
            await asyncio.sleep(0)
    return tasks


async def _settled(recorder: _Recorder, tasks: Sequence[asyncio.Task[str]]) -> list[object]:
    opener = asyncio.ensure_future(_open_until_done(recorder, tasks))
    results: list[object] = list(await asyncio.gather(*tasks, return_exceptions=True))
    await opener
    return results


async def _open_until_done(recorder: _Recorder, tasks: Sequence[asyncio.Task[str]]) -> None:
    while not all(task.done() for task in tasks):
        for gate in recorder.gates:
            gate.set()
        await asyncio.sleep(0)


async def test_idle_key_runs_at_once_and_waiters_run_together_in_order() -> None:
    recorder = _Recorder()
    groups: GroupCommit[str, str, str] = GroupCommit(recorder.run)
    tasks = await _started(*(groups.submit("p", item) for item in "abcd"))
    other = await _started(groups.submit("q", "x"))  # another key does not wait
    assert recorder.groups == [["a"], ["x"]]
    assert await _settled(recorder, [*tasks, *other]) == ["p:a", "p:b", "p:c", "p:d", "q:x"]
    assert recorder.groups == [["a"], ["x"], ["b", "c", "d"]]
    assert (groups.groups, groups.grouped) == (3, 3)


async def test_a_failed_group_fails_only_its_own_items() -> None:
    recorder = _Recorder()
    groups: GroupCommit[str, str, str] = GroupCommit(recorder.run)
    tasks = await _started(*(groups.submit("p", item) for item in ("a", "b", "boom")))
    results = await _settled(recorder, tasks)
    assert results[0] == "p:a"
    assert [type(r) for r in results[1:]] == [RuntimeError, RuntimeError]


async def test_a_cancelled_waiter_leaves_its_queue() -> None:
    recorder = _Recorder()
    groups: GroupCommit[str, str, str] = GroupCommit(recorder.run)
    first, gone, kept = await _started(*(groups.submit("p", item) for item in "abc"))
    gone.cancel()
    await asyncio.sleep(0)
    assert await _settled(recorder, [first, kept]) == ["p:a", "p:c"]
    assert gone.cancelled()
    assert recorder.groups == [["a"], ["c"]]


async def test_a_cancelled_leader_still_settles_the_others_of_its_group() -> None:
    recorder = _Recorder()
    groups: GroupCommit[str, str, str] = GroupCommit(recorder.run)
    first, leader, follower = await _started(*(groups.submit("p", item) for item in "abc"))
    recorder.gates[0].set()  # "a" ends; "b" leads the group of "b" and "c"
    assert await first == "p:a"
    for _ in range(3):
        await asyncio.sleep(0)
    assert recorder.groups == [["a"], ["b", "c"]]
    leader.cancel()
    for _ in range(3):
        await asyncio.sleep(0)
    assert not follower.done()  # the group runs on without its leader
    recorder.gates[1].set()
    assert await follower == "p:c"
    with pytest.raises(asyncio.CancelledError):
        await leader
    # The key is free again: the next item runs at once, alone.
    after = await _started(groups.submit("p", "d"))
    assert await _settled(recorder, after) == ["p:d"]
