"""The query API's reads on PostgreSQL (``store.ports.QueryPort``), and the sync-health
writes (``store.ports.SyncHealthPort``).

Each page's rows and the project's head seq come from one database snapshot: one statement
whose every row also names the head (a scalar subquery sees the statement's snapshot), or,
for an empty page, a REPEATABLE READ read-only transaction. Appenders write both in one
transaction, so the rows are exactly the projection of the log up to that seq. Statements
are built from the filters actually given (a plan per shape, not one plan full of
``$n IS NULL OR ...``), and text keys compare with ``COLLATE "C"`` (code point order,
as the in-memory storage sorts) so both implementations page identically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from typing import Any
from uuid import UUID

import msgspec

from fieldsync.query.items import Activity, Conflict, MemberHealth, Summoning
from fieldsync.query.specs import ActivityQuery, ConflictQuery, MemberQuery, Page, SummoningQuery
from fieldsync.store.database import DatabasePool
from fieldsync.store.driver import translated
from fieldsync.store.errors import UnknownProject
from fieldsync.store.log_heads import READ_HEAD, read_head
from fieldsync.store.records import ClientSeen

_WITH_HEAD = f"({READ_HEAD}) AS head_seq"
"""Every row of a page carries the head it was read at: one statement, one snapshot."""


class _Where:
    """A WHERE clause and its arguments, the project id being $1."""

    def __init__(self, project_id: UUID) -> None:
        self.args: list[object] = [project_id]
        self.terms: list[str] = []

    def arg(self, value: object) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, term: str) -> None:
        self.terms.append(term)

    def sql(self) -> str:
        return " AND ".join(["project_id = $1", *self.terms])


def _timed(where: _Where, start: object, end: object, after: object) -> None:
    """The window (``query.window``: starts before ``to``, and starts at or after
    ``from`` or ends after it) and the keyset after ``(starts_at, entity_id)``."""
    if end is not None:
        where.add(f"starts_at < {where.arg(end)}")
    if start is not None:
        bound = where.arg(start)
        where.add(f"(starts_at >= {bound} OR ends_at > {bound})")
    if after is not None:
        assert isinstance(after, tuple)
        where.add(
            f'(starts_at, entity_id COLLATE "C") > ({where.arg(after[0])}, {where.arg(after[1])})'
        )


_ACTIVITY = (
    "entity_id, plan_id, title, location_id, starts_at, ends_at, status, tasks_total, "
    "tasks_done, deleted, last_seq"
)
_SUMMONING = "entity_id, activity_id, role_id, user_id, starts_at, ends_at, status, last_seq"
_CONFLICT = "conflict_id, kind, entity_ids, fields, details, status, opened_seq, resolved_seq"


def _activities_sql(query: ActivityQuery, project_id: UUID) -> tuple[str, list[object]]:
    where = _Where(project_id)
    if query.location_ids:
        where.add(f"location_id = ANY({where.arg(list(query.location_ids))}::text[])")
    if query.plan_id is not None:
        where.add(f"plan_id = {where.arg(query.plan_id)}")
    if query.status is not None:
        where.add(f"status = {where.arg(query.status)}")
    if not query.include_deleted:
        where.add("NOT deleted")
    _timed(where, query.start, query.end, query.after)
    limit = where.arg(query.limit + 1)
    return (
        f"SELECT {_WITH_HEAD}, {_ACTIVITY} FROM rm_activities WHERE {where.sql()} "
        f'ORDER BY starts_at, entity_id COLLATE "C" LIMIT {limit}',
        where.args,
    )


def _summonings_sql(query: SummoningQuery, project_id: UUID) -> tuple[str, list[object]]:
    where = _Where(project_id)
    where.add("NOT deleted")
    for column in ("user_id", "role_id", "activity_id", "status"):
        value = getattr(query, column)
        if value is not None:
            where.add(f"{column} = {where.arg(value)}")
    _timed(where, query.start, query.end, query.after)
    limit = where.arg(query.limit + 1)
    return (
        f"SELECT {_WITH_HEAD}, {_SUMMONING} FROM rm_summonings WHERE {where.sql()} "
        f'ORDER BY starts_at, entity_id COLLATE "C" LIMIT {limit}',
        where.args,
    )


def _conflicts_sql(query: ConflictQuery, project_id: UUID) -> tuple[str, list[object]]:
    where = _Where(project_id)
    where.add(f"status = ANY({where.arg(list(query.statuses))}::text[])")
    if query.resolved_after is not None:
        where.add(f"(status = 'open' OR resolved_seq > {where.arg(query.resolved_after)})")
    if query.after is not None:
        seq, conflict_id = query.after
        where.add(
            f'(opened_seq, conflict_id COLLATE "C") > ({where.arg(seq)}, {where.arg(conflict_id)})'
        )
    limit = where.arg(query.limit + 1)
    return (
        f"SELECT {_WITH_HEAD}, {_CONFLICT} FROM rm_conflicts WHERE {where.sql()} "
        f'ORDER BY opened_seq, conflict_id COLLATE "C" LIMIT {limit}',
        where.args,
    )


@cache
def _members_sql(paged: bool) -> str:
    after = "AND m.user_id > $3" if paged else ""
    limit = "$4" if paged else "$3"
    return f"""
