"""The server's WebSocket frames, built here rather than by a library for each send.

A live change goes to every subscriber of a project as the same bytes, so its whole frame,
header and payload, is built once and written to each socket as is. A server's frames are
never masked, and ``/sync`` negotiates no extension (no compression), so a frame is its
header and its payload (RFC 6455, section 5.2).
"""

from __future__ import annotations

import struct

_FINAL = 0x80
_BINARY, _CLOSE, _PING, _PONG = 0x2, 0x8, 0x9, 0xA
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")
_CLOSE_CODE = struct.Struct("!H")
MAX_CONTROL_PAYLOAD = 125


def binary_message(payload: bytes) -> bytes:
    """One unfragmented binary frame carrying ``payload``, as the server sends it."""
    size = len(payload)
    if size < 126:
        return _SHORT.pack(_FINAL | _BINARY, size) + payload
    if size < 1 << 16:
        return _MEDIUM.pack(_FINAL | _BINARY, 126, size) + payload
    return _LONG.pack(_FINAL | _BINARY, 127, size) + payload


def _control(opcode: int, payload: bytes) -> bytes:
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise ValueError("a control frame carries at most 125 bytes")
    return _SHORT.pack(_FINAL | opcode, len(payload)) + payload


def ping_frame(payload: bytes) -> bytes:
    return _control(_PING, payload)


def pong_frame(payload: bytes) -> bytes:
    return _control(_PONG, payload)


def close_frame(code: int, reason: str) -> bytes:
    """A close frame; a reason too long for a control frame is cut, on a character boundary,
    rather than the close failing (the code is what the client acts on)."""
    data = reason.encode()
    if len(data) > MAX_CONTROL_PAYLOAD - 2:
        data = data[: MAX_CONTROL_PAYLOAD - 2].decode(errors="ignore").encode()
    return _control(_CLOSE, _CLOSE_CODE.pack(code) + data)


def echo_close_frame(payload: bytes) -> bytes:
    """The close frame answering a client's close: its payload sent back as it came."""
    return _control(_CLOSE, payload)
