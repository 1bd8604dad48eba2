"""The pure work per change of the ``ingest_ws.py`` workload, timed without any I/O.

The same 1,000 entities x 11 changes, cut into the same pushes (10 entities each, in three
rounds), go through the planning an append does, in one tight loop, three times over:

1. decode: ``prepare_batch`` (the bytes parsed and checked, before any lock);
2. merge: decode, then ``merge_batch`` onto the documents the previous rounds produced
   (Automerge apply and schema validation of every merged document);
3. whole append: the in-memory storage's ``append`` (decode, merge, seqs, the conflict
   rules, writes into dicts): every decision the PostgreSQL store makes, without its I/O.

Times are this process's CPU time (the machine may be shared). Each stage's time
divided by the changes gives the floor of the server's CPU per change for that part;
10,000 changes/s on one core leaves 100 us per change for everything.

    python bench/ingest_floor.py
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import EntityHistory, entity_history, reference_ids
from ingest_ws import CHANGES_PER_ENTITY, ENTITIES, ENTITIES_PER_PUSH, KINDS, ROUNDS

from fieldsync.model.limits import DEFAULT_LIMITS
from fieldsync.model.merge import DecodedChanges, EntityChanges, Merged, StoredEntity
from fieldsync.store.append_plan import merge_batch, prepare_batch
from fieldsync.store.memory import MemoryStorage
from fieldsync.store.records import Accepted

PROJECT = uuid.uuid4()


def pushes(histories: Sequence[EntityHistory]) -> list[list[EntityChanges]]:
    out = []
    for round_index, size in enumerate(ROUNDS):
        first = sum(ROUNDS[:round_index])
        for start in range(0, len(histories), ENTITIES_PER_PUSH):
            out.append(
                [
                    EntityChanges(e.entity_type, e.entity_id, e.changes[first : first + size])
                    for e in histories[start : start + ENTITIES_PER_PUSH]
                ]
            )
    return out


def decode_only(batches: Sequence[list[EntityChanges]]) -> float:
    started = time.process_time()
    for batch in batches:
        prepare_batch(batch, DEFAULT_LIMITS)
    return time.process_time() - started


def decode_and_merge(batches: Sequence[list[EntityChanges]]) -> float:
    stored: dict[str, StoredEntity] = {}
    logged: dict[str, dict[bytes, int]] = {}
    seq = 0
    started = time.process_time()
    for batch in batches:
        decoded = prepare_batch(batch, DEFAULT_LIMITS)
        rows = {
            d.entity_id: _Row(stored[d.entity_id])
            for d in decoded
            if isinstance(d, DecodedChanges) and d.entity_id in stored
        }
        for outcome in merge_batch(PROJECT, decoded, rows, logged, {}, DEFAULT_LIMITS):
            assert isinstance(outcome, Merged), outcome
            entity_id = outcome.decoded.entity_id
            known = logged.setdefault(entity_id, {})
            for change in outcome.new_changes:
                seq += 1
                known[change.hash] = seq
            assert outcome.document is not None
            stored[entity_id] = StoredEntity(
                PROJECT, outcome.decoded.entity_type, seq, outcome.heads, 0, outcome.document
            )
    return time.process_time() - started


class _Row:
    def __init__(self, entity: StoredEntity) -> None:
        self.entity = entity
        self.values = None


async def whole_append(batches: Sequence[list[EntityChanges]]) -> float:
    storage = MemoryStorage()
    account = await storage.admin.create_account("floor")
    project = await storage.admin.create_project(account, "floor")
    log = storage.change_log()
    started = time.process_time()
    for batch in batches:
        for result in await log.append(project, batch, "bench"):
            assert isinstance(result, Accepted), result
    return time.process_time() - started


def main() -> None:
    changes = ENTITIES * CHANGES_PER_ENTITY
    results: dict[str, list[float]] = {"decode": [], "decode + merge": [], "whole append": []}
    for _ in range(3):
        refs = reference_ids()
        histories = [
            entity_history(KINDS[i % len(KINDS)], i, refs, CHANGES_PER_ENTITY)
            for i in range(ENTITIES)
        ]
        batches = pushes(histories)
        results["decode"].append(decode_only(batches))
        results["decode + merge"].append(decode_and_merge(batches))
        results["whole append"].append(asyncio.run(whole_append(batches)))
    for name, times in results.items():
        best = min(times)
        per_change = 1e6 * best / changes
        print(f"{name}: best of 3 {best:.2f} s CPU for {changes} changes, {per_change:.0f} us each")
    merge = 1e6 * min(results["decode + merge"]) / changes
    whole = 1e6 * min(results["whole append"]) / changes
    print(f"ingest floor (CPU, no I/O): decode + merge {merge:.0f} us/change, all {whole:.0f} us")


if __name__ == "__main__":
    main()
