"""Every decoder the SDK runs on bytes from the network, fed small hostile inputs.

A few KB of nested container headers, a header declaring gigabytes, a gzip bomb: each must
end in a typed error (``SnapshotFormatError`` for the HTTP snapshot body, ``ProtocolViolation``
for a WebSocket frame) while memory stays within a few MB. Unbounded, the first of them
takes a plain msgpack unpacker from 11 to 78 MB. What the local store reads back from its
own SQLite file is trusted and not covered here.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgpack
import pytest
from websockets.asyncio.server import ServerConnection, serve

from fieldsync.model.leb128 import encode_uleb128
from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.sync.codec import ProtocolViolation, encode
from fieldsync.sync.connection import ClientConnection
from fieldsync.sync.messages import ChangeRecord, SnapshotBegin, SnapshotEnd, Welcome
from fieldsync_client import FieldsyncClient
from fieldsync_client.bootstrap import SnapshotUnavailable, http_bootstrap
from fieldsync_client.local_store import LocalStore
from fieldsync_client.replica import ProjectReplica, RemoteDataError
from fieldsync_client.snapshot_stream import SnapshotFormatError, SnapshotStream
from tests.client.helpers import async_peak_allocation, peak_allocation, until

MB = 1024 * 1024
BOUND = 4 * MB  # "a few MB": what any of these inputs may cost
NESTED_ARRAYS = b"\xdc\xff\xff" * 1000  # 3 KB of arrays inside arrays, each claiming 65,535 items
NESTED_MAPS = b"\xde\xff\xff\xa1k" * 600  # maps whose first value is the next map
BEGIN = encode(SnapshotBegin("p", 7, 1))
ENTITY_HEAD = b"".join(
    msgpack.packb(part)
    for part in ("entity_type", "activity", "entity_id", "a-1", "document")
)  # an entity record's keys and values up to its document, after its map header b"\x83"


def _bomb(prefix: bytes, fill: bytes, megabytes: int) -> bytes:
    """``prefix`` then ``megabytes`` MB of ``fill``, gzipped without holding it all."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = fill * (MB // len(fill))
    parts = [deflater.compress(prefix)]
    parts += [deflater.compress(block) for _ in range(megabytes)]
    return b"".join(parts) + deflater.flush()


HOSTILE_BODIES: dict[str, tuple[bytes, bool]] = {
    # name: (body, gzipped)
    "nested arrays": (BEGIN + NESTED_ARRAYS, False),
    "nested arrays, first record": (NESTED_ARRAYS, False),
    "nested maps": (BEGIN + NESTED_MAPS, False),
    "nested arrays as a document": (BEGIN + b"\x83" + ENTITY_HEAD + NESTED_ARRAYS, False),
    "nested arrays in snapshot_begin": (
        b"\x84\xa1t\xaesnapshot_begin\xaaproject_id" + NESTED_ARRAYS,
        False,
    ),
    "complete nested arrays": (BEGIN + b"\x91" * 900 + b"\xc0", False),
    "nesting deeper than any stack": (BEGIN + b"\x91" * 5000, False),
    "array claiming 2^32-1 items": (BEGIN + b"\xdd\xff\xff\xff\xff" + b"\xc0" * 100, False),
    "map claiming 2^32-1 pairs": (BEGIN + b"\xdf\xff\xff\xff\xff" + b"\xc0" * 100, False),
    "str claiming 4 GB": (BEGIN + b"\xdb\xff\xff\xff\xff" + b"x" * 100, False),
    "document claiming 4 GB": (BEGIN + b"\x83" + ENTITY_HEAD + b"\xc6\xff\xff\xff\xff", False),
    "ext claiming 4 GB": (BEGIN + b"\xc9\xff\xff\xff\xff\x01", False),
    "gzip bomb of zeros": (_bomb(BEGIN, b"\x00", 64), True),
    "gzip bomb of nested arrays": (_bomb(BEGIN, b"\xdc\xff\xff\xdc", 16), True),
}
# A body that declares a 4 GB document and then really sends that many (zero) bytes. No
# declared length is trusted, but the bytes received are kept until the record is complete,
# up to the size of the largest document the server may hold: this body costs what that
# document would, and no more.
HUGE_DOCUMENT_BOMB = _bomb(BEGIN + b"\x83" + ENTITY_HEAD + b"\xc6\xff\xff\xff\xff", b"\x00", 64)


