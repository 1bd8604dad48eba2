"""The server's writes to attachment entities, as Automerge changes for the change log.

The entity is created by a deterministic change: its actor is derived from the attachment
id and core-API changes carry timestamp 0, so the same upload completed twice (a retry
after a crash between the blob write and the metadata commit) yields the very same change,
which the log appends once. Later status changes build on the stored document with a fresh
actor each, so two writers never reuse an (actor, seq) pair; they are made one at a time
per attachment (the processing job holds it), so each one descends from the one before and
the newest status always wins the merge.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from fieldsync.model.automerge_format.documents import load_document
from fieldsync.model.entities import SCHEMAS
from fieldsync.model.merge import EntityChanges
from fieldsync.model.validation import inspect_document
from fieldsync.model.writer import NoChange, create_entity, update_entity

ENTITY_TYPE = "attachment"


def creation(attachment_id: str, values: Mapping[str, object]) -> EntityChanges:
    """The change that creates the entity; identical bytes for identical input."""
    actor = hashlib.sha256(b"fieldsync-attachment:" + attachment_id.encode()).digest()[:16]
    _, change = create_entity(ENTITY_TYPE, values, actor=actor)
    return EntityChanges(ENTITY_TYPE, attachment_id, [change])


def update(
    attachment_id: str, document: bytes, values: Mapping[str, object]
) -> EntityChanges | None:
    """A change setting ``values`` on the stored document (None: already so)."""
    doc = load_document(document)
    try:
        change = update_entity(doc, ENTITY_TYPE, values)
    except NoChange:
        return None
    return EntityChanges(ENTITY_TYPE, attachment_id, [change])


def values_of(entity_type: str, document: bytes) -> Mapping[str, object]:
    """A stored document's validated values."""
    return inspect_document(SCHEMAS[entity_type], load_document(document)).values
