"""A server whose stream breaks the protocol's order, through a real WebSocket: the SDK says
why, closes with 1002 and resumes from the cursor it stored (the rules themselves are
tested without sockets in ``tests/sync/test_client_protocol.py``)."""

from __future__ import annotations

from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from fieldsync.sync.client_protocol import OUT_OF_ORDER
from fieldsync.sync.codec import decode_client, encode
from fieldsync.sync.errors import CloseCode
from fieldsync.sync.messages import (
    ChangeRecord,
    Changes,
    Hello,
    ProjectCursor,
    SnapshotBegin,
    SnapshotEnd,
    Synced,
    Welcome,
)
from fieldsync_client import FieldsyncClient
from tests.client.helpers import until

PROJECT = "p"


async def test_a_gap_in_the_stream_is_dropped_and_synced_again_from_the_stored_cursor(
    tmp_path: Path,
) -> None:
    hellos: list[Hello] = []
    closes: list[tuple[int | None, str | None]] = []

    async def server(ws: ServerConnection) -> None:
        hello = decode_client(await ws.recv())
        assert isinstance(hello, Hello)
        hellos.append(hello)
        await ws.send(encode(Welcome(1, "u", f"s{len(hellos)}", {})))
        if len(hellos) == 1:
            await ws.send(encode(SnapshotBegin(PROJECT, 2, 0)))
            await ws.send(encode(SnapshotEnd(PROJECT, 2)))
            # seq 4 right after cursor 2: seq 3 is missing.
            await ws.send(encode(Changes(PROJECT, (ChangeRecord(4, "activity", "a", b"x"),))))
        else:
            await ws.send(encode(Synced(PROJECT, 2)))
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass
        closes.append((ws.close_code, ws.close_reason))

    async with serve(server, "127.0.0.1", 0) as listening:
        port = listening.sockets[0].getsockname()[1] if listening.sockets else 0
        client = FieldsyncClient(
            f"ws://127.0.0.1:{port}/sync",
            "token",
            tmp_path / "c.db",
            http_snapshots=False,
            backoff_base=0.05,
            backoff_cap=0.1,
            connect_timeout=2,
        )
        errors: list[str] = []
        client.on_status(lambda s: errors.append(str(s.last_error)) if s.last_error else None)
        try:
            project = await client.open_project(PROJECT, timeout=5)
            await until(lambda: len(hellos) >= 2, what="a second connection")
            await client.wait_synced(timeout=5)
            assert project.cursor == 2
            assert hellos[0].projects == (ProjectCursor(PROJECT, None),)
            assert hellos[1].projects == (ProjectCursor(PROJECT, 2),)  # what it stored
            assert closes[0] == (CloseCode.PROTOCOL_ERROR, OUT_OF_ORDER)
            reported = [e for e in errors if "the server broke the protocol" in e]
            assert reported, errors
            assert "expected seq 3, got 4" in reported[0]
            assert client.status.last_error is None  # the new connection went well
        finally:
            await client.close()
