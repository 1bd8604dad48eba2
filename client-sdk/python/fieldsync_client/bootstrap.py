"""The first snapshot of a project over HTTP (``GET /projects/{id}/snapshot``).

The HTTP snapshot is gzipped and streamed by the server from one transaction, so a large
project arrives faster than over the WebSocket. It is stored as it arrives, a part at a
time (:meth:`ProjectReplica.store_snapshot_part`), and the cursor is set only once every
entity is stored: memory stays bounded by one part, and a process killed halfway leaves a
store that opens and simply bootstraps again. Any failure here (an old server without the
endpoint, a proxy, a refused token) is a :class:`SnapshotUnavailable`: the sync loop then
asks for the snapshot over the WebSocket, which reports errors the usual way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from urllib.parse import quote, urlsplit, urlunsplit

from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.sync.messages import Conflicts, SnapshotEntity
from fieldsync_client.http_get import HttpError, http_get
from fieldsync_client.replica import ProjectReplica, RemoteOutcome
from fieldsync_client.snapshot_stream import SnapshotFormatError, SnapshotStream

__all__ = ["PART_BYTES", "PART_ENTITIES", "SnapshotUnavailable", "http_bootstrap", "snapshot_url"]

log = logging.getLogger("fieldsync_client")

PART_ENTITIES = 500  # entities stored per SQLite transaction
PART_BYTES = 4 * 1024 * 1024  # ... or fewer, once their documents add up to this


class SnapshotUnavailable(Exception):  # noqa: N818 (a condition, named as such)
    """The HTTP snapshot could not be had; use the WebSocket snapshot instead."""


def snapshot_url(sync_endpoint: str, project_id: str) -> str:
    """The snapshot URL next to a WebSocket endpoint: ``wss://h/x/sync`` gives
    ``https://h/x/projects/{id}/snapshot``."""
    parts = urlsplit(sync_endpoint)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    base = parts.path.removesuffix("/").removesuffix("/sync")
    path = f"{base}/projects/{quote(project_id, safe='')}/snapshot"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


async def _pieces(body: AsyncIterator[bytes], idle_timeout: float) -> AsyncIterator[bytes]:
    """The body, failing when no byte arrives for ``idle_timeout`` seconds."""
    while True:
        try:
            async with asyncio.timeout(idle_timeout):
                piece = await anext(body)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise HttpError(f"no data for {idle_timeout} s") from None
        yield piece


async def http_bootstrap(
    sync_endpoint: str,
    token: str,
    replica: ProjectReplica,
    *,
    read_timeout: float,
    limits: Limits = DEFAULT_LIMITS,
) -> RemoteOutcome:
    """Download the project's snapshot and store it; the replica's cursor is then set.

    Raises :class:`SnapshotUnavailable` when the snapshot cannot be had or read, and
    ``RemoteDataError`` when a document in it cannot be loaded.
    """
    project_id = replica.project_id
    url = snapshot_url(sync_endpoint, project_id)
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept-Encoding": "gzip",
        "User-Agent": "fieldsync-client (Python)",
    }
    total = RemoteOutcome()
    try:
        async with http_get(url, headers, read_timeout=read_timeout) as response:
            if response.status != 200:
                raise SnapshotUnavailable(f"GET {url} answered {response.status}")
            encoding = response.headers.get("content-encoding", "identity").lower()
            if encoding not in ("gzip", "identity"):
                raise SnapshotUnavailable(f"unsupported Content-Encoding {encoding!r}")
            stream = SnapshotStream(project_id, gzipped=encoding == "gzip", limits=limits)
            part: list[SnapshotEntity] = []
            size = 0
            stored = 0
            async for piece in _pieces(response.body, read_timeout):
                for record in stream.feed(piece):
                    if isinstance(record, Conflicts):
                        total.conflicts.extend(record.conflicts)
                    if not isinstance(record, SnapshotEntity):
                        continue
                    part.append(record)
                    size += len(record.document)
                    if len(part) >= PART_ENTITIES or size >= PART_BYTES:
                        _add(total, replica.store_snapshot_part(part))
                        stored += len(part)
                        part, size = [], 0
                        log.debug(
                            "project %s: %d of %d snapshot entities stored",
                            project_id,
                            stored,
                            stream.begin.entity_count if stream.begin else 0,
                        )
            end = stream.finish()
            if part:
                _add(total, replica.store_snapshot_part(part))
    except (HttpError, SnapshotFormatError, OSError) as exc:
        raise SnapshotUnavailable(f"GET {url}: {exc}") from exc
    total.conflicts_removed = replica.finish_snapshot(end.cursor, total.conflicts)
    log.debug("project %s: bootstrapped over HTTP at cursor %d", project_id, end.cursor)
    return total


def _add(total: RemoteOutcome, part: RemoteOutcome) -> None:
    total.changed |= part.changed
    total.rejected.extend(part.rejected)
