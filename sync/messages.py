"""Every message of the sync protocol, as typed records: the one definition of the wire format.

A message travels as one binary WebSocket frame holding one msgpack map; key ``"t"`` names
the message type (the class's ``TYPE``, its msgspec tag) and the other keys are the fields
below, with the same names and in the same order. Automerge payloads (documents, changes)
are opaque msgpack ``bin`` values. The records are msgspec Structs, so the annotations are
also what the decoder enforces: exact types (bin is not str, a bool is not an int), the
bounds in ``Annotated[..., Meta(...)]``, no unknown fields. ``sync.codec`` turns records
into frames and back; ``docs/protocol.md`` describes them for implementers in other
languages.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Final, get_args

from msgspec import Meta, Struct, field

PROTOCOL_VERSIONS: tuple[int, ...] = (1,)

# --- bounds the decoder enforces (contract/protocol.json lists them) ----------------------

MAX_TOKEN_CHARS: Final = 8192
MAX_CLIENT_ID_CHARS: Final = 128
MAX_CLIENT_VERSION_CHARS: Final = 64
MAX_PROJECT_ID_CHARS: Final = 64
MAX_ENTITY_TYPE_CHARS: Final = 64
MAX_ENTITY_ID_CHARS: Final = 64
MAX_HELLO_PROJECTS: Final = 100
MAX_HELLO_VERSIONS: Final = 32
MAX_USER_ID_CHARS: Final = 128  # welcome.user_id, welcome.session_id
MAX_CODE_CHARS: Final = 64  # error, project_error and entity result codes
MAX_LIMITS_KEYS: Final = 64  # welcome.limits
MAX_DETAILS_DEPTH: Final = 16  # nesting of an entity rejection's or a conflict's details
MAX_CONFLICT_ID_CHARS: Final = 64  # hex SHA-256
MAX_FIELD_NAME_CHARS: Final = 64
MAX_MESSAGE_KEYS: Final = 32  # top-level keys of any message, counting "t"
INT64_MAX: Final = 2**63 - 1

# A cursor, seq, id or count: a non-negative int64.
UInt = Annotated[int, Meta(ge=0, le=INT64_MAX)]
ProjectId = Annotated[str, Meta(max_length=MAX_PROJECT_ID_CHARS)]
EntityType = Annotated[str, Meta(max_length=MAX_ENTITY_TYPE_CHARS)]
EntityId = Annotated[str, Meta(max_length=MAX_ENTITY_ID_CHARS)]
Code = Annotated[str, Meta(max_length=MAX_CODE_CHARS)]
UserId = Annotated[str, Meta(max_length=MAX_USER_ID_CHARS)]
# Free-form: any msgpack value but extensions, nested at most MAX_DETAILS_DEPTH deep (the
# codec checks both: msgspec decodes these values without a schema).
Details = dict[str, object]


class _Record(Struct, frozen=True, forbid_unknown_fields=True):
    """A record on the wire: a msgpack map of exactly these fields."""


class _Message(_Record, frozen=True, tag_field="t"):
    """A whole message: its map also holds ``"t"``, the message type, first."""

    TYPE: ClassVar[str]  # the tag, set below from each class's ``tag``


# --- parts of messages -------------------------------------------------------------------


class ProjectCursor(_Record, frozen=True):
    """A project a client wants, and the last seq it holds (None: send a snapshot first)."""

    project_id: ProjectId
    cursor: UInt | None


class EntityPush(_Record, frozen=True):
    """One entity's changes in a push; accepted or rejected as a whole."""

    entity_type: EntityType
    entity_id: EntityId
    changes: tuple[bytes, ...]


class SnapshotEntity(_Record, frozen=True):
    """An entity's whole document as of the snapshot's cursor (``Document.load`` input)."""

    entity_type: EntityType
    entity_id: EntityId
    document: bytes


class ChangeRecord(_Record, frozen=True):
    """One logged change, with its project sequence number."""

    seq: UInt
    entity_type: EntityType
    entity_id: EntityId
    change: bytes


class EntityAccepted(_Record, frozen=True):
    """All of the entity's changes are logged; ``seqs`` follows the order they were sent."""

    entity_id: EntityId
    seqs: tuple[UInt, ...]


class EntityRejected(_Record, frozen=True):
    """None of the entity's changes were logged; ``code`` is a ``RejectCode`` value."""

    entity_id: EntityId
    code: Code
    message: str
    details: Details = field(default_factory=dict)


EntityResult = EntityAccepted | EntityRejected

CONFLICT_STATUSES: tuple[str, ...] = ("open", "resolved", "removed")


class ConflictRecord(_Record, frozen=True):
    """A conflict as the project's conflicts read model holds it (``docs/conflicts.md``).

    ``status`` is ``open``, ``resolved``, or ``removed``: the record no longer exists (a
    concurrent edit widened it into another record, which arrives in the same message);
    a removed record carries only its id and empty other fields. ``details`` is the record
    itself: kind, entities, fields, competing values, the changes (hash, actor, user) that
    produced them, and the rule's resolution (nil when a lead decides).
    """

    conflict_id: Annotated[str, Meta(max_length=MAX_CONFLICT_ID_CHARS)]
    status: Code  # one of CONFLICT_STATUSES (the codec checks)
    kind: Code = ""
    entity_ids: tuple[EntityId, ...] = ()
    fields: tuple[Annotated[str, Meta(max_length=MAX_FIELD_NAME_CHARS)], ...] = ()
    opened_seq: UInt = 0
    resolved_seq: UInt | None = None
    details: Details = field(default_factory=dict)


