"""Removing attachments no entity references any more, after a grace period.

References are read from the entities themselves (the ``attachments`` lists of activities
and locations that are not deleted), in one consistent snapshot per project. An attachment
first seen unreferenced is only noted; once it has stayed so for ``grace_seconds`` (an
offline client may still hold an edit that references it, or a delete may be undone), it
is marked deleted (a server-authored change), its processed files are removed, and its
original blob too when no other attachment has the same bytes.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from fieldsync.media import entity
from fieldsync.media.blobs import BlobStore, original_key
from fieldsync.media.worker import publish
from fieldsync.store.attachment_records import AttachmentRow
from fieldsync.store.ports import ChangeLogPort, Storage

log = logging.getLogger(__name__)

REFERENCING_TYPES = ("activity", "location")


async def referenced_attachments(storage: Storage, project_id: object) -> set[str]:
    """The attachment ids the project's non-deleted activities and locations name."""
    found: set[str] = set()
    async with storage.snapshots.open(project_id) as snapshot:  # type: ignore[arg-type]
        async for item in snapshot.entities():
            if item.entity_type not in REFERENCING_TYPES:
                continue
            values = entity.values_of(item.entity_type, item.document)
            ids = values.get("attachments")
            if values.get("deleted") is not True and isinstance(ids, list):
                found.update(i for i in ids if isinstance(i, str))
    return found


async def collect(
    storage: Storage, changelog: ChangeLogPort, blobs: BlobStore, grace_seconds: float
) -> list[str]:
    """One pass; the ids of the attachments removed."""
    port = storage.attachments
    assert port is not None, "attachments need a storage that keeps them"
    by_project: dict[object, list[AttachmentRow]] = defaultdict(list)
    for row in await port.collectable(grace_seconds):
        by_project[row.project_id].append(row)
    removed: list[str] = []
    for project_id, rows in by_project.items():
        referenced = await referenced_attachments(storage, project_id)
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
