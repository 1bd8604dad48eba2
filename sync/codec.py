"""Messages to frames and back: the codec of the sync protocol.

``encode`` turns a message into one msgpack map: key ``"t"`` holds the class's ``TYPE``, the
other keys are its fields in declaration order, nested records are maps, tuples are arrays
and bytes are msgpack ``bin``. ``decode_client`` and ``decode_server`` turn an untrusted
frame back into a message, ``decode_snapshot_record`` one record of the HTTP snapshot body.
For bad input they raise ``ProtocolViolation`` and nothing else; it carries the
``ErrorCode`` the peer should be told and, for a push, the push's id.

Decoding is one pass of msgspec, in C, against the records of ``sync.messages``: a tagged
union on ``"t"``, exact types (bin is not str, a bool is not an int), the records' bounds,
no unknown fields, no extension types, no trailing bytes. It allocates for an array only as
its items arrive (at most 16 slots ahead) and checks each declared length against the bytes
left, so a few KB of headers that claim billions of items cost nothing; nesting is bounded
by the interpreter's recursion limit. What a type cannot say is checked after it:

- a key repeated in one map (msgspec keeps the last value). A frame that is byte for byte
  what ``encode`` writes for the decoded message cannot have one, so only other frames,
  rare since both SDKs write canonical frames, are searched for one
  (``refusals.check_repeated_keys``, which leaves the values that hold no map to msgspec);
- each project at most once in a hello, a known conflict status, free-form details at
  most ``MAX_DETAILS_DEPTH`` deep with str keys and no timestamps, a push result's entries
  tagged by ``ok``. The entity count of a push is a bound of the limits in force, so each
  ``Limits`` gets its own decoder and a huge count is refused before anything is read.

A refused frame is explained by ``sync.refusals``: the path of the field and what was
found there (``push.entities[0].changes[2]: expected bytes, got str``), read from the
frame's headers, and the push it was.
"""

from __future__ import annotations

import datetime
import functools
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Final

import msgspec
from msgspec import UNSET, Meta, UnsetType

from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.sync import scan
from fieldsync.sync.errors import ErrorCode, ProtocolViolation
from fieldsync.sync.messages import (  # the MAX_ bounds: contract/protocol.json lists them
    CONFLICT_STATUSES,
    INT64_MAX,
    MAX_CLIENT_ID_CHARS,
    MAX_CLIENT_VERSION_CHARS,
    MAX_CODE_CHARS,
    MAX_CONFLICT_ID_CHARS,
    MAX_DETAILS_DEPTH,
    MAX_ENTITY_ID_CHARS,
    MAX_ENTITY_TYPE_CHARS,
    MAX_FIELD_NAME_CHARS,
    MAX_HELLO_PROJECTS,
    MAX_HELLO_VERSIONS,
    MAX_LIMITS_KEYS,
    MAX_MESSAGE_KEYS,
    MAX_PROJECT_ID_CHARS,
    MAX_TOKEN_CHARS,
    MAX_USER_ID_CHARS,
    Changes,
    ClientMessage,
    Code,
    Conflicts,
    Details,
    EntityAccepted,
    EntityId,
    EntityPush,
    EntityRejected,
    EntityResult,
    Error,
    Hello,
    Message,
    ProjectError,
    ProjectId,
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
    UInt,
    Unsubscribe,
    Welcome,
)
from fieldsync.sync.refusals import (
    EXTENSIONS,
    ExtensionValue,
    Schema,
    check_repeated_keys,
    explain,
    malformed,
    oversized_push_id,
    readable_push_id,
    refuse_extension,
    render,
)

__all__ = [
    "INT64_MAX",
    "MAX_CLIENT_ID_CHARS",
    "MAX_CLIENT_VERSION_CHARS",
    "MAX_CODE_CHARS",
    "MAX_CONFLICT_ID_CHARS",
    "MAX_DETAILS_DEPTH",
    "MAX_ENTITY_ID_CHARS",
    "MAX_ENTITY_TYPE_CHARS",
    "MAX_FIELD_NAME_CHARS",
    "MAX_HELLO_PROJECTS",
    "MAX_HELLO_VERSIONS",
    "MAX_LIMITS_KEYS",
    "MAX_MESSAGE_KEYS",
    "MAX_PROJECT_ID_CHARS",
    "MAX_TOKEN_CHARS",
    "MAX_USER_ID_CHARS",
    "ProtocolViolation",
    "SnapshotRecord",
    "decode_client",
    "decode_server",
    "decode_snapshot_record",
    "encode",
    "encode_snapshot_entity",
    "max_server_frame_bytes",
]

