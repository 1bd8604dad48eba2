"""The server's own health as its connections hear it: ``status`` messages.

While the database cannot be reached the server stays up: connections stay open, pushes get
``server_unavailable`` (clients keep their changes and retry), and every connection is told
once, by a ``status`` message, that the server is degraded and why; then once more when it
is back. ``watch_database`` asks storage's health probe (``store.ports.Probe``) at a steady
interval and drives the board.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from fieldsync.store.ports import Probe
from fieldsync.sync.messages import Status

log = logging.getLogger(__name__)

OK = Status("ok")
DATABASE_UNAVAILABLE = "database_unavailable"


def database_down(reason: str) -> Status:
    return Status(
        "degraded",
        DATABASE_UNAVAILABLE,
        f"the server cannot reach its database ({reason}); changes stay on your device "
        "and are sent when it is back",
    )


class StatusListener(Protocol):
    """A connection that tells its client the server's status (``live.session``)."""

    def status_changed(self, status: Status) -> None: ...


class StatusBoard:
    """The current status, and the connections that hear about it: ``listeners`` gives the
    welcomed connections when a change is to be told (the sessions keep that set already,
    so the board keeps no reference to each connection of its own)."""

    def __init__(self, listeners: Callable[[], Iterable[StatusListener]] = tuple) -> None:
        self.database_problem: str | None = None  # why the database is down, while it is
        self.listeners = listeners

    @property
    def current(self) -> Status:
        problem = self.database_problem
        return OK if problem is None else database_down(problem)

    def watch(self, listener: StatusListener) -> None:
        """A connection was welcomed, and is among ``listeners`` from now on: it hears the
        current status at once, unless all is well."""
        if self.database_problem is not None:
            listener.status_changed(self.current)

    def database(self, problem: str | None) -> bool:
        """Record the database's state; True if that changed the status (and it was sent).
        While the database stays down, the first reason stands."""
        if (problem is None) == (self.database_problem is None):
            return False
        self.database_problem = problem
        status = self.current
        for listener in list(self.listeners()):
            listener.status_changed(status)
        return True


async def watch_database(
    probe: Probe,
    board: StatusBoard,
    on_change: Callable[[bool], None],
    *,
    interval: float,
    within: float,
) -> None:
    """Every ``interval`` seconds, ask ``probe`` (the database must answer within
    ``within``); on each change of state update the board and call ``on_change(up)``. Runs
    until cancelled, then closes the probe."""
    try:
        await _watch(probe, board, on_change, interval, within)
    finally:
        probe.close()


async def _watch(
    probe: Probe,
    board: StatusBoard,
    on_change: Callable[[bool], None],
    interval: float,
    within: float,
) -> None:
    while True:
        problem = await probe.problem(within)
        if board.database(problem):
            if problem is None:
                log.warning("database available again", extra={"event": "database_up"})
            else:
                log.error(
                    "database unavailable: %s",
                    problem,
                    extra={"event": "database_down", "reason": problem},
                )
            on_change(problem is None)
        await asyncio.sleep(interval)
