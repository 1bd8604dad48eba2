"""Read models rebuilt from the log alone equal the incrementally maintained ones."""

from __future__ import annotations

import contextlib
import random
import uuid
from datetime import UTC, datetime, timedelta

from automerge.core import Document

from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import (
    NoChange,
    create_entity,
    insert_list_item,
    remove_list_item,
    splice_text,
    update_entity,
)
from fieldsync.store.ports import ChangeLogPort, Storage
from fieldsync.store.records import Accepted
from tests.entities import (
    activity_values,
    location_values,
    membership_values,
    new_id,
    plan_values,
    role_values,
    summoning_values,
)
from tests.store.contract.inspect import Inspector


async def populate(log: ChangeLogPort, project: uuid.UUID, seed: int) -> int:
    """A few hundred mixed changes: several devices editing offline, pushing in batches."""
    rng = random.Random(seed)
    plan_id = new_id()
    entities: dict[str, tuple[str, list[Document]]] = {}
    pending: dict[str, list[bytes]] = {}

    def add(kind: str, values: dict[str, object]) -> str:
        entity_id = new_id()
        doc, change = create_entity(kind, values)
        entities[entity_id] = (kind, [doc, doc.fork(), doc.fork()])
        pending[entity_id] = [change]
        return entity_id

    add("plan", plan_values())
    add("project_settings", {"name": "North survey", "timezone": "Europe/Rome"})
    locations = [add("location", location_values(i)) for i in range(4)]
    roles = [add("role", role_values(f"Role {i}")) for i in range(3)]
    activities = [
        add("activity", activity_values(plan_id, rng.choice(locations), day=i)) for i in range(8)
    ]
    for i in range(6):
        add("summoning", summoning_values(rng.choice(activities), rng.choice(roles), day=i))
    add("membership", membership_values("user-7"))

    total = 0
    for _ in range(12):
        for entity_id, (kind, devices) in entities.items():
            device = rng.choice(devices[1:])
            for _ in range(rng.randint(0, 3)):
                with contextlib.suppress(NoChange):
                    pending[entity_id].append(_random_edit(rng, kind, device))
            if rng.random() < 0.2:
                devices[0].merge(device)
                device.merge(devices[0])
        batch = [EntityChanges(entities[e][0], e, c) for e, c in pending.items() if c]
        rng.shuffle(batch)
        for start in range(0, len(batch), 7):
            for result in await log.append(project, batch[start : start + 7], sender="dev"):
                assert isinstance(result, Accepted), result
                total += len(result.seqs)
        pending = {e: [] for e in entities}
    return total


def _random_edit(rng: random.Random, kind: str, doc: Document) -> bytes:
    if kind == "activity":
        choice = rng.randrange(6)
        if choice == 0:
            return splice_text(doc, "description", 0, 0, rng.choice(["Check ", "Rain? "]))
        if choice == 1:
            return insert_list_item(
                doc, "activity", "tasks", 0, {"title": "Extra task", "done": rng.random() < 0.5}
            )
        if choice == 2 and doc.length(doc.get(b"\x00", "tasks")[1]) > 1:  # type: ignore[index]
            return remove_list_item(doc, "tasks", 0)
        if choice == 3:
            return update_entity(doc, "activity", {"deleted": rng.random() < 0.2})
        if choice == 4:
            return update_entity(doc, "activity", _moved(rng, doc))
        return update_entity(doc, "activity", {"status": rng.choice(["planned", "done"])})
    if kind == "location":
        if rng.random() < 0.1:
            return update_entity(doc, "location", {"deleted": rng.random() < 0.5})
        return update_entity(doc, "location", {"name": f"Site {rng.randint(0, 99)}"})
    if kind == "summoning":
        choice = rng.randrange(3)
        if choice == 0:
            return update_entity(doc, "summoning", {"user_id": rng.choice(["user-1", "user-2"])})
        if choice == 1:
            return update_entity(doc, "summoning", _moved(rng, doc))
        return update_entity(doc, "summoning", {"status": rng.choice(["proposed", "confirmed"])})
    if kind == "role":
        return update_entity(doc, "role", {"skills": rng.sample(["a", "b", "c", "d"], 2)})
    if kind == "membership":
        return update_entity(doc, "membership", {"display_name": f"Ana {rng.randint(0, 9)}"})
    if kind == "plan":
        return splice_text(doc, "description", 0, 0, "Updated. ")
    return update_entity(doc, kind, {"timezone": rng.choice(["Europe/Rome", "UTC"])})


def _moved(rng: random.Random, doc: Document) -> dict[str, object]:
    """One end of the window moved by whole hours (either may end up before the other)."""
    name = rng.choice(["starts_at", "ends_at"])
    when = doc.get(b"\x00", name)[0][1]  # type: ignore[index]
    assert isinstance(when, datetime)
    return {name: when.replace(tzinfo=UTC) + timedelta(hours=rng.randint(-30, 30))}


async def test_rebuild_equals_incremental_read_models(
    storage: Storage, inspector: Inspector, log: ChangeLogPort, project: uuid.UUID
) -> None:
    total = await populate(log, project, seed=11)
    assert total >= 300
    incremental = await inspector.state(project)

    report = await storage.maintenance.rebuild_read_models(project)

    assert report.consistent, str(report)
    assert report.changes == incremental.head == total
    rebuilt = await inspector.state(project)
    assert rebuilt == incremental
    assert not report.conflicts_rewritten
    assert sum(len(rows) for _, rows in rebuilt.read_models) == 24
    kinds = {row.kind for row in rebuilt.conflicts}
    assert report.conflicts == len(rebuilt.conflicts)
    assert {"concurrent_edit", "double_booking", "summoning_outside_activity"} <= kinds, kinds
