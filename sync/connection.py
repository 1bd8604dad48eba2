"""The two ends of a sync connection as state machines, without I/O.

Frames go in through ``receive_frame``; what they mean comes out of ``events_received()``
and the frames to write come out of ``data_to_send()``. When ``close_requested`` is set, the
I/O shell writes what ``data_to_send()`` still returns, closes the WebSocket with that code
and reason, and calls ``connection_closed()``. Nothing here touches a socket, a clock or an
event loop, so every rule is tested by feeding frames and reading frames.

Whatever the peer sends becomes state: an error frame for it, a close request, or an event;
``receive_frame`` never raises. Only the local program's mistakes raise: a method called in
a state that does not allow it (``InvalidStateError``) or a message that must go through
another method (``ValueError``). Methods that produce output do nothing once the connection
is closing, because in an async shell a close can always race a task that is about to send.

States move only forward::

    AWAITING_HELLO --hello--> AUTHENTICATING --accept/welcome--> OPEN
          |                        |                              |
          +------------------------+------ fatal error/close -----+--> CLOSING --> CLOSED
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Generic, TypeVar

from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.sync.codec import ProtocolViolation, decode_client, decode_server, encode
from fieldsync.sync.errors import CloseCode, ErrorCode
from fieldsync.sync.messages import (
    PROTOCOL_VERSIONS,
    ClientMessage,
    Error,
    Hello,
    ProjectCursor,
    ServerMessage,
    Welcome,
)

__all__ = [
    "DEFAULT_MAX_CONSECUTIVE_ERRORS",
    "ClientConnection",
    "ConnectionState",
    "InvalidStateError",
    "ServerConnection",
]

DEFAULT_MAX_CONSECUTIVE_ERRORS = 20


class ConnectionState(Enum):
    AWAITING_HELLO = "awaiting_hello"
    AUTHENTICATING = "authenticating"  # hello received or sent; welcome not yet
    OPEN = "open"
    CLOSING = "closing"  # a close is requested; only already-queued frames go out
    CLOSED = "closed"  # the transport is gone


class InvalidStateError(Exception):
    """The local program called a method that the connection's state does not allow."""


_GOING_AWAY = (ConnectionState.CLOSING, ConnectionState.CLOSED)

E = TypeVar("E", ClientMessage, ServerMessage)


def _versions(versions: Sequence[int]) -> str:
    return ", ".join(str(v) for v in versions) or "none"


