"""Determinism on the real store: the same offline edits, delivered in any order, in any
batching, with duplicates, through one or two server processes (change logs with their own
caches) give identical documents, read-model rows and conflict records.

Devices (2-4) edit related entities offline and sync now and then (``tests.conflict``'s
sessions); every change then reaches a real PostgreSQL twice, in two random delivery orders,
each into its own database. Each device pushes its own changes (the sender of a change is
its author, as with the SDK). Compared: heads and materialised content of every document,
every read-model row except ``last_seq`` (the seq of a change depends on arrival order), the
open conflicts, and every single-entity conflict record, open or resolved. A rebuild of each
database must leave it exactly as the append path left it. Cross-entity records that opened
and closed in between depend on the log's order (``docs/conflicts.md``): only the open ones
are compared.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldsync.conflict.records import SINGLE_ENTITY_KINDS, ConflictKind
from fieldsync.model.automerge_format.changes import parse_change
from fieldsync.model.automerge_format.documents import load_document
from fieldsync.model.entities import SCHEMAS
from fieldsync.model.merge import EntityChanges
from fieldsync.model.validation import inspect_document
from fieldsync.store.changelog import Accepted, ChangeLog
from fieldsync.store.database import close_pool, connect, create_pool
from fieldsync.store.projects import create_account, create_project
from fieldsync.store.readmodels import read_model_tables
from fieldsync.store.rebuild import rebuild_read_models
from tests.conflict.scenarios import (
    Session,
    Step,
    deliveries,
    examples,
    play,
    project_entities,
    sessions,
)
from tests.conftest import create_migrated_database, drop_database

Outcome = dict[str, Any]


@pytest.fixture(scope="module")
async def two_databases(postgres_server_url: str) -> AsyncIterator[list[str]]:
    urls = [await create_migrated_database(postgres_server_url, "fs_det") for _ in range(2)]
    try:
        yield urls
    finally:
        for url in urls:
            await drop_database(postgres_server_url, url)


def _sender(change: bytes) -> str:
    return f"user-{parse_change(change).actor.hex()[:2]}"


def _by_author(
    push: list[tuple[str, str, list[bytes]]],
) -> list[tuple[str, list[EntityChanges]]]:
    """A push cut into pushes of one author each, every entity's changes kept in order."""
    remaining = [(t, e, list(cs)) for t, e, cs in push]
    pushes = []
    while any(cs for _, _, cs in remaining):
        sender = next(_sender(cs[0]) for _, _, cs in remaining if cs)
        batch = []
        for entity_type, entity_id, changes in remaining:
            run = 0
            while run < len(changes) and _sender(changes[run]) == sender:
                run += 1
            if run:
                batch.append(EntityChanges(entity_type, entity_id, changes[:run]))
                del changes[:run]
        pushes.append((sender, batch))
    return pushes


async def _reset(url: str) -> uuid.UUID:
    """An empty database holding one project: the scenarios reuse their entity ids."""
    conn = await connect(url)
    try:
        tables = [
            r["tablename"]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'schema_migrations' AND tablename NOT LIKE 'changes_p%'"
            )
        ]
        await conn.execute(f"TRUNCATE {', '.join(tables)} CASCADE")
        account = await create_account(conn, "Determinism")
        return await create_project(conn, account, "Determinism")
    finally:
        await conn.close()


async def _deliver(url: str, session: Session, rng: random.Random, processes: int) -> Outcome:
    project = await _reset(url)
    pool = await create_pool(url, 1, 4)
    try:
        logs = [ChangeLog(pool) for _ in range(processes)]
        for push in deliveries(session, rng):
            for sender, batch in _by_author(push):
                for result in await rng.choice(logs).append(project, batch, sender):
                    assert isinstance(result, Accepted), result
        outcome = await _outcome(pool, project)
        report = await rebuild_read_models(pool, project)
        assert report.consistent, str(report)
        assert report.conflicts_rewritten == [], str(report)
        assert await _outcome(pool, project) == outcome
        return outcome
    finally:
        await close_pool(pool)


async def _outcome(pool: Any, project: uuid.UUID) -> Outcome:
    async with pool.acquire() as conn:
        documents = {}
        for r in await conn.fetch(
            "SELECT entity_id, entity_type, saved || tail AS doc FROM documents "
            "WHERE project_id = $1",
            project,
        ):
            doc = load_document(r["doc"])
            values = inspect_document(SCHEMAS[r["entity_type"]], doc).values
            documents[r["entity_id"]] = (sorted(doc.get_heads()), values)
        read_models = {}
        for table in read_model_tables():
            rows = await conn.fetch(f"SELECT * FROM {table} WHERE project_id = $1", project)
            read_models[table] = sorted(
                (tuple(v for k, v in r.items() if k not in ("project_id", "last_seq")))
                for r in rows
            )
        conflicts = await conn.fetch(
            "SELECT conflict_id, kind, status, details::text AS details FROM rm_conflicts "
            "WHERE project_id = $1",
            project,
        )
    return {
        "documents": documents,
        "read_models": read_models,
        "open": {
            r["conflict_id"]: json.loads(r["details"]) for r in conflicts if r["status"] == "open"
        },
        "single_entity": {
            r["conflict_id"]: (r["status"], json.loads(r["details"]))
            for r in conflicts
            if ConflictKind(r["kind"]) in SINGLE_ENTITY_KINDS
        },
    }


@settings(
    max_examples=examples(20),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(sessions(devices=(2, 4), steps=18), st.integers(0, 2**32))
def test_any_delivery_through_one_or_two_processes_gives_identical_state(
    two_databases: list[str], case: tuple[int, list[Step]], seed: int
) -> None:
    count, steps = case
    session = play(project_entities(), count, steps)
    rng = random.Random(seed)
    first, second = (
        asyncio.run(_deliver(url, session, random.Random(rng.random()), processes))
        for url, processes in zip(two_databases, (1, 2), strict=True)
    )
    assert first["documents"] == second["documents"]
    assert first["read_models"] == second["read_models"]
    assert first["open"] == second["open"]
    assert first["single_entity"] == second["single_entity"]
