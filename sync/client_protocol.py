"""The client's side of the sync protocol as one object without I/O.

``ClientConnection`` (``sync.connection``) owns the handshake and the decoding of server
frames. ``ClientProtocol`` wraps it and owns everything after ``welcome``: each project's
stream, the pushes waiting for their answer, and the order in which the server's messages
may come. The shell (the SDK's sync loop) pumps: it feeds frames in, writes what
``data_to_send()`` returns, and acts on ``events_received()`` with its storage; the app's
intents (subscribe, unsubscribe, push, an HTTP snapshot stored) go in as method calls.
Nothing here touches a socket, a clock or an event loop, so every rule is tested with
frames in and events out (``tests/sync/test_client_protocol.py``). After any call, drain
both ``events_received()`` and ``data_to_send()``: intents can produce events too.

A project moves one way::

    QUEUED --welcome--> SUBSCRIBING --snapshot_begin--> SNAPSHOT --snapshot_end--+
      |                   |   ^                                                   v
      |                   |   +--- snapshot_fetched / _failed ---+   CATCHING_UP <+
      |                   +--changes---------------------------------^  |
      +--welcome (cursor nil, HTTP)--> FETCHING                    synced v
                                                                      LIVE
    any state --project_error / unsubscribe--> gone (frames still on their way are ignored)
    project_error cursor_ahead --> SUBSCRIBING again with no cursor (a new snapshot)

The rules the server's messages must keep (``docs/protocol.md``, "What the server does");
breaking one is a ``ProtocolFailure``: the connection asks to close (1002) and the shell
reconnects from its stored cursors, which never moved past what was stored:

* a snapshot comes only for a subscription without a cursor, once: ``snapshot_begin``, its
  chunks (exactly the announced number of entities), its conflict records, ``snapshot_end``
  with the same cursor; no ``changes`` or ``synced`` inside the bracket, and no chunk or
  ``snapshot_end`` outside one;
* ``changes`` continue exactly where the project's cursor is (the first seq is cursor + 1,
  each seq one more than the one before): a gap or an overlap means the stream is broken;
  a subscription without a cursor gets no changes before its snapshot;
* a ``conflicts`` message outside a snapshot comes right before the ``changes`` it belongs
  to: ``synced`` or a snapshot may not follow it;
* ``synced`` comes once, after the catch-up, and names the cursor the client holds;
* a ``push_result`` names the push's project.

Messages for a project that is not subscribed (unsubscribed, or ended by a
``project_error``) are ignored: they were on their way. So are push results and push errors
for push ids that are not waiting for an answer (an error for an unknown push id is an
ordinary ``ErrorReceived``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, Protocol, TypeAlias, TypeVar

from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.sync.codec import MAX_HELLO_PROJECTS
from fieldsync.sync.connection import ClientConnection, ConnectionState, InvalidStateError
from fieldsync.sync.errors import CloseCode, ErrorCode
from fieldsync.sync.messages import (
    PROTOCOL_VERSIONS,
    ChangeRecord,
    Changes,
    ConflictRecord,
    Conflicts,
    EntityAccepted,
    EntityPush,
    EntityResult,
    Error,
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
    "OUT_OF_ORDER",
    "RETRYABLE_PUSH_CODES",
    "SPLIT_PUSH_CODES",
    "ChangesReceived",
    "ClientEvent",
    "ClientProtocol",
    "ConflictsChanged",
    "CursorAhead",
    "ErrorReceived",
    "ProjectFailed",
    "ProjectLive",
    "ProjectState",
    "ProtocolFailure",
    "PushAnswered",
    "PushBudget",
    "PushEntity",
    "PushRefused",
    "ServerStatus",
    "SnapshotEntities",
    "SnapshotFinished",
    "SnapshotStarted",
    "SnapshotWanted",
    "Welcomed",
]

OUT_OF_ORDER = "out_of_order"
"""The close reason (with 1002) when the server's messages break an ordering rule."""
RETRYABLE_PUSH_CODES = frozenset(
    {ErrorCode.SERVER_UNAVAILABLE, ErrorCode.INTERNAL_ERROR, ErrorCode.RATE_LIMITED}
)
"""Push refusals that store nothing and pass: send the same push again later."""
SPLIT_PUSH_CODES = frozenset({ErrorCode.TOO_MANY_ENTITIES, ErrorCode.FRAME_TOO_LARGE})
"""Push refusals that ask for a smaller push."""


