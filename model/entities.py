"""The one definition of every synced entity type (see ``docs/entities.md``).

Deletes are soft (``deleted: true``) so that a delete merges like any other edit and the
entity's history stays in the log. Interval order (end before start) is deliberately not
checked here: two valid edits can merge into it, so it is a conflict, not a schema error.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from fieldsync.model.schema import EntitySchema, Field, FieldKind

STRING, TEXT, FLOAT, BOOL = FieldKind.STRING, FieldKind.TEXT, FieldKind.FLOAT, FieldKind.BOOL
TIMESTAMP, ENUM, REF = FieldKind.TIMESTAMP, FieldKind.ENUM, FieldKind.REF
LIST, MAP = FieldKind.LIST, FieldKind.MAP

__all__ = ["ACTIVITY_STATUSES", "SCHEMAS", "SUMMONING_STATUSES", "USER_ID_MAX_LENGTH"]

ACTIVITY_STATUSES = ("planned", "confirmed", "in_progress", "done", "cancelled")
SUMMONING_STATUSES = ("proposed", "confirmed", "declined", "cancelled")

# Server user ids are UUIDs; the bound keeps an arbitrary string out of the read model.
USER_ID_MAX_LENGTH = 64


def _entity(type_name: str, *fields: Field, require_one_of: tuple[str, ...] = ()) -> EntitySchema:
    return EntitySchema(type_name, (*fields, Field("deleted", BOOL)), require_one_of)


_SCHEMAS = (
    _entity(
        "project_settings",
        Field("name", STRING, required=True, max_length=200),
        Field("timezone", STRING, max_length=64),  # an IANA name such as "Europe/Berlin"
    ),
    _entity(
        "plan",
        Field("name", STRING, required=True),
        Field("description", TEXT),
        Field("starts_at", TIMESTAMP),
        Field("ends_at", TIMESTAMP),
    ),
    _entity(
        "activity",
        Field("plan_id", REF, required=True, ref="plan"),
        Field("title", STRING, required=True, max_length=200),
        Field("description", TEXT),
        Field(
            "tasks",
            LIST,
            item=Field(
                "task",
                MAP,
                fields=(Field("title", STRING, required=True), Field("done", BOOL, required=True)),
            ),
        ),
        Field("location_id", REF, ref="location"),
        Field("starts_at", TIMESTAMP, required=True),
        Field("ends_at", TIMESTAMP, required=True),
        Field("status", ENUM, required=True, choices=ACTIVITY_STATUSES),
    ),
    _entity(
        "location",
        Field("name", STRING, required=True),
        Field("address", STRING),
        Field(
            "coordinates",
            MAP,
            fields=(
                Field("latitude", FLOAT, required=True, minimum=-90, maximum=90),
                Field("longitude", FLOAT, required=True, minimum=-180, maximum=180),
            ),
        ),
    ),
    _entity(
        "role",
        Field("name", STRING, required=True),
        Field("skills", LIST, item=Field("skill", STRING)),
    ),
    _entity(
        "summoning",
        Field("activity_id", REF, required=True, ref="activity"),
        Field("role_id", REF, ref="role"),
        Field("user_id", STRING, max_length=USER_ID_MAX_LENGTH),
        Field("starts_at", TIMESTAMP, required=True),
        Field("ends_at", TIMESTAMP, required=True),
        Field("status", ENUM, required=True, choices=SUMMONING_STATUSES),
        require_one_of=("role_id", "user_id"),
    ),
    _entity(
        "membership",
        Field("user_id", STRING, required=True, max_length=USER_ID_MAX_LENGTH),
        Field("role_ids", LIST, item=Field("role_id", REF, ref="role")),
        Field("display_name", STRING),
    ),
)

SCHEMAS: Mapping[str, EntitySchema] = MappingProxyType({s.type_name: s for s in _SCHEMAS})
