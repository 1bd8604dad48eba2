"""The change log: appending entity changes, reading them back by cursor.

One push is one transaction. It first locks the project's ``log_heads`` row: every appender
of a project queues there, so seqs are handed out in commit order and a reader that has seen
seq N can never later find a smaller seq it missed (a global sequence would let a slow
transaction commit seq 5 after a fast one committed seq 6). Under that lock the store reads
the entities' current state, merges in pure code (``model.merge``), then writes the log, the
document cache and the read models, and commits. Results go back only after the commit.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from fieldsync.model.documents import AutomergeError, load_document, save_document
from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.model.merge import (
    DecodedChanges,
    EntityChanges,
    Merged,
    StoredEntity,
    decode_entity_changes,
    keep_within_push_ops,
    merge_entity,
)
from fieldsync.model.permissions import WriteCheck, write_check
from fieldsync.model.rejections import RejectCode, Rejection
from fieldsync.store.compaction import should_compact
from fieldsync.store.conflicts import (
    ConflictUpdate,
    EntityMerge,
    conflict_updates,
    plan_conflicts,
    write_conflicts,
)
from fieldsync.store.document_cache import CachedDocument, DocumentCache
from fieldsync.store.driver import translated
from fieldsync.store.errors import BatchTooLarge, StoreError, UnknownProject
from fieldsync.store.hashes import find_logged
from fieldsync.store.readmodels import read_model_row, upsert_read_models


@dataclass(frozen=True, slots=True)
class Accepted:
    """Every change of the entity is in the log; ``seqs`` follows the input order."""

    entity_id: str
    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    """None of the entity's changes were logged."""

    entity_id: str
    rejection: Rejection


AppendResult = Accepted | Rejected


Authorize = Callable[[WriteCheck], Rejection | None]
"""Decides whether one merged entity may be written; a Rejection replaces the merge."""

AuthorizeFactory = Callable[[Any], Awaitable[Authorize | None]]
"""Called once per append, under the project's lock, with the transaction's connection;
None means the writer may write everything (nothing is checked per entity)."""


@dataclass(frozen=True, slots=True)
class LoggedChange:
    seq: int
    entity_type: str
    entity_id: str
    hash: bytes
    change: bytes


@dataclass(frozen=True, slots=True)
class LogSlice:
    """Consecutive logged changes and the conflict updates of the transactions they end."""

    changes: Sequence[LoggedChange]
    conflicts: Sequence[ConflictUpdate] = ()

    @property
    def last_seq(self) -> int | None:
        return self.changes[-1].seq if self.changes else None


OnCommit = Callable[[UUID, LogSlice], None]

log = logging.getLogger(__name__)

_LOCK_HEAD = "SELECT head_seq FROM log_heads WHERE project_id = $1 FOR UPDATE"

# Looked up by entity id alone so that an id taken by another project is noticed. The
# document bytes come back only when this process's cached version is not current.
_STORED_ENTITIES = """
SELECT d.entity_id, d.project_id, d.entity_type, d.version, d.heads,
       length(d.saved) AS saved_bytes, length(d.tail) AS tail_bytes,
       d.tail_changes, d.change_count, d.op_count,
       CASE WHEN d.version = k.version THEN NULL ELSE d.saved || d.tail END AS document
FROM documents d
JOIN unnest($1::text[], $2::bigint[]) AS k(entity_id, version) USING (entity_id)
"""

_INSERT_CHANGE = """
INSERT INTO changes (project_id, seq, entity_type, entity_id, hash, actor, actor_seq, change,
                     sender)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""

_INSERT_DOCUMENT = """
INSERT INTO documents (project_id, entity_id, entity_type, heads, saved, tail, tail_changes,
                       change_count, version, op_count)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
