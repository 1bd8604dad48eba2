"""``fieldsync worker``: processing processes, each a pgqueuer consumer of its own.

The parent starts ``--processes`` children (each ``fieldsync worker --single``) and starts
again any that dies; a child's job left half-done is picked up again by a live one once
its heartbeat is stale. Each child also runs the collection pass now and then (abandoned
uploads, then unreferenced attachments; the passes are idempotent, so several children
running them at once only repeat work).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
from pathlib import Path

from fieldsync.media.blobs import BlobStore
from fieldsync.media.gc import collect, expire_uploads
from fieldsync.media.limits import AttachmentLimits
from fieldsync.media.worker import Processor
from fieldsync.store.jobs import run_processing_queue
from fieldsync.store.postgres import PostgresStorage

log = logging.getLogger("fieldsync.worker")

RESTART_DELAY = 1.0


async def run_single(
    url: str,
    blobs: BlobStore,
    limits: AttachmentLimits,
    *,
    heartbeat_seconds: float,
    retry_delay_seconds: float,
    gc_interval_seconds: float,
    grace_seconds: float,
    upload_expiry_seconds: float,
) -> int:
    """One worker process: consume the queue until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    storage = await PostgresStorage.open(url, min_size=1, max_size=4)
    try:
        await storage.maintenance.check_schema()
        attachments = storage.attachments
        changelog = storage.change_log()
        processor = Processor(attachments, changelog, storage.notifications, blobs, limits)

        async def collect_now_and_then() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), gc_interval_seconds)
                if stop.is_set():
                    return
                try:
                    await expire_uploads(attachments, blobs, upload_expiry_seconds)
                except Exception:
                    log.exception("expiring abandoned uploads failed; trying again later")
                try:
                    await collect(storage, changelog, blobs, grace_seconds)
                except Exception:
                    log.exception("attachment collection failed; trying again later")

        collector = asyncio.create_task(collect_now_and_then())
        log.info("worker ready", extra={"event": "worker_ready"})
        try:
            await run_processing_queue(
                url, processor.process, stop=stop, max_tries=limits.max_tries,
                heartbeat_seconds=heartbeat_seconds, retry_delay_seconds=retry_delay_seconds,
            )  # fmt: skip
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
    finally:
        await storage.close()
        await blobs.close()
    return 0


def child_command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "fieldsync.cli", "worker", "--single", *argv]


async def run_many(count: int, argv: list[str], environ: dict[str, str], data_dir: Path) -> int:
    """``count`` worker processes, started again when one dies, until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(child_command(argv), env=environ, start_new_session=True)

    children = [start() for _ in range(count)]
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            for index, child in enumerate(children):
                if child.poll() is not None and not stop.is_set():
                    log.error("worker %d exited with %s; starting it again", child.pid,
                              child.returncode)  # fmt: skip
                    await asyncio.sleep(RESTART_DELAY)
                    children[index] = start()
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                await asyncio.to_thread(child.wait, 30)
            except subprocess.TimeoutExpired:
                child.kill()
    return 0
