"""One sync connection: pumps frames between a WebSocket and the protocol core.

The core (``sync.connection.ServerConnection``) decides what every incoming frame means and
what to answer; this shell only does the waiting: verifying the token, reading the log and
snapshots, appending pushes, and writing queued frames to the socket from one writer task,
so the order of frames on the wire is the order they were queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg

from auth.tokens import TokenError, verify_token
from live.feed import Hub, LiveSubscription, change_frames
from live.outbox import Outbox, OutboxClosedError
from live.status import StatusBoard
from model.limits import Limits
from model.merge import EntityChanges
from observability.metrics import Metrics
from store.changelog import Accepted, ChangeLog
from store.database import CONNECTION_ERRORS
from store.errors import StoreError, UnknownProject
from store.projects import member_level
from store.snapshots import open_snapshot
from sync.codec import encode
from sync.connection import ConnectionState, ServerConnection
from sync.errors import CloseCode, ErrorCode
from sync.messages import (
    EntityAccepted,
    EntityRejected,
    EntityResult,
    Error,
    Hello,
    ProjectCursor,
    ProjectError,
    Push,
    PushResult,
    SnapshotBegin,
    SnapshotChunk,
    SnapshotEnd,
    SnapshotEntity,
    Subscribe,
    Synced,
    Unsubscribe,
    Welcome,
)

log = logging.getLogger(__name__)

SNAPSHOT_CHUNK_BYTES = 512 * 1024
CATCH_UP_BATCH = 500
WRITE_LEVELS = frozenset({"lead", "specialist"})
CLOSE_GRACE_SECONDS = 10.0


@dataclass
class SyncServices:
    """What a session needs from the app, created once in the lifespan."""

    pool: asyncpg.Pool
    changelog: ChangeLog
    hub: Hub
    secret: bytes
    limits: Limits
    max_connections_per_user: int = 16
    outbox_soft_limit: int = 64
    outbox_hard_limit: int = 512
    connections: dict[UUID, int] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    status: StatusBoard = field(default_factory=StatusBoard)


class Transport:
    """The socket side of a session, as the shell sees it."""

    def __init__(
        self,
        receive: Callable[[], Awaitable[bytes | str | None]],
        send: Callable[[bytes], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
    ) -> None:
        self.receive = receive
        self.send = send
        self.close = close


class SyncSession:
    def __init__(self, services: SyncServices, transport: Transport) -> None:
        self._services = services
        self._transport = transport
        self._protocol = ServerConnection(services.limits)
        self._outbox = Outbox(
            services.outbox_soft_limit, services.outbox_hard_limit, services.metrics.send_queues
        )
        self._user_id: UUID | None = None
        self._subscriptions: dict[UUID, asyncio.Task[None]] = {}
        self._live: dict[UUID, LiveSubscription] = {}
        self._session_id = uuid.uuid4().hex
        self._counted = False
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None

    @property
    def session_id(self) -> str:
        """This connection's id, as ``welcome`` tells the client (and logs name it)."""
        return self._session_id

    async def run(self) -> None:
        writer = self._writer = asyncio.create_task(self._write_frames())
        try:
            while self._protocol.state not in (ConnectionState.CLOSING, ConnectionState.CLOSED):
                frame = await self._transport.receive()
                if frame is None:
                    break
                self._protocol.receive_frame(frame)
                for event in self._protocol.events_received():
                    await self._handle(event)
                self._flush()
        finally:
            for task in self._subscriptions.values():
                task.cancel()
            for subscription in self._live.values():
                self._services.hub.leave(subscription)
            if self._counted and self._user_id is not None:
                self._services.connections[self._user_id] -= 1
            self._flush()
            self._outbox.close()
            with contextlib.suppress(Exception):
                await writer
            requested = self._protocol.close_requested
            if requested is not None:
                with contextlib.suppress(Exception):
                    await self._transport.close(int(requested[0]), requested[1])

    def _flush(self) -> None:
        for frame in self._protocol.data_to_send():
            with contextlib.suppress(OutboxClosedError):
                self._outbox.put_control(frame)

    async def _write_frames(self) -> None:
        try:
            while True:
                frame = await self._outbox.get()
                self._services.metrics.sent(frame)
                await self._transport.send(frame)
        except OutboxClosedError:
            return

    async def _handle(self, event: object) -> None:
        self._services.metrics.received(event)
        try:
            if isinstance(event, Hello):
                await self._hello(event)
            elif isinstance(event, Subscribe):
                await self._subscribe(event.project)
            elif isinstance(event, Unsubscribe):
                self._unsubscribe(event.project_id)
            elif isinstance(event, Push):
                await self._push(event)
        except StoreError as exc:
            self._database_failed(event, exc)

    def _database_failed(self, event: object, exc: StoreError) -> None:
        """The database failed while handling ``event``: the connection stays, the client is
        told what did not happen (and retries it)."""
        log.warning("database unavailable while handling %s: %s", type(event).__name__, exc)
        message = "the server cannot reach its database; try again later"
        if isinstance(event, Push):
            self._services.metrics.push_refused(ErrorCode.SERVER_UNAVAILABLE.value)
            self._protocol.send(
                Error(ErrorCode.SERVER_UNAVAILABLE.value, message, push_id=event.push_id)
            )
            return
        wanted = event.projects if isinstance(event, Hello) else ()
        if isinstance(event, Subscribe):
            wanted = (event.project,)
        for project in wanted:
            with contextlib.suppress(ValueError):
                if UUID(project.project_id) in self._subscriptions:
                    continue
            self._project_error(project.project_id, ErrorCode.SERVER_UNAVAILABLE, message)

    async def _hello(self, hello: Hello) -> None:
        try:
            claims = verify_token(self._services.secret, hello.token)
        except TokenError as exc:
            code = ErrorCode.TOKEN_EXPIRED if exc.expired else ErrorCode.INVALID_TOKEN
            self._protocol.refuse(code, str(exc), CloseCode.UNAUTHORIZED)
            return
        open_now = self._services.connections.get(claims.user_id, 0)
        if open_now >= self._services.max_connections_per_user:
            self._protocol.refuse(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"at most {self._services.max_connections_per_user} connections per user",
                CloseCode.TOO_MANY_CONNECTIONS,
            )
            return
        self._services.connections[claims.user_id] = open_now + 1
        self._counted = True
        self._user_id = claims.user_id
        limits = self._services.limits
        self._protocol.accept(
            Welcome(
                version=self._protocol.version or 1,
                user_id=str(claims.user_id),
                session_id=self._session_id,
                limits={
                    "max_frame_bytes": limits.max_frame_bytes,
                    "max_entities_per_batch": limits.max_entities_per_batch,
                    "max_changes_per_entity": limits.max_changes_per_entity,
                    "max_change_bytes": limits.max_change_bytes,
                    "max_document_bytes": limits.max_document_bytes,
                },
            )
        )
        self._flush()
        self._services.status.watch(self._outbox)
        for project in hello.projects:
            await self._subscribe(project)

    async def _level(self, project_id: str) -> tuple[UUID, str] | None:
        """The caller's level in the project; None for unknown and forbidden alike."""
        try:
            project = UUID(project_id)
        except ValueError:
            return None
        assert self._user_id is not None
        try:
            async with self._services.pool.acquire() as conn:
                level = await member_level(conn, project, self._user_id)
        except CONNECTION_ERRORS as exc:
            raise StoreError(f"reading membership failed: {type(exc).__name__}") from exc
        return (project, level) if level is not None else None

    def _project_error(self, project_id: str, code: ErrorCode, message: str) -> None:
        self._protocol.send(ProjectError(project_id, code.value, message))
        self._flush()

    async def _subscribe(self, wanted: ProjectCursor) -> None:
        access = await self._level(wanted.project_id)
        if access is None:
            self._project_error(
                wanted.project_id,
                ErrorCode.PROJECT_UNAVAILABLE,
                "no such project, or you are not a member of it",
            )
            return
        project, _ = access
        if project in self._subscriptions:
            return  # already syncing it
        task = asyncio.create_task(self._sync_project(project, wanted))
        self._subscriptions[project] = task

        def finished(done: asyncio.Task[None]) -> None:
            # A subscription that ended without going live may be asked for again.
            if project not in self._live and self._subscriptions.get(project) is done:
                del self._subscriptions[project]

        task.add_done_callback(finished)

    def _unsubscribe(self, project_id: str) -> None:
        with contextlib.suppress(ValueError):
            project = UUID(project_id)
            task = self._subscriptions.pop(project, None)
            if task is not None:
                task.cancel()
            subscription = self._live.pop(project, None)
            if subscription is not None:
                self._services.hub.leave(subscription)

    async def _sync_project(self, project: UUID, wanted: ProjectCursor) -> None:
        """Snapshot (if asked), catch up from the log, then go live."""
        try:
            cursor = wanted.cursor
            if cursor is None:
                cursor = await self._send_snapshot(project)
            else:
                head = await self._services.changelog.head(project)
                if cursor > head:
                    self._project_error(
                        wanted.project_id,
                        ErrorCode.CURSOR_AHEAD,
                        f"cursor {cursor} is beyond the project's head {head}",
                    )
                    return
            subscription = LiveSubscription(
                project, cursor, self._outbox.put_live, self._fell_behind
            )
            feed = self._services.hub.feed(project)
            while True:
                batch = await self._services.changelog.changes_since(
                    project, subscription.cursor, CATCH_UP_BATCH
                )
                if batch:
                    for _, frame in change_frames(project, batch):
                        await self._outbox.put_bulk(frame)
                    subscription.cursor = batch[-1].seq
                    continue
                if feed.try_go_live(subscription):
                    break
            self._live[project] = subscription
            self._outbox.put_control(encode(Synced(str(project), subscription.cursor)))
            # A commit whose notification came before this feed existed is picked up here.
            feed.poke(await self._services.changelog.head(project))
        except (OutboxClosedError, asyncio.CancelledError):
            return
        except (
            StoreError, UnknownProject, OSError, asyncpg.PostgresError, asyncpg.InterfaceError
        ) as exc:
            log.warning("syncing project %s failed: %s", project, exc)
            self._project_error(
                str(project), ErrorCode.SERVER_UNAVAILABLE, "the server could not read the log"
            )

    async def _send_snapshot(self, project: UUID) -> int:
        async with open_snapshot(self._services.pool, project) as snapshot:
            count = await snapshot.count()
            await self._outbox.put_bulk(
                encode(SnapshotBegin(str(project), snapshot.cursor, count))
            )
            chunk: list[SnapshotEntity] = []
            size = 0
            async for entity in snapshot.entities():
                chunk.append(SnapshotEntity(entity.entity_type, entity.entity_id, entity.document))
                size += len(entity.document) + 128
                if size >= SNAPSHOT_CHUNK_BYTES:
                    await self._outbox.put_bulk(encode(SnapshotChunk(str(project), tuple(chunk))))
                    chunk, size = [], 0
            if chunk:
                await self._outbox.put_bulk(encode(SnapshotChunk(str(project), tuple(chunk))))
            await self._outbox.put_bulk(encode(SnapshotEnd(str(project), snapshot.cursor)))
            self._services.metrics.snapshot_served(
                "websocket", project, snapshot.document_bytes, snapshot.started
            )
            return snapshot.cursor

    def _fell_behind(self) -> None:
        """A live frame did not fit: tell the client to resume from its cursor, then close.

        Queued frames are dropped (the client will fetch them again from its cursor) so the
        error is next on the wire; if the client does not even take that within
        ``CLOSE_GRACE_SECONDS``, the connection is closed anyway.
        """
        if self._closer is not None:
            return
        self._outbox.discard_pending()
        self._protocol.fail(
            ErrorCode.TOO_SLOW,
            "you fell too far behind; reconnect and resume from your last cursor",
            CloseCode.TOO_SLOW,
        )
        self._flush()
        self._outbox.close()
        self._closer = asyncio.get_running_loop().create_task(self._close_when_flushed())

    async def _close_when_flushed(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception, TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._writer), CLOSE_GRACE_SECONDS)
        # Closing also wakes the reader, so the session ends even if the client is silent.
        await self._transport.close(int(CloseCode.TOO_SLOW), "too slow: resume from your cursor")

    async def _push(self, push: Push) -> None:
        started = time.monotonic()
        access = await self._level(push.project_id)
        if access is None:
            self._services.metrics.push_refused(ErrorCode.PROJECT_UNAVAILABLE.value)
            self._protocol.send(
                Error(
                    ErrorCode.PROJECT_UNAVAILABLE.value,
                    "no such project, or you are not a member of it",
                    push_id=push.push_id,
                )
            )
            return
        project, level = access
        if level not in WRITE_LEVELS:
            self._services.metrics.push_refused(ErrorCode.FORBIDDEN.value)
            self._protocol.send(
                Error(
                    ErrorCode.FORBIDDEN.value,
                    f"a {level} may not change this project",
                    push_id=push.push_id,
                )
            )
            return
        batch = [EntityChanges(e.entity_type, e.entity_id, e.changes) for e in push.entities]
        try:
            results = await self._services.changelog.append(
                project, batch, str(self._user_id)
            )
        except (StoreError, OSError, asyncpg.PostgresError) as exc:
            log.warning("push %s to project %s failed: %s", push.push_id, project, exc)
            self._services.metrics.push_refused(ErrorCode.SERVER_UNAVAILABLE.value)
            self._protocol.send(
                Error(
                    ErrorCode.SERVER_UNAVAILABLE.value,
                    "the database failed during this push; it may or may not be stored: "
                    "send it again (a retry returns the same seqs)",
                    push_id=push.push_id,
                )
            )
            return
        self._services.metrics.push_committed(started, push, results)
        entity_results: list[EntityResult] = []
        for result in results:
            if isinstance(result, Accepted):
                entity_results.append(EntityAccepted(result.entity_id, result.seqs))
            else:
                rejection = result.rejection
                entity_results.append(
                    EntityRejected(
                        result.entity_id,
                        rejection.code.value,
                        rejection.message,
                        dict(rejection.details),
                    )
                )
        self._protocol.send(PushResult(push.push_id, push.project_id, tuple(entity_results)))
