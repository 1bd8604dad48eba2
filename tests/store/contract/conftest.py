"""The contract suite: every test here runs once per storage implementation.

``storage`` is a ``store.ports.Storage``: PostgreSQL (on the session's migrated database,
``tests/conftest.py``) or memory (a new one per test). Tests use it through its ports only,
plus an :class:`~tests.store.contract.inspect.Inspector` where they check what storage keeps
behind them. ``project`` and ``other_project`` are made through the admin port.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest

from fieldsync.store.memory import MemoryStorage
from fieldsync.store.ports import ChangeLogPort, Storage
from fieldsync.store.postgres import PostgresStorage
from tests.store.contract.inspect import Inspector, MemoryInspector, PostgresInspector

IMPLEMENTATIONS = ["postgres", "memory"]


@dataclass
class Backend:
    name: str
    storage: Storage
    inspector: Inspector
    peer: Storage  # the same data as another server process sees it


@pytest.fixture(params=IMPLEMENTATIONS)
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "postgres":
        pool = request.getfixturevalue("pool")
        database_url = request.getfixturevalue("database_url")
        return Backend(
            "postgres",
            PostgresStorage(pool, database_url),
            PostgresInspector(pool),
            PostgresStorage(pool, database_url),
        )
    memory = MemoryStorage()
    return Backend("memory", memory, MemoryInspector(memory), memory)


@pytest.fixture
def storage(backend: Backend) -> Storage:
    return backend.storage


@pytest.fixture
def inspector(backend: Backend) -> Inspector:
    return backend.inspector


@pytest.fixture
def peer(backend: Backend) -> Storage:
    """The same storage as another server process has it (PostgreSQL: another storage
    object on the same database; memory: the same object, given to several apps)."""
    return backend.peer


@pytest.fixture
def log(storage: Storage) -> ChangeLogPort:
    return storage.change_log()


async def new_project(storage: Storage, name: str) -> uuid.UUID:
    account_id = await storage.admin.create_account(f"{name} account")
    return await storage.admin.create_project(account_id, name)


@pytest.fixture
async def project(storage: Storage) -> uuid.UUID:
    return await new_project(storage, "Test project")


@pytest.fixture
async def other_project(storage: Storage) -> uuid.UUID:
    return await new_project(storage, "Other project")


async def new_member(storage: Storage, project_id: uuid.UUID, level: str = "lead") -> uuid.UUID:
    user_id = await storage.admin.create_user(f"{level} {uuid.uuid4().hex[:6]}")
    await storage.admin.add_member(project_id, user_id, level)
    return user_id
