"""An embedded PostgreSQL kept in the data directory, so `fieldsync serve` needs no setup.

``pgserver`` ships PostgreSQL binaries in its wheel. Its data directory survives restarts;
several processes on one directory share one server, which stops when the last one leaves.
The server listens only on a Unix socket inside the directory, and socket paths are limited
to about 107 bytes, so a too-deep data directory is refused up front with a clear message
rather than failing later inside PostgreSQL.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from store.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
SOCKET_PATH_LIMIT = 107
_SOCKET_NAME = ".s.PGSQL.5432"
# PostgreSQL's files live in a subdirectory: initdb wants a directory of its own, and the
# data directory may hold other files later.
PGDATA_NAME = "postgres"


def pgdata_path(data_dir: Path) -> Path:
    """Where the embedded cluster of ``data_dir`` lives (absolute)."""
    return data_dir.expanduser().resolve() / PGDATA_NAME


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


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or join) the embedded server of ``data_dir``; yield its URL; stop it on exit."""
    pgdata = pgdata_path(data_dir)
    problem = socket_path_problem(pgdata)
    if problem is not None:
        raise DatabaseUnavailable(problem)
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (services, CI);
            # pgserver then uses /tmp/runtime-<uid>, which is fine.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
            from pgserver.postgres_server import get_server

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = get_server(pgdata, cleanup_mode="stop")
        url: str = server.get_uri()
    except Exception as exc:  # pgserver raises subprocess, OS and assertion errors alike
        raise DatabaseUnavailable(
            f"cannot start the embedded PostgreSQL in {pgdata}: {exc} "
            f"(its log is {pgdata / 'log'})"
        ) from exc
    logger.info("embedded PostgreSQL running in %s", pgdata)
    try:
        yield url
    finally:
        # Stops the server only if no other process on this data directory still uses it.
        server.cleanup()
        logger.info("embedded PostgreSQL in %s released", pgdata)
