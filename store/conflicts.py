"""The conflicts read model inside the append transaction, on PostgreSQL: the SQL around
``store.conflict_plan``.

The rules and the bookkeeping are decided in ``store.conflict_plan`` (shared with the
in-memory storage); this module reads what they ask for (conflict rows by entity, logged
changes by hash, read-model rows by key) and writes the rows those plans produce, in the
same transaction as the log. Every conflict id touched is recorded in ``conflict_feed`` at
the push's last seq, so that conflict updates reach clients with the changes that caused
them, by cursor, in every server process.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from fieldsync.conflict.cross import ActivityRow, LocationRow, RoleRow, Row, SummoningRow
from fieldsync.conflict.ledger import ConflictRow
from fieldsync.conflict.neighbourhood import Lookups
from fieldsync.store import conflict_plan
from fieldsync.store.conflict_plan import ConflictWrites, EntityMerge
from fieldsync.store.driver import translated
from fieldsync.store.hashes import find_logged
from fieldsync.store.records import ConflictUpdate, LoggedHash

__all__ = [
    "ConflictUpdate",
    "ConflictWrites",
    "EntityMerge",
    "conflict_rows",
    "conflict_updates",
    "plan_conflicts",
    "write_conflicts",
]


_COLUMNS = "conflict_id, kind, entity_ids, fields, details, status, opened_seq, resolved_seq"

_NAMING = f"""
SELECT {_COLUMNS} FROM rm_conflicts WHERE project_id = $1 AND entity_ids && $2::text[]
"""

_ALL_ROWS = f"SELECT {_COLUMNS} FROM rm_conflicts WHERE project_id = $1 ORDER BY conflict_id"

_UPSERT = f"""
INSERT INTO rm_conflicts (project_id, {_COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9)
ON CONFLICT (project_id, conflict_id) DO UPDATE SET
    kind = EXCLUDED.kind, entity_ids = EXCLUDED.entity_ids, fields = EXCLUDED.fields,
    details = EXCLUDED.details, status = EXCLUDED.status, opened_seq = EXCLUDED.opened_seq,
    resolved_seq = EXCLUDED.resolved_seq
"""

_UPDATES = f"""
SELECT f.seq, f.conflict_id AS feed_id, c.{_COLUMNS.replace(", ", ", c.")}
FROM conflict_feed f
LEFT JOIN rm_conflicts c ON c.project_id = f.project_id AND c.conflict_id = f.conflict_id
WHERE f.project_id = $1 AND f.seq > $2 AND f.seq <= $3
ORDER BY f.seq, f.conflict_id
"""

_DELETE = "DELETE FROM rm_conflicts WHERE project_id = $1 AND conflict_id = ANY($2::text[])"

_FEED = """
INSERT INTO conflict_feed (project_id, seq, conflict_id)
SELECT $1, $2, unnest($3::text[]) ON CONFLICT DO NOTHING
"""

_ROWS = """
SELECT 'activity' AS type, entity_id, location_id, NULL::text AS activity_id,
       NULL::text AS role_id, NULL::text AS user_id, starts_at, ends_at, deleted, status
FROM rm_activities
WHERE project_id = $1 AND (entity_id = ANY($2::text[]) OR location_id = ANY($3::text[]))
UNION ALL
SELECT 'summoning', entity_id, NULL, activity_id, role_id, user_id, starts_at, ends_at,
       deleted, status
FROM rm_summonings
WHERE project_id = $1 AND (entity_id = ANY($2::text[]) OR activity_id = ANY($4::text[])
                           OR role_id = ANY($5::text[]) OR user_id = ANY($6::text[]))
UNION ALL
SELECT 'location', entity_id, NULL, NULL, NULL, NULL, NULL, NULL, deleted, NULL
FROM rm_locations WHERE project_id = $1 AND entity_id = ANY($2::text[])
UNION ALL
SELECT 'role', entity_id, NULL, NULL, NULL, NULL, NULL, NULL, deleted, NULL
FROM rm_roles WHERE project_id = $1 AND entity_id = ANY($2::text[])
"""
"""The rows the cross-entity rules look up, of every type, in one round trip: by id, and
activities by location and summonings by activity, role or user."""


@translated("checking the merge for conflicts")
async def plan_conflicts(
    conn: Any, project_id: UUID, merges: Sequence[EntityMerge], sender: str
) -> ConflictWrites:
    """The ``rm_conflicts`` writes for one push, its entities in log order."""
    return await conflict_plan.plan_conflicts(_Reader(conn, project_id), merges, sender)


@translated("writing conflict records")
async def write_conflicts(
    conn: Any, project_id: UUID, writes: ConflictWrites, feed_seq: int
) -> None:
    """Write the rows and record the touched ids in the feed at ``feed_seq``."""
    if writes.deletes:
        await conn.execute(_DELETE, project_id, writes.deletes)
    if writes.upserts:
        await conn.executemany(_UPSERT, [_values(project_id, row) for row in writes.upserts])
    touched = writes.touched
    if touched:
        await conn.execute(_FEED, project_id, feed_seq, touched)


@translated("reading conflict records")
async def conflict_rows(conn: Any, project_id: UUID) -> list[ConflictRow]:
    """Every conflict row of the project, by id."""
    return await _rows(conn, _ALL_ROWS, project_id)


@translated("reading conflict updates")
async def conflict_updates(
    conn: Any, project_id: UUID, after: int, upto: int
) -> list[ConflictUpdate]:
    """The conflicts changed by transactions whose changes end in (after, upto], in seq
    order, each with its current row."""
    return [
        ConflictUpdate(r["seq"], r["feed_id"], _row(r) if r["conflict_id"] else None)
        for r in await conn.fetch(_UPDATES, project_id, after, upto)
    ]


class _Reader:
    """What the rules read, from the appending transaction's connection."""

    def __init__(self, conn: Any, project_id: UUID) -> None:
        self._conn = conn
        self._project_id = project_id

    async def rows_naming(self, entity_ids: Sequence[str]) -> list[ConflictRow]:
        return await _rows(self._conn, _NAMING, self._project_id, list(entity_ids))

    async def logged(self, hashes: Sequence[bytes]) -> list[LoggedHash]:
        return await find_logged(self._conn, self._project_id, hashes)

    async def rows(self, keys: Lookups) -> list[Row]:
        return await _read_rows(self._conn, self._project_id, keys)


async def _read_rows(conn: Any, project_id: UUID, keys: Lookups) -> list[Row]:
    found: list[Row] = []
    for r in await conn.fetch(
        _ROWS,
        project_id,
        sorted(keys.ids),
        sorted(keys.activities_by_location),
        sorted(keys.summonings_by_activity),
        sorted(keys.summonings_by_role),
        sorted(keys.summonings_by_user),
    ):
        kind = r["type"]
        if kind == "activity":
            found.append(
                ActivityRow(
                    r["entity_id"],
                    r["location_id"],
                    r["starts_at"],
                    r["ends_at"],
                    r["deleted"],
                    r["status"],
                )
            )
        elif kind == "summoning":
            found.append(
                SummoningRow(
                    r["entity_id"],
                    r["activity_id"],
                    r["role_id"],
                    r["user_id"],
                    r["starts_at"],
                    r["ends_at"],
                    r["deleted"],
                    r["status"],
                )
            )
        elif kind == "location":
            found.append(LocationRow(r["entity_id"], r["deleted"]))
        else:
            found.append(RoleRow(r["entity_id"], r["deleted"]))
    return found


async def _rows(conn: Any, query: str, *args: object) -> list[ConflictRow]:
    return [_row(r) for r in await conn.fetch(query, *args)]


def _row(r: Any) -> ConflictRow:
    return ConflictRow(
        r["conflict_id"],
        r["kind"],
        tuple(r["entity_ids"]),
        tuple(r["fields"]),
        json.loads(r["details"]),
        r["status"],
        r["opened_seq"],
        r["resolved_seq"],
    )


def _values(project_id: UUID, row: ConflictRow) -> tuple[object, ...]:
    return (
        project_id,
        row.conflict_id,
        row.kind,
        list(row.entity_ids),
        list(row.fields),
        json.dumps(row.details, sort_keys=True, separators=(",", ":")),
        row.status,
        row.opened_seq,
        row.resolved_seq,
    )
