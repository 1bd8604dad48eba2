"""Every socket's next deadline (keepalive ping, pong wait, close wait) on one timer.

Each idle socket always has a deadline pending: its next keepalive ping. As an asyncio timer
that is a ``TimerHandle`` (about 190 bytes, and one more each time it is moved) in the
loop's heap, per socket. Here deadlines are rounded up to a tick and kept in one set per
tick, and one loop timer fires for the earliest tick: a socket's deadline costs an entry in
a set, and moving it is a set discard and add. A deadline fires up to one tick late.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from typing import Protocol

_QUIET = contextvars.Context()
"""The context the timer runs in: it logs nothing, and must not hold a copy of the context
it was first set in (a connection's log binding)."""


class Expiring(Protocol):
    def expired(self) -> None:
        """Its deadline passed."""


Slot = set[Expiring]
"""Where a deadline is kept: cancel it with ``slot.discard(item)``."""


class Deadlines:
    """Deadlines on ``loop``, in ticks of ``tick`` seconds."""

    __slots__ = ("_buckets", "_handle", "_loop", "_tick")

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: float) -> None:
        self._loop = loop
        self._tick = tick
        self._buckets: dict[int, Slot] = {}
        self._handle: asyncio.TimerHandle | None = None

    def add(self, item: Expiring, seconds: float) -> Slot:
        """Call ``item.expired()`` in ``seconds`` (or up to a tick later)."""
        due = math.ceil((self._loop.time() + seconds) / self._tick)
        slot = self._buckets.get(due)
        if slot is None:
            slot = self._buckets[due] = set()
            if self._handle is None or due < self._armed_at_tick():
                self._arm(due)
        slot.add(item)
        return slot

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def _armed_at_tick(self) -> int:
        assert self._handle is not None
        return round(self._handle.when() / self._tick)

    def _arm(self, due: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(due * self._tick, self._fire, context=_QUIET)

    def _fire(self) -> None:
        self._handle = None
        # asyncio may run a timer a clock resolution early: a hundredth of a tick is taken
        # as on time, so the tick due now is not left for one more turn.
        now = math.floor(self._loop.time() / self._tick + 0.01)
        for due in sorted(d for d in self._buckets if d <= now):
            slot = self._buckets.pop(due)
            while slot:  # an item may cancel another's deadline meanwhile
                slot.pop().expired()
        # What expired may have armed the timer for a later tick than one already waiting.
        if self._buckets:
            first = min(self._buckets)
            if self._handle is None or first < self._armed_at_tick():
                self._arm(first)
