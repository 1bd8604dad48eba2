"""Attachment metadata on PostgreSQL (``store.ports.AttachmentPort``).

An upload's progress is a row of ``attachment_uploads`` whose ``received`` only moves
forward by the length of a part stored at exactly that offset (a conditional UPDATE), so
two connections racing to store the same part cannot both count it. Finishing an upload
moves the row to ``attachments`` and queues its processing job in one transaction.
Counting against the per-project limit happens under a transaction-scoped advisory lock
on the project, so concurrent first parts cannot both slip under it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from uuid import UUID

from fieldsync.media.limits import AttachmentLimits
from fieldsync.store.attachment_records import (
    AttachmentRefusedError,
    AttachmentRow,
    OffsetMismatchError,
    Reservation,
    UploadRow,
    Variant,
)
from fieldsync.store.database import DatabasePool
from fieldsync.store.driver import translated
from fieldsync.store.jobs import enqueue_processing

_ATTACHMENT_COLUMNS = """attachment_id, project_id, sha256, size, content_type, file_name,
uploaded_by, status, failure, attempts, variants, width, height, created_at"""


# References from the read models (migration 0007): the candidates some live activity or
# location lists, and whether any live row was written before the column existed.
_REFERENCED = """
WITH lists AS (
    SELECT attachments FROM rm_activities WHERE project_id = $1 AND NOT deleted
    UNION ALL
    SELECT attachments FROM rm_locations WHERE project_id = $1 AND NOT deleted
)
SELECT EXISTS (SELECT 1 FROM lists WHERE attachments IS NULL) AS unknown,
       ARRAY(SELECT DISTINCT a FROM lists, unnest(lists.attachments) AS a
             WHERE a = ANY($2::text[])) AS referenced
