"""The app's "Attach photo" end to end: a real server on PostgreSQL with local blob files and a
processing worker (real pgqueuer), the demo project, and headless Chromium
(``app/test/attach-e2e.ts`` drives it: offline attach, local copy, offline reload, upload
once online, thumbnail when ready); this test checks what the server holds."""

from __future__ import annotations

import hashlib
from pathlib import Path

from automerge.core import ROOT

from fieldsync.auth.tokens import issue_token
from fieldsync.media.blobs import LocalBlobs
from fieldsync.store.demo import create_demo
from fieldsync.store.postgres import PostgresStorage
from tests.app.build import APP, SCREENSHOTS, build_app
from tests.client.helpers import server_documents, values_of
from tests.live_server import TEST_SECRET, running_server
from tests.media.images import photo
from tests.media.service import TEST_LIMITS, queue_consumer
from tests.typescript.node import chromium, run_script


async def test_a_photo_attached_offline_shows_at_once_then_uploads_and_shows_its_thumbnail(
    database_url: str,
    storage: PostgresStorage,
    tmp_path: Path,
) -> None:
    build_app()
    demo = await create_demo(storage)
    lead, a, _ = demo.users
    blobs = LocalBlobs(tmp_path / "blobs")
    data = photo(640, 480, gps=True, seed=7)
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / "pit.jpg").write_bytes(data)
    async with running_server(database_url, blobs=blobs, attachment_limits=TEST_LIMITS) as base:
        lead_token = issue_token(TEST_SECRET, lead.user_id)
        documents = await server_documents(base, lead_token, demo.project_id)
        camp = next(
            entity_id
            for entity_id, doc in documents.items()
            if "plan_id" in doc.keys(ROOT)
            and values_of("activity", doc)["title"] == "Set up base camp"
        )
        args = {
            "base": base,
            "project": str(demo.project_id),
            "activity": camp,
            "token": issue_token(TEST_SECRET, a.user_id),
            "photo": str(tmp_path / "pit.jpg"),
            "screenshots": str(SCREENSHOTS),
            "chromium": chromium(),
        }
        async with queue_consumer(database_url, blobs):
            seen = await run_script(APP / "test-dist" / "attach-e2e.js", args, APP, 180)
        after = await server_documents(base, lead_token, demo.project_id)

    attachment = seen["attachmentId"]
    assert values_of("activity", after[camp])["attachments"] == [attachment]
    record = values_of("attachment", after[attachment])
    assert (record["status"], record["sha256"], record["size"]) == ("ready", sha, len(data))
    assert record["file_name"] == "pit.jpg"
    stored = tmp_path / "blobs" / "originals" / sha[:2] / sha
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == sha
    assert seen["offlineStatus"] == "local"
    assert seen["thumbnailWidth"] == 256
    assert seen["readyText"] == "Ready"
    assert "uploads when online" in seen["waitingText"]
    assert seen["localShownMs"] < 2000, seen["localShownMs"]
