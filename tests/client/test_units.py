"""The SDK's parts without a server: store, replica, push planning, backoff, URLs."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from automerge.core import Document

from fieldsync.model.automerge_format.changes import parse_change
from fieldsync.model.writer import create_entity, update_entity
from fieldsync.sync.messages import ChangeRecord, ConflictRecord, SnapshotEntity
from fieldsync_client.backoff import Backoff
from fieldsync_client.errors import StoreError
from fieldsync_client.local_store import LocalStore, OutboxEntry, UploadEntry
from fieldsync_client.push_plan import plan_push
from fieldsync_client.replica import DEPENDS_ON_REJECTED, ProjectReplica, RemoteDataError
from fieldsync_client.sync_loop import sync_url
from tests.entities import activity_values, location_values, new_id

NOW = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    opened = LocalStore(tmp_path / "unit.db")
    with opened.transaction():
        opened.add_project("p")
    return opened


def _write_then_fail(store: LocalStore) -> None:
    with store.transaction():
        store.save_entity("p", "e1", "location", b"doc", False)
        store.add_change("p", "location", "e1", b"change", b"h" * 32, NOW)
        raise RuntimeError("disk full")


def test_a_failed_transaction_leaves_nothing(store: LocalStore) -> None:
    with pytest.raises(RuntimeError, match="disk"):
        _write_then_fail(store)
    assert store.entity("p", "e1") is None
    assert store.pending_count() == 0
    with pytest.raises(RuntimeError, match="inside"):
        store.save_entity("p", "e1", "location", b"doc", False)


def test_the_store_is_durable_and_versioned(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "v.db")
    client_id = store.client_id
    with store.transaction():
        store.add_project("p")
        store.set_cursor("p", 7)
    store.close()
    reopened = LocalStore(tmp_path / "v.db")
    assert reopened.client_id == client_id
    record = reopened.project("p")
    assert record is not None
    assert record.cursor == 7
    reopened.close()
    raw = sqlite3.connect(tmp_path / "v.db")
    raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(StoreError, match="schema version 99"):
        LocalStore(tmp_path / "v.db")


def _replica(store: LocalStore) -> ProjectReplica:
    return ProjectReplica(store, "p")


def test_remote_changes_skip_our_own_and_advance_the_cursor(store: LocalStore) -> None:
    replica = _replica(store)
    replica.apply_snapshot([], 0)
    entity = new_id()
    replica.create("location", entity, location_values())
    replica.edit("location", entity, lambda d: update_entity(d, "location", {"name": "Mine"}))
    mine = [e.change for e in store.pending_changes("p")]
    heads = replica.heads(entity)

    # Our two changes come back as seqs 1-2, with someone else's edit as seq 3.
    other = replica._entry(entity)
    assert other is not None
    theirs_doc = other.doc.fork()
    theirs = update_entity(theirs_doc, "location", {"address": "Elsewhere"})
    records = [
        ChangeRecord(1, "location", entity, mine[0]),
        ChangeRecord(2, "location", entity, mine[1]),
        ChangeRecord(3, "location", entity, theirs),
    ]
    outcome = replica.apply_remote(records[:2])
    assert outcome.changed == set()
    assert replica.cursor == 2
    assert replica.heads(entity) == heads
    outcome = replica.apply_remote(records[2:])
    assert outcome.changed == {entity}
    assert replica.cursor == 3
    assert replica.values("location", entity)["address"] == "Elsewhere"
    record = store.project("p")
    assert record is not None
    assert record.cursor == 3

    with pytest.raises(RemoteDataError, match="expected seq 4"):
        replica.apply_remote([ChangeRecord(5, "location", entity, theirs)])
    with pytest.raises(RemoteDataError, match="not a valid change"):
        replica.apply_remote([ChangeRecord(4, "location", entity, b"garbage")])
    assert replica.cursor == 3


def _retitle(title: str) -> Callable[[Document], bytes]:
    return lambda doc: update_entity(doc, "activity", {"title": title})


def test_a_refusal_takes_later_local_edits_with_it(store: LocalStore) -> None:
    replica = _replica(store)
    replica.apply_snapshot([], 0)
    entity = new_id()
    replica.create("activity", entity, activity_values("plan-1"))
    for title in ("Second", "Third"):
        replica.edit("activity", entity, _retitle(title))
    first, *later = store.pending_changes("p")
    # The server logged the create earlier; then refused the second change.
    with store.transaction():
        store.acknowledge([first.id])
    pending = store.pending_changes("p")
    rejected = replica.reject(entity, [pending[0].id], "schema_violation", "no", {"x": 1})
    assert rejected == [p.id for p in pending]
    codes = [(r.code, r.details) for r in store.rejected_changes("p")]
    assert codes == [("schema_violation", {"x": 1}), (DEPENDS_ON_REJECTED, {})]
    assert store.pending_count() == 0
    # The document is back to the logged create only.
    assert replica.values("activity", entity)["title"] == "Core sampling"
    assert replica.heads(entity) == [parse_change(first.change).hash]
    assert later  # (two edits were made)


def test_a_snapshot_keeps_offline_edits(store: LocalStore) -> None:
    replica = _replica(store)
    assert replica.cursor is None
    mine = new_id()
    replica.create("location", mine, location_values(1))  # made before the first snapshot
    server_doc, _ = create_entity("location", location_values(2))
    shared = new_id()
    clash = new_id()
    replica.create("activity", clash, activity_values("plan-1"))
    clash_doc, _ = create_entity("location", location_values(3))
    outcome = replica.apply_snapshot(
        [
            SnapshotEntity("location", shared, server_doc.save()),
            SnapshotEntity("location", clash, clash_doc.save()),
        ],
        5,
    )
    assert outcome.changed == {shared, clash}
    assert replica.cursor == 5
    assert replica.values("location", mine)["name"] == "Site 1"
    assert replica.values("location", shared)["name"] == "Site 2"
    # The server holds ``clash`` as a location: its version wins, ours is refused.
    assert replica.entity_type(clash) == "location"
    assert [r.code for r in store.rejected_changes("p")] == ["wrong_entity_type"]
    assert [p.entity_id for p in store.pending_changes("p")] == [mine]


def _entry(i: int, entity: str, size: int = 10) -> OutboxEntry:
    return OutboxEntry(i, "p", "location", entity, b"x" * size, b"h", NOW)


def test_push_planning_respects_the_limits() -> None:
    entries = [_entry(1, "a"), _entry(2, "b"), _entry(3, "a"), _entry(4, "c"), _entry(5, "a")]
    plan = plan_push(entries, max_entities=2, max_changes_per_entity=2, max_bytes=10_000)
    assert [(b.entity_id, [e.id for e in b.entries]) for b in plan] == [
        ("a", [1, 3]),
        ("b", [2]),
    ]
    big = [_entry(1, "a", 600), _entry(2, "b", 600), _entry(3, "b", 600)]
    plan = plan_push(big, max_entities=10, max_changes_per_entity=10, max_bytes=1500)
    assert [(b.entity_id, len(b.entries)) for b in plan] == [("a", 1)]
    # A change over the budget still goes alone: the server then says why it refuses it.
    plan = plan_push([_entry(1, "a", 5000)], max_entities=1, max_changes_per_entity=1, max_bytes=10)
    assert [len(b.entries) for b in plan] == [1]
    assert plan_push([], max_entities=1, max_changes_per_entity=1, max_bytes=1) == []


def test_push_planning_respects_the_op_budget() -> None:
    doc, created = create_entity("location", location_values())
    renames = [update_entity(doc, "location", {"name": f"Depot {n}"}) for n in range(3)]
    ops = [parse_change(change).op_count for change in (created, *renames)]
    entries = [
        OutboxEntry(i, "p", "location", "a", change, b"h", NOW)
        for i, change in enumerate((created, *renames))
    ]
    budget = ops[0] + ops[1]
    plan = plan_push(
        entries, max_entities=10, max_changes_per_entity=10, max_bytes=10_000, max_ops=budget
    )
    assert [e.id for e in plan[0].entries] == [0, 1]
    # Even a change over the whole budget goes out alone, to be refused with a reason.
    plan = plan_push(
        entries[:1], max_entities=10, max_changes_per_entity=10, max_bytes=10_000, max_ops=1
    )
    assert [e.id for e in plan[0].entries] == [0]


def test_backoff_waits_at_least_the_servers_hint_with_jitter_above_it() -> None:
    low, high = Backoff(0.5, 30.0, rng=lambda: 0.0), Backoff(0.5, 30.0, rng=lambda: 1.0)
    assert low.next_delay(at_least=5) == 5
    assert high.next_delay(at_least=5) == 7.5
    assert high.next_delay(at_least=0.1) == 1.0  # the backoff's own delay is longer
    assert low.next_delay() == 0


def test_backoff_grows_with_full_jitter_and_resets() -> None:
    top = Backoff(0.5, 30.0, rng=lambda: 1.0)
    assert [round(top.next_delay(), 3) for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    top.reset()
    assert top.next_delay() == 0.5
    bottom = Backoff(0.5, 30.0, rng=lambda: 0.0)
    assert bottom.next_delay() == 0.0
    real = Backoff(0.1, 1.0)
    delays = [real.next_delay() for _ in range(50)]
    assert all(0 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 1
    with pytest.raises(ValueError, match="base"):
        Backoff(0, 1)


def test_sync_urls() -> None:
    assert sync_url("http://localhost:8000") == "ws://localhost:8000/sync"
    assert sync_url("https://sync.example.org/") == "wss://sync.example.org/sync"
    assert sync_url("ws://h:1/custom/sync") == "ws://h:1/custom/sync"
    with pytest.raises(ValueError, match="ws://"):
        sync_url("ftp://h")


def _record(conflict_id: str, status: str = "open") -> ConflictRecord:
    if status == "removed":
        return ConflictRecord(conflict_id, status)
    return ConflictRecord(
        conflict_id,
        status,
        "concurrent_edit",
        ("e1",),
        ("title",),
        3,
        4 if status == "resolved" else None,
        {"values": {"kept": "B", "candidates": ["B", "A"]}, "changes": [], "resolution": "x"},
    )


def test_conflict_records_are_stored_updated_removed_and_replaced(store: LocalStore) -> None:
    with store.transaction():
        assert store.save_conflicts("p", [_record("c1"), _record("c2")]) == []
    assert [r.conflict_id for r in store.conflicts("p")] == ["c1", "c2"]
    with store.transaction():
        removed = store.save_conflicts(
            "p", [_record("c1", "resolved"), _record("c2", "removed"), _record("c3")]
        )
    assert removed == ["c2"]
    assert [r.conflict_id for r in store.conflicts("p")] == ["c3"]
    assert store.conflicts("p", include_resolved=True) == [_record("c1", "resolved"), _record("c3")]
    with store.transaction():  # a snapshot's records are the project's whole set
        assert store.save_conflicts("p", [_record("c4")], replace_all=True) == ["c1", "c3"]
    assert store.conflicts("p", include_resolved=True) == [_record("c4")]


def test_a_version_1_store_gains_the_conflicts_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = LocalStore(path)
    with store.transaction():
        store.add_project("p")
        store.set_cursor("p", 5)
    store.close()
    raw = sqlite3.connect(path)  # what the SDK's first release left on devices
    raw.execute("DROP TABLE conflicts")
    raw.execute("DROP TABLE uploads")
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    upgraded = LocalStore(path)
    record = upgraded.project("p")
    assert record is not None
    assert record.cursor == 5
    with upgraded.transaction():
        upgraded.save_conflicts("p", [_record("c1")])
    assert [r.conflict_id for r in upgraded.conflicts("p")] == ["c1"]
    upgraded.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 3


def test_a_version_2_store_gains_the_upload_queue(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    LocalStore(path).close()
    raw = sqlite3.connect(path)
    raw.execute("DROP TABLE uploads")
    raw.execute("PRAGMA user_version = 2")
    raw.commit()
    raw.close()
    upgraded = LocalStore(path)
    with upgraded.transaction():
        upgraded.add_project("p")
        upgraded.add_upload(UploadEntry("a1", "p", "ab" * 32, 3, "x.jpg", "waiting", None, None))
    assert [u.attachment_id for u in upgraded.uploads("waiting")] == ["a1"]
    upgraded.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 3
