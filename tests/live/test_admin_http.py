"""The HTTP admin API over a real server: the CLI's operations, the admin key, the errors."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from fieldsync.auth.tokens import verify_token
from fieldsync.store.projects import member_level
from fieldsync.sync.errors import ErrorCode
from fieldsync.sync.messages import ProjectCursor, ProjectError
from tests.live_server import TEST_SECRET, running_server
from tests.sync_client import SyncClient

ADMIN_KEY = "admin-key-for-tests-0123456789abcdef"


@pytest.fixture(scope="module")
async def admin_server(database_url: str) -> AsyncIterator[str]:
    async with running_server(database_url, admin_key=ADMIN_KEY) as base:
        yield base


@pytest.fixture
async def http(admin_server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://{admin_server}/admin",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ) as client:
        yield client


async def test_the_whole_admin_flow_then_a_member_syncs_and_is_removed(
    http: httpx.AsyncClient, admin_server: str, pool: asyncpg.Pool
) -> None:
    account = await http.post("/accounts", json={"name": "Glacier Lab"})
    assert account.status_code == 201
    account_id = account.json()["account_id"]
    user = await http.post(
        "/users",
        json={
            "name": "Marta Keller",
            "account_id": account_id,
            "email": f"marta-{uuid.uuid4().hex[:6]}@lab.example",
        },
    )
    assert user.status_code == 201
    user_id = user.json()["user_id"]
    project = await http.post("/projects", json={"account_id": account_id, "name": "Moraine"})
    assert project.status_code == 201
    project_id = project.json()["project_id"]

    added = await http.put(f"/projects/{project_id}/members/{user_id}", json={"level": "viewer"})
    assert added.json() == {
        "project_id": project_id,
        "user_id": user_id,
        "level": "viewer",
        "previous_level": None,
    }
    promoted = await http.put(f"/projects/{project_id}/members/{user_id}", json={"level": "lead"})
    assert promoted.json()["previous_level"] == "viewer"
    async with pool.acquire() as conn:
        assert await member_level(conn, uuid.UUID(project_id), uuid.UUID(user_id)) == "lead"

    issued = await http.post("/tokens", json={"user_id": user_id, "ttl": 600})
    assert issued.status_code == 201
    token = issued.json()["token"]
    assert verify_token(TEST_SECRET, token).user_id == uuid.UUID(user_id)

    client = await SyncClient.connect(admin_server)
    await client.hello(token, [ProjectCursor(project_id, None)])
    await client.sync_until_synced(project_id)
    removed = await http.delete(f"/projects/{project_id}/members/{user_id}")
    assert removed.json() == {"project_id": project_id, "user_id": user_id, "removed_level": "lead"}
    notice = await client.next_unabsorbed(within=5)
    assert isinstance(notice, ProjectError)
    assert notice.code == ErrorCode.MEMBERSHIP_REMOVED.value
    await client.close()


@pytest.mark.parametrize(
    "authorization",
    [None, "", f"Basic {ADMIN_KEY}", "Bearer wrong-key", f"Bearer {ADMIN_KEY}x"],
)
async def test_requests_without_the_admin_key_are_refused_and_change_nothing(
    admin_server: str, pool: asyncpg.Pool, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with pool.acquire() as conn:
        before = await conn.fetchval("SELECT count(*) FROM accounts")
    async with httpx.AsyncClient(base_url=f"http://{admin_server}/admin") as http:
        refused = await http.post("/accounts", json={"name": "Intruders"}, headers=headers)
    assert refused.status_code == 401
    assert refused.json()["code"] == "admin_key_required"
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM accounts") == before


async def test_a_user_token_is_not_an_admin_key(admin_server: str) -> None:
    from fieldsync.auth.tokens import issue_token

    token = issue_token(TEST_SECRET, uuid.uuid4())
    async with httpx.AsyncClient(base_url=f"http://{admin_server}/admin") as http:
        refused = await http.post(
            "/accounts", json={"name": "x"}, headers={"Authorization": f"Bearer {token}"}
        )
    assert refused.status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/accounts", {"name": "  "}, 400, "invalid_value"),
        ("POST", "/accounts", {"name": 5}, 400, "invalid_request"),
        ("POST", "/accounts", {}, 400, "invalid_request"),
        ("POST", "/accounts", {"name": "x", "owner": "me"}, 400, "invalid_request"),
        ("POST", "/accounts", ["name"], 400, "invalid_request"),
        ("POST", "/users", {"name": "A", "account_id": "nope"}, 400, "invalid_request"),
        (
            "POST",
            "/users",
            {"name": "A", "account_id": str(uuid.UUID(int=1))},
            404,
            "unknown_account",
        ),
        ("POST", "/users", {"name": "A", "email": "not an email"}, 400, "invalid_value"),
        (
            "POST",
            "/projects",
            {"name": "P", "account_id": str(uuid.UUID(int=1))},
            404,
            "unknown_account",
        ),
        (
            "PUT",
            f"/projects/{uuid.UUID(int=1)}/members/{uuid.UUID(int=2)}",
            {"level": "lead"},
            404,
            "unknown_project",
        ),
        (
            "PUT",
            f"/projects/{uuid.UUID(int=1)}/members/{uuid.UUID(int=2)}",
            {"level": "boss"},
            400,
            "invalid_value",
        ),
        ("PUT", "/projects/nope/members/nope", {"level": "lead"}, 400, "invalid_request"),
        (
            "DELETE",
            f"/projects/{uuid.UUID(int=1)}/members/{uuid.UUID(int=2)}",
            None,
            404,
            "unknown_project",
        ),
        ("POST", "/tokens", {"user_id": str(uuid.UUID(int=2))}, 404, "unknown_user"),
        ("POST", "/tokens", {"user_id": str(uuid.UUID(int=2)), "ttl": 0}, 400, "invalid_request"),
        (
            "POST",
            "/tokens",
            {"user_id": str(uuid.UUID(int=2)), "ttl": True},
            400,
            "invalid_request",
        ),
    ],
)
async def test_bad_requests_get_a_status_and_a_code(
    http: httpx.AsyncClient, method: str, path: str, body: object, status: int, code: str
) -> None:
    answer = await http.request(method, path, json=body)
    assert (answer.status_code, answer.json()["code"]) == (status, code), answer.text
    assert answer.json()["message"]


async def test_a_taken_email_and_a_missing_member_are_refused(http: httpx.AsyncClient) -> None:
    email = f"ana-{uuid.uuid4().hex[:6]}@lab.example"
    first = await http.post("/users", json={"name": "Ana", "email": email})
    assert first.status_code == 201
    again = await http.post("/users", json={"name": "Ana B", "email": email.upper()})
    assert (again.status_code, again.json()["code"]) == (409, "duplicate_email")
    account = (await http.post("/accounts", json={"name": "A"})).json()["account_id"]
    project = (await http.post("/projects", json={"account_id": account, "name": "P"})).json()
    gone = await http.delete(f"/projects/{project['project_id']}/members/{first.json()['user_id']}")
    assert (gone.status_code, gone.json()["code"]) == (404, "not_a_member")


async def test_oversized_bodies_are_refused(http: httpx.AsyncClient) -> None:
    answer = await http.post("/accounts", content=b"{" + b" " * 70_000 + b"}")
    assert (answer.status_code, answer.json()["code"]) == (400, "invalid_request")


async def test_without_an_admin_key_there_is_no_admin_api(sync_server: str) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"http://{sync_server}/admin/accounts",
            json={"name": "x"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
    assert answer.status_code == 404


async def test_lists_and_show_page_through_what_was_created(http: httpx.AsyncClient) -> None:
    account = (await http.post("/accounts", json={"name": "Listed"})).json()["account_id"]
    users = [
        (await http.post("/users", json={"name": f"U{i}", "account_id": account})).json()[
            "user_id"
        ]
        for i in range(3)
    ]
    project = (await http.post("/projects", json={"account_id": account, "name": "P"})).json()[
        "project_id"
    ]
    for user, level in zip(users, ("lead", "specialist", "viewer"), strict=True):
        await http.put(f"/projects/{project}/members/{user}", json={"level": level})

    first = await http.get("/users", params={"account_id": account, "limit": "2"})
    assert first.status_code == 200, first.text
    assert [u["user_id"] for u in first.json()["users"]] == users[:2]
    assert first.json()["next"] == users[1]
    rest = await http.get(
        "/users", params={"account_id": account, "limit": "2", "after": first.json()["next"]}
    )
    assert [u["user_id"] for u in rest.json()["users"]] == users[2:]
    assert rest.json()["next"] is None

    projects = (await http.get("/projects", params={"account_id": account})).json()
    assert [(p["project_id"], p["members"], p["head_seq"]) for p in projects["projects"]] == [
        (project, 3, 0)
    ]
    shown = await http.get(f"/projects/{project}")
    assert shown.json() | {"created_at": None} == {
        "project_id": project,
        "name": "P",
        "account_id": account,
        "account_name": "Listed",
        "created_at": None,
        "head_seq": 0,
        "members": {"lead": 1, "specialist": 1, "viewer": 1},
    }
    members = (await http.get(f"/projects/{project}/members")).json()
    assert [(m["user_id"], m["level"]) for m in members["members"]] == list(
        zip(users, ("lead", "specialist", "viewer"), strict=True)
    )
    assert members["next"] is None
    accounts = (await http.get("/accounts", params={"limit": "1000"})).json()["accounts"]
    listed = next(a for a in accounts if a["account_id"] == account)
    assert (listed["projects"], listed["users"]) == (1, 3)


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/accounts", {"limit": "0"}, 400, "invalid_request"),
        ("/accounts", {"limit": "1001"}, 400, "invalid_request"),
        ("/accounts", {"limit": "ten"}, 400, "invalid_request"),
        ("/accounts", {"sort": "name"}, 400, "invalid_request"),
        ("/accounts", {"after": "nope"}, 400, "invalid_request"),
        ("/accounts", {"after": str(uuid.UUID(int=1))}, 404, "unknown_account"),
        ("/users", {"account_id": str(uuid.UUID(int=1))}, 404, "unknown_account"),
        ("/users", {"after": str(uuid.UUID(int=1))}, 404, "unknown_user"),
        ("/projects", {"account_id": "nope"}, 400, "invalid_request"),
        ("/projects", {"after": str(uuid.UUID(int=1))}, 404, "unknown_project"),
        (f"/projects/{uuid.UUID(int=1)}", {}, 404, "unknown_project"),
        ("/projects/nope", {}, 400, "invalid_request"),
        (f"/projects/{uuid.UUID(int=1)}", {"limit": "1"}, 400, "invalid_request"),
        (f"/projects/{uuid.UUID(int=1)}/members", {}, 404, "unknown_project"),
    ],
)
async def test_bad_list_requests_get_a_status_and_a_code(
    http: httpx.AsyncClient, path: str, params: dict[str, str], status: int, code: str
) -> None:
    answer = await http.get(path, params=params)
    assert (answer.status_code, answer.json()["code"]) == (status, code), answer.text
    assert answer.json()["message"]


async def test_a_repeated_query_parameter_is_refused(http: httpx.AsyncClient) -> None:
    answer = await http.get("/accounts?limit=1&limit=2")
    assert (answer.status_code, answer.json()["code"]) == (400, "invalid_request")


async def test_lists_need_the_admin_key_too(admin_server: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://{admin_server}/admin") as http:
        for path in ("/accounts", "/users", "/projects", f"/projects/{uuid.UUID(int=1)}",
                     f"/projects/{uuid.UUID(int=1)}/members"):  # fmt: skip
            assert (await http.get(path)).status_code == 401
