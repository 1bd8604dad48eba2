"""The HTTP admin API under ``/admin``: the admin commands' operations as JSON endpoints.

Every operation is the same one the ``fieldsync`` command calls (the storage's admin port,
``store.ports.AdminPort``, and ``auth.tokens.issue``); this module only authenticates,
parses JSON and maps refusals to status codes. Lists come a page at a time (``limit``, at
most :data:`MAX_PAGE`; ``after`` the last id of the previous page, which the answer gives
as ``next``), so no answer grows without bound. It is authenticated by an admin key
(``Authorization: Bearer <key>``), compared in constant time, and separate from user
tokens: a stolen user token never reaches it, and the key is never logged. See
``docs/admin.md``.
"""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from fieldsync.auth.tokens import DEFAULT_TTL_SECONDS, TokenVerifier, issue
from fieldsync.store.accounts import Row, row_json
from fieldsync.store.errors import (
    DuplicateEmail,
    InvalidValue,
    NotAMember,
    StoreError,
    UnknownAccount,
    UnknownProject,
    UnknownUser,
)
from fieldsync.store.ports import AdminPort, Storage

MIN_ADMIN_KEY_LENGTH = 32
MAX_BODY_BYTES = 64 * 1024
MAX_TTL_SECONDS = 366 * 24 * 3600
DEFAULT_PAGE = 100
MAX_PAGE = 1000

Handler = Callable[[Request], Awaitable[Response]]


class BadRequestError(Exception):
    """The request body or path is not what the endpoint takes; nothing was done."""


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def _refusal(exc: StoreError) -> JSONResponse:
    """The admin error as a status and a code that names it."""
    if isinstance(exc, UnknownAccount):
        return _error(404, "unknown_account", str(exc))
    if isinstance(exc, UnknownUser):
        return _error(404, "unknown_user", str(exc))
    if isinstance(exc, UnknownProject):
        return _error(404, "unknown_project", f"unknown project {exc.project_id}")
    if isinstance(exc, NotAMember):
        return _error(404, "not_a_member", str(exc))
    if isinstance(exc, DuplicateEmail):
        return _error(409, "duplicate_email", str(exc))
    if isinstance(exc, InvalidValue):
        return _error(400, "invalid_value", str(exc))
    return _error(503, "server_unavailable", "the database failed; nothing may have been done")


async def _body(request: Request, fields: Mapping[str, tuple[type, bool]]) -> dict[str, Any]:
    """The JSON object of the body, checked against ``fields`` (name: (type, required))."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY_BYTES:
            raise BadRequestError(f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(data or b"{}")
    except ValueError:
        raise BadRequestError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequestError("the body must be a JSON object")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise BadRequestError(f"unknown field {unknown[0]!r}; known: {', '.join(sorted(fields))}")
    for name, (kind, required) in fields.items():
        value = body.get(name)
        if value is None:
            if required:
                raise BadRequestError(f"field {name!r} is required")
            continue
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise BadRequestError(f"field {name!r} must be an integer")
        if not isinstance(value, kind):
            raise BadRequestError(f"field {name!r} must be a {kind.__name__}")
    return body


def _uuid(value: object, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise BadRequestError(f"{what} is not a UUID: {str(value)[:80]!r}") from None


def _query(request: Request, names: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each at most once and each one of ``names``."""
    query = request.query_params
    for name in query:
        if name not in names:
            known = ", ".join(names) or "none"
            raise BadRequestError(f"unknown query parameter {name[:40]!r}; known: {known}")
        if len(query.getlist(name)) > 1:
            raise BadRequestError(f"query parameter {name!r} is given more than once")
    return dict(query)


def _optional_uuid(query: Mapping[str, str], name: str) -> uuid.UUID | None:
    return None if name not in query else _uuid(query[name], name)


def _limit(query: Mapping[str, str]) -> int:
    text = query.get("limit")
    if text is None:
        return DEFAULT_PAGE
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise BadRequestError(f"limit must be 1 to {MAX_PAGE}, got {text[:20]!r}")
    return int(text)


_PAGE = ("after", "limit")


def _page(name: str, rows: Sequence[Row], limit: int, key: str) -> JSONResponse:
    """One page of ``rows`` (fetched with one extra to tell whether more follow)."""
    shown = rows[:limit]
    documents = [row_json(row) for row in shown]
    following = documents[-1][key] if len(rows) > limit else None
    return JSONResponse({name: documents, "next": following})


def _guarded(key: str, handler: Handler) -> Handler:
    """Authenticate, then run ``handler``; bad input and refusals become JSON errors."""
    expected = key.encode()

    async def endpoint(request: Request) -> Response:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            return _error(401, "admin_key_required", "send Authorization: Bearer <admin key>")
        try:
            return await handler(request)
        except BadRequestError as exc:
            return _error(400, "invalid_request", str(exc))
        except StoreError as exc:
            return _refusal(exc)

    return endpoint


def _admin(request: Request) -> AdminPort:
    storage: Storage = request.app.state.storage
    return storage.admin


async def create_account(request: Request) -> Response:
    body = await _body(request, {"name": (str, True)})
    account_id = await _admin(request).create_account(body["name"])
    return JSONResponse({"account_id": str(account_id)}, status_code=201)