# --- client to server --------------------------------------------------------------------


class Hello(_Message, frozen=True, tag="hello"):
    """First message of every connection: versions spoken, credentials, projects wanted."""

    versions: Annotated[tuple[UInt, ...], Meta(max_length=MAX_HELLO_VERSIONS)]
    token: Annotated[str, Meta(max_length=MAX_TOKEN_CHARS)]
    client_id: Annotated[str, Meta(max_length=MAX_CLIENT_ID_CHARS)]
    # Each project at most once (the codec checks).
    projects: Annotated[tuple[ProjectCursor, ...], Meta(max_length=MAX_HELLO_PROJECTS)] = ()
    outbox_age_ms: UInt | None = None
    # The client software and its version (e.g. ``fieldsync-client/0.1.0``), for the
    # members' sync health; optional, so older clients' hellos stay valid.
    client_version: Annotated[str, Meta(max_length=MAX_CLIENT_VERSION_CHARS)] | None = None


class Subscribe(_Message, frozen=True, tag="subscribe"):
    """Start syncing one more project on an open connection."""

    project: ProjectCursor


class Unsubscribe(_Message, frozen=True, tag="unsubscribe"):
    project_id: ProjectId


class Push(_Message, frozen=True, tag="push"):
    """Changes for entities of one project; answered by a PushResult with the same id."""

    push_id: UInt
    project_id: ProjectId
    # At most Limits.max_entities_per_batch: a bound of the server's configuration, which
    # the codec's decoder for those limits adds.
    entities: tuple[EntityPush, ...]


# --- server to client --------------------------------------------------------------------


class Welcome(_Message, frozen=True, tag="welcome"):
    """The handshake succeeded: the version chosen, who the token says you are, the limits."""

    version: UInt
    user_id: UserId
    session_id: UserId
    limits: Annotated[dict[str, UInt], Meta(max_length=MAX_LIMITS_KEYS)]


class ProjectError(_Message, frozen=True, tag="project_error"):
    """A project cannot be synced (unknown or not yours: the same answer, on purpose)."""

    project_id: ProjectId
    code: Code
    message: str


class SnapshotBegin(_Message, frozen=True, tag="snapshot_begin"):
    project_id: ProjectId
    cursor: UInt
    entity_count: UInt


class SnapshotChunk(_Message, frozen=True, tag="snapshot_chunk"):
    project_id: ProjectId
    entities: tuple[SnapshotEntity, ...]


class SnapshotEnd(_Message, frozen=True, tag="snapshot_end"):
    project_id: ProjectId
    cursor: UInt


class Changes(_Message, frozen=True, tag="changes"):
    """Logged changes in seq order, each seq exactly one more than the one before it."""

    project_id: ProjectId
    changes: tuple[ChangeRecord, ...]


class Conflicts(_Message, frozen=True, tag="conflicts"):
    """Conflict records changed by the changes that follow this message (up to the end of
    the push that caused them; a client may store them before it has those changes).

    Inside a snapshot (between ``snapshot_begin`` and ``snapshot_end``) it carries every
    record of the project as of the snapshot's cursor, possibly over several messages.
    """

    project_id: ProjectId
    conflicts: tuple[ConflictRecord, ...]


class Synced(_Message, frozen=True, tag="synced"):
    """The client holds everything up to ``cursor``; from here on changes arrive live."""

    project_id: ProjectId
    cursor: UInt


class PushResult(_Message, frozen=True, tag="push_result"):
    """Sent only after the push's transaction committed."""

    push_id: UInt
    project_id: ProjectId
    # On the wire each result is a map tagged by "ok" (true: accepted), a bool, which
    # msgspec's tagged unions do not take: the codec reads and writes them itself.
    results: tuple[EntityResult, ...]


class Error(_Message, frozen=True, tag="error"):
    """Something the peer sent was refused; ``fatal`` means the server closes next."""

    code: Code
    message: str
    fatal: bool = False
    push_id: UInt | None = None


SERVER_STATES: tuple[str, ...] = ("ok", "degraded")


class Status(_Message, frozen=True, tag="status"):
    """How the server is doing, sent when that changes (and right after ``welcome`` when it is
    not ``ok``). ``degraded``: it cannot do everything now (``code`` says what is wrong, e.g.
    ``database_unavailable``); keep local changes and retry, nothing is lost. ``ok``: back
    to normal. Informational: the client's own retries do the resuming."""

    state: Code
    code: Code = ""
    message: str = ""


ClientMessage = Hello | Subscribe | Unsubscribe | Push
ServerMessage = (
    Welcome
    | ProjectError
    | SnapshotBegin
    | SnapshotChunk
    | SnapshotEnd
    | Changes
    | Conflicts
    | Synced
    | PushResult
    | Error
    | Status
)
Message = ClientMessage | ServerMessage


for _message in get_args(Message):
    _message.TYPE = _message.__struct_config__.tag  # the tag is the one definition
del _message
