"""Messages to frames and back: the codec of the sync protocol.

``encode`` turns a message into one msgpack map: key ``"t"`` holds the class's ``TYPE``, the
other keys are the dataclass's field names, nested records are maps, tuples are arrays and
bytes are msgpack ``bin``. ``decode_client`` and ``decode_server`` turn an untrusted frame
back into a message. For bad input they raise ``ProtocolViolation`` and nothing else; it
carries the ``ErrorCode`` the peer should be told and, for a push, the push's id.

Decoding never asks msgpack to build a map or an array. The C unpacker allocates an array's
slots from its header, before it reads any item: a 3 KB frame of nested headers that each
claim 65,535 items makes it allocate tens of megabytes, and its default ``max_array_len``
(the frame's length) lets an 8 MiB frame ask for gigabytes. So the reader below walks
containers itself: it reads their headers, bounds each count, and asks msgpack only for
scalars, from an ``Unpacker`` with ``max_array_len = max_map_len = max_ext_len = 0`` so that
no container or extension value can be built even by mistake. Strings and byte strings cost
at most their own length, which the frame length already bounds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from itertools import islice
from typing import Any, Final

import msgpack

from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.sync.errors import ErrorCode
from fieldsync.sync.messages import (
    CONFLICT_STATUSES,
    ChangeRecord,
    Changes,
    ClientMessage,
    ConflictRecord,
    Conflicts,
    EntityAccepted,
    EntityPush,
    EntityRejected,
    EntityResult,
    Error,
    Hello,
    Message,
    ProjectCursor,
    ProjectError,
    Push,
    PushResult,
    ServerMessage,
    SnapshotBegin,
    SnapshotChunk,
    SnapshotEnd,
    SnapshotEntity,
    Status,
    Subscribe,
    Synced,
    Unsubscribe,
    Welcome,
)

__all__ = [
    "MAX_CLIENT_ID_CHARS",
    "MAX_ENTITY_ID_CHARS",
    "MAX_ENTITY_TYPE_CHARS",
    "MAX_HELLO_PROJECTS",
    "MAX_HELLO_VERSIONS",
    "MAX_PROJECT_ID_CHARS",
    "MAX_TOKEN_CHARS",
    "ProtocolViolation",
    "decode_client",
    "decode_server",
    "encode",
    "max_server_frame_bytes",
]

MAX_TOKEN_CHARS: Final = 8192
MAX_CLIENT_ID_CHARS: Final = 128
MAX_PROJECT_ID_CHARS: Final = 64
MAX_ENTITY_TYPE_CHARS: Final = 64
MAX_ENTITY_ID_CHARS: Final = 64
MAX_HELLO_PROJECTS: Final = 100
MAX_HELLO_VERSIONS: Final = 32
MAX_USER_ID_CHARS: Final = 128  # welcome.user_id, welcome.session_id
MAX_CODE_CHARS: Final = 64  # error, project_error and entity result codes
MAX_LIMITS_KEYS: Final = 64  # welcome.limits
MAX_DETAILS_DEPTH: Final = 16  # nesting of an entity rejection's details
MAX_CONFLICT_ID_CHARS: Final = 64  # hex SHA-256
MAX_FIELD_NAME_CHARS: Final = 64
MAX_MESSAGE_KEYS: Final = 32  # top-level keys of any message, counting "t"
INT64_MAX: Final = 2**63 - 1


class ProtocolViolation(Exception):  # noqa: N818 (the peer violated the protocol)
    """A frame the peer sent is not a valid message; tell it ``code`` and ``message``."""

    def __init__(self, code: ErrorCode, message: str, push_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.push_id = push_id

    def to_error(self, *, fatal: bool = False) -> Error:
        return Error(self.code.value, self.message, fatal, self.push_id)

    def __repr__(self) -> str:
        return f"ProtocolViolation({self.code!r}, {self.message!r}, push_id={self.push_id!r})"


def max_server_frame_bytes(limits: Limits = DEFAULT_LIMITS) -> int:
    """The largest frame a server sends: a snapshot chunk can hold one maximal document."""
    return limits.max_frame_bytes + limits.max_document_bytes


# --- encoding ----------------------------------------------------------------------------
# One small function per type, written out: this runs for every change fanned out to every
# client, so no field reflection on the hot path. Keys follow the dataclass field order.


def _project_cursor(p: ProjectCursor) -> dict[str, object]:
    return {"project_id": p.project_id, "cursor": p.cursor}


def _hello(m: Hello) -> dict[str, object]:
    return {
        "t": Hello.TYPE,
        "versions": m.versions,
        "token": m.token,
        "client_id": m.client_id,
        "projects": [_project_cursor(p) for p in m.projects],
        "outbox_age_ms": m.outbox_age_ms,
    }


def _subscribe(m: Subscribe) -> dict[str, object]:
    return {"t": Subscribe.TYPE, "project": _project_cursor(m.project)}


def _unsubscribe(m: Unsubscribe) -> dict[str, object]:
    return {"t": Unsubscribe.TYPE, "project_id": m.project_id}


def _push(m: Push) -> dict[str, object]:
    return {
        "t": Push.TYPE,
        "push_id": m.push_id,
        "project_id": m.project_id,
        "entities": [
            {"entity_type": e.entity_type, "entity_id": e.entity_id, "changes": e.changes}
            for e in m.entities
        ],
    }


def _welcome(m: Welcome) -> dict[str, object]:
    return {
        "t": Welcome.TYPE,
        "version": m.version,
        "user_id": m.user_id,
        "session_id": m.session_id,
        "limits": m.limits,
    }


def _project_error(m: ProjectError) -> dict[str, object]:
    return {
        "t": ProjectError.TYPE,
        "project_id": m.project_id,
        "code": m.code,
        "message": m.message,
    }


def _snapshot_begin(m: SnapshotBegin) -> dict[str, object]:
    return {
        "t": SnapshotBegin.TYPE,
        "project_id": m.project_id,
        "cursor": m.cursor,
        "entity_count": m.entity_count,
    }


def _snapshot_entity(e: SnapshotEntity) -> dict[str, object]:
    return {"entity_type": e.entity_type, "entity_id": e.entity_id, "document": e.document}


def _snapshot_chunk(m: SnapshotChunk) -> dict[str, object]:
    return {
        "t": SnapshotChunk.TYPE,
        "project_id": m.project_id,
        "entities": [_snapshot_entity(e) for e in m.entities],
    }


def _snapshot_end(m: SnapshotEnd) -> dict[str, object]:
    return {"t": SnapshotEnd.TYPE, "project_id": m.project_id, "cursor": m.cursor}


def _changes(m: Changes) -> dict[str, object]:
    return {
        "t": Changes.TYPE,
        "project_id": m.project_id,
        "changes": [
            {
                "seq": c.seq,
                "entity_type": c.entity_type,
                "entity_id": c.entity_id,
                "change": c.change,
            }
            for c in m.changes
        ],
    }


def _conflicts(m: Conflicts) -> dict[str, object]:
    return {
        "t": Conflicts.TYPE,
        "project_id": m.project_id,
        "conflicts": [
            {
                "conflict_id": c.conflict_id,
                "status": c.status,
                "kind": c.kind,
                "entity_ids": list(c.entity_ids),
                "fields": list(c.fields),
                "opened_seq": c.opened_seq,
                "resolved_seq": c.resolved_seq,
                "details": c.details,
            }
            for c in m.conflicts
        ],
    }


def _synced(m: Synced) -> dict[str, object]:
    return {"t": Synced.TYPE, "project_id": m.project_id, "cursor": m.cursor}


def _entity_result(r: EntityResult) -> dict[str, object]:
    if isinstance(r, EntityAccepted):
        return {"ok": True, "entity_id": r.entity_id, "seqs": r.seqs}
    return {
        "ok": False,
        "entity_id": r.entity_id,
        "code": r.code,
        "message": r.message,
        "details": r.details,
    }


def _push_result(m: PushResult) -> dict[str, object]:
    return {
        "t": PushResult.TYPE,
        "push_id": m.push_id,
        "project_id": m.project_id,
        "results": [_entity_result(r) for r in m.results],
    }


def _error(m: Error) -> dict[str, object]:
    return {
        "t": Error.TYPE,
        "code": m.code,
        "message": m.message,
        "fatal": m.fatal,
        "push_id": m.push_id,
    }


def _status(m: Status) -> dict[str, object]:
    return {"t": Status.TYPE, "state": m.state, "code": m.code, "message": m.message}


_ENCODERS: Final[dict[type[Any], Callable[[Any], dict[str, object]]]] = {
    Changes: _changes,
    Conflicts: _conflicts,
    Hello: _hello,
    Subscribe: _subscribe,
    Unsubscribe: _unsubscribe,
    Push: _push,
    Welcome: _welcome,
    ProjectError: _project_error,
    SnapshotBegin: _snapshot_begin,
    SnapshotChunk: _snapshot_chunk,
    SnapshotEnd: _snapshot_end,
    Synced: _synced,
    PushResult: _push_result,
    Error: _error,
    Status: _status,
}


def encode_snapshot_entity(entity: SnapshotEntity) -> bytes:
    """One entity record of the HTTP snapshot body: the map a ``snapshot_chunk`` holds."""
    record: bytes = msgpack.packb(_snapshot_entity(entity), use_bin_type=True)
    return record


def encode(message: Message) -> bytes:
    """One frame: a msgpack map with ``"t"`` first, then the fields in declaration order."""
    # packb builds a Packer per call (about 0.3 µs more than reusing one), which keeps
    # encode safe to call from several threads, as the client SDK may.
    frame: bytes = msgpack.packb(_ENCODERS[type(message)](message), use_bin_type=True)
    return frame


# --- decoding: walking one frame ----------------------------------------------------------


def _kind_of(first: int) -> str:
    """What a msgpack value is, from its first byte (the format table of the msgpack spec)."""
    if first <= 0x7F or first >= 0xE0 or 0xCC <= first <= 0xD3:
        return "int"
    if first <= 0x8F or first in (0xDE, 0xDF):
        return "map"
    if first <= 0x9F or first in (0xDC, 0xDD):
        return "array"
    if first <= 0xBF or 0xD9 <= first <= 0xDB:
        return "str"
    if 0xC4 <= first <= 0xC6:
        return "bytes"
    if 0xC7 <= first <= 0xC9 or 0xD4 <= first <= 0xD8:
        return "ext"
    names = {0xC0: "nil", 0xC2: "bool", 0xC3: "bool", 0xCA: "float", 0xCB: "float"}
    return names.get(first, "invalid")  # 0xC1 is never used


_KIND: Final[tuple[str, ...]] = tuple(_kind_of(b) for b in range(256))


class _FieldError(Exception):
    """A well-formed value that is not what the message needs.

    The location is collected innermost first while the error travels out through the
    containers, so valid input never pays for building paths.
    """

    def __init__(self, message: str, *path: str) -> None:
        super().__init__(message)
        self.message = message
        self.path = list(path)

    def at(self, part: str) -> _FieldError:
        self.path.append(part)
        return self

    def where(self, root: str) -> str:
        return root + "".join(reversed(self.path))


class _BulkReadError(Exception):
    """The bulk reading of an array met something else; read the frame again precisely."""


_BYTES_ONLY: Final = frozenset({bytes})


def _malformed(message: str) -> ProtocolViolation:
    return ProtocolViolation(ErrorCode.MALFORMED_FRAME, message)


class _Reader:
    """One frame's values in order; each value's kind is checked before msgpack reads it."""

    __slots__ = ("_buf", "_size", "_unpacker", "limits", "precise")

    def __init__(self, frame: bytes, limits: Limits, *, precise: bool) -> None:
        self._buf = frame
        self._size = len(frame)
        self.limits = limits
        self.precise = precise
        # Zero container and ext lengths: msgpack may build scalars only (see the module
        # docstring); maps and arrays are walked through their headers below.
        self._unpacker: Any = msgpack.Unpacker(
            raw=False,
            strict_map_key=True,
            max_buffer_size=max(self._size, 1),
            max_str_len=self._size,
            max_bin_len=self._size,
            max_array_len=0,
            max_map_len=0,
            max_ext_len=0,
        )
        self._unpacker.feed(frame)

    def restart(self) -> _Reader:
        return _Reader(self._buf, self.limits, precise=self.precise)

    def trailing(self) -> int:
        return self._size - int(self._unpacker.tell())

    def kind(self) -> str:
        pos: int = self._unpacker.tell()
        if pos >= self._size:
            raise _malformed("the frame ends inside a value")
        kind = _KIND[self._buf[pos]]
        if kind == "ext":
            raise _malformed(f"byte {pos}: msgpack extension types are not used by this protocol")
        if kind == "invalid":
            raise _malformed(f"byte {pos}: 0xc1 is not msgpack")
        return kind

    def _expect(self, wanted: str) -> None:
        got = self.kind()
        if got != wanted:
            raise _FieldError(f"expected {wanted}, got {got}")

    def count(self, wanted: str) -> int:
        """The item count of the map or array that comes next, without consuming it."""
        self._expect(wanted)
        pos: int = self._unpacker.tell()
        first = self._buf[pos]
        if first in (0xDC, 0xDE):
            size = 2
        elif first in (0xDD, 0xDF):
            size = 4
        else:
            return first & 0x0F
        if pos + 1 + size > self._size:
            raise _malformed("the frame ends inside a value")
        return int.from_bytes(self._buf[pos + 1 : pos + 1 + size], "big")

    def open(self, wanted: str, max_items: int | None = None) -> int:
        """Consume a map or array header; return its item count."""
        count = self.count(wanted)
        if max_items is not None and count > max_items:
            raise _FieldError(f"at most {max_items} items, got {count}")
        if wanted == "map":
            self._unpacker.read_map_header()
        else:
            self._unpacker.read_array_header()
        return count

    def skip(self) -> None:
        self._unpacker.skip()  # walks without building anything, whatever the limits

    def key(self) -> str:
        kind = self.kind()
        if kind != "str":
            raise _malformed(f"map keys must be strings, got {kind}")
        value: str = self._unpacker.unpack()
        return value

    def string(self, max_chars: int | None = None) -> str:
        self._expect("str")
        value: str = self._unpacker.unpack()
        if max_chars is not None and len(value) > max_chars:
            raise _FieldError(f"at most {max_chars} characters, got {len(value)}")
        return value

    def blob(self) -> bytes:
        self._expect("bytes")
        value: bytes = self._unpacker.unpack()
        return value

    def uint(self) -> int:
        """A cursor, seq, id or count: a non-negative int64 (bool is not an int here)."""
        self._expect("int")
        value: int = self._unpacker.unpack()
        if value < 0:
            raise _FieldError(f"must be >= 0, got {value}")
        if value > INT64_MAX:
            raise _FieldError(f"must fit in a signed 64-bit integer, got {value}")
        return value

    def optional_uint(self) -> int | None:
        if self.kind() == "nil":
            self._unpacker.unpack()
            return None
        return self.uint()

    def bulk_blobs(self, count: int) -> tuple[bytes, ...]:
        """``count`` byte strings, read by msgpack in one go (about 3x faster than one by
        one); anything else among them raises ``_BulkReadError`` for a precise second reading."""
        try:
            items = tuple(islice(self._unpacker, count))
        except (ValueError, msgpack.UnpackException):
            raise _BulkReadError from None
        if len(items) != count or not set(map(type, items)) <= _BYTES_ONLY:
            raise _BulkReadError
        return items

    def boolean(self) -> bool:
        self._expect("bool")
        value: bool = self._unpacker.unpack()
        return value

    def any_value(self, depth: int = 0) -> object:
        """A free-form value (an entity rejection's details), bounded in depth."""
        kind = self.kind()
        if kind not in ("array", "map"):
            return self._unpacker.unpack()
        if depth >= MAX_DETAILS_DEPTH:
            raise _FieldError(f"nested more than {MAX_DETAILS_DEPTH} levels deep")
        if kind == "array":
            items: list[object] = []
            for index in range(self.open("array")):
                try:
                    items.append(self.any_value(depth + 1))
                except _FieldError as exc:
                    raise exc.at(f"[{index}]") from None
            return items
        mapping: dict[str, object] = {}
        for _ in range(self.open("map")):
            key = self.key()
            if key in mapping:
                raise _FieldError(f"key {key!r} appears twice")
            try:
                mapping[key] = self.any_value(depth + 1)
            except _FieldError as exc:
                raise exc.at(f".{key}") from None
        return mapping


# --- decoding: the shape of every message ---------------------------------------------------

_Parse = Callable[[_Reader], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class _Shape:
    """A record on the wire: how to read each field, which ones must be there, the result."""

    fields: Mapping[str, _Parse]
    build: Callable[..., Any]
    required: frozenset[str]


def _shape(cls: type[Any], build: Callable[..., Any] | None = None, **fields: _Parse) -> _Shape:
    """The shape of dataclass ``cls``: a field with a default may be left out on the wire."""
    declared = {f.name: f for f in dataclasses.fields(cls)}
    assert declared.keys() == fields.keys(), cls
    required = frozenset(
        name
        for name, f in declared.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    return _Shape(fields, build or cls, required)


def _record_fields(
    r: _Reader, count: int, shape: _Shape, type_seen: bool | None = None
) -> dict[str, Any]:
    """Read ``count`` key/value pairs of a map into ``shape``'s fields.

    ``type_seen`` is None for nested records; at the top level it says whether the ``"t"``
    key (already read and checked) was consumed, and a second one is refused.
    """
    values: dict[str, Any] = {}
    for _ in range(count):
        key = r.key()
        if type_seen is not None and key == "t":
            if type_seen:
                raise _FieldError("key 't' appears twice")
            type_seen = True
            r.skip()
            continue
        if key in values:
            raise _FieldError(f"field {key!r} appears twice")
        parse = shape.fields.get(key)
        if parse is None:
            raise _FieldError(f"unexpected field {key[:64]!r} (fields: {', '.join(shape.fields)})")
        try:
            values[key] = parse(r)
        except _FieldError as exc:
            raise exc.at(f".{key}") from None
    for name in shape.fields:
        if name in shape.required and name not in values:
            raise _FieldError(f"missing field {name!r}")
    return values


def _record(shape: _Shape) -> _Parse:
    def parse(r: _Reader) -> Any:
        return shape.build(**_record_fields(r, r.open("map"), shape))

    return parse


def _array(item: _Parse, max_items: int | None = None) -> _Parse:
    def parse(r: _Reader) -> tuple[Any, ...]:
        items = []
        for index in range(r.open("array", max_items)):
            try:
                items.append(item(r))
            except _FieldError as exc:
                raise exc.at(f"[{index}]") from None
        return tuple(items)

    return parse


def _blobs(r: _Reader) -> tuple[bytes, ...]:
    """An array of byte strings (a push's changes): the bulk of a frame, so read in bulk."""
    count = r.open("array")
    if not r.precise:
        return r.bulk_blobs(count)
    items = []
    for index in range(count):
        try:
            items.append(r.blob())
        except _FieldError as exc:
            raise exc.at(f"[{index}]") from None
    return tuple(items)


def _string(max_chars: int | None = None) -> _Parse:
    return lambda r: r.string(max_chars)


_project_id = _string(MAX_PROJECT_ID_CHARS)
_entity_type = _string(MAX_ENTITY_TYPE_CHARS)
_entity_id = _string(MAX_ENTITY_ID_CHARS)
_code = _string(MAX_CODE_CHARS)
_text = _string()


def _uint(r: _Reader) -> int:
    return r.uint()


def _optional_uint(r: _Reader) -> int | None:
    return r.optional_uint()


def _boolean(r: _Reader) -> bool:
    return r.boolean()


def _blob(r: _Reader) -> bytes:
    return r.blob()


# client to server

_PROJECT_CURSOR = _shape(ProjectCursor, project_id=_project_id, cursor=_optional_uint)
_project_cursor_record = _record(_PROJECT_CURSOR)
_project_cursor_list = _array(_project_cursor_record, MAX_HELLO_PROJECTS)


def _hello_projects(r: _Reader) -> tuple[ProjectCursor, ...]:
    projects: tuple[ProjectCursor, ...] = _project_cursor_list(r)
    first: dict[str, int] = {}
    for index, project in enumerate(projects):
        earlier = first.setdefault(project.project_id, index)
        if earlier != index:
            raise _FieldError(f"the same project as [{earlier}]", ".project_id", f"[{index}]")
    return projects


def _push_entities(r: _Reader) -> tuple[EntityPush, ...] | _TooManyEntities:
    count = r.count("array")
    if count > r.limits.max_entities_per_batch:
        r.skip()  # the push id may come later in the map; it goes into the error
        return _TooManyEntities(count)
    entities: tuple[EntityPush, ...] = _entity_push_list(r)
    return entities


class _TooManyEntities:
    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count


class _TooManyEntitiesError(Exception):
    def __init__(self, push_id: int, count: int) -> None:
        super().__init__(push_id, count)
        self.push_id = push_id
        self.count = count


def _build_push(push_id: int, project_id: str, entities: Any) -> Push:
    if isinstance(entities, _TooManyEntities):
        raise _TooManyEntitiesError(push_id, entities.count)
    return Push(push_id, project_id, entities)


_entity_push_list = _array(
    _record(_shape(EntityPush, entity_type=_entity_type, entity_id=_entity_id, changes=_blobs))
)

_CLIENT_SHAPES: Final[Mapping[str, _Shape]] = {
    Hello.TYPE: _shape(
        Hello,
        versions=_array(_uint, MAX_HELLO_VERSIONS),
        token=_string(MAX_TOKEN_CHARS),
        client_id=_string(MAX_CLIENT_ID_CHARS),
        projects=_hello_projects,
        outbox_age_ms=_optional_uint,
    ),
    Subscribe.TYPE: _shape(Subscribe, project=_project_cursor_record),
    Unsubscribe.TYPE: _shape(Unsubscribe, project_id=_project_id),
    Push.TYPE: _shape(
        Push, _build_push, push_id=_uint, project_id=_project_id, entities=_push_entities
    ),
}


# server to client


def _limits_map(r: _Reader) -> dict[str, int]:
    limits: dict[str, int] = {}
    for _ in range(r.open("map", MAX_LIMITS_KEYS)):
        key = r.key()
        if key in limits:
            raise _FieldError(f"key {key!r} appears twice")
        try:
            limits[key] = r.uint()
        except _FieldError as exc:
            raise exc.at(f".{key}") from None
    return limits


def _details(r: _Reader) -> dict[str, object]:
    if r.kind() != "map":
        raise _FieldError(f"expected map, got {r.kind()}")
    details = r.any_value()
    assert isinstance(details, dict)
    return details


def _conflict_status(r: _Reader) -> str:
    status = r.string(MAX_CODE_CHARS)
    if status not in CONFLICT_STATUSES:
        raise _FieldError(f"unknown conflict status {status!r}")
    return status


_ACCEPTED_FIELDS: Final = frozenset({"entity_id", "seqs"})
_REJECTED_FIELDS: Final = frozenset({"entity_id", "code", "message", "details"})


def _build_result(ok: bool, **fields: Any) -> EntityResult:
    """An entity result is tagged by ``ok``: true for accepted, false for rejected."""
    allowed, required = (
        (_ACCEPTED_FIELDS, _ACCEPTED_FIELDS)
        if ok
        else (_REJECTED_FIELDS, _REJECTED_FIELDS - {"details"})
    )
    for name in fields:
        if name not in allowed:
            raise _FieldError(f"unexpected field {name!r} in a result with ok={ok}")
    for name in sorted(required):
        if name not in fields:
            raise _FieldError(f"missing field {name!r} in a result with ok={ok}")
    return EntityAccepted(**fields) if ok else EntityRejected(**fields)


_RESULT = _Shape(
    {
        "ok": _boolean,
        "entity_id": _entity_id,
        "seqs": _array(_uint),
        "code": _code,
        "message": _text,
        "details": _details,
    },
    _build_result,
    frozenset({"ok"}),
)

_SERVER_SHAPES: Final[Mapping[str, _Shape]] = {
    Welcome.TYPE: _shape(
        Welcome,
        version=_uint,
        user_id=_string(MAX_USER_ID_CHARS),
        session_id=_string(MAX_USER_ID_CHARS),
        limits=_limits_map,
    ),
    ProjectError.TYPE: _shape(ProjectError, project_id=_project_id, code=_code, message=_text),
    SnapshotBegin.TYPE: _shape(
        SnapshotBegin, project_id=_project_id, cursor=_uint, entity_count=_uint
    ),
    SnapshotChunk.TYPE: _shape(
        SnapshotChunk,
        project_id=_project_id,
        entities=_array(
            _record(
                _shape(
                    SnapshotEntity,
                    entity_type=_entity_type,
                    entity_id=_entity_id,
                    document=_blob,
                )
            )
        ),
    ),
    SnapshotEnd.TYPE: _shape(SnapshotEnd, project_id=_project_id, cursor=_uint),
    Changes.TYPE: _shape(
        Changes,
        project_id=_project_id,
        changes=_array(
            _record(
                _shape(
                    ChangeRecord,
                    seq=_uint,
                    entity_type=_entity_type,
                    entity_id=_entity_id,
                    change=_blob,
                )
            )
        ),
    ),
    Conflicts.TYPE: _shape(
        Conflicts,
        project_id=_project_id,
        conflicts=_array(
            _record(
                _shape(
                    ConflictRecord,
                    conflict_id=_string(MAX_CONFLICT_ID_CHARS),
                    status=_conflict_status,
                    kind=_code,
                    entity_ids=_array(_entity_id),
                    fields=_array(_string(MAX_FIELD_NAME_CHARS)),
                    opened_seq=_uint,
                    resolved_seq=_optional_uint,
                    details=_details,
                )
            )
        ),
    ),
    Synced.TYPE: _shape(Synced, project_id=_project_id, cursor=_uint),
    PushResult.TYPE: _shape(
        PushResult, push_id=_uint, project_id=_project_id, results=_array(_record(_RESULT))
    ),
    Error.TYPE: _shape(Error, code=_code, message=_text, fatal=_boolean, push_id=_optional_uint),
    Status.TYPE: _shape(Status, state=_code, code=_code, message=_text),
}


# --- decoding: the entry points ------------------------------------------------------------


def _message_type(r: _Reader, shapes: Mapping[str, _Shape], sender: str) -> tuple[str, int, int]:
    """Read keys up to ``"t"``: the type, the index of its key and the number of keys."""
    kind = r.kind()
    if kind != "map":
        raise _malformed(f"a frame must hold one msgpack map, got {kind}")
    count = r.open("map")
    if count > MAX_MESSAGE_KEYS:
        raise ProtocolViolation(
            ErrorCode.INVALID_MESSAGE, f"a message has at most {MAX_MESSAGE_KEYS} keys"
        )
    for index in range(count):
        if r.key() != "t":
            r.skip()
            continue
        kind = r.kind()
        if kind != "str":
            raise ProtocolViolation(
                ErrorCode.INVALID_MESSAGE, f"'t' must be a string naming the type, got {kind}"
            )
        name = r.string()
        if name not in shapes:
            raise ProtocolViolation(
                ErrorCode.UNKNOWN_MESSAGE_TYPE,
                f"unknown message type {name[:64]!r}; a {sender} sends " + ", ".join(shapes),
            )
        return name, index, count
    raise ProtocolViolation(ErrorCode.INVALID_MESSAGE, "the map has no 't' key naming its type")


def _decode(
    frame: bytes | str, limits: Limits, max_bytes: int, shapes: Mapping[str, _Shape], sender: str
) -> Any:
    if isinstance(frame, str):
        raise _malformed("text frames are not part of the protocol: send binary frames")
    if not isinstance(frame, bytes):
        if not isinstance(frame, bytearray | memoryview):
            raise _malformed(f"a frame is bytes, not {type(frame).__name__}")
        frame = bytes(frame)
    if len(frame) > max_bytes:
        raise ProtocolViolation(
            ErrorCode.FRAME_TOO_LARGE,
            f"the frame has {len(frame)} bytes; at most {max_bytes} are allowed",
            _oversized_push_id(frame, limits) if sender == "client" else None,
        )
    if not frame:
        raise _malformed("the frame is empty")
    try:
        return _read_message(_Reader(frame, limits, precise=False), shapes, sender)
    except _BulkReadError:
        # Something in a bulk array was not what it should be: find out exactly what.
        return _read_message(_Reader(frame, limits, precise=True), shapes, sender)


def _read_message(r: _Reader, shapes: Mapping[str, _Shape], sender: str) -> Any:
    name = "message"
    try:
        name, type_index, count = _message_type(r, shapes, sender)
        shape = shapes[name]
        if type_index == 0:  # the usual order: go on from here
            values = _record_fields(r, count - 1, shape, type_seen=True)
            rest = r
        else:  # "t" came later: read the map again, now knowing what it is
            rest = r.restart()
            values = _record_fields(rest, rest.open("map"), shape, type_seen=False)
        message = shape.build(**values)
        if rest.trailing():
            raise _malformed(f"{rest.trailing()} bytes follow the message")
        return message
    except ProtocolViolation as exc:
        violation = exc
    except _FieldError as exc:
        violation = ProtocolViolation(
            ErrorCode.INVALID_MESSAGE, f"{exc.where(name)}: {exc.message}"
        )
    except _TooManyEntitiesError as exc:
        violation = ProtocolViolation(
            ErrorCode.TOO_MANY_ENTITIES,
            f"push.entities: at most {r.limits.max_entities_per_batch} entities per push, "
            f"got {exc.count}",
            exc.push_id,
        )
    except msgpack.OutOfData:
        violation = _malformed("the frame ends inside a value")
    except UnicodeDecodeError:
        violation = _malformed("a string is not valid UTF-8")
    except msgpack.StackError:
        violation = _malformed("values are nested too deeply")
    except (ValueError, msgpack.UnpackException) as exc:
        # Whatever else msgpack itself finds wrong with the bytes.
        violation = _malformed(f"not valid msgpack: {str(exc) or type(exc).__name__}")
    if name == Push.TYPE and violation.push_id is None:
        # So that the client knows which of its pushes will get no result.
        violation.push_id = _readable_push_id(r.restart())
    raise violation


def _oversized_push_id(frame: bytes, limits: Limits) -> int | None:
    """The push id of a frame too large to decode, if it is a push whose id can be read:
    its top-level keys are walked and every value but ``t`` and ``push_id`` is skipped
    unread, so the client learns which push will get no result."""
    kind: str | None = None
    push_id: int | None = None
    r = _Reader(frame, limits, precise=True)
    try:
        for _ in range(r.open("map")):
            key = r.key()
            if key == "t":
                kind = r.string()
            elif key == "push_id":
                push_id = r.uint()
            else:
                r.skip()
            if kind is not None and push_id is not None:
                break
    except (ProtocolViolation, _FieldError, ValueError, msgpack.UnpackException):
        pass
    return push_id if kind == Push.TYPE else None


def _readable_push_id(r: _Reader) -> int | None:
    """The push id of a push that is broken elsewhere, if it can be read."""
    try:
        for _ in range(r.open("map")):
            if r.key() == "push_id":
                return r.uint()
            r.skip()
    except (ProtocolViolation, _FieldError, ValueError, msgpack.UnpackException):
        pass
    return None


def decode_client(frame: bytes | str, limits: Limits = DEFAULT_LIMITS) -> ClientMessage:
    """A message from a client; raises ``ProtocolViolation`` and nothing else."""
    message: ClientMessage = _decode(
        frame, limits, limits.max_frame_bytes, _CLIENT_SHAPES, "client"
    )
    return message


def decode_server(frame: bytes | str, limits: Limits = DEFAULT_LIMITS) -> ServerMessage:
    """A message from the server; raises ``ProtocolViolation`` and nothing else."""
    message: ServerMessage = _decode(
        frame, limits, max_server_frame_bytes(limits), _SERVER_SHAPES, "server"
    )
    return message
