"""PostgreSQL is SIGKILLed while pushes are on their way: every push still gets its answer.

The promise (docs/operations.md, "When the database goes away"): a push is answered with
its ``push_result``, or with ``error server_unavailable`` naming its ``push_id`` (the client
keeps the change and sends it again); the connection stays open; once PostgreSQL is back
the retries go through; nothing acknowledged is lost or logged twice; and the server's log
holds one line per failure, never a traceback.

How the kill is made to land where it hurts:

- Inside the push transactions: a test connection holds the project's log lock, so the
  push in flight that leads the project's next group waits in its transaction (on
  ``SELECT ... FOR UPDATE``) when PostgreSQL dies, and the others wait in the server for
  that group to end (group commit, ``store.group_commit``); the test waits until
  PostgreSQL shows the leader waiting before it kills.
- On idle pooled connections: with only the postmaster killed, each idle backend sends its
  client a FATAL error before it closes the connection. The kill blocks this process (the
  server runs in it) until every PostgreSQL process is gone, so when the server next looks,
  the pushes sent just before the kill and the dying connections' last words are all
  waiting at once: the pushes borrow connections whose error has arrived but whose end
  has not yet been noticed. That is where the driver said "cannot switch to state 15".
- Anywhere: pushes run freely and PostgreSQL is killed in the middle of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgpack
import pytest
from websockets.exceptions import ConnectionClosed

from fieldsync.auth.tokens import issue_token
from fieldsync.live.rate_limit import RateLimit
from fieldsync.model.automerge_format.changes import parse_change
from fieldsync.model.writer import create_entity
from fieldsync.store.database import close_pool, connect, create_pool
from fieldsync.store.migrations import migrate
from fieldsync.store.projects import add_member, create_account, create_project, create_user
from fieldsync.sync.errors import ErrorCode
from fieldsync.sync.messages import EntityAccepted, EntityPush, Error, Push, PushResult, Status
from tests.client.helpers import seed_activities
from tests.entities import location_values, new_id
from tests.live_server import TEST_SECRET, MemberFactory, running_server
from tests.postgres_process import (
    kill_postmaster,
    start_postgres,
    terminate_holding_the_loop,
    wait_for_exit,
)
from tests.sync_client import SyncClient

PUSHERS = 4
ANSWER_WITHIN = 20.0
RETRY_WITHIN = 60.0
SERVER_OPTIONS: dict[str, Any] = {
    "database_check_seconds": 0.2,
    "head_poll_seconds": 0.5,
    "health_timeout": 1.0,
    "pool_max_size": 10,
    "rate_limit": RateLimit(rate=5_000, burst=5_000),  # the test's own pace is not at issue
}
SNAPSHOT_ENTITIES = 300  # a few prefetches of the snapshot's cursor: it dies between two
LOG_PROBLEMS = ("Exception in ASGI application", "Task exception was never retrieved", "Traceback")


@dataclass
class Pusher:
    """One client pushing new locations over a raw connection, and what it was told."""

    client: SyncClient
    project: str
    next_id: int = 1
    in_flight: dict[int, EntityPush] = field(default_factory=dict)
    unstored: list[EntityPush] = field(default_factory=list)  # to be sent again
    acked: dict[bytes, int] = field(default_factory=dict)  # change hash -> seq
    created: set[bytes] = field(default_factory=set)
    answers: dict[str, int] = field(default_factory=dict)

    async def push_new(self) -> int:
        _, change = create_entity("location", location_values(self.next_id))
        self.created.add(parse_change(change).hash)
        return await self.push(EntityPush("location", new_id(), (change,)))

    async def push(self, entity: EntityPush) -> int:
        push_id = self.next_id
        self.next_id += 1
        self.in_flight[push_id] = entity
        await self.client.send(Push(push_id, self.project, (entity,)))
        return push_id

    async def answer(self) -> str:
        """Read until one push is answered; checks the answer and returns its kind."""
        while True:
            try:
                message = await self.client.receive(ANSWER_WITHIN)
            except ConnectionClosed as closed:
                raise AssertionError(f"the server dropped the connection: {closed!r}") from None
            if isinstance(message, Status):
                continue  # the database's state, told to every connection
            if isinstance(message, PushResult):
                entity = self.in_flight.pop(message.push_id)
                [result] = message.results
                assert isinstance(result, EntityAccepted), result
                [change] = entity.changes
                self.acked[parse_change(change).hash] = result.seqs[0]
                kind = "push_result"
            else:
                assert isinstance(message, Error), message
                assert message.code == ErrorCode.SERVER_UNAVAILABLE.value, message
                assert message.push_id in self.in_flight, message
                self.unstored.append(self.in_flight.pop(message.push_id))
                kind = "server_unavailable"
            self.answers[kind] = self.answers.get(kind, 0) + 1
            return kind

    async def settle(self) -> None:
        while self.in_flight:
            await self.answer()

    async def send_again_until_stored(self) -> None:
        """Send every unstored change again (as the SDK would) until each is acknowledged."""
        deadline = time.monotonic() + RETRY_WITHIN
        while self.unstored:
            assert time.monotonic() < deadline, f"{len(self.unstored)} changes never stored"
            retry, self.unstored = self.unstored, []
            for entity in retry:
                await self.push(entity)
            await self.settle()
            if self.unstored:
                await asyncio.sleep(0.1)

    async def keep_pushing(self, stop: asyncio.Event, window: int = 2) -> None:
        while not stop.is_set():
            while len(self.in_flight) < window:
                await self.push_new()
            if await self.answer() == "server_unavailable":
                await asyncio.sleep(0.02)  # a client backs off
        await self.settle()


async def crash_project(url: str) -> tuple[uuid.UUID, list[str]]:
    """A project with a lead per pusher, in the test's own PostgreSQL; its id and tokens."""
    conn = await connect(url)
    try:
        await migrate(conn)
        project = await create_project(conn, await create_account(conn, "crash"), "crash")
        tokens = []
        for n in range(PUSHERS):
            user = await create_user(conn, f"pusher {n}")
            await add_member(conn, project, user, "lead")
            tokens.append(issue_token(TEST_SECRET, user))
    finally:
        await conn.close()
    return project, tokens


