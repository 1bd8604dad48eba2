"""A project's log head (``log_heads.head_seq``): the one statement that reads it, and the
one that locks it for an append or a rebuild. 0 before the first change; a project that
does not exist has no row."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fieldsync.store.driver import translated
from fieldsync.store.errors import UnknownProject

READ_HEAD = "SELECT head_seq FROM log_heads WHERE project_id = $1"
LOCK_HEAD = READ_HEAD + " FOR UPDATE"


@translated("reading the log head")
async def read_head(conn: Any, project_id: UUID, *, lock: bool = False) -> int:
    """The head on ``conn`` (locked for the transaction with ``lock``); UnknownProject when
    the project has no row."""
    head = await conn.fetchval(LOCK_HEAD if lock else READ_HEAD, project_id)
    if head is None:
        raise UnknownProject(project_id)
    return int(head)
