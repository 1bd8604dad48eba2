"""Random offline sessions for property tests: devices edit related entities and sometimes sync.

A session is a list of small integer tuples (Hypothesis shrinks those well); ``play`` turns
them into real Automerge changes made through ``model.writer`` on forks of the same entities.
``deliveries`` then cuts every change the devices made into pushes in a random order that
respects each entity's dependencies, with random batching and duplicates.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import strategies as st

from fieldsync.model.changes import parse_change
from fieldsync.model.writer import NoChange, splice_text
from tests.conflict.helpers import Device, Entity, at, create

PLAN = "plan-1"


def examples(default: int) -> int:
    """Hypothesis examples per property; ``CONFLICT_EXAMPLES=2000`` for a long soak run."""
    return int(os.environ.get("CONFLICT_EXAMPLES", default))

USERS = ("user-1", "user-2")


def project_entities() -> list[Entity]:
    """Two locations, two activities (one at each), a role, two summonings of one user."""
    return [
        create("location", "loc-1", {"name": "North quarry"}),
        create("location", "loc-2", {"name": "South quarry"}),
        create("role", "role-1", {"name": "Geologist"}),
        _activity("act-1", "loc-1", 0),
        _activity("act-2", "loc-2", 8),
        _summoning("sum-1", "act-1", 0),
        _summoning("sum-2", "act-2", 8),
    ]


def activity_only() -> list[Entity]:
    return [_activity("act-1", "loc-1", 0)]


def _activity(entity_id: str, location_id: str, start: int) -> Entity:
    return create(
        "activity",
        entity_id,
        {
            "plan_id": PLAN,
            "title": "Core sampling",
            "description": "Take cores.",
            "tasks": [],
            "location_id": location_id,
            "starts_at": at(start),
            "ends_at": at(start + 6),
            "status": "planned",
        },
    )


def _summoning(entity_id: str, activity_id: str, start: int) -> Entity:
    return create(
        "summoning",
        entity_id,
        {
            "activity_id": activity_id,
            "role_id": "role-1",
            "user_id": USERS[0],
            "starts_at": at(start + 1),
            "ends_at": at(start + 5),
            "status": "confirmed",
        },
    )


# (device, entity, operation, value): every number is taken modulo what it indexes.
Step = tuple[int, int, int, int]


def sessions(devices: tuple[int, int] = (2, 4), steps: int = 14) -> st.SearchStrategy[
    tuple[int, list[Step]]
]:
    small = st.integers(0, 15)
    return st.tuples(
        st.integers(*devices),
        st.lists(st.tuples(small, small, small, small), min_size=1, max_size=steps),
    )


def _activity_edit(op: int, value: int) -> dict[str, object] | None:
    choices: list[dict[str, object]] = [
        {"title": ("North", "South", "East")[value % 3]},
        {"status": ("planned", "confirmed", "done", "cancelled")[value % 4]},
        {"starts_at": at(value % 12)},
        {"ends_at": at(value % 12)},
        {"location_id": ("loc-1", "loc-2", None)[value % 3]},
        {"deleted": value % 2 == 0},
    ]
    return choices[op % (len(choices) + 1)] if op % (len(choices) + 1) < len(choices) else None


def _summoning_edit(op: int, value: int) -> dict[str, object]:
    choices: list[dict[str, object]] = [
        {"starts_at": at(value % 16)},
        {"ends_at": at(value % 16)},
        {"user_id": USERS[value % 2]},
        {"activity_id": ("act-1", "act-2")[value % 2]},
        {"status": ("proposed", "confirmed", "declined")[value % 3]},
        {"deleted": value % 2 == 0},
    ]
    return choices[op % len(choices)]


@dataclass
class Session:
    entities: list[Entity]
    devices: list[Device]


def play(entities: list[Entity], count: int, steps: Sequence[Step]) -> Session:
    """Apply ``steps``. Operations 12-13 sync from another device, 14 from all of them,
    15 syncs from all and then makes one of the first four edits of the entity."""
    devices = [Device(n, entities) for n in range(1, count + 1)]
    for device_no, entity_no, op, value in steps:
        device = devices[device_no % count]
        if op in (12, 13):
            other = (device_no % count + 1 + value % (count - 1)) % count
            device.sync_from(devices[other])
            continue
        if op >= 14:  # catch up with everyone; 15 then edits, often resolving something
            for other_device in devices:
                if other_device is not device:
                    device.sync_from(other_device)
            if op == 14:
                continue
            op = value % 4
            value //= 4
        entity = entities[entity_no % len(entities)]
        edit: dict[str, object] | None
        if entity.entity_type == "activity":
            edit = _activity_edit(op, value)
            if edit is None:
                doc = device.docs[entity.entity_id]
                change = splice_text(doc, "description", 0, 0, "ab"[value % 2])
                device.made[entity.entity_id].append(change)
                continue
        elif entity.entity_type == "summoning":
            edit = _summoning_edit(op, value)
        else:
            edit = {"deleted": value % 2 == 0}
        with contextlib.suppress(NoChange):
            device.edit(entity.entity_id, edit)
    return Session(entities, devices)


Push = list[tuple[str, str, list[bytes]]]


def all_changes(session: Session) -> dict[str, list[bytes]]:
    """Every change per entity id (creation first), each once."""
    out: dict[str, list[bytes]] = {}
    for entity in session.entities:
        by_hash = {parse_change(c).hash: c for c in entity.changes}
        for device in session.devices:
            for change in device.changes_since(entity):
                by_hash.setdefault(parse_change(change).hash, change)
        out[entity.entity_id] = list(by_hash.values())
    return out


def deliveries(session: Session, rng: random.Random) -> list[Push]:
    """Every change, in a random dependency-respecting order, cut into random pushes."""
    types = {e.entity_id: e.entity_type for e in session.entities}
    pending = {
        entity_id: {parse_change(c).hash: c for c in changes}
        for entity_id, changes in all_changes(session).items()
    }
    deps = {
        h: parse_change(c).deps for changes in pending.values() for h, c in changes.items()
    }
    done: set[bytes] = set()
    order: list[tuple[str, bytes]] = []
    while any(pending.values()):
        ready = [
            (entity_id, h)
            for entity_id, changes in sorted(pending.items())
            for h in sorted(changes)
            if all(d in done for d in deps[h])
        ]
        entity_id, h = rng.choice(ready)
        order.append((entity_id, pending[entity_id].pop(h)))
        done.add(h)
    pushes: list[Push] = []
    position = 0
    sent: list[tuple[str, bytes]] = []
    while position < len(order):
        size = rng.randint(1, 4)
        chunk = order[position : position + size]
        position += size
        if sent and rng.random() < 0.2:
            chunk = [*chunk, rng.choice(sent)]  # a retry of something already logged
        sent.extend(chunk)
        grouped: dict[str, list[bytes]] = {}
        for entity_id, change in chunk:
            grouped.setdefault(entity_id, []).append(change)
        pushes.append([(types[e], e, cs) for e, cs in grouped.items()])
    return pushes
