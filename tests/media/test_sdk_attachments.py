"""The Python SDK with attachments: attach offline, survive a restart, upload when online,
see the server's status, fetch another member's thumbnail (real server, PostgreSQL, S3)."""

from __future__ import annotations

import asyncio
import io
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

from fieldsync.media.blobs import S3Blobs
from fieldsync_client import FieldsyncClient
from tests.entities import activity_values
from tests.live_server import MemberFactory, free_port, start_server, stop_server
from tests.media.images import photo
from tests.media.service import TEST_LIMITS, queue_consumer

FAST: dict[str, Any] = {"backoff_base": 0.05, "backoff_cap": 0.25, "connect_timeout": 2}


async def test_offline_attach_uploads_once_and_both_members_see_it_ready(
    database_url: str, s3_blobs: S3Blobs, project: uuid.UUID, member: MemberFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    _, lead_token = await member(project)
    _, viewer_token = await member(project, "viewer")
    options: dict[str, Any] = {"blobs": s3_blobs, "attachment_limits": TEST_LIMITS}
    server, task = await start_server(database_url, port, **options)
    lead = FieldsyncClient(url, lead_token, tmp_path / "lead.db", **FAST)
    opened = await lead.open_project(str(project))
    activity = "act-" + uuid.uuid4().hex[:8]
    await opened.create("activity", activity_values("plan-1"), entity_id=activity)
    await lead.wait_synced(10)
    await stop_server(server, task)  # the field: no network from here

    data = photo(640, 480, gps=True, seed=31)
    first = await opened.attach("activity", activity, data, file_name="../trench.jpg")
    second = await opened.attach("activity", activity, data, file_name="trench again.jpg")
    assert await opened.attachment_status(first) == "waiting_to_upload"
    local = opened.local_copy(first)
    assert local is not None
    assert local.read_bytes() == data  # the app shows this before any thumbnail
    assert opened.local_copy(second) == local  # one local file for the same photo
    assert (await opened.get("activity", activity))["attachments"] == [first, second]
    await lead.close()  # the device restarts while still offline

    lead = FieldsyncClient(url, lead_token, tmp_path / "lead.db", **FAST)
    opened = await lead.open_project(str(project))
    server, task = await start_server(database_url, port, **options)
    try:
        async with queue_consumer(database_url, s3_blobs):
            for _ in range(600):
                statuses = {await opened.attachment_status(i) for i in (first, second)}
                if statuses == {"ready"}:
                    break
                await asyncio.sleep(0.05)
            assert await opened.attachment_status(first) == "ready"
            assert await opened.attachment_status(second) == "ready"

        viewer = FieldsyncClient(url, viewer_token, tmp_path / "viewer.db", **FAST)
        try:
            seen = await viewer.open_project(str(project))
            await viewer.wait_synced(10)
            assert (await seen.get("activity", activity))["attachments"] == [first, second]
            assert await seen.attachment_status(first) == "ready"
            values = await seen.get("attachment", first)
            assert values["file_name"] == "trench.jpg"
            thumb = await seen.download_attachment(first, "small")
            assert Image.open(io.BytesIO(thumb)).size == (256, 192)
        finally:
            await viewer.close()
        objects = s3_blobs._client.list_objects_v2(Bucket=s3_blobs.bucket)["Contents"]
        originals = [o["Key"] for o in objects if o["Key"].startswith("originals/")]
        assert len(originals) == 1  # the same photo attached twice is one blob
    finally:
        await lead.close()
        await stop_server(server, task)
