"""Reads of a project's log shared by the clients resuming it at the same time.

After a restart every client of a project comes back within seconds, each at a cursor at or
a little short of the head. Read one by one, that is a head read and a catch-up read (two
pooled round trips each) per client; here a project has at most one head read and one
catch-up read under way, and every client waiting meanwhile is served by the next one.

A catch-up read from the lowest waiting cursor serves every waiter whose cursor it covers:
each gets the part after its own cursor (``LogSlice`` cut by seq), exactly what a read from
its cursor would have returned at that moment. A read that began after a waiter asked and
stopped short of its limit has seen the log's end, so an empty part is a true "nothing
more"; a waiter past the end of a full read waits for the next read.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from uuid import UUID

from fieldsync.store.records import LogSlice

ReadLog = Callable[[UUID, int, int], Awaitable[LogSlice]]
ReadHead = Callable[[UUID], Awaitable[int]]


def after(piece: LogSlice, cursor: int) -> LogSlice:
    """The part of ``piece`` after ``cursor``: its changes and conflict updates past it."""
    changes = piece.changes
    first = bisect.bisect_right(changes, cursor, key=lambda c: c.seq)
    if first == 0:
        return piece
    updates = [u for u in piece.conflicts if u.seq > cursor]
    return LogSlice(changes[first:], updates)


@dataclass
class _Batch:
    """The clients of one project waiting for the next catch-up read."""

    waiters: list[tuple[int, asyncio.Future[LogSlice]]] = field(default_factory=list)


class CatchUpReads:
    """At most one catch-up read per project under way; waiters share the next one."""

    def __init__(self, read: ReadLog, limit: int) -> None:
        self._read = read
        self._limit = limit
        self._next: dict[UUID, _Batch] = {}  # waiting for the next read
        self._reading: dict[UUID, asyncio.Task[None]] = {}
        self.reads = 0
        self.served = 0

    async def catch_up(self, project_id: UUID, cursor: int) -> LogSlice:
        """What a ``catch_up(project_id, cursor, limit)`` would return; StoreError too."""
        answer: asyncio.Future[LogSlice] = asyncio.get_running_loop().create_future()
        self._next.setdefault(project_id, _Batch()).waiters.append((cursor, answer))
        self.served += 1
        if project_id not in self._reading:
            self._start(project_id)
        return await answer

    def _start(self, project_id: UUID) -> None:
        task = asyncio.create_task(self._serve(project_id))
        self._reading[project_id] = task

    async def _serve(self, project_id: UUID) -> None:
        try:
            while True:
                batch = self._next.pop(project_id, None)
                if batch is None:
                    return
                waiting = [(c, f) for c, f in batch.waiters if not f.done()]
                if waiting:
                    await self._serve_batch(project_id, waiting)
        finally:
            del self._reading[project_id]

    async def _serve_batch(
        self, project_id: UUID, waiting: list[tuple[int, asyncio.Future[LogSlice]]]
    ) -> None:
        start = min(cursor for cursor, _ in waiting)
        self.reads += 1
        try:
            piece = await self._read(project_id, start, self._limit)
        except Exception as exc:
            for _, answer in waiting:
                if not answer.done():
                    answer.set_exception(exc)
            return
        except BaseException:  # cancelled (the server is stopping): so are its waiters
            for _, answer in waiting:
                answer.cancel()
            raise
        full = len(piece.changes) >= self._limit
        end = piece.changes[-1].seq if piece.changes else start
        for cursor, answer in waiting:
            if answer.done():
                continue
            if cursor < end or not full:
                answer.set_result(after(piece, cursor))
            else:  # past the end of a full read: the next read starts from it
                self._next.setdefault(project_id, _Batch()).waiters.append((cursor, answer))


class HeadReads:
    """A project's head, read once for everyone asking while a read is under way.

    The answer is the head as of some moment after the first of them asked: a lower bound
    of the head now. Good enough to tell that a cursor is not ahead; a cursor beyond it is
    checked again with a read of its own (``at_least``).
    """

    def __init__(self, read: ReadHead) -> None:
        self._read = read
        self._reading: dict[UUID, asyncio.Task[int]] = {}
        self.reads = 0

    async def at_least(self, project_id: UUID, cursor: int) -> int:
        """The head if it is at least ``cursor``; else the head read afresh (a cursor
        beyond it is really ahead)."""
        head = await self.shared(project_id)
        if head >= cursor:
            return head
        self.reads += 1
        return await self._read(project_id)

    async def shared(self, project_id: UUID) -> int:
        reading = self._reading.get(project_id)
        if reading is None:
            self.reads += 1
            reading = self._reading[project_id] = asyncio.create_task(self._fresh(project_id))
            reading.add_done_callback(lambda done: self._done(project_id, done))
        return await asyncio.shield(reading)

    async def _fresh(self, project_id: UUID) -> int:
        return await self._read(project_id)

    def _done(self, project_id: UUID, task: asyncio.Task[int]) -> None:
        if self._reading.get(project_id) is task:
            del self._reading[project_id]
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have gone
