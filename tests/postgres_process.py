"""A test's own embedded PostgreSQL, stopped the hard ways and started again.

Stopping the session's shared server would fail other tests, so the tests that take
PostgreSQL down get one of their own (the ``own_postgres`` fixture in ``tests/conftest.py``,
or their own data directory) and use these helpers on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from fieldsync.store.database import connect

PROCESS_EXIT_TIMEOUT = 10.0


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


def stop_postgres(pgdata: Path) -> None:
    """Immediate shutdown (SIGQUIT, as after a crash); returns once the postmaster is gone."""
    pid = postmaster_pid(pgdata)
    os.kill(pid, signal.SIGQUIT)
    deadline = time.monotonic() + 2 * PROCESS_EXIT_TIMEOUT
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, "PostgreSQL did not stop"
        time.sleep(0.05)


def kill_postmaster(pgdata: Path, *, every_process: bool = False) -> list[psutil.Process]:
    """SIGKILL the postmaster (no shutdown checkpoint), as a crash or the OOM killer would;
    with ``every_process`` each process it started too, at the same moment. Returns all of
    them, for ``wait_for_exit``.

    With the postmaster alone killed, its children notice and exit by themselves: an active
    backend aborts its transaction, an idle one first tells its client so (a FATAL error).
    Killed together, they vanish without a word.
    """
    postmaster = psutil.Process(postmaster_pid(pgdata))
    processes = [postmaster, *postmaster.children(recursive=True)]
    for process in processes if every_process else processes[:1]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    return processes


def wait_for_exit(processes: list[psutil.Process]) -> None:
    """Wait until the processes are gone; SIGKILL any still there after the timeout.

    Wait for them all before restarting: one still attached to the old shared memory would
    keep PostgreSQL from starting.
    """
    _, alive = psutil.wait_procs(processes, timeout=PROCESS_EXIT_TIMEOUT)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    _, alive = psutil.wait_procs(alive, timeout=PROCESS_EXIT_TIMEOUT)
    # A killed process stays a zombie until its parent (init, for a daemon) reaps it.
    assert not alive, f"PostgreSQL processes still exist (unreaped?): {alive}"


def start_postgres(pgdata: Path) -> None:
    """Start it again, with the same socket, as the embedded server started it first."""
    from pgserver.postgres_server import get_server

    get_server(pgdata).ensure_postgres_running()  # the instance embedded_postgres made


def terminate_holding_the_loop(url: str, which: str, *args: object) -> int:
    """End the backends whose pids the query ``which`` returns (``pg_terminate_backend``)
    from another thread, holding up the calling thread, and so its event loop, until they
    are gone: whatever they said last, and the end of their connections, are then all
    waiting on the sockets when the loop next looks. Returns how many were ended."""
    ended: list[int] = []

    async def terminate() -> None:
        conn = await connect(url)
        try:
            rows = await conn.fetch(
                f"SELECT pg_terminate_backend(pid, 10000) FROM ({which}) AS doomed(pid)", *args
            )
            ended.append(sum(1 for row in rows if row[0]))
        finally:
            await conn.close()

    thread = threading.Thread(target=asyncio.run, args=(terminate(),))
    thread.start()
    thread.join()
    assert ended, "the backends could not be ended"
    return ended[0]
