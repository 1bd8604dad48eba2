"""The storage edge: no driver error leaves ``store/`` as itself.

First the translation alone, for every exception class asyncpg has (and the socket's);
then that every public coroutine of ``store/`` goes through it; then real failures: a
connection PostgreSQL terminates under an append, a query, a notification and a snapshot.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import asyncpg.exceptions
import asyncpg.exceptions._base
import pytest

import fieldsync.store as store
from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import create_entity
from fieldsync.store.authorization import write_rule
from fieldsync.store.changelog import Accepted, ChangeLog
from fieldsync.store.database import DatabasePool, close_pool, connect, create_pool
from fieldsync.store.driver import (
    DRIVER_ERRORS,
    driver_errors,
    is_translated,
    translate,
    translated,
)
from fieldsync.store.errors import DatabaseFailed, DatabaseUnavailable, StoreError
from fieldsync.store.notifications import notify
from fieldsync.store.projects import member_level
from fieldsync.store.snapshots import open_snapshot
from tests.entities import location_values, new_id
from tests.postgres_process import terminate_holding_the_loop
from tests.test_layers import STORAGE_NEUTRAL


def _asyncpg_exception_classes() -> list[type[BaseException]]:
    found: set[type[BaseException]] = set()
    for module in (asyncpg.exceptions, asyncpg.exceptions._base):
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and not issubclass(value, Warning)  # log messages, never raised
            ):
                found.add(value)
    return sorted(found, key=lambda c: (c.__module__, c.__qualname__))


DRIVER_CLASSES = [
    *_asyncpg_exception_classes(),
    OSError,
    ConnectionError,
    ConnectionRefusedError,
    ConnectionResetError,
    BrokenPipeError,
    FileNotFoundError,  # a Unix socket that is not there
    TimeoutError,
]

OUTAGES = [
    asyncpg.InternalClientError,  # "cannot switch to state 15": the connection died under it
    asyncpg.exceptions.ProtocolError,
    asyncpg.InterfaceError,  # "connection is closed", "pool is closed"
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.DiskFullError,
    asyncpg.exceptions.QueryCanceledError,
    OSError,
    ConnectionResetError,
    TimeoutError,
]

REFUSALS = [
    asyncpg.UniqueViolationError,
    asyncpg.exceptions.UndefinedTableError,
    asyncpg.exceptions.PostgresSyntaxError,
    asyncpg.exceptions.DataError,  # PostgreSQL's class 22
    asyncpg.exceptions._base.DataError,  # the client's: an argument it cannot encode
    asyncpg.exceptions.ClientConfigurationError,
    asyncpg.exceptions.DeadlockDetectedError,
]


def _name(cls: type[BaseException]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@pytest.mark.parametrize("cls", DRIVER_CLASSES, ids=_name)
def test_every_driver_error_becomes_a_store_error(cls: type[BaseException]) -> None:
    error = cls("boom")
    assert isinstance(error, DRIVER_ERRORS)
    with (
        pytest.raises(StoreError, match="reading the log failed") as caught,
        driver_errors("reading the log"),
    ):
        raise error
    assert caught.value.__cause__ is error
    assert isinstance(caught.value, DatabaseUnavailable | DatabaseFailed)


@pytest.mark.parametrize("cls", OUTAGES, ids=_name)
def test_lost_connections_and_server_shutdowns_are_outages(cls: type[BaseException]) -> None:
    assert isinstance(translate(cls("boom"), "appending"), DatabaseUnavailable)


@pytest.mark.parametrize("cls", REFUSALS, ids=_name)
def test_refused_statements_are_not_outages(cls: type[BaseException]) -> None:
    assert isinstance(translate(cls("boom"), "appending"), DatabaseFailed)


async def test_translated_lets_everything_else_through() -> None:
    @translated("doing it")
    async def raising(error: BaseException) -> None:
        raise error

    for passing in (
        DatabaseUnavailable("already ours"),
        ValueError("a bug"),
        asyncio.CancelledError(),
    ):
        with pytest.raises(type(passing)) as caught:
            await raising(passing)
        assert caught.value is passing
    with pytest.raises(DatabaseUnavailable, match="doing it failed: InternalClientError"):
        await raising(asyncpg.InternalClientError("cannot switch to state 15"))


def _store_functions() -> dict[str, Any]:
    """Every public function and method defined in the PostgreSQL storage (the modules of
    ``store/`` but the storage-neutral ones, which reach no driver: tests/test_layers.py),
    by qualified name."""
    found: dict[str, Any] = {}
    for info in pkgutil.iter_modules(store.__path__):
        if f"fieldsync.store.{info.name}" in STORAGE_NEUTRAL:
            continue
        module = importlib.import_module(f"store.{info.name}")
        for name, value in vars(module).items():
            if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(value):
                for attribute, member in vars(value).items():
                    if not attribute.startswith("_") and inspect.isfunction(member):
                        found[f"{module.__name__}.{name}.{attribute}"] = member
            elif inspect.isfunction(value):
                found[f"{module.__name__}.{name}"] = value
    return found


# Async generators cannot be wrapped by ``translated``: their bodies run inside
# ``driver_errors``, and the tests below make them fail for real.
GENERATORS = {"store.snapshots.open_snapshot", "store.snapshots.Snapshot.entities"}


def test_every_public_coroutine_of_the_store_translates_driver_errors() -> None:
    coroutines = []
    generators = set()
    for name, function in _store_functions().items():
        inner = inspect.unwrap(function)
        if inspect.isasyncgenfunction(inner):
            generators.add(name)
        elif inspect.iscoroutinefunction(inner):
            coroutines.append(name)
            assert is_translated(function), f"{name} lets the driver's errors out"
    assert generators == GENERATORS
    assert "store.changelog.ChangeLog.append" in coroutines  # the walk finds methods too
    assert len(coroutines) > 30


# --- real failures -----------------------------------------------------------------------


async def _new_changes(n: int = 1) -> list[EntityChanges]:
    batch = []
    for i in range(n):
        _, change = create_entity("location", location_values(i))
        batch.append(EntityChanges("location", new_id(), [change]))
    return batch


async def test_append_whose_connection_is_terminated_under_the_lock(
    pool: asyncpg.Pool, database_url: str, project: uuid.UUID, member: Any
) -> None:
    """The deterministic version of a crash inside the push transaction: the append holds
    the project's lock when PostgreSQL ends its connection."""
    user, _ = await member(project)
    log = ChangeLog(pool)
    killer = await connect(database_url)
    rule = write_rule(project, user)

    async def terminated(conn: Any) -> Any:
        await killer.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
        return await rule(conn)

    head = await log.head(project)
    try:
        for _ in range(3):
            with pytest.raises(DatabaseUnavailable) as caught:
                await log.append(project, await _new_changes(3), "s", authorize=terminated)
            assert isinstance(caught.value.__cause__, DRIVER_ERRORS)
    finally:
        await killer.close()
    # Nothing was logged, the lock went with the connection, and the next append works.
    assert await log.head(project) == head
    results = await log.append(project, await _new_changes(), "s", authorize=rule)
    assert isinstance(results[0], Accepted)
    assert await log.head(project) == head + 1