class PushEntity(Protocol):
    """What a push carries for one entity: ``EntityPush``, or the shell's own record (the
    SDK's outbox batch) so that the answer comes back with what the shell needs."""

    @property
    def entity_type(self) -> str: ...

    @property
    def entity_id(self) -> str: ...

    @property
    def changes(self) -> Sequence[bytes]: ...


B = TypeVar("B", bound=PushEntity)


class ProjectState(Enum):
    QUEUED = "queued"  # wanted; subscribed (or fetched over HTTP) once the connection opens
    FETCHING = "fetching"  # the shell fetches its HTTP snapshot; not subscribed on the wire
    SUBSCRIBING = "subscribing"  # subscribe sent (or in the hello); nothing received yet
    SNAPSHOT = "snapshot"  # between snapshot_begin and snapshot_end
    CATCHING_UP = "catching_up"  # changes from the cursor on, until synced
    LIVE = "live"  # synced: changes arrive as they are committed


_ON_THE_WIRE = (
    ProjectState.SUBSCRIBING,
    ProjectState.SNAPSHOT,
    ProjectState.CATCHING_UP,
    ProjectState.LIVE,
)


@dataclass(frozen=True, slots=True)
class PushBudget:
    """How large the next push may be: the server's limits, cut after a too-big refusal."""

    max_entities: int
    max_changes_per_entity: int
    max_bytes: int
    max_ops: int


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcomed:
    """The connection is open. ``limits`` are the server's (a limit it does not announce
    keeps its default); size pushes by ``ClientProtocol.push_budget()``."""

    welcome: Welcome
    limits: Limits


@dataclass(frozen=True, slots=True)
class SnapshotWanted:
    """Fetch the project's snapshot over HTTP, store it, then call ``snapshot_fetched`` (or
    ``snapshot_fetch_failed``: it then comes over the WebSocket)."""

    project_id: str


@dataclass(frozen=True, slots=True)
class SnapshotStarted:
    project_id: str
    cursor: int
    entity_count: int


@dataclass(frozen=True, slots=True)
class SnapshotEntities:
    """Entities of the snapshot under way: store them now (the cursor does not move)."""

    project_id: str
    entities: tuple[SnapshotEntity, ...]


@dataclass(frozen=True, slots=True)
class SnapshotFinished:
    """Every entity has come: the project is at ``cursor``, and ``conflicts`` (every record
    as of that cursor) replace the stored ones."""

    project_id: str
    cursor: int
    conflicts: tuple[ConflictRecord, ...]


@dataclass(frozen=True, slots=True)
class ChangesReceived:
    """Logged changes right after the project's cursor; store them with ``cursor``."""

    project_id: str
    changes: tuple[ChangeRecord, ...]

    @property
    def cursor(self) -> int:
        return self.changes[-1].seq


@dataclass(frozen=True, slots=True)
class ConflictsChanged:
    """Conflict records changed by the changes that come next; store them now."""

    project_id: str
    conflicts: tuple[ConflictRecord, ...]


@dataclass(frozen=True, slots=True)
class ProjectLive:
    project_id: str
    cursor: int


@dataclass(frozen=True, slots=True)
class CursorAhead:
    """The server's log is behind our cursor (restored from a backup): the protocol has
    asked for a snapshot in its place. Seqs acknowledged before belong to the other log."""

    project_id: str
    message: str


