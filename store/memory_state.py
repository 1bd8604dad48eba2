"""What the in-memory storage holds, and the one way a commit changes it.

The state mirrors the PostgreSQL tables (``migrations/``): accounts, users, projects with
their head seq and members, the change log, each entity's current document (``saved +
tail`` compacted by the same rule, ``store.compaction``), the read-model rows of
``model.projections``, the conflict records and the conflict feed. Entities, log entries
and conflict rows are immutable and replaced, never changed in place, so a snapshot that
keeps references to them stays consistent while later commits go on.

A commit is plain synchronous code between two awaits: nothing else runs in between, so it
is atomic, and everything that could fail is computed before the first write.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import count
from uuid import UUID

from automerge.core import Document

from fieldsync.conflict.cross import ActivityRow, LocationRow, RoleRow, Row, SummoningRow
from fieldsync.conflict.ledger import ConflictRow
from fieldsync.conflict.neighbourhood import Lookups
from fieldsync.model.documents import save_document
from fieldsync.model.merge import StoredEntity
from fieldsync.model.permissions import Level, Writer
from fieldsync.model.projections import PROJECTIONS
from fieldsync.store.append_plan import LoggedEntity, SeqPlan, StoredState
from fieldsync.store.compaction import should_compact
from fieldsync.store.conflict_plan import ConflictWrites
from fieldsync.store.errors import DatabaseUnavailable, StoreError, UnknownProject
from fieldsync.store.records import ConflictUpdate, LoggedChange, LoggedHash

ReadModelRow = Mapping[str, object]
"""A read-model row by column name (``model.projections``), with ``last_seq``."""


@dataclass(frozen=True, slots=True)
class Entity:
    """An entity's current document, as ``documents`` holds it."""

    project_id: UUID
    entity_type: str
    entity_id: str
    version: int
    heads: tuple[bytes, ...]
    saved: bytes
    tail: bytes
    tail_changes: int
    change_count: int
    op_count: int
    document: Document
    values: Mapping[str, object]

    @property
    def size_bytes(self) -> int:
        return len(self.saved) + len(self.tail)


@dataclass(frozen=True, slots=True)
class LogEntry:
    change: LoggedChange
    sender: str


@dataclass(slots=True)
class Member:
    level: str
    added_at: datetime
    order: int


@dataclass(slots=True)
class Account:
    account_id: UUID
    name: str
    created_at: datetime
    order: int


@dataclass(slots=True)
class User:
    user_id: UUID
    name: str
    email: str | None
    account_id: UUID | None
    created_at: datetime
    order: int


