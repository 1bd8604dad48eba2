"""What operators and load balancers see of a process: health, metrics, connection logs."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fieldsync.live.status import StatusBoard
from fieldsync.observability.logs import bind
from fieldsync.observability.metrics import CONTENT_TYPE, Metrics
from fieldsync.store.ports import Storage


def health_answer(board: StatusBoard) -> tuple[int, dict[str, object]]:
    """The status code and body of a health answer: 200 while the database answers, else
    503 with the reason. The database watch's verdict (``live.status``: ``SELECT 1`` every
    second on a connection of its own), what every connected client is told too; reading
    it takes one attribute, so a thread may ask (``live.probe_listener``)."""
    problem = board.database_problem
    if problem is None:
        return 200, {"status": "ok"}
    return 503, {"status": "unavailable", "reason": problem}


async def healthz(request: Request) -> JSONResponse:
    """``health_answer``, for load balancers to act on; the server itself stays up and
    recovers by itself. Parts the server works without (a read replica) are described in
    the body under ``components`` and never make it fail.

    Not a query through the pool: in a reconnect storm the pool is busy with the crowd's
    reads, and a check waiting its turn there said 503, so a balancer would have taken out
    a process that was only busy, and sent its crowd to the others."""
    storage: Storage = request.app.state.storage
    within = request.app.state.health_timeout
    status, body = health_answer(request.app.state.status)
    components = await storage.health.components(within)
    if components:
        body["components"] = components
    return JSONResponse(body, status_code=status)


async def metrics_endpoint(request: Request) -> Response:
    """This process's metrics in the Prometheus text format."""
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.exposition(), media_type=CONTENT_TYPE)


class ObservedConnection:
    """A sync connection's lifetime: counted, with every line logged meanwhile naming it
    and the request that opened it. The session writes the lines about the connection
    itself (``live.session``). A plain object, not a generator: every open connection holds
    one for its whole life."""

    __slots__ = ("_binding", "_metrics")

    def __init__(self, metrics: Metrics, connection_id: str, *, request_id: str) -> None:
        self._metrics = metrics
        self._binding = bind(request_id=request_id, connection_id=connection_id)

    def __enter__(self) -> None:
        self._binding.__enter__()
        self._metrics.connection_opened()

    def __exit__(self, *exc: object) -> None:
        self._metrics.connection_closed()
        self._binding.__exit__()
