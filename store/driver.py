"""The storage edge: what counts as a driver failure, and the one place it becomes a
``StoreError``.

asyncpg fails in families that share no base class: errors PostgreSQL reported
(``PostgresError``, by SQLSTATE), the library's own (``InterfaceError``: a closed connection
or pool, a bad argument), its protocol state machine (``InternalClientError``, e.g. "cannot
switch to state 15" when a connection dies under a query), and the socket's (``OSError``,
which includes ``ConnectionError`` and ``TimeoutError``). Every public coroutine of
``store/`` runs inside ``driver_errors`` (through the ``translated`` decorator, or directly
in a generator), so callers above the store only ever see:

- ``DatabaseUnavailable`` when the database is down, the connection was lost, or the server
  is shutting down, restarting or out of resources: the same request later may succeed;
- ``DatabaseFailed`` when the database refused the statement itself (a bug, a schema that
  does not match, damaged data): repeating it will not help.

The driver's error stays attached as ``__cause__``, for logs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

import asyncpg

from fieldsync.store.errors import DatabaseFailed, DatabaseUnavailable, StoreError

DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,  # ConnectionError and TimeoutError are OSErrors too
)
"""Every exception the driver (or the socket under it) raises."""

OUTAGE_SQLSTATE_CLASSES = frozenset(
    {
        "08",  # connection exception
        "53",  # insufficient resources: too many connections, disk full, out of memory
        "57",  # operator intervention: admin or crash shutdown, cannot connect now, canceled
        "58",  # system error: I/O
    }
)
"""SQLSTATE classes in which the server, not the statement, is the problem."""

P = ParamSpec("P")
T = TypeVar("T")

_translated: set[Callable[..., object]] = set()


def is_outage(exc: BaseException) -> bool:
    """Whether a driver error means the database is unavailable (rather than that it
    refused the statement)."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "")[:2] in OUTAGE_SQLSTATE_CLASSES
    # An InterfaceError that is also a ValueError is a bad argument or setting, not a lost
    # connection; everything else on the client side (a closed connection or pool, a
    # protocol state broken by a dying connection, a socket error) is an outage.
    return not isinstance(exc, ValueError)


def translate(exc: BaseException, doing: str) -> StoreError:
    """The StoreError for a driver error raised while ``doing`` (e.g. "reading the log")."""
    detail = str(exc)
    reason = f"{doing} failed: {type(exc).__name__}" + (f": {detail}" if detail else "")
    return DatabaseUnavailable(reason) if is_outage(exc) else DatabaseFailed(reason)


@contextmanager
def driver_errors(doing: str) -> Iterator[None]:
    """Driver errors raised inside the block leave it as StoreErrors."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise translate(exc, doing) from exc


def translated(
    doing: str,
) -> Callable[[Callable[P, Coroutine[Any, Any, T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Decorate a coroutine function of the store: it raises StoreErrors, never the
    driver's errors."""

    def decorate(
        function: Callable[P, Coroutine[Any, Any, T]],
    ) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(function)
        async def call(*args: P.args, **kwargs: P.kwargs) -> T:
            with driver_errors(doing):
                return await function(*args, **kwargs)

        _translated.add(call)
        return call

    return decorate


def is_translated(function: object) -> bool:
    """Whether ``function`` was made by ``translated`` (for the tests that check all are)."""
    return function in _translated


def driver_error_name(error: StoreError) -> str:
    """The name of the driver error a StoreError was translated from (its own otherwise)."""
    cause = error.__cause__
    return type(cause if cause is not None else error).__name__
