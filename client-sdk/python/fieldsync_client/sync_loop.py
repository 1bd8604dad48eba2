"""The sync loop: one WebSocket to the server, reconnected by itself, for every open project.

The protocol rules live in ``sync.connection.ClientConnection`` (sans I/O); this module is
its I/O shell. A connection says hello with every open project's cursor. A project never
bootstrapped first fetches its snapshot over HTTP (:mod:`fieldsync_client.bootstrap`) and
then subscribes from the snapshot's cursor; if that fails, it subscribes with no cursor and
gets the snapshot over the WebSocket. Snapshots are stored chunk by chunk and their cursor
set at the end; logged changes are stored with the new cursor in one transaction. The loop
pushes the outbox: one push in flight per project, sized by the limits the server announces
in ``welcome``. A push whose result never came is simply sent again on the next connection:
the server recognises changes by hash and answers with their original seqs.

When the connection drops, the loop waits a backoff delay (full jitter) and tries again. It
stops trying only when the server refuses the token (until ``set_token``) or speaks no
protocol version in common.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.sync.codec import MAX_HELLO_PROJECTS, max_server_frame_bytes
from fieldsync.sync.connection import ClientConnection
from fieldsync.sync.connection import ConnectionState as ProtocolState
from fieldsync.sync.errors import CloseCode, ErrorCode
from fieldsync.sync.messages import (
    PROTOCOL_VERSIONS,
    Changes,
    ConflictRecord,
    Conflicts,
    EntityAccepted,
    EntityPush,
    Error,
    ProjectCursor,
    ProjectError,
    Push,
    PushResult,
    ServerMessage,
    SnapshotBegin,
    SnapshotChunk,
    SnapshotEnd,
    Status,
    Subscribe,
    Synced,
    Unsubscribe,
    Welcome,
)
from fieldsync_client.backoff import Backoff
from fieldsync_client.bootstrap import SnapshotUnavailable, http_bootstrap
from fieldsync_client.conflicts import Conflict, ConflictUpdate
from fieldsync_client.errors import (
    AuthError,
    FieldsyncError,
    IncompatibleServer,
    MembershipRemoved,
    Offline,
    ProjectUnavailable,
    ServerError,
)
from fieldsync_client.local_store import LocalStore, OutboxEntry
from fieldsync_client.push_plan import EntityBatch, plan_push
from fieldsync_client.repair import missing_hashes, with_ancestors
from fieldsync_client.replica import ProjectReplica, RemoteDataError, RemoteOutcome
from fieldsync_client.status import ConnectionState, RemoteChanges

__all__ = ["SyncHost", "SyncLoop", "sync_url"]

log = logging.getLogger("fieldsync_client")

PLAN_ROWS = 20_000  # outbox rows read to plan one push
_AUTH_CODES = frozenset({ErrorCode.INVALID_TOKEN.value, ErrorCode.TOKEN_EXPIRED.value})
_RETRYABLE_PUSH = frozenset(
    {
        ErrorCode.SERVER_UNAVAILABLE.value,
        ErrorCode.INTERNAL_ERROR.value,
        ErrorCode.RATE_LIMITED.value,
    }
)
_TOO_BIG_PUSH = frozenset({ErrorCode.TOO_MANY_ENTITIES.value, ErrorCode.FRAME_TOO_LARGE.value})
_MISSING_DEPENDENCIES = "missing_dependencies"
REPAIR_ROW = 0  # the outbox id of a change sent again to fill a gap (no outbox row)


def sync_url(url: str) -> str:
    """The WebSocket endpoint for a server URL: ``http(s)://`` becomes ``ws(s)://`` and an
    empty path becomes ``/sync``."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss"):
        raise ValueError(
            f"the server URL must start with ws://, wss://, http:// or https://: {url!r}"
        )
    path = parts.path if parts.path not in ("", "/") else "/sync"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


