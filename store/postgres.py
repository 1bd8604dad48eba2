"""The PostgreSQL storage: every port of ``store.ports`` on one connection pool, and
optionally a read replica's for snapshots and catch-up reads (``store.replica``).

This bundles the modules that talk to PostgreSQL (``changelog``, ``projects``,
``snapshots``, ``notifications``, ``migrations``, ``rebuild``, ``queries``, ``database``);
the shells receive a :class:`PostgresStorage` as a ``Storage`` and never see its pool. Each public
coroutine translates driver errors (``store.driver``), like everything else here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from uuid import UUID

from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.store import migrations, projects, rebuild
from fieldsync.store.accounts import AccountRow, MemberRow, ProjectDetail, ProjectRow, UserRow
from fieldsync.store.append_plan import OnCommit
from fieldsync.store.attachments import PostgresAttachments
from fieldsync.store.changelog import ChangeLog
from fieldsync.store.database import (
    DatabasePool,
    DatabaseProbe,
    close_pool,
    connect,
    create_pool,
)
from fieldsync.store.driver import translated
from fieldsync.store.notifications import listen, listen_removals, notify, poll_heads
from fieldsync.store.ports import (
    PointerHandler,
    PoolGauges,
    RemovalHandler,
    Snapshot,
)
from fieldsync.store.queries import PostgresQueries, PostgresSyncHealth
from fieldsync.store.records import RebuildReport
from fieldsync.store.replica import CHECK_SECONDS, DEFAULT_MAX_LAG, ReplicaReads
from fieldsync.store.snapshots import open_snapshot


class PostgresStorage:
    """``store.ports.Storage`` on PostgreSQL. Made by :meth:`open` (which owns the pool it
    creates) or around an existing pool (which the caller keeps and closes)."""

    def __init__(
        self,
        pool: DatabasePool,
        url: str,
        *,
        cache_size: int = 10_000,
        owns_pool: bool = False,
        replica: ReplicaReads | None = None,
    ) -> None:
        self._pool = pool
        self._owns_pool = owns_pool
        self._cache_size = cache_size
        self._replica = replica
        self.membership = PostgresMembership(pool)
        self.snapshots = PostgresSnapshots(pool, replica)
        self.notifications = PostgresNotifications(pool, url)
        self.health = PostgresHealth(url, replica)
        self.admin = PostgresAdmin(pool)
        self.maintenance = PostgresMaintenance(pool, url)
        self.queries = PostgresQueries(pool)
        self.sync_health = PostgresSyncHealth(pool)
        self._attachments = PostgresAttachments(pool)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        cache_size: int = 10_000,
        replica_url: str | None = None,
        replica_max_lag: float = DEFAULT_MAX_LAG,
        replica_check_seconds: float = CHECK_SECONDS,
    ) -> PostgresStorage:
        """A storage on a new pool whose first connections are open (DatabaseUnavailable
        otherwise); :meth:`close` closes it, as does leaving ``async with`` it. With
        ``replica_url``, snapshots and catch-up reads go to that streaming replica while
        its replay lag is within ``replica_max_lag`` seconds (``store.replica``); it need
        not be up now."""
        pool = await create_pool(url, min_size, max_size)
        replica = None
        if replica_url is not None:
            try:
                replica = await ReplicaReads.open(
                    pool,
                    replica_url,
                    max_size=max_size,
                    max_lag=replica_max_lag,
                    check_seconds=replica_check_seconds,
                )
            except BaseException:
                await close_pool(pool)
                raise
        return cls(pool, url, cache_size=cache_size, owns_pool=True, replica=replica)

    @property
    def pool_gauges(self) -> PoolGauges:
        return self._pool

    @property
    def replica_gauges(self) -> ReplicaReads | None:
        return self._replica

    @property
    def attachments(self) -> PostgresAttachments:
        return self._attachments

    def change_log(
        self,
        *,
        limits: Limits = DEFAULT_LIMITS,
        on_commit: OnCommit | None = None,
        on_append: Callable[[UUID, int, int], None] | None = None,
        on_conflicts_found: Callable[[Sequence[str]], None] | None = None,
    ) -> ChangeLog:
        return ChangeLog(
            self._pool,
            limits=limits,
            on_commit=on_commit,
            on_append=on_append,
            on_conflicts_found=on_conflicts_found,
            cache_size=self._cache_size,
            replica=self._replica,
        )

    @translated("closing the connection pool")
    async def close(self) -> None:
        if self._owns_pool:
            if self._replica is not None:
                await self._replica.close()
            await close_pool(self._pool)

    async def __aenter__(self) -> PostgresStorage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class PostgresMembership:
    def __init__(self, pool: DatabasePool) -> None:
        self._pool = pool

    @translated("reading membership")
    async def level(self, project_id: UUID, user_id: UUID) -> str | None:
        async with self._pool.acquire() as conn:
            return await projects.member_level(conn, project_id, user_id)

    @translated("reading memberships")
    async def levels(self, pairs: Sequence[tuple[UUID, UUID]]) -> dict[tuple[UUID, UUID], str]:
        async with self._pool.acquire() as conn:
            return await projects.member_levels(conn, pairs)

    @translated("reading memberships")
    async def still_member_of(self, user_id: UUID, project_ids: Sequence[UUID]) -> set[UUID]:
        async with self._pool.acquire() as conn:
            return await projects.member_projects(conn, user_id, project_ids)


class PostgresSnapshots:
    def __init__(self, pool: DatabasePool, replica: ReplicaReads | None = None) -> None:
        self._pool = pool
        self._replica = replica

    def open(self, project_id: UUID) -> AbstractAsyncContextManager[Snapshot]:
        if self._replica is not None:
            return self._replica.open_snapshot(project_id)
        return open_snapshot(self._pool, project_id)


class PostgresNotifications:
    """NOTIFY after each commit, LISTEN on connections of its own (``store.notifications``)."""

    def __init__(self, pool: DatabasePool, url: str) -> None:
        self._pool = pool
        self._url = url

    @translated("notifying other processes")
    async def notify_head(self, project_id: UUID, seq: int) -> None:
        await notify(self._pool, project_id, seq)

    @translated("listening for log pointers")
    async def listen_heads(self, on_pointer: PointerHandler) -> None:
        await listen(self._url, on_pointer)

    @translated("listening for membership removals")
    async def listen_removals(
        self, on_removed: RemovalHandler, *, on_connected: Callable[[], None] | None = None
    ) -> None:
        await listen_removals(self._url, on_removed, on_connected=on_connected)

    @translated("checking log heads")
    async def poll_heads(
        self,
        projects: Callable[[], Sequence[UUID]],
        on_pointer: PointerHandler,
        *,
        interval: float,
    ) -> None:
        await poll_heads(self._pool, projects, on_pointer, interval=interval)


class PostgresHealth:
    def __init__(self, url: str, replica: ReplicaReads | None = None) -> None:
        self._url = url
        self._replica = replica

    @translated("checking the read replica")
    async def components(self, within: float) -> dict[str, str]:
        """The read replica's state, when there is one."""
        if self._replica is None:
            return {}
        state = await self._replica.refreshed(within)
        where = "reads go to the replica" if state.usable else "reads go to the primary"
        return {"read_replica": f"{state.detail}; {where}"}

    def probe(self) -> DatabaseProbe:
        """``SELECT 1`` on a connection of its own."""
        return DatabaseProbe(self._url)


