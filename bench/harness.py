"""Shared pieces of the WebSocket benchmarks: database, server process, project, workload.

The server runs as its own process (``fieldsync serve``), so the clients' CPU, which lives in
the benchmark process, is never counted as server time on the same event loop. The server
gets ``FIELDSYNC_SECRET`` in its environment; the benchmark mints tokens with that secret.
The database is the embedded PostgreSQL in a short directory under /tmp, or the server named
by ``DATABASE_URL`` when it is set.

Every timestamp a benchmark compares across processes comes from ``now_ns``
(CLOCK_MONOTONIC), which is one clock for every process on the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import websockets.asyncio.client
from automerge.core import Document
from websockets.asyncio.client import ClientConnection

from fieldsync.auth.tokens import issue_token
from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import NoChange, create_entity, splice_text, update_entity
from fieldsync.store.changelog import Accepted, ChangeLog
from fieldsync.store.database import close_pool, connect, create_pool
from fieldsync.store.embedded import embedded_postgres
from fieldsync.store.migrations import migrate
from fieldsync.store.projects import add_member, create_account, create_project, create_user
from fieldsync.sync.codec import decode_server, encode
from fieldsync.sync.messages import (
    Hello,
    ProjectCursor,
    ServerMessage,
    Synced,
    Welcome,
)
from tests.entities import (
    START,
    activity_values,
    location_values,
    plan_values,
    role_values,
    summoning_values,
)
from tests.live_server import free_port

REPO = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-that-is-long-enough-for-hs256-signing"
SERVER_START_SECONDS = 60.0


def now_ns() -> int:
    """CLOCK_MONOTONIC in ns: comparable between processes on one machine."""
    return time.monotonic_ns()


# --- database --------------------------------------------------------------------------


@contextlib.contextmanager
def database() -> Iterator[str]:
    """A migrated database: ``DATABASE_URL``, or an embedded one that is removed afterwards."""
    url = os.environ.get("DATABASE_URL")
    if url:
        asyncio.run(_migrate(url))
        yield url
        return
    data_dir = Path(tempfile.mkdtemp(prefix="fsb", dir="/tmp"))
    try:
        with embedded_postgres(data_dir) as embedded_url:
            asyncio.run(_migrate(embedded_url))
            yield embedded_url
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


async def _migrate(url: str) -> None:
    conn = await connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()


# --- the server process ------------------------------------------------------------------


class ServerProcess:
    """``fieldsync serve`` on a free port, in its own process."""

    def __init__(self, url: str, *, probes: bool = False) -> None:
        self.port = free_port()
        self.base = f"127.0.0.1:{self.port}"
        # With ``probes``, /healthz is also answered on a port of its own (``--probe-port``).
        self.probe_base = f"127.0.0.1:{free_port()}" if probes else None
        self._dir = Path(tempfile.mkdtemp(prefix="fss", dir="/tmp"))
        self.log_path = self._dir / "server.log"
        self._log = self.log_path.open("wb")
        command = [
            sys.executable,
            "-c",
            "import sys; from fieldsync.cli import main; sys.exit(main())",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--database-url",
            url,
            "--data-dir",
            str(self._dir / "data"),
        ]
        if self.probe_base is not None:
            command += ["--probe-port", self.probe_base.rpartition(":")[2]]
        environ = {**os.environ, "FIELDSYNC_SECRET": SECRET}
        self._process = subprocess.Popen(
            command, cwd=REPO, env=environ, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.pid = self._process.pid

    def wait_ready(self) -> None:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the server exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.base}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server did not become healthy:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@contextlib.contextmanager
def server_process(url: str, *, probes: bool = False) -> Iterator[ServerProcess]:
    server = ServerProcess(url, probes=probes)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# --- where the CPU went ---------------------------------------------------------------------


def _stat(pid: int | str) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (the first is the state)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def process_cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU a process has used so far (with ``children``: also its exited,
    waited-for children's)."""
    fields = _stat(pid)
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def user_system_seconds(pids: list[int]) -> tuple[float, float]:
    """Processes' user and system CPU seconds so far (``/proc/PID/stat``), summed."""
    ticks = os.sysconf("SC_CLK_TCK")
    user = system = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        user, system = user + int(fields[11]) / ticks, system + int(fields[12]) / ticks
    return user, system


