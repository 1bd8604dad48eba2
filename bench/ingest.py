"""Ingest benchmark: realistic client pushes appended through the store API.

500 entities of mixed types, 20 changes each (10,000 changes), spread over 4 projects and
pushed by 8 concurrent clients, each push carrying 10 entities with 5 changes apiece, as a
tablet resyncing after a day offline would send them. Change bytes are made before the clock
starts; the timed part is decode, merge, validation, projection and the durable commit.

    python bench/ingest.py [--cache-size N] [--profile] [--history N]

``--cache-size 0`` forces the slow path (every push reloads each document from its stored
bytes) for comparison. ``--history N`` measures instead 40 entities that already have N
changes each receiving 10 pushes of 5 more: the cost of a change must not grow with N.
Uses the embedded PostgreSQL unless DATABASE_URL is set. The last line is the headline
figure: accepted changes per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import create_entity, splice_text, update_entity
from fieldsync.store.changelog import Accepted, ChangeLog
from fieldsync.store.database import close_pool, connect, create_pool
from fieldsync.store.embedded import embedded_postgres
from fieldsync.store.migrations import migrate
from fieldsync.store.projects import create_account, create_project
from tests.entities import (
    START,
    activity_values,
    location_values,
    role_values,
    summoning_values,
)

PROJECTS = 4
ENTITIES = 500
CHANGES_PER_ENTITY = 20
CLIENTS = 8
ENTITIES_PER_PUSH = 10
CHANGES_PER_ROUND = 5

Push = tuple[uuid.UUID, list[EntityChanges]]


def later(minutes: int) -> datetime:
    return START + timedelta(hours=7, minutes=minutes)


def _entity_history(kind: str, index: int, refs: dict[str, str]) -> list[bytes]:
    """One entity's 20 changes: a creation and 19 realistic edits."""
    rng = random.Random(index)
    if kind == "activity":
        doc, first = create_entity("activity", activity_values(refs["plan"], refs["location"]))
        edits: list[Callable[[int], bytes]] = [
            lambda n: splice_text(doc, "description", 0, 0, f"Note {n}. "),
            lambda n: update_entity(doc, "activity", {"ends_at": later(n)}),
            lambda n: update_entity(doc, "activity", {"title": f"Survey leg {n}"}),
        ]
    elif kind == "location":
        doc, first = create_entity("location", location_values(index))
        edits = [lambda n: update_entity(doc, "location", {"address": f"{n} Ridge"})]
    elif kind == "role":
        doc, first = create_entity("role", role_values(f"Role {index}"))
        edits = [lambda n: update_entity(doc, "role", {"name": f"Role {index}.{n}"})]
    else:
        doc, first = create_entity("summoning", summoning_values(refs["activity"], refs["role"]))
        edits = [
            lambda n: update_entity(doc, "summoning", {"starts_at": START + timedelta(minutes=n)})
        ]
    # Each edit writes a value the field did not hold before, so every edit is a real change.
    return [first] + [rng.choice(edits)(n) for n in range(1, CHANGES_PER_ENTITY)]


def make_workload(projects: list[uuid.UUID]) -> list[list[Push]]:
    """Per client, its pushes in order; every entity's changes arrive in rounds of five."""
    kinds = ["activity"] * 5 + ["location"] * 2 + ["role", "summoning", "summoning"]
    histories: list[tuple[uuid.UUID, str, str, list[bytes]]] = []
    refs = {k: str(uuid.uuid4()) for k in ("plan", "location", "activity", "role")}
    for index in range(ENTITIES):
        kind = kinds[index % len(kinds)]
        project = projects[index % len(projects)]
        histories.append((project, kind, str(uuid.uuid4()), _entity_history(kind, index, refs)))
    pushes: list[list[Push]] = [[] for _ in range(CLIENTS)]
    for round_start in range(0, CHANGES_PER_ENTITY, CHANGES_PER_ROUND):
        for client in range(CLIENTS):
            mine = [h for i, h in enumerate(histories) if i % CLIENTS == client]
            for start in range(0, len(mine), ENTITIES_PER_PUSH):
                group = mine[start : start + ENTITIES_PER_PUSH]
                by_project: dict[uuid.UUID, list[EntityChanges]] = {}
                for project, kind, entity_id, changes in group:
                    by_project.setdefault(project, []).append(
                        EntityChanges(kind, entity_id, changes[round_start : round_start + 5])
                    )
                pushes[client].extend(by_project.items())
    return pushes


