"""The server's WebSocket data frames, built here rather than by websockets for each send.

A live change goes to every subscriber of a project as the same bytes, so its whole frame,
header and payload, is built once and written to each socket as is. A server's frames are
never masked, and ``/sync`` negotiates no extension (no compression), so a binary message
is its header and its payload (RFC 6455, section 5.2). websockets still frames the control
frames (ping, pong, close) and answers the handshake.
"""

from __future__ import annotations

import struct

_BINARY_FINAL = 0x82  # FIN, opcode 2 (binary)
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def binary_message(payload: bytes) -> bytes:
    """One unfragmented binary frame carrying ``payload``, as the server sends it."""
    size = len(payload)
    if size < 126:
        return _SHORT.pack(_BINARY_FINAL, size) + payload
    if size < 1 << 16:
        return _MEDIUM.pack(_BINARY_FINAL, 126, size) + payload
    return _LONG.pack(_BINARY_FINAL, 127, size) + payload
