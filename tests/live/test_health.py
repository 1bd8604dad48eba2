"""``/healthz`` answers from the database watch: a pool busy with clients' work is not a
database that went away, and a balancer must not take a busy process out. The probe port
answers it from a thread, however busy the event loop."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
import uuid
from unittest.mock import ANY

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from fieldsync.live.probe_listener import (
    MAX_CONCURRENT,
    READ_SECONDS,
    RENDER_INTERVAL_SECONDS,
    RENDER_WAIT_SECONDS,
    LoopRendered,
    ProbeListener,
)
from fieldsync.model.writer import create_entity
from fieldsync.store.memory import MemoryStorage
from fieldsync.sync.messages import EntityAccepted, EntityPush, ProjectCursor, Push, PushResult
from tests.entities import location_values, new_id
from tests.live_server import MemberFactory, free_port, running_server, start_server, stop_server
from tests.sync_client import SyncClient

_LOCK_WAITERS = """
SELECT count(*) FROM pg_stat_activity
WHERE wait_event_type = 'Lock' AND query LIKE '%log_heads%FOR UPDATE%'
"""


async def test_healthz_says_ok_while_every_pooled_connection_is_busy(
    database_url: str, project: uuid.UUID, member: MemberFactory, pool: asyncpg.Pool
) -> None:
    _, token = await member(project)
    async with running_server(database_url, pool_min_size=1, pool_max_size=1) as base:
        client = await SyncClient.connect(base)
        await client.hello(token, [ProjectCursor(str(project), None)])
        await client.sync_until_synced(str(project))
        _, change = create_entity("location", location_values())
        entity = new_id()
        async with pool.acquire() as holder, holder.transaction():
            # The project's log lock held here: the push waits for it on the server's one
            # pooled connection.
            await holder.execute(
                "SELECT 1 FROM log_heads WHERE project_id = $1 FOR UPDATE", project
            )
            await client.send(Push(1, str(project), (EntityPush("location", entity, (change,)),)))
            for _ in range(500):
                if await pool.fetchval(_LOCK_WAITERS) == 1:
                    break
                await asyncio.sleep(0.02)
            assert await pool.fetchval(_LOCK_WAITERS) == 1
            async with httpx.AsyncClient() as http:
                health = await http.get(f"http://{base}/healthz", timeout=10)
            assert (health.status_code, health.json()) == (200, {"status": "ok"})
        result = await client.next_unabsorbed()
        assert isinstance(result, PushResult), result
        assert result.results == (EntityAccepted(entity, (1,)),)
        await client.close()


def _get(url: str) -> tuple[int, object, float]:
    """GET ``url`` from this thread: status, JSON body, and when the answer came."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            status, data = response.status, response.read()
    except urllib.error.HTTPError as refused:
        status, data = refused.code, refused.read()
    return status, json.loads(data), time.monotonic()


