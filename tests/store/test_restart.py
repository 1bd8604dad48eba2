"""Acknowledged changes survive the appending process and PostgreSQL being killed mid-stream.

A worker process (``tests/store/append_worker.py``) appends realistic pushes to a project in
an embedded PostgreSQL with a data directory of this test's own, and prints ``ACK <seq>
<entity> <hash>`` for each change once ``ChangeLog.append`` returned. Round one kills the
worker *and* the postmaster with SIGKILL while appends are in flight, so the restart of the
embedded server runs crash recovery. Round two starts a worker on the recovered project and
kills only the worker. After each round the store must hold every acknowledged change at its
acknowledged seq, in a gapless log whose head matches, with documents equal to a replay of
the log and read models equal to a rebuild; after round two, re-sending every acknowledged
change must log nothing and return the original seqs.

The test process, not the worker, holds the embedded server (the worker gets its URL):
pgserver counts the processes using a data directory by pid and never forgets a pid that was
killed, so a server joined by a SIGKILLed worker would never be stopped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import sys
import tempfile
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil  # type: ignore[import-untyped]
from automerge.core import Document

from fieldsync.model.changes import parse_change
from fieldsync.model.documents import load_document
from fieldsync.model.merge import EntityChanges
from fieldsync.store.changelog import Accepted, ChangeLog
from fieldsync.store.database import close_pool, create_pool
from fieldsync.store.embedded import embedded_postgres, pgdata_path
from fieldsync.store.rebuild import rebuild_read_models
from tests.postgres_process import (
    kill_postmaster,
    postmaster_pid,
    wait_for_exit,
)
from tests.store.state import ProjectState, project_state

REPO_ROOT = Path(__file__).resolve().parents[2]
ACKS_PER_ROUND = 150
LINE_TIMEOUT = 30.0  # a worker's first line comes after its imports and migrations
KILL_JITTER = 0.05  # seconds the kill may come after the last ack needed


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    entity_id: str
    hash: bytes


@dataclass(frozen=True, slots=True)
class Sent:
    entity_type: str
    change: bytes


@dataclass(slots=True)
class Worker:
    process: asyncio.subprocess.Process
    stderr: Path
    project: uuid.UUID | None = None

    def failure(self, what: str) -> str:
        return f"{what}; worker stderr:\n{self.stderr.read_text(errors='replace')[-4000:]}"


@contextlib.asynccontextmanager
async def running_worker(
    root: Path, name: str, url: str, project: uuid.UUID | None, seed: int
) -> AsyncIterator[Worker]:
    """The worker process; SIGKILLed and reaped on the way out if it is still running."""
    stderr = root / f"{name}.stderr"
    args = ["--database-url", url, "--journal", str(root / "journal"), "--seed", str(seed)]
    if project is not None:
        args += ["--project", str(project)]
    with stderr.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.store.append_worker", *args,
            cwd=REPO_ROOT, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=err,
        )
    worker = Worker(process, stderr, project)
    try:
        yield worker
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def read_acks(worker: Worker, at_least: int) -> list[Ack]:
    """Acknowledgements read from the running worker until ``at_least`` of them came."""
    stdout = worker.process.stdout
    assert stdout is not None
    acks: list[Ack] = []
    while len(acks) < at_least:
        line = await asyncio.wait_for(stdout.readline(), LINE_TIMEOUT)
        assert line.endswith(b"\n"), worker.failure(f"worker ended after {len(acks)} acks")
        if line.startswith(b"PROJECT "):
            worker.project = uuid.UUID(line.split()[1].decode())
        else:
            acks.append(parse_ack(line))
    return acks


async def remaining_acks(worker: Worker) -> list[Ack]:
    """After the kill: the acknowledgements still in the pipe (complete lines only)."""
    assert worker.process.stdout is not None
    rest = await worker.process.stdout.read()
    lines = rest.split(b"\n")[:-1]  # the last piece is empty or an unfinished line
    return [parse_ack(line) for line in lines]


def parse_ack(line: bytes) -> Ack:
    word, seq, entity_id, hash_hex = line.decode().split()
    assert word == "ACK", line
    return Ack(int(seq), entity_id, bytes.fromhex(hash_hex))


def read_journal(path: Path) -> dict[tuple[str, bytes], Sent]:
    """Every change the workers sent, by (entity, hash); a line cut by a kill is skipped."""
    sent: dict[tuple[str, bytes], Sent] = {}
    text = path.read_text(encoding="ascii")
    for line in text.split("\n")[:-1]:
        entity_type, entity_id, hash_hex, change_hex = line.split()
        sent[(entity_id, bytes.fromhex(hash_hex))] = Sent(entity_type, bytes.fromhex(change_hex))
    return sent


def stop_leftover_postgres(pgdata: Path) -> None:
    """A server of ``pgdata`` still running (the test failed midway) gets a fast shutdown."""
    with contextlib.suppress(FileNotFoundError, ValueError, IndexError, psutil.NoSuchProcess):
        postmaster = psutil.Process(postmaster_pid(pgdata))
        if str(pgdata) in postmaster.cmdline():
            postmaster.send_signal(signal.SIGINT)
            wait_for_exit([postmaster])


async def check_store(
    pool: asyncpg.Pool,
    project: uuid.UUID,
    acks: list[Ack],
    sent: dict[tuple[str, bytes], Sent],
) -> ProjectState:
    """Every invariant the store promises after a crash; returns the state checked."""
    async with pool.acquire() as conn:
        log = await conn.fetch(
            "SELECT seq, entity_type, entity_id, hash, change FROM changes "
            "WHERE project_id = $1 ORDER BY seq",
            project,
        )
        head = await conn.fetchval(
            "SELECT head_seq FROM log_heads WHERE project_id = $1", project
        )
        documents = await conn.fetch(
            "SELECT entity_id, entity_type, heads, saved, tail, change_count, version "
            "FROM documents WHERE project_id = $1",
            project,
        )

    # The log: gapless from 1, its head recorded, each change once, each one a change sent.
    seqs = [r["seq"] for r in log]
    assert seqs == list(range(1, len(log) + 1)), "seqs are gapless from 1"
    assert head == len(log), f"log_heads.head_seq {head} != max seq {len(log)}"
    logged = {(r["entity_id"], r["hash"]): r["seq"] for r in log}
    assert len(logged) == len(log), "no change is logged twice for an entity"
    for r in log:
        origin = sent.get((r["entity_id"], r["hash"]))
        assert origin is not None, f"seq {r['seq']} was never sent"
        assert (r["entity_type"], r["change"]) == (origin.entity_type, origin.change)
        assert parse_change(r["change"]).hash == r["hash"]

    # Every acknowledgement holds, at the seq it promised.
    assert len({a.seq for a in acks}) == len(acks), "no seq acknowledged twice"
    lost = [a for a in acks if logged.get((a.entity_id, a.hash)) != a.seq]
    assert not lost, f"{len(lost)} of {len(acks)} acknowledged changes lost or moved: {lost[:3]}"

    # Each cached document equals the replay of its entity's logged changes.
    per_entity: dict[str, list[bytes]] = defaultdict(list)
    last_seq: dict[str, int] = {}
    for r in log:
        per_entity[r["entity_id"]].append(r["change"])
        last_seq[r["entity_id"]] = r["seq"]
    assert {d["entity_id"] for d in documents} == set(per_entity)
    for d in documents:
        entity_id = d["entity_id"]
        cached = load_document(d["saved"] + d["tail"])
        replayed = Document.load(b"".join(per_entity[entity_id]))
        assert sorted(cached.get_heads()) == sorted(replayed.get_heads()), entity_id
        assert sorted(d["heads"]) == sorted(replayed.get_heads()), entity_id
        assert d["change_count"] == len(per_entity[entity_id]), entity_id
        assert d["version"] == last_seq[entity_id], entity_id

    # Read models equal what a rebuild from the log alone produces.
    before = await project_state(pool, project)
    report = await rebuild_read_models(pool, project)
    assert report.consistent, str(report)
    assert report.changes == len(log)
    assert report.entities == len(documents)
    after = await project_state(pool, project)
    assert after == before, "rebuilding changed the read models"
    return after


async def check_reappend(
    pool: asyncpg.Pool,
    project: uuid.UUID,
    acks: list[Ack],
    sent: dict[tuple[str, bytes], Sent],
    state: ProjectState,
) -> None:
    """Sending every acknowledged change again logs nothing and returns the original seqs."""
    by_entity: dict[str, list[Ack]] = defaultdict(list)
    for ack in acks:
        by_entity[ack.entity_id].append(ack)
    items = sorted(by_entity.items())
    log = ChangeLog(pool)  # a new process's view: empty document cache
    for start in range(0, len(items), 40):
        chunk = items[start : start + 40]
        batch = [
            EntityChanges(
                sent[(entity_id, own[0].hash)].entity_type,
                entity_id,
                [sent[(entity_id, a.hash)].change for a in own],
            )
            for entity_id, own in chunk
        ]
        results = await log.append(project, batch, sender="retry")
        assert results == [
            Accepted(entity_id, tuple(a.seq for a in own)) for entity_id, own in chunk
        ]
    assert await project_state(pool, project) == state, "re-sending logged nothing new"


async def test_acknowledged_changes_survive_killing_the_appender_and_postgres() -> None:
    root = Path(tempfile.mkdtemp(prefix="fsr", dir="/tmp"))
    data_dir = root / "data"
    pgdata = pgdata_path(data_dir)
    try:
        # Round one: the worker and the database crash together, appends in flight.
        with embedded_postgres(data_dir) as url:
            async with running_worker(root, "worker1", url, None, seed=1) as worker:
                acks = await read_acks(worker, ACKS_PER_ROUND)
                await asyncio.sleep(random.uniform(0, KILL_JITTER))  # vary the crash point
                postgres = kill_postmaster(pgdata)
                try:
                    worker.process.kill()
                    await worker.process.wait()
                    acks += await remaining_acks(worker)
                finally:
                    await asyncio.to_thread(wait_for_exit, postgres)
                project = worker.project
            # Leaving stops nothing: pgserver finds the postmaster gone.
        assert project is not None

        # The restart runs crash recovery on the same data directory.
        with embedded_postgres(data_dir) as url:
            server_log = (pgdata / "log").read_text(errors="replace")
            assert "automatic recovery in progress" in server_log, "no crash recovery ran"
            pool = await create_pool(url, min_size=1, max_size=2)
            try:
                await check_store(pool, project, acks, read_journal(root / "journal"))

                # Round two: only the worker dies; the database stays up.
                async with running_worker(root, "worker2", url, project, seed=2) as worker:
                    acks += await read_acks(worker, ACKS_PER_ROUND)
                    await asyncio.sleep(random.uniform(0, KILL_JITTER))
                    worker.process.kill()
                    await worker.process.wait()
                    acks += await remaining_acks(worker)
                sent = read_journal(root / "journal")
                state = await check_store(pool, project, acks, sent)
                await check_reappend(pool, project, acks, sent, state)
                async with pool.acquire() as conn:
                    compacted = await conn.fetchval(
                        "SELECT count(*) FROM documents WHERE project_id = $1 AND saved <> ''",
                        project,
                    )
                assert compacted >= 1, "some document was compacted (saved + tail path)"
            finally:
                await close_pool(pool)
    finally:
        stop_leftover_postgres(pgdata)
        shutil.rmtree(root, ignore_errors=True)
