"""Server memory under connection churn: many short hostile connections, no data growth.

Each round opens ``--per-round`` connections, one after another in ``--parallel`` lanes, of
these kinds in turn: a WebSocket that sends garbage, one whose hello carries a bad token,
one that says a valid hello and then sends broken frames, one that closes at once, and a
raw TCP connection that sends half a request line and leaves. Nothing is ever written to
the log (the project stays empty). After each round the server is left idle for a moment
and its resident memory is read from /proc.

    .venv/bin/python bench/churn.py --rounds 8 --per-round 5000

The headline (last line) is the memory growth per 10,000 connections from the end of the
first two rounds (allocator and caches warming up) to the end, after the final idle wait.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import websockets.asyncio.client
from harness import database, make_project, server_process
from websockets.exceptions import WebSocketException

from fieldsync.sync.codec import encode
from fieldsync.sync.messages import Hello

KINDS = ("garbage", "bad_token", "valid_then_garbage", "silent_close", "half_request")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def one_connection(base: str, kind: str, token: str, n: int) -> None:
    host, port = base.split(":")
    if kind == "half_request":
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /sync HTT")
        await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        return
    with contextlib.suppress(WebSocketException, OSError, TimeoutError):
        async with websockets.asyncio.client.connect(
            f"ws://{base}/sync", compression=None, open_timeout=10, close_timeout=1
        ) as ws:
            if kind == "garbage":
                await ws.send(b"\xc1\xff" + n.to_bytes(4, "big"))
                await asyncio.wait_for(ws.recv(), 5)
            elif kind == "bad_token":
                await ws.send(encode(Hello((1,), f"not-a-token-{n}", f"churn-{n}")))
                await asyncio.wait_for(ws.recv(), 5)
            elif kind == "valid_then_garbage":
                await ws.send(encode(Hello((1,), token, f"churn-{n}")))
                await asyncio.wait_for(ws.recv(), 5)
                for _ in range(3):
                    await ws.send(b"\x92\x01\x02")
                    await asyncio.wait_for(ws.recv(), 5)


async def churn(base: str, tokens: list[str], count: int, parallel: int, start: int) -> None:
    async def lane(lane_index: int) -> None:
        for n in range(start + lane_index, start + count, parallel):
            token = tokens[n % len(tokens)]
            await one_connection(base, KINDS[n % len(KINDS)], token, n)

    await asyncio.gather(*(lane(i) for i in range(parallel)))


async def measure(url: str, pid: int, base: str, rounds: int, per_round: int,
                  parallel: int, idle: float, final_idle: float) -> list[float]:
    team = await make_project(url, members=8)
    tokens = [member.token for member in team.members]
    samples = [rss_mb(pid)]
    print(f"start: {samples[0]:.1f} MB")
    for round_index in range(rounds):
        started = time.monotonic()
        await churn(base, tokens, per_round, parallel, round_index * per_round)
        seconds = time.monotonic() - started
        await asyncio.sleep(idle)
        samples.append(rss_mb(pid))
        print(
            f"round {round_index + 1}: {per_round} connections in {seconds:.1f} s "
            f"({per_round / seconds:.0f}/s), RSS {samples[-1]:.1f} MB"
        )
    if final_idle > 0:
        await asyncio.sleep(final_idle)
        samples.append(rss_mb(pid))
        print(f"after {final_idle:g} s idle: RSS {samples[-1]:.1f} MB")
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--per-round", type=int, default=5_000)
    parser.add_argument("--parallel", type=int, default=20)
    parser.add_argument("--idle", type=float, default=2.0)
    parser.add_argument("--final-idle", type=float, default=65.0,
                        help="idle seconds after the last round (the server trims its heap "
                        "every 60 s)")
    parser.add_argument("--clients-only", action="store_true",
                        help="churn against --base with --token once, then exit")
    parser.add_argument("--base", help="host:port of a running server (--clients-only)")
    parser.add_argument("--token", help="a member's token (--clients-only)")
    parser.add_argument("--start", type=int, default=0, help="first connection number")
    args = parser.parse_args()
    if args.clients_only:
        asyncio.run(churn(args.base, [args.token], args.per_round, args.parallel, args.start))
        return
    with database() as url, server_process(url) as server:
        samples = asyncio.run(
            measure(url, server.pid, server.base, args.rounds, args.per_round, args.parallel,
                    args.idle, args.final_idle)
        )
        lines = server.log_path.read_text(errors="replace").count("\n")
    warm = min(2, args.rounds - 1)
    connections = args.per_round * (args.rounds - warm)
    per_10k = (samples[-1] - samples[warm]) / connections * 10_000 if connections else 0.0
    print(f"RSS: {samples[0]:.1f} MB at start, {max(samples):.1f} MB at most, "
          f"{samples[-1]:.1f} MB at the end")
    total = args.per_round * args.rounds
    print(f"log lines written by the server for {total} connections: {lines}")
    print(f"RSS growth per 10,000 connections after warm-up: {per_10k:.2f} MB")


if __name__ == "__main__":
    main()
