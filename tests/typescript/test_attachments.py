"""The TypeScript SDK's attachments against a real server (uvicorn, PostgreSQL, local blob
files, a real pgqueuer consumer): attached offline and through a restart, uploaded when the
server is back, cut off mid-upload and resumed by a restarted client from the server's
offset, the same photo sent once, a refused file shown as failed, and the thumbnail
downloaded once the worker made it."""

from __future__ import annotations

import base64
import hashlib
import io
import math
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

from fieldsync.media.blobs import LocalBlobs
from tests.entities import activity_values
from tests.live_server import MemberFactory, free_port, start_server, stop_server
from tests.media.images import photo
from tests.media.service import TEST_LIMITS, queue_consumer
from tests.typescript.conftest import TsFactory
from tests.typescript.node import TsClient

PART = 128 * 1024
HEAD = 64  # the first part of bytes the project already holds (docs/attachments.md)


async def test_offline_attachments_upload_once_resume_after_a_cut_and_become_ready(
    database_url: str, project: uuid.UUID, member: MemberFactory, ts_client: TsFactory,
    tmp_path: Path,
) -> None:  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    _, token = await member(project)
    blobs = LocalBlobs(tmp_path / "blobs")
    options: dict[str, Any] = {"blobs": blobs, "attachment_limits": TEST_LIMITS}
    store = str(tmp_path / "ts.db")

    async def device(**extra: Any) -> TsClient:
        ts = await ts_client()
        await ts.call(
            "open", url=url, token=token, path=store, project=str(project), partBytes=PART, **extra
        )
        return ts

    server, task = await start_server(database_url, port, **options)
    ts = await device()
    activity = "act-" + uuid.uuid4().hex[:8]
    await ts.call("create", type="activity", id=activity, values=activity_values("plan-1"))
    await ts.call("waitSynced")
    await stop_server(server, task)  # the field: no network from here

    data = photo(1000, 800)
    assert len(data) > 4 * PART
    sha = hashlib.sha256(data).hexdigest()
    encoded = base64.b64encode(data).decode()
    first = await ts.call("attach", type="activity", id=activity, data=encoded, fileName="pit.jpg")
    second = await ts.call("attach", type="activity", id=activity, data=encoded)
    status = await ts.call("attachmentStatus", id=first)
    assert (status["status"], status["size"], status["hasLocalCopy"]) == ("local", len(data), True)
    copy = await ts.call("localCopy", id=first)
    assert base64.b64decode(copy["data"]) == data  # the app shows this before any thumbnail
    assert (await ts.call("get", type="activity", id=activity))["attachments"] == [first, second]
    await ts.close()  # the device restarts, still offline

    server, task = await start_server(database_url, port, **options)
    try:
        ts = await device(cutAfterParts=2)  # the network drops after two parts
        cut = await ts.call("waitAttachment", id=first, status=["uploading"])
        while (await ts.call("sent"))["patches"] < 2 or cut["received"] != 2 * PART:
            cut = await ts.call("waitAttachment", id=first, status=["uploading"])
        await ts.close()  # and the device restarts mid-upload

        ts = await device()
        on_server = ["uploaded", "processing", "ready"]
        for attachment in (first, second):
            await ts.call("waitAttachment", id=attachment, status=on_server)
        await ts.call("waitUploadQueue")
        sent = await ts.call("sent")
        rest = len(data) - 2 * PART
        assert sent["bytes"] == rest + HEAD, "resumed at the server's offset; the copy not resent"
        assert sent["patches"] == math.ceil(rest / PART) + 1

        stored = tmp_path / "blobs" / "originals" / sha[:2] / sha
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha
        assert len(list((tmp_path / "blobs" / "originals").rglob("*"))) == 2  # one folder, one file

        text = base64.b64encode(b"field notes, not a photo\n" * 4).decode()
        refused = await ts.call("attach", type="activity", id=activity, data=text)
        failed = await ts.call("waitAttachment", id=refused, status=["failed"])
        assert failed["code"] == "unsupported_type"

        async with queue_consumer(database_url, blobs):
            for attachment in (first, second):
                ready = await ts.call("waitAttachment", id=attachment, status=["ready"])
                assert (ready["size"], ready["received"]) == (len(data), len(data))
        thumb = await ts.call("download", id=first, variant="small")
        assert thumb["contentType"] == "image/jpeg"
        assert Image.open(io.BytesIO(base64.b64decode(thumb["data"]))).size == (256, 205)
        await ts.call("waitSynced")
        values = await ts.call("get", type="activity", id=activity)
        assert values["attachments"] == [first, second, refused]
    finally:
        await stop_server(server, task)
