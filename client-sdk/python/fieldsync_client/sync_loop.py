"""The sync loop: one WebSocket to the server, reconnected by itself, for every open project.

The protocol lives in ``sync.client_protocol.ClientProtocol`` (no I/O): the projects'
streams, their ordering rules, the pushes waiting for an answer. This module is its pump:
it writes the protocol's frames, feeds it what the server sends, and turns its events into
storage and what the app sees. A connection says hello with every open project's cursor. A
project never bootstrapped first fetches its snapshot over HTTP
(:mod:`fieldsync_client.bootstrap`) when the protocol asks, and then subscribes from the
snapshot's cursor; if that fails, it gets the snapshot over the WebSocket. Snapshots are
stored chunk by chunk and their cursor set at the end; logged changes are stored with the
new cursor in one transaction. The loop pushes the outbox: one push in flight per project,
sized by the protocol's push budget. A push whose result never came is simply sent again on
the next connection: the server recognises changes by hash and answers with their original
seqs.

When the connection drops, the loop waits a backoff delay (full jitter) and tries again. It
stops trying only when the server refuses the token (until ``set_token``) or speaks no
protocol version in common.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection as WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.sync.client_protocol import (
    ChangesReceived,
    ClientEvent,
    ClientProtocol,
    ConflictsChanged,
    CursorAhead,
    ErrorReceived,
    ProjectFailed,
    ProjectLive,
    ProtocolFailure,
    PushAnswered,
    PushRefused,
    ServerStatus,
    SnapshotEntities,
    SnapshotFinished,
    SnapshotStarted,
    SnapshotWanted,
    Welcomed,
)
from fieldsync.sync.codec import max_server_frame_bytes
from fieldsync.sync.errors import CloseCode, ErrorCode
from fieldsync.sync.messages import PROTOCOL_VERSIONS, ConflictRecord, EntityAccepted, ProjectCursor
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
from fieldsync_client.repair import REPAIR_ROW, Repairs, missing_hashes, with_ancestors
from fieldsync_client.replica import ProjectReplica, RemoteDataError, RemoteOutcome
from fieldsync_client.status import ConnectionState, RemoteChanges
from fieldsync_client.version import CLIENT_VERSION

__all__ = ["SyncHost", "SyncLoop", "sync_url"]

log = logging.getLogger("fieldsync_client")

PLAN_ROWS = 20_000  # outbox rows read to plan one push
_AUTH_CODES = frozenset({ErrorCode.INVALID_TOKEN.value, ErrorCode.TOKEN_EXPIRED.value})
_MISSING_DEPENDENCIES = "missing_dependencies"


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
        self.failed: dict[str, ProjectUnavailable] = {}
        self.server_problem: str | None = None  # from the server's latest status message
        self.synced_at: dict[str, datetime] = {}
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
        self.failed.pop(project_id, None)
        if self._session is not None:
            self._session.unsubscribe(project_id)

    def outbox_changed(self, project_id: str) -> None:
        if self._session is not None:
            self._session.push(project_id)
        self.check_idle()

    @property
    def live(self) -> frozenset[str]:
        """The projects caught up on the current connection."""
        return frozenset() if self._session is None else self._session.protocol.live_projects()

    def pushes_in_flight(self) -> int:
        return 0 if self._session is None else self._session.protocol.pushes_in_flight()

    def pushing(self, project_id: str) -> bool:
        return self._session is not None and self._session.protocol.pushing(project_id)

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
        """Live, and holding every change of ours the server has acknowledged (the stored
        cursor, not the protocol's: caught up means stored)."""
        session = self._session
        if session is None or project_id not in session.protocol.live_projects():
            return False
        return (replica.cursor or 0) >= session.protocol.acknowledged_seq(project_id)

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
    """One WebSocket connection, from hello until it closes: the pump between the socket,
    the protocol and the local store."""

    def __init__(self, loop: SyncLoop, ws: WebSocket) -> None:
        self.loop = loop
        self.host = loop.host
        self.ws = ws
        self.protocol: ClientProtocol[EntityBatch] = ClientProtocol(
            loop.limits, http_snapshots=loop.http_snapshots
        )
        self.repairs = Repairs()
        self.retry = Backoff(loop.backoff.base, loop.backoff.cap)
        # What storing each WebSocket snapshot under way changed, reported at its end.
        self._snapshots: dict[str, RemoteOutcome] = {}
        self._fetches: dict[str, asyncio.Task[None]] = {}  # HTTP snapshots under way
        self._timers: list[asyncio.TimerHandle] = []
        self._outgoing = asyncio.Event()
        self._pumping = False
        self._closed = False

    async def run(self) -> None:
        replicas = self.host.replicas()
        oldest = self.host.store.oldest_pending_at(replicas)
        age = None if oldest is None else max(0, int((_now() - oldest).total_seconds() * 1000))
        self.protocol.hello(
            self.loop.token,
            self.loop.client_id,
            [ProjectCursor(pid, r.cursor) for pid, r in replicas.items()],
            outbox_age_ms=age,
            versions=self.loop.versions,
            client_version=CLIENT_VERSION,
        )
        writer = asyncio.get_running_loop().create_task(self._write())
        self._outgoing.set()
        try:
            while not self.protocol.closing:
                try:
                    frame = await self.ws.recv()
                except ConnectionClosed as closed:
                    self._closed_by_server(closed)
                    break
                self.protocol.receive_frame(frame)
                self._pump()
                self.loop.check_idle()
                self.host.state_changed()
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, OSError):
                await writer
            for task in list(self._fetches.values()):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for timer in self._timers:
                timer.cancel()
            requested = self.protocol.close_requested or (CloseCode.NORMAL, "")
            await self.close(*requested)

    async def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self.protocol.close(CloseCode(code), reason)
        with contextlib.suppress(ConnectionClosed, OSError):
            for frame in self.protocol.data_to_send():
                await self.ws.send(frame)
        with contextlib.suppress(ConnectionClosed, OSError):
            await self.ws.close(code, reason)
        self.protocol.connection_closed()

    async def _write(self) -> None:
        while True:
            await self._outgoing.wait()
            self._outgoing.clear()
            for frame in self.protocol.data_to_send():
                await self.ws.send(frame)

    def _closed_by_server(self, closed: ConnectionClosed) -> None:
        self.protocol.connection_closed()
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

    def _pump(self) -> None:
        """Act on everything the protocol has to say, then let the writer send. Re-entrant
        calls (an action that calls the protocol) leave their events to the outer loop."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while events := self.protocol.events_received():
                for event in events:
                    try:
                        self._handle(event)
                    except RemoteDataError as exc:
                        self._fail(str(exc))
                        break
        finally:
            self._pumping = False
            self._outgoing.set()

    def _fail(self, message: str) -> None:
        """What came cannot be stored: drop the connection and resume from the stored cursor
        (what the protocol says next is no longer acted on)."""
        log.warning("resyncing: %s", message)
        self.loop.error(FieldsyncError(message))
        self.protocol.close(CloseCode.NORMAL, "resuming from the stored cursor")
        self.protocol.events_received()

    # --- what the protocol says -----------------------------------------------------------

    def _handle(self, event: ClientEvent[EntityBatch]) -> None:
        if isinstance(event, Welcomed):
            self.loop.welcomed()
            for project_id in self.host.replicas():
                self.push(project_id)
        elif isinstance(event, SnapshotWanted):
            self._fetch(event.project_id)
        elif isinstance(event, SnapshotStarted):
            self._snapshots[event.project_id] = RemoteOutcome()
        elif isinstance(event, SnapshotEntities):
            self._snapshot_entities(event)
        elif isinstance(event, SnapshotFinished):
            self._snapshot_finished(event)
        elif isinstance(event, ChangesReceived):
            self._changes(event)
        elif isinstance(event, ConflictsChanged):
            self._conflicts(event)
        elif isinstance(event, ProjectLive):
            if self.loop.failed.pop(event.project_id, None) is not None:
                self.push(event.project_id)  # refused until now: its outbox waited
        elif isinstance(event, CursorAhead):
            # The server's log is behind our cursor (restored from a backup?): the protocol
            # asked for a snapshot, which is merged with what we hold.
            log.warning("project %s: %s; bootstrapping again", event.project_id, event.message)
            self._snapshots.pop(event.project_id, None)
        elif isinstance(event, ProjectFailed):
            self._project_failed(event)
        elif isinstance(event, PushAnswered):
            self._push_answered(event)
        elif isinstance(event, PushRefused):
            self._push_refused(event)
        elif isinstance(event, ErrorReceived):
            self._error(event)
        elif isinstance(event, ServerStatus):
            self.loop.server_problem = event.problem
        elif isinstance(event, ProtocolFailure):
            log.warning("the server broke the protocol: %s", event.message)
            self.loop.error(FieldsyncError(f"the server broke the protocol: {event.message}"))

    def _replica(self, project_id: str) -> ProjectReplica | None:
        return self.host.replicas().get(project_id)

    def _snapshot_entities(self, event: SnapshotEntities) -> None:
        """Store the chunk now: a snapshot is never held in memory as a whole."""
        outcome = self._snapshots.get(event.project_id)
        replica = self._replica(event.project_id)
        if outcome is None or replica is None:
            return
        part = replica.store_snapshot_part(event.entities)
        outcome.changed |= part.changed
        outcome.rejected.extend(part.rejected)

    def _snapshot_finished(self, event: SnapshotFinished) -> None:
        outcome = self._snapshots.pop(event.project_id, None)
        replica = self._replica(event.project_id)
        if outcome is None or replica is None:
            return
        removed = replica.finish_snapshot(event.cursor, event.conflicts)
        self._report(event.project_id, outcome, event.cursor, snapshot=True)
        self._snapshot_conflicts(event.project_id, event.conflicts, removed)

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

    def _conflicts(self, event: ConflictsChanged) -> None:
        replica = self._replica(event.project_id)
        if replica is None:
            return
        removed = replica.apply_conflicts(event.conflicts)
        kept = [r for r in event.conflicts if r.status != "removed"]
        self.host.conflicts_changed(
            ConflictUpdate(event.project_id, tuple(Conflict.of(r) for r in kept), tuple(removed))
        )

    def _changes(self, event: ChangesReceived) -> None:
        replica = self._replica(event.project_id)
        if replica is None:
            return
        outcome = replica.apply_remote(event.changes)
        cursor = replica.cursor if replica.cursor is not None else 0
        self._report(event.project_id, outcome, cursor, snapshot=False)

    def _report(self, project_id: str, outcome: RemoteOutcome, cursor: int, snapshot: bool) -> None:
        if outcome.rejected:
            self.host.changes_rejected(project_id, outcome.rejected)
        if outcome.changed:
            self.host.remote_changed(
                RemoteChanges(project_id, frozenset(outcome.changed), cursor, snapshot)
            )

    def _project_failed(self, event: ProjectFailed) -> None:
        project_id = event.project_id
        self._snapshots.pop(project_id, None)
        if self._replica(project_id) is None:
            return
        if event.code == ErrorCode.MEMBERSHIP_REMOVED.value:
            self._membership_removed(project_id, event.message)
        elif event.code == ErrorCode.PROJECT_UNAVAILABLE.value:
            self._unavailable(project_id, event.code, event.message)
        else:  # server_unavailable, or a code from a newer server: try again later
            self.loop.error(ServerError(event.code, event.message))
            self._later(lambda: self.subscribe(project_id))

    def _unavailable(self, project_id: str, code: str, message: str) -> None:
        failure = ProjectUnavailable(project_id, code, message)
        self.loop.failed[project_id] = failure
        self.loop.error(failure)
        self.host.project_failed(project_id, failure)

    def _error(self, error: ErrorReceived) -> None:
        if error.code in _AUTH_CODES:
            self.loop.halt(AuthError(error.code, error.message))
        elif error.code == ErrorCode.UNSUPPORTED_VERSION.value:
            self.loop.halt(IncompatibleServer(error.code, error.message))
        else:
            self.loop.error(ServerError(error.code, error.message))

    # --- what the app wants ---------------------------------------------------------------

    def subscribe(self, project_id: str) -> None:
        replica = self.host.replicas().get(project_id)
        if replica is not None:
            self.protocol.subscribe(project_id, replica.cursor)
            self._pump()

    def unsubscribe(self, project_id: str) -> None:
        self.protocol.unsubscribe(project_id)
        self._snapshots.pop(project_id, None)
        self.repairs.drop(project_id)
        task = self._fetches.pop(project_id, None)
        if task is not None:
            task.cancel()
        self._pump()

    def _fetch(self, project_id: str) -> None:
        replica = self._replica(project_id)
        if replica is None:  # closed meanwhile
            self.protocol.unsubscribe(project_id)
            return
        task = asyncio.get_running_loop().create_task(self._bootstrap(project_id, replica))
        self._fetches[project_id] = task

    async def _bootstrap(self, project_id: str, replica: ProjectReplica) -> None:
        """Store the project's HTTP snapshot, then let the protocol subscribe from its
        cursor (or, if the snapshot could not be had, ask for it over the WebSocket)."""
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
            self.protocol.snapshot_fetch_failed(project_id)
        else:
            cursor = replica.cursor if replica.cursor is not None else 0
            self._report(project_id, outcome, cursor, snapshot=True)
            self._snapshot_conflicts(project_id, outcome.conflicts, outcome.conflicts_removed)
            self.protocol.snapshot_fetched(project_id, cursor)
        finally:
            if self._fetches.get(project_id) is asyncio.current_task():
                del self._fetches[project_id]
        self._pump()
        self.host.state_changed()

    def _later(self, action: Callable[[], object]) -> None:
        self._timers.append(asyncio.get_running_loop().call_later(self.retry.next_delay(), action))

    def push(self, project_id: str) -> None:
        """Send the project's oldest pending changes, unless a push of it is in flight."""
        if not self.protocol.open or self.protocol.pushing(project_id):
            return
        if project_id in self.loop.failed or project_id not in self.host.replicas():
            return
        pending = self.host.store.pending_changes(project_id, limit=PLAN_ROWS)
        # Repairs first, so that each entity's missing changes go before its own.
        pending = self.repairs.entries(project_id) + pending
        if not pending:
            return
        budget = self.protocol.push_budget()
        batches = plan_push(
            pending,
            max_entities=budget.max_entities,
            max_changes_per_entity=budget.max_changes_per_entity,
            max_bytes=budget.max_bytes,
            max_ops=budget.max_ops,
        )
        self.protocol.push(project_id, batches)
        self._outgoing.set()

    # --- push answers ---------------------------------------------------------------------

    def _push_answered(self, answered: PushAnswered[EntityBatch]) -> None:
        project_id = answered.project_id
        replica = self._replica(project_id)
        if replica is None:
            return
        acknowledged: list[int] = []
        rejected: list[int] = []
        for batch, entity in answered.answers:
            ids = [entry.id for entry in batch.entries if entry.id != REPAIR_ROW]
            if isinstance(entity, EntityAccepted):
                acknowledged.extend(ids)
                sent = {entry.hash for entry in batch.entries if entry.id == REPAIR_ROW}
                self.repairs.logged(project_id, batch.entity_id, sent)
            elif entity.code == _MISSING_DEPENDENCIES and self._repair(
                project_id, replica, batch, entity.details
            ):
                continue  # its changes stay pending; the next push brings what was missing
            else:
                self.repairs.drop(project_id, entity.entity_id)
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
        self.repairs.plan(project_id, batch.entity_id, entries)
        return True

    def _membership_removed(self, project_id: str, message: str) -> None:
        """Removed from the project: stop syncing it and reject its outbox, which the server
        will never log, so the app sees each change refused rather than waiting forever.

        Changes in a push still in flight wait for that push's answer (it may have been
        logged just before the removal).
        """
        code = ErrorCode.MEMBERSHIP_REMOVED.value
        failure = MembershipRemoved(project_id, code, message)
        self.protocol.unsubscribe(project_id)  # after a refused push it may still stream
        self._snapshots.pop(project_id, None)
        self.loop.failed[project_id] = failure
        replica = self._replica(project_id)
        if replica is not None:
            flying = {
                entry.id for batch in self.protocol.in_flight(project_id) for entry in batch.entries
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

    def _push_refused(self, refused: PushRefused[EntityBatch]) -> None:
        """The whole push was refused before any entity was looked at."""
        project_id = refused.project_id
        replica = self._replica(project_id)
        if replica is None:
            return
        if refused.retry:
            self.loop.error(ServerError(refused.code, refused.message))
            self._later(lambda: self.push(project_id))
        elif refused.code == ErrorCode.MEMBERSHIP_REMOVED.value:
            self._membership_removed(project_id, refused.message)
        elif refused.code == ErrorCode.PROJECT_UNAVAILABLE.value:
            self._unavailable(project_id, refused.code, refused.message)
        elif refused.split:
            self.push(project_id)  # the protocol cut the budget
        else:  # forbidden, or a push the server cannot take at all: never retried
            rejected: list[int] = []
            for batch in refused.carried:
                rejected.extend(
                    replica.reject(
                        batch.entity_id,
                        [entry.id for entry in batch.entries],
                        refused.code,
                        refused.message,
                        {},
                    )
                )
            self.loop.error(ServerError(refused.code, refused.message))
            if rejected:
                self.host.changes_rejected(project_id, rejected)
