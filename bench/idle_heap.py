"""The Python heap an idle subscribed socket holds in the server, by ``tracemalloc``.

The app runs in this process on the in-memory storage under ``tracemalloc``; the clients run
in a child process, so their allocations are not counted. After a warm-up (sockets opened and
closed), the child opens ``--sockets`` WebSockets that say hello with the project at its head
cursor and read to ``synced``, then stay silent; the traced heap is compared before, with all
open, and after they are closed again. The lines that grew most are listed.

    .venv/bin/python bench/idle_heap.py [--sockets 2000]

The last line is the headline: KB of traced Python heap per idle subscribed socket.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PER_USER = 16


async def clients(base: str, tokens: list[str], project: str, count: int) -> None:
    """The child: open ``count`` idle sockets, say so, close them when told to."""
    from harness import open_client, until_synced

    from fieldsync.sync.messages import ProjectCursor

    gate = asyncio.Semaphore(32)

    async def one(index: int) -> object:
        async with gate:
            ws = await open_client(base, tokens[index // PER_USER], [ProjectCursor(project, 0)])
            await until_synced(ws, project)  # type: ignore[arg-type]
            return ws

    sockets = await asyncio.gather(*(one(i) for i in range(count)))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await asyncio.gather(*(ws.close() for ws in sockets))  # type: ignore[attr-defined]
    print("closed", flush=True)


async def _child(
    base: str, tokens: list[str], project: str, count: int
) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--clients",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    given = {"base": base, "tokens": tokens, "project": project, "count": count}
    child.stdin.write(json.dumps(given).encode() + b"\n")
    await child.stdin.drain()
    if (await child.stdout.readline()).strip() != b"ready":
        raise RuntimeError("the clients failed to open")
    return child


async def _finish(child: asyncio.subprocess.Process) -> None:
    assert child.stdin is not None
    assert child.stdout is not None
    child.stdin.write(b"close\n")
    await child.stdin.drain()
    await child.stdout.readline()
    await child.wait()


def _traced() -> tuple[tracemalloc.Snapshot, int]:
    gc.collect()
    snapshot = tracemalloc.take_snapshot()
    return snapshot, sum(s.size for s in snapshot.statistics("filename"))


async def measure(sockets: int, top: int) -> float:
    from fieldsync.auth.tokens import issue_token
    from fieldsync.store.memory import MemoryStorage
    from tests.live_server import TEST_SECRET, free_port, start_server, stop_server

    memory = MemoryStorage()
    account = await memory.admin.create_account("Idle")
    project = await memory.admin.create_project(account, "Idle")
    tokens = []
    for index in range((sockets + PER_USER - 1) // PER_USER):
        user = await memory.admin.create_user(f"Idle {index}")
        await memory.admin.add_member(project, user, "lead")
        tokens.append(issue_token(TEST_SECRET, user))
    port = free_port()
    server, task = await start_server(None, port, storage=memory)
    base = f"127.0.0.1:{port}"
    try:
        await _finish(await _child(base, tokens, str(project), min(sockets, 500)))  # warm-up
        await asyncio.sleep(1.5)
        before, first = _traced()
        child = await _child(base, tokens, str(project), sockets)
        await asyncio.sleep(1.5)
        idle, held = _traced()
        await _finish(child)
        await asyncio.sleep(2)
        left, after = _traced()
    finally:
        await stop_server(server, task)
    per_socket = (held - first) / sockets
    print(f"{sockets} idle subscribed sockets, traced Python heap in the server:")
    print(
        f"  before {first / 1e6:.2f} MB, idle {held / 1e6:.2f} MB, "
        f"after closing {after / 1e6:.2f} MB ({(after - first) / sockets:.0f} B per socket left)"
    )
    print("largest growth by line, per socket:")
    for stat in idle.compare_to(before, "lineno")[:top]:
        frame = stat.traceback[0]
        print(
            f"  {stat.size_diff / sockets:8.1f} B {stat.count_diff / sockets:6.2f} blocks  "
            f"{frame.filename.rsplit('/site-packages/', 1)[-1]}:{frame.lineno}"
        )
    print("left after closing, by line (what keeps the heap's arenas from emptying):")
    for stat in left.compare_to(before, "lineno")[: top // 2]:
        frame = stat.traceback[0]
        print(
            f"  {stat.size_diff / 1e3:8.1f} KB {stat.count_diff:+7d} blocks  "
            f"{frame.filename.rsplit('/site-packages/', 1)[-1]}:{frame.lineno}"
        )
    print(f"traced Python heap per idle subscribed socket: {per_socket / 1024:.2f} KB")
    return per_socket


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--clients", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients:  # the child: what to open comes as a line on stdin
        given = json.loads(sys.stdin.readline())
        asyncio.run(clients(given["base"], given["tokens"], given["project"], given["count"]))
        return
    tracemalloc.start(1)
    per_socket = asyncio.run(measure(args.sockets, args.top))
    print(f"{per_socket / 1024:.2f} KB")


if __name__ == "__main__":
    main()
