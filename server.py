"""The HTTP/WebSocket shell: a Starlette app whose resources live in its lifespan.

The pool is created when the app starts and closed when it stops (after uvicorn has let
in-flight requests finish), and is reached through ``app.state``: no module globals, so
tests can run several apps side by side.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from store.database import CONNECTION_ERRORS, close_pool, create_pool
from store.migrations import check_schema

HEALTH_TIMEOUT = 2.0


def create_app(
    database_url: str,
    *,
    pool_min_size: int = 1,
    pool_max_size: int = 10,
    health_timeout: float = HEALTH_TIMEOUT,
) -> Starlette:
    """The application; it refuses to start on a database whose schema does not match."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await create_pool(database_url, pool_min_size, pool_max_size)
        try:
            async with pool.acquire() as conn:
                await check_schema(conn)
            app.state.pool = pool
            app.state.health_timeout = health_timeout
            yield
        finally:
            await close_pool(pool)

    return Starlette(routes=[Route("/healthz", healthz, methods=["GET"])], lifespan=lifespan)


async def healthz(request: Request) -> JSONResponse:
    """200 only if the database answers ``SELECT 1`` in time: load balancers act on this."""
    pool: asyncpg.Pool = request.app.state.pool
    timeout: float = request.app.state.health_timeout
    try:
        async with asyncio.timeout(timeout), pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
    except TimeoutError:
        return _unavailable(f"database did not answer within {timeout:g} s")
    except CONNECTION_ERRORS as exc:
        return _unavailable(f"database error: {type(exc).__name__}")
    return JSONResponse({"status": "ok"})


def _unavailable(reason: str) -> JSONResponse:
    return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
