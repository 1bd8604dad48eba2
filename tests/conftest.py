"""Shared fixtures: one PostgreSQL server per test session, one database per need.

The server is an embedded PostgreSQL in a short temporary directory (Unix socket paths are
limited to about 107 bytes), or the server named by ``DATABASE_URL`` when it is set: that is
how the same suite runs against an external PostgreSQL. Either way, the tests only ever
touch databases they created themselves, and drop them afterwards.

Fixtures:
- ``postgres_server_url`` (session): the server's own URL, for admin work.
- ``database_url`` (session): a database created and migrated once for the session.
- ``pool`` (session): an asyncpg pool on ``database_url``.
- ``fresh_database_url`` (function): a brand-new, empty (unmigrated) database.
- ``project`` (function): the id (``uuid.UUID``) of a new project with an empty change log
  (``log_heads.head_seq`` = 0) in ``database_url``; each test gets its own.
- ``other_project`` (function): a second such project, in another account.
- ``member`` (function): a factory making a user a member of a project, with a token.
- ``own_postgres`` (function): a PostgreSQL for one test alone, to be stopped or killed
  (``tests/postgres_process.py``): its URL and its data directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from fieldsync.auth.tokens import issue_token
from fieldsync.live.event_loops import DEFAULT_LOOP, LoopFactory, loop_factory
from fieldsync.store.database import close_pool, connect, create_pool, with_database
from fieldsync.store.embedded import embedded_postgres, pgdata_path
from fieldsync.store.migrations import migrate
from fieldsync.store.projects import add_member, create_account, create_project, create_user
from tests.live_server import TEST_SECRET, MemberFactory


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, LoopFactory]:
    """Tests run on the event loop ``fieldsync serve`` runs on by default
    (``live.event_loops``); ``FIELDSYNC_TEST_LOOP=asyncio`` runs them on asyncio's own."""
    name, factory = loop_factory(os.environ.get("FIELDSYNC_TEST_LOOP", DEFAULT_LOOP))
    return {name: factory}


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    data_dir = Path(tempfile.mkdtemp(prefix="fs", dir="/tmp"))
    try:
        with embedded_postgres(data_dir) as url:
            yield url
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def create_migrated_database(server_url: str, prefix: str) -> str:
    """A new database on ``server_url``, migrated; returns its URL."""
    url = with_database(server_url, await _create_database(server_url, prefix))
    conn = await connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return url


async def drop_database(server_url: str, url: str) -> None:
    """Drop the database ``url`` names (one made by these fixtures)."""
    await _drop_database(server_url, urlsplit(url).path.lstrip("/"))


async def _create_database(server_url: str, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def _drop_database(server_url: str, name: str) -> None:
    admin = await connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
async def database_url(postgres_server_url: str) -> AsyncIterator[str]:
    name = await _create_database(postgres_server_url, "fs_test")
    url = with_database(postgres_server_url, name)
    try:
        conn = await connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield url
    finally:
        await _drop_database(postgres_server_url, name)


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(database_url, min_size=1, max_size=10)
    try:
        yield created
    finally:
        await close_pool(created)


@pytest.fixture
async def fresh_database_url(postgres_server_url: str) -> AsyncIterator[str]:
    name = await _create_database(postgres_server_url, "fs_fresh")
    try:
        yield with_database(postgres_server_url, name)
    finally:
        await _drop_database(postgres_server_url, name)


async def _new_project(pool: asyncpg.Pool, name: str) -> uuid.UUID:
    async with pool.acquire() as conn:
        account_id = await create_account(conn, f"{name} account")
        return await create_project(conn, account_id, name)


@pytest.fixture
async def project(pool: asyncpg.Pool) -> uuid.UUID:
    return await _new_project(pool, "Test project")


@pytest.fixture
async def other_project(pool: asyncpg.Pool) -> uuid.UUID:
    return await _new_project(pool, "Other project")


@pytest.fixture
def member(pool: asyncpg.Pool) -> MemberFactory:
    """Make a user a member of a project; returns the user's id and a valid token."""

    async def make(project_id: uuid.UUID, level: str = "lead") -> tuple[uuid.UUID, str]:
        async with pool.acquire() as conn:
            user_id = await create_user(conn, f"{level} {uuid.uuid4().hex[:6]}")
            await add_member(conn, project_id, user_id, level)
        return user_id, issue_token(TEST_SECRET, user_id)

    return make


@pytest.fixture
def own_postgres() -> Iterator[tuple[str, Path]]:
    data_dir = Path(tempfile.mkdtemp(prefix="fo", dir="/tmp"))
    try:
        with embedded_postgres(data_dir) as url:
            yield url, pgdata_path(data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
