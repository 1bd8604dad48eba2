"""When the database goes away, every port fails with the storage's own errors
(``DatabaseUnavailable``, a ``StoreError``: never a driver's exception), health says why,
and once it is back everything works again without a restart.

PostgreSQL is a server of this test's own, stopped for real; the in-memory storage is told
to fail (its test double).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import create_entity
from fieldsync.store.errors import DatabaseFailed, DatabaseUnavailable, StoreError
from fieldsync.store.memory import MemoryStorage
from fieldsync.store.ports import ChangeLogPort, Storage
from fieldsync.store.postgres import PostgresStorage
from fieldsync.store.records import Accepted
from tests.entities import location_values, new_id
from tests.postgres_process import start_postgres, stop_postgres
from tests.store.contract.conftest import IMPLEMENTATIONS, new_member, new_project


@dataclass
class Breakable:
    storage: Storage
    project: uuid.UUID
    user: uuid.UUID
    down: Callable[[], None]
    up: Callable[[], None]


@pytest.fixture(params=IMPLEMENTATIONS)
async def breakable(request: pytest.FixtureRequest) -> AsyncIterator[Breakable]:
    if request.param == "memory":
        memory = MemoryStorage()
        project = await new_project(memory, "Breakable")
        user = await new_member(memory, project)
        yield Breakable(memory, project, user, memory.fail, memory.recover)
        return
    url, pgdata = request.getfixturevalue("own_postgres")
    storage = await PostgresStorage.open(url, min_size=1, max_size=2)
    try:
        await storage.maintenance.migrate()
        project = await new_project(storage, "Breakable")
        user = await new_member(storage, project)
        yield Breakable(
            storage, project, user, lambda: stop_postgres(pgdata), lambda: start_postgres(pgdata)
        )
    finally:
        await storage.close()


def _operations(
    storage: Storage, log: ChangeLogPort, project: uuid.UUID, user: uuid.UUID
) -> dict[str, Callable[[], Awaitable[object]]]:
    _, created = create_entity("location", location_values())

    async def snapshot() -> object:
        async with storage.snapshots.open(project) as opened:
            return await opened.count()

    return {
        "append": lambda: log.append(
            project, [EntityChanges("location", new_id(), [created])], "u", as_member=user
        ),
        "read_since": lambda: log.read_since(project, 0),
        "head": lambda: log.head(project),
        "level": lambda: storage.membership.level(project, user),
        "still_member_of": lambda: storage.membership.still_member_of(user, [project]),
        "levels": lambda: storage.membership.levels([(project, user)]),
        "snapshot": snapshot,
        "notify_head": lambda: storage.notifications.notify_head(project, 1),
        "create_account": lambda: storage.admin.create_account("Never made"),
        "list_projects": lambda: storage.admin.list_projects(),
        "show_project": lambda: storage.admin.show_project(project),
        "check_schema": lambda: storage.maintenance.check_schema(),
        "rebuild": lambda: storage.maintenance.rebuild_read_models(project),
    }


async def test_every_port_fails_with_store_errors_while_the_database_is_down(
    breakable: Breakable,
) -> None:
    storage = breakable.storage
    log = storage.change_log()
    operations = _operations(storage, log, breakable.project, breakable.user)
    assert isinstance((await log.append(*_one_location(breakable.project)))[0], Accepted)

    breakable.down()
    for name, operation in operations.items():
        with pytest.raises(DatabaseUnavailable) as caught:
            await operation()
        assert isinstance(caught.value, StoreError), name
        assert " failed: " in str(caught.value), name  # says what failed, and why
    probe = storage.health.probe()
    try:
        assert await probe.problem(2.0) is not None
    finally:
        probe.close()

    breakable.up()
    async with asyncio.timeout(30):
        while True:  # a pool finds the database again on its next attempt
            try:
                await log.head(breakable.project)
                break
            except DatabaseUnavailable:
                await asyncio.sleep(0.1)
    for operation in operations.values():
        await operation()  # each works again
    probe = storage.health.probe()
    try:
        assert await probe.problem(2.0) is None
    finally:
        probe.close()
    assert await log.head(breakable.project) == 2


def _one_location(project: uuid.UUID) -> tuple[uuid.UUID, list[EntityChanges], str]:
    _, created = create_entity("location", location_values())
    return project, [EntityChanges("location", new_id(), [created])], "u"


async def test_the_memory_double_fails_with_the_error_it_is_given() -> None:
    memory = MemoryStorage()
    project = await new_project(memory, "Refusing")
    memory.fail("the statement was refused (simulated)", DatabaseFailed)
    with pytest.raises(DatabaseFailed, match="reading the log head failed: the statement was"):
        await memory.change_log().head(project)
    memory.recover()
    assert await memory.change_log().head(project) == 0