@dataclass(slots=True)
class Project:
    project_id: UUID
    account_id: UUID
    name: str
    created_at: datetime
    order: int
    head: int = 0
    log: list[LogEntry] = field(default_factory=list)  # the entry of seq N at N - 1
    by_hash: dict[bytes, LogEntry] = field(default_factory=dict)
    entities: dict[str, Entity] = field(default_factory=dict)
    read_models: dict[str, dict[str, ReadModelRow]] = field(
        default_factory=lambda: defaultdict(dict)
    )
    conflicts: dict[str, ConflictRow] = field(default_factory=dict)
    feed: list[tuple[int, str]] = field(default_factory=list)  # (seq, conflict id), in order
    members: dict[UUID, Member] = field(default_factory=dict)

    def logged(self, hashes: Iterable[bytes]) -> list[LoggedHash]:
        found = []
        for h in hashes:
            entry = self.by_hash.get(h)
            if entry is not None:
                found.append(LoggedHash(h, entry.change.entity_id, entry.change.seq, entry.sender))
        return found

    def conflict_updates(self, after: int, upto: int) -> list[ConflictUpdate]:
        """The conflicts changed by transactions whose changes end in (after, upto], each
        with its current row (as ``conflict_feed`` joined with ``rm_conflicts``)."""
        return [
            ConflictUpdate(seq, conflict_id, self.conflicts.get(conflict_id))
            for seq, conflict_id in self.feed
            if after < seq <= upto
        ]

    def rows_naming(self, entity_ids: Iterable[str]) -> list[ConflictRow]:
        wanted = set(entity_ids)
        return [row for row in self.conflicts.values() if wanted & set(row.entity_ids)]

    def rule_rows(self, keys: Lookups) -> list[Row]:
        """The read-model rows the conflict rules ask for, as the SQL reads them."""
        ids = keys.ids
        found: list[Row] = []
        if ids or keys.activities_by_location:
            for entity_id, r in self.read_models["activity"].items():
                if entity_id in ids or r["location_id"] in keys.activities_by_location:
                    found.append(
                        ActivityRow(
                            entity_id,
                            _opt_str(r["location_id"]),
                            _time(r["starts_at"]),
                            _time(r["ends_at"]),
                            r["deleted"] is True,
                            str(r["status"]),
                        )
                    )
        if ids or keys.summonings_by_activity or keys.summonings_by_role or keys.summonings_by_user:
            for entity_id, r in self.read_models["summoning"].items():
                if (
                    entity_id in ids
                    or r["activity_id"] in keys.summonings_by_activity
                    or r["role_id"] in keys.summonings_by_role
                    or r["user_id"] in keys.summonings_by_user
                ):
                    found.append(
                        SummoningRow(
                            entity_id,
                            str(r["activity_id"]),
                            _opt_str(r["role_id"]),
                            _opt_str(r["user_id"]),
                            _time(r["starts_at"]),
                            _time(r["ends_at"]),
                            r["deleted"] is True,
                            str(r["status"]),
                        )
                    )
        for entity_id in sorted(ids):
            location = self.read_models["location"].get(entity_id)
            if location is not None:
                found.append(LocationRow(entity_id, location["deleted"] is True))
        for entity_id in sorted(ids):
            role = self.read_models["role"].get(entity_id)
            if role is not None:
                found.append(RoleRow(entity_id, role["deleted"] is True))
        return found

    def writer(self, user_id: UUID) -> Writer | None:
        """The member as the rules see them now (``store.authorization`` reads the same
        from PostgreSQL); None if not a member."""
        member = self.members.get(user_id)
        if member is None:
            return None
        summoned: frozenset[str] = frozenset()
        if member.level == Level.SPECIALIST:
            summoned = frozenset(
                str(r["activity_id"])
                for r in self.read_models["summoning"].values()
                if r["user_id"] == str(user_id) and r["deleted"] is not True
            )
        return Writer(str(user_id), Level(member.level), summoned)

    def write_conflicts(self, writes: ConflictWrites, feed_seq: int) -> None:
        for key in writes.deletes:
            self.conflicts.pop(key, None)
        for row in writes.upserts:
            self.conflicts[row.conflict_id] = stored_row(row)
        known = set(self.feed)
        for conflict_id in writes.touched:
            if (feed_seq, conflict_id) not in known:
                self.feed.append((feed_seq, conflict_id))
        self.feed.sort()


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _time(value: object) -> datetime:
    assert isinstance(value, datetime)
    return value


def stored_row(row: ConflictRow) -> ConflictRow:
    """The row as storage gives it back: its details through JSON, as PostgreSQL's jsonb."""
    details = json.loads(json.dumps(row.details, sort_keys=True, separators=(",", ":")))
    return replace(row, entity_ids=tuple(row.entity_ids), fields=tuple(row.fields), details=details)


def read_model_row(entity_type: str, values: Mapping[str, object], last_seq: int) -> ReadModelRow:
    projection = PROJECTIONS[entity_type]
    row: dict[str, object] = dict(zip(projection.columns, projection.row(values), strict=True))
    row["last_seq"] = last_seq
    return row


