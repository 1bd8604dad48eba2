"""Ingest over the WebSocket: 11,000 changes pushed by 1 client, then by 20 clients at once.

1,000 entities (activities, locations, roles and summonings), each with 11 changes (its
creation and 10 edits), go to a fresh project through the sync protocol, against a server
running as its own process. A client pushes its entities 10 per push, each entity's changes
in three rounds as an app that syncs now and then would send them (creation and 2 edits,
then 4 edits, then 4 more), with up to 4 pushes in flight (results carry the push id). The
same workload, with new entity ids and a new project, is pushed once by 1 client and once by
20 clients at once, each with its own 50 entities and its own user. All change bytes and
push frames are made before the clock starts; connections are open (hello answered) before
it too. The clock stops at the last ``push_result``; only changes acknowledged in an
``ok: true`` result count.

    python bench/ingest_ws.py [--subscribe] [--in-flight N] [--profile PATH] [--workers N]

``--subscribe`` makes every client subscribe to the project first, as an app does, so the
server also streams every accepted change back to each of them during the run.
``--profile PATH`` attaches py-spy to the server process during each phase (files
PATH-1.txt and PATH-20.txt) and prints where its time went. ``--workers N`` runs N server
processes on the one database, as ``fieldsync serve --workers N`` does, client ``i`` on
process ``i mod N`` (the one client on the first; the CPU is summed over all, and the
one-process ceiling printed is then per change over all of them). The last line is the
headline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import (
    CpuUse,
    EntityHistory,
    ServerProfile,
    database,
    describe_ms,
    entity_history,
    make_project,
    open_client,
    reference_ids,
    server_process,
    until_synced,
)
from websockets.asyncio.client import ClientConnection

from fieldsync.store.database import connect
from fieldsync.sync.codec import decode_server, encode
from fieldsync.sync.messages import EntityAccepted, EntityPush, ProjectCursor, Push, PushResult

ENTITIES = 1_000
CHANGES_PER_ENTITY = 11
ROUNDS = (3, 4, 4)  # changes per entity in each round; they add up to CHANGES_PER_ENTITY
ENTITIES_PER_PUSH = 10
IN_FLIGHT = 4
TARGET_CHANGES_PER_SECOND = 10_000
KINDS = ["activity"] * 5 + ["location"] * 2 + ["role"] + ["summoning"] * 2


def make_histories() -> list[EntityHistory]:
    refs = reference_ids()
    return [
        entity_history(KINDS[index % len(KINDS)], index, refs, CHANGES_PER_ENTITY)
        for index in range(ENTITIES)
    ]


def push_frames(project: uuid.UUID, mine: list[EntityHistory]) -> list[tuple[bytes, int]]:
    """One client's pushes in order, as (frame, number of changes); push ids from 0."""
    frames: list[tuple[bytes, int]] = []
    for round_index, size in enumerate(ROUNDS):
        first = sum(ROUNDS[:round_index])
        for start in range(0, len(mine), ENTITIES_PER_PUSH):
            entities = tuple(
                EntityPush(e.entity_type, e.entity_id, tuple(e.changes[first : first + size]))
                for e in mine[start : start + ENTITIES_PER_PUSH]
            )
            push = Push(len(frames), str(project), entities)
            frames.append((encode(push), sum(len(e.changes) for e in entities)))
    return frames


@dataclass
class ClientRun:
    accepted: int = 0
    rejected: list[str] = field(default_factory=list)
    ack_ms: list[float] = field(default_factory=list)
    finished: float = 0.0


async def push_all(
    ws: ClientConnection, frames: list[tuple[bytes, int]], in_flight: int
) -> ClientRun:
    """Send every frame with at most ``in_flight`` unanswered; read until all are answered."""
    run = ClientRun()
    slots = asyncio.Semaphore(in_flight)
    sent_at = [0.0] * len(frames)

    async def send() -> None:
        for index, (frame, _) in enumerate(frames):
            await slots.acquire()
            sent_at[index] = time.perf_counter()
            await ws.send(frame)

    async def read() -> None:
        answered = 0
        while answered < len(frames):
            message = decode_server(await asyncio.wait_for(ws.recv(decode=False), 120))
            if not isinstance(message, PushResult):
                continue  # changes streamed back to a subscribed client
            arrived = time.perf_counter()
            answered += 1
            slots.release()
            run.ack_ms.append(1000 * (arrived - sent_at[message.push_id]))
            for result in message.results:
                if isinstance(result, EntityAccepted):
                    run.accepted += len(result.seqs)
                else:
                    run.rejected.append(f"{result.entity_id}: {result.code} {result.message}")
        run.finished = time.perf_counter()

    await asyncio.gather(send(), read())
    return run


