"""A client process killed with SIGKILL in the middle of a sync, then started again."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import asyncpg

from fieldsync.model.limits import Limits
from tests.client.conftest import RestartableServer
from tests.client.helpers import (
    finish_worker,
    logged_hashes,
    server_documents,
    spawn_worker,
    values_of,
)
from tests.live_server import MemberFactory

COUNT = 600
KILLS = 2


async def test_a_client_killed_mid_sync_finishes_and_each_change_is_logged_once(
    database_url: str, project: uuid.UUID, member: MemberFactory, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    # Small pushes, so that a sync is many round trips and a kill lands in the middle.
    server = RestartableServer(database_url, limits=Limits(max_entities_per_batch=20))
    await server.start()
    try:
        _, token = await member(project)
        store = str(tmp_path / "killed.db")
        assert await finish_worker(await spawn_worker("edit", store, str(project), str(COUNT))) == [
            "edited"
        ]

        logged_before = 0
        for _ in range(KILLS):
            victim = await spawn_worker("sync", store, str(project), server.url, token)
            deadline = time.monotonic() + 30
            while len(await logged_hashes(pool, project)) <= logged_before:
                assert time.monotonic() < deadline, "the client logged nothing"
                await asyncio.sleep(0.005)
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            assert victim.returncode == -signal.SIGKILL
            logged = len(await logged_hashes(pool, project))
            assert logged_before < logged < COUNT, "the kill did not land mid-sync"
            logged_before = logged

        lines = await finish_worker(
            await spawn_worker("sync", store, str(project), server.url, token)
        )
        pending = int(lines[0].removeprefix("pending "))
        # The outbox is intact: whatever the server had not acknowledged is still there
        # (changes logged just before the kill may be there too: they are sent again).
        assert COUNT - logged_before <= pending <= COUNT
        assert lines[-1] == f"synced {COUNT}"

        hashes = await logged_hashes(pool, project)
        assert len(hashes) == len(set(hashes)) == COUNT
        documents = await server_documents(server.base, token, project)
        assert sorted(documents) == sorted(f"kill-{i}" for i in range(COUNT))
        assert values_of("location", documents["kill-7"]) == {"name": "Site 7"}
    finally:
        await server.stop()
