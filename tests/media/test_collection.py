"""Collection on a real database and blob store: unreferenced attachments go after the
grace period and referenced ones never; abandoned uploads expire. Time passing is the
rows' timestamps moved back, so nothing waits."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from fieldsync.media.blobs import LocalBlobs, original_key
from fieldsync.media.entity import values_of
from fieldsync.media.gc import collect, expire_uploads
from fieldsync.model.automerge_format.documents import load_document
from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import create_entity, update_entity
from fieldsync.store.postgres import PostgresStorage
from fieldsync.store.records import Accepted
from tests.entities import activity_values, location_values, new_id
from tests.live_server import MemberFactory
from tests.media.images import photo
from tests.media.service import attachment_server, attachment_url, send_part

GRACE = 3600.0


@pytest.fixture
async def storage(database_url: str) -> AsyncIterator[PostgresStorage]:
    opened = await PostgresStorage.open(database_url, max_size=2)
    yield opened
    await opened.close()


async def upload(base: str, project: uuid.UUID, token: str, seed: int) -> tuple[str, str]:
    """A whole photo uploaded over HTTP; its attachment id and SHA-256."""
    aid = f"att-{seed}-{uuid.uuid4().hex[:6]}"
    data = photo(64, 48, seed=seed)
    async with httpx.AsyncClient() as http:
        answer = await send_part(
            http, attachment_url(base, project, aid), token, data, 0, len(data)
        )
    assert answer.status_code == 201, answer.text
    return aid, answer.json()["sha256"]


async def write(
    storage: PostgresStorage,
    project: uuid.UUID,
    entity_type: str,
    entity_id: str,
    values: dict[str, object],
) -> None:
    """Create the entity, or set ``values`` on the stored one."""
    assert storage.attachments is not None
    stored = await storage.attachments.entity_document(project, entity_id)
    if stored is None:
        _, change = create_entity(entity_type, values)
    else:
        change = update_entity(load_document(stored), entity_type, values)
    [result] = await storage.change_log().append(
        project, [EntityChanges(entity_type, entity_id, [change])], "test"
    )
    assert isinstance(result, Accepted), result


async def status_of(pool: asyncpg.Pool, aid: str) -> str:
    async with pool.acquire() as conn:
        return str(
            await conn.fetchval("SELECT status FROM attachments WHERE attachment_id = $1", aid)
        )


async def backdate(pool: asyncpg.Pool, table: str, column: str, *ids: str) -> None:
    """Two hours ago, as far as ``column`` of these attachments' rows can tell."""
    async with pool.acquire() as conn:
        await conn.execute(
            f"UPDATE {table} SET {column} = now() - interval '2 hours'"
            " WHERE attachment_id = ANY($1)",
            list(ids),
        )


async def test_referenced_attachments_stay_and_unreferenced_go_after_the_grace_period(
    database_url: str,
    project: uuid.UUID,
    member: MemberFactory,
    local_blobs: LocalBlobs,
    storage: PostgresStorage,
    pool: asyncpg.Pool,
) -> None:
    _, token = await member(project, "specialist")
    async with attachment_server(database_url, local_blobs) as base:
        on_activity, _ = await upload(base, project, token, 1)
        on_location, _ = await upload(base, project, token, 2)
        loose, loose_sha = await upload(base, project, token, 3)
    activity, location = new_id(), new_id()
    await write(
        storage, project, "location", location, {**location_values(), "attachments": [on_location]}
    )
    await write(
        storage,
        project,
        "activity",
        activity,
        {**activity_values(new_id()), "attachments": [on_activity]},
    )
    changelog = storage.change_log()
    everyone = (on_activity, on_location, loose)
    await backdate(pool, "attachments", "created_at", *everyone)

    # First pass: the loose one is only noted.
    assert await collect(storage, changelog, local_blobs, GRACE) == []
    # Even if all three had been noted long ago, only the unreferenced one goes.
    await backdate(pool, "attachments", "unreferenced_since", *everyone)
    assert await collect(storage, changelog, local_blobs, GRACE) == [loose]
    assert [await status_of(pool, a) for a in everyone] == ["uploaded", "uploaded", "deleted"]
    assert await local_blobs.size(original_key(loose_sha)) is None
    document = await storage.attachments.entity_document(project, loose)
    assert document is not None
    assert values_of("attachment", document)["deleted"] is True

    # Deleting the activity unreferences its photo: noted first, removed after the grace.
    await write(storage, project, "activity", activity, {"deleted": True})
    assert await collect(storage, changelog, local_blobs, GRACE) == []
    await backdate(pool, "attachments", "unreferenced_since", on_activity)
    assert await collect(storage, changelog, local_blobs, GRACE) == [on_activity]
    assert await status_of(pool, on_location) == "uploaded"


