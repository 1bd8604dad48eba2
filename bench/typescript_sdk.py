"""Benchmarks of the TypeScript SDK (``client-sdk/typescript``), run by hand.

- Bootstrap: a project of 10,000 entities (each edited 3-5 times, as in
  ``bench/bootstrap.py``) is bootstrapped by a fresh Node client into SQLite (HTTP snapshot),
  and by a fresh page in headless Chromium into IndexedDB (WebSocket snapshot: the HTTP
  snapshot has no CORS headers). Timed from creating the client until ``openProject``
  returns with every entity stored and the cursor set.
- Resync: a lead's Node client made 1,000 edits across 200 entities offline while another
  member made 1,000 edits of the same entities through the server (the workload of
  ``bench/resync.py``). Timed from creating the client until the outbox is acknowledged,
  every change pulled and the cursor at the head; then each entity's heads are checked
  against the server's.
- Bundle: the browser bundle's size, minified and gzipped, with and without Automerge's wasm.

    npm ci --prefix client-sdk/typescript   # once
    python bench/typescript_sdk.py [--entities N] [--runs N]

The last line is the headline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bootstrap import make_entities
from harness import database, make_project, seed, server_process
from resync import _edit_round

from fieldsync_client import FieldsyncClient
from tests.typescript.node import DIST, PACKAGE, bundle, node

EDITS = 1_000
RESYNC_ENTITIES = 200
ORIGIN = "http://127.0.0.1:9"  # the benchmark page's origin (served by Playwright)
PROFILE = os.environ.get("FIELDSYNC_NODE_PROFILE")  # a folder: V8 CPU profiles of each run


def run_node(*args: str) -> Any:
    profile = ["--cpu-prof", f"--cpu-prof-dir={PROFILE}"] if PROFILE else []
    done = subprocess.run(
        [node(), *profile, str(DIST / "test" / "bench.js"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=PACKAGE,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


async def other_member_edits(
    base: str, token: str, project_id: str, made: list[Any], directory: Path
) -> None:
    path = directory / f"other-{uuid.uuid4().hex[:8]}.db"
    async with FieldsyncClient(f"ws://{base}", token, path) as client:
        project = await client.open_project(project_id)
        await client.wait_synced(60)
        await _edit_round(project, [tuple(m) for m in reversed(made)], EDITS, "other")
        await client.wait_synced(120)


async def server_heads(base: str, token: str, project_id: str, directory: Path) -> dict[str, Any]:
    path = directory / f"check-{uuid.uuid4().hex[:8]}.db"
    async with FieldsyncClient(f"ws://{base}", token, path) as client:
        project = await client.open_project(project_id)
        await client.wait_synced(60)
        heads = {}
        for kind in ("plan", "activity", "location", "role"):
            for entity_id in await project.ids(kind, include_deleted=True):
                heads[entity_id] = sorted(h.hex() for h in await project.heads(entity_id))
    return heads


def main(args: argparse.Namespace) -> None:
    bundle()
    sizes = (
        subprocess.run(
            [node(), str(PACKAGE / "scripts" / "bundle.mjs")],
            capture_output=True,
            text=True,
            check=True,
            cwd=PACKAGE,
        )
        .stdout.strip()
        .splitlines()
    )
    os.environ["FIELDSYNC_ALLOWED_ORIGINS"] = ORIGIN
    directory = Path(tempfile.mkdtemp(prefix="fsts"))
    with database() as url, server_process(url) as server:
        asyncio.run(measure(args, url, server.base, sizes, directory))


async def measure(
    args: argparse.Namespace, url: str, base: str, sizes: list[str], directory: Path
) -> None:
    if True:
        team = await make_project(url, 2, "ts-bench")
        project_id = str(team.project_id)
        token = team.members[0].token
        await seed(url, team.project_id, make_entities(args.entities))
        node_ms, browser_ms = [], []
        for run in range(args.runs):
            store = str(directory / f"boot-{run}.db")
            got = run_node("bootstrap", f"ws://{base}", token, project_id, store)
            assert got["entities"] == args.entities, got
            node_ms.append(got["ms"])
            got = run_node("browser-bootstrap", f"http://{base}", token, project_id, ORIGIN)
            assert got["entities"] == args.entities, got
            browser_ms.append(got["ms"])
        print(
            f"bootstrap of {args.entities} entities, Node into SQLite (HTTP snapshot): "
            f"median {statistics.median(node_ms):.0f} ms of {[round(m) for m in node_ms]}"
        )
        print(
            f"bootstrap of {args.entities} entities, Chromium into IndexedDB (WebSocket "
            f"snapshot): median {statistics.median(browser_ms):.0f} ms of "
            f"{[round(m) for m in browser_ms]}"
        )

        resync_ms = []
        for run in range(args.runs):
            team = await make_project(url, 2, f"ts-resync-{run}")
            project_id = str(team.project_id)
            lead, other = team.members
            store = str(directory / f"lead-{run}.db")
            made = run_node(
                "create", f"ws://{base}", lead.token, project_id, store, str(RESYNC_ENTITIES)
            )
            await other_member_edits(base, other.token, project_id, made, directory)
            ids = directory / f"ids-{run}.json"
            ids.write_text(json.dumps(made))
            offline = run_node("edit-offline", project_id, store, str(ids), str(EDITS))
            assert offline["pending"] == EDITS, offline
            head = RESYNC_ENTITIES + 2 * EDITS
            got = run_node("resync", f"ws://{base}", lead.token, project_id, store, str(head))
            expected = await server_heads(base, other.token, project_id, directory)
            assert got["heads"] == expected, "the resynced heads differ from the server's"
            resync_ms.append(got["ms"])
            print(
                f"resync run {run}: {got['ms']:.0f} ms (openProject {got['openMs']:.0f} ms, "
                f"waitSynced {got['syncedMs']:.0f} ms, cursor at head {got['headMs']:.0f} ms; "
                f"client CPU {got['cpuMs']:.0f} ms)"
            )
        print(
            f"resync of {EDITS} offline + {EDITS} remote edits across {RESYNC_ENTITIES} "
            f"entities, Node: median {statistics.median(resync_ms):.0f} ms"
        )
        for line in sizes:
            print(line)
    print(
        f"TypeScript SDK: bootstrap {args.entities} entities {statistics.median(node_ms):.0f} ms "
        f"Node / {statistics.median(browser_ms):.0f} ms Chromium, resync "
        f"{statistics.median(resync_ms):.0f} ms, bundle {sizes[-1].split(': ', 1)[1]}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    main(parser.parse_args())
