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

from model.limits import DEFAULT_LIMITS, Limits
from server import PING_INTERVAL_SECONDS, create_app, uvicorn_config

TEST_SECRET = b"test-secret-that-is-long-enough-for-hs256"

# Makes a user a member of a project at a level; returns the user id and a token.
MemberFactory = Callable[..., Awaitable[tuple[uuid.UUID, str]]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@asynccontextmanager
async def running_server(
    database_url: str,
    *,
    limits: Limits = DEFAULT_LIMITS,
    ping_interval: float = PING_INTERVAL_SECONDS,
    **app_options: Any,
) -> AsyncIterator[str]:
    """Serve the app on a free port; yields its base URL ``127.0.0.1:PORT``."""
    port = free_port()
    app = create_app(database_url, secret=TEST_SECRET, limits=limits, **app_options)
    config = uvicorn_config(app, "127.0.0.1", port, limits, ping_interval)
    config.lifespan = "on"
    config.log_config = None
    config.timeout_graceful_shutdown = 2
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped before it started")
            await asyncio.sleep(0.01)
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
