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
from collections import deque
from collections.abc import Sized
from dataclasses import dataclass
from typing import Protocol


class OutboxClosedError(Exception):
    """The connection is going away; nothing more will be sent."""


class QueueMonitor(Protocol):
    """Watches send queues for the metrics: their depth when live frames are queued."""

    def watch(self, queue: Outbox) -> None: ...

    def observe(self, depth: int) -> None: ...


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
    def __init__(
        self, limits: OutboxLimits = DEFAULT_OUTBOX_LIMITS, monitor: QueueMonitor | None = None
    ) -> None:
        self._frames: deque[bytes] = deque()
        self._bytes = 0
        self._limits = limits
        self._monitor = monitor
        if monitor is not None:
            monitor.watch(self)
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
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
            self._writable.clear()
            await self._writable.wait()

    async def put_bulk(self, frame: bytes) -> None:
        await self.wait_for_room()
        self._append(frame)

    def put_live(self, frame: bytes) -> bool:
        """Queue a live frame; False if the reader is too far behind to take it."""
        if self._monitor is not None:
            self._monitor.observe(len(self._frames))
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
        self._frames.append(frame)
        self._bytes += len(frame)
        self._readable.set()

    async def get(self) -> bytes:
        """The next frame to send; raises OutboxClosedError once closed and drained."""
        while not self._frames:
            if self._closed:
                raise OutboxClosedError
            self._readable.clear()
            await self._readable.wait()
        frame = self._frames.popleft()
        self._bytes -= len(frame)
        if self.has_room:
            self._writable.set()
        return frame

    def discard_pending(self) -> int:
        """Drop every queued frame (they are moot once the client must resync)."""
        dropped = len(self._frames)
        self._frames.clear()
        self._bytes = 0
        self._writable.set()
        return dropped

    def close(self) -> None:
        """No more frames in; frames already queued are still handed out."""
        self._closed = True
        self._readable.set()
        self._writable.set()
