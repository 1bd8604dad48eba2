"""A real primary and a real streaming standby: snapshots and catch-up read from the standby.

One pair per module (``tests/standby.py``: ``pg_basebackup -R`` of a test-owned embedded
PostgreSQL, started as a hot standby). The standby is made to lag on purpose with
``pg_wal_replay_pause()``, which proves where a read came from (only the standby can answer
with the older head), and then SIGKILLed. Throughout, a client's cursor never passes what
it received, every seq arrives exactly once, and no client sees an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from fieldsync.auth.tokens import issue_token
from fieldsync.model.merge import EntityChanges
from fieldsync.model.writer import create_entity
from fieldsync.store.changelog import ChangeLog
from fieldsync.store.database import with_database
from fieldsync.store.embedded import embedded_postgres, pgdata_path
from fieldsync.store.postgres import PostgresStorage
from fieldsync.store.records import ReplicaReport
from fieldsync.sync.messages import ProjectCursor, SnapshotBegin
from tests.conftest import create_migrated_database
from tests.entities import location_values, new_id
from tests.live_server import TEST_SECRET, running_server
from tests.standby import (
    kill_standby,
    make_standby,
    set_replay,
    start_standby,
    stop_standby,
    wait_until_replayed,
)
from tests.sync_client import ProjectReplica, SyncClient

MAX_LAG = 2.0  # seconds: short, so the paused standby is soon over it


@dataclass
class Pair:
    primary_url: str
    standby_url: str
    standby_pgdata: Path


@pytest.fixture(scope="module")
def pair_dir() -> Iterator[Path]:
    data_dir = Path(tempfile.mkdtemp(prefix="fr", dir="/tmp"))
    yield data_dir
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
async def pair(pair_dir: Path) -> AsyncIterator[Pair]:
    with embedded_postgres(pair_dir) as server_url:
        primary_url = await create_migrated_database(server_url, "replica")
        standby_pgdata = pair_dir / "standby"
        standby_server = await asyncio.to_thread(
            make_standby, pgdata_path(pair_dir), standby_pgdata
        )
        database = urlsplit(primary_url).path.lstrip("/")
        standby_url = with_database(standby_server, database)
        try:
            await wait_until_replayed(primary_url, standby_url)
            yield Pair(primary_url, standby_url, standby_pgdata)
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):  # not running
                await asyncio.to_thread(stop_standby, standby_pgdata)


@pytest.fixture(scope="module")
async def writer(pair: Pair) -> AsyncIterator[PostgresStorage]:
    """The primary as another server process sees it: it appends and notifies."""
    async with await PostgresStorage.open(pair.primary_url) as storage:
        yield storage


@pytest.fixture
async def paused(pair: Pair) -> AsyncIterator[None]:
    """The standby's replay, resumed whatever the test did (the next test needs it)."""
    yield
    await set_replay(pair.standby_url, paused=False)


async def new_project(writer: PostgresStorage) -> tuple[uuid.UUID, str]:
    """A project with a lead member; the member's token."""
    account = await writer.admin.create_account("replica")
    project = await writer.admin.create_project(account, "replica")
    user = await writer.admin.create_user("Lead", account)
    await writer.admin.add_member(project, user, "lead")
    return project, issue_token(TEST_SECRET, user)


async def append(writer: PostgresStorage, log: ChangeLog, project: uuid.UUID, n: int) -> int:
    """``n`` new entities, one change each; the new head (told to every process)."""
    batch = [
        EntityChanges("location", new_id(), [create_entity("location", location_values(i))[1]])
        for i in range(n)
    ]
    await log.append(project, batch, "writer")
    head = await log.head(project)
    await writer.notifications.notify_head(project, head)
    return head


def served(report: ReplicaReport, read: str, by: str) -> int:
    return report.reads.get((read, by), 0)


def fell_back(report: ReplicaReport, read: str, reason: str) -> int:
    return report.fallbacks.get((read, reason), 0)


