"""Latency of a single small push on an idle project, over the WebSocket.

One client pushes one entity with one change (its creation), waits for the
``push_result``, and pushes the next: 300 times, against a server running as its own
process. Nothing else runs on the server, so every push finds its project idle; this is the
latency group commit must not make worse (it gathers nothing by waiting).

    python bench/push_latency.py

The last line is the headline: the median time from sending a push to its result.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import (
    CpuUse,
    database,
    describe_ms,
    entity_history,
    make_project,
    open_client,
    percentile,
    reference_ids,
    server_process,
)

from fieldsync.sync.codec import decode_server, encode
from fieldsync.sync.messages import EntityAccepted, EntityPush, Push, PushResult

PUSHES = 300
WARM_UP = 20


async def measure(url: str, base: str, pid: int) -> list[float]:
    team = await make_project(url, 1, "latency")
    refs = reference_ids()
    frames = []
    for index in range(WARM_UP + PUSHES):
        history = entity_history("location", index, refs, 1)
        entity = EntityPush(history.entity_type, history.entity_id, tuple(history.changes))
        frames.append(encode(Push(index, str(team.project_id), (entity,))))
    ws = await open_client(base, team.members[0].token, ())
    took: list[float] = []
    cpu: CpuUse | None = None
    try:
        for index, frame in enumerate(frames):
            if index == WARM_UP:
                cpu = CpuUse(pid, url)
            sent = time.perf_counter()
            await ws.send(frame)
            while True:
                message = decode_server(await asyncio.wait_for(ws.recv(decode=False), 30))
                if isinstance(message, PushResult):
                    break
            assert message.push_id == index
            assert all(isinstance(r, EntityAccepted) for r in message.results), message
            if index >= WARM_UP:
                took.append(1000 * (time.perf_counter() - sent))
    finally:
        await ws.close()
    if cpu is not None:
        cpu.stop()
        database_cpu = cpu.database
        print(
            f"CPU per push: server {1000 * cpu.server / PUSHES:.2f} ms, PostgreSQL "
            + ("unknown" if database_cpu is None else f"{1000 * database_cpu / PUSHES:.2f} ms")
        )
    return took


def main() -> None:
    with database() as url, server_process(url) as server:
        took = asyncio.run(measure(url, server.base, server.pid))
    print(f"single push of 1 entity, 1 change, idle project: {describe_ms(took)}")
    print(f"single small push latency: p50 {percentile(took, 0.5):.2f} ms")


if __name__ == "__main__":
    main()
