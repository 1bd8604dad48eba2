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
INT = FieldKind.INT
TIMESTAMP, ENUM, REF = FieldKind.TIMESTAMP, FieldKind.ENUM, FieldKind.REF
LIST, MAP = FieldKind.LIST, FieldKind.MAP

__all__ = [
    "ACTIVITY_STATUSES",
    "ATTACHMENT_STATUSES",
    "ATTACHMENT_VARIANTS",
    "SCHEMAS",
    "SERVER_AUTHORED",
    "SUMMONING_STATUSES",
    "USER_ID_MAX_LENGTH",
]

ACTIVITY_STATUSES = ("planned", "confirmed", "in_progress", "done", "cancelled")
SUMMONING_STATUSES = ("proposed", "confirmed", "declined", "cancelled")
ATTACHMENT_STATUSES = ("uploaded", "processing", "ready", "failed")
ATTACHMENT_VARIANTS = ("small", "large", "shared")
"""What processing makes of an upload: two thumbnails and the copy members download."""

SERVER_AUTHORED = frozenset({"attachment"})
"""Entity types only the server writes (clients read them; a push of one is refused)."""

# Server user ids are UUIDs; the bound keeps an arbitrary string out of the read model.
USER_ID_MAX_LENGTH = 64


def _attachments() -> Field:
    """The attachment ids an entity references (the attachment entities' ids)."""
    return Field("attachments", LIST, item=Field("attachment_id", REF, ref="attachment"))


def _entity(type_name: str, *fields: Field, require_one_of: tuple[str, ...] = ()) -> EntitySchema:
    return EntitySchema(type_name, (*fields, Field("deleted", BOOL)), require_one_of)


_SCHEMAS = (
    _entity(
        "project_settings",
        Field("name", STRING, required=True, max_length=200),
        Field("timezone", STRING, max_length=64),  # an IANA name such as "Europe/Berlin"
        # Whether members' downloads of photos keep the GPS position in their EXIF data.
        Field("share_photo_location", BOOL),
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
        _attachments(),
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
        _attachments(),
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
        "attachment",  # written by the server only (SERVER_AUTHORED): see docs/attachments.md
        Field("sha256", STRING, required=True, max_length=64),
        Field("size", INT, required=True, minimum=0),
        Field("content_type", STRING, required=True, max_length=100),
        Field("file_name", STRING, max_length=255),  # for display only, never a path
        Field("uploaded_by", STRING, max_length=USER_ID_MAX_LENGTH),
        Field("status", ENUM, required=True, choices=ATTACHMENT_STATUSES),
        Field("failure", STRING, max_length=500),
        Field("variants", LIST, item=Field("variant", ENUM, choices=ATTACHMENT_VARIANTS)),
        Field("width", INT, minimum=0),
        Field("height", INT, minimum=0),
    ),
    _entity(
        "membership",
        Field("user_id", STRING, required=True, max_length=USER_ID_MAX_LENGTH),
        Field("role_ids", LIST, item=Field("role_id", REF, ref="role")),
        Field("display_name", STRING),
    ),
)

SCHEMAS: Mapping[str, EntitySchema] = MappingProxyType({s.type_name: s for s in _SCHEMAS})
