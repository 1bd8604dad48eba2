"""Live fan-out over real uvicorn and real sockets: every receiver gets every change in order
as the same bytes, a receiver that stops reading is bounded and closed ``too_slow`` while
the others keep up, and a connection leaves nothing behind when it closes, freed at once.
On the in-memory storage: the database plays no part in delivery."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import socket
import types
import weakref
from typing import TypeVar
from uuid import UUID

from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect

from fieldsync.auth.tokens import issue_token
from fieldsync.live.outbox import OutboxLimits
from fieldsync.live.session import SyncSession
from fieldsync.live.wire import SyncWire
from fieldsync.model.writer import create_entity
from fieldsync.observability.metrics import Metrics
from fieldsync.store.memory import MemoryStorage
from fieldsync.sync.codec import decode_server
from fieldsync.sync.errors import CloseCode, ErrorCode
from fieldsync.sync.messages import (
    Changes,
    EntityPush,
    Error,
    ProjectCursor,
    Push,
    PushResult,
)
from tests.entities import location_values, new_id, plan_values
from tests.live_server import TEST_SECRET, running_server
from tests.sync_client import SyncClient


async def _team(memory: MemoryStorage, members: int) -> tuple[UUID, list[str]]:
    account = await memory.admin.create_account("Fan-out")
    project = await memory.admin.create_project(account, "Fan-out")
    tokens = []
    for n in range(members):
        user = await memory.admin.create_user(f"Member {n}")
        await memory.admin.add_member(project, user, "lead")
        tokens.append(issue_token(TEST_SECRET, user))
    return project, tokens


async def _live(base: str, token: str, project: UUID) -> SyncClient:
    client = await SyncClient.connect(base)
    await client.hello(token, [ProjectCursor(str(project), None)])
    await client.sync_until_synced(str(project))
    return client


def _location_push(push_id: int, project: UUID, index: int) -> Push:
    _, change = create_entity("location", location_values(index))
    return Push(push_id, str(project), (EntityPush("location", new_id(), (change,)),))


T = TypeVar("T")


def _instances(kind: type[T]) -> list[T]:
    """The live objects of ``kind`` in this process (weak proxies left out)."""
    return [
        o for o in gc.get_objects() if not isinstance(o, weakref.ProxyTypes) and isinstance(o, kind)
    ]


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels or None) or 0.0


async def test_every_receiver_gets_every_change_in_order_as_the_same_bytes(
    served: tuple[str, MemoryStorage, Metrics],
) -> None:
    base, memory, _ = served
    project, tokens = await _team(memory, 5)
    pusher, *receivers = [await _live(base, token, project) for token in tokens]
    pushes = 30
    # Sent back to back, without waiting for answers: commits and deliveries overlap.
    for n in range(pushes):
        await pusher.send(_location_push(n, project, n))

    async def changes_frames(client: SyncClient) -> list[bytes]:
        frames: list[bytes] = []
        seqs: list[int] = []
        while len(seqs) < pushes:
            frame = await asyncio.wait_for(client.ws.recv(decode=False), 10)
            message = decode_server(frame)
            assert isinstance(message, Changes), message
            frames.append(frame)
            seqs += [record.seq for record in message.changes]
        assert seqs == list(range(1, pushes + 1))  # each once, in order, no gap
        return frames

    received = await asyncio.gather(*(changes_frames(client) for client in receivers))
    assert all(frames == received[0] for frames in received)
    answered = [await pusher.next_unabsorbed(10) for _ in range(pushes)]
    assert sorted(a.push_id for a in answered if isinstance(a, PushResult)) == list(range(pushes))
    await pusher.receive_changes_until(str(project), pushes)  # its own changes come back too
    for client in (pusher, *receivers):
        await client.close()


def _big_plan_push(push_id: int, project: UUID) -> Push:
    """A push whose live ``changes`` frame is about 48 KB (text that does not compress)."""
    values = plan_values()
    values["description"] = base64.b64encode(os.urandom(36 * 1024)).decode()
    _, change = create_entity("plan", values)
    return Push(push_id, str(project), (EntityPush("plan", new_id(), (change,)),))


async def test_a_receiver_that_stops_reading_is_bounded_and_closed_while_others_keep_up() -> None:
    memory, metrics = MemoryStorage(), Metrics()
    limits = OutboxLimits(soft_bytes=64 * 1024, hard_bytes=256 * 1024, control_bytes=64 * 1024)
    project, tokens = await _team(memory, 4)
    async with running_server(None, storage=memory, metrics=metrics, outbox_limits=limits) as base:
        pusher, fast_a, fast_b = [await _live(base, token, project) for token in tokens[:3]]
        # The slow one's kernel buffers are kept small, so its queue fills soon.
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = base.split(":")
        raw.connect((host, int(port)))
        slow = SyncClient(await connect(f"ws://{base}/sync", sock=raw, compression=None))
        await slow.hello(tokens[3], [ProjectCursor(str(project), None)])
        await slow.sync_until_synced(str(project))
        slow.ws.transport.pause_reading()
        # And the server's kernel buffer for it too (it would grow to megabytes by itself).
        [wire] = [
            w
            for w in _instances(SyncWire)
            if w._transport is not None
            and w._transport.get_extra_info("peername") == raw.getsockname()
        ]
        assert wire._transport is not None
        wire._transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024
        )

        fastest_seq = 0
        fullest = 0.0
        push_id = 0
        while _sample(metrics.registry, "fieldsync_messages_sent_total", type="error") < 1:
            assert push_id < 40, "the slow receiver was never found too slow"
            await pusher.send(_big_plan_push(push_id, project))
            push_id += 1
            assert isinstance(await pusher.next_unabsorbed(10), PushResult)
            for fast in (fast_a, fast_b):  # the others get each change as it commits
                await fast.receive_changes_until(str(project), push_id, within=5)
            fastest_seq = push_id
            fullest = max(fullest, _sample(metrics.registry, "fieldsync_send_queue_max_bytes"))
        assert fullest <= limits.hard_bytes + limits.control_bytes

        slow.ws.transport.resume_reading()
        messages, code = await slow.read_until_closed(within=15)
        errors = [m for m in messages if isinstance(m, Error)]
        assert [(e.code, e.fatal) for e in errors] == [(ErrorCode.TOO_SLOW.value, True)]
        assert code == CloseCode.TOO_SLOW
        got = [r.seq for m in messages if isinstance(m, Changes) for r in m.changes]
        assert got == list(range(1, len(got) + 1))  # what it got is in order, and not all
        assert len(got) < fastest_seq
        # The others are still served.
        await pusher.send(_big_plan_push(push_id, project))
        for fast in (fast_a, fast_b):
            await fast.receive_changes_until(str(project), push_id + 1, within=5)
        for client in (pusher, fast_a, fast_b):
            await client.close()


async def test_a_closed_connection_leaves_nothing_behind(
    served: tuple[str, MemoryStorage, Metrics],
) -> None:
    base, memory, metrics = served
    project, tokens = await _team(memory, 2)

    def connection_tasks() -> int:
        names = (t.get_coro().__qualname__ for t in asyncio.all_tasks())  # type: ignore[union-attr]
        return sum(name.startswith(("SyncWire.", "SyncSession.")) for name in names)

    clients = [await _live(base, tokens[n % 2], project) for n in range(12)]
    await asyncio.sleep(0.1)
    gc.collect()
    sessions = _instances(SyncSession)
    wires = _instances(SyncWire)
    assert len(sessions) == len(wires) == 12
    # Idle and subscribed: no writer task, nothing queued, and one task each (the session's
    # own: the hello leaves no read waiting, and no task waits around the session).
    assert all(s._writer is None and not len(s._outbox) for s in sessions)
    assert connection_tasks() == 12
    # The feed holds each live project of a connection as one slotted object, not closures.
    streams = [stream for s in sessions for stream in s._live.values()]
    assert len(streams) == 12
    assert not any(hasattr(stream, "__dict__") for stream in streams)
    held = [r for stream in streams for r in gc.get_referents(stream)]
    assert not [r for r in held if isinstance(r, types.FunctionType | types.MethodType)]
    del streams, held
    transports = [w._transport for w in wires]
    gone = [weakref.ref(o) for o in (*sessions, *wires, *transports)]
    del sessions, wires, transports
    # Freed as each connection ends, by reference counting alone: no cycle among them
    # waits for the cyclic collector (which a busy server runs seldom), holding memory.
    gc.disable()
    try:
        for client in clients:
            await client.close()
        for _ in range(100):
            if metrics.open_connections == 0 and connection_tasks() == 0:
                break
            await asyncio.sleep(0.05)
        assert metrics.open_connections == 0
        assert connection_tasks() == 0
        await asyncio.sleep(0.05)  # the transports' last callbacks
        assert [ref for ref in gone if ref() is not None] == []
    finally:
        gc.enable()
