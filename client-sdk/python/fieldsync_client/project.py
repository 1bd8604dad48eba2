"""One opened project: read and edit its entities, watch what the server changes.

Every edit is validated against the entity's schema (the same one the server checks) and
raises :class:`ValidationError` without storing anything if it does not fit. An edit that
returns has been written to disk, with its change in the outbox; sync pushes it when it can.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from fieldsync.model.schema import is_valid_entity_id
from fieldsync.model.writer import (
    insert_list_item,
    overwrite_field,
    remove_list_item,
    replace_text,
    splice_text,
    update_entity,
)
from fieldsync_client.attachments import (
    UploadRefused,
    attachment_url,
    call_server,
    keep_locally,
    local_path,
    raise_for,
)
from fieldsync_client.conflicts import Conflict, ConflictUpdate
from fieldsync_client.errors import (
    ClientClosed,
    ConflictNotResolvable,
    EntityNotFound,
    ProjectUnavailable,
    ValidationError,
)
from fieldsync_client.listeners import Listeners
from fieldsync_client.local_store import RejectedChange, UploadEntry
from fieldsync_client.replica import ProjectReplica
from fieldsync_client.status import RemoteChanges

if TYPE_CHECKING:
    from fieldsync_client.client import FieldsyncClient

RejectionCallback = Callable[[list[RejectedChange]], object]

__all__ = ["Project"]

Values = dict[str, object]


class Project:
    """Obtained from :meth:`FieldsyncClient.open_project`; valid until the client closes."""

    def __init__(
        self, client: FieldsyncClient, replica: ProjectReplica, synced_at: datetime | None
    ) -> None:
        self._client = client
        self._replica = replica
        self.project_id = replica.project_id
        self.stored_synced_at = synced_at
        self.remote_changes: Listeners[RemoteChanges] = Listeners("remote change")
        self.rejections: Listeners[builtins.list[RejectedChange]] = Listeners("rejection")
        self.conflict_updates: Listeners[ConflictUpdate] = Listeners("conflict")

    def __repr__(self) -> str:
        return f"<Project {self.project_id} cursor={self.cursor}>"

    # --- state ----------------------------------------------------------------------------

    @property
    def cursor(self) -> int | None:
        """The highest server seq the local copy includes; None until the first snapshot."""
        return self._replica.cursor

    @property
    def bootstrapped(self) -> bool:
        return self._replica.cursor is not None

    @property
    def error(self) -> ProjectUnavailable | None:
        """Set while the server refuses to sync this project (not a member, or no such one)."""
        return self._client._project_error(self.project_id)

    def pending_count(self) -> int:
        """Local changes waiting for the server's acknowledgement."""
        self._check()
        return self._client.store.pending_count(self.project_id)

    # --- reading --------------------------------------------------------------------------

    async def list(self, entity_type: str, *, include_deleted: bool = False) -> dict[str, Values]:
        """Every entity of a type: id -> values, ordered by id; deleted ones only if asked."""
        self._check()
        return {
            entity_id: self._replica.values(entity_type, entity_id)
            for entity_id in self._replica.ids(entity_type, include_deleted=include_deleted)
        }

    async def ids(self, entity_type: str, *, include_deleted: bool = False) -> builtins.list[str]:
        self._check()
        return self._replica.ids(entity_type, include_deleted=include_deleted)

    async def get(self, entity_type: str, entity_id: str) -> Values:
        """The entity's values (text as str, timestamps as aware UTC datetimes, lists, maps).

        Raises :class:`EntityNotFound`. A deleted entity is returned with ``deleted: True``.
        """
        self._check()
        return self._replica.values(entity_type, entity_id)

    async def heads(self, entity_id: str) -> builtins.list[bytes]:
        """The entity document's heads, sorted: equal heads mean equal documents."""
        self._check()
        return self._replica.heads(entity_id)

    # --- editing --------------------------------------------------------------------------

    async def create(
        self, entity_type: str, values: Mapping[str, object], *, entity_id: str | None = None
    ) -> str:
        """Create an entity in one change; returns its id (a new UUID unless given).

        ``None`` values are left out. Text fields take a ``str``, timestamps an aware
        ``datetime``, lists a list, maps a dict.
        """
        self._check()
        if entity_id is None:
            entity_id = str(uuid.uuid4())
        elif not is_valid_entity_id(entity_id):
            raise ValidationError(
                f"invalid entity id {entity_id[:70]!r}: use 1-64 of A-Z a-z 0-9 _ -"
            )
        self._replica.create(entity_type, entity_id, values)
        self._edited()
        return entity_id

    async def update(self, entity_type: str, entity_id: str, values: Mapping[str, object]) -> bool:
        """Set top-level fields in one change (``None`` removes an optional field).

        A text field (an activity's ``description``) is not replaced: the SDK writes the
        difference between its current text and the new one as splices, so edits others
        made to other parts of the text merge with this one character by character (as
        Automerge's ``updateText`` does). :meth:`replace_text` replaces it whole. A text
        field that has no text yet gets a new one: if two devices both do that offline, one
        text is hidden and the server reports a ``concurrent_edit`` conflict. Returns False
        when nothing changed (nothing is stored).
        """
        return self._edit(
            entity_type, entity_id, lambda doc: update_entity(doc, entity_type, values)
        )

    async def splice_text(
        self,
        entity_type: str,
        entity_id: str,
        field: str,
        index: int,
        delete: int = 0,
        insert: str = "",
    ) -> bool:
        """Delete ``delete`` characters at ``index`` of a text field, then insert ``insert``.

        Concurrent splices of the same text by others merge character by character.
        """
        return self._edit(
            entity_type, entity_id, lambda doc: splice_text(doc, field, index, delete, insert)
        )

    async def replace_text(self, entity_type: str, entity_id: str, field: str, text: str) -> bool:
        """Replace a text field with a new text object holding ``text``.

        Only for when a whole new value is meant: edits others make to the old text at the
        same time are not merged into it, and if someone else replaces or first sets the
        same field concurrently, one of the two values is hidden and the server reports a
        ``concurrent_edit`` conflict. :meth:`update` merges instead.
        """
        return self._edit(
            entity_type,
            entity_id,
            lambda doc: replace_text(doc, entity_type, field, text),
        )

    async def insert_item(
        self, entity_type: str, entity_id: str, field: str, index: int, value: object
    ) -> bool:
        """Insert one item into a list field (such as an activity's tasks) at ``index``."""
        return self._edit(
            entity_type,
            entity_id,
            lambda doc: insert_list_item(doc, entity_type, field, index, value),
        )

    async def remove_item(self, entity_type: str, entity_id: str, field: str, index: int) -> bool:
        return self._edit(entity_type, entity_id, lambda doc: remove_list_item(doc, field, index))

    async def delete(self, entity_type: str, entity_id: str) -> bool:
        """Soft delete: sets ``deleted: True`` (deletes merge like any other edit)."""
        return self._edit(
            entity_type, entity_id, lambda doc: update_entity(doc, entity_type, {"deleted": True})
        )

    # --- attachments ------------------------------------------------------------------------

    async def attach(
        self, entity_type: str, entity_id: str, data: bytes, *, file_name: str | None = None
    ) -> str:
        """Attach a file or photo to an activity or location, offline or not; its new
        attachment id. The bytes are kept locally at once and uploaded when online."""
        self._check()
        store = self._client.store
        attachment_id = uuid.uuid4().hex
        sha = keep_locally(store, data)
        values = await self.get(entity_type, entity_id)
        index = len(values.get("attachments") or [])  # type: ignore[arg-type]
        with store.transaction():
            store.add_upload(
                UploadEntry(attachment_id, self.project_id, sha, len(data), file_name, "waiting",
                            None, None)
            )  # fmt: skip
        await self.insert_item(entity_type, entity_id, "attachments", index, attachment_id)
        self._client._attached()
        return attachment_id

    async def attachment_status(self, attachment_id: str) -> str:
        """``uploaded``, ``processing``, ``ready`` or ``failed`` once the server said so;
        before, ``waiting_to_upload`` or ``upload_refused``; ``unknown`` otherwise."""
        try:
            values = await self.get("attachment", attachment_id)
        except EntityNotFound:
            values = {}
        if values.get("status"):
            return str(values["status"])
        entry = self._client.store.upload(attachment_id)
        if entry is None:
            return "unknown"
        return {"waiting": "waiting_to_upload", "refused": "upload_refused"}.get(
            entry.state, "uploaded"
        )

    def local_copy(self, attachment_id: str) -> Path | None:
        """The bytes this device attached, while it keeps them (before any thumbnail)."""
        entry = self._client.store.upload(attachment_id)
        if entry is None:
            return None
        path = local_path(self._client.store, entry.sha256)
        return path if path.exists() else None

    async def download_attachment(self, attachment_id: str, variant: str = "small") -> bytes:
        """A thumbnail (``small``, ``large``) or the shared copy (``content``) from the
        server; UploadRefused with the server's code when it cannot be had (``not_ready``)."""
        uploader = self._client.uploader
        if uploader is None:
            raise UploadRefused("offline", "this client has no server")
        tail = "/content" if variant == "content" else f"/thumbnails/{variant}"
        url = attachment_url(uploader.base, self.project_id, attachment_id, tail)
        status, body = await call_server("GET", url, uploader.token)
        if status != 200:
            raise_for(status, body)
        return body

    def _edit(self, entity_type: str, entity_id: str, write: Callable[..., bytes]) -> bool:
        self._check()
        changed = self._replica.edit(entity_type, entity_id, write)
        if changed:
            self._edited()
        return changed

    def _edited(self) -> None:
        self._client._local_change(self.project_id)

    # --- what the server refused ----------------------------------------------------------

    async def rejected_changes(self) -> builtins.list[RejectedChange]:
        """Local changes the server refused, with its reason; they are never sent again."""
        self._check()
        return self._client.store.rejected_changes(self.project_id)

    async def dismiss_rejected(self, ids: Iterable[int] | None = None) -> int:
        """Forget rejected changes (all, or those ids) once the user has seen them."""
        self._check()
        store = self._client.store
        with store.transaction():
            removed = store.dismiss_rejected(self.project_id, ids)
        self._client.state_changed()
        return removed

    # --- conflicts ------------------------------------------------------------------------

    async def conflicts(self, *, include_resolved: bool = False) -> builtins.list[Conflict]:
        """The project's conflicts as last heard from the server: open ones (and resolved
        ones if asked), by id. Available offline."""
        self._check()
        records = self._client.store.conflicts(self.project_id, include_resolved=include_resolved)
        return [Conflict.of(r) for r in records]

    async def conflict(self, conflict_id: str) -> Conflict | None:
        for conflict in await self.conflicts(include_resolved=True):
            if conflict.conflict_id == conflict_id:
                return conflict
        return None

    async def resolve_conflict(self, conflict_id: str, value: object) -> bool:
        """Settle a concurrent same-field edit by writing ``value`` (one of
        ``conflict.candidates(entity_type)``, or any other valid value) to the field.

        The write is an ordinary edit, made after seeing every competing value, so the
        server closes the conflict when it arrives. Raises :class:`ConflictNotResolvable`
        for another kind of conflict, a resolved one, or one whose changes this client
        does not hold yet (sync first). Returns False when nothing changed.
        """
        self._check()
        conflict = await self.conflict(conflict_id)
        if conflict is None:
            raise ConflictNotResolvable(f"no conflict {conflict_id[:70]!r} in this project")
        if conflict.kind != "concurrent_edit" or len(conflict.entity_ids) != 1:
            raise ConflictNotResolvable(
                f"a {conflict.kind} conflict is resolved by ordinary edits of its entities"
            )
        if not conflict.open:
            raise ConflictNotResolvable("the conflict is already resolved")
        [entity_id] = conflict.entity_ids
        if not self._replica.has_changes(entity_id, conflict.change_hashes):
            raise ConflictNotResolvable(
                "this client does not hold every competing change yet: sync, then resolve"
            )
        entity_type = self._replica.entity_type(entity_id)
        assert entity_type is not None  # it holds the entity's changes
        [field] = conflict.fields
        return self._edit(
            entity_type, entity_id, lambda doc: overwrite_field(doc, entity_type, field, value)
        )

    def on_conflicts(self, callback: Callable[[ConflictUpdate], object]) -> Callable[[], None]:
        """Call ``callback`` on the event loop when the server reports conflicts found,
        changed, resolved or removed; returns a function that removes it."""
        return self.conflict_updates.add(callback)

    def conflict_events(self) -> AsyncIterator[ConflictUpdate]:
        """``async for update in project.conflict_events()``: until the client closes."""
        return self.conflict_updates.stream()

    # --- notifications --------------------------------------------------------------------

    def on_change(self, callback: Callable[[RemoteChanges], object]) -> Callable[[], None]:
        """Call ``callback`` on the event loop when server data changes entities; returns a
        function that removes it."""
        return self.remote_changes.add(callback)

    def changes(self) -> AsyncIterator[RemoteChanges]:
        """``async for event in project.changes()``: remote changes until the client closes."""
        return self.remote_changes.stream()

    def on_rejected(self, callback: RejectionCallback) -> Callable[[], None]:
        """Call ``callback`` with the changes the server refused, when it refuses them."""
        return self.rejections.add(callback)

    def _check(self) -> None:
        if self._client.closed:
            raise ClientClosed("the client is closed")
