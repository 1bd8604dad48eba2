"""Who is asking, for the HTTP endpoints that read a project (the snapshot, the query API):
the bearer token, checked as the sync handshake checks it, and the answers every such
endpoint gives alike."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from fieldsync.auth.tokens import TokenClaims, TokenError, TokenVerifier
from fieldsync.live.origins import preflight_headers

RETRY_AFTER_SECONDS = 5


async def bearer_claims(request: Request) -> TokenClaims | JSONResponse:
    """The token's claims, or the answer to give instead: 401 without a valid bearer
    token, 503 when tokens cannot be checked right now."""
    verifier: TokenVerifier = request.app.state.verifier
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return JSONResponse(
            {"code": "invalid_token", "message": "send Authorization: Bearer <token>"},
            status_code=401,
        )
    try:
        return await verifier.verify(token.strip())
    except TokenError as exc:
        if exc.unavailable:
            return JSONResponse(
                {"code": "server_unavailable", "message": "tokens cannot be checked right now"},
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        code = "token_expired" if exc.expired else "invalid_token"
        return JSONResponse({"code": code, "message": str(exc)}, status_code=401)


def unavailable() -> JSONResponse:
    """The database is unreachable: a retry later will do."""
    return JSONResponse(
        {"code": "server_unavailable", "message": "the database cannot be reached right now"},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def not_found() -> JSONResponse:
    """Unknown and forbidden projects get the same answer: ids reveal nothing."""
    return JSONResponse(
        {"code": "project_unavailable", "message": "no such project, or not a member"},
        status_code=404,
    )


async def cors_preflight(request: Request) -> Response:
    """A browser asks whether a page from its Origin may send a request with a bearer token
    to this path: the answer names the methods the path's routes take (GET, and PATCH for
    an attachment's content), so every route shares this one endpoint."""
    headers = preflight_headers(
        request.app.state.origins, request.headers.get("origin"), _path_methods(request)
    )
    if headers is None:
        return Response(status_code=403)
    return Response(status_code=204, headers=headers)


def _path_methods(request: Request) -> set[str]:
    """The methods the app's routes take at this request's path (besides the preflight's
    own OPTIONS and the HEAD that comes with GET)."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches(request.scope)
            if match != Match.NONE:
                methods |= route.methods
    return methods - {"OPTIONS", "HEAD"}