SELECT {_WITH_HEAD}, m.user_id, u.display_name, m.level,
       coalesce(seen.connected, false) AS connected, seen.last_seen_at,
       latest.client_id, latest.client_version, latest.outbox_age_ms
FROM project_members m
JOIN users u ON u.user_id = m.user_id
LEFT JOIN LATERAL (
    SELECT bool_or(h.connected AND h.seen_at >= $2) AS connected, max(h.seen_at) AS last_seen_at
    FROM member_sync_health h WHERE h.project_id = m.project_id AND h.user_id = m.user_id
) seen ON true
LEFT JOIN LATERAL (
    SELECT h.client_id, h.client_version, h.outbox_age_ms
    FROM member_sync_health h WHERE h.project_id = m.project_id AND h.user_id = m.user_id
    ORDER BY h.hello_at DESC, h.client_id COLLATE "C" DESC LIMIT 1
) latest ON true
WHERE m.project_id = $1 {after}
ORDER BY m.user_id LIMIT {limit}
"""


def _fields(row: Any, item: type[msgspec.Struct]) -> dict[str, Any]:
    """The row's columns that ``item`` has (the row also names its head seq)."""
    return {name: row[name] for name in item.__struct_fields__}


def _page(seq: int, items: list[Any], limit: int) -> Page[Any]:
    return Page(seq, items[:limit], len(items) > limit)


