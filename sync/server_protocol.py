"""The server's side of the sync protocol as one object without I/O.

``ServerConnection`` (``sync.connection``) owns the handshake and the refusal of bad frames.
``ServerProtocol`` wraps it and owns everything after ``welcome``: each project's stream,
the pushes waiting for their answer, and the order in which frames may go out. The shell
(``live.session``) pumps: it feeds client frames in, acts on the events, reads storage, and
hands what it read back to the protocol, which decides the frames. Nothing here touches a
socket, a clock or an event loop, so every rule is tested with records in and frames out
(``tests/sync/test_server_protocol.py``).

A project's stream moves one way::

    (subscribe event) --begin_snapshot--> SNAPSHOT --end_snapshot--+
          |                                                        v
          +-------------------resume------------------------> CATCHING_UP --go_live--> LIVE
          any state --end_stream / unsubscribe--> gone (nothing more is sent for it)

The rules it keeps, so that no shell can break them:

* a snapshot is ``snapshot_begin``, its entities in ``snapshot_chunk`` frames (exactly the
  announced count), its conflict records, ``snapshot_end`` — nothing else of the project in
  between;
* changes go out in seq order without a gap or a repeat, starting right after the cursor the
  client holds (a live piece that overlaps what the client has is cut; one that would leave a
  gap is a bug of the shell and raises ``ProtocolMisuseError``);
* a slice's conflict updates go before its changes (a client that stores each message in its
  own transaction never holds a cursor past an update it has not stored);
* ``synced`` comes once, after the catch-up, and live changes only after it;
* a ``push_result`` answers a push the client sent and has not been answered yet.

Frames come out as ``Outgoing``: the frame, its message type (what the metrics count) and its
lane, which tells the shell how to queue it (``live.outbox``): ``BULK`` may wait for the
client to read (snapshots, catch-up), ``LIVE`` is refused when the client is too far behind,
``CONTROL`` (answers, errors, ``synced``) always goes. Each method returns the frames it
decided, to the caller, which queues them in that order: the shell's tasks (the reader, each
project's stream, the live feed) never take each other's frames. Only what the handshake
machine produces while reading frames comes out of ``data_to_send``.

Frames meant for many clients are built once: ``prepare_changes`` and ``prepare_conflicts``
encode a piece of the log for every live subscriber of a project, and ``deliver_live`` sends
the same bytes unless this client already holds part of the piece.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from uuid import UUID

from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.sync.codec import encode, encode_snapshot_entity
from fieldsync.sync.connection import ConnectionState, ServerConnection
from fieldsync.sync.errors import CloseCode, ErrorCode, ProtocolViolation
from fieldsync.sync.messages import (
    ChangeRecord,
    Changes,
    ClientMessage,
    ConflictRecord,
    Conflicts,
    EntityResult,
    Error,
    ProjectError,
    Push,
    PushResult,
    ServerMessage,
    SnapshotBegin,
    SnapshotChunk,
    SnapshotEnd,
    SnapshotEntity,
    Status,
    Synced,
    Unsubscribe,
    Welcome,
)

__all__ = [
    "CHANGES_FRAME_BYTES",
    "CONFLICTS_PER_FRAME",
    "SNAPSHOT_CHUNK_BYTES",
    "ConflictRecordAt",
    "Lane",
    "Outgoing",
    "PreparedChanges",
    "ProtocolMisuseError",
    "ServerProtocol",
    "SnapshotWriter",
    "StreamState",
    "prepare_changes",
    "prepare_conflicts",
    "project_key",
]

SNAPSHOT_CHUNK_BYTES = 512 * 1024
"""About how many document bytes one ``snapshot_chunk`` carries (at least one entity)."""
CHANGES_FRAME_BYTES = 1024 * 1024
"""About how many change bytes one ``changes`` frame carries: well under the frame limit."""
CONFLICTS_PER_FRAME = 100
"""Records per ``conflicts`` frame; a record is at most a few tens of KiB."""
_ENTITY_OVERHEAD = 128
_CHANGE_OVERHEAD = 64


class ProtocolMisuseError(Exception):
    """The shell called the protocol out of order: a bug on this side, never the client's."""


class Lane(Enum):
    """How the shell queues a frame (see ``live.outbox``)."""

    CONTROL = "control"  # answers, errors, synced, status: always queued
    BULK = "bulk"  # snapshots and catch-up: may wait for the client to read
    LIVE = "live"  # live changes: refused when the client is too far behind


