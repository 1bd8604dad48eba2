"""Append realistic pushes to one project until killed, acknowledging each committed change.

Run from the repository root::

    python -m tests.store.append_worker (--database-url URL | --data-dir DIR)
        --journal FILE [--project UUID] [--seed N] [--devices N]

It migrates the database and, without ``--project``, creates a project and prints
``PROJECT <id>`` first. With ``--project`` it continues an existing project, editing the
entities already stored there as newly synced devices would. Then each of ``--devices``
concurrent devices loops: a push (several entities: new ones and edits of earlier ones,
several changes each) is first written to the journal, one line per change,
``<entity_type> <entity_id> <hash hex> <change hex>``, then sent through
``ChangeLog.append``. Only after ``append`` returned (the transaction committed) does the
device print one line per change, ``ACK <seq> <entity_id> <hash hex>``, and flush. Every
acknowledged change must therefore be in the log, however the worker or the database dies.
A rejected entity is a bug: the worker then exits with status 1. SIGTERM or SIGINT stop it
cleanly; the test uses SIGKILL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import asyncpg
from automerge.core import Document

from fieldsync.model.changes import parse_change
from fieldsync.model.documents import load_document
from fieldsync.model.entities import ACTIVITY_STATUSES, SUMMONING_STATUSES
from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import (
    NoChange,
    create_entity,
    insert_list_item,
    splice_text,
    update_entity,
)
from fieldsync.store.changelog import Accepted, ChangeLog
from fieldsync.store.database import close_pool, connect, create_pool, resolve_database_url
from fieldsync.store.migrations import migrate
from fieldsync.store.projects import create_account, create_project
from tests.entities import (
    activity_values,
    location_values,
    new_id,
    plan_values,
    role_values,
    summoning_values,
)

SENDER = "append-worker"
_WORDS = (
    "core", "sample", "drill", "jar", "label", "north", "ridge", "quarry", "water", "rain",
    "mud", "rope", "bit", "depth", "metre", "site", "marker", "fence", "gate", "track",
)


@dataclass(slots=True)
class Entity:
    kind: str
    doc: Document


class Workload:
    """A device's entities and the pushes it makes: new entities, edits of earlier ones.

    One activity is "hot": every push adds several field notes to it, so its stored document
    grows past the compaction threshold and the ``saved`` + ``tail`` path is exercised too.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.entities: dict[str, Entity] = {}
        self.hot: str | None = None
        self._counter = 0

    def adopt(self, entity_id: str, kind: str, doc: Document) -> None:
        self.entities[entity_id] = Entity(kind, doc)

    def ids(self, kind: str) -> list[str]:
        return [e for e, entity in self.entities.items() if entity.kind == kind]

    def next_push(self) -> list[EntityChanges]:
        push: dict[str, list[bytes]] = {}
        plans = self.ids("plan")
        if not plans:
            plans = [self._create(push, "plan", plan_values())]
        if self.hot is None:
            self.hot = self._create(push, "activity", activity_values(plans[0], title="Hot"))
        for _ in range(self.rng.randint(1, 2)):
            self._create_random(push, plans)
        notes = self.entities[self.hot].doc
        push.setdefault(self.hot, []).extend(
            splice_text(notes, "description", 0, 0, self._note())
            for _ in range(self.rng.randint(4, 6))
        )
        earlier = [e for e in self.entities if e not in push]
        for entity_id in self.rng.sample(earlier, min(len(earlier), self.rng.randint(2, 3))):
            push[entity_id] = list(self._edits(entity_id, self.rng.randint(1, 3)))
        batch = [
            EntityChanges(self.entities[e].kind, e, changes)
            for e, changes in push.items()
            if changes
        ]
        self.rng.shuffle(batch)
        return batch

    def _note(self) -> str:
        return " ".join(self.rng.choices(_WORDS, k=self.rng.randint(20, 40))) + ". "

    def _create(self, push: dict[str, list[bytes]], kind: str, values: dict[str, object]) -> str:
        entity_id = new_id()
        doc, change = create_entity(kind, values)
        self.adopt(entity_id, kind, doc)
        push[entity_id] = [change, *self._edits(entity_id, self.rng.randint(0, 2))]
        return entity_id

    def _create_random(self, push: dict[str, list[bytes]], plans: list[str]) -> None:
        self._counter += 1
        n = self._counter
        activities, roles = self.ids("activity"), self.ids("role")
        kind = self.rng.choice(["location", "role", "activity", "summoning"])
        if kind == "location":
            self._create(push, kind, location_values(n))
        elif kind == "role" or not roles:
            self._create(push, "role", role_values(f"Role {n}"))
        elif kind == "activity" or not activities:
            locations = self.ids("location")
            location = self.rng.choice(locations) if locations else None
            self._create(push, "activity", activity_values(plans[0], location, day=n % 30))
        else:
            activity, role = self.rng.choice(activities), self.rng.choice(roles)
            self._create(push, "summoning", summoning_values(activity, role, day=n % 30))

    def _edits(self, entity_id: str, count: int) -> Iterator[bytes]:
        entity = self.entities[entity_id]
        for _ in range(count):
            with contextlib.suppress(NoChange):
                yield self._edit(entity)

    def _edit(self, entity: Entity) -> bytes:
        rng, doc = self.rng, entity.doc
        word = rng.choice(["Check ", "Rain? ", "Bring rope. ", "Moved. "])
        edits: dict[str, list[Callable[[], bytes]]] = {
            "activity": [
                lambda: splice_text(doc, "description", 0, 0, word),
                lambda: insert_list_item(
                    doc, "activity", "tasks", 0, {"title": word.strip(), "done": False}
                ),
                lambda: update_entity(
                    doc, "activity", {"status": rng.choice(ACTIVITY_STATUSES)}
                ),
                lambda: update_entity(doc, "activity", {"title": f"Sampling {rng.randint(0, 99)}"}),
            ],
            "plan": [lambda: splice_text(doc, "description", 0, 0, word)],
            "location": [
                lambda: update_entity(doc, "location", {"name": f"Site {rng.randint(0, 99)}"}),
                lambda: update_entity(doc, "location", {"address": f"{rng.randint(1, 99)} Pass"}),
            ],
            "role": [
                lambda: update_entity(
                    doc, "role", {"skills": rng.sample(["drilling", "first aid", "maps"], 2)}
                ),
            ],
            "summoning": [
                lambda: update_entity(
                    doc, "summoning", {"status": rng.choice(SUMMONING_STATUSES)}
                ),
            ],
        }
        return rng.choice(edits[entity.kind])()


