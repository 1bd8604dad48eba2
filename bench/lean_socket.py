"""A WebSocket client that costs the benchmark process little per received frame.

A thousand receivers at 50 frames a second each are 50,000 frames a second: through the
``websockets`` client (a parser generator, a frame object, a queue, a task wake-up per
frame) the receiving processes need more CPU than the server does, on a machine with two
cores. This client is an ``asyncio.Protocol`` that finds frame boundaries itself and hands
each binary message's bytes to a callback, with the time its bytes arrived. It speaks only
what the benchmarks need: the upgrade, masked client frames (a zero mask), unfragmented
server frames, pongs to the server's keepalive pings, and close.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections import deque
from collections.abc import Callable

OnMessage = Callable[[bytes, int], None]

_BINARY, _CLOSE, _PING = 0x2, 0x8, 0x9


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame with a zero mask key (the payload goes as is)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    return header + b"\0\0\0\0" + payload


class LeanSocket(asyncio.Protocol):
    """One connection. Until ``on_message`` is set, messages wait for ``next_message``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.on_message: OnMessage | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._upgraded = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._handshaking = True
        self._inbox: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, base: str, path: str = "/sync") -> LeanSocket:
        host, port = base.rsplit(":", 1)
        _, socket = await asyncio.get_running_loop().create_connection(cls, host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        assert socket.transport is not None
        socket.transport.write(
            f"GET {path} HTTP/1.1\r\nHost: {base}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await socket._upgraded
        return socket

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._upgraded.done():
            self._upgraded.set_exception(ConnectionError("closed during the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)
        self._wake()

    def send(self, payload: bytes) -> None:
        assert self.transport is not None
        self.transport.write(client_frame(_BINARY, payload))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(_CLOSE, (1000).to_bytes(2, "big")))

    async def next_message(self, within: float = 30.0) -> bytes:
        async with asyncio.timeout(within):
            while not self._inbox:
                if self.closed.done():
                    raise ConnectionError("the connection closed")
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter
        return self._inbox.popleft()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if self._handshaking:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[:end]).split(b"\r\n", 1)[0]
            del buffer[: end + 4]
            self._handshaking = False
            if b" 101 " not in status:
                self._upgraded.set_exception(ConnectionError(status.decode(errors="replace")))
                return
            self._upgraded.set_result(None)
        arrived = time.monotonic_ns()
        start = 0
        available = len(buffer)
        while available - start >= 2:
            first, second = buffer[start], buffer[start + 1] & 0x7F
            offset = start + 2
            if second == 126:
                if available - start < 4:
                    break
                second = int.from_bytes(buffer[offset : offset + 2], "big")
                offset += 2
            elif second == 127:
                if available - start < 10:
                    break
                second = int.from_bytes(buffer[offset : offset + 8], "big")
                offset += 8
            end = offset + second
            if end > available:
                break
            payload = bytes(buffer[offset:end])
            start = end
            opcode = first & 0x0F
            if opcode == _BINARY:
                if self.on_message is not None:
                    self.on_message(payload, arrived)
                else:
                    self._inbox.append(payload)
                    self._wake()
            elif opcode == _PING and self.transport is not None:
                self.transport.write(client_frame(0xA, payload))
            elif opcode == _CLOSE and self.transport is not None:
                self.transport.close()
        if start:
            del buffer[:start]
