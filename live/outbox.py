"""A connection's queue of frames to send, bounded in bytes so no client can exhaust memory.

Three ways in:

* **bulk** (snapshot chunks, catch-up batches) waits while the queue holds ``soft_bytes`` or
  more, so a slow reader only slows its own catch-up;
* **live** changes never wait (fan-out must not stall on one client) and are refused once
  the queue would pass ``hard_bytes``: that is how a client that stopped reading is found;
* **control** frames (push results, errors, status) are the answers to what the client sent.
  The session reads the client's next frame only once the queue is below ``soft_bytes``
  again (``wait_for_room``), so answers can pile up only as far as one frame's answers go;
  past ``hard_bytes + control_bytes`` even a control frame is refused.

A refused frame means the client is too slow: the session tells it so and closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sized
from dataclasses import dataclass
from typing import Protocol


class OutboxClosedError(Exception):
    """The connection is going away; nothing more will be sent."""


class QueueMonitor(Protocol):
    """Watches send queues for the metrics: an ``Outbox`` tells it when frames start to wait
    in it (most never hold any: a frame is written at once when the socket takes it)."""

    def backlogged(self, queue: Outbox) -> None: ...


@dataclass(frozen=True, slots=True)
class OutboxLimits:
    """How much one connection may have waiting to be sent, in bytes of encoded frames."""

    soft_bytes: int = 1024 * 1024
    hard_bytes: int = 8 * 1024 * 1024
    control_bytes: int = 2 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 0 < self.soft_bytes <= self.hard_bytes:
            raise ValueError("outbox limits need 0 < soft_bytes <= hard_bytes")
        if self.control_bytes < 0:
            raise ValueError("control_bytes must not be negative")


DEFAULT_OUTBOX_LIMITS = OutboxLimits()


class Outbox(Sized):
    """The frames waiting to be written, oldest first, and their bytes.

    It holds nothing else while nobody waits: the list is empty, and the future that wakes
    waiters for room exists only while one waits (an idle connection's outbox is small).
    """

    __slots__ = ("__weakref__", "_bytes", "_closed", "_frames", "_limits", "_monitor", "_room")

    def __init__(
        self, limits: OutboxLimits = DEFAULT_OUTBOX_LIMITS, monitor: QueueMonitor | None = None
    ) -> None:
        self._frames: list[bytes] = []
        self._bytes = 0
        self._limits = limits
        self._monitor = monitor
        self._room: asyncio.Future[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def has_room(self) -> bool:
        """Below the soft bound: bulk frames go in and the client's next frame is read."""
        return self._bytes < self._limits.soft_bytes

    async def wait_for_room(self) -> None:
        """Return once the queue is below the soft bound (or closed)."""
        while not self.has_room and not self._closed:
            if self._room is None:
                self._room = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._room)

    async def put_bulk(self, frame: bytes) -> None:
        await self.wait_for_room()
        self._append(frame)

    def put_live(self, frame: bytes) -> bool:
        """Queue a live frame; False if the reader is too far behind to take it."""
        if self._frames and self._bytes + len(frame) > self._limits.hard_bytes:
            return False
        self._append(frame)
        return True

    def put_control(self, frame: bytes) -> bool:
        """Queue an answer; False if even answers no longer fit (the reader is stuck)."""
        limit = self._limits.hard_bytes + self._limits.control_bytes
        if self._frames and self._bytes + len(frame) > limit:
            return False
        self._append(frame)
        return True

    def _append(self, frame: bytes) -> None:
        if self._closed:
            raise OutboxClosedError
        if not self._frames and self._monitor is not None:
            self._monitor.backlogged(self)
        self._frames.append(frame)
        self._bytes += len(frame)

    def take(self, max_bytes: int) -> list[bytes]:
        """The oldest frames, about ``max_bytes`` of them (at least one while any wait), to
        be written together; empty once nothing waits."""
        frames = self._frames
        count = size = 0
        for frame in frames:
            if count and size + len(frame) > max_bytes:
                break
            count += 1
            size += len(frame)
        taken = frames[:count]
        del frames[:count]
        self._bytes -= size
        if self.has_room:
            self._wake()
        return taken

    def _wake(self) -> None:
        if self._room is not None:
            if not self._room.done():
                self._room.set_result(None)
            self._room = None

    def discard_pending(self) -> int:
        """Drop every queued frame (they are moot once the client must resync)."""
        dropped = len(self._frames)
        self._frames.clear()
        self._bytes = 0
        self._wake()
        return dropped

    def close(self) -> None:
        """No more frames in; frames already queued are still taken."""
        self._closed = True
        self._wake()
