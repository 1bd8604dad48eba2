"""Attachments: upload throughput from one client, then processing by one worker.

Runs ``fieldsync serve`` (blobs on its local file system) and ``fieldsync worker`` in
processes of their own on one database (``DATABASE_URL`` or an embedded PostgreSQL).
One client uploads N photos of about 3 MB each over loopback, one request per photo
(the SDK's resumable path sends 1 MiB parts; ``--part-bytes`` measures that), sequentially.
The worker processes them as they arrive; the bench reports photos per second for that
worker and the time from upload to ``ready`` (p50/p99), and the server process's CPU per
photo while uploading (a figure that other work on the machine disturbs less than the
rate). Last line: the upload rate.

    .venv/bin/python bench/attachments.py [--photos 100] [--part-bytes 0]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import database, make_project, percentile, process_cpu_seconds, server_process

PHOTO_BYTES = 3 * 1024 * 1024


def photos(count: int) -> list[bytes]:
    """``count`` distinct JPEGs of about 3 MB (a few noisy images, each made distinct by
    bytes after its end marker, which decoders ignore)."""
    bases = []
    for _ in range(min(count, 8)):
        image = Image.frombytes("RGB", (2048, 1536), os.urandom(2048 * 1536 * 3))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=78)
        bases.append(out.getvalue())
    made = []
    for n in range(count):
        base = bases[n % len(bases)]
        made.append(base + os.urandom(max(PHOTO_BYTES - len(base), 16)))
    return made


async def upload_all(
    base: str, token: str, project: uuid.UUID, data: list[bytes], part: int
) -> float:
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=60) as http:
        for blob in data:
            url = f"http://{base}/projects/{project}/attachments/{uuid.uuid4().hex}/content"
            sha = hashlib.sha256(blob).hexdigest()
            step = part or len(blob)
            for offset in range(0, len(blob), step):
                answer = await http.patch(
                    url, content=blob[offset : offset + step],
                    headers={"Authorization": f"Bearer {token}", "Upload-Offset": str(offset),
                             "Upload-Length": str(len(blob)), "Upload-Sha256": sha},
                )  # fmt: skip
                if answer.status_code not in (201, 202):
                    raise RuntimeError(answer.text)
    return time.perf_counter() - start


async def wait_processed(url: str, project: uuid.UUID, count: int) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        while True:
            rows = await conn.fetch(
                "SELECT status, created_at, ready_at FROM attachments WHERE project_id = $1"
                " AND status IN ('ready', 'failed')",
                project,
            )
            if len(rows) >= count:
                return list(rows)
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--part-bytes", type=int, default=0, help="0: one request per photo")
    parser.add_argument(
        "--worker-after", action="store_true",
        help="start the worker once the uploads are done (upload alone, processing alone)",
    )  # fmt: skip
    args = parser.parse_args()
    data = photos(args.photos)
    total = sum(len(d) for d in data)
    with database() as url, server_process(url) as server:
        team = asyncio.run(make_project(url, 1))
        # The server keeps blobs under its own data directory; the worker reads them there.
        data_dir = server._dir / "data"

        def start_worker() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [sys.executable, "-m", "fieldsync.cli", "worker", "--single",
                 "--data-dir", str(data_dir)],
                env={**os.environ, "DATABASE_URL": url},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip

        worker = None if args.worker_after else start_worker()
        try:
            cpu_before = process_cpu_seconds(server.pid)
            seconds = asyncio.run(
                upload_all(server.base, team.members[0].token, team.project_id, data,
                           args.part_bytes)
            )  # fmt: skip
            uploaded_at = time.time()
            server_cpu = process_cpu_seconds(server.pid) - cpu_before
            worker = worker or start_worker()
            rows = asyncio.run(wait_processed(url, team.project_id, len(data)))
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(30)
    ready = [r for r in rows if r["status"] == "ready"]
    latency = [(r["ready_at"] - r["created_at"]).total_seconds() for r in ready]
    first = min(r["created_at"] for r in rows)
    if args.worker_after:
        first = max(first, datetime.fromtimestamp(uploaded_at, UTC))
    last = max(r["ready_at"] for r in ready)
    span = (last - first).total_seconds()
    print(f"photos: {len(data)} of {total / len(data) / 1e6:.2f} MB, {len(ready)} ready")
    print(f"upload: {seconds:.2f} s, {total / seconds / 1e6:.1f} MB/s, "
          f"{len(data) / seconds:.1f} photos/s; server CPU {server_cpu / len(data) * 1e3:.1f} ms"
          " per photo")  # fmt: skip
    p50, p99 = percentile(latency, 0.5), percentile(latency, 0.99)
    print(
        f"processing (1 worker): {len(ready) / span:.2f} photos/s;"
        f" upload to ready p50 {p50:.2f} s, p99 {p99:.2f} s"
    )
    print(f"upload of {len(data)} x 3 MB photos from one client: {total / seconds / 1e6:.1f} MB/s")


if __name__ == "__main__":
    main()
