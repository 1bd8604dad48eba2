"""The conflicts read model inside the append transaction: the I/O shell around ``conflict/``.

After a push's entities are merged and their seqs planned, the store runs the rules
(``docs/conflicts.md``, "Wiring into the store"): the single-entity rules on each merged
document, the cross-entity rules at every logged change that moves an entity's row, over
the committed rows of its neighbourhood (read by key, see ``conflict.neighbourhood``)
overlaid with the rows this push has produced so far. The rows those plans produce are
written in the same transaction as the log, and every conflict id touched is recorded in
``conflict_feed`` at the push's last seq, so that conflict updates reach clients with the
changes that caused them, by cursor, in every server process.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from automerge.core import Document

from fieldsync.conflict.cross import (
    ActivityRow,
    LocationRow,
    ProjectRows,
    RoleRow,
    Row,
    SummoningRow,
    cross_entity_conflicts,
    needed_rows,
    row_from_values,
)
from fieldsync.conflict.entity import entity_conflicts
from fieldsync.conflict.ledger import (
    OPEN,
    ROW_FIELDS,
    ConflictRow,
    Ledger,
    plan_cross,
    plan_entity,
    row_at,
    row_changes,
    rules_needed,
)
from fieldsync.conflict.neighbourhood import Lookups, lookups_for
from fieldsync.model.changes import ChangeHeader
from fieldsync.store.driver import translated
from fieldsync.store.hashes import find_logged

__all__ = [
    "ConflictUpdate",
    "ConflictWrites",
    "EntityMerge",
    "conflict_rows",
    "conflict_updates",
    "plan_conflicts",
    "write_conflicts",
]


@dataclass(frozen=True, slots=True)
class EntityMerge:
    """One entity a push changed: its merged document and the changes it newly logged."""

    entity_type: str
    entity_id: str
    document: Document
    heads_before: Sequence[bytes]
    values_before: Mapping[str, object] | None  # known when the document was cached
    new_changes: Sequence[ChangeHeader]
    seqs: Sequence[int]
    values: Mapping[str, object]  # the merged document's validated values


@dataclass(frozen=True, slots=True)
class ConflictUpdate:
    """A conflict as changed by the transaction whose changes end at ``seq``.

    ``row`` is the row's state (the latest, when read back from the database), or None when
    the row was removed (a concurrent edit widened it into another conflict).
    """

    seq: int
    conflict_id: str
    row: ConflictRow | None


@dataclass(slots=True)
class ConflictWrites:
    """Rows to insert or replace, and ids to delete, in ``rm_conflicts``."""

    upserts: list[ConflictRow] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)  # kinds of the conflicts found open now

    @property
    def touched(self) -> list[str]:
        return sorted({row.conflict_id for row in self.upserts} | set(self.deletes))


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

_ACTIVITIES = """
SELECT entity_id, location_id, starts_at, ends_at, deleted, status FROM rm_activities
WHERE project_id = $1 AND (entity_id = ANY($2::text[]) OR location_id = ANY($3::text[]))
"""

_SUMMONINGS = """
SELECT entity_id, activity_id, role_id, user_id, starts_at, ends_at, deleted, status
FROM rm_summonings
WHERE project_id = $1 AND (entity_id = ANY($2::text[]) OR activity_id = ANY($3::text[])
                           OR role_id = ANY($4::text[]) OR user_id = ANY($5::text[]))
