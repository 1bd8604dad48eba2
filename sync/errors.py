"""Protocol error codes and WebSocket close codes; their values go on the wire.

Entity-level refusals inside a PushResult use ``model.rejections.RejectCode`` instead.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


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