async def run(url: str, cache_size: int, profile: bool) -> float:
    conn = await connect(url)
    await migrate(conn)
    account = await create_account(conn, "bench")
    projects = [await create_project(conn, account, f"bench {i}") for i in range(PROJECTS)]
    await conn.close()
    pool = await create_pool(url, min_size=CLIENTS, max_size=CLIENTS)
    log = ChangeLog(pool, cache_size=cache_size)
    workload = make_workload(projects)
    accepted = 0

    async def client(pushes: list[Push]) -> None:
        nonlocal accepted
        for project, batch in pushes:
            for result in await log.append(project, batch, sender="bench"):
                assert isinstance(result, Accepted), result
                accepted += len(result.seqs)

    profiler = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="disabled")
        profiler.start()
    started = time.perf_counter()
    await asyncio.gather(*(client(p) for p in workload))
    elapsed = time.perf_counter() - started
    if profiler is not None:
        profiler.stop()
        print(profiler.output_text(unicode=False, color=False, show_all=False))
    await close_pool(pool)
    total = ENTITIES * CHANGES_PER_ENTITY
    assert accepted == total, (accepted, total)
    print(f"{total} changes in {sum(len(p) for p in workload)} pushes, {elapsed:.2f} s, "
          f"cache size {cache_size}")
    return total / elapsed


async def run_history(url: str, cache_size: int, history: int) -> float:
    """Appends to entities with a long history: the hot cache against reloading."""
    conn = await connect(url)
    await migrate(conn)
    project = await create_project(conn, await create_account(conn, "bench"), "history")
    await conn.close()
    pool = await create_pool(url, min_size=2, max_size=4)
    log = ChangeLog(pool, cache_size=cache_size)
    entities = []
    for index in range(40):
        entity_id = str(uuid.uuid4())
        doc, first = create_entity("location", location_values(index))
        changes = [first] + [
            update_entity(doc, "location", {"address": f"{n} Ridge"}) for n in range(history)
        ]
        for start in range(0, len(changes), 1000):
            batch = [EntityChanges("location", entity_id, changes[start : start + 1000])]
            await log.append(project, batch, sender="bench")
        entities.append((entity_id, doc))
    pushes = [
        [
            EntityChanges(
                "location",
                entity_id,
                [update_entity(doc, "location", {"name": f"Site {r}.{n}"}) for n in range(5)],
            )
            for entity_id, doc in entities
        ]
        for r in range(10)
    ]
    log = ChangeLog(pool, cache_size=cache_size)  # start cold, as after a restart
    started = time.perf_counter()
    for batch in pushes:
        for result in await log.append(project, batch, sender="bench"):
            assert isinstance(result, Accepted), result
    elapsed = time.perf_counter() - started
    await close_pool(pool)
    total = sum(len(e.changes) for batch in pushes for e in batch)
    print(f"{total} changes onto 40 entities of {history + 1} changes each, {elapsed:.2f} s, "
          f"cache size {cache_size}")
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-size", type=int, default=10_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--history", type=int, default=0)
    args = parser.parse_args()

    def measure(url: str) -> float:
        if args.history:
            return asyncio.run(run_history(url, args.cache_size, args.history))
        return asyncio.run(run(url, args.cache_size, args.profile))

    url = os.environ.get("DATABASE_URL")
    if url:
        rate = measure(url)
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="fsb", dir="/tmp"))
        try:
            with embedded_postgres(data_dir) as embedded_url:
                rate = measure(embedded_url)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(f"{rate:.0f} changes/s")


if __name__ == "__main__":
    main()
