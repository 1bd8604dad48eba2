"""Automerge documents for the model tests, written with the core API like a client would.

``write_values`` follows the schema (TEXT as Text objects, other strings as Str scalars or,
with ``strings_as_text``, as Text objects the way JavaScript Automerge 3 writes them);
``write_tree`` writes arbitrary, schema-blind content for the junk-document tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from automerge._automerge import Transaction
from automerge.core import ROOT, Document, ObjType, ScalarType, ScalarValue

from fieldsync.model.schema import EntitySchema, Field, FieldKind
from fieldsync.model.writer import SCALAR_TYPES

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
END = datetime(2026, 3, 2, 14, 30, tzinfo=UTC)
PLAN_ID = "3f0a2c1e-9b7d-4c55-8e21-7a6d2f4b9c10"
LOCATION_ID = "loc_north-1"
ACTIVITY_ID = "act-42"
ROLE_ID = "role_geologist"
USER_ID = "9d2b6f0e-1c3a-4e8b-b7f5-0a4c8e2d6b13"

VALID: dict[str, dict[str, object]] = {
    "project_settings": {"name": "North quarry survey", "timezone": "Europe/Berlin"},
    "plan": {"name": "Spring campaign", "description": "Northern sites", "starts_at": START},
    "activity": {
        "plan_id": PLAN_ID,
        "title": "Core sampling",
        "description": "Take three cores at each marked point.",
        "tasks": [
            {"title": "Calibrate drill", "done": True},
            {"title": "Label jars", "done": False},
            {"title": "Ship samples", "done": True},
        ],
        "location_id": LOCATION_ID,
        "starts_at": START,
        "ends_at": END,
        "status": "confirmed",
    },
    "location": {
        "name": "Site 1",
        "address": "1 Quarry Road",
        "coordinates": {"latitude": 45.25, "longitude": -7.5},
    },
    "role": {"name": "Geologist", "skills": ["drilling", "sampling"]},
    "summoning": {
        "activity_id": ACTIVITY_ID,
        "role_id": ROLE_ID,
        "user_id": USER_ID,
        "starts_at": START,
        "ends_at": END,
        "status": "proposed",
        "deleted": False,
    },
    "membership": {"user_id": USER_ID, "role_ids": [ROLE_ID, "role_2"], "display_name": "Ana"},
    "attachment": {
        "sha256": "ab" * 32,
        "size": 1234,
        "content_type": "image/jpeg",
        "file_name": "site.jpg",
        "uploaded_by": USER_ID,
        "status": "ready",
        "variants": ["small", "large", "shared"],
        "width": 640,
        "height": 480,
    },
}


def new_doc(
    schema: EntitySchema, values: Mapping[str, object], *, strings_as_text: bool = False
) -> Document:
    doc = Document()
    with doc.transaction() as tx:
        for field in schema.fields:
            if field.name in values:
                _write(tx, ROOT, field.name, field, values[field.name], strings_as_text)
    return doc


def _write(
    tx: Transaction, obj: bytes, prop: str | int, field: Field, value: object, as_text: bool
) -> None:
    kind = field.kind
    if kind is FieldKind.TEXT or (as_text and kind in _STRINGS):
        assert isinstance(value, str)
        _new_text(tx, obj, prop, value)
    elif kind is FieldKind.LIST:
        assert isinstance(value, list)
        assert field.item is not None
        target = _new_object(tx, obj, prop, ObjType.List)
        for index, item in enumerate(value):
            _write(tx, target, index, field.item, item, as_text)
    elif kind is FieldKind.MAP:
        assert isinstance(value, dict)
        target = _new_object(tx, obj, prop, ObjType.Map)
        for sub in field.fields:
            if sub.name in value:
                _write(tx, target, sub.name, sub, value[sub.name], as_text)
    else:
        assert isinstance(value, str | bool | int | float | datetime)
        _put_scalar(tx, obj, prop, SCALAR_TYPES[kind], value)


_STRINGS = (FieldKind.STRING, FieldKind.ENUM, FieldKind.REF)


def _new_object(tx: Transaction, obj: bytes, prop: str | int, kind: ObjType) -> bytes:
    if isinstance(prop, int):
        return tx.insert_object(obj, prop, kind)
    return tx.put_object(obj, prop, kind)


def _new_text(tx: Transaction, obj: bytes, prop: str | int, value: str) -> None:
    text = _new_object(tx, obj, prop, ObjType.Text)
    tx.splice_text(text, 0, 0, value)  # type: ignore[attr-defined]  # missing from the stub


def _put_scalar(
    tx: Transaction, obj: bytes, prop: str | int, stype: ScalarType, value: ScalarValue
) -> None:
    if isinstance(prop, int):
        tx.insert(obj, prop, stype, value)
    else:
        tx.put(obj, prop, stype, value)


@dataclass(frozen=True)
class Scalar:
    stype: ScalarType
    value: ScalarValue


@dataclass(frozen=True)
class Text:
    value: str


Node = Scalar | Text | list["Node"] | dict[str, "Node"]


def write_tree(tree: Mapping[str, Node], doc: Document | None = None) -> Document:
    """A document whose root holds ``tree`` (written over ``doc``'s root keys if given);
    never writes Counter or Unknown scalars."""
    doc = Document() if doc is None else doc
    with doc.transaction() as tx:
        for key, node in tree.items():
            _write_node(tx, ROOT, key, node)
    return doc


def _write_node(tx: Transaction, obj: bytes, prop: str | int, node: Node) -> None:
    if isinstance(node, Scalar):
        _put_scalar(tx, obj, prop, node.stype, node.value)
    elif isinstance(node, Text):
        _new_text(tx, obj, prop, node.value)
    elif isinstance(node, list):
        target = _new_object(tx, obj, prop, ObjType.List)
        for index, item in enumerate(node):
            _write_node(tx, target, index, item)
    else:
        target = _new_object(tx, obj, prop, ObjType.Map)
        for key, item in node.items():
            _write_node(tx, target, key, item)
