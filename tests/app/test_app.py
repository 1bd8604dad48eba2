"""The web app end to end: a real server on PostgreSQL serving ``/app/``, the demo project,
and headless Chromium with a browser context per member (``app/test/e2e.ts`` drives them;
this test owns the server and checks what the server holds)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
from automerge.core import ROOT

from fieldsync.auth.tokens import issue_token
from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import create_entity
from fieldsync.store.demo import Demo, create_demo
from fieldsync.store.postgres import PostgresStorage
from fieldsync.store.records import Accepted
from tests.app.build import APP, SCREENSHOTS, build_app
from tests.client.helpers import server_documents, values_of
from tests.live_server import TEST_SECRET, running_server
from tests.typescript.node import chromium, run_script


async def _double_book(storage: PostgresStorage, demo: Demo, activity: str, day: datetime) -> str:
    """A second summoning for the first specialist, overlapping their base-camp day."""
    specialist = next(u for u in demo.users if u.level == "specialist")
    summoning = str(uuid.uuid4())
    _, change = create_entity(
        "summoning",
        {
            "activity_id": activity,
            "user_id": str(specialist.user_id),
            "starts_at": day + timedelta(hours=2),
            "ends_at": day + timedelta(hours=4),
            "status": "proposed",
        },
    )
    [result] = await storage.change_log().append(
        demo.project_id, [EntityChanges("summoning", summoning, [change])], sender="seed"
    )
    assert isinstance(result, Accepted), result
    return summoning


async def test_the_app_offline_conflict_resolution_timeline_and_viewer(
    database_url: str, storage: PostgresStorage
) -> None:
    build_app()
    demo = await create_demo(storage)
    lead, a, b = demo.users
    viewer = await storage.admin.create_user("Vera Viewer", demo.account_id, None)
    await storage.admin.add_member(demo.project_id, viewer, "viewer")
    tokens = {
        "lead": issue_token(TEST_SECRET, lead.user_id),
        "a": issue_token(TEST_SECRET, a.user_id),
        "b": issue_token(TEST_SECRET, b.user_id),
        "viewer": issue_token(TEST_SECRET, viewer),
    }
    async with running_server(database_url) as base:
        documents = await server_documents(base, tokens["lead"], demo.project_id)
        titles = {
            values_of("activity", doc)["title"]: entity_id
            for entity_id, doc in documents.items()
            if "plan_id" in doc.keys(ROOT)
        }
        camp = titles["Set up base camp"]
        camp_start = values_of("activity", documents[camp])["starts_at"]
        assert isinstance(camp_start, datetime)
        doubled = await _double_book(storage, demo, titles["GNSS control network"], camp_start)

        async with httpx.AsyncClient() as http:
            page = await http.get(f"http://{base}/app/")
            worker = await http.get(f"http://{base}/app/sw.js")
        assert page.status_code == 200
        assert "app.js" in page.text
        assert worker.headers["cache-control"] == "no-cache"

        args = {
            "base": base,
            "project": str(demo.project_id),
            "activity": camp,
            "tokens": tokens,
            "screenshots": str(SCREENSHOTS),
            "chromium": chromium(),
        }
        seen = await run_script(APP / "test-dist" / "e2e.js", args, APP, 240)

        after = await server_documents(base, tokens["lead"], demo.project_id)
    camp_now = values_of("activity", after[camp])
    assert camp_now["starts_at"] == datetime(2027, 6, 7, 6, 30, tzinfo=UTC)
    assert camp_now["title"] == "Set up base camp", "the viewer's forced push was refused"
    assert [r["code"] for r in seen["refused"]] == ["forbidden"]
    assert seen["start"] == "2027-06-07T06:30:00.000Z"
    assert seen["offlineState"] != "online"
    assert seen["timelineLatencyMs"] < 1000, seen["timelineLatencyMs"]
    assert doubled in seen["doubleBooked"]
    assert seen["hosts"] == [base], f"requests to other hosts: {seen['hosts']}"
    assert len(seen["screenshots"]) == 2 * 10
    sizes = [(SCREENSHOTS / p.rsplit("/", 1)[-1]).stat().st_size for p in seen["screenshots"]]
    assert min(sizes) > 1000
