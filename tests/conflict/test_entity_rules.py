"""Single-entity rules on real documents: offline devices, merges, and later resolutions."""

from __future__ import annotations

import json

from automerge.core import ROOT, Document, ObjType, ScalarType

from fieldsync.conflict.entity import (
    CONCURRENT_EDIT_RESOLUTION,
    EDIT_TO_DELETED_RESOLUTION,
    entity_conflicts,
    open_conflicts,
    resolved_by,
    still_open,
)
from fieldsync.conflict.ledger import OPEN, RESOLVED
from fieldsync.conflict.records import ChangeRef, Conflict, ConflictKind
from fieldsync.model.changes import parse_change
from fieldsync.model.writer import insert_list_item, splice_text
from tests.conflict.helpers import (
    Device,
    Entity,
    ProjectSim,
    actor,
    at,
    create,
    headers,
    merged_doc,
)

ACT = "act-1"
PLAN = "plan-1"


def activity() -> Entity:
    return create(
        "activity",
        ACT,
        {
            "plan_id": PLAN,
            "title": "Core sampling",
            "description": "Take three cores.",
            "tasks": [{"title": "Calibrate drill", "done": False}],
            "location_id": "loc-1",
            "starts_at": at(0),
            "ends_at": at(6),
            "status": "planned",
        },
    )


def devices(entity: Entity, count: int) -> list[Device]:
    return [Device(n, [entity]) for n in range(1, count + 1)]


def merge_all(entity: Entity, *sources: Device) -> Document:
    changes = list(entity.changes)
    for device in sources:
        changes += device.changes_since(entity)
    return merged_doc(changes)


def only(conflicts: tuple[Conflict, ...], kind: ConflictKind) -> Conflict:
    found = [c for c in conflicts if c.kind is kind]
    assert len(found) == 1, conflicts
    return found[0]


def ref(change: bytes, number: int) -> ChangeRef:
    return ChangeRef(parse_change(change).hash.hex(), actor(number).hex())


# -- concurrent same-field edits --------------------------------------------------------


def test_concurrent_edits_of_one_field_keep_both_values() -> None:
    entity = activity()
    one, two = devices(entity, 2)
    north = one.edit(ACT, {"title": "North trench"})
    south = two.edit(ACT, {"title": "South trench"})

    doc = merge_all(entity, one, two)
    conflict = only(open_conflicts("activity", ACT, doc), ConflictKind.CONCURRENT_EDIT)

    # Equal counters: the greater actor id (device 2) wins, and the record says so.
    assert doc.get(ROOT, "title")[0][1] == "South trench"  # type: ignore[index]
    assert conflict.entity_ids == (ACT,)
    assert conflict.fields == ("title",)
    assert conflict.values == {
        "kept": "South trench",
        "candidates": ["South trench", "North trench"],
    }
    assert conflict.changes == (ref(south, 2), ref(north, 1))
    assert conflict.resolution == CONCURRENT_EDIT_RESOLUTION
    assert not conflict.needs_lead
    assert json.loads(json.dumps(conflict.details()))["values"]["kept"] == "South trench"


def test_sequential_edits_of_one_field_are_no_conflict() -> None:
    entity = activity()
    one, two = devices(entity, 2)
    one.edit(ACT, {"title": "North trench", "status": "confirmed"})
    two.sync_from(one)
    two.edit(ACT, {"title": "South trench", "starts_at": at(1)})

    assert open_conflicts("activity", ACT, merge_all(entity, one, two)) == ()


def test_the_same_value_written_twice_is_no_conflict() -> None:
    entity = activity()
    one, two = devices(entity, 2)
    one.edit(ACT, {"status": "confirmed"})
    two.edit(ACT, {"status": "confirmed"})

    assert open_conflicts("activity", ACT, merge_all(entity, one, two)) == ()


def test_text_and_list_edits_merge_without_conflict() -> None:
    entity = activity()
    one, two = devices(entity, 2)
    one.made[ACT].append(splice_text(one.docs[ACT], "description", 0, 0, "North: "))
    two.made[ACT].append(splice_text(two.docs[ACT], "description", 0, 0, "South: "))
    item = {"title": "Label jars", "done": False}
    one.made[ACT].append(insert_list_item(one.docs[ACT], "activity", "tasks", 0, item))
    two.made[ACT].append(insert_list_item(two.docs[ACT], "activity", "tasks", 1, item))

    assert open_conflicts("activity", ACT, merge_all(entity, one, two)) == ()