async def test_a_project_whose_read_models_predate_references_is_left_alone(
    database_url: str,
    project: uuid.UUID,
    member: MemberFactory,
    local_blobs: LocalBlobs,
    storage: PostgresStorage,
    pool: asyncpg.Pool,
) -> None:
    _, token = await member(project, "specialist")
    async with attachment_server(database_url, local_blobs) as base:
        referenced, _ = await upload(base, project, token, 4)
    await write(
        storage, project, "location", new_id(), {**location_values(), "attachments": [referenced]}
    )
    await backdate(pool, "attachments", "created_at", referenced)
    await backdate(pool, "attachments", "unreferenced_since", referenced)
    async with pool.acquire() as conn:  # as a row written before migration 0007 looks
        await conn.execute(
            "UPDATE rm_locations SET attachments = NULL WHERE project_id = $1", project
        )
    assert await collect(storage, storage.change_log(), local_blobs, GRACE) == []
    assert await status_of(pool, referenced) == "uploaded"
    await storage.maintenance.rebuild_read_models(project)
    assert await collect(storage, storage.change_log(), local_blobs, GRACE) == []
    assert await status_of(pool, referenced) == "uploaded"


async def test_an_abandoned_upload_expires_and_the_id_can_start_again(
    database_url: str,
    project: uuid.UUID,
    member: MemberFactory,
    local_blobs: LocalBlobs,
    storage: PostgresStorage,
    pool: asyncpg.Pool,
) -> None:
    _, token = await member(project, "specialist")
    data = photo(200, 150)
    port = storage.attachments
    parts_dir = Path(local_blobs.root) / "parts"
    auth = {"Authorization": f"Bearer {token}"}
    async with attachment_server(database_url, local_blobs) as base, httpx.AsyncClient() as http:
        url = attachment_url(base, project, "abandoned-" + uuid.uuid4().hex[:6])
        aid = url.rsplit("/", 1)[1]
        assert (await send_part(http, url, token, data, 0, 1000)).status_code == 202
        assert await expire_uploads(port, local_blobs, GRACE) == []  # not idle long enough
        assert (await http.get(url, headers=auth)).json()["received"] == 1000

        await backdate(pool, "attachment_uploads", "updated_at", aid)
        assert await expire_uploads(port, local_blobs, GRACE) == [aid]
        assert (await http.get(url, headers=auth)).status_code == 404
        assert not (parts_dir / aid).exists()

        # A part that arrives while a pass is at work keeps the record, but the pass
        # removes the parts: the next part sends the client back to the start.
        assert (await send_part(http, url, token, data, 0, 1000)).status_code == 202
        await backdate(pool, "attachment_uploads", "updated_at", aid)
        [idle] = await port.idle_uploads(GRACE)
        assert (await send_part(http, url, token, data, 1000, 2000)).status_code == 202
        await local_blobs.delete_parts(aid)
        assert not await port.forget_idle_upload(idle)
        last = await send_part(http, url, token, data, 2000, len(data))
        answer = (last.status_code, last.json()["code"], last.json()["received"])
        assert answer == (409, "offset_mismatch", 0)
        assert (await http.get(url, headers=auth)).status_code == 404

        whole = await send_part(http, url, token, data, 0, len(data))
        assert whole.status_code == 201, whole.text
        assert await local_blobs.read(original_key(whole.json()["sha256"])) == data
