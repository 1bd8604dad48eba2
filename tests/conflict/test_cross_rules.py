"""Cross-entity rules: on plain rows, and end to end on documents through the ledger."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from fieldsync.conflict.cross import (
    DELETED_REFERENCE_RESOLUTION,
    ActivityRow,
    LocationRow,
    ProjectRows,
    RoleRow,
    SummoningRow,
    cross_entity_conflicts,
    needed_rows,
    row_from_values,
    still_open,
)
from fieldsync.conflict.ledger import (
    OPEN,
    RESOLVED,
    ROW_FIELDS,
    _read_field,
    _root_slots,
    row_at,
    row_changes,
)
from fieldsync.conflict.records import Conflict, ConflictKind
from fieldsync.model.entities import SCHEMAS
from fieldsync.model.validation import inspect_document
from tests.conflict.helpers import Device, ProjectSim, at, create, headers
from tests.conflict.scenarios import Step, examples, play, project_entities, sessions
from tests.model.builders import VALID, Node, new_doc, write_tree
from tests.model.test_schema_validation import nodes

row_keys = st.sampled_from(sorted({name for names in ROW_FIELDS.values() for name in names}))

L1, L2 = LocationRow("loc-1"), LocationRow("loc-2")
A1 = ActivityRow("act-1", "loc-1", at(8), at(14))
A2 = ActivityRow("act-2", "loc-2", at(8), at(14))
S1 = SummoningRow("sum-1", "act-1", "role-1", "user-1", at(9), at(12))
S2 = SummoningRow("sum-2", "act-2", "role-1", "user-1", at(11), at(13))
ROLE = RoleRow("role-1")


def rows(*items: ActivityRow | SummoningRow | LocationRow | RoleRow) -> ProjectRows:
    return ProjectRows.of(items)


def kinds(found: tuple[Conflict, ...]) -> list[ConflictKind]:
    return [c.kind for c in found]


# -- deleted references -----------------------------------------------------------------


def test_an_activity_pointing_at_a_deleted_location() -> None:
    deleted = replace(L1, deleted=True)

    (conflict,) = cross_entity_conflicts(rows(A1, deleted, L2))

    assert conflict.kind is ConflictKind.DELETED_REFERENCE
    assert conflict.entity_ids == ("act-1", "loc-1")
    assert conflict.fields == ("location_id",)
    assert conflict.values == {
        "source": {"entity_id": "act-1", "entity_type": "activity"},
        "field": "location_id",
        "target": {"entity_id": "loc-1", "entity_type": "location", "deleted": True},
    }
    assert conflict.changes == ()
    assert conflict.resolution == DELETED_REFERENCE_RESOLUTION
    # Restoring the location, pointing elsewhere, or deleting the activity closes it.
    assert not still_open(conflict, rows(A1, L1))
    assert not still_open(conflict, rows(replace(A1, location_id="loc-2"), deleted, L2))
    assert not still_open(conflict, rows(replace(A1, deleted=True), deleted))
    assert still_open(conflict, rows(replace(A1, starts_at=at(9)), deleted))


def test_a_summoning_pointing_at_a_deleted_activity_or_role() -> None:
    found = cross_entity_conflicts(
        rows(replace(A1, deleted=True), L1, S1, replace(ROLE, deleted=True))
    )

    assert kinds(found) == [ConflictKind.DELETED_REFERENCE] * 2
    assert {c.fields for c in found} == {("activity_id",), ("role_id",)}
    assert {c.entity_ids for c in found} == {("act-1", "sum-1"), ("role-1", "sum-1")}


def test_unknown_targets_and_deleted_sources_are_no_conflict() -> None:
    assert cross_entity_conflicts(rows(A1, S1)) == ()  # the location has not synced yet
    assert cross_entity_conflicts(rows(replace(A1, deleted=True), replace(L1, deleted=True))) == ()


# -- double bookings --------------------------------------------------------------------


def test_one_user_summoned_to_overlapping_activities_in_two_places() -> None:
    (conflict,) = cross_entity_conflicts(rows(A1, A2, L1, L2, S1, S2))

    assert conflict.kind is ConflictKind.DOUBLE_BOOKING
    assert conflict.entity_ids == ("act-1", "act-2", "sum-1", "sum-2")
    assert conflict.values == {
        "user_id": "user-1",
        "summonings": [
            {
                "summoning_id": "sum-1",
                "activity_id": "act-1",
                "location_id": "loc-1",
                "starts_at": at(9).isoformat(),
                "ends_at": at(12).isoformat(),
            },
            {
                "summoning_id": "sum-2",
                "activity_id": "act-2",
                "location_id": "loc-2",
                "starts_at": at(11).isoformat(),
                "ends_at": at(13).isoformat(),
            },
        ],
    }
    assert conflict.needs_lead
    moved = replace(S2, starts_at=at(12))  # back to back is fine
    assert not still_open(conflict, rows(A1, A2, S1, moved))


def test_what_is_not_a_double_booking() -> None:
    same_place = replace(A2, location_id="loc-1")
    cases = [
        rows(A1, same_place, S1, S2),
        rows(A1, A2, S1, replace(S2, user_id="user-2")),
        rows(A1, A2, S1, replace(S2, status="declined")),
        rows(A1, replace(A2, status="cancelled"), S1, S2),
        rows(A1, replace(A2, location_id=None), S1, S2),
        rows(A1, A2, S1, replace(S2, starts_at=at(12))),
        rows(A1, A2, S1, replace(S2, deleted=True)),
    ]
    for case in cases:
        assert ConflictKind.DOUBLE_BOOKING not in kinds(cross_entity_conflicts(case))


def test_involving_limits_the_answer_to_conflicts_naming_an_entity() -> None:
    everything = rows(A1, A2, L1, L2, S1, S2)
    assert kinds(cross_entity_conflicts(everything, ["sum-2"])) == [ConflictKind.DOUBLE_BOOKING]
    assert cross_entity_conflicts(everything, ["loc-1"]) == ()


# -- summonings outside their activity ------------------------------------------------------


def test_a_summoning_window_that_misses_its_activity() -> None:
    moved = replace(A1, starts_at=at(13), ends_at=at(18))  # the activity moved later

    (conflict,) = cross_entity_conflicts(rows(moved, S1))

    assert conflict.kind is ConflictKind.SUMMONING_OUTSIDE_ACTIVITY
    assert conflict.entity_ids == ("act-1", "sum-1")
    assert conflict.values["summoning"] == {
        "entity_id": "sum-1",
        "starts_at": at(9).isoformat(),
        "ends_at": at(12).isoformat(),
    }
    assert not still_open(conflict, rows(A1, S1))  # moved back
    assert not still_open(conflict, rows(moved, replace(S1, ends_at=at(14))))


def test_row_from_values_reads_validated_values() -> None:
    values = {"activity_id": "act-1", "starts_at": at(1), "ends_at": at(2), "status": "proposed"}
    assert row_from_values("summoning", "s", values) == SummoningRow(
        "s", "act-1", None, None, at(1), at(2)
    )
    assert row_from_values("plan", "p", {"name": "x"}) is None


# -- end to end: documents, seqs, ledger and rebuild -----------------------------------------


def test_deleting_a_location_opens_and_restoring_it_resolves() -> None:
    entities = project_entities()
    sim = ProjectSim()
    sim.append([(e.entity_type, e.entity_id, e.changes) for e in entities])
    one, lead = Device(1, entities), Device(2, entities)
    sim.append([("location", "loc-1", [one.edit("loc-1", {"deleted": True})])])

    (row,) = (r for r in sim.ledger.rows.values() if r.kind == "deleted_reference")
    assert (row.status, row.opened_seq, row.entity_ids) == (OPEN, 8, ("act-1", "loc-1"))

    lead.sync_from(one)
    sim.append([("location", "loc-1", [lead.edit("loc-1", {"deleted": False})])])

    (row,) = (r for r in sim.ledger.rows.values() if r.kind == "deleted_reference")
    assert (row.status, row.opened_seq, row.resolved_seq) == (RESOLVED, 8, 9)
    assert sim.rebuild().rows == sim.ledger.rows


def test_a_double_booking_comes_back_under_the_same_id() -> None:
    entities = project_entities()  # sum-1 at act-1 (loc-1) 1h-5h, sum-2 at act-2 (loc-2) 9h-13h
    sim = ProjectSim()
    sim.append([(e.entity_type, e.entity_id, e.changes) for e in entities])
    device = Device(1, entities)

    def push(values: dict[str, object]) -> None:
        sim.append([("summoning", "sum-2", [device.edit("sum-2", values)])])

    def booking() -> tuple[str, int, int | None]:
        (row,) = (r for r in sim.ledger.rows.values() if r.kind == "double_booking")
        return row.status, row.opened_seq, row.resolved_seq

    push({"starts_at": at(4)})  # seq 8: 4h-13h overlaps 1h-5h
    assert booking() == (OPEN, 8, None)
    push({"starts_at": at(6)})  # seq 9: no overlap any more
    assert booking() == (RESOLVED, 8, 9)
    push({"starts_at": at(2)})  # seq 10: the same two summonings overlap again
    assert booking() == (OPEN, 10, None)
    assert sim.rebuild().rows == sim.ledger.rows


def test_moving_an_activity_away_from_its_summoning() -> None:
    activity = create(
        "activity",
        "act-1",
        {
            "plan_id": "plan-1",
            "title": "Core sampling",
            "starts_at": at(0),
            "ends_at": at(6),
            "status": "planned",
        },
    )
    summoning = create(
        "summoning",
        "sum-1",
        {
            "activity_id": "act-1",
            "user_id": "user-1",
            "starts_at": at(1),
            "ends_at": at(3),
            "status": "confirmed",
        },
    )
    sim = ProjectSim()
    sim.append([("activity", "act-1", activity.changes), ("summoning", "sum-1", summoning.changes)])
    device = Device(1, [activity, summoning])
    move = device.edit("act-1", {"starts_at": at(24), "ends_at": at(30)})
    sim.append([("activity", "act-1", [move])])

    (row,) = sim.ledger.rows.values()
    assert (row.kind, row.status, row.opened_seq) == ("summoning_outside_activity", OPEN, 3)

    follow = device.edit("sum-1", {"starts_at": at(25), "ends_at": at(27)})
    sim.append([("summoning", "sum-1", [follow])])

    (row,) = sim.ledger.rows.values()
    assert (row.status, row.resolved_seq) == (RESOLVED, 4)
    assert sim.rebuild().rows == sim.ledger.rows


# -- the neighbourhood the store loads --------------------------------------------------------

_ACTIVITIES = ("act-1", "act-2", "act-3")
_LOCATIONS = ("loc-1", "loc-2")


# Deleted, inactive and broken rows are drawn one time in eight, so that live ones meet often
# enough for every kind of conflict to occur (a double booking needs two live summonings of
# one user at two live activities in two places).
_rarely = st.sampled_from((True, *[False] * 7))


@st.composite
def project_rows(draw: st.DrawFn) -> ProjectRows:
    hours = st.integers(0, 12)
    items: list[ActivityRow | SummoningRow | LocationRow | RoleRow] = []
    for entity_id in _ACTIVITIES:
        if not draw(_rarely):
            start, length = draw(hours), draw(st.integers(-1, 6))
            items.append(
                ActivityRow(
                    entity_id,
                    draw(st.sampled_from((*_LOCATIONS, *_LOCATIONS, None))),
                    at(start),
                    at(start + length),
                    draw(_rarely),
                    "cancelled" if draw(_rarely) else "planned",
                )
            )
    for entity_id in _LOCATIONS:
        if draw(st.booleans()):
            items.append(LocationRow(entity_id, draw(_rarely)))
    if draw(st.booleans()):
        items.append(RoleRow("role-1", draw(_rarely)))
    for n in range(draw(st.integers(0, 6))):
        start, length = draw(st.integers(0, 6)), -1 if draw(_rarely) else draw(st.integers(1, 4))
        items.append(
            SummoningRow(
                f"sum-{n}",
                draw(st.sampled_from(_ACTIVITIES)),
                draw(st.sampled_from(("role-1", None))),
                draw(st.sampled_from(("user-1", "user-1", "user-2", None))),
                at(start),
                at(start + length),
                draw(_rarely),
                "declined" if draw(_rarely) else "proposed",
            )
        )
    return ProjectRows.of(items)


@settings(max_examples=examples(300), deadline=None)
@given(project_rows())
def test_the_neighbourhood_finds_the_same_conflicts_as_every_row(rows: ProjectRows) -> None:
    for row in rows.rows():
        ids = [row.entity_id]
        assert cross_entity_conflicts(needed_rows(rows, ids), ids) == cross_entity_conflicts(
            rows, ids
        )


def test_row_changes_reports_only_changes_that_move_the_row() -> None:
    entities = project_entities()
    activity = next(e for e in entities if e.entity_id == "act-1")
    device = Device(1, [activity])
    doc_before = activity.doc
    title = device.edit("act-1", {"title": "Renamed"})
    moved = device.edit("act-1", {"location_id": "loc-2"})
    done = device.edit("act-1", {"status": "done"})
    doc = device.docs["act-1"]
    start = row_at("activity", "act-1", doc_before, doc_before.get_heads())
    assert start == ActivityRow("act-1", "loc-1", at(0), at(6), False, "planned")

    found = row_changes(
        "activity", "act-1", doc, doc_before.get_heads(), headers([title, moved, done]), start
    )

    assert [index for index, _ in found] == [1, 2]  # the title edit leaves the row as it was
    assert found[-1][1] == ActivityRow("act-1", "loc-2", at(0), at(6), False, "done")
    assert row_at("activity", "act-1", doc, []) is None  # no state: required fields missing
    assert row_at("plan", "plan-1", doc, doc.get_heads()) is None


@settings(max_examples=examples(100), deadline=None)
@given(sessions())
def test_the_row_of_validated_values_is_the_row_read_from_the_document(
    session: tuple[int, list[Step]],
) -> None:
    """The store takes a push's last row from the merge's validated values instead of
    reading the document; both must agree."""
    count, steps = session
    played = play(project_entities(), count, steps)
    for device in played.devices:
        for entity in played.entities:
            doc = device.docs[entity.entity_id]
            inspection = inspect_document(SCHEMAS[entity.entity_type], doc)
            if inspection.violations:
                continue
            from_values = row_from_values(entity.entity_type, entity.entity_id, inspection.values)
            assert row_at(entity.entity_type, entity.entity_id, doc, doc.get_heads()) == from_values


@given(
    entity_type=st.sampled_from(sorted(ROW_FIELDS)),
    ours=st.dictionaries(row_keys, nodes, max_size=4),
    theirs=st.dictionaries(row_keys, nodes, max_size=4),
)
def test_a_row_read_in_one_call_equals_one_read_per_field(
    entity_type: str, ours: dict[str, Node], theirs: dict[str, Node]
) -> None:
    """``row_at`` reads the top-level values at past heads in one call; each field must come
    out as its own read gives it, with concurrent writes, junk and unconvertible values."""
    schema = SCHEMAS[entity_type]
    doc = new_doc(schema, VALID[entity_type])
    other = doc.fork()
    write_tree(theirs, other)
    write_tree(ours, doc)
    mine = doc.get_heads()
    doc.merge(other)
    for heads in (mine, other.get_heads(), doc.get_heads()):
        slots = _root_slots(doc, heads)
        for name in ROW_FIELDS[entity_type]:
            field = schema.field(name)
            assert field is not None
            one = _read_field(doc, heads, field, None)
            assert _read_field(doc, heads, field, slots) == one, name
