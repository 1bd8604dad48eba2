"""Refusing values the binding cannot read, before it reads them, naming the field.

The binding panics on a Counter, on a value of an unknown type and on a timestamp outside
what a Python datetime can hold (``model.automerge_format.op_columns.unsupported_values``
finds them in a change's bytes). A change holding one is refused with ``unsupported_value``, and the
rejection names the entity's top-level field the value was written into, so a client (or
its developer) can see which edit to undo.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from automerge.core import ROOT, Document, ObjType

from fieldsync.model.automerge_format.changes import ChangeFormatError, ChangeHeader
from fieldsync.model.automerge_format.documents import AutomergeError, contained
from fieldsync.model.automerge_format.op_columns import (
    OpId,
    UnsupportedValue,
    created_objects,
    parse_op_id,
)
from fieldsync.model.rejections import RejectCode, Rejection

UNKNOWN_FIELD = "?"
_MAX_OBJECTS_WALKED = 100_000


def unsupported_value_rejection(
    found: Sequence[tuple[ChangeHeader, UnsupportedValue]],
    fresh: Sequence[ChangeHeader],
    document: Document | None,
    input_index: Mapping[bytes, int],
) -> Rejection:
    """The rejection for the first of ``found`` (a change, the value it holds)."""
    change, value = found[0]
    field = _top_level_field(value, fresh, document)
    where = f"field {field!r}" if field != UNKNOWN_FIELD else "a nested value"
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return Rejection(
        RejectCode.UNSUPPORTED_VALUE,
        f"change {input_index[change.hash]} writes a {value.what} to {where}, which the "
        f"server cannot read{more}",
        {"index": input_index[change.hash], "field": field, "type": value.what},
    )


def _top_level_field(
    value: UnsupportedValue, fresh: Sequence[ChangeHeader], document: Document | None
) -> str:
    """The root key whose subtree holds the value, following objects created by ``fresh``
    up to the root, or else looking the object up in the stored document."""
    if value.obj is None:
        return value.key or UNKNOWN_FIELD
    parents: dict[OpId, tuple[OpId | None, str | None]] = {}
    for change in fresh:
        try:
            parents.update(created_objects(change.data))
        except ChangeFormatError:
            continue
    obj = value.obj
    for _ in range(len(parents) + 1):
        if obj not in parents:
            break
        parent, key = parents[obj]
        if parent is None:
            return key or UNKNOWN_FIELD
        obj = parent
    if document is None:
        return UNKNOWN_FIELD
    try:
        return _stored_objects(document).get(obj, UNKNOWN_FIELD)
    except AutomergeError:
        return UNKNOWN_FIELD


def _stored_objects(document: Document) -> dict[OpId, str]:
    """Every object of a (validated) document -> the root key it lives under (bounded)."""
    found: dict[OpId, str] = {}
    for key in contained(lambda: document.keys(ROOT)):
        slot = contained(lambda: document.get(ROOT, key))  # noqa: B023 (called right here)
        if slot is None or not isinstance(slot[0], ObjType):
            continue
        pending = [slot[1]]
        while pending and len(found) < _MAX_OBJECTS_WALKED:
            exid = pending.pop()
            op = parse_op_id(exid)
            if op is not None:
                found[op] = key
            pending.extend(_child_objects(document, exid))
    return found


def _child_objects(document: Document, exid: bytes) -> list[bytes]:
    kind = contained(lambda: document.object_type(exid))
    if kind == ObjType.Text:
        return []
    if kind == ObjType.List:
        slots = [
            contained(lambda: document.get(exid, i))  # noqa: B023
            for i in range(contained(lambda: document.length(exid)))
        ]
    else:
        slots = [
            contained(lambda: document.get(exid, k))  # noqa: B023
            for k in contained(lambda: document.keys(exid))
        ]
    return [s[1] for s in slots if s is not None and isinstance(s[0], ObjType)]
