"""Accounts, users, projects and members through the admin port: projects are created with
their change log, lists page in creation order, refusals name what is wrong."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable

import pytest

from fieldsync.store.accounts import row_json
from fieldsync.store.errors import (
    DuplicateEmail,
    InvalidValue,
    NotAMember,
    StoreError,
    UnknownAccount,
    UnknownProject,
    UnknownUser,
)
from fieldsync.store.ports import ChangeLogPort, Storage


async def test_new_project_has_an_empty_log(
    storage: Storage, log: ChangeLogPort, project: uuid.UUID
) -> None:
    assert await log.head(project) == 0
    assert (await log.read_since(project, 0)).changes == []
    assert (await storage.admin.show_project(project)).head_seq == 0


async def test_lists_come_in_creation_order_a_page_at_a_time(storage: Storage) -> None:
    admin = storage.admin
    account = await admin.create_account("Paged")
    users = [await admin.create_user(f"U{i}", account) for i in range(5)]
    made = [await admin.create_project(account, f"P{i}") for i in range(3)]
    for user, level in zip(users, ["lead", "viewer", "viewer", "specialist", "lead"],
                           strict=True):  # fmt: skip
        await admin.add_member(made[0], user, level)

    pages: list[list[uuid.UUID]] = []
    after = None
    while True:
        page = await admin.list_users(account_id=account, after=after, limit=2)
        if not page:
            break
        pages.append([u.user_id for u in page])
        after = page[-1].user_id
    assert pages == [users[0:2], users[2:4], users[4:5]]

    members = await admin.list_members(made[0], after=users[1], limit=2)
    assert [(m.user_id, m.level) for m in members] == [
        (users[2], "viewer"), (users[3], "specialist")
    ]
    listed = await admin.list_projects(account_id=account)
    assert [(p.project_id, p.members, p.head_seq) for p in listed] == [
        (made[0], 5, 0), (made[1], 0, 0), (made[2], 0, 0)
    ]
    assert [p.project_id for p in await admin.list_projects(after=made[1])][:1] == [made[2]]
    detail = await admin.show_project(made[0])
    assert (detail.account_id, detail.account_name) == (account, "Paged")
    assert detail.members == {"lead": 2, "specialist": 1, "viewer": 2}
    assert (await admin.show_project(made[1])).members == {
        "lead": 0, "specialist": 0, "viewer": 0
    }
    accounts = await admin.list_accounts()
    mine = next(a for a in accounts if a.account_id == account)
    assert (mine.name, mine.projects, mine.users) == ("Paged", 3, 5)
    assert row_json(mine) == {
        "account_id": str(account),
        "name": "Paged",
        "created_at": mine.created_at.isoformat(),
        "projects": 3,
        "users": 5,
    }


async def test_lists_refuse_unknown_filters_and_cursors(storage: Storage) -> None:
    admin = storage.admin
    nobody = uuid.uuid4()
    account = await admin.create_account("A")
    project = await admin.create_project(account, "P")
    user = await admin.create_user("U")
    cases = [
        (admin.list_accounts(after=nobody), UnknownAccount),
        (admin.list_users(account_id=nobody), UnknownAccount),
        (admin.list_users(after=nobody), UnknownUser),
        (admin.list_projects(account_id=nobody), UnknownAccount),
        (admin.list_projects(after=nobody), UnknownProject),
        (admin.show_project(nobody), UnknownProject),
        (admin.list_members(nobody), UnknownProject),
        (admin.list_members(project, after=user), NotAMember),
        (admin.list_users(limit=0), InvalidValue),
    ]
    for call, error in cases:
        with pytest.raises(error):
            await call


async def test_members_are_added_changed_and_removed(storage: Storage, project: uuid.UUID) -> None:
    admin = storage.admin
    user = await admin.create_user("Ana", email="ana@example.org")
    assert await admin.add_member(project, user, "specialist") is None
    assert await storage.membership.level(project, user) == "specialist"
    assert await admin.add_member(project, user, "lead") == "specialist"
    [member] = await admin.list_members(project)
    assert (member.user_id, member.name, member.email, member.level) == (
        user, "Ana", "ana@example.org", "lead"
    )
    assert await admin.remove_member(project, user) == "lead"
    assert await storage.membership.level(project, user) is None
    with pytest.raises(NotAMember):
        await admin.remove_member(project, user)


async def test_refusals_name_what_is_wrong_and_write_nothing(
    storage: Storage, project: uuid.UUID
) -> None:
    admin = storage.admin
    nobody = uuid.uuid4()
    tag = uuid.uuid4().hex[:8]
    await admin.create_user("First", email=f"Taken-{tag}@Example.org")
    users_before = len(await admin.list_users())
    cases: list[tuple[Awaitable[object], type[StoreError], str]] = [
        (admin.create_account("  "), InvalidValue, "must not be empty"),
        (admin.create_account("x" * 201), InvalidValue, "longer than 200"),
        (admin.create_user("Ana", email="not an address"), InvalidValue, "not an email"),
        (admin.create_user("Ana", email=f"taken-{tag}@example.org"), DuplicateEmail, "exists"),
        (admin.create_user("Ana", account_id=nobody), UnknownAccount, str(nobody)),
        (admin.create_project(nobody, "P"), UnknownAccount, str(nobody)),
        (admin.add_member(project, nobody, "lead"), UnknownUser, str(nobody)),
        (admin.add_member(nobody, nobody, "lead"), UnknownProject, str(nobody)),
        (admin.add_member(project, nobody, "owner"), InvalidValue, "unknown level"),
        (admin.remove_member(project, nobody), UnknownUser, str(nobody)),
        (admin.require_user(nobody), UnknownUser, str(nobody)),
    ]
    for call, error, words in cases:
        with pytest.raises(error, match=words):
            await call
    assert len(await admin.list_users()) == users_before
