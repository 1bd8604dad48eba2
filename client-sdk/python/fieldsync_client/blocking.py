"""A blocking facade for apps that are not async.

:class:`BlockingClient` runs a :class:`FieldsyncClient` on an event loop in a background
thread, which also keeps syncing while the app's own thread does other work. Every method
hands its call to that thread and waits for the result, so the client's state is only ever
touched by one thread. Callbacks (``on_change``, ``on_status``, ``on_rejected``) run on the
background thread: keep them short and hand work to the app's own thread.

    with BlockingClient("https://sync.example.org", token, "fieldsync.db") as client:
        project = client.open_project(project_id)
        activity_id = project.create("activity", {...})
"""

from __future__ import annotations

import asyncio
import builtins
import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from fieldsync_client.client import FieldsyncClient
from fieldsync_client.conflicts import Conflict, ConflictUpdate
from fieldsync_client.local_store import RejectedChange
from fieldsync_client.project import Project, RejectionCallback, Values
from fieldsync_client.status import RemoteChanges, SyncStatus

__all__ = ["BlockingClient", "BlockingProject"]

T = TypeVar("T")


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="fieldsync-client", daemon=True
        )
        self.thread.start()

    def call(self, make: Callable[[], Awaitable[T]], timeout: float | None) -> T:
        if threading.current_thread() is self.thread:
            raise RuntimeError("a BlockingClient method was called from one of its callbacks")

        async def run() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class BlockingClient:
    """:class:`FieldsyncClient` for blocking code; same arguments, plus ``call_timeout``
    (seconds any one call may take; None waits as long as it takes)."""

    def __init__(
        self,
        url: str | None,
        token: str,
        path: str | os.PathLike[str],
        *,
        call_timeout: float | None = 120.0,
        **options: Any,
    ) -> None:
        self._timeout = call_timeout
        self._thread = _LoopThread()

        async def make() -> FieldsyncClient:
            return FieldsyncClient(url, token, path, **options)

        try:
            self._client = self._thread.call(make, call_timeout)
        except BaseException:
            self._thread.stop()
            raise
        self._stopped = False

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, make: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        return self._thread.call(make, self._timeout if timeout is None else timeout)

    @property
    def client_id(self) -> str:
        return self._client.client_id

    @property
    def status(self) -> SyncStatus:
        return self._client.status

    def open_project(self, project_id: str, *, timeout: float | None = None) -> BlockingProject:
        wait = self._client.bootstrap_timeout if timeout is None else timeout
        project = self._call(
            lambda: self._client.open_project(project_id, timeout=timeout), wait + 30
        )
        return BlockingProject(self, project)

    def wait_synced(self, timeout: float | None = None) -> SyncStatus:
        return self._call(
            lambda: self._client.wait_synced(timeout), None if timeout is None else timeout + 30
        )

    def set_token(self, token: str) -> None:
        self._thread.loop.call_soon_threadsafe(self._client.set_token, token)

    def on_status(self, callback: Callable[[SyncStatus], object]) -> Callable[[], None]:
        async def add() -> Callable[[], None]:
            return self._client.on_status(callback)

        return self._remover(self._call(add))

    def _remover(self, remove: Callable[[], None]) -> Callable[[], None]:
        def remover() -> None:
            self._thread.loop.call_soon_threadsafe(remove)

        return remover

    def close(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            self._call(self._client.close)
        finally:
            self._thread.stop()


class BlockingProject:
    """:class:`Project` for blocking code: the same methods, without ``await``."""

    def __init__(self, client: BlockingClient, project: Project) -> None:
        self._client = client
        self._project = project
        self.project_id = project.project_id

    @property
    def cursor(self) -> int | None:
        return self._project.cursor

    @property
    def bootstrapped(self) -> bool:
        return self._project.bootstrapped

    def pending_count(self) -> int:
        async def count() -> int:
            return self._project.pending_count()

        return self._client._call(count)

    def list(self, entity_type: str, *, include_deleted: bool = False) -> dict[str, Values]:
        return self._client._call(
            lambda: self._project.list(entity_type, include_deleted=include_deleted)
        )

    def ids(self, entity_type: str, *, include_deleted: bool = False) -> builtins.list[str]:
        return self._client._call(
            lambda: self._project.ids(entity_type, include_deleted=include_deleted)
        )

    def get(self, entity_type: str, entity_id: str) -> Values:
        return self._client._call(lambda: self._project.get(entity_type, entity_id))

    def heads(self, entity_id: str) -> builtins.list[bytes]:
        return self._client._call(lambda: self._project.heads(entity_id))

    def create(
        self, entity_type: str, values: Mapping[str, object], *, entity_id: str | None = None
    ) -> str:
        return self._client._call(
            lambda: self._project.create(entity_type, values, entity_id=entity_id)
        )

    def update(self, entity_type: str, entity_id: str, values: Mapping[str, object]) -> bool:
        return self._client._call(lambda: self._project.update(entity_type, entity_id, values))

    def splice_text(
        self,
        entity_type: str,
        entity_id: str,
        field: str,
        index: int,
        delete: int = 0,
        insert: str = "",
    ) -> bool:
        return self._client._call(
            lambda: self._project.splice_text(entity_type, entity_id, field, index, delete, insert)
        )

    def replace_text(self, entity_type: str, entity_id: str, field: str, text: str) -> bool:
        return self._client._call(
            lambda: self._project.replace_text(entity_type, entity_id, field, text)
        )

    def insert_item(
        self, entity_type: str, entity_id: str, field: str, index: int, value: object
    ) -> bool:
        return self._client._call(
            lambda: self._project.insert_item(entity_type, entity_id, field, index, value)
        )

    def remove_item(self, entity_type: str, entity_id: str, field: str, index: int) -> bool:
        return self._client._call(
            lambda: self._project.remove_item(entity_type, entity_id, field, index)
        )

    def delete(self, entity_type: str, entity_id: str) -> bool:
        return self._client._call(lambda: self._project.delete(entity_type, entity_id))

    def rejected_changes(self) -> builtins.list[RejectedChange]:
        return self._client._call(self._project.rejected_changes)

    def dismiss_rejected(self, ids: Iterable[int] | None = None) -> int:
        return self._client._call(lambda: self._project.dismiss_rejected(ids))

    def conflicts(self, *, include_resolved: bool = False) -> builtins.list[Conflict]:
        return self._client._call(
            lambda: self._project.conflicts(include_resolved=include_resolved)
        )

    def resolve_conflict(self, conflict_id: str, value: object) -> bool:
        return self._client._call(lambda: self._project.resolve_conflict(conflict_id, value))

    def on_change(self, callback: Callable[[RemoteChanges], object]) -> Callable[[], None]:
        async def add() -> Callable[[], None]:
            return self._project.on_change(callback)

        return self._client._remover(self._client._call(add))

    def on_conflicts(self, callback: Callable[[ConflictUpdate], object]) -> Callable[[], None]:
        async def add() -> Callable[[], None]:
            return self._project.on_conflicts(callback)

        return self._client._remover(self._client._call(add))

    def on_rejected(self, callback: RejectionCallback) -> Callable[[], None]:
        async def add() -> Callable[[], None]:
            return self._project.on_rejected(callback)

        return self._client._remover(self._client._call(add))
