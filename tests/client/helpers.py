"""What the server holds, read independently of the SDK, and small waiting helpers."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import asyncpg
from automerge.core import Document

from model.entities import SCHEMAS
from model.validation import inspect_document
from sync.messages import ProjectCursor
from tests.sync_client import SyncClient


async def server_documents(base: str, token: str, project: uuid.UUID) -> dict[str, Document]:
    """Every entity document of the project, from a fresh snapshot over the protocol."""
    client = await SyncClient.connect(base)
    try:
        await client.hello(token, [ProjectCursor(str(project), None)])
        replica = await client.sync_until_synced(str(project))
    finally:
        await client.close()
    return replica.documents


def values_of(entity_type: str, doc: Document) -> dict[str, object]:
    inspection = inspect_document(SCHEMAS[entity_type], doc)
    assert inspection.ok, inspection.violations
    return inspection.values


async def logged_hashes(pool: asyncpg.Pool, project: uuid.UUID) -> list[bytes]:
    """The hash of every logged change of the project, in seq order."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT hash FROM changes WHERE project_id = $1 ORDER BY seq", project
        )
    return [bytes(row["hash"]) for row in rows]


async def head_seq(pool: asyncpg.Pool, project: uuid.UUID) -> int:
    async with pool.acquire() as conn:
        head: int = await conn.fetchval(
            "SELECT head_seq FROM log_heads WHERE project_id = $1", project
        )
    return head


async def until(predicate: Callable[[], bool], within: float = 10.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.01)
