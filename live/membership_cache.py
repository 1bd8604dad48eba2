"""Who is a member of which project, remembered by this process for a short while.

A reconnect storm asks the same question thousands of times in a few seconds (a user's
devices, every project a client names), and each answer read from the database costs a
pooled connection and two round trips. Only memberships are remembered (never "not a
member": a member just added must get in at once), each for ``ttl`` seconds, and concurrent
questions about one (project, user) share one read.

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
import time
from collections.abc import Callable
from uuid import UUID

from fieldsync.store.ports import MembershipPort

MEMBERSHIP_TTL_SECONDS = 30.0
MAX_ENTRIES = 200_000  # about 200 bytes each: a ceiling, never reached by real memberships

_Key = tuple[UUID, UUID]  # (project, user)


class MembershipCache:
    def __init__(
        self,
        membership: MembershipPort,
        ttl: float = MEMBERSHIP_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._membership = membership
        self._ttl = ttl
        self._clock = clock
        self._max_entries = max_entries
        self._known: dict[_Key, tuple[str, float]] = {}  # level, when read
        self._reading: dict[_Key, asyncio.Task[str | None]] = {}
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
        reading = self._reading.get(key)
        if reading is None:
            # A task of its own, so a caller that goes away does not cancel the others' read.
            reading = self._reading[key] = asyncio.create_task(self._read(key))
            reading.add_done_callback(_retrieved)
        else:
            self.hits += 1
        return await asyncio.shield(reading)

    async def _read(self, key: _Key) -> str | None:
        generation = self._forgotten
        self.reads += 1
        try:
            level = await self._membership.level(*key)
        finally:
            if self._reading.get(key) is asyncio.current_task():
                del self._reading[key]
        if level is not None and generation == self._forgotten:
            if len(self._known) >= self._max_entries:
                self._known.clear()
            self._known[key] = (level, self._clock())
        return level

    def forget(self, project_id: UUID, user_id: UUID) -> None:
        """The user was removed from the project (in any process)."""
        self._forgotten += 1
        self._known.pop((project_id, user_id), None)
        self._reading.pop((project_id, user_id), None)

    def forget_all(self) -> None:
        """Removal notices may have been missed: nothing remembered is trusted any more."""
        self._forgotten += 1
        self._known.clear()
        self._reading.clear()


def _retrieved(task: asyncio.Task[str | None]) -> None:
    """Every caller may have gone: a failed read is then nobody's to report."""
    if not task.cancelled():
        task.exception()
