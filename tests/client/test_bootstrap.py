"""The first snapshot of a project: over HTTP, over the WebSocket, and killed halfway."""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import uuid
from pathlib import Path

import asyncpg
import pytest

from fieldsync_client import FieldsyncClient, Project
from tests.client.conftest import ClientFactory, RestartableServer
from tests.client.helpers import (
    finish_worker,
    head_seq,
    logged_hashes,
    seed_activities,
    server_documents,
    spawn_worker,
    values_of,
)
from tests.entities import location_values
from tests.live_server import MemberFactory


async def _assert_equal_to_server(
    project: Project, base: str, token: str, project_id: uuid.UUID
) -> int:
    """Every entity of the local copy has the server's heads and values; how many."""
    documents = await server_documents(base, token, project_id)
    local = {
        entity_id
        for kind in ("activity", "location")
        for entity_id in await project.ids(kind, include_deleted=True)
    }
    assert local == set(documents)
    for entity_id, doc in documents.items():
        assert await project.heads(entity_id) == sorted(doc.get_heads()), entity_id
    for entity_id in sorted(documents)[:: max(1, len(documents) // 20)]:
        kind = "activity" if entity_id.startswith("act-") else "location"
        assert await project.get(kind, entity_id) == values_of(kind, documents[entity_id])
    return len(documents)


async def test_the_first_open_comes_over_http_and_keeps_offline_work(
    server: RestartableServer,
    project: uuid.UUID,
    member: MemberFactory,
    make_client: ClientFactory,
    pool: asyncpg.Pool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, token = await member(project)
    seeded = await seed_activities(pool, project, 120)
    offline = make_client(None, token, "tablet")  # works before it ever reaches the server
    mine = await (await offline.open_project(str(project))).create("location", location_values())
    await offline.close()

    caplog.set_level(logging.DEBUG, logger="fieldsync_client")
    client = make_client(server.url, token, "tablet")
    opened = await client.open_project(str(project))
    assert opened.bootstrapped
    assert f"bootstrapped over HTTP at cursor {len(seeded)}" in caplog.text
    assert "using the WebSocket" not in caplog.text
    await client.wait_synced(15)
    head = await head_seq(pool, project)
    assert head == len(seeded) + 1  # the offline location was pushed
    await asyncio.wait_for(_until_cursor(opened, head), 10)
    assert await _assert_equal_to_server(opened, server.base, token, project) == head
    assert mine in await opened.ids("location")


async def _until_cursor(project: Project, cursor: int) -> None:
    while project.cursor != cursor:  # noqa: ASYNC110 (the cursor has no event of its own)
        await asyncio.sleep(0.01)


async def test_a_websocket_snapshot_in_many_chunks(
    server: RestartableServer,
    project: uuid.UUID,
    member: MemberFactory,
    make_client: ClientFactory,
    pool: asyncpg.Pool,
) -> None:
    _, token = await member(project)
    ids = await seed_activities(pool, project, 300, text_chars=4000)
    client = make_client(server.url, token, "ws-only", http_snapshots=False)
    opened = await client.open_project(str(project))
    await client.wait_synced(30)
    assert opened.cursor == 300
    # The server sends about 512 KiB of documents per chunk: this took more than one.
    stored = client.store.entities(str(project), ids).values()
    assert sum(len(entity.document) for entity in stored) > 512 * 1024
    assert await _assert_equal_to_server(opened, server.base, token, project) == 300


def _stored(path: Path) -> tuple[int | None, int]:
    """(the project's cursor, its entity rows) in a store file, read by plain SQLite."""
    db = sqlite3.connect(path)
    try:
        cursor = db.execute("SELECT cursor FROM projects").fetchone()[0]
        entities = db.execute("SELECT count(*) FROM entities").fetchone()[0]
    finally:
        db.close()
    return cursor, entities


async def test_a_client_killed_mid_bootstrap_bootstraps_again(
    server: RestartableServer,
    project: uuid.UUID,
    member: MemberFactory,
    make_client: ClientFactory,
    pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    _, token = await member(project)
    count = 1000
    await seed_activities(pool, project, count, text_chars=500)
    store = tmp_path / "killed.db"
    for _ in range(2):  # killed twice: the second time on top of a partial store
        victim = await spawn_worker("bootstrap", str(store), str(project), server.url, token)
        assert victim.stdout is not None
        while b"snapshot entities stored" not in await victim.stdout.readline():
            assert victim.returncode is None, "the worker exited before storing anything"
        victim.send_signal(signal.SIGKILL)
        await victim.wait()
        assert victim.returncode == -signal.SIGKILL
        cursor, entities = _stored(store)
        assert cursor is None, "a killed bootstrap must not look finished"
        assert 0 < entities < count, "the kill did not land mid-bootstrap"

    lines = await finish_worker(
        await spawn_worker("bootstrap", str(store), str(project), server.url, token)
    )
    assert lines[-1] == f"bootstrapped {count}"
    assert _stored(store) == (count, count)

    client: FieldsyncClient = make_client(server.url, token, "killed")
    reopened = await client.open_project(str(project))
    await client.wait_synced(15)
    assert reopened.cursor == count
    assert await _assert_equal_to_server(reopened, server.base, token, project) == count
    assert len(await logged_hashes(pool, project)) == count  # the client pushed nothing
