"""Projects are created together with their change-log head; the lists page in order."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from fieldsync.store.errors import UnknownProject
from fieldsync.store.projects import (
    InvalidValue,
    NotAMember,
    UnknownAccount,
    UnknownUser,
    add_member,
    create_account,
    create_project,
    create_user,
    list_accounts,
    list_members,
    list_projects,
    list_users,
    row_json,
    show_project,
)


async def test_new_project_has_an_empty_log(pool: asyncpg.Pool, project: uuid.UUID) -> None:
    async with pool.acquire() as conn:
        head = await conn.fetchval(
            "SELECT head_seq FROM log_heads WHERE project_id = $1", project
        )
        logged = await conn.fetchval("SELECT count(*) FROM changes WHERE project_id = $1", project)
    assert head == 0
    assert logged == 0


async def test_lists_come_in_creation_order_a_page_at_a_time(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        account = await create_account(conn, "Paged")
        users = [await create_user(conn, f"U{i}", account) for i in range(5)]
        made = [await create_project(conn, account, f"P{i}") for i in range(3)]
        for user, level in zip(users, ["lead", "viewer", "viewer", "specialist", "lead"],
                               strict=True):  # fmt: skip
            await add_member(conn, made[0], user, level)

        pages: list[list[uuid.UUID]] = []
        after = None
        while True:
            page = await list_users(conn, account_id=account, after=after, limit=2)
            if not page:
                break
            pages.append([u.user_id for u in page])
            after = page[-1].user_id
        assert pages == [users[0:2], users[2:4], users[4:5]]

        members = await list_members(conn, made[0], after=users[1], limit=2)
        assert [(m.user_id, m.level) for m in members] == [
            (users[2], "viewer"), (users[3], "specialist")
        ]
        listed = await list_projects(conn, account_id=account)
        assert [(p.project_id, p.members, p.head_seq) for p in listed] == [
            (made[0], 5, 0), (made[1], 0, 0), (made[2], 0, 0)
        ]
        assert [p.project_id for p in await list_projects(conn, after=made[1])][:1] == [made[2]]
        detail = await show_project(conn, made[0])
        assert (detail.account_id, detail.account_name) == (account, "Paged")
        assert detail.members == {"lead": 2, "specialist": 1, "viewer": 2}
        assert (await show_project(conn, made[1])).members == {
            "lead": 0, "specialist": 0, "viewer": 0
        }
        accounts = await list_accounts(conn)
        mine = next(a for a in accounts if a.account_id == account)
        assert (mine.name, mine.projects, mine.users) == ("Paged", 3, 5)
        assert row_json(mine) == {
            "account_id": str(account),
            "name": "Paged",
            "created_at": mine.created_at.isoformat(),
            "projects": 3,
            "users": 5,
        }


async def test_lists_refuse_unknown_filters_and_cursors(pool: asyncpg.Pool) -> None:
    nobody = uuid.uuid4()
    async with pool.acquire() as conn:
        account = await create_account(conn, "A")
        project = await create_project(conn, account, "P")
        user = await create_user(conn, "U")
        cases = [
            (list_accounts(conn, after=nobody), UnknownAccount),
            (list_users(conn, account_id=nobody), UnknownAccount),
            (list_users(conn, after=nobody), UnknownUser),
            (list_projects(conn, account_id=nobody), UnknownAccount),
            (list_projects(conn, after=nobody), UnknownProject),
            (show_project(conn, nobody), UnknownProject),
            (list_members(conn, nobody), UnknownProject),
            (list_members(conn, project, after=user), NotAMember),
            (list_users(conn, limit=0), InvalidValue),
        ]
        for call, error in cases:
            with pytest.raises(error):
                await call