def test_three_concurrent_values_are_one_conflict() -> None:
    entity = activity()
    one, two, three = devices(entity, 3)
    one.edit(ACT, {"location_id": "loc-1b"})
    two.edit(ACT, {"location_id": "loc-2"})
    three.edit(ACT, {"location_id": "loc-3"})

    conflict = only(
        open_conflicts("activity", ACT, merge_all(entity, one, two, three)),
        ConflictKind.CONCURRENT_EDIT,
    )

    assert conflict.fields == ("location_id",)
    assert conflict.values["candidates"] == ["loc-3", "loc-2", "loc-1b"]
    assert [c.actor for c in conflict.changes] == [actor(n).hex() for n in (3, 2, 1)]


def test_concurrent_timestamps_are_recorded_as_iso_strings() -> None:
    entity = activity()
    one, two = devices(entity, 2)
    one.edit(ACT, {"starts_at": at(1)})
    two.edit(ACT, {"starts_at": at(2)})

    conflict = only(
        open_conflicts("activity", ACT, merge_all(entity, one, two)),
        ConflictKind.CONCURRENT_EDIT,
    )

    assert conflict.values["candidates"] == [at(2).isoformat(), at(1).isoformat()]


def test_string_fields_written_as_text_objects_conflict_when_replaced_concurrently() -> None:
    # JavaScript Automerge 3 writes strings as Text objects; the schema accepts that.
    entity = activity()
    one, two = devices(entity, 2)
    for device, title in ((one, "North"), (two, "South")):
        doc = device.docs[ACT]
        heads = doc.get_heads()
        with doc.transaction() as tx:
            text = tx.put_object(ROOT, "title", ObjType.Text)
            tx.splice_text(text, 0, 0, title)  # type: ignore[attr-defined]
        assert doc.get_heads() != heads
        change = doc.get_last_local_change()
        assert change is not None
        device.made[ACT].append(change.bytes)

    conflict = only(
        open_conflicts("activity", ACT, merge_all(entity, one, two)),
        ConflictKind.CONCURRENT_EDIT,
    )

    assert conflict.values["candidates"] == ["South", "North"]


def test_text_fields_replaced_whole_concurrently_keep_both_values() -> None:
    entity = activity()
    one, two = devices(entity, 2)
    north = one.put_text_object(ACT, "description", "Cores at the north trench.")
    south = two.put_text_object(ACT, "description", "Cores at the south trench.")

    doc = merge_all(entity, one, two)
    conflict = only(open_conflicts("activity", ACT, doc), ConflictKind.CONCURRENT_EDIT)

    assert conflict.fields == ("description",)
    assert conflict.values == {
        "kept": "Cores at the south trench.",
        "candidates": ["Cores at the south trench.", "Cores at the north trench."],
    }
    assert conflict.changes == (ref(south, 2), ref(north, 1))


def test_writing_the_text_again_after_seeing_both_resolves_it() -> None:
    entity = activity()
    one, two, lead = devices(entity, 3)
    one.put_text_object(ACT, "description", "North.")
    two.put_text_object(ACT, "description", "South.")
    lead.sync_from(one)
    lead.sync_from(two)
    before = open_conflicts("activity", ACT, lead.docs[ACT])
    assert [c.fields for c in before] == [("description",)]
    choice = lead.put_text_object(ACT, "description", "North, then south.")

    doc = merge_all(entity, one, two, lead)

    assert open_conflicts("activity", ACT, doc) == ()
    assert resolved_by("activity", ACT, doc, parse_change(choice)) == before


def test_choosing_a_value_resolves_the_conflict() -> None:
    entity = activity()
    one, two, lead = devices(entity, 3)
    one.edit(ACT, {"title": "North trench"})
    two.edit(ACT, {"title": "South trench"})
    lead.sync_from(one)
    lead.sync_from(two)
    before = open_conflicts("activity", ACT, lead.docs[ACT])
    choice = lead.edit(ACT, {"title": "North trench"})  # restores the value that lost

    doc = merge_all(entity, one, two, lead)

    assert open_conflicts("activity", ACT, doc) == ()
    assert resolved_by("activity", ACT, doc, parse_change(choice)) == before
    assert doc.get(ROOT, "title")[0][1] == "North trench"  # type: ignore[index]
    assert still_open(before[0], "activity", merge_all(entity, one, two))
    assert not still_open(before[0], "activity", doc)


def test_confirming_the_kept_value_resolves_the_conflict_too() -> None:
    entity = activity()
    one, two, lead = devices(entity, 3)
    one.edit(ACT, {"title": "North trench"})
    two.edit(ACT, {"title": "South trench"})
    lead.sync_from(one)
    lead.sync_from(two)
    confirm = lead.edit(ACT, {"title": "South trench"})  # a real op: the key is in conflict

    doc = merge_all(entity, one, two, lead)

    assert open_conflicts("activity", ACT, doc) == ()
    resolved = resolved_by("activity", ACT, doc, parse_change(confirm))
    assert [c.kind for c in resolved] == [ConflictKind.CONCURRENT_EDIT]


