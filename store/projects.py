"""The server-managed rows: accounts, users, projects (with their log heads) and members.

Creating and changing them, and listing them (for ``fieldsync ... list`` and the HTTP admin
API alike).

A project without a ``log_heads`` row could never take a change (appenders lock that row to
hand out seqs), so the two are inserted in one transaction.

Requests that cannot be done as asked (an unknown account or user, a taken email, a level
that does not exist, removing someone who is not a member) raise an :class:`AdminError`
subclass whose message says what is wrong; an unknown project raises
:class:`store.errors.UnknownProject`. Both are ``StoreError``s.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from fieldsync.store.accounts import (
    LEVELS,
    MAX_NAME_LENGTH,
    AccountRow,
    MemberRow,
    ProjectDetail,
    ProjectRow,
    Row,
    UserRow,
    check_level,
    check_limit,
    row_json,
    valid_email,
    valid_name,
)
from fieldsync.store.driver import translated
from fieldsync.store.errors import (
    AdminError,
    DuplicateEmail,
    InvalidValue,
    NotAMember,
    UnknownAccount,
    UnknownProject,
    UnknownUser,
)
from fieldsync.store.notifications import notify_removal

__all__ = [
    "LEVELS",
    "MAX_NAME_LENGTH",
    "AccountRow",
    "AdminError",
    "DuplicateEmail",
    "InvalidValue",
    "MemberRow",
    "NotAMember",
    "ProjectDetail",
    "ProjectRow",
    "Row",
    "UnknownAccount",
    "UnknownUser",
    "UserRow",
    "add_member",
    "check_level",
    "create_account",
    "create_project",
    "create_user",
    "list_accounts",
    "list_members",
    "list_projects",
    "list_users",
    "member_level",
    "member_levels",
    "member_projects",
    "remove_member",
    "require_account",
    "require_project",
    "require_user",
    "row_json",
    "show_project",
]


@translated("looking the account up")
async def require_account(conn: asyncpg.Connection, account_id: uuid.UUID) -> None:
    if not await conn.fetchval("SELECT 1 FROM accounts WHERE account_id = $1", account_id):
        raise UnknownAccount(account_id)


@translated("looking the project up")
async def require_project(conn: asyncpg.Connection, project_id: uuid.UUID) -> None:
    if not await conn.fetchval("SELECT 1 FROM projects WHERE project_id = $1", project_id):
        raise UnknownProject(project_id)


@translated("looking the user up")
async def require_user(conn: asyncpg.Connection, user_id: uuid.UUID) -> None:
    if not await conn.fetchval("SELECT 1 FROM users WHERE user_id = $1", user_id):
        raise UnknownUser(user_id)


@translated("creating an account")
async def create_account(conn: asyncpg.Connection, name: str) -> uuid.UUID:
    account_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO accounts (account_id, name) VALUES ($1, $2)",
        account_id,
        valid_name(name, "account"),
    )
    return account_id


@translated("creating a project")
async def create_project(conn: asyncpg.Connection, account_id: uuid.UUID, name: str) -> uuid.UUID:
    """A new project of ``account_id`` with an empty change log (head seq 0)."""
    project_id = uuid.uuid4()
    project_name = valid_name(name, "project")
    async with conn.transaction():
        await require_account(conn, account_id)
        await conn.execute(
            "INSERT INTO projects (project_id, account_id, name) VALUES ($1, $2, $3)",
            project_id,
            account_id,
            project_name,
        )
        await conn.execute(
            "INSERT INTO log_heads (project_id, head_seq) VALUES ($1, 0)", project_id
        )
    return project_id


@translated("creating a user")
async def create_user(
    conn: asyncpg.Connection,
    display_name: str,
    account_id: uuid.UUID | None = None,
    email: str | None = None,
) -> uuid.UUID:
    """A new user, optionally of an account and with an email unique among users.

    Emails are compared case-insensitively: ``Ana@x.org`` is taken once ``ana@x.org`` is.
    """
    user_id = uuid.uuid4()
    name = valid_name(display_name, "user")
    address = valid_email(email)
    async with conn.transaction():
        if account_id is not None:
            await require_account(conn, account_id)
        if address is not None and await conn.fetchval(
            "SELECT 1 FROM users WHERE lower(email) = lower($1)", address
        ):
            raise DuplicateEmail(address)
        try:
            await conn.execute(
                "INSERT INTO users (user_id, account_id, display_name, email) "
                "VALUES ($1, $2, $3, $4)",
                user_id,
                account_id,
                name,
                address,
            )
        except asyncpg.UniqueViolationError:  # the same address, inserted concurrently
            assert address is not None
            raise DuplicateEmail(address) from None
    return user_id


@translated("adding a member")
async def add_member(
    conn: asyncpg.Connection, project_id: uuid.UUID, user_id: uuid.UUID, level: str
) -> str | None:
    """Make ``user_id`` a member of ``project_id`` at ``level`` (lead, specialist, viewer).

    A member already there gets the new level. Returns the level they had before, or None
    if they were not a member.
    """
    check_level(level)
    async with conn.transaction():
        await require_project(conn, project_id)
        await require_user(conn, user_id)
        previous: str | None = await conn.fetchval(
            "SELECT level FROM project_members WHERE project_id = $1 AND user_id = $2 FOR UPDATE",
            project_id,
            user_id,
        )
        await conn.execute(
            "INSERT INTO project_members (project_id, user_id, level) VALUES ($1, $2, $3) "
            "ON CONFLICT (project_id, user_id) DO UPDATE SET level = EXCLUDED.level",
            project_id,
            user_id,
            level,
        )
    return previous


@translated("removing a member")
async def remove_member(conn: asyncpg.Connection, project_id: uuid.UUID, user_id: uuid.UUID) -> str:
    """Take ``user_id`` out of ``project_id``; returns the level they had.

    From then on the server refuses them the project, and every server process closes
    their live subscriptions to it (told by a notification sent when this commits). Raises
    UnknownProject, UnknownUser, or NotAMember when there is nobody to remove.
    """
    async with conn.transaction():
        await require_project(conn, project_id)
        await require_user(conn, user_id)
        level: str | None = await conn.fetchval(
            "DELETE FROM project_members WHERE project_id = $1 AND user_id = $2 RETURNING level",
            project_id,
            user_id,
        )
        if level is None:
            raise NotAMember(project_id, user_id)
        await notify_removal(conn, project_id, user_id)
    return level


@translated("reading memberships")
async def member_projects(
    conn: asyncpg.Connection, user_id: uuid.UUID, project_ids: Sequence[uuid.UUID]
) -> set[uuid.UUID]:
    """Those of ``project_ids`` the user is a member of."""
    rows = await conn.fetch(
        "SELECT project_id FROM project_members WHERE user_id = $1 AND project_id = ANY($2)",
        user_id,
        list(project_ids),
    )
    return {r["project_id"] for r in rows}


@translated("reading membership")
async def member_level(
    conn: asyncpg.Connection, project_id: uuid.UUID, user_id: uuid.UUID
) -> str | None:
    """The user's level in the project, or None if not a member (or no such project)."""
    level: str | None = await conn.fetchval(
        "SELECT level FROM project_members WHERE project_id = $1 AND user_id = $2",
        project_id,
        user_id,
    )
    return level


