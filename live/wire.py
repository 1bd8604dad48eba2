"""The sync WebSocket below the ASGI layer: cheap to hold, cheap to write to.

An idle subscribed tablet is the common case, and there may be hundreds of thousands. Served
through uvicorn's WebSocket protocol and Starlette, each socket held an ASGI scope, a receive
queue, events and a task parked in a stack of middleware frames: about 24 KB of the 32 KB a
socket cost (``bench/idle_sockets.py``), and every frame sent went through four ``send``
wrappers. Here a ``/sync`` upgrade is handed, by uvicorn's HTTP protocol, to
:class:`SyncWire`: websockets' sans-I/O ``ServerProtocol`` for the framing and the handshake,
an ``asyncio.Protocol`` for the socket, and the :class:`~fieldsync.live.session.SyncSession`
on top, through the same small :class:`~fieldsync.live.session.Transport` the ASGI endpoint
gives it. Every other path still goes through the ASGI app.

What the ASGI path did is kept: the Origin rules (the allow-list, or the server's own
pages) and admission are checked before the
upgrade (403, or 429/503 with ``Retry-After``, as JSON); a saturated process
(``live.load_gate``) answers 503 with its hint before even parsing the request (with a
request id of its own); the client address follows uvicorn's
proxy-header rules; the response carries ``X-Request-Id``; keepalive pings find dead peers;
reading pauses while a frame waits for the session (the session paces its own reads);
writing waits while the kernel's buffer is full; uvicorn's graceful shutdown closes the
socket with 1012.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import random
import struct
from collections.abc import Sequence
from typing import Any, cast

from starlette.applications import Starlette
from uvicorn.config import Config
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.server import ServerState
from websockets.datastructures import Headers
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from fieldsync.live.admission import Refusal
from fieldsync.live.operations import ObservedConnection
from fieldsync.live.origins import OriginPolicy, same_origin
from fieldsync.live.session import SyncServices, SyncSession
from fieldsync.observability.logs import bind
from fieldsync.observability.metrics import Metrics
from fieldsync.observability.request_ids import HEADER as REQUEST_ID_HEADER
from fieldsync.observability.request_ids import request_id
from fieldsync.sync.errors import ErrorCode

log = logging.getLogger("fieldsync.live.wire")

SYNC_PATH = "/sync"
CLOSE_TIMEOUT_SECONDS = 10.0
"""How long a close we sent waits for the client's answer before the socket is dropped."""
_TIMERS = contextvars.Context()
"""The context keepalive and close timers run in (they log nothing): a pending timer would
otherwise hold a copy of the context it was set in, the upgrade's log binding included."""


