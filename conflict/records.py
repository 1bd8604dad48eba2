"""Conflict records: what a rule found, in a form that is the same on every server.

A :class:`Conflict` is a plain value. Its id is a SHA-256 over what identifies it (kind,
entities, fields and the hashes of the changes involved), never over when or where it was
found, so the same conflict found twice, or on two servers, or by a rebuild, has the same id.
``details()`` is what goes into the ``rm_conflicts.details`` jsonb column.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TypeAlias

Json: TypeAlias = bool | int | float | str | list["Json"] | dict[str, "Json"] | None


class ConflictKind(StrEnum):
    """What a merge (or a combination of entities) broke."""

    CONCURRENT_EDIT = "concurrent_edit"  # one field set by changes that did not see each other
    BROKEN_INTERVAL = "broken_interval"  # end before start, from two edits each valid alone
    EDIT_TO_DELETED = "edit_to_deleted"  # an edit concurrent with the entity's deletion
    DELETED_REFERENCE = "deleted_reference"  # a live entity pointing at a deleted one
    DOUBLE_BOOKING = "double_booking"  # one user summoned to overlapping places at once
    SUMMONING_OUTSIDE_ACTIVITY = "summoning_outside_activity"  # window misses its activity


SINGLE_ENTITY_KINDS = frozenset(
    {ConflictKind.CONCURRENT_EDIT, ConflictKind.BROKEN_INTERVAL, ConflictKind.EDIT_TO_DELETED}
)
CROSS_ENTITY_KINDS = frozenset(
    {
        ConflictKind.DELETED_REFERENCE,
        ConflictKind.DOUBLE_BOOKING,
        ConflictKind.SUMMONING_OUTSIDE_ACTIVITY,
    }
)


@dataclass(frozen=True, slots=True, order=True)
class ChangeRef:
    """One Automerge change involved in a conflict: its hash and its actor, both hex."""

    hash: str
    actor: str

    def to_json(self) -> dict[str, Json]:
        return {"hash": self.hash, "actor": self.actor}


@dataclass(frozen=True, slots=True)
class Conflict:
    """One conflict; build it with :func:`make_conflict` so that the id is computed.

    ``values`` holds the competing values (JSON-able; timestamps as ISO 8601 strings).
    ``changes`` lists the changes that produced them, in the order ``values`` describes.
    ``resolution`` says what the deterministic rule did, or is None when a lead decides.
    """

    conflict_id: str
    kind: ConflictKind
    entity_ids: tuple[str, ...]
    fields: tuple[str, ...]
    values: Mapping[str, Json]
    changes: tuple[ChangeRef, ...]
    resolution: str | None

    def __hash__(self) -> int:
        return hash(self.conflict_id)

    @property
    def needs_lead(self) -> bool:
        """True when no rule decides: a lead resolves it with an ordinary change."""
        return self.resolution is None

    def details(self) -> dict[str, Json]:
        """The record as JSON for the ``details`` column (and for clients)."""
        return {
            "kind": str(self.kind),
            "entity_ids": list(self.entity_ids),
            "fields": list(self.fields),
            "values": _copy(dict(self.values)),
            "changes": [c.to_json() for c in self.changes],
            "resolution": self.resolution,
        }


def conflict_id(
    kind: ConflictKind,
    entity_ids: Iterable[str],
    fields: Iterable[str],
    change_hashes: Iterable[str],
) -> str:
    """Hex SHA-256 of the canonical identity: kind, sorted entities, fields and changes."""
    identity = {
        "kind": str(kind),
        "entity_ids": sorted(set(entity_ids)),
        "fields": sorted(set(fields)),
        "changes": sorted(set(change_hashes)),
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def make_conflict(
    kind: ConflictKind,
    entity_ids: Iterable[str],
    fields: Iterable[str],
    values: Mapping[str, object],
    changes: Sequence[ChangeRef] = (),
    resolution: str | None = None,
) -> Conflict:
    """A conflict with its id; entity ids and fields are stored sorted and de-duplicated."""
    entities = tuple(sorted(set(entity_ids)))
    names = tuple(sorted(set(fields)))
    ident = conflict_id(kind, entities, names, (c.hash for c in changes))
    converted = {key: to_json(value) for key, value in values.items()}
    return Conflict(ident, kind, entities, names, converted, tuple(changes), resolution)


MAX_STRING = 4096
"""Longer strings (a long description, say) are recorded cut to this many characters."""


def to_json(value: object) -> Json:
    """Plain JSON that PostgreSQL's jsonb accepts, for a document value.

    Datetimes become ISO 8601 strings in UTC; strings lose NUL characters (jsonb cannot hold
    them) and are cut to ``MAX_STRING`` characters; NaN and infinities become strings.
    """
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        text = value.replace("\x00", "\ufffd")
        return text if len(text) <= MAX_STRING else text[:MAX_STRING] + "\u2026"
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat()
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot record a value of type {type(value).__name__}")


def _copy(value: Json) -> Json:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