@translated("reading memberships")
async def member_levels(
    conn: asyncpg.Connection, pairs: Sequence[tuple[uuid.UUID, uuid.UUID]]
) -> dict[tuple[uuid.UUID, uuid.UUID], str]:
    """The levels of those (project, user) pairs that are memberships, in one query."""
    rows = await conn.fetch(
        "SELECT m.project_id, m.user_id, m.level"
        " FROM unnest($1::uuid[], $2::uuid[]) AS asked(project_id, user_id)"
        " JOIN project_members m"
        " ON m.project_id = asked.project_id AND m.user_id = asked.user_id",
        [project_id for project_id, _ in pairs],
        [user_id for _, user_id in pairs],
    )
    return {(row["project_id"], row["user_id"]): row["level"] for row in rows}


# --- listing ----------------------------------------------------------------------------
#
# Lists come in creation order, a page at a time: ``after`` is the id of the last row of the
# previous page (it must exist), ``limit`` None means every row. The order is the total
# order (created_at, id), so consecutive pages never overlap.


@translated("listing accounts")
async def list_accounts(
    conn: asyncpg.Connection, *, after: uuid.UUID | None = None, limit: int | None = None
) -> list[AccountRow]:
    """Accounts in creation order, with how many projects and users each has."""
    check_limit(limit)
    if after is not None:
        await require_account(conn, after)
    rows = await conn.fetch(
        """
        SELECT a.account_id, a.name, a.created_at,
               (SELECT count(*) FROM projects p WHERE p.account_id = a.account_id) AS projects,
               (SELECT count(*) FROM users u WHERE u.account_id = a.account_id) AS users
        FROM accounts a
        WHERE $1::uuid IS NULL OR (a.created_at, a.account_id) >
              (SELECT created_at, account_id FROM accounts WHERE account_id = $1)
        ORDER BY a.created_at, a.account_id
        LIMIT $2
        """,
        after,
        limit,
    )
    return [AccountRow(**dict(r)) for r in rows]


