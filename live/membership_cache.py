"""Who is a member of which project, remembered by this process for a short while.

A reconnect storm asks the same question thousands of times in a few seconds (a user's
devices, every project a client names), and each answer read from the database costs a
pooled connection and two round trips. Only memberships are remembered (never "not a
member": a member just added must get in at once), each for ``ttl`` seconds. Questions not
answered from memory are read together: at most one read is under way, and every question
asked meanwhile goes into the next one (up to ``MAX_READ`` pairs, one query). After a restart
every user of a storm is a question, and one read each cost the storm's server a quarter of
its CPU (``docs/scaling.md``).

A removal forgets the membership at once: the removal notice (``membership_removed``) and
the recheck after a listener reconnects (``recheck_memberships``) both reach
:meth:`MembershipCache.forget`. A read that was under way when something was forgotten does
not fill the cache, since it may have seen the row before the removal committed. For a
push, a remembered level that may write only lets the append go ahead: the append checks
the writer again under the project's lock, and that check counts. A remembered level that
may not write is read afresh before the push is refused (a promotion is not announced).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from uuid import UUID

from fieldsync.store.ports import MembershipPort

MEMBERSHIP_TTL_SECONDS = 30.0
MAX_ENTRIES = 200_000  # about 200 bytes each: a ceiling, never reached by real memberships
MAX_READ = 1_000  # (project, user) pairs in one read

_Key = tuple[UUID, UUID]  # (project, user)


class MembershipCache:
    def __init__(
        self,
        membership: MembershipPort,
        ttl: float = MEMBERSHIP_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
        max_read: int = MAX_READ,
    ) -> None:
        self._membership = membership
        self._ttl = ttl
        self._clock = clock
        self._max_entries = max_entries
        self._max_read = max_read
        self._known: dict[_Key, tuple[str, float]] = {}  # level, when read
        # The askers of each pair, a future each (so one that goes away cancels only its
        # own): waiting for the next read, and in the read under way.
        self._asked: dict[_Key, list[asyncio.Future[str | None]]] = {}
        self._reading: dict[_Key, list[asyncio.Future[str | None]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._forgotten = 0  # how many times something was forgotten (a generation)
        self.hits = 0
        self.reads = 0

    async def level(self, project_id: UUID, user_id: UUID) -> str | None:
        """The user's level in the project, or None; raises StoreError as the port does."""
        key = (project_id, user_id)
        known = self._known.get(key)
        if known is not None:
            if self._clock() - known[1] < self._ttl:
                self.hits += 1
                return known[0]
            del self._known[key]
        answer: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        reading = self._reading.get(key)
        if reading is not None:
            self.hits += 1
            reading.append(answer)
        else:
            self._asked.setdefault(key, []).append(answer)
            if self._reader is None:
                # A task of its own, so a caller that goes away does not cancel the others' read.
                self._reader = asyncio.create_task(self._read_all())
        return await answer

    async def _read_all(self) -> None:
        """Read what was asked, a batch at a time, until nothing more is."""
        try:
            while self._asked:
                batch = dict(itertools.islice(self._asked.items(), self._max_read))
                for key in batch:
                    del self._asked[key]
                self._reading = batch
                await self._read(batch)
        except BaseException:  # cancelled: so is every question still waiting
            for answers in self._asked.values():
                for answer in answers:
                    answer.cancel()
            self._asked.clear()
            raise
        finally:
            self._reader = None
            self._reading = {}

    async def _read(self, batch: dict[_Key, list[asyncio.Future[str | None]]]) -> None:
        generation = self._forgotten
        self.reads += 1
        try:
            levels = await self._membership.levels(list(batch))
        except Exception as exc:
            for answers in batch.values():
                for answer in answers:
                    if not answer.done():
                        answer.set_exception(exc)
            return
        except BaseException:  # cancelled (the server is stopping): so are its askers
            for answers in batch.values():
                for answer in answers:
                    answer.cancel()
            raise
        remember = generation == self._forgotten
        now = self._clock()
        for key, answers in batch.items():
            level = levels.get(key)
            if level is not None and remember:
                if len(self._known) >= self._max_entries:
                    self._known.clear()
                self._known[key] = (level, now)
            for answer in answers:
                if not answer.done():
                    answer.set_result(level)

    def forget(self, project_id: UUID, user_id: UUID) -> None:
        """The user was removed from the project (in any process)."""
        self._forgotten += 1
        key = (project_id, user_id)
        self._known.pop(key, None)
        # Asked from now on, it is read afresh: the read under way may have seen the row.
        self._reading = {k: v for k, v in self._reading.items() if k != key}

    def forget_all(self) -> None:
        """Removal notices may have been missed: nothing remembered is trusted any more."""
        self._forgotten += 1
        self._known.clear()
        self._reading = {}
