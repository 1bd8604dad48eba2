"""Forward-only schema migrations: ``NNNN_name.sql`` files in the ``migrations`` package.

Each pending file runs in its own transaction together with its ``schema_migrations`` row,
so a failed migration leaves no trace and the next start retries it. While migrating, the
process holds a session-level advisory lock: two servers starting at once serialise there,
and the second finds nothing left to do. A database whose version is newer than the newest
file was migrated by newer code; running old code on it could misread data, so it is
refused. Deciding (parsing names, what is pending, what is too new) is pure; the database
work is in ``migrate`` and ``check_schema``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Set
from dataclasses import dataclass
from importlib.resources import files
from itertools import pairwise

import asyncpg

from fieldsync.store.driver import DRIVER_ERRORS, translate, translated
from fieldsync.store.errors import SchemaOutdated, SchemaTooNew

# Any fixed 64-bit key works; this is b"fsmigrat" read as a big-endian integer.
MIGRATION_LOCK_KEY = 7382364513664917876

_FILE_NAME = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


# --- pure decisions -------------------------------------------------------------------


def parse_file_name(file_name: str) -> tuple[int, str] | None:
    """``0001_initial.sql`` -> ``(1, "initial")``; None for files that are not SQL.

    A ``.sql`` file that does not follow the pattern is an error, not silently skipped:
    a migration that never runs would be found only in production.
    """
    if not file_name.endswith(".sql"):
        return None
    match = _FILE_NAME.fullmatch(file_name)
    if match is None:
        raise ValueError(f"migration file {file_name!r} is not named NNNN_name.sql")
    version = int(match["version"])
    if version == 0:
        raise ValueError(f"migration file {file_name!r}: versions start at 0001")
    return version, match["name"]


def ordered(migrations: Iterable[Migration]) -> list[Migration]:
    """Sorted by version; two files with one version are an error."""
    result = sorted(migrations, key=lambda m: m.version)
    for before, after in pairwise(result):
        if before.version == after.version:
            raise ValueError(
                f"migrations {before.name!r} and {after.name!r} share version {before.version}"
            )
    return result


def latest_version(available: Iterable[Migration]) -> int:
    return max((m.version for m in available), default=0)


def too_new(available: Iterable[Migration], applied: Set[int]) -> SchemaTooNew | None:
    """The refusal to raise when the database is ahead of this code, else None."""
    newest_known = latest_version(available)
    newest_applied = max(applied, default=0)
    if newest_applied > newest_known:
        return SchemaTooNew(newest_known, newest_applied)
    return None


def pending(available: Iterable[Migration], applied: Set[int]) -> list[Migration]:
    """The migrations still to apply, in version order."""
    return [m for m in ordered(available) if m.version not in applied]


# --- I/O ------------------------------------------------------------------------------


def available_migrations(package: str = "fieldsync.migrations") -> list[Migration]:
    """Every migration file shipped in ``package``, in version order."""
    found = []
    for entry in files(package).iterdir():
        parsed = parse_file_name(entry.name)
        if parsed is not None:
            found.append(Migration(parsed[0], parsed[1], entry.read_text(encoding="utf-8")))
    return ordered(found)


@translated("migrating the database")
async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply every pending migration; return the versions applied (empty: up to date)."""
    available = available_migrations()
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now()
               )"""
        )
        applied = await _applied_versions(conn)
        refusal = too_new(available, applied)
        if refusal is not None:
            raise refusal
        done = []
        for migration in pending(available, applied):
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
            except DRIVER_ERRORS as exc:
                raise translate(
                    exc, f"migration {migration.version:04d}_{migration.name} (rolled back)"
                ) from exc
            done.append(migration.version)
        return done
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


@translated("checking the database schema")
async def check_schema(conn: asyncpg.Connection) -> None:
    """Raise SchemaTooNew or SchemaOutdated unless the database matches this code exactly."""
    available = available_migrations()
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied = await _applied_versions(conn) if exists else frozenset()
    refusal = too_new(available, applied)
    if refusal is not None:
        raise refusal
    missing = pending(available, applied)
    if missing:
        raise SchemaOutdated([m.version for m in missing])


async def _applied_versions(conn: asyncpg.Connection) -> frozenset[int]:
    rows = await conn.fetch("SELECT version FROM schema_migrations")
    return frozenset(int(row["version"]) for row in rows)
