"""The query port on both storages: each filter, the window, the order, keyset pages that
concatenate to one big query, the seq a page reflects while appends commit, conflicts by
status, and members' sync health as sessions record it."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import create_entity
from fieldsync.query.specs import ActivityQuery, ConflictQuery, MemberQuery, Page, SummoningQuery
from fieldsync.query.window import in_window
from fieldsync.store.errors import UnknownProject
from fieldsync.store.ports import ChangeLogPort, Storage
from fieldsync.store.records import Accepted, ClientSeen
from tests.conflict.helpers import at
from tests.entities import START, activity_values, new_id, summoning_values
from tests.store.contract.conftest import new_member
from tests.store.contract.inspect import Inspector
from tests.store.contract.test_conflicts import Project as ConflictWorld
from tests.store.contract.test_conflicts import activity, summoning

HOUR = timedelta(hours=1)


@dataclass
class Data:
    project: uuid.UUID
    locations: list[str]
    plan: str
    activities: dict[str, dict[str, Any]]  # by entity id: the values written
    summonings: dict[str, dict[str, Any]]
    users: list[str]


async def _append(log: ChangeLogPort, project: uuid.UUID, items: list[EntityChanges]) -> int:
    results = await log.append(project, items, "tester")
    assert all(isinstance(r, Accepted) for r in results), results
    return max(s for r in results if isinstance(r, Accepted) for s in r.seqs)


@pytest.fixture
async def data(storage: Storage, log: ChangeLogPort, project: uuid.UUID) -> Data:
    """40 activities at 3 locations (and one without), some sharing a start, some deleted,
    one of no length and one whose end lies before its start; summonings for 3 users."""
    locations = [new_id() for _ in range(3)]
    plan = new_id()
    users = [str(uuid.uuid4()) for _ in range(3)]
    activities: dict[str, dict[str, Any]] = {}
    summonings: dict[str, dict[str, Any]] = {}
    items = []
    for i in range(40):
        values = activity_values(plan if i % 5 else new_id(), locations[i % 3] if i % 7 else None)
        starts_at = values["starts_at"] = START + (i // 2) * 5 * HOUR  # pairs share a start
        values["ends_at"] = starts_at + (i % 4) * 3 * HOUR  # i % 4 == 0: no length
        if i == 14:
            values["ends_at"] = starts_at - 2 * HOUR  # merged into a broken interval
        values["status"] = ("planned", "confirmed", "done")[i % 3]
        values["deleted"] = i % 9 == 4
        entity_id = new_id()
        activities[entity_id] = values
        items.append(EntityChanges("activity", entity_id, [create_entity("activity", values)[1]]))
        if i % 2 == 0:
            s_values = summoning_values(entity_id, new_id())
            s_values["user_id"] = users[i % 3]
            s_values["starts_at"] = starts_at
            s_values["ends_at"] = starts_at + 2 * HOUR
            s_values["status"] = ("proposed", "confirmed")[i % 4 // 2]
            s_values["deleted"] = i % 10 == 8
            summoning_id = new_id()
            summonings[summoning_id] = s_values
            items.append(
                EntityChanges("summoning", summoning_id, [create_entity("summoning", s_values)[1]])
            )
    await _append(log, project, items)
    return Data(project, locations, plan, activities, summonings, users)


def _expected_activities(data: Data, q: ActivityQuery) -> list[str]:
    found = [
        (v["starts_at"], e)
        for e, v in data.activities.items()
        if (not q.location_ids or v.get("location_id") in q.location_ids)
        and (q.plan_id is None or v["plan_id"] == q.plan_id)
        and (q.status is None or v["status"] == q.status)
        and (q.include_deleted or not v["deleted"])
        and in_window(v["starts_at"], v["ends_at"], q.start, q.end)
    ]
    return [e for _, e in sorted(found)]


async def _all_pages(read: Any, query: Any) -> tuple[list[Any], list[int]]:
    items: list[Any] = []
    seqs = []
    while True:
        page: Page[Any] = await read(query)
        assert len(page.items) <= query.limit
        items.extend(page.items)
        seqs.append(page.seq)
        if not page.more:
            return items, seqs
        last = page.items[-1]
        key = (last.starts_at, last.entity_id) if hasattr(last, "starts_at") else None
        query = replace(query, after=key)


async def test_activities_by_each_filter_in_order(storage: Storage, data: Data) -> None:
    queries = storage.queries
    window = (START + 20 * HOUR, START + 60 * HOUR)
    for q in [
        ActivityQuery(limit=500),
        ActivityQuery(location_ids=(data.locations[0],), limit=500),
        ActivityQuery(location_ids=tuple(data.locations[:2]), limit=500),
        ActivityQuery(plan_id=data.plan, limit=500),
        ActivityQuery(status="done", limit=500),
        ActivityQuery(include_deleted=True, limit=500),
        ActivityQuery(start=window[0], end=window[1], limit=500),
        ActivityQuery(start=window[0], limit=500),
        ActivityQuery(end=window[1], limit=500),
        ActivityQuery(location_ids=(data.locations[1],), status="planned", start=window[0]),
    ]:
        page = await queries.activities(data.project, q)
        assert [a.entity_id for a in page.items] == _expected_activities(data, q), q
        assert not page.more
    one = (await queries.activities(data.project, ActivityQuery(limit=1))).items[0]
    values = data.activities[one.entity_id]
    assert (one.plan_id, one.title, one.status) == (
        values["plan_id"],
        values["title"],
        values["status"],
    )
    assert (one.starts_at, one.ends_at) == (values["starts_at"], values["ends_at"])
    assert (one.tasks_total, one.tasks_done, one.deleted) == (2, 1, False)
    assert one.last_seq >= 1


async def test_the_window_is_an_overlap_with_instants_and_broken_intervals_at_their_start(
    storage: Storage, data: Data
) -> None:
    broken = next(e for e, v in data.activities.items() if v["ends_at"] < v["starts_at"])
    at_start = data.activities[broken]["starts_at"]
    inside = ActivityQuery(start=at_start, end=at_start + HOUR)
    assert broken in [
        a.entity_id for a in (await storage.queries.activities(data.project, inside)).items
    ]
    before = ActivityQuery(start=at_start - 3 * HOUR, end=at_start)
    page = await storage.queries.activities(data.project, before)
    assert broken not in [a.entity_id for a in page.items]
    instant = next(
        e for e, v in data.activities.items() if v["ends_at"] == v["starts_at"] and not v["deleted"]
    )
    moment = data.activities[instant]["starts_at"]
    found = await storage.queries.activities(
        data.project, ActivityQuery(start=moment, end=moment + HOUR)
    )
    assert instant in [a.entity_id for a in found.items]
    found = await storage.queries.activities(
        data.project, ActivityQuery(start=moment - HOUR, end=moment)
    )
    assert instant not in [a.entity_id for a in found.items]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    limit=st.integers(1, 12),
    location=st.sampled_from([None, 0, 1]),
    status=st.sampled_from([None, "planned", "done"]),
    window=st.one_of(st.none(), st.tuples(st.integers(-10, 120), st.integers(1, 80))),
    deleted=st.booleans(),
)
async def test_pages_concatenated_are_the_one_big_query(
    storage: Storage,
    data: Data,
    limit: int,
    location: int | None,
    status: str | None,
    window: tuple[int, int] | None,
    deleted: bool,
) -> None:
    start = end = None
    if window is not None:
        start, end = START + window[0] * HOUR, START + (window[0] + window[1]) * HOUR
    big = ActivityQuery(
        location_ids=() if location is None else (data.locations[location],),
        status=status,
        start=start,
        end=end,
        include_deleted=deleted,
        limit=500,
    )
    whole = (await storage.queries.activities(data.project, big)).items
    paged, _ = await _all_pages(
        lambda q: storage.queries.activities(data.project, q), replace(big, limit=limit)
    )
    assert paged == whole
    assert [a.entity_id for a in whole] == _expected_activities(data, big)


async def test_summonings_by_each_filter(storage: Storage, data: Data) -> None:
    live = {e: v for e, v in data.summonings.items() if not v["deleted"]}
    any_id, any_values = next(iter(live.items()))

    def expected(keep: Any) -> list[str]:
        return [e for _, e in sorted((v["starts_at"], e) for e, v in live.items() if keep(v))]

    window = (START + 10 * HOUR, START + 50 * HOUR)
    for query, keep in [
        (SummoningQuery(limit=500), lambda v: True),
        (SummoningQuery(user_id=data.users[0], limit=500), lambda v: v["user_id"] == data.users[0]),
        (
            SummoningQuery(role_id=any_values["role_id"]),
            lambda v: v["role_id"] == any_values["role_id"],
        ),
        (
            SummoningQuery(activity_id=any_values["activity_id"]),
            lambda v: v["activity_id"] == any_values["activity_id"],
        ),
        (SummoningQuery(status="confirmed", limit=500), lambda v: v["status"] == "confirmed"),
        (
            SummoningQuery(start=window[0], end=window[1], limit=500),
            lambda v: in_window(v["starts_at"], v["ends_at"], *window),
        ),
    ]:
        page = await storage.queries.summonings(data.project, query)
        assert [s.entity_id for s in page.items] == expected(keep), query
    assert any_id in [
        s.entity_id
        for s in (await storage.queries.summonings(data.project, SummoningQuery(limit=500))).items
    ]
    paged, _ = await _all_pages(
        lambda q: storage.queries.summonings(data.project, q), SummoningQuery(limit=3)
    )
    assert [s.entity_id for s in paged] == expected(lambda v: True)


async def test_a_page_reflects_exactly_its_seq_while_appends_commit(
    storage: Storage, log: ChangeLogPort, project: uuid.UUID
) -> None:
    """Each append moves one activity into the window and bumps the head by one: a page
    at seq N holds exactly the activities created by seqs <= N."""
    plan = new_id()
    docs = {}

    async def keep_appending() -> None:
        for i in range(30):
            values = activity_values(plan, day=i % 3)
            entity_id = new_id()
            docs[entity_id] = await _append(
                log,
                project,
                [EntityChanges("activity", entity_id, [create_entity("activity", values)[1]])],
            )
            await asyncio.sleep(0)

    appending = asyncio.create_task(keep_appending())
    seen = set()
    while not appending.done():
        page = await storage.queries.activities(project, ActivityQuery(limit=500))
        assert sorted(a.last_seq for a in page.items) == list(range(1, page.seq + 1))
        seen.add(page.seq)
        await asyncio.sleep(0.002)
    await appending
    assert len(seen) > 2, "pages read while appends went on"


async def test_keyset_pages_neither_repeat_nor_skip_while_other_rows_change(
    storage: Storage, log: ChangeLogPort, data: Data
) -> None:
    """Rows inserted, edited (not in their sort key) or deleted between pages: every row
    present throughout appears once, in order."""
    query = ActivityQuery(limit=4)
    first = await storage.queries.activities(data.project, query)
    items = list(first.items)
    page = first
    n = 0
    while page.more:
        n += 1
        values = activity_values(data.plan)
        values["starts_at"] = START + n * 7 * HOUR
        values["ends_at"] = START + n * 7 * HOUR + HOUR
        await _append(
            log,
            data.project,
            [EntityChanges("activity", new_id(), [create_entity("activity", values)[1]])],
        )
        last = page.items[-1]
        page = await storage.queries.activities(
            data.project, replace(query, after=(last.starts_at, last.entity_id))
        )
        assert page.seq > first.seq
        items.extend(page.items)
    keys = [(a.starts_at, a.entity_id) for a in items]
    assert keys == sorted(set(keys))
    original = set(_expected_activities(data, ActivityQuery()))
    assert original <= {a.entity_id for a in items}


async def test_conflicts_by_status_and_recently_resolved(
    storage: Storage, inspector: Inspector, project: uuid.UUID
) -> None:
    world = ConflictWorld(storage, inspector, project)
    await world.create("location", "north", {"name": "North quarry"})
    await world.create("location", "south", {"name": "South quarry"})
    await world.create("activity", "act-1", activity("north", 8, 14))
    await world.create("activity", "act-2", activity("south", 8, 20))
    await world.create("summoning", "sum-1", summoning("act-1", "user-1", 9, 12))
    await world.create("summoning", "sum-2", summoning("act-2", "user-1", 16, 18))
    await world.create("summoning", "sum-3", summoning("act-2", "user-2", 16, 18))
    await world.create("summoning", "sum-4", summoning("act-1", "user-2", 9, 12))
    ana = world.device(1)
    first = await world.send("ana", ana, "sum-2", {"starts_at": at(11)})
    second = await world.send("ana", ana, "sum-3", {"starts_at": at(10)})
    queries = storage.queries

    async def ids(q: ConflictQuery) -> list[tuple[str, int, int | None]]:
        page = await queries.conflicts(project, q)
        return [(c.status, c.opened_seq, c.resolved_seq) for c in page.items]

    assert await ids(ConflictQuery()) == [("open", first, None), ("open", second, None)]
    resolved = await world.send("ana", ana, "sum-2", {"starts_at": at(12)})
    assert await ids(ConflictQuery()) == [("open", second, None)]
    assert await ids(ConflictQuery(("resolved",))) == [("resolved", first, resolved)]
    everything = await ids(ConflictQuery(("open", "resolved")))
    assert everything == [("resolved", first, resolved), ("open", second, None)]
    assert await ids(ConflictQuery(("resolved",), resolved_after=resolved)) == []
    assert await ids(ConflictQuery(("resolved",), resolved_after=resolved - 1)) == [
        ("resolved", first, resolved)
    ]
    assert await ids(ConflictQuery(("open", "resolved"), resolved_after=resolved)) == [
        ("open", second, None)
    ]
    [row] = (await queries.conflicts(project, ConflictQuery(limit=1))).items
    assert (row.kind, row.fields, row.details["values"]["user_id"]) == (
        "double_booking",
        row.fields,
        "user-2",
    )
    assert sorted(row.entity_ids) == sorted(
        world.id(n) for n in ("act-1", "act-2", "sum-3", "sum-4")
    )
    page = await queries.conflicts(project, ConflictQuery(("open", "resolved"), limit=1))
    assert page.more
    assert page.seq == resolved
    rest = await queries.conflicts(
        project,
        ConflictQuery(
            ("open", "resolved"), after=(page.items[0].opened_seq, page.items[0].conflict_id)
        ),
    )
    assert [c.opened_seq for c in rest.items] == [second]
    assert not rest.more


async def test_member_health_from_recorded_sessions(storage: Storage, project: uuid.UUID) -> None:
    lead = await new_member(storage, project, "lead")
    viewer = await new_member(storage, project, "viewer")
    quiet = await new_member(storage, project, "specialist")
    gone = await new_member(storage, project, "specialist")
    await storage.admin.remove_member(project, gone)
    now = datetime.now(UTC).replace(microsecond=0)
    early, late = now - timedelta(minutes=10), now - timedelta(minutes=1)
    port = storage.sync_health
    await port.record(
        [
            ClientSeen(project, lead, "tablet", "py/1", 1500, early, early, True),
            ClientSeen(project, lead, "phone", "ts/2", None, late, late, True),
            ClientSeen(project, viewer, "laptop", None, 0, late, now, False),
            ClientSeen(project, gone, "tablet", "py/1", 0, late, late, True),  # not a member
            ClientSeen(uuid.uuid4(), lead, "tablet", "py/1", 0, late, late, True),  # no project
        ]
    )
    # A late record of an older session changes nothing; the same session moves on.
    await port.record([ClientSeen(project, lead, "phone", "ts/1", 9, early, now, False)])
    await port.record([ClientSeen(project, lead, "tablet", "py/1", 1500, early, now, False)])
    page = await storage.queries.member_health(project, MemberQuery(now - timedelta(minutes=5)))
    by_user = {m.user_id: m for m in page.items}
    assert [m.user_id for m in page.items] == sorted(str(u) for u in (lead, viewer, quiet))
    one = by_user[str(lead)]
    assert (one.level, one.connected, one.last_seen_at) == ("lead", True, now)
    assert (one.client_id, one.client_version, one.outbox_age_ms) == ("phone", "ts/2", None)
    assert one.display_name.startswith("lead ")
    two = by_user[str(viewer)]
    assert (two.connected, two.last_seen_at, two.client_id, two.outbox_age_ms) == (
        False,
        now,
        "laptop",
        0,
    )
    three = by_user[str(quiet)]
    assert (three.connected, three.last_seen_at, three.client_id) == (False, None, None)
    # Connected only while recently seen: a process that died cannot say its session ended.
    stale = await storage.queries.member_health(project, MemberQuery(now + timedelta(minutes=1)))
    assert not any(m.connected for m in stale.items)
    first = await storage.queries.member_health(project, MemberQuery(now, limit=2))
    assert first.more
    rest = await storage.queries.member_health(
        project, MemberQuery(now, after=(first.items[-1].user_id,), limit=2)
    )
    assert [m.user_id for m in first.items + rest.items] == [m.user_id for m in page.items]


async def test_an_unknown_project(storage: Storage) -> None:
    nobody = uuid.uuid4()
    with pytest.raises(UnknownProject):
        await storage.queries.activities(nobody, ActivityQuery())
    with pytest.raises(UnknownProject):
        await storage.queries.summonings(nobody, SummoningQuery())
    with pytest.raises(UnknownProject):
        await storage.queries.conflicts(nobody, ConflictQuery())
    with pytest.raises(UnknownProject):
        await storage.queries.member_health(nobody, MemberQuery(datetime.now(UTC)))


async def test_an_empty_project_is_at_seq_zero(storage: Storage, project: uuid.UUID) -> None:
    page = await storage.queries.activities(project, ActivityQuery())
    assert (page.seq, page.items, page.more) == (0, [], False)
