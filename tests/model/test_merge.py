"""The pure merge decision, without a database: ordering, dependencies, validation."""

from __future__ import annotations

import random
import uuid

from automerge.core import ROOT, Document, ScalarType
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldsync.model.automerge_format.changes import parse_change
from fieldsync.model.entities import SCHEMAS
from fieldsync.model.limits import DEFAULT_LIMITS
from fieldsync.model.merge import (
    MAX_VIOLATIONS_LISTED,
    DecodedChanges,
    EntityChanges,
    Merged,
    StoredEntity,
    decode_entity_changes,
    dependency_order,
    merge_entity,
)
from fieldsync.model.rejections import RejectCode, Rejection
from fieldsync.model.writer import create_entity, splice_text, update_entity
from tests.entities import activity_values, new_id

PROJECT = uuid.uuid4()


def decoded(entity_type: str, entity_id: str, changes: list[bytes]) -> DecodedChanges:
    result = decode_entity_changes(EntityChanges(entity_type, entity_id, changes), DEFAULT_LIMITS)
    assert isinstance(result, DecodedChanges), result
    return result


@settings(max_examples=40, deadline=None)
@given(st.randoms(use_true_random=False))
def test_dependency_order_puts_every_change_after_its_deps(rng: random.Random) -> None:
    doc, first = create_entity("activity", activity_values(new_id()))
    forks = [doc.fork() for _ in range(3)]
    changes = [first]
    for _ in range(12):
        fork = rng.choice(forks)
        changes.append(splice_text(fork, "description", 0, 0, "x"))
        if rng.random() < 0.3:
            other = rng.choice(forks)
            if other is not fork:
                fork.merge(other)
    headers = [parse_change(c) for c in changes]
    shuffled = headers[:]
    rng.shuffle(shuffled)

    ordered, missing = dependency_order(shuffled, set())

    assert missing == []
    position = {h.hash: i for i, h in enumerate(ordered)}
    assert sorted(position) == sorted(h.hash for h in headers)
    for header in ordered:
        assert all(position[d] < position[header.hash] for d in header.deps)
    assert dependency_order(shuffled, set()) == (ordered, []), "same input, same order"


def test_merge_applies_to_a_fork_and_leaves_the_stored_document_alone() -> None:
    doc, first = create_entity("activity", activity_values(new_id()))
    stored_doc = doc.fork()
    first_hash = parse_change(first).hash
    stored = StoredEntity(PROJECT, "activity", 1, tuple(stored_doc.get_heads()), 100, stored_doc)
    edit = update_entity(doc, "activity", {"status": "done"})

    merged = merge_entity(
        PROJECT, decoded("activity", "a1", [edit]), stored, {first_hash: 1}, DEFAULT_LIMITS
    )

    assert isinstance(merged, Merged)
    assert merged.values["status"] == "done"
    assert sorted(merged.heads) == sorted(doc.get_heads())
    assert stored_doc.get_heads() == [first_hash]


def test_schema_violation_after_merge_is_a_rejection() -> None:
    doc, first = create_entity("activity", activity_values(new_id()))
    stored = StoredEntity(PROJECT, "activity", 1, tuple(doc.get_heads()), 100, doc.fork())
    broken = update_entity(doc, "activity", {"starts_at": None})

    outcome = merge_entity(
        PROJECT,
        decoded("activity", "a1", [broken]),
        stored,
        {parse_change(first).hash: 1},
        DEFAULT_LIMITS,
    )

    assert isinstance(outcome, Rejection)
    assert outcome.code is RejectCode.SCHEMA_VIOLATION
    assert outcome.details == {
        "violations": [{"field": "starts_at", "expected": "timestamp", "got": "missing"}],
        "violation_count": 1,
    }


def test_a_rejection_lists_a_bounded_number_of_violations() -> None:
    doc = Document()
    with doc.transaction() as tx:
        for n in range(60):
            tx.put(ROOT, f"unknown_{n:02}", ScalarType.Str, "x")
    change = doc.get_last_local_change()
    assert change is not None

    outcome = merge_entity(
        PROJECT, decoded("activity", "a1", [change.bytes]), None, {}, DEFAULT_LIMITS
    )

    assert isinstance(outcome, Rejection)
    assert outcome.code is RejectCode.SCHEMA_VIOLATION
    violations = outcome.details["violations"]
    assert isinstance(violations, list)
    assert len(violations) == MAX_VIOLATIONS_LISTED
    required = sum(1 for f in SCHEMAS["activity"].fields if f.required)
    assert outcome.details["violation_count"] == 60 + required  # unknown keys, and missing
    assert f"(and {60 + required - 1} more)" in outcome.message


def test_only_logged_changes_means_nothing_new() -> None:
    _, first = create_entity("activity", activity_values(new_id()))
    h = parse_change(first).hash
    item = decoded("activity", "a1", [first])
    outcome = merge_entity(PROJECT, item, None, {h: 7}, DEFAULT_LIMITS)
    assert outcome == Merged(decoded("activity", "a1", [first]), (), {h: 7})
