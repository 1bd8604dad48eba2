"""The schema language: one declarative description per entity type.

Validation, read-model projections and ``docs/entities.md`` all derive from these
descriptions, so a field is defined in exactly one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

# Clients create entities offline and pick their ids (normally UUIDs). The anchors make
# ``match`` behave like ``fullmatch`` (``$`` would accept a trailing newline).
ENTITY_ID_PATTERN = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")


def is_valid_entity_id(value: object) -> bool:
    """True for a string of 1-64 characters from ``A-Z a-z 0-9 _ -``."""
    return isinstance(value, str) and ENTITY_ID_PATTERN.match(value) is not None


class FieldKind(StrEnum):
    """What a field may hold in the Automerge document."""

    STRING = "string"  # a scalar Str or a Text object (JS Automerge 3 writes strings as Text)
    TEXT = "text"  # collaborative text: a Text object only
    INT = "int"  # Int or Uint
    FLOAT = "float"  # F64, Int or Uint (JS writes whole numbers as integers)
    BOOL = "bool"  # Boolean only
    TIMESTAMP = "timestamp"  # Timestamp scalar; read as an aware UTC datetime
    ENUM = "enum"  # STRING restricted to ``choices``
    REF = "ref"  # STRING holding the entity id of a ``ref`` entity
    LIST = "list"  # List object whose items are ``item``
    MAP = "map"  # Map object with the nested ``fields``


_STRINGY = (FieldKind.STRING, FieldKind.TEXT, FieldKind.ENUM, FieldKind.REF)
_NUMERIC = (FieldKind.INT, FieldKind.FLOAT)


@dataclass(frozen=True, slots=True)
class Field:
    """One field of an entity (or of a nested map, or the item type of a list).

    ``max_length`` counts Unicode code points of string kinds; ``minimum``/``maximum`` bound
    numeric kinds inclusively. ``required`` is ignored for list items: an item is always a value.
    """

    name: str
    kind: FieldKind
    required: bool = False
    ref: str | None = None
    choices: tuple[str, ...] = ()
    item: Field | None = None
    fields: tuple[Field, ...] = ()
    max_length: int | None = None
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self) -> None:
        # Catch schema typos at import time rather than as odd validation results.
        checks = (
            ((self.kind is FieldKind.REF) == bool(self.ref), "ref must be set exactly for REF"),
            ((self.kind is FieldKind.ENUM) == bool(self.choices), "choices only for ENUM"),
            ((self.kind is FieldKind.LIST) == (self.item is not None), "item only for LIST"),
            (self.kind is FieldKind.MAP or not self.fields, "fields only for MAP"),
            (self.max_length is None or self.kind in _STRINGY, "max_length only for strings"),
            (
                (self.minimum is None and self.maximum is None) or self.kind in _NUMERIC,
                "minimum/maximum only for numbers",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(f"field {self.name!r}: {message}")
        _check_unique(self.fields, f"map {self.name!r}")


@dataclass(frozen=True, slots=True)
class EntitySchema:
    """A synced entity type; ``require_one_of`` names fields of which at least one is set."""

    type_name: str
    fields: tuple[Field, ...]
    require_one_of: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_unique(self.fields, f"entity {self.type_name!r}")
        names = {f.name for f in self.fields}
        unknown = [name for name in self.require_one_of if name not in names]
        if unknown:
            raise ValueError(f"entity {self.type_name!r}: require_one_of names {unknown}")

    def field(self, name: str) -> Field | None:
        """The top-level field called ``name``, if the schema has one."""
        return next((f for f in self.fields if f.name == name), None)


def _check_unique(fields: tuple[Field, ...], owner: str) -> None:
    names = [f.name for f in fields]
    if len(names) != len(set(names)):
        raise ValueError(f"{owner}: duplicate field names")
