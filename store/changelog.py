"""The change log on PostgreSQL: appending entity changes, reading them back by cursor.

Appends to a project take its ``log_heads`` row lock: every appender of a project queues
there, so seqs are handed out in commit order and a reader that has seen seq N can never
later find a smaller seq it missed (a global sequence would let a slow transaction commit
seq 5 after a fast one committed seq 6). Pushes to a project that arrive while an append to
it is running in this process wait for it, then go in together (``store.group_commit``):
one transaction, one lock acquisition, one commit for the whole group, each push planned
after the one before it exactly as if it were appended alone. A push to an idle project
goes straight in.

Under the lock the store reads the entities' current state, decides in pure code
(``store.append_plan``, the same for the in-memory storage), then writes the log, the
document cache and the read models, and commits. Results go back only after the commit; a
push's own rejections never fail the others of its group, a database error fails all of
them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

import asyncpg

from fieldsync.model.automerge_format.documents import AutomergeError, load_document, save_document
from fieldsync.model.limits import DEFAULT_LIMITS, Limits
from fieldsync.model.merge import Applied, DecodedChanges, EntityChanges, StoredEntity, preapply
from fieldsync.model.rejections import Rejection
from fieldsync.store.append_plan import (
    Authorize,
    CommitObservers,
    OnCommit,
    SeqPlan,
    asked_hashes,
    assign_seqs,
    authorize_all,
    decoded_only,
    entity_merges,
    index_logged,
    merge_batch,
    prepare_batch,
    refuse_server_authored,
    results,
    tell_observers,
)
from fieldsync.store.apply_ahead import ApplyAhead
from fieldsync.store.authorization import AuthorizeFactory, write_rule
from fieldsync.store.compaction import should_compact
from fieldsync.store.conflicts import (
    ConflictWrites,
    conflict_updates,
    plan_conflicts,
    write_conflicts,
)
from fieldsync.store.document_cache import CachedDocument, DocumentCache
from fieldsync.store.driver import translated
from fieldsync.store.errors import StoreError
from fieldsync.store.group_commit import GroupCommit
from fieldsync.store.hashes import find_logged
from fieldsync.store.log_heads import read_head
from fieldsync.store.readmodels import read_model_row, upsert_read_models
from fieldsync.store.records import (
    Accepted,
    AppendResult,
    LoggedChange,
    LogSlice,
    Rejected,
)

if TYPE_CHECKING:
    from fieldsync.store.replica import ReplicaReads

__all__ = [
    "Accepted",
    "AppendResult",
    "Authorize",
    "AuthorizeFactory",
    "ChangeLog",
    "LogSlice",
    "LoggedChange",
    "OnCommit",
    "Rejected",
]


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

# Each statement writes all of a push's rows at once. Heads travel as one bytea of 32-byte
# hashes per row (a bytea[][] cannot hold rows of different lengths).
_INSERT_CHANGES = """
INSERT INTO changes (project_id, seq, entity_type, entity_id, hash, actor, actor_seq, change,
                     sender)
SELECT $1, u.seq, u.entity_type, u.entity_id, u.hash, u.actor, u.actor_seq, u.change, $2
FROM unnest($3::bigint[], $4::text[], $5::text[], $6::bytea[], $7::bytea[], $8::bigint[],
            $9::bytea[]) AS u(seq, entity_type, entity_id, hash, actor, actor_seq, change)
"""

_HEADS = (
    "ARRAY(SELECT substring(u.heads FROM i FOR 32) "
    "FROM generate_series(1, length(u.heads), 32) AS i ORDER BY i)"
)

_INSERT_DOCUMENTS = f"""
INSERT INTO documents (project_id, entity_id, entity_type, heads, saved, tail, tail_changes,
                       change_count, version, op_count)
SELECT $1, u.entity_id, u.entity_type, {_HEADS}, u.saved, ''::bytea, 0, u.change_count,
       u.version, u.op_count
FROM unnest($2::text[], $3::text[], $4::bytea[], $5::bytea[], $6::int[], $7::bigint[],
            $8::bigint[]) AS u(entity_id, entity_type, heads, saved, change_count, version,
                               op_count)