async def phase(
    url: str, bases: list[str], pids: list[int], clients: int, args: argparse.Namespace
) -> float:
    histories = make_histories()
    team = await make_project(url, clients, f"ingest {clients}")
    shares = [histories[i::clients] for i in range(clients)]
    workloads = [push_frames(team.project_id, share) for share in shares]
    total = sum(n for frames in workloads for _, n in frames)
    assert total == ENTITIES * CHANGES_PER_ENTITY, total

    wanted = (ProjectCursor(str(team.project_id), 0),) if args.subscribe else ()
    connections = [
        await open_client(bases[i % len(bases)], m.token, wanted)
        for i, m in enumerate(team.members)
    ]
    if args.subscribe:
        for ws in connections:
            await until_synced(ws, team.project_id)

    profile_path = None
    if args.profile is not None:
        profile_path = args.profile.with_name(f"{args.profile.stem}-{clients}{args.profile.suffix}")
    cpu = CpuUse(pids, url)
    with ServerProfile(pids[0], profile_path) as profile:
        started = time.perf_counter()
        runs = await asyncio.gather(
            *(
                push_all(ws, frames, args.in_flight)
                for ws, frames in zip(connections, workloads, strict=True)
            )
        )
        elapsed = max(r.finished for r in runs) - started
    cpu.stop()
    for ws in connections:
        await ws.close()

    accepted = sum(r.accepted for r in runs)
    rejected = [reason for r in runs for reason in r.rejected]
    conn = await connect(url)
    try:
        head = await conn.fetchval(
            "SELECT head_seq FROM log_heads WHERE project_id = $1", team.project_id
        )
    finally:
        await conn.close()
    pushes = sum(len(frames) for frames in workloads)
    rate = accepted / elapsed
    print(
        f"{clients} client{'s' if clients > 1 else ''}: {accepted}/{total} changes accepted "
        f"({len(rejected)} entity rejections), {pushes} pushes of {ENTITIES_PER_PUSH} "
        f"entities, {args.in_flight} in flight per client, "
        f"{'subscribed' if args.subscribe else 'not subscribed'}: {elapsed:.2f} s, "
        f"{rate:.0f} changes/s; log head {head}"
    )
    for reason in rejected[:5]:
        print(f"  rejected {reason}")
    print(f"  push -> push_result: {describe_ms([ms for r in runs for ms in r.ack_ms])}")
    print("  " + cpu.describe(elapsed) + " (this process: the clients)")
    print("  " + cpu_budget(cpu.server, cpu.database, accepted))
    if profile_path is not None:
        print(profile.report())
    return rate if accepted == total else 0.0


def cpu_budget(server: float, database: float | None, changes: int) -> str:
    """What the CPU each change took allows, whatever the wait: one server process (one
    event loop, one core) acknowledges at most 1/server-CPU changes a second, and the
    machine at most its cores over server plus PostgreSQL CPU."""
    if not changes:
        return "CPU per change: nothing accepted"
    server_us = 1e6 * server / changes
    ceiling = f"one server process at most {1e6 / server_us:,.0f} changes/s"
    if database is None:
        return f"CPU per change: server {server_us:.0f} us; {ceiling}"
    database_us = 1e6 * database / changes
    cores = os.cpu_count() or 1
    machine = cores * 1e6 / (server_us + database_us)
    return (
        f"CPU per change: server {server_us:.0f} us + PostgreSQL {database_us:.0f} us; "
        f"{ceiling}, this machine ({cores} cores) at most {machine:,.0f}"
    )


async def measure(
    url: str, bases: list[str], pids: list[int], args: argparse.Namespace
) -> tuple[float, float]:
    one = await phase(url, bases, pids, 1, args)
    many = await phase(url, bases, pids, 20, args)
    verdicts = [
        f"{name} {'meets' if rate >= TARGET_CHANGES_PER_SECOND else 'MISSES'}"
        for name, rate in (("1 client", one), ("20 clients", many))
    ]
    print(f"target >= {TARGET_CHANGES_PER_SECOND} changes/s: " + ", ".join(verdicts))
    return one, many


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribe", action="store_true")
    parser.add_argument("--in-flight", type=int, default=IN_FLIGHT)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw output path")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on one database (default 1); client i uses process i mod N",
    )
    args = parser.parse_args()
    with database() as url, contextlib.ExitStack() as stack:
        servers = [stack.enter_context(server_process(url)) for _ in range(args.workers)]
        bases, pids = [s.base for s in servers], [s.pid for s in servers]
        one, many = asyncio.run(measure(url, bases, pids, args))
    print(f"ingest over websocket: 1 client {one:.0f} changes/s, 20 clients {many:.0f} changes/s")


if __name__ == "__main__":
    main()
