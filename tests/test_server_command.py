"""`fieldsync` as a user runs it: a real process, real signals, real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest

from store.database import connect
from store.embedded import live_pids
from store.projects import create_account

FIELDSYNC = Path(sys.executable).with_name("fieldsync")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


def _environment() -> dict[str, str]:
    """The caller's environment without DATABASE_URL, so the default really is embedded."""
    return {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _run(*args: str) -> tuple[int, str]:
    assert FIELDSYNC.exists(), f"{FIELDSYNC} missing: install the project (pip install -e .)"
    proc = await asyncio.create_subprocess_exec(
        str(FIELDSYNC), *args, env=_environment(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), START_TIMEOUT)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


class Serving:
    """A running `fieldsync serve`; ``stop`` sends SIGINT and returns the exit code and log."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port

    async def wait_healthy(self) -> httpx.Response:
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}") as client:
            while asyncio.get_running_loop().time() < deadline:
                assert self.proc.returncode is None, "fieldsync serve exited during startup"
                try:
                    response = await client.get("/healthz", timeout=2.0)
                    if response.status_code == 200:
                        return response
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("fieldsync serve did not become healthy")

    async def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(self.proc.communicate(), STOP_TIMEOUT)
        assert self.proc.returncode is not None
        return self.proc.returncode, out.decode()


@asynccontextmanager
async def serving(*args: str) -> AsyncIterator[Serving]:
    assert FIELDSYNC.exists(), f"{FIELDSYNC} missing: install the project (pip install -e .)"
    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        str(FIELDSYNC), "serve", "--port", str(port), *args, env=_environment(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        yield Serving(proc, port)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A short data directory (the embedded server's socket lives inside it)."""
    path = Path(tempfile.mkdtemp(prefix="fs", dir="/tmp"))
    try:
        yield path
    finally:
        _stop_leftover_postgres(path / "postgres")
        shutil.rmtree(path, ignore_errors=True)


def _stop_leftover_postgres(pgdata: Path) -> None:
    """After a failed test, a killed `serve` may have left its PostgreSQL running."""
    pid_file = pgdata / "postmaster.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError, IndexError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)  # fast shutdown


async def test_serve_with_external_database(fresh_database_url: str) -> None:
    async with serving("--database-url", fresh_database_url) as server:
        response = await server.wait_healthy()
        assert response.json() == {"status": "ok"}
        code, log = await server.stop()
    assert code == 0, log
    assert "applied migrations 0001" in log
    conn = await connect(fresh_database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") >= 1
    finally:
        await conn.close()


async def test_embedded_database_keeps_data_across_restarts(data_dir: Path) -> None:
    pgdata = data_dir / "postgres"
    embedded_url = f"postgresql://postgres@/postgres?host={pgdata}"

    async with serving("--data-dir", str(data_dir)) as server:
        await server.wait_healthy()
        conn = await asyncpg.connect(embedded_url)
        try:
            account = await create_account(conn, "kept across restarts")
        finally:
            await conn.close()
        code, log = await server.stop()
    assert code == 0, log
    assert not (pgdata / "postmaster.pid").exists(), "embedded PostgreSQL still running"

    async with serving("--data-dir", str(data_dir)) as server:
        await server.wait_healthy()
        conn = await asyncpg.connect(embedded_url)
        try:
            name = await conn.fetchval(
                "SELECT name FROM accounts WHERE account_id = $1", account
            )
        finally:
            await conn.close()
        code, log = await server.stop()
    assert code == 0, log
    assert name == "kept across restarts"
    assert "database schema is up to date" in log


async def test_migrate_command(fresh_database_url: str) -> None:
    code, out = await _run("migrate", "--database-url", fresh_database_url)
    assert code == 0, out
    assert "applied migrations 0001" in out
    code, out = await _run("migrate", "--database-url", fresh_database_url)
    assert code == 0, out
    assert "up to date" in out


async def test_unreachable_database_fails_cleanly(tmp_path: Path) -> None:
    code, out = await _run("serve", "--database-url", f"postgresql://u:hidden@/x?host={tmp_path}")
    assert code == 1, out
    assert "cannot connect to PostgreSQL" in out
    assert "hidden" not in out
    assert "Traceback" not in out


async def test_port_in_use_fails_cleanly(database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, out = await _run("serve", "--port", port, "--database-url", database_url)
    assert code == 1, out
    assert "address already in use" in out
    assert "Traceback" not in out


async def test_too_long_data_dir_is_refused(tmp_path: Path) -> None:
    code, out = await _run("serve", "--data-dir", str(tmp_path / ("d" * 120)))
    assert code == 1, out
    assert "too long" in out


async def test_rebuild_read_models_command(database_url: str, project: uuid.UUID) -> None:
    code, out = await _run(
        "rebuild-read-models", "--database-url", database_url, "--project", str(project)
    )
    assert code == 0, out
    assert "rebuilt read models" in out

    code, out = await _run(
        "rebuild-read-models", "--database-url", database_url, "--project", str(uuid.uuid4())
    )
    assert code == 1, out
    assert "unknown project" in out


def _embedded_postgres_pid(pgdata: Path) -> int | None:
    """The pid of the running postmaster of ``pgdata``, or None when none runs."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pid if live_pids([pid]) else None


async def test_a_killed_serve_does_not_orphan_the_embedded_postgres(data_dir: Path) -> None:
    pgdata = data_dir / "postgres"
    async with serving("--data-dir", str(data_dir)) as crashed:
        await crashed.wait_healthy()
        crashed.proc.send_signal(signal.SIGKILL)
        await crashed.proc.wait()
    postgres = _embedded_postgres_pid(pgdata)
    assert postgres is not None, "PostgreSQL should outlive the killed serve"

    async with serving("--data-dir", str(data_dir)) as first, serving(
        "--data-dir", str(data_dir)
    ) as second:
        await first.wait_healthy()
        await second.wait_healthy()
        assert _embedded_postgres_pid(pgdata) == postgres  # both joined the running one
        code, second_log = await second.stop()
        assert code == 0, second_log
        assert f"left running for pids {first.proc.pid}, which still use it" in second_log
        assert _embedded_postgres_pid(pgdata) == postgres
        code, log = await first.stop()
    assert code == 0, log
    both = second_log + log
    assert f"embedded PostgreSQL in {pgdata} stopped" in log
    assert _embedded_postgres_pid(pgdata) is None, "PostgreSQL still running after the last serve"
    assert not live_pids([postgres]), f"the postmaster {postgres} still runs"
    # Whichever joined first dropped the killed process from pgserver's list, and said so.
    forgotten = f"forgetting processes that exited without releasing it (pids {crashed.proc.pid})"
    assert forgotten in both
