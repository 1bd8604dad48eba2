"""Pushes applied ahead of their project's lock, one entity per turn of the event loop.

Each push's changes are applied onto this process's cached documents before its group takes
the lock (``model.merge.preapply``), so that the work under the lock is mostly the
database's. Done in the push's own task, all at once, that work came in bursts: a group's
acknowledgements let its clients send their next pushes together, and the process applied
them all while the next group's statement answers waited behind them, then sat idle while
PostgreSQL ran the group. The server and the database took turns instead of working
together.

Here one task applies every push, in arrival order, one entity at a time, and gives the
event loop a turn between entities. A statement's answer then waits at most one entity's
apply for the group to go on, and while the group waits for PostgreSQL the process applies
what comes next. (Applying in each push's task with a turn between entities would not do:
every waiting push would take a turn before the group's.)
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
Key = TypeVar("Key")


@dataclass(slots=True)
class _Job(Generic[Key, Item, Result]):
    key: Key
    items: Sequence[Item]
    done: asyncio.Future[list[Result | None]]


class ApplyAhead(Generic[Key, Item, Result]):
    """``apply(key, items)``: ``apply_one(key, item)`` for each item, in one task for every
    caller, a turn of the event loop between items; the results in the items' order.

    A caller that goes away (cancelled) leaves its remaining items unapplied. An exception
    from ``apply_one`` is that caller's alone: the next caller's items are applied."""

    def __init__(self, apply_one: Callable[[Key, Item], Result | None]) -> None:
        self._apply_one = apply_one
        self._waiting: deque[_Job[Key, Item, Result]] = deque()
        self._worker: asyncio.Task[None] | None = None

    async def apply(self, key: Key, items: Sequence[Item]) -> list[Result | None]:
        # Even with no items a caller waits for its turn: callers come out in the order they
        # came in (a client's pipelined pushes reach their project's lock in order).
        loop = asyncio.get_running_loop()
        job: _Job[Key, Item, Result] = _Job(key, items, loop.create_future())
        self._waiting.append(job)
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._worker = loop.create_task(self._work())
            self._worker.add_done_callback(self._worker_ended)
        return await job.done

    async def _work(self) -> None:
        while self._waiting:
            job = self._waiting[0]
            results: list[Result | None] = []
            try:
                for item in job.items:
                    if job.done.done():
                        break  # its caller went away
                    results.append(self._apply_one(job.key, item))
                    await asyncio.sleep(0)
            except Exception as exc:
                if not job.done.done():
                    job.done.set_exception(exc)
            self._waiting.popleft()
            if not job.done.done():
                job.done.set_result(results)

    def _worker_ended(self, worker: asyncio.Task[None]) -> None:
        """A worker cancelled (the loop shutting down), even before it started: nobody will
        apply what waits, unless a new worker already took over."""
        if worker.cancelled() and self._worker is worker:
            while self._waiting:
                self._waiting.popleft().done.cancel()
