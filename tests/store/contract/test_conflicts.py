"""The conflicts read model in the real append path: one test per kind, each showing the
detection, the record's content and its resolution by a later ordinary change, with the
feed entries clients are sent and a rebuild giving the same rows."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from fieldsync.model.merge import EntityChanges
from fieldsync.store.ports import Storage
from fieldsync.store.records import Accepted
from tests.conflict.helpers import Device, Entity, at, create
from tests.store.contract.inspect import Inspector


@dataclass
class Row:
    conflict_id: str
    kind: str
    entity_ids: list[str]
    fields: list[str]
    details: dict[str, Any]
    status: str
    opened_seq: int
    resolved_seq: int | None


class Project:
    """A project on a real storage, with entity ids unique to the test."""

    def __init__(self, storage: Storage, inspector: Inspector, project_id: uuid.UUID) -> None:
        self.storage = storage
        self.inspector = inspector
        self.project_id = project_id
        self.log = storage.change_log()
        self.suffix = uuid.uuid4().hex[:8]
        self.entities: dict[str, Entity] = {}

    def id(self, name: str) -> str:
        return f"{name}-{self.suffix}"

    async def create(self, entity_type: str, name: str, values: Mapping[str, object]) -> Entity:
        entity = create(entity_type, self.id(name), self._ids(values))
        self.entities[name] = entity
        await self.push("lead", entity, entity.changes)
        return entity

    def device(self, number: int) -> Device:
        return Device(number, self.entities.values())

    async def send(
        self, sender: str, device: Device, name: str, values: Mapping[str, object]
    ) -> int:
        """One edit made on ``device`` and pushed at once; returns its seq."""
        change = device.edit(self.id(name), self._ids(values))
        return await self.push(sender, self.entities[name], [change])

    async def push(self, sender: str, entity: Entity, changes: list[bytes]) -> int:
        [result] = await self.log.append(
            self.project_id, [EntityChanges(entity.entity_type, entity.entity_id, changes)], sender
        )
        assert isinstance(result, Accepted), result
        return result.seqs[-1]

    async def rows(self) -> list[Row]:
        records = (await self.inspector.state(self.project_id)).conflicts
        return [
            Row(
                r.conflict_id,
                r.kind,
                list(r.entity_ids),
                list(r.fields),
                dict(r.details),
                r.status,
                r.opened_seq,
                r.resolved_seq,
            )
            for r in sorted(records, key=lambda r: (r.opened_seq, r.conflict_id))
        ]

    async def only(self) -> Row:
        [row] = await self.rows()
        return row

    async def assert_only_row_resolved_at(self, seq: int) -> None:
        row = await self.only()
        assert (row.status, row.resolved_seq) == ("resolved", seq)

    async def fed(self, after: int, upto: int) -> list[tuple[int, str, str]]:
        """The conflict updates a client relayed through (after, upto] is sent."""
        piece = await self.log.read_since(self.project_id, after, upto - after)
        assert piece.last_seq == upto
        updates = piece.conflicts
        return [
            (u.seq, u.conflict_id, u.row.status if u.row is not None else "removed")
            for u in updates
        ]

    async def assert_rebuild_gives_the_same_rows(self) -> None:
        before = await self.inspector.state(self.project_id)
        report = await self.storage.maintenance.rebuild_read_models(self.project_id)
        assert report.consistent, str(report)
        assert not report.conflicts_rewritten, str(report)
        assert await self.inspector.state(self.project_id) == before

    def _ids(self, values: Mapping[str, object]) -> dict[str, object]:
        """References written as logical names become this test's entity ids."""
        return {
            key: self.id(value)
            if key.endswith("_id") and key != "user_id" and isinstance(value, str)
            else value
            for key, value in values.items()
        }


@pytest.fixture
def world(storage: Storage, inspector: Inspector, project: uuid.UUID) -> Project:
    return Project(storage, inspector, project)


def activity(location: str | None, start: float, end: float) -> dict[str, object]:
    values: dict[str, object] = {
        "plan_id": "plan",
        "title": "Core sampling",
        "description": "Take cores.",
        "tasks": [],
        "starts_at": at(start),
        "ends_at": at(end),
        "status": "planned",
    }
    if location is not None:
        values["location_id"] = location
    return values


def summoning(activity_name: str, user: str, start: float, end: float) -> dict[str, object]:
    return {
        "activity_id": activity_name,
        "user_id": user,
        "starts_at": at(start),
        "ends_at": at(end),
        "status": "confirmed",
    }


