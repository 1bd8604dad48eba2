"""Removing what nobody needs any more: attachments no entity references after a grace
period, and uploads abandoned before they finished.

References come from the read models (the ``attachments`` column of ``rm_activities`` and
``rm_locations``, written in the transaction of every append), so a pass loads no
documents. An attachment first seen unreferenced is only noted; once it has stayed so for
``grace_seconds`` (an offline client may still hold an edit that references it, or a
delete may be undone), it is marked deleted (a server-authored change), its processed
files are removed, and its original blob too when no other attachment has the same bytes.
A project whose read-model rows predate the column (migration 0007) is left alone until
``fieldsync rebuild-read-models`` has filled it in: unknown references are never taken for
no references.

An upload no part has reached for ``upload_expiry_seconds`` is abandoned: its parts are
removed, then its record, unless a part arrived meanwhile.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from uuid import UUID

from fieldsync.media.blobs import BlobStore, original_key
from fieldsync.media.worker import publish
from fieldsync.store.attachment_records import AttachmentRow
from fieldsync.store.ports import AttachmentPort, ChangeLogPort, Storage

log = logging.getLogger(__name__)


async def collect(
    storage: Storage, changelog: ChangeLogPort, blobs: BlobStore, grace_seconds: float
) -> list[str]:
    """One pass over attachments; the ids of the attachments removed."""
    port = storage.attachments
    assert port is not None, "attachments need a storage that keeps them"
    by_project: dict[UUID, list[AttachmentRow]] = defaultdict(list)
    for row in await port.collectable(grace_seconds):
        by_project[row.project_id].append(row)
    removed: list[str] = []
    for project_id, rows in by_project.items():
        referenced = await port.referenced(project_id, [r.attachment_id for r in rows])
        if referenced is None:
            log.warning(
                "project %s: its read models predate attachment references; run "
                "`fieldsync rebuild-read-models` to let its attachments be collected",
                project_id,
            )
            continue
        unused = [r.attachment_id for r in rows if r.attachment_id not in referenced]
        used = [r.attachment_id for r in rows if r.attachment_id in referenced]
        expired = set(await port.mark_unreferenced(unused, used, grace_seconds))
        for row in rows:
            if row.attachment_id not in expired:
                continue
            orphan = await port.mark_deleted(row.attachment_id)
            keys = [v.key for v in row.variants.values() if v.key != original_key(row.sha256)]
            if orphan:
                keys.append(original_key(row.sha256))
            await blobs.delete(keys)
            await publish(port, changelog, storage.notifications, row, {"deleted": True})
            removed.append(row.attachment_id)
            log.info("attachment %s collected", row.attachment_id)
    return removed


async def expire_uploads(port: AttachmentPort, blobs: BlobStore, idle_seconds: float) -> list[str]:
    """Remove uploads no part has reached for ``idle_seconds``; the ids removed.

    The parts go first and the record only if no part came since: a blob failure leaves
    the record for the next pass, and a client that comes back in the middle is told to
    start again (its earlier parts are gone, so the whole no longer hashes)."""
    expired = []
    for upload in await port.idle_uploads(idle_seconds):
        await blobs.delete_parts(upload.attachment_id)
        if await port.forget_idle_upload(upload):
            expired.append(upload.attachment_id)
            log.info("abandoned upload %s removed", upload.attachment_id)
    return expired
