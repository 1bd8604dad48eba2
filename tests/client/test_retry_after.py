"""A busy server's retry hint is obeyed: the SDK waits at least Retry-After, then gets in."""

from __future__ import annotations

import asyncio
import uuid

from fieldsync.live.admission import AdmissionLimits
from tests.client.conftest import ClientFactory
from tests.live_server import MemberFactory, running_server
from tests.sync_client import SyncClient


async def test_the_sdk_waits_as_long_as_a_busy_server_asks(
    database_url: str, project: uuid.UUID, member: MemberFactory, make_client: ClientFactory
) -> None:
    _, token = await member(project)
    busy = AdmissionLimits(max_unauthenticated=1, retry_after_seconds=1)
    async with running_server(database_url, admission_limits=busy) as base:
        squatter = await SyncClient.connect(base)  # holds the one place, never says hello
        client = make_client(f"ws://{base}/sync", token, "patient")  # backoff cap 0.25 s
        opened = await client.open_project(str(project))
        await asyncio.sleep(2.2)
        # Without the hint it would have tried about every 0.1 s; with it, 1 to 1.5 s
        # apart (the hint, and up to half again of jitter).
        assert not client.status.online
        assert "refused" in str(client.status.last_error)
        assert client._sync is not None
        assert 2 <= client._sync.connections <= 3, client._sync.connections
        await squatter.close()
        await client.wait_synced(10)
        assert opened.cursor == 0
