"""The migration runner: pure decisions first, then against brand-new databases."""

from __future__ import annotations

import asyncio

import pytest

from fieldsync.store.database import connect
from fieldsync.store.errors import SchemaOutdated, SchemaTooNew
from fieldsync.store.migrations import (
    MIGRATION_LOCK_KEY,
    Migration,
    available_migrations,
    check_schema,
    migrate,
    ordered,
    parse_file_name,
    pending,
    too_new,
)


def migrations(*versions: int) -> list[Migration]:
    return [Migration(v, f"m{v}", f"-- {v}") for v in versions]


# --- pure -----------------------------------------------------------------------------


def test_file_names() -> None:
    assert parse_file_name("0001_initial.sql") == (1, "initial")
    assert parse_file_name("0042_read_models_v2.sql") == (42, "read_models_v2")
    assert parse_file_name("__init__.py") is None
    assert parse_file_name("README.md") is None


@pytest.mark.parametrize(
    "name", ["1_initial.sql", "0000_zero.sql", "0002-dash.sql", "0003_Upper.sql", "0004_.sql"]
)
def test_misnamed_sql_files_are_errors_not_skipped(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        parse_file_name(name)


def test_order_and_duplicates() -> None:
    assert [m.version for m in ordered(migrations(3, 1, 2))] == [1, 2, 3]
    with pytest.raises(ValueError, match="share version 2"):
        ordered(migrations(1, 2, 2))


def test_pending_is_what_is_not_applied_in_order() -> None:
    available = migrations(3, 1, 2)
    assert [m.version for m in pending(available, set())] == [1, 2, 3]
    assert [m.version for m in pending(available, {1})] == [2, 3]
    assert pending(available, {1, 2, 3}) == []


def test_too_new() -> None:
    available = migrations(1, 2, 3)
    assert too_new(available, set()) is None
    assert too_new(available, {1, 2, 3}) is None
    refusal = too_new(available, {1, 2, 3, 4})
    assert refusal is not None
    assert (refusal.code_version, refusal.database_version) == (3, 4)


def test_shipped_migrations_are_numbered_without_gaps() -> None:
    shipped = available_migrations()
    assert shipped[0] == Migration(1, "initial", shipped[0].sql)
    assert [m.version for m in shipped] == list(range(1, len(shipped) + 1))


# --- against PostgreSQL ---------------------------------------------------------------


async def test_applies_all_then_nothing(fresh_database_url: str) -> None:
    versions = [m.version for m in available_migrations()]
    conn = await connect(fresh_database_url)
    try:
        with pytest.raises(SchemaOutdated) as outdated:
            await check_schema(conn)
        assert outdated.value.pending == tuple(versions)

        assert await migrate(conn) == versions
        await check_schema(conn)
        assert await conn.fetchval("SELECT to_regclass('log_heads') IS NOT NULL")
        recorded = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY 1")
        assert [(r["version"], r["name"]) for r in recorded] == [
            (m.version, m.name) for m in available_migrations()
        ]

        assert await migrate(conn) == []
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(versions)
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_once(fresh_database_url: str) -> None:
    versions = [m.version for m in available_migrations()]
    first, second = await connect(fresh_database_url), await connect(fresh_database_url)
    try:
        results = await asyncio.gather(migrate(first), migrate(second))
        assert sorted(results) == [[], versions]
        assert await first.fetchval("SELECT count(*) FROM schema_migrations") == len(versions)
    finally:
        await first.close()
        await second.close()


async def test_newer_database_is_refused(fresh_database_url: str) -> None:
    latest = available_migrations()[-1].version
    conn = await connect(fresh_database_url)
    try:
        await migrate(conn)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, 'from_the_future')",
            latest + 1,
        )
        with pytest.raises(SchemaTooNew) as refused:
            await check_schema(conn)
        assert (refused.value.code_version, refused.value.database_version) == (
            latest,
            latest + 1,
        )
        with pytest.raises(SchemaTooNew):
            await migrate(conn)
        # The refusal released the migration lock: another process could still migrate.
        other = await connect(fresh_database_url)
        try:
            assert await other.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_KEY)
        finally:
            await other.close()
    finally:
        await conn.close()