def _read(body: bytes, gzipped: bool, limits: Limits, piece: int) -> None:
    stream = SnapshotStream("p", gzipped=gzipped, limits=limits)
    for start in range(0, len(body), piece):
        stream.feed(body[start : start + piece])
    stream.finish()


@pytest.mark.parametrize("piece", [1 << 30, 1000])
@pytest.mark.parametrize("name", HOSTILE_BODIES)
def test_a_hostile_snapshot_body_is_refused_in_bounded_memory(name: str, piece: int) -> None:
    body, gzipped = HOSTILE_BODIES[name]
    assert len(body) < 128 * 1024
    with pytest.raises(SnapshotFormatError):
        _read(body, gzipped, DEFAULT_LIMITS, piece)
    assert peak_allocation(lambda: _read(body, gzipped, DEFAULT_LIMITS, piece)) < BOUND


def test_a_record_is_refused_once_longer_than_any_document() -> None:
    """A declared length is never trusted: what a record may cost is what a document may
    be (plus its keys), however much more the body says or sends."""
    assert len(HUGE_DOCUMENT_BOMB) < 128 * 1024
    for limits in (Limits(max_document_bytes=MB), Limits(max_document_bytes=4 * MB)):
        with pytest.raises(SnapshotFormatError, match="longer than"):
            _read(HUGE_DOCUMENT_BOMB, True, limits, 1 << 30)
        peak = peak_allocation(lambda: _read(HUGE_DOCUMENT_BOMB, True, limits, 1 << 30))  # noqa: B023
        assert peak < 3 * limits.max_document_bytes + BOUND


def test_a_large_document_still_arrives_whole() -> None:
    """The bounds leave room for every document the server may hold."""
    document = bytes(DEFAULT_LIMITS.max_document_bytes)
    record = msgpack.packb(
        {"entity_type": "activity", "entity_id": "a-1", "document": document}
    )
    end = encode(SnapshotEnd("p", 7))
    body = gzip.compress(BEGIN + record + end, 1)
    stream = SnapshotStream("p", gzipped=True)
    records = []
    for start in range(0, len(body), 100_000):
        records.extend(stream.feed(body[start : start + 100_000]))
    stream.finish()
    assert [type(r).__name__ for r in records] == ["SnapshotBegin", "SnapshotEntity", "SnapshotEnd"]
    assert records[1].document == document  # type: ignore[union-attr]


# --- the same bodies over a real HTTP connection ------------------------------------------


