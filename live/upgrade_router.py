"""A connection's first request: a plain ``/sync`` upgrade straight to the sync wire,
everything else to uvicorn's HTTP protocol with the bytes as they came.

uvicorn makes an ``H11Protocol`` for every connection: an ``h11.Connection``, the parse,
and an ASGI scope built for a request that, for an upgrade, never reaches the app. That was
62 us of each resume's 530 (a storm of 10,000 is mostly upgrades). This protocol reads the
first request's head itself when it is an upgrade to ``/sync`` of the simplest shape, and
hands the connection, with every byte it read, to the HTTP protocol
(``live.slow_requests``) for anything else: another request, a head it does not fully
understand (folded or odd header lines, no or two ``Host``, a body, HTTP/1.0, an upgrade
uvicorn would not make), or one larger than ``MAX_HEAD_BYTES``. So whatever it does not take
is answered exactly as before, and what it takes is what uvicorn would have upgraded, parsed
as h11 parses it (a property test holds the two together).

As the first protocol every connection meets, it closes a new connection at once, before
reading anything, while the process holds ``max_connections`` (``live.open_files``: what its
open-file limit allows), so ``accept()`` never runs out of descriptors. It starts the
deadline for the request's head, which the HTTP protocol continues, not restarts.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any, cast

from uvicorn.config import Config
from uvicorn.server import ServerState

from fieldsync.live.lost_transports import release_transport
from fieldsync.live.slow_requests import close_after, hand_to_wire
from fieldsync.live.ws_handshake import UpgradeRequest

MAX_HEAD_BYTES = 8_192  # larger heads go to h11, with its own limits
MAX_HEADERS = 64
_PREFIX = b"GET /sync"
_REQUEST_LINE = re.compile(rb"GET (/sync(?:\?[\x21-\x7e]*)?) HTTP/1\.1")
# RFC 9110 field-name ":" OWS field-value OWS, with no obs-fold: as h11 reads a header line.
_HEADER_LINE = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*"
    rb"((?:[\x21-\x7e\x80-\xff](?:[\x20-\x7e\x80-\xff\t]*[\x21-\x7e\x80-\xff])?)?)[ \t]*"
)
_BODY_HEADERS = (b"content-length", b"transfer-encoding")


def parse_upgrade_head(head: bytes) -> UpgradeRequest | None:
    """The request whose head (up to, not including, the blank line) is ``head``, if it is
    an upgrade to ``/sync`` that uvicorn would hand to its WebSocket protocol, read as h11
    reads it; None for anything else, which h11 then reads."""
    lines = head.split(b"\r\n")
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None or len(lines) - 1 > MAX_HEADERS:
        return None
    headers: list[tuple[bytes, bytes]] = []
    for raw in lines[1:]:
        field = _HEADER_LINE.fullmatch(raw)
        if field is None:
            return None
        name = field.group(1).lower()
        if name in _BODY_HEADERS:
            return None
        headers.append((name, field.group(2)))
    if sum(name == b"host" for name, _ in headers) != 1 or _upgrade(headers) != b"websocket":
        return None
    return UpgradeRequest(b"GET", line.group(1), b"1.1", headers)


def _upgrade(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The upgrade asked for, as uvicorn's HTTP protocol decides it: the last ``Upgrade``,
    when the last ``Connection`` lists ``upgrade``."""
    connection: list[bytes] = []
    upgrade = None
    for name, value in headers:
        if name == b"connection":
            connection = [token.lower().strip() for token in value.split(b",")]
        elif name == b"upgrade":
            upgrade = value.lower()
    return upgrade if b"upgrade" in connection else None


