"""A real fieldsync server (uvicorn, WebSockets, PostgreSQL) for the protocol tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fieldsync.observability.metrics import Metrics
from fieldsync.store.memory import MemoryStorage
from tests.live_server import running_server


@pytest.fixture(scope="module")
async def sync_server(database_url: str) -> AsyncIterator[str]:
    async with running_server(database_url) as base:
        yield base


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, MemoryStorage, Metrics]]:
    """A real server on the in-memory storage, with the storage and metrics to look into."""
    memory, metrics = MemoryStorage(), Metrics()
    async with running_server(None, storage=memory, metrics=metrics) as base:
        yield base, memory, metrics
