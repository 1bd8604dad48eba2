"""Clients that hold resources without playing their part: each is bounded and ended.

A client that pushes but never reads, a socket that never says hello, a crowd of them from
one address, a frame sent before the welcome, and a request whose headers never end. Each
test runs a real server (uvicorn, WebSockets, PostgreSQL) with its limits made small.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import pytest
from automerge.core import ROOT, Document, ScalarType
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from fieldsync.auth.tokens import SecretVerifier, TokenClaims
from fieldsync.live.admission import AdmissionLimits
from fieldsync.live.outbox import OutboxLimits
from fieldsync.live.session import PUSHES_IN_FLIGHT
from fieldsync.model.merge import MAX_VIOLATIONS_LISTED
from fieldsync.observability.metrics import Metrics
from fieldsync.sync.codec import decode_server, encode
from fieldsync.sync.errors import CloseCode, ErrorCode
from fieldsync.sync.messages import (
    EntityPush,
    EntityRejected,
    Error,
    Hello,
    ProjectCursor,
    Push,
    PushResult,
    ServerMessage,
    Subscribe,
    Welcome,
)
from tests.entities import new_id
from tests.live_server import TEST_SECRET, MemberFactory, running_server
from tests.sync_client import SyncClient


def gauge(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(name)
    assert value is not None, name
    return value


def broken_location() -> bytes:
    """A location change with 60 unknown fields: an entity refused with a long list."""
    doc = Document()
    with doc.transaction() as tx:
        for n in range(60):
            tx.put(ROOT, f"unexpected_field_{n:02}", ScalarType.Str, "x" * 30)
    change = doc.get_last_local_change()
    assert change is not None
    return change.bytes


async def test_a_client_that_pushes_but_never_reads_is_bounded_then_closed(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    metrics = Metrics()
    # A soft bound above the answers of PUSHES_IN_FLIGHT pushes, which a client that read
    # everything so far may have in flight when it stops reading.
    limits = OutboxLimits(soft_bytes=512 * 1024, hard_bytes=2048 * 1024, control_bytes=1024 * 1024)
    async with running_server(
        database_url, outbox_limits=limits, stall_seconds=2.0, metrics=metrics
    ) as base:
        client = await SyncClient.connect(base)
        await client.hello(token)
        # Every entity refused, each answer as long as the server lets it be.
        change = broken_location()
        entities = tuple(EntityPush("location", new_id(), (change,)) for _ in range(100))
        probe = await SyncClient.connect(base)
        await probe.hello(token)
        await probe.send(Push(1, str(project), entities[:1]))
        answer = await probe.expect(PushResult)
        [refused] = answer.results
        assert isinstance(refused, EntityRejected)
        assert refused.code == "schema_violation"
        assert isinstance(refused.details["violations"], list)
        assert len(refused.details["violations"]) == MAX_VIOLATIONS_LISTED
        await probe.close()

        # Flood until the server's send queue reaches its soft bound (it then stops reading
        # us), and a little past its stall limit. How long the kernel's buffers take to fill
        # first depends on how fast the server answers, so the flood runs until then.
        client.ws.transport.pause_reading()
        started = time.monotonic()
        full_since: float | None = None
        fullest = 0.0
        sent = 0
        while time.monotonic() - started < 60:
            try:
                await asyncio.wait_for(client.send(Push(sent, str(project), entities)), 0.5)
                sent += 1
            except (TimeoutError, ConnectionClosed):
                pass  # the server stopped reading: our own buffers are full
            fullest = max(fullest, gauge(metrics.registry, "fieldsync_send_queue_max_bytes"))
            if full_since is None and fullest >= limits.soft_bytes:
                full_since = time.monotonic()
            if full_since is not None and time.monotonic() - full_since > 3.0:
                break
            await asyncio.sleep(0.05)  # 20 pushes a second, well within the rate limit
        assert full_since is not None, "the server's send queue never filled"

        # The next frame is read only below the soft bound: one push's answer at most on top
        # of it, never the whole flood.
        one_answer = len(encode(PushResult(0, str(project), (refused,) * len(entities))))
        assert PUSHES_IN_FLIGHT * one_answer <= limits.soft_bytes + one_answer
        assert sent >= 2
        assert 0 < fullest <= limits.soft_bytes + one_answer
        client.ws.transport.resume_reading()
        messages, code = await client.read_until_closed()
        errors = [m for m in messages if isinstance(m, Error)]
        assert errors, messages
        assert errors[-1].code == ErrorCode.TOO_SLOW.value
        assert errors[-1].fatal
        assert code == CloseCode.TOO_SLOW
        assert gauge(metrics.registry, "fieldsync_send_queue_bytes") == 0


async def test_a_socket_that_never_says_hello_is_counted_and_closed_at_the_deadline(
    database_url: str,
) -> None:
    metrics = Metrics()
    async with running_server(database_url, handshake_seconds=1.0, metrics=metrics) as base:
        started = time.monotonic()
        silent = await SyncClient.connect(base)
        await asyncio.sleep(0.2)
        assert gauge(metrics.registry, "fieldsync_connections_unauthenticated") == 1
        messages, code = await silent.read_until_closed(within=5)
        assert 0.9 < time.monotonic() - started < 4
        assert [(m.code, m.fatal) for m in messages if isinstance(m, Error)] == [
            (ErrorCode.HANDSHAKE_TIMEOUT.value, True)
        ]
        assert code == CloseCode.POLICY_VIOLATION
        assert gauge(metrics.registry, "fieldsync_connections_unauthenticated") == 0
        refused = metrics.registry.get_sample_value(
            "fieldsync_connections_refused_total", {"reason": "handshake_timeout"}
        )
        assert refused == 1


async def test_unauthenticated_sockets_are_capped_per_address_and_per_process(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    caps = AdmissionLimits(max_unauthenticated=3, max_unauthenticated_per_address=2)
    async with running_server(database_url, admission_limits=caps) as base:
        waiting = [await SyncClient.connect(base) for _ in range(2)]
        with pytest.raises(InvalidStatus) as per_address:
            await SyncClient.connect(base)
        assert per_address.value.response.status_code == 429
        assert b"server_busy" in per_address.value.response.body
        # Saying hello frees the place: the next socket gets in.
        await waiting[0].hello(token)
        waiting.append(await SyncClient.connect(base))
        for client in waiting:
            await client.close()

    caps = AdmissionLimits(max_unauthenticated=2, max_unauthenticated_per_address=10)
    async with running_server(database_url, admission_limits=caps) as base:
        waiting = [await SyncClient.connect(base) for _ in range(2)]
        with pytest.raises(InvalidStatus) as per_process:
            await SyncClient.connect(base)
        assert per_process.value.response.status_code == 503
        # The hint is what the process needs for the connections it holds, at most the
        # configured wait (two sockets: the shortest hint).
        assert per_process.value.response.headers["Retry-After"] == "1"
        await waiting[1].close()
        await asyncio.sleep(0.2)
        waiting[1] = await SyncClient.connect(base)  # a closed one frees its place too
        for client in waiting:
            await client.close()


class SlowVerifier:
    """Checks tokens like the server does, but takes its time: the window between hello
    and welcome becomes wide enough to send something into."""

    def __init__(self, seconds: float) -> None:
        self._inner = SecretVerifier(TEST_SECRET)
        self._seconds = seconds

    async def verify(self, token: str) -> TokenClaims:
        await asyncio.sleep(self._seconds)
        return await self._inner.verify(token)

    def verify_now(self, token: str) -> TokenClaims | None:
        return None  # always the slow way


async def test_a_frame_sent_between_hello_and_welcome_is_refused(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    async with running_server(database_url, verifier=SlowVerifier(0.5)) as base:
        eager = await SyncClient.connect(base)
        await eager.send(Hello((1,), token, "eager-client"))
        await eager.send(Subscribe(ProjectCursor(str(project), None)))
        messages, code = await eager.read_until_closed()
        assert [(m.code, m.fatal) for m in messages if isinstance(m, Error)] == [
            (ErrorCode.HANDSHAKE_REQUIRED.value, True)
        ]
        assert code == CloseCode.POLICY_VIOLATION
        # A client that waits for the welcome is served as always.
        patient = await SyncClient.connect(base)
        await patient.hello(token, [ProjectCursor(str(project), None)])
        await patient.sync_until_synced(str(project))
        await patient.close()


async def _frames_after(base: str, *messages: bytes) -> tuple[list[ServerMessage], int]:
    """Upgrade, then send ``messages`` in one write (so they arrive together); what the
    server sends until it closes, and its close code."""
    client = ClientProtocol(parse_uri(f"ws://{base}/sync"))
    client.send_request(client.connect())
    host, port = base.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"".join(client.data_to_send()))
        while client.state is not State.OPEN:
            client.receive_data(await asyncio.wait_for(reader.read(65536), 5))
        for message in messages:
            client.send_binary(message)
        writer.write(b"".join(client.data_to_send()))
        received: list[ServerMessage] = []
        while client.close_rcvd is None:
            data = await asyncio.wait_for(reader.read(65536), 5)
            if not data:
                break
            client.receive_data(data)
            for event in client.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.BINARY:
                    received.append(decode_server(bytes(event.data)))
        assert client.close_rcvd is not None
        return received, client.close_rcvd.code
    finally:
        writer.close()


async def test_a_frame_that_came_with_the_hello_is_refused_when_the_token_is_checked_at_once(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    """Our own tokens are checked without waiting: a frame already there behind the hello
    was still sent before the welcome."""
    _, token = await member(project)
    async with running_server(database_url) as base:
        hello = encode(Hello((1,), token, "eager-client"))
        messages, code = await _frames_after(
            base, hello, encode(Subscribe(ProjectCursor(str(project), None)))
        )
        assert [(m.code, m.fatal) for m in messages if isinstance(m, Error)] == [
            (ErrorCode.HANDSHAKE_REQUIRED.value, True)
        ]
        assert not any(isinstance(m, Welcome) for m in messages)
        assert code == CloseCode.POLICY_VIOLATION
        # The hello alone is welcomed.
        patient = await SyncClient.connect(base)
        await patient.hello(token, [ProjectCursor(str(project), None)])
        await patient.sync_until_synced(str(project))
        await patient.close()


async def test_requests_whose_headers_never_end_are_closed(database_url: str) -> None:
    async with running_server(database_url, header_seconds=1.0) as base:
        host, port = base.split(":")
        silent = await asyncio.open_connection(host, int(port))
        dribbling = await asyncio.open_connection(host, int(port))
        dribbling[1].write(b"GET /sync HTTP/1.1\r\nHost: fieldsync\r\n")
        started = time.monotonic()
        for reader, writer in (silent, dribbling):
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
            writer.close()
        assert time.monotonic() - started < 4
        # A request that does arrive in time is answered.
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: fieldsync\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_an_upgraded_socket_is_not_cut_by_the_header_deadline(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    async with (
        running_server(database_url, header_seconds=0.5) as base,
        connect(f"ws://{base}/sync", compression=None) as ws,
    ):
        client = SyncClient(ws)
        await client.hello(token)
        await asyncio.sleep(1.5)
        await client.send(Subscribe(ProjectCursor(str(project), None)))
        await client.sync_until_synced(str(project))


async def test_connections_beyond_the_process_files_are_closed_at_once(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    """Past the connections its open-file limit allows (``live.open_files``), a new one is
    closed before it is read, and counted; the ones held and the process go on."""
    _, token = await member(project)
    metrics = Metrics()
    async with running_server(database_url, max_connections=3, metrics=metrics) as base:
        host, port = base.split(":")
        synced = await SyncClient.connect(base)
        await synced.hello(token, [ProjectCursor(str(project), None)])
        await synced.sync_until_synced(str(project))
        held = [await asyncio.open_connection(host, int(port)) for _ in range(2)]
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: fieldsync\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 2) == b""  # closed, nothing read
        writer.close()
        refused = metrics.registry.get_sample_value(
            "fieldsync_connections_refused_total", {"reason": "connection_cap"}
        )
        assert refused == 1
        # The synced client is still served, and a place freed is taken again.
        await asyncio.wait_for(await synced.ws.ping(), 2)
        held[0][1].close()
        deadline = time.monotonic() + 2
        while True:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: fieldsync\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            if answer or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)  # the freed place is not seen as free yet
        assert answer.startswith(b"HTTP/1.1 200")
        for _, held_writer in held[1:]:
            held_writer.close()
        await synced.close()
