"""Processing one attachment: what a job of the queue does (``fieldsync worker``).

``uploaded → processing → ready | failed``: each step is recorded in PostgreSQL and published
as a server-authored change of the attachment entity, through the change log (so cursors,
the live fan-out and snapshots carry it), followed by a head notification for the server
processes. Tries are bounded twice over: pgqueuer retries a failed try with backoff, and
``attachments.attempts`` counts every start, so a file that keeps killing its worker (or a
decoder that keeps hanging) ends ``failed`` after ``max_tries`` starts.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from fieldsync.media import entity
from fieldsync.media.blobs import BlobStore, original_key, variant_key
from fieldsync.media.detect import IMAGE_TYPES
from fieldsync.media.limits import AttachmentLimits
from fieldsync.media.processing import DecodeCrashedError, UndecodableError, decode
from fieldsync.store.attachment_records import AttachmentRow, Variant
from fieldsync.store.ports import AttachmentPort, ChangeLogPort, NotificationPort
from fieldsync.store.records import Accepted

log = logging.getLogger(__name__)

SENDER = "server"


@dataclass(frozen=True, slots=True)
class Processor:
    attachments: AttachmentPort
    changelog: ChangeLogPort
    notifications: NotificationPort
    blobs: BlobStore
    limits: AttachmentLimits

    async def process(self, attachment_id: str) -> None:
        """One try; raises DecodeCrashedError (or a storage error) for the queue to retry."""
        row = await self.attachments.start_processing(attachment_id)
        if row is None or row.status not in ("processing",):
            return  # gone, deleted, or already final: nothing left to do
        if row.attempts > self.limits.max_tries:
            await self._fail(row, f"processing did not finish in {self.limits.max_tries} tries")
            return
        await self.publish(row, {"status": "processing"})
        data = await self.blobs.read(original_key(row.sha256))
        if hashlib.sha256(data).hexdigest() != row.sha256:
            await self._fail(row, "the stored bytes do not match their hash")
            return
        if row.content_type not in IMAGE_TYPES:
            shared = Variant(original_key(row.sha256), row.size, row.content_type, row.sha256)
            await self._ready(row, {"shared": shared}, None, None)
            return
        settings = await self.attachments.project_settings_document(row.project_id)
        keep = settings is not None and (
            entity.values_of("project_settings", settings).get("share_photo_location") is True
        )
        try:
            decoded = await decode(data, keep, self.limits)
        except UndecodableError as exc:
            await self._fail(row, str(exc))
            return
        except DecodeCrashedError as exc:
            if row.attempts >= self.limits.max_tries:
                await self._fail(row, f"{exc} (after {row.attempts} tries)")
                return
            raise
        variants: dict[str, Variant] = {}
        for name, blob in decoded.outputs.items():
            digest = hashlib.sha256(blob).hexdigest()
            if name == "shared" and digest == row.sha256:
                variants[name] = Variant(
                    original_key(row.sha256), len(blob), row.content_type, digest
                )
                continue
            key = variant_key(row.attachment_id, name)
            await self.blobs.put(key, blob)
            kind = row.content_type if name == "shared" else "image/jpeg"
            variants[name] = Variant(key, len(blob), kind, digest)
        await self._ready(row, variants, decoded.width, decoded.height)

    async def _ready(
        self,
        row: AttachmentRow,
        variants: Mapping[str, Variant],
        width: int | None,
        height: int | None,
    ) -> None:
        await self.attachments.finish_processing(
            row.attachment_id, "ready", variants=variants, width=width, height=height
        )
        values: dict[str, object] = {"status": "ready", "variants": sorted(variants)}
        if width is not None:
            values |= {"width": width, "height": height}
        await self.publish(row, values)
        log.info("attachment %s ready", row.attachment_id, extra={"event": "attachment_ready"})

    async def _fail(self, row: AttachmentRow, reason: str) -> None:
        await self.attachments.finish_processing(row.attachment_id, "failed", failure=reason)
        await self.publish(row, {"status": "failed", "failure": reason[:500]})
        log.warning(
            "attachment %s failed: %s", row.attachment_id, reason,
            extra={"event": "attachment_failed"},
        )  # fmt: skip

    async def publish(self, row: AttachmentRow, values: Mapping[str, object]) -> None:
        await publish(self.attachments, self.changelog, self.notifications, row, values)


async def publish(
    attachments: AttachmentPort,
    changelog: ChangeLogPort,
    notifications: NotificationPort,
    row: AttachmentRow,
    values: Mapping[str, object],
) -> None:
    """Set ``values`` on the attachment entity (creating it first if the upload's own
    append never happened), then tell the server processes."""
    document = await attachments.entity_document(row.project_id, row.attachment_id)
    batch = []
    if document is None:
        created = {
            "sha256": row.sha256, "size": row.size, "content_type": row.content_type,
            "file_name": row.file_name,
            "uploaded_by": str(row.uploaded_by) if row.uploaded_by else None,
            "status": "uploaded",
        }  # fmt: skip
        creation = entity.creation(row.attachment_id, created)
        [result] = await changelog.append(row.project_id, [creation], SENDER)
        if not isinstance(result, Accepted):
            raise RuntimeError(f"attachment entity refused: {result}")
        document = await attachments.entity_document(row.project_id, row.attachment_id)
        assert document is not None
    update = entity.update(row.attachment_id, document, values)
    if update is not None:
        batch.append(update)
    if not batch:
        return
    [result] = await changelog.append(row.project_id, batch, SENDER)
    if not isinstance(result, Accepted):
        raise RuntimeError(f"attachment status refused: {result}")
    await notifications.notify_head(row.project_id, max(result.seqs))
