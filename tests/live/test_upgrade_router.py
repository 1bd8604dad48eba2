"""The first request's router (``live.upgrade_router``): what it takes is what uvicorn would
have upgraded, read as h11 reads it; everything else reaches h11 byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from types import SimpleNamespace
from typing import cast

import h11
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.protocols.http.h11_impl import H11Protocol

from fieldsync.live.upgrade_router import UpgradeHead, parse_upgrade_head
from fieldsync.live.ws_handshake import UpgradeRequest
from fieldsync.sync.messages import ProjectCursor
from tests.live_server import MemberFactory, running_server
from tests.sync_client import SyncClient

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = (
    b"GET /sync HTTP/1.1\r\nHost: fieldsync\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _as_uvicorn_upgrades(head: bytes) -> UpgradeRequest | None:
    """What uvicorn's h11 protocol hands its WebSocket protocol for this head, or None
    (h11 refuses it, or uvicorn would not upgrade it)."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(head + b"\r\n\r\n")
    try:
        event = connection.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    headers = [(name.lower(), value) for name, value in event.headers]
    # uvicorn's own decision, on the headers as its protocol keeps them.
    upgrade = H11Protocol._get_upgrade(cast(H11Protocol, SimpleNamespace(headers=headers)))
    if upgrade != b"websocket":
        return None
    return UpgradeRequest(event.method, event.target, event.http_version, headers)


_names = st.sampled_from(
    [
        b"Host",
        b"host",
        b"Upgrade",
        b"Connection",
        b"connection",
        b"Sec-WebSocket-Key",
        b"Sec-WebSocket-Version",
        b"Origin",
        b"X-Forwarded-For",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Bad Name",
        b"",
        b"X\x00",
        b"\xe9t\xe9",
    ]
)
_values = st.one_of(
    st.sampled_from(
        [
            b"websocket",
            b"WebSocket",
            b"Upgrade",
            b"upgrade, keep-alive",
            b"keep-alive",
            b"13",
            KEY,
            b"",
            b" padded ",
            b"a\tb",
            b"caf\xe9",
            b"bad\x00",
            b"bad\x7f",
            b"0",
            b"chunked",
        ]
    ),
    st.binary(max_size=12),
)
_lines = st.one_of(
    st.tuples(_names, _values).map(lambda nv: nv[0] + b": " + nv[1]),
    st.tuples(_names, _values).map(lambda nv: nv[0] + b":" + nv[1] + b"\t"),
    st.sampled_from([b" folded continuation", b"no colon", b"Host : spaced"]),
)
_request_lines = st.one_of(
    st.just(b"GET /sync HTTP/1.1"),
    st.just(b"GET /sync?x=1 HTTP/1.1"),
    st.sampled_from(
        [
            b"GET /sync HTTP/1.0",
            b"POST /sync HTTP/1.1",
            b"GET /syncer HTTP/1.1",
            b"GET /sync  HTTP/1.1",
            b"get /sync HTTP/1.1",
            b"GET /sync#f HTTP/1.1",
        ]
    ),
)
_benign = st.sampled_from(
    [
        b"Sec-WebSocket-Key: " + KEY,
        b"sec-websocket-version:13",
        b"Origin: https://app.example",
        b"X-Forwarded-For: 10.0.0.1,\t10.0.0.2",
        b"User-Agent: tablet/1.0 (caf\xe9)",
        b"Connection: keep-alive, Upgrade",
        b"Upgrade:\tWebSocket \t",
    ]
)
_basic = [b"Host: fieldsync", b"Upgrade: websocket", b"Connection: Upgrade"]


@settings(max_examples=400)
@given(
    _request_lines,
    st.lists(st.one_of(_benign, _benign, _benign, _benign, _lines), max_size=8),
    st.sampled_from([_basic, _basic, _basic, _basic[1:], _basic[:1]]),
    st.randoms(use_true_random=False),
)
def test_the_router_takes_only_what_uvicorn_would_upgrade_and_reads_it_as_h11_does(
    request_line: bytes, extra: list[bytes], basic: list[bytes], rng: object
) -> None:
    lines = basic + extra
    rng.shuffle(lines)  # type: ignore[attr-defined]
    head = b"\r\n".join([request_line, *lines])
    ours = parse_upgrade_head(head)
    if ours is not None:
        assert ours == _as_uvicorn_upgrades(head)


def _fed(pieces: list[bytes]) -> UpgradeRequest | bytes | None:
    """What the head reader decided, fed ``pieces`` one read at a time: the request it
    takes, or the bytes the HTTP protocol gets (those handed over, then the reads after)."""
    head = UpgradeHead()
    for i, piece in enumerate(pieces):
        routed = head.feed(piece)
        if isinstance(routed, bytes):
            return routed + b"".join(pieces[i + 1 :])
        if routed is not None:
            return routed
    return None


