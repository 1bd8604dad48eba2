"""`fieldsync serve` killed with SIGKILL while clients sync, then started again.

No graceful shutdown: connections just vanish, pushes in flight get no answer. Every
change a client saw acknowledged must already be in the log (acknowledge only after
commit); the clients reconnect by themselves, push what was not acknowledged, and end with
the server's documents, each change logged exactly once.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import uuid
from pathlib import Path

import asyncpg

from fieldsync_client import FieldsyncClient, Project
from tests.client.conftest import OnlineFactory
from tests.client.helpers import head_seq, logged_hashes, server_documents, until
from tests.entities import location_values
from tests.live_server import TEST_SECRET, free_port
from tests.test_server_command import FIELDSYNC, Serving

EDITS = 200  # per client
KILL_AFTER = 60  # logged changes


class ServeProcess:
    """``fieldsync serve`` on a fixed port, which can be killed and started again."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.port = free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="fsk", dir="/tmp"))
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            str(FIELDSYNC),
            "serve",
            "--port",
            str(self.port),
            "--database-url",
            self.database_url,
            "--data-dir",
            str(self.data_dir),
            env={**os.environ, "FIELDSYNC_SECRET": TEST_SECRET.decode()},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await Serving(self.process, self.port).wait_healthy()

    async def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGKILL)
            await process.wait()
            assert process.returncode == -signal.SIGKILL

    async def close(self) -> None:
        await self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)


async def _edit(client: FieldsyncClient, project: Project, name: str, made: set[bytes]) -> None:
    """Create and rename locations, pausing so sync runs; adds each change's hash to
    ``made``."""
    for i in range(EDITS):
        if i % 2 == 0:
            site = await project.create("location", location_values(i), entity_id=f"{name}-{i}")
        else:
            await project.update("location", site, {"name": f"{name} site {i}"})
        made.add(client.store.pending_changes(project.project_id)[-1].hash)  # just made
        await asyncio.sleep(0.005)


async def test_clients_converge_after_the_server_is_killed_mid_sync(
    database_url: str,
    project: uuid.UUID,
    online: OnlineFactory,
    pool: asyncpg.Pool,
) -> None:
    server = ServeProcess(database_url)
    await server.start()
    try:
        client_a, a, token_a, _ = await online(server.url, project, "a")
        client_b, b, _, _ = await online(server.url, project, "b")
        prefix = project.hex[:8]  # entity ids are unique across projects
        made_a: set[bytes] = set()
        made_b: set[bytes] = set()
        editing = [
            asyncio.create_task(_edit(client_a, a, f"a{prefix}", made_a)),
            asyncio.create_task(_edit(client_b, b, f"b{prefix}", made_b)),
        ]
        while len(await logged_hashes(pool, project)) < KILL_AFTER:
            assert not any(task.done() for task in editing), "the edits ended before the kill"
            await asyncio.sleep(0.005)
        await server.kill()
        assert not all(task.done() for task in editing), "the kill came after the edits"

        # Nothing can be acknowledged any more. What left an outbox must be in the log.
        logged = set(await logged_hashes(pool, project))
        for client, made in ((client_a, made_a), (client_b, made_b)):
            waiting = {entry.hash for entry in client.store.pending_changes(str(project))}
            acknowledged = made - waiting
            assert acknowledged, "nothing was acknowledged before the kill"
            assert acknowledged <= logged
        await until(lambda: not client_a.status.online and not client_b.status.online)

        await asyncio.gather(*editing)  # the rest is made offline
        await server.start()
        await client_a.wait_synced(30)
        await client_b.wait_synced(30)
        total = 2 * EDITS
        head = await head_seq(pool, project)
        assert head == total
        await until(lambda: a.cursor == b.cursor == head, 15, "both clients at the head")
        hashes = await logged_hashes(pool, project)
        assert len(hashes) == len(set(hashes)) == total
        assert set(hashes) == made_a | made_b
        documents = await server_documents(f"127.0.0.1:{server.port}", token_a, project)
        assert len(documents) == EDITS
        for entity_id, doc in documents.items():
            heads = sorted(doc.get_heads())
            assert await a.heads(entity_id) == await b.heads(entity_id) == heads
    finally:
        await server.close()
