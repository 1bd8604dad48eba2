"""Conflicts as the app sees them: what a merge broke, from the server's conflict records.

The server finds conflicts (``docs/conflicts.md``) and sends their records; the client keeps
the last known record of each in its local store. A conflict closes on the server when an
ordinary change removes its cause, so resolving one is an edit like any other;
:meth:`Project.resolve_conflict` writes that edit for a concurrent same-field edit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from fieldsync.model.entities import SCHEMAS
from fieldsync.model.schema import FieldKind
from fieldsync.sync.messages import ConflictRecord

__all__ = ["Conflict", "ConflictUpdate", "record_from_json", "record_to_json"]


@dataclass(frozen=True, slots=True)
class Conflict:
    """One conflict record.

    ``values`` holds the competing values as the server recorded them (JSON: timestamps are
    ISO 8601 strings); ``changes`` the changes that produced them (hash, actor, user).
    ``resolution`` says what the server's rule did, or is None when a lead must decide.
    """

    conflict_id: str
    kind: str
    status: str  # "open" or "resolved"
    entity_ids: tuple[str, ...]
    fields: tuple[str, ...]
    values: Mapping[str, object]
    changes: tuple[Mapping[str, object], ...]
    resolution: str | None
    opened_seq: int
    resolved_seq: int | None

    @property
    def open(self) -> bool:
        return self.status == "open"

    @property
    def needs_lead(self) -> bool:
        return self.resolution is None

    @property
    def change_hashes(self) -> tuple[bytes, ...]:
        return tuple(
            bytes.fromhex(str(c["hash"])) for c in self.changes if isinstance(c.get("hash"), str)
        )

    def candidates(self, entity_type: str) -> list[object]:
        """A concurrent edit's competing values, shown value first, typed like the field
        (timestamps as aware datetimes): pass one to ``Project.resolve_conflict``."""
        if self.kind != "concurrent_edit" or len(self.fields) != 1:
            raise ValueError(f"a {self.kind} conflict has no candidate values")
        spec = SCHEMAS[entity_type].field(self.fields[0])
        raw = self.values.get("candidates")
        if not isinstance(raw, list):
            return []
        if spec is not None and spec.kind is FieldKind.TIMESTAMP:
            return [datetime.fromisoformat(v) if isinstance(v, str) else v for v in raw]
        return list(raw)

    @classmethod
    def of(cls, record: ConflictRecord) -> Conflict:
        details = record.details
        values = details.get("values")
        changes = details.get("changes")
        resolution = details.get("resolution")
        return cls(
            record.conflict_id,
            record.kind,
            record.status,
            record.entity_ids,
            record.fields,
            values if isinstance(values, dict) else {},
            tuple(c for c in changes if isinstance(c, dict)) if isinstance(changes, list) else (),
            resolution if isinstance(resolution, str) else None,
            record.opened_seq,
            record.resolved_seq,
        )


@dataclass(frozen=True, slots=True)
class ConflictUpdate:
    """Conflicts of a project that changed; ``removed`` lists ids that no longer exist (a
    concurrent edit widened them into a record that is in ``changed``)."""

    project_id: str
    changed: tuple[Conflict, ...] = ()
    removed: tuple[str, ...] = ()
    snapshot: bool = False  # True: the project's whole set was replaced
    all_ids: frozenset[str] = field(default_factory=frozenset)


def record_to_json(record: ConflictRecord) -> str:
    return json.dumps(
        {
            "conflict_id": record.conflict_id,
            "status": record.status,
            "kind": record.kind,
            "entity_ids": list(record.entity_ids),
            "fields": list(record.fields),
            "opened_seq": record.opened_seq,
            "resolved_seq": record.resolved_seq,
            "details": record.details,
        },
        sort_keys=True,
    )


def record_from_json(text: str) -> ConflictRecord:
    data = json.loads(text)
    return ConflictRecord(
        data["conflict_id"],
        data["status"],
        data["kind"],
        tuple(data["entity_ids"]),
        tuple(data["fields"]),
        data["opened_seq"],
        data["resolved_seq"],
        data["details"],
    )


def split(records: Sequence[ConflictRecord]) -> tuple[list[ConflictRecord], list[str]]:
    """Records to keep, and ids of removed ones; a later record of an id wins."""
    latest: dict[str, ConflictRecord] = {}
    for record in records:
        latest[record.conflict_id] = record
    kept = [r for r in latest.values() if r.status != "removed"]
    removed = [r.conflict_id for r in latest.values() if r.status == "removed"]
    return kept, removed
