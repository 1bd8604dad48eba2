"""Reading root ops from change bytes, and live values, checked against the binding."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime

from automerge.core import ROOT, Document, ScalarType
from hypothesis import given, settings

from fieldsync.conflict.entity import root_conflict_flags
from fieldsync.conflict.history import History
from fieldsync.model.automerge_format.changes import parse_change
from fieldsync.model.automerge_format.op_columns import (
    ACTION_DELETE,
    ChangeOps,
    OpId,
    UnsupportedValue,
    decode_change_ops,
    parse_op_id,
    unsupported_values,
)
from fieldsync.model.writer import create_entity
from tests.conflict.helpers import merged_doc
from tests.conflict.scenarios import Step, activity_only, all_changes, examples, play, sessions
from tests.entities import activity_values

KEYS = ("title", "status", "starts_at", "ends_at", "location_id", "deleted")


def test_root_object_id_has_no_op() -> None:
    assert parse_op_id(ROOT) is None
    assert parse_op_id(b"\x10\x02ab\x07\x2a") == OpId(42, b"ab")
    assert parse_op_id(b"\x10\x02ab") is None  # truncated


@settings(max_examples=examples(150), deadline=None)
@given(sessions(devices=(2, 3), steps=16))
def test_decoded_ops_and_live_values_agree_with_automerge(case: tuple[int, list[Step]]) -> None:
    count, steps = case
    session = play(activity_only(), count, steps)
    changes = all_changes(session)["act-1"]
    doc = merged_doc(changes)
    history = History.of(doc)
    binding = {c.hash: c for c in doc.get_changes([])}
    decoded = {}
    for data in changes:
        ops = decode_change_ops(data)
        change = binding[ops.hash]
        assert (ops.actor, ops.seq, ops.start_op) == (change.actor_id, change.seq, change.start_op)
        assert ops.max_op == change.max_op
        assert set(ops.deps) == set(change.deps)
        decoded[ops.hash] = ops
        for op in ops.root_ops:  # a put is what Automerge shows right after the change
            last = [o for o in ops.root_ops if o.key == op.key][-1]
            found = doc.get(ROOT, op.key, heads=[ops.hash])
            if last.action != ACTION_DELETE and found is not None:
                assert parse_op_id(found[1]) == last.op_id

    states = [[h] for h in decoded] + [doc.get_heads()]
    states += [list(ops.deps) for ops in decoded.values() if ops.deps]
    for heads in states:
        flags = root_conflict_flags(doc, heads)
        assert flags is not None
        for key in KEYS:
            truth = _live(history, decoded, heads, key)
            assert [item.op for item in history.live_ops(doc, heads, key)] == truth
            assert flags.get(key, False) == (len(truth) > 1)
            winner = doc.get(ROOT, key, heads=heads)
            assert (parse_op_id(winner[1]) if winner else None) == (truth[0] if truth else None)


def _live(
    history: History, decoded: Mapping[bytes, ChangeOps], heads: list[bytes], key: str
) -> list[OpId]:
    """Ground truth from every op in the past of ``heads``: not named as a predecessor."""
    ops = [
        op
        for h, change in decoded.items()
        if history.within(h, heads)
        for op in change.root_ops
        if op.key == key
    ]
    dead = {p for op in ops for p in op.pred}
    live = {op.op_id for op in ops if op.action != ACTION_DELETE and op.op_id not in dead}
    return sorted(live, reverse=True)


def _with_unknown_value_type(change: bytes) -> bytes:
    """``change`` (a put of the string "abcdefg") with its value's type code set to 10, a
    type no Automerge version defines, and a valid checksum."""
    # The metadata column, a run of one literal (7 << 4 | 6: a 7-byte str), then the raw.
    meta_and_raw = b"\x7f\x76abcdefg"
    assert change.count(meta_and_raw) == 1
    edited = change.replace(meta_and_raw, b"\x7f\x7aabcdefg")
    body = edited[8:]
    return edited[:4] + hashlib.sha256(body).digest()[:4] + body


def _put(key: str, kind: ScalarType, value: object) -> bytes:
    doc = Document()
    with doc.transaction() as tx:
        tx.put(ROOT, key, kind, value)  # type: ignore[arg-type]
    change = doc.get_last_local_change()
    assert change is not None
    return change.bytes


def test_ordinary_values_are_all_readable() -> None:
    _, created = create_entity("activity", activity_values("plan-1"))
    assert unsupported_values(parse_change(created)) == []
    edge = datetime(9999, 12, 29, 23, 59, 59, 999000, tzinfo=UTC)
    readable_edge = parse_change(_put("ends_at", ScalarType.Timestamp, edge))
    assert unsupported_values(readable_edge) == []


def test_a_value_of_unknown_type_is_found_with_its_key() -> None:
    change = _with_unknown_value_type(_put("title", ScalarType.Str, "abcdefg"))
    assert unsupported_values(parse_change(change)) == [
        UnsupportedValue(0, None, "title", "value of unknown type 10")
    ]


def test_timestamps_are_checked_against_the_accepted_range() -> None:
    inside = datetime(1, 1, 3, tzinfo=UTC)
    outside = datetime(1, 1, 2, 23, 59, 59, 999000, tzinfo=UTC)
    assert parse_change(_put("starts_at", ScalarType.Timestamp, inside)).unreadable == ()
    [found] = unsupported_values(parse_change(_put("starts_at", ScalarType.Timestamp, outside)))
    assert found.key == "starts_at"
    assert found.what.startswith("timestamp")
