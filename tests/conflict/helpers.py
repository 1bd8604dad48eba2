"""Offline devices editing real Automerge documents, and a server model for the conflict rules.

``Device`` is one client's copy of some entities (forks of the same documents, each with its
own actor), edited through ``model.writer`` like the SDK does. ``ProjectSim`` is the append
path and the rebuild of the store, minus PostgreSQL: the same pure merge (``model.merge``),
seqs handed out in order, the conflict rules and ``conflict.ledger`` bookkeeping wired the
way ``docs/conflicts.md`` recommends. Tests compare its incremental rows with its rebuild.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from automerge.core import ROOT, Document, ObjType

from fieldsync.conflict.cross import ProjectRows, Row, cross_entity_conflicts, needed_rows
from fieldsync.conflict.entity import entity_conflicts
from fieldsync.conflict.ledger import (
    Ledger,
    plan_cross,
    plan_entity,
    row_at,
    row_changes,
    rules_needed,
)
from fieldsync.model.changes import ChangeHeader, parse_change
from fieldsync.model.documents import expected_heads, load_document
from fieldsync.model.limits import DEFAULT_LIMITS
from fieldsync.model.merge import (
    DecodedChanges,
    EntityChanges,
    Merged,
    StoredEntity,
    decode_entity_changes,
    merge_entity,
)
from fieldsync.model.rejections import Rejection
from fieldsync.model.writer import create_entity, update_entity
from tests.entities import START


def actor(n: int) -> bytes:
    """A fixed actor id, so that which concurrent value Automerge shows is reproducible."""
    return bytes([n]) * 16


def at(hours: float) -> datetime:
    return START + timedelta(hours=hours)


@dataclass
class Entity:
    entity_type: str
    entity_id: str
    doc: Document
    changes: list[bytes]


def create(entity_type: str, entity_id: str, values: Mapping[str, object]) -> Entity:
    doc, change = create_entity(entity_type, values, actor=actor(0))
    return Entity(entity_type, entity_id, doc, [change])


class Device:
    """One client: a fork of every entity it knows, under its own actor id."""

    def __init__(self, number: int, entities: Iterable[Entity]) -> None:
        self.number = number
        self.types: dict[str, str] = {}
        self.docs: dict[str, Document] = {}
        self.made: dict[str, list[bytes]] = defaultdict(list)
        for entity in entities:
            doc = entity.doc.fork()
            doc.set_actor(actor(number))
            self.docs[entity.entity_id] = doc
            self.types[entity.entity_id] = entity.entity_type

    def edit(self, entity_id: str, values: Mapping[str, object]) -> bytes:
        change = update_entity(self.docs[entity_id], self.types[entity_id], values)
        self.made[entity_id].append(change)
        return change

    def put_text_object(self, entity_id: str, field: str, value: str) -> bytes:
        """Put a new Text object at ``field``: a whole replacement, what a JavaScript
        ``doc.description = "…"`` does (an ordinary SDK update splices instead)."""
        doc = self.docs[entity_id]
        with doc.transaction() as tx:
            text = tx.put_object(ROOT, field, ObjType.Text)
            tx.splice_text(text, 0, 0, value)  # type: ignore[attr-defined]
        change = doc.get_last_local_change()
        assert change is not None
        self.made[entity_id].append(change.bytes)
        return change.bytes

    def sync_from(self, other: Device) -> None:
        """Receive everything ``other`` has (as if through the server)."""
        for entity_id, doc in other.docs.items():
            own = self.docs[entity_id]
            mine = own.get_actor()
            own.merge(doc)
            own.set_actor(mine)

    def changes_since(self, entity: Entity) -> list[bytes]:
        """Every change this device holds for ``entity`` beyond its creation."""
        known = entity.doc.get_heads()
        return [c.bytes for c in self.docs[entity.entity_id].get_changes(known)]


def merged_doc(changes: Sequence[bytes]) -> Document:
    """A document holding exactly ``changes`` (any order: load sorts them out)."""
    return load_document(b"".join(changes))


@dataclass
class Logged:
    seq: int
    entity_type: str
    entity_id: str
    header: ChangeHeader


@dataclass
class ProjectSim:
    """The store's append path and rebuild for one project, in memory."""

    project: uuid.UUID = field(default_factory=uuid.uuid4)
    docs: dict[str, Document] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    logged: dict[str, dict[bytes, int]] = field(default_factory=lambda: defaultdict(dict))
    log: list[Logged] = field(default_factory=list)
    rows: dict[str, Row] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger)

    @property
    def head(self) -> int:
        return len(self.log)

    def append(self, batch: Sequence[tuple[str, str, Sequence[bytes]]]) -> list[Merged | Rejection]:
        """One push: per entity, merge, log with the next seqs, then maintain conflicts."""
        outcomes: list[Merged | Rejection] = []
        for entity_type, entity_id, changes in batch:
            decoded = decode_entity_changes(
                EntityChanges(entity_type, entity_id, list(changes)), DEFAULT_LIMITS
            )
            assert isinstance(decoded, DecodedChanges), decoded
            before = self.docs.get(entity_id)
            stored = None
            if before is not None:
                heads = tuple(sorted(before.get_heads()))
                stored = StoredEntity(self.project, entity_type, self.head, heads, 0, before)
            merged = merge_entity(
                self.project, decoded, stored, self.logged[entity_id], DEFAULT_LIMITS
            )
            outcomes.append(merged)
            if isinstance(merged, Rejection) or not merged.new_changes:
                continue
            assert merged.document is not None
            seqs = []
            for header in merged.new_changes:
                self.log.append(Logged(self.head + 1, entity_type, entity_id, header))
                self.logged[entity_id][header.hash] = self.head
                seqs.append(self.head)
            self.docs[entity_id] = merged.document
            self.types[entity_id] = entity_type
            self._entity_conflicts(entity_type, entity_id, before, merged)
            self._cross_conflicts(entity_type, entity_id, before, merged, seqs)
        return outcomes

    def _entity_conflicts(
        self, entity_type: str, entity_id: str, before: Document | None, merged: Merged
    ) -> None:
        assert merged.document is not None
        existing = self.ledger.entity_rows(entity_id)
        heads = before.get_heads() if before is not None else []
        if not rules_needed(heads, merged.new_changes, existing):
            return  # as the store does; the rebuild below always runs the rules
        result = entity_conflicts(
            entity_type, entity_id, before, merged.document, merged.new_changes
        )
        self.ledger.apply(plan_entity(result, existing, self.seq_of))

    def _cross_conflicts(
        self,
        entity_type: str,
        entity_id: str,
        before: Document | None,
        merged: Merged,
        seqs: Sequence[int],
    ) -> None:
        assert merged.document is not None
        heads_before = before.get_heads() if before is not None else []
        for index, row in row_changes(
            entity_type,
            entity_id,
            merged.document,
            heads_before,
            merged.new_changes,
            self.rows.get(entity_id),
        ):
            self.rows[entity_id] = row
            self._recheck(entity_id, seqs[index], self.rows, self.ledger)

    @staticmethod
    def _recheck(entity_id: str, seq: int, rows: Mapping[str, Row], ledger: Ledger) -> None:
        everything = ProjectRows.of(rows.values())
        found = cross_entity_conflicts(needed_rows(everything, [entity_id]), [entity_id])
        ledger.apply(plan_cross(found, ledger.cross_rows([entity_id]), seq))

    @property
    def seq_of(self) -> dict[str, int]:
        return {h.hex(): seq for by_hash in self.logged.values() for h, seq in by_hash.items()}

    def rebuild(self) -> Ledger:
        """``rm_conflicts`` from the log alone, as ``fieldsync rebuild-read-models`` must."""
        ledger = Ledger()
        by_entity: dict[str, list[Logged]] = defaultdict(list)
        for entry in self.log:
            by_entity[entry.entity_id].append(entry)
        docs: dict[str, Document] = {}
        seq_of = self.seq_of
        for entity_id in sorted(by_entity):
            entries = by_entity[entity_id]
            doc = load_document(b"".join(e.header.data for e in entries))
            docs[entity_id] = doc
            headers = [e.header for e in entries]
            result = entity_conflicts(entries[0].entity_type, entity_id, None, doc, headers)
            ledger.apply(plan_entity(result, ledger.entity_rows(entity_id), seq_of))
        heads: dict[str, frozenset[bytes]] = defaultdict(frozenset)
        rows: dict[str, Row] = {}
        for entry in self.log:
            heads[entry.entity_id] = expected_heads(heads[entry.entity_id], [entry.header])
            state = sorted(heads[entry.entity_id])
            row = row_at(entry.entity_type, entry.entity_id, docs[entry.entity_id], state)
            if row is not None and row != rows.get(entry.entity_id):
                rows[entry.entity_id] = row
                self._recheck(entry.entity_id, entry.seq, rows, ledger)
        return ledger

    def open_details(self) -> dict[str, object]:
        return {
            key: row.details for key, row in self.ledger.rows.items() if row.status == "open"
        }


def headers(changes: Iterable[bytes]) -> list[ChangeHeader]:
    return [parse_change(c) for c in changes]
