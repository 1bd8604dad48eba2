"""Closing HTTP connections whose request headers do not arrive in time (slowloris).

uvicorn waits for a request's headers for as long as the client likes: a socket that opens
and sends nothing, or sends a header line a minute, is held forever, and thousands of them
cost the server without ever reaching the app. The protocol made here closes a connection
whose request line and headers are not complete within ``seconds`` of the connection
opening, or of the previous response ending (keep-alive). A WebSocket upgrade counts as
complete headers; from then on the sync session's own handshake deadline applies.

It also hands a WebSocket upgrade to the ``ws`` protocol (``live.wire.SyncWire``) as the
request h11 parsed, where uvicorn would write the request back into bytes for the WebSocket
protocol to parse again.

A connection comes here from ``live.upgrade_router``, which checks the process's connection
cap, takes a plain ``/sync`` upgrade itself and hands over anything else with the bytes it
read and what is left of the deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, cast

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from fieldsync.live.lost_transports import release_transport
from fieldsync.live.ws_handshake import UpgradeRequest

HEADER_SECONDS = 10.0


class TakesUpgrade(Protocol):
    """A ``ws`` protocol that takes the parsed upgrade request instead of its bytes."""

    def take_upgrade(self, request: UpgradeRequest) -> None: ...


def close_after(seconds: float, transport: asyncio.BaseTransport) -> asyncio.TimerHandle:
    """Close ``transport`` in ``seconds`` unless the handle is cancelled first: the head's
    deadline (``when()`` is its end, on the loop's clock)."""
    return asyncio.get_running_loop().call_later(seconds, _close_open, transport)


def _close_open(transport: asyncio.BaseTransport) -> None:
    if not transport.is_closing():
        transport.close()


def hand_to_wire(
    config: Any,
    server_state: Any,
    app_state: dict[str, Any],
    transport: asyncio.Transport,
    request: UpgradeRequest,
) -> None:
    """Give the connection to the ``ws`` protocol (``live.wire.SyncWire``) with the upgrade
    request as parsed. Whatever the client sent after its request (it should wait for the
    answer) is dropped, as uvicorn drops it."""
    protocol = config.ws_protocol_class(
        config=config, server_state=server_state, app_state=app_state
    )
    protocol.connection_made(transport)
    transport.set_protocol(protocol)
    cast(TakesUpgrade, protocol).take_upgrade(request)


class _HeaderDeadlineProtocol(H11Protocol):
    header_seconds = HEADER_SECONDS
    _header_deadline: asyncio.TimerHandle | None = None
    # The first request's time when part of it has passed already (``live.upgrade_router``
    # read the start of the head); later requests on the connection get ``header_seconds``.
    first_header_seconds: float | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
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
        request = UpgradeRequest(event.method, event.target, event.http_version, self.headers)
        hand_to_wire(self.config, self.server_state, self.app_state, self.transport, request)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._header_deadline = close_after(seconds, self.transport)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None


def header_deadline_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections whose headers take over ``seconds``."""
    return type("HeaderDeadlineProtocol", (_HeaderDeadlineProtocol,), {"header_seconds": seconds})
