"""Snapshots and catch-up reads from a streaming replica, the primary keeping the rest.

A PostgreSQL hot standby replays the primary's WAL in commit order, so each project's log
there is the primary's log up to some seq: the seqs are gapless and the transaction holding
seq N commits before the one holding N+1 (``store.changelog``). Reads that only need *a*
consistent state, not the newest, can go there:

- **Snapshots** run on the replica in one repeatable-read transaction, exactly as on the
  primary (``store.snapshots``): the cursor they name is the project's head as the replica
  has it, read in the same transaction as the documents. A client is never handed a seq the
  replica has not replayed.
- **Catch-up** (``ChangeLog.catch_up``) first reads the project's head on the replica. Past
  the client's cursor the replica answers; at its end (it holds nothing past the cursor)
  the read goes to the primary, which hands over whatever was committed since, so the
  client reaches the head the live feed works from without a gap; a client whose cursor is
  ahead of the replica's head (it synced against the primary) is answered by the primary,
  never moved backwards (``replica_plan.catch_up_source``).

Everything else stays on the primary: appends, the membership checks that gate them, the
log head (which refuses a cursor beyond it), live feeds, notifications, admin and
migrations. The replica is checked at most every ``check_seconds``, on demand, in the
background of the reads: reachable, still in recovery, a copy of the primary's cluster,
and its replay lag (``replica_plan.ReplayLag``) within ``max_lag``. While it is not, reads
go to the primary, counted by reason; a read that fails on the replica, or takes longer
than ``timeout`` to start, goes to the primary too and marks the replica down until the
next check finds it back. Health and metrics read :meth:`ReplicaReads.report`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any
from uuid import UUID

from fieldsync.store.changelog import read_log
from fieldsync.store.database import DatabasePool, close_pool, create_pool
from fieldsync.store.driver import driver_error_name, translated
from fieldsync.store.errors import DatabaseUnavailable, StoreError, UnknownProject
from fieldsync.store.log_heads import READ_HEAD
from fieldsync.store.ports import Snapshot
from fieldsync.store.records import LogSlice, ReplicaReport
from fieldsync.store.replica_plan import (
    UNCHECKED,
    Refusal,
    ReplayLag,
    ReplicaState,
    catch_up_source,
    down,
    replica_state,
)
from fieldsync.store.snapshots import open_snapshot

log = logging.getLogger(__name__)

DEFAULT_MAX_LAG = 10.0
CHECK_SECONDS = 0.5
TIMEOUT_SECONDS = 2.0

_PRIMARY_POSITION = """
SELECT pg_current_wal_flush_lsn() AS lsn, (SELECT system_identifier FROM pg_control_system()) AS id
"""
_REPLICA_POSITION = """
SELECT pg_is_in_recovery() AS in_recovery, pg_last_wal_replay_lsn() AS lsn,
       (SELECT system_identifier FROM pg_control_system()) AS id
