"""The outbox: it survives the client, it is pushed once, and refusals stay visible."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from fieldsync_client import ConnectionState, EntityNotFound, RejectedChange
from tests.client.conftest import ClientFactory, OnlineFactory, RestartableServer
from tests.client.helpers import logged_hashes, server_documents, until, values_of
from tests.entities import location_values, new_id


async def test_an_outbox_survives_a_new_client_and_is_pushed_once(
    server: RestartableServer,
    project: uuid.UUID,
    online: OnlineFactory,
    make_client: ClientFactory,
    pool: asyncpg.Pool,
) -> None:
    first, project_a, token, _ = await online(server.url, project, "tablet")
    assert project_a.bootstrapped
    assert project_a.cursor == 0

    await server.stop()
    await until(lambda: first.status.connection is ConnectionState.OFFLINE, what="offline")
    sites = [await project_a.create("location", location_values(i)) for i in range(3)]
    await project_a.update("location", sites[0], {"name": "Depot"})
    await project_a.update("location", sites[1], {"address": None})
    assert project_a.pending_count() == 5
    assert first.status.pending == 5
    await first.close()  # the app quits while offline

    second = make_client(server.url, token, "tablet")  # the same store file
    reopened = await second.open_project(str(project))  # offline: returns the local copy
    assert reopened.pending_count() == 5
    assert (await reopened.get("location", sites[0]))["name"] == "Depot"
    assert "address" not in await reopened.get("location", sites[1])

    await server.start()
    await second.wait_synced(15)
    assert reopened.pending_count() == 0
    hashes = await logged_hashes(pool, project)
    assert len(hashes) == len(set(hashes)) == 5

    documents = await server_documents(server.base, token, project)
    assert sorted(documents) == sorted(sites)
    for site in sites:
        assert await reopened.heads(site) == sorted(documents[site].get_heads())
        assert await reopened.get("location", site) == values_of("location", documents[site])

    # A reconnect pushes nothing again and logs nothing new.
    await server.stop()
    await server.start()
    await second.wait_synced(15)
    assert len(await logged_hashes(pool, project)) == 5


async def test_a_refused_change_stays_visible_and_is_never_sent_again(
    server: RestartableServer,
    project: uuid.UUID,
    other_project: uuid.UUID,
    online: OnlineFactory,
    make_client: ClientFactory,
    pool: asyncpg.Pool,
) -> None:
    elsewhere, theirs, _, _ = await online(server.url, other_project, "elsewhere")
    taken = f"site-{new_id()}"
    await theirs.create("location", location_values(), entity_id=taken)
    await elsewhere.wait_synced(10)

    client, mine, token, _ = await online(server.url, project, "mine")
    refusals: list[list[RejectedChange]] = []
    mine.on_rejected(refusals.append)

    await server.stop()
    kept = await mine.create("location", location_values(1))
    await mine.create("location", location_values(2), entity_id=taken)
    await mine.update("location", taken, {"name": "Pushed with it, refused with it"})
    await server.start()
    await client.wait_synced(15)

    rejected = await mine.rejected_changes()
    assert [(r.entity_type, r.entity_id, r.code) for r in rejected] == [
        ("location", taken, "wrong_project"),
        ("location", taken, "wrong_project"),
    ]
    assert "another project" in rejected[0].message
    assert [r.id for batch in refusals for r in batch] == [r.id for r in rejected]
    assert client.status.rejected == 2
    assert client.status.pending == 0
    # The local copy is back to the server's: the refused entity is gone, the other stays.
    with pytest.raises(EntityNotFound):
        await mine.get("location", taken)
    assert list(await mine.list("location")) == [kept]
    assert len(await logged_hashes(pool, project)) == 1

    # Never retried: not after a reconnect, not by a new client on the same store.
    await client.close()
    again = make_client(server.url, token, "mine")
    reopened = await again.open_project(str(project))
    await again.wait_synced(10)
    assert [r.id for r in await reopened.rejected_changes()] == [r.id for r in rejected]
    assert len(await logged_hashes(pool, project)) == 1
    assert await reopened.dismiss_rejected() == 2
    assert await reopened.rejected_changes() == []
    assert again.status.rejected == 0

    # The id now belongs to the other project; a fresh edit elsewhere still syncs.
    await reopened.update("location", kept, {"name": "Still fine"})
    await again.wait_synced(10)
    assert len(await logged_hashes(pool, project)) == 2
