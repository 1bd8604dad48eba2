"""The in-memory storage: every port of ``store.ports`` in plain Python, no database.

For tests (fast, and a second implementation that keeps the ports honest: the contract
suite ``tests/store/contract`` runs against it and PostgreSQL alike) and for running the
server without PostgreSQL (``create_app(storage=MemoryStorage())``). Its appends make the
same decisions as PostgreSQL's through the same pure code (``store.append_plan``,
``store.conflict_plan``, ``store.replay``): seqs gapless per project, idempotent re-pushes,
read models and conflict records kept, snapshots consistent at their cursor. Nothing
survives the process.

Several apps given one ``MemoryStorage`` behave like server processes sharing one
database: each has its own change log, head notifications reach every app. It is also a
test double: :meth:`MemoryStorage.fail` makes every operation fail the way an unreachable
database does (``DatabaseUnavailable``, or the error given) until :meth:`recover`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from uuid import UUID

from fieldsync.conflict.cross import Row
from fieldsync.conflict.ledger import ConflictRow
from fieldsync.conflict.neighbourhood import Lookups
from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.model.merge import EntityChanges
from fieldsync.store import heads
from fieldsync.store.append_plan import (
    CommitObservers,
    OnCommit,
    asked_hashes,
    assign_seqs,
    authorize_all,
    decoded_only,
    entity_merges,
    index_logged,
    merge_batch,
    prepare_batch,
    refuse_server_authored,
    results,
    tell_observers,
    writer_rule,
)
from fieldsync.store.conflict_plan import plan_conflicts
from fieldsync.store.errors import DatabaseUnavailable, StoreError
from fieldsync.store.memory_admin import MemoryAdmin, MemoryMaintenance
from fieldsync.store.memory_queries import MemoryQueries, MemorySyncHealth
from fieldsync.store.memory_state import Database, Entity, Project
from fieldsync.store.ports import PointerHandler, RemovalHandler
from fieldsync.store.records import AppendResult, LoggedHash, LogSlice, SnapshotEntity

__all__ = ["MemoryChangeLog", "MemoryStorage"]


class MemoryStorage:
    """``store.ports.Storage`` in memory."""

    pool_gauges = None  # no connections to count
    replica_gauges = None  # no read replica
    attachments = None  # attachments need PostgreSQL (their queue): docs/attachments.md

    def __init__(self) -> None:
        self._db = Database()
        self.membership = MemoryMembership(self._db)
        self.snapshots = MemorySnapshots(self._db)
        self.notifications = MemoryNotifications(self._db)
        self.health = MemoryHealth(self._db)
        self.admin = MemoryAdmin(self._db)
        self.maintenance = MemoryMaintenance(self._db)
        self.queries = MemoryQueries(self._db)
        self.sync_health = MemorySyncHealth(self._db)

    @property
    def state(self) -> Database:
        """Everything it holds, for tests to inspect (as they read PostgreSQL's tables)."""
        return self._db

    def change_log(
        self,
        *,
        limits: Limits = DEFAULT_LIMITS,
        on_commit: OnCommit | None = None,
        on_append: Callable[[UUID, int, int], None] | None = None,
        on_conflicts_found: Callable[[Sequence[str]], None] | None = None,
    ) -> MemoryChangeLog:
        return MemoryChangeLog(
            self._db, limits, CommitObservers(on_append, on_conflicts_found, on_commit)
        )

    async def close(self) -> None:
        """Nothing to release (the data stays, for whoever still holds this storage)."""

    def fail(
        self,
        reason: str = "the database is unreachable (simulated)",
        error: type[StoreError] = DatabaseUnavailable,
    ) -> None:
        """From now on every operation fails with ``error`` naming ``reason``, and health
        checks report it, until :meth:`recover`."""
        self._db.fail(reason, error)

    def recover(self) -> None:
        self._db.recover()


class MemoryChangeLog:
    """``store.ports.ChangeLogPort`` in memory: one per app, like a process's change log."""

    def __init__(self, db: Database, limits: Limits, observers: CommitObservers) -> None:
        self._db = db
        self._limits = limits
        self._observers = observers

    @property
    def limits(self) -> Limits:
        return self._limits

    async def append(
        self,
        project_id: UUID,
        batch: Sequence[EntityChanges],
        sender: str,
        *,
        as_member: UUID | None = None,
    ) -> list[AppendResult]:
        if not batch:
            return []
        decoded = prepare_batch(batch, self._limits)
        db = self._db
        async with db.lock(project_id):
            db.check("appending to the change log")
            project = db.project(project_id)
            valid = decoded_only(decoded)
            stored = db.stored(project_id, [d.entity_id for d in valid])
            logged, owners = index_logged(project.logged(asked_hashes(valid)))
            outcomes = merge_batch(project_id, decoded, stored, logged, owners, self._limits)
            if as_member is not None:
                outcomes = refuse_server_authored(outcomes)
            rule = writer_rule(project.writer(as_member)) if as_member is not None else None
            if rule is not None:
                outcomes = authorize_all(outcomes, stored, rule)
            plan = assign_seqs(project.head, outcomes)
            conflicts = await plan_conflicts(
                _ConflictReader(project), entity_merges(plan, stored), sender
            )
            db.commit(project, plan, sender, conflicts)
        tell_observers(self._observers, project_id, plan, conflicts)
        return results(batch, outcomes, plan.seqs)

    async def read_since(self, project_id: UUID, cursor: int, limit: int = 1_000) -> LogSlice:
        self._db.check("reading the change log")
        project = self._db.projects.get(project_id)
        if project is None:
            return LogSlice([])
        start = max(cursor, 0)
        changes = [entry.change for entry in project.log[start : start + limit]]
        if not changes:
            return LogSlice([])
        return LogSlice(changes, project.conflict_updates(cursor, changes[-1].seq))

    async def catch_up(self, project_id: UUID, cursor: int, limit: int = 1_000) -> LogSlice:
        return await self.read_since(project_id, cursor, limit)  # there is no replica

    async def head(self, project_id: UUID) -> int:
        self._db.check("reading the log head")
        return self._db.project(project_id).head


class _ConflictReader:
    """``store.conflict_plan.ConflictReader`` over one project's dicts."""

    def __init__(self, project: Project) -> None:
        self._project = project

    async def rows_naming(self, entity_ids: Sequence[str]) -> list[ConflictRow]:
        return self._project.rows_naming(entity_ids)

    async def logged(self, hashes: Sequence[bytes]) -> list[LoggedHash]:
        return self._project.logged(hashes)

    async def rows(self, keys: Lookups) -> list[Row]:
        return self._project.rule_rows(keys)


class MemoryMembership:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def level(self, project_id: UUID, user_id: UUID) -> str | None:
        self._db.check("reading membership")
        return self._level(project_id, user_id)

    async def levels(self, pairs: Sequence[tuple[UUID, UUID]]) -> dict[tuple[UUID, UUID], str]:
        self._db.check("reading memberships")
        found = {pair: self._level(*pair) for pair in pairs}
        return {pair: level for pair, level in found.items() if level is not None}

    def _level(self, project_id: UUID, user_id: UUID) -> str | None:
        project = self._db.projects.get(project_id)
        member = project.members.get(user_id) if project is not None else None
        return member.level if member is not None else None

    async def still_member_of(self, user_id: UUID, project_ids: Sequence[UUID]) -> set[UUID]:
        self._db.check("reading memberships")
        return {
            project_id
            for project_id in project_ids
            if (project := self._db.projects.get(project_id)) is not None
            and user_id in project.members
        }


class MemorySnapshot:
    """A project as of one cursor: the entity and conflict objects current when it was
    opened (never changed in place, so later commits do not reach it)."""

    def __init__(
        self,
        db: Database,
        project_id: UUID,
        cursor: int,
        entities: Sequence[Entity],
        conflicts: Sequence[ConflictRow],
    ) -> None:
        self._db = db
        self._entities = entities
        self._conflicts = conflicts
        self.project_id = project_id
        self.cursor = cursor
        self.started = time.monotonic()  # for the snapshot metrics
        self.document_bytes = 0

    async def count(self) -> int:
        self._db.check("reading a snapshot")
        return len(self._entities)

    async def entities(self, prefetch: int = 128) -> AsyncIterator[SnapshotEntity]:
        for index, entity in enumerate(self._entities):
            if index % prefetch == 0:
                self._db.check("reading a snapshot")
                await asyncio.sleep(0)  # like fetching the next rows: others may run
            document = entity.saved + entity.tail
            self.document_bytes += len(document)
            yield SnapshotEntity(
                entity.entity_type, entity.entity_id, entity.version, entity.heads, document
            )

    async def conflicts(self) -> list[ConflictRow]:
        self._db.check("reading a snapshot")
        return list(self._conflicts)


class MemorySnapshots:
    def __init__(self, db: Database) -> None:
        self._db = db

    @asynccontextmanager
    async def open(self, project_id: UUID) -> AsyncIterator[MemorySnapshot]:
        self._db.check("taking a snapshot")
        project = self._db.project(project_id)
        entities = [project.entities[key] for key in sorted(project.entities)]
        conflicts = [project.conflicts[key] for key in sorted(project.conflicts)]
        yield MemorySnapshot(self._db, project_id, project.head, entities, conflicts)


class MemoryNotifications:
    """Pointers delivered to every listener of this storage (every app given it), on the
    next loop turn, as a notification arrives after its commit."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def notify_head(self, project_id: UUID, seq: int) -> None:
        self._db.check("notifying other processes")
        loop = asyncio.get_running_loop()
        for listener in list(self._db.head_listeners):
            loop.call_soon(listener, project_id, seq)

    async def listen_heads(self, on_pointer: PointerHandler) -> None:
        self._db.head_listeners.add(on_pointer)
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            self._db.head_listeners.discard(on_pointer)

    async def listen_removals(
        self, on_removed: RemovalHandler, *, on_connected: Callable[[], None] | None = None
    ) -> None:
        self._db.removal_listeners.add(on_removed)
        try:
            if on_connected is not None:
                on_connected()
            await asyncio.Event().wait()  # until cancelled
        finally:
            self._db.removal_listeners.discard(on_removed)

    async def poll_heads(
        self,
        projects: Callable[[], Sequence[UUID]],
        on_pointer: PointerHandler,
        *,
        interval: float,
    ) -> None:
        await heads.poll_heads(self._read_heads, projects, on_pointer, interval=interval)

    async def _read_heads(self, projects: Sequence[UUID]) -> Mapping[UUID, int]:
        self._db.check("checking log heads")
        return {p: self._db.projects[p].head for p in projects if p in self._db.projects}


class MemoryProbe:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def problem(self, within: float) -> str | None:
        failure = self._db.failure
        return None if failure is None else f"database error: {failure}"

    def close(self) -> None:
        pass


class MemoryHealth:
    def __init__(self, db: Database) -> None:
        self._db = db

    def probe(self) -> MemoryProbe:
        return MemoryProbe(self._db)

    async def components(self, within: float) -> dict[str, str]:
        return {}  # no part that may fail on its own
