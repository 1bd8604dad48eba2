"""Closing HTTP connections whose request headers do not arrive in time (slowloris).

uvicorn waits for a request's headers for as long as the client likes: a socket that opens
and sends nothing, or sends a header line a minute, is held forever, and thousands of them
cost the server without ever reaching the app. The protocol made here closes a connection
whose request line and headers are not complete within ``seconds`` of the connection
opening, or of the previous response ending (keep-alive). A WebSocket upgrade counts as
complete headers; from then on the sync session's own handshake deadline applies.

It closes a new connection at once, before reading anything, while the process holds
``max_connections`` (``live.open_files``: what its open-file limit allows), so ``accept()``
never runs out of descriptors.

It also hands a WebSocket upgrade to the ``ws`` protocol (``live.wire.SyncWire``) as the
request h11 parsed, where uvicorn would write the request back into bytes for the WebSocket
protocol to parse again.

A connection comes here from ``live.upgrade_router``, which takes a plain ``/sync`` upgrade
itself and hands over anything else with the bytes it read and what is left of the
deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, cast

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from fieldsync.live.lost_transports import release_transport
from fieldsync.live.ws_handshake import UpgradeRequest

HEADER_SECONDS = 10.0


class TakesUpgrade(Protocol):
    """A ``ws`` protocol that takes the parsed upgrade request instead of its bytes."""

    def take_upgrade(self, request: UpgradeRequest) -> None: ...


def _uncounted() -> None:
    return None


class _HeaderDeadlineProtocol(H11Protocol):
    header_seconds = HEADER_SECONDS
    max_connections: int | None = None
    # Told of each connection closed for ``max_connections``: the metrics.
    turned_away: Callable[[], None] = staticmethod(_uncounted)
    _header_deadline: asyncio.TimerHandle | None = None
    # The first request's time when part of it has passed already (``live.upgrade_router``
    # read the start of the head); later requests on the connection get ``header_seconds``.
    first_header_seconds: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cap = self.max_connections
        if cap is not None and len(self.connections) > cap:
            self.turned_away()
            transport.close()  # nothing was read: the client sees the close and backs off
            return
        first = self.first_header_seconds
        self._arm(self.header_seconds if first is None else first)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # a request's headers are complete
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm(self.header_seconds)  # the next request gets the whole time

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        release_transport(self.transport)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        if not hasattr(self.ws_protocol_class, "take_upgrade"):
            super().handle_websocket_upgrade(event)
            return
        self.connections.discard(self)
        protocol = self.ws_protocol_class(  # type: ignore[call-arg, misc]
            config=self.config, server_state=self.server_state, app_state=self.app_state
        )
        protocol.connection_made(self.transport)
        self.transport.set_protocol(protocol)
        # Whatever the client sent after its request (it should wait for the answer) stays
        # in h11's buffer and is dropped, as uvicorn drops it.
        taker = cast(TakesUpgrade, protocol)
        taker.take_upgrade(
            UpgradeRequest(event.method, event.target, event.http_version, self.headers)
        )

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expired(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def header_deadline_protocol(
    seconds: float,
    max_connections: int | None = None,
    turned_away: Callable[[], None] = _uncounted,
) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections whose headers take over ``seconds``, and
    new ones beyond ``max_connections`` (each told to ``turned_away``)."""
    attributes = {
        "header_seconds": seconds,
        "max_connections": max_connections,
        "turned_away": staticmethod(turned_away),
    }
    return type("HeaderDeadlineProtocol", (_HeaderDeadlineProtocol,), attributes)
