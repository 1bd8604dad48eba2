"""The TypeScript SDK in a real browser (headless Chromium driven by Playwright).

The page loads the bundled SDK, bootstraps the project into IndexedDB, goes offline,
edits, is reloaded while offline (the edit is still there), comes back online; the edit is
logged exactly once and a second browser context receives it live
(``client-sdk/typescript/test/browser.ts`` drives the browser; this test owns the server
and reads the change log).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
from automerge.core import Document

from tests.client.conftest import ClientFactory, OnlineFactory
from tests.client.helpers import logged_hashes, server_documents
from tests.entities import START
from tests.live_server import MemberFactory, free_port, running_server
from tests.typescript.node import DIST, PACKAGE, bundle, chromium, run_script


async def test_offline_edit_in_a_browser_survives_a_reload_and_reaches_another_context(
    database_url: str,
    pool: asyncpg.Pool,
    project: uuid.UUID,
    member: MemberFactory,
    make_client: ClientFactory,
    online: OnlineFactory,
    other_project: uuid.UUID,
) -> None:
    browser_path = chromium()
    bundle()
    origin = f"http://127.0.0.1:{free_port()}"  # the test page's origin (served by the test)
    _, token = await member(project)
    async with running_server(database_url, allowed_origins=[origin]) as base:
        elsewhere = await online(f"ws://{base}", other_project, "elsewhere")
        taken = "taken-" + uuid.uuid4().hex[:8]
        await elsewhere.project.create("plan", {"name": "Elsewhere"}, entity_id=taken)
        await elsewhere.client.wait_synced(10)
        await elsewhere.client.close()
        seeder = make_client(f"ws://{base}", token, "seed")
        seeded = await seeder.open_project(str(project))
        plan = await seeded.create("plan", {"name": "Spring survey"})
        activity = await seeded.create(
            "activity",
            {
                "plan_id": plan,
                "title": "Core sampling",
                "starts_at": START,
                "ends_at": START + timedelta(hours=6),
                "status": "planned",
            },
        )
        await seeder.wait_synced(10)
        await seeder.close()
        logged_before = len(await logged_hashes(pool, project))

        args = {
            "server": f"http://{base}",
            "token": token,
            "project": str(project),
            "activity": activity,
            "taken": taken,
            "origin": origin,
            "chromium": browser_path,
        }
        seen = await run_script(DIST / "test" / "browser.js", args, PACKAGE, 120)

        assert len(await logged_hashes(pool, project)) == logged_before + 1, "logged once"
        documents = await server_documents(base, token, project)
        doc: Document = documents[activity]
        assert seen["heads"] == sorted(h.hex() for h in doc.get_heads())
        assert seen["offlineStatus"] != "online"
        assert [(r["entityId"], r["code"]) for r in seen["rejected"]] == [(taken, "wrong_project")]
        assert taken not in documents