"""

_UPDATE_DOCUMENT = """
UPDATE documents SET heads = $3,
       saved = CASE WHEN $4 THEN $5 ELSE saved END,
       tail = CASE WHEN $4 THEN $6 ELSE tail || $6 END,
       tail_changes = CASE WHEN $4 THEN 0 ELSE tail_changes + $7 END,
       change_count = change_count + $7,
       version = $8,
       op_count = op_count + $9
WHERE project_id = $1 AND entity_id = $2
"""

_SET_HEAD = "UPDATE log_heads SET head_seq = $2 WHERE project_id = $1"

_CHANGES_SINCE = """
SELECT seq, entity_type, entity_id, hash, change FROM changes
WHERE project_id = $1 AND seq > $2 ORDER BY seq LIMIT $3
"""


@dataclass(slots=True)
class _StoredRow:
    """A documents row as read under the lock (document bytes only on a cache miss)."""

    entity: StoredEntity
    saved_bytes: int
    tail_bytes: int
    tail_changes: int
    change_count: int
    values: Mapping[str, object] | None  # validated values, when this process cached them


class ChangeLog:
    """Append and read entity changes; the narrow storage interface the protocol uses."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        limits: Limits = DEFAULT_LIMITS,
        on_append: Callable[[UUID, int, int], None] | None = None,
        on_conflicts_found: Callable[[Sequence[str]], None] | None = None,
        cache_size: int = 10_000,
        on_commit: OnCommit | None = None,
    ) -> None:
        """``on_commit`` hears, right after each commit, the changes it newly logged and
        the conflict rows it changed."""
        self._pool = pool
        self._limits = limits
        self._cache = DocumentCache(cache_size)
        self._on_commit = on_commit
        # Hears (project, new head, changes appended) after each commit: for the metrics.
        self._on_append = on_append
        self._on_conflicts_found = on_conflicts_found

    @property
    def limits(self) -> Limits:
        return self._limits

    @translated("appending to the change log")
    async def append(
        self,
        project_id: UUID,
        batch: Sequence[EntityChanges],
        sender: str,
        *,
        authorize: AuthorizeFactory | None = None,
    ) -> list[AppendResult]:
        """Append each entity's changes all-or-nothing; one result per item, in order.

        ``authorize``, if given, is asked under the lock for the sender's write rule, which
        then sees every entity whose merge logs new changes (values before and after).

        Results are returned only after the transaction committed. Raises UnknownProject,
        BatchTooLarge, or another StoreError when the database fails (DatabaseUnavailable
        when it went away). After a StoreError the outcome is unknown (the connection may
        have dropped after the commit); sending the same changes again is always safe and
        returns their seqs.
        """
        if not batch:
            return []  # nothing to log: no lock, no transaction
        if len(batch) > self._limits.max_entities_per_batch:
            raise BatchTooLarge(len(batch), self._limits.max_entities_per_batch)
        decoded = [decode_entity_changes(item, self._limits) for item in batch]
        _reject_repeated_entities(batch, decoded)
        keep_within_push_ops(decoded, self._limits)
        for attempt in range(2):
            try:
                return await self._append_locked(
                    project_id, batch, decoded, sender, authorize
                )
            except asyncpg.UniqueViolationError:
                # Another project created one of these entity ids concurrently; the retry
                # sees its row and rejects the entity as belonging to another project.
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    async def _append_locked(
        self,
        project_id: UUID,
        batch: Sequence[EntityChanges],
        decoded: Sequence[DecodedChanges | Rejection],
        sender: str,
        authorize: AuthorizeFactory | None = None,
    ) -> list[AppendResult]:
        async with self._pool.acquire() as conn, conn.transaction():
            head = await conn.fetchval(_LOCK_HEAD, project_id)
            if head is None:
                raise UnknownProject(project_id)
            valid = [d for d in decoded if isinstance(d, DecodedChanges)]
            stored = await self._stored_entities(conn, project_id, valid)
            logged, owners = await _logged_hashes(conn, project_id, valid)
            outcomes: list[Merged | Rejection] = []
            for item in decoded:
                if isinstance(item, Rejection):
                    outcomes.append(item)
                    continue
                row = stored.get(item.entity_id)
                outcome = merge_entity(
                    project_id,
                    item,
                    row.entity if row else None,
                    logged.get(item.entity_id, {}),
                    self._limits,
                    _owned_elsewhere(item, owners),
                )
                if isinstance(outcome, Merged):
                    # Taken by this entity: a later entity of the push may not log them too.
                    for change in outcome.new_changes:
                        owners[change.hash] = item.entity_id
                outcomes.append(outcome)
            rule = await authorize(conn) if authorize is not None else None
            if rule is not None:
                outcomes = [_authorized(o, stored, rule) for o in outcomes]
            writes = _plan_writes(project_id, head, outcomes, stored, sender)
            conflicts = await plan_conflicts(
                conn, project_id, _entity_merges(outcomes, stored, writes), sender
            )
            await _write(conn, project_id, writes)
            await write_conflicts(conn, project_id, conflicts, writes.head)
        for entity_id, cached in writes.cache_updates:
            self._cache.put(project_id, entity_id, cached)
        if self._on_append is not None:
            self._on_append(project_id, writes.head, len(writes.change_rows))
        if self._on_conflicts_found is not None and conflicts.opened:
            self._on_conflicts_found(conflicts.opened)
        if self._on_commit is not None and writes.change_rows:
            updates = [
                *(ConflictUpdate(writes.head, key, None) for key in conflicts.deletes),
                *(ConflictUpdate(writes.head, row.conflict_id, row) for row in conflicts.upserts),
            ]
            try:
                self._on_commit(
                    project_id, LogSlice([_logged(row) for row in writes.change_rows], updates)
                )
            except Exception:
                # The changes are committed; a failing listener must not turn that into an
                # error for the pusher. Live readers also find them by cursor.
                log.exception("on_commit hook failed for project %s", project_id)
        return [
            _result(item.entity_id, outcome, writes.seqs)
            for item, outcome in zip(batch, outcomes, strict=True)
        ]

    async def _stored_entities(
        self, conn: Any, project_id: UUID, valid: Sequence[DecodedChanges]
    ) -> dict[str, _StoredRow]:
        ids = [d.entity_id for d in valid]
        if not ids:
            return {}
        versions = []
        for entity_id in ids:
            cached = self._cache.get(project_id, entity_id)
            versions.append(cached.version if cached else -1)
        rows = await conn.fetch(_STORED_ENTITIES, ids, versions)
        found: dict[str, _StoredRow] = {}
        for r in rows:
            document_bytes: bytes | None = r["document"]
            values = None
            if r["project_id"] != project_id:
                document = None
            elif document_bytes is None:
                cached = self._cache.get(project_id, r["entity_id"])
                assert cached is not None, "the database said our cached version is current"
                document = cached.document
                values = cached.values
            else:
                try:
                    document = load_document(document_bytes)
                except AutomergeError as exc:
                    raise StoreError(
                        f"stored document of entity {r['entity_id']} does not load: {exc}"
                    ) from exc
            entity = StoredEntity(
                project_id=r["project_id"],
                entity_type=r["entity_type"],
                version=r["version"],
                heads=tuple(r["heads"]),
                size_bytes=r["saved_bytes"] + r["tail_bytes"],
                document=document,
                op_count=r["op_count"],
            )
            found[r["entity_id"]] = _StoredRow(
                entity,
                r["saved_bytes"],
                r["tail_bytes"],
                r["tail_changes"],
                r["change_count"],
                values,
            )
        return found

    @translated("reading the change log")
    async def read_since(self, project_id: UUID, cursor: int, limit: int = 1_000) -> LogSlice:
        """Logged changes with seq > cursor, in seq order, at most ``limit`` of them, with the
        conflict updates of the transactions they end."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_CHANGES_SINCE, project_id, cursor, limit)
            changes = [
                LoggedChange(r["seq"], r["entity_type"], r["entity_id"], r["hash"], r["change"])
                for r in rows
            ]
            if not changes:
                return LogSlice([])
            updates = await conflict_updates(conn, project_id, cursor, changes[-1].seq)
        return LogSlice(changes, updates)

    @translated("reading the log head")
    async def head(self, project_id: UUID) -> int:
        """The project's latest seq (0 before its first change)."""
        async with self._pool.acquire() as conn:
            head = await conn.fetchval(
                "SELECT head_seq FROM log_heads WHERE project_id = $1", project_id
            )
        if head is None:
            raise UnknownProject(project_id)
        return int(head)


