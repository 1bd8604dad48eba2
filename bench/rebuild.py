"""Rebuild benchmark: ``rebuild-read-models`` on a project with many summonings.

A project of ``--activities`` activities at 10 locations and ``--summonings`` summonings (one
user per five summonings, so people are double-booked) is appended through the store, then
every summoning is moved twice, so the cross-entity rules have row changes to replay. The
rebuild then replays the whole log: read models, documents check, and every conflict rule.
The figure grows about linearly with the project (it was quadratic before the rows and
conflicts were indexed: 34 s for the default size). The last line is the headline.

    .venv/bin/python bench/rebuild.py [--activities 800] [--summonings 4000] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from datetime import timedelta
from pathlib import Path
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import database

from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import create_entity, update_entity
from fieldsync.store.changelog import Accepted, ChangeLog
from fieldsync.store.database import close_pool, create_pool
from fieldsync.store.projects import create_account, create_project
from fieldsync.store.rebuild import rebuild_read_models
from tests.entities import (
    START,
    activity_values,
    location_values,
    new_id,
    role_values,
    summoning_values,
)

PUSH = 200  # entities per push


async def populate(log: ChangeLog, project: UUID, activities: int, summonings: int) -> int:
    rng = random.Random(1)
    batch: list[EntityChanges] = []
    locations = [new_id() for _ in range(10)]
    for i, location in enumerate(locations):
        change = create_entity("location", location_values(i))[1]
        batch.append(EntityChanges("location", location, [change]))
    role = new_id()
    batch.append(EntityChanges("role", role, [create_entity("role", role_values())[1]]))
    activity_ids = []
    for i in range(activities):
        activity = new_id()
        activity_ids.append(activity)
        values = activity_values(new_id(), rng.choice(locations), day=i % 30)
        batch.append(EntityChanges("activity", activity, [create_entity("activity", values)[1]]))
    documents = {}
    for _ in range(summonings):
        summoning = new_id()
        values = summoning_values(rng.choice(activity_ids), role, day=rng.randrange(30))
        values["user_id"] = f"user-{rng.randrange(max(1, summonings // 5))}"
        documents[summoning], change = create_entity("summoning", values)
        batch.append(EntityChanges("summoning", summoning, [change]))
    for summoning, doc in documents.items():
        moves = [
            update_entity(doc, "summoning", {"starts_at": START + timedelta(hours=h)})
            for h in (1000 + rng.randrange(5), 1010 + rng.randrange(5))
        ]
        batch.append(EntityChanges("summoning", summoning, moves))
    logged = 0
    # An entity at most once per push: its moves go in a later push than its creation.
    pushes: list[list[EntityChanges]] = [[]]
    seen: set[str] = set()
    for item in batch:
        if item.entity_id in seen or len(pushes[-1]) >= PUSH:
            pushes.append([])
            seen = set()
        pushes[-1].append(item)
        seen.add(item.entity_id)
    for push in pushes:
        for result in await log.append(project, push, "bench"):
            assert isinstance(result, Accepted), result
            logged += len(result.seqs)
    return logged


async def run(url: str, activities: int, summonings: int, profile: bool) -> None:
    pool = await create_pool(url, 1, 4)
    try:
        async with pool.acquire() as conn:
            project = await create_project(conn, await create_account(conn, "bench"), "bench")
        changes = await populate(ChangeLog(pool), project, activities, summonings)
        profiler = None
        if profile:
            import pyinstrument

            profiler = pyinstrument.Profiler()
            profiler.start()
        started = time.perf_counter()
        report = await rebuild_read_models(pool, project)
        elapsed = time.perf_counter() - started
        if profiler is not None:
            profiler.stop()
            print(profiler.output_text(color=False))
        assert report.consistent, str(report)
        assert not report.conflicts_rewritten, "the rebuild disagreed with the append path"
        print(f"{report.entities} entities, {changes} changes, {report.conflicts} conflict records")
        print(f"rebuild of {activities} activities and {summonings} summonings: {elapsed:.1f} s")
    finally:
        await close_pool(pool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activities", type=int, default=800)
    parser.add_argument("--summonings", type=int, default=4000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    with database() as url:
        asyncio.run(run(url, args.activities, args.summonings, args.profile))


if __name__ == "__main__":
    main()
