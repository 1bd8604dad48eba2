"""``GET /projects/{id}/snapshot``: a project's documents at one cursor, streamed and gzipped.

The body is a sequence of msgpack maps (begin, one per entity, the project's conflict records
as ``conflicts`` protocol messages, end) read from one consistent view of storage (on
PostgreSQL one repeatable-read transaction read through a server-side cursor) and
compressed as it goes, so memory stays bounded however large the project is. The ETag names
the project and cursor: a client that already holds this cursor gets 304 and no body. If
storage fails once the body has begun, the response is abandoned: the connection is closed
before the body's end, so no client or cache can take the truncated snapshot for a whole
one.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import AsyncIterator
from uuid import UUID

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Message, Send

from fieldsync.live.feed import wire_conflicts
from fieldsync.live.http_auth import bearer_claims, not_found, unavailable
from fieldsync.live.origins import cors_headers
from fieldsync.observability.metrics import Metrics
from fieldsync.store.errors import StoreError, UnknownProject
from fieldsync.store.ports import Storage
from fieldsync.sync.messages import SnapshotEntity
from fieldsync.sync.server_protocol import SnapshotWriter

MEDIA_TYPE = "application/x-fieldsync-snapshot+msgpack"
FLUSH_BYTES = 256 * 1024

log = logging.getLogger(__name__)


class _AbandonableResponse(StreamingResponse):
    """A streamed response that can be abandoned midway: its closing message is then never
    sent, and the server closes the connection with the body unfinished."""

    abandoned = False

    async def stream_response(self, send: Send) -> None:
        async def send_unless_abandoned(message: Message) -> None:
            closing = message["type"] == "http.response.body" and not message.get("more_body")
            if not (closing and self.abandoned):
                await send(message)

        await super().stream_response(send_unless_abandoned)


def snapshot_etag(project_id: UUID, cursor: int) -> str:
    return f'"{project_id}:{cursor}"'


def none_match(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag``: the header's weak comparison (RFC 9110
    13.1.2) over a comma-separated list, ``W/`` ignored, ``*`` matching any snapshot. A
    proxy that compresses, nginx among them, turns a strong ETag into a weak one."""
    if if_none_match is None:
        return False
    wanted = etag.removeprefix("W/")
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == wanted:
            return True
    return False


async def snapshot_endpoint(request: Request) -> Response:
    """The snapshot; a page from an allowed Origin may read every answer (CORS)."""
    response = await _snapshot(request)
    response.headers.update(cors_headers(request.app.state.origins, request.headers.get("origin")))
    return response


async def _snapshot(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    storage: Storage = request.app.state.storage
    claims = await bearer_claims(request)
    if isinstance(claims, JSONResponse):
        return claims
    try:
        project_id = UUID(request.path_params["project_id"])
    except ValueError:
        return not_found()
    context = storage.snapshots.open(project_id)
    try:
        if await storage.membership.level(project_id, claims.user_id) is None:
            return not_found()
        snapshot = await context.__aenter__()
    except UnknownProject:
        return not_found()
    except StoreError as exc:
        log.warning("snapshot of project %s failed: %s", project_id, exc)
        return unavailable()
    etag = snapshot_etag(project_id, snapshot.cursor)
    gzip = "gzip" in request.headers.get("accept-encoding", "")
    headers = {"ETag": etag, "Cache-Control": "private, no-cache", "Vary": "Accept-Encoding"}
    if none_match(request.headers.get("if-none-match"), etag):
        await context.__aexit__(None, None, None)
        return Response(status_code=304, headers=headers)
    if gzip:
        headers["Content-Encoding"] = "gzip"
    released = False

    async def release() -> None:
        """End the snapshot transaction once, whether or not the body was ever streamed."""
        nonlocal released
        if not released:
            released = True
            try:
                await context.__aexit__(None, None, None)
            except StoreError as exc:  # a read-only transaction: nothing is lost with it
                log.warning("ending the snapshot of project %s failed: %s", project_id, exc)

    async def body() -> AsyncIterator[bytes]:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31) if gzip else None
        buffer: list[bytes] = []
        size = 0

        def emit(data: bytes) -> bytes:
            return compressor.compress(data) if compressor else data

        try:
            writer = SnapshotWriter(str(project_id), snapshot.cursor, await snapshot.count())
            buffer.append(writer.begin())
            async for entity in snapshot.entities():
                record = writer.entity(
                    SnapshotEntity(entity.entity_type, entity.entity_id, entity.document)
                )
                buffer.append(record)
                size += len(record)
                if size >= FLUSH_BYTES:
                    yield emit(b"".join(buffer))
                    buffer, size = [], 0
            buffer.extend(writer.conflicts(wire_conflicts(await snapshot.conflicts())))
            buffer.append(writer.end())
            tail = emit(b"".join(buffer))
            yield tail + compressor.flush() if compressor else tail
            metrics.snapshot_served("http", project_id, snapshot.document_bytes, snapshot.started)
        except StoreError as exc:
            # The status line is out: all that is left to say so is to leave the body open.
            log.warning("snapshot of project %s abandoned: %s", project_id, exc)
            response.abandoned = True
        finally:
            await release()

    response = _AbandonableResponse(
        body(), media_type=MEDIA_TYPE, headers=headers, background=BackgroundTask(release)
    )
    return response
