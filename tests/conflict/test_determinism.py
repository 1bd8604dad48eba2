"""Same changes, any delivery: same documents, same conflicts, and a rebuild that agrees.

Devices edit offline (2-4 of them, syncing now and then); every change they made is then
pushed to a server model (``ProjectSim``) in random orders and batchings, with retries of
changes already logged. Checked after each delivery:

* the documents have the same heads and content;
* the open conflicts are identical (ids and records), and equal to what the rules find in
  the final documents and rows;
* single-entity conflict rows, open and resolved, are identical (seqs aside: the same
  change gets a different seq when it arrives in another order);
* rebuilding ``rm_conflicts`` from the log gives exactly the incremental rows, seqs included.

Cross-entity rows that were opened and resolved again in between depend on the order the
log holds (a double booking can exist transiently in one order and never in another); for
them only the open set is order-independent, and the rebuild reproduces the rest.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fieldsync.conflict.cross import ProjectRows, cross_entity_conflicts, row_from_values
from fieldsync.conflict.entity import open_conflicts
from fieldsync.conflict.ledger import OPEN, Ledger
from fieldsync.conflict.records import SINGLE_ENTITY_KINDS, ConflictKind
from fieldsync.model.entities import SCHEMAS
from fieldsync.model.validation import inspect_document
from tests.conflict.helpers import ProjectSim
from tests.conflict.scenarios import (
    Session,
    Step,
    activity_only,
    deliveries,
    examples,
    play,
    project_entities,
    sessions,
)


def slow_settings(default_examples: int) -> settings:
    return settings(
        max_examples=examples(default_examples),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def deliver(session: Session, rng: random.Random) -> ProjectSim:
    sim = ProjectSim()
    for push in deliveries(session, rng):
        for outcome in sim.append(push):
            assert not hasattr(outcome, "code"), outcome  # nothing is rejected
    return sim


def single_entity_rows(ledger: Ledger) -> dict[str, tuple[str, object]]:
    return {
        key: (row.status, row.details)
        for key, row in ledger.rows.items()
        if ConflictKind(row.kind) in SINGLE_ENTITY_KINDS
    }


def open_rows(ledger: Ledger) -> dict[str, object]:
    return {key: row.details for key, row in ledger.rows.items() if row.status == OPEN}


def snapshot(sim: ProjectSim) -> dict[str, tuple[list[bytes], object]]:
    out: dict[str, tuple[list[bytes], object]] = {}
    for entity_id, doc in sim.docs.items():
        schema = SCHEMAS[sim.types[entity_id]]
        out[entity_id] = (sorted(doc.get_heads()), inspect_document(schema, doc).values)
    return out


def check_same_outcome(session: Session, seeds: list[int]) -> list[ProjectSim]:
    sims = [deliver(session, random.Random(seed)) for seed in seeds]
    first = sims[0]
    for sim in sims:
        assert sim.rebuild().rows == sim.ledger.rows
        assert snapshot(sim) == snapshot(first)
        assert open_rows(sim.ledger) == open_rows(first.ledger)
        assert single_entity_rows(sim.ledger) == single_entity_rows(first.ledger)
    # The rows the rules saw last are the read-model rows of the final documents.
    for entity_id, doc in first.docs.items():
        entity_type = first.types[entity_id]
        values = inspect_document(SCHEMAS[entity_type], doc).values
        assert first.rows.get(entity_id) == row_from_values(entity_type, entity_id, values)
    # The open rows are exactly what the rules find in the final state.
    found = {}
    for entity_id, doc in first.docs.items():
        for conflict in open_conflicts(first.types[entity_id], entity_id, doc):
            found[conflict.conflict_id] = conflict.details()
    for conflict in cross_entity_conflicts(ProjectRows.of(first.rows.values())):
        found[conflict.conflict_id] = conflict.details()
    assert found == open_rows(first.ledger)
    return sims


# d0 deletes the activity, then edits its title; d1 deletes it concurrently, syncs, and
# deletes it again: Automerge then deletes only d0's losing `true`, so the winning value is
# still d1's first, concurrent with the title edit. The record is resolved (d1 wrote
# `deleted` having seen it), and the rules must not find it open in the final state.
@example(case=(2, [(0, 0, 5, 0), (0, 0, 0, 0), (1, 0, 5, 0), (1, 0, 12, 0), (1, 0, 5, 0)]),
         seeds=[0, 0, 0])
@slow_settings(200)
@given(sessions(devices=(2, 4), steps=16), st.lists(st.integers(0, 2**32), min_size=3, max_size=3))
def test_activity_edits_in_any_order_give_identical_conflicts(
    case: tuple[int, list[Step]], seeds: list[int]
) -> None:
    count, steps = case
    check_same_outcome(play(activity_only(), count, steps), seeds)


# A conflict can exist in a state that was never the head of any push and vanish without a
# change that saw it: d1 writes False then True, d0 writes True concurrently, then resolves
# what it saw (True vs False). A store that took "no record so far" for "no conflict ever"
# would miss the resolution the rebuild records.
@example(case=(2, [(0, 0, 0, 0), (0, 1, 0, 0), (1, 1, 0, 1), (0, 1, 15, 0), (1, 1, 0, 0)]),
         seeds=[0, 0, 0])
@slow_settings(150)
@given(sessions(devices=(2, 4), steps=20), st.lists(st.integers(0, 2**32), min_size=3, max_size=3))
def test_project_edits_in_any_order_give_identical_conflicts(
    case: tuple[int, list[Step]], seeds: list[int]
) -> None:
    count, steps = case
    check_same_outcome(play(project_entities(), count, steps), seeds)


def test_one_push_with_everything_equals_many_small_pushes() -> None:
    rng = random.Random(7)
    for _ in range(5):
        steps = [tuple(rng.randint(0, 15) for _ in range(4)) for _ in range(18)]
        session = play(project_entities(), 3, steps)  # type: ignore[arg-type]
        many = deliver(session, random.Random(rng.random()))
        whole = ProjectSim()
        everything: dict[tuple[str, str], list[bytes]] = {}
        for entity in session.entities:
            everything[(entity.entity_type, entity.entity_id)] = list(entity.changes)
        for device in session.devices:
            for entity in session.entities:
                everything[(entity.entity_type, entity.entity_id)] += device.changes_since(entity)
        whole.append([(t, e, cs) for (t, e), cs in everything.items()])
        assert open_rows(whole.ledger) == open_rows(many.ledger)
        assert single_entity_rows(whole.ledger) == single_entity_rows(many.ledger)
        assert whole.rebuild().rows == whole.ledger.rows
