"""What the server holds, read independently of the SDK, and small waiting helpers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from automerge.core import Document

from fieldsync.model.automerge_format.changes import parse_change
from fieldsync.model.entities import SCHEMAS
from fieldsync.model.limits import DEFAULT_LIMITS
from fieldsync.model.merge import EntityChanges
from fieldsync.model.validation import inspect_document
from fieldsync.model.writer import create_entity
from fieldsync.store.changelog import Accepted, ChangeLog
from fieldsync.sync.messages import ProjectCursor
from tests.entities import activity_values
from tests.sync_client import SyncClient

ROOT = Path(__file__).resolve().parents[2]


async def spawn_worker(*args: str) -> asyncio.subprocess.Process:
    """A client app in its own process (``tests/client/kill_worker.py``), to be killed."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.client.kill_worker",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish_worker(process: asyncio.subprocess.Process, within: float = 60) -> list[str]:
    """Wait for a worker to exit successfully; its output lines."""
    out, err = await asyncio.wait_for(process.communicate(), within)
    assert process.returncode == 0, err.decode()
    return out.decode().splitlines()


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


async def seed_activities(
    pool: asyncpg.Pool, project: uuid.UUID, count: int, text_chars: int = 0
) -> list[str]:
    """Log ``count`` new activities (ids ``act-N-PROJECT``; entity ids are unique across
    projects) through the store, as other members' work; each description gets
    ``text_chars`` more characters, to make documents larger."""
    log = ChangeLog(pool)
    ids = [f"act-{i}-{project.hex[:12]}" for i in range(count)]
    batch: list[EntityChanges] = []
    ops = 0
    for entity_id in ids:
        values = activity_values("plan-1", title=f"Survey {entity_id}")
        filler = os.urandom(text_chars // 2 + 1).hex()[:text_chars]  # compresses badly
        values["description"] = f"{values['description']} {filler}"
        _, change = create_entity("activity", values)
        change_ops = parse_change(change).op_count
        if len(batch) == 200 or ops + change_ops > DEFAULT_LIMITS.max_ops_per_push:
            await _append_all(log, project, batch)
            batch, ops = [], 0
        batch.append(EntityChanges("activity", entity_id, [change]))
        ops += change_ops
    await _append_all(log, project, batch)
    return ids


async def _append_all(log: ChangeLog, project: uuid.UUID, batch: list[EntityChanges]) -> None:
    for result in await log.append(project, batch, sender="seed"):
        assert isinstance(result, Accepted), result


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


def peak_allocation(action: Callable[[], object]) -> int:
    """The most memory ``action`` held at once (Python and C extensions' allocations),
    whether or not it raised."""
    tracemalloc.start()
    try:
        with contextlib.suppress(Exception):
            action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def async_peak_allocation(action: Callable[[], Awaitable[object]]) -> int:
    """:func:`peak_allocation` of a coroutine, with whatever else runs on the loop meanwhile."""
    tracemalloc.start()
    try:
        with contextlib.suppress(Exception):
            await action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
