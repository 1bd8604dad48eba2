"""The query API's reads and the sync-health writes on the in-memory storage.

The filters are the same definitions as the SQL of ``store.queries`` (the window is
``query.window.in_window``), over the read-model rows the in-memory storage keeps. A read
is synchronous code between two awaits, so its rows and its seq are one consistent view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, TypeVar
from uuid import UUID

from fieldsync.query.items import Activity, Conflict, MemberHealth, Summoning
from fieldsync.query.specs import ActivityQuery, ConflictQuery, MemberQuery, Page, SummoningQuery
from fieldsync.query.window import in_window
from fieldsync.store.memory_state import Database, Project, ReadModelRow
from fieldsync.store.records import ClientSeen

T = TypeVar("T")


def _page(seq: int, found: Iterable[T], key: Callable[[T], Any], after: Any, limit: int) -> Page[T]:
    ordered = sorted(found, key=key)
    if after is not None:
        ordered = [item for item in ordered if key(item) > tuple(after)]
    return Page(seq, ordered[:limit], len(ordered) > limit)


def _timed_key(item: Activity | Summoning) -> tuple[Any, ...]:
    return (item.starts_at, item.entity_id)


class MemoryQueries:
    """``store.ports.QueryPort`` in memory."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def _project(self, doing: str, project_id: UUID) -> Project:
        self._db.check(doing)
        return self._db.project(project_id)

    async def activities(self, project_id: UUID, query: ActivityQuery) -> Page[Activity]:
        project = self._project("reading activities", project_id)
        found = [
            _activity(entity_id, row)
            for entity_id, row in project.read_models["activity"].items()
            if (not query.location_ids or row["location_id"] in query.location_ids)
            and (query.plan_id is None or row["plan_id"] == query.plan_id)
            and (query.status is None or row["status"] == query.status)
            and (query.include_deleted or row["deleted"] is not True)
        ]
        found = [a for a in found if in_window(a.starts_at, a.ends_at, query.start, query.end)]
        return _page(project.head, found, _timed_key, query.after, query.limit)

    async def summonings(self, project_id: UUID, query: SummoningQuery) -> Page[Summoning]:
        project = self._project("reading summonings", project_id)
        found = [
            _summoning(entity_id, row)
            for entity_id, row in project.read_models["summoning"].items()
            if row["deleted"] is not True
            and all(
                wanted is None or row[column] == wanted
                for column, wanted in (
                    ("user_id", query.user_id),
                    ("role_id", query.role_id),
                    ("activity_id", query.activity_id),
                    ("status", query.status),
                )
            )
        ]
        found = [s for s in found if in_window(s.starts_at, s.ends_at, query.start, query.end)]
        return _page(project.head, found, _timed_key, query.after, query.limit)

    async def conflicts(self, project_id: UUID, query: ConflictQuery) -> Page[Conflict]:
        project = self._project("reading conflicts", project_id)
        found = [
            Conflict(
                conflict_id=row.conflict_id,
                kind=row.kind,
                entity_ids=list(row.entity_ids),
                fields=list(row.fields),
                details=dict(row.details),
                status="open" if row.status == "open" else "resolved",
                opened_seq=row.opened_seq,
                resolved_seq=row.resolved_seq,
            )
            for row in project.conflicts.values()
            if row.status in query.statuses
            and (
                query.resolved_after is None
                or row.status == "open"
                or (row.resolved_seq is not None and row.resolved_seq > query.resolved_after)
            )
        ]
        return _page(
            project.head, found, lambda c: (c.opened_seq, c.conflict_id), query.after, query.limit
        )

    async def member_health(self, project_id: UUID, query: MemberQuery) -> Page[MemberHealth]:
        project = self._project("reading members' sync health", project_id)
        found = []
        for user_id, member in project.members.items():
            clients = [seen for (user, _), seen in project.sync_health.items() if user == user_id]
            latest = max(clients, key=lambda c: (c.hello_at, c.client_id), default=None)
            found.append(
                MemberHealth(
                    user_id=str(user_id),
                    display_name=self._db.users[user_id].name,
                    level=member.level,  # type: ignore[arg-type]  # a checked level
                    connected=any(c.connected and c.seen_at >= query.live_since for c in clients),
                    last_seen_at=max((c.seen_at for c in clients), default=None),
                    outbox_age_ms=latest.outbox_age_ms if latest else None,
                    client_id=latest.client_id if latest else None,
                    client_version=latest.client_version if latest else None,
                )
            )
        return _page(project.head, found, lambda m: (m.user_id,), query.after, query.limit)


class MemorySyncHealth:
    """``store.ports.SyncHealthPort`` in memory."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, seen: Sequence[ClientSeen]) -> None:
        self._db.check("recording sync health")
        for record in seen:
            project = self._db.projects.get(record.project_id)
            if project is None or record.user_id not in project.members:
                continue
            key = (record.user_id, record.client_id)
            kept = project.sync_health.get(key)
            if kept is not None and kept.hello_at > record.hello_at:
                continue  # a late record of an older session
            if kept is not None and kept.seen_at > record.seen_at:
                record = replace(record, seen_at=kept.seen_at)
            project.sync_health[key] = record


def _activity(entity_id: str, row: ReadModelRow) -> Activity:
    return Activity(
        entity_id=entity_id,
        plan_id=str(row["plan_id"]),
        title=str(row["title"]),
        location_id=None if row["location_id"] is None else str(row["location_id"]),
        starts_at=row["starts_at"],  # type: ignore[arg-type]
        ends_at=row["ends_at"],  # type: ignore[arg-type]
        status=str(row["status"]),
        tasks_total=row["tasks_total"],  # type: ignore[arg-type]
        tasks_done=row["tasks_done"],  # type: ignore[arg-type]
        deleted=row["deleted"] is True,
        last_seq=row["last_seq"],  # type: ignore[arg-type]
    )


def _summoning(entity_id: str, row: ReadModelRow) -> Summoning:
    return Summoning(
        entity_id=entity_id,
        activity_id=str(row["activity_id"]),
        role_id=None if row["role_id"] is None else str(row["role_id"]),
        user_id=None if row["user_id"] is None else str(row["user_id"]),
        starts_at=row["starts_at"],  # type: ignore[arg-type]
        ends_at=row["ends_at"],  # type: ignore[arg-type]
        status=str(row["status"]),
        last_seq=row["last_seq"],  # type: ignore[arg-type]
    )
