"""The sync WebSocket below the ASGI layer (``live.wire``), over real uvicorn and real sockets:
what the upgrade answers, fragmented messages, the client's address behind a proxy, the
close handshake both ways, and a graceful shutdown. On the in-memory storage: nothing here
is about the database."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import uuid
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import CloseCode as WsCloseCode

from fieldsync.auth.tokens import issue_token
from fieldsync.live.admission import AdmissionLimits
from fieldsync.model.writer import create_entity
from fieldsync.observability.metrics import Metrics
from fieldsync.store.memory import MemoryStorage
from fieldsync.sync.codec import decode_server, encode
from fieldsync.sync.errors import ErrorCode
from fieldsync.sync.messages import (
    EntityAccepted,
    EntityPush,
    Error,
    Hello,
    Push,
    PushResult,
    Welcome,
)
from tests.entities import location_values, new_id
from tests.live_server import TEST_SECRET, free_port, running_server, start_server, stop_server


async def _lead(memory: MemoryStorage) -> tuple[uuid.UUID, str]:
    account = await memory.admin.create_account("Wire")
    project = await memory.admin.create_project(account, "Wire")
    user = await memory.admin.create_user("Wire lead")
    await memory.admin.add_member(project, user, "lead")
    return project, issue_token(TEST_SECRET, user)


async def test_the_upgrade_answer_names_the_request_id(
    served: tuple[str, MemoryStorage, Metrics],
) -> None:
    base, _, _ = served
    async with connect(
        f"ws://{base}/sync", additional_headers={"X-Request-Id": "lb-1234.abc"}
    ) as ws:
        assert ws.response is not None
        assert ws.response.headers["X-Request-Id"] == "lb-1234.abc"
    async with connect(
        f"ws://{base}/sync", additional_headers={"X-Request-Id": "not safe; at all"}
    ) as ws:
        assert ws.response is not None
        given = ws.response.headers["X-Request-Id"]
        assert given != "not safe; at all"
        assert len(given) == 32


async def test_a_websocket_anywhere_else_is_not_found(
    served: tuple[str, MemoryStorage, Metrics],
) -> None:
    base, _, _ = served
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://{base}/elsewhere"):
            pass
    assert refused.value.response.status_code == 404


async def test_a_fragmented_push_is_put_together(
    served: tuple[str, MemoryStorage, Metrics],
) -> None:
    base, memory, _ = served
    project, token = await _lead(memory)
    async with connect(f"ws://{base}/sync", compression=None) as ws:
        await ws.send(encode(Hello((1,), token, "fragments")))
        assert isinstance(decode_server(await ws.recv()), Welcome)
        entity = new_id()
        _, change = create_entity("location", location_values())
        frame = encode(Push(7, str(project), (EntityPush("location", entity, (change,)),)))
        # Three frames of one binary message: text, then two continuations.
        await ws.send([frame[:5], frame[5:40], frame[40:]])
        result = decode_server(await ws.recv())
        assert isinstance(result, PushResult)
        assert result.results == (EntityAccepted(entity, (1,)),)


async def test_a_message_over_the_limit_across_fragments_closes_with_1009(
    served: tuple[str, MemoryStorage, Metrics],
) -> None:
    base, memory, _ = served
    _, token = await _lead(memory)
    async with connect(f"ws://{base}/sync", compression=None, max_size=None) as ws:
        await ws.send(encode(Hello((1,), token, "too-big")))
        assert isinstance(decode_server(await ws.recv()), Welcome)
        piece = b"\x00" * (1 << 20)
        with contextlib.suppress(ConnectionClosed):  # the server may close mid-message
            await ws.send([piece] * 64)  # 64 MiB, far over twice the frame limit
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == WsCloseCode.MESSAGE_TOO_BIG


async def test_the_client_address_comes_from_a_trusted_proxy(
    served: tuple[str, MemoryStorage, Metrics],
) -> None:
    """127.0.0.1 is a trusted proxy by default (uvicorn's rule): its X-Forwarded-For names
    the client, so the per-address cap on silent sockets counts the address it names."""
    memory, metrics = MemoryStorage(), Metrics()
    admission = AdmissionLimits(max_unauthenticated=100, max_unauthenticated_per_address=2)
    async with running_server(
        None, storage=memory, metrics=metrics, admission_limits=admission
    ) as base:
        url = f"ws://{base}/sync"
        first = [
            await connect(url, additional_headers={"X-Forwarded-For": "198.51.100.7"})
            for _ in range(2)
        ]
        with pytest.raises(InvalidStatus) as refused:
            await connect(url, additional_headers={"X-Forwarded-For": "198.51.100.7"})
        assert refused.value.response.status_code == 429
        assert refused.value.response.headers["Retry-After"]
        other = await connect(url, additional_headers={"X-Forwarded-For": "203.0.113.9"})
        for ws in (*first, other):
            await ws.close()


async def test_a_client_that_closes_ends_its_session(
    served: tuple[str, MemoryStorage, Metrics],
) -> None:
    base, memory, metrics = served
    _, token = await _lead(memory)
    ws = await connect(f"ws://{base}/sync", compression=None)
    await ws.send(encode(Hello((1,), token, "leaving")))
    assert isinstance(decode_server(await ws.recv()), Welcome)
    await ws.close(1000, "bye")
    for _ in range(200):
        if metrics.registry.get_sample_value("fieldsync_connections_open") == 0:
            break
        await asyncio.sleep(0.02)
    assert metrics.registry.get_sample_value("fieldsync_connections_open") == 0


async def test_a_text_frame_is_refused_and_the_connection_stays(
    served: tuple[str, MemoryStorage, Metrics],
) -> None:
    base, memory, _ = served
    _, token = await _lead(memory)
    async with connect(f"ws://{base}/sync", compression=None) as ws:
        await ws.send(encode(Hello((1,), token, "texts")))
        assert isinstance(decode_server(await ws.recv()), Welcome)
        await ws.send("a text frame")
        error = decode_server(await ws.recv())
        assert isinstance(error, Error)
        assert not error.fatal
        assert error.code == ErrorCode.MALFORMED_FRAME.value


async def test_a_graceful_shutdown_tells_clients_to_come_back() -> None:
    memory = MemoryStorage()
    _, token = await _lead(memory)
    port = free_port()
    server, task = await start_server(None, port, storage=memory)
    try:
        ws = await connect(f"ws://127.0.0.1:{port}/sync", compression=None)
        await ws.send(encode(Hello((1,), token, "restart")))
        assert isinstance(decode_server(await ws.recv()), Welcome)
    finally:
        await stop_server(server, task)
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == WsCloseCode.SERVICE_RESTART


async def test_a_text_frame_that_is_not_utf8_closes_with_1007_and_logs_no_traceback(
    served: tuple[str, MemoryStorage, Metrics], caplog: pytest.LogCaptureFixture
) -> None:
    base, memory, _ = served
    _, token = await _lead(memory)
    async with connect(f"ws://{base}/sync", compression=None) as ws:
        await ws.send(encode(Hello((1,), token, "bad-utf8")))
        assert isinstance(decode_server(await ws.recv()), Welcome)
        ws.protocol.send_text(b"\xff\xfe not utf-8")  # below the client's own checks
        ws.send_data()
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == WsCloseCode.INVALID_DATA
    assert not [r for r in caplog.records if r.exc_info is not None]


@contextlib.asynccontextmanager
async def _raw_upgrade(
    base: str, request: bytes
) -> AsyncIterator[tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]]:
    """Send ``request`` as is: the answer's status line and headers, and the streams."""
    host, port = base.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        yield head, reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def _upgrade(path: str = "/sync", *extra: str, key: str = "dGhlIHNhbXBsZSBub25jZQ==") -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: localhost",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _exchange(base: str, request: bytes) -> bytes:
    """Send ``request`` on a blocking socket (no asyncio transport of the test's own) and read
    until the server closes."""
    host, port = base.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


async def test_closed_http_connections_are_freed_as_they_close(
    served: tuple[str, MemoryStorage, Metrics],
) -> None:
    """By reference counting alone: asyncio's transport refers to itself, and left so, every
    closed connection waits for the cyclic collector's next full pass, holding its memory."""
    base, _, _ = served

    def transports() -> int:
        return sum(isinstance(o, asyncio.Transport) for o in gc.get_objects())

    probe = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    refused = _upgrade("/other", "Sec-WebSocket-Version: 13")
    gc.collect()
    gc.disable()
    try:
        before = transports()
        for request in (probe, refused) * 5:
            answer = await asyncio.to_thread(_exchange, base, request)
            assert answer.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 404 "))
        await asyncio.sleep(0.1)  # the transports' last callbacks
        assert transports() == before
    finally:
        gc.enable()


async def test_upgrades_that_break_the_handshake_rules_are_answered_as_before(
    served: tuple[str, MemoryStorage, Metrics],
) -> None:
    base, _, _ = served
    version = "Sec-WebSocket-Version: 13"
    cases = [
        (_upgrade("/sync", version), b"HTTP/1.1 101 "),
        (_upgrade("/sync", version, key="dGhlIHNhbXBsZQ=="), b"HTTP/1.1 400 "),  # 10 bytes
        (_upgrade("/sync", "Sec-WebSocket-Version: 8"), b"HTTP/1.1 400 "),
        (_upgrade("/sync"), b"HTTP/1.1 400 "),  # no version
        (_upgrade("/sync", version, "Content-Length: 3") + b"abc", b"HTTP/1.1 400 "),
        (_upgrade("/sync", version).replace(b"GET", b"POST", 1), b"HTTP/1.1 405 "),
        (_upgrade("/other", version), b"HTTP/1.1 404 "),
    ]
    for request, status in cases:
        async with _raw_upgrade(base, request) as (head, _, _):
            assert head.startswith(status), (request, head)
    async with _raw_upgrade(base, _upgrade("/sync", version)) as (head, _, _):
        # RFC 6455's own example: this key is accepted with this value.
        assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head
        assert b"Sec-WebSocket-Extensions" not in head
        assert b"Sec-WebSocket-Protocol" not in head


async def test_a_ping_is_answered_and_a_close_echoed(
    served: tuple[str, MemoryStorage, Metrics],
) -> None:
    base, memory, _ = served
    _, token = await _lead(memory)
    ws = await connect(f"ws://{base}/sync", compression=None)
    await ws.send(encode(Hello((1,), token, "ping")))
    assert isinstance(decode_server(await ws.recv()), Welcome)
    latency = await asyncio.wait_for(await ws.ping(b"are you there"), 5)
    assert latency >= 0
    await ws.close(4321, "done here")
    echoed = ws.protocol.close_rcvd
    assert echoed is not None
    assert (echoed.code, echoed.reason) == (4321, "done here")


async def test_an_unmasked_client_frame_closes_with_1002(
    served: tuple[str, MemoryStorage, Metrics],
) -> None:
    base, _, _ = served
    upgrade = _upgrade("/sync", "Sec-WebSocket-Version: 13")
    async with _raw_upgrade(base, upgrade) as (head, reader, writer):
        assert head.startswith(b"HTTP/1.1 101 ")
        writer.write(b"\x82\x03abc")  # a binary frame without a mask
        close = await asyncio.wait_for(reader.readexactly(4), 5)
        assert close[:2] == b"\x88\x13"  # a close frame with the code and its reason
        assert int.from_bytes(close[2:4], "big") == WsCloseCode.PROTOCOL_ERROR
        assert await asyncio.wait_for(reader.read(), 5) == b"incorrect masking"  # then EOF
