"""Creating the server-managed rows a project needs: its account, itself and its log head.

A project without a ``log_heads`` row could never take a change (appenders lock that row to
hand out seqs), so the two are inserted in one transaction.
"""

from __future__ import annotations

import uuid

import asyncpg


async def create_account(conn: asyncpg.Connection, name: str) -> uuid.UUID:
    account_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO accounts (account_id, name) VALUES ($1, $2)", account_id, name
    )
    return account_id


async def create_project(conn: asyncpg.Connection, account_id: uuid.UUID, name: str) -> uuid.UUID:
    """A new project with an empty change log (head seq 0)."""
    project_id = uuid.uuid4()
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO projects (project_id, account_id, name) VALUES ($1, $2, $3)",
            project_id,
            account_id,
            name,
        )
        await conn.execute(
            "INSERT INTO log_heads (project_id, head_seq) VALUES ($1, 0)", project_id
        )
    return project_id


async def create_user(
    conn: asyncpg.Connection, display_name: str, account_id: uuid.UUID | None = None
) -> uuid.UUID:
    user_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO users (user_id, account_id, display_name) VALUES ($1, $2, $3)",
        user_id,
        account_id,
        display_name,
    )
    return user_id


async def add_member(
    conn: asyncpg.Connection, project_id: uuid.UUID, user_id: uuid.UUID, level: str
) -> None:
    """Make ``user_id`` a member of ``project_id`` at ``level`` (lead, specialist, viewer)."""
    await conn.execute(
        "INSERT INTO project_members (project_id, user_id, level) VALUES ($1, $2, $3) "
        "ON CONFLICT (project_id, user_id) DO UPDATE SET level = EXCLUDED.level",
        project_id,
        user_id,
        level,
    )


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