"""

_LOCATIONS = """
SELECT entity_id, deleted FROM rm_locations WHERE project_id = $1 AND entity_id = ANY($2::text[])
"""

_ROLES = """
SELECT entity_id, deleted FROM rm_roles WHERE project_id = $1 AND entity_id = ANY($2::text[])
"""


@translated("checking the merge for conflicts")
async def plan_conflicts(
    conn: Any, project_id: UUID, merges: Sequence[EntityMerge], sender: str
) -> ConflictWrites:
    """The ``rm_conflicts`` writes for one push, its entities in log order."""
    if not merges:
        return ConflictWrites()
    ids = [m.entity_id for m in merges]
    initial = {row.conflict_id: row for row in await _rows(conn, _NAMING, project_id, ids)}
    ledger = Ledger(initial.values())
    await _single_entity(conn, project_id, merges, sender, ledger)
    await _cross_entity(conn, project_id, merges, ledger)
    writes = ConflictWrites()
    for key in sorted(ledger.rows):
        row = ledger.rows[key]
        earlier = initial.get(key)
        if earlier != row:
            writes.upserts.append(row)
            if row.status == OPEN and (earlier is None or earlier.status != OPEN):
                writes.opened.append(row.kind)
    writes.deletes = sorted(set(initial) - set(ledger.rows))
    return writes


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


async def _single_entity(
    conn: Any,
    project_id: UUID,
    merges: Sequence[EntityMerge],
    sender: str,
    ledger: Ledger,
) -> None:
    checked = [
        m
        for m in merges
        if rules_needed(m.heads_before, m.new_changes, ledger.entity_rows(m.entity_id))
    ]
    results = [
        entity_conflicts(m.entity_type, m.entity_id, None, m.document, m.new_changes)
        for m in checked
    ]
    seq_of: dict[str, int] = {}
    users: dict[str, str] = {}
    for merge in merges:
        for header, seq in zip(merge.new_changes, merge.seqs, strict=True):
            seq_of[header.hash.hex()] = seq
            users[header.hash.hex()] = sender
    named = {
        ref.hash
        for result in results
        for conflict in (*result.open, *(r.conflict for r in result.resolved))
        for ref in conflict.changes
    } | {r.change.hex() for result in results for r in result.resolved}
    older = sorted(named - set(seq_of))
    if older:
        for r in await find_logged(conn, project_id, [bytes.fromhex(h) for h in older]):
            seq_of[r["hash"].hex()] = r["seq"]
            users[r["hash"].hex()] = r["sender"]
    for merge, result in zip(checked, results, strict=True):
        ledger.apply(plan_entity(result, ledger.entity_rows(merge.entity_id), seq_of), users)


async def _cross_entity(
    conn: Any, project_id: UUID, merges: Sequence[EntityMerge], ledger: Ledger
) -> None:
    steps: list[tuple[int, str, Row]] = []
    for merge in merges:
        if merge.entity_type not in ROW_FIELDS:
            continue
        if not merge.heads_before:
            before = None
        elif merge.values_before is not None:
            before = row_from_values(merge.entity_type, merge.entity_id, merge.values_before)
        else:
            before = row_at(merge.entity_type, merge.entity_id, merge.document, merge.heads_before)
        for index, row in row_changes(
            merge.entity_type,
            merge.entity_id,
            merge.document,
            merge.heads_before,
            merge.new_changes,
            before,
            row_from_values(merge.entity_type, merge.entity_id, merge.values),
        ):
            steps.append((merge.seqs[index], merge.entity_id, row))
    if not steps:
        return
    view = await _neighbourhood(conn, project_id, {e for _, e, _ in steps}, [r for *_, r in steps])
    for seq, entity_id, row in steps:
        view[entity_id] = row
        neighbourhood = needed_rows(ProjectRows.of(view.values()), [entity_id])
        found = cross_entity_conflicts(neighbourhood, [entity_id])
        ledger.apply(plan_cross(found, ledger.cross_rows([entity_id]), seq))


async def _neighbourhood(
    conn: Any, project_id: UUID, centres: set[str], versions: Sequence[Row]
) -> dict[str, Row]:
    """The committed rows around ``centres``, read by key until nothing new is asked."""
    known: dict[str, Row] = {}
    done = Lookups()
    while True:
        keys = lookups_for(centres, [*known.values(), *versions]) - done
        if not keys:
            return known
        done = done | keys
        for row in await _read_rows(conn, project_id, keys):
            known[row.entity_id] = row


async def _read_rows(conn: Any, project_id: UUID, keys: Lookups) -> list[Row]:
    ids = sorted(keys.ids)
    found: list[Row] = []
    if ids or keys.activities_by_location:
        for r in await conn.fetch(
            _ACTIVITIES, project_id, ids, sorted(keys.activities_by_location)
        ):
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
    if ids or keys.summonings_by_activity or keys.summonings_by_role or keys.summonings_by_user:
        for r in await conn.fetch(
            _SUMMONINGS,
            project_id,
            ids,
            sorted(keys.summonings_by_activity),
            sorted(keys.summonings_by_role),
            sorted(keys.summonings_by_user),
        ):
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
    if ids:
        for r in await conn.fetch(_LOCATIONS, project_id, ids):
            found.append(LocationRow(r["entity_id"], r["deleted"]))
        for r in await conn.fetch(_ROLES, project_id, ids):
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
