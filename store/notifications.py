"""Telling other server processes, through PostgreSQL, that a project's log grew (pointers,
never payloads), and that a member was removed from a project.

A NOTIFY inside the appending transaction would take PostgreSQL's cluster-wide notify lock
and hold it through commit, serialising every writer; so the pointer (project and head seq)
is sent after the commit, on its own. Receivers read the log by cursor, so a notification
that is lost (listener reconnecting, process busy) delays delivery until the next periodic
head check but loses nothing.

A removal is notified inside the removing transaction (``remove_member``): PostgreSQL then
delivers it exactly when the removal commits, from whichever process made it (a server or
the ``fieldsync member remove`` command). Removals are rare, so the notify lock costs
nothing there. A removal notice missed while a listener reconnects is made up for by the
``on_connected`` callback, which re-checks whatever depends on membership.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from uuid import UUID

import asyncpg

from fieldsync.store import heads
from fieldsync.store.driver import driver_errors, translated
from fieldsync.store.errors import StoreError
from fieldsync.store.ports import PointerHandler, RemovalHandler

CHANNEL = "fieldsync_log"
MEMBERSHIP_CHANNEL = "fieldsync_membership"
log = logging.getLogger(__name__)


def encode_pointer(project_id: UUID, seq: int) -> str:
    return f"{project_id}:{seq}"


def decode_pointer(payload: str) -> tuple[UUID, int] | None:
    """The pointer in a payload, or None for anything malformed."""
    project, _, seq = payload.partition(":")
    try:
        return UUID(project), int(seq)
    except ValueError:
        return None


@translated("notifying other processes")
async def notify(pool: asyncpg.Pool, project_id: UUID, seq: int) -> None:
    await pool.execute("SELECT pg_notify($1, $2)", CHANNEL, encode_pointer(project_id, seq))


def encode_removal(project_id: UUID, user_id: UUID) -> str:
    return f"{project_id}:{user_id}"


def decode_removal(payload: str) -> tuple[UUID, UUID] | None:
    """The (project, user) of a removal notice, or None for anything malformed."""
    project, _, user = payload.partition(":")
    try:
        return UUID(project), UUID(user)
    except ValueError:
        return None


@translated("notifying a membership removal")
async def notify_removal(conn: asyncpg.Connection, project_id: UUID, user_id: UUID) -> None:
    """Call inside the removing transaction: delivered if, and when, it commits."""
    await conn.execute(
        "SELECT pg_notify($1, $2)", MEMBERSHIP_CHANNEL, encode_removal(project_id, user_id)
    )


@translated("listening for log pointers")
async def listen(url: str, on_pointer: PointerHandler, *, retry_seconds: float = 1.0) -> None:
    """Deliver every pointer to ``on_pointer``; reconnect whenever the connection drops
    (each failure is one log line). Runs until cancelled."""

    def received(payload: str) -> None:
        pointer = decode_pointer(payload)
        if pointer is not None:
            on_pointer(*pointer)

    await _listen(url, CHANNEL, received, retry_seconds=retry_seconds)


@translated("listening for membership removals")
async def listen_removals(
    url: str,
    on_removed: RemovalHandler,
    *,
    on_connected: Callable[[], None] | None = None,
    retry_seconds: float = 1.0,
) -> None:
    """Deliver every membership removal to ``on_removed``, until cancelled.

    ``on_connected`` runs each time listening (re)starts, after which no removal is missed.
    """

    def received(payload: str) -> None:
        removal = decode_removal(payload)
        if removal is not None:
            on_removed(*removal)

    await _listen(url, MEMBERSHIP_CHANNEL, received, on_connected, retry_seconds=retry_seconds)


async def _listen(
    url: str,
    channel: str,
    on_payload: Callable[[str], None],
    on_connected: Callable[[], None] | None = None,
    *,
    retry_seconds: float,
) -> None:
    def received(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        on_payload(payload)

    while True:
        conn: asyncpg.Connection | None = None
        try:
            with driver_errors(f"listening on {channel}"):
                conn = await asyncpg.connect(url)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(channel, received)
            if on_connected is not None:
                on_connected()
            await lost.wait()
        except StoreError as exc:
            log.warning(
                "%s notifications unavailable, retrying: %s",
                channel,
                exc,
                extra={"event": "listener_unavailable", "channel": channel},
            )
        finally:
            if conn is not None:
                conn.terminate()
        await asyncio.sleep(retry_seconds)


@translated("checking log heads")
async def read_heads(pool: asyncpg.Pool, projects: Sequence[UUID]) -> dict[UUID, int]:
    """The head seqs of those of ``projects`` that exist."""
    rows = await pool.fetch(
        "SELECT project_id, head_seq FROM log_heads WHERE project_id = ANY($1::uuid[])",
        list(projects),
    )
    return {row["project_id"]: row["head_seq"] for row in rows}


@translated("checking log heads")
async def poll_heads(
    pool: asyncpg.Pool,
    projects: Callable[[], Sequence[UUID]],
    on_pointer: PointerHandler,
    *,
    interval: float,
) -> None:
    """Every ``interval`` seconds, report the heads of the watched projects; until cancelled
    (a failed check is one log line, and the next one tries again).

    This is what makes missed notifications harmless.
    """
    await heads.poll_heads(
        lambda watched: read_heads(pool, watched), projects, on_pointer, interval=interval
    )