def crash(pgdata: Path, *, every_process: bool) -> None:
    """Kill PostgreSQL and wait, holding up this whole process (and the server in it),
    until every one of its processes is gone."""
    wait_for_exit(kill_postmaster(pgdata, every_process=every_process))


async def waiting_on_lock(blocker: asyncpg.Connection, count: int) -> None:
    """Until ``count`` backends wait for a row lock (the pushes, inside their transactions).

    pg_locks, not pg_stat_activity: the latter is read once per transaction, and the
    blocker asks from inside its own."""
    deadline = time.monotonic() + ANSWER_WITHIN
    while True:
        waiting = await blocker.fetchval(
            "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted"
        )
        if waiting >= count:
            return
        assert time.monotonic() < deadline, f"only {waiting} of {count} pushes wait on the lock"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def log_locked(url: str, project: uuid.UUID) -> AsyncIterator[asyncpg.Connection]:
    """Hold the project's log lock (as a long push would) on a connection of the test's."""
    blocker = await connect(url)
    try:
        await blocker.execute("BEGIN")
        await blocker.fetchval(
            "SELECT head_seq FROM log_heads WHERE project_id = $1 FOR UPDATE", project
        )
        yield blocker
    finally:
        blocker.terminate()


async def open_pooled_connections(url: str, project: uuid.UUID, pushers: list[Pusher]) -> None:
    """Make the server's pool open connections: one push each, held up on the log lock
    (one of them in its transaction, the rest queued behind it in the server), then let
    through."""
    async with log_locked(url, project) as blocker:
        for pusher in pushers:
            await pusher.push_new()
        await waiting_on_lock(blocker, 1)
        await blocker.execute("COMMIT")
    for pusher in pushers:
        await pusher.settle()
    assert all(not p.unstored for p in pushers)