@settings(max_examples=300)
@given(
    st.sampled_from(
        [
            UPGRADE,
            UPGRADE + b"\x81\x85hello",  # the client's first frame in the same read
            UPGRADE.replace(b"\r\nHost", b"\nHost"),  # a bare line feed
            UPGRADE.replace(b"\r\n\r\n", b"\r\n\n"),  # the head ends with one
            UPGRADE.replace(b"GET /sync", b"GET /healthz"),
            UPGRADE.replace(b"Host: fieldsync", b"Host: " + b"h" * 9000),  # too large
            UPGRADE[:40],  # never whole
        ]
    ),
    st.lists(st.integers(min_value=1, max_value=len(UPGRADE)), max_size=40),
)
def test_the_head_is_routed_alike_however_its_bytes_are_split(sent: bytes, cuts: list[int]) -> None:
    points = sorted({min(cut, len(sent)) for cut in cuts})
    pieces = [sent[a:b] for a, b in zip([0, *points], [*points, len(sent)], strict=True)]
    assert _fed([piece for piece in pieces if piece]) == _fed([sent])


def test_a_head_sent_a_byte_at_a_time_is_still_taken() -> None:
    pieces = [UPGRADE[i : i + 1] for i in range(len(UPGRADE))]
    routed = _fed(pieces)
    assert isinstance(routed, UpgradeRequest)
    assert routed == parse_upgrade_head(UPGRADE[:-4])


def test_plain_upgrades_are_taken() -> None:
    heads = [
        UPGRADE[:-4],
        b"GET /sync HTTP/1.1\r\n" + UPGRADE[20:-4].lower().replace(KEY.lower(), KEY),
        UPGRADE[:-4].replace(b"GET /sync ", b"GET /sync?client=7 "),
        UPGRADE[:-4].replace(b"Upgrade: websocket", b"Upgrade:\tWebSocket\t "),
        UPGRADE[:-4].replace(b"Connection: Upgrade", b"Connection: keep-alive, Upgrade"),
        UPGRADE[:-4] + b"\r\nOrigin: https://app.example\r\nX-Forwarded-For: 10.0.0.1",
    ]
    for head in heads:
        ours = parse_upgrade_head(head)
        assert ours is not None, head
        assert ours == _as_uvicorn_upgrades(head)
        assert ours.values(b"sec-websocket-key") == [KEY]


async def test_an_upgrade_in_pieces_and_other_requests_are_served_as_before(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    async with running_server(database_url, header_seconds=1.0) as base:
        host, port = base.split(":")
        # An upgrade dribbled a few bytes at a time: the router waits for its whole head.
        reader, writer = await asyncio.open_connection(host, int(port))
        for start in range(0, len(UPGRADE), 7):
            writer.write(UPGRADE[start : start + 7])
            await writer.drain()
            await asyncio.sleep(0.005)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert answer.startswith(b"HTTP/1.1 101 ")
        writer.close()
        # Requests the router does not take reach uvicorn's HTTP protocol unchanged.
        for request, status in (
            (b"GET /healthz HTTP/1.1\r\nHost: fieldsync\r\nConnection: close\r\n\r\n", b"200"),
            (b"GET /sync HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", b"400"),
            (b"GET /sync HTTP/1.0\r\nConnection: close\r\n\r\n", b"404"),
            (b"NOT HTTP AT ALL\r\n\r\n", b"400"),
            # Bare line feeds end h11's lines too: answered now, not at the deadline.
            (b"GET /sync HTTP/1.1\nHost: a\nConnection: close\n\n", b"404"),
        ):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(request)
            answer = await asyncio.wait_for(reader.read(), 5)
            assert answer.split(b" ")[1] == status, (request, answer[:80])
            writer.close()
        # A head that never ends is closed at the deadline, whichever protocol holds it.
        started = time.monotonic()
        for first in (b"GET /sync HTTP/1.1\r\nHost: x\r\n", b"GET /healthz HTTP/1.1\r\n"):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(first)
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        assert time.monotonic() - started < 4  # each closed after about 1 s, not 2
        # A head handed to h11 part way keeps what is left of its time...
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /s")
        await asyncio.sleep(0.6)
        writer.write(b"x HTTP/1.1\r\n")  # not /sync after all: h11 takes it, never finished
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        assert time.monotonic() - started < 1.4  # closed 1 s after connecting, not 1.6
        writer.close()
        # ... and the next request on the connection gets the whole time again.
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /s")
        await asyncio.sleep(0.6)
        writer.write(b"ync HTTP/1.1\r\nHost: a\r\n\r\n")  # no upgrade: h11 answers it
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert first.split(b" ")[1] == b"404"
        length = next(
            int(line.split(b":")[1])
            for line in first.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        await asyncio.sleep(0.6)  # past what was left of the first request's time
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        second = await asyncio.wait_for(reader.read(), 5)
        assert second.split(b" ")[1] == b"200"
        writer.close()
        # And a client goes live through it.
        client = await SyncClient.connect(base)
        await client.hello(token, [ProjectCursor(str(project), None)])
        replica = await client.sync_until_synced(str(project))
        assert replica.cursor == 0
        await client.close()