@translated("listing users")
async def list_users(
    conn: asyncpg.Connection,
    *,
    account_id: uuid.UUID | None = None,
    after: uuid.UUID | None = None,
    limit: int | None = None,
) -> list[UserRow]:
    """Users in creation order; only those of ``account_id`` if given (it must exist)."""
    check_limit(limit)
    if account_id is not None:
        await require_account(conn, account_id)
    if after is not None:
        await require_user(conn, after)
    rows = await conn.fetch(
        """
        SELECT u.user_id, u.display_name AS name, u.email, u.account_id, u.created_at
        FROM users u
        WHERE ($1::uuid IS NULL OR u.account_id = $1)
          AND ($2::uuid IS NULL OR (u.created_at, u.user_id) >
               (SELECT created_at, user_id FROM users WHERE user_id = $2))
        ORDER BY u.created_at, u.user_id
        LIMIT $3
        """,
        account_id,
        after,
        limit,
    )
    return [UserRow(**dict(r)) for r in rows]


_PROJECT_COLUMNS = """
    p.project_id, p.name, p.account_id, p.created_at, h.head_seq,
    (SELECT count(*) FROM project_members m WHERE m.project_id = p.project_id) AS members
"""


@translated("listing projects")
async def list_projects(
    conn: asyncpg.Connection,
    *,
    account_id: uuid.UUID | None = None,
    after: uuid.UUID | None = None,
    limit: int | None = None,
) -> list[ProjectRow]:
    """Projects in creation order with their log head and member count; only those of
    ``account_id`` if given (it must exist)."""
    check_limit(limit)
    if account_id is not None:
        await require_account(conn, account_id)
    if after is not None:
        await require_project(conn, after)
    rows = await conn.fetch(
        f"""
        SELECT {_PROJECT_COLUMNS}
        FROM projects p JOIN log_heads h USING (project_id)
        WHERE ($1::uuid IS NULL OR p.account_id = $1)
          AND ($2::uuid IS NULL OR (p.created_at, p.project_id) >
               (SELECT created_at, project_id FROM projects WHERE project_id = $2))
        ORDER BY p.created_at, p.project_id
        LIMIT $3
        """,
        account_id,
        after,
        limit,
    )
    return [ProjectRow(**dict(r)) for r in rows]


@translated("reading a project")
async def show_project(conn: asyncpg.Connection, project_id: uuid.UUID) -> ProjectDetail:
    """The project, its account's name, log head and member count per level."""
    row = await conn.fetchrow(
        """
        SELECT p.project_id, p.name, p.account_id, a.name AS account_name, p.created_at,
               h.head_seq
        FROM projects p JOIN accounts a USING (account_id) JOIN log_heads h USING (project_id)
        WHERE p.project_id = $1
        """,
        project_id,
    )
    if row is None:
        raise UnknownProject(project_id)
    counts = await conn.fetch(
        "SELECT level, count(*) AS n FROM project_members WHERE project_id = $1 GROUP BY level",
        project_id,
    )
    members = dict.fromkeys(LEVELS, 0) | {r["level"]: r["n"] for r in counts}
    return ProjectDetail(**dict(row), members=members)


@translated("listing members")
async def list_members(
    conn: asyncpg.Connection,
    project_id: uuid.UUID,
    *,
    after: uuid.UUID | None = None,
    limit: int | None = None,
) -> list[MemberRow]:
    """The project's members in the order they were added (``after``: a member's user id)."""
    check_limit(limit)
    await require_project(conn, project_id)
    if after is not None and await member_level(conn, project_id, after) is None:
        raise NotAMember(project_id, after)
    rows = await conn.fetch(
        """
        SELECT m.user_id, u.display_name AS name, u.email, m.level, m.added_at
        FROM project_members m JOIN users u USING (user_id)
        WHERE m.project_id = $1
          AND ($2::uuid IS NULL OR (m.added_at, m.user_id) >
               (SELECT added_at, user_id FROM project_members
                WHERE project_id = $1 AND user_id = $2))
        ORDER BY m.added_at, m.user_id
        LIMIT $3
        """,
        project_id,
        after,
        limit,
    )
    return [MemberRow(**dict(r)) for r in rows]
