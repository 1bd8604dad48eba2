"""Telling other server processes that a project's log grew: pointers, never payloads.

A NOTIFY inside the appending transaction would take PostgreSQL's cluster-wide notify lock
and hold it through commit, serialising every writer; so the pointer (project and head seq)
is sent after the commit, on its own. Receivers read the log by cursor, so a notification
that is lost (listener reconnecting, process busy) delays delivery until the next periodic
head check but loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from uuid import UUID

import asyncpg

CHANNEL = "fieldsync_log"
log = logging.getLogger(__name__)

PointerHandler = Callable[[UUID, int], None]


def encode_pointer(project_id: UUID, seq: int) -> str:
    return f"{project_id}:{seq}"


def decode_pointer(payload: str) -> tuple[UUID, int] | None:
    """The pointer in a payload, or None for anything malformed."""
    project, _, seq = payload.partition(":")
    try:
        return UUID(project), int(seq)
    except ValueError:
        return None


async def notify(pool: asyncpg.Pool, project_id: UUID, seq: int) -> None:
    await pool.execute("SELECT pg_notify($1, $2)", CHANNEL, encode_pointer(project_id, seq))


async def listen(url: str, on_pointer: PointerHandler, *, retry_seconds: float = 1.0) -> None:
    """Deliver every pointer to ``on_pointer``; reconnect whenever the connection drops.

    Runs until cancelled.
    """

    def received(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        pointer = decode_pointer(payload)
        if pointer is not None:
            on_pointer(*pointer)

    while True:
        conn: asyncpg.Connection | None = None
        try:
            conn = await asyncpg.connect(url)
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
            await conn.add_listener(CHANNEL, received)
            await lost.wait()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("log notifications unavailable, retrying: %s", exc)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)
        await asyncio.sleep(retry_seconds)


async def poll_heads(
    pool: asyncpg.Pool,
    projects: Callable[[], Sequence[UUID]],
    on_pointer: PointerHandler,
    *,
    interval: float,
) -> None:
    """Every ``interval`` seconds, report the heads of the watched projects; until cancelled.

    This is what makes missed notifications harmless.
    """
    while True:
        await asyncio.sleep(interval)
        watched = list(projects())
        if not watched:
            continue
        try:
            rows = await pool.fetch(
                "SELECT project_id, head_seq FROM log_heads WHERE project_id = ANY($1::uuid[])",
                watched,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("checking log heads failed: %s", exc)
            continue
        for row in rows:
            on_pointer(row["project_id"], row["head_seq"])