@asynccontextmanager
async def _http_server(body: bytes, encoding: str) -> AsyncIterator[int]:
    """A server answering any request with ``body``; yields its port."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readline() not in (b"\r\n", b""):
            pass
        head = (
            "HTTP/1.1 200 OK\r\n"
            "Content-Type: application/x-fieldsync-snapshot+msgpack\r\n"
            f"Content-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "name", ["nested arrays", "document claiming 4 GB", "gzip bomb of nested arrays"]
)
async def test_http_bootstrap_refuses_a_hostile_body(name: str, tmp_path: Path) -> None:
    body, gzipped = HOSTILE_BODIES[name]
    store = LocalStore(tmp_path / "c.db")
    try:
        with store.transaction():
            store.add_project("p")
        replica = ProjectReplica(store, "p")
        async with _http_server(body, "gzip" if gzipped else "identity") as port:
            url = f"ws://127.0.0.1:{port}/sync"
            failures: list[BaseException] = []

            async def bootstrap() -> None:
                try:
                    await http_bootstrap(url, "token", replica, read_timeout=5)
                except SnapshotUnavailable as exc:
                    failures.append(exc)

            await bootstrap()  # once outside the measurement: imports, first connection
            peak = await async_peak_allocation(bootstrap)
        assert len(failures) == 2
        assert all(isinstance(f.__cause__, SnapshotFormatError) for f in failures)
        assert peak < BOUND
        assert replica.cursor is None
    finally:
        store.close()


# --- WebSocket frames -----------------------------------------------------------------------

WELCOME = encode(Welcome(1, "u", "s", {}))
HOSTILE_FRAMES: dict[str, bytes] = {
    "nested arrays as changes": b"\x82\xa1t\xa7changes\xa7changes" + NESTED_ARRAYS,
    "nested maps as changes": b"\x82\xa1t\xa7changes\xa7changes" + NESTED_MAPS,
    "nested arrays as a chunk's document": (
        b"\x83\xa1t\xaesnapshot_chunk\xaaproject_id\xa1p\xa8entities\x91\x83"
        + ENTITY_HEAD
        + NESTED_ARRAYS
    ),
    "limits claiming 2^32-1 pairs": b"\x82\xa1t\xa7welcome\xa6limits\xdf\xff\xff\xff\xff",
    "details nested deeper than allowed": (
        b"\x85\xa1t\xabpush_result\xa7push_id\x01\xaaproject_id\xa1p\xa7results\x91"
        b"\x85\xa2ok\xc2\xa9entity_id\xa1e\xa4code\xa1c\xa7message\xa1m\xa7details"
        + b"\x81\xa1k" * 500
        + b"\xc0"
    ),
    "message claiming 4 GB": b"\x82\xa1t\xa5error\xa7message\xdb\xff\xff\xff\xff" + b"x" * 100,
    "no msgpack at all": b"\xc1" * 3000,
}


def _receive(frame: bytes) -> ClientConnection:
    connection = ClientConnection()
    connection.hello("token", "client")
    connection.receive_frame(WELCOME)
    connection.receive_frame(frame)
    return connection


@pytest.mark.parametrize("name", HOSTILE_FRAMES)
def test_a_hostile_websocket_frame_is_refused_in_bounded_memory(name: str) -> None:
    frame = HOSTILE_FRAMES[name]
    assert isinstance(_receive(frame).failure, ProtocolViolation)
    assert peak_allocation(lambda: _receive(frame)) < BOUND


async def test_the_sdk_drops_a_server_that_sends_a_hostile_frame(tmp_path: Path) -> None:
    """Through a real WebSocket: the client refuses the frame, says why, and its memory
    does not grow with what the frame claims."""
    received: list[bytes] = []

    async def hostile(ws: ServerConnection) -> None:
        received.append(bytes(await ws.recv()))  # type: ignore[arg-type]
        await ws.send(WELCOME)
        await ws.send(HOSTILE_FRAMES["nested arrays as a chunk's document"])
        await ws.wait_closed()

    async with serve(hostile, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1] if server.sockets else 0
        client = FieldsyncClient(
            f"ws://127.0.0.1:{port}/sync",
            "token",
            tmp_path / "c.db",
            http_snapshots=False,
            backoff_base=5,
            connect_timeout=2,
        )
        try:

            async def first_failure() -> None:
                await client.open_project("p", timeout=0.5)
                await until(lambda: client.status.last_error is not None, what="the failure")

            peak = await async_peak_allocation(first_failure)
            error = client.status.last_error
            assert error is not None
            assert "the server broke the protocol" in str(error), error
            assert "expected bytes, got array" in str(error), error
            assert peak < BOUND
            assert received, "the client said hello"
        finally:
            await client.close()


# --- changes inside a frame -----------------------------------------------------------------


def _change_bomb(megabytes: int) -> bytes:
    """A compressed change chunk whose contents inflate to ``megabytes`` MB of zeros."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(MB)
    stream = b"".join(deflater.compress(block) for _ in range(megabytes)) + deflater.flush()
    return b"\x85\x6f\x4a\x83" + b"\x00" * 4 + b"\x02" + encode_uleb128(len(stream)) + stream


def test_a_change_bomb_from_the_server_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """A change is inflated no further than the largest change the server accepts."""
    bomb = _change_bomb(64)
    assert len(bomb) < 128 * 1024
    store = LocalStore(tmp_path / "c.db")
    try:
        with store.transaction():
            store.add_project("p")
        replica = ProjectReplica(store, "p")
        replica.apply_snapshot([], 0)
        records = [ChangeRecord(1, "activity", "a-1", bomb)]
        with pytest.raises(RemoteDataError, match="not a valid change"):
            replica.apply_remote(records)
        assert peak_allocation(lambda: replica.apply_remote(records)) < BOUND
        assert replica.cursor == 0
    finally:
        store.close()