async def until(condition: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not await condition():  # noqa: ASYNC110 (polling the server)
            await asyncio.sleep(0.05)


# -- through the ports ---------------------------------------------------------------------


async def test_reads_follow_the_standby_and_never_pass_what_it_replayed(
    pair: Pair, writer: PostgresStorage, paused: None
) -> None:
    log = writer.change_log()
    project, _ = await new_project(writer)
    first = await append(writer, log, project, 10)
    await wait_until_replayed(pair.primary_url, pair.standby_url)
    async with await PostgresStorage.open(
        pair.primary_url,
        replica_url=pair.standby_url,
        replica_max_lag=MAX_LAG,
        replica_check_seconds=0.1,
    ) as storage:
        routed = storage.change_log()
        gauges = storage.replica_gauges
        assert gauges is not None
        async with storage.snapshots.open(project) as snapshot:
            assert snapshot.cursor == first
        assert served(gauges.report(), "snapshot", "replica") == 1

        await set_replay(pair.standby_url, paused=True)
        head = await append(writer, log, project, 10)
        # Only the standby can answer with the older head: the snapshot is its own.
        async with storage.snapshots.open(project) as snapshot:
            assert snapshot.cursor == first
            assert await snapshot.count() == 10
        assert served(gauges.report(), "snapshot", "replica") == 2

        # A bootstrapped client catches up from the standby's cursor: the standby has
        # nothing past it, so the rest comes from the primary; together, the whole log.
        whole = [c.seq for c in (await routed.read_since(project, 0, 1_000)).changes]
        from_standby = (await routed.catch_up(project, 0, 1_000)).changes
        assert [c.seq for c in from_standby] == list(range(1, first + 1))
        rest = (await routed.catch_up(project, first, 1_000)).changes
        assert [c.seq for c in rest] == list(range(first + 1, head + 1))
        assert [c.seq for c in (*from_standby, *rest)] == whole
        assert served(gauges.report(), "catch_up", "replica") == 1
        assert served(gauges.report(), "catch_up", "primary") >= 1

        # A client that synced against the primary is ahead of the standby: the primary
        # answers it, from its own cursor, never from the standby's older head.
        ahead = (await routed.catch_up(project, first + 3, 1_000)).changes
        assert [c.seq for c in ahead] == list(range(first + 4, head + 1))
        assert (await routed.catch_up(project, head, 1_000)).changes == []
        assert fell_back(gauges.report(), "catch_up", "behind_cursor") == 2

        # Past the lag bound every read goes to the primary, counted as lagging.
        async def lagging() -> bool:
            await routed.catch_up(project, 0, 1)
            return fell_back(gauges.report(), "catch_up", "lagging") > 0

        await until(lagging)
        assert not gauges.report().usable
        report = gauges.report()
        assert report.lag_seconds is not None
        assert report.lag_seconds > MAX_LAG
        async with storage.snapshots.open(project) as snapshot:
            assert snapshot.cursor == head
        assert fell_back(gauges.report(), "snapshot", "lagging") == 1
        health = await storage.health.components(2.0)
        assert "reads go to the primary" in health["read_replica"]

        # Replay resumed: reads return to the standby, which now has the whole log.
        await set_replay(pair.standby_url, paused=False)
        await wait_until_replayed(pair.primary_url, pair.standby_url)

        async def back() -> bool:
            await routed.catch_up(project, head, 1)
            return gauges.report().usable

        await until(back)
        before = served(gauges.report(), "snapshot", "replica")
        async with storage.snapshots.open(project) as snapshot:
            assert snapshot.cursor == head
        assert served(gauges.report(), "snapshot", "replica") == before + 1
        piece = await routed.catch_up(project, first, 1_000)
        assert [c.seq for c in piece.changes] == list(range(first + 1, head + 1))


async def test_a_project_the_standby_has_not_replayed_is_read_from_the_primary(
    pair: Pair, writer: PostgresStorage, paused: None
) -> None:
    await wait_until_replayed(pair.primary_url, pair.standby_url)
    async with await PostgresStorage.open(
        pair.primary_url, replica_url=pair.standby_url, replica_max_lag=60.0
    ) as storage:
        gauges = storage.replica_gauges
        assert gauges is not None
        assert (await storage.health.components(2.0))["read_replica"].startswith("replay lag")

        async def usable() -> bool:  # its lag measured and within the bound: not a reason
            return gauges.report().usable

        await until(usable)
        await set_replay(pair.standby_url, paused=True)
        project, _ = await new_project(writer)
        head = await append(writer, writer.change_log(), project, 3)
        async with storage.snapshots.open(project) as snapshot:
            assert snapshot.cursor == head
        piece = await storage.change_log().catch_up(project, 0, 100)
        assert [c.seq for c in piece.changes] == [1, 2, 3]
        report = gauges.report()
        assert fell_back(report, "snapshot", "unknown_project") == 1
        assert fell_back(report, "catch_up", "unknown_project") == 1


# -- real clients over a real server ----------------------------------------------------------


async def bootstrap(base: str, token: str, project: uuid.UUID) -> tuple[SyncClient, int]:
    """A client syncing the project from nothing; it and its snapshot's cursor."""
    client = await SyncClient.connect(base)
    await client.hello(token, [ProjectCursor(str(project), None)])
    begin = await client.expect(SnapshotBegin)
    client.absorb(begin)
    await client.sync_until_synced(str(project))
    return client, begin.cursor


async def resume(base: str, token: str, project: uuid.UUID, cursor: int) -> SyncClient:
    client = await SyncClient.connect(base)
    client.replicas[str(project)] = ProjectReplica(cursor=cursor)
    await client.hello(token, [ProjectCursor(str(project), cursor)])
    await client.sync_until_synced(str(project))
    return client


async def metric(base: str, series: str) -> float:
    """The value of one series of the server's /metrics (0 when it is not there)."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://{base}/metrics")).text
    values = [
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series)
    ]
    return sum(values)


async def health(base: str) -> dict[str, object]:
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"http://{base}/healthz")
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


def replica_reads(read: str, served_by: str) -> str:
    return f'fieldsync_replica_reads_total{{read="{read}",served_by="{served_by}"}}'


def fallbacks(read: str, reason: str) -> str:
    return f'fieldsync_replica_fallbacks_total{{read="{read}",reason="{reason}"}}'


async def test_clients_sync_through_a_lagging_standby_without_a_gap(
    pair: Pair, writer: PostgresStorage, paused: None
) -> None:
    log = writer.change_log()
    project, token = await new_project(writer)
    name = str(project)
    first = await append(writer, log, project, 8)
    await wait_until_replayed(pair.primary_url, pair.standby_url)
    async with running_server(
        pair.primary_url, replica_url=pair.standby_url, replica_max_lag=60.0
    ) as base:
        components = (await health(base))["components"]
        assert isinstance(components, dict)
        assert "reads go to the replica" in components["read_replica"]
        await set_replay(pair.standby_url, paused=True)
        head = await append(writer, log, project, 8)
        fresh, cursor = await bootstrap(base, token, project)
        # The snapshot is the standby's (the primary's head is further on); the catch-up
        # after it comes from the primary, every seq once (ProjectReplica checks order).
        assert cursor == first
        assert fresh.replicas[name].cursor == head
        assert fresh.replicas[name].seen_seqs == list(range(first + 1, head + 1))
        assert len(fresh.replicas[name].documents) == 16

        ahead = await resume(base, token, project, head)  # synced against the primary
        assert ahead.replicas[name].cursor == head
        behind = await resume(base, token, project, 3)
        assert behind.replicas[name].seen_seqs == list(range(4, head + 1))

        # Live changes follow on the primary, to every one of them, without a gap.
        newest = await append(writer, log, project, 2)
        for client in (fresh, ahead, behind):
            await client.receive_changes_until(name, newest)
            assert client.replicas[name].cursor == newest
            assert client.inbox == []
        held = fresh.replicas[name].heads()
        assert len(held) == 18
        # The resumed client held nothing of seqs 1-3: what it was sent since matches.
        assert behind.replicas[name].heads() == {e: held[e] for e in behind.replicas[name].heads()}

        assert await metric(base, replica_reads("snapshot", "replica")) == 1
        assert await metric(base, fallbacks("catch_up", "behind_cursor")) >= 1
        for client in (fresh, ahead, behind):
            await client.close()


async def test_a_killed_standby_costs_clients_nothing(pair: Pair, writer: PostgresStorage) -> None:
    """Last in the module: it kills the standby (and starts it again)."""
    log = writer.change_log()
    project, token = await new_project(writer)
    name = str(project)
    await append(writer, log, project, 5)
    await wait_until_replayed(pair.primary_url, pair.standby_url)
    async with running_server(
        pair.primary_url, replica_url=pair.standby_url, replica_max_lag=60.0
    ) as base:
        live, _ = await bootstrap(base, token, project)
        assert await metric(base, replica_reads("snapshot", "replica")) == 1

        await asyncio.to_thread(kill_standby, pair.standby_pgdata)
        head = await append(writer, log, project, 5)
        # Bootstraps and resumes after the kill: served by the primary, no error.
        late, cursor = await bootstrap(base, token, project)
        assert cursor == head
        assert late.replicas[name].cursor == head
        resumed = await resume(base, token, project, 2)
        assert resumed.replicas[name].seen_seqs == list(range(3, head + 1))
        await live.receive_changes_until(name, head)
        assert await metric(base, fallbacks("snapshot", "down")) == 1
        components = (await health(base))["components"]
        assert isinstance(components, dict)
        assert "unreachable" in components["read_replica"]

        # Back again: once a check finds it replaying, snapshots return to it.
        await asyncio.to_thread(start_standby, pair.standby_pgdata)
        await wait_until_replayed(pair.primary_url, pair.standby_url)

        async def usable() -> bool:
            components = (await health(base))["components"]
            assert isinstance(components, dict)
            return "reads go to the replica" in components["read_replica"]

        await until(usable, within=15.0)
        again, cursor = await bootstrap(base, token, project)
        assert cursor == head
        assert await metric(base, replica_reads("snapshot", "replica")) == 2

        newest = await append(writer, log, project, 3)
        for client in (live, late, resumed, again):
            await client.receive_changes_until(name, newest)
            assert client.inbox == []
            await client.close()
        assert late.replicas[name].heads() == again.replicas[name].heads()