def test_a_third_concurrent_value_supersedes_the_two_value_conflict() -> None:
    entity = activity()
    one, two, three = devices(entity, 3)
    one.edit(ACT, {"status": "confirmed"})
    two.edit(ACT, {"status": "done"})
    three.edit(ACT, {"status": "cancelled"})
    two_way = merge_all(entity, one, two)
    three_way = merge_all(entity, one, two, three)

    result = entity_conflicts(
        "activity", ACT, two_way, three_way, headers(three.changes_since(entity))
    )

    (earlier,) = open_conflicts("activity", ACT, two_way)
    (now,) = result.open
    assert result.superseded == (earlier.conflict_id,)
    assert len(now.values["candidates"]) == 3  # type: ignore[arg-type]
    assert result.resolved == ()


# -- broken intervals -------------------------------------------------------------------


def test_two_valid_moves_that_merge_into_a_broken_interval() -> None:
    entity = activity()  # 0h - 6h
    one, two = devices(entity, 2)
    later_start = one.edit(ACT, {"starts_at": at(5)})  # 5h - 6h: valid
    earlier_end = two.edit(ACT, {"ends_at": at(2)})  # 0h - 2h: valid

    conflict = only(
        open_conflicts("activity", ACT, merge_all(entity, one, two)),
        ConflictKind.BROKEN_INTERVAL,
    )

    assert conflict.fields == ("ends_at", "starts_at")
    assert conflict.values == {"starts_at": at(5).isoformat(), "ends_at": at(2).isoformat()}
    assert conflict.changes == (ref(later_start, 1), ref(earlier_end, 2))
    assert conflict.needs_lead


def test_an_interval_one_client_broke_is_not_a_merge_conflict() -> None:
    entity = activity()
    one, two = devices(entity, 2)
    one.edit(ACT, {"starts_at": at(5)})
    two.sync_from(one)
    two.edit(ACT, {"ends_at": at(2)})  # saw the new start and broke it anyway
    alone = Device(3, [entity])
    alone.edit(ACT, {"ends_at": at(-1)})

    for doc in (merge_all(entity, one, two), merge_all(entity, alone)):
        kinds = {c.kind for c in open_conflicts("activity", ACT, doc)}
        assert ConflictKind.BROKEN_INTERVAL not in kinds


def test_moving_an_end_resolves_the_broken_interval() -> None:
    entity = activity()
    one, two, lead = devices(entity, 3)
    one.edit(ACT, {"starts_at": at(5)})
    two.edit(ACT, {"ends_at": at(2)})
    lead.sync_from(one)
    lead.sync_from(two)
    fix = lead.edit(ACT, {"ends_at": at(8)})

    doc = merge_all(entity, one, two, lead)

    assert open_conflicts("activity", ACT, doc) == ()
    (resolved,) = resolved_by("activity", ACT, doc, parse_change(fix))
    assert resolved.kind is ConflictKind.BROKEN_INTERVAL


def test_summonings_get_broken_intervals_too() -> None:
    summoning = create(
        "summoning",
        "sum-1",
        {
            "activity_id": ACT,
            "user_id": "user-1",
            "starts_at": at(0),
            "ends_at": at(4),
            "status": "proposed",
        },
    )
    one, two = Device(1, [summoning]), Device(2, [summoning])
    one.edit("sum-1", {"starts_at": at(3)})
    two.edit("sum-1", {"ends_at": at(1)})

    doc = merged_doc(
        summoning.changes + one.changes_since(summoning) + two.changes_since(summoning)
    )

    only(open_conflicts("summoning", "sum-1", doc), ConflictKind.BROKEN_INTERVAL)


# -- edits concurrent with a deletion -----------------------------------------------------


def test_an_edit_concurrent_with_the_deletion_is_kept_and_the_entity_stays_deleted() -> None:
    entity = activity()
    one, two = devices(entity, 2)
    deletion = one.edit(ACT, {"deleted": True})
    edit = two.edit(ACT, {"title": "Core sampling, north", "status": "confirmed"})

    doc = merge_all(entity, one, two)
    conflict = only(open_conflicts("activity", ACT, doc), ConflictKind.EDIT_TO_DELETED)

    assert conflict.fields == ("deleted", "status", "title")
    assert conflict.values == {
        "deleted": True,
        "edited": {"status": "confirmed", "title": "Core sampling, north"},
    }
    assert conflict.changes == (ref(deletion, 1), ref(edit, 2))
    assert conflict.resolution == EDIT_TO_DELETED_RESOLUTION
    assert doc.get(ROOT, "deleted")[0][1] is True  # type: ignore[index]
    assert doc.get(ROOT, "title")[0][1] == "Core sampling, north"  # type: ignore[index]


