"""The HTTP query API over the read models (``docs/api.md``): the shell around ``query``.

Every endpoint of the route table (``query.routes``) is served the same way: the bearer
token (401), the parameters (400 ``bad_parameter``, checked before storage is asked
anything), membership at any level (404 for a non-member, a removed member and an unknown
project alike), then one page from storage's ``QueryPort`` (503 with Retry-After while
storage cannot answer). Browsers from an allowed Origin may read the answers (CORS, as for
the snapshot). ``/openapi.json`` is generated from the same table.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from fieldsync.live.http_auth import bearer_claims, cors_preflight, not_found, unavailable
from fieldsync.live.origins import cors_headers
from fieldsync.live.sync_health import LIVE_SECONDS
from fieldsync.query import requests
from fieldsync.query.items import BadParameter
from fieldsync.query.openapi import openapi_document
from fieldsync.query.params import BadParameterError
from fieldsync.query.routes import ENDPOINTS, OPENAPI_PATH
from fieldsync.store.errors import StoreError, UnknownProject
from fieldsync.store.ports import QueryPort

log = logging.getLogger(__name__)

Pairs = list[tuple[str, str]]
Read = Callable[[QueryPort], Awaitable[msgspec.Struct]]
"""A checked request: reads its page from storage."""
Answer = Callable[[UUID, Pairs], Read]
"""One endpoint: checks the parameters (raising BadParameterError) before any I/O."""


def _activities(project_id: UUID, pairs: Pairs) -> Read:
    query, scope = requests.activity_query(project_id, pairs)

    async def read(port: QueryPort) -> msgspec.Struct:
        return requests.activity_page(project_id, scope, await port.activities(project_id, query))

    return read


def _summonings(project_id: UUID, pairs: Pairs) -> Read:
    query, scope = requests.summoning_query(project_id, pairs)

    async def read(port: QueryPort) -> msgspec.Struct:
        page = await port.summonings(project_id, query)
        return requests.summoning_page(project_id, scope, page)

    return read


def _conflicts(project_id: UUID, pairs: Pairs) -> Read:
    query, scope = requests.conflict_query(project_id, pairs)

    async def read(port: QueryPort) -> msgspec.Struct:
        return requests.conflict_page(project_id, scope, await port.conflicts(project_id, query))

    return read


def _members(project_id: UUID, pairs: Pairs) -> Read:
    live_since = datetime.now(UTC) - timedelta(seconds=LIVE_SECONDS)
    query, scope = requests.member_query(project_id, pairs, live_since)

    async def read(port: QueryPort) -> msgspec.Struct:
        page = await port.member_health(project_id, query)
        return requests.member_page(project_id, scope, page)

    return read


ANSWERS: dict[str, Answer] = {
    "list_activities": _activities,
    "list_summonings": _summonings,
    "list_conflicts": _conflicts,
    "list_member_health": _members,
}


def _json(body: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json")


def _endpoint(answer: Answer) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        response = await _answer(request, answer)
        response.headers.update(
            cors_headers(request.app.state.origins, request.headers.get("origin"))
        )
        return response

    return endpoint


async def _answer(request: Request, answer: Answer) -> Response:
    claims = await bearer_claims(request)
    if isinstance(claims, JSONResponse):
        return claims
    try:
        project_id = UUID(request.path_params["project_id"])
    except ValueError:
        return not_found()
    storage = request.app.state.storage
    try:
        read = answer(project_id, request.query_params.multi_items())
    except BadParameterError as exc:
        return _json(BadParameter(parameter=exc.parameter, message=exc.message), 400)
    try:
        if await storage.membership.level(project_id, claims.user_id) is None:
            return not_found()
        return _json(await read(storage.queries))
    except UnknownProject:
        return not_found()
    except StoreError as exc:
        log.warning("query of project %s failed: %s", project_id, exc)
        return unavailable()


async def _openapi(request: Request) -> Response:
    document: bytes = request.app.state.openapi_json
    response = Response(document, media_type="application/json")
    response.headers.update(cors_headers(request.app.state.origins, request.headers.get("origin")))
    return response


def query_routes() -> list[BaseRoute]:
    """The API's routes, one per entry of the route table, plus ``/openapi.json``."""
    routes: list[BaseRoute] = []
    for spec in ENDPOINTS:
        routes.append(Route(spec.path, _endpoint(ANSWERS[spec.operation_id]), methods=["GET"]))
        routes.append(Route(spec.path, cors_preflight, methods=["OPTIONS"]))
    routes.append(Route(OPENAPI_PATH, _openapi, methods=["GET"]))
    return routes


def openapi_json() -> bytes:
    return msgspec.json.encode(openapi_document())
