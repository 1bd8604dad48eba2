"""Single-entity rules: what merging one entity's changes broke inside that entity.

Every rule is a function of the change graph only, never of the order changes arrived in:

* ``open_conflicts(doc, heads)``: the conflicts present in the document as of ``heads``.
  Replicas holding the same changes hold the same heads, so they find the same conflicts.
* ``resolved_by(change)``: the conflicts a change removed. A change resolves a conflict when
  the conflict was present in the state its author edited (its dependencies) and the change
  rewrote what caused it. That, too, depends on the change and its past alone.

So the set of records ever produced for an entity, open or resolved, is the same whatever
order and batching its changes arrived in, and a rebuild that evaluates every logged change
once finds exactly the records the append path found (see ``docs/conflicts.md``).

Kinds:

* ``concurrent_edit``: a top-level scalar or text field (string, enum, ref, timestamp, bool,
  number, text; not lists or maps, which merge) holds two or more live values that differ.
  For text that means two Text objects put at the key concurrently (splices inside one
  object merge and are no conflict). Automerge shows the value with the greatest op id
  (counter, then actor); the record keeps them all.
* ``broken_interval``: ``ends_at`` before ``starts_at`` where the two visible values were
  written by concurrent changes, each of which left a valid interval on its own side.
* ``edit_to_deleted``: ``deleted`` is true and some change concurrent with the deletion
  edited another field. Deletes are soft: the edit stays in the document, the entity stays
  deleted.

The cheap checks (one ``diff`` for the conflict flags of the root keys, a few reads) run on
every call; the change-graph index is built only when one of them says a conflict may exist.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from automerge.core import ROOT, Document, ObjType, ScalarType

from fieldsync.conflict.history import ChangeInfo, History, LiveOp, winner_op
from fieldsync.conflict.records import (
    ChangeRef,
    Conflict,
    ConflictKind,
    Json,
    make_conflict,
    to_json,
)
from fieldsync.model.changeops import ChangeOps, OpId, decode_change_ops, parse_op_id
from fieldsync.model.changes import ChangeFormatError, ChangeHeader
from fieldsync.model.documents import AutomergeError, contained
from fieldsync.model.entities import SCHEMAS
from fieldsync.model.schema import EntitySchema, FieldKind
from fieldsync.model.validation import inspect_document, timestamp_value

__all__ = [
    "EntityConflicts",
    "Resolution",
    "entity_conflicts",
    "extends_linearly",
    "open_conflicts",
    "resolved_by",
    "still_open",
]

# Fields whose key conflicts when written concurrently: every scalar, and text too. A text
# field merges concurrent splices inside one object, but two devices that each put a new
# Text object at the key leave two live objects, and Automerge shows only one of them.
KEY_CONFLICT_KINDS = frozenset(
    {
        FieldKind.TEXT,
        FieldKind.STRING,
        FieldKind.ENUM,
        FieldKind.REF,
        FieldKind.TIMESTAMP,
        FieldKind.BOOL,
        FieldKind.INT,
        FieldKind.FLOAT,
    }
)

CONCURRENT_EDIT_RESOLUTION = (
    "automerge kept the value of the change with the highest (counter, actor); the other "
    "values are kept in this record so that a lead can restore one"
)
EDIT_TO_DELETED_RESOLUTION = (
    "the edits are kept and the entity stays deleted; a lead restores it by setting deleted "
    "to false, or confirms the deletion by writing deleted again"
)

_ROOT_PUT = 'Patch { obj: Root, path: [], action: PutMap { key: "'
_CONFLICT_TRUE = ", conflict: true } }"
_CONFLICT_FALSE = ", conflict: false } }"
_UNREADABLE = "<unreadable>"


@dataclass(frozen=True, slots=True)
class Resolution:
    """``conflict`` was present where ``change`` was written and ``change`` removed it."""

    conflict: Conflict
    change: bytes


@dataclass(frozen=True, slots=True)
class EntityConflicts:
    """What one merge means for an entity's single-entity conflicts.

    ``open``: every conflict present after the merge (not only new ones).
    ``resolved``: conflicts the merged changes removed, each with the change that did.
    ``superseded``: ids present before the merge that are neither open nor resolved now: a
    concurrent change widened them (a third value, another concurrent edit) into a
    different conflict. Only computed when the caller passes the document before the merge.
    """

    open: tuple[Conflict, ...]
    resolved: tuple[Resolution, ...]
    superseded: tuple[str, ...] = ()


def entity_conflicts(
    entity_type: str,
    entity_id: str,
    before: Document | None,
    after: Document,
    new_changes: Sequence[ChangeHeader],
) -> EntityConflicts:
    """The conflicts of ``entity_id`` after merging ``new_changes`` into ``before``.

    ``after`` must hold every change of ``before`` and ``new_changes``. With ``before=None``
    (a new entity, or a rebuild passing every logged change as new) nothing is superseded.
    """
    rules = _Rules(entity_type, entity_id, after)
    heads = _heads(after)
    now = rules.open_at(heads)
    resolved: list[Resolution] = []
    for header in new_changes:
        try:
            ops = decode_change_ops(header.data)
        except ChangeFormatError:
            continue  # nothing can be said about what it overwrote; it resolves nothing
        resolved.extend(Resolution(c, ops.hash) for c in rules.resolved_by(ops))
    resolved.sort(key=lambda r: (r.conflict.conflict_id, r.change))
    superseded: tuple[str, ...] = ()
    if before is not None:
        kept = {c.conflict_id for c in now} | {r.conflict.conflict_id for r in resolved}
        earlier = rules.open_at(_heads(before))
        superseded = tuple(sorted({c.conflict_id for c in earlier} - kept))
    return EntityConflicts(tuple(now), tuple(resolved), superseded)


def open_conflicts(
    entity_type: str, entity_id: str, doc: Document, heads: Sequence[bytes] | None = None
) -> tuple[Conflict, ...]:
    """Every single-entity conflict present in ``doc`` as of ``heads`` (default: current)."""
    rules = _Rules(entity_type, entity_id, doc)
    return tuple(rules.open_at(_heads(doc) if heads is None else list(heads)))


def still_open(conflict: Conflict, entity_type: str, doc: Document) -> bool:
    """Whether ``conflict`` (of this entity) is still present in ``doc`` as it is now."""
    current = open_conflicts(entity_type, conflict.entity_ids[0], doc)
    return any(c.conflict_id == conflict.conflict_id for c in current)


def resolved_by(
    entity_type: str, entity_id: str, doc: Document, change: ChangeHeader | ChangeOps
) -> tuple[Conflict, ...]:
    """The conflicts ``change`` (held by ``doc``) removed from the state it was written on."""
    ops = change if isinstance(change, ChangeOps) else decode_change_ops(change.data)
    return tuple(_Rules(entity_type, entity_id, doc).resolved_by(ops))


def extends_linearly(heads_before: Sequence[bytes], new_changes: Sequence[ChangeHeader]) -> bool:
    """Whether each new change was made on exactly the state before it (one author who saw
    everything, the common case of a client pushing what it edited since its last sync).

    Such changes can neither create a single-entity conflict (every rule needs concurrent
    changes) nor resolve one that was not already present before them, so a store that
    knows the entity had no open conflict may skip the rules for them.
    """
    heads = frozenset(heads_before)
    for change in new_changes:
        if frozenset(change.deps) != heads:
            return False
        heads = frozenset((change.hash,))
    return True


def root_conflict_flags(doc: Document, heads: Sequence[bytes]) -> dict[str, bool] | None:
    """For each root key with a value as of ``heads``: does it hold more than one live value?

    Read from the ``conflict`` flag of ``diff`` patches, which the binding shows only in the
    patch's repr. None when a root patch does not have the expected shape: the caller then
    treats every key as possibly conflicted (slower, same result).
    """
    patches = contained(lambda: doc.diff([], list(heads)))
    flags: dict[str, bool] = {}
    for patch in patches:
        text = repr(patch)
        if not text.startswith("Patch { obj: Root,"):
            continue
        if not text.startswith(_ROOT_PUT):
            return None
        key, sep, _ = text[len(_ROOT_PUT) :].partition('", value: ')
        if not sep:
            return None
        if text.endswith(_CONFLICT_TRUE):
            flags[key] = True
        elif text.endswith(_CONFLICT_FALSE):
            flags[key] = False
        else:
            return None
    return flags


class _Rules:
    """The rules for one document; reads are contained, the change graph is built lazily."""

    def __init__(self, entity_type: str, entity_id: str, doc: Document) -> None:
        self.schema: EntitySchema = SCHEMAS[entity_type]
        self.entity_id = entity_id
        self.doc = doc
        self._history: History | None = None
        self.key_fields = tuple(
            f.name for f in self.schema.fields if f.kind in KEY_CONFLICT_KINDS
        )
        starts, ends = self.schema.field("starts_at"), self.schema.field("ends_at")
        self.has_interval = (
            starts is not None
            and ends is not None
            and starts.kind is FieldKind.TIMESTAMP
            and ends.kind is FieldKind.TIMESTAMP
        )

    @property
    def history(self) -> History:
        if self._history is None:
            self._history = History.of(self.doc)
        return self._history

    # -- conflicts present at some heads -------------------------------------------------

    def open_at(self, heads: Sequence[bytes]) -> list[Conflict]:
        found: list[Conflict] = []
        try:
            flags = root_conflict_flags(self.doc, heads)
        except AutomergeError:
            flags = None
        for name in self.key_fields:
            if flags is not None and not flags.get(name, False):
                continue
            conflict = _safely(lambda: self.concurrent_edit_at(name, heads))  # noqa: B023
            if conflict is not None:
                found.append(conflict)
        for rule in (self.broken_interval, self.edit_to_deleted):
            conflict = _safely(lambda: rule(heads))  # noqa: B023
            if conflict is not None:
                found.append(conflict)
        return sorted(found, key=lambda c: c.conflict_id)

    def concurrent_edit_at(self, name: str, heads: Sequence[bytes]) -> Conflict | None:
        return self.concurrent_edit(name, self.history.live_ops(self.doc, heads, name))

    def concurrent_edit(self, name: str, live: Sequence[LiveOp]) -> Conflict | None:
        if len(live) < 2:
            return None
        ordered = sorted(live, key=lambda item: item.op, reverse=True)  # the winner first
        values = [self.op_value(name, item) for item in ordered]
        if len({json.dumps(v, sort_keys=True) for v in values}) < 2:
            return None  # the same value written twice: nothing was lost
        return make_conflict(
            ConflictKind.CONCURRENT_EDIT,
            [self.entity_id],
            [name],
            {"kept": values[0], "candidates": values},
            [_ref(item.change) for item in ordered],
            CONCURRENT_EDIT_RESOLUTION,
        )

    def broken_interval(self, heads: Sequence[bytes]) -> Conflict | None:
        if not self.has_interval or not heads:
            return None
        starts_op, starts = self.timestamp("starts_at", heads)
        ends_op, ends = self.timestamp("ends_at", heads)
        if starts_op is None or ends_op is None or starts is None or ends is None:
            return None
        if ends >= starts:
            return None
        history = self.history
        by_start, by_end = history.change_of(starts_op), history.change_of(ends_op)
        if by_start is None or by_end is None:
            return None
        if not history.concurrent(by_start.hash, by_end.hash):
            return None  # one client saw both values and left them so: not a merge's doing
        _, end_seen = self.timestamp("ends_at", [by_start.hash])
        _, start_seen = self.timestamp("starts_at", [by_end.hash])
        if (end_seen is not None and end_seen < starts) or (
            start_seen is not None and ends < start_seen
        ):
            return None  # a side was already broken on its own
        return make_conflict(
            ConflictKind.BROKEN_INTERVAL,
            [self.entity_id],
            ["starts_at", "ends_at"],
            {"starts_at": starts, "ends_at": ends},
            [_ref(by_start), _ref(by_end)],
            None,
        )

    def edit_to_deleted(self, heads: Sequence[bytes]) -> Conflict | None:
        if self.schema.field("deleted") is None or not heads:
            return None
        found = self.get("deleted", heads)
        if found is None or found[0] != (ScalarType.Boolean, True):
            return None
        op = parse_op_id(found[1])
        history = self.history
        deletion = history.change_of(op) if op is not None else None
        if deletion is None:
            return None
        edits: list[tuple[ChangeInfo, frozenset[str]]] = []
        for info in history:
            if history.within(info.hash, heads) and history.concurrent(info.hash, deletion.hash):
                touched = self.fields_changed_by(info) - {"deleted"}
                if touched:
                    edits.append((info, touched))
        if not edits:
            return None
        edits.sort(key=lambda item: item[0].hash)
        names = sorted(set().union(*(touched for _, touched in edits)))
        current = self.values(heads)
        conflict = make_conflict(
            ConflictKind.EDIT_TO_DELETED,
            [self.entity_id],
            ["deleted", *names],
            {"deleted": True, "edited": {name: current.get(name) for name in names}},
            [_ref(deletion), *(_ref(info) for info, _ in edits)],
            EDIT_TO_DELETED_RESOLUTION,
        )
        involved = [deletion, *(info for info, _ in edits)]
        if self.resolved_within(conflict, heads, involved):
            return None
        return conflict

    def resolved_within(
        self, conflict: Conflict, heads: Sequence[bytes], involved: Sequence[ChangeInfo]
    ) -> bool:
        """Whether a change within ``heads`` resolved ``conflict``, exactly as
        ``resolved_by`` judges a change: it wrote ``deleted`` on a state that held the
        conflict.

        The key's winning op does not always tell: writing ``deleted`` again on a key that
        holds two live ``true`` values makes Automerge delete only the loser, so the winner
        (and its change, concurrent with the edits) stays, although the writer saw it all.
        """
        history = self.history
        for info in history:
            if not history.within(info.hash, heads) or not info.deps:
                continue
            if not all(history.precedes(change.hash, info.hash) for change in involved):
                continue
            ops = history.ops(info.hash)
            if ops is None or "deleted" not in ops.keys_written():
                continue
            earlier = _safely(lambda: self.edit_to_deleted(list(info.deps)))  # noqa: B023
            if earlier is not None and earlier.conflict_id == conflict.conflict_id:
                return True
        return False

    # -- conflicts a change removed ------------------------------------------------------

    def resolved_by(self, ops: ChangeOps) -> list[Conflict]:
        if not ops.deps:
            return []
        written = ops.keys_written()
        deps = list(ops.deps)
        found: list[Conflict] = []
        for name in self.key_fields:
            if name not in written:
                continue
            # What the author saw at the key: the ops it replaced; when it re-put the winning
            # value of a conflicted key, Automerge deleted only the losers, so add the winner.
            seen = set(ops.outside_pred(name))
            if not seen:
                continue
            if all(op.is_delete for op in ops.root_ops if op.key == name):
                kept = winner_op(self.doc, name, deps)
                if kept is not None:
                    seen.add(kept)
            if len(seen) < 2:
                continue
            conflict = _safely(lambda: self.concurrent_edit(name, self.lookup(seen)))  # noqa: B023
            if conflict is not None:
                found.append(conflict)
        if self.has_interval and written & {"starts_at", "ends_at"}:
            conflict = _safely(lambda: self.broken_interval(deps))
            if conflict is not None:
                found.append(conflict)
        if "deleted" in written:
            conflict = _safely(lambda: self.edit_to_deleted(deps))
            if conflict is not None:
                found.append(conflict)
        return sorted(found, key=lambda c: c.conflict_id)

    def lookup(self, ops: set[OpId]) -> list[LiveOp]:
        """The changes holding ``ops`` (ops this document does not hold are left out)."""
        return [LiveOp(op, info) for op in ops if (info := self.history.change_of(op))]

    # -- reading -------------------------------------------------------------------------

    def get(self, key: str, heads: Sequence[bytes]) -> tuple[object, bytes] | None:
        try:
            found = contained(lambda: self.doc.get(ROOT, key, heads=list(heads)))
        except AutomergeError:
            return None
        return found

    def timestamp(self, key: str, heads: Sequence[bytes]) -> tuple[OpId | None, datetime | None]:
        found = self.get(key, heads)
        if found is None:
            return None, None
        value, exid = found
        if not isinstance(value, tuple) or value[0] != ScalarType.Timestamp:
            return parse_op_id(exid), None
        return parse_op_id(exid), timestamp_value(value[1])

    def op_value(self, name: str, item: LiveOp) -> Json:
        """The value ``item.op`` wrote: the winner at its own change's heads."""
        found = self.get(name, [item.change.hash])
        if found is None or parse_op_id(found[1]) != item.op:
            return _UNREADABLE
        value, exid = found
        if value == ObjType.Text:
            try:
                return to_json(contained(lambda: self.doc.text(exid, heads=[item.change.hash])))
            except AutomergeError:
                return _UNREADABLE
        if isinstance(value, ObjType):
            return f"<{str(value).rsplit('.', 1)[-1].lower()}>"
        if isinstance(value, tuple):
            stype, raw = value
            if stype == ScalarType.Timestamp:
                moment = timestamp_value(raw)
                return _UNREADABLE if moment is None else to_json(moment)
            if stype == ScalarType.Null:
                return None
            if isinstance(raw, bool | int | float | str):
                return to_json(raw)
        return _UNREADABLE

    def values(self, heads: Sequence[bytes]) -> dict[str, Json]:
        try:
            inspection = contained(lambda: inspect_document(self.schema, self.doc, heads))
        except AutomergeError:
            return {}
        return {name: to_json(value) for name, value in inspection.values.items()}

    def fields_changed_by(self, info: ChangeInfo) -> frozenset[str]:
        """Top-level fields whose value differs between the change's deps and the change."""
        before = self.values(list(info.deps)) if info.deps else {}
        after = self.values([info.hash])
        return frozenset(
            name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
        )


def _safely(rule: Callable[[], Conflict | None]) -> Conflict | None:
    """Run one rule; a binding failure (the same for the same document everywhere) means the
    rule finds nothing, never a failed merge."""
    try:
        return rule()
    except AutomergeError:
        return None


def _heads(doc: Document) -> list[bytes]:
    return sorted(contained(doc.get_heads))


def _ref(info: ChangeInfo) -> ChangeRef:
    return ChangeRef(info.hash.hex(), info.actor.hex())


