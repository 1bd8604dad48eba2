"""The asyncio client: a local store, the projects opened from it, and the sync loop.

Use it as ``async with FieldsyncClient(url, token, path) as client:``, or call
:meth:`FieldsyncClient.close` yourself. Everything runs on the event loop that uses it; for
code that is not async, see :mod:`fieldsync_client.blocking`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from types import TracebackType

from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.sync.codec import MAX_PROJECT_ID_CHARS
from fieldsync.sync.messages import PROTOCOL_VERSIONS
from fieldsync_client.attachments import Uploader, http_base
from fieldsync_client.backoff import Backoff
from fieldsync_client.conflicts import ConflictUpdate
from fieldsync_client.errors import ClientClosed, ProjectUnavailable, ValidationError
from fieldsync_client.listeners import Listeners
from fieldsync_client.local_store import LocalStore
from fieldsync_client.project import Project
from fieldsync_client.replica import ProjectReplica
from fieldsync_client.status import ConnectionState, RemoteChanges, SyncStatus
from fieldsync_client.sync_loop import SyncLoop, sync_url

__all__ = ["FieldsyncClient"]


class FieldsyncClient:
    """An offline-first client for one user on one device.

    ``url`` is the server (``https://sync.example.org``, ``ws://127.0.0.1:8000`` or the full
    ``.../sync`` endpoint); ``None`` keeps the client offline. ``token`` is the user's
    bearer token; ``path`` the SQLite file holding the local copy (created if missing; one
    client at a time per file).

    Reconnects wait ``backoff_base`` seconds doubling up to ``backoff_cap``, each delay
    drawn uniformly from zero to that bound. ``open_project`` waits at most
    ``bootstrap_timeout`` seconds for a first snapshot, which comes over HTTP
    (``GET /projects/{id}/snapshot``, gzipped) unless ``http_snapshots`` is False or that
    fails; then it comes over the WebSocket.
    """

    def __init__(
        self,
        url: str | None,
        token: str,
        path: str | os.PathLike[str],
        *,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        connect_timeout: float = 10.0,
        bootstrap_timeout: float = 30.0,
        limits: Limits = DEFAULT_LIMITS,
        protocol_versions: Sequence[int] = PROTOCOL_VERSIONS,
        http_snapshots: bool = True,
    ) -> None:
        endpoint = None if url is None else sync_url(url)  # a bad URL fails before the store opens
        self._store = LocalStore(path)
        self._limits = limits
        self.bootstrap_timeout = bootstrap_timeout
        self._projects: dict[str, Project] = {}
        self._statuses: Listeners[SyncStatus] = Listeners("status")
        self._tick = asyncio.Event()
        self._closed = False
        self._sync: SyncLoop | None = None
        if endpoint is not None:
            self._sync = SyncLoop(
                self,
                endpoint,
                token,
                self._store.client_id,
                backoff=Backoff(backoff_base, backoff_cap),
                connect_timeout=connect_timeout,
                versions=protocol_versions,
                limits=limits,
                http_snapshots=http_snapshots,
            )
        self._status = self._compute_status()
        self._uploader: Uploader | None = None
        if endpoint is not None:
            self._uploader = Uploader(
                self._store, http_base(endpoint), token, Backoff(backoff_base, backoff_cap)
            )

    async def __aenter__(self) -> FieldsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def client_id(self) -> str:
        """This installation's id (stable for the store file), sent to the server."""
        return self._store.client_id

    async def close(self) -> None:
        """Stop syncing and close the store. Everything an edit returned for is on disk."""
        if self._closed:
            return
        self._closed = True
        if self._sync is not None:
            await self._sync.stop()
        if self._uploader is not None:
            await self._uploader.stop()
        for project in self._projects.values():
            project.remote_changes.close()
            project.rejections.close()
            project.conflict_updates.close()
        self._statuses.close()
        self._tick.set()
        self._store.close()

    # --- projects -------------------------------------------------------------------------

    async def open_project(
        self,
        project_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (bounds the first bootstrap only)
    ) -> Project:
        """Open a project of the local copy, syncing it from now on.

        The first time, it waits (at most ``timeout``, default ``bootstrap_timeout``) for
        the project's snapshot. When the server cannot be reached, it returns the local
        project anyway: edits work offline and the snapshot comes when the network does.
        Raises :class:`ProjectUnavailable` if the server says the user cannot see the
        project, and :class:`AuthError` or :class:`IncompatibleServer` if it refuses the
        connection.
        """
        self._check()
        if not project_id or len(project_id) > MAX_PROJECT_ID_CHARS:
            raise ValidationError(f"a project id has 1-{MAX_PROJECT_ID_CHARS} characters")
        project = self._projects.get(project_id)
        if project is None:
            with self._store.transaction():
                self._store.add_project(project_id)
            record = self._store.project(project_id)
            assert record is not None
            replica = ProjectReplica(self._store, project_id, limits=self._limits)
            project = Project(self, replica, record.last_synced_at)
            self._projects[project_id] = project
            if self._sync is not None:
                self._sync.start()
                self._sync.project_added(project_id)
            if self._uploader is not None:
                self._uploader.start()  # uploads left waiting by an earlier run go on
            self.state_changed()
        sync = self._sync
        if sync is None or project.bootstrapped:
            return project
        was_offline = sync.state is ConnectionState.OFFLINE
        attempts = sync.connections
        if was_offline:
            sync.reconnect_now()

        def settled() -> bool:
            if project.bootstrapped or project.error is not None or sync.halted is not None:
                return True
            if sync.state is ConnectionState.OFFLINE:
                return sync.connections > attempts or not was_offline
            return sync.state is ConnectionState.STOPPED

        wait = self.bootstrap_timeout if timeout is None else timeout
        try:
            await self._wait(settled, wait)
        except TimeoutError:
            return project  # still bootstrapping; it goes on in the background
        if project.error is not None:
            error = project.error
            self._forget(project_id)
            raise error
        if sync.halted is not None:
            raise sync.halted
        return project

    def _forget(self, project_id: str) -> None:
        project = self._projects.pop(project_id, None)
        if project is not None:
            project.remote_changes.close()
            project.rejections.close()
            project.conflict_updates.close()
        if self._sync is not None:
            self._sync.project_removed(project_id)

    @property
    def projects(self) -> Mapping[str, Project]:
        return dict(self._projects)

    # --- sync control and status ----------------------------------------------------------

    @property
    def status(self) -> SyncStatus:
        return self._status

    @property
    def uploader(self) -> Uploader | None:
        """Sends attachments waiting to upload (None for an offline-only client)."""
        return self._uploader

    def _attached(self) -> None:
        if self._uploader is not None:
            self._uploader.start()
            self._uploader.wake()

    def set_token(self, token: str) -> None:
        """Use a new token from the next connection on (and resume after an AuthError)."""
        if self._sync is not None:
            self._sync.set_token(token)
        if self._uploader is not None:
            self._uploader.token = token

    def on_status(self, callback: Callable[[SyncStatus], object]) -> Callable[[], None]:
        """Call ``callback`` on the event loop whenever the status changes."""
        return self._statuses.add(callback)

    def statuses(self) -> AsyncIterator[SyncStatus]:
        """``async for status in client.statuses()``: every status change until closed."""
        return self._statuses.stream()

    async def wait_synced(self, timeout: float | None = None) -> SyncStatus:  # noqa: ASYNC109
        """Wait until online, every open project caught up (including the changes of ours
        the server acknowledged) and nothing waiting to be pushed.

        Raises the error that stops sync (:class:`AuthError`, :class:`IncompatibleServer`,
        :class:`ProjectUnavailable`), or ``TimeoutError``.
        """
        self._check()
        sync = self._sync
        if sync is None:
            raise RuntimeError("this client has no server URL: it never syncs")

        def synced() -> bool:
            if sync.halted is not None:
                raise sync.halted
            for project in self._projects.values():
                if project.error is not None:
                    raise project.error
            return (
                sync.state is ConnectionState.ONLINE
                and all(sync.caught_up(pid, p._replica) for pid, p in self._projects.items())
                and sync.pushes_in_flight() == 0
                and all(self._store.pending_count(pid) == 0 for pid in self._projects)
            )

        await self._wait(synced, timeout)
        return self._status

    async def _wait(
        self,
        predicate: Callable[[], bool],
        timeout: float | None,  # noqa: ASYNC109
    ) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._check()
                tick = self._tick
                await tick.wait()

    # --- what the sync loop calls (SyncHost) ----------------------------------------------

    @property
    def store(self) -> LocalStore:
        return self._store

    def replicas(self) -> Mapping[str, ProjectReplica]:
        return {pid: project._replica for pid, project in self._projects.items()}

    def remote_changed(self, event: RemoteChanges) -> None:
        project = self._projects.get(event.project_id)
        if project is not None:
            project.remote_changes.emit(event)

    def conflicts_changed(self, update: ConflictUpdate) -> None:
        project = self._projects.get(update.project_id)
        if project is not None and (update.changed or update.removed or update.snapshot):
            project.conflict_updates.emit(update)

    def changes_rejected(self, project_id: str, ids: Sequence[int]) -> None:
        project = self._projects.get(project_id)
        if project is not None:
            wanted = set(ids)
            rejected = [r for r in self._store.rejected_changes(project_id) if r.id in wanted]
            if rejected:
                project.rejections.emit(rejected)
        self.state_changed()

    def project_failed(self, project_id: str, error: ProjectUnavailable) -> None:
        self.state_changed()

    def state_changed(self) -> None:
        if self._closed:
            return
        status = self._compute_status()
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()
        if status != self._status:
            self._status = status
            self._statuses.emit(status)

    def _project_error(self, project_id: str) -> ProjectUnavailable | None:
        return None if self._sync is None else self._sync.failed.get(project_id)

    def _local_change(self, project_id: str) -> None:
        if self._sync is not None:
            self._sync.outbox_changed(project_id)
        self.state_changed()

    def _compute_status(self) -> SyncStatus:
        ids = list(self._projects)
        pending = sum(self._store.pending_count(pid) for pid in ids)
        rejected = sum(self._store.rejected_count(pid) for pid in ids)
        synced: list[datetime] = []
        for pid, project in self._projects.items():
            at = self._sync.synced_at.get(pid) if self._sync is not None else None
            at = at or project.stored_synced_at
            if at is not None:
                synced.append(at)
        sync = self._sync
        if sync is None:
            return SyncStatus(ConnectionState.STOPPED, False, pending, rejected, None, None)
        online = sync.state is ConnectionState.ONLINE
        catching_up = any(pid not in sync.live and pid not in sync.failed for pid in ids)
        syncing = online and (catching_up or sync.pushes_in_flight() > 0)
        return SyncStatus(
            sync.state,
            syncing,
            pending,
            rejected,
            max(synced) if synced else None,
            sync.last_error,
            sync.server_problem,
        )

    def _check(self) -> None:
        if self._closed:
            raise ClientClosed("the client is closed")
