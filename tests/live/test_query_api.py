"""The HTTP query API on a real server (uvicorn, real sockets) and a real PostgreSQL: every
endpoint, filters, pages while writes go on, the seq a response reflects while pushes
commit, authorisation, every bad parameter, members' sync health from real sync sessions,
CORS, and storage down."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from fieldsync.auth.tokens import issue_token
from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import create_entity
from fieldsync.store.memory import MemoryStorage
from fieldsync.store.postgres import PostgresStorage
from fieldsync.store.projects import remove_member
from fieldsync.store.records import Accepted
from fieldsync.sync.messages import Hello, ProjectCursor, Welcome
from tests.entities import START, activity_values, new_id, summoning_values
from tests.live_server import TEST_SECRET, MemberFactory, running_server
from tests.sync_client import SyncClient

APP = "https://app.example.org"
HOUR = timedelta(hours=1)


@pytest.fixture(scope="module")
async def api(database_url: str) -> AsyncIterator[str]:
    async with running_server(database_url, allowed_origins=[APP]) as base:
        yield base


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


class Writer:
    """Appends to a project through the storage the server reads."""

    def __init__(self, pool: asyncpg.Pool, database_url: str, project: uuid.UUID) -> None:
        self.log = PostgresStorage(pool, database_url).change_log()
        self.project = project
        self.plan = new_id()
        self.locations = [new_id(), new_id()]

    async def activities(self, count: int, offset: int = 0) -> list[str]:
        ids, items = [], []
        for i in range(offset, offset + count):
            values = activity_values(self.plan, self.locations[i % 2])
            values["starts_at"] = START + i * 5 * HOUR
            values["ends_at"] = START + i * 5 * HOUR + 2 * HOUR
            entity_id = new_id()
            ids.append(entity_id)
            items.append(
                EntityChanges("activity", entity_id, [create_entity("activity", values)[1]])
            )
        await self.append(items)
        return ids

    async def append(self, items: list[EntityChanges]) -> None:
        results = await self.log.append(self.project, items, "tester")
        assert all(isinstance(r, Accepted) for r in results), results


@pytest.fixture
def writer(pool: asyncpg.Pool, database_url: str, project: uuid.UUID) -> Writer:
    return Writer(pool, database_url, project)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def get(
    http: httpx.AsyncClient, api: str, project: uuid.UUID, what: str, token: str, **params: Any
) -> httpx.Response:
    return await http.get(
        f"http://{api}/api/v1/projects/{project}/{what}", params=params, headers=auth(token)
    )


async def test_every_endpoint_for_a_viewer(
    api: str, http: httpx.AsyncClient, project: uuid.UUID, member: MemberFactory, writer: Writer
) -> None:
    _, token = await member(project, "viewer")
    ids = await writer.activities(6)
    summoning = summoning_values(ids[0], new_id())
    await writer.append(
        [EntityChanges("summoning", new_id(), [create_entity("summoning", summoning)[1]])]
    )
    for what in ("activities", "summonings", "conflicts", "members/health"):
        answer = await get(http, api, project, what, token)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/json"
        body = answer.json()
        assert set(body) == {"project_id", "seq", "items", "next_cursor"}
        assert (body["project_id"], body["seq"], body["next_cursor"]) == (str(project), 7, None)
    activities = (await get(http, api, project, "activities", token)).json()["items"]
    assert [a["entity_id"] for a in activities] == ids
    assert activities[0]["starts_at"] == "2026-03-02T08:00:00Z"
    assert set(activities[0]) == {
        "entity_id", "plan_id", "title", "location_id", "starts_at", "ends_at", "status",
        "tasks_total", "tasks_done", "deleted", "last_seq",
    }  # fmt: skip
    summonings = (await get(http, api, project, "summonings", token)).json()["items"]
    assert [(s["activity_id"], s["last_seq"]) for s in summonings] == [(ids[0], 7)]
    members = (await get(http, api, project, "members/health", token)).json()["items"]
    assert [(m["level"], m["connected"], m["last_seen_at"]) for m in members] == [
        ("viewer", False, None)
    ]


async def test_filters_over_http(
    api: str, http: httpx.AsyncClient, project: uuid.UUID, member: MemberFactory, writer: Writer
) -> None:
    _, token = await member(project)
    ids = await writer.activities(10)

    async def found(**params: Any) -> list[str]:
        answer = await get(http, api, project, "activities", token, **params)
        assert answer.status_code == 200, answer.text
        return [a["entity_id"] for a in answer.json()["items"]]

    assert await found(location_id=writer.locations[1]) == ids[1::2]
    assert await found(location_id=writer.locations) == ids
    # 08:00, 13:00, 18:00, 23:00, ... for 2 hours: [10:00, 23:00) overlaps 13:00 and 18:00.
    window = {"from": "2026-03-02T10:00:00Z", "to": "2026-03-02T23:00:00+00:00"}
    assert await found(**window) == ids[1:3]
    assert await found(**{"from": "2026-03-02T13:30:00+02:00", "to": "2026-03-02T13:30:00Z"}) == [
        ids[1]
    ]
    assert await found(plan_id=writer.plan, status="planned") == ids
    assert await found(status="done") == []


async def test_pages_concatenate_while_writes_happen_between_them(
    api: str, http: httpx.AsyncClient, project: uuid.UUID, member: MemberFactory, writer: Writer
) -> None:
    _, token = await member(project)
    original = await writer.activities(11)
    seen: list[dict[str, Any]] = []
    seqs = []
    cursor = None
    round_ = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        body = (await get(http, api, project, "activities", token, **params)).json()
        seen.extend(body["items"])
        seqs.append(body["seq"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
        round_ += 1  # a write between pages: before, among and after the rows paged
        await writer.activities(1, offset=[-3, 4, 30][round_ % 3] + round_)
    keys = [(a["starts_at"], a["entity_id"]) for a in seen]
    assert len(keys) == len(set(keys)), "no duplicates"
    assert keys == sorted(keys), "in order"
    assert set(original) <= {a["entity_id"] for a in seen}, "no gaps"
    assert seqs == sorted(seqs)
    assert seqs[-1] > seqs[0], "each page names the seq it read at"


async def test_seq_and_rows_agree_while_pushes_commit(
    api: str, http: httpx.AsyncClient, project: uuid.UUID, member: MemberFactory, writer: Writer
) -> None:
    """Every append adds one activity at the next seq: a response at seq N holds exactly
    the activities of seqs 1..N."""
    _, token = await member(project)

    async def keep_writing() -> None:
        for i in range(40):
            await writer.activities(1, offset=i)

    writing = asyncio.create_task(keep_writing())
    seqs = set()
    while not writing.done():
        body = (await get(http, api, project, "activities", token, limit=500)).json()
        assert sorted(a["last_seq"] for a in body["items"]) == list(range(1, body["seq"] + 1))
        seqs.add(body["seq"])
    await writing
    assert len(seqs) > 3


async def test_authorisation(
    api: str,
    http: httpx.AsyncClient,
    project: uuid.UUID,
    other_project: uuid.UUID,
    member: MemberFactory,
    pool: asyncpg.Pool,
) -> None:
    removed, removed_token = await member(project, "specialist")
    _, stranger = await member(other_project)
    async with pool.acquire() as conn:
        await remove_member(conn, project, removed)
    base = f"http://{api}/api/v1/projects"
    for what in ("activities", "summonings", "conflicts", "members/health"):
        missing = await http.get(f"{base}/{project}/{what}")
        assert missing.status_code == 401
        assert missing.json()["code"] == "invalid_token"
        bad = await http.get(f"{base}/{project}/{what}", headers=auth("not-a-token"))
        assert (bad.status_code, bad.json()["code"]) == (401, "invalid_token")
        answers = [
            await http.get(f"{base}/{project}/{what}", headers=auth(stranger)),
            await http.get(f"{base}/{project}/{what}", headers=auth(removed_token)),
            await http.get(f"{base}/{uuid.uuid4()}/{what}", headers=auth(stranger)),
            await http.get(f"{base}/not-a-uuid/{what}", headers=auth(stranger)),
        ]
        assert {(a.status_code, a.content) for a in answers} == {
            (
                404,
                b'{"code":"project_unavailable","message":"no such project, or not a member"}',
            )
        }


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("activities", {"colour": "red"}, "colour"),
    ("activities", {"from": "2026-03-02"}, "from"),
    ("activities", {"to": "2026-03-02T08:00:00"}, "to"),
    ("activities", {"from": "2026-03-03T00:00:00Z", "to": "2026-03-02T00:00:00Z"}, "from"),
    ("activities", {"limit": "0"}, "limit"),
    ("activities", {"limit": "501"}, "limit"),
    ("activities", {"cursor": "garbage.garbage"}, "cursor"),
    ("activities", {"status": "asleep"}, "status"),
    ("activities", {"plan_id": ["a", "b"]}, "plan_id"),
    ("activities", {"location_id": "no spaces"}, "location_id"),
    ("activities", {"include_deleted": "perhaps"}, "include_deleted"),
    ("summonings", {"user_id": "nobody"}, "user_id"),
    ("summonings", {"status": "planned"}, "status"),
    ("summonings", {"from": "yesterday"}, "from"),
    ("conflicts", {"status": "closed"}, "status"),
    ("conflicts", {"resolved_since_seq": "x", "status": "all"}, "resolved_since_seq"),
    ("conflicts", {"resolved_since_seq": "3"}, "resolved_since_seq"),
    ("members/health", {"limit": "-1"}, "limit"),
    ("members/health", {"user_id": str(uuid.uuid4())}, "user_id"),
]


async def test_every_bad_parameter_is_a_400_naming_it(
    api: str, http: httpx.AsyncClient, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project, "viewer")
    for what, params, parameter in BAD:
        answer = await get(http, api, project, what, token, **params)
        assert answer.status_code == 400, (what, params, answer.text)
        body = answer.json()
        assert set(body) == {"error", "parameter", "message"}
        assert (body["error"], body["parameter"]) == ("bad_parameter", parameter), body
        assert body["message"]
    # A cursor of another query: also a 400, never a 500.
    first = (await get(http, api, project, "conflicts", token, status="all", limit=1)).json()
    assert first["next_cursor"] is None
    answer = await get(http, api, project, "activities", token, cursor="eyJ4Ijox.AAAAAAAAAAAAAAAA")
    assert (answer.status_code, answer.json()["parameter"]) == (400, "cursor")


async def test_members_sync_health_from_real_sessions(
    api: str, http: httpx.AsyncClient, project: uuid.UUID, member: MemberFactory
) -> None:
    lead, token = await member(project)
    viewer, viewer_token = await member(project, "viewer")
    client = await SyncClient.connect(api)
    try:
        await client.send(
            Hello(
                (1,),
                token,
                "tablet-1",
                (ProjectCursor(str(project), None),),
                outbox_age_ms=4200,
                client_version="fieldsync-client-python/0.1.0",
            )
        )
        await client.expect(Welcome)
        await client.sync_until_synced(str(project))
        mine = await _health_until(http, api, project, viewer_token, lead, connected=True)
        assert (mine["client_id"], mine["client_version"], mine["outbox_age_ms"]) == (
            "tablet-1",
            "fieldsync-client-python/0.1.0",
            4200,
        )
        assert mine["last_seen_at"] is not None
    finally:
        await client.ws.close()
    gone = await _health_until(http, api, project, viewer_token, lead, connected=False)
    assert gone["client_id"] == "tablet-1"
    assert gone["last_seen_at"] >= mine["last_seen_at"]
    body = (await get(http, api, project, "members/health", viewer_token)).json()
    assert [m["user_id"] for m in body["items"]] == sorted([str(lead), str(viewer)])


async def _health_until(
    http: httpx.AsyncClient,
    api: str,
    project: uuid.UUID,
    token: str,
    user: uuid.UUID,
    *,
    connected: bool,
) -> dict[str, Any]:
    for _ in range(100):  # written off the session's path, within about a second
        body = (await get(http, api, project, "members/health", token)).json()
        [item] = [m for m in body["items"] if m["user_id"] == str(user)]
        if item["connected"] is connected and item["client_id"] is not None:
            found: dict[str, Any] = item
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"never connected={connected}: {item}")


async def test_openapi_and_cors(
    api: str, http: httpx.AsyncClient, project: uuid.UUID, member: MemberFactory
) -> None:
    document = await http.get(f"http://{api}/openapi.json")
    assert document.status_code == 200
    assert document.json()["openapi"] == "3.1.0"
    _, token = await member(project, "viewer")
    url = f"http://{api}/api/v1/projects/{project}/activities"
    preflight = await http.options(
        url, headers={"Origin": APP, "Access-Control-Request-Method": "GET"}
    )
    assert (preflight.status_code, preflight.headers["access-control-allow-origin"]) == (204, APP)
    answer = await http.get(url, headers={"Origin": APP, **auth(token)})
    assert answer.headers["access-control-allow-origin"] == APP
    refused = await http.get(url, params={"limit": "0"}, headers={"Origin": APP, **auth(token)})
    assert refused.status_code == 400
    assert refused.headers["access-control-allow-origin"] == APP  # the page can read why
    elsewhere = await http.options(
        url, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert elsewhere.status_code == 403


async def test_storage_down_is_a_503_with_retry_after(http: httpx.AsyncClient) -> None:
    storage = MemoryStorage()
    account = await storage.admin.create_account("a")
    project = await storage.admin.create_project(account, "p")
    user = await storage.admin.create_user("u")
    await storage.admin.add_member(project, user, "viewer")
    token = issue_token(TEST_SECRET, user)
    async with running_server(None, storage=storage) as base:
        url = f"http://{base}/api/v1/projects/{project}/activities"
        assert (await http.get(url, headers=auth(token))).status_code == 200
        storage.fail()
        down = await http.get(url, headers=auth(token))
        assert (down.status_code, down.json()["code"]) == (503, "server_unavailable")
        assert down.headers["retry-after"] == "5"
        bad = await http.get(url, params={"limit": "0"}, headers=auth(token))
        assert bad.status_code == 400  # parameters are checked before storage is asked
        storage.recover()
        assert (await http.get(url, headers=auth(token))).status_code == 200
