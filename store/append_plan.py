"""Planning one push, the same for every storage: the decisions of an append, as pure
functions around ``model.merge``.

An implementation (``store.changelog`` on PostgreSQL, ``store.memory``) does only the
waiting and the writing; every decision is made here, in this order:

1. :func:`prepare_batch`, before any lock: the batch limit, each entity's bytes decoded,
   an entity named twice refused, the push's op budget; a store may also apply the
   changes ahead onto the documents it has cached (``model.merge.preapply``), which the
   merge then uses if they are still current.
2. Under the project's lock, with what storage holds for the pushed entities and hashes:
   :func:`merge_batch` (``model.merge.merge_entity`` per entity, a change taken by one
   entity refused for a later one), :func:`authorize_all` with the writer's rule
   (:func:`writer_rule`), :func:`assign_seqs` (gapless, in push order), then the conflict
   rules over :func:`entity_merges` (``store.conflict_plan``).
3. After the commit: :func:`results` for the pusher, :func:`tell_observers` for the app.

So two implementations given the same stored state make the same decisions, and the
contract suite (``tests/store/contract``) checks that they store the same outcome.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from fieldsync.model.entities import SERVER_AUTHORED
from fieldsync.model.limits import Limits
from fieldsync.model.merge import (
    Applied,
    DecodedChanges,
    EntityChanges,
    Merged,
    StoredEntity,
    decode_entity_changes,
    keep_within_push_ops,
    merge_entity,
)
from fieldsync.model.permissions import (
    WriteCheck,
    Writer,
    check_write,
    may_write_everything,
    write_check,
)
from fieldsync.model.rejections import RejectCode, Rejection
from fieldsync.store.conflict_plan import ConflictWrites, EntityMerge
from fieldsync.store.errors import BatchTooLarge
from fieldsync.store.records import (
    Accepted,
    AppendResult,
    ConflictUpdate,
    LoggedChange,
    LoggedHash,
    LogSlice,
    Rejected,
)

log = logging.getLogger(__name__)

Outcome = Merged | Rejection

Authorize = Callable[[WriteCheck], Rejection | None]
"""Decides whether one merged entity may be written; a Rejection replaces the merge."""

OnCommit = Callable[[UUID, LogSlice], None]
"""Hears, right after each commit, the changes it newly logged and the conflict rows it
changed."""

REMOVED = Rejection(
    RejectCode.MEMBERSHIP_REMOVED,
    "you are no longer a member of this project (removed while this push was on its way)",
)


class Stored(Protocol):
    """What storage holds for one pushed entity, read under the project's lock."""

    @property
    def entity(self) -> StoredEntity: ...

    @property
    def values(self) -> Mapping[str, object] | None:
        """The document's validated values when known without reading it again."""


@dataclass(frozen=True, slots=True)
class StoredState:
    entity: StoredEntity
    values: Mapping[str, object] | None


@dataclass(frozen=True, slots=True)
class CommitObservers:
    """What the app hears of each commit: for the metrics (``on_append``: project, new head,
    changes appended; ``on_conflicts_found``: kinds of the conflicts found open) and for
    the live fan-out (``on_commit``)."""

    on_append: Callable[[UUID, int, int], None] | None = None
    on_conflicts_found: Callable[[Sequence[str]], None] | None = None
    on_commit: OnCommit | None = None


def prepare_batch(
    batch: Sequence[EntityChanges], limits: Limits
) -> list[DecodedChanges | Rejection]:
    """Everything decided from the bytes alone, before any lock; raises BatchTooLarge."""
    if len(batch) > limits.max_entities_per_batch:
        raise BatchTooLarge(len(batch), limits.max_entities_per_batch)
    decoded = [decode_entity_changes(item, limits) for item in batch]
    _reject_repeated_entities(batch, decoded)
    keep_within_push_ops(decoded, limits)
    return decoded


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


def decoded_only(decoded: Sequence[DecodedChanges | Rejection]) -> list[DecodedChanges]:
    """The entities still in the running after :func:`prepare_batch`."""
    return [d for d in decoded if isinstance(d, DecodedChanges)]


