"""`fieldsync` as a user runs it: a real process, real signals, real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest

from fieldsync.store.database import connect
from fieldsync.store.embedded import live_pids
from fieldsync.store.projects import create_account

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
        str(FIELDSYNC),
        *args,
        env=_environment(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
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
        str(FIELDSYNC),
        "serve",
        "--port",
        str(port),
        *args,
        env=_environment(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
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
            name = await conn.fetchval("SELECT name FROM accounts WHERE account_id = $1", account)
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


async def test_port_in_use_is_refused_before_migrating(fresh_database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = await _run("serve", "--port", str(port), "--database-url", fresh_database_url)
        workers_code, workers_out = await _run(
            "serve", "--port", str(port - 1), "--workers", "2",
            "--database-url", fresh_database_url,
        )  # fmt: skip
        probes_code, probes_out = await _run(
            "serve", "--port", str(_free_port()), "--probe-port", str(port),
            "--database-url", fresh_database_url,
        )  # fmt: skip
        overlap_code, overlap_out = await _run(
            "serve", "--port", str(port - 1), "--workers", "2", "--probe-port", str(port),
            "--database-url", fresh_database_url,
        )  # fmt: skip
    assert code == 1, out
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in out
    assert "choose another port with --port, e.g. --port " in out
    assert "Traceback" not in out
    assert workers_code == 1, workers_out
    assert f"127.0.0.1:{port} (one of ports {port - 1}..{port} for --workers 2)" in workers_out
    assert probes_code == 1, probes_out
    assert f"cannot answer probes on 127.0.0.1:{port}: Address already in use" in probes_out
    assert overlap_code == 1, overlap_out
    assert (
        f"--probe-port {port} overlaps the sync ports {port - 1}..{port}: choose one outside them"
        in overlap_out
    )
    # Refused before anything touched the database: no migration ran.
    conn = await connect(fresh_database_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
    finally:
        await conn.close()


async def test_a_data_dir_that_is_a_file_is_named(tmp_path: Path) -> None:
    a_file = tmp_path / "f"
    a_file.write_text("not a directory")
    cases = [
        (("serve", "--data-dir", str(a_file)), f"--data-dir {a_file} is a file, not a directory"),
        (("migrate", "--data-dir", str(a_file / "below")),
         f"--data-dir {a_file / 'below'} cannot be created: {a_file} is a file"),
    ]  # fmt: skip
    for args, expected in cases:
        code, out = await _run(*args)
        assert code == 1, out
        assert expected in out
        assert "File exists" not in out
        assert "its log is" not in out


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

    async with (
        serving("--data-dir", str(data_dir)) as first,
        serving("--data-dir", str(data_dir)) as second,
    ):
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


async def test_serve_says_where_it_listens(database_url: str) -> None:
    async with serving("--database-url", database_url) as server:
        await server.wait_healthy()
        code, log = await server.stop()
    assert code == 0, log
    lines = [json.loads(line) for line in log.splitlines()]  # JSON, stderr being a pipe
    listening = [line for line in lines if line.get("event") == "listening"]
    url = f"http://127.0.0.1:{server.port}"
    assert [line["url"] for line in listening] == [url]
    assert listening[0]["message"] == (
        f"listening on {url} (sync clients connect to ws://127.0.0.1:{server.port}/sync)"
    )


@pytest.mark.parametrize(("option", "loop"), [((), "uvloop"), (("--loop", "asyncio"), "asyncio")])
async def test_serve_runs_on_the_event_loop_it_is_given(
    database_url: str, option: tuple[str, ...], loop: str
) -> None:
    async with serving("--database-url", database_url, *option) as server:
        await server.wait_healthy()
        code, log = await server.stop()
    assert code == 0, log
    said = [json.loads(line)["message"] for line in log.splitlines()]
    assert [m for m in said if m.startswith("event loop")] == [f"event loop: {loop}"]


async def _serve_on_a_terminal(database_url: str, *options: str) -> str:
    """The output of `serve` whose stdout and stderr are a terminal, up to its shutdown."""
    port = _free_port()
    controller, terminal = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        str(FIELDSYNC), "serve", "--port", str(port), "--database-url", database_url, *options,
        env=_environment(), stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal,
    )  # fmt: skip
    os.close(terminal)
    output = bytearray()

    def read_until(marker: bytes | None) -> None:
        while marker is None or marker not in output:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: every copy of the terminal side is closed
                return
            if not chunk:
                return
            output.extend(chunk)

    try:
        await asyncio.wait_for(asyncio.to_thread(read_until, b"listening on"), START_TIMEOUT)
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(asyncio.to_thread(read_until, None), STOP_TIMEOUT)
        assert await asyncio.wait_for(proc.wait(), STOP_TIMEOUT) == 0, output.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(controller)
    return output.decode()


async def test_serve_logs_text_on_a_terminal_unless_told_otherwise(database_url: str) -> None:
    text = await _serve_on_a_terminal(database_url)
    listening = next(line for line in text.splitlines() if "listening on" in line)
    assert " INFO fieldsync: listening on http://127.0.0.1:" in listening, text
    assert not any(line.startswith("{") for line in text.splitlines()), text

    forced = await _serve_on_a_terminal(database_url, "--log-format", "json")
    lines = [json.loads(line) for line in forced.splitlines() if line.strip()]
    assert any(line.get("event") == "listening" for line in lines), forced


@pytest.mark.parametrize(
    ("args", "command", "suggestion"),
    [
        (("serve", "--prot", "1"), "serve", "--port"),
        (("serve", "--log-fromat=text"), "serve", "--log-format"),
        (("token", "--user", str(uuid.UUID(int=1)), "--tll", "5"), "token", "--ttl"),
        (("project", "list", "--acount", str(uuid.UUID(int=1))), "project list", "--account"),
        (("member", "list", "--projcet", str(uuid.UUID(int=1))), "member list", "--project"),
        (("demo", "--sever-url", "http://h:1"), "demo", "--server-url"),
    ],
)
async def test_an_unknown_option_gets_its_commands_usage_and_a_suggestion(
    tmp_path: Path, args: tuple[str, ...], command: str, suggestion: str
) -> None:
    code, out = await _run(*args, "--data-dir", str(tmp_path / "d"))
    assert code == 2, out
    assert out.startswith(f"usage: fieldsync {command} "), out
    error = out.rstrip().splitlines()[-1]
    assert error.startswith(f"fieldsync {command}: error: "), out
    assert f"did you mean {suggestion}?" in error, out
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("token", "--user", str(uuid.UUID(int=1)), "--ttl", "-5"),
         "argument --ttl: must be a positive number of seconds, got -5"),
        (("demo", "--ttl", "0"), "argument --ttl: must be a positive number of seconds, got 0"),
        (("member", "add", "--project", str(uuid.UUID(int=1)), "--user", str(uuid.UUID(int=2)),
          "--level", "boss"), "argument --level: invalid choice: 'boss'"),
        (("serve", "--port", "70000"), "argument --port: a port is 0 to 65535, got 70000"),
        (("serve", "--replica-max-lag", "0"), "argument --replica-max-lag: must be above 0, got 0"),
        (("serve", "--loop", "trio"), "argument --loop: invalid choice: 'trio'"),
        (("demo", "--server-url", "ftp://h"), "expected a server URL such as http://"),
    ],
)  # fmt: skip
async def test_bad_arguments_are_refused_before_any_database(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    code, out = await _run(*args, "--data-dir", str(tmp_path / "d"))
    assert code == 2, out
    assert message in out
    assert not (tmp_path / "d").exists()


_ID = str(uuid.UUID(int=7))
ONLY_EXISTING_DATABASE = [
    ("token", "--user", _ID),
    ("rebuild-read-models",),
    ("demo",),
    ("account", "create", "--name", "A"),
    ("account", "list"),
    ("user", "create", "--name", "U"),
    ("user", "list"),
    ("project", "create", "--account", _ID, "--name", "P"),
    ("project", "list"),
    ("project", "show", _ID),
    ("member", "add", "--project", _ID, "--user", _ID, "--level", "lead"),
    ("member", "remove", "--project", _ID, "--user", _ID),
    ("member", "list", "--project", _ID),
]


async def test_only_serve_and_migrate_create_an_embedded_database(tmp_path: Path) -> None:
    """Any other command on a data directory without a cluster says so and creates nothing
    (run from the wrong directory, it must not leave a new, empty cluster behind)."""
    elsewhere = tmp_path / "elsewhere"
    results = await asyncio.gather(
        *(_run(*args, "--data-dir", str(elsewhere)) for args in ONLY_EXISTING_DATABASE)
    )
    for args, (code, out) in zip(ONLY_EXISTING_DATABASE, results, strict=True):
        assert code == 1, (args, out)
        assert f"there is no fieldsync database in {elsewhere}" in out, (args, out)
        assert "`fieldsync serve` and `fieldsync migrate` create one" in out, (args, out)
    assert not elsewhere.exists()