SnapshotRecord = SnapshotBegin | SnapshotEntity | Conflicts | SnapshotEnd


def max_server_frame_bytes(limits: Limits = DEFAULT_LIMITS) -> int:
    """The largest frame a server sends: a snapshot chunk can hold one maximal document."""
    return limits.max_frame_bytes + limits.max_document_bytes


# --- push results on the wire ------------------------------------------------------------
# An entity result is a map tagged by "ok", a bool: msgspec tags only by str or int, so a
# push_result travels as this record, whose entries carry the fields of either kind.


class _EntityResultFrame(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ok: bool
    entity_id: EntityId
    seqs: tuple[UInt, ...] | UnsetType = UNSET
    code: Code | UnsetType = UNSET
    message: str | UnsetType = UNSET
    details: Details | UnsetType = UNSET


class _PushResultFrame(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="t", tag="push_result"
):
    TYPE: ClassVar[str] = PushResult.TYPE
    push_id: UInt
    project_id: ProjectId
    results: tuple[_EntityResultFrame, ...]


_ACCEPTED_FIELDS: Final = frozenset({"entity_id", "seqs"})
_REJECTED_FIELDS: Final = frozenset({"entity_id", "code", "message", "details"})


def _result_frame(result: EntityResult) -> _EntityResultFrame:
    if isinstance(result, EntityAccepted):
        return _EntityResultFrame(True, result.entity_id, seqs=result.seqs)
    return _EntityResultFrame(
        False, result.entity_id, code=result.code, message=result.message, details=result.details
    )


def _entity_result(frame: _EntityResultFrame, index: int) -> EntityResult:
    fields = _ACCEPTED_FIELDS | _REJECTED_FIELDS
    given = {name for name in fields if getattr(frame, name) is not UNSET}
    allowed, required = (
        (_ACCEPTED_FIELDS, _ACCEPTED_FIELDS)
        if frame.ok
        else (_REJECTED_FIELDS, _REJECTED_FIELDS - {"details"})
    )
    where = ("results", index)
    if unexpected := sorted(given - allowed):
        problem = f"unexpected field {unexpected[0]!r}"
        raise _RuleError(where, f"{problem} in a result with ok={frame.ok}")
    if missing := sorted(required - given):
        raise _RuleError(where, f"missing field {missing[0]!r} in a result with ok={frame.ok}")
    if frame.ok:
        assert not isinstance(frame.seqs, UnsetType)
        return EntityAccepted(frame.entity_id, frame.seqs)
    assert not isinstance(frame.code, UnsetType)
    assert not isinstance(frame.message, UnsetType)
    details = {} if isinstance(frame.details, UnsetType) else frame.details
    _check_details(details, (*where, "details"))
    return EntityRejected(frame.entity_id, frame.code, frame.message, details)


# --- encoding ----------------------------------------------------------------------------

_ENCODER: Final = msgspec.msgpack.Encoder()  # keeps no state between calls: thread-safe


def encode(message: Message) -> bytes:
    """One frame: a msgpack map with ``"t"`` first, then the fields in declaration order."""
    if type(message) is PushResult:
        return _ENCODER.encode(
            _PushResultFrame(
                message.push_id, message.project_id, tuple(map(_result_frame, message.results))
            )
        )
    return _ENCODER.encode(message)


def encode_snapshot_entity(entity: SnapshotEntity) -> bytes:
    """One entity record of the HTTP snapshot body: the map a ``snapshot_chunk`` holds (the
    body's other records are messages, written by ``encode``)."""
    return _ENCODER.encode(entity)


# --- what a decoded message must still be checked for --------------------------------------


class _RuleError(Exception):
    """A rule the types cannot state is broken at ``path``, or (with ``code``
    MALFORMED_FRAME and no path) the frame holds what msgpack rules out for this protocol."""

    def __init__(
        self,
        path: tuple[str | int, ...],
        message: str,
        code: ErrorCode = ErrorCode.INVALID_MESSAGE,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.message = message
        self.code = code

    def violation(self, root: str) -> ProtocolViolation:
        if self.code is not ErrorCode.INVALID_MESSAGE:
            return ProtocolViolation(self.code, self.message)
        return ProtocolViolation(self.code, f"{root}{render(self.path)}: {self.message}")


_KEY_KINDS: Final[Mapping[type, str]] = {
    int: "int", float: "float", bool: "bool", bytes: "bytes", tuple: "array", type(None): "nil",
}  # fmt: skip


def _check_details(value: object, path: tuple[str | int, ...], depth: int = 0) -> None:
    """Free-form details: str keys, no timestamp (msgspec turns one into a datetime; other
    extensions never get this far), at most ``MAX_DETAILS_DEPTH`` levels of containers."""
    if isinstance(value, dict | list):
        if depth >= MAX_DETAILS_DEPTH:
            raise _RuleError(path, f"nested more than {MAX_DETAILS_DEPTH} levels deep")
        if isinstance(value, list):
            for index, item in enumerate(value):
                _check_details(item, (*path, index), depth + 1)
            return
        for key, item in value.items():
            if type(key) is not str:
                kind = _KEY_KINDS.get(type(key), "map")
                raise _RuleError(
                    (), f"map keys must be strings, got {kind}", ErrorCode.MALFORMED_FRAME
                )
            _check_details(item, (*path, key), depth + 1)
    elif isinstance(value, datetime.datetime):
        raise _RuleError((), EXTENSIONS, ErrorCode.MALFORMED_FRAME)


def _finish_hello(hello: Hello) -> Hello:
    first: dict[str, int] = {}
    for index, project in enumerate(hello.projects):
        earlier = first.setdefault(project.project_id, index)
        if earlier != index:
            path = ("projects", index, "project_id")
            raise _RuleError(path, f"the same project as [{earlier}]")
    return hello


def _finish_push(push: Push) -> Push:
    """The decoder's bounded variant of ``Push`` (see ``_client_reader``) as a ``Push``."""
    return Push(push.push_id, push.project_id, push.entities)


def _finish_push_result(frame: _PushResultFrame) -> PushResult:
    results = tuple(_entity_result(r, index) for index, r in enumerate(frame.results))
    return PushResult(frame.push_id, frame.project_id, results)


def _finish_conflicts(message: Conflicts) -> Conflicts:
    for index, record in enumerate(message.conflicts):
        if record.status not in CONFLICT_STATUSES:
            path = ("conflicts", index, "status")
            raise _RuleError(path, f"unknown conflict status {record.status!r}")
        _check_details(record.details, ("conflicts", index, "details"))
    return message


# --- decoders ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reader:
    """One kind of frame: its decoder, what it holds, and what runs after decoding."""

    decoder: msgspec.msgpack.Decoder[Any]
    schema: Schema
    finish: Mapping[type, Callable[[Any], Any]]


def _reader(types: tuple[type[msgspec.Struct], ...], known: str, **finish: Any) -> _Reader:
    by_tag = {str(t.__struct_config__.tag): t for t in types}
    decoder = msgspec.msgpack.Decoder(
        functools.reduce(operator.or_, types), ext_hook=refuse_extension
    )
    checks = {by_tag[tag]: check for tag, check in finish.items()}
    return _Reader(decoder, Schema(by_tag, known), checks)


@functools.lru_cache(maxsize=16)
def _client_reader(max_entities: int) -> _Reader:
    """The client decoder for one ``max_entities_per_batch``: ``Push`` with that bound on its
    entities, so a push claiming more is refused from the array's header."""
    entities = Annotated[tuple[EntityPush, ...], Meta(max_length=max_entities)]
    bounded = msgspec.defstruct("Push", [("entities", entities)], bases=(Push,), module=__name__)
    return _reader(
        (Hello, Subscribe, Unsubscribe, bounded),
        "a client sends",
        hello=_finish_hello,
        push=_finish_push,
    )


_SERVER: Final = _reader(
    (
        Welcome,
        ProjectError,
        SnapshotBegin,
        SnapshotChunk,
        SnapshotEnd,
        Changes,
        Conflicts,
        Synced,
        _PushResultFrame,
        Error,
        Status,
    ),
    "a server sends",
    push_result=_finish_push_result,
    conflicts=_finish_conflicts,
)
_SNAPSHOT_MESSAGES: Final = _reader(
    (SnapshotBegin, Conflicts, SnapshotEnd),
    "a snapshot body holds",
    conflicts=_finish_conflicts,
)
_SNAPSHOT_ENTITY: Final = _Reader(
    msgspec.msgpack.Decoder(SnapshotEntity, ext_hook=refuse_extension),
    Schema({"entity": SnapshotEntity}, "", root="entity"),
    {},
)


# --- decoding: the entry points -------------------------------------------------------------


def decode_client(frame: bytes | str, limits: Limits = DEFAULT_LIMITS) -> ClientMessage:
    """A message from a client; raises ``ProtocolViolation`` and nothing else."""
    data = _frame_bytes(frame, limits.max_frame_bytes, client=True)
    message: ClientMessage = _decode(data, _client_reader(limits.max_entities_per_batch))
    return message


def decode_server(frame: bytes | str, limits: Limits = DEFAULT_LIMITS) -> ServerMessage:
    """A message from the server; raises ``ProtocolViolation`` and nothing else."""
    data = _frame_bytes(frame, max_server_frame_bytes(limits), client=False)
    message: ServerMessage = _decode(data, _SERVER)
    return message


def decode_snapshot_record(record: bytes, limits: Limits = DEFAULT_LIMITS) -> SnapshotRecord:
    """One record of the HTTP snapshot body (docs/protocol.md): an entity's map, which has
    no ``"t"``, or a ``snapshot_begin``, ``conflicts`` or ``snapshot_end`` message. Raises
    ``ProtocolViolation`` and nothing else; error paths start at the message's type, or at
    ``entity``."""
    data = _frame_bytes(record, max_server_frame_bytes(limits), client=False)
    if _first_key(data) == b"\xa1t":  # how the server writes a message
        return _decode(data, _SNAPSHOT_MESSAGES)  # type: ignore[no-any-return]
    try:
        entity: SnapshotEntity = _decode(data, _SNAPSHOT_ENTITY)
    except ProtocolViolation:
        if not _has_type_key(data):
            raise
        return _decode(data, _SNAPSHOT_MESSAGES)  # type: ignore[no-any-return]
    return entity


def _frame_bytes(frame: object, max_bytes: int, *, client: bool) -> bytes:
    """The frame as bytes, of a size and shape worth decoding: one map of few keys."""
    if isinstance(frame, str):
        raise malformed("text frames are not part of the protocol: send binary frames")
    if not isinstance(frame, bytes):
        if not isinstance(frame, bytearray | memoryview):
            raise malformed(f"a frame is bytes, not {type(frame).__name__}")
        frame = bytes(frame)
    if len(frame) > max_bytes:
        raise ProtocolViolation(
            ErrorCode.FRAME_TOO_LARGE,
            f"the frame has {len(frame)} bytes; at most {max_bytes} are allowed",
            oversized_push_id(frame) if client else None,
        )
    if not frame:
        raise malformed("the frame is empty")
    kind = scan.kind(frame[0])
    if kind == scan.INVALID:
        raise malformed("byte 0: 0xc1 is not msgpack")
    if kind == scan.EXT:
        raise malformed(f"byte 0: {EXTENSIONS}")
    if kind != scan.MAP:
        raise malformed(f"a frame must hold one msgpack map, got {scan.KIND_NAMES[kind]}")
    try:
        count = scan.head(frame, 0)[1]
    except scan.Incomplete:
        raise malformed("the frame ends inside a value") from None
    if count > MAX_MESSAGE_KEYS:
        raise ProtocolViolation(
            ErrorCode.INVALID_MESSAGE, f"a message has at most {MAX_MESSAGE_KEYS} keys"
        )
    return frame


def _decode(data: bytes, reader: _Reader) -> Any:
    try:
        decoded = reader.decoder.decode(data)
    except (msgspec.DecodeError, ExtensionValue, RecursionError) as exc:
        raise explain(data, reader.schema, exc) from None
    root = reader.schema.root or type(decoded).TYPE
    try:
        if _ENCODER.encode(decoded) != data:  # not canonical: a key may be repeated
            check_repeated_keys(data, reader.schema, root)
        finish = reader.finish.get(type(decoded))
        return decoded if finish is None else finish(decoded)
    except _RuleError as exc:
        violation = exc.violation(root)
    except ProtocolViolation as exc:
        violation = exc
    if root == Push.TYPE:
        violation.push_id = readable_push_id(data)
    raise violation


def _first_key(data: bytes) -> bytes:
    """The first two bytes after the header of the map ``data`` holds."""
    start = scan.head(data, 0)[2]
    return data[start : start + 2]


def _has_type_key(data: bytes) -> bool:
    """Whether a snapshot record's top-level map has a ``"t"`` key."""
    try:
        return any(key == "t" for key, *_ in scan.map_items(data, 0))
    except (scan.Incomplete, scan.Unreadable):
        return False
