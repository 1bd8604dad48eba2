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

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import asyncpg

from fieldsync.store.driver import translated
from fieldsync.store.errors import StoreError, UnknownProject
from fieldsync.store.notifications import notify_removal

LEVELS = ("lead", "specialist", "viewer")
"""Permission levels of project members, most powerful first."""

MAX_NAME_LENGTH = 200

# Deliberately loose: one @ with something on both sides and no whitespace.
_EMAIL = re.compile(r"\A[^@\s]+@[^@\s]+\Z")


class AdminError(StoreError):
    """An account, user, project or membership request that cannot be done as asked."""


class UnknownAccount(AdminError):  # noqa: N818 (names read as states)
    def __init__(self, account_id: uuid.UUID) -> None:
        self.account_id = account_id
        super().__init__(f"unknown account {account_id}")


class UnknownUser(AdminError):  # noqa: N818 (names read as states)
    def __init__(self, user_id: uuid.UUID) -> None:
        self.user_id = user_id
        super().__init__(f"unknown user {user_id}")


class DuplicateEmail(AdminError):  # noqa: N818 (names read as states)
    def __init__(self, email: str) -> None:
        self.email = email
        super().__init__(f"a user with email {email} already exists")


class NotAMember(AdminError):  # noqa: N818 (names read as states)
    def __init__(self, project_id: uuid.UUID, user_id: uuid.UUID) -> None:
        self.project_id = project_id
        self.user_id = user_id
        super().__init__(f"user {user_id} is not a member of project {project_id}")


class InvalidValue(AdminError):  # noqa: N818 (names read as states)
    """A name, email or level that is not acceptable; nothing was written."""


def _name(value: str, what: str) -> str:
    name = value.strip()
    if not name:
        raise InvalidValue(f"the {what} name must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidValue(f"the {what} name is longer than {MAX_NAME_LENGTH} characters")
    return name


def check_level(level: str) -> str:
    """``level`` if it is one of :data:`LEVELS`, else InvalidValue."""
    if level not in LEVELS:
        raise InvalidValue(f"unknown level {level!r}: use one of {', '.join(LEVELS)}")
    return level


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
        _name(name, "account"),
    )
    return account_id


@translated("creating a project")
async def create_project(conn: asyncpg.Connection, account_id: uuid.UUID, name: str) -> uuid.UUID:
    """A new project of ``account_id`` with an empty change log (head seq 0)."""
    project_id = uuid.uuid4()
    project_name = _name(name, "project")
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
    name = _name(display_name, "user")
    address = None if email is None else email.strip()
    if address is not None and not _EMAIL.match(address):
        raise InvalidValue(f"{email!r} is not an email address")
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
            "SELECT level FROM project_members WHERE project_id = $1 AND user_id = $2 "
            "FOR UPDATE",
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
async def remove_member(
    conn: asyncpg.Connection, project_id: uuid.UUID, user_id: uuid.UUID
) -> str:
    """Take ``user_id`` out of ``project_id``; returns the level they had.

    From then on the server refuses them the project, and every server process closes
    their live subscriptions to it (told by a notification sent when this commits). Raises
    UnknownProject, UnknownUser, or NotAMember when there is nobody to remove.
    """
    async with conn.transaction():
        await require_project(conn, project_id)
        await require_user(conn, user_id)
        level: str | None = await conn.fetchval(
            "DELETE FROM project_members WHERE project_id = $1 AND user_id = $2 "
            "RETURNING level",
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


# --- listing ----------------------------------------------------------------------------
#
# Lists come in creation order, a page at a time: ``after`` is the id of the last row of the
# previous page (it must exist), ``limit`` None means every row. The order is the total
# order (created_at, id), so consecutive pages never overlap.


@dataclass(frozen=True, slots=True)
class AccountRow:
    account_id: uuid.UUID
    name: str
    created_at: datetime
    projects: int
    users: int


@dataclass(frozen=True, slots=True)
class UserRow:
    user_id: uuid.UUID
    name: str
    email: str | None
    account_id: uuid.UUID | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ProjectRow:
    project_id: uuid.UUID
    name: str
    account_id: uuid.UUID
    created_at: datetime
    head_seq: int
    members: int


@dataclass(frozen=True, slots=True)
class ProjectDetail:
    """One project, its account's name and how many members it has at each level."""

    project_id: uuid.UUID
    name: str
    account_id: uuid.UUID
    account_name: str
    created_at: datetime
    head_seq: int
    members: Mapping[str, int]  # level: count, every level present


@dataclass(frozen=True, slots=True)
class MemberRow:
    user_id: uuid.UUID
    name: str
    email: str | None
    level: str
    added_at: datetime


Row = AccountRow | UserRow | ProjectRow | ProjectDetail | MemberRow


def row_json(row: Row) -> dict[str, Any]:
    """The row as JSON-ready values (ids and times as strings), for the CLI and the API."""
    document: dict[str, Any] = {}
    for field in fields(row):
        value = getattr(row, field.name)
        if isinstance(value, uuid.UUID):
            value = str(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Mapping):
            value = dict(value)
        document[field.name] = value
    return document


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise InvalidValue(f"limit must be at least 1, got {limit}")


@translated("listing accounts")
async def list_accounts(
    conn: asyncpg.Connection, *, after: uuid.UUID | None = None, limit: int | None = None
) -> list[AccountRow]:
    """Accounts in creation order, with how many projects and users each has."""
    _check_limit(limit)
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
    _check_limit(limit)
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
    _check_limit(limit)
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
    _check_limit(limit)
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
