"""The row bookkeeping behind ``rm_conflicts``: ids, seqs, superseded and reopened rows."""

from __future__ import annotations

import json

from fieldsync.conflict.entity import EntityConflicts, Resolution
from fieldsync.conflict.ledger import OPEN, RESOLVED, ConflictRow, Ledger, plan_cross, plan_entity
from fieldsync.conflict.records import ChangeRef, Conflict, ConflictKind, conflict_id, make_conflict
from tests.conflict.helpers import ProjectSim, at
from tests.conflict.test_entity_rules import ACT, activity, devices

X, Y, Z, P, Q = ("0" * 63 + str(n) for n in range(5))
SEQ = {X: 3, Y: 5, Z: 6, P: 9, Q: 7}


def edit(*hashes: str, field: str = "title") -> Conflict:
    return make_conflict(
        ConflictKind.CONCURRENT_EDIT,
        [ACT],
        [field],
        {"kept": hashes[0], "candidates": list(hashes)},
        [ChangeRef(h, "aa") for h in hashes],
        "rule",
    )


def test_ids_depend_on_identity_only() -> None:
    one = conflict_id(ConflictKind.DOUBLE_BOOKING, ["b", "a"], ["y", "x"], [])
    two = conflict_id(ConflictKind.DOUBLE_BOOKING, ["a", "b", "a"], ["x", "y"], [])
    assert one == two
    assert len(one) == 64
    assert one != conflict_id(ConflictKind.DOUBLE_BOOKING, ["a", "b"], ["x"], [])
    assert one != conflict_id(ConflictKind.DELETED_REFERENCE, ["a", "b"], ["x", "y"], [])
    first = make_conflict(ConflictKind.CONCURRENT_EDIT, ["e"], ["f"], {"v": at(1)}, [])
    assert json.loads(json.dumps(first.details()))["values"] == {"v": at(1).isoformat()}


def test_open_rows_take_the_largest_seq_of_their_changes() -> None:
    conflict = edit(X, Y)
    plan = plan_entity(EntityConflicts((conflict,), ()), {}, SEQ)
    (row,) = plan.upserts
    assert (row.status, row.opened_seq, row.resolved_seq) == (OPEN, 5, None)


def test_concurrent_resolutions_keep_the_smallest_seq() -> None:
    conflict = edit(X, Y)
    ledger = Ledger()
    later = EntityConflicts((), (Resolution(conflict, bytes.fromhex(P)),))
    ledger.apply(plan_entity(later, ledger.entity_rows(ACT), SEQ))
    earlier = EntityConflicts((), (Resolution(conflict, bytes.fromhex(Q)),))
    ledger.apply(plan_entity(earlier, ledger.entity_rows(ACT), SEQ))
    ledger.apply(plan_entity(later, ledger.entity_rows(ACT), SEQ))

    (row,) = ledger.rows.values()
    assert (row.status, row.opened_seq, row.resolved_seq) == (RESOLVED, 5, 7)


def test_a_superseded_open_row_is_deleted_and_resolved_rows_stay() -> None:
    ledger = Ledger()
    two_way, three_way, other = edit(X, Y), edit(Z, Y, X), edit(X, Y, field="status")
    ledger.apply(plan_entity(EntityConflicts((two_way, other), ()), {}, SEQ))
    resolved = EntityConflicts((three_way,), (Resolution(other, bytes.fromhex(P)),))
    ledger.apply(plan_entity(resolved, ledger.entity_rows(ACT), SEQ))

    assert {k: r.status for k, r in ledger.rows.items()} == {
        three_way.conflict_id: OPEN,
        other.conflict_id: RESOLVED,
    }


def test_cross_rows_open_resolve_reopen_and_follow_details() -> None:
    ledger = Ledger()
    first = make_conflict(ConflictKind.DOUBLE_BOOKING, ["s1", "s2"], ["starts_at"], {"h": 1})
    moved = make_conflict(ConflictKind.DOUBLE_BOOKING, ["s1", "s2"], ["starts_at"], {"h": 2})
    assert first.conflict_id == moved.conflict_id

    ledger.apply(plan_cross([first], ledger.cross_rows(["s1"]), 4))
    ledger.apply(plan_cross([moved], ledger.cross_rows(["s2"]), 5))
    row = ledger.rows[first.conflict_id]
    assert (row.status, row.opened_seq, row.details["values"]) == (OPEN, 4, {"h": 2})

    ledger.apply(plan_cross([], ledger.cross_rows(["s1"]), 6))
    assert ledger.rows[first.conflict_id].status == RESOLVED
    assert ledger.rows[first.conflict_id].resolved_seq == 6
    ledger.apply(plan_cross([], ledger.cross_rows(["s1"]), 7))  # nothing to close twice
    assert ledger.rows[first.conflict_id].resolved_seq == 6

    ledger.apply(plan_cross([first], ledger.cross_rows(["s1"]), 8))
    assert ledger.rows[first.conflict_id] == ConflictRow.of(first, OPEN, 8, None)


def test_rebuild_equals_the_incremental_rows_after_resolution_and_supersession() -> None:
    entity = activity()
    one, two, three, lead = devices(entity, 4)
    pushes = [
        one.edit(ACT, {"status": "confirmed"}),
        two.edit(ACT, {"status": "done"}),
        three.edit(ACT, {"status": "cancelled"}),
    ]
    lead.sync_from(one)
    lead.sync_from(two)
    pushes.append(lead.edit(ACT, {"status": "done"}))  # resolves one/two, not three
    sim = ProjectSim()
    sim.append([("activity", ACT, entity.changes)])
    for change in pushes:
        sim.append([("activity", ACT, [change])])

    statuses = sorted((r.status, _count(r.details["changes"])) for r in sim.ledger.rows.values())
    assert statuses == [(OPEN, 2), (RESOLVED, 2)]  # the three-way row was superseded
    assert sim.rebuild().rows == sim.ledger.rows


def _count(value: object) -> int:
    assert isinstance(value, list)
    return len(value)


def test_recorded_values_fit_jsonb() -> None:
    conflict = make_conflict(
        ConflictKind.CONCURRENT_EDIT,
        ["e"],
        ["f"],
        {"candidates": ["a\x00b", float("nan"), "x" * 5000, b"\x01"]},
        [],
    )
    candidates = conflict.values["candidates"]
    assert isinstance(candidates, list)
    nul, nan, long, raw = candidates
    assert (nul, nan, raw) == ("a\ufffdb", "nan", "01")
    assert isinstance(long, str)
    assert len(long) == 4097
    json.dumps(conflict.details(), allow_nan=False)
