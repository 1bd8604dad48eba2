"""A busy server's retry hint is obeyed: the SDK waits at least Retry-After, then gets in;
a saturated one answers at once, and its health and metrics still answer."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from fieldsync.live.admission import AdmissionLimits
from fieldsync.live.load_gate import LoadLimits
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
        await asyncio.sleep(0.9)
        # Refused at once, then waiting at least the 1 s hint: one attempt in these 0.9 s,
        # where the backoff alone (capped at 0.25 s) would have made four or more.
        assert not client.status.online
        assert "refused" in str(client.status.last_error)
        assert client._sync is not None
        assert client._sync.connections == 1
        await squatter.close()
        await client.wait_synced(10)
        assert opened.cursor == 0


async def test_a_saturated_server_refuses_at_once_with_a_hint_and_stays_observable(
    database_url: str, project: uuid.UUID, member: MemberFactory, make_client: ClientFactory
) -> None:
    _, token = await member(project)
    # One connection between upgrade and live, and no queue: the rest are refused at once.
    saturated = LoadLimits(max_in_progress=1, max_queue_seconds=0.0)
    async with running_server(database_url, load_limits=saturated) as base:
        squatter = await SyncClient.connect(base)  # upgraded, never says hello
        started = time.monotonic()
        with pytest.raises(InvalidStatus) as refused:
            await SyncClient.connect(base)
        assert time.monotonic() - started < 1.0  # answered, not left to time out
        response = refused.value.response
        assert response.status_code == 503
        assert b"server_busy" in response.body
        # One refused client and nothing else waiting, at the assumed rate before any was
        # measured: its turn comes at once, so the hint is the shortest one.
        assert response.headers["Retry-After"] == str(saturated.min_retry_seconds)
        async with httpx.AsyncClient(base_url=f"http://{base}", timeout=2) as http:
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/metrics")).status_code == 200

        client = make_client(f"ws://{base}/sync", token, "patient")  # backoff cap 0.25 s
        opened = await client.open_project(str(project))
        await asyncio.sleep(0.9)
        # Refused, and waiting out the hint (at least 1 s) rather than its own backoff: the
        # first attempt only, where the backoff alone (capped at 0.25 s) would have made
        # four or more in these 0.9 s.
        assert not client.status.online
        assert client._sync is not None
        assert client._sync.connections == 1
        await squatter.close()
        await client.wait_synced(10)
        assert opened.cursor == 0
