"""Choosing the database and opening connections to it, with failures mapped to our errors.

The URL comes from, in order: ``--database-url``, the ``DATABASE_URL`` environment
variable, or an embedded PostgreSQL in the data directory. The embedded server is a
resource with a lifetime, so the choice is a context manager: leaving it stops the server.
Only a caller that passes ``create=True`` may initialise a new embedded cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from store.embedded import embedded_postgres
from store.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
POOL_CLOSE_TIMEOUT = 30.0

# What asyncpg raises when a server is missing, refuses us or goes away mid-handshake.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


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


async def connect(url: str) -> asyncpg.Connection:
    """One connection (for migrations and admin work); failures become DatabaseUnavailable."""
    try:
        return await asyncpg.connect(url, timeout=CONNECT_TIMEOUT)
    except CONNECTION_ERRORS as exc:
        raise DatabaseUnavailable(_cannot_connect(url, exc)) from exc


async def create_pool(url: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """An asyncpg pool whose first connections are open; failures become DatabaseUnavailable."""
    try:
        return await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, timeout=CONNECT_TIMEOUT
        )
    except CONNECTION_ERRORS as exc:
        raise DatabaseUnavailable(_cannot_connect(url, exc)) from exc


async def close_pool(pool: asyncpg.Pool, within: float = POOL_CLOSE_TIMEOUT) -> None:
    """Close gracefully: wait for borrowed connections (and their transactions) to come back.

    A connection still busy after ``within`` seconds is cut so shutdown cannot hang forever; its
    open transaction then rolls back, which loses nothing acknowledged.
    """
    try:
        async with asyncio.timeout(within):
            await pool.close()
    except TimeoutError:
        logger.warning("database connections still busy after %.0f s: terminating", within)
        pool.terminate()


def _cannot_connect(url: str, exc: BaseException) -> str:
    reason = str(exc) or type(exc).__name__
    return f"cannot connect to PostgreSQL at {redact_url(url)}: {reason}"


async def database_problem(pool: asyncpg.Pool, within: float) -> str | None:
    """Why the database cannot serve now (it did not answer ``SELECT 1`` within ``within``
    seconds, or failed), or None when it can."""
    try:
        async with asyncio.timeout(within), pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
    except TimeoutError:
        return f"database did not answer within {within:g} s"
    except CONNECTION_ERRORS as exc:
        return f"database error: {type(exc).__name__}"
    return None
