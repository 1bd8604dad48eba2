"""A client app in its own process, for the kill tests: ``python -m tests.client.kill_worker``.

``edit PATH PROJECT COUNT``: offline, create COUNT locations (ids ``kill-0``...), then exit.
``sync PATH PROJECT URL TOKEN``: print the outbox size, sync until nothing is waiting, print
``synced``, and exit; killed with SIGKILL at any moment, it is simply started again.
``bootstrap PATH PROJECT URL TOKEN``: open the project (its first snapshot comes over HTTP,
stored 10 entities per transaction), printing the SDK's progress log lines, then
``bootstrapped CURSOR``.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import fieldsync_client.bootstrap
from fieldsync_client import FieldsyncClient


async def edit(path: str, project_id: str, count: int) -> None:
    async with FieldsyncClient(None, "offline", path) as client:
        project = await client.open_project(project_id)
        for i in range(count):
            await project.create("location", {"name": f"Site {i}"}, entity_id=f"kill-{i}")
    print("edited", flush=True)


async def sync(path: str, project_id: str, url: str, token: str) -> None:
    async with FieldsyncClient(
        url, token, path, backoff_base=0.05, backoff_cap=0.25, connect_timeout=2
    ) as client:
        # Counted before the project opens: opening it starts syncing, which acknowledges
        # changes while the first snapshot is fetched.
        print(f"pending {client.store.pending_count()}", flush=True)
        project = await client.open_project(project_id)
        await client.wait_synced(30)
        print(f"synced {project.cursor}", flush=True)


async def bootstrap(path: str, project_id: str, url: str, token: str) -> None:
    fieldsync_client.bootstrap.PART_ENTITIES = 10  # many transactions: a kill lands between
    logger = logging.getLogger("fieldsync_client")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(logging.StreamHandler(sys.stdout))
    async with FieldsyncClient(url, token, path, connect_timeout=5) as client:
        project = await client.open_project(project_id, timeout=60)
        print(f"bootstrapped {project.cursor}", flush=True)


def main(argv: list[str]) -> None:
    if argv[0] == "edit":
        asyncio.run(edit(argv[1], argv[2], int(argv[3])))
    elif argv[0] == "sync":
        asyncio.run(sync(argv[1], argv[2], argv[3], argv[4]))
    elif argv[0] == "bootstrap":
        asyncio.run(bootstrap(argv[1], argv[2], argv[3], argv[4]))
    else:
        raise SystemExit(f"unknown mode {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
