"""The sync WebSocket below the ASGI layer: cheap to hold, cheap to write to.

An idle subscribed tablet is the common case, and there may be hundreds of thousands. Served
through uvicorn's WebSocket protocol and Starlette, each socket held an ASGI scope, a receive
queue, events and a task parked in a stack of middleware frames: about 24 KB of the 32 KB a
socket cost (``bench/idle_sockets.py``), and every frame sent went through four ``send``
wrappers. Here a ``/sync`` upgrade is handed, by uvicorn's HTTP protocol, to
:class:`SyncWire` as the request h11 parsed (``live.slow_requests``): an ``asyncio.Protocol``
for the socket, the handshake checked on that parse (``live.ws_handshake``), the client's
frames read by a plain-state reader (``live.ws_reader``), the server's frames built once
(``live.ws_frames``), and the :class:`~fieldsync.live.session.SyncSession` on top, through
the same small :class:`~fieldsync.live.session.Transport` the ASGI endpoint gave it. Every
other path still goes through the ASGI app. websockets' ``ServerProtocol`` did the framing
and the handshake before: it cost an idle socket about 1.6 KB (its parser generators kept
the last frame read) and every upgrade request was parsed twice.

What the ASGI path did is kept: the Origin rules (the allow-list, or the server's own
pages) and admission are checked before the upgrade (403, or 429/503 with ``Retry-After``,
as JSON); a saturated process (``live.load_gate``) keeps the upgrade waiting for its turn,
or answers 503 with its hint (with a request id of its own), before those checks; the
client address follows uvicorn's proxy-header rules; the response carries
``X-Request-Id``; keepalive pings find dead peers; reading pauses while two messages (or
one and a large part of the next) wait for the session (the session paces its own reads);
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
from collections.abc import Coroutine, Sequence
from typing import Any, cast

from starlette.applications import Starlette
from uvicorn.config import Config
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.server import ServerState

from fieldsync.live.admission import Refusal
from fieldsync.live.load_gate import ROOM_REASON
from fieldsync.live.lost_transports import release_transport
from fieldsync.live.operations import ObservedConnection
from fieldsync.live.origins import OriginPolicy, same_origin
from fieldsync.live.session import SyncServices, SyncSession
from fieldsync.live.ws_deadlines import Deadlines, Slot
from fieldsync.live.ws_frames import close_frame, echo_close_frame, ping_frame, pong_frame
from fieldsync.live.ws_handshake import (
    Refused,
    UpgradeRequest,
    check,
    has_body,
    http_date,
    refusal,
    response,
    switching_protocols,
)
from fieldsync.live.ws_reader import CloseReceived, Event, FrameReader, Message, Ping, Pong
from fieldsync.observability.logs import bind
from fieldsync.observability.metrics import Metrics
from fieldsync.observability.request_ids import HEADER as REQUEST_ID_HEADER
from fieldsync.observability.request_ids import request_id
from fieldsync.sync.errors import ErrorCode

log = logging.getLogger("fieldsync.live.wire")

SYNC_PATH = "/sync"
CLOSE_TIMEOUT_SECONDS = 10.0
"""How long a close we sent waits for the client's answer before the socket is dropped."""
READ_AHEAD_BYTES = 64 * 1024
"""What is read of the client's next message while one waits for the session, before
reading pauses. A lone message (a hello, a push) pauses nothing: pausing and resuming cost
two system calls per message; a second message, or a large one on its way, pauses."""
CORK_BYTES = 16 * 1024
"""What a corked connection holds at most before it writes: small answers share a system
call, and anything larger goes out as it would have."""