async def create_user(request: Request) -> Response:
    body = await _body(
        request, {"name": (str, True), "email": (str, False), "account_id": (str, False)}
    )
    account = body.get("account_id")
    account_id = None if account is None else _uuid(account, "account_id")
    user_id = await _admin(request).create_user(body["name"], account_id, body.get("email"))
    return JSONResponse({"user_id": str(user_id)}, status_code=201)


async def create_project(request: Request) -> Response:
    body = await _body(request, {"account_id": (str, True), "name": (str, True)})
    account_id = _uuid(body["account_id"], "account_id")
    project_id = await _admin(request).create_project(account_id, body["name"])
    return JSONResponse({"project_id": str(project_id)}, status_code=201)


def _member_path(request: Request) -> tuple[uuid.UUID, uuid.UUID]:
    return (
        _uuid(request.path_params["project_id"], "the project id"),
        _uuid(request.path_params["user_id"], "the user id"),
    )


async def add_member(request: Request) -> Response:
    project_id, user_id = _member_path(request)
    body = await _body(request, {"level": (str, True)})
    previous = await _admin(request).add_member(project_id, user_id, body["level"])
    return JSONResponse(
        {
            "project_id": str(project_id),
            "user_id": str(user_id),
            "level": body["level"],
            "previous_level": previous,
        }
    )


async def remove_member(request: Request) -> Response:
    project_id, user_id = _member_path(request)
    level = await _admin(request).remove_member(project_id, user_id)
    return JSONResponse(
        {"project_id": str(project_id), "user_id": str(user_id), "removed_level": level}
    )


async def issue_token(request: Request) -> Response:
    body = await _body(request, {"user_id": (str, True), "ttl": (int, False)})
    user_id = _uuid(body["user_id"], "user_id")
    ttl: int = DEFAULT_TTL_SECONDS if body.get("ttl") is None else body["ttl"]
    if not 0 < ttl <= MAX_TTL_SECONDS:
        raise BadRequestError(f"ttl must be 1 to {MAX_TTL_SECONDS} seconds")
    verifier: TokenVerifier = request.app.state.verifier
    if verifier.secret is None:
        return _error(
            409, "tokens_external", "this server checks tokens of an identity provider (JWKS)"
        )
    await _admin(request).require_user(user_id)
    issued = issue(verifier.secret, user_id, ttl)
    return JSONResponse(
        {"user_id": str(user_id), "token": issued.token, "expires_at": issued.expires_at},
        status_code=201,
    )


async def list_accounts(request: Request) -> Response:
    query = _query(request, _PAGE)
    limit = _limit(query)
    rows = await _admin(request).list_accounts(
        after=_optional_uuid(query, "after"), limit=limit + 1
    )
    return _page("accounts", rows, limit, "account_id")


async def list_users(request: Request) -> Response:
    query = _query(request, ("account_id", *_PAGE))
    limit = _limit(query)
    rows = await _admin(request).list_users(
        account_id=_optional_uuid(query, "account_id"),
        after=_optional_uuid(query, "after"),
        limit=limit + 1,
    )
    return _page("users", rows, limit, "user_id")


async def list_projects(request: Request) -> Response:
    query = _query(request, ("account_id", *_PAGE))
    limit = _limit(query)
    rows = await _admin(request).list_projects(
        account_id=_optional_uuid(query, "account_id"),
        after=_optional_uuid(query, "after"),
        limit=limit + 1,
    )
    return _page("projects", rows, limit, "project_id")


def _project_path(request: Request) -> uuid.UUID:
    return _uuid(request.path_params["project_id"], "the project id")


async def show_project(request: Request) -> Response:
    project_id = _project_path(request)
    _query(request, ())
    project = await _admin(request).show_project(project_id)
    return JSONResponse(row_json(project))


async def list_members(request: Request) -> Response:
    project_id = _project_path(request)
    query = _query(request, _PAGE)
    limit = _limit(query)
    rows = await _admin(request).list_members(
        project_id, after=_optional_uuid(query, "after"), limit=limit + 1
    )
    return _page("members", rows, limit, "user_id")


def admin_routes(admin_key: str) -> Mount:
    """The ``/admin`` routes, each behind the admin key."""
    if len(admin_key) < MIN_ADMIN_KEY_LENGTH:
        raise ValueError(f"the admin key must be at least {MIN_ADMIN_KEY_LENGTH} characters")
    members = "/projects/{project_id}/members/{user_id}"
    return Mount(
        "/admin",
        routes=[
            Route("/accounts", _guarded(admin_key, create_account), methods=["POST"]),
            Route("/accounts", _guarded(admin_key, list_accounts), methods=["GET"]),
            Route("/users", _guarded(admin_key, create_user), methods=["POST"]),
            Route("/users", _guarded(admin_key, list_users), methods=["GET"]),
            Route("/projects", _guarded(admin_key, create_project), methods=["POST"]),
            Route("/projects", _guarded(admin_key, list_projects), methods=["GET"]),
            Route("/projects/{project_id}", _guarded(admin_key, show_project), methods=["GET"]),
            Route(
                "/projects/{project_id}/members",
                _guarded(admin_key, list_members),
                methods=["GET"],
            ),
            Route(members, _guarded(admin_key, add_member), methods=["PUT"]),
            Route(members, _guarded(admin_key, remove_member), methods=["DELETE"]),
            Route("/tokens", _guarded(admin_key, issue_token), methods=["POST"]),
        ],
    )
