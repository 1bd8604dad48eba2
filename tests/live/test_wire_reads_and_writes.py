"""What the sync wire (``live.wire.SyncWire``) does with the bytes each way, over a transport
that records each write and each pause, the wire accepted through its real handshake:
- a cork: the answers to one client message go out in one write, in order, never past the
  cork's bound or the loop's turn, and never after the wire's own frames that follow them;
- read-ahead: a lone message waiting for the session pauses nothing; two, or a large part
  of the next, pause reading;
- an interrupt (the hello's deadline) ends a waiting read with a timeout, and never a later
  one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from fieldsync.live.wire import CORK_BYTES, READ_AHEAD_BYTES, SyncWire
from fieldsync.live.ws_frames import binary_message, pong_frame
from fieldsync.live.ws_handshake import UpgradeRequest


class _RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


_UPGRADE = UpgradeRequest(
    b"GET",
    b"/sync",
    b"1.1",
    (
        (b"host", b"localhost"),
        (b"connection", b"Upgrade"),
        (b"upgrade", b"websocket"),
        (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        (b"sec-websocket-version", b"13"),
    ),
)


def _accepted_wire() -> tuple[SyncWire, _RecordingTransport]:
    config = Config(app=lambda: None, ws_ping_interval=None)
    wire = SyncWire(config, ServerState(), {})
    transport = _RecordingTransport()
    wire.connection_made(transport)
    assert wire._accept(_UPGRADE, "rid")  # the 101, written at once
    assert transport.writes[0].startswith(b"HTTP/1.1 101 ")
    transport.writes.clear()
    return wire, transport


async def test_corked_answers_go_out_together_in_order_on_uncork() -> None:
    wire, transport = _accepted_wire()
    welcome, synced = binary_message(b"welcome"), binary_message(b"synced")
    wire.cork()
    assert wire.write_now(welcome)
    assert wire.write_now(synced)
    assert transport.writes == []
    wire.uncork()
    assert transport.writes == [welcome + synced]
    assert wire.write_now(welcome)  # uncorked: written at once again
    assert transport.writes == [welcome + synced, welcome]


async def test_a_cork_holds_no_more_than_its_bound() -> None:
    wire, transport = _accepted_wire()
    small = binary_message(b"x" * 100)
    large = binary_message(b"y" * CORK_BYTES)
    wire.cork()
    assert wire.write_now(small)
    assert wire.write_now(large)  # past the bound: what is held goes out now
    assert transport.writes == [small + large]
    assert wire.write_now(small)
    wire.uncork()
    assert transport.writes == [small + large, small]


async def test_the_wires_own_frames_and_queued_batches_come_after_what_is_held() -> None:
    wire, transport = _accepted_wire()
    first, second, queued = (binary_message(m) for m in (b"first", b"second", b"queued"))
    wire.cork()
    wire.write_now(first)
    wire._send(pong_frame(b"p"))  # a pong answered while corked: after what was held
    wire.write_now(second)
    wire.write([queued])  # the send queue's batch: after what was held
    wire.uncork()
    assert transport.writes == [first, pong_frame(b"p"), second, queued]


async def test_nothing_held_is_written_once_the_connection_is_lost() -> None:
    wire, transport = _accepted_wire()
    wire.cork()
    wire.write_now(binary_message(b"held"))
    wire.connection_lost(None)
    wire.uncork()
    assert transport.writes == []


async def test_a_cork_holds_nothing_over_a_wait_and_stays_on() -> None:
    wire, transport = _accepted_wire()
    welcome, synced = binary_message(b"welcome"), binary_message(b"synced")
    wire.cork()
    wire.write_now(welcome)
    assert transport.writes == []
    await asyncio.sleep(0)  # a wait (for the database, say): the welcome goes at the turn's end
    assert transport.writes == [welcome]
    wire.write_now(synced)
    assert transport.writes == [welcome]  # still corked
    wire.uncork()
    assert transport.writes == [welcome, synced]
    await asyncio.sleep(0)  # the turn's end finds nothing more to write
    assert transport.writes == [welcome, synced]


class _PacedTransport(_RecordingTransport):
    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.pauses = 0

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False


def _masked(payload: bytes, *, fin: bool = True) -> bytes:
    """A client's binary frame, masked with a zero key (the payload reads as sent)."""
    head = bytes([0x82 if fin else 0x02])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    elif len(payload) < 65536:
        head += bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + len(payload).to_bytes(8, "big")
    return head + bytes(4) + payload


def _paced_wire() -> tuple[SyncWire, _PacedTransport]:
    config = Config(app=lambda: None, ws_ping_interval=None)
    wire = SyncWire(config, ServerState(), {})
    transport = _PacedTransport()
    wire.connection_made(transport)
    assert wire._accept(_UPGRADE, "rid")
    return wire, transport


async def test_a_lone_message_waiting_for_the_session_does_not_pause_reading() -> None:
    wire, transport = _paced_wire()
    wire.data_received(_masked(b"hello"))
    assert transport.pauses == 0  # two system calls saved for every hello and push
    assert await wire.receive() == b"hello"
    wire.data_received(_masked(b"push"))
    assert await wire.receive() == b"push"
    assert transport.pauses == 0


async def test_reading_pauses_when_a_second_message_or_a_large_part_of_one_waits() -> None:
    wire, transport = _paced_wire()
    wire.data_received(_masked(b"first") + _masked(b"second"))
    assert transport.paused
    assert await wire.receive() == b"first"
    assert transport.paused  # the second still waits
    assert await wire.receive() == b"second"
    assert not transport.paused

    big = _masked(b"z" * (READ_AHEAD_BYTES * 2))
    wire.data_received(_masked(b"waiting") + big[: READ_AHEAD_BYTES + 100])
    assert transport.paused  # a large part of the next message is held: read no more
    assert await wire.receive() == b"waiting"
    assert not transport.paused
    wire.data_received(big[READ_AHEAD_BYTES + 100 :])
    assert await wire.receive() == b"z" * (READ_AHEAD_BYTES * 2)


async def test_an_interrupt_ends_the_waiting_receive_with_a_timeout() -> None:
    wire, _ = _paced_wire()
    waiting = asyncio.create_task(wire.receive())
    await asyncio.sleep(0)
    wire.interrupt()  # the hello's deadline passed
    with pytest.raises(TimeoutError):
        await waiting


async def test_a_message_there_in_time_wins_over_an_interrupt_that_then_is_forgotten() -> None:
    wire, _ = _paced_wire()
    wire.data_received(_masked(b"hello"))
    wire.interrupt()  # the deadline passed in the same turn as the hello came
    assert await wire.receive() == b"hello"
    later = asyncio.create_task(wire.receive())
    await asyncio.sleep(0.05)
    assert not later.done()  # no stale timeout for the next message
    wire.data_received(_masked(b"push"))
    assert await later == b"push"