def _scrape(url: str) -> tuple[str, float]:
    """The metrics text at ``url``, and when it came."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode(), time.monotonic()


def _age(scrape: str) -> float:
    [line] = [
        line
        for line in scrape.splitlines()
        if line.startswith("fieldsync_metrics_rendered_age_seconds ")
    ]
    return float(line.split()[1])


async def test_the_probe_port_answers_while_the_event_loop_is_busy() -> None:
    memory = MemoryStorage()
    port = free_port()
    server, task = await start_server(
        None,
        port,
        storage=memory,
        probe_address=("127.0.0.1", 0),
        database_check_seconds=0.05,
    )
    try:
        app = server.config.app
        assert isinstance(app, Starlette)
        probes = f"http://127.0.0.1:{app.state.probe_port}"
        main = f"http://127.0.0.1:{port}"
        loop = asyncio.get_running_loop()
        assert await asyncio.to_thread(_get, f"{probes}/healthz") == (
            200,
            {"status": "ok"},
            ANY,
        )

        # The loop is busy for a second (a storm's turn, say): the probe port answers
        # meanwhile; the main port only once the loop is free.
        busy_until: list[float] = []

        def busy() -> None:
            time.sleep(1.0)
            busy_until.append(time.monotonic())

        fresh, _ = await asyncio.to_thread(_scrape, f"{probes}/metrics")
        assert _age(fresh) < RENDER_WAIT_SECONDS  # the loop keeps up: rendered for it
        await asyncio.sleep(RENDER_INTERVAL_SECONDS)  # the next scrape asks for a new one
        # Busy first: a render the scrape asks for is queued behind it, however fast the
        # request gets there.
        loop.call_soon(busy)
        on_probes = loop.run_in_executor(None, _get, f"{probes}/healthz")
        on_metrics = loop.run_in_executor(None, _scrape, f"{probes}/metrics")
        on_main = loop.run_in_executor(None, _get, f"{main}/healthz")
        (
            (status, body, answered),
            (late, scraped),
            (main_status, _, main_answered),
        ) = await asyncio.gather(on_probes, on_metrics, on_main)
        assert (status, body) == (200, {"status": "ok"})
        assert main_status == 200
        assert answered < busy_until[0] < main_answered
        # The scrape did not wait for the loop: the last rendering, and how old it is.
        assert scraped < busy_until[0]
        assert "fieldsync_connections_open 0.0" in late
        assert _age(late) >= RENDER_WAIT_SECONDS

        # The database watch's verdict, as the main port gives it.
        memory.fail()
        for _ in range(200):
            if app.state.status.database_problem is not None:
                break
            await asyncio.sleep(0.01)
        down = await asyncio.to_thread(_get, f"{probes}/healthz")
        on_main_down = await asyncio.to_thread(_get, f"{main}/healthz")
        assert down[0] == on_main_down[0] == 503
        assert down[1] == on_main_down[1]
        assert down[1] == {"status": "unavailable", "reason": ANY}
        memory.recover()

        assert (await asyncio.to_thread(_get, f"{probes}/openapi.json"))[:2] == (
            404,
            {"status": "not_found", "reason": "only /healthz and /metrics"},
        )
    finally:
        await stop_server(server, task)
    with pytest.raises(urllib.error.URLError):  # stopped with the server
        _get(f"{probes}/healthz")


def test_the_probe_port_stays_cheap_whatever_connects() -> None:
    """Connections that send nothing hold at most MAX_CONCURRENT threads, each for READ_SECONDS
    at most; one more is closed at once, and probes are answered again once they go."""
    listener = ProbeListener("127.0.0.1", 0, lambda: (200, {"status": "ok"}))
    listener.start()
    try:
        idle = [
            socket.create_connection(("127.0.0.1", listener.port)) for _ in range(MAX_CONCURRENT)
        ]
        time.sleep(0.3)  # all taken in by the listener's thread
        with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as one_more:
            one_more.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert one_more.recv(100) == b""  # closed unanswered
        for sock in idle:
            sock.close()
        time.sleep(0.3)
        assert _get(f"http://127.0.0.1:{listener.port}/healthz")[:2] == (200, {"status": "ok"})
        # A connection that stops halfway through its request is dropped after READ_SECONDS.
        with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as stalled:
            stalled.sendall(b"GET /healthz HTTP/1.1\r\n")
            started = time.monotonic()
            assert stalled.recv(100) == b""
            assert round(time.monotonic() - started) == READ_SECONDS
    finally:
        listener.stop()


async def test_scrapers_cannot_make_the_loop_render_more_than_once_an_interval() -> None:
    """Rendering walks every connection's send queue: eight scrapes at once make one
    rendering, a scrape within the interval gets the last, and one after it a new one."""
    renders: list[float] = []

    def render() -> bytes:
        renders.append(time.monotonic())
        return b"rendered %d\n" % len(renders)

    rendered = LoopRendered(asyncio.get_running_loop(), render, wait=5, min_interval=1.0)
    crowd = await asyncio.gather(*(asyncio.to_thread(rendered.get) for _ in range(8)))
    assert len(renders) == 1
    assert {scrape.splitlines()[0] for scrape in crowd} == {b"rendered 1"}
    again = await asyncio.to_thread(rendered.get)
    assert (len(renders), again.splitlines()[0]) == (1, b"rendered 1")
    await asyncio.sleep(1.0)
    later = await asyncio.to_thread(rendered.get)
    assert (len(renders), later.splitlines()[0]) == (2, b"rendered 2")
