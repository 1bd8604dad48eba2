"""What operators and load balancers see of a process: health, metrics, connection logs."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from observability.logs import bind
from observability.metrics import CONTENT_TYPE, Metrics
from store.database import database_problem

log = logging.getLogger("fieldsync.connections")


async def healthz(request: Request) -> JSONResponse:
    """200 only if the database answers ``SELECT 1`` in time: load balancers act on this.
    Otherwise 503 with the reason; the server itself stays up and recovers by itself."""
    pool: asyncpg.Pool = request.app.state.pool
    problem = await database_problem(pool, request.app.state.health_timeout)
    if problem is not None:
        return JSONResponse({"status": "unavailable", "reason": problem}, status_code=503)
    return JSONResponse({"status": "ok"})


async def metrics_endpoint(request: Request) -> Response:
    """This process's metrics in the Prometheus text format."""
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.exposition(), media_type=CONTENT_TYPE)


@contextmanager
def observed_connection(metrics: Metrics, connection_id: str) -> Iterator[None]:
    """A sync connection's lifetime: counted, and logged when it opens and closes, with
    every line in between naming it."""
    opened = time.monotonic()
    with bind(connection_id=connection_id), metrics.connection():
        log.info("connection opened", extra={"event": "connection_opened"})
        try:
            yield
        finally:
            log.info(
                "connection closed",
                extra={
                    "event": "connection_closed",
                    "duration_ms": round((time.monotonic() - opened) * 1000),
                },
            )
