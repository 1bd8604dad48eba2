"""A TypeScript client (Node, SQLite storage) killed with SIGKILL in the middle of a sync,
then started again: it resumes from its stored state and every change is logged once."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import asyncpg

from fieldsync.model.limits import Limits
from tests.client.conftest import RestartableServer
from tests.client.helpers import logged_hashes, server_documents, values_of
from tests.live_server import MemberFactory
from tests.typescript.node import DIST, PACKAGE, build, node

COUNT = 600
KILLS = 2


async def spawn(*args: str) -> asyncio.subprocess.Process:
    build()
    return await asyncio.create_subprocess_exec(
        node(),
        str(DIST / "test" / "kill-worker.js"),
        *args,
        cwd=PACKAGE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process) -> list[str]:
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 0, err.decode()[-3000:]
    return out.decode().splitlines()


async def test_a_typescript_client_killed_mid_sync_resumes_and_each_change_is_logged_once(
    database_url: str,
    project: uuid.UUID,
    member: MemberFactory,
    pool: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    # Small pushes, so that a sync is many round trips and a kill lands in the middle.
    server = RestartableServer(database_url, limits=Limits(max_entities_per_batch=20))
    await server.start()
    try:
        _, token = await member(project)
        store = str(tmp_path / "killed.db")
        prefix = f"tskill-{project.hex[:12]}"  # entity ids are unique across projects
        edited = await finish(await spawn("edit", store, str(project), str(COUNT), prefix))
        assert edited == ["edited"]

        logged_before = 0
        for _ in range(KILLS):
            victim = await spawn("sync", store, str(project), server.url, token)
            deadline = time.monotonic() + 30
            while len(await logged_hashes(pool, project)) <= logged_before:
                if victim.returncode is not None or time.monotonic() > deadline:
                    if victim.returncode is None:
                        victim.kill()
                    out, err = await victim.communicate()
                    raise AssertionError(f"the client logged nothing: {out!r} {err!r}")
                await asyncio.sleep(0.005)
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            assert victim.returncode == -signal.SIGKILL
            logged = len(await logged_hashes(pool, project))
            assert logged_before < logged < COUNT, "the kill did not land mid-sync"
            logged_before = logged

        lines = await finish(await spawn("sync", store, str(project), server.url, token))
        pending = int(lines[0].removeprefix("pending "))
        # Whatever the server had not acknowledged is still in the outbox (changes logged
        # just before the kill may be there too: they are sent again, and logged once).
        assert COUNT - logged_before <= pending <= COUNT
        assert lines[-1] == f"synced {COUNT}"

        hashes = await logged_hashes(pool, project)
        assert len(hashes) == len(set(hashes)) == COUNT
        documents = await server_documents(server.base, token, project)
        assert sorted(documents) == sorted(f"{prefix}-{i}" for i in range(COUNT))
        assert values_of("location", documents[f"{prefix}-7"]) == {"name": "Site 7"}
    finally:
        await server.stop()
