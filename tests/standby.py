"""A real streaming standby of a test's own embedded PostgreSQL, made with PostgreSQL's tools.

The embedded distribution (pgserver) ships ``pg_basebackup`` and ``pg_ctl``; its clusters
already have what streaming replication needs (``wal_level = replica``, WAL senders, and a
``local replication`` trust line in ``pg_hba.conf``). ``pg_basebackup -R`` copies the
primary and writes ``standby.signal`` and ``primary_conninfo``; the copy then starts as a
hot standby listening on a Unix socket in its own directory. As root, pgserver runs
PostgreSQL as its ``pgserver`` user, and so do these helpers.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from importlib.util import find_spec
from pathlib import Path

from fieldsync.store.database import connect
from tests.postgres_process import kill_postmaster, wait_for_exit

_PGSERVER = find_spec("pgserver")  # located, not imported (its import warns)
assert _PGSERVER is not None
assert _PGSERVER.origin is not None
BIN = Path(_PGSERVER.origin).parent / "pginstall" / "bin"
SYSTEM_USER = "pgserver" if os.geteuid() == 0 else None  # as pgserver runs it
# Copied with the primary's directory but belonging to the primary's running server.
_NOT_COPIED = (".s.PGSQL.5432.lock", "log", "postmaster.opts", ".handle_pids.json")


def _run(*command: str) -> None:
    subprocess.run(command, check=True, user=SYSTEM_USER, capture_output=True, timeout=60)


def server_url(pgdata: Path) -> str:
    """The URL of the server listening in ``pgdata`` (as pgserver names it)."""
    return f"postgresql://postgres:@/postgres?host={pgdata}"


def make_standby(primary_pgdata: Path, standby_pgdata: Path) -> str:
    """Base-backup the primary into ``standby_pgdata`` (which must not exist), start it as
    a streaming hot standby; its server URL."""
    standby_pgdata.mkdir(mode=0o700)
    if SYSTEM_USER is not None:
        shutil.chown(standby_pgdata, SYSTEM_USER, SYSTEM_USER)
    _run(
        str(BIN / "pg_basebackup"),
        *("-D", str(standby_pgdata), "-R", "-X", "stream", "-c", "fast"),
        *("-h", str(primary_pgdata), "-U", "postgres"),
    )
    for name in _NOT_COPIED:
        (standby_pgdata / name).unlink(missing_ok=True)
    start_standby(standby_pgdata)
    return server_url(standby_pgdata)


def start_standby(pgdata: Path) -> None:
    """Start (again) the standby in ``pgdata``; returns once it accepts connections."""
    (pgdata / "postmaster.pid").unlink(missing_ok=True)  # left by a killed one
    _run(
        str(BIN / "pg_ctl"),
        *("-D", str(pgdata), "-w", "-t", "30", "-l", str(pgdata / "standby.log")),
        *("-o", '-h ""', "-o", f"-k {pgdata}", "start"),
    )


def stop_standby(pgdata: Path) -> None:
    """Immediate shutdown (nothing to keep: a standby starts again from its WAL)."""
    _run(str(BIN / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "-w", "stop")


def kill_standby(pgdata: Path) -> None:
    """SIGKILL the standby's postmaster and every process it started, at once."""
    wait_for_exit(kill_postmaster(pgdata, every_process=True))


async def set_replay(standby_url: str, *, paused: bool) -> None:
    """Pause or resume WAL replay on the standby (``pg_wal_replay_pause``/``_resume``)."""
    conn = await connect(standby_url)
    try:
        await conn.execute(
            "SELECT pg_wal_replay_pause()" if paused else "SELECT pg_wal_replay_resume()"
        )
    finally:
        await conn.close()


async def wait_until_replayed(primary_url: str, standby_url: str, within: float = 15.0) -> None:
    """Return once the standby has replayed everything the primary has flushed so far.

    PostgreSQL 16.2's standby sometimes leaves received WAL unreplayed until its next
    5-second poll when nothing more arrives (seen here: ``RecoveryWalStream`` with receive
    ahead of replay); a tiny WAL record from the primary wakes it, so while waiting, one
    is written every poll.
    """
    primary = await connect(primary_url)
    standby = await connect(standby_url)
    try:
        target = await primary.fetchval("SELECT pg_current_wal_flush_lsn()")
        async with asyncio.timeout(within):
            lsn = "SELECT pg_last_wal_replay_lsn()"
            while await standby.fetchval(lsn) < target:
                await primary.execute("SELECT pg_logical_emit_message(false, 'wake', '')")
                await asyncio.sleep(0.02)
    finally:
        await primary.close()
        await standby.close()
