"""Choosing the database and opening connections to it, with failures mapped to our errors.

The URL comes from, in order: ``--database-url``, the ``DATABASE_URL`` environment
variable, or an embedded PostgreSQL in the data directory. The embedded server is a
resource with a lifetime, so the choice is a context manager: leaving it stops the server.
Only a caller that passes ``create=True`` may initialise a new embedded cluster.

Connections and pools made here fail with StoreErrors only (``store.driver``): a pool's
``acquire`` and ``release``, a connection's ``close``, and the health checks.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from fieldsync.store.driver import DRIVER_ERRORS, driver_error_name, driver_errors, translated
from fieldsync.store.embedded import embedded_postgres
from fieldsync.store.errors import DatabaseUnavailable, StoreError

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
POOL_CLOSE_TIMEOUT = 30.0
# asyncpg's own defaults, which ``asyncpg.create_pool`` would pass.
_MAX_QUERIES = 50_000
_MAX_INACTIVE_SECONDS = 300.0


class DatabasePool(asyncpg.Pool):  # type: ignore[misc]  # asyncpg has no type hints
    """asyncpg's pool, whose connections are borrowed and given back through the
    translation: ``async with pool.acquire() as conn`` fails with StoreErrors only."""

    def acquire(self, *, timeout: float | None = None) -> _Borrowing:
        return _Borrowing(super().acquire(timeout=timeout))

    @translated("returning a database connection")
    async def release(
        self,
        connection: Any,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (asyncpg's signature)
    ) -> None:
        await super().release(connection, timeout=timeout)


class _Borrowing:
    """What ``DatabasePool.acquire`` returns: like asyncpg's, an async context manager
    or an awaitable."""

    def __init__(self, borrowing: Any) -> None:
        self._borrowing = borrowing

    async def __aenter__(self) -> Any:
        with driver_errors("borrowing a database connection"):
            return await self._borrowing.__aenter__()

    async def __aexit__(self, *exc_info: object) -> None:
        with driver_errors("returning a database connection"):
            await self._borrowing.__aexit__(*exc_info)

    def __await__(self) -> Generator[Any, None, Any]:
        return self._borrow().__await__()

    async def _borrow(self) -> Any:
        with driver_errors("borrowing a database connection"):
            return await self._borrowing


class _Connection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg has no type hints
    """A connection of its own (``connect``), whose ``close`` fails with StoreErrors only."""

    async def close(
        self,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (asyncpg's signature)
    ) -> None:
        with driver_errors("closing a database connection"):
            await super().close(timeout=timeout)


class _PoolConnection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg has no type hints
    """A pooled connection given back without asyncpg's reset statement.

    asyncpg's pool sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET
    ALL`` on every release: one more round trip per borrowing, several per push. fieldsync
    leaves no session state on a pooled connection (advisory locks are transaction-scoped,
    ``LISTEN`` and the migration lock use connections of their own, no ``SET`` outlives a
    transaction), so there is nothing to reset. An open transaction is still rolled back on
    release: asyncpg does that before asking for this statement.
    """

    def get_reset_query(self) -> str:
        return ""


class _OneLine(logging.Filter):
    """asyncpg's pool logs each failed attempt to reopen connections (while the database is
    down) with a traceback; make it one line that names the error."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {error}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.event = "database_reconnect_failed"
        return True


logging.getLogger("asyncpg.pool").addFilter(_OneLine())


def explicit_database_url(cli_url: str | None, environ: Mapping[str, str]) -> str | None:
    """The URL the user gave (flag first, then ``DATABASE_URL``), or None for embedded."""
    if cli_url:
        return cli_url
    return environ.get("DATABASE_URL") or None


@contextmanager
def resolve_database_url(
    cli_url: str | None,
    data_dir: Path,
    environ: Mapping[str, str] | None = None,
    *,
    create: bool = True,
) -> Iterator[str]:
    """Yield the database URL to use; an embedded server started here stops on exit.

    Without ``create``, a data directory with no embedded cluster is refused
    (DatabaseUnavailable) rather than initialised.
    """
    url = explicit_database_url(cli_url, os.environ if environ is None else environ)
    if url is not None:
        yield url
        return
    with embedded_postgres(data_dir, create=create) as embedded_url:
        yield embedded_url


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for logs and error messages."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def with_database(url: str, database: str) -> str:
    """The URL of another database on the same server (e.g. a test database)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@translated("connecting to the database")
async def connect(url: str) -> asyncpg.Connection:
    """One connection (for migrations and admin work); failures become DatabaseUnavailable."""
    try:
        return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT, connection_class=_Connection)
    except DRIVER_ERRORS as exc:
        raise DatabaseUnavailable(_cannot_connect(url, exc)) from exc


@translated("opening the connection pool")
async def create_pool(
    url: str, min_size: int = 1, max_size: int = 10, *, connect_timeout: float = CONNECT_TIMEOUT
) -> DatabasePool:
    """A pool whose first ``min_size`` connections are open (none: every connection is
    made on demand); failures become DatabaseUnavailable."""
    pool = DatabasePool(
        url,
        min_size=min_size,
        max_size=max_size,
        max_queries=_MAX_QUERIES,
        max_inactive_connection_lifetime=_MAX_INACTIVE_SECONDS,
        setup=None,
        init=None,
        loop=None,
        connection_class=_PoolConnection,
        record_class=asyncpg.Record,
        timeout=connect_timeout,
    )
    try:
        await pool
    except DRIVER_ERRORS as exc:
        raise DatabaseUnavailable(_cannot_connect(url, exc)) from exc
    return pool


@translated("closing the connection pool")
async def close_pool(pool: asyncpg.Pool, within: float = POOL_CLOSE_TIMEOUT) -> None:
    """Close gracefully: wait for borrowed connections (and their transactions) to come back.

    A connection still busy after ``within`` seconds is cut so shutdown cannot hang forever; its
    open transaction then rolls back, which loses nothing acknowledged. Never fails: a
    connection that cannot be closed politely (the database went away) is cut too.
    """
    try:
        async with asyncio.timeout(within):
            with driver_errors("closing the connection pool"):
                await pool.close()
    except TimeoutError:
        logger.warning("database connections still busy after %.0f s: terminating", within)
        pool.terminate()
    except StoreError as exc:
        logger.warning("%s: terminating the connections", exc, extra={"event": "pool_cut"})
        pool.terminate()


def _cannot_connect(url: str, exc: BaseException) -> str:
    reason = str(exc) or type(exc).__name__
    return f"cannot connect to PostgreSQL at {redact_url(url)}: {reason}"


class DatabaseProbe:
    """``SELECT 1`` on a connection of its own: a pool busy with pushes must not look like
    a database that went away."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: asyncpg.Connection | None = None

    @translated("checking the database")
    async def problem(self, within: float) -> str | None:
        """Why the database cannot serve now, or None when it can (never fails)."""
        try:
            async with asyncio.timeout(within):
                with driver_errors("checking the database"):
                    if self._conn is None or self._conn.is_closed():
                        self._conn = await asyncpg.connect(self._url)
                    await self._conn.fetchval("SELECT 1")
        except TimeoutError:
            self.close()
            return f"database did not answer within {within:g} s"
        except StoreError as exc:
            self.close()
            return f"database error: {driver_error_name(exc)}"
        return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
