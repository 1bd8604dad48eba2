"""``fieldsync worker`` processes on a real queue: a worker SIGKILLed mid-job, and the job
is finished by another."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from fieldsync.media.blobs import S3Blobs
from tests.live_server import MemberFactory
from tests.media.images import photo
from tests.media.service import attachment_server, attachment_url, send_part


def start_worker(
    database_url: str, blobs: S3Blobs, endpoint: str, data_dir: Path
) -> subprocess.Popen[bytes]:
    environ = {
        **os.environ,
        "DATABASE_URL": database_url,
        "FIELDSYNC_S3_BUCKET": blobs.bucket,
        "FIELDSYNC_S3_ENDPOINT": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "fieldsync.cli", "worker", "--single", "--data-dir", str(data_dir),
         "--heartbeat-seconds", "2", "--retry-seconds", "0.2"],
        env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


async def statuses(pool: asyncpg.Pool, ids: list[str]) -> dict[str, tuple[str, int]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT attachment_id, status, attempts FROM attachments"
            " WHERE attachment_id = ANY($1::text[])",
            ids,
        )
    return {r["attachment_id"]: (r["status"], r["attempts"]) for r in rows}


@pytest.mark.slow
async def test_a_job_whose_worker_is_killed_completes_on_another(
    database_url: str, s3_blobs: S3Blobs, s3_endpoint: str, project: uuid.UUID,
    member: MemberFactory, pool: asyncpg.Pool, tmp_path: Path,
) -> None:  # fmt: skip
    _, token = await member(project)
    ids = [uuid.uuid4().hex for _ in range(6)]
    async with attachment_server(database_url, s3_blobs) as base, httpx.AsyncClient() as http:
        for n, aid in enumerate(ids):
            data = photo(900, 700, seed=n + 20)
            url = attachment_url(base, project, aid)
            assert (await send_part(http, url, token, data, 0, len(data))).status_code == 201
    first = start_worker(database_url, s3_blobs, s3_endpoint, tmp_path)
    victim = None
    try:
        for _ in range(600):
            found = await statuses(pool, ids)
            busy = [a for a, (status, _) in found.items() if status == "processing"]
            if busy:
                victim = busy[0]
                break
            await asyncio.sleep(0.02)
        assert victim is not None, "the first worker never started a job"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert (await statuses(pool, [victim]))[victim][0] == "processing"
        second = start_worker(database_url, s3_blobs, s3_endpoint, tmp_path)
        try:
            for _ in range(1200):
                found = await statuses(pool, ids)
                if all(status == "ready" for status, _ in found.values()):
                    break
                await asyncio.sleep(0.05)
            assert {a: s for a, (s, _) in found.items()} == dict.fromkeys(ids, "ready")
            assert found[victim][1] >= 2  # started by the killed worker, finished by the other
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
