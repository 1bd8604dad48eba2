"""Where the server's Python heap grows under connection churn: a tracemalloc comparison.

The app runs in this process under ``tracemalloc``; the churning clients run in a child
process (``bench/churn.py --clients-only``), so their allocations are not counted. After a
warm-up round a snapshot is taken, then after each further round the heap is compared with
it: what grows with the number of connections is kept per connection.

    .venv/bin/python bench/churn_heap.py --rounds 4 --per-round 5000

The last line is the growth of traced memory per 10,000 connections after the warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from churn import rss_mb
from harness import SECRET, database, make_project

from fieldsync.live.memory import heap_trimmer
from tests.live_server import free_port, start_server, stop_server

HERE = Path(__file__).resolve().parent


def _trim() -> bool:
    """Give freed heap pages back to the system (glibc): what stays is really in use."""
    trim = heap_trimmer()
    if trim is None:
        return False
    trim()
    return True


async def client_round(base: str, token: str, count: int, start: int) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "churn.py"), "--clients-only", "--base", base,
        "--token", token, "--per-round", str(count), "--start", str(start),
    )
    if await child.wait() != 0:
        raise RuntimeError("the churning clients failed")


async def measure(url: str, rounds: int, per_round: int, top: int) -> float:
    team = await make_project(url, members=1)
    token = team.members[0].token
    port = free_port()
    server, task = await start_server(url, port, secret=SECRET.encode())
    base = f"127.0.0.1:{port}"
    try:
        await client_round(base, token, per_round, 0)  # warm-up: caches, pools, arenas
        gc.collect()
        before = tracemalloc.take_snapshot()
        first = sum(s.size for s in before.statistics("filename"))
        traced = first
        for round_index in range(1, rounds):
            await client_round(base, token, per_round, round_index * per_round)
            await asyncio.sleep(1)
            gc.collect()
            after = tracemalloc.take_snapshot()
            traced = sum(s.size for s in after.statistics("filename"))
            resident = rss_mb(os.getpid())
            trimmed = _trim()
            print(f"round {round_index + 1}: traced {traced / 1e6:.2f} MB "
                  f"({(traced - first) / 1e3:+.0f} KB since the warm-up); "
                  f"RSS {resident:.1f} MB, {rss_mb(os.getpid()):.1f} MB after malloc_trim"
                  + ("" if trimmed else " (no malloc_trim here)"))
        print(f"largest growth by line, over {per_round * (rounds - 1)} connections:")
        for stat in after.compare_to(before, "lineno")[:top]:
            print(f"  {stat.size_diff / 1e3:+8.1f} KB {stat.count_diff:+7d} blocks  "
                  f"{stat.traceback[0].filename}:{stat.traceback[0].lineno}")
    finally:
        await stop_server(server, task)
    connections = per_round * (rounds - 1)
    return (traced - first) / connections * 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-round", type=int, default=5_000)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    tracemalloc.start(5)
    with database() as url:
        per_10k = asyncio.run(measure(url, args.rounds, args.per_round, args.top))
    print(f"traced heap growth per 10,000 connections after warm-up: {per_10k / 1e3:.1f} KB")


if __name__ == "__main__":
    main()
