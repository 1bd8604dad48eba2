"""The database side of the write rules: who the writer is, read inside the append itself.

``ChangeLog.append`` calls the factory under the project's lock, in the appending
transaction, so the level and the summonings it reads are exactly those the merge is
checked against: a summoning deleted, or a member demoted, a moment earlier counts.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fieldsync.model.permissions import Level, Writer, check_write, may_write_everything
from fieldsync.model.rejections import RejectCode, Rejection
from fieldsync.store.changelog import Authorize, AuthorizeFactory
from fieldsync.store.driver import translated
from fieldsync.store.projects import member_level

_SUMMONED_TO = """
SELECT DISTINCT activity_id FROM rm_summonings
WHERE project_id = $1 AND user_id = $2 AND NOT deleted
"""


REMOVED = Rejection(
    RejectCode.MEMBERSHIP_REMOVED,
    "you are no longer a member of this project (removed while this push was on its way)",
)


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
        writer = await load_writer(conn, project_id, user_id)
        if writer is None:
            return lambda check: REMOVED
        if may_write_everything(writer.level):
            return None  # no entity needs its values compared
        return lambda check: check_write(writer, check)

    return factory