@dataclass(frozen=True, slots=True)
class Outgoing:
    kind: str  # the message type
    frame: bytes
    lane: Lane


@dataclass(frozen=True, slots=True)
class ConflictRecordAt:
    """A conflict record as it stood after the push that ended at ``seq``."""

    seq: int
    record: ConflictRecord


@dataclass(frozen=True, slots=True)
class PreparedChanges:
    """Consecutive logged changes of one project and their ``changes`` frame, encoded once
    for every subscriber (with the ``Outgoing`` that carries it, also made once)."""

    project_id: str
    records: tuple[ChangeRecord, ...]
    frame: bytes
    first_seq: int = field(init=False)
    last_seq: int = field(init=False)
    outgoing: Outgoing = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "first_seq", self.records[0].seq)
        object.__setattr__(self, "last_seq", self.records[-1].seq)
        object.__setattr__(self, "outgoing", Outgoing(Changes.TYPE, self.frame, Lane.LIVE))


def prepare_changes(project_id: str, records: Sequence[ChangeRecord]) -> list[PreparedChanges]:
    """``records`` (consecutive seqs) as ``changes`` frames of about CHANGES_FRAME_BYTES."""
    prepared: list[PreparedChanges] = []
    batch: list[ChangeRecord] = []
    size = 0
    for record in records:
        if batch and size + len(record.change) > CHANGES_FRAME_BYTES:
            prepared.append(_changes_frame(project_id, batch))
            batch, size = [], 0
        batch.append(record)
        size += len(record.change) + _CHANGE_OVERHEAD
    if batch:
        prepared.append(_changes_frame(project_id, batch))
    return prepared


def _changes_frame(project_id: str, records: Sequence[ChangeRecord]) -> PreparedChanges:
    batch = tuple(records)
    return PreparedChanges(project_id, batch, encode(Changes(project_id, batch)))


def prepare_conflicts(project_id: str, records: Sequence[ConflictRecord]) -> list[bytes]:
    """``conflicts`` frames of at most CONFLICTS_PER_FRAME records each."""
    return [
        encode(Conflicts(project_id, tuple(records[i : i + CONFLICTS_PER_FRAME])))
        for i in range(0, len(records), CONFLICTS_PER_FRAME)
    ]


def _latest(updates: Iterable[ConflictRecordAt]) -> list[ConflictRecord]:
    """Each record once, in its latest state, in the order of its last update."""
    latest: dict[str, ConflictRecord] = {}
    for update in updates:
        latest.pop(update.record.conflict_id, None)
        latest[update.record.conflict_id] = update.record
    return list(latest.values())


class _SnapshotBracket:
    """The rules of one snapshot: begin, exactly ``count`` entities, conflicts, end."""

    def __init__(self, project_id: str, cursor: int, count: int) -> None:
        self.project_id = project_id
        self.cursor = cursor
        self.count = count
        self.sent = 0
        self.conflicts_sent = False

    def add_entities(self, entities: Sequence[SnapshotEntity]) -> None:
        if self.conflicts_sent:
            raise ProtocolMisuseError("snapshot entities after its conflict records")
        if self.sent + len(entities) > self.count:
            raise ProtocolMisuseError(
                f"snapshot of {self.project_id} announced {self.count} entities, "
                f"got {self.sent + len(entities)}"
            )
        self.sent += len(entities)

    def add_conflicts(self) -> None:
        if self.sent != self.count:
            raise ProtocolMisuseError(
                f"conflict records before all {self.count} entities of the snapshot"
            )
        self.conflicts_sent = True

    def finish(self) -> None:
        if self.sent != self.count:
            raise ProtocolMisuseError(
                f"snapshot of {self.project_id} ended after {self.sent} of {self.count} entities"
            )


class SnapshotWriter:
    """The HTTP snapshot body (``GET /projects/{id}/snapshot``): the same records and rules
    as a WebSocket snapshot, except that each entity is a bare map (no ``"t"``).

    ``begin``, then ``entity`` for each announced entity, then ``conflicts``, then ``end``;
    each returns the bytes to write."""

    def __init__(self, project_id: str, cursor: int, count: int) -> None:
        self._bracket = _SnapshotBracket(project_id, cursor, count)
        self._ended = False

    def begin(self) -> bytes:
        b = self._bracket
        return encode(SnapshotBegin(b.project_id, b.cursor, b.count))

    def entity(self, entity: SnapshotEntity) -> bytes:
        self._bracket.add_entities((entity,))
        return encode_snapshot_entity(entity)

    def conflicts(self, records: Sequence[ConflictRecord]) -> list[bytes]:
        self._bracket.add_conflicts()
        return prepare_conflicts(self._bracket.project_id, records)

    def end(self) -> bytes:
        if self._ended:
            raise ProtocolMisuseError("the snapshot has ended already")
        self._bracket.finish()
        self._ended = True
        return encode(SnapshotEnd(self._bracket.project_id, self._bracket.cursor))