class SyncWire(asyncio.Protocol):
    """One WebSocket connection on ``/sync``, from the upgrade request to the socket's end.

    Made by uvicorn's HTTP protocol (as its ``ws`` protocol class) with the connection's
    transport, then handed the upgrade request h11 parsed (:meth:`take_upgrade`).
    """

    app: Starlette  # set on the subclass :func:`sync_wire_protocol` makes
    _proxy: ProxyHeadersMiddleware | None = None  # per subclass, so per server
    _shared_deadlines: Deadlines | None = None  # likewise

    __slots__ = (
        "__weakref__",
        "_accepted",
        "_close_sent",
        "_config",
        "_corked",
        "_corked_bytes",
        "_drained",
        "_frames",
        "_inbox",
        "_interrupted",
        "_loop",
        "_lost",
        "_observed",
        "_peer",
        "_ping_payload",
        "_read_paused",
        "_reader",
        "_server_state",
        "_timer",
        "_transport",
        "_waiting",
        "_write_paused",
    )

    def __init__(
        self, config: Config, server_state: ServerState, app_state: dict[str, Any]
    ) -> None:
        self._config = config
        self._server_state = server_state
        self._loop = asyncio.get_running_loop()
        self._frames: FrameReader | None = None  # made when the upgrade is accepted
        self._observed: ObservedConnection | None = None  # while the session runs
        self._transport: asyncio.Transport | None = None
        self._peer: tuple[str, int] | None = None
        self._inbox: list[bytes | str] | None = None  # a message or two: reading pauses
        self._interrupted = False  # a deadline passed: the waiting receive raises
        self._reader: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._accepted = False
        self._close_sent = False  # nothing but a pong goes out any more
        self._lost = False
        self._timer: Slot | None = None  # its deadline: keepalive ping, pong or close wait
        self._ping_payload: bytes | None = None
        self._waiting: tuple[UpgradeRequest, str] | None = None  # the upgrade, for its turn
        self._corked: list[bytes] | None = None  # messages held for one write (cork)
        self._corked_bytes = 0

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._server_state.connections.add(cast(Any, self))
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._peer = (str(peer[0]), int(peer[1]))

    def data_received(self, data: bytes) -> None:
        frames = self._frames
        if frames is None:
            return  # not accepted (refused, or waiting its turn): what the client sent is dropped
        for event in frames.receive(data):
            self._event(event)
        if self._inbox and frames.held > READ_AHEAD_BYTES:
            self._pause_reading()  # a large next message while one waits for the session

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._corked = None
        self._cancel_timer()
        release_transport(self._transport)
        self._server_state.connections.discard(cast(Any, self))
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
            self._close_sent = True
            self._send(close_frame(1012, "server restarting"))
        self._transport.close()

    # -- frames from the client -----------------------------------------------------------------

    def _event(self, event: Event) -> None:
        if isinstance(event, Message):
            if self._close_sent:
                return  # the session is past its close; only the client's answer matters now
            if self._inbox is None:
                self._inbox = [event.data]
            else:
                # Two wait for the session: read no more until it takes them.
                self._inbox.append(event.data)
                self._pause_reading()
            self._wake_reader()
        elif isinstance(event, Ping):
            self._send(pong_frame(event.payload))
        elif isinstance(event, Pong):
            if self._ping_payload is not None and event.payload == self._ping_payload:
                self._ping_payload = None
                self._schedule_ping()
        else:
            # The client's close, answered with its own payload unless we closed first; or
            # a broken rule (oversize 1009, bad UTF-8 1007, protocol error 1002), said why.
            if not self._close_sent:
                if isinstance(event, CloseReceived):
                    self._send(echo_close_frame(event.payload))
                else:
                    self._send(close_frame(event.code, event.reason))
            self._end_stream()

    def _end_stream(self) -> None:
        """Both closes are out (or the connection failed): half-close, and read on (the
        reader discards what comes) until the client closes its side, so the close frame is
        not lost to a reset; a client that never does is dropped after CLOSE_TIMEOUT_SECONDS."""
        self._close_sent = True
        self._write_corked()
        if self._transport is not None and not self._lost:
            if self._transport.can_write_eof():
                self._transport.write_eof()
            else:
                self._transport.close()
        self._wait_then_drop()
        self._resume_reading()
        self._wake_reader()

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)

    async def receive(self) -> bytes | str | None:
        """The client's next message; None once the connection is over; TimeoutError once
        :meth:`interrupt` was called. Safe to cancel: a message that arrives meanwhile
        waits for the next call."""
        while not self._inbox:
            if self._lost or self._close_sent:
                return None
            if self._interrupted:
                self._interrupted = False
                raise TimeoutError
            self._reader = self._loop.create_future()
            await self._reader
        if self._close_sent:
            return None  # the session closed: what the client sent since goes unread
        self._interrupted = False  # a message came in time after all
        message = self._inbox.pop(0)
        if not self._inbox:
            self._inbox = None
            self._resume_reading()
        return message

    def interrupt(self) -> None:
        """A deadline passed: the waiting :meth:`receive` (or the next one, if none waits
        and no message is there by then) raises TimeoutError."""
        self._interrupted = True
        self._wake_reader()

    def _pause_reading(self) -> None:
        if not self._read_paused and self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and self._transport is not None:
            self._read_paused = False
            if not self._lost:
                self._transport.resume_reading()

    # -- frames to the client -------------------------------------------------------------------

    def write_now(self, message: bytes) -> bool:
        """Write one whole binary message if the socket takes data now (its buffer is below
        the high-water mark, the connection open); False: it must wait."""
        if self._write_paused or self._lost or self._close_sent or not self._accepted:
            return False
        corked = self._corked
        if corked is not None:
            if not corked:  # held from now until the uncork or the end of this turn
                self._loop.call_soon(self._write_corked)
            corked.append(message)
            self._corked_bytes += len(message)
            if self._corked_bytes >= CORK_BYTES:
                self._write_corked()
            return True
        assert self._transport is not None
        self._transport.write(message)
        return True

    def write(self, messages: Sequence[bytes]) -> None:
        """Write whole binary messages (``live.ws_frames``), in one system call where the
        kernel takes them; dropped once the connection is closing or gone."""
        if self._lost or self._close_sent or not self._accepted:
            return
        self._write_corked()
        self._write_out(messages)

    def cork(self) -> None:
        """Hold the messages written from now on, to write them in one system call: the
        answers to one client message. What is held goes out at :meth:`uncork`, at the end
        of the loop's turn (a cork never holds a message over a wait, for the database or
        anything else), or once it passes CORK_BYTES, whichever comes first."""
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        """Write what was held, and write at once again."""
        self._write_corked()
        self._corked = None

    def _write_corked(self) -> None:
        corked = self._corked
        if not corked:
            return
        self._corked = []
        self._corked_bytes = 0
        if self._transport is not None and not self._lost and not self._transport.is_closing():
            self._write_out(corked)

    def _write_out(self, messages: Sequence[bytes]) -> None:
        assert self._transport is not None
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
        self._send(close_frame(code, reason))
        self._wait_then_drop()
        # Read on, so the client's answer to the close is seen, and wake a waiting reader.
        self._inbox = None
        self._resume_reading()
        self._wake_reader()

    def _send(self, data: bytes) -> None:
        """Write the wire's own bytes (handshake answers, control frames), after what a
        cork holds."""
        if self._transport is not None and not self._lost and not self._transport.is_closing():
            self._write_corked()
            self._transport.write(data)

    def _respond(self, answer: bytes) -> None:
        """Answer the upgrade request with ``answer`` (an HTTP response) and close."""
        self._close_sent = True
        self._send(answer)
        if self._transport is not None:
            self._transport.close()

    # -- the upgrade ----------------------------------------------------------------------------

    def take_upgrade(self, request: UpgradeRequest) -> None:
        """The upgrade request, as uvicorn's HTTP protocol parsed it (``live.slow_requests``).
        A saturated process keeps it waiting for its turn, or refuses it with a hint, before
        looking further (``live.load_gate``)."""
        if has_body(request):
            bad = Refused(400, "Bad Request", "invalid WebSocket upgrade request\n")
            self._respond(refusal(bad, self._date()))
            return
        if request.path != SYNC_PATH:
            missing = Refused(404, "Not Found", "no WebSocket endpoint here\n")
            self._respond(refusal(missing, self._date()))
            return
        services: SyncServices = self.app.state.sync
        address = self._client_address(request.headers)
        busy = services.load.refusal()
        if busy is None:
            self._open(request, address)
        elif busy.reason == ROOM_REASON and services.load.wait(self, address):
            # Nothing is read meanwhile: what the client sends before its answer (it should
            # send nothing) is dropped, and its closing still ends the connection.
            self._waiting = (request, address)
            services.metrics.upgrade_waited()
        else:
            self._refuse_busy(services, busy)

    # -- waiting for a turn (``live.load_gate.Waiter``) -------------------------------------------

    @property
    def gone(self) -> bool:
        return self._lost

    def take_turn(self) -> None:
        if self._waiting is not None:
            request, address = self._waiting
            self._waiting = None
            self._open(request, address)

    def give_up(self, refused: Refusal) -> None:
        self._waiting = None
        self._refuse_busy(self.app.state.sync, refused)

    def _refuse_busy(self, services: SyncServices, busy: Refusal) -> None:
        """Answer 503 with the hint of when to come back (with a request id of its own)."""
        services.metrics.connection_refused(busy.reason)
        rid = request_id({"headers": []})
        retry = {"Retry-After": str(self._retry_after(services, busy))}
        self._deny(busy.status, ErrorCode.SERVER_BUSY.value, busy.message, rid, retry)

    def _open(self, request: UpgradeRequest, address: str) -> None:
        """Check the upgrade and start the session, or refuse it. All of it happens here, as
        the request arrives: no task waits for it, and nothing the client sends can come
        before the answer."""
        rid = request_id({"headers": request.headers})
        with bind(request_id=rid):
            services: SyncServices = self.app.state.sync
            origins: OriginPolicy = self.app.state.origins
            sent = request.values(b"origin")
            origin = sent[0].decode("latin-1") if sent else None
            hosts = request.values(b"host")
            host = hosts[0].decode("latin-1") if hosts else None
            # Two Origins are no browser's: refused like an Origin not on the list.
            if len(sent) > 1 or not (origins.allows(origin) or same_origin(origin, host)):
                self._deny(
                    403,
                    ErrorCode.FORBIDDEN_ORIGIN.value,
                    "this Origin may not open a sync connection",
                    rid,
                )
                return
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
                return
            try:
                if not self._accept(request, rid):
                    admitted.release()
                    return
                session = SyncSession(services, self, ticket=admitted, address=address)
            except BaseException:
                admitted.release()
                raise
        self._run(session, services.metrics, rid)

    def _run(self, session: SyncSession, metrics: Metrics, rid: str) -> None:
        """The session's task, in a context where every line logged names the connection and
        its request (``ObservedConnection``), entered here and left when the task ends."""
        observed = ObservedConnection(metrics, session.session_id, request_id=rid)
        context = contextvars.copy_context()
        context.run(observed.__enter__)
        task = self._loop.create_task(session.run(), context=context)
        self._server_state.tasks.add(task)
        self._observed = observed
        # One done callback, a bound method: a task keeps its first callback without a list.
        task.add_done_callback(self._ended, context=context)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._server_state.tasks.discard(task)
        if self._observed is not None:
            self._observed.__exit__(None, None, None)
            self._observed = None
        self.uncork()
        if self._transport is not None and not self._close_sent:
            self._transport.close()

    def _accept(self, request: UpgradeRequest, rid: str) -> bool:
        if self._lost:
            return False
        accept = check(request)
        if isinstance(accept, Refused):
            self._respond(refusal(accept, self._date()))
            return False
        self._send(switching_protocols(accept, self._date(), ((REQUEST_ID_HEADER, rid),)))
        self._accepted = True
        self._peer = None  # the address is known now; an idle socket need not keep it
        self._frames = FrameReader(self._config.ws_max_size)
        self._schedule_ping()
        return True

    def _date(self) -> str:
        """The ``Date`` uvicorn stamps on its answers (renewed each second), or now."""
        for name, value in self._server_state.default_headers:
            if name == b"date":
                return value.decode("latin-1")
        return http_date()

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
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            (REQUEST_ID_HEADER, rid),
            *(extra or {}).items(),
        ]
        self._respond(response(status, _REASONS.get(status, "Refused"), headers, body))

    def _client_address(self, headers: Sequence[tuple[bytes, bytes]]) -> str:
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
            _run_now(cls._proxy(cast(Any, scope), cast(Any, None), cast(Any, None)))
        client = scope.get("client")
        return str(client[0]) if client else "unknown"

    # -- keepalive and close timers -------------------------------------------------------------

    def _deadlines(self) -> Deadlines:
        """The server's deadlines (``live.ws_deadlines``), made with its first connection,
        in ticks of a twentieth of its shortest wait (at most a second)."""
        cls = type(self)
        if cls._shared_deadlines is None or cls._shared_deadlines.loop is not self._loop:
            waits = [CLOSE_TIMEOUT_SECONDS]
            for wait in (self._config.ws_ping_interval, self._config.ws_ping_timeout):
                if wait is not None and wait > 0:
                    waits.append(wait)
            cls._shared_deadlines = Deadlines(self._loop, min(1.0, min(waits) / 20))
        return cls._shared_deadlines

    def _schedule_ping(self) -> None:
        interval = self._config.ws_ping_interval
        self._cancel_timer()
        if interval is not None and interval > 0 and not self._close_sent:
            self._timer = self._deadlines().add(self, interval)

    def expired(self) -> None:
        """The socket's deadline passed: the client did not answer our close in time, or
        the keepalive ping's pong is missing, or the next ping is due."""
        self._timer = None
        if self._lost:
            return
        if self._close_sent:
            if self._transport is not None:
                self._transport.close()
        elif self._ping_payload is not None:
            self._pong_missing()
        else:
            self._ping()

    def _ping(self) -> None:
        self._ping_payload = struct.pack("!I", random.getrandbits(32))
        self._send(ping_frame(self._ping_payload))
        timeout = self._config.ws_ping_timeout
        if timeout is not None and timeout > 0:
            self._timer = self._deadlines().add(self, timeout)
        else:
            self._ping_payload = None  # no pong is waited for
            self._schedule_ping()

    def _pong_missing(self) -> None:
        self._close_sent = True
        self._send(close_frame(1011, "keepalive ping timeout"))
        if self._transport is not None:
            self._transport.close()

    def _wait_then_drop(self) -> None:
        self._cancel_timer()
        if self._transport is not None and not self._lost:
            self._timer = self._deadlines().add(self, CLOSE_TIMEOUT_SECONDS)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.discard(self)
            self._timer = None


async def _nothing(_scope: Any, _receive: Any, _send: Any) -> None:
    """The app behind the proxy-header middleware: the wire only wants the scope it fixed."""


def _run_now(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run to its end a coroutine that never waits (the proxy-header middleware, over
    :func:`_nothing`, only reads headers), so the upgrade needs no task of its own."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    coroutine.close()
    raise RuntimeError("the proxy-header middleware waited")


_REASONS = {403: "Forbidden", 429: "Too Many Requests", 503: "Service Unavailable"}


def sync_wire_protocol(app: Starlette) -> type[SyncWire]:
    """The ``ws`` protocol class for uvicorn: ``/sync`` upgrades served by :class:`SyncWire`
    with ``app``'s services."""
    return type("AppSyncWire", (SyncWire,), {"app": app, "__slots__": ()})
