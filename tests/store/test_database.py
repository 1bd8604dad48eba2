"""Choosing the database URL, keeping secrets out of logs, the socket path limit, and what
the pool does when a connection is returned."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldsync.store.database import (
    close_pool,
    connect,
    create_pool,
    explicit_database_url,
    redact_url,
    resolve_database_url,
    with_database,
)
from fieldsync.store.embedded import SOCKET_PATH_LIMIT, embedded_postgres, socket_path_problem
from fieldsync.store.errors import DatabaseUnavailable


def test_flag_beats_environment_which_beats_embedded() -> None:
    env = {"DATABASE_URL": "postgresql://env/db"}
    assert explicit_database_url("postgresql://flag/db", env) == "postgresql://flag/db"
    assert explicit_database_url(None, env) == "postgresql://env/db"
    assert explicit_database_url(None, {}) is None
    assert explicit_database_url("", {"DATABASE_URL": ""}) is None


def test_explicit_url_starts_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "never-created"
    with resolve_database_url(None, data_dir, {"DATABASE_URL": "postgresql://h/db"}) as url:
        assert url == "postgresql://h/db"
    assert not data_dir.exists()


def test_passwords_never_reach_logs() -> None:
    assert redact_url("postgresql://app:s3cret@db:5432/fs") == "postgresql://app:***@db:5432/fs"
    assert "s3cret" not in redact_url("postgres://app:s3cret@db/fs?sslmode=require")
    unix = "postgresql://postgres:@/postgres?host=/tmp/fs1/postgres"
    assert redact_url(unix) == unix


def test_with_database_keeps_server_and_options() -> None:
    assert (
        with_database("postgresql://postgres:@/postgres?host=/tmp/fs1/postgres", "t1")
        == "postgresql://postgres:@/t1?host=/tmp/fs1/postgres"
    )
    assert with_database("postgresql://u:p@h:5433/app", "t2") == "postgresql://u:p@h:5433/t2"


def test_socket_path_limit() -> None:
    assert socket_path_problem(Path("/tmp/fs1/postgres")) is None
    fits = Path("/" + "d" * (SOCKET_PATH_LIMIT - len("/.s.PGSQL.5432") - 1))
    assert socket_path_problem(fits) is None
    problem = socket_path_problem(Path(str(fits) + "x"))
    assert problem is not None
    assert "--data-dir" in problem


def test_too_long_data_dir_is_refused_before_starting(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    with pytest.raises(DatabaseUnavailable, match="too long"), embedded_postgres(deep):
        pass
    assert not deep.exists()


async def test_unreachable_server_is_database_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailable, match="cannot connect") as caught:
        await connect(f"postgresql://u:hidden@/db?host={tmp_path}")
    assert "hidden" not in str(caught.value)


async def test_a_returned_connection_is_not_reset_but_its_transaction_is_rolled_back(
    database_url: str,
) -> None:
    """The pool skips asyncpg's reset statement (one round trip per borrowing; fieldsync
    leaves no session state), yet a transaction left open is still rolled back on return."""
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET application_name = 'left over'")
            await conn.execute("BEGIN")
            await conn.execute("CREATE TEMP TABLE left_open (x int) ON COMMIT DROP")
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid  # the same session
            # No RESET ALL ran: the session setting survived the return ...
            assert await conn.fetchval("SHOW application_name") == "left over"
            # ... but the open transaction did not.
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('left_open')") is None
    finally:
        await close_pool(pool)
