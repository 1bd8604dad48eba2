"""A real fieldsync server (uvicorn, WebSockets, PostgreSQL) for the protocol tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from auth.tokens import issue_token
from store.projects import add_member, create_user
from tests.live_server import TEST_SECRET, running_server

MemberFactory = Callable[..., Awaitable[tuple[uuid.UUID, str]]]


@pytest.fixture(scope="module")
async def sync_server(database_url: str) -> AsyncIterator[str]:
    async with running_server(database_url) as base:
        yield base


@pytest.fixture
def member(pool: asyncpg.Pool) -> MemberFactory:
    """Make a user a member of a project; returns the user's id and a valid token."""

    async def make(project_id: uuid.UUID, level: str = "lead") -> tuple[uuid.UUID, str]:
        async with pool.acquire() as conn:
            user_id = await create_user(conn, f"{level} {uuid.uuid4().hex[:6]}")
            await add_member(conn, project_id, user_id, level)
        return user_id, issue_token(TEST_SECRET, user_id)

    return make