def _authorized(
    outcome: Merged | Rejection, stored: dict[str, _StoredRow], rule: Authorize
) -> Merged | Rejection:
    if isinstance(outcome, Rejection) or not outcome.new_changes:
        return outcome
    entity_id = outcome.decoded.entity_id
    row = stored.get(entity_id)
    entity_type = outcome.decoded.entity_type
    if row is not None and row.values is not None:
        check = WriteCheck(entity_type, entity_id, row.values, outcome.values)
    else:
        before = row.entity.document if row is not None else None
        check = write_check(entity_type, entity_id, before, outcome.values)
    refused = rule(check)
    return outcome if refused is None else refused


def _reject_repeated_entities(
    batch: Sequence[EntityChanges], decoded: list[DecodedChanges | Rejection]
) -> None:
    """An entity named twice in one batch keeps its first change set only."""
    seen: set[str] = set()
    for index, item in enumerate(batch):
        if item.entity_id in seen:
            decoded[index] = Rejection(
                RejectCode.DUPLICATE_ENTITY,
                f"entity {item.entity_id} appears more than once in this push; "
                "send all of its changes in one change set",
            )
        seen.add(item.entity_id)


async def _logged_hashes(
    conn: Any, project_id: UUID, valid: Sequence[DecodedChanges]
) -> tuple[dict[str, dict[bytes, int]], dict[bytes, str]]:
    """Which of the pushed hashes and their deps the log holds: per entity, hash -> seq;
    and for all of them, hash -> the entity that owns it (a hash is unique in a project)."""
    asked = {c.hash for d in valid for c in d.unique} | {
        dep for d in valid for c in d.unique for dep in c.deps
    }
    if not asked:
        return {}, {}
    rows = await find_logged(conn, project_id, list(asked))
    logged: dict[str, dict[bytes, int]] = defaultdict(dict)
    owners: dict[bytes, str] = {}
    for r in rows:
        logged[r["entity_id"]][r["hash"]] = r["seq"]
        owners.setdefault(r["hash"], r["entity_id"])
    return logged, owners


