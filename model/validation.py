"""Reading an entity's Automerge document against its schema.

Documents come from untrusted clients, so reading is bounded: unknown fields are reported,
never walked; long lists are refused unread; at most ``MAX_VIOLATIONS`` are collected. Every
failure of the binding (including the Rust panic raised when a timestamp is outside Python's
datetime range) becomes a violation, never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TypeVar

from automerge.core import ROOT, Document, ObjType, ScalarType, Value

from fieldsync.model.schema import EntitySchema, Field, FieldKind, is_valid_entity_id

MAX_LIST_ITEMS = 10_000
MAX_VIOLATIONS = 100
_SHOWN_CHARS = 40  # longest client string quoted in a violation
_NUL = "\x00"  # PostgreSQL text and jsonb cannot store it
_OUT_OF_RANGE = "timestamp out of range"
_UNREADABLE = "unreadable value"

T = TypeVar("T")
Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class SchemaViolation:
    """One way a document does not fit its schema; ``field`` is a path like ``tasks[2].title``."""

    entity_type: str
    field: str
    expected: str
    got: str

    def __str__(self) -> str:
        return f"{self.entity_type} field {self.field!r}: expected {self.expected}, got {self.got}."


@dataclass(frozen=True, slots=True)
class Inspection:
    """The document's schema fields as plain Python values, and what is wrong with it.

    ``values`` omits absent and null optional fields and anything that failed validation;
    rely on it only when ``violations`` is empty.
    """

    values: dict[str, object]
    violations: tuple[SchemaViolation, ...]

    @property
    def ok(self) -> bool:
        return not self.violations


def inspect_document(
    schema: EntitySchema,
    doc: Document,
    heads: Sequence[bytes] | None = None,
    *,
    slot_by_slot: bool = False,
) -> Inspection:
    """Materialise and validate ``doc`` (as of ``heads`` if given); never raises for content.
    ``slot_by_slot``: one read per key and index, the reference the bulk reads must match."""
    reader = _Reader(doc, None if heads is None else list(heads), bulk=not slot_by_slot)
    values: dict[str, object] = {}
    try:
        values = reader.read_map(ROOT, schema.fields, ())
        names = schema.require_one_of
        if names and not reader.present.intersection(names):
            reader.report(("|".join(names),), "at least one of " + ", ".join(names), "missing")
    except _FullError:
        pass
    found = sorted(reader.found, key=lambda v: (v[0], v[1], v[2]))
    violations = tuple(SchemaViolation(schema.type_name, _path(p), e, g) for p, e, g in found)
    return Inspection(values, violations)


def validate(
    schema: EntitySchema, doc: Document, heads: Sequence[bytes] | None = None
) -> tuple[SchemaViolation, ...]:
    return inspect_document(schema, doc, heads).violations


class _UnreadableError(Exception):
    """The binding raised or panicked while reading a value."""


class _FullError(Exception):
    """MAX_VIOLATIONS reached: the rest of the document is not read."""


_SKIP = object()  # a slot that is absent, null-but-optional or invalid


class _Unread:
    """The type of ``_UNREAD``: a slot whose value has not been read yet."""


_UNREAD = _Unread()


def _guard(call: Callable[[], T]) -> T:
    try:
        return call()
    except Exception as exc:
        raise _UnreadableError(str(exc)) from exc
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        if type(exc).__name__ == "PanicException":
            raise _UnreadableError(str(exc)) from None
        raise


Slot = tuple[Value, bytes] | None
"""What ``Document.get`` returns for one key or index: the value and its id, or None."""


class _Reader:
    """Reads a document field by field. ``bulk``: each map's and list's values come from one
    ``Document.values`` call (a read per slot costs about as much as the whole call, and at
    past heads several times more); slot by slot whenever that call fails or does not line
    up with the keys, so a value the binding cannot convert is still reported where it is."""

    def __init__(self, doc: Document, heads: list[bytes] | None, bulk: bool = True) -> None:
        self.doc = doc
        self.heads = heads
        self.bulk = bulk
        self.found: list[tuple[Path, str, str]] = []
        self.present: set[str] = set()  # top-level fields holding a non-null value

    def slots(self, obj: bytes, count: int) -> Sequence[Slot] | None:
        """Every value of ``obj`` (``count`` of them) in key or index order, or None: read
        them one by one."""
        if not self.bulk:
            return None
        try:
            values = _guard(lambda: self.doc.values(obj, heads=self.heads))
        except _UnreadableError:
            return None
        return values if len(values) == count else None

    def report(self, path: Path, expected: str, got: str) -> None:
        self.found.append((path, expected, got))
        if len(self.found) >= MAX_VIOLATIONS:
            raise _FullError

    def read_map(self, obj: bytes, fields: tuple[Field, ...], path: Path) -> dict[str, object]:
        try:
            keys = _guard(lambda: self.doc.keys(obj, heads=self.heads))
        except _UnreadableError:
            self.report(path, "map", "unreadable map")
            return {}
        by_name = {f.name: f for f in fields}
        held = self.slots(obj, len(keys))
        known = None if held is None else dict(zip(keys, held, strict=True))
        out: dict[str, object] = {}
        for name in sorted(by_name.keys() | set(keys)):
            field = by_name.get(name)
            if field is None:
                self.report((*path, _clip(name)), "absent (not in the schema)", "unexpected field")
                continue
            slot: Slot | _Unread = _UNREAD if known is None else known.get(name)
            value = self.read_slot(obj, name, field, (*path, name), field.required, slot)
            if value is not _SKIP:
                out[name] = value
        return out

    def read_slot(
        self,
        obj: bytes,
        prop: str | int,
        field: Field,
        path: Path,
        required: bool,
        slot: Slot | _Unread,
    ) -> object:
        """One key's or index's value checked against ``field``; ``slot``: what
        ``Document.get`` returns for it, already read, or ``_UNREAD``."""
        if isinstance(slot, _Unread):
            try:
                got = _guard(lambda: self.doc.get(obj, prop, heads=self.heads))
            except _UnreadableError as exc:
                # The binding panics converting a timestamp beyond Python's datetime range.
                out_of_range = "out of range" in str(exc)
                problem = _OUT_OF_RANGE if out_of_range else _UNREADABLE
                self.report(path, _expected(field), problem)
                return _SKIP
        else:
            got = slot
        if got is None or (isinstance(got[0], tuple) and got[0][0] == ScalarType.Null):
            if required:
                self.report(path, _expected(field), "missing" if got is None else "null")
            return _SKIP
        if len(path) == 1:
            self.present.add(field.name)
        value, obj_id = got
        try:
            return self.read_value(field, value, obj_id, path)
        except _UnreadableError:
            self.report(path, _expected(field), _UNREADABLE)
            return _SKIP

    def read_value(self, field: Field, value: Value, obj_id: bytes, path: Path) -> object:
        kind = field.kind
        if kind in (FieldKind.STRING, FieldKind.TEXT, FieldKind.ENUM, FieldKind.REF):
            return self.read_string(field, value, obj_id, path)
        if kind is FieldKind.LIST and value == ObjType.List:
            return self.read_list(field, obj_id, path)
        if kind is FieldKind.MAP and value == ObjType.Map:
            return self.read_map(obj_id, field.fields, path)
        if isinstance(value, tuple):
            scalar = _read_scalar(kind, value[0], value[1])
            if scalar is not _SKIP:
                return self.check_range(field, scalar, path, value)
            if kind is FieldKind.TIMESTAMP and value[0] == ScalarType.Timestamp:
                self.report(path, _expected(field), _OUT_OF_RANGE)
                return _SKIP
        self.report(path, _expected(field), _describe(value))
        return _SKIP

    def read_list(self, field: Field, obj: bytes, path: Path) -> object:
        assert field.item is not None
        length = _guard(lambda: self.doc.length(obj, heads=self.heads))
        if length > MAX_LIST_ITEMS:
            self.report(path, f"list of at most {MAX_LIST_ITEMS} items", f"list of {length} items")
            return _SKIP
        held = self.slots(obj, length)
        items = (
            self.read_slot(obj, i, field.item, (*path, i), True, _UNREAD if held is None else slot)
            for i, slot in enumerate(held or [None] * length)
        )
        return [item for item in items if item is not _SKIP]

    def read_string(self, field: Field, value: Value, obj_id: bytes, path: Path) -> object:
        if value == ObjType.Text:
            source = "text"
            limit = field.max_length
            length = _guard(lambda: self.doc.length(obj_id, heads=self.heads))
            if limit is not None and length > limit:  # refuse before materialising it
                self.report(path, _too_long(field), f"text of {length} characters")
                return _SKIP
            text = _guard(lambda: self.doc.text(obj_id, heads=self.heads))
        elif (
            field.kind is not FieldKind.TEXT
            and isinstance(value, tuple)
            and value[0] == ScalarType.Str
            and isinstance(value[1], str)
        ):
            source, text = "str", value[1]
        else:
            self.report(path, _expected(field), _describe(value))
            return _SKIP
        problem = _string_problem(field, text, source)
        if problem is not None:
            self.report(path, *problem)
            return _SKIP
        return text

    def check_range(self, field: Field, number: object, path: Path, value: Value) -> object:
        low, high = field.minimum, field.maximum
        below = low is not None and isinstance(number, int | float) and number < low
        above = high is not None and isinstance(number, int | float) and number > high
        if below or above:
            self.report(path, _range(field), _describe(value))
            return _SKIP
        return number


def _read_scalar(kind: FieldKind, stype: ScalarType, raw: object) -> object:
    """The Python value of a scalar for a scalar kind, or _SKIP when the type is wrong."""
    if kind is FieldKind.INT and stype in _INTEGERS and isinstance(raw, int):
        return raw
    if kind is FieldKind.FLOAT and stype in _NUMBERS and isinstance(raw, int | float):
        number = float(raw)
        return number if math.isfinite(number) else _SKIP
    if kind is FieldKind.BOOL and stype == ScalarType.Boolean and isinstance(raw, bool):
        return raw
    if kind is FieldKind.TIMESTAMP and stype == ScalarType.Timestamp:
        moment = timestamp_value(raw)
        return _SKIP if moment is None else moment
    return _SKIP


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def timestamp_value(raw: object) -> datetime | None:
    """A timestamp as the binding returns it, as the aware UTC datetime the client wrote.

    The binding converts Automerge's integer milliseconds through a float of seconds into a
    naive *local* datetime, which is off by microseconds far from 1970 (9999-12-29 23:59:59.999
    comes back as ...59.998993): the local time is taken back to UTC and rounded to the
    millisecond, the precision Automerge stores. None when it cannot be converted.
    """
    if not isinstance(raw, datetime):
        return None
    return _utc_millisecond(raw)


@lru_cache(maxsize=16_384)
def _utc_millisecond(raw: datetime) -> datetime | None:
    """Remembered: every push of an entity validates its whole document again, reading the
    same timestamps, and the local-time conversion is the costly part of reading one."""
    try:
        moment = raw.astimezone(UTC)
        millis = (moment - _EPOCH + _MILLISECOND / 2) // _MILLISECOND
        return _EPOCH + millis * _MILLISECOND
    except (OverflowError, ValueError, OSError):
        return None


class _ScalarSet:
    """Membership among ScalarType values, which are not hashable."""

    def __init__(self, *types: ScalarType) -> None:
        self.types = types

    def __contains__(self, stype: object) -> bool:
        return any(stype == t for t in self.types)


_INTEGERS = _ScalarSet(ScalarType.Int, ScalarType.Uint)
_NUMBERS = _ScalarSet(ScalarType.F64, ScalarType.Int, ScalarType.Uint)


def _string_problem(field: Field, text: str, source: str) -> tuple[str, str] | None:
    if field.max_length is not None and len(text) > field.max_length:
        return _too_long(field), f"{source} of {len(text)} characters"
    if _NUL in text:
        return f"{_expected(field)} without NUL characters", f"{source} containing NUL"
    if field.kind is FieldKind.ENUM and text not in field.choices:
        return _expected(field), f"{source} {_short(text)}"
    if field.kind is FieldKind.REF and not is_valid_entity_id(text):
        return _expected(field), f"{source} {_short(text)}"
    return None


def _expected(field: Field) -> str:
    if field.kind is FieldKind.ENUM:
        return "one of " + ", ".join(field.choices)
    if field.kind is FieldKind.REF:
        return f"{field.ref} id"
    if field.kind is FieldKind.LIST and field.item is not None:
        return f"list of {_expected(field.item)}"
    return _KIND_NAMES[field.kind]


_KIND_NAMES = {
    FieldKind.STRING: "string",
    FieldKind.TEXT: "text",
    FieldKind.INT: "integer",
    FieldKind.FLOAT: "number",
    FieldKind.BOOL: "boolean",
    FieldKind.TIMESTAMP: "timestamp",
    FieldKind.MAP: "map",
}


def _range(field: Field) -> str:
    low, high = field.minimum, field.maximum
    if low is not None and high is not None:
        return f"{_expected(field)} from {low:g} to {high:g}"
    if low is not None:
        return f"{_expected(field)} of at least {low:g}"
    return f"{_expected(field)} of at most {high:g}"


def _too_long(field: Field) -> str:
    return f"{_expected(field)} of at most {field.max_length} characters"


def _describe(value: Value) -> str:
    """A short description of what the document holds, for ``SchemaViolation.got``."""
    if isinstance(value, ObjType):
        return str(value).rsplit(".", 1)[-1].lower()  # "text", "list", "map"
    stype, raw = value
    name = str(stype).rsplit(".", 1)[-1].lower()
    if stype == ScalarType.Str and isinstance(raw, str):
        return f"str {_short(raw)}"
    if stype in _NUMBERS:
        return f"{name} {raw!r}"
    if stype == ScalarType.Boolean:
        return f"boolean {'true' if raw else 'false'}"
    return name  # timestamp, null, bytes, counter, unknown


def _short(text: str) -> str:
    if len(text) <= _SHOWN_CHARS:
        return repr(text)
    return f"{text[:_SHOWN_CHARS]!r}... ({len(text)} characters)"


def _clip(name: str) -> str:
    return name if len(name) <= _SHOWN_CHARS else name[:_SHOWN_CHARS] + "..."


def _path(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(document)"
