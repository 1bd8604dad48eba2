"""One project's entity documents: a cache of Automerge documents over the local store.

Every mutation is computed on a *fork* of the cached document, written to the store in one
transaction, and only then swapped into the cache; if anything fails on the way (an edit
that does not fit the schema, the binding refusing bytes, the disk) the cache and the store
still hold the previous state. Nothing here does I/O other than SQLite.

Local edits go through ``model.writer`` (the schema decides each value's Automerge type) and
are validated with ``model.validation.inspect_document``, the check the server runs after
merging. Remote changes are parsed strictly (``model.changes.parse_change``) and applied with
``model.documents.apply_changes``, which verifies the resulting heads.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from automerge.core import ROOT, Document, ScalarType

from fieldsync.model.changes import ChangeFormatError, parse_change
from fieldsync.model.documents import (
    AutomergeError,
    apply_changes,
    contained,
    document_heads,
    load_document,
    save_document,
)
from fieldsync.model.entities import SCHEMAS
from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.model.validation import SchemaViolation, inspect_document
from fieldsync.model.writer import NoChange, WriteError, create_entity
from fieldsync.sync.messages import ChangeRecord, ConflictRecord, SnapshotEntity
from fieldsync_client.errors import EntityNotFound, ValidationError
from fieldsync_client.local_store import LocalStore, OutboxEntry
from fieldsync_client.repair import HistoryChange

__all__ = [
    "DEPENDS_ON_REJECTED",
    "WRONG_ENTITY_TYPE",
    "ProjectReplica",
    "RemoteDataError",
]

T = TypeVar("T")

DEPENDS_ON_REJECTED = "depends_on_rejected"
"""Reject code of a local change made on top of one the server refused."""
WRONG_ENTITY_TYPE = "wrong_entity_type"

class RemoteDataError(Exception):
    """Data from the server cannot be applied: the connection should be dropped and resumed."""


@dataclass
class _Entry:
    entity_type: str
    doc: Document
    hashes: set[bytes] | None = None  # every change hash in ``doc``; computed when needed

    def known_hashes(self) -> set[bytes]:
        if self.hashes is None:
            changes = contained(lambda: self.doc.get_changes([]))
            self.hashes = {change.hash for change in changes}
        return self.hashes


@dataclass(frozen=True, slots=True)
class _Update:
    entity_id: str
    entry: _Entry | None  # None: the entity is gone from the local copy
    saved: bytes | None = None  # the document's saved bytes, when already at hand


@dataclass
class RemoteOutcome:
    """What applying server data did: entities whose content changed, local changes refused."""

    changed: set[str] = field(default_factory=set)
    rejected: list[int] = field(default_factory=list)
    conflicts: list[ConflictRecord] = field(default_factory=list)  # a snapshot's records
    conflicts_removed: list[str] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


def _is_deleted(doc: Document) -> bool:
    try:
        got = contained(lambda: doc.get(ROOT, "deleted"))
    except AutomergeError:
        return False
    return bool(
        got is not None
        and isinstance(got[0], tuple)
        and got[0][0] == ScalarType.Boolean
        and got[0][1] is True
    )


def _summary(entity_type: str, violations: Sequence[SchemaViolation]) -> str:
    first = str(violations[0])
    more = len(violations) - 1
    return f"invalid {entity_type}: {first}" + (f" (and {more} more)" if more else "")


def _writing(call: Callable[[], T]) -> T | None:
    """Run a ``model.writer`` call; None when it makes no change; ValidationError if it fails."""
    try:
        return call()
    except NoChange:
        return None
    except WriteError as exc:
        raise ValidationError(str(exc)) from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValidationError(f"a value has the wrong type: {exc}") from None
    except Exception as exc:  # the binding reports everything as a plain Exception
        raise ValidationError(f"the edit cannot be applied: {exc}") from None
    except BaseException as exc:
        if type(exc).__name__ == "PanicException":
            raise ValidationError(f"the edit cannot be applied: {exc}") from None
        raise


class ProjectReplica:
    def __init__(
        self, store: LocalStore, project_id: str, *, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        record = store.project(project_id)
        if record is None:
            raise ValueError(f"project {project_id} is not in the local store")
        self.store = store
        self.project_id = project_id
        self.limits = limits
        self.cursor: int | None = record.cursor
        self._cache: dict[str, _Entry] = {}

    # --- reading --------------------------------------------------------------------------

    def _entry(self, entity_id: str) -> _Entry | None:
        entry = self._cache.get(entity_id)
        if entry is None:
            stored = self.store.entity(self.project_id, entity_id)
            if stored is None:
                return None
            try:
                doc = load_document(stored.document)
            except AutomergeError as exc:
                raise RemoteDataError(f"entity {entity_id} cannot be loaded: {exc}") from exc
            entry = self._cache[entity_id] = _Entry(stored.entity_type, doc)
        return entry

    def _require(self, entity_type: str, entity_id: str) -> _Entry:
        entry = self._entry(entity_id)
        if entry is None or entry.entity_type != entity_type:
            raise EntityNotFound(f"no {entity_type} {entity_id!r} in project {self.project_id}")
        return entry

    def entity_type(self, entity_id: str) -> str | None:
        entry = self._entry(entity_id)
        return None if entry is None else entry.entity_type

    def values(self, entity_type: str, entity_id: str) -> dict[str, object]:
        entry = self._require(entity_type, entity_id)
        schema = SCHEMAS.get(entity_type)
        if schema is None:
            raise EntityNotFound(f"this SDK does not know the entity type {entity_type!r}")
        return inspect_document(schema, entry.doc).values

    def heads(self, entity_id: str) -> list[bytes]:
        entry = self._entry(entity_id)
        if entry is None:
            raise EntityNotFound(f"no entity {entity_id!r} in project {self.project_id}")
        return sorted(document_heads(entry.doc))

    def ids(self, entity_type: str, *, include_deleted: bool = False) -> list[str]:
        return self.store.entity_ids(self.project_id, entity_type, include_deleted=include_deleted)

    # --- local edits ----------------------------------------------------------------------

    def create(self, entity_type: str, entity_id: str, values: Mapping[str, object]) -> None:
        if entity_type not in SCHEMAS:
            raise ValidationError(f"unknown entity type {entity_type!r}")
        if self._entry(entity_id) is not None:
            raise ValidationError(f"an entity {entity_id!r} already exists in this project")
        present = {name: value for name, value in values.items() if value is not None}
        made = _writing(lambda: create_entity(entity_type, present))
        if made is None:
            raise ValidationError(f"a new {entity_type} needs values")
        doc, change = made
        self._commit_local(entity_type, entity_id, _Entry(entity_type, doc, set()), change)

    def edit(self, entity_type: str, entity_id: str, write: Callable[[Document], bytes]) -> bool:
        """Apply ``write`` (a ``model.writer`` edit) to the entity; False if nothing changed."""
        entry = self._require(entity_type, entity_id)
        doc = contained(entry.doc.fork)
        contained(lambda: doc.set_actor(entry.doc.get_actor()))  # one actor per session
        change = _writing(lambda: write(doc))
        if change is None:
            return False
        hashes = None if entry.hashes is None else set(entry.hashes)
        self._commit_local(entity_type, entity_id, _Entry(entity_type, doc, hashes), change)
        return True

    def _commit_local(self, entity_type: str, entity_id: str, entry: _Entry, change: bytes) -> None:
        """Validate the edited document, then store it and its change in one transaction."""
        inspection = inspect_document(SCHEMAS[entity_type], entry.doc)
        if inspection.violations:
            raise ValidationError(
                _summary(entity_type, inspection.violations), inspection.violations
            )
        if len(change) > self.limits.max_change_bytes:
            raise ValidationError(
                f"the change is {len(change)} bytes; the server takes at most "
                f"{self.limits.max_change_bytes}: make smaller edits"
            )
        saved = save_document(entry.doc)
        if len(saved) > self.limits.max_document_bytes:
            raise ValidationError(
                f"the {entity_type} would grow to {len(saved)} bytes; the server takes at most "
                f"{self.limits.max_document_bytes}"
            )
        header = parse_change(change)
        with self.store.transaction():
            self.store.save_entity(
                self.project_id,
                entity_id,
                entity_type,
                saved,
                inspection.values.get("deleted") is True,
            )
            self.store.add_change(
                self.project_id, entity_type, entity_id, change, header.hash, _now()
            )
        if entry.hashes is not None:
            entry.hashes.add(header.hash)
        self._cache[entity_id] = entry

    # --- server data ----------------------------------------------------------------------

    def apply_remote(self, records: Sequence[ChangeRecord]) -> RemoteOutcome:
        """Apply logged changes (consecutive seqs after the cursor) and advance the cursor."""
        outcome = RemoteOutcome()
        if not records:
            return outcome
        expected = (self.cursor or 0) + 1
        for offset, record in enumerate(records):
            if record.seq != expected + offset:
                raise RemoteDataError(
                    f"expected seq {expected + offset}, got {record.seq}: resume from the cursor"
                )
        by_entity: dict[str, list[ChangeRecord]] = defaultdict(list)
        for record in records:
            by_entity[record.entity_id].append(record)
        updates: list[_Update] = []
        refused: list[OutboxEntry] = []
        for entity_id, changes in by_entity.items():
            entity_type = changes[0].entity_type
            entry = self._entry(entity_id)
            if entry is not None and entry.entity_type != entity_type:
                # The server holds this id as another type: its version wins.
                refused.extend(self.store.pending_changes(self.project_id, entity_id))
                entry = None
            # A copy: the cached entry stays as it is until the store has committed.
            known = set(entry.known_hashes()) if entry is not None else set()
            new = []
            for record in changes:
                try:
                    # The server logs no change larger than this: a compressed one that
                    # inflates further is refused before it costs more.
                    header = parse_change(
                        record.change, max_inflated_bytes=self.limits.max_change_bytes
                    )
                except ChangeFormatError as exc:
                    raise RemoteDataError(f"seq {record.seq} is not a valid change: {exc}") from exc
                if header.hash not in known:
                    known.add(header.hash)
                    new.append(header)
            if not new:
                continue  # our own changes coming back
            try:
                doc = apply_changes(entry.doc if entry is not None else None, new)
                if entry is not None:
                    actor = entry.doc.get_actor()
                    contained(lambda: doc.set_actor(actor))  # noqa: B023 (called right here)
            except AutomergeError as exc:
                raise RemoteDataError(f"changes for {entity_id} cannot be applied: {exc}") from exc
            updates.append(_Update(entity_id, _Entry(entity_type, doc, known)))
            outcome.changed.add(entity_id)
        cursor = records[-1].seq
        return self._commit_remote(updates, refused, cursor, outcome)

    def _commit_remote(
        self,
        updates: list[_Update],
        refused: list[OutboxEntry],
        cursor: int,
        outcome: RemoteOutcome,
    ) -> RemoteOutcome:
        """Store remote documents, refusals and the new cursor in one transaction."""
        with self.store.transaction():
            self._write(updates)
            self._refuse(refused, WRONG_ENTITY_TYPE, "the server holds this id as another type")
            self.store.set_cursor(self.project_id, cursor)
        self._swap(updates)
        self.cursor = cursor
        outcome.rejected = [entry.id for entry in refused]
        return outcome

    def apply_snapshot(
        self,
        entities: Sequence[SnapshotEntity],
        cursor: int,
        conflicts: Sequence[ConflictRecord] = (),
    ) -> RemoteOutcome:
        """A whole snapshot at once: :meth:`store_snapshot_part`, then :meth:`finish_snapshot`."""
        outcome = self.store_snapshot_part(entities)
        outcome.conflicts_removed = self.finish_snapshot(cursor, conflicts)
        return outcome

    def store_snapshot_part(self, entities: Sequence[SnapshotEntity]) -> RemoteOutcome:
        """Store some entities of a snapshot, each merged with the local copy, in one
        transaction; the cursor does not move.

        Snapshots are stored part by part so that memory stays bounded by one part, however
        large the project. Until :meth:`finish_snapshot` the project is not (re)bootstrapped:
        if the connection drops or the process dies halfway, the next connection asks for a
        snapshot again, and the entities stored so far merge with it like any local copy
        (one the server has not changed since is byte-for-byte the same and is skipped).
        """
        outcome = RemoteOutcome()
        updates: list[_Update] = []
        refused: list[OutboxEntry] = []
        stored = self.store.entities(self.project_id, [e.entity_id for e in entities])
        for entity in entities:
            outcome.changed.add(entity.entity_id)
            local_row = stored.get(entity.entity_id)
            same_type = local_row is not None and local_row.entity_type == entity.entity_type
            if same_type and local_row is not None and local_row.document == entity.document:
                continue  # stored by an interrupted bootstrap, unchanged since
            try:
                doc = load_document(entity.document)
                if local_row is None or not same_type:
                    if local_row is not None:
                        pending = self.store.pending_changes(self.project_id, entity.entity_id)
                        refused.extend(pending)
                    # Kept as the server sent it: saving it again would only cost time.
                    entry = _Entry(entity.entity_type, doc)
                    updates.append(_Update(entity.entity_id, entry, entity.document))
                    continue
                local = self._entry(entity.entity_id)
                assert local is not None
                contained(lambda: doc.merge(local.doc))  # noqa: B023 (called right here)
                actor = local.doc.get_actor()
                contained(lambda: doc.set_actor(actor))  # noqa: B023
            except AutomergeError as exc:
                raise RemoteDataError(f"snapshot of {entity.entity_id} is unusable: {exc}") from exc
            updates.append(_Update(entity.entity_id, _Entry(entity.entity_type, doc)))
        with self.store.transaction():
            self._write(updates)
            self._refuse(refused, WRONG_ENTITY_TYPE, "the server holds this id as another type")
        # Only documents already in memory are replaced; the others load when first read.
        self._swap([u for u in updates if u.entity_id in self._cache])
        outcome.rejected = [entry.id for entry in refused]
        return outcome

    def finish_snapshot(self, cursor: int, conflicts: Sequence[ConflictRecord] = ()) -> list[str]:
        """Every entity of the snapshot is stored: the project now holds it at ``cursor``,
        with the snapshot's conflict records in place of the stored ones (the same
        transaction). Returns the ids of conflict records that were removed."""
        with self.store.transaction():
            self.store.set_cursor(self.project_id, cursor)
            removed = self.store.save_conflicts(self.project_id, conflicts, replace_all=True)
        self.cursor = cursor
        return removed

    def apply_conflicts(self, records: Sequence[ConflictRecord]) -> list[str]:
        """Store conflict updates (they come before the changes they belong to); returns
        the ids of records that were removed."""
        with self.store.transaction():
            return self.store.save_conflicts(self.project_id, records)

    def has_changes(self, entity_id: str, hashes: Iterable[bytes]) -> bool:
        """Whether the local document of ``entity_id`` holds every one of ``hashes``."""
        entry = self._entry(entity_id)
        return entry is not None and set(hashes) <= entry.known_hashes()

    def reject(
        self,
        entity_id: str,
        row_ids: Iterable[int],
        code: str,
        message: str,
        details: Mapping[str, object],
    ) -> list[int]:
        """The server refused these outbox rows: mark them (and later edits built on them)
        rejected and take them out of the local document, which then matches the server's.

        Returns every outbox id now rejected.
        """
        ids = set(row_ids)
        pending = self.store.pending_changes(self.project_id, entity_id)
        in_push = [p for p in pending if p.id in ids]
        if not in_push:
            return []
        first = min(p.id for p in in_push)
        # Every later local edit of the entity was made on a document holding the refused
        # change, so it depends on it and cannot be logged without it.
        later = [p for p in pending if p.id > first and p.id not in ids]
        doomed = {p.hash for p in in_push} | {p.hash for p in later}
        entry = self._entry(entity_id)
        update = _Update(entity_id, self._without(entry, doomed) if entry is not None else None)
        with self.store.transaction():
            self.store.reject([p.id for p in in_push], code, message, details, _now())
            self._refuse(
                later,
                DEPENDS_ON_REJECTED,
                f"made after a change the server refused ({code}), so it cannot be logged",
            )
            self._write([update])
        self._swap([update])
        return sorted([p.id for p in in_push] + [p.id for p in later])

    def history(self, entity_id: str) -> list[HistoryChange]:
        """Every change of the entity's local document, in causal order."""
        entry = self._entry(entity_id)
        if entry is None:
            return []
        try:
            changes = contained(lambda: entry.doc.get_changes([]))
            return [HistoryChange(c.hash, tuple(c.deps), c.bytes) for c in changes]
        except AutomergeError as exc:
            raise RemoteDataError(f"cannot read the history of {entity_id}: {exc}") from exc

    def _without(self, entry: _Entry, hashes: set[bytes]) -> _Entry | None:
        """``entry``'s document without the changes in ``hashes`` and anything built on them."""
        try:
            changes = contained(lambda: entry.doc.get_changes([]))
            removed = set(hashes)
            kept: list[bytes] = []
            kept_hashes: set[bytes] = set()
            for change in changes:  # causal order: dependencies come first
                if change.hash in removed or any(dep in removed for dep in change.deps):
                    removed.add(change.hash)
                else:
                    kept.append(change.bytes)
                    kept_hashes.add(change.hash)
            if not kept:
                return None
            doc = load_document(b"".join(kept))
            actor = entry.doc.get_actor()
            contained(lambda: doc.set_actor(actor))
        except AutomergeError as exc:
            raise RemoteDataError(f"cannot remove refused changes: {exc}") from exc
        return _Entry(entry.entity_type, doc, kept_hashes)

    def _refuse(self, entries: Sequence[OutboxEntry], code: str, message: str) -> None:
        if entries:
            self.store.reject([e.id for e in entries], code, message, {}, _now())

    def _write(self, updates: Sequence[_Update]) -> None:
        for update in updates:
            if update.entry is None:
                self.store.delete_entity(self.project_id, update.entity_id)
            else:
                self.store.save_entity(
                    self.project_id,
                    update.entity_id,
                    update.entry.entity_type,
                    update.saved if update.saved is not None else save_document(update.entry.doc),
                    _is_deleted(update.entry.doc),
                )

    def _swap(self, updates: Sequence[_Update]) -> None:
        for update in updates:
            if update.entry is None:
                self._cache.pop(update.entity_id, None)
            else:
                self._cache[update.entity_id] = update.entry
