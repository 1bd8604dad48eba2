"""Bootstrap benchmark: a fresh client takes a 10,000-entity project over the WebSocket.

The project holds 9,900 activities, 99 locations and a plan, each created and then edited
3-5 times (about 50,000 changes), logged through the store API before anything is timed.
The server runs as its own process. A fresh client then connects, sends ``hello`` with
cursor null, reads ``welcome``, ``snapshot_begin``, the chunks, ``snapshot_end`` and
``synced``, decoding every frame with the protocol codec and loading every document with
``automerge.core.Document.load``: that whole span is the headline figure. For comparison
each run also times the same client reading the WebSocket snapshot without decoding or
loading (server and transport alone), and the HTTP snapshot (``GET
/projects/{id}/snapshot`` with gzip), both download-only and with every document loaded.

    python bench/bootstrap.py [--runs N] [--entities N] [--profile PATH]

``--profile PATH`` attaches py-spy to the server process during the WebSocket end-to-end
runs and prints where the server's time went. The last line is the headline: the median
end-to-end WebSocket bootstrap time.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import msgpack
import websockets.asyncio.client
from automerge.core import Document
from harness import (
    CpuUse,
    EntityHistory,
    ServerProfile,
    database,
    entity_history,
    make_project,
    reference_ids,
    seed,
    server_process,
)

from fieldsync.store.database import connect
from fieldsync.sync.codec import decode_server, encode
from fieldsync.sync.messages import (
    Changes,
    Hello,
    ProjectCursor,
    SnapshotBegin,
    SnapshotChunk,
    SnapshotEnd,
    Synced,
    Welcome,
)

ENTITIES = 10_000
LOCATIONS = 99
TARGET_SECONDS = 1.5


def make_entities(count: int) -> list[EntityHistory]:
    """A plan, some locations, the rest activities; each with 3-5 edits after creation."""
    refs = reference_ids()
    rng = random.Random(7)
    locations = min(LOCATIONS, max(0, count - 1))
    kinds = ["plan"] + ["location"] * locations + ["activity"] * (count - 1 - locations)
    return [
        entity_history(kind, index, refs, 1 + rng.randint(3, 5))
        for index, kind in enumerate(kinds)
    ]


@dataclass
class WsBootstrap:
    seconds: float = 0.0
    connected: float = 0.0
    welcome: float = 0.0
    first_chunk: float = 0.0
    snapshot_end: float = 0.0
    decode_seconds: float = 0.0
    load_seconds: float = 0.0
    frames: int = 0
    received_bytes: int = 0
    raw_frames: list[bytes] = field(default_factory=list)
    cursor: int = 0
    documents: dict[str, Document] = field(default_factory=dict)


async def bootstrap_ws(base: str, token: str, project: uuid.UUID, load: bool) -> WsBootstrap:
    """Connect, hello with cursor null, read until synced; decode and load unless ``load``
    is False (then frames are only counted: the server and transport alone)."""
    result = WsBootstrap()
    started = time.perf_counter()
    ws = await websockets.asyncio.client.connect(
        f"ws://{base}/sync", compression=None, max_size=None
    )
    result.connected = time.perf_counter() - started
    wanted = (ProjectCursor(str(project), None),)
    hello = Hello((1,), token, f"bench-{uuid.uuid4().hex[:12]}", wanted)
    await ws.send(encode(hello))
    if not load:
        while True:
            frame = await ws.recv(decode=False)
            result.frames += 1
            result.received_bytes += len(frame)
            result.raw_frames.append(frame)
            if len(frame) < 256 and isinstance(decode_server(frame), Synced):
                break
        result.seconds = time.perf_counter() - started
        await ws.close()
        return result
    while True:
        frame = await ws.recv(decode=False)
        result.frames += 1
        result.received_bytes += len(frame)
        before = time.perf_counter()
        message = decode_server(frame)
        after = time.perf_counter()
        result.decode_seconds += after - before
        if isinstance(message, Welcome):
            result.welcome = after - started
        elif isinstance(message, SnapshotBegin):
            pass
        elif isinstance(message, SnapshotChunk):
            if not result.first_chunk:
                result.first_chunk = after - started
            for entity in message.entities:
                result.documents[entity.entity_id] = Document.load(entity.document)
            result.load_seconds += time.perf_counter() - after
        elif isinstance(message, SnapshotEnd):
            result.snapshot_end = after - started
            result.cursor = message.cursor
        elif isinstance(message, Changes):
            raise AssertionError("nothing was pushed during the bootstrap")
        elif isinstance(message, Synced):
            assert message.cursor == result.cursor, (message, result.cursor)
            break
        else:
            raise AssertionError(f"unexpected {message!r}")
    result.seconds = time.perf_counter() - started
    await ws.close()
    return result


@dataclass
class HttpBootstrap:
    seconds: float
    compressed_bytes: int
    documents: int


async def bootstrap_http(base: str, token: str, project: uuid.UUID, load: bool) -> HttpBootstrap:
    """GET the gzipped snapshot; with ``load``, inflate, parse and load every document."""
    url = f"http://{base}/projects/{project}/snapshot"
    headers = {"Authorization": f"Bearer {token}", "Accept-Encoding": "gzip"}
    documents = 0
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=120) as http, http.stream(
        "GET", url, headers=headers
    ) as response:
        assert response.status_code == 200, response.status_code
        assert response.headers["content-encoding"] == "gzip"
        if load:
            unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 * 1024 * 1024)
            async for data in response.aiter_bytes():
                unpacker.feed(data)
                for record in unpacker:
                    if "document" in record:
                        Document.load(record["document"])
                        documents += 1
        else:
            async for _ in response.aiter_raw():
                pass
        compressed = response.num_bytes_downloaded
    return HttpBootstrap(time.perf_counter() - started, compressed, documents)


async def stored_form(url: str, project: uuid.UUID) -> str:
    """How the snapshot's documents are stored: compacted (saved) or as raw change chunks."""
    conn = await connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(*) FILTER (WHERE length(saved) = 0) AS uncompacted, "
            "avg(tail_changes) AS tail_changes, avg(length(saved) + length(tail)) AS size "
            "FROM documents WHERE project_id = $1",
            project,
        )
    finally:
        await conn.close()
    return (
        f"stored documents: {row['n']}, of which {row['uncompacted']} have no saved part "
        f"(only a tail of change chunks); mean tail {float(row['tail_changes']):.1f} changes, "
        f"mean size {float(row['size']):.0f} bytes"
    )