Operation = Callable[[DatabasePool, uuid.UUID], Awaitable[object]]


async def _append(pool: DatabasePool, project: uuid.UUID) -> object:
    return await ChangeLog(pool).append(project, await _new_changes(), "s")


async def _read(pool: DatabasePool, project: uuid.UUID) -> object:
    return await ChangeLog(pool).read_since(project, 0)


async def _member(pool: DatabasePool, project: uuid.UUID) -> object:
    async with pool.acquire() as conn:
        return await member_level(conn, project, uuid.uuid4())


async def _notify(pool: DatabasePool, project: uuid.UUID) -> object:
    await notify(pool, project, 1)
    return None


async def _snapshot(pool: DatabasePool, project: uuid.UUID) -> object:
    async with open_snapshot(pool, project) as snapshot:
        return [entity async for entity in snapshot.entities()], await snapshot.count()


@pytest.mark.parametrize(
    "operation",
    [_append, _read, _member, _notify, _snapshot],
    ids=["append", "read_since", "member_level", "notify", "snapshot"],
)
async def test_a_connection_that_died_while_idle_in_the_pool(
    database_url: str, project: uuid.UUID, operation: Operation
) -> None:
    """PostgreSQL ends a pooled connection while it sits idle: its last words (a FATAL
    error) and its end arrive one loop turn apart, and a query sent in between breaks the
    driver's protocol state ("cannot switch to state 15"). The operation starts from 4 loop
    turns before both arrive (some work first: an append applies its changes ahead, a turn
    per entity, before its first query) to 4 turns after, so its first query meets each
    stage; each time it succeeds (on a new connection) or fails with a StoreError, never
    with the driver's error."""
    pool = await create_pool(database_url, min_size=1, max_size=1)
    causes = []
    try:
        for _ in range(2):
            for turns in range(-4, 5):
                async with pool.acquire() as conn:
                    pid = conn.get_server_pid()
                early = None
                if turns < 0:
                    early = asyncio.ensure_future(operation(pool, project))
                    for _ in range(-turns - 1):
                        await asyncio.sleep(0)
                terminate_holding_the_loop(database_url, "SELECT $1::int", pid)
                for _ in range(turns):
                    await asyncio.sleep(0)
                try:
                    await (early if early is not None else operation(pool, project))
                except DatabaseUnavailable as exc:
                    causes.append(type(exc.__cause__))
                await asyncio.sleep(0.05)
    finally:
        await close_pool(pool)
    assert asyncpg.InternalClientError in causes, causes
