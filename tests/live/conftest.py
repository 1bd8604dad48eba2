"""A real fieldsync server (uvicorn, WebSockets, PostgreSQL) for the protocol tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.live_server import running_server


@pytest.fixture(scope="module")
async def sync_server(database_url: str) -> AsyncIterator[str]:
    async with running_server(database_url) as base:
        yield base


