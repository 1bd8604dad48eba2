"""A lead offline for a month: 1,000 local edits across 200 entities, 1,000 by others meanwhile.

The same scenario as ``bench/resync.py`` at full size (it takes a few seconds): the lead's
client resyncs by itself and ends with the server's documents, and so does the other
member's client; every change is logged exactly once.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg

from fieldsync_client import Project
from tests.client.conftest import ClientFactory, OnlineFactory, RestartableServer
from tests.client.helpers import head_seq, logged_hashes, server_documents, until, values_of
from tests.entities import START, activity_values, location_values

ENTITIES = 200
EDITS = 1_000


async def _edit(project: Project, kind: str, entity_id: str, n: int, who: str) -> None:
    if kind == "location":
        await project.update(kind, entity_id, {"address": f"{n} Ridge Road ({who})"})
    elif n % 3 == 0:
        await project.splice_text(kind, entity_id, "description", 0, 0, f"{who} {n}. ")
    elif n % 3 == 1:
        await project.update(kind, entity_id, {"title": f"Leg {n} ({who})"})
    else:
        ends = START + timedelta(days=30, minutes=n)
        await project.update(kind, entity_id, {"ends_at": ends})


async def _edits(project: Project, entities: list[tuple[str, str]], who: str) -> None:
    for n in range(EDITS):
        kind, entity_id = entities[n % len(entities)]
        await _edit(project, kind, entity_id, n, who)


async def test_a_month_offline_resyncs_and_converges(
    server: RestartableServer,
    project: uuid.UUID,
    online: OnlineFactory,
    make_client: ClientFactory,
    pool: asyncpg.Pool,
) -> None:
    lead_client, lead, lead_token, _ = await online(server.url, project, "lead")
    entities = []
    for i in range(ENTITIES):
        kind = "location" if i % 4 == 0 else "activity"
        values = location_values(i) if kind == "location" else activity_values("plan-1", day=i)
        entities.append((kind, await lead.create(kind, values)))
    await lead_client.wait_synced(30)
    other_client, other, other_token, _ = await online(server.url, project, "other")

    await lead_client.close()  # the lead's tablet leaves the network for a month
    offline_client = make_client(None, lead_token, "lead")
    offline = await offline_client.open_project(str(project))
    await _edits(offline, entities, "lead")
    assert offline.pending_count() == EDITS
    await offline_client.close()
    await _edits(other, list(reversed(entities)), "other")
    await other_client.wait_synced(30)
    assert await head_seq(pool, project) == ENTITIES + EDITS

    back_client = make_client(server.url, lead_token, "lead")
    back = await back_client.open_project(str(project))
    await back_client.wait_synced(60)
    total = ENTITIES + 2 * EDITS
    await until(lambda: back.cursor == other.cursor == total, 30, "both clients at the head")

    assert back.pending_count() == 0
    assert back_client.status.rejected == 0
    hashes = await logged_hashes(pool, project)
    assert len(hashes) == len(set(hashes)) == total
    documents = await server_documents(server.base, other_token, project)
    assert sorted(documents) == sorted(entity_id for _, entity_id in entities)
    for kind, entity_id in entities:
        heads = sorted(documents[entity_id].get_heads())
        assert await back.heads(entity_id) == await other.heads(entity_id) == heads
        values = await back.get(kind, entity_id)
        assert values == await other.get(kind, entity_id) == values_of(kind, documents[entity_id])
    # Both sides' edits are there: the lead's and the other member's.
    descriptions = [(await back.get(k, e))["description"] for k, e in entities if k == "activity"]
    assert any("lead " in str(d) for d in descriptions)
    assert any("other " in str(d) for d in descriptions)