def test_an_edit_after_seeing_the_deletion_is_no_conflict() -> None:
    entity = activity()
    one, two = devices(entity, 2)
    one.edit(ACT, {"deleted": True})
    two.sync_from(one)
    two.edit(ACT, {"title": "Edited while deleted"})

    assert open_conflicts("activity", ACT, merge_all(entity, one, two)) == ()


def test_restoring_or_confirming_the_deletion_resolves_it() -> None:
    for confirm in (False, True):
        entity = activity()
        one, two, lead = devices(entity, 3)
        one.edit(ACT, {"deleted": True})
        two.edit(ACT, {"title": "Core sampling, north"})
        lead.sync_from(one)
        lead.sync_from(two)
        if confirm:  # writing deleted again (false then true, one change) keeps it deleted
            doc = lead.docs[ACT]
            with doc.transaction() as tx:
                tx.put(ROOT, "deleted", ScalarType.Boolean, False)
                tx.put(ROOT, "deleted", ScalarType.Boolean, True)
            last = doc.get_last_local_change()
            assert last is not None
            change = last.bytes
            lead.made[ACT].append(change)
        else:
            change = lead.edit(ACT, {"deleted": False})

        doc = merge_all(entity, one, two, lead)

        assert open_conflicts("activity", ACT, doc) == ()
        (resolved,) = resolved_by("activity", ACT, doc, parse_change(change))
        assert resolved.kind is ConflictKind.EDIT_TO_DELETED
        assert doc.get(ROOT, "deleted")[0][1] is confirm  # type: ignore[index]


# -- through the ledger ---------------------------------------------------------------------


def test_ledger_rows_open_then_resolved_with_seqs_from_the_log() -> None:
    entity = activity()
    one, two, lead = devices(entity, 3)
    north = one.edit(ACT, {"title": "North trench"})
    south = two.edit(ACT, {"title": "South trench"})
    sim = ProjectSim()
    sim.append([("activity", ACT, entity.changes)])
    sim.append([("activity", ACT, [north])])
    sim.append([("activity", ACT, [south])])

    (row,) = sim.ledger.rows.values()
    assert (row.kind, row.status, row.opened_seq, row.resolved_seq) == (
        "concurrent_edit",
        OPEN,
        3,
        None,
    )
    assert row.entity_ids == (ACT,)
    assert row.fields == ("title",)

    lead.sync_from(one)
    lead.sync_from(two)
    sim.append([("activity", ACT, [lead.edit(ACT, {"title": "Trench 4"})])])

    (row,) = sim.ledger.rows.values()
    assert (row.status, row.opened_seq, row.resolved_seq) == (RESOLVED, 3, 4)
    assert sim.rebuild().rows == sim.ledger.rows


def test_same_conflicts_whatever_order_and_batching() -> None:
    entity = activity()
    one, two, three = devices(entity, 3)
    one.edit(ACT, {"title": "North", "starts_at": at(5)})
    two.edit(ACT, {"title": "South", "ends_at": at(2), "deleted": True})
    three.edit(ACT, {"status": "done"})
    three.sync_from(one)
    three.edit(ACT, {"title": "North (checked)"})
    pushes = [
        ("one", one.changes_since(entity)),
        ("two", two.changes_since(entity)),
        ("three", three.changes_since(entity)),
    ]
    outcomes = []
    for order in ((0, 1, 2), (1, 0, 2), (1, 2, 0), (2, 1, 0)):
        sim = ProjectSim()
        sim.append([("activity", ACT, entity.changes)])
        for index in order:
            sim.append([("activity", ACT, pushes[index][1])])
        assert sim.rebuild().rows == sim.ledger.rows
        outcomes.append(
            {key: (row.status, row.details) for key, row in sim.ledger.rows.items()}
        )
    one_batch = ProjectSim()
    one_batch.append([("activity", ACT, [c for _, cs in pushes for c in cs] + entity.changes)])
    outcomes.append({k: (r.status, r.details) for k, r in one_batch.ledger.rows.items()})

    assert all(outcome == outcomes[0] for outcome in outcomes)
    kinds = sorted(str(details["kind"]) for _, details in outcomes[0].values())
    assert kinds == ["broken_interval", "concurrent_edit", "edit_to_deleted"]