class Database:
    """Everything one in-memory storage holds; shared by its ports (and by every app that
    is given the same storage, like server processes sharing one PostgreSQL)."""

    def __init__(self) -> None:
        self.accounts: dict[UUID, Account] = {}
        self.users: dict[UUID, User] = {}
        self.projects: dict[UUID, Project] = {}
        self.entities: dict[str, Entity] = {}  # by id: an id names one entity in one project
        self.head_listeners: set[Callable[[UUID, int], None]] = set()
        self.removal_listeners: set[Callable[[UUID, UUID], None]] = set()
        self._locks: dict[UUID, asyncio.Lock] = {}
        self._order = count(1)
        self._failure: tuple[type[StoreError], str] | None = None

    # --- the test double: told to fail, every operation fails as a database would ---------

    def fail(self, reason: str, error: type[StoreError] = DatabaseUnavailable) -> None:
        self._failure = (error, reason)

    def recover(self) -> None:
        self._failure = None

    @property
    def failure(self) -> str | None:
        return None if self._failure is None else self._failure[1]

    def check(self, doing: str) -> None:
        """Raise the configured failure, as the storage edge would translate it."""
        if self._failure is not None:
            error, reason = self._failure
            raise error(f"{doing} failed: {reason}")

    # ---------------------------------------------------------------------------------------

    def next_order(self) -> int:
        return next(self._order)

    def now(self) -> datetime:
        return datetime.now(UTC)

    def lock(self, project_id: UUID) -> asyncio.Lock:
        """The project's lock: appends and rebuilds of a project queue here."""
        lock = self._locks.get(project_id)
        if lock is None:
            lock = self._locks[project_id] = asyncio.Lock()
        return lock

    def project(self, project_id: UUID) -> Project:
        found = self.projects.get(project_id)
        if found is None:
            raise UnknownProject(project_id)
        return found

    def stored(self, project_id: UUID, entity_ids: Iterable[str]) -> dict[str, StoredState]:
        """What an append merges into, looked up by entity id alone (an id owned by another
        project is noticed, and its document is not handed out)."""
        found = {}
        for entity_id in entity_ids:
            entity = self.entities.get(entity_id)
            if entity is None:
                continue
            own = entity.project_id == project_id
            found[entity_id] = StoredState(
                StoredEntity(
                    project_id=entity.project_id,
                    entity_type=entity.entity_type,
                    version=entity.version,
                    heads=entity.heads,
                    size_bytes=entity.size_bytes,
                    document=entity.document if own else None,
                    op_count=entity.op_count,
                ),
                entity.values if own else None,
            )
        return found

    def commit(
        self, project: Project, plan: SeqPlan, sender: str, conflicts: ConflictWrites
    ) -> None:
        """Write one planned append: log, documents, read models, head, conflicts."""
        if not plan.entities:
            return
        entities = [self._next_state(project.project_id, logged) for logged in plan.entities]
        changes = plan.logged_changes()
        assert changes[0].seq == project.head + 1 == len(project.log) + 1, "seqs are gapless"
        # From here on nothing can fail.
        for change in changes:
            entry = LogEntry(change, sender)
            project.log.append(entry)
            project.by_hash[change.hash] = entry
        for entity in entities:
            self.entities[entity.entity_id] = entity
            project.entities[entity.entity_id] = entity
            project.read_models[entity.entity_type][entity.entity_id] = read_model_row(
                entity.entity_type, entity.values, entity.version
            )
        project.head = plan.head
        project.write_conflicts(conflicts, plan.head)

    def _next_state(self, project_id: UUID, logged: LoggedEntity) -> Entity:
        merged = logged.merged
        assert merged.document is not None
        new = merged.new_changes
        new_bytes = b"".join(c.data for c in new)
        ops = sum(c.op_count for c in new)
        before = self.entities.get(logged.entity_id)
        if before is None:
            saved, tail, tail_changes, change_count, op_count = (
                save_document(merged.document), b"", 0, len(new), ops
            )
        else:
            change_count = before.change_count + len(new)
            compact = should_compact(
                len(before.saved),
                len(before.tail) + len(new_bytes),
                before.tail_changes + len(new),
                change_count,
            )
            if compact:
                saved, tail, tail_changes = save_document(merged.document), b"", 0
            else:
                saved, tail = before.saved, before.tail + new_bytes
                tail_changes = before.tail_changes + len(new)
            op_count = before.op_count + ops
        return Entity(
            project_id,
            logged.entity_type,
            logged.entity_id,
            logged.version,
            merged.heads,
            saved,
            tail,
            tail_changes,
            change_count,
            op_count,
            merged.document,
            merged.values,
        )
