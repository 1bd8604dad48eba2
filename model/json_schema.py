"""The entity schemas of ``model.entities`` as one JSON Schema (2020-12) document.

This is the language-neutral form of the one definition: SDKs in other languages (the
TypeScript SDK generates its types from it) read it instead of copying the schemas by hand.
Besides the standard keywords (types, required fields, enums, lengths, ranges, patterns) every
field carries ``x-fieldsync`` annotations with what JSON Schema cannot say:

- ``kind``: the ``FieldKind`` (``string``, ``text``, ``timestamp``, ``ref`` ...);
- ``automerge``: the Automerge type an SDK writes: ``text`` (a collaborative Text object),
  ``str`` (a scalar string; the server also accepts a Text object there), ``f64``, ``int``,
  ``boolean``, ``timestamp``, ``list``, ``map``;
- ``ref``: the entity type a reference names;
- ``expected``: the words the server's schema violations use for the field (``expected`` in
  ``docs/entities.md#schema-violations``), so a client reports the same reasons.

Values in the schema are the document's *materialised* values: a timestamp is an RFC 3339
string here (an Automerge Timestamp in the document). Optional fields may be absent or null.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from fieldsync.model.automerge_format.changes import TIMESTAMP_MAX_MS, TIMESTAMP_MIN_MS
from fieldsync.model.entities import SCHEMAS
from fieldsync.model.limits import DEFAULT_LIMITS
from fieldsync.model.rejections import RejectCode
from fieldsync.model.schema import ENTITY_ID_PATTERN, EntitySchema, Field, FieldKind
from fieldsync.model.validation import MAX_LIST_ITEMS, MAX_VIOLATIONS, _expected

__all__ = ["AUTOMERGE_TYPES", "SCHEMA_ID", "entity_json_schema"]

SCHEMA_ID: Final = "https://fieldsync.dev/contract/entities.schema.json"

AUTOMERGE_TYPES: Final[Mapping[FieldKind, str]] = {
    FieldKind.STRING: "str",
    FieldKind.TEXT: "text",
    FieldKind.ENUM: "str",
    FieldKind.REF: "str",
    FieldKind.INT: "int",
    FieldKind.FLOAT: "f64",
    FieldKind.BOOL: "boolean",
    FieldKind.TIMESTAMP: "timestamp",
    FieldKind.LIST: "list",
    FieldKind.MAP: "map",
}
"""The Automerge type an SDK writes for each kind (``model.writer.SCALAR_TYPES`` agrees)."""

_NO_NUL: Final = "^[^\\u0000]*$"  # PostgreSQL cannot store U+0000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _iso(millis: int) -> str:
    moment = _EPOCH + timedelta(milliseconds=millis)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _entity_id_pattern() -> str:
    # Python's \A...\Z anchors are ^...$ in ECMA-262, the dialect of JSON Schema patterns.
    return "^" + ENTITY_ID_PATTERN.pattern.removeprefix("\\A").removesuffix("\\Z") + "$"


def _field_schema(field: Field) -> dict[str, Any]:
    """The JSON Schema of one field's value (never null: the caller adds that)."""
    kind = field.kind
    note: dict[str, Any] = {
        "kind": kind.value,
        "automerge": AUTOMERGE_TYPES[kind],
        "expected": _expected(field),
    }
    schema: dict[str, Any]
    if kind in (FieldKind.STRING, FieldKind.TEXT):
        schema = {"type": "string", "pattern": _NO_NUL}
    elif kind is FieldKind.ENUM:
        schema = {"type": "string", "enum": list(field.choices)}
    elif kind is FieldKind.REF:
        schema = {"type": "string", "pattern": _entity_id_pattern()}
        note["ref"] = field.ref
    elif kind is FieldKind.INT:
        schema = {"type": "integer"}
    elif kind is FieldKind.FLOAT:
        schema = {"type": "number"}
    elif kind is FieldKind.BOOL:
        schema = {"type": "boolean"}
    elif kind is FieldKind.TIMESTAMP:
        schema = {"type": "string", "format": "date-time"}
        note["minimum"] = _iso(TIMESTAMP_MIN_MS)
        note["maximum"] = _iso(TIMESTAMP_MAX_MS)
    elif kind is FieldKind.LIST:
        assert field.item is not None
        schema = {"type": "array", "items": _field_schema(field.item), "maxItems": MAX_LIST_ITEMS}
    else:
        schema = _object_schema(field.fields)
    if field.max_length is not None:
        schema["maxLength"] = field.max_length
    if field.minimum is not None:
        schema["minimum"] = field.minimum
    if field.maximum is not None:
        schema["maximum"] = field.maximum
    schema["x-fieldsync"] = note
    return schema


def _object_schema(fields: tuple[Field, ...]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for field in fields:
        value = _field_schema(field)
        properties[field.name] = value if field.required else {"anyOf": [value, {"type": "null"}]}
    return {
        "type": "object",
        "properties": properties,
        "required": [f.name for f in fields if f.required],
        "additionalProperties": False,
    }


def _entity_schema(schema: EntitySchema) -> dict[str, Any]:
    out = {"title": schema.type_name, **_object_schema(schema.fields)}
    if schema.require_one_of:
        names = list(schema.require_one_of)
        out["anyOf"] = [
            {"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in names
        ]
        out["x-fieldsync"] = {"require_one_of": names}
    return out


def entity_json_schema() -> dict[str, Any]:
    """Every entity type of ``model.entities.SCHEMAS``, one ``$defs`` entry each; the root
    accepts a document of any of them. Deterministic: the same definitions give the same
    document, key for key."""
    defs = {name: _entity_schema(schema) for name, schema in SCHEMAS.items()}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "fieldsync entities",
        "description": (
            "Generated from model/entities.py by `fieldsync contract`; do not edit. "
            "Each entity is one Automerge document whose root map holds these fields "
            "(docs/entities.md). x-fieldsync.automerge names the Automerge type to write."
        ),
        "anyOf": [{"$ref": f"#/$defs/{name}"} for name in defs],
        "$defs": defs,
        "x-fieldsync": {
            "entity_types": list(defs),
            "entity_id_pattern": _entity_id_pattern(),
            "max_list_items": MAX_LIST_ITEMS,
            "max_violations": MAX_VIOLATIONS,
            "timestamp_minimum": _iso(TIMESTAMP_MIN_MS),
            "timestamp_maximum": _iso(TIMESTAMP_MAX_MS),
            "limits": {
                "max_change_bytes": DEFAULT_LIMITS.max_change_bytes,
                "max_changes_per_entity": DEFAULT_LIMITS.max_changes_per_entity,
                "max_entities_per_batch": DEFAULT_LIMITS.max_entities_per_batch,
                "max_document_bytes": DEFAULT_LIMITS.max_document_bytes,
                "max_frame_bytes": DEFAULT_LIMITS.max_frame_bytes,
            },
            "reject_codes": [code.value for code in RejectCode],
        },
    }
