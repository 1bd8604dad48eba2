"""A process with no room for one more resume keeps the upgrade waiting for its turn
(``live.load_gate``): no answer until then, the 101 as soon as one under way finishes, and a
503 with a hint, never a timeout, when the turn does not come in time. Over a real server and
real WebSockets."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Callable

import asyncpg
import pytest
from websockets.exceptions import InvalidStatus

from fieldsync.live.load_gate import ROOM_REASON, TURN_NOT_REACHED, LoadLimits
from fieldsync.observability.metrics import Metrics
from fieldsync.sync.messages import ProjectCursor
from tests.live_server import MemberFactory, running_server
from tests.sync_client import SyncClient

# One resume under way at a time, and a queue behind it.
ONE_AT_A_TIME = LoadLimits(max_in_progress=1, min_in_progress=1)


def _value(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels or {})


async def _until(condition: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.02)


async def test_an_upgrade_that_finds_no_room_waits_and_goes_live_when_one_finishes(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    metrics = Metrics()
    async with running_server(database_url, load_limits=ONE_AT_A_TIME, metrics=metrics) as base:
        squatter = await SyncClient.connect(base)  # upgraded, has not said hello: under way
        waiting = asyncio.create_task(SyncClient.connect(base))
        await _until(lambda: _value(metrics, "fieldsync_upgrades_waiting") == 1)
        await asyncio.sleep(0.5)
        assert not waiting.done()  # no answer yet: neither a 101 nor a refusal
        assert _value(metrics, "fieldsync_upgrades_waited_total") == 1
        refused = {"reason": ROOM_REASON}
        assert _value(metrics, "fieldsync_connections_refused_total", refused) is None
        await squatter.hello(token)  # its resume is done: the waiting one's turn
        client = await asyncio.wait_for(waiting, 2)
        assert _value(metrics, "fieldsync_upgrades_waiting") == 0
        await client.hello(token, [ProjectCursor(str(project), None)])
        replica = await client.sync_until_synced(str(project))
        assert replica.cursor == 0
        await client.close()
        await squatter.close()


async def test_a_waiter_whose_turn_does_not_come_in_time_gets_a_503_with_a_hint(
    database_url: str,
) -> None:
    limits = LoadLimits(max_in_progress=1, min_in_progress=1, queue_deadline_seconds=0.6)
    metrics = Metrics()
    async with running_server(database_url, load_limits=limits, metrics=metrics) as base:
        squatter = await SyncClient.connect(base)
        started = time.monotonic()
        with pytest.raises(InvalidStatus) as refused:
            await SyncClient.connect(base)
        waited = time.monotonic() - started
        assert 0.6 <= waited < 2.0  # answered once the deadline passed, not left to time out
        response = refused.value.response
        assert response.status_code == 503
        assert b"server_busy" in response.body
        assert int(response.headers["Retry-After"]) >= limits.min_retry_seconds
        reason = {"reason": TURN_NOT_REACHED.reason}
        assert _value(metrics, "fieldsync_connections_refused_total", reason) == 1
        assert _value(metrics, "fieldsync_upgrades_waiting") == 0
        await squatter.close()


async def test_a_waiter_whose_client_leaves_is_dropped_from_the_queue(database_url: str) -> None:
    metrics = Metrics()
    async with running_server(database_url, load_limits=ONE_AT_A_TIME, metrics=metrics) as base:
        squatter = await SyncClient.connect(base)
        host, _, port = base.partition(":")
        leaving = socket.create_connection((host, int(port)))
        leaving.sendall(
            b"GET /sync HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await _until(lambda: _value(metrics, "fieldsync_upgrades_waiting") == 1)
        leaving.close()
        # Gone from the queue while the process is still full: it holds no place there.
        await _until(lambda: _value(metrics, "fieldsync_upgrades_waiting") == 0)
        assert _value(metrics, "fieldsync_connections_unauthenticated") == 1  # the squatter
        await squatter.close()


async def test_a_connection_counts_as_under_way_until_its_streams_have_started(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    """Between its hello and its streams (the membership read) a connection is still under
    way: the room is not given to the next one before it has started its streams."""
    _, token = await member(project)
    metrics = Metrics()
    async with running_server(database_url, load_limits=ONE_AT_A_TIME, metrics=metrics) as base:
        first = await SyncClient.connect(base)
        blocker = await asyncpg.connect(database_url)
        try:
            async with blocker.transaction():
                # The membership read of the first client's hello waits behind this lock.
                await blocker.execute("LOCK TABLE project_members IN ACCESS EXCLUSIVE MODE")
                await first.hello(token, [ProjectCursor(str(project), None)])
                second = asyncio.create_task(SyncClient.connect(base))
                await _until(lambda: _value(metrics, "fieldsync_upgrades_waiting") == 1)
                await asyncio.sleep(0.3)
                assert not second.done()
                # Authenticated, so no longer counted by the admission: the gate counts it.
                assert _value(metrics, "fieldsync_connections_unauthenticated") == 0
        finally:
            await blocker.close()
        await first.sync_until_synced(str(project))
        client = await asyncio.wait_for(second, 2)
        await client.close()
        await first.close()
