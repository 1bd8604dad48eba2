"""The pure merge decision, without a database: ordering, dependencies, validation."""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import UTC, datetime

from automerge.core import ROOT, Document, ScalarType
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldsync.model.automerge_format.changes import parse_change
from fieldsync.model.entities import SCHEMAS
from fieldsync.model.limits import DEFAULT_LIMITS
from fieldsync.model.merge import (
    MAX_VIOLATIONS_LISTED,
    Applied,
    DecodedChanges,
    EntityChanges,
    Merged,
    StoredEntity,
    decode_entity_changes,
    dependency_order,
    merge_entity,
    preapply,
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


# -- changes applied ahead of the lock --------------------------------------------------------


def _stored_activity() -> tuple[Document, StoredEntity, bytes]:
    doc, first = create_entity("activity", activity_values(new_id()))
    stored = StoredEntity(PROJECT, "activity", 7, tuple(doc.get_heads()), 100, doc.fork())
    return doc, stored, parse_change(first).hash


def test_changes_applied_ahead_give_the_merge_it_would_make_itself() -> None:
    doc, stored, first_hash = _stored_activity()
    edits = [
        update_entity(doc, "activity", {"status": "done"}),
        splice_text(doc, "description", 0, 0, "Windy. "),
    ]
    item = decoded("activity", "a1", list(reversed(edits)))  # ordered by the merge
    ahead = preapply(item, stored.version, stored.document, DEFAULT_LIMITS)
    assert ahead is not None

    used = merge_entity(PROJECT, item, stored, {first_hash: 1}, DEFAULT_LIMITS, None, ahead)
    itself = merge_entity(PROJECT, item, stored, {first_hash: 1}, DEFAULT_LIMITS)

    assert isinstance(used, Merged)
    assert isinstance(itself, Merged)
    assert used.document is not None
    assert isinstance(ahead.result, tuple)
    assert used.document is ahead.result[0]
    assert (used.new_changes, used.heads, used.values) == (
        itself.new_changes,
        itself.heads,
        itself.values,
    )
    assert sorted(used.heads) == sorted(doc.get_heads())


def test_changes_applied_ahead_are_used_only_for_the_same_version_and_changes() -> None:
    doc, stored, first_hash = _stored_activity()
    edit = update_entity(doc, "activity", {"status": "done"})
    item = decoded("activity", "a1", [edit])
    marker = Rejection(RejectCode.CORRUPT_CHANGE, "the result applied ahead")
    hashes = (parse_change(edit).hash,)

    def merge(ahead: Applied) -> Merged | Rejection:
        return merge_entity(PROJECT, item, stored, {first_hash: 1}, DEFAULT_LIMITS, None, ahead)

    assert merge(Applied(7, hashes, marker)) is marker  # current: taken as it is
    for stale in (Applied(6, hashes, marker), Applied(7, (first_hash, *hashes), marker)):
        merged = merge(stale)  # another version, other changes: applied again
        assert isinstance(merged, Merged)
        assert merged.values["status"] == "done"
    # Already logged: nothing to apply, whatever was applied ahead.
    logged = merge_entity(
        PROJECT,
        item,
        stored,
        {first_hash: 1, hashes[0]: 8},
        DEFAULT_LIMITS,
        None,
        Applied(7, hashes, marker),
    )
    assert logged == Merged(item, (), {first_hash: 1, hashes[0]: 8})


def test_nothing_is_applied_ahead_when_dependencies_are_unknown_or_values_unreadable() -> None:
    doc, first = create_entity("activity", activity_values(new_id()))
    edit = update_entity(doc, "activity", {"status": "done"})
    # The edit alone, onto no document: its dependency is nowhere here.
    assert preapply(decoded("activity", "a1", [edit]), 0, None, DEFAULT_LIMITS) is None
    assert preapply(decoded("activity", "a1", [first, edit]), 0, None, DEFAULT_LIMITS) is not None
    tiny = replace(DEFAULT_LIMITS, max_document_ops=1)
    assert preapply(decoded("activity", "a1", [first, edit]), 0, None, tiny) is None
    far_past = Document()
    with far_past.transaction() as tx:
        tx.put(ROOT, "starts_at", ScalarType.Timestamp, datetime(1, 1, 1, tzinfo=UTC))
    change = far_past.get_last_local_change()
    assert change is not None
    unreadable = decoded("activity", "a1", [change.bytes])
    assert unreadable.unsupported
    assert preapply(unreadable, 0, None, DEFAULT_LIMITS) is None
