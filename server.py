"""The HTTP/WebSocket shell: a Starlette app whose resources live in its lifespan.

The app works on a storage (``store.ports.Storage``): PostgreSQL opened from a database URL
(``store.postgres``), or any storage it is given, such as ``store.memory.MemoryStorage``.
The lifespan opens it, then creates this process's change log, the hub of live feeds, the
notification listeners, the periodic head check, the storage watch and the writer of
members' sync health, and hands them to
routes through ``app.state``: no module globals, so tests can run several apps (several
"processes") side by side, each with its own metrics registry. At shutdown uvicorn first
lets in-flight requests finish, then the lifespan closes the storage it opened (a storage
it was given stays open: whoever made it closes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from fieldsync.auth.tokens import SecretVerifier, TokenVerifier
from fieldsync.live.admin_http import admin_routes
from fieldsync.live.admission import DEFAULT_ADMISSION_LIMITS, Admission, AdmissionLimits
from fieldsync.live.attachments_http import attachment_routes
from fieldsync.live.feed import Hub
from fieldsync.live.http_auth import cors_preflight
from fieldsync.live.load_gate import DEFAULT_LOAD_LIMITS, LoadLimits
from fieldsync.live.memory import trim_periodically
from fieldsync.live.open_files import CONNECTION_CAP_REASON, connection_cap, open_file_limit
from fieldsync.live.operations import health_answer, healthz, metrics_endpoint
from fieldsync.live.origins import OriginPolicy
from fieldsync.live.outbox import DEFAULT_OUTBOX_LIMITS, OutboxLimits
from fieldsync.live.probe_listener import LoopRendered, ProbeListener
from fieldsync.live.query_http import openapi_json, query_routes
from fieldsync.live.rate_limit import DEFAULT_RATE_LIMIT, RateLimit
from fieldsync.live.session import (
    HANDSHAKE_SECONDS,
    STALL_SECONDS,
    SyncServices,
    connection_log_limiter,
    membership_removed,
    recheck_memberships,
)
from fieldsync.live.slow_requests import HEADER_SECONDS, header_deadline_protocol
from fieldsync.live.snapshot_http import snapshot_endpoint
from fieldsync.live.status import StatusBoard, watch_database
from fieldsync.live.sync_health import HealthRecorder
from fieldsync.live.upgrade_router import upgrade_router
from fieldsync.live.web_app import web_app_routes
from fieldsync.live.wire import sync_wire_protocol
from fieldsync.media.blobs import BlobStore
from fieldsync.media.limits import DEFAULT_ATTACHMENT_LIMITS, AttachmentLimits
from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.observability.metrics import Metrics
from fieldsync.observability.request_ids import RequestIds
from fieldsync.store.errors import StoreError
from fieldsync.store.ports import ChangeLogPort, NotificationPort, Storage
from fieldsync.store.postgres import PostgresStorage
from fieldsync.store.records import LogSlice
from fieldsync.store.replica import DEFAULT_MAX_LAG

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 2.0
HEAD_POLL_SECONDS = 2.0
PING_INTERVAL_SECONDS = 20.0
# Connections the kernel holds before the server accepts them (capped by net.core.somaxconn).
# A reconnect storm arrives faster than the event loop accepts: a SYN dropped from a full
# queue costs its client 1, then 3, then 7 s of TCP retransmission, where a refusal with a
# hint costs it what the server asks.
LISTEN_BACKLOG = 16_384
DATABASE_CHECK_SECONDS = 1.0


def create_app(
    database_url: str | None = None,
    *,
    storage: Storage | None = None,
    secret: bytes | None = None,
    verifier: TokenVerifier | None = None,
    allowed_origins: Iterable[str] = (),
    rate_limit: RateLimit = DEFAULT_RATE_LIMIT,
    admin_key: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    pool_min_size: int = 1,
    pool_max_size: int = 10,
    health_timeout: float = HEALTH_TIMEOUT,
    head_poll_seconds: float = HEAD_POLL_SECONDS,
    listen_for_notifications: bool = True,
    outbox_limits: OutboxLimits = DEFAULT_OUTBOX_LIMITS,
    handshake_seconds: float = HANDSHAKE_SECONDS,
    stall_seconds: float = STALL_SECONDS,
    admission_limits: AdmissionLimits = DEFAULT_ADMISSION_LIMITS,
    load_limits: LoadLimits = DEFAULT_LOAD_LIMITS,
    metrics: Metrics | None = None,
    database_check_seconds: float = DATABASE_CHECK_SECONDS,
    replica_url: str | None = None,
    replica_max_lag: float = DEFAULT_MAX_LAG,
    blobs: BlobStore | None = None,
    attachment_limits: AttachmentLimits = DEFAULT_ATTACHMENT_LIMITS,
    probe_address: tuple[str, int] | None = None,
) -> Starlette:
    """The application; it refuses to start on a database whose schema does not match.

    It works on ``storage`` if given (which it leaves open), else on PostgreSQL at
    ``database_url`` (a pool of ``pool_min_size`` to ``pool_max_size`` connections, closed
    at shutdown); one of the two is required. Tokens are checked by ``verifier``, or else
    with HS256 and ``secret`` (one of the two is required). ``allowed_origins`` lists the
    browser Origins that may open the WebSocket (``*`` for any; clients that send no Origin
    are always let in). ``admin_key`` enables the HTTP admin API under ``/admin`` (see
    docs/admin.md); without it there is none. With ``replica_url`` (PostgreSQL only),
    snapshots and catch-up reads go to that streaming replica while its replay lag is
    within ``replica_max_lag`` seconds, and to the primary otherwise (``store.replica``).
    ``blobs`` keeps attachments (without it, or on a storage without attachments, their
    routes answer 501). With ``probe_address`` (host, port), ``/healthz`` and ``/metrics``
    are also answered there by threads of their own, however busy the event loop
    (``live.probe_listener``).
    Once started it stays up whatever the database does: see ``live.status``.
    """
    if (database_url is None) == (storage is None):
        raise ValueError("create_app needs a database URL or a storage (one of the two)")
    if replica_url is not None and database_url is None:
        raise ValueError("a read replica needs a database URL (the storage is opened here)")
    if verifier is None:
        if secret is None:
            raise ValueError("create_app needs a secret or a verifier")
        verifier = SecretVerifier(secret)
    token_verifier: TokenVerifier = verifier
    origins = OriginPolicy(allowed_origins)
    metrics = metrics if metrics is not None else Metrics()
    status = StatusBoard()
    admission = Admission(admission_limits)
    metrics.connections_unauthenticated.set_function(lambda: admission.unauthenticated)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if storage is not None:
            store: Storage = storage
        else:
            assert database_url is not None
            store = await PostgresStorage.open(
                database_url,
                min_size=pool_min_size,
                max_size=pool_max_size,
                replica_url=replica_url,
                replica_max_lag=replica_max_lag,
            )
        background: set[asyncio.Task[None]] = set()
        try:
            await store.maintenance.check_schema()
            hub = Hub(lambda project, cursor, n: changelog.read_since(project, cursor, n))

            def committed(project_id: UUID, piece: LogSlice) -> None:
                # Fan out on the next loop turn, so the pusher's ack is queued (and its
                # writer woken) before the writers of every subscriber.
                asyncio.get_running_loop().call_soon(hub.committed, project_id, piece)
                task = asyncio.create_task(
                    _notify_quietly(store.notifications, project_id, piece.changes[-1].seq)
                )
                background.add(task)
                task.add_done_callback(background.discard)

            changelog: ChangeLogPort = store.change_log(
                limits=limits,
                on_commit=committed,
                on_append=metrics.appended,
                on_conflicts_found=metrics.conflicts_found,
            )
            hub.observer = metrics
            if store.pool_gauges is not None:
                metrics.watch_pool(store.pool_gauges)
            if store.replica_gauges is not None:
                metrics.watch_replica(store.replica_gauges)
            metrics.database_up.set(1)
            app.state.storage = store
            app.state.status = status
            app.state.health_timeout = health_timeout
            app.state.verifier = token_verifier
            app.state.origins = origins
            app.state.blobs = blobs
            app.state.attachment_limits = attachment_limits
            sync = app.state.sync = SyncServices(
                store.membership,
                store.snapshots,
                changelog,
                hub,
                token_verifier,
                limits,
                outbox_limits=outbox_limits,
                rate_limit=rate_limit,
                handshake_seconds=handshake_seconds,
                stall_seconds=stall_seconds,
                metrics=metrics,
                status=status,
                admission=admission,
                log_limiter=connection_log_limiter(metrics.log_line_suppressed),
                load_limits=load_limits,
            )
            metrics.upgrades_waiting.set_function(lambda: sync.load.waiting)
            recorder = sync.sync_health = HealthRecorder(store.sync_health)
            notifications = store.notifications
            workers = [
                asyncio.create_task(trim_periodically(lambda: metrics.open_connections)),
                asyncio.create_task(sync.load.watch_lag()),
                asyncio.create_task(recorder.run()),
                asyncio.create_task(
                    notifications.poll_heads(
                        hub.watched_projects, hub.poke, interval=head_poll_seconds
                    )
                ),
                asyncio.create_task(
                    watch_database(
                        store.health.probe(),
                        status,
                        lambda up: metrics.database_up.set(1 if up else 0),
                        interval=database_check_seconds,
                        within=health_timeout,
                    )
                ),
            ]
            if listen_for_notifications:
                workers.append(asyncio.create_task(notifications.listen_heads(hub.poke)))
                workers.append(
                    asyncio.create_task(
                        notifications.listen_removals(
                            lambda project, user: membership_removed(sync, project, user),
                            on_connected=lambda: _keep(background, recheck_memberships(sync)),
                        )
                    )
                )
            probes = None
            if probe_address is not None:
                rendered = LoopRendered(asyncio.get_running_loop(), metrics.exposition)
                probes = ProbeListener(*probe_address, lambda: health_answer(status), rendered.get)
                probes.start()
                app.state.probe_port = probes.port
            try:
                yield
            finally:
                if probes is not None:
                    await asyncio.to_thread(probes.stop)
                for worker in workers:
                    worker.cancel()
                for worker in workers:
                    with contextlib.suppress(asyncio.CancelledError):
                        await worker
        finally:
            if storage is None:
                await store.close()

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/projects/{project_id}/snapshot", snapshot_endpoint, methods=["GET"]),
        Route("/projects/{project_id}/snapshot", cors_preflight, methods=["OPTIONS"]),
        *query_routes(),
        *web_app_routes(),
        *attachment_routes(),
    ]
    if admin_key is not None:
        routes.append(admin_routes(admin_key))
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(RequestIds)])
    app.state.metrics = metrics
    app.state.openapi_json = openapi_json()
    return app


def _keep(tasks: set[asyncio.Task[None]], task: asyncio.Task[None]) -> None:
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _notify_quietly(notifications: NotificationPort, project_id: UUID, seq: int) -> None:
    # Other processes also find the change by their periodic head check.
    try:
        await notifications.notify_head(project_id, seq)
    except StoreError as exc:
        log.warning("%s", exc, extra={"event": "notify_failed", "project_id": str(project_id)})


def uvicorn_config(
    app: Any,
    host: str,
    port: int,
    limits: Limits = DEFAULT_LIMITS,
    ping_interval: float = PING_INTERVAL_SECONDS,
    header_seconds: float = HEADER_SECONDS,
    max_connections: int | None = None,
) -> uvicorn.Config:
    """How fieldsync is served: WebSocket compression off (a small compressed frame can
    inflate to a huge one), frames bounded above the protocol's own limit so oversize frames
    get a protocol error rather than a dropped connection, pings to find dead peers,
    connections whose request headers take over ``header_seconds`` closed, and new ones
    closed at once beyond ``max_connections`` (by default what the process's open-file limit
    allows: ``live.open_files``)."""
    if max_connections is None:
        max_connections = connection_cap(open_file_limit())
    metrics: Metrics = app.state.metrics

    def turned_away() -> None:
        metrics.connection_refused(CONNECTION_CAP_REASON)

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=upgrade_router(header_deadline_protocol(header_seconds), max_connections, turned_away),
        ws=sync_wire_protocol(app),
        ws_max_size=2 * limits.max_frame_bytes,
        ws_per_message_deflate=False,
        ws_ping_interval=ping_interval,
        ws_ping_timeout=ping_interval,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=10,
        backlog=LISTEN_BACKLOG,
    )
