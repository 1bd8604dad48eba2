"""Rebuilding a project's derived state from its change log alone, for every storage.

A storage implementation feeds :class:`ProjectRebuild` each entity's logged changes (in
entity order, each entity's in seq order) and writes what it answers: the read-model values
of each entity (projected with the same code as the append path), each document's op count,
and the conflict records that differ from the replayed ones. It also reports any cached
document whose heads differ from the replay. ``store.rebuild`` does this on PostgreSQL,
``store.memory`` on its dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fieldsync.conflict.ledger import ConflictRow
from fieldsync.model.automerge_format.changes import parse_change
from fieldsync.model.automerge_format.documents import contained, document_heads, load_document
from fieldsync.model.entities import SCHEMAS
from fieldsync.model.validation import inspect_document
from fieldsync.store.conflict_plan import ConflictReplay, ConflictWrites, rebuild_writes
from fieldsync.store.records import RebuildReport


@dataclass(slots=True)
class ReplayedEntity:
    """One entity's logged changes, in seq order."""

    entity_type: str
    entity_id: str
    seqs: list[int] = field(default_factory=list)
    senders: list[str] = field(default_factory=list)
    changes: list[bytes] = field(default_factory=list)

    @property
    def last_seq(self) -> int:
        return self.seqs[-1]


@dataclass(frozen=True, slots=True)
class Projected:
    """What a replayed entity's read-model row is made of."""

    entity_type: str
    entity_id: str
    values: Mapping[str, object]
    last_seq: int


class ProjectRebuild:
    """One project's rebuild: fed every entity, it says what to write."""

    def __init__(self, report: RebuildReport, cached_heads: Mapping[str, set[bytes]]) -> None:
        self._report = report
        self._cached_heads = dict(cached_heads)
        self._conflicts = ConflictReplay()
        self.op_counts: dict[str, int] = {}  # entity id: ops of all its logged changes

    def entity(self, entity: ReplayedEntity) -> Projected | None:
        """Replay one entity; its read-model values, or None if its document fails its
        schema (then it gets no row, and the report names it)."""
        report = self._report
        report.entities += 1
        report.changes += len(entity.changes)
        document = load_document(b"".join(entity.changes))
        headers = [parse_change(change) for change in entity.changes]
        self.op_counts[entity.entity_id] = sum(h.op_count for h in headers)
        self._conflicts.entity(
            entity.entity_type, entity.entity_id, document, headers, entity.seqs, entity.senders
        )
        if set(document_heads(document)) != self._cached_heads.pop(entity.entity_id, None):
            report.cache_mismatches.append(entity.entity_id)
        schema = SCHEMAS[entity.entity_type]
        inspection = contained(lambda: inspect_document(schema, document))
        if inspection.violations:
            report.invalid_documents.append(entity.entity_id)
            return None
        return Projected(entity.entity_type, entity.entity_id, inspection.values, entity.last_seq)

    def finish(self, before: Mapping[str, ConflictRow]) -> ConflictWrites:
        """After every entity: the conflict writes that make ``before`` (the project's
        records now) equal the replayed ones."""
        report = self._report
        report.cache_mismatches.extend(sorted(self._cached_heads))
        ledger = self._conflicts.finish()
        writes = rebuild_writes(before, ledger)
        report.conflicts += len(ledger.rows)
        report.conflicts_rewritten.extend(writes.touched)
        report.projects += 1
        return writes