@dataclass(frozen=True, slots=True)
class ProjectFailed:
    """``project_error``: the project's stream has ended; subscribe again to retry."""

    project_id: str
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class PushAnswered(Generic[B]):
    """A push's result. ``answers`` pairs each entity the push carried with its result, in
    the server's order; an entity without a result is not answered (send it again)."""

    push_id: int
    project_id: str
    carried: tuple[B, ...]
    answers: tuple[tuple[B, EntityResult], ...]


@dataclass(frozen=True, slots=True)
class PushRefused(Generic[B]):
    """The whole push was refused (an ``error`` with its push id); nothing of it is stored.
    ``retry``: send it again later. ``split``: send it again now, smaller (the budget is cut
    already); a push of one change cannot be split."""

    push_id: int
    project_id: str
    carried: tuple[B, ...]
    code: str
    message: str
    fatal: bool
    retry: bool
    split: bool


@dataclass(frozen=True, slots=True)
class ErrorReceived:
    """An ``error`` about no push waiting for an answer; a fatal one closes the connection."""

    code: str
    message: str
    fatal: bool


@dataclass(frozen=True, slots=True)
class ServerStatus:
    state: str
    code: str
    message: str

    @property
    def problem(self) -> str | None:
        """What is wrong on the server's side, or None when it is ``ok``."""
        return None if self.state == "ok" else self.code or "degraded"


@dataclass(frozen=True, slots=True)
class ProtocolFailure:
    """The server broke the protocol (an unreadable frame, a message out of place or out of
    order): the connection asks to close; reconnect from the stored cursors."""

    code: str  # an ErrorCode value for a frame, OUT_OF_ORDER for an ordering rule
    message: str


ClientEvent: TypeAlias = (
    Welcomed
    | SnapshotWanted
    | SnapshotStarted
    | SnapshotEntities
    | SnapshotFinished
    | ChangesReceived
    | ConflictsChanged
    | ProjectLive
    | CursorAhead
    | ProjectFailed
    | PushAnswered[B]
    | PushRefused[B]
    | ErrorReceived
    | ServerStatus
    | ProtocolFailure
)


# --- inside ---------------------------------------------------------------------------------


class _OutOfOrder(Exception):  # noqa: N818 (the server broke an ordering rule)
    pass


@dataclass(slots=True)
class _Bracket:
    """An open snapshot: its cursor, the entities announced and seen, its conflicts."""

    cursor: int
    count: int
    seen: int = 0
    conflicts: list[ConflictRecord] = field(default_factory=list)


@dataclass(slots=True)
class _Stream:
    state: ProjectState
    cursor: int | None  # the last seq held; None: nothing yet (a snapshot is needed)
    snapshot: _Bracket | None = None
    conflicts_pending: bool = False  # a conflicts message waits for its changes


@dataclass(frozen=True, slots=True)
class _Flight(Generic[B]):
    project_id: str
    carried: tuple[B, ...]


