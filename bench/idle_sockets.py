"""What an idle subscribed socket costs the server: memory held, and CPU to open it.

A server process (``fieldsync serve``, its own process) and one project. The bench opens
``--sockets`` WebSockets, ``--parallel`` handshakes at a time (the server admits 64
unauthenticated connections per address), each saying hello with the project at its head
cursor and reading up to its ``synced``; then every socket stays open and silent, as a
tablet that is subscribed and has nothing to send. Users hold at most 16 connections each,
so the project gets one member per 16 sockets.

Figures: the server's resident memory before (after a warm-up of opened and closed
connections), with every socket open and idle, and 5 s after all are closed again (the
server trims its heap within a second of many closing, ``live.memory``), with how much of
it was given back; the memory per idle socket; and the server's CPU time per socket opened.
With ``--waves N`` (2 by default) the crowd then comes back N - 1 times: its peak against the
first wave's says whether what the closed sockets held was freed for reuse or leaked.

    .venv/bin/python bench/idle_sockets.py [--sockets 10000] [--parallel 32] [--waves 2]

The last line is the headline: KB of server memory per idle subscribed socket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import (
    database,
    make_project,
    open_client,
    process_cpu_seconds,
    server_process,
    until_synced,
)
from websockets.asyncio.client import ClientConnection

from fieldsync.sync.messages import ProjectCursor

PER_USER = 16


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def open_idle(base: str, token: str, project: str) -> ClientConnection:
    ws = await open_client(base, token, [ProjectCursor(project, 0)])
    await until_synced(ws, project)  # type: ignore[arg-type]
    return ws


async def open_many(
    base: str, tokens: list[str], project: str, count: int, parallel: int
) -> list[ClientConnection]:
    gate = asyncio.Semaphore(parallel)
    opened: list[ClientConnection] = []

    async def one(index: int) -> None:
        async with gate:
            opened.append(await open_idle(base, tokens[index // PER_USER], project))

    await asyncio.gather(*(one(i) for i in range(count)))
    return opened


async def close_all(sockets: list[ClientConnection], parallel: int) -> None:
    gate = asyncio.Semaphore(parallel * 4)

    async def one(ws: ClientConnection) -> None:
        async with gate:
            with contextlib.suppress(Exception):
                await ws.close()

    await asyncio.gather(*(one(ws) for ws in sockets))


async def settle(pid: int, seconds: float = 3.0) -> int:
    """The server's RSS once it has been quiet for a moment (its trimmer runs periodically)."""
    await asyncio.sleep(seconds)
    return rss_kb(pid)


async def run(url: str, sockets: int, parallel: int, wait: float, waves: int) -> None:
    team = await make_project(url, members=(sockets + PER_USER - 1) // PER_USER, name="idle")
    tokens = [member.token for member in team.members]
    project = str(team.project_id)
    with server_process(url) as server:
        warm = await open_many(server.base, tokens, project, min(sockets, 500), parallel)
        await close_all(warm, parallel)
        before = await settle(server.pid)
        cpu_before = process_cpu_seconds(server.pid)
        started = time.perf_counter()
        held = await open_many(server.base, tokens, project, sockets, parallel)
        opened_in = time.perf_counter() - started
        cpu_open = process_cpu_seconds(server.pid) - cpu_before
        idle = await settle(server.pid)
        await close_all(held, parallel)
        after = await settle(server.pid, 5.0)
        later = await settle(server.pid, wait - 5.0) if wait > 5.0 else after
        peaks = [idle]
        for _ in range(waves - 1):  # the same crowd again: is what the last one held reused?
            again = await open_many(server.base, tokens, project, sockets, parallel)
            peaks.append(await settle(server.pid))
            await close_all(again, parallel)
            await settle(server.pid, 5.0)
    per_socket = (idle - before) / sockets
    print(f"{sockets} idle subscribed sockets opened in {opened_in:.1f} s")
    print(
        f"server RSS: before {before / 1024:.1f} MB, idle {idle / 1024:.1f} MB, "
        f"after closing {after / 1024:.1f} MB"
    )
    print(f"server CPU per socket opened: {cpu_open / sockets * 1000:.2f} ms")
    given_back = (idle - after) / max(idle - before, 1)
    print(
        f"given back within 5 s of closing: {given_back:.0%} of what the sockets took "
        f"({'released' if given_back >= 0.9 else 'NOT released'})"
    )
    if wait > 5.0:
        given_back = (idle - later) / max(idle - before, 1)
        print(
            f"given back within {wait:g} s of closing: {given_back:.0%} "
            f"(RSS {later / 1024:.1f} MB; {'released' if given_back >= 0.9 else 'NOT released'})"
        )
    for wave, peak in enumerate(peaks[1:], start=2):
        grown = (peak - idle) / sockets
        print(
            f"wave {wave} of {sockets} idle sockets: RSS {peak / 1024:.1f} MB, "
            f"{grown:+.2f} KB per socket against the first wave's peak "
            f"({'reused' if grown < 0.1 * per_socket else 'NOT reused'})"
        )
    print(f"server memory per idle subscribed socket: {per_socket:.1f} KB")
    print(f"{per_socket:.1f} KB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--parallel", type=int, default=32)
    parser.add_argument(
        "--wait", type=float, default=5.0, help="also read RSS this many seconds after closing"
    )
    parser.add_argument(
        "--waves",
        type=int,
        default=2,
        help="open and close the crowd this many times; each wave after the first shows "
        "whether the memory the last one gave back to the process is reused",
    )
    args = parser.parse_args()
    with database() as url:
        asyncio.run(run(url, args.sockets, args.parallel, args.wait, args.waves))


if __name__ == "__main__":
    main()
