"""Every message of the sync protocol, as typed records: the one definition of the wire format.

A message travels as one binary WebSocket frame holding one msgpack map; key ``"t"`` names
the message type (the class's ``TYPE``) and the other keys are the fields below, with the
same names. Automerge payloads (documents, changes) are opaque msgpack ``bin`` values.
``sync.codec`` turns these records into frames and back; ``docs/protocol.md`` describes them
for implementers in other languages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

PROTOCOL_VERSIONS: tuple[int, ...] = (1,)


# --- parts of messages -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProjectCursor:
    """A project a client wants, and the last seq it holds (None: send a snapshot first)."""

    project_id: str
    cursor: int | None


@dataclass(frozen=True, slots=True)
class EntityPush:
    """One entity's changes in a push; accepted or rejected as a whole."""

    entity_type: str
    entity_id: str
    changes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class SnapshotEntity:
    """An entity's whole document as of the snapshot's cursor (``Document.load`` input)."""

    entity_type: str
    entity_id: str
    document: bytes


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """One logged change, with its project sequence number."""

    seq: int
    entity_type: str
    entity_id: str
    change: bytes


@dataclass(frozen=True, slots=True)
class EntityAccepted:
    """All of the entity's changes are logged; ``seqs`` follows the order they were sent."""

    entity_id: str
    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class EntityRejected:
    """None of the entity's changes were logged; ``code`` is a ``RejectCode`` value."""

    entity_id: str
    code: str
    message: str
    details: dict[str, object] = field(default_factory=dict)


EntityResult = EntityAccepted | EntityRejected

CONFLICT_STATUSES: tuple[str, ...] = ("open", "resolved", "removed")


@dataclass(frozen=True, slots=True)
class ConflictRecord:
    """A conflict as the project's conflicts read model holds it (``docs/conflicts.md``).

    ``status`` is ``open``, ``resolved``, or ``removed``: the record no longer exists (a
    concurrent edit widened it into another record, which arrives in the same message);
    a removed record carries only its id and empty other fields. ``details`` is the record
    itself: kind, entities, fields, competing values, the changes (hash, actor, user) that
    produced them, and the rule's resolution (nil when a lead decides).
    """

    conflict_id: str
    status: str
    kind: str = ""
    entity_ids: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    opened_seq: int = 0
    resolved_seq: int | None = None
    details: dict[str, object] = field(default_factory=dict)


# --- client to server --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """First message of every connection: versions spoken, credentials, projects wanted."""

    TYPE: ClassVar[str] = "hello"
    versions: tuple[int, ...]
    token: str
    client_id: str
    projects: tuple[ProjectCursor, ...] = ()
    outbox_age_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Start syncing one more project on an open connection."""

    TYPE: ClassVar[str] = "subscribe"
    project: ProjectCursor


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    TYPE: ClassVar[str] = "unsubscribe"
    project_id: str


@dataclass(frozen=True, slots=True)
class Push:
    """Changes for entities of one project; answered by a PushResult with the same id."""

    TYPE: ClassVar[str] = "push"
    push_id: int
    project_id: str
    entities: tuple[EntityPush, ...]


# --- server to client --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    """The handshake succeeded: the version chosen, who the token says you are, the limits."""

    TYPE: ClassVar[str] = "welcome"
    version: int
    user_id: str
    session_id: str
    limits: dict[str, int]


@dataclass(frozen=True, slots=True)
class ProjectError:
    """A project cannot be synced (unknown or not yours: the same answer, on purpose)."""

    TYPE: ClassVar[str] = "project_error"
    project_id: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class SnapshotBegin:
    TYPE: ClassVar[str] = "snapshot_begin"
    project_id: str
    cursor: int
    entity_count: int


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    TYPE: ClassVar[str] = "snapshot_chunk"
    project_id: str
    entities: tuple[SnapshotEntity, ...]


@dataclass(frozen=True, slots=True)
class SnapshotEnd:
    TYPE: ClassVar[str] = "snapshot_end"
    project_id: str
    cursor: int


@dataclass(frozen=True, slots=True)
class Changes:
    """Logged changes in seq order, each seq exactly one more than the one before it."""

    TYPE: ClassVar[str] = "changes"
    project_id: str
    changes: tuple[ChangeRecord, ...]


@dataclass(frozen=True, slots=True)
class Conflicts:
    """Conflict records changed by the changes that follow this message (up to the end of
    the push that caused them; a client may store them before it has those changes).

    Inside a snapshot (between ``snapshot_begin`` and ``snapshot_end``) it carries every
    record of the project as of the snapshot's cursor, possibly over several messages.
    """

    TYPE: ClassVar[str] = "conflicts"
    project_id: str
    conflicts: tuple[ConflictRecord, ...]


@dataclass(frozen=True, slots=True)
class Synced:
    """The client holds everything up to ``cursor``; from here on changes arrive live."""

    TYPE: ClassVar[str] = "synced"
    project_id: str
    cursor: int


@dataclass(frozen=True, slots=True)
class PushResult:
    """Sent only after the push's transaction committed."""

    TYPE: ClassVar[str] = "push_result"
    push_id: int
    project_id: str
    results: tuple[EntityResult, ...]


@dataclass(frozen=True, slots=True)
class Error:
    """Something the peer sent was refused; ``fatal`` means the server closes next."""

    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    fatal: bool = False
    push_id: int | None = None


SERVER_STATES: tuple[str, ...] = ("ok", "degraded")


@dataclass(frozen=True, slots=True)
class Status:
    """How the server is doing, sent when that changes (and right after ``welcome`` when it is
    not ``ok``). ``degraded``: it cannot do everything now (``code`` says what is wrong, e.g.
    ``database_unavailable``); keep local changes and retry, nothing is lost. ``ok``: back
    to normal. Informational: the client's own retries do the resuming."""

    TYPE: ClassVar[str] = "status"
    state: str
    code: str = ""
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
