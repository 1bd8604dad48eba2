"""SDK clients against a real fieldsync server (uvicorn, WebSockets, PostgreSQL).

The server runs in the test's event loop like ``tests.live_server.running_server``, but on
a port chosen once per test, so it can be stopped and started again on the same address:
clients see the network go away and come back, and must reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import uvicorn

from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync_client import FieldsyncClient, Project
from tests.live_server import MemberFactory, free_port, start_server, stop_server

ClientFactory = Callable[..., FieldsyncClient]


class Online(NamedTuple):
    """A member's client with the project open and synced."""

    client: FieldsyncClient
    project: Project
    token: str
    user_id: uuid.UUID


# online(url, project, name="device", level="lead", **client_options) -> Online
OnlineFactory = Callable[..., Awaitable[Online]]

FAST_BACKOFF: dict[str, Any] = {"backoff_base": 0.05, "backoff_cap": 0.25, "connect_timeout": 2}


class RestartableServer:
    """A fieldsync server on a fixed port that can be stopped and started again."""

    def __init__(
        self, database_url: str, port: int | None = None, *, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self.database_url = database_url
        self.port = port if port is not None else free_port()
        self.limits = limits
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"ws://{self.base}"

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        assert self._task is None, "already running"
        self._server, self._task = await start_server(
            self.database_url, self.port, limits=self.limits
        )

    async def stop(self) -> None:
        server, task = self._server, self._task
        self._server = self._task = None
        if server is not None and task is not None:
            await stop_server(server, task)


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[RestartableServer]:
    control = RestartableServer(database_url)
    await control.start()
    try:
        yield control
    finally:
        await control.stop()


@pytest.fixture
async def make_client(tmp_path: Path) -> AsyncIterator[ClientFactory]:
    """``make_client(url, token, name)``: a client with its own store file, closed at the end."""
    made: list[FieldsyncClient] = []

    def make(url: str | None, token: str, name: str = "device", **options: Any) -> FieldsyncClient:
        client = FieldsyncClient(url, token, tmp_path / f"{name}.db", **{**FAST_BACKOFF, **options})
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            await client.close()


@pytest.fixture
def online(make_client: ClientFactory, member: MemberFactory) -> OnlineFactory:
    """``await online(url, project, name)``: a new member (``level``, lead by default) whose
    client (store ``name``) has opened ``project`` and synced it."""

    async def make(
        url: str, project: uuid.UUID, name: str = "device", level: str = "lead", **options: Any
    ) -> Online:
        user_id, token = await member(project, level)
        client = make_client(url, token, name, **options)
        opened = await client.open_project(str(project))
        await client.wait_synced(10)
        return Online(client, opened, token, user_id)

    return make
