"""Month-offline resync benchmark for the Python SDK, and opening a large local store.

Resync: a project lead's tablet holds a project of 200 entities (plans, locations,
activities, roles). It goes offline and the lead makes 1,000 edits across those 200
entities; meanwhile another member makes 1,000 edits of the same entities through the server.
The clock starts when the lead's app creates its ``FieldsyncClient`` on the store file and
stops when the client has pushed its outbox (every change acknowledged), pulled and applied
everyone else's changes, and its cursor is at the server's head: ``open_project`` +
``wait_synced`` + the cursor reaching the head. Every run then checks that each entity's
heads equal the server's. The server runs as its own process (``fieldsync serve``); setup
(not timed) goes through SDK clients too.

Large store: a 10,000-entity project is seeded through the store API, a fresh SDK client
bootstraps it (timed and reported), then a new client opens the store file offline and
reads one entity: the time to that first read is the second figure.

    python bench/resync.py [--runs N] [--entities N] [--edits N] [--store-entities N]
                           [--profile PATH] [--client-profile]

``--profile PATH`` attaches py-spy to the server process during the timed resyncs;
``--client-profile`` runs pyinstrument on this process (the client) during the last resync.
The last line is the headline: the median resync time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import (
    CpuUse,
    ServerProfile,
    Team,
    database,
    entity_history,
    make_project,
    reference_ids,
    seed,
    server_process,
)

from fieldsync_client import FieldsyncClient, Project
from tests.entities import START, activity_values, location_values, plan_values, role_values

ENTITIES = 200
EDITS = 1_000  # by the lead offline, and as many by the other member
STORE_ENTITIES = 10_000
TARGET_SECONDS = 1.0
TARGET_OPEN_SECONDS = 0.2
KINDS = ("activity", "activity", "activity", "location", "role")
STATUSES = ("planned", "confirmed", "in_progress", "done")


def _values(kind: str, index: int, plan: str) -> dict[str, object]:
    if kind == "activity":
        return activity_values(plan, day=index % 60, title=f"Core sampling {index}")
    if kind == "location":
        return location_values(index)
    return role_values(f"Role {index}")


async def _edit(project: Project, kind: str, entity_id: str, n: int, who: str) -> None:
    """One realistic edit; every edit changes something."""
    rng = random.Random(f"{who}-{n}")
    if kind == "activity":
        choice = rng.randrange(4)
        if choice == 0:
            await project.splice_text(kind, entity_id, "description", 0, 0, f"{who} {n}. ")
        elif choice == 1:
            await project.update(kind, entity_id, {"title": f"Survey leg {n} ({who})"})
        elif choice == 2:
            ends = START + timedelta(days=70, minutes=n)
            await project.update(kind, entity_id, {"ends_at": ends})
        else:
            await project.insert_item(
                kind, entity_id, "tasks", 0, {"title": f"Task {n} ({who})", "done": False}
            )
    elif kind == "location":
        await project.update(kind, entity_id, {"address": f"{n} Ridge Road ({who})"})
    else:
        await project.update(kind, entity_id, {"name": f"Role {n} ({who})"})


async def _edit_round(
    project: Project, entities: list[tuple[str, str]], edits: int, who: str
) -> None:
    for n in range(edits):
        kind, entity_id = entities[n % len(entities)]
        await _edit(project, kind, entity_id, n, who)


def _client(url: str | None, token: str, path: Path, **options: Any) -> FieldsyncClient:
    return FieldsyncClient(url, token, path, backoff_base=0.05, backoff_cap=0.5, **options)


async def _prepare(base: str, team: Team, directory: Path, entities: int, edits: int) -> Path:
    """The lead's store after a month offline; the other member's edits are on the server."""
    url = f"ws://{base}"
    project_id = str(team.project_id)
    lead_path = directory / f"lead-{uuid.uuid4().hex[:8]}.db"
    lead, other = team.members
    made: list[tuple[str, str]] = []
    async with _client(url, lead.token, lead_path) as client:
        project = await client.open_project(project_id)
        plan = await project.create("plan", plan_values())
        made.append(("plan", plan))
        for index in range(entities - 1):
            kind = KINDS[index % len(KINDS)]
            made.append((kind, await project.create(kind, _values(kind, index, plan))))
        await client.wait_synced(60)
    other_path = directory / f"other-{uuid.uuid4().hex[:8]}.db"
    async with _client(url, other.token, other_path) as client:
        project = await client.open_project(project_id)
        await client.wait_synced(60)
        await _edit_round(project, list(reversed(made)), edits, "other")
        await client.wait_synced(120)
    async with _client(None, lead.token, lead_path) as client:  # a month with no network
        project = await client.open_project(project_id)
        await _edit_round(project, made, edits, "lead")
        assert project.pending_count() == edits
    other_path.unlink()
    return lead_path


async def _server_heads(
    base: str, token: str, project_id: str, directory: Path
) -> dict[str, list[bytes]]:
    """Every entity's heads on the server, through a fresh SDK client's bootstrap."""
    path = directory / f"check-{uuid.uuid4().hex[:8]}.db"
    async with _client(f"ws://{base}", token, path) as client:
        project = await client.open_project(project_id)
        await client.wait_synced(60)
        heads = {}
        for kind in ("plan", "activity", "location", "role"):
            for entity_id in await project.ids(kind, include_deleted=True):
                heads[entity_id] = await project.heads(entity_id)
    path.unlink()
    return heads


async def _resync(
    base: str, token: str, project_id: str, path: Path, head: int
) -> tuple[float, str, FieldsyncClient]:
    started = time.perf_counter()
    client = _client(f"ws://{base}", token, path)
    project = await client.open_project(project_id)
    opened = time.perf_counter()
    await client.wait_synced(120)
    synced = time.perf_counter()
    while project.cursor is None or project.cursor < head:  # noqa: ASYNC110 (no cursor event)
        await asyncio.sleep(0.001)
    done = time.perf_counter()
    detail = (
        f"open_project {1000 * (opened - started):.0f} ms, wait_synced "
        f"{1000 * (synced - opened):.0f} ms, cursor at head {1000 * (done - synced):.0f} ms"
    )
    return done - started, detail, client


async def resync_runs(
    url: str, base: str, pid: int, args: argparse.Namespace, directory: Path
) -> float:
    totals: list[float] = []
    cpu_lines: list[str] = []
    for run in range(1, args.runs + 1):
        team = await make_project(url, 2, f"resync {run}")
        project_id = str(team.project_id)
        prepared = time.perf_counter()
        path = await _prepare(base, team, directory, args.entities, args.edits)
        setup = time.perf_counter() - prepared
        head = 2 * args.edits + args.entities  # creations, the other's edits, the lead's
        profiler = None
        if args.client_profile and run == args.runs:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005, async_mode="enabled")
        output = args.profile.with_name(f"{args.profile.name}-{run}") if args.profile else None
        with ServerProfile(pid, output) as server_profile:
            cpu = CpuUse(pid, url)
            if profiler is not None:
                profiler.start()
            seconds, detail, client = await _resync(
                base, team.members[0].token, project_id, path, head
            )
        cpu.stop()
        if profiler is not None:
            profiler.stop()
        try:
            project = client.projects[project_id]
            assert project.pending_count() == 0
            assert client.status.rejected == 0
            mine = {}
            for kind in ("plan", "activity", "location", "role"):
                for entity_id in await project.ids(kind, include_deleted=True):
                    mine[entity_id] = await project.heads(entity_id)
        finally:
            await client.close()
        theirs = await _server_heads(base, team.members[1].token, project_id, directory)
        assert len(mine) == args.entities, len(mine)
        assert mine == theirs, "the lead's documents differ from the server's"
        totals.append(seconds)
        print(
            f"run {run}: resync {seconds:.3f} s ({detail}); converged: {len(mine)} entities "
            f"equal to the server's; setup {setup:.1f} s (not timed)"
        )
        cpu_lines.append(f"run {run}: {cpu.describe(seconds)} (this process: the client)")
        if output is not None:
            print(server_profile.report())
        if profiler is not None:
            print(profiler.output_text(unicode=False, color=False, show_all=False))
        path.unlink()
    for line in cpu_lines:
        print(line)
    return statistics.median(totals)


async def large_store(url: str, base: str, args: argparse.Namespace, directory: Path) -> float:
    """Bootstrap a large project into a store, then time opening it and reading one entity."""
    refs = reference_ids()
    count = args.store_entities
    kinds = ["plan"] + ["location"] * 99 + ["activity"] * (count - 100)
    histories = [entity_history(kind, index, refs, 3) for index, kind in enumerate(kinds)]
    team = await make_project(url, 1, "large store")
    head = await seed(url, team.project_id, histories)
    project_id = str(team.project_id)
    token = team.members[0].token
    path = directory / "large.db"
    for http in (False, True):  # the last one stays for the open-and-read figure
        path.unlink(missing_ok=True)
        started = time.perf_counter()
        async with _client(
            f"ws://{base}", token, path, bootstrap_timeout=300, http_snapshots=http
        ) as client:
            project = await client.open_project(project_id)
            bootstrapped = time.perf_counter() - started
            assert project.cursor == head, (project.cursor, head)
        print(
            f"first open of a {count}-entity project, snapshot over "
            f"{'HTTP' if http else 'the WebSocket'}, stored: {bootstrapped:.2f} s; "
            f"store file {path.stat().st_size / 1e6:.1f} MB"
        )
    wanted = histories[count // 2]
    times = []
    for _ in range(5):
        started = time.perf_counter()
        client = _client(None, token, path)
        project = await client.open_project(project_id)
        values = await project.get(wanted.entity_type, wanted.entity_id)
        times.append(time.perf_counter() - started)
        await client.close()
        assert values["title"], values
    print(
        "open the store and read one entity: "
        + ", ".join(f"{1000 * t:.1f} ms" for t in times)
        + f" (median {1000 * statistics.median(times):.1f} ms; target "
        f"{1000 * TARGET_OPEN_SECONDS:.0f} ms)"
    )
    return statistics.median(times)


async def measure(url: str, base: str, pid: int, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory(prefix="fsr", dir="/tmp") as name:
        directory = Path(name)
        if args.store_entities:
            await large_store(url, base, args, directory)
        return await resync_runs(url, base, pid, args, directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--entities", type=int, default=ENTITIES)
    parser.add_argument("--edits", type=int, default=EDITS)
    parser.add_argument("--store-entities", type=int, default=STORE_ENTITIES)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw output path")
    parser.add_argument("--client-profile", action="store_true")
    args = parser.parse_args()
    print("load average before: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    with database() as url, server_process(url) as server:
        seconds = asyncio.run(measure(url, server.base, server.pid, args))
    print("load average after: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    verdict = "meets" if seconds < TARGET_SECONDS else "MISSES"
    print(
        f"resync {args.edits} + {args.edits} edits across {args.entities} entities: "
        f"{seconds:.3f} s median ({verdict} the {TARGET_SECONDS} s target)"
    )


if __name__ == "__main__":
    main()