"""

ReadSince = Callable[[UUID, int, int], Awaitable[LogSlice]]


class ReplicaReads:
    """The routing between a replica's pool and the primary's, with what it counted."""

    def __init__(
        self,
        primary: DatabasePool,
        replica: DatabasePool,
        *,
        max_lag: float = DEFAULT_MAX_LAG,
        check_seconds: float = CHECK_SECONDS,
        timeout: float = TIMEOUT_SECONDS,
    ) -> None:
        self._primary = primary
        self._replica = replica
        self._max_lag = max_lag
        self._check_seconds = check_seconds
        self._timeout = timeout
        self._lag = ReplayLag()
        self._state = UNCHECKED
        self._checked_at = -math.inf
        self._check: asyncio.Task[None] | None = None
        self._reads: Counter[tuple[str, str]] = Counter()
        self._fallbacks: Counter[tuple[str, str]] = Counter()

    @classmethod
    async def open(
        cls,
        primary: DatabasePool,
        replica_url: str,
        *,
        max_size: int = 10,
        max_lag: float = DEFAULT_MAX_LAG,
        check_seconds: float = CHECK_SECONDS,
        timeout: float = TIMEOUT_SECONDS,  # noqa: ASYNC109 (a setting kept for every read)
    ) -> ReplicaReads:
        """Routing to the replica at ``replica_url``; its pool connects on demand, so a
        replica that is down now does not keep the server from starting."""
        pool = await create_pool(replica_url, 0, max_size, connect_timeout=timeout)
        return cls(primary, pool, max_lag=max_lag, check_seconds=check_seconds, timeout=timeout)

    @property
    def state(self) -> ReplicaState:
        return self._state

    def report(self) -> ReplicaReport:
        return ReplicaReport(
            self._state.usable, self._state.lag_seconds, dict(self._reads), dict(self._fallbacks)
        )

    @translated("closing the read replica's pool")
    async def close(self) -> None:
        if self._check is not None:
            self._check.cancel()
        await close_pool(self._replica, self._timeout)

    # -- the reads ----------------------------------------------------------------------------

    @translated("reading the change log")
    async def catch_up(
        self, project_id: UUID, cursor: int, limit: int, primary: ReadSince
    ) -> LogSlice:
        """The log past ``cursor`` for a catching-up client, from the replica when it holds
        changes past the cursor, else from the primary (``primary``)."""
        refusal = await self._refusal()
        if refusal is None:
            try:
                async with asyncio.timeout(self._timeout), self._replica.acquire() as conn:
                    source = catch_up_source(cursor, await conn.fetchval(READ_HEAD, project_id))
                    if source == "replica":
                        piece = await read_log(conn, project_id, cursor, limit)
                        self._reads["catch_up", "replica"] += 1
                        return piece
            except (StoreError, TimeoutError) as exc:
                source = self._failed(exc)
            # At the replica's end ("tail") the primary hands over what came since.
            refusal = source if isinstance(source, Refusal) else None
        if refusal is not None:
            self._fallbacks["catch_up", refusal.value] += 1
        self._reads["catch_up", "primary"] += 1
        return await primary(project_id, cursor, limit)

    def open_snapshot(self, project_id: UUID) -> AbstractAsyncContextManager[Snapshot]:
        """A snapshot from the replica when it can take one now, else from the primary."""
        return _RoutedSnapshot(self, project_id)

    async def _enter_snapshot(
        self, project_id: UUID
    ) -> tuple[AbstractAsyncContextManager[Snapshot], Snapshot]:
        refusal = await self._refusal()
        if refusal is None:
            opening = open_snapshot(self._replica, project_id)
            try:
                async with asyncio.timeout(self._timeout):
                    snapshot = await opening.__aenter__()
            except UnknownProject:
                refusal = Refusal.UNKNOWN_PROJECT  # created on the primary, not replayed yet
            except (StoreError, TimeoutError) as exc:
                refusal = self._failed(exc)
            else:
                self._reads["snapshot", "replica"] += 1
                return opening, snapshot
        self._fallbacks["snapshot", refusal.value] += 1
        self._reads["snapshot", "primary"] += 1
        opening = open_snapshot(self._primary, project_id)
        return opening, await opening.__aenter__()

    # -- the state ------------------------------------------------------------------------------

    async def _refusal(self) -> Refusal | None:
        """None when reads may go to the replica now, else why not. A stale state is
        checked again in the background; only the very first read waits for a check."""
        if time.monotonic() - self._checked_at >= self._check_seconds and self._check is None:
            self._check = asyncio.get_running_loop().create_task(self._refresh())
        if self._state is UNCHECKED and self._check is not None:
            await asyncio.shield(self._check)
        return self._state.refusal

    @translated("checking the read replica")
    async def refreshed(self, within: float) -> ReplicaState:
        """The state, checked now if the last check is stale (for health)."""
        if time.monotonic() - self._checked_at >= self._check_seconds and self._check is None:
            self._check = asyncio.get_running_loop().create_task(self._refresh())
        if self._check is not None:
            try:
                async with asyncio.timeout(within):
                    await asyncio.shield(self._check)
            except TimeoutError:
                pass
        return self._state

    async def _refresh(self) -> None:
        try:
            self._set(await self._checked())
        except Exception:  # a check never takes reads down with it
            log.exception("checking the read replica failed")
        finally:
            self._checked_at = time.monotonic()
            self._check = None

    async def _checked(self) -> ReplicaState:
        try:
            async with asyncio.timeout(self._timeout):
                async with self._primary.acquire() as conn:
                    primary = await conn.fetchrow(_PRIMARY_POSITION)
                now = time.monotonic()
                async with self._replica.acquire() as conn:
                    replica = await conn.fetchrow(_REPLICA_POSITION)
        except TimeoutError:
            self._lag.forget()
            return down(f"no answer within {self._timeout:g} s")
        except StoreError as exc:
            self._lag.forget()
            return down(driver_error_name(exc))
        in_recovery = bool(replica["in_recovery"])
        lag = (
            self._lag.observe(now, int(primary["lsn"]), int(replica["lsn"]))
            if in_recovery and replica["lsn"] is not None
            else math.inf
        )
        return replica_state(
            in_recovery=in_recovery,
            same_cluster=replica["id"] == primary["id"],
            lag_seconds=lag,
            max_lag=self._max_lag,
        )

    def _failed(self, exc: BaseException) -> Refusal:
        """A read failed on the replica: an outage marks it down until the next check."""
        if isinstance(exc, TimeoutError | DatabaseUnavailable):
            why = (
                f"a read took over {self._timeout:g} s"
                if isinstance(exc, TimeoutError)
                else driver_error_name(exc)
            )
            self._set(down(why))
            self._checked_at = time.monotonic()
            return Refusal.DOWN
        log.warning("a read on the replica failed: %s", exc, extra={"event": "replica_read_failed"})
        return Refusal.FAILED

    def _set(self, state: ReplicaState) -> None:
        if state.usable != self._state.usable or state.refusal != self._state.refusal:
            level = logging.INFO if state.usable else logging.WARNING
            where = "go to the replica" if state.usable else "go to the primary"
            log.log(
                level,
                "read replica %s: reads %s",
                state.detail,
                where,
                extra={"event": "replica_state", "usable": state.usable},
            )
        self._state = state


class _RoutedSnapshot:
    """``SnapshotPort.open``'s context: the replica's snapshot or the primary's, decided on
    entering (before any entity is read, so a fallback is invisible to the reader)."""

    def __init__(self, reads: ReplicaReads, project_id: UUID) -> None:
        self._reads = reads
        self._project_id = project_id
        self._inner: AbstractAsyncContextManager[Snapshot] | None = None

    async def __aenter__(self) -> Snapshot:
        self._inner, snapshot = await self._reads._enter_snapshot(self._project_id)
        return snapshot

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Any:
        assert self._inner is not None
        return await self._inner.__aexit__(exc_type, exc, traceback)
