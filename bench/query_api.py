"""Query API latency: one-week windows of activities over a year of 10,000, concurrently.

Builds a project with 10,000 activities spread over a year at 50 locations and one
summoning per activity (appended through the storage's change log in batches of 500, as
pushes are), starts ``fieldsync serve`` in its own process, then ``--clients`` concurrent
HTTP clients each ask for the activities of a random one-week window (``limit=500``, so
one page holds the week), and, with ``--summonings``, for the summonings of a random week
too. Prints p50/p99 latency and requests/s; the last line is the p99 alone, in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import msgspec
from harness import CpuUse, ServerProfile, Team, database, make_project, server_process

from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import create_entity
from fieldsync.store.changelog import Accepted, ChangeLog
from fieldsync.store.database import close_pool, create_pool
from tests.entities import START, activity_values, location_values, plan_values


class _Page(msgspec.Struct):
    """Just what the benchmark checks of an answer (its items are not decoded)."""

    items: list[msgspec.Raw]
    next_cursor: str | None


ACTIVITIES = 10_000
LOCATIONS = 50
DAYS = 365
BATCH = 500


async def build(url: str, activities: int) -> tuple[str, str]:
    """The project and a member's token."""
    team = await make_project(url, 1, "query bench")
    pool = await create_pool(url, min_size=1, max_size=2)
    log = ChangeLog(pool)
    rng = random.Random(12)
    try:
        plan = "plan-bench"
        locations = [f"loc-{i}" for i in range(LOCATIONS)]
        first = [EntityChanges("plan", plan, [create_entity("plan", plan_values())[1]])]
        first += [
            EntityChanges("location", loc, [create_entity("location", location_values(i))[1]])
            for i, loc in enumerate(locations)
        ]
        await _append(log, team, first)
        batch: list[EntityChanges] = []
        for i in range(activities):
            values = activity_values(plan, rng.choice(locations))
            starts_at = START + timedelta(minutes=rng.randrange(DAYS * 24 * 60))
            values["starts_at"] = starts_at
            values["ends_at"] = starts_at + timedelta(hours=rng.randint(1, 10))
            activity_id = f"act-{i}"
            batch.append(
                EntityChanges("activity", activity_id, [create_entity("activity", values)[1]])
            )
            summoning = {
                "activity_id": activity_id,
                "role_id": f"role-{i % 7}",
                # 200 people, ~50 summonings each over the year: a realistic load for the
                # double-booking rule, which reads every summoning of the person named.
                "user_id": f"user-{i % 200}" if i % 2 == 0 else None,
                "starts_at": starts_at,
                "ends_at": values["ends_at"],
                "status": "proposed",
            }
            summoning = {k: v for k, v in summoning.items() if v is not None}
            batch.append(
                EntityChanges("summoning", f"sum-{i}", [create_entity("summoning", summoning)[1]])
            )
            if len(batch) >= BATCH:
                await _append(log, team, batch)
                batch = []
        if batch:
            await _append(log, team, batch)
    finally:
        await close_pool(pool)
    return str(team.project_id), team.members[0].token


async def _append(log: ChangeLog, team: Team, batch: list[EntityChanges]) -> None:
    results = await log.append(team.project_id, batch, "bench")
    refused = [r for r in results if not isinstance(r, Accepted)]
    assert not refused, refused[:3]


async def load(
    base: str, project: str, token: str, clients: int, seconds: float, summonings: bool
) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    items = 0
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(number: int, http: httpx.AsyncClient) -> None:
        nonlocal items
        rng = random.Random(number)
        what = ["activities", "summonings"] if summonings else ["activities"]
        while time.monotonic() < deadline:
            start = START + timedelta(days=rng.randrange(DAYS - 7))
            params = {
                "from": start.isoformat(),
                "to": (start + timedelta(days=7)).isoformat(),
                "limit": "500",
            }
            url = f"http://{base}/api/v1/projects/{project}/{rng.choice(what)}"
            began = time.perf_counter()
            answer = await http.get(url, params=params, headers=headers)
            latencies.append(time.perf_counter() - began)
            assert answer.status_code == 200, answer.text
            page = msgspec.json.decode(answer.content, type=_Page)  # cheaper than .json()
            assert page.next_cursor is None
            items += len(page.items)

    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        began = time.monotonic()
        await asyncio.gather(*(client(n, http) for n in range(clients)))
        wall = time.monotonic() - began
    return latencies, wall, items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--activities", type=int, default=ACTIVITIES)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--summonings", action="store_true", help="mix in summoning windows")
    parser.add_argument("--profile", type=Path, help="py-spy the server into this raw file")
    args = parser.parse_args()
    with database() as url:
        began = time.monotonic()
        project, token = asyncio.run(build(url, args.activities))
        print(
            f"built {args.activities} activities and summonings over {DAYS} days at "
            f"{LOCATIONS} locations in {time.monotonic() - began:.1f} s"
        )
        with server_process(url) as server:
            # Warm up: connections, prepared statements, the page cache.
            asyncio.run(load(server.base, project, token, args.clients, 2.0, args.summonings))
            cpu = CpuUse(server.pid, url)
            with ServerProfile(server.pid, args.profile) as profile:
                latencies, wall, items = asyncio.run(
                    load(server.base, project, token, args.clients, args.seconds, args.summonings)
                )
            cpu.stop()
    ms = sorted(x * 1000 for x in latencies)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(
        f"{len(ms)} requests by {args.clients} clients in {wall:.1f} s: "
        f"{len(ms) / wall:.0f} requests/s, {items / len(ms):.0f} items per answer"
    )
    p90 = ms[int(len(ms) * 0.9)]
    print(f"latency: p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms")
    print(cpu.describe(wall))
    report = profile.report()
    if report:
        print(report)
    print(f"{p99:.1f}")


if __name__ == "__main__":
    main()