async def load_project(
    conn: asyncpg.Connection, project_id: uuid.UUID, devices: list[Workload]
) -> None:
    """Share the project's stored entities out among the devices, each in a fresh document.

    The busiest activities stay hot, one per device.
    """
    rows = await conn.fetch(
        "SELECT entity_id, entity_type, saved || tail AS document, change_count "
        "FROM documents WHERE project_id = $1 ORDER BY entity_id",
        project_id,
    )
    activities = [r for r in rows if r["entity_type"] == "activity"]
    activities.sort(key=lambda r: r["change_count"], reverse=True)
    owners = {}
    for device, row in zip(devices, activities, strict=False):
        device.hot = row["entity_id"]
        owners[row["entity_id"]] = device
    for index, row in enumerate(rows):
        owner = owners.get(row["entity_id"], devices[index % len(devices)])
        owner.adopt(row["entity_id"], row["entity_type"], load_document(row["document"]))


def _journal_lines(batch: list[EntityChanges]) -> str:
    return "".join(
        f"{item.entity_type} {item.entity_id} {parse_change(c).hash.hex()} {c.hex()}\n"
        for item in batch
        for c in item.changes
    )


async def push_forever(
    log: ChangeLog, project: uuid.UUID, device: Workload, journal: TextIO
) -> None:
    while True:
        batch = device.next_push()
        journal.write(_journal_lines(batch))
        journal.flush()
        results = await log.append(project, batch, sender=SENDER)
        acks = []
        for item, result in zip(batch, results, strict=True):
            if not isinstance(result, Accepted):
                raise RuntimeError(f"push of {item.entity_id} was rejected: {result}")
            for change, seq in zip(item.changes, result.seqs, strict=True):
                acks.append(f"ACK {seq} {item.entity_id} {parse_change(change).hash.hex()}\n")
        # One write per push, so a kill never leaves half an acknowledgement behind.
        sys.stdout.write("".join(acks))
        sys.stdout.flush()


async def run(
    url: str, project: uuid.UUID | None, journal: TextIO, seed: int, device_count: int
) -> None:
    # SIGTERM or SIGINT stops the worker cleanly (an embedded server it started stops too).
    main_task = asyncio.current_task()
    assert main_task is not None
    for stop in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(stop, main_task.cancel)
    devices = [Workload(random.Random(seed * 1000 + i)) for i in range(device_count)]
    conn = await connect(url)
    try:
        await migrate(conn)
        if project is None:
            account = await create_account(conn, "Restart test account")
            project = await create_project(conn, account, "Restart test project")
            sys.stdout.write(f"PROJECT {project}\n")
            sys.stdout.flush()
        else:
            await load_project(conn, project, devices)
    finally:
        await conn.close()
    pool = await create_pool(url, min_size=1, max_size=device_count)
    try:
        log = ChangeLog(pool)
        await asyncio.gather(*(push_forever(log, project, d, journal) for d in devices))
    finally:
        await close_pool(pool, within=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.store.append_worker")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--database-url")
    where.add_argument("--data-dir", type=Path, help="run the embedded PostgreSQL of this dir")
    parser.add_argument("--journal", type=Path, required=True)
    parser.add_argument("--project", type=uuid.UUID)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--devices", type=int, default=2, help="concurrent appenders")
    args = parser.parse_args(argv)
    data_dir: Path = args.data_dir or Path(".")
    with (
        resolve_database_url(args.database_url, data_dir, environ={}) as url,
        args.journal.open("a", encoding="ascii") as journal,
        contextlib.suppress(asyncio.CancelledError),
    ):
        asyncio.run(run(url, args.project, journal, args.seed, args.devices))


if __name__ == "__main__":
    main()