class SyncHost(Protocol):
    """What the loop needs from the client that owns it."""

    @property
    def store(self) -> LocalStore: ...

    def replicas(self) -> Mapping[str, ProjectReplica]: ...

    def remote_changed(self, event: RemoteChanges) -> None: ...

    def changes_rejected(self, project_id: str, ids: Sequence[int]) -> None: ...

    def conflicts_changed(self, update: ConflictUpdate) -> None: ...

    def project_failed(self, project_id: str, error: ProjectUnavailable) -> None: ...

    def state_changed(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _InFlight:
    project_id: str
    batches: tuple[EntityBatch, ...]


def _now() -> datetime:
    return datetime.now(UTC)


MAX_RETRY_AFTER_SECONDS = 600.0


def _retry_after(refused: InvalidStatus) -> float:
    """The seconds a refusing server asked us to wait (``Retry-After``), bounded; 0 if none.
    A busy server (429, 503 ``server_busy``) sends it, so clients spread their return."""
    value = refused.response.headers.get("Retry-After", "")
    try:
        seconds = float(value)
    except ValueError:
        return 0.0
    return min(seconds, MAX_RETRY_AFTER_SECONDS) if seconds > 0 else 0.0


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


class SyncLoop:
    def __init__(
        self,
        host: SyncHost,
        url: str,
        token: str,
        client_id: str,
        *,
        backoff: Backoff,
        connect_timeout: float = 10.0,
        versions: Sequence[int] = PROTOCOL_VERSIONS,
        limits: Limits = DEFAULT_LIMITS,
        http_snapshots: bool = True,
    ) -> None:
        self.host = host
        self.url = sync_url(url)
        self.token = token
        self.client_id = client_id
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        self.versions = tuple(versions)
        self.limits = limits
        self.http_snapshots = http_snapshots
        self.state = ConnectionState.STOPPED
        self.last_error: FieldsyncError | None = None
        self.halted: FieldsyncError | None = None  # AuthError or IncompatibleServer
        self.live: set[str] = set()  # projects caught up on the current connection
        self.failed: dict[str, ProjectUnavailable] = {}
        self.server_problem: str | None = None  # from the server's latest status message
        self.synced_at: dict[str, datetime] = {}
        # The highest seq the server gave a change of ours, per project: caught up means
        # holding at least that (our own changes come back after their push_result).
        self.acknowledged_seq: dict[str, int] = {}
        self.connections = 0  # connection attempts so far
        self._idle: set[str] = set()
        self._session: _Session | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    # --- control from the client ----------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
            self._set_state(ConnectionState.CONNECTING)

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            session = self._session
            if session is not None:
                await session.close(CloseCode.NORMAL, "client closing")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_state(ConnectionState.STOPPED)

    def set_token(self, token: str) -> None:
        self.token = token
        if isinstance(self.halted, AuthError):
            self.halted = None
        self._wake.set()

    def reconnect_now(self) -> None:
        """Skip the current backoff delay."""
        self._wake.set()

    def project_added(self, project_id: str) -> None:
        self.failed.pop(project_id, None)
        if self._session is not None:
            self._session.subscribe(project_id)

    def project_removed(self, project_id: str) -> None:
        self.live.discard(project_id)
        self.acknowledged_seq.pop(project_id, None)
        self.failed.pop(project_id, None)
        if self._session is not None:
            self._session.unsubscribe(project_id)

    def outbox_changed(self, project_id: str) -> None:
        if self._session is not None:
            self._session.push(project_id)
        self.check_idle()

    def pushes_in_flight(self) -> int:
        return 0 if self._session is None else len(self._session.in_flight)

    def pushing(self, project_id: str) -> bool:
        return self._session is not None and project_id in self._session.pushing

    # --- the loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            if self.halted is not None:
                self._set_state(ConnectionState.STOPPED)
                await self._wake.wait()
                self._wake.clear()
                continue
            self._set_state(ConnectionState.CONNECTING)
            self.connections += 1
            retry_after = 0.0
            try:
                async with connect(
                    self.url,
                    compression=None,
                    max_size=max_server_frame_bytes(self.limits),
                    open_timeout=self.connect_timeout,
                    close_timeout=2,
                    user_agent_header="fieldsync-client (Python)",
                ) as ws:
                    session = self._session = _Session(self, ws)
                    await session.run()
            except InvalidURI as exc:
                self.halt(FieldsyncError(f"invalid server URL: {_describe(exc)}"))
            except InvalidStatus as exc:
                retry_after = _retry_after(exc)
                self.error(Offline(f"the server at {self.url} refused: {_describe(exc)}"))
            except (OSError, EOFError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
                self.error(Offline(f"cannot reach the server at {self.url}: {_describe(exc)}"))
            except Exception as exc:  # a fault of this SDK: report it and keep syncing
                log.exception("the sync connection failed")
                self.error(FieldsyncError(f"sync failed: {_describe(exc)}"))
            finally:
                self._session = None
                self.live.clear()
                self._idle.clear()
            if self._stopping:
                break
            if self.halted is not None:
                continue
            self._set_state(ConnectionState.OFFLINE)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.backoff.next_delay(retry_after))
            self._wake.clear()

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self.state:
            self.state = state
            self.host.state_changed()

    def error(self, error: FieldsyncError) -> None:
        self.last_error = error
        self.host.state_changed()

    def halt(self, error: FieldsyncError) -> None:
        """Stop reconnecting until the cause is fixed (a new token, a newer SDK)."""
        self.halted = error
        self.last_error = error
        self._set_state(ConnectionState.STOPPED)
        self.host.state_changed()

    def welcomed(self) -> None:
        self.backoff.reset()
        self.last_error = None
        self.server_problem = None
        self._set_state(ConnectionState.ONLINE)
        self.host.state_changed()

    def caught_up(self, project_id: str, replica: ProjectReplica) -> bool:
        """Live, and holding every change of ours the server has acknowledged."""
        acknowledged = self.acknowledged_seq.get(project_id, 0)
        return project_id in self.live and (replica.cursor or 0) >= acknowledged

    def check_idle(self) -> None:
        """Note the projects that are caught up with nothing waiting: they are synced now."""
        now = _now()
        store = self.host.store
        for project_id, replica in self.host.replicas().items():
            idle = (
                self.caught_up(project_id, replica)
                and not self.pushing(project_id)
                and store.pending_count(project_id) == 0
            )
            if not idle:
                self._idle.discard(project_id)
                continue
            self.synced_at[project_id] = now
            if project_id not in self._idle:  # persist transitions only, not every change
                self._idle.add(project_id)
                with store.transaction():
                    store.set_last_synced(project_id, now)


class _Session:
    """One WebSocket connection: from hello until it closes."""

    def __init__(self, loop: SyncLoop, ws: WebSocket) -> None:
        self.loop = loop
        self.host = loop.host
        self.ws = ws
        self.conn = ClientConnection(loop.limits)
        self.subscribed: set[str] = set()
        self.snapshots: dict[str, RemoteOutcome] = {}  # WebSocket snapshots under way
        self.snapshot_conflicts: dict[str, list[ConflictRecord]] = {}  # stored at their end
        self.bootstrapping: dict[str, asyncio.Task[None]] = {}  # HTTP snapshots under way
        self.http_failed: set[str] = set()  # use the WebSocket snapshot on this connection
        # Changes the server said it lacks, per project and entity, sent before the outbox.
        self.repairs: dict[str, dict[str, list[OutboxEntry]]] = {}
        self.in_flight: dict[int, _InFlight] = {}
        self.pushing: set[str] = set()
        self.server_limits = DEFAULT_LIMITS
        self.shrink = 1  # pushes are cut to 1/shrink of the limits after a too-big refusal
        self.retry = Backoff(loop.backoff.base, loop.backoff.cap)
        self._next_push_id = 1
        self._timers: list[asyncio.TimerHandle] = []
        self._outgoing = asyncio.Event()
        self._closed = False

    async def run(self) -> None:
        replicas = self.host.replicas()
        # Projects that bootstrap over HTTP subscribe once their snapshot is stored.
        wanted = [
            ProjectCursor(pid, r.cursor)
            for pid, r in replicas.items()
            if not self._wants_http(pid, r)
        ]
        hello = wanted[:MAX_HELLO_PROJECTS]
        oldest = self.host.store.oldest_pending_at(replicas)
        age = None if oldest is None else max(0, int((_now() - oldest).total_seconds() * 1000))
        self.conn.hello(
            self.loop.token,
            self.loop.client_id,
            hello,
            outbox_age_ms=age,
            versions=self.loop.versions,
        )
        self.subscribed = {p.project_id for p in hello}
        writer = asyncio.get_running_loop().create_task(self._write())
        self._outgoing.set()
        try:
            while self.conn.state not in (ProtocolState.CLOSING, ProtocolState.CLOSED):
                try:
                    frame = await self.ws.recv()
                except ConnectionClosed as closed:
                    self._closed_by_server(closed)
                    break
                self.conn.receive_frame(frame)
                for event in self.conn.events_received():
                    self._handle(event)
                self._outgoing.set()
                self.loop.check_idle()
                self.host.state_changed()
            if self.conn.failure is not None:
                self.loop.error(
                    FieldsyncError(f"the server broke the protocol: {self.conn.failure.message}")
                )
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, OSError):
                await writer
            for task in list(self.bootstrapping.values()):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for timer in self._timers:
                timer.cancel()
            requested = self.conn.close_requested or (CloseCode.NORMAL, "")
            await self.close(*requested)

    async def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.conn.close(CloseCode(code), reason)
        with contextlib.suppress(ConnectionClosed, OSError):
            for frame in self.conn.data_to_send():
                await self.ws.send(frame)
        with contextlib.suppress(ConnectionClosed, OSError):
            await self.ws.close(code, reason)
        self.conn.connection_closed()

    async def _write(self) -> None:
        while True:
            await self._outgoing.wait()
            self._outgoing.clear()
            for frame in self.conn.data_to_send():
                await self.ws.send(frame)

    def _closed_by_server(self, closed: ConnectionClosed) -> None:
        self.conn.connection_closed()
        received = closed.rcvd
        code = received.code if received is not None else None
        reason = received.reason if received is not None else ""
        if code == CloseCode.UNAUTHORIZED and self.loop.halted is None:
            self.loop.halt(AuthError(ErrorCode.INVALID_TOKEN.value, reason or "token refused"))
        elif code == CloseCode.UNSUPPORTED_VERSION and self.loop.halted is None:
            self.loop.halt(IncompatibleServer(ErrorCode.UNSUPPORTED_VERSION.value, reason))
        elif self.loop.last_error is None:
            what = f"code {code}" if code is not None else "no close frame"
            self.loop.error(Offline(f"the server closed the connection ({what}) {reason}".strip()))

    def _fail(self, message: str) -> None:
        """Our copy and the server's stream disagree: drop the connection and resume."""
        log.warning("resyncing: %s", message)
        self.loop.error(FieldsyncError(message))
        self.conn.close(CloseCode.NORMAL, "resuming from the stored cursor")

    # --- messages from the server ---------------------------------------------------------

    def _handle(self, message: ServerMessage) -> None:
        try:
            self._dispatch(message)
        except RemoteDataError as exc:
            self._fail(str(exc))

    def _dispatch(self, message: ServerMessage) -> None:
        if isinstance(message, Welcome):
            self._welcome(message)
        elif isinstance(message, SnapshotBegin):
            if message.project_id in self.subscribed:
                self.snapshots[message.project_id] = RemoteOutcome()
                self.snapshot_conflicts[message.project_id] = []
        elif isinstance(message, SnapshotChunk):
            self._snapshot_chunk(message)
        elif isinstance(message, SnapshotEnd):
            self._snapshot_end(message)
        elif isinstance(message, Changes):
            self._changes(message)
        elif isinstance(message, Conflicts):
            self._conflicts(message)
        elif isinstance(message, Synced):
            self._synced(message)
        elif isinstance(message, PushResult):
            self._push_result(message)
        elif isinstance(message, ProjectError):
            self._project_error(message)
        elif isinstance(message, Error):
            self._error(message)
        elif isinstance(message, Status):
            self.loop.server_problem = None if message.state == "ok" else message.code or "degraded"

    def _replica(self, project_id: str) -> ProjectReplica | None:
        if project_id not in self.subscribed:
            return None  # unsubscribed: frames already on their way are ignored
        return self.host.replicas().get(project_id)

    def _welcome(self, welcome: Welcome) -> None:
        known = {name: value for name, value in welcome.limits.items() if value > 0}
        fields = {field.name for field in dataclasses.fields(Limits)}
        # A limit the server does not announce (an older server) keeps its default.
        self.server_limits = Limits(**{k: v for k, v in known.items() if k in fields})
        self.loop.welcomed()
        for project_id in self.host.replicas():
            self.subscribe(project_id)
            self.push(project_id)

    def _snapshot_chunk(self, chunk: SnapshotChunk) -> None:
        """Store the chunk now: a snapshot is never held in memory as a whole."""
        outcome = self.snapshots.get(chunk.project_id)
        replica = self._replica(chunk.project_id)
        if outcome is None or replica is None:
            return
        part = replica.store_snapshot_part(chunk.entities)
        outcome.changed |= part.changed
        outcome.rejected.extend(part.rejected)

    def _snapshot_end(self, end: SnapshotEnd) -> None:
        outcome = self.snapshots.pop(end.project_id, None)
        conflicts = self.snapshot_conflicts.pop(end.project_id, [])
        replica = self._replica(end.project_id)
        if outcome is None or replica is None:
            return
        removed = replica.finish_snapshot(end.cursor, conflicts)
        self._report(end.project_id, outcome, end.cursor, snapshot=True)
        self._snapshot_conflicts(end.project_id, conflicts, removed)

    def _snapshot_conflicts(
        self, project_id: str, records: Sequence[ConflictRecord], removed: Sequence[str]
    ) -> None:
        self.host.conflicts_changed(
            ConflictUpdate(
                project_id,
                tuple(Conflict.of(r) for r in records if r.status != "removed"),
                tuple(removed),
                snapshot=True,
            )
        )

    def _conflicts(self, message: Conflicts) -> None:
        staged = self.snapshot_conflicts.get(message.project_id)
        if staged is not None:
            staged.extend(message.conflicts)  # stored with the snapshot it belongs to
            return
        replica = self._replica(message.project_id)
        if replica is None:
            return
        removed = replica.apply_conflicts(message.conflicts)
        kept = [r for r in message.conflicts if r.status != "removed"]
        self.host.conflicts_changed(
            ConflictUpdate(
                message.project_id,
                tuple(Conflict.of(r) for r in kept),
                tuple(removed),
            )
        )

    def _changes(self, message: Changes) -> None:
        replica = self._replica(message.project_id)
        if replica is None:
            return
        if message.project_id in self.snapshots:
            raise RemoteDataError("changes arrived in the middle of a snapshot")
        outcome = replica.apply_remote(message.changes)
        cursor = replica.cursor if replica.cursor is not None else 0
        self._report(message.project_id, outcome, cursor, snapshot=False)

    def _report(self, project_id: str, outcome: RemoteOutcome, cursor: int, snapshot: bool) -> None:
        if outcome.rejected:
            self.host.changes_rejected(project_id, outcome.rejected)
        if outcome.changed:
            self.host.remote_changed(
                RemoteChanges(project_id, frozenset(outcome.changed), cursor, snapshot)
            )

    def _synced(self, synced: Synced) -> None:
        replica = self._replica(synced.project_id)
        if replica is None:
            return
        if replica.cursor != synced.cursor:
            raise RemoteDataError(
                f"the server says we hold seq {synced.cursor} of {synced.project_id}, "
                f"we hold {replica.cursor}"
            )
        self.loop.live.add(synced.project_id)
        if self.loop.failed.pop(synced.project_id, None) is not None:
            self.push(synced.project_id)  # refused until now: its outbox waited

    def _project_error(self, error: ProjectError) -> None:
        project_id = error.project_id
        replica = self._replica(project_id)
        if replica is None:
            return
        self.snapshots.pop(project_id, None)
        self.snapshot_conflicts.pop(project_id, None)
        if error.code == ErrorCode.CURSOR_AHEAD.value:
            # The server's log is behind our cursor (restored from a backup?): bootstrap
            # again; the snapshot is merged with what we hold.
            log.warning("project %s: %s; bootstrapping again", project_id, error.message)
            self.loop.acknowledged_seq.pop(project_id, None)  # seqs of the other history
            self.conn.send(Subscribe(ProjectCursor(project_id, None)))
            return
        self.subscribed.discard(project_id)
        if error.code == ErrorCode.MEMBERSHIP_REMOVED.value:
            self._membership_removed(project_id, error.message)
        elif error.code == ErrorCode.PROJECT_UNAVAILABLE.value:
            failure = ProjectUnavailable(project_id, error.code, error.message)
            self.loop.failed[project_id] = failure
            self.loop.error(failure)
            self.host.project_failed(project_id, failure)
        else:  # server_unavailable, or a code from a newer server: try again later
            self.loop.error(ServerError(error.code, error.message))
            self._later(lambda: self.subscribe(project_id))

    def _error(self, error: Error) -> None:
        if error.push_id is not None and error.push_id in self.in_flight:
            self._push_refused(self.in_flight.pop(error.push_id), error)
            return
        if error.code in _AUTH_CODES:
            self.loop.halt(AuthError(error.code, error.message))
        elif error.code == ErrorCode.UNSUPPORTED_VERSION.value:
            self.loop.halt(IncompatibleServer(error.code, error.message))
        else:
            self.loop.error(ServerError(error.code, error.message))

    # --- subscriptions and pushes ---------------------------------------------------------

    def subscribe(self, project_id: str) -> None:
        replica = self.host.replicas().get(project_id)
        if self.conn.state is not ProtocolState.OPEN or replica is None:
            return
        if project_id in self.subscribed or project_id in self.bootstrapping:
            return
        if self._wants_http(project_id, replica):
            task = asyncio.get_running_loop().create_task(self._bootstrap(project_id, replica))
            self.bootstrapping[project_id] = task
            return
        self.subscribed.add(project_id)
        self.conn.send(Subscribe(ProjectCursor(project_id, replica.cursor)))
        self._outgoing.set()

    def unsubscribe(self, project_id: str) -> None:
        if project_id in self.subscribed and self.conn.state is ProtocolState.OPEN:
            self.conn.send(Unsubscribe(project_id))
            self._outgoing.set()
        self.subscribed.discard(project_id)
        self.snapshots.pop(project_id, None)
        self.snapshot_conflicts.pop(project_id, None)
        self.repairs.pop(project_id, None)
        task = self.bootstrapping.pop(project_id, None)
        if task is not None:
            task.cancel()

    def _wants_http(self, project_id: str, replica: ProjectReplica) -> bool:
        """A first snapshot comes over HTTP, unless that already failed on this connection."""
        return (
            self.loop.http_snapshots
            and replica.cursor is None
            and project_id not in self.http_failed
        )

    async def _bootstrap(self, project_id: str, replica: ProjectReplica) -> None:
        """Store the project's HTTP snapshot, then subscribe from its cursor (or, if the
        snapshot could not be had, subscribe with no cursor: a WebSocket snapshot)."""
        try:
            outcome = await http_bootstrap(
                self.loop.url,
                self.loop.token,
                replica,
                read_timeout=self.loop.connect_timeout,
                limits=self.loop.limits,
            )
        except (SnapshotUnavailable, RemoteDataError) as exc:
            log.info("project %s: no HTTP snapshot (%s); using the WebSocket", project_id, exc)
            self.http_failed.add(project_id)
        else:
            self._report(project_id, outcome, replica.cursor or 0, snapshot=True)
            self._snapshot_conflicts(project_id, outcome.conflicts, outcome.conflicts_removed)
        finally:
            self.bootstrapping.pop(project_id, None)
        self.subscribe(project_id)
        self.host.state_changed()

    def _later(self, action: Callable[[], object]) -> None:
        self._timers.append(asyncio.get_running_loop().call_later(self.retry.next_delay(), action))

    def push(self, project_id: str) -> None:
        """Send the project's oldest pending changes, unless a push of it is in flight."""
        if self.conn.state is not ProtocolState.OPEN or project_id in self.pushing:
            return
        if project_id in self.loop.failed or project_id not in self.host.replicas():
            return
        pending = self.host.store.pending_changes(project_id, limit=PLAN_ROWS)
        repairs = self.repairs.get(project_id)
        if repairs:  # first, so that each entity's missing changes go before its own
            pending = [entry for entries in repairs.values() for entry in entries] + pending
        if not pending:
            return
        limits = self.server_limits
        batches = plan_push(
            pending,
            max_entities=max(1, limits.max_entities_per_batch // self.shrink),
            max_changes_per_entity=max(1, limits.max_changes_per_entity // self.shrink),
            max_bytes=max(1, limits.max_frame_bytes // self.shrink),
            max_ops=max(1, limits.max_ops_per_push // self.shrink),
        )
        push_id = self._next_push_id
        self._next_push_id += 1
        entities = tuple(
            EntityPush(b.entity_type, b.entity_id, tuple(e.change for e in b.entries))
            for b in batches
        )
        self.conn.send(Push(push_id, project_id, entities))
        self.in_flight[push_id] = _InFlight(project_id, tuple(batches))
        self.pushing.add(project_id)
        self._outgoing.set()

    def _push_result(self, result: PushResult) -> None:
        flight = self.in_flight.pop(result.push_id, None)
        if flight is None:
            return
        project_id = flight.project_id
        self.pushing.discard(project_id)
        replica = self.host.replicas().get(project_id)
        if replica is None:
            return
        batches = {batch.entity_id: batch for batch in flight.batches}
        acknowledged: list[int] = []
        rejected: list[int] = []
        for entity in result.results:
            batch = batches.pop(entity.entity_id, None)
            if batch is None:
                continue
            ids = [entry.id for entry in batch.entries if entry.id != REPAIR_ROW]
            if isinstance(entity, EntityAccepted):
                acknowledged.extend(ids)
                self._repaired(project_id, batch)
                if entity.seqs:
                    seq = max(self.loop.acknowledged_seq.get(project_id, 0), *entity.seqs)
                    self.loop.acknowledged_seq[project_id] = seq
            elif entity.code == _MISSING_DEPENDENCIES and self._repair(
                project_id, replica, batch, entity.details
            ):
                continue  # its changes stay pending; the next push brings what was missing
            else:
                self.repairs.get(project_id, {}).pop(entity.entity_id, None)
                rejected.extend(
                    replica.reject(
                        entity.entity_id, ids, entity.code, entity.message, entity.details
                    )
                )
        if acknowledged:
            with self.host.store.transaction():
                self.host.store.acknowledge(acknowledged)
        if rejected:
            self.host.changes_rejected(project_id, rejected)
        self.shrink = 1
        self.push(project_id)

    def _repair(
        self,
        project_id: str,
        replica: ProjectReplica,
        batch: EntityBatch,
        details: Mapping[str, object],
    ) -> bool:
        """Plan to send the changes the server lacks, with everything they build on.

        False when that cannot help: the local document does not hold them, or they were
        in this very push (then the server's answer would not change)."""
        missing = missing_hashes(details)
        sent = {entry.hash for entry in batch.entries}
        if missing is None or missing & sent:
            return False
        history = with_ancestors(replica.history(batch.entity_id), missing)
        if history is None:
            return False
        pending = {e.hash for e in self.host.store.pending_changes(project_id, batch.entity_id)}
        now = _now()
        entries = [
            OutboxEntry(
                REPAIR_ROW, project_id, batch.entity_type, batch.entity_id, c.change, c.hash, now
            )
            for c in history
            if c.hash not in pending
        ]
        log.info(
            "project %s: the server lacks %d changes of %s; sending %d again",
            project_id,
            len(missing),
            batch.entity_id,
            len(entries),
        )
        self.repairs.setdefault(project_id, {})[batch.entity_id] = entries
        return True

    def _repaired(self, project_id: str, batch: EntityBatch) -> None:
        """The server logged what this batch carried: those changes need no resending."""
        repairs = self.repairs.get(project_id)
        if not repairs or batch.entity_id not in repairs:
            return
        sent = {entry.hash for entry in batch.entries if entry.id == REPAIR_ROW}
        left = [entry for entry in repairs[batch.entity_id] if entry.hash not in sent]
        if left:
            repairs[batch.entity_id] = left
        else:
            del repairs[batch.entity_id]

    def _membership_removed(self, project_id: str, message: str) -> None:
        """Removed from the project: stop syncing it and reject its outbox, which the server
        will never log, so the app sees each change refused rather than waiting forever.

        Changes in a push still in flight wait for that push's answer (it may have been
        logged just before the removal).
        """
        code = ErrorCode.MEMBERSHIP_REMOVED.value
        failure = MembershipRemoved(project_id, code, message)
        self.subscribed.discard(project_id)
        self.snapshots.pop(project_id, None)
        self.snapshot_conflicts.pop(project_id, None)
        self.loop.live.discard(project_id)
        self.loop.failed[project_id] = failure
        replica = self.host.replicas().get(project_id)
        if replica is not None:
            flying = {
                entry.id
                for flight in self.in_flight.values()
                if flight.project_id == project_id
                for batch in flight.batches
                for entry in batch.entries
            }
            by_entity: dict[str, list[int]] = {}
            for entry in self.host.store.pending_changes(project_id):
                if entry.id not in flying:
                    by_entity.setdefault(entry.entity_id, []).append(entry.id)
            rejected: list[int] = []
            for entity_id, ids in by_entity.items():
                rejected.extend(replica.reject(entity_id, ids, code, message, {}))
            if rejected:
                self.host.changes_rejected(project_id, rejected)
        self.loop.error(failure)
        self.host.project_failed(project_id, failure)

    def _push_refused(self, flight: _InFlight, error: Error) -> None:
        """The whole push was refused before any entity was looked at."""
        project_id = flight.project_id
        self.pushing.discard(project_id)
        replica = self.host.replicas().get(project_id)
        if replica is None:
            return
        changes = sum(len(batch.entries) for batch in flight.batches)
        if error.code in _RETRYABLE_PUSH:
            self.loop.error(ServerError(error.code, error.message))
            self._later(lambda: self.push(project_id))
        elif error.code == ErrorCode.MEMBERSHIP_REMOVED.value:
            self._membership_removed(project_id, error.message)
        elif error.code == ErrorCode.PROJECT_UNAVAILABLE.value:
            failure = ProjectUnavailable(project_id, error.code, error.message)
            self.loop.failed[project_id] = failure
            self.loop.error(failure)
            self.host.project_failed(project_id, failure)
        elif error.code in _TOO_BIG_PUSH and changes > 1:
            self.shrink *= 2
            self.push(project_id)
        else:  # forbidden, or a push the server cannot take at all: never retried
            rejected: list[int] = []
            for batch in flight.batches:
                rejected.extend(
                    replica.reject(
                        batch.entity_id,
                        [entry.id for entry in batch.entries],
                        error.code,
                        error.message,
                        {},
                    )
                )
            self.loop.error(ServerError(error.code, error.message))
            if rejected:
                self.host.changes_rejected(project_id, rejected)
