"""Fixtures of the web app's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fieldsync.store.postgres import PostgresStorage


@pytest.fixture
async def storage(database_url: str) -> AsyncIterator[PostgresStorage]:
    """The demo project is created through it."""
    opened = await PostgresStorage.open(database_url, max_size=2)
    try:
        yield opened
    finally:
        await opened.close()
