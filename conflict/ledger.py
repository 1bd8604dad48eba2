"""The ``rm_conflicts`` read model as pure bookkeeping: which rows to write after a merge.

The store runs the rules, then asks this module what to upsert and delete; a rebuild does
the same from the log, so both write identical rows. :class:`Ledger` holds the rows in
memory with exactly the semantics the SQL must have (tests use it as the reference).

Single-entity conflicts (``conflict.entity``) are a function of each entity's change graph:

* an open conflict's ``opened_seq`` is the largest seq among the changes it names (the seq
  from which the log holds everything that produced it);
* a resolved conflict's ``resolved_seq`` is the smallest seq among the changes that
  resolved it (two clients may resolve the same conflict concurrently);
* a row that was open and is now neither open nor resolved was *superseded* (a third
  concurrent value widened it into another conflict) and is deleted.

Cross-entity conflicts (``conflict.cross``) are a function of the rows after each logged
change (see :func:`row_changes`): found and not recorded, opened at that seq; recorded
resolved and found again, reopened at that seq; recorded open and not found, resolved at
that seq.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from automerge.core import ROOT, Document, ObjType, ScalarType

from fieldsync.conflict.cross import Row, row_from_values
from fieldsync.conflict.entity import EntityConflicts, extends_linearly
from fieldsync.conflict.records import (
    CROSS_ENTITY_KINDS,
    SINGLE_ENTITY_KINDS,
    Conflict,
    ConflictKind,
    Json,
)
from fieldsync.model.automerge_format.changes import ChangeHeader
from fieldsync.model.automerge_format.documents import AutomergeError, contained, expected_heads
from fieldsync.model.entities import SCHEMAS
from fieldsync.model.schema import Field, FieldKind, is_valid_entity_id
from fieldsync.model.validation import Slot, timestamp_value

__all__ = [
    "OPEN",
    "RESOLVED",
    "ConflictRow",
    "Ledger",
    "RowPlan",
    "plan_cross",
    "plan_entity",
    "row_at",
    "row_changes",
    "rules_needed",
    "with_users",
]

OPEN = "open"
RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class ConflictRow:
    """One ``rm_conflicts`` row (without ``project_id``)."""

    conflict_id: str
    kind: str
    entity_ids: tuple[str, ...]
    fields: tuple[str, ...]
    details: Mapping[str, Json]
    status: str
    opened_seq: int
    resolved_seq: int | None

    @classmethod
    def of(
        cls, conflict: Conflict, status: str, opened_seq: int, resolved_seq: int | None
    ) -> ConflictRow:
        return cls(
            conflict.conflict_id,
            str(conflict.kind),
            conflict.entity_ids,
            conflict.fields,
            conflict.details(),
            status,
            opened_seq,
            resolved_seq,
        )


@dataclass(frozen=True, slots=True)
class RowPlan:
    """Rows to insert-or-replace (by conflict id) and conflict ids to delete."""

    upserts: tuple[ConflictRow, ...] = ()
    deletes: tuple[str, ...] = ()


def plan_entity(
    result: EntityConflicts, existing: Mapping[str, ConflictRow], seq_of: Mapping[str, int]
) -> RowPlan:
    """Rows after merging changes into one entity.

    ``existing``: the entity's rows of single-entity kinds (any status), by id.
    ``seq_of``: hex hash -> seq for every change named by ``result`` (old and new).
    """
    upserts: dict[str, ConflictRow] = {}
    for conflict in result.open:
        upserts[conflict.conflict_id] = ConflictRow.of(
            conflict, OPEN, _opened(conflict, seq_of), None
        )
    for resolution in result.resolved:
        conflict = resolution.conflict
        at = seq_of[resolution.change.hex()]
        earlier = upserts.get(conflict.conflict_id) or existing.get(conflict.conflict_id)
        if earlier is not None and earlier.status == RESOLVED and earlier.resolved_seq is not None:
            at = min(at, earlier.resolved_seq)
        upserts[conflict.conflict_id] = ConflictRow.of(
            conflict, RESOLVED, _opened(conflict, seq_of), at
        )
    deletes = sorted(
        key for key, row in existing.items() if row.status == OPEN and key not in upserts
    )
    return RowPlan(tuple(upserts[key] for key in sorted(upserts)), tuple(deletes))


def rules_needed(
    heads_before: Sequence[bytes],
    new_changes: Sequence[ChangeHeader],
    existing: Mapping[str, ConflictRow],
) -> bool:
    """Whether merging ``new_changes`` can change the entity's single-entity rows.

    Not when the entity had no open conflict (``existing``: its rows, as ``plan_entity``
    takes them) and the changes extend its state linearly (``extends_linearly``): then the
    rules would find nothing open and nothing resolved, and ``plan_entity`` would write
    nothing. This is the common push, and the rules' most expensive step (decoding each
    change's operations) is skipped for it.
    """
    if any(row.status == OPEN for row in existing.values()):
        return True
    return not extends_linearly(heads_before, new_changes)


def plan_cross(found: Sequence[Conflict], existing: Mapping[str, ConflictRow], seq: int) -> RowPlan:
    """Rows after re-checking cross-entity rules for some entities at ``seq``.

    ``found``: ``cross_entity_conflicts(rows, involving=those entities)``.
    ``existing``: rows of cross-entity kinds naming any of those entities (any status).
    """
    upserts: list[ConflictRow] = []
    found_ids = set()
    for conflict in found:
        found_ids.add(conflict.conflict_id)
        row = existing.get(conflict.conflict_id)
        if row is None or row.status == RESOLVED:
            upserts.append(ConflictRow.of(conflict, OPEN, seq, None))
        elif row.details != conflict.details():
            upserts.append(replace(row, details=conflict.details()))
    for key, row in existing.items():
        if row.status == OPEN and key not in found_ids:
            upserts.append(replace(row, status=RESOLVED, resolved_seq=seq))
    return RowPlan(tuple(sorted(upserts, key=lambda r: r.conflict_id)))


def with_users(row: ConflictRow, users: Mapping[str, str]) -> ConflictRow:
    """``row`` with the user who sent each change it names (``users``: hex hash -> user id).

    The rules know changes by hash and actor only; who pushed a change is the log's
    knowledge (``changes.sender``), added here so that a lead sees whose edit lost.
    """
    changes = row.details.get("changes")
    if not isinstance(changes, list) or not changes:
        return row
    named = []
    for ref in changes:
        if isinstance(ref, dict) and isinstance(ref.get("hash"), str):
            user = users.get(str(ref["hash"]))
            ref = {**ref, "user": user} if user is not None else ref
        named.append(ref)
    return replace(row, details={**row.details, "changes": named})


def _opened(conflict: Conflict, seq_of: Mapping[str, int]) -> int:
    return max((seq_of[ref.hash] for ref in conflict.changes), default=0)


ROW_FIELDS: Mapping[str, tuple[str, ...]] = {
    "activity": ("location_id", "starts_at", "ends_at", "deleted", "status"),
    "summoning": (
        "activity_id",
        "role_id",
        "user_id",
        "starts_at",
        "ends_at",
        "deleted",
        "status",
    ),
    "location": ("deleted",),
    "role": ("deleted",),
}


def row_at(entity_type: str, entity_id: str, doc: Document, heads: Sequence[bytes]) -> Row | None:
    """The cross-entity row of ``entity_id`` as of ``heads``.

    Only the row's own fields are read, with the schema's rules for them (type, required,
    enum choices, id pattern, length). None when one of them does not fit (such a state
    changes no conflict) or when no cross-entity rule looks at the type.
    """
    names = ROW_FIELDS.get(entity_type)
    if names is None:
        return None
    schema = SCHEMAS[entity_type]
    at = list(heads)
    slots = _root_slots(doc, at)
    values: dict[str, object] = {}
    for name in names:
        field = schema.field(name)
        assert field is not None, name
        value = _read_field(doc, at, field, slots)
        if value is _INVALID:
            return None
        if value is None:
            if field.required:
                return None
            continue
        values[name] = value
    return row_from_values(entity_type, entity_id, values)


_INVALID = object()


def _root_slots(doc: Document, heads: list[bytes]) -> dict[str, Slot] | None:
    """Every top-level key's value as of ``heads``, in two reads (a read at past heads costs
    about as much for one key as for all); None when the binding cannot give them all, and
    the fields are then read one by one."""
    try:
        keys = contained(lambda: doc.keys(ROOT, heads=heads))
        found = contained(lambda: doc.values(ROOT, heads=heads))
    except (AutomergeError, OverflowError, ValueError, OSError):
        return None
    return dict(zip(keys, found, strict=True)) if len(keys) == len(found) else None


def _read_field(
    doc: Document, heads: list[bytes], field: Field, slots: dict[str, Slot] | None
) -> object:
    """A top-level scalar field as ``model.validation`` reads it: its value, None when absent
    or null, ``_INVALID`` when it does not fit. ``slots``: the top-level values, read."""
    try:
        if slots is None:
            found = contained(lambda: doc.get(ROOT, field.name, heads=heads))
        else:
            found = slots.get(field.name)
        if found is None:
            return None
        value, obj = found
        if isinstance(value, tuple) and value[0] == ScalarType.Null:
            return None
        if field.kind in (FieldKind.STRING, FieldKind.ENUM, FieldKind.REF):
            if value == ObjType.Text:
                limit = field.max_length
                size = contained(lambda: doc.length(obj, heads=heads))
                if limit is not None and size > limit:
                    return _INVALID
                text: object = contained(lambda: doc.text(obj, heads=heads))
            elif isinstance(value, tuple) and value[0] == ScalarType.Str:
                text = value[1]
            else:
                return _INVALID
            return text if isinstance(text, str) and _fits(field, text) else _INVALID
        if field.kind is FieldKind.TIMESTAMP:
            if isinstance(value, tuple) and value[0] == ScalarType.Timestamp:
                moment = timestamp_value(value[1])
                if moment is not None:
                    return moment
            return _INVALID
        if field.kind is FieldKind.BOOL:
            if isinstance(value, tuple) and value[0] == ScalarType.Boolean:
                return value[1] if isinstance(value[1], bool) else _INVALID
            return _INVALID
    except (AutomergeError, OverflowError, ValueError, OSError):
        return _INVALID
    return _INVALID


def _fits(field: Field, text: str) -> bool:
    if field.max_length is not None and len(text) > field.max_length:
        return False
    if "\x00" in text:
        return False
    if field.kind is FieldKind.ENUM and text not in field.choices:
        return False
    return field.kind is not FieldKind.REF or is_valid_entity_id(text)


def row_changes(
    entity_type: str,
    entity_id: str,
    doc: Document,
    heads_before: Iterable[bytes],
    new_changes: Sequence[ChangeHeader],
    row_before: Row | None,
    final_row: Row | None = None,
) -> list[tuple[int, Row]]:
    """Where the entity's row changes while ``new_changes`` are applied one by one.

    ``new_changes`` in log (seq) order, ``doc`` holding them all. Returns (index into
    ``new_changes``, row after that change) for each change after which the row differs from
    the row before it; the caller re-checks the cross-entity rules at that change's seq.

    ``final_row``: the row of the whole document, when the caller has it from the validated
    values (``row_from_values``); it stands for the row after the last change, which then
    need not be read (reads at past heads cost several microseconds per field). A push of
    one change reads nothing.
    """
    out: list[tuple[int, Row]] = []
    heads = frozenset(heads_before)
    current = row_before
    last = len(new_changes) - 1
    for index, change in enumerate(new_changes):
        heads = expected_heads(heads, [change])
        if index == last and final_row is not None:
            row: Row | None = final_row
        else:
            row = row_at(entity_type, entity_id, doc, sorted(heads))
        if row is not None and row != current:
            out.append((index, row))
            current = row
    return out


class Ledger:
    """An in-memory ``rm_conflicts`` for one project, with the SQL's semantics.

    Rows are indexed by the entities they name, as the table is (a GIN index on
    ``entity_ids``): a rebuild asks for the rows of one entity at every row change of the
    whole log, and must not scan every conflict each time.
    """

    def __init__(self, rows: Iterable[ConflictRow] = ()) -> None:
        self._rows: dict[str, ConflictRow] = {}
        self._naming: dict[str, set[str]] = defaultdict(set)  # entity id -> conflict ids
        for row in rows:
            self._put(row)

    @property
    def rows(self) -> Mapping[str, ConflictRow]:
        return self._rows

    def entity_rows(self, entity_id: str) -> dict[str, ConflictRow]:
        """What the store selects before ``plan_entity``: kind in the single-entity kinds and
        ``entity_ids = ARRAY[entity_id]``."""
        return {
            key: row
            for key in sorted(self._naming.get(entity_id, ()))
            if ConflictKind((row := self._rows[key]).kind) in SINGLE_ENTITY_KINDS
            and row.entity_ids == (entity_id,)
        }

    def cross_rows(self, entity_ids: Iterable[str]) -> dict[str, ConflictRow]:
        """What the store selects before ``plan_cross``: kind in the cross-entity kinds and
        ``entity_ids && ARRAY[...]``."""
        keys = set().union(*(self._naming.get(entity_id, ()) for entity_id in entity_ids))
        return {
            key: row
            for key in sorted(keys)
            if ConflictKind((row := self._rows[key]).kind) in CROSS_ENTITY_KINDS
        }

    def apply(self, plan: RowPlan, users: Mapping[str, str] | None = None) -> None:
        """Write ``plan``; with ``users``, its rows name who sent each change (``with_users``)."""
        for key in plan.deletes:
            self._remove(key)
        for row in plan.upserts:
            self._put(row if users is None else with_users(row, users))

    def _put(self, row: ConflictRow) -> None:
        self._remove(row.conflict_id)
        self._rows[row.conflict_id] = row
        for entity_id in row.entity_ids:
            self._naming[entity_id].add(row.conflict_id)

    def _remove(self, key: str) -> None:
        old = self._rows.pop(key, None)
        if old is not None:
            for entity_id in old.entity_ids:
                self._naming[entity_id].discard(key)