class PostgresQueries:
    """``store.ports.QueryPort`` on a pool."""

    def __init__(self, pool: DatabasePool) -> None:
        self._pool = pool

    async def _read(self, project_id: UUID, sql: str, args: Sequence[object]) -> tuple[int, Any]:
        async with self._pool.acquire() as conn:
            return await self._read_on(conn, project_id, sql, args)

    async def _read_on(
        self, conn: Any, project_id: UUID, sql: str, args: Sequence[object]
    ) -> tuple[int, Any]:
        """A page and the head it reflects, in one snapshot. Every page's rows name their
        head (``_WITH_HEAD``: one round trip); an empty page reads the head in the same
        REPEATABLE READ transaction instead."""
        rows = await conn.fetch(sql, *args)
        if rows:
            head = rows[0]["head_seq"]
            if head is None:
                raise UnknownProject(project_id)
            return int(head), rows
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            head = await read_head(conn, project_id)
            return head, await conn.fetch(sql, *args)

    @translated("reading activities")
    async def activities(self, project_id: UUID, query: ActivityQuery) -> Page[Activity]:
        seq, rows = await self._read(project_id, *_activities_sql(query, project_id))
        return _page(seq, [Activity(**_fields(r, Activity)) for r in rows], query.limit)

    @translated("reading summonings")
    async def summonings(self, project_id: UUID, query: SummoningQuery) -> Page[Summoning]:
        seq, rows = await self._read(project_id, *_summonings_sql(query, project_id))
        return _page(seq, [Summoning(**_fields(r, Summoning)) for r in rows], query.limit)

    @translated("reading conflicts")
    async def conflicts(self, project_id: UUID, query: ConflictQuery) -> Page[Conflict]:
        seq, rows = await self._read(project_id, *_conflicts_sql(query, project_id))
        items = [
            Conflict(
                conflict_id=r["conflict_id"],
                kind=r["kind"],
                entity_ids=list(r["entity_ids"]),
                fields=list(r["fields"]),
                details=json.loads(r["details"]),
                status=r["status"],
                opened_seq=r["opened_seq"],
                resolved_seq=r["resolved_seq"],
            )
            for r in rows
        ]
        return _page(seq, items, query.limit)

    @translated("reading members' sync health")
    async def member_health(self, project_id: UUID, query: MemberQuery) -> Page[MemberHealth]:
        args: list[object] = [project_id, query.live_since]
        if query.after is not None:
            args.append(UUID(query.after[0]))
        args.append(query.limit + 1)
        seq, rows = await self._read(project_id, _members_sql(query.after is not None), args)
        items = [
            MemberHealth(
                user_id=str(r["user_id"]),
                display_name=r["display_name"],
                level=r["level"],
                connected=r["connected"],
                last_seen_at=r["last_seen_at"],
                outbox_age_ms=r["outbox_age_ms"],
                client_id=r["client_id"],
                client_version=r["client_version"],
            )
            for r in rows
        ]
        return _page(seq, items, query.limit)


# Only members' records are kept (a removed member's clients are forgotten with them), and
# a record of an older session never replaces a newer one's.
_RECORD = """
INSERT INTO member_sync_health AS h
    (project_id, user_id, client_id, client_version, outbox_age_ms, hello_at, seen_at, connected)
SELECT r.* FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::bigint[],
                       $6::timestamptz[], $7::timestamptz[], $8::boolean[])
     AS r(project_id, user_id, client_id, client_version, outbox_age_ms, hello_at, seen_at,
          connected)
WHERE EXISTS (SELECT 1 FROM project_members m
              WHERE m.project_id = r.project_id AND m.user_id = r.user_id)
ON CONFLICT (project_id, user_id, client_id) DO UPDATE SET
    client_version = EXCLUDED.client_version, outbox_age_ms = EXCLUDED.outbox_age_ms,
    hello_at = EXCLUDED.hello_at, seen_at = greatest(h.seen_at, EXCLUDED.seen_at),
    connected = EXCLUDED.connected
WHERE h.hello_at <= EXCLUDED.hello_at
"""


class PostgresSyncHealth:
    """``store.ports.SyncHealthPort``: one statement per batch of records."""

    def __init__(self, pool: DatabasePool) -> None:
        self._pool = pool

    @translated("recording sync health")
    async def record(self, seen: Sequence[ClientSeen]) -> None:
        latest: dict[tuple[UUID, UUID, str], ClientSeen] = {}
        for record in seen:  # one row per key in a statement: ON CONFLICT needs that
            key = (record.project_id, record.user_id, record.client_id)
            kept = latest.get(key)
            if kept is None or (kept.hello_at, kept.seen_at) <= (record.hello_at, record.seen_at):
                latest[key] = record
        if not latest:
            return
        # Rows in key order, so concurrent batches lock them in one order. Sorted on the ids'
        # integers: comparing UUID objects runs Python code, millions of times in a storm.
        records = sorted(
            latest.values(), key=lambda r: (r.project_id.int, r.user_id.int, r.client_id)
        )
        columns = [
            [getattr(r, name) for r in records]
            for name in (
                "project_id",
                "user_id",
                "client_id",
                "client_version",
                "outbox_age_ms",
                "hello_at",
                "seen_at",
                "connected",
            )
        ]
        async with self._pool.acquire() as conn:
            await conn.execute(_RECORD, *columns)