def machine_busy_seconds() -> float:
    """CPU time all processors have spent busy since boot (``/proc/stat``), to tell whether
    something outside the benchmark competed for the machine during a run."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds(url: str) -> float | None:
    """CPU used so far by the embedded PostgreSQL of ``url``: its postmaster, the backends
    still running and those that have exited. None when it is not found (another server)."""
    host = parse_qs(urlsplit(url).query).get("host", [""])[0]
    if not host:
        return None
    postmaster = None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            if b"-D" in arguments and host.encode() in arguments:
                postmaster = int(entry.name)
                break
    if postmaster is None:
        return None
    total = process_cpu_seconds(postmaster, children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(_stat(entry.name)[1]) == postmaster:
                    total += process_cpu_seconds(int(entry.name))
    return total


class CpuUse:
    """CPU seconds used over a window by the server process, PostgreSQL, this process and
    the whole machine: whatever the machine spent beyond the benchmark's own processes
    (other programs, the kernel) competed with them, which makes figures less reliable."""

    def __init__(self, server_pid: int | Sequence[int], url: str) -> None:
        # Several server processes (``serve --workers``) count as one server.
        self._pids = [server_pid] if isinstance(server_pid, int) else list(server_pid)
        self._url = url
        self.per_server: list[float] = []
        self._first = [process_cpu_seconds(pid) for pid in self._pids]
        self._start = self._sample()
        self._used: tuple[float, float | None, float, float] | None = None

    def _sample(self) -> tuple[float, float | None, float, float]:
        return (
            sum(process_cpu_seconds(pid) for pid in self._pids),
            postgres_cpu_seconds(self._url),
            time.process_time(),
            machine_busy_seconds(),
        )

    def stop(self) -> None:
        end = self._sample()
        self.per_server = [
            process_cpu_seconds(pid) - first
            for pid, first in zip(self._pids, self._first, strict=True)
        ]
        start = self._start
        database = None if end[1] is None or start[1] is None else end[1] - start[1]
        self._used = (end[0] - start[0], database, end[2] - start[2], end[3] - start[3])

    @property
    def server(self) -> float:
        assert self._used is not None
        return self._used[0]

    @property
    def database(self) -> float | None:
        assert self._used is not None
        return self._used[1]

    def describe(self, wall: float, clients: Sequence[float] = ()) -> str:
        """One line; ``clients`` are the CPU seconds of client processes other than this."""
        assert self._used is not None, "stop() first"
        server, database, own, machine = self._used
        known = server + (database or 0.0) + own + sum(clients)
        other = "" if database is None else f", {max(0.0, machine - known):.2f} s elsewhere"
        servers = (
            f"server process {server:.2f} s ({100 * server / max(wall, 1e-9):.0f}% of one core)"
            if len(self._pids) == 1
            else f"{len(self._pids)} server processes {server:.2f} s ("
            + " + ".join(f"{s:.2f}" for s in self.per_server)
            + ")"
        )
        return (
            f"CPU over {wall:.2f} s: {servers}, PostgreSQL "
            + ("unknown" if database is None else f"{database:.2f} s")
            + f", this process {own:.2f} s"
            + "".join(f", client process {c:.2f} s" for c in clients)
            + f"; machine ({os.cpu_count()} cores) busy {machine:.2f} s{other}"
        )


# --- profiling the server ----------------------------------------------------------------


class ServerProfile:
    """py-spy attached to the server process while the timed part runs (``--profile``)."""

    def __init__(self, pid: int, output: Path | None, rate: int = 250) -> None:
        self.output = output
        self.rate = rate
        self._pid = pid
        self._process: subprocess.Popen[bytes] | None = None
        self._started = 0.0
        self.seconds = 0.0

    def __enter__(self) -> ServerProfile:
        if self.output is not None:
            spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            command = [spy, "record", "--format", "raw", "--rate", str(self.rate)]
            command += ["--nonblocking"]  # pausing the server for each sample slows it
            command += ["-o", str(self.output), "-p", str(self._pid)]
            self._process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            time.sleep(1.0)  # let py-spy attach before the clock starts
        self._started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.monotonic() - self._started
        if self._process is not None:
            self._process.send_signal(signal.SIGINT)
            self._process.wait(30)

    def report(self, top: int = 25) -> str:
        if self.output is None or not self.output.exists():
            return ""
        return summarize_profile(self.output, self.rate, self.seconds, top)


_LINE_NUMBER = re.compile(r":\d+\)$")
# Waiting in the event loop's poll is idle time, however py-spy classifies it.
_IDLE_LEAF = "EpollSelector.select (selectors.py)"
_PROJECT_FILE = re.compile(r"\((?:fieldsync/)?(live|store|model|sync|auth|conflict)/|\(server\.py")


def summarize_profile(path: Path, rate: int, seconds: float, top: int = 25) -> str:
    """Own samples per function, and inclusive samples per project function, from a py-spy
    raw (collapsed) file; samples idle in the event loop's poll are left out."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_LINE_NUMBER.sub(")", f) for f in stack.split(";")]
        if frames[-1] == _IDLE_LEAF:
            idle += count
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            if _PROJECT_FILE.search(frame):
                inclusive[frame] += count
    if not total:
        return "profile: no samples"
    lines = [
        f"server profile (py-spy, {rate} Hz, {seconds:.1f} s): {total} samples, shares below "
        f"({idle} more samples idle in epoll left out)",
        "  own time (top functions):",
    ]
    lines += [f"    {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines.append("  inclusive time (top project functions):")
    lines += [f"    {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines)


# --- projects and members ------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    user_id: uuid.UUID
    token: str


@dataclass(frozen=True)
class Team:
    project_id: uuid.UUID
    members: tuple[Member, ...]


async def make_project(url: str, members: int, name: str = "bench") -> Team:
    """A new project and ``members`` users, each a lead of it with a token of their own.

    One user per client: the server allows 16 connections per user.
    """
    conn = await connect(url)
    try:
        account = await create_account(conn, f"{name} account")
        project = await create_project(conn, account, name)
        made = []
        for index in range(members):
            user = await create_user(conn, f"{name} member {index}", account)
            await add_member(conn, project, user, "lead")
            made.append(Member(user, issue_token(SECRET.encode(), user)))
    finally:
        await conn.close()
    return Team(project, tuple(made))


# --- workload ------------------------------------------------------------------------------


@dataclass
class EntityHistory:
    """One entity, its document as its writer holds it, and the changes that made it."""

    entity_type: str
    entity_id: str
    document: Document
    changes: list[bytes]


def later(minutes: int) -> datetime:
    return START + timedelta(hours=7, minutes=minutes)


_STATUSES = ("planned", "confirmed", "in_progress", "done")


def edit(history: EntityHistory, n: int, rng: random.Random) -> bytes:
    """One realistic edit of the entity; every edit writes a value it did not hold before."""
    doc, kind = history.document, history.entity_type
    if kind == "activity":
        choice = rng.randrange(5)
        if choice == 0:
            return splice_text(doc, "description", 0, 0, f"Note {n}. ")
        if choice == 1:
            return update_entity(doc, "activity", {"ends_at": later(n)})
        if choice == 2:
            return update_entity(doc, "activity", {"title": f"Survey leg {n}"})
        if choice == 3:
            return update_entity(doc, "activity", {"starts_at": START + timedelta(minutes=n)})
        try:
            return update_entity(doc, "activity", {"status": rng.choice(_STATUSES)})
        except NoChange:  # it already had that status
            return splice_text(doc, "description", 0, 0, f"Status checked {n}. ")
    if kind == "location":
        return update_entity(doc, "location", {"address": f"{n} Ridge Road"})
    if kind == "role":
        return update_entity(doc, "role", {"name": f"Role {n}"})
    if kind == "plan":
        return splice_text(doc, "description", 0, 0, f"Week {n}. ")
    return update_entity(doc, "summoning", {"starts_at": START + timedelta(minutes=n)})


def new_entity(kind: str, index: int, refs: dict[str, str]) -> EntityHistory:
    """An entity of ``kind`` with realistic values, made in one change."""
    if kind == "activity":
        values = activity_values(
            refs["plan"], refs["location"], day=index % 60, title=f"Core sampling {index}"
        )
    elif kind == "location":
        values = location_values(index % 1000)
    elif kind == "role":
        values = role_values(f"Role {index}")
    elif kind == "plan":
        values = plan_values(f"Plan {index}")
    else:
        values = summoning_values(refs["activity"], refs["role"], day=index % 60)
    doc, first = create_entity(kind, values)
    return EntityHistory(kind, str(uuid.uuid4()), doc, [first])


def entity_history(kind: str, index: int, refs: dict[str, str], changes: int) -> EntityHistory:
    """An entity with ``changes`` changes: its creation and ``changes - 1`` edits."""
    rng = random.Random(index)
    history = new_entity(kind, index, refs)
    for n in range(1, changes):
        history.changes.append(edit(history, n, rng))
    return history


def reference_ids() -> dict[str, str]:
    return {k: str(uuid.uuid4()) for k in ("plan", "location", "activity", "role")}


async def seed(
    url: str, project_id: uuid.UUID, entities: Sequence[EntityHistory], per_push: int = 100
) -> int:
    """Log every entity's changes through the store API (not timed); returns the head seq."""
    pool = await create_pool(url, min_size=1, max_size=2)
    head = 0
    try:
        log = ChangeLog(pool)
        for start in range(0, len(entities), per_push):
            batch = [
                EntityChanges(e.entity_type, e.entity_id, e.changes)
                for e in entities[start : start + per_push]
            ]
            for result in await log.append(project_id, batch, sender="bench-seed"):
                assert isinstance(result, Accepted), result
                head = max(head, *result.seqs)
    finally:
        await close_pool(pool)
    return head


# --- clients -------------------------------------------------------------------------------


async def open_client(
    base: str, token: str, projects: Sequence[ProjectCursor] = ()
) -> ClientConnection:
    """A connection that has sent hello and received welcome."""
    ws = await websockets.asyncio.client.connect(
        f"ws://{base}/sync", compression=None, max_size=None
    )
    await ws.send(encode(Hello((1,), token, f"bench-{uuid.uuid4().hex[:12]}", tuple(projects))))
    welcome = await receive(ws)
    assert isinstance(welcome, Welcome), welcome
    return ws


async def receive(ws: ClientConnection, within: float = 30.0) -> ServerMessage:
    frame = await asyncio.wait_for(ws.recv(decode=False), within)
    return decode_server(frame)


async def until_synced(ws: ClientConnection, project_id: uuid.UUID) -> int:
    """Read (and drop) a project's snapshot or catch-up; the cursor of its ``synced``."""
    while True:
        message = await receive(ws)
        if isinstance(message, Synced) and message.project_id == str(project_id):
            return message.cursor


# --- figures -------------------------------------------------------------------------------


PER_ADDRESS = 16  # clients per loopback source address


def loopback_address(index: int) -> str:
    """Client ``index``'s own source address in 127.0.0.0/8, ``PER_ADDRESS`` clients each,
    as clients behind many addresses (the server caps unauthenticated connections per
    address)."""
    return f"127.{1 + index // (PER_ADDRESS * 250)}.{index // PER_ADDRESS % 250}.1"


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` 0.5 for p50, 0.99 for p99)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def describe_ms(values: Sequence[float]) -> str:
    return (
        f"n={len(values)} p50 {percentile(values, 0.5):.1f} ms, "
        f"p90 {percentile(values, 0.9):.1f} ms, p99 {percentile(values, 0.99):.1f} ms, "
        f"max {max(values, default=float('nan')):.1f} ms"
    )
