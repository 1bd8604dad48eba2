"""A real uvicorn server running the fieldsync app inside the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from fieldsync.live.slow_requests import HEADER_SECONDS
from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.server import PING_INTERVAL_SECONDS, create_app, uvicorn_config

TEST_SECRET = b"test-secret-that-is-long-enough-for-hs256"

# Makes a user a member of a project at a level; returns the user id and a token.
MemberFactory = Callable[..., Awaitable[tuple[uuid.UUID, str]]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def start_server(
    database_url: str | None,
    port: int,
    *,
    limits: Limits = DEFAULT_LIMITS,
    ping_interval: float = PING_INTERVAL_SECONDS,
    header_seconds: float = HEADER_SECONDS,
    max_connections: int | None = None,
    **app_options: Any,
) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """Start the app on ``port`` in this event loop; returns once it accepts connections.
    ``database_url`` None: the app runs on the ``storage`` option."""
    app_options.setdefault("secret", TEST_SECRET)
    app = create_app(database_url, limits=limits, **app_options)
    config = uvicorn_config(
        app, "127.0.0.1", port, limits, ping_interval, header_seconds, max_connections
    )
    config.lifespan = "on"
    config.log_config = None
    config.timeout_graceful_shutdown = 2
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    for _ in range(1000):
        if server.started:
            return server, task
        if task.done():
            task.result()
            raise RuntimeError("server stopped before it started")
        await asyncio.sleep(0.01)
    await stop_server(server, task)
    raise RuntimeError("server did not start within 10 s")


async def stop_server(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    """Graceful shutdown, as on Ctrl-C."""
    server.should_exit = True
    await asyncio.wait_for(task, 15)


@asynccontextmanager
async def running_server(
    database_url: str | None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    ping_interval: float = PING_INTERVAL_SECONDS,
    header_seconds: float = HEADER_SECONDS,
    max_connections: int | None = None,
    **app_options: Any,
) -> AsyncIterator[str]:
    """Serve the app on a free port; yields its base URL ``127.0.0.1:PORT``."""
    port = free_port()
    server, task = await start_server(
        database_url,
        port,
        limits=limits,
        ping_interval=ping_interval,
        header_seconds=header_seconds,
        max_connections=max_connections,
        **app_options,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await stop_server(server, task)
