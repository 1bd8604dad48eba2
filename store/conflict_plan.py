"""The conflict rules inside an append, and over a replayed log, for every storage.

After a push's entities are merged and their seqs planned, the rules run
(``docs/conflicts.md``, "Wiring into the store"): the single-entity rules on each merged
document, the cross-entity rules at every logged change that moves an entity's row, over
the committed rows of its neighbourhood (read by key, see ``conflict.neighbourhood``)
overlaid with the rows this push has produced so far. :func:`plan_conflicts` decides all of
it; the only thing it asks storage is what storage holds, through a
:class:`ConflictReader` (``store.conflicts`` reads PostgreSQL, ``store.memory`` its dicts),
so both implementations write identical rows. :class:`ConflictReplay` is the same over a
whole log, for the rebuild.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from automerge.core import Document

from fieldsync.conflict.cross import (
    ProjectRows,
    Row,
    RowIndex,
    cross_entity_conflicts,
    needed_rows,
    row_from_values,
)
from fieldsync.conflict.entity import entity_conflicts
from fieldsync.conflict.ledger import (
    OPEN,
    ROW_FIELDS,
    ConflictRow,
    Ledger,
    plan_cross,
    plan_entity,
    row_at,
    row_changes,
    rules_needed,
)
from fieldsync.conflict.neighbourhood import Lookups, lookups_for
from fieldsync.model.automerge_format.changes import ChangeHeader
from fieldsync.store.records import LoggedHash


@dataclass(frozen=True, slots=True)
class EntityMerge:
    """One entity a push changed: its merged document and the changes it newly logged."""

    entity_type: str
    entity_id: str
    document: Document
    heads_before: Sequence[bytes]
    values_before: Mapping[str, object] | None  # known when the document was cached
    new_changes: Sequence[ChangeHeader]
    seqs: Sequence[int]
    values: Mapping[str, object]  # the merged document's validated values


@dataclass(slots=True)
class ConflictWrites:
    """Rows to insert or replace, and ids to delete, in a project's conflict records."""

    upserts: list[ConflictRow] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)  # kinds of the conflicts found open now

    @property
    def touched(self) -> list[str]:
        return sorted({row.conflict_id for row in self.upserts} | set(self.deletes))


class ConflictReader(Protocol):
    """What the rules read from storage, inside the appending transaction, of one project."""

    async def rows_naming(self, entity_ids: Sequence[str]) -> list[ConflictRow]:
        """The conflict records naming any of ``entity_ids``."""

    async def logged(self, hashes: Sequence[bytes]) -> list[LoggedHash]:
        """Where the log holds those of ``hashes`` it holds."""

    async def rows(self, keys: Lookups) -> list[Row]:
        """The committed read-model rows ``keys`` ask for (``conflict.neighbourhood``)."""


async def plan_conflicts(
    reader: ConflictReader, merges: Sequence[EntityMerge], sender: str
) -> ConflictWrites:
    """The conflict record writes for one push, its entities in log order."""
    if not merges:
        return ConflictWrites()
    ids = [m.entity_id for m in merges]
    initial = {row.conflict_id: row for row in await reader.rows_naming(ids)}
    ledger = Ledger(initial.values())
    await _single_entity(reader, merges, sender, ledger)
    await _cross_entity(reader, merges, ledger)
    writes = ConflictWrites()
    for key in sorted(ledger.rows):
        row = ledger.rows[key]
        earlier = initial.get(key)
        if earlier != row:
            writes.upserts.append(row)
            if row.status == OPEN and (earlier is None or earlier.status != OPEN):
                writes.opened.append(row.kind)
    writes.deletes = sorted(set(initial) - set(ledger.rows))
    return writes


async def _single_entity(
    reader: ConflictReader, merges: Sequence[EntityMerge], sender: str, ledger: Ledger
) -> None:
    checked = [
        m
        for m in merges
        if rules_needed(m.heads_before, m.new_changes, ledger.entity_rows(m.entity_id))
    ]
    results = [
        entity_conflicts(m.entity_type, m.entity_id, None, m.document, m.new_changes)
        for m in checked
    ]
    seq_of: dict[str, int] = {}
    users: dict[str, str] = {}
    for merge in merges:
        for header, seq in zip(merge.new_changes, merge.seqs, strict=True):
            seq_of[header.hash.hex()] = seq
            users[header.hash.hex()] = sender
    named = {
        ref.hash
        for result in results
        for conflict in (*result.open, *(r.conflict for r in result.resolved))
        for ref in conflict.changes
    } | {r.change.hex() for result in results for r in result.resolved}
    older = sorted(named - set(seq_of))
    if older:
        for r in await reader.logged([bytes.fromhex(h) for h in older]):
            seq_of[r.hash.hex()] = r.seq
            users[r.hash.hex()] = r.sender
    for merge, result in zip(checked, results, strict=True):
        ledger.apply(plan_entity(result, ledger.entity_rows(merge.entity_id), seq_of), users)


