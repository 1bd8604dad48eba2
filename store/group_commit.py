"""Group commit: work for one key that arrives while a group for that key is running waits,
then runs together with the rest of the waiting work as the next group.

The change log uses it per project, so that pushes that queue behind a running append are
appended in one transaction under one lock acquisition instead of one each. Nothing here
waits to gather work: on an idle key a submission runs at once, alone. A group runs its
items in arrival order and settles each item's own result; when the group fails as a
whole (the run raises), every item of it gets that error.

Only one group per key runs at a time in this process. The lock that keeps that order is
an ``asyncio.Lock`` per key (first come, first served): a waiter whose item an earlier
group already settled passes straight through it when its turn comes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
R = TypeVar("R")

RunGroup = Callable[[K, Sequence[T]], Awaitable[Sequence[R]]]
"""Runs one group for a key: one result per item, in order; raising fails the group."""


@dataclass(slots=True)
class _Waiting(Generic[T, R]):
    item: T
    future: asyncio.Future[R]


@dataclass(slots=True)
class _Lane(Generic[T, R]):
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    queue: list[_Waiting[T, R]] = field(default_factory=list)
    users: int = 0


class GroupCommit(Generic[K, T, R]):
    """Per key, a queue of waiting items and the lock of the group running for it."""

    def __init__(self, run: RunGroup[K, T, R]) -> None:
        self._run = run
        self._lanes: dict[K, _Lane[T, R]] = {}
        self.groups = 0  # groups run, for tests and metrics
        self.grouped = 0  # items that ran in a group of more than one

    async def submit(self, key: K, item: T) -> R:
        """Run ``item`` in the next group for ``key``; its result, or the group's error."""
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        waiting: _Waiting[T, R] = _Waiting(item, asyncio.get_running_loop().create_future())
        lane.queue.append(waiting)
        lane.users += 1
        try:
            async with lane.lock:
                if not waiting.future.done():  # not taken by an earlier group: lead one
                    group, lane.queue = lane.queue, []
                    await self._lead(key, group)
        except asyncio.CancelledError:
            if waiting in lane.queue:
                lane.queue.remove(waiting)
            # Settled by a group later or already: nobody reads it now.
            waiting.future.add_done_callback(_consume)
            raise
        finally:
            lane.users -= 1
            if lane.users == 0:
                del self._lanes[key]
        return waiting.future.result()

    async def _lead(self, key: K, group: list[_Waiting[T, R]]) -> None:
        """Run ``group``; one of several runs to the end even if its leader is cancelled,
        since the other items wait for their own results."""
        self.groups += 1
        if len(group) == 1:  # alone: its cancellation concerns nobody else
            await self._settle(key, group)
            return
        self.grouped += len(group)
        running = asyncio.ensure_future(self._settle(key, group))
        try:
            await asyncio.shield(running)
        except asyncio.CancelledError:
            # Keep the key's lock until the group is done, so groups never overlap.
            await asyncio.wait([running])
            raise

    async def _settle(self, key: K, group: list[_Waiting[T, R]]) -> None:
        try:
            answers = await self._run(key, [w.item for w in group])
        except Exception as exc:
            for waiting in group:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            return
        except BaseException:
            for waiting in group:
                waiting.future.cancel()
            raise
        for waiting, answer in zip(group, answers, strict=True):
            if not waiting.future.done():
                waiting.future.set_result(answer)


def _consume(future: asyncio.Future[Any]) -> None:
    """Mark an abandoned result as read (no "exception was never retrieved" warning)."""
    if not future.cancelled():
        future.exception()
