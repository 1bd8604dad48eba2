"""A connection's queue of frames to send, bounded so a slow reader cannot exhaust memory.

Three ways in: bulk traffic (snapshot chunks, catch-up batches) waits while the queue is
above its soft bound, so a slow reader just slows its own catch-up; live changes never wait
(fan-out must not stall on one client) and are refused above the hard bound, which is how a
client that stopped reading is detected; small control frames (acks, errors) always go in.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sized
from typing import Protocol


class OutboxClosedError(Exception):
    """The connection is going away; nothing more will be sent."""


class QueueMonitor(Protocol):
    """Watches send queues for the metrics: their depth when live frames are queued."""

    def watch(self, queue: Sized) -> None: ...

    def observe(self, depth: int) -> None: ...


class Outbox:
    def __init__(
        self, soft_limit: int = 64, hard_limit: int = 512, monitor: QueueMonitor | None = None
    ) -> None:
        self._frames: deque[bytes] = deque()
        self._monitor = monitor
        if monitor is not None:
            monitor.watch(self)
        self._soft = soft_limit
        self._hard = hard_limit
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def closed(self) -> bool:
        return self._closed

    async def put_bulk(self, frame: bytes) -> None:
        while len(self._frames) >= self._soft and not self._closed:
            self._writable.clear()
            await self._writable.wait()
        self._append(frame)

    def put_live(self, frame: bytes) -> bool:
        """Queue a live frame; False if the reader is too far behind to take it."""
        if self._monitor is not None:
            self._monitor.observe(len(self._frames))
        if len(self._frames) >= self._hard:
            return False
        self._append(frame)
        return True

    def put_control(self, frame: bytes) -> None:
        self._append(frame)

    def _append(self, frame: bytes) -> None:
        if self._closed:
            raise OutboxClosedError
        self._frames.append(frame)
        self._readable.set()

    async def get(self) -> bytes:
        """The next frame to send; raises OutboxClosedError once closed and drained."""
        while not self._frames:
            if self._closed:
                raise OutboxClosedError
            self._readable.clear()
            await self._readable.wait()
        frame = self._frames.popleft()
        if len(self._frames) < self._soft:
            self._writable.set()
        return frame

    def discard_pending(self) -> int:
        """Drop every queued frame (they are moot once the client must resync)."""
        dropped = len(self._frames)
        self._frames.clear()
        self._writable.set()
        return dropped

    def close(self) -> None:
        """No more frames in; frames already queued are still handed out."""
        self._closed = True
        self._readable.set()
        self._writable.set()