def asked_hashes(valid: Sequence[DecodedChanges]) -> list[bytes]:
    """The hashes to look up in the log: every pushed change and every dependency."""
    asked = {c.hash for d in valid for c in d.unique} | {
        dep for d in valid for c in d.unique for dep in c.deps
    }
    return list(asked)


def index_logged(
    found: Iterable[LoggedHash],
) -> tuple[dict[str, dict[bytes, int]], dict[bytes, str]]:
    """Which of the asked hashes the log holds: per entity, hash -> seq; and for all of them,
    hash -> the entity that owns it (a hash is unique in a project)."""
    logged: dict[str, dict[bytes, int]] = defaultdict(dict)
    owners: dict[bytes, str] = {}
    for r in found:
        logged[r.entity_id][r.hash] = r.seq
        owners.setdefault(r.hash, r.entity_id)
    return logged, owners


def merge_batch(
    project_id: UUID,
    decoded: Sequence[DecodedChanges | Rejection],
    stored: Mapping[str, Stored],
    logged: Mapping[str, Mapping[bytes, int]],
    owners: Mapping[bytes, str],
    limits: Limits,
    applied: Mapping[str, Applied] | None = None,
) -> list[Outcome]:
    """Each entity merged into what storage holds, in push order; ``applied``: the changes
    of some entities applied before the lock (``model.merge.preapply``), by entity id."""
    taken = dict(owners)
    outcomes: list[Outcome] = []
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
            limits,
            _owned_elsewhere(item, taken),
            applied.get(item.entity_id) if applied is not None else None,
        )
        if isinstance(outcome, Merged):
            # Taken by this entity: a later entity of the push may not log them too.
            for change in outcome.new_changes:
                taken[change.hash] = item.entity_id
        outcomes.append(outcome)
    return outcomes


def _owned_elsewhere(item: DecodedChanges, owners: Mapping[bytes, str]) -> dict[bytes, str]:
    """The hashes ``item`` names (its changes and their deps) owned by other entities."""
    named = {c.hash for c in item.unique} | {dep for c in item.unique for dep in c.deps}
    return {
        h: owner for h in named if (owner := owners.get(h)) is not None and owner != item.entity_id
    }


def writer_rule(writer: Writer | None) -> Authorize | None:
    """The rule for a writer as storage knows them now (None: no longer a member); None
    means they may write everything, so no entity needs its values compared."""
    if writer is None:
        return lambda check: REMOVED
    if may_write_everything(writer.level):
        return None
    return lambda check: check_write(writer, check)


def refuse_server_authored(outcomes: Sequence[Outcome]) -> list[Outcome]:
    """A member's push of a server-authored entity type (attachments: their status is the
    server's word) refused, whatever the member's level; the server's own appends pass no
    member and are not filtered."""
    return [
        Rejection(
            RejectCode.FORBIDDEN_ENTITY,
            f"{o.decoded.entity_type} entities are written by the server only",
            {"entity_type": o.decoded.entity_type},
        )
        if isinstance(o, Merged) and o.new_changes and o.decoded.entity_type in SERVER_AUTHORED
        else o
        for o in outcomes
    ]


def authorize_all(
    outcomes: Sequence[Outcome], stored: Mapping[str, Stored], rule: Authorize
) -> list[Outcome]:
    """Every merge that logs new changes checked against ``rule`` (values before and after)."""
    return [_authorized(outcome, stored, rule) for outcome in outcomes]


def _authorized(outcome: Outcome, stored: Mapping[str, Stored], rule: Authorize) -> Outcome:
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


@dataclass(frozen=True, slots=True)
class LoggedEntity:
    """An entity whose merge logs new changes, with the seqs they get."""

    merged: Merged
    seqs: tuple[int, ...]  # of ``merged.new_changes``, consecutive

    @property
    def entity_type(self) -> str:
        return self.merged.decoded.entity_type

    @property
    def entity_id(self) -> str:
        return self.merged.decoded.entity_id

    @property
    def version(self) -> int:
        """The seq of the entity's latest logged change, after this push."""
        return self.seqs[-1]