async def _cross_entity(
    reader: ConflictReader, merges: Sequence[EntityMerge], ledger: Ledger
) -> None:
    steps: list[tuple[int, str, Row]] = []
    for merge in merges:
        if merge.entity_type not in ROW_FIELDS:
            continue
        if not merge.heads_before:
            before = None
        elif merge.values_before is not None:
            before = row_from_values(merge.entity_type, merge.entity_id, merge.values_before)
        else:
            before = row_at(merge.entity_type, merge.entity_id, merge.document, merge.heads_before)
        for index, row in row_changes(
            merge.entity_type,
            merge.entity_id,
            merge.document,
            merge.heads_before,
            merge.new_changes,
            before,
            row_from_values(merge.entity_type, merge.entity_id, merge.values),
        ):
            steps.append((merge.seqs[index], merge.entity_id, row))
    if not steps:
        return
    view = await _neighbourhood(reader, {e for _, e, _ in steps}, [r for *_, r in steps])
    for seq, entity_id, row in steps:
        view[entity_id] = row
        neighbourhood = needed_rows(ProjectRows.of(view.values()), [entity_id])
        found = cross_entity_conflicts(neighbourhood, [entity_id])
        ledger.apply(plan_cross(found, ledger.cross_rows([entity_id]), seq))


async def _neighbourhood(
    reader: ConflictReader, centres: set[str], versions: Sequence[Row]
) -> dict[str, Row]:
    """The committed rows around ``centres``, read by key until nothing new is asked."""
    known: dict[str, Row] = {}
    done = Lookups()
    while True:
        keys = lookups_for(centres, [*known.values(), *versions]) - done
        if not keys:
            return known
        done = done | keys
        for row in await reader.rows(keys):
            known[row.entity_id] = row


class ConflictReplay:
    """The conflict rules over a replayed log, exactly as the append path applies them:
    the single-entity rules on each replayed document with all of its changes as new, and
    the cross-entity rules at every logged change that moves an entity's row, in seq order,
    over every row of the project."""

    def __init__(self) -> None:
        self.ledger = Ledger()
        self.steps: list[tuple[int, str, Row]] = []

    def entity(
        self,
        entity_type: str,
        entity_id: str,
        document: Document,
        headers: Sequence[ChangeHeader],
        seqs: Sequence[int],
        senders: Sequence[str],
    ) -> None:
        seq_of = {h.hash.hex(): seq for h, seq in zip(headers, seqs, strict=True)}
        users = {h.hash.hex(): s for h, s in zip(headers, senders, strict=True)}
        result = entity_conflicts(entity_type, entity_id, None, document, headers)
        plan = plan_entity(result, self.ledger.entity_rows(entity_id), seq_of)
        self.ledger.apply(plan, users)
        if entity_type in ROW_FIELDS:
            for index, state in row_changes(entity_type, entity_id, document, [], headers, None):
                self.steps.append((seqs[index], entity_id, state))

    def finish(self) -> Ledger:
        """Re-check the cross-entity rules at each row change, in log order."""
        index = RowIndex()
        for seq, entity_id, row in sorted(self.steps, key=lambda step: step[0]):
            index.put(row)
            found = cross_entity_conflicts(index.needed([entity_id]), [entity_id])
            self.ledger.apply(plan_cross(found, self.ledger.cross_rows([entity_id]), seq))
        return self.ledger


def rebuild_writes(before: Mapping[str, ConflictRow], ledger: Ledger) -> ConflictWrites:
    """Only the rows that differ from the replayed ones are written (or deleted)."""
    return ConflictWrites(
        [row for key, row in sorted(ledger.rows.items()) if before.get(key) != row],
        sorted(set(before) - set(ledger.rows)),
    )
