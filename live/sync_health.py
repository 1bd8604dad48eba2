"""Members' sync health: what sync sessions see of each client, written to storage off the
sessions' path.

A session tells the :class:`HealthRecorder` when a member's client starts syncing a project
(the hello's client id, version and outbox age) and when the connection ends; both calls
only note the record in memory and return. One task per process (the app's lifespan runs
:meth:`HealthRecorder.run`) writes what is pending in one batch every ``flush_seconds``,
and re-records every open session every ``heartbeat_seconds`` so readers can tell a live
session from one whose process died (a session counts as connected while its last record
is younger than ``LIVE_SECONDS``). So each connection causes at most one write per project
per heartbeat, plus its start and end, whatever it does; records for one client coalesce
into the latest; a storage failure drops the batch (the next heartbeat writes again) and
costs one log line; nothing waits for storage but this task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from uuid import UUID

from fieldsync.observability.log_limits import LogLimiter
from fieldsync.store.errors import StoreError
from fieldsync.store.ports import SyncHealthPort
from fieldsync.store.records import ClientSeen

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30.0
LIVE_SECONDS = 3 * HEARTBEAT_SECONDS
"""A session last recorded longer ago than this is not counted as connected."""
FLUSH_SECONDS = 1.0
MAX_PENDING = 10_000
"""Distinct clients waiting to be written; past this, new records are dropped until the
next write (a heartbeat records them again)."""

_Key = tuple[UUID, UUID, str]  # project, user, client id


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What a session learnt from its hello."""

    user_id: UUID
    client_id: str
    client_version: str | None
    outbox_age_ms: int | None
    hello_at: datetime


class HealthRecorder:
    def __init__(
        self,
        port: SyncHealthPort,
        *,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        flush_seconds: float = FLUSH_SECONDS,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._port = port
        self.heartbeat_seconds = heartbeat_seconds
        self.flush_seconds = flush_seconds
        self._max_pending = max_pending
        self._pending: dict[_Key, ClientSeen] = {}
        # Per session id, its projects' records: a closing session finds its own without a
        # scan. A tuple, since a connection syncs one project or a few and every idle one
        # holds this (48 bytes for one, where a dict takes 224).
        self._open: dict[str, tuple[ClientSeen, ...]] = {}
        self._log = LogLimiter()
        self.dropped = 0

    def opened(self, session_id: str, project_id: UUID, hello: ClientHello) -> None:
        """A session started syncing ``project_id`` for a member's client."""
        seen = ClientSeen(
            project_id,
            hello.user_id,
            hello.client_id,
            hello.client_version,
            hello.outbox_age_ms,
            hello.hello_at,
            _now(),
            True,
        )
        others = tuple(s for s in self._open.get(session_id, ()) if s.project_id != project_id)
        self._open[session_id] = (*others, seen)
        self._note(seen)

    def closed(self, session_id: str) -> None:
        """The session's connection ended: each project it synced records it as gone."""
        projects = self._open.pop(session_id, None)
        if not projects:
            return
        now = _now()
        for seen in projects:
            self._note(replace(seen, seen_at=now, connected=False))

    def _note(self, seen: ClientSeen) -> None:
        key = (seen.project_id, seen.user_id, seen.client_id)
        kept = self._pending.get(key)
        if kept is None and len(self._pending) >= self._max_pending:
            self.dropped += 1
            return
        if kept is None or (kept.hello_at, kept.seen_at) <= (seen.hello_at, seen.seen_at):
            self._pending[key] = seen

    def _heartbeat(self) -> None:
        now = _now()
        for session_id, projects in self._open.items():
            renewed = tuple(replace(seen, seen_at=now) for seen in projects)
            self._open[session_id] = renewed  # a value replaced: the dict's size stays
            for seen in renewed:
                self._note(seen)

    async def flush(self) -> None:
        """Write what is pending, in one batch; a failure drops it (one log line)."""
        if not self._pending:
            return
        batch, self._pending = list(self._pending.values()), {}
        try:
            await self._port.record(batch)
        except StoreError as exc:
            self.dropped += len(batch)
            left_out = self._log.allow("sync_health_failed", time.monotonic())
            if left_out is not None:
                log.warning(
                    "recording sync health failed: %s",
                    exc,
                    extra={"event": "sync_health_failed", "suppressed": left_out},
                )

    async def run(self) -> None:
        """Write pending records until cancelled; then write the last ones once."""
        last_beat = time.monotonic()
        try:
            while True:
                await asyncio.sleep(self.flush_seconds)
                if time.monotonic() - last_beat >= self.heartbeat_seconds:
                    last_beat = time.monotonic()
                    self._heartbeat()
                await self.flush()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush(), 2.0)


def _now() -> datetime:
    return datetime.now(UTC)