class UpgradeHead:
    """The first request's head as its bytes arrive: the ``/sync`` upgrade to take, every
    byte for the HTTP protocol, or not known yet. However the client splits its bytes (one
    at a time, to hold the connection), each is looked at a bounded number of times."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = bytearray()  # what came before, while the head is not whole

    def feed(self, data: bytes) -> UpgradeRequest | bytes | None:
        """The upgrade request, once the head is whole and one the router takes; or every
        byte received so far, for the HTTP protocol; or None while more is needed."""
        held = self._held
        seen = len(held)
        if seen:
            held += data
            buffer: bytes | bytearray = held
        else:
            buffer = data  # the common case: the whole head in one read, not copied
        # Not a /sync upgrade, or not one yet: any other request goes to h11 at its first
        # byte that differs.
        if not buffer.startswith(_PREFIX) and not _PREFIX.startswith(buffer):
            return self._for_http(buffer)
        # A bare line feed among the new bytes: h11 ends lines there too, so the head may be
        # complete. A pair split between reads starts at the last byte held.
        if buffer.count(b"\n", seen) != buffer.count(b"\r\n", max(seen - 1, 0)):
            return self._for_http(buffer)
        end = buffer.find(b"\r\n\r\n", max(seen - 3, 0))
        if end < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                return self._for_http(buffer)
            if not seen:
                held += data
            return None
        request = parse_upgrade_head(bytes(buffer[:end])) if end <= MAX_HEAD_BYTES else None
        if request is None:
            return self._for_http(buffer)
        self._held = bytearray()
        return request

    def _for_http(self, buffer: bytes | bytearray) -> bytes:
        self._held = bytearray()
        return bytes(buffer)


def _uncounted() -> None:
    return None


class UpgradeRouter(asyncio.Protocol):
    """uvicorn's ``http`` protocol class: one per connection until its first request's head
    is read (:func:`upgrade_router` makes the class for a server)."""

    http_class: Any  # the HTTP protocol (``live.slow_requests``)
    header_seconds: float
    max_connections: int | None
    # Told of each connection closed for ``max_connections``: the metrics.
    turned_away: Callable[[], None] = staticmethod(_uncounted)

    __slots__ = ("_app_state", "_config", "_deadline", "_head", "_server_state", "_transport")

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._config = config
        self._server_state = server_state
        self._app_state = app_state
        self._transport: asyncio.Transport | None = None
        self._head = UpgradeHead()
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        connections = self._server_state.connections
        connections.add(cast(Any, self))
        cap = self.max_connections
        if cap is not None and len(connections) > cap:
            self.turned_away()
            transport.close()  # nothing was read: the client sees the close and backs off
            return
        self._deadline = close_after(self.header_seconds, transport)

    def data_received(self, data: bytes) -> None:
        routed = self._head.feed(data)
        if routed is None:
            return
        if isinstance(routed, bytes):
            self._to_http(routed)
            return
        self._hand_over()
        assert self._transport is not None
        hand_to_wire(self._config, self._server_state, self._app_state, self._transport, routed)

    def _to_http(self, received: bytes) -> None:
        """Hand the connection to the HTTP protocol, with every byte read so far and what is
        left of the head's deadline."""
        assert self._deadline is not None
        assert self._transport is not None
        left = max(0.0, self._deadline.when() - asyncio.get_running_loop().time())
        self._hand_over()
        http = self.http_class(
            config=self._config, server_state=self._server_state, app_state=self._app_state
        )
        http.first_header_seconds = left
        self._transport.set_protocol(http)
        http.connection_made(self._transport)
        http.data_received(received)

    def _hand_over(self) -> None:
        self._disarm()
        self._server_state.connections.discard(cast(Any, self))

    def eof_received(self) -> bool | None:
        return None  # the client closed before its request was whole: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._server_state.connections.discard(cast(Any, self))
        release_transport(self._transport)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: no request yet, so nothing to finish."""
        if self._transport is not None:
            self._transport.close()

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def upgrade_router(
    http_class: Any,
    max_connections: int | None = None,
    turned_away: Callable[[], None] = _uncounted,
) -> type[UpgradeRouter]:
    """The router class for a server whose HTTP protocol is ``http_class``
    (``live.slow_requests.header_deadline_protocol``, whose head deadline it starts),
    closing new connections beyond ``max_connections`` (each told to ``turned_away``)."""
    attributes = {
        "http_class": http_class,
        "header_seconds": http_class.header_seconds,
        "max_connections": max_connections,
        "turned_away": staticmethod(turned_away),
        "__slots__": (),
    }
    return type("AppUpgradeRouter", (UpgradeRouter,), attributes)
