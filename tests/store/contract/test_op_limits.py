"""Ops are bounded apart from bytes: a change of a hundred bytes can declare 200,000 ops.

Applied, such a change costs megabytes and a second of CPU (with the GIL held); a push of
a thousand of them would stall the server for minutes. Changes, pushes and documents are
refused by their op count, read from the change's columns before anything is applied.
"""

from __future__ import annotations

import time
import uuid

from automerge.core import ROOT, Document, ObjType, ScalarType

from fieldsync.model.automerge_format.changes import parse_change
from fieldsync.model.limits import Limits
from fieldsync.model.merge import EntityChanges
from fieldsync.model.rejections import RejectCode
from fieldsync.model.writer import create_entity, update_entity
from fieldsync.store.ports import Storage
from fieldsync.store.records import Accepted, Rejected
from tests.entities import location_values, new_id
from tests.store.contract.inspect import Inspector


def null_list_bomb(items: int) -> bytes:
    """A change putting a list of ``items`` nulls: a few run-length columns, tiny bytes."""
    doc = Document()
    with doc.transaction() as tx:
        nulls = tx.put_object(ROOT, "bomb", ObjType.List)
        for index in range(items):
            tx.insert(nulls, index, ScalarType.Null, None)
    change = doc.get_last_local_change()
    assert change is not None
    return change.bytes


async def test_a_tiny_change_declaring_many_ops_is_refused_before_it_is_applied(
    storage: Storage, inspector: Inspector, project: uuid.UUID
) -> None:
    bomb = null_list_bomb(300_000)
    assert len(bomb) < 200
    log = storage.change_log()
    before = await inspector.state(project)
    started = time.monotonic()
    [result] = await log.append(project, [EntityChanges("location", new_id(), [bomb])], "u")
    assert time.monotonic() - started < 0.5  # applying it alone takes about 1.5 s
    assert isinstance(result, Rejected)
    assert result.rejection.code is RejectCode.TOO_MANY_OPS
    assert result.rejection.details == {"index": 0, "limit": Limits().max_ops_per_change}
    assert await inspector.state(project) == before


async def test_a_push_is_bounded_in_ops_and_later_entities_wait_for_another_push(
    storage: Storage, project: uuid.UUID
) -> None:
    _, first = create_entity("location", location_values(1))
    _, second = create_entity("location", location_values(2))
    ops = parse_change(first).op_count
    log = storage.change_log(limits=Limits(max_ops_per_push=ops + 1))
    a, b = new_id(), new_id()
    batch = [EntityChanges("location", a, [first]), EntityChanges("location", b, [second])]
    results = await log.append(project, batch, "u")
    assert results[0] == Accepted(a, (1,))
    assert isinstance(results[1], Rejected)
    assert results[1].rejection.code is RejectCode.TOO_MANY_OPS
    assert "later push" in results[1].rejection.message
    assert await log.append(project, [EntityChanges("location", b, [second])], "u") == [
        Accepted(b, (2,))
    ]


async def test_a_document_is_bounded_in_ops_over_its_history(
    storage: Storage, inspector: Inspector, project: uuid.UUID
) -> None:
    doc, created = create_entity("location", location_values())
    limit = parse_change(created).op_count + 2
    log = storage.change_log(limits=Limits(max_document_ops=limit))
    entity = new_id()
    assert await log.append(project, [EntityChanges("location", entity, [created])], "u") == [
        Accepted(entity, (1,))
    ]
    rename = update_entity(doc, "location", {"name": "Depot"})
    assert parse_change(rename).op_count <= 2
    assert await log.append(project, [EntityChanges("location", entity, [rename])], "u") == [
        Accepted(entity, (2,))
    ]
    again = update_entity(doc, "location", {"name": "Depot north", "address": "Gate 4"})
    [refused] = await log.append(project, [EntityChanges("location", entity, [again])], "u")
    assert isinstance(refused, Rejected)
    assert refused.rejection.code is RejectCode.DOCUMENT_TOO_LARGE
    assert refused.rejection.details["limit_ops"] == limit
    stored = await inspector.document(entity)
    assert stored is not None
    assert stored.op_count == parse_change(created).op_count + parse_change(rename).op_count