"""


_ACCESS = f"""
SELECT m.level, {", ".join("a." + c.strip() for c in _ATTACHMENT_COLUMNS.split(","))}
FROM (SELECT 1) AS one
LEFT JOIN project_members m ON m.project_id = $1 AND m.user_id = $2
LEFT JOIN attachments a ON a.attachment_id = $3
"""


def _attachment(r: Any) -> AttachmentRow:
    variants = json.loads(r["variants"]) if isinstance(r["variants"], str) else r["variants"]
    return AttachmentRow(
        r["attachment_id"], r["project_id"], r["sha256"], r["size"], r["content_type"],
        r["file_name"], r["uploaded_by"], r["status"], r["failure"], r["attempts"],
        {name: Variant(**v) for name, v in (variants or {}).items()},
        r["width"], r["height"], r["created_at"],
    )  # fmt: skip


_REFUSALS: dict[str, Callable[[AttachmentLimits, str], AttachmentRefusedError]] = {
    "attachment_id_taken": lambda _, aid: AttachmentRefusedError(
        "attachment_id_taken", f"{aid} is already the id of another entity or upload"
    ),
    "too_many_attachments": lambda limits, _: AttachmentRefusedError(
        "too_many_attachments",
        f"the project holds {limits.max_per_project} attachments, its limit",
    ),
    "too_many_uploads": lambda limits, _: AttachmentRefusedError(
        "too_many_uploads",
        f"you have {limits.max_uploads_per_user} unfinished uploads in this project: "
        "finish or abandon one first",
        429,
    ),
}


def _upload(r: Any) -> UploadRow:
    return UploadRow(
        r["attachment_id"], r["project_id"], r["sha256"], r["size"], r["content_type"],
        r["file_name"], r["uploaded_by"], r["received"], tuple(r["parts"]),
        r.get("updated_at"),
    )  # fmt: skip


class PostgresAttachments:
    def __init__(self, pool: DatabasePool) -> None:
        self._pool = pool

    @translated("reading membership and an attachment")
    async def access(
        self, project_id: UUID, user_id: UUID, attachment_id: str
    ) -> tuple[str | None, AttachmentRow | None]:
        """The user's level in the project (as ``projects.member_level`` reads it) and the
        attachment of that id, whichever project it is in: one round trip per request."""
        async with self._pool.acquire() as conn:
            r = await conn.fetchrow(_ACCESS, project_id, user_id, attachment_id)
        return r["level"], None if r["attachment_id"] is None else _attachment(r)

    @translated("reading an upload")
    async def upload(self, attachment_id: str) -> UploadRow | None:
        async with self._pool.acquire() as conn:
            r = await conn.fetchrow(
                "SELECT * FROM attachment_uploads WHERE attachment_id = $1", attachment_id
            )
        return None if r is None else _upload(r)

    @translated("starting an upload")
    async def begin_upload(self, upload: UploadRow, limits: AttachmentLimits) -> Reservation:
        """One round trip: ``attachment_begin_upload`` (migration 0007) locks the project,
        checks the limits and records the upload in one statement."""
        async with self._pool.acquire() as conn:
            r = await conn.fetchrow(
                "SELECT * FROM attachment_begin_upload($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                upload.attachment_id, upload.project_id, upload.sha256, upload.size,
                upload.content_type, upload.file_name, upload.uploaded_by,
                limits.max_per_project, limits.max_uploads_per_user,
            )  # fmt: skip
        refusal = r["refusal"]
        if refusal is not None:
            raise _REFUSALS[refusal](limits, upload.attachment_id)
        return Reservation(_upload(r), r["same_content"])

    @translated("recording a stored part")
    async def part_stored(self, attachment_id: str, offset: int, length: int) -> UploadRow:
        async with self._pool.acquire() as conn:
            r = await conn.fetchrow(
                "UPDATE attachment_uploads SET received = received + $3,"
                " parts = parts || $2::bigint, updated_at = now()"
                " WHERE attachment_id = $1 AND received = $2 RETURNING *",
                attachment_id,
                offset,
                length,
            )
            if r is None:
                received = await conn.fetchval(
                    "SELECT received FROM attachment_uploads WHERE attachment_id = $1",
                    attachment_id,
                )
                raise OffsetMismatchError(int(received or 0))
        return _upload(r)

    @translated("abandoning an upload")
    async def drop_upload(self, attachment_id: str) -> None:
        async with self._pool.acquire() as conn:
            await conn.execute(
                "DELETE FROM attachment_uploads WHERE attachment_id = $1", attachment_id
            )

    @translated("recording a finished upload")
    async def finish_upload(self, row: AttachmentRow) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                "WITH forgotten AS (DELETE FROM attachment_uploads WHERE attachment_id = $1)"
                " INSERT INTO attachments (attachment_id, project_id, sha256, size,"
                " content_type, file_name, uploaded_by, status)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, 'uploaded')"
                " ON CONFLICT (attachment_id) DO NOTHING RETURNING 1",
                row.attachment_id, row.project_id, row.sha256, row.size, row.content_type,
                row.file_name, row.uploaded_by,
            )  # fmt: skip
            if inserted:
                await enqueue_processing(conn, row.attachment_id)

    @translated("starting processing")
    async def start_processing(self, attachment_id: str) -> AttachmentRow | None:
        async with self._pool.acquire() as conn:
            r = await conn.fetchrow(
                "UPDATE attachments SET attempts = attempts + 1,"
                " status = CASE WHEN status IN ('uploaded', 'processing') THEN 'processing'"
                "          ELSE status END"
                f" WHERE attachment_id = $1 RETURNING {_ATTACHMENT_COLUMNS}",
                attachment_id,
            )
        return None if r is None else _attachment(r)

    @translated("recording processing")
    async def finish_processing(
        self,
        attachment_id: str,
        status: str,
        *,
        failure: str | None = None,
        variants: Mapping[str, Variant] | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> None:
        encoded = json.dumps(
            {
                name: {"key": v.key, "size": v.size, "content_type": v.content_type,
                       "sha256": v.sha256}
                for name, v in (variants or {}).items()
            }
        )  # fmt: skip
        async with self._pool.acquire() as conn:
            await conn.execute(
                "UPDATE attachments SET status = $2, failure = $3, variants = $4::jsonb,"
                " width = $5, height = $6,"
                " ready_at = CASE WHEN $2 = 'ready' THEN now() ELSE ready_at END"
                " WHERE attachment_id = $1 AND status NOT IN ('deleted')",
                attachment_id, status, failure, encoded, width, height,
            )  # fmt: skip

    @translated("reading an entity document")
    async def entity_document(self, project_id: UUID, entity_id: str) -> bytes | None:
        async with self._pool.acquire() as conn:
            data: bytes | None = await conn.fetchval(
                "SELECT saved || tail FROM documents WHERE project_id = $1 AND entity_id = $2",
                project_id,
                entity_id,
            )
        return data

    @translated("reading project settings")
    async def project_settings_document(self, project_id: UUID) -> bytes | None:
        async with self._pool.acquire() as conn:
            data: bytes | None = await conn.fetchval(
                "SELECT saved || tail FROM documents WHERE project_id = $1"
                " AND entity_type = 'project_settings' ORDER BY entity_id LIMIT 1",
                project_id,
            )
        return data

    @translated("listing attachments for collection")
    async def collectable(self, older_than_seconds: float) -> list[AttachmentRow]:
        """Attachments (not deleted) created over ``older_than_seconds`` ago."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {_ATTACHMENT_COLUMNS} FROM attachments WHERE status <> 'deleted'"
                " AND created_at < now() - make_interval(secs => $1) ORDER BY project_id",
                older_than_seconds,
            )
        return [_attachment(r) for r in rows]

    @translated("reading attachment references")
    async def referenced(self, project_id: UUID, attachment_ids: Sequence[str]) -> set[str] | None:
        """Which of ``attachment_ids`` a non-deleted activity or location of the project
        lists, from the read models; None while a row predates its ``attachments`` column
        (migration 0007: ``rebuild-read-models`` fills it in), when nothing is known."""
        async with self._pool.acquire() as conn:
            r = await conn.fetchrow(_REFERENCED, project_id, list(attachment_ids))
        if r["unknown"]:
            return None
        return set(r["referenced"])

    @translated("listing abandoned uploads")
    async def idle_uploads(self, idle_seconds: float) -> list[UploadRow]:
        """Uploads no part has reached for ``idle_seconds``."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM attachment_uploads"
                " WHERE updated_at < now() - make_interval(secs => $1) ORDER BY updated_at",
                idle_seconds,
            )
        return [_upload(r) for r in rows]

    @translated("forgetting an abandoned upload")
    async def forget_idle_upload(self, upload: UploadRow) -> bool:
        """Forget the upload unless a part reached it since it was read."""
        async with self._pool.acquire() as conn:
            gone = await conn.fetchval(
                "DELETE FROM attachment_uploads WHERE attachment_id = $1 AND updated_at = $2"
                " RETURNING 1",
                upload.attachment_id,
                upload.updated_at,
            )
        return bool(gone)

    @translated("marking attachments unreferenced")
    async def mark_unreferenced(
        self, unreferenced: Sequence[str], referenced: Sequence[str], grace_seconds: float
    ) -> list[str]:
        """Note when each of ``unreferenced`` was first seen so, clear the note of
        ``referenced``; the ids unreferenced for longer than the grace period."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE attachments SET unreferenced_since = NULL"
                " WHERE attachment_id = ANY($1::text[])",
                list(referenced),
            )
            await conn.execute(
                "UPDATE attachments SET unreferenced_since = now()"
                " WHERE attachment_id = ANY($1::text[]) AND unreferenced_since IS NULL",
                list(unreferenced),
            )
            rows = await conn.fetch(
                "SELECT attachment_id FROM attachments WHERE attachment_id = ANY($1::text[])"
                " AND unreferenced_since < now() - make_interval(secs => $2)",
                list(unreferenced),
                grace_seconds,
            )
        return [r["attachment_id"] for r in rows]

    @translated("deleting an attachment")
    async def mark_deleted(self, attachment_id: str) -> bool:
        """Mark deleted; whether its original blob is now used by no attachment at all."""
        async with self._pool.acquire() as conn, conn.transaction():
            sha = await conn.fetchval(
                "UPDATE attachments SET status = 'deleted', variants = '{}'"
                " WHERE attachment_id = $1 RETURNING sha256",
                attachment_id,
            )
            if sha is None:
                return False
            others = await conn.fetchval(
                "SELECT 1 FROM attachments WHERE sha256 = $1 AND status <> 'deleted'"
                " UNION ALL SELECT 1 FROM attachment_uploads WHERE sha256 = $1 LIMIT 1",
                sha,
            )
        return not others