async def kill_inside_transactions(
    url: str, pgdata: Path, project: uuid.UUID, pushers: list[Pusher], *, every_process: bool
) -> None:
    """Half the pushers have a push in its transaction, waiting on the log lock, and one
    more queued behind it; the other half send a push just before the kill, which the
    server reads only after it (the pool's idle connections are then dying)."""
    waiting, late = pushers[: len(pushers) // 2], pushers[len(pushers) // 2 :]
    async with log_locked(url, project) as blocker:
        for pusher in waiting:
            await pusher.push_new()
            await pusher.push_new()  # a session handles one message at a time
        await waiting_on_lock(blocker, 1)
        for pusher in late:
            await pusher.push_new()
        crash(pgdata, every_process=every_process)
    for pusher in pushers:
        await pusher.settle()
    # The lock was held until the end: none of them could commit.
    assert [len(p.unstored) for p in pushers] == [2] * len(waiting) + [1] * len(late)


@pytest.mark.parametrize("every_process", [False, True], ids=["postmaster", "every_process"])
async def test_postgres_killed_mid_push_every_push_is_answered(
    own_postgres: tuple[str, Path], caplog: pytest.LogCaptureFixture, every_process: bool
) -> None:
    caplog.set_level(logging.INFO)
    url, pgdata = own_postgres
    project, tokens = await crash_project(url)
    async with running_server(url, **SERVER_OPTIONS) as base:
        pushers = []
        for token in tokens:
            client = await SyncClient.connect(base)
            await client.hello(token)
            pushers.append(Pusher(client, str(project)))
        for _ in range(2):
            await open_pooled_connections(url, project, pushers)
            await kill_inside_transactions(
                url, pgdata, project, pushers, every_process=every_process
            )
            await asyncio.to_thread(start_postgres, pgdata)
            for pusher in pushers:
                await pusher.send_again_until_stored()

        # Pushes running freely; PostgreSQL dies wherever they are.
        refused = sum(p.answers["server_unavailable"] for p in pushers)
        stop = asyncio.Event()
        load = [asyncio.create_task(p.keep_pushing(stop)) for p in pushers]
        await asyncio.sleep(0.5)
        crash(pgdata, every_process=every_process)
        await asyncio.sleep(0.5)  # pushes go on, and are refused
        await asyncio.to_thread(start_postgres, pgdata)
        await asyncio.sleep(1.0)  # and succeed again
        stop.set()
        await asyncio.gather(*load)
        assert sum(p.answers["server_unavailable"] for p in pushers) > refused
        for pusher in pushers:
            await pusher.send_again_until_stored()
            await pusher.push_new()  # the connection is still the one opened at the start
            await pusher.settle()
            assert not pusher.unstored
            await pusher.client.close()

    # Everything acknowledged is in the log at its acknowledged seq, each change once.
    pool = await create_pool(url, 1, 2)
    try:
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT seq, hash FROM changes WHERE project_id = $1 ORDER BY seq", project
            )
    finally:
        await close_pool(pool)
    logged = {bytes(r["hash"]): r["seq"] for r in rows}
    assert len(logged) == len(rows) == rows[-1]["seq"]
    created = set().union(*(p.created for p in pushers))
    assert set(logged) == created
    for pusher in pushers:
        for change_hash, seq in pusher.acked.items():
            assert logged[change_hash] == seq

    gc.collect()  # a task that died unobserved is reported when it is collected
    problems = [
        record
        for record in caplog.records
        if record.exc_info or any(p in record.getMessage() for p in LOG_PROBLEMS)
    ]
    assert not problems, "\n".join(caplog.text.splitlines()[:60])
    assert not any(p in caplog.text for p in LOG_PROBLEMS), caplog.text[:4000]


async def read_into(received: list[bytes], chunks: AsyncIterator[bytes]) -> None:
    async for chunk in chunks:
        received.append(chunk)


async def test_http_snapshot_whose_connection_dies_mid_body_is_left_unfinished(
    sync_server: str,
    project: uuid.UUID,
    member: MemberFactory,
    pool: asyncpg.Pool,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The status line is out when the snapshot's connection dies: the server leaves the
    body unfinished and closes the connection (no client or cache can take what came for a
    whole snapshot), and logs it in one line, no traceback."""
    caplog.set_level(logging.INFO)
    _, token = await member(project)
    # Far more than the socket buffers hold: the server is still reading rows when it dies.
    await seed_activities(pool, project, SNAPSHOT_ENTITIES, text_chars=4_000)
    url = f"http://{sync_server}/projects/{project}/snapshot"
    headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "identity"}
    async with httpx.AsyncClient(timeout=ANSWER_WITHIN) as http:
        async with http.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200
            chunks = response.aiter_bytes()
            first = await anext(chunks)  # the body has begun
            # The snapshot's transaction is the only one open on the database.
            ended = terminate_holding_the_loop(
                database_url,
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND xact_start IS NOT NULL AND pid <> pg_backend_pid()",
            )
            assert ended == 1
            received = [first]
            with pytest.raises(httpx.RemoteProtocolError, match="incomplete"):
                await read_into(received, chunks)
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(b"".join(received))
        records = list(unpacker)
        assert records[0]["t"] == "snapshot_begin"
        assert records[0]["entity_count"] == SNAPSHOT_ENTITIES
        assert 0 < len(records) - 1 < SNAPSHOT_ENTITIES  # entities only: no snapshot_end
        assert all("t" not in r for r in records[1:])

        again = await http.get(url, headers=headers)  # and the next one is whole
        assert again.status_code == 200
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(again.content)
        assert list(unpacker)[-1]["t"] == "snapshot_end"

    assert any("abandoned" in r.getMessage() for r in caplog.records)
    problems = [
        record
        for record in caplog.records
        if record.exc_info or any(p in record.getMessage() for p in LOG_PROBLEMS)
    ]
    assert not problems, caplog.text[:4000]