class StreamState(Enum):
    SNAPSHOT = "snapshot"
    CATCHING_UP = "catching_up"
    LIVE = "live"


@dataclass(slots=True)
class _Stream:
    state: StreamState
    cursor: int  # the last seq the client holds (a snapshot's cursor while it streams)
    snapshot: _SnapshotBracket | None = None
    chunk: list[SnapshotEntity] = field(default_factory=list)
    chunk_bytes: int = 0


@functools.lru_cache(maxsize=4096)
def project_key(project_id: str) -> str:
    """A project id as streams are keyed and frames name it: the canonical UUID form (a
    client may write ``0B6F3C1E-…``), or the string itself when it is no UUID."""
    try:
        return str(UUID(project_id))
    except ValueError:
        return project_id


class ServerProtocol:
    """One connection's protocol, server side: ``ServerConnection`` plus the streams.

    Streams are keyed by ``project_key``; a ``project_error`` names the project the way the
    client spelled it (its id may be no UUID at all).
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.connection = ServerConnection(limits)
        self._streams: dict[str, _Stream] = {}
        # Received, not yet answered. A dict, not a set: an idle connection's empty one
        # costs 64 bytes rather than 216.
        self._pushes: dict[int, None] = {}

    # -- the connection -------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self.connection.state

    @property
    def version(self) -> int | None:
        return self.connection.version

    @property
    def close_requested(self) -> tuple[CloseCode, str] | None:
        return self.connection.close_requested

    @property
    def closing(self) -> bool:
        return self.connection.state in (ConnectionState.CLOSING, ConnectionState.CLOSED)

    def receive_frame(self, frame: bytes | str) -> None:
        """A frame from the client; what it means comes out of ``events_received``, the
        answers the handshake machine gave it out of ``data_to_send``."""
        self.connection.receive_frame(frame)

    def events_received(self) -> list[ClientMessage]:
        """The client's valid messages, in order. A push is remembered until answered; an
        unsubscribe ends the project's stream here already (the shell stops its work)."""
        events = []
        for event in self.connection.events_received():
            if isinstance(event, Push):
                if event.push_id in self._pushes:
                    # Pushes are appended while the next ones are read: a second push with
                    # the id of one in flight could not be told apart from it in the answers.
                    self.connection.refuse_event(
                        ProtocolViolation(
                            ErrorCode.INVALID_MESSAGE,
                            f"push_id {event.push_id} is already waiting for its answer; "
                            "each push in flight needs a push_id of its own",
                            push_id=event.push_id,
                        )
                    )
                    continue
                self._pushes[event.push_id] = None
            elif isinstance(event, Unsubscribe):
                self._streams.pop(project_key(event.project_id), None)
            events.append(event)
        return events

    def refusals_received(self) -> list[ErrorCode]:
        return self.connection.refusals_received()

    def data_to_send(self) -> list[Outgoing]:
        """The handshake machine's frames (welcome, errors about frames, fatal errors)."""
        return [Outgoing(kind, frame, Lane.CONTROL) for kind, frame in self.connection.outgoing()]

    def accept(self, welcome: Welcome) -> None:
        self.connection.accept(welcome)

    def refuse(self, code: ErrorCode, message: str, close_code: CloseCode) -> None:
        self.connection.refuse(code, message, close_code)

    def fail(self, code: ErrorCode, message: str, close_code: CloseCode) -> None:
        """A fatal condition the shell found (too slow, over the rate): error, then close."""
        self.connection.fail(code, message, close_code)

    # -- streams ----------------------------------------------------------------------------

    def stream_state(self, project: str) -> StreamState | None:
        stream = self._streams.get(project_key(project))
        return stream.state if stream is not None else None

    def cursor(self, project: str) -> int | None:
        stream = self._streams.get(project_key(project))
        return stream.cursor if stream is not None else None

    def streams(self) -> list[str]:
        return list(self._streams)

    def begin_snapshot(self, project: str, cursor: int, entity_count: int) -> list[Outgoing]:
        project = project_key(project)
        if not self._start(project, _Stream(StreamState.SNAPSHOT, cursor)):
            return []
        self._streams[project].snapshot = _SnapshotBracket(project, cursor, entity_count)
        return self._send(SnapshotBegin(project, cursor, entity_count), Lane.BULK)

    def snapshot_entities(self, project: str, entities: Sequence[SnapshotEntity]) -> list[Outgoing]:
        """Entities of the snapshot; they go out in chunks of about SNAPSHOT_CHUNK_BYTES."""
        project = project_key(project)
        stream = self._stream(project, StreamState.SNAPSHOT)
        if stream is None:
            return []
        assert stream.snapshot is not None
        stream.snapshot.add_entities(entities)
        out: list[Outgoing] = []
        for entity in entities:
            stream.chunk.append(entity)
            stream.chunk_bytes += len(entity.document) + _ENTITY_OVERHEAD
            if stream.chunk_bytes >= SNAPSHOT_CHUNK_BYTES:
                out += self._flush_chunk(project, stream)
        return out

    def snapshot_conflicts(self, project: str, records: Sequence[ConflictRecord]) -> list[Outgoing]:
        """Every conflict record of the project as of the snapshot's cursor."""
        project = project_key(project)
        stream = self._stream(project, StreamState.SNAPSHOT)
        if stream is None:
            return []
        assert stream.snapshot is not None
        out = self._flush_chunk(project, stream)
        stream.snapshot.add_conflicts()
        out += [
            Outgoing(Conflicts.TYPE, frame, Lane.BULK)
            for frame in prepare_conflicts(project, records)
        ]
        return out

    def end_snapshot(self, project: str) -> list[Outgoing]:
        project = project_key(project)
        stream = self._stream(project, StreamState.SNAPSHOT)
        if stream is None:
            return []
        assert stream.snapshot is not None
        out = self._flush_chunk(project, stream)
        stream.snapshot.finish()
        stream.snapshot = None
        stream.state = StreamState.CATCHING_UP
        return out + self._send(SnapshotEnd(project, stream.cursor), Lane.BULK)

    def resume(self, project: str, cursor: int) -> None:
        """The client holds the project up to ``cursor``: catch up from there, no snapshot."""
        self._start(project_key(project), _Stream(StreamState.CATCHING_UP, cursor))

    def catch_up(
        self,
        project: str,
        changes: Sequence[ChangeRecord],
        conflicts: Sequence[ConflictRecordAt] = (),
    ) -> list[Outgoing]:
        """Logged changes right after the client's cursor, with the conflict updates of the
        pushes they end; the updates go first."""
        project = project_key(project)
        stream = self._stream(project, StreamState.CATCHING_UP)
        if stream is None or not changes:
            return []
        self._check_follows(stream, changes[0].seq, project)
        out = [
            Outgoing(Conflicts.TYPE, frame, Lane.BULK)
            for frame in prepare_conflicts(project, _latest(conflicts))
        ]
        out += [
            Outgoing(Changes.TYPE, prepared.frame, Lane.BULK)
            for prepared in prepare_changes(project, changes)
        ]
        stream.cursor = changes[-1].seq
        return out

    def go_live(self, project: str) -> list[Outgoing]:
        """The catch-up reached the live feed: ``synced``, then live changes."""
        project = project_key(project)
        stream = self._stream(project, StreamState.CATCHING_UP)
        if stream is None:
            return []
        stream.state = StreamState.LIVE
        return self._send(Synced(project, stream.cursor), Lane.CONTROL)

    def deliver_live(
        self,
        project: str,
        prepared: PreparedChanges,
        conflicts: Sequence[ConflictRecordAt] = (),
    ) -> list[Outgoing]:
        """A piece of the live feed for this client: what to queue on the LIVE lane now
        (nothing if it holds the piece already). Conflict updates of pushes it has not seen
        go first. The prepared frame is sent as is unless the client holds part of it.

        Called for every subscriber of every piece, so the common case (the next piece,
        no conflict updates) allocates nothing but the list it returns."""
        stream = self._streams.get(project)  # the shell passes the canonical key
        if stream is None:
            project = project_key(project)
            stream = self._streams.get(project)
        if stream is None or stream.state is not StreamState.LIVE or self.closing:
            return []
        cursor = stream.cursor
        if prepared.last_seq <= cursor:
            return []
        if prepared.first_seq > cursor + 1:
            raise ProtocolMisuseError(
                f"live changes of {project} from seq {prepared.first_seq} would leave a gap "
                f"after {cursor}"
            )
        stream.cursor = prepared.last_seq
        if not conflicts and prepared.first_seq == cursor + 1:
            return [prepared.outgoing]
        out: list[Outgoing] = []
        fresh = [u for u in conflicts if u.seq > cursor]
        for frame in prepare_conflicts(project, _latest(fresh)):
            out.append(Outgoing(Conflicts.TYPE, frame, Lane.LIVE))
        if prepared.first_seq == cursor + 1:
            out.append(prepared.outgoing)
        else:
            cut = tuple(r for r in prepared.records if r.seq > cursor)
            out.append(Outgoing(Changes.TYPE, encode(Changes(project, cut)), Lane.LIVE))
        return out

    def end_stream(
        self, project: str, code: ErrorCode, message: str, spelled: str | None = None
    ) -> list[Outgoing]:
        """The project cannot be synced (unknown, not a member, removed, the log cannot be
        read): ``project_error`` naming it as the client ``spelled`` it, and nothing more
        for it until the client subscribes again."""
        self._streams.pop(project_key(project), None)
        return self._send(ProjectError(spelled or project, code.value, message), Lane.CONTROL)

    # -- pushes and status ----------------------------------------------------------------------

    def answer_push(
        self, push_id: int, project: str, results: Sequence[EntityResult]
    ) -> list[Outgoing]:
        """The push's transaction committed (or each entity was refused): its result."""
        self._take_push(push_id)
        return self._send(PushResult(push_id, project, tuple(results)), Lane.CONTROL)

    def refuse_push(self, push_id: int, code: ErrorCode, message: str) -> list[Outgoing]:
        """Nothing of the push was stored; the client may send it again (as the code says)."""
        self._take_push(push_id)
        return self._send(Error(code.value, message, push_id=push_id), Lane.CONTROL)

    def refuse_message(self, event: ClientMessage, code: ErrorCode, message: str) -> list[Outgoing]:
        """A valid message that is not processed (over the rate): a non-fatal error naming
        the push it was, if it was one."""
        if isinstance(event, Push):
            return self.refuse_push(event.push_id, code, message)
        return self._send(Error(code.value, message), Lane.CONTROL)

    def status(self, status: Status) -> list[Outgoing]:
        return self._send(status, Lane.CONTROL)

    # -- inside -------------------------------------------------------------------------------

    def _start(self, project: str, stream: _Stream) -> bool:
        if self.closing:
            return False
        if self.connection.state is not ConnectionState.OPEN:
            raise ProtocolMisuseError("a project stream before the handshake ended")
        if project in self._streams:
            raise ProtocolMisuseError(f"project {project} is streaming already")
        self._streams[project] = stream
        return True

    def _stream(self, project: str, wanted: StreamState) -> _Stream | None:
        """The project's stream, which must be in ``wanted``; None when it has ended (an
        unsubscribe or a project error raced the shell's work) or the connection is going."""
        stream = self._streams.get(project)
        if stream is None or self.closing:
            return None
        if stream.state is not wanted:
            raise ProtocolMisuseError(
                f"project {project} is in {stream.state.value}, not {wanted.value}"
            )
        return stream

    @staticmethod
    def _check_follows(stream: _Stream, first_seq: int, project: str) -> None:
        if first_seq != stream.cursor + 1:
            raise ProtocolMisuseError(
                f"changes of {project} from seq {first_seq}; the client holds {stream.cursor}"
            )

    def _flush_chunk(self, project: str, stream: _Stream) -> list[Outgoing]:
        if not stream.chunk:
            return []
        chunk = SnapshotChunk(project, tuple(stream.chunk))
        stream.chunk, stream.chunk_bytes = [], 0
        return self._send(chunk, Lane.BULK)

    def _take_push(self, push_id: int) -> None:
        if push_id not in self._pushes:
            raise ProtocolMisuseError(f"push {push_id} is not waiting for an answer")
        del self._pushes[push_id]

    def _send(self, message: ServerMessage, lane: Lane) -> list[Outgoing]:
        if self.closing:
            return []
        if self.connection.state is not ConnectionState.OPEN:
            raise ProtocolMisuseError(f"cannot send {message.TYPE} before the handshake ended")
        return [Outgoing(message.TYPE, encode(message), lane)]