class _Connection(Generic[E]):
    """What both ends share: the state, the outgoing frames, the events, the close request."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.state = ConnectionState.AWAITING_HELLO
        self.close_requested: tuple[CloseCode, str] | None = None
        self.version: int | None = None  # the negotiated protocol version, once known
        self._outgoing: list[tuple[str, bytes]] = []  # (message type, frame)
        self._events: list[E] = []

    def data_to_send(self) -> list[bytes]:
        """Frames to write, in order; each call returns only the frames queued since."""
        return [frame for _, frame in self.outgoing()]

    def outgoing(self) -> list[tuple[str, bytes]]:
        """``data_to_send``, each frame with its message type (for counting what was sent
        without reading frames back)."""
        queued, self._outgoing = self._outgoing, []
        return queued

    def events_received(self) -> list[E]:
        """Valid messages from the peer, in order; each call returns only the new ones."""
        events, self._events = self._events, []
        return events

    def close(self, code: CloseCode = CloseCode.NORMAL, reason: str = "") -> None:
        """Ask the shell to close the connection without an error frame."""
        if self.state not in _GOING_AWAY:
            self._request_close(code, reason)

    def connection_closed(self) -> None:
        """The transport is gone: nothing more goes out or comes in."""
        self.state = ConnectionState.CLOSED
        self._outgoing.clear()

    def _queue(self, message: ServerMessage | ClientMessage) -> None:
        self._outgoing.append((message.TYPE, encode(message)))

    def _request_close(self, code: CloseCode, reason: str) -> None:
        self.state = ConnectionState.CLOSING
        # A WebSocket close reason holds at most 123 bytes of UTF-8.
        self.close_requested = (code, reason.encode()[:123].decode(errors="ignore"))


class ServerConnection(_Connection[ClientMessage]):
    """The server's end: checks the handshake and turns client frames into events.

    After a valid hello the state is AUTHENTICATING and the hello is an event; the shell
    verifies the token and calls ``accept`` or ``refuse``. In OPEN, subscribe, unsubscribe
    and push are events; a bad frame gets a non-fatal error frame and the connection stays
    usable, until ``max_consecutive_errors`` bad frames arrive with no valid one between.
    """

    def __init__(
        self,
        limits: Limits = DEFAULT_LIMITS,
        *,
        max_consecutive_errors: int = DEFAULT_MAX_CONSECUTIVE_ERRORS,
    ) -> None:
        super().__init__(limits)
        if max_consecutive_errors < 1:
            raise ValueError("max_consecutive_errors must be at least 1")
        self.max_consecutive_errors = max_consecutive_errors
        self._errors_in_a_row = 0
        self._refusals: list[ErrorCode] = []

    def refusals_received(self) -> list[ErrorCode]:
        """The codes of frames refused since the last call (for the shell's metrics)."""
        refusals, self._refusals = self._refusals, []
        return refusals

    def receive_frame(self, frame: bytes | str) -> None:
        if self.state in _GOING_AWAY:
            return
        try:
            message = decode_client(frame, self.limits)
        except ProtocolViolation as violation:
            self._refuse_frame(violation)
            return
        if self.state is ConnectionState.AWAITING_HELLO:
            self._hello(message)
        elif self.state is ConnectionState.AUTHENTICATING:
            self._refusals.append(ErrorCode.HANDSHAKE_REQUIRED)
            self._fail(
                ErrorCode.HANDSHAKE_REQUIRED, f"wait for welcome before sending {message.TYPE}"
            )
        elif isinstance(message, Hello):
            self._refuse_frame(
                ProtocolViolation(ErrorCode.ALREADY_HANDSHAKEN, "this connection is open already")
            )
        else:
            self._errors_in_a_row = 0
            self._events.append(message)

    def _hello(self, message: ClientMessage) -> None:
        if not isinstance(message, Hello):
            self._refusals.append(ErrorCode.HANDSHAKE_REQUIRED)
            self._fail(ErrorCode.HANDSHAKE_REQUIRED, f"send hello first, not {message.TYPE}")
            return
        common = set(message.versions).intersection(PROTOCOL_VERSIONS)
        if not common:
            self._fail(
                ErrorCode.UNSUPPORTED_VERSION,
                f"this server speaks protocol version {_versions(PROTOCOL_VERSIONS)}; "
                f"the hello offered {_versions(message.versions)}",
                CloseCode.UNSUPPORTED_VERSION,
            )
            return
        self.version = max(common)
        self.state = ConnectionState.AUTHENTICATING
        self._events.append(message)

    def refuse_event(self, violation: ProtocolViolation) -> None:
        """A message that is valid alone but not now (a push id already in flight, which the
        protocol above knows): refused and counted like a bad frame."""
        self._refuse_frame(violation)

    def _refuse_frame(self, violation: ProtocolViolation) -> None:
        """A frame that is not a valid message: fatal during the handshake, else counted."""
        self._refusals.append(violation.code)
        if self.state is ConnectionState.AWAITING_HELLO:
            # The specific code says more than handshake_required about a broken hello.
            self._fail(violation.code, violation.message)
        elif self.state is ConnectionState.AUTHENTICATING:
            self._fail(
                ErrorCode.HANDSHAKE_REQUIRED,
                f"wait for welcome before sending anything ({violation.message})",
            )
        else:
            self._errors_in_a_row += 1
            if self._errors_in_a_row >= self.max_consecutive_errors:
                self._fail(
                    violation.code,
                    f"{violation.message} ({self._errors_in_a_row} bad frames in a row)",
                    push_id=violation.push_id,
                )
            else:
                self._queue(violation.to_error())

    def accept(self, welcome: Welcome) -> None:
        """The token is good: queue ``welcome`` and open the connection."""
        if self.state in _GOING_AWAY:
            return
        if self.state is not ConnectionState.AUTHENTICATING:
            raise InvalidStateError(f"accept() needs AUTHENTICATING, not {self.state.name}")
        if welcome.version != self.version:
            raise ValueError(f"welcome.version must be {self.version}, the version negotiated")
        self.state = ConnectionState.OPEN
        self._queue(welcome)

    def refuse(self, code: ErrorCode, message: str, close_code: CloseCode) -> None:
        """The hello is refused (bad token, too many connections): fatal error, then close."""
        if self.state in _GOING_AWAY:
            return
        if self.state is not ConnectionState.AUTHENTICATING:
            raise InvalidStateError(f"refuse() needs AUTHENTICATING, not {self.state.name}")
        self._fail(code, message, close_code)

    def fail(self, code: ErrorCode, message: str, close_code: CloseCode) -> None:
        """A fatal condition the shell found (e.g. too_slow): error frame, then close."""
        if self.state not in _GOING_AWAY:
            self._fail(code, message, close_code)

    def send(self, message: ServerMessage) -> None:
        """Queue a message: an error in any live state, anything else once OPEN."""
        if self.state in _GOING_AWAY:
            return
        if isinstance(message, Welcome):
            raise ValueError("a welcome is sent by accept()")
        if isinstance(message, Error):
            if message.fatal:
                raise ValueError("a fatal error is sent by fail() or refuse(), which also close")
        elif self.state is not ConnectionState.OPEN:
            raise InvalidStateError(f"cannot send {message.TYPE} in {self.state.name}")
        self._queue(message)

    def _fail(
        self,
        code: ErrorCode,
        message: str,
        close_code: CloseCode = CloseCode.POLICY_VIOLATION,
        push_id: int | None = None,
    ) -> None:
        self._queue(Error(code.value, message, True, push_id))
        self._request_close(close_code, code.value)


class ClientConnection(_Connection[ServerMessage]):
    """The client's end: says hello, waits for welcome, turns server frames into events.

    Error messages are events in every state; a fatal one also moves to CLOSING with a
    close request (the server closes too). A frame the client cannot decode, or a message
    out of place (anything but welcome or error before welcome, a second welcome), means
    the server is not speaking this protocol: ``failure`` records why and the connection
    asks to close with PROTOCOL_ERROR (MESSAGE_TOO_BIG for an oversized frame).
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(limits)
        self.welcome: Welcome | None = None
        self.failure: ProtocolViolation | None = None
        self._offered: tuple[int, ...] = ()

    def hello(
        self,
        token: str,
        client_id: str,
        projects: Sequence[ProjectCursor] = (),
        *,
        outbox_age_ms: int | None = None,
        versions: Sequence[int] = PROTOCOL_VERSIONS,
        client_version: str | None = None,
    ) -> None:
        if self.state is not ConnectionState.AWAITING_HELLO:
            raise InvalidStateError(f"hello() needs AWAITING_HELLO, not {self.state.name}")
        self._offered = tuple(versions)
        self._queue(
            Hello(self._offered, token, client_id, tuple(projects), outbox_age_ms, client_version)
        )
        self.state = ConnectionState.AUTHENTICATING

    def receive_frame(self, frame: bytes | str) -> None:
        if self.state in _GOING_AWAY:
            return
        try:
            message = decode_server(frame, self.limits)
        except ProtocolViolation as violation:
            self._fail(violation)
            return
        if isinstance(message, Error):
            self._events.append(message)
            if message.fatal:
                self._request_close(CloseCode.NORMAL, message.code)
        elif self.state is ConnectionState.OPEN and not isinstance(message, Welcome):
            self._events.append(message)
        elif self.state is ConnectionState.AUTHENTICATING and isinstance(message, Welcome):
            if message.version not in self._offered:
                self._fail(
                    ProtocolViolation(
                        ErrorCode.UNSUPPORTED_VERSION,
                        f"welcome chose version {message.version}; "
                        f"the hello offered {_versions(self._offered)}",
                    )
                )
                return
            self.version = message.version
            self.welcome = message
            self.state = ConnectionState.OPEN
            self._events.append(message)
        else:
            self._fail(
                ProtocolViolation(
                    ErrorCode.HANDSHAKE_REQUIRED
                    if self.state is not ConnectionState.OPEN
                    else ErrorCode.ALREADY_HANDSHAKEN,
                    f"{message.TYPE} is out of place in {self.state.name}",
                )
            )

    def send(self, message: ClientMessage) -> None:
        """Queue subscribe, unsubscribe or push; only once OPEN (hello goes by hello())."""
        if self.state in _GOING_AWAY:
            return
        if isinstance(message, Hello):
            raise ValueError("a hello is sent by hello()")
        if self.state is not ConnectionState.OPEN:
            raise InvalidStateError(f"cannot send {message.TYPE} in {self.state.name}")
        self._queue(message)

    def _fail(self, violation: ProtocolViolation) -> None:
        self.failure = violation
        code = (
            CloseCode.MESSAGE_TOO_BIG
            if violation.code is ErrorCode.FRAME_TOO_LARGE
            else CloseCode.PROTOCOL_ERROR
        )
        self._request_close(code, violation.code.value)