def _owned_elsewhere(item: DecodedChanges, owners: Mapping[bytes, str]) -> dict[bytes, str]:
    """The hashes ``item`` names (its changes and their deps) owned by other entities."""
    named = {c.hash for c in item.unique} | {dep for c in item.unique for dep in c.deps}
    return {
        h: owner for h in named if (owner := owners.get(h)) is not None and owner != item.entity_id
    }


@dataclass(slots=True)
class _Writes:
    """Everything one append transaction writes, planned before any write is issued."""

    head: int
    seqs: dict[tuple[str, bytes], int]
    change_rows: list[tuple[object, ...]]
    new_documents: list[tuple[object, ...]]
    updated_documents: list[tuple[object, ...]]
    read_models: dict[str, list[tuple[object, ...]]]
    cache_updates: list[tuple[str, CachedDocument]]


def _plan_writes(
    project_id: UUID,
    head: int,
    outcomes: Sequence[Merged | Rejection],
    stored: dict[str, _StoredRow],
    sender: str,
) -> _Writes:
    writes = _Writes(head, {}, [], [], [], defaultdict(list), [])
    for outcome in outcomes:
        if isinstance(outcome, Rejection):
            continue
        entity_id = outcome.decoded.entity_id
        entity_type = outcome.decoded.entity_type
        for h, seq in outcome.logged_seqs.items():
            writes.seqs[(entity_id, h)] = seq
        if not outcome.new_changes:
            continue
        assert outcome.document is not None
        for change in outcome.new_changes:
            writes.head += 1
            writes.seqs[(entity_id, change.hash)] = writes.head
            writes.change_rows.append(
                (
                    project_id,
                    writes.head,
                    entity_type,
                    entity_id,
                    change.hash,
                    change.actor,
                    change.seq,
                    change.data,
                    sender,
                )
            )
        version = writes.head
        new_bytes = b"".join(c.data for c in outcome.new_changes)
        count = len(outcome.new_changes)
        ops = sum(c.op_count for c in outcome.new_changes)
        heads = list(outcome.heads)
        row = stored.get(entity_id)
        if row is None:
            # Saved at once: a saved document loads about twice as fast as its change chunks,
            # and for a new (small) document saving costs a few microseconds.
            saved = save_document(outcome.document)
            size = len(saved)
            writes.new_documents.append(
                (project_id, entity_id, entity_type, heads, saved, b"", 0, count, version, ops)
            )
        else:
            compact = should_compact(
                row.saved_bytes,
                row.tail_bytes + len(new_bytes),
                row.tail_changes + count,
                row.change_count + count,
            )
            saved = save_document(outcome.document) if compact else b""
            tail = b"" if compact else new_bytes
            size = len(saved) if compact else row.saved_bytes + row.tail_bytes + len(new_bytes)
            writes.updated_documents.append(
                (project_id, entity_id, heads, compact, saved, tail, count, version, ops)
            )
        writes.read_models[entity_type].append(
            read_model_row(project_id, entity_type, entity_id, outcome.values, version)
        )
        writes.cache_updates.append(
            (entity_id, CachedDocument(version, outcome.document, size, outcome.values))
        )
    return writes


