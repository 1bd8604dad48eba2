"""Writing plain values into entity documents with the Automerge types their schema expects.

The schema decides how each value is stored: a TEXT field becomes a collaborative Text
object, a STRING field a scalar string, a timestamp a Timestamp scalar, a list of maps real
Automerge lists and maps. Clients (the SDK, tests, benchmarks) write through here so that
what they produce always validates on the server. Every function makes exactly one change
and returns its bytes, ready to push; an edit that would leave the document as it was
(setting a field to the value it already has) makes none and raises :class:`NoChange`.

Setting a TEXT field that already holds a Text object edits that object: only the
difference is written, as splices (``model.text_diff``), like Automerge's ``updateText``.
Two people changing different parts of a description offline both keep their edits.
:func:`replace_text` is the explicit way to put a whole new object in the field.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime

from automerge._automerge import Transaction
from automerge.core import ROOT, Document, ObjType, ScalarType

from fieldsync.model.entities import SCHEMAS
from fieldsync.model.schema import EntitySchema, Field, FieldKind
from fieldsync.model.text_diff import text_splices

# The Automerge scalar type each scalar field kind is written as.
SCALAR_TYPES = {
    FieldKind.STRING: ScalarType.Str,
    FieldKind.ENUM: ScalarType.Str,
    FieldKind.REF: ScalarType.Str,
    FieldKind.INT: ScalarType.Int,
    FieldKind.FLOAT: ScalarType.F64,
    FieldKind.BOOL: ScalarType.Boolean,
    FieldKind.TIMESTAMP: ScalarType.Timestamp,
}


class WriteError(ValueError):
    """A value does not fit the field it is written to; nothing was written."""


class NoChange(WriteError):  # noqa: N818 - a condition, not a failure
    """The edit would not change the document, so no change was made."""


def _field(fields: Sequence[Field], name: str, where: str) -> Field:
    for f in fields:
        if f.name == name:
            return f
    raise WriteError(f"{where} has no field {name!r}")


def _schema(entity_type: str) -> EntitySchema:
    try:
        return SCHEMAS[entity_type]
    except KeyError:
        raise WriteError(f"unknown entity type {entity_type!r}") from None


def _scalar(field: Field, value: object) -> object:
    if field.kind is FieldKind.TIMESTAMP:
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise WriteError(f"{field.name} needs a timezone-aware datetime, got {value!r}")
        # Aware datetimes go in as they are: the binding reads naive ones as local time.
        return value
    if field.kind is FieldKind.FLOAT and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _put(
    tx: Transaction, obj: bytes, key: str | int, field: Field, value: object, insert: bool
) -> None:
    """Write ``value`` at ``obj[key]``, or insert it at list index ``key``."""
    if field.kind is FieldKind.TEXT:
        if not isinstance(value, str):
            raise WriteError(f"{field.name} is text, got {value!r}")
        text = _new_object(tx, obj, key, ObjType.Text, insert)
        tx.splice_text(text, 0, 0, value)  # type: ignore[attr-defined]
    elif field.kind is FieldKind.LIST:
        if not isinstance(value, list | tuple) or field.item is None:
            raise WriteError(f"{field.name} is a list, got {value!r}")
        items = _new_object(tx, obj, key, ObjType.List, insert)
        for index, item in enumerate(value):
            _put(tx, items, index, field.item, item, insert=True)
    elif field.kind is FieldKind.MAP:
        if not isinstance(value, Mapping):
            raise WriteError(f"{field.name} is a map, got {value!r}")
        target = _new_object(tx, obj, key, ObjType.Map, insert)
        for name, inner in value.items():
            _put(tx, target, name, _field(field.fields, name, field.name), inner, insert=False)
    elif insert:
        assert isinstance(key, int)
        tx.insert(obj, key, SCALAR_TYPES[field.kind], _scalar(field, value))  # type: ignore[arg-type]
    else:
        tx.put(obj, key, SCALAR_TYPES[field.kind], _scalar(field, value))  # type: ignore[arg-type]


def _new_object(tx: Transaction, obj: bytes, key: str | int, kind: ObjType, insert: bool) -> bytes:
    if insert:
        assert isinstance(key, int)
        return tx.insert_object(obj, key, kind)
    return tx.put_object(obj, key, kind)


@contextmanager
def _writing() -> Iterator[None]:
    """The binding refuses a value of the wrong Python type with TypeError (and rolls the
    transaction back); callers get WriteError like for every other bad value."""
    try:
        yield
    except (TypeError, OverflowError) as exc:
        raise WriteError(f"a value does not fit its field: {exc}") from exc


def _new_change(doc: Document, heads_before: list[bytes]) -> bytes:
    """The change the last transaction made."""
    if doc.get_heads() == heads_before:
        raise NoChange("the edit leaves the document as it was")
    change = doc.get_last_local_change()
    assert change is not None, "the heads moved, so this document made a change"
    return change.bytes


def create_entity(
    entity_type: str, values: Mapping[str, object], actor: bytes | None = None
) -> tuple[Document, bytes]:
    """A new entity document holding ``values``, made in one change."""
    schema = _schema(entity_type)
    doc = Document(actor) if actor is not None else Document()
    with _writing(), doc.transaction() as tx:
        for name, value in values.items():
            if value is not None:  # absent and None mean the same for a new entity
                field = _field(schema.fields, name, entity_type)
                _put(tx, ROOT, name, field, value, insert=False)
    return doc, _new_change(doc, [])


def update_entity(
    doc: Document, entity_type: str, values: Mapping[str, object]
) -> bytes:
    """Set (or, for ``None``, remove) top-level fields in one change.

    A text field that holds a Text object keeps it: the new value is written as the splices
    that turn the current text into it, so concurrent edits of other parts of the text
    merge with this one. A text field with no Text object yet gets a new one.
    """
    schema = _schema(entity_type)
    heads = doc.get_heads()
    with _writing(), doc.transaction() as tx:
        for name, value in values.items():
            field = _field(schema.fields, name, entity_type)
            if value is None:
                tx.delete(ROOT, name)
            elif field.kind is FieldKind.TEXT and (text := _text_object(tx, name)) is not None:
                _update_text(tx, text, field, value)
            else:
                _put(tx, ROOT, name, field, value, insert=False)
    return _new_change(doc, heads)


def replace_text(doc: Document, entity_type: str, field_name: str, value: str) -> bytes:
    """Put a new Text object holding ``value`` in a text field, in place of the old one.

    Unlike :func:`update_entity`, edits others make concurrently to the old object are not
    merged into the new one (they stay in the old, hidden object), and two replacements made
    concurrently leave two objects under the field: one shows, and the server records a
    ``concurrent_edit`` conflict for the other. Use it when a whole new value is meant, such
    as settling such a conflict.
    """
    field = _field(_schema(entity_type).fields, field_name, entity_type)
    if field.kind is not FieldKind.TEXT:
        raise WriteError(f"{field_name} is not a text field")
    heads = doc.get_heads()
    with _writing(), doc.transaction() as tx:
        _put(tx, ROOT, field_name, field, value, insert=False)
    return _new_change(doc, heads)


def overwrite_field(doc: Document, entity_type: str, field_name: str, value: object) -> bytes:
    """Write ``value`` over every value the field holds, concurrent ones included, as settling
    a ``concurrent_edit`` conflict needs: a new object for a text field (a splice would edit
    only the object that shows), an ordinary :func:`update_entity` otherwise."""
    field = _field(_schema(entity_type).fields, field_name, entity_type)
    if field.kind is FieldKind.TEXT and value is not None:
        if not isinstance(value, str):
            raise WriteError(f"{field_name} is text, got {value!r}")
        return replace_text(doc, entity_type, field_name, value)
    return update_entity(doc, entity_type, {field_name: value})


def _text_object(tx: Transaction, key: str) -> bytes | None:
    """The id of the Text object at ``ROOT[key]``, if that is what it holds."""
    found = tx.get(ROOT, key)
    if found is None or found[0] != ObjType.Text:
        return None
    return found[1]


def _update_text(tx: Transaction, text: bytes, field: Field, value: object) -> None:
    if not isinstance(value, str):
        raise WriteError(f"{field.name} is text, got {value!r}")
    for splice in text_splices(tx.text(text), value):
        tx.splice_text(text, splice.index, splice.delete, splice.insert)  # type: ignore[attr-defined]


def splice_text(
    doc: Document, field_name: str, index: int, delete: int, insert: str
) -> bytes:
    """Edit a TEXT field in place, so concurrent edits of the same text merge."""
    found = doc.get(ROOT, field_name)
    if found is None or found[0] != ObjType.Text:
        raise WriteError(f"{field_name} is not a text object in this document")
    heads = doc.get_heads()
    with doc.transaction() as tx:
        tx.splice_text(found[1], index, delete, insert)  # type: ignore[attr-defined]
    return _new_change(doc, heads)


def insert_list_item(
    doc: Document, entity_type: str, field_name: str, index: int, value: object
) -> bytes:
    """Insert one item into a LIST field (created if absent), so concurrent inserts merge."""
    field = _field(_schema(entity_type).fields, field_name, entity_type)
    if field.kind is not FieldKind.LIST or field.item is None:
        raise WriteError(f"{field_name} is not a list field")
    found = doc.get(ROOT, field_name)
    heads = doc.get_heads()
    with doc.transaction() as tx:
        items = found[1] if found is not None else tx.put_object(ROOT, field_name, ObjType.List)
        _put(tx, items, index, field.item, value, insert=True)
    return _new_change(doc, heads)


def remove_list_item(doc: Document, field_name: str, index: int) -> bytes:
    found = doc.get(ROOT, field_name)
    if found is None or found[0] != ObjType.List:
        raise WriteError(f"{field_name} is not a list in this document")
    heads = doc.get_heads()
    with doc.transaction() as tx:
        tx.delete(found[1], index)
    return _new_change(doc, heads)
