"""Rebuilding read models from the change log alone.

The rebuild replays each entity's logged changes into a fresh document, projects it with
the same code the append path uses, and replaces the project's read-model rows. It also
checks that the cached documents equal the replayed ones. It holds the project's log lock
so that no append interleaves with the replay.

Conflicts are rebuilt as ``docs/conflicts.md`` describes: the single-entity rules on each
replayed document with all of its changes as new, and the cross-entity rules at every
logged change that moves an entity's row, in seq order, over every row of the project.
Only the conflict rows that differ are written, and their ids go to ``conflict_feed`` at
the project's head, so that clients learn of a repair with the next change they receive.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
from automerge.core import Document

from fieldsync.conflict.cross import Row, RowIndex, cross_entity_conflicts
from fieldsync.conflict.entity import entity_conflicts
from fieldsync.conflict.ledger import ROW_FIELDS, Ledger, plan_cross, plan_entity, row_changes
from fieldsync.model.changes import ChangeHeader, parse_change
from fieldsync.model.documents import contained, document_heads, load_document
from fieldsync.model.entities import SCHEMAS
from fieldsync.model.validation import inspect_document
from fieldsync.store.conflicts import ConflictWrites, conflict_rows, write_conflicts
from fieldsync.store.driver import translated
from fieldsync.store.errors import UnknownProject
from fieldsync.store.readmodels import read_model_row, read_model_tables, upsert_read_models

_BATCH_ROWS = 500


@dataclass(slots=True)
class RebuildReport:
    projects: int = 0
    entities: int = 0
    changes: int = 0
    conflicts: int = 0
    conflicts_rewritten: list[str] = field(default_factory=list)
    cache_mismatches: list[str] = field(default_factory=list)
    invalid_documents: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.cache_mismatches and not self.invalid_documents

    def __str__(self) -> str:
        text = (
            f"rebuilt read models of {self.projects} projects: {self.entities} entities "
            f"from {self.changes} changes"
        )
        if self.cache_mismatches:
            text += f"; cached documents differing from the log: {self.cache_mismatches}"
        text += f"; {self.conflicts} conflict records"
        if self.conflicts_rewritten:
            text += f", of which rewritten (they differed from the log): {self.conflicts_rewritten}"
        if self.invalid_documents:
            text += f"; logged documents failing their schema: {self.invalid_documents}"
        return text


@dataclass(frozen=True, slots=True)
class _ReplayedEntity:
    entity_type: str
    entity_id: str
    seqs: list[int]
    senders: list[str]
    changes: list[bytes]

    @property
    def last_seq(self) -> int:
        return self.seqs[-1]


@translated("rebuilding read models")
async def rebuild_read_models(pool: asyncpg.Pool, project_id: UUID | None) -> RebuildReport:
    """Rebuild one project's read models, or every project's when ``project_id`` is None."""
    report = RebuildReport()
    async with pool.acquire() as conn:
        if project_id is None:
            projects = [
                r["project_id"]
                for r in await conn.fetch("SELECT project_id FROM log_heads ORDER BY project_id")
            ]
        else:
            projects = [project_id]
        for project in projects:
            async with conn.transaction():
                await _rebuild_project(conn, project, report)
    return report


async def _rebuild_project(conn: Any, project_id: UUID, report: RebuildReport) -> None:
    locked = await conn.fetchval(
        "SELECT head_seq FROM log_heads WHERE project_id = $1 FOR UPDATE", project_id
    )
    if locked is None:
        raise UnknownProject(project_id)
    for table in read_model_tables():
        await conn.execute(f"DELETE FROM {table} WHERE project_id = $1", project_id)
    cached_heads = {
        r["entity_id"]: set(r["heads"])
        for r in await conn.fetch(
            "SELECT entity_id, heads FROM documents WHERE project_id = $1", project_id
        )
    }
    rows: dict[str, list[tuple[object, ...]]] = defaultdict(list)
    pending = 0
    conflicts = _ConflictReplay()
    op_counts: list[tuple[UUID, str, int]] = []
    async for entity in _replay(conn, project_id):
        report.entities += 1
        report.changes += len(entity.changes)
        document = load_document(b"".join(entity.changes))
        headers = [parse_change(change) for change in entity.changes]
        op_counts.append((project_id, entity.entity_id, sum(h.op_count for h in headers)))
        conflicts.entity(entity, document, headers)
        if set(document_heads(document)) != cached_heads.pop(entity.entity_id, None):
            report.cache_mismatches.append(entity.entity_id)
        schema = SCHEMAS[entity.entity_type]
        inspection = contained(lambda: inspect_document(schema, document))  # noqa: B023
        if inspection.violations:
            report.invalid_documents.append(entity.entity_id)
            continue
        rows[entity.entity_type].append(
            read_model_row(
                project_id,
                entity.entity_type,
                entity.entity_id,
                inspection.values,
                entity.last_seq,
            )
        )
        pending += 1
        if pending >= _BATCH_ROWS:
            await upsert_read_models(conn, rows)
            rows.clear()
            pending = 0
    await upsert_read_models(conn, rows)
    # Derived from the log like the heads; documents from before the count began get theirs.
    await conn.executemany(
        "UPDATE documents SET op_count = $3 WHERE project_id = $1 AND entity_id = $2 "
        "AND op_count <> $3",
        op_counts,
    )
    report.cache_mismatches.extend(sorted(cached_heads))
    ledger = conflicts.finish()
    before = {row.conflict_id: row for row in await conflict_rows(conn, project_id)}
    writes = ConflictWrites(
        [row for key, row in sorted(ledger.rows.items()) if before.get(key) != row],
        sorted(set(before) - set(ledger.rows)),
    )
    await write_conflicts(conn, project_id, writes, locked)
    report.conflicts += len(ledger.rows)
    report.conflicts_rewritten.extend(writes.touched)
    report.projects += 1


class _ConflictReplay:
    """The conflict rules over a replayed log, exactly as the append path applies them."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.steps: list[tuple[int, str, Row]] = []

    def entity(
        self, entity: _ReplayedEntity, document: Document, headers: list[ChangeHeader]
    ) -> None:
        seq_of = {h.hash.hex(): seq for h, seq in zip(headers, entity.seqs, strict=True)}
        users = {h.hash.hex(): s for h, s in zip(headers, entity.senders, strict=True)}
        result = entity_conflicts(entity.entity_type, entity.entity_id, None, document, headers)
        plan = plan_entity(result, self.ledger.entity_rows(entity.entity_id), seq_of)
        self.ledger.apply(plan, users)
        if entity.entity_type in ROW_FIELDS:
            for index, state in row_changes(
                entity.entity_type, entity.entity_id, document, [], headers, None
            ):
                self.steps.append((entity.seqs[index], entity.entity_id, state))

    def finish(self) -> Ledger:
        """Re-check the cross-entity rules at each row change, in log order."""
        index = RowIndex()
        for seq, entity_id, row in sorted(self.steps, key=lambda step: step[0]):
            index.put(row)
            found = cross_entity_conflicts(index.needed([entity_id]), [entity_id])
            self.ledger.apply(plan_cross(found, self.ledger.cross_rows([entity_id]), seq))
        return self.ledger


async def _replay(conn: Any, project_id: UUID) -> AsyncIterator[_ReplayedEntity]:
    """Each entity's logged changes in seq order, one entity at a time."""
    current: _ReplayedEntity | None = None
    query = (
        "SELECT entity_id, entity_type, seq, sender, change FROM changes "
        "WHERE project_id = $1 ORDER BY entity_id, seq"
    )
    async for r in conn.cursor(query, project_id, prefetch=1000):
        if current is None or r["entity_id"] != current.entity_id:
            if current is not None:
                yield current
            current = _ReplayedEntity(r["entity_type"], r["entity_id"], [], [], [])
        current.seqs.append(r["seq"])
        current.senders.append(r["sender"])
        current.changes.append(r["change"])
    if current is not None:
        yield current
