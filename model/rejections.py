"""Why a set of changes was refused: stable codes that clients can act on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class RejectCode(StrEnum):
    """Reasons an entity's change set is refused as a whole; the values go on the wire."""

    UNKNOWN_PROJECT = "unknown_project"
    UNKNOWN_ENTITY_TYPE = "unknown_entity_type"
    INVALID_ENTITY_ID = "invalid_entity_id"
    DUPLICATE_ENTITY = "duplicate_entity"
    WRONG_PROJECT = "wrong_project"
    WRONG_ENTITY_TYPE = "wrong_entity_type"
    EMPTY_CHANGE_SET = "empty_change_set"
    TOO_MANY_CHANGES = "too_many_changes"
    TOO_MANY_OPS = "too_many_ops"  # a change, or the push, holds more ops than allowed
    CHANGE_TOO_LARGE = "change_too_large"
    DOCUMENT_TOO_LARGE = "document_too_large"
    UNDECODABLE_CHANGE = "undecodable_change"
    CORRUPT_CHANGE = "corrupt_change"
    MISSING_DEPENDENCIES = "missing_dependencies"
    # A change (or a dependency) belongs to another entity of the project: one change, one entity
    FOREIGN_CHANGE = "foreign_change"
    # A change that does not descend from the entity's creation change (a second root)
    UNRELATED_HISTORY = "unrelated_history"
    SCHEMA_VIOLATION = "schema_violation"
    UNSUPPORTED_VALUE = "unsupported_value"
    # The writer's level does not allow the change (rules in ``model.permissions``)
    FORBIDDEN_CREATE = "forbidden_create"
    FORBIDDEN_ENTITY = "forbidden_entity"
    FORBIDDEN_FIELD = "forbidden_field"
    FORBIDDEN_DELETE = "forbidden_delete"
    MEMBERSHIP_REMOVED = "membership_removed"  # removed while the push was on its way


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused change set: the code, one readable sentence, and machine-readable details."""

    code: RejectCode
    message: str
    details: Mapping[str, object] = field(default_factory=dict)