class SyncWire(asyncio.Protocol):
    """One WebSocket connection on ``/sync``, from the upgrade request to the socket's end.

    Made by uvicorn's HTTP protocol (as its ``ws`` protocol class) with the connection's
    transport, then fed the upgrade request's bytes.
    """

    app: Starlette  # set on the subclass :func:`sync_wire_protocol` makes
    _proxy: ProxyHeadersMiddleware | None = None  # per subclass, so per server

    __slots__ = (
        "__weakref__",
        "_accepted",
        "_close_sent",
        "_config",
        "_connections",
        "_drained",
        "_fragment_text",
        "_fragments",
        "_inbox",
        "_loop",
        "_lost",
        "_peer",
        "_ping_payload",
        "_read_paused",
        "_reader",
        "_tasks",
        "_timer",
        "_transport",
        "_write_paused",
        "_ws",
    )

    def __init__(
        self, config: Config, server_state: ServerState, app_state: dict[str, Any]
    ) -> None:
        self._config = config
        self._connections = server_state.connections
        self._tasks = server_state.tasks
        self._loop = asyncio.get_running_loop()
        self._ws = ServerProtocol(max_size=config.ws_max_size)
        self._transport: asyncio.Transport | None = None
        self._peer: tuple[str, int] | None = None
        self._inbox: list[bytes | str] = []  # a message or two: reading pauses meanwhile
        self._fragments: list[bytes] = []
        self._fragment_text = False
        self._reader: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._accepted = False
        self._close_sent = False
        self._lost = False
        self._timer: asyncio.TimerHandle | None = None  # keepalive ping, pong or close wait
        self._ping_payload: bytes | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._connections.add(cast(Any, self))
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._peer = (str(peer[0]), int(peer[1]))

    def data_received(self, data: bytes) -> None:
        if not self._accepted and not self._close_sent and self._saturated():
            return
        self._ws.receive_data(data)
        if self._ws.handshake_exc is not None and not self._accepted:
            # An upgrade request websockets cannot take (it may have queued a 4xx of its own).
            self._write()
            if not self._close_sent:
                self._respond(self._ws.reject(400, "invalid WebSocket upgrade request\n"))
            return
        for event in self._ws.events_received():
            if isinstance(event, Request):
                self._start(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._write()
        if self._ws.close_sent is not None and not self._close_sent:
            # The framing failed (oversize, bad UTF-8, protocol error): websockets said why.
            self._close_sent = True
            self._wait_then_drop()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._cancel_timer()
        self._connections.discard(cast(Any, self))
        self._wake_reader()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: tell the client to come back (1012), then drop."""
        if self._transport is None or self._lost:
            return
        if self._accepted and not self._close_sent:
            self._ws.send_close(1012, "server restarting")
            self._write()
        self._transport.close()

    def _saturated(self) -> bool:
        """Refuse the upgrade before reading it if the process cannot take one more now: the
        refusal of a crowd must cost far less than serving it (``live.load_gate``)."""
        services: SyncServices = self.app.state.sync
        refusal = services.load.refusal()
        if refusal is None:
            return False
        services.metrics.connection_refused(refusal.reason)
        rid = request_id({"headers": []})
        retry = {"Retry-After": str(self._retry_after(services, refusal))}
        self._deny(refusal.status, ErrorCode.SERVER_BUSY.value, refusal.message, rid, retry)
        return True

    # -- frames from the client -----------------------------------------------------------------

    def _frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.TEXT or frame.opcode is Opcode.BINARY:
            self._fragment_text = frame.opcode is Opcode.TEXT
            self._fragments = [bytes(frame.data)]
        elif frame.opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
        elif frame.opcode is Opcode.PONG:
            if self._ping_payload is not None and bytes(frame.data) == self._ping_payload:
                self._ping_payload = None
                self._schedule_ping()
            return
        else:  # PING is answered by websockets; CLOSE is handled in data_received
            return
        if not frame.fin:
            return
        data = b"".join(self._fragments)
        self._fragments = []
        if self._close_sent:
            return  # the session is past its close; only the client's answer matters now
        message: bytes | str = data
        if self._fragment_text:
            try:
                message = data.decode()
            except UnicodeDecodeError:
                self._close_sent = True
                self._ws.fail(CloseCode.INVALID_DATA, "a text frame that is not UTF-8")
                self._write()
                self._wait_then_drop()
                self._wake_reader()
                return
        self._inbox.append(message)
        if not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()
        self._wake_reader()

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    async def receive(self) -> bytes | str | None:
        """The client's next message; None once the connection is over. Safe to cancel: a
        message that arrives meanwhile waits for the next call."""
        while not self._inbox:
            if self._lost or self._close_sent or self._ws.close_rcvd is not None:
                return None
            self._reader = self._loop.create_future()
            await self._reader
        if self._close_sent:
            return None  # the session closed: what the client sent since goes unread
        message = self._inbox.pop(0)
        if not self._inbox:
            self._resume_reading()
        return message

    def _resume_reading(self) -> None:
        if self._read_paused and self._transport is not None:
            self._read_paused = False
            if not self._lost:
                self._transport.resume_reading()

    # -- frames to the client -------------------------------------------------------------------

    def write_now(self, message: bytes) -> bool:
        """Write one whole binary message if the socket takes data now (its buffer is below
        the high-water mark, the connection open); False: it must wait."""
        if self._write_paused or self._lost or self._close_sent:
            return False
        if self._ws.state is not State.OPEN:
            return False
        assert self._transport is not None
        self._transport.write(message)
        return True

    def write(self, messages: Sequence[bytes]) -> None:
        """Write whole binary messages (``live.ws_frames``), in one system call where the
        kernel takes them; dropped once the connection is closing or gone."""
        if self._lost or self._close_sent or self._ws.state is not State.OPEN:
            return
        assert self._transport is not None
        # websockets' own frames (pongs) are written as they are made: none is pending here.
        self._transport.write(messages[0] if len(messages) == 1 else b"".join(messages))

    async def drained(self) -> None:
        """Return once the socket's buffer is below its low-water mark, or it is gone."""
        while self._write_paused and not self._lost:
            if self._drained is None or self._drained.done():
                self._drained = self._loop.create_future()
            await asyncio.shield(self._drained)
        self._drained = None

    async def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; the socket is dropped when the client answers, or
        after CLOSE_TIMEOUT_SECONDS."""
        if self._lost or self._close_sent:
            return
        self._close_sent = True
        self._ws.send_close(code, reason)
        self._write()
        self._wait_then_drop()
        # Read on, so the client's answer to the close is seen, and wake a waiting reader.
        self._inbox.clear()
        self._resume_reading()
        self._wake_reader()

    def _write(self) -> None:
        data = self._ws.data_to_send()
        if not data or self._transport is None or self._lost:
            return
        self._transport.write(b"".join(data))
        if data[-1] == b"":
            # websockets' end of stream: half-close, and read on (websockets discards what
            # comes) until the client closes its side, so the close frame is not lost to a
            # reset; a client that never does is dropped after CLOSE_TIMEOUT_SECONDS.
            self._close_sent = True  # nothing more goes out
            if self._transport.can_write_eof():
                self._transport.write_eof()
            else:
                self._transport.close()
            self._wait_then_drop()
            self._wake_reader()

    def _respond(self, response: Response) -> None:
        self._close_sent = True
        self._ws.send_response(response)
        self._write()
        if self._transport is not None:
            self._transport.close()

    # -- the upgrade ----------------------------------------------------------------------------

    def _start(self, request: Request) -> None:
        path = request.path.partition("?")[0]
        if path != SYNC_PATH:
            self._respond(self._ws.reject(404, "no WebSocket endpoint here\n"))
            return
        task = self._loop.create_task(self._serve(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: Request) -> None:
        rid, opened = await self._open(request)
        del request  # an idle socket keeps nothing of its upgrade request
        if opened is not None:
            session, metrics = opened
            with ObservedConnection(metrics, session.session_id, request_id=rid):
                await session.run()
        if self._transport is not None and not self._close_sent:
            self._transport.close()

    async def _open(self, request: Request) -> tuple[str, tuple[SyncSession, Metrics] | None]:
        """The request id, and the session once the upgrade is accepted (None: refused)."""
        raw = request.headers.raw_items()
        headers = [(name.lower().encode(), value.encode("latin-1")) for name, value in raw]
        rid = request_id({"headers": headers})
        with bind(request_id=rid):
            services: SyncServices = self.app.state.sync
            origins: OriginPolicy = self.app.state.origins
            origin = request.headers.get("Origin")
            if not (origins.allows(origin) or same_origin(origin, request.headers.get("Host"))):
                self._deny(
                    403,
                    ErrorCode.FORBIDDEN_ORIGIN.value,
                    "this Origin may not open a sync connection",
                    rid,
                )
                return rid, None
            address = await self._client_address(headers)
            admitted = services.admission.admit(address)
            if isinstance(admitted, Refusal):
                services.metrics.connection_refused(admitted.reason)
                retry = str(self._retry_after(services, admitted))
                self._deny(
                    admitted.status,
                    ErrorCode.SERVER_BUSY.value,
                    admitted.message,
                    rid,
                    {"Retry-After": retry},
                )
                return rid, None
            try:
                accepted = self._accept(request, rid)
                # websockets' parser keeps the request for the connection's life: drop what
                # it holds that an idle socket need not (every header the client sent).
                request.headers.clear()
                if not accepted:
                    admitted.release()
                    return rid, None
                session = SyncSession(
                    services,
                    self,
                    ticket=admitted,
                    address=address,
                )
            except BaseException:
                admitted.release()
                raise
            return rid, (session, services.metrics)

    def _accept(self, request: Request, rid: str) -> bool:
        if self._lost:
            return False
        response = self._ws.accept(request)
        if response.status_code != 101:
            self._respond(response)
            return False
        response.headers[REQUEST_ID_HEADER] = rid
        self._ws.send_response(response)
        self._write()
        self._accepted = True
        self._schedule_ping()
        return True

    @staticmethod
    def _retry_after(services: SyncServices, refusal: Refusal) -> int:
        """The ``Retry-After`` of a refused upgrade. A saturated process (503) hints how
        long it needs for what it holds (``live.load_gate``), capped for the process-wide
        admission cap by its configured wait; one address over its cap (429) gets that
        wait as it is, however idle the process."""
        configured = services.admission.limits.retry_after_seconds
        if refusal.status != 503:
            return configured
        hint = services.load.retry_after()
        if refusal.reason == "unauthenticated_process":
            return min(hint, configured)
        return hint

    def _deny(
        self, status: int, code: str, message: str, rid: str, extra: dict[str, str] | None = None
    ) -> None:
        body = json.dumps({"code": code, "message": message}).encode()
        headers = Headers(
            {
                "Content-Type": "application/json",
                "Content-Length": str(len(body)),
                "Connection": "close",
                REQUEST_ID_HEADER: rid,
                **(extra or {}),
            }
        )
        reason = _REASONS.get(status, "Refused")
        self._respond(Response(status, reason, headers, body))

    async def _client_address(self, headers: list[tuple[bytes, bytes]]) -> str:
        """The client's host, from X-Forwarded-For when the peer is a trusted proxy: the
        rule uvicorn applies to every ASGI request (``--forwarded-allow-ips``)."""
        scope: dict[str, Any] = {"type": "websocket", "client": self._peer, "headers": headers}
        if self._config.proxy_headers:
            # The middleware sets scope["client"] in place; it is made once per server, since
            # parsing the trusted hosts on every connection would tax a reconnect storm.
            cls = type(self)
            if cls._proxy is None:
                cls._proxy = ProxyHeadersMiddleware(
                    cast(Any, _nothing), trusted_hosts=self._config.forwarded_allow_ips
                )
            await cls._proxy(cast(Any, scope), cast(Any, None), cast(Any, None))
        client = scope.get("client")
        return str(client[0]) if client else "unknown"

    # -- keepalive and close timers -------------------------------------------------------------

    def _schedule_ping(self) -> None:
        interval = self._config.ws_ping_interval
        self._cancel_timer()
        if interval is not None and interval > 0 and not self._close_sent:
            self._timer = self._loop.call_later(interval, self._ping, context=_TIMERS)

    def _ping(self) -> None:
        self._timer = None
        if self._lost or self._close_sent:
            return
        self._ping_payload = struct.pack("!I", random.getrandbits(32))
        self._ws.send_ping(self._ping_payload)
        self._write()
        timeout = self._config.ws_ping_timeout
        if timeout is not None and timeout > 0:
            self._timer = self._loop.call_later(timeout, self._pong_missing, context=_TIMERS)
        else:
            self._schedule_ping()

    def _pong_missing(self) -> None:
        self._timer = None
        if self._lost or self._close_sent:
            return
        self._close_sent = True
        self._ws.fail(1011, "keepalive ping timeout")
        self._write()
        if self._transport is not None:
            self._transport.close()

    def _wait_then_drop(self) -> None:
        self._cancel_timer()
        if self._transport is not None and not self._lost:
            self._timer = self._loop.call_later(
                CLOSE_TIMEOUT_SECONDS, self._transport.close, context=_TIMERS
            )

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


async def _nothing(_scope: Any, _receive: Any, _send: Any) -> None:
    """The app behind the proxy-header middleware: the wire only wants the scope it fixed."""


_REASONS = {403: "Forbidden", 429: "Too Many Requests", 503: "Service Unavailable"}


def sync_wire_protocol(app: Starlette) -> type[SyncWire]:
    """The ``ws`` protocol class for uvicorn: ``/sync`` upgrades served by :class:`SyncWire`
    with ``app``'s services."""
    return type("AppSyncWire", (SyncWire,), {"app": app, "__slots__": ()})
