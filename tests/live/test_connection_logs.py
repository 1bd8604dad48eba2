"""Connection lines name the user and the device; refusals are logged; churn cannot flood.

One line when a connection is accepted and one when it ends, carrying the user id and the
client id from the hello; a connection refused before it authenticated (a bad token, no
hello) is one warning with the reason. Lines that clients can cause are rate-limited: the
ones left out are counted in the metrics and on the next line written.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from fieldsync.observability.logs import JsonFormatter
from fieldsync.observability.metrics import Metrics
from fieldsync.sync.errors import CloseCode
from fieldsync.sync.messages import Hello
from tests.live_server import MemberFactory, running_server
from tests.sync_client import SyncClient


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def events(out: io.StringIO, event: str) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    return [line for line in parsed if line.get("event") == event]


async def test_connection_lines_carry_the_user_and_the_client(
    database_url: str, project: uuid.UUID, member: MemberFactory, lines: io.StringIO
) -> None:
    user_id, token = await member(project)
    async with running_server(database_url) as base:
        client = await SyncClient.connect(base)
        await client.send(Hello((1,), token, "tablet-7f3a"))
        welcome = await client.receive()
        await client.close()
        await asyncio.sleep(0.2)
    [opened] = events(lines, "connection_opened")
    [closed] = events(lines, "connection_closed")
    for line in (opened, closed):
        assert line["user_id"] == str(user_id)
        assert line["client_id"] == "tablet-7f3a"
        assert line["connection_id"] == getattr(welcome, "session_id", None)
        assert line["address"] == "127.0.0.1"
    assert closed["ended_by"] == "client_closed"
    assert closed["duration_ms"] >= 0


async def test_a_refused_token_is_logged_with_its_reason_and_no_token(
    database_url: str, lines: io.StringIO
) -> None:
    forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    async with running_server(database_url) as base:
        client = await SyncClient.connect(base)
        await client.send(Hello((1,), forged, "tablet-forged"))
        _, code = await client.read_until_closed()
        assert code == CloseCode.UNAUTHORIZED
        await asyncio.sleep(0.2)
    [refused] = events(lines, "connection_refused")
    assert refused["level"] == "warning"
    assert refused["reason"].startswith("invalid_token")
    assert refused["client_id"] == "tablet-forged"
    assert "user_id" not in refused
    assert forged not in lines.getvalue()


async def test_connection_churn_is_logged_within_a_rate_and_counted(
    database_url: str, lines: io.StringIO
) -> None:
    metrics = Metrics()
    async with running_server(database_url, metrics=metrics) as base:
        for n in range(120):
            client = await SyncClient.connect(base)
            await client.send(Hello((1,), "not-a-token", f"churn-{n}"))
            await client.read_until_closed()
        await asyncio.sleep(0.2)
    refused = events(lines, "connection_refused")
    # The burst and what the rate refilled while the loop ran; never one per connection.
    assert 20 <= len(refused) < 80, len(refused)
    suppressed = metrics.registry.get_sample_value(
        "fieldsync_log_lines_suppressed_total", {"event": "connection_refused"}
    )
    assert suppressed is not None
    assert suppressed + len(refused) == 120
    counted = metrics.registry.get_sample_value(
        "fieldsync_connections_refused_total", {"reason": "invalid_token"}
    )
    assert counted == 120
