"""Protocol error codes and WebSocket close codes, whose values go on the wire, and
``ProtocolViolation``, what every decoder raises for a frame it refuses.

Entity-level refusals inside a PushResult use ``model.rejections.RejectCode`` instead.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

from fieldsync.sync.messages import Error


class ErrorCode(StrEnum):
    # The frame itself
    MALFORMED_FRAME = "malformed_frame"  # not msgpack, not a map, or a text frame
    FRAME_TOO_LARGE = "frame_too_large"
    UNKNOWN_MESSAGE_TYPE = "unknown_message_type"
    INVALID_MESSAGE = "invalid_message"  # a field missing, of the wrong type or out of range
    # The handshake
    HANDSHAKE_REQUIRED = "handshake_required"
    HANDSHAKE_TIMEOUT = "handshake_timeout"  # no hello (or no answer to it) in time
    ALREADY_HANDSHAKEN = "already_handshaken"
    UNSUPPORTED_VERSION = "unsupported_version"
    INVALID_TOKEN = "invalid_token"
    TOKEN_EXPIRED = "token_expired"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    FORBIDDEN_ORIGIN = "forbidden_origin"  # HTTP 403 before the upgrade, never a frame
    SERVER_BUSY = "server_busy"  # HTTP 503 before the upgrade: too many unauthenticated sockets
    # Projects
    PROJECT_UNAVAILABLE = "project_unavailable"  # unknown or not a member: same answer
    MEMBERSHIP_REMOVED = "membership_removed"  # was a member on this connection, no longer
    NOT_SUBSCRIBED = "not_subscribed"
    CURSOR_AHEAD = "cursor_ahead"
    FORBIDDEN = "forbidden"
    TOO_MANY_ENTITIES = "too_many_entities"
    # The connection
    TOO_SLOW = "too_slow"
    RATE_LIMITED = "rate_limited"  # over the user's message rate; fatal if it goes on
    SERVER_UNAVAILABLE = "server_unavailable"
    INTERNAL_ERROR = "internal_error"


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down: reconnect later
    PROTOCOL_ERROR = 1002
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # the server cannot check the token right now (JWKS unreachable)
    UNAUTHORIZED = 4001  # invalid or expired token: get a new one before reconnecting
    UNSUPPORTED_VERSION = 4002
    TOO_SLOW = 4008  # the client fell behind: reconnect and resume from its own cursor
    TOO_MANY_CONNECTIONS = 4029


class ProtocolViolation(Exception):  # noqa: N818 (the peer violated the protocol)
    """A frame the peer sent is not a valid message; tell it ``code`` and ``message``."""

    def __init__(self, code: ErrorCode, message: str, push_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.push_id = push_id

    def to_error(self, *, fatal: bool = False) -> Error:
        return Error(self.code.value, self.message, fatal, self.push_id)

    def __repr__(self) -> str:
        return f"ProtocolViolation({self.code!r}, {self.message!r}, push_id={self.push_id!r})"