@dataclass(frozen=True, slots=True)
class SeqPlan:
    """The seqs of one push: new changes numbered from the head in push order (each
    entity's in dependency order); already-logged ones keep their original seqs."""

    head: int  # after this push
    entities: tuple[LoggedEntity, ...]
    seqs: Mapping[tuple[str, bytes], int]  # (entity id, hash) -> seq, for every accepted hash

    def logged_changes(self) -> list[LoggedChange]:
        return [
            LoggedChange(seq, e.entity_type, e.entity_id, change.hash, change.data)
            for e in self.entities
            for change, seq in zip(e.merged.new_changes, e.seqs, strict=True)
        ]


def assign_seqs(head: int, outcomes: Sequence[Outcome]) -> SeqPlan:
    seqs: dict[tuple[str, bytes], int] = {}
    entities = []
    for outcome in outcomes:
        if isinstance(outcome, Rejection):
            continue
        entity_id = outcome.decoded.entity_id
        for h, seq in outcome.logged_seqs.items():
            seqs[(entity_id, h)] = seq
        if not outcome.new_changes:
            continue
        assert outcome.document is not None
        numbered = tuple(range(head + 1, head + 1 + len(outcome.new_changes)))
        head = numbered[-1]
        for change, seq in zip(outcome.new_changes, numbered, strict=True):
            seqs[(entity_id, change.hash)] = seq
        entities.append(LoggedEntity(outcome, numbered))
    return SeqPlan(head, tuple(entities), seqs)


def entity_merges(plan: SeqPlan, stored: Mapping[str, Stored]) -> list[EntityMerge]:
    """The entities that logged new changes, in log order, for the conflict rules."""
    merges = []
    for logged in plan.entities:
        merged = logged.merged
        assert merged.document is not None
        row = stored.get(logged.entity_id)
        merges.append(
            EntityMerge(
                logged.entity_type,
                logged.entity_id,
                merged.document,
                row.entity.heads if row is not None else (),
                row.values if row is not None else None,
                merged.new_changes,
                logged.seqs,
                merged.values,
            )
        )
    return merges


def results(
    batch: Sequence[EntityChanges],
    outcomes: Sequence[Outcome],
    seqs: Mapping[tuple[str, bytes], int],
) -> list[AppendResult]:
    """One result per pushed entity, in push order; seqs in the order the changes came."""
    answers: list[AppendResult] = []
    for item, outcome in zip(batch, outcomes, strict=True):
        if isinstance(outcome, Rejection):
            answers.append(Rejected(item.entity_id, outcome))
        else:
            answers.append(
                Accepted(
                    item.entity_id,
                    tuple(seqs[(item.entity_id, h)] for h in outcome.decoded.hash_per_input),
                )
            )
    return answers


def conflict_updates_of(head: int, conflicts: ConflictWrites) -> list[ConflictUpdate]:
    """The conflict updates a commit ending at ``head`` sends with its changes."""
    return [
        *(ConflictUpdate(head, key, None) for key in conflicts.deletes),
        *(ConflictUpdate(head, row.conflict_id, row) for row in conflicts.upserts),
    ]


def tell_observers(
    observers: CommitObservers, project_id: UUID, plan: SeqPlan, conflicts: ConflictWrites
) -> None:
    """After the commit: the metrics, then the live fan-out (which never fails the push)."""
    if observers.on_append is not None:
        observers.on_append(project_id, plan.head, sum(len(e.seqs) for e in plan.entities))
    if observers.on_conflicts_found is not None and conflicts.opened:
        observers.on_conflicts_found(conflicts.opened)
    if observers.on_commit is not None and plan.entities:
        try:
            observers.on_commit(
                project_id,
                LogSlice(plan.logged_changes(), conflict_updates_of(plan.head, conflicts)),
            )
        except Exception:
            # The changes are committed; a failing listener must not turn that into an
            # error for the pusher. Live readers also find them by cursor.
            log.exception("on_commit hook failed for project %s", project_id)