async def test_text_replaced_whole_on_two_devices_is_a_concurrent_edit(world: Project) -> None:
    entity = await world.create("activity", "act", activity(None, 8, 14))
    ana, ben, lead = world.device(1), world.device(2), world.device(3)
    act = world.id("act")
    await world.push("user-ana", entity, [ana.put_text_object(act, "description", "North.")])
    south = await world.push(
        "user-ben", entity, [ben.put_text_object(act, "description", "South.")]
    )

    row = await world.only()
    assert (row.kind, row.status, row.fields) == ("concurrent_edit", "open", ["description"])
    assert row.opened_seq == south
    assert row.details["values"] == {"kept": "South.", "candidates": ["South.", "North."]}
    assert [c["user"] for c in row.details["changes"]] == ["user-ben", "user-ana"]

    lead.sync_from(ana)
    lead.sync_from(ben)
    chosen = await world.push(
        "lead", entity, [lead.put_text_object(act, "description", "North, then south.")]
    )
    await world.assert_only_row_resolved_at(chosen)
    await world.assert_rebuild_gives_the_same_rows()


async def test_concurrent_edit_keeps_the_lost_value_and_names_who_wrote_it(world: Project) -> None:
    await world.create("activity", "act", activity(None, 8, 14))
    ana, ben = world.device(1), world.device(2)
    north = await world.send("user-ana", ana, "act", {"title": "North trench"})
    south = await world.send("user-ben", ben, "act", {"title": "South trench"})

    row = await world.only()
    assert (row.kind, row.status, row.fields) == ("concurrent_edit", "open", ["title"])
    assert row.entity_ids == [world.id("act")]
    assert row.opened_seq == south == north + 1
    # Automerge shows the value of the highest (counter, actor): ben's actor is 0x02...
    assert row.details["values"] == {
        "kept": "South trench",
        "candidates": ["South trench", "North trench"],
    }
    assert [c["user"] for c in row.details["changes"]] == ["user-ben", "user-ana"]
    assert row.details["resolution"] is not None
    assert await world.fed(0, south) == [(south, row.conflict_id, "open")]

    lead = world.device(3)
    lead.sync_from(ana)
    lead.sync_from(ben)
    chosen = await world.send("user-lead", lead, "act", {"title": "North trench"})

    resolved = await world.only()
    assert (resolved.conflict_id, resolved.status) == (row.conflict_id, "resolved")
    assert resolved.resolved_seq == chosen
    assert resolved.details == row.details
    assert await world.fed(south, chosen) == [(chosen, row.conflict_id, "resolved")]
    await world.assert_rebuild_gives_the_same_rows()


async def test_two_valid_moves_merging_into_a_broken_interval(world: Project) -> None:
    await world.create("activity", "act", activity(None, 8, 14))
    ana, ben = world.device(1), world.device(2)
    await world.send("user-ana", ana, "act", {"starts_at": at(13)})
    broke = await world.send("user-ben", ben, "act", {"ends_at": at(10)})

    row = await world.only()
    assert (row.kind, row.status, row.opened_seq) == ("broken_interval", "open", broke)
    assert row.fields == ["ends_at", "starts_at"]
    assert row.details["resolution"] is None  # a lead decides
    shown = await world.inspector.read_model("activity", world.id("act"))
    assert shown is not None
    assert shown["starts_at"] > shown["ends_at"]

    lead = world.device(3)
    lead.sync_from(ana)
    lead.sync_from(ben)
    fixed = await world.send("user-lead", lead, "act", {"ends_at": at(16)})
    await world.assert_only_row_resolved_at(fixed)
    await world.assert_rebuild_gives_the_same_rows()


async def test_an_edit_concurrent_with_a_deletion_is_kept_and_reported(world: Project) -> None:
    await world.create("activity", "act", activity(None, 8, 14))
    ana, ben = world.device(1), world.device(2)
    await world.send("user-ana", ana, "act", {"deleted": True})
    edited = await world.send("user-ben", ben, "act", {"title": "Core sampling, north"})

    row = await world.only()
    assert (row.kind, row.status, row.opened_seq) == ("edit_to_deleted", "open", edited)
    assert row.fields == ["deleted", "title"]
    assert row.details["values"]["edited"] == {"title": "Core sampling, north"}
    stored = await world.inspector.read_model("activity", world.id("act"))
    assert stored is not None
    assert (stored["title"], stored["deleted"]) == ("Core sampling, north", True)

    lead = world.device(3)
    lead.sync_from(ana)
    lead.sync_from(ben)
    restored = await world.send("user-lead", lead, "act", {"deleted": False})
    await world.assert_only_row_resolved_at(restored)
    await world.assert_rebuild_gives_the_same_rows()


