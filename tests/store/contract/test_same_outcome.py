"""The two implementations agree: the same offline edits, delivered to PostgreSQL in one
random order and batching and to the in-memory storage in another, give identical
documents (heads and content), read-model rows (but ``last_seq``, which depends on arrival
order), open conflicts and single-entity conflict records; and a rebuild of each leaves it
exactly as its appends did. (``tests/store/test_determinism.py`` is the same property
between two PostgreSQL databases.)"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldsync.conflict.records import SINGLE_ENTITY_KINDS, ConflictKind
from fieldsync.model.automerge_format.documents import load_document
from fieldsync.model.entities import SCHEMAS
from fieldsync.model.validation import inspect_document
from fieldsync.store.database import close_pool, create_pool
from fieldsync.store.memory import MemoryStorage
from fieldsync.store.ports import Storage
from fieldsync.store.postgres import PostgresStorage
from fieldsync.store.records import Accepted
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
from tests.store.contract.inspect import Inspector, MemoryInspector, PostgresInspector
from tests.store.test_determinism import _by_author, _reset

Outcome = dict[str, Any]


@pytest.fixture(scope="module")
async def scratch_database(postgres_server_url: str) -> AsyncIterator[str]:
    url = await create_migrated_database(postgres_server_url, "fs_same")
    try:
        yield url
    finally:
        await drop_database(postgres_server_url, url)


async def _deliver(
    storage: Storage, inspector: Inspector, project: uuid.UUID, session: Session,
    rng: random.Random,
) -> Outcome:  # fmt: skip
    logs = [storage.change_log(), storage.change_log()]  # two processes' caches
    for push in deliveries(session, rng):
        for sender, batch in _by_author(push):
            for result in await rng.choice(logs).append(project, batch, sender):
                assert isinstance(result, Accepted), result
    outcome = await _outcome(storage, inspector, project)
    report = await storage.maintenance.rebuild_read_models(project)
    assert report.consistent, str(report)
    assert report.conflicts_rewritten == [], str(report)
    assert await _outcome(storage, inspector, project) == outcome
    return outcome


async def _outcome(storage: Storage, inspector: Inspector, project: uuid.UUID) -> Outcome:
    documents = {}
    async with storage.snapshots.open(project) as snapshot:
        async for entity in snapshot.entities():
            doc = load_document(entity.document)
            values = inspect_document(SCHEMAS[entity.entity_type], doc).values
            documents[entity.entity_id] = (sorted(doc.get_heads()), values)
    state = await inspector.state(project)
    return {
        "documents": documents,
        "read_models": {
            entity_type: sorted(
                (entity_id, *(v for c, v in row if c != "last_seq")) for entity_id, row in rows
            )
            for entity_type, rows in state.read_models
        },
        "open": {r.conflict_id: r.details for r in state.conflicts if r.status == "open"},
        "single_entity": {
            r.conflict_id: (r.status, r.details)
            for r in state.conflicts
            if ConflictKind(r.kind) in SINGLE_ENTITY_KINDS
        },
    }


async def _on_postgres(url: str, session: Session, rng: random.Random) -> Outcome:
    project = await _reset(url)
    pool = await create_pool(url, 1, 4)
    try:
        return await _deliver(PostgresStorage(pool, url), PostgresInspector(pool), project,
                              session, rng)  # fmt: skip
    finally:
        await close_pool(pool)


async def _in_memory(session: Session, rng: random.Random) -> Outcome:
    memory = MemoryStorage()
    account = await memory.admin.create_account("Determinism")
    project = await memory.admin.create_project(account, "Determinism")
    return await _deliver(memory, MemoryInspector(memory), project, session, rng)


@settings(
    max_examples=examples(10),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(sessions(devices=(2, 4), steps=18), st.integers(0, 2**32))
def test_postgresql_and_memory_store_the_same_outcome(
    scratch_database: str, case: tuple[int, list[Step]], seed: int
) -> None:
    count, steps = case
    session = play(project_entities(), count, steps)
    rng = random.Random(seed)
    on_postgres = asyncio.run(_on_postgres(scratch_database, session, random.Random(rng.random())))
    in_memory = asyncio.run(_in_memory(session, random.Random(rng.random())))
    assert in_memory["documents"] == on_postgres["documents"]
    assert in_memory["read_models"] == on_postgres["read_models"]
    assert in_memory["open"] == on_postgres["open"]
    assert in_memory["single_entity"] == on_postgres["single_entity"]
