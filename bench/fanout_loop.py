"""The sending loop alone: what one live delivery costs the server in Python.

A project's feed hands one piece to ``--subscribers`` real ``SyncSession`` objects (the
in-memory storage; each session's protocol made live by hand, with no handshake), over a
transport that writes nothing, or with ``--sockets`` into a real loopback TCP socket each
(read here between rounds, outside the clock). The figure is CPU time (``process_time``)
per delivery, the best of 7 runs of ``--rounds`` rounds, so the machine's other work moves
it little. ``bench/fanout.py`` measures the whole path, receivers and all.

    python bench/fanout_loop.py [--subscribers N] [--rounds N] [--sockets]

The last line is the headline: us per delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

from fieldsync.auth.tokens import SecretVerifier
from fieldsync.live import session as session_module
from fieldsync.live.feed import Hub, ProjectFeed
from fieldsync.live.session import SyncServices, SyncSession
from fieldsync.model.limits import Limits
from fieldsync.store.memory import MemoryStorage
from fieldsync.store.records import LoggedChange, LogSlice
from fieldsync.sync.codec import encode
from fieldsync.sync.messages import Hello, ProjectCursor, Welcome

CHANGE_BYTES = 120
RUNS = 7


class LoopTransport:
    """A session's transport that takes every message at once: into a socket, or nowhere."""

    def __init__(self, sink: asyncio.Transport | None) -> None:
        self.sink = sink
        self.written = 0

    async def receive(self) -> bytes | str | None:
        return None

    def write_now(self, message: bytes) -> bool:
        self.written += 1
        if self.sink is not None:
            self.sink.write(message)
        return True

    def write(self, messages: Sequence[bytes]) -> None:
        raise AssertionError("nothing is ever queued here")

    def cork(self) -> None:
        pass

    def uncork(self) -> None:
        pass

    def interrupt(self) -> None:
        pass

    async def drained(self) -> None:
        pass

    async def close(self, code: int, reason: str) -> None:
        pass


async def _no_reads(project_id: uuid.UUID, cursor: int, limit: int) -> LogSlice:
    raise AssertionError("the feed is handed every piece: it never reads")


def _subscribe(session: SyncSession, feed: ProjectFeed, name: str) -> None:
    """Make the session's protocol live on the project at cursor 0 and join the feed."""
    protocol = session._protocol
    protocol.receive_frame(encode(Hello((1,), "token", "client", (ProjectCursor(name, 0),))))
    protocol.events_received()
    protocol.accept(Welcome(1, str(uuid.uuid4()), str(uuid.uuid4()), {}))
    protocol.resume(name, 0)
    protocol.go_live(name)
    protocol.data_to_send()
    stream: Any = session_module._LiveStream(session, feed.project_id, name)
    assert feed.try_go_live(stream)


async def measure(subscribers: int, rounds: int, sockets: bool) -> float:
    memory = MemoryStorage()
    limits = Limits()
    hub = Hub(_no_reads)
    services = SyncServices(
        memory.membership,
        memory.snapshots,
        memory.change_log(limits=limits),
        hub,
        SecretVerifier(b"x" * 32),
        limits,
    )
    project = uuid.uuid4()
    feed = hub.feed(project)
    listener = socket.create_server(("127.0.0.1", 0))
    readers: list[socket.socket] = []
    transports: list[LoopTransport] = []
    loop = asyncio.get_running_loop()
    for _ in range(subscribers):
        sink = None
        if sockets:
            readers.append(socket.create_connection(listener.getsockname()))
            accepted, _ = listener.accept()
            sink, _ = await loop.create_connection(asyncio.Protocol, sock=accepted)
        transport = LoopTransport(sink)
        transports.append(transport)
        _subscribe(SyncSession(services, transport), feed, str(project))
    change = b"x" * CHANGE_BYTES
    seq = 0
    best = float("inf")
    for _ in range(RUNS):
        spent = 0.0
        for _ in range(rounds):
            seq += 1
            piece = LogSlice([LoggedChange(seq, "activity", "a1", seq.to_bytes(32, "big"), change)])
            started = time.process_time()
            feed._dispatch(piece)
            spent += time.process_time() - started
            for reader in readers:
                reader.recv(65536)
        best = min(best, spent)
    assert all(t.written == seq for t in transports), "every session got every piece"
    for reader in readers:
        reader.close()
    listener.close()
    return best / (subscribers * rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--sockets", action="store_true", help="write into loopback sockets")
    args = parser.parse_args()
    seconds = asyncio.run(measure(args.subscribers, args.rounds, args.sockets))
    where = "loopback sockets" if args.sockets else "a transport that writes nothing"
    print(
        f"{args.subscribers} subscribers, {args.rounds} rounds, best of {RUNS}, into {where}: "
        "CPU per delivery"
    )
    print(f"{seconds * 1e6:.2f} us")


if __name__ == "__main__":
    main()