async def _write(conn: Any, project_id: UUID, writes: _Writes) -> None:
    if not writes.change_rows:
        return
    await conn.executemany(_INSERT_CHANGE, writes.change_rows)
    if writes.new_documents:
        await conn.executemany(_INSERT_DOCUMENT, writes.new_documents)
    if writes.updated_documents:
        await conn.executemany(_UPDATE_DOCUMENT, writes.updated_documents)
    await upsert_read_models(conn, writes.read_models)
    await conn.execute(_SET_HEAD, project_id, writes.head)


def _entity_merges(
    outcomes: Sequence[Merged | Rejection],
    stored: dict[str, _StoredRow],
    writes: _Writes,
) -> list[EntityMerge]:
    """The entities that logged new changes, in log order, for the conflict rules."""
    merges = []
    for outcome in outcomes:
        if isinstance(outcome, Rejection) or not outcome.new_changes:
            continue
        assert outcome.document is not None
        entity_id = outcome.decoded.entity_id
        row = stored.get(entity_id)
        merges.append(
            EntityMerge(
                outcome.decoded.entity_type,
                entity_id,
                outcome.document,
                row.entity.heads if row is not None else (),
                row.values if row is not None else None,
                outcome.new_changes,
                [writes.seqs[(entity_id, c.hash)] for c in outcome.new_changes],
                outcome.values,
            )
        )
    return merges


def _logged(row: tuple[Any, ...]) -> LoggedChange:
    _, seq, entity_type, entity_id, hash_, _, _, data, _ = row
    return LoggedChange(seq, entity_type, entity_id, hash_, data)


def _result(
    entity_id: str, outcome: Merged | Rejection, seqs: dict[tuple[str, bytes], int]
) -> AppendResult:
    if isinstance(outcome, Rejection):
        return Rejected(entity_id, outcome)
    return Accepted(entity_id, tuple(seqs[(entity_id, h)] for h in outcome.decoded.hash_per_input))
