"""The floor of a resume in this stack: what the wire work alone costs a Python asyncio server.

A resume is, on the wire: accept the connection, read the upgrade request, answer 101, read
the client's ``hello`` frame, write ``welcome`` and ``synced``. This bench serves exactly
that from a bare ``asyncio.Protocol`` (no HTTP parser but a search for the end of the
headers and the key, no token check, no database, no session object, the two answers
encoded once), optionally with one task per connection as any session-per-connection server
has, and makes ``--clients`` raw-socket clients (as ``resume_storm.py``'s, from their own
loopback addresses, all at once) go through it. The server process's CPU per connection is
the least a resume can cost here before it does any of its own work.

    .venv/bin/python bench/connection_floor.py [--clients 10000] [--processes 4] [--task]

The last line is the headline: server CPU in ms per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import os
import socket
import sys
import time
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import loopback_address, process_cpu_seconds

from fieldsync.live.event_loops import DEFAULT_LOOP, LOOP_CHOICES, loop_factory
from fieldsync.live.ws_frames import binary_message
from fieldsync.live.ws_handshake import accept_key
from fieldsync.sync.codec import encode
from fieldsync.sync.messages import Synced, Welcome

USER = "00000000-0000-4000-8000-000000000001"


WELCOME = binary_message(encode(Welcome(1, USER, USER, {})))
SYNCED = binary_message(encode(Synced(USER, 100)))


class BareResume(asyncio.Protocol):
    """Upgrade, read one client frame, answer it with two frames."""

    with_task = False
    sessions: ClassVar[set[asyncio.Task[None]]] = set()

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.upgraded = False
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        assert self.transport is not None
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            start = head.lower().find(b"sec-websocket-key:") + len(b"sec-websocket-key:")
            key = head[start : head.find(b"\r\n", start) if b"\r\n" in head[start:] else None]
            accept = accept_key(key.strip()).encode()
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.upgraded = True
            if self.with_task:
                loop = asyncio.get_running_loop()
                self.waiter = loop.create_future()
                task = loop.create_task(self._session(self.waiter))
                BareResume.sessions.add(task)
                task.add_done_callback(BareResume.sessions.discard)
        if len(self.buffer) >= 2:
            size = self.buffer[1] & 0x7F
            start = 8 if size == 126 else 6
            if size == 126:
                size = int.from_bytes(self.buffer[2:4], "big")
            if len(self.buffer) >= start + size:
                self.buffer = b""
                if self.waiter is not None:
                    self.waiter.set_result(None)
                else:
                    self._answer()

    async def _session(self, hello: asyncio.Future[None]) -> None:
        await hello
        self._answer()

    def _answer(self) -> None:
        assert self.transport is not None
        self.transport.write(WELCOME)
        self.transport.write(SYNCED)


def serve(port: int, with_task: bool, loop_choice: str, ready: EventType) -> None:
    async def main() -> None:
        BareResume.with_task = with_task
        loop = asyncio.get_running_loop()
        server = await loop.create_server(BareResume, "127.0.0.1", port, backlog=16_384)
        ready.set()
        async with server:
            await server.serve_forever()

    _, new_loop = loop_factory(loop_choice)  # the loop ``fieldsync serve`` would run on
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())


async def _client(port: int, address: str, request: bytes, hello: bytes) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
    writer.write(request)
    await reader.readuntil(b"\r\n\r\n")
    writer.write(hello)
    await reader.readexactly(len(WELCOME) + len(SYNCED))
    return writer


def clients(
    port: int,
    first: int,
    count: int,
    go: EventType,
    done: multiprocessing.Queue[int],
    close: EventType,
) -> None:
    async def main() -> None:
        key = base64.b64encode(os.urandom(16))
        request = (
            b"GET /sync HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        hello = bytes((0x82, 0x80 | 40)) + b"\0\0\0\0" + b"h" * 40
        go.wait()
        writers = await asyncio.gather(
            *(
                _client(
                    port,
                    loopback_address(i),
                    request,
                    hello,
                )
                for i in range(first, first + count)
            )
        )
        done.put(len(writers))
        await asyncio.get_running_loop().run_in_executor(None, close.wait)
        for writer in writers:
            writer.close()  # outside the measured window, as in resume_storm.py

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--task", action="store_true", help="one task per connection")
    parser.add_argument("--loop", choices=LOOP_CHOICES, default=DEFAULT_LOOP, help="as serve's")
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ready = multiprocessing.Event()
    served = (port, args.task, args.loop, ready)
    server = multiprocessing.Process(target=serve, args=served, daemon=True)
    server.start()
    ready.wait(30)
    assert server.pid is not None
    go, close = multiprocessing.Event(), multiprocessing.Event()
    done: multiprocessing.Queue[int] = multiprocessing.Queue()
    share = args.clients // args.processes
    workers = [
        multiprocessing.Process(target=clients, args=(port, i * share, share, go, done, close))
        for i in range(args.processes)
    ]
    for worker in workers:
        worker.start()
    time.sleep(2)  # the client processes are up and waiting
    before = process_cpu_seconds(server.pid)
    started = time.monotonic()
    go.set()
    total = sum(done.get(timeout=120) for _ in workers)
    elapsed = time.monotonic() - started
    cpu = process_cpu_seconds(server.pid) - before
    close.set()
    for worker in workers:
        worker.join(60)
    server.terminate()
    print(
        f"{total} connections upgraded, hello read, two frames answered, in {elapsed:.2f} s; "
        f"server CPU {cpu:.2f} s ({'a task per connection' if args.task else 'no task'}, "
        f"{loop_factory(args.loop)[0]})"
    )
    print(f"server CPU per connection: {cpu / total * 1000:.3f} ms")


if __name__ == "__main__":
    main()
