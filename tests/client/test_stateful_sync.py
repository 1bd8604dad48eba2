"""A state machine over the whole system: SDK clients edit related entities, their apps close
and reopen, and two server processes on one database stop, start and restart, in any
interleaving Hypothesis chooses (clients 0 and 2 talk to one process, client 1 to the other).

Whenever it asks for quiescence (and at the end), every client must hold exactly the
server's documents and the same open conflicts as the server's conflicts read model, no
acknowledged or local edit may be missing, and the log must hold each change once.

Everything is real: uvicorn and WebSockets, PostgreSQL, SQLite stores on disk, Automerge.
``SYNC_MACHINE_EXAMPLES`` sets how many runs (default 5; a soak run wants 100).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import uuid
from collections.abc import Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)

from fieldsync.auth.tokens import issue_token
from fieldsync.store.database import close_pool, create_pool
from fieldsync.store.projects import add_member, create_account, create_project, create_user
from fieldsync_client import FieldsyncClient, Project
from tests.client.conftest import FAST_BACKOFF, RestartableServer
from tests.client.helpers import logged_hashes, server_documents, values_of
from tests.entities import START
from tests.live_server import TEST_SECRET

T = TypeVar("T")
CLIENTS = 3
EXAMPLES = int(os.environ.get("SYNC_MACHINE_EXAMPLES", "5"))


def at(hours: int) -> object:
    return START + timedelta(hours=hours)


class SyncMachine(RuleBasedStateMachine):
    database_url = ""  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.TemporaryDirectory(prefix="fsm")
        # Two server processes on one database; client n talks to server n % 2.
        self.servers = [RestartableServer(self.database_url) for _ in range(2)]
        self.clients: list[FieldsyncClient | None] = [None] * CLIENTS
        self.projects: list[Project | None] = [None] * CLIENTS
        self.tokens: list[str] = []
        self.ids: dict[str, str] = {}
        self.pool: asyncpg.Pool | None = None
        self.project_id = uuid.UUID(int=0)

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(work)

    # --- setup ------------------------------------------------------------------------------

    @initialize()
    def set_up(self) -> None:
        self.run(self._set_up())

    async def _set_up(self) -> None:
        self.pool = await create_pool(self.database_url, 1, 4)
        async with self.pool.acquire() as conn:
            account = await create_account(conn, "Machine")
            self.project_id = await create_project(conn, account, "Machine")
            for n in range(CLIENTS):
                user = await create_user(conn, f"Specialist {n}")
                await add_member(conn, self.project_id, user, "lead")
                self.tokens.append(issue_token(TEST_SECRET, user))
        for server in self.servers:
            await server.start()
        suffix = uuid.uuid4().hex[:8]
        for name in ("loc-1", "loc-2", "act-1", "act-2", "sum-1", "sum-2"):
            self.ids[name] = f"{name}-{suffix}"
        lead = await self._open(0)
        await lead.create("location", {"name": "North"}, entity_id=self.ids["loc-1"])
        await lead.create("location", {"name": "South"}, entity_id=self.ids["loc-2"])
        for n, (location, start) in enumerate((("loc-1", 0), ("loc-2", 8)), start=1):
            await lead.create(
                "activity",
                {
                    "plan_id": "plan",
                    "title": "Core sampling",
                    "description": "Take cores.",
                    "tasks": [],
                    "location_id": self.ids[location],
                    "starts_at": at(start),
                    "ends_at": at(start + 6),
                    "status": "planned",
                },
                entity_id=self.ids[f"act-{n}"],
            )
            await lead.create(
                "summoning",
                {
                    "activity_id": self.ids[f"act-{n}"],
                    "user_id": "user-1",
                    "starts_at": at(start + 1),
                    "ends_at": at(start + 5),
                    "status": "confirmed",
                },
                entity_id=self.ids[f"sum-{n}"],
            )
        client = self.clients[0]
        assert client is not None
        await client.wait_synced(15)
        for n in range(1, CLIENTS):
            await self._open(n)

    async def _open(self, n: int) -> Project:
        client = FieldsyncClient(
            self.servers[n % 2].url,
            self.tokens[n],
            Path(self.dir.name) / f"client-{n}.db",
            **FAST_BACKOFF,
        )
        self.clients[n] = client
        project = await client.open_project(str(self.project_id), timeout=15)
        self.projects[n] = project
        return project

    # --- what happens -----------------------------------------------------------------------

    @rule(
        n=st.integers(0, CLIENTS - 1),
        entity=st.sampled_from(["act-1", "act-2", "sum-1", "sum-2", "loc-1"]),
        op=st.integers(0, 5),
        value=st.integers(0, 11),
    )
    def edit(self, n: int, entity: str, op: int, value: int) -> None:
        project = self.projects[n]
        if project is None:
            return  # the app is closed: its user cannot edit
        entity_type, values = self._edit(entity, op, value)
        if entity_type == "activity" and op == 5:
            self.run(
                project.splice_text(
                    entity_type, self.ids[entity], "description", 0, 0, "ab"[value % 2]
                )
            )
            return
        self.run(project.update(entity_type, self.ids[entity], values))

    def _edit(self, target: str, op: int, value: int) -> tuple[str, dict[str, object]]:
        if target.startswith("act"):
            choices: list[dict[str, object]] = [
                {"title": ("North", "South", "East")[value % 3]},
                {"status": ("planned", "confirmed", "cancelled")[value % 3]},
                {"starts_at": at(value)},
                {"ends_at": at(value + 2)},
                {"deleted": value % 4 == 0},
                {},
            ]
            return "activity", choices[op]
        if target.startswith("sum"):
            choices = [
                {"starts_at": at(value)},
                {"ends_at": at(value + 1)},
                {"user_id": ("user-1", "user-2")[value % 2]},
                {"status": ("proposed", "confirmed", "declined")[value % 3]},
                {"deleted": value % 4 == 0},
                {"activity_id": self.ids[("act-1", "act-2")[value % 2]]},
            ]
            return "summoning", choices[op]
        return "location", {"deleted": value % 3 == 0}

    @rule(n=st.integers(1, CLIENTS - 1))
    def close_app(self, n: int) -> None:
        client = self.clients[n]
        if client is not None:
            self.run(client.close())
            self.clients[n] = self.projects[n] = None

    @rule(n=st.integers(1, CLIENTS - 1))
    def reopen_app(self, n: int) -> None:
        if self.clients[n] is None:
            self.run(self._open(n))

    @rule(which=st.integers(0, 1))
    def server_goes_down(self, which: int) -> None:
        if self.servers[which].running:
            self.run(self.servers[which].stop())

    @rule(which=st.integers(0, 1))
    def server_comes_back(self, which: int) -> None:
        if not self.servers[which].running:
            self.run(self.servers[which].start())

    @rule(which=st.integers(0, 1))
    def server_restarts(self, which: int) -> None:
        server = self.servers[which]
        if server.running:
            self.run(server.stop())
        self.run(server.start())

    @rule()
    def quiesce(self) -> None:
        self.run(self._converge())

    # --- the check --------------------------------------------------------------------------

    async def _converge(self) -> None:
        for server in self.servers:
            if not server.running:
                await server.start()
        for n in range(CLIENTS):
            if self.clients[n] is None:
                await self._open(n)
        for client in self.clients:
            assert client is not None
            await client.wait_synced(30)
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            head = await conn.fetchval(
                "SELECT head_seq FROM log_heads WHERE project_id = $1", self.project_id
            )
            rows = await conn.fetch(
                "SELECT conflict_id, details::text AS details FROM rm_conflicts "
                "WHERE project_id = $1 AND status = 'open'",
                self.project_id,
            )
        for _ in range(1000):
            if all(p is not None and p.cursor == head for p in self.projects):
                break
            await asyncio.sleep(0.01)
        server_open = {r["conflict_id"]: json.loads(r["details"]) for r in rows}
        documents = await server_documents(self.servers[1].base, self.tokens[0], self.project_id)
        hashes = await logged_hashes(self.pool, self.project_id)
        assert len(hashes) == len(set(hashes)), "a change was logged twice"
        for project in self.projects:
            assert project is not None
            assert project.cursor == head
            assert project.pending_count() == 0
            assert await project.rejected_changes() == []
            for name, entity_id in self.ids.items():
                entity_type = {"loc": "location", "act": "activity", "sum": "summoning"}[name[:3]]
                doc = documents[entity_id]
                assert await project.heads(entity_id) == sorted(doc.get_heads()), name
                assert await project.get(entity_type, entity_id) == values_of(entity_type, doc)
            held = {c.conflict_id: c for c in await project.conflicts()}
            assert set(held) == set(server_open)
            for conflict_id, conflict in held.items():
                assert dict(conflict.values) == server_open[conflict_id]["values"]

    def teardown(self) -> None:
        try:
            if self.pool is not None:  # initialize ran
                self.run(self._converge())
        finally:
            for client in self.clients:
                if client is not None:
                    self.run(client.close())
            for server in self.servers:
                self.run(server.stop())
            if self.pool is not None:
                self.run(close_pool(self.pool))
            self.loop.close()
            self.dir.cleanup()


def test_clients_and_server_converge_whatever_happens(database_url: str) -> None:
    class Machine(SyncMachine):
        pass

    Machine.database_url = database_url
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
