"""Fixtures for the TypeScript SDK tests: the real server and Python SDK clients of
``tests/client``, and TypeScript clients in Node processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.client.conftest import make_client, online, server  # noqa: F401 (fixtures)
from tests.typescript.node import TsClient

TsFactory = Callable[[], Awaitable[TsClient]]


@pytest.fixture
async def ts_client() -> AsyncIterator[TsFactory]:
    """``await ts_client()``: a TypeScript client process, closed at the end."""
    started: list[TsClient] = []

    async def start() -> TsClient:
        client = await TsClient.start()
        started.append(client)
        return client

    try:
        yield start
    finally:
        for client in started:
            await client.close()