class ClientProtocol(Generic[B]):
    """One connection's protocol, client side: ``ClientConnection`` plus the streams and the
    pushes. ``B`` is what a push carries per entity (see ``PushEntity``).

    ``http_snapshots``: a project without a cursor gets its first snapshot over HTTP (a
    ``SnapshotWanted`` event) unless that failed on this connection already.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS, *, http_snapshots: bool = False) -> None:
        self.connection = ClientConnection(limits)
        self.http_snapshots = http_snapshots
        self.server_limits = DEFAULT_LIMITS  # from welcome
        self.failure: ProtocolFailure | None = None
        self._streams: dict[str, _Stream] = {}
        self._unsubscribe_on_open: list[str] = []  # in the hello, dropped before welcome
        self._http_failed: set[str] = set()
        self._flights: dict[int, _Flight[B]] = {}
        self._acknowledged: dict[str, int] = {}
        self._next_push_id = 1
        self._shrink = 1
        self._events: list[ClientEvent[B]] = []

    # -- the connection ---------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        return self.connection.state

    @property
    def open(self) -> bool:
        return self.connection.state is ConnectionState.OPEN

    @property
    def closing(self) -> bool:
        return self.connection.state in (ConnectionState.CLOSING, ConnectionState.CLOSED)

    @property
    def close_requested(self) -> tuple[CloseCode, str] | None:
        return self.connection.close_requested

    def hello(
        self,
        token: str,
        client_id: str,
        projects: Sequence[ProjectCursor] = (),
        *,
        outbox_age_ms: int | None = None,
        versions: Sequence[int] = PROTOCOL_VERSIONS,
        client_version: str | None = None,
    ) -> None:
        """Say hello with ``projects`` (and any subscribed before): the hello names up to
        MAX_HELLO_PROJECTS of them; the others, and those waiting for an HTTP snapshot,
        follow once the connection is open. ``client_version`` names the client software
        (shown in the members' sync health)."""
        if self.connection.state is not ConnectionState.AWAITING_HELLO:
            raise InvalidStateError(f"hello() needs AWAITING_HELLO, not {self.state.name}")
        for project in projects:
            self.subscribe(project.project_id, project.cursor)
        named: list[ProjectCursor] = []
        for project_id, stream in self._streams.items():
            if len(named) < MAX_HELLO_PROJECTS and not self._wants_http(project_id, stream.cursor):
                named.append(ProjectCursor(project_id, stream.cursor))
                stream.state = ProjectState.SUBSCRIBING
        self.connection.hello(
            token,
            client_id,
            named,
            outbox_age_ms=outbox_age_ms,
            versions=versions,
            client_version=client_version,
        )

    def receive_frame(self, frame: bytes | str) -> None:
        """A frame from the server; what it means comes out of ``events_received``."""
        if self.closing:
            return
        self.connection.receive_frame(frame)
        for message in self.connection.events_received():
            try:
                self._receive(message)
            except _OutOfOrder as exc:
                self._fail(ProtocolFailure(OUT_OF_ORDER, str(exc)))
                self.connection.close(CloseCode.PROTOCOL_ERROR, OUT_OF_ORDER)
                return
        violation = self.connection.failure
        if violation is not None and self.failure is None:
            self._fail(ProtocolFailure(violation.code.value, violation.message))

    def data_to_send(self) -> list[bytes]:
        return self.connection.data_to_send()

    def events_received(self) -> list[ClientEvent[B]]:
        """What happened since the last call, in order."""
        events, self._events = self._events, []
        return events

    def close(self, code: CloseCode = CloseCode.NORMAL, reason: str = "") -> None:
        """Ask the shell to close (e.g. the shell could not store what came)."""
        self.connection.close(code, reason)

    def connection_closed(self) -> None:
        self.connection.connection_closed()

    # -- projects ---------------------------------------------------------------------------

    def subscribe(self, project_id: str, cursor: int | None) -> None:
        """Sync the project from ``cursor`` (None: nothing held, a snapshot first). Ignored
        while it is subscribed, or waiting for its HTTP snapshot, already."""
        if self.closing or project_id in self._streams:
            return
        if not self.open:
            self._streams[project_id] = _Stream(ProjectState.QUEUED, cursor)
            return
        self._start(project_id, cursor)

    def unsubscribe(self, project_id: str) -> None:
        """Stop syncing the project; whatever of it is still on its way is ignored."""
        self._acknowledged.pop(project_id, None)
        stream = self._streams.pop(project_id, None)
        if stream is None or stream.state not in _ON_THE_WIRE or self.closing:
            return
        if self.open:
            self.connection.send(Unsubscribe(project_id))
        else:  # named in the hello; the server has not answered yet
            self._unsubscribe_on_open.append(project_id)

    def snapshot_fetched(self, project_id: str, cursor: int) -> None:
        """The HTTP snapshot is stored at ``cursor``: subscribe from there."""
        if self._fetching(project_id):
            del self._streams[project_id]
            self._start(project_id, cursor)

    def snapshot_fetch_failed(self, project_id: str) -> None:
        """No HTTP snapshot: the snapshot comes over the WebSocket (for this connection)."""
        self._http_failed.add(project_id)
        if self._fetching(project_id):
            del self._streams[project_id]
            self._start(project_id, None)

    def project_state(self, project_id: str) -> ProjectState | None:
        stream = self._streams.get(project_id)
        return stream.state if stream is not None else None

    def cursor(self, project_id: str) -> int | None:
        """The last seq of the project that came on this connection (or it started from)."""
        stream = self._streams.get(project_id)
        return stream.cursor if stream is not None else None

    def live_projects(self) -> frozenset[str]:
        """The projects caught up on this connection (none once it is closing)."""
        if not self.open:
            return frozenset()
        return frozenset(p for p, s in self._streams.items() if s.state is ProjectState.LIVE)

    # -- pushes -----------------------------------------------------------------------------

    def push(self, project_id: str, entities: Sequence[B]) -> int | None:
        """Send the entities' changes; returns the push id (None once the connection is
        closing: nothing was sent). Each entity at most once."""
        if self.closing:
            return None
        if not self.open:
            raise InvalidStateError(f"push() needs OPEN, not {self.state.name}")
        carried = tuple(entities)
        if len({e.entity_id for e in carried}) != len(carried):
            raise ValueError("a push names each entity once")
        push_id = self._next_push_id
        self._next_push_id += 1
        sent = tuple(EntityPush(e.entity_type, e.entity_id, tuple(e.changes)) for e in carried)
        self.connection.send(Push(push_id, project_id, sent))
        self._flights[push_id] = _Flight(project_id, carried)
        return push_id

    def pushing(self, project_id: str) -> bool:
        """Whether a push of the project waits for its answer."""
        return any(f.project_id == project_id for f in self._flights.values())

    def pushes_in_flight(self) -> int:
        return len(self._flights)

    def in_flight(self, project_id: str) -> list[B]:
        """What the project's pushes waiting for an answer carry."""
        return [e for f in self._flights.values() if f.project_id == project_id for e in f.carried]

    def push_budget(self) -> PushBudget:
        limits, shrink = self.server_limits, self._shrink
        return PushBudget(
            max_entities=max(1, limits.max_entities_per_batch // shrink),
            max_changes_per_entity=max(1, limits.max_changes_per_entity // shrink),
            max_bytes=max(1, limits.max_frame_bytes // shrink),
            max_ops=max(1, limits.max_ops_per_push // shrink),
        )

    def acknowledged_seq(self, project_id: str) -> int:
        """The highest seq the server gave a change of ours in the project, on this
        connection: caught up means holding at least that (our own changes come back in the
        stream, possibly after their push_result)."""
        return self._acknowledged.get(project_id, 0)

    # -- inside -----------------------------------------------------------------------------

    def _wants_http(self, project_id: str, cursor: int | None) -> bool:
        return self.http_snapshots and cursor is None and project_id not in self._http_failed

    def _fetching(self, project_id: str) -> bool:
        stream = self._streams.get(project_id)
        return stream is not None and stream.state is ProjectState.FETCHING and not self.closing

    def _start(self, project_id: str, cursor: int | None) -> None:
        """On an open connection: fetch over HTTP or subscribe."""
        if self._wants_http(project_id, cursor):
            self._streams[project_id] = _Stream(ProjectState.FETCHING, None)
            self._events.append(SnapshotWanted(project_id))
            return
        self._streams[project_id] = _Stream(ProjectState.SUBSCRIBING, cursor)
        self.connection.send(Subscribe(ProjectCursor(project_id, cursor)))

    def _fail(self, failure: ProtocolFailure) -> None:
        self.failure = failure
        self._events.append(failure)

    def _receive(self, message: ServerMessage) -> None:
        if isinstance(message, Welcome):
            self._welcome(message)
        elif isinstance(message, PushResult):
            self._push_result(message)
        elif isinstance(message, Error):
            self._error(message)
        elif isinstance(message, Status):
            self._events.append(ServerStatus(message.state, message.code, message.message))
        else:
            stream = self._streams.get(message.project_id)
            if stream is None or stream.state not in _ON_THE_WIRE:
                return  # not subscribed: it was on its way
            if isinstance(message, SnapshotBegin):
                self._snapshot_begin(stream, message)
            elif isinstance(message, SnapshotChunk):
                self._snapshot_chunk(stream, message)
            elif isinstance(message, SnapshotEnd):
                self._snapshot_end(stream, message)
            elif isinstance(message, Conflicts):
                self._conflicts(stream, message)
            elif isinstance(message, Changes):
                self._changes(stream, message)
            elif isinstance(message, Synced):
                self._synced(stream, message)
            else:
                self._project_error(stream, message)

    def _welcome(self, welcome: Welcome) -> None:
        fields = {f.name for f in dataclasses.fields(Limits)}
        announced = {k: v for k, v in welcome.limits.items() if k in fields and v > 0}
        self.server_limits = Limits(**announced)
        self._events.append(Welcomed(welcome, self.server_limits))
        for project_id in self._unsubscribe_on_open:
            self.connection.send(Unsubscribe(project_id))
        self._unsubscribe_on_open.clear()
        queued = [p for p, s in self._streams.items() if s.state is ProjectState.QUEUED]
        for project_id in queued:
            self._start(project_id, self._streams.pop(project_id).cursor)

    def _snapshot_begin(self, stream: _Stream, begin: SnapshotBegin) -> None:
        if stream.state is not ProjectState.SUBSCRIBING or stream.cursor is not None:
            raise _OutOfOrder(
                f"snapshot_begin of {begin.project_id} in {stream.state.value}"
                + (f" from cursor {stream.cursor}" if stream.cursor is not None else "")
            )
        stream.state = ProjectState.SNAPSHOT
        stream.snapshot = _Bracket(begin.cursor, begin.entity_count)
        self._events.append(SnapshotStarted(begin.project_id, begin.cursor, begin.entity_count))

    def _bracket(self, stream: _Stream, what: str, project_id: str) -> _Bracket:
        if stream.snapshot is None:
            raise _OutOfOrder(f"{what} of {project_id} outside a snapshot")
        return stream.snapshot

    def _snapshot_chunk(self, stream: _Stream, chunk: SnapshotChunk) -> None:
        bracket = self._bracket(stream, "snapshot_chunk", chunk.project_id)
        if bracket.conflicts:
            raise _OutOfOrder(f"snapshot_chunk of {chunk.project_id} after its conflicts")
        bracket.seen += len(chunk.entities)
        if bracket.seen > bracket.count:
            raise _OutOfOrder(
                f"the snapshot of {chunk.project_id} announced {bracket.count} entities, "
                f"its chunks hold more"
            )
        self._events.append(SnapshotEntities(chunk.project_id, chunk.entities))

    def _snapshot_end(self, stream: _Stream, end: SnapshotEnd) -> None:
        bracket = self._bracket(stream, "snapshot_end", end.project_id)
        if end.cursor != bracket.cursor:
            raise _OutOfOrder(
                f"the snapshot of {end.project_id} began at cursor {bracket.cursor} "
                f"and ended at {end.cursor}"
            )
        if bracket.seen != bracket.count:
            raise _OutOfOrder(
                f"the snapshot of {end.project_id} announced {bracket.count} entities "
                f"and ended after {bracket.seen}"
            )
        stream.state = ProjectState.CATCHING_UP
        stream.cursor = end.cursor
        stream.snapshot = None
        self._events.append(SnapshotFinished(end.project_id, end.cursor, tuple(bracket.conflicts)))

    def _conflicts(self, stream: _Stream, message: Conflicts) -> None:
        if stream.snapshot is not None:
            stream.snapshot.conflicts.extend(message.conflicts)  # stored with the snapshot
            return
        if stream.cursor is None:
            raise _OutOfOrder(f"conflicts of {message.project_id} before its snapshot")
        stream.conflicts_pending = True
        self._events.append(ConflictsChanged(message.project_id, message.conflicts))

    def _changes(self, stream: _Stream, message: Changes) -> None:
        project_id = message.project_id
        if stream.snapshot is not None:
            raise _OutOfOrder(f"changes of {project_id} in the middle of a snapshot")
        if stream.cursor is None:
            raise _OutOfOrder(f"changes of {project_id} before its snapshot")
        if not message.changes:
            return
        expected = stream.cursor + 1
        for offset, record in enumerate(message.changes):
            if record.seq != expected + offset:
                raise _OutOfOrder(
                    f"changes of {project_id}: expected seq {expected + offset}, got {record.seq}"
                )
        stream.cursor = message.changes[-1].seq
        stream.conflicts_pending = False
        if stream.state is ProjectState.SUBSCRIBING:
            stream.state = ProjectState.CATCHING_UP
        self._events.append(ChangesReceived(project_id, message.changes))

    def _synced(self, stream: _Stream, synced: Synced) -> None:
        project_id = synced.project_id
        if stream.state is ProjectState.LIVE:
            raise _OutOfOrder(f"a second synced for {project_id}")
        if stream.snapshot is not None or stream.cursor is None:
            raise _OutOfOrder(f"synced for {project_id} before its snapshot ended")
        if stream.conflicts_pending:
            raise _OutOfOrder(f"synced for {project_id} between conflicts and their changes")
        if synced.cursor != stream.cursor:
            raise _OutOfOrder(
                f"the server says we hold seq {synced.cursor} of {project_id}, "
                f"we hold {stream.cursor}"
            )
        stream.state = ProjectState.LIVE
        self._events.append(ProjectLive(project_id, stream.cursor))

    def _project_error(self, stream: _Stream, error: ProjectError) -> None:
        project_id = error.project_id
        if error.code == ErrorCode.CURSOR_AHEAD:
            # The log is behind our cursor: start again from a snapshot (over the WebSocket,
            # which is subscribed already), merged by the shell with what it holds.
            self._acknowledged.pop(project_id, None)
            self._streams[project_id] = _Stream(ProjectState.SUBSCRIBING, None)
            self.connection.send(Subscribe(ProjectCursor(project_id, None)))
            self._events.append(CursorAhead(project_id, error.message))
            return
        del self._streams[project_id]
        self._events.append(ProjectFailed(project_id, error.code, error.message))

    def _push_result(self, result: PushResult) -> None:
        flight = self._flights.get(result.push_id)
        if flight is None:
            return  # not ours, or answered already
        if result.project_id != flight.project_id:
            raise _OutOfOrder(
                f"push {result.push_id} was for {flight.project_id}, "
                f"its result names {result.project_id}"
            )
        del self._flights[result.push_id]
        unanswered = {e.entity_id: e for e in flight.carried}
        answers: list[tuple[B, EntityResult]] = []
        for entity in result.results:
            carried = unanswered.pop(entity.entity_id, None)
            if carried is None:
                continue  # not in this push, or answered twice
            answers.append((carried, entity))
            if isinstance(entity, EntityAccepted) and entity.seqs:
                seq = max(self._acknowledged.get(flight.project_id, 0), *entity.seqs)
                self._acknowledged[flight.project_id] = seq
        self._shrink = 1
        self._events.append(
            PushAnswered(result.push_id, flight.project_id, flight.carried, tuple(answers))
        )

    def _error(self, error: Error) -> None:
        flight = self._flights.pop(error.push_id, None) if error.push_id is not None else None
        if flight is None:
            self._events.append(ErrorReceived(error.code, error.message, error.fatal))
            return
        changes = sum(len(e.changes) for e in flight.carried)
        split = error.code in SPLIT_PUSH_CODES and changes > 1
        if split:
            self._shrink *= 2
        self._events.append(
            PushRefused(
                error.push_id if error.push_id is not None else 0,
                flight.project_id,
                flight.carried,
                error.code,
                error.message,
                error.fatal,
                error.code in RETRYABLE_PUSH_CODES,
                split,
            )
        )
