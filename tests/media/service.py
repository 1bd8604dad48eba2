"""An attachment service for tests: the server (uvicorn, PostgreSQL, S3 blobs) and an
in-process queue consumer (real pgqueuer), plus a small HTTP upload helper."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from fieldsync.media.blobs import BlobStore
from fieldsync.media.limits import DEFAULT_ATTACHMENT_LIMITS, AttachmentLimits
from fieldsync.media.worker import Processor
from fieldsync.store.jobs import run_processing_queue
from fieldsync.store.postgres import PostgresStorage
from tests.live_server import running_server

TEST_LIMITS = dataclasses.replace(
    DEFAULT_ATTACHMENT_LIMITS, max_file_bytes=8 * 1024 * 1024, max_chunk_bytes=1024 * 1024
)


@asynccontextmanager
async def attachment_server(
    database_url: str, blobs: BlobStore, limits: AttachmentLimits = TEST_LIMITS
) -> AsyncIterator[str]:
    async with running_server(database_url, blobs=blobs, attachment_limits=limits) as base:
        yield f"http://{base}"


@asynccontextmanager
async def queue_consumer(
    database_url: str, blobs: BlobStore, limits: AttachmentLimits = TEST_LIMITS
) -> AsyncIterator[None]:
    """Processes attachments in this event loop until the block ends."""
    storage = await PostgresStorage.open(database_url, max_size=3)
    processor = Processor(
        storage.attachments, storage.change_log(), storage.notifications, blobs, limits
    )
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_processing_queue(
            database_url, processor.process, stop=stop, max_tries=limits.max_tries,
            heartbeat_seconds=5, retry_delay_seconds=0.1,
        )
    )  # fmt: skip
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
        await storage.close()


def attachment_url(base: str, project: object, attachment_id: str, tail: str = "") -> str:
    return f"{base}/projects/{project}/attachments/{attachment_id}{tail}"


async def send_part(
    http: httpx.AsyncClient,
    url: str,
    token: str,
    data: bytes,
    offset: int,
    end: int,
    **headers: str,
) -> httpx.Response:
    """PATCH ``data[offset:end]`` as one part of the whole ``data``."""
    return await http.patch(
        url + "/content",
        content=data[offset:end],
        headers={
            "Authorization": f"Bearer {token}",
            "Upload-Offset": str(offset),
            "Upload-Length": str(len(data)),
            "Upload-Sha256": hashlib.sha256(data).hexdigest(),
            **headers,
        },
    )


async def wait_status(
    http: httpx.AsyncClient, url: str, token: str, wanted: set[str], within: float = 30
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        answer = await http.get(url, headers={"Authorization": f"Bearer {token}"})
        body: dict[str, Any] = answer.json()
        if body.get("status") in wanted:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"status stayed {body}")
        await asyncio.sleep(0.05)
