"""`fieldsync serve --workers 2`: two real processes, one database, changes cross live, each
answering health probes on its own probe port too."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from fieldsync.cli import listen_problem
from fieldsync.model.writer import create_entity, update_entity
from fieldsync.sync.messages import EntityPush, ProjectCursor
from tests.entities import location_values, new_id
from tests.live.test_sync import push
from tests.live_server import TEST_SECRET, MemberFactory, free_port
from tests.sync_client import SyncClient
from tests.test_server_command import Serving, serving


def _two_free_ports() -> int:
    """The first of two free ports in a row."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and listen_problem("127.0.0.1", port + 1) is None:
            return port
    raise RuntimeError("no two free ports in a row")


async def test_two_workers_share_the_database_and_relay_live(
    database_url: str, project: uuid.UUID, member: MemberFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, token = await member(project)
    monkeypatch.setenv("FIELDSYNC_SECRET", TEST_SECRET.decode())  # the workers' signing key
    probes = _two_free_ports()
    async with serving(
        "--workers",
        "2",
        "--probe-port",
        str(probes),
        "--database-url",
        database_url,
        "--loop",
        "asyncio",
    ) as parent:
        first = parent
        second = Serving(parent.proc, parent.port + 1)
        await first.wait_healthy()
        await second.wait_healthy()
        async with httpx.AsyncClient() as http:
            for port in (first.port, second.port):
                response = await http.get(f"http://127.0.0.1:{port}/metrics")
                assert "fieldsync_connections_open 0.0" in response.text
            for port in (probes, probes + 1):
                response = await http.get(f"http://127.0.0.1:{port}/healthz")
                assert (response.status_code, response.json()) == (200, {"status": "ok"})
                response = await http.get(f"http://127.0.0.1:{port}/metrics")
                assert "fieldsync_connections_open 0.0" in response.text

        pusher = await SyncClient.connect(f"127.0.0.1:{first.port}")
        watcher = await SyncClient.connect(f"127.0.0.1:{second.port}")
        await pusher.hello(token)
        await watcher.hello(token, [ProjectCursor(str(project), 0)])
        await watcher.sync_until_synced(str(project))
        entity = new_id()
        doc, created = create_entity("location", location_values())
        await push(pusher, project, 1, EntityPush("location", entity, (created,)))
        await watcher.receive_changes_until(str(project), 1, within=5)
        slowest = 0.0
        for n in range(2, 12):
            change = update_entity(doc, "location", {"name": f"Site v{n}"})
            started = time.monotonic()
            await push(pusher, project, n, EntityPush("location", entity, (change,)))
            await watcher.receive_changes_until(str(project), n, within=5)
            slowest = max(slowest, time.monotonic() - started)
        # NOTIFY, not the 2 s head check, carried them: each crossed well within a second.
        assert slowest < 1.0, slowest
        assert watcher.replicas[str(project)].heads() == {entity: sorted(doc.get_heads())}
        await pusher.close()
        await watcher.close()

        code, log = await parent.stop()
    assert code == 0, log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    ports = [line["port"] for line in lines if line.get("event") == "worker_started"]
    assert ports == [first.port, second.port]
    workers = {line["worker_pid"] for line in lines if line.get("event") == "worker_started"}
    stopped = {line["pid"] for line in lines if line.get("message") == "stopped"}
    assert len(workers) == 2
    assert stopped == workers  # each worker served, then shut down gracefully
    listening = [line for line in lines if line.get("event") == "listening"]
    assert {line["pid"] for line in listening} == workers  # each says where it listens
    loops = [line for line in lines if line.get("message", "").startswith("event loop")]
    assert {line["pid"] for line in loops} == workers  # the choice reached each worker
    assert {line["message"] for line in loops} == {"event loop: asyncio"}
    assert sorted(line["url"] for line in listening) == [
        f"http://127.0.0.1:{first.port}",
        f"http://127.0.0.1:{second.port}",
    ]
    assert any(line.get("event") == "workers_stopped" for line in lines)