def compare_load(frames: list[bytes]) -> str:
    """Client cost of loading the documents as shipped against the same ones re-saved."""
    shipped = [
        entity.document
        for frame in frames
        if isinstance(message := decode_server(frame), SnapshotChunk)
        for entity in message.entities
    ]
    started = time.perf_counter()
    loaded = [Document.load(data) for data in shipped]
    as_shipped = time.perf_counter() - started
    saved = [doc.save() for doc in loaded]
    started = time.perf_counter()
    for data in saved:
        Document.load(data)
    as_saved = time.perf_counter() - started
    return (
        f"client Document.load of the {len(shipped)} documents as shipped: {as_shipped:.3f} s "
        f"({sum(map(len, shipped)) / 1e6:.1f} MB); the same documents re-saved with "
        f"Document.save(): {as_saved:.3f} s ({sum(map(len, saved)) / 1e6:.1f} MB)"
    )


async def measure(url: str, base: str, pid: int, args: argparse.Namespace) -> float:
    started = time.perf_counter()
    entities = make_entities(args.entities)
    changes = sum(len(e.changes) for e in entities)
    made = time.perf_counter()
    team = await make_project(url, 1, "bootstrap")
    head = await seed(url, team.project_id, entities)
    print(
        f"setup (not timed): {len(entities)} entities, {changes} changes made in "
        f"{made - started:.1f} s, logged through the store API in "
        f"{time.perf_counter() - made:.1f} s; head seq {head}"
    )
    token = team.members[0].token
    expected = {e.entity_id: sorted(e.document.get_heads()) for e in entities}

    await bootstrap_ws(base, token, team.project_id, load=False)  # warm-up, not reported
    totals: list[float] = []
    cpu = CpuUse(pid, url)
    with ServerProfile(pid, args.profile) as profile:
        runs = []
        for _ in range(args.runs):
            runs.append(await bootstrap_ws(base, token, team.project_id, load=True))
    cpu.stop()
    for number, ws in enumerate(runs, 1):
        assert ws.cursor == head, (ws.cursor, head)
        assert len(ws.documents) == len(entities), len(ws.documents)
        got = {e: sorted(d.get_heads()) for e, d in ws.documents.items()}
        assert got == expected, "a loaded document differs from what was logged"
        totals.append(ws.seconds)
        print(
            f"run {number}: websocket end to end {ws.seconds:.3f} s "
            f"(connect {1000 * ws.connected:.0f} ms, welcome {1000 * ws.welcome:.0f} ms, "
            f"first chunk {1000 * ws.first_chunk:.0f} ms, snapshot_end "
            f"{1000 * ws.snapshot_end:.0f} ms; client decode {ws.decode_seconds:.3f} s, "
            f"Document.load {ws.load_seconds:.3f} s; {ws.frames} frames, "
            f"{ws.received_bytes / 1e6:.1f} MB)"
        )
    print(
        f"websocket end-to-end runs, {cpu.describe(sum(r.seconds for r in runs))} "
        "(this process: the client)"
    )
    for number in range(1, args.runs + 1):
        raw = await bootstrap_ws(base, token, team.project_id, load=False)
        http_raw = await bootstrap_http(base, token, team.project_id, load=False)
        http = await bootstrap_http(base, token, team.project_id, load=True)
        assert http.documents == len(entities), http.documents
        print(
            f"run {number}: websocket receive only {raw.seconds:.3f} s ({raw.frames} frames, "
            f"{raw.received_bytes / 1e6:.1f} MB); http gzip download only "
            f"{http_raw.seconds:.3f} s ({http_raw.compressed_bytes / 1e6:.1f} MB); "
            f"http gzip with every document loaded {http.seconds:.3f} s"
        )
    print(await stored_form(url, team.project_id))
    print(compare_load(raw.raw_frames))
    if args.profile is not None:
        print(profile.report())
    median = statistics.median(totals)
    verdict = "meets" if median < TARGET_SECONDS else "MISSES"
    print(f"median of {len(totals)}: {median:.3f} s; {verdict} the {TARGET_SECONDS} s target")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--entities", type=int, default=ENTITIES)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw output path")
    args = parser.parse_args()
    with database() as url, server_process(url) as server:
        seconds = asyncio.run(measure(url, server.base, server.pid, args))
    print(f"bootstrap {args.entities} entities: {seconds:.2f} s")


if __name__ == "__main__":
    main()
