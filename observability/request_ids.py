"""Gives every HTTP request and WebSocket upgrade an id, for its log lines and the client.

The id is the caller's ``X-Request-Id`` when it is a short token of safe characters (a load
balancer's own id, so both logs can be joined), else a new one. It is bound for logging
while the request is served and sent back in the ``X-Request-Id`` response header.
"""

from __future__ import annotations

import os
import re

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fieldsync.observability.logs import bind

HEADER = "x-request-id"
_SAFE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def new_id() -> str:
    """A fresh id of 32 hex digits: 128 random bits, as ``uuid4().hex`` spells them less
    six fixed bits, without building a ``UUID`` (every upgrade takes two)."""
    return os.urandom(16).hex()


def request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == HEADER.encode():
            given: str = value.decode("latin-1")
            if _SAFE.fullmatch(given):
                return given
    return new_id()


class RequestIds:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                headers.append(HEADER, rid)
            await send(message)

        with bind(request_id=rid):
            await self.app(scope, receive, send_with_id)
