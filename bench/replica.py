"""Bootstrap and resume with reads on a streaming replica, against reads on the primary.

An embedded PostgreSQL (the primary) and a hot standby made from it with ``pg_basebackup
-R`` (``tests/standby.py``) on the same machine. One project of ``--entities`` entities
(3-5 edits each) is seeded and replayed on the standby. Then, for each topology, a server
process (``fieldsync serve``, without and with ``--replica-url``) serves:

- **bootstrap**: ``--bootstraps`` clients syncing the project from nothing (a snapshot of
  every document, read in one repeatable-read transaction), ``--concurrency`` at a time;
- **resume**: ``--resumes`` clients resuming from ``--behind`` changes before the head
  (a catch-up read of the log), ``--concurrency`` at a time.

Figures: clients served per second, and the CPU each PostgreSQL spent (the primary's, the
standby's) per client. The standby's share shows what left the primary; on this 2-core
machine both servers compete for the same cores, so the throughput figure is a floor for a
standby on a machine of its own. The last line is the headline: the primary's PostgreSQL CPU
per bootstrap with reads on the standby, against reads on the primary.

    python bench/replica.py [--entities 2000] [--bootstraps 60] [--resumes 400]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bootstrap import make_entities
from harness import (
    Team,
    _migrate,
    make_project,
    open_client,
    postgres_cpu_seconds,
    process_cpu_seconds,
    seed,
    server_process,
    until_synced,
)

from fieldsync.store.embedded import embedded_postgres, pgdata_path
from fieldsync.sync.messages import ProjectCursor
from tests.standby import make_standby, stop_standby, wait_until_replayed


@dataclass
class Phase:
    clients: int
    seconds: float
    primary_cpu: float
    standby_cpu: float
    server_cpu: float

    def row(self, name: str) -> str:
        per = 1000 / self.clients
        return (
            f"{name:<26}{self.clients / self.seconds:>10,.1f}/s"
            f"{self.primary_cpu * per:>12.2f}{self.standby_cpu * per:>12.2f}"
            f"{self.server_cpu * per:>12.2f}"
        )


async def measure(
    count: int,
    concurrency: int,
    one: Callable[[int], Awaitable[None]],
    primary_url: str,
    standby_url: str,
    server_pid: int,
) -> Phase:
    """Run ``one(i)`` for i in range(count), ``concurrency`` at a time; time and CPU."""
    gate = asyncio.Semaphore(concurrency)

    async def gated(index: int) -> None:
        async with gate:
            await one(index)

    before = (
        postgres_cpu_seconds(primary_url) or 0.0,
        postgres_cpu_seconds(standby_url) or 0.0,
        process_cpu_seconds(server_pid),
    )
    started = time.perf_counter()
    await asyncio.gather(*(gated(i) for i in range(count)))
    seconds = time.perf_counter() - started
    return Phase(
        count,
        seconds,
        (postgres_cpu_seconds(primary_url) or 0.0) - before[0],
        (postgres_cpu_seconds(standby_url) or 0.0) - before[1],
        process_cpu_seconds(server_pid) - before[2],
    )


async def bootstrap(base: str, team: Team, index: int) -> None:
    token = team.members[index % len(team.members)].token
    ws = await open_client(base, token, [ProjectCursor(str(team.project_id), None)])
    await until_synced(ws, team.project_id)
    await ws.close()


async def resume(base: str, team: Team, index: int, cursor: int) -> None:
    token = team.members[index % len(team.members)].token
    ws = await open_client(base, token, [ProjectCursor(str(team.project_id), cursor)])
    await until_synced(ws, team.project_id)
    await ws.close()


def replica_reads(base: str) -> str:
    """The server's replica read counters, as /metrics has them."""
    with urllib.request.urlopen(f"http://{base}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    lines = [line for line in text.splitlines() if line.startswith("fieldsync_replica_reads_total")]
    return ", ".join(line.removeprefix("fieldsync_replica_reads_total") for line in lines)


async def run_topology(
    args: argparse.Namespace,
    team: Team,
    head: int,
    primary_url: str,
    standby_url: str,
    replica: bool,
) -> tuple[Phase, Phase, str]:
    if replica:
        os.environ["FIELDSYNC_REPLICA_URL"] = standby_url
    else:
        os.environ.pop("FIELDSYNC_REPLICA_URL", None)
    with server_process(primary_url) as server:
        await bootstrap(server.base, team, 0)  # warm: connections, caches, the first check
        booted = await measure(
            args.bootstraps,
            args.concurrency,
            lambda i: bootstrap(server.base, team, i),
            primary_url,
            standby_url,
            server.pid,
        )
        resumed = await measure(
            args.resumes,
            args.concurrency,
            lambda i: resume(server.base, team, i, head - args.behind),
            primary_url,
            standby_url,
            server.pid,
        )
        reads = replica_reads(server.base) if replica else ""
    return booted, resumed, reads


async def main(args: argparse.Namespace, primary_url: str, standby_url: str) -> None:
    team = await make_project(primary_url, 16, "replica bench")
    head = await seed(primary_url, team.project_id, make_entities(args.entities))
    await wait_until_replayed(primary_url, standby_url, within=60)
    print(
        f"project: {args.entities:,} entities, head seq {head:,}; "
        f"{args.bootstraps} bootstraps, {args.resumes} resumes of {args.behind} changes, "
        f"{args.concurrency} at a time"
    )
    results: dict[bool, list[tuple[Phase, Phase, str]]] = {}
    for replica in (False, True, False, True):  # twice each, interleaved: load drifts
        results.setdefault(replica, []).append(
            await run_topology(args, team, head, primary_url, standby_url, replica)
        )
    print(
        f"{'':<26}{'clients':>12}{'primary PG':>12}{'standby PG':>12}{'server':>12}\n"
        f"{'':<26}{'':>12}{'CPU ms/client':>36}"
    )
    best: dict[bool, Phase] = {}
    for replica, runs in results.items():
        where = "replica" if replica else "primary"
        booted, resumed, _ = min(runs, key=lambda run: run[0].seconds)
        best[replica] = booted
        print(booted.row(f"bootstrap, reads on {where}"))
        print(resumed.row(f"resume, reads on {where}"))
    print(f"replica reads counted by the server: {results[True][-1][2]}")
    off, on = best[False], best[True]
    print(
        f"primary PostgreSQL CPU per bootstrap: {off.primary_cpu / off.clients * 1000:.2f} ms "
        f"with reads on the primary, {on.primary_cpu / on.clients * 1000:.2f} ms with reads "
        f"on the replica; bootstraps/s {on.clients / on.seconds:,.1f} vs "
        f"{off.clients / off.seconds:,.1f}"
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=2_000)
    parser.add_argument("--bootstraps", type=int, default=60)
    parser.add_argument("--resumes", type=int, default=400)
    parser.add_argument("--behind", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="fsr", dir="/tmp"))
    try:
        with embedded_postgres(data_dir) as primary_url:
            asyncio.run(_migrate(primary_url))
            standby = data_dir / "standby"
            standby_url = make_standby(pgdata_path(data_dir), standby)
            try:
                asyncio.run(main(args, primary_url, standby_url))
            finally:
                stop_standby(standby)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    cli()
