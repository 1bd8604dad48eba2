"""An embedded PostgreSQL kept in the data directory, so `fieldsync serve` needs no setup.

``pgserver`` ships PostgreSQL binaries in its wheel. Its data directory survives restarts;
several processes on one directory share one server, which stops when the last one leaves.
The server listens only on a Unix socket inside the directory, and socket paths are limited
to about 107 bytes, so a too-deep data directory is refused up front with a clear message
rather than failing later inside PostgreSQL.

pgserver counts the processes using a cluster in ``<pgdata>/.handle_pids.json`` and stops
PostgreSQL when the last one leaves. A process killed with SIGKILL never takes its pid out,
so the count would never reach zero again and PostgreSQL would outlive every later process.
Joining and leaving therefore first drop the pids of processes that no longer exist (under
pgserver's own lock), and leaving says what really happened: stopped, or left running for
the processes still using it.

Only the commands that also migrate (``serve``, ``migrate``) create a cluster
(``create=True``); any other command on a data directory without one is refused, so a
command run from the wrong directory never leaves a new, empty 38 MB cluster behind.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fieldsync.store.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
SOCKET_PATH_LIMIT = 107
_SOCKET_NAME = ".s.PGSQL.5432"
# PostgreSQL's files live in a subdirectory: initdb wants a directory of its own, and the
# data directory may hold other files later.
PGDATA_NAME = "postgres"
HANDLE_PIDS_FILE = ".handle_pids.json"  # pgserver's list of the processes using a cluster


def pgdata_path(data_dir: Path) -> Path:
    """Where the embedded cluster of ``data_dir`` lives (absolute)."""
    return data_dir.expanduser().resolve() / PGDATA_NAME


def cluster_exists(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds an initialised embedded cluster."""
    return (pgdata_path(data_dir) / "PG_VERSION").is_file()


def socket_path_problem(pgdata: Path) -> str | None:
    """Why the server's socket could not be created under ``pgdata``, or None if it can."""
    socket = pgdata / _SOCKET_NAME
    length = len(str(socket).encode())
    if length <= SOCKET_PATH_LIMIT:
        return None
    return (
        f"data directory path is too long for PostgreSQL's Unix socket: {socket} is "
        f"{length} bytes, at most {SOCKET_PATH_LIMIT} are allowed; choose a shorter --data-dir"
    )


def data_dir_problem(data_dir: Path) -> str | None:
    """Why ``data_dir`` cannot be (or become) a directory, or None if it can.

    Checks the path and its nearest existing ancestor, so a file given as ``--data-dir``
    (or as one of its parents) is named before anything tries to create the directory.
    """
    path = data_dir.expanduser().absolute()
    if path.exists():
        return None if path.is_dir() else f"--data-dir {data_dir} is a file, not a directory"
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"--data-dir {data_dir} cannot be created: {parent} is a file"
            return None
    return None


def live_pids(pids: list[int]) -> list[int]:
    """Those of ``pids`` whose process still exists (a zombie does not count)."""
    import psutil  # type: ignore[import-untyped]

    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.Error:
            pass
    return alive


def _prune_handle_pids(pgdata: Path, lock: Any) -> list[int]:
    """Drop dead processes from pgserver's list of users of ``pgdata``; the live ones."""
    from pgserver.utils import DiskList

    with lock:
        handles = DiskList(pgdata / HANDLE_PIDS_FILE)
        pids = handles.get()
        alive = live_pids(pids)
        if alive != pids:
            dead = sorted(set(pids) - set(alive))
            logger.warning(
                "embedded PostgreSQL in %s: forgetting processes that exited without "
                "releasing it (pids %s)",
                pgdata, ", ".join(map(str, dead)),
            )  # fmt: skip
            handles.put(alive)
        return alive


def _postmaster_running(pgdata: Path) -> bool:
    from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    return info is not None and info.is_running()


def _pgserver() -> tuple[Any, Any]:
    """pgserver's ``get_server`` and its inter-process lock, imported quietly."""
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (services, CI);
        # pgserver then uses /tmp/runtime-<uid>, which is fine.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        from pgserver.postgres_server import PostgresServer, get_server
    return get_server, PostgresServer._lock


@contextmanager
def embedded_postgres(data_dir: Path, *, create: bool = True) -> Iterator[str]:
    """Start (or join) the embedded server of ``data_dir``; yield its URL; stop it on exit.

    Without ``create``, a data directory that holds no cluster yet is refused instead.
    """
    pgdata = pgdata_path(data_dir)
    problem = data_dir_problem(data_dir)
    if problem is None and not create and not cluster_exists(data_dir):
        problem = (
            f"there is no fieldsync database in {pgdata.parent} (no embedded PostgreSQL "
            "there); only `fieldsync serve` and `fieldsync migrate` create one. Run this "
            "command where you run `fieldsync serve`, or give its --data-dir or --database-url"
        )
    problem = problem or socket_path_problem(pgdata)
    if problem is not None:
        raise DatabaseUnavailable(problem)
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseUnavailable(
            f"cannot create the data directory {pgdata.parent}: {exc.strerror or exc}"
        ) from exc
    try:
        get_server, lock = _pgserver()
        if pgdata.is_dir():
            _prune_handle_pids(pgdata, lock)
        server = get_server(pgdata, cleanup_mode="stop")
        url: str = server.get_uri()
    except Exception as exc:  # pgserver raises subprocess, OS and assertion errors alike
        log = pgdata / "log"
        see = f" (its log is {log})" if log.is_file() else ""
        raise DatabaseUnavailable(
            f"cannot start the embedded PostgreSQL in {pgdata}: {exc}{see}"
        ) from exc
    logger.info("embedded PostgreSQL running in %s", pgdata)
    try:
        yield url
    finally:
        _leave(server, pgdata, lock)


def _leave(server: Any, pgdata: Path, lock: Any) -> None:
    """Release our use of the server (stopping it if we were the last) and say what happened."""
    _prune_handle_pids(pgdata, lock)
    server.cleanup()  # stops PostgreSQL only if no other live process still uses it
    if not _postmaster_running(pgdata):
        logger.info("embedded PostgreSQL in %s stopped", pgdata)
        return
    with lock:
        from pgserver.utils import DiskList

        others = [p for p in DiskList(pgdata / HANDLE_PIDS_FILE).get() if p != os.getpid()]
    if others:
        logger.info(
            "embedded PostgreSQL in %s left running for pids %s, which still use it",
            pgdata, ", ".join(map(str, others)),
        )  # fmt: skip
    else:
        logger.warning(
            "embedded PostgreSQL in %s is still running although no process uses it; "
            "stop it with: kill $(head -1 %s)",
            pgdata, pgdata / "postmaster.pid",
        )  # fmt: skip
