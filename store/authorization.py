"""The database side of the write rules: who the writer is, read inside the append itself.

``ChangeLog.append`` calls the factory under the project's lock, in the appending
transaction, so the level and the summonings it reads are exactly those the merge is
checked against: a summoning deleted, or a member demoted, a moment earlier counts. The
rule itself is ``store.append_plan.writer_rule`` (shared with the in-memory storage).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from fieldsync.model.permissions import Level, Writer
from fieldsync.store.append_plan import REMOVED, Authorize, writer_rule
from fieldsync.store.driver import translated
from fieldsync.store.projects import member_level

__all__ = ["REMOVED", "AuthorizeFactory", "load_writer", "write_rule"]

AuthorizeFactory = Callable[[Any], Awaitable[Authorize | None]]
"""Called once per append, under the project's lock, with the transaction's connection;
None means the writer may write everything (nothing is checked per entity)."""

_SUMMONED_TO = """
SELECT DISTINCT activity_id FROM rm_summonings
WHERE project_id = $1 AND user_id = $2 AND NOT deleted
"""


@translated("reading the writer's membership")
async def load_writer(conn: Any, project_id: UUID, user_id: UUID) -> Writer | None:
    """The writer as the database says now; None if no longer a member."""
    level = await member_level(conn, project_id, user_id)
    if level is None:
        return None
    summoned: frozenset[str] = frozenset()
    if level == Level.SPECIALIST:
        rows = await conn.fetch(_SUMMONED_TO, project_id, str(user_id))
        summoned = frozenset(r["activity_id"] for r in rows)
    return Writer(str(user_id), Level(level), summoned)


def write_rule(project_id: UUID, user_id: UUID) -> AuthorizeFactory:
    """The ``authorize`` argument of ``ChangeLog.append`` for this user's pushes."""

    async def factory(conn: Any) -> Authorize | None:
        return writer_rule(await load_writer(conn, project_id, user_id))

    return factory