class PostgresAdmin:
    """``store.projects`` on a connection borrowed for each request."""

    def __init__(self, pool: DatabasePool) -> None:
        self._pool = pool

    @translated("creating an account")
    async def create_account(self, name: str) -> UUID:
        async with self._pool.acquire() as conn:
            return await projects.create_account(conn, name)

    @translated("creating a user")
    async def create_user(
        self, display_name: str, account_id: UUID | None = None, email: str | None = None
    ) -> UUID:
        async with self._pool.acquire() as conn:
            return await projects.create_user(conn, display_name, account_id, email)

    @translated("creating a project")
    async def create_project(self, account_id: UUID, name: str) -> UUID:
        async with self._pool.acquire() as conn:
            return await projects.create_project(conn, account_id, name)

    @translated("adding a member")
    async def add_member(self, project_id: UUID, user_id: UUID, level: str) -> str | None:
        async with self._pool.acquire() as conn:
            return await projects.add_member(conn, project_id, user_id, level)

    @translated("removing a member")
    async def remove_member(self, project_id: UUID, user_id: UUID) -> str:
        async with self._pool.acquire() as conn:
            return await projects.remove_member(conn, project_id, user_id)

    @translated("looking the user up")
    async def require_user(self, user_id: UUID) -> None:
        async with self._pool.acquire() as conn:
            await projects.require_user(conn, user_id)

    @translated("listing accounts")
    async def list_accounts(
        self, *, after: UUID | None = None, limit: int | None = None
    ) -> list[AccountRow]:
        async with self._pool.acquire() as conn:
            return await projects.list_accounts(conn, after=after, limit=limit)

    @translated("listing users")
    async def list_users(
        self,
        *,
        account_id: UUID | None = None,
        after: UUID | None = None,
        limit: int | None = None,
    ) -> list[UserRow]:
        async with self._pool.acquire() as conn:
            return await projects.list_users(conn, account_id=account_id, after=after, limit=limit)

    @translated("listing projects")
    async def list_projects(
        self,
        *,
        account_id: UUID | None = None,
        after: UUID | None = None,
        limit: int | None = None,
    ) -> list[ProjectRow]:
        async with self._pool.acquire() as conn:
            return await projects.list_projects(
                conn, account_id=account_id, after=after, limit=limit
            )

    @translated("reading a project")
    async def show_project(self, project_id: UUID) -> ProjectDetail:
        async with self._pool.acquire() as conn:
            return await projects.show_project(conn, project_id)

    @translated("listing members")
    async def list_members(
        self, project_id: UUID, *, after: UUID | None = None, limit: int | None = None
    ) -> list[MemberRow]:
        async with self._pool.acquire() as conn:
            return await projects.list_members(conn, project_id, after=after, limit=limit)


class PostgresMaintenance:
    def __init__(self, pool: DatabasePool, url: str) -> None:
        self._pool = pool
        self._url = url

    @translated("migrating the database")
    async def migrate(self) -> list[int]:
        """On a connection of its own: the migration lock is held by the session."""
        conn = await connect(self._url)
        try:
            return await migrations.migrate(conn)
        finally:
            await conn.close()

    @translated("checking the database schema")
    async def check_schema(self) -> None:
        async with self._pool.acquire() as conn:
            await migrations.check_schema(conn)

    @translated("rebuilding read models")
    async def rebuild_read_models(self, project_id: UUID | None) -> RebuildReport:
        return await rebuild.rebuild_read_models(self._pool, project_id)