"""

_UPDATE_DOCUMENTS = f"""
UPDATE documents d SET heads = {_HEADS},
       saved = CASE WHEN u.compact THEN u.saved ELSE d.saved END,
       tail = CASE WHEN u.compact THEN u.tail ELSE d.tail || u.tail END,
       tail_changes = CASE WHEN u.compact THEN 0 ELSE d.tail_changes + u.change_count END,
       change_count = d.change_count + u.change_count,
       version = u.version,
       op_count = d.op_count + u.op_count
FROM unnest($2::text[], $3::bytea[], $4::bool[], $5::bytea[], $6::bytea[], $7::int[],
            $8::bigint[], $9::bigint[]) AS u(entity_id, heads, compact, saved, tail,
                                             change_count, version, op_count)
WHERE d.project_id = $1 AND d.entity_id = u.entity_id
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
    """Append and read entity changes (``store.ports.ChangeLogPort``) on PostgreSQL."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        limits: Limits = DEFAULT_LIMITS,
        on_append: Callable[[UUID, int, int], None] | None = None,
        on_conflicts_found: Callable[[Sequence[str]], None] | None = None,
        cache_size: int = 10_000,
        on_commit: OnCommit | None = None,
        replica: ReplicaReads | None = None,
    ) -> None:
        """``on_commit`` hears, right after each commit, the changes it newly logged and
        the conflict rows it changed; ``on_append`` (project, new head, changes appended)
        and ``on_conflicts_found`` are for the metrics; ``replica`` serves ``catch_up``."""
        self._pool = pool
        self._replica = replica
        self._limits = limits
        self._cache = DocumentCache(cache_size)
        self._observers = CommitObservers(on_append, on_conflicts_found, on_commit)
        self._groups: GroupCommit[UUID, _Push, list[AppendResult]] = GroupCommit(self._append_group)
        self._ahead: ApplyAhead[UUID, DecodedChanges, Applied] = ApplyAhead(self._apply_one_ahead)

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
        as_member: UUID | None = None,
        authorize: AuthorizeFactory | None = None,
    ) -> list[AppendResult]:
        """Append each entity's changes all-or-nothing; one result per item, in order.

        ``as_member``: the member pushing, whose write rule (their level and summonings,
        read under the lock) then sees every entity whose merge logs new changes (values
        before and after); None appends without a rule. ``authorize`` is the same hook
        at its lowest level (a factory given the transaction's connection), for tests.

        Results are returned only after the transaction committed. Raises UnknownProject,
        BatchTooLarge, or another StoreError when the database fails (DatabaseUnavailable
        when it went away). After a StoreError the outcome is unknown (the connection may
        have dropped after the commit); sending the same changes again is always safe and
        returns their seqs.
        """
        if as_member is not None:
            if authorize is not None:
                raise ValueError("give as_member or authorize, not both")
            authorize = write_rule(project_id, as_member)
        if not batch:
            return []  # nothing to log: no lock, no transaction
        decoded = prepare_batch(batch, self._limits)
        applied = await self._preapply(project_id, decoded)
        return await self._groups.submit(
            project_id, _Push(batch, decoded, sender, authorize, applied)
        )

    async def _preapply(
        self, project_id: UUID, decoded: Sequence[DecodedChanges | Rejection]
    ) -> dict[str, Applied]:
        """Each entity's changes applied before the lock, onto the document this process has
        cached, or onto none for a push that creates the entity: while the push waits for
        the lock (behind a running group), the work overlaps the database's
        (``store.apply_ahead``). Under the lock the merge keeps it only if the entity is
        still at that version."""
        valid = decoded_only(decoded)
        results = await self._ahead.apply(project_id, valid)
        return {
            item.entity_id: applied
            for item, applied in zip(valid, results, strict=False)
            if applied is not None
        }

    def _apply_one_ahead(self, project_id: UUID, item: DecodedChanges) -> Applied | None:
        cached = self._cache.get(project_id, item.entity_id)
        if cached is not None:
            return preapply(item, cached.version, cached.document, self._limits)
        if any(not c.deps for c in item.unique):  # its creation: likely a new entity
            return preapply(item, 0, None, self._limits)
        return None

    @property
    def groups(self) -> GroupCommit[UUID, _Push, list[AppendResult]]:
        """The per-project grouping of appends (its counters tell how pushes were grouped)."""
        return self._groups

    async def _append_group(
        self, project_id: UUID, pushes: Sequence[_Push]
    ) -> list[list[AppendResult]]:
        for attempt in range(2):
            try:
                return await self._append_locked(project_id, pushes)
            except asyncpg.UniqueViolationError:
                # Another project created one of these entity ids concurrently; the retry
                # sees its row and rejects the entity as belonging to another project.
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    async def _append_locked(
        self, project_id: UUID, pushes: Sequence[_Push]
    ) -> list[list[AppendResult]]:
        """One transaction for the group: each push planned on what the pushes before it
        wrote (the database rows, and the documents they produced, kept in ``written``)."""
        written: dict[str, CachedDocument] = {}
        appended: list[_Appended] = []
        async with self._pool.acquire() as conn, conn.transaction():
            start = head = await read_head(conn, project_id, lock=True)
            for push in pushes:
                one = await self._append_one(conn, project_id, head, push, written)
                head = one.plan.head
                appended.append(one)
            if head != start:
                await conn.execute(_SET_HEAD, project_id, head)
        for entity_id, cached in written.items():
            self._cache.put(project_id, entity_id, cached)
        for one in appended:
            tell_observers(self._observers, project_id, one.plan, one.conflicts)
        return [one.results for one in appended]

    async def _append_one(
        self,
        conn: Any,
        project_id: UUID,
        head: int,
        push: _Push,
        written: dict[str, CachedDocument],
    ) -> _Appended:
        """Plan and write one push of a group, after ``head``, under the group's lock."""
        valid = decoded_only(push.decoded)
        stored = await self._stored_entities(conn, project_id, valid, written)
        logged, owners = index_logged(
            await find_logged(conn, project_id, asked_hashes(valid)) if valid else []
        )
        outcomes = merge_batch(
            project_id, push.decoded, stored, logged, owners, self._limits, push.applied
        )
        if push.authorize is not None:  # a member's push
            outcomes = refuse_server_authored(outcomes)
        rule = await push.authorize(conn) if push.authorize is not None else None
        if rule is not None:
            outcomes = authorize_all(outcomes, stored, rule)
        plan = assign_seqs(head, outcomes)
        writes = _plan_writes(project_id, plan, stored, push.sender)
        conflicts = await plan_conflicts(conn, project_id, entity_merges(plan, stored), push.sender)
        await _write(conn, project_id, push.sender, writes)
        await write_conflicts(conn, project_id, conflicts, plan.head)
        written.update(writes.cache_updates)
        return _Appended(results(push.batch, outcomes, plan.seqs), plan, conflicts)

    async def _stored_entities(
        self,
        conn: Any,
        project_id: UUID,
        valid: Sequence[DecodedChanges],
        written: Mapping[str, CachedDocument],
    ) -> dict[str, _StoredRow]:
        """The documents rows of ``valid``; the document itself from this transaction's
        writes or this process's cache when its version is the row's."""
        ids = [d.entity_id for d in valid]
        if not ids:
            return {}
        known: dict[str, CachedDocument] = {}
        versions = []
        for entity_id in ids:
            cached = written.get(entity_id) or self._cache.get(project_id, entity_id)
            if cached is not None:
                known[entity_id] = cached
            versions.append(cached.version if cached else -1)
        rows = await conn.fetch(_STORED_ENTITIES, ids, versions)
        found: dict[str, _StoredRow] = {}
        for r in rows:
            document_bytes: bytes | None = r["document"]
            values = None
            if r["project_id"] != project_id:
                document = None
            elif document_bytes is None:
                cached = known.get(r["entity_id"])
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
        conflict updates of the transactions they end (from the primary)."""
        async with self._pool.acquire() as conn:
            return await read_log(conn, project_id, cursor, limit)

    @translated("reading the change log")
    async def catch_up(self, project_id: UUID, cursor: int, limit: int = 1_000) -> LogSlice:
        """``read_since`` for a client catching up: from the read replica when there is one
        that can answer it (``store.replica``), else from the primary."""
        if self._replica is None:
            return await self.read_since(project_id, cursor, limit)
        return await self._replica.catch_up(project_id, cursor, limit, self.read_since)

    @translated("reading the log head")
    async def head(self, project_id: UUID) -> int:
        """The project's latest seq (0 before its first change)."""
        async with self._pool.acquire() as conn:
            return await read_head(conn, project_id)


@translated("reading the change log")
async def read_log(conn: Any, project_id: UUID, cursor: int, limit: int) -> LogSlice:
    """``read_since`` on a connection (the primary's, or a replica's)."""
    rows = await conn.fetch(_CHANGES_SINCE, project_id, cursor, limit)
    changes = [
        LoggedChange(r["seq"], r["entity_type"], r["entity_id"], r["hash"], r["change"])
        for r in rows
    ]
    if not changes:
        return LogSlice([])
    updates = await conflict_updates(conn, project_id, cursor, changes[-1].seq)
    return LogSlice(changes, updates)


@dataclass(slots=True)
class _Writes:
    """Everything one append transaction writes, planned before any write is issued."""

    change_rows: list[tuple[object, ...]]
    new_documents: list[tuple[object, ...]]
    updated_documents: list[tuple[object, ...]]
    read_models: dict[str, list[tuple[object, ...]]]
    cache_updates: list[tuple[str, CachedDocument]]


@dataclass(frozen=True, slots=True)
class _Push:
    """One push waiting for its group: decoded, and applied where it could be, before any
    lock."""

    batch: Sequence[EntityChanges]
    decoded: Sequence[DecodedChanges | Rejection]
    sender: str
    authorize: AuthorizeFactory | None
    applied: Mapping[str, Applied]  # entities whose changes were applied ahead


@dataclass(frozen=True, slots=True)
class _Appended:
    """One push of a group, planned and written (committed with the group)."""

    results: list[AppendResult]
    plan: SeqPlan
    conflicts: ConflictWrites


def _plan_writes(
    project_id: UUID, plan: SeqPlan, stored: Mapping[str, _StoredRow], sender: str
) -> _Writes:
    """Rows in the column order of ``_INSERT_CHANGES``, ``_INSERT_DOCUMENTS`` and
    ``_UPDATE_DOCUMENTS`` (after their project id)."""
    writes = _Writes([], [], [], defaultdict(list), [])
    for logged in plan.entities:
        merged = logged.merged
        entity_id, entity_type = logged.entity_id, logged.entity_type
        assert merged.document is not None
        for change, seq in zip(merged.new_changes, logged.seqs, strict=True):
            writes.change_rows.append(
                (seq, entity_type, entity_id, change.hash, change.actor, change.seq, change.data)
            )
        version = logged.version
        new_bytes = b"".join(c.data for c in merged.new_changes)
        count = len(merged.new_changes)
        ops = sum(c.op_count for c in merged.new_changes)
        heads = b"".join(merged.heads)
        row = stored.get(entity_id)
        if row is None:
            # Saved at once: a saved document loads about twice as fast as its change chunks,
            # and for a new (small) document saving costs a few microseconds.
            saved = save_document(merged.document)
            size = len(saved)
            writes.new_documents.append((entity_id, entity_type, heads, saved, count, version, ops))
        else:
            compact = should_compact(
                row.saved_bytes,
                row.tail_bytes + len(new_bytes),
                row.tail_changes + count,
                row.change_count + count,
            )
            saved = save_document(merged.document) if compact else b""
            tail = b"" if compact else new_bytes
            size = len(saved) if compact else row.saved_bytes + row.tail_bytes + len(new_bytes)
            writes.updated_documents.append(
                (entity_id, heads, compact, saved, tail, count, version, ops)
            )
        writes.read_models[entity_type].append(
            read_model_row(project_id, entity_type, entity_id, merged.values, version)
        )
        writes.cache_updates.append(
            (entity_id, CachedDocument(version, merged.document, size, merged.values))
        )
    return writes


async def _write(conn: Any, project_id: UUID, sender: str, writes: _Writes) -> None:
    """A push's rows, one statement per table (read models: per entity type)."""
    if not writes.change_rows:
        return
    await conn.execute(_INSERT_CHANGES, project_id, sender, *_columns(writes.change_rows, 7))
    if writes.new_documents:
        await conn.execute(_INSERT_DOCUMENTS, project_id, *_columns(writes.new_documents, 7))
    if writes.updated_documents:
        await conn.execute(_UPDATE_DOCUMENTS, project_id, *_columns(writes.updated_documents, 8))
    await upsert_read_models(conn, writes.read_models)


def _columns(rows: Sequence[tuple[object, ...]], width: int) -> list[list[object]]:
    """Rows turned into one array per column, for ``unnest``."""
    return [list(column) for column in zip(*rows, strict=True)] or [[] for _ in range(width)]
