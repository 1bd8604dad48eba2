"""The database stops for a few seconds under load: the server stays up, says so, and
everything resumes by itself with nothing lost.

The test runs its own embedded PostgreSQL (``own_postgres``: stopping the session's shared
one would fail other tests), stops it the hard way (SIGQUIT to the postmaster: PostgreSQL's
immediate shutdown, which needs crash recovery on the next start) while two SDK clients keep
editing, and starts it again on the same socket.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from fieldsync.auth.tokens import issue_token
from fieldsync.live.status import DATABASE_UNAVAILABLE
from fieldsync.store.database import close_pool, connect, create_pool
from fieldsync.store.migrations import migrate
from fieldsync.store.projects import add_member, create_account, create_project, create_user
from fieldsync.sync.messages import ProjectCursor, Status
from fieldsync_client import Project
from tests.client.conftest import ClientFactory
from tests.client.helpers import logged_hashes, server_documents, until
from tests.entities import location_values
from tests.live_server import TEST_SECRET, running_server
from tests.postgres_process import start_postgres, stop_postgres
from tests.sync_client import SyncClient

OUTAGE_SECONDS = 3.0
EDIT_INTERVAL = 0.02


@pytest.fixture
async def outage_project(
    own_postgres: tuple[str, Path],
) -> tuple[uuid.UUID, str, str]:
    url, _ = own_postgres
    conn = await connect(url)
    try:
        await migrate(conn)
        project = await create_project(conn, await create_account(conn, "outage"), "outage")
        tokens = []
        for name in ("a", "b"):
            user = await create_user(conn, name)
            await add_member(conn, project, user, "lead")
            tokens.append(issue_token(TEST_SECRET, user))
    finally:
        await conn.close()
    return project, tokens[0], tokens[1]


async def keep_editing(project: Project, stop: asyncio.Event, edits: list[str]) -> None:
    """Create a location, then rename it, again and again: every edit is one change."""
    n = 0
    while not stop.is_set():
        entity_id = await project.create("location", location_values(n))
        edits.append(entity_id)
        await project.update("location", entity_id, {"name": f"renamed {n}"})
        edits.append(entity_id)
        n += 1
        await asyncio.sleep(EDIT_INTERVAL)


async def test_database_outage_under_load(
    own_postgres: tuple[str, Path],
    outage_project: tuple[uuid.UUID, str, str],
    make_client: ClientFactory,
) -> None:
    url, pgdata = own_postgres
    project, token_a, token_b = outage_project
    options: dict[str, Any] = {
        "database_check_seconds": 0.2,
        "head_poll_seconds": 0.5,
        "health_timeout": 1.0,
    }
    async with running_server(url, **options) as base:
        client_a = make_client(f"ws://{base}", token_a, "a")
        client_b = make_client(f"ws://{base}", token_b, "b")
        a = await client_a.open_project(str(project))
        b = await client_b.open_project(str(project))
        watcher = await SyncClient.connect(base)
        await watcher.hello(token_b, [ProjectCursor(str(project), 0)])
        await watcher.sync_until_synced(str(project))

        stop = asyncio.Event()
        edits_a: list[str] = []
        edits_b: list[str] = []
        load = [
            asyncio.create_task(keep_editing(a, stop, edits_a)),
            asyncio.create_task(keep_editing(b, stop, edits_b)),
        ]
        await asyncio.sleep(1.0)
        before = len(edits_a) + len(edits_b)
        await asyncio.to_thread(stop_postgres, pgdata)
        stopped_at = time.monotonic()

        # Connected clients are told; the server stays up and says why it is unhealthy.
        status = await watcher.next_unabsorbed(within=10)
        assert isinstance(status, Status)
        assert (status.state, status.code) == ("degraded", DATABASE_UNAVAILABLE)
        await until(lambda: client_a.status.server_problem == DATABASE_UNAVAILABLE, 10)
        async with httpx.AsyncClient() as http:
            health = await http.get(f"http://{base}/healthz")
            snapshot = await http.get(
                f"http://{base}/projects/{project}/snapshot",
                headers={"Authorization": f"Bearer {token_a}"},
            )
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable"
        assert health.json()["reason"].startswith("database")
        assert snapshot.status_code == 503
        assert snapshot.json()["code"] == "server_unavailable"
        assert client_a.status.pending > 0  # edits go on, and wait on the device

        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped_at)))
        during = len(edits_a) + len(edits_b) - before
        assert during > 0
        await asyncio.to_thread(start_postgres, pgdata)

        assert await watcher.next_unabsorbed(within=15) == Status("ok")
        await asyncio.sleep(1.0)  # more edits after the recovery
        stop.set()
        await asyncio.gather(*load)

        await client_a.wait_synced(30)
        await client_b.wait_synced(30)
        assert client_a.status.server_problem is None
        assert client_a.status.pending == client_b.status.pending == 0
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://{base}/healthz")).json() == {"status": "ok"}

        pool = await create_pool(url, 1, 2)
        try:
            hashes = await logged_hashes(pool, project)
        finally:
            await close_pool(pool)
        # Every edit was acknowledged (nothing pending) and is in the log exactly once.
        assert len(hashes) == len(set(hashes)) == len(edits_a) + len(edits_b)
        documents = await server_documents(base, token_a, project)
        assert set(documents) == set(edits_a) | set(edits_b)
        head = len(hashes)
        await until(lambda: a.cursor == b.cursor == head, 15, "both clients at the head")
        await watcher.receive_changes_until(str(project), head, within=15)
        assert watcher.replicas[str(project)].heads() == {
            e: sorted(d.get_heads()) for e, d in documents.items()
        }
        for entity_id in list(documents)[::7]:
            heads = sorted(documents[entity_id].get_heads())
            assert await a.heads(entity_id) == await b.heads(entity_id) == heads
        await watcher.close()