async def test_an_activity_at_a_deleted_location(world: Project) -> None:
    await world.create("location", "loc", {"name": "North quarry"})
    await world.create("activity", "act", activity("loc", 8, 14))
    ana = world.device(1)
    deleted = await world.send("user-ana", ana, "loc", {"deleted": True})

    row = await world.only()
    assert (row.kind, row.status, row.opened_seq) == ("deleted_reference", "open", deleted)
    assert sorted(row.entity_ids) == sorted([world.id("act"), world.id("loc")])
    assert row.fields == ["location_id"]

    restored = await world.send("user-ana", ana, "loc", {"deleted": False})
    await world.assert_only_row_resolved_at(restored)
    await world.assert_rebuild_gives_the_same_rows()


async def two_places(world: Project, second: dict[str, object]) -> None:
    """Activities at two locations, user-1 summoned to the first 09:00-12:00."""
    await world.create("location", "north", {"name": "North quarry"})
    await world.create("location", "south", {"name": "South quarry"})
    await world.create("activity", "act-1", activity("north", 8, 14))
    await world.create("activity", "act-2", activity("south", 8, 20))
    await world.create("summoning", "sum-1", summoning("act-1", "user-1", 9, 12))
    await world.create("summoning", "sum-2", second)


async def test_one_user_summoned_to_two_places_at_once(world: Project) -> None:
    await two_places(world, summoning("act-2", "user-1", 16, 18))
    assert await world.rows() == []
    ana = world.device(1)

    overlap = await world.send("user-ana", ana, "sum-2", {"starts_at": at(11)})
    row = await world.only()
    assert (row.kind, row.status, row.opened_seq) == ("double_booking", "open", overlap)
    assert sorted(row.entity_ids) == sorted(
        world.id(n) for n in ("act-1", "act-2", "sum-1", "sum-2")
    )
    assert row.details["values"]["user_id"] == "user-1"
    assert await world.fed(overlap - 1, overlap) == [(overlap, row.conflict_id, "open")]

    moved = await world.send("user-ana", ana, "sum-2", {"starts_at": at(12)})
    await world.assert_only_row_resolved_at(moved)
    again = await world.send("user-ana", ana, "sum-2", {"starts_at": at(10)})
    reopened = await world.only()
    assert (reopened.conflict_id, reopened.status) == (row.conflict_id, "open")
    assert (reopened.opened_seq, reopened.resolved_seq) == (again, None)
    await world.assert_rebuild_gives_the_same_rows()


async def test_a_summoning_left_outside_its_moved_activity(world: Project) -> None:
    await world.create("activity", "act", activity(None, 0, 6))
    await world.create("summoning", "sum", summoning("act", "user-1", 1, 3))
    ana = world.device(1)
    await world.send("user-ana", ana, "act", {"ends_at": at(30)})
    moved = await world.send("user-ana", ana, "act", {"starts_at": at(24)})

    row = await world.only()
    assert (row.kind, row.status, row.opened_seq) == ("summoning_outside_activity", "open", moved)
    assert sorted(row.entity_ids) == sorted([world.id("act"), world.id("sum")])

    followed = await world.send("user-ana", ana, "sum", {"starts_at": at(25)})
    await world.assert_only_row_resolved_at(followed)
    await world.assert_rebuild_gives_the_same_rows()


async def test_a_third_value_replaces_the_two_value_record_and_clients_hear_of_it(
    world: Project,
) -> None:
    await world.create("activity", "act", activity(None, 8, 14))
    ana, ben, cem = world.device(1), world.device(2), world.device(3)
    await world.send("user-ana", ana, "act", {"title": "North"})
    two = await world.send("user-ben", ben, "act", {"title": "South"})
    first = await world.only()
    three = await world.send("user-cem", cem, "act", {"title": "East"})

    wider = await world.only()
    assert wider.conflict_id != first.conflict_id
    assert sorted(wider.details["values"]["candidates"]) == ["East", "North", "South"]
    assert await world.fed(two, three) == sorted(
        [(three, first.conflict_id, "removed"), (three, wider.conflict_id, "open")]
    )
    await world.assert_rebuild_gives_the_same_rows()


async def test_pushes_in_one_batch_see_each_other(world: Project) -> None:
    """Two entities moved in one push: the second is checked against the first's new row."""
    await two_places(world, summoning("act-2", "user-2", 9, 12))
    ana = world.device(1)
    first = ana.edit(world.id("sum-1"), {"user_id": "user-3"})
    second = ana.edit(world.id("sum-2"), {"user_id": "user-3"})
    results = await world.log.append(
        world.project_id,
        [
            EntityChanges("summoning", world.id("sum-1"), [first]),
            EntityChanges("summoning", world.id("sum-2"), [second]),
        ],
        "user-ana",
    )
    assert all(isinstance(r, Accepted) for r in results)
    row = await world.only()
    assert (row.kind, row.details["values"]["user_id"]) == ("double_booking", "user-3")
    await world.assert_rebuild_gives_the_same_rows()
