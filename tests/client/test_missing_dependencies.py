"""A pushed change whose dependencies the server never logged: the SDK sends them too."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import asyncpg

from fieldsync.model.automerge_format.changes import parse_change
from tests.client.conftest import ClientFactory, RestartableServer
from tests.client.helpers import logged_hashes, server_documents, values_of
from tests.entities import location_values
from tests.live_server import MemberFactory


def _lose_oldest_outbox_rows(path: Path, count: int) -> list[bytes]:
    """Delete the oldest outbox rows, as a lost write or an old backup would; their hashes."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT id, hash FROM outbox ORDER BY id LIMIT ?", (count,)).fetchall()
        db.executemany("DELETE FROM outbox WHERE id = ?", [(row[0],) for row in rows])
        db.commit()
    finally:
        db.close()
    return [bytes(row[1]) for row in rows]


async def test_changes_the_server_lacks_are_sent_again_from_the_document(
    server: RestartableServer,
    project: uuid.UUID,
    member: MemberFactory,
    make_client: ClientFactory,
    pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    _, token = await member(project)
    offline = make_client(None, token, "tablet")
    mine = await offline.open_project(str(project))
    site = await mine.create("location", location_values(1))
    await mine.update("location", site, {"name": "Depot"})
    await mine.update("location", site, {"address": "1 Mill Lane"})
    other = await mine.create("location", location_values(2))
    changes = [entry.change for entry in offline.store.pending_changes(str(project))]
    await offline.close()
    # The creation and the first edit of ``site`` are gone from the outbox: the server has
    # never seen them, and the remaining edit builds on them.
    lost = _lose_oldest_outbox_rows(tmp_path / "tablet.db", 2)
    assert lost == [parse_change(change).hash for change in changes[:2]]

    client = make_client(server.url, token, "tablet")
    reopened = await client.open_project(str(project))
    await client.wait_synced(15)

    assert await reopened.rejected_changes() == []
    assert client.status.rejected == 0
    hashes = await logged_hashes(pool, project)
    assert sorted(hashes) == sorted(parse_change(change).hash for change in changes)
    documents = await server_documents(server.base, token, project)
    assert sorted(documents) == sorted([site, other])
    for entity in (site, other):
        assert await reopened.heads(entity) == sorted(documents[entity].get_heads())
    assert values_of("location", documents[site]) == {
        **location_values(1),
        "name": "Depot",
        "address": "1 Mill Lane",
    }
