"""The processing queue: pgqueuer on PostgreSQL (its schema is in migration 0006).

Jobs are enqueued in the transaction that records the finished upload, so a job exists
exactly when its upload committed. Workers (``fieldsync worker``) dequeue with pgqueuer:
a picked job carries a heartbeat, and a job whose worker died (SIGKILL, power loss) is
picked again by another worker once its heartbeat is older than ``heartbeat_seconds``. A
failed try is retried with exponential backoff by pgqueuer's retry executor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import asyncpg
from pgqueuer.adapters.drivers.asyncpg import AsyncpgDriver
from pgqueuer.core.executors import DatabaseRetryEntrypointExecutor, EntrypointExecutorParameters
from pgqueuer.core.qm import QueueManager
from pgqueuer.models import Job
from pgqueuer.queries import Queries

from fieldsync.store.driver import translated

PROCESS_ATTACHMENT = "process_attachment"


@translated("queueing processing")
async def enqueue_processing(conn: asyncpg.Connection, attachment_id: str) -> None:
    """Queue the processing of one attachment on ``conn`` (inside the caller's
    transaction); a job already queued or running for it is left alone."""
    await Queries(AsyncpgDriver(conn)).enqueue(
        PROCESS_ATTACHMENT,
        attachment_id.encode(),
        dedupe_key=f"attachment:{attachment_id}",
        on_conflict="skip",
    )


@translated("processing the queue")
async def run_processing_queue(
    url: str,
    handle: Callable[[str], Awaitable[None]],
    *,
    stop: asyncio.Event,
    max_tries: int,
    concurrency: int = 1,
    heartbeat_seconds: float = 30.0,
    retry_delay_seconds: float = 1.0,
) -> None:
    """Process attachments until ``stop`` is set: ``handle(attachment_id)`` for each job;
    an exception from it is retried with backoff, at most ``max_tries`` tries in all."""
    conn = await asyncpg.connect(url)
    try:
        manager = QueueManager(Queries(AsyncpgDriver(conn)))

        def executor(parameters: EntrypointExecutorParameters) -> DatabaseRetryEntrypointExecutor:
            return DatabaseRetryEntrypointExecutor(
                parameters=parameters,
                max_attempts=max_tries,
                initial_delay=timedelta(seconds=retry_delay_seconds),
                max_delay=timedelta(minutes=5),
            )

        @manager.entrypoint(PROCESS_ATTACHMENT, executor_factory=executor, concurrency_limit=0)
        async def process(job: Job) -> None:
            assert job.payload is not None
            await handle(job.payload.decode())

        async def stop_when_told() -> None:
            await stop.wait()
            manager.shutdown.set()

        watcher = asyncio.create_task(stop_when_told())
        try:
            await manager.run(
                batch_size=concurrency,
                # pgqueuer's floor is twice the batch: a worker runs at most 2 x concurrency
                # jobs at once (each decode is a process of its own anyway).
                max_concurrent_tasks=2 * concurrency,
                heartbeat_timeout=timedelta(seconds=heartbeat_seconds),
                dequeue_timeout=timedelta(seconds=5),
            )
        finally:
            watcher.cancel()
    finally:
        await conn.close()
