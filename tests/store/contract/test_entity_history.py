"""An entity's history has one root, and a change belongs to one entity.

A client that pushes another entity's changes under its own entity (its creation change, a
later edit of it, or a change built on it) must be refused: otherwise the change is logged
twice and Automerge merges the other entity's content into this one.
"""

from __future__ import annotations

import uuid

from fieldsync.model.merge import EntityChanges
from fieldsync.model.rejections import RejectCode
from fieldsync.model.writer import create_entity, update_entity
from fieldsync.store.ports import ChangeLogPort
from fieldsync.store.records import Accepted, Rejected
from tests.entities import activity_values, new_id
from tests.store.contract.inspect import Inspector


async def created(log: ChangeLogPort, project: uuid.UUID) -> tuple[str, bytes, object]:
    entity = new_id()
    doc, first = create_entity("activity", activity_values(new_id(), title="X's own title"))
    [result] = await log.append(project, [EntityChanges("activity", entity, [first])], "u")
    assert isinstance(result, Accepted)
    return entity, first, doc


async def refused(
    log: ChangeLogPort, project: uuid.UUID, entity: str, changes: list[bytes]
) -> Rejected:
    [result] = await log.append(project, [EntityChanges("activity", entity, changes)], "u")
    assert isinstance(result, Rejected), result
    return result


async def test_another_entitys_creation_change_is_refused_under_a_new_entity(
    inspector: Inspector, log: ChangeLogPort, project: uuid.UUID
) -> None:
    x, x_root, _ = await created(log, project)
    before = await inspector.state(project)
    y = new_id()
    result = await refused(log, project, y, [x_root])
    assert result.rejection.code is RejectCode.FOREIGN_CHANGE
    assert result.rejection.details["entity_id"] == x
    assert result.rejection.details["index"] == 0
    assert await inspector.state(project) == before


async def test_another_entitys_creation_change_is_refused_under_an_existing_entity(
    inspector: Inspector, log: ChangeLogPort, project: uuid.UUID
) -> None:
    x, x_root, _ = await created(log, project)
    y, _, _ = await created(log, project)
    before = await inspector.state(project)
    result = await refused(log, project, y, [x_root])
    assert result.rejection.code is RejectCode.FOREIGN_CHANGE
    assert result.rejection.details["entity_id"] == x
    assert await inspector.state(project) == before


async def test_a_change_built_on_another_entity_is_refused(
    inspector: Inspector, log: ChangeLogPort, project: uuid.UUID
) -> None:
    x, _, x_doc = await created(log, project)
    y, _, _ = await created(log, project)
    edit_of_x = update_entity(x_doc, "activity", {"title": "taken over"})  # type: ignore[arg-type]
    before = await inspector.state(project)
    result = await refused(log, project, y, [edit_of_x])
    assert result.rejection.code is RejectCode.FOREIGN_CHANGE
    assert result.rejection.details["entity_id"] == x
    assert await inspector.state(project) == before
    # The edit is still fine where it belongs.
    [ok] = await log.append(project, [EntityChanges("activity", x, [edit_of_x])], "u")
    assert isinstance(ok, Accepted)


async def test_a_second_root_is_refused_for_an_existing_entity(
    inspector: Inspector, log: ChangeLogPort, project: uuid.UUID
) -> None:
    y, _, _ = await created(log, project)
    _, unrelated_root = create_entity("activity", activity_values(new_id()))
    before = await inspector.state(project)
    result = await refused(log, project, y, [unrelated_root])
    assert result.rejection.code is RejectCode.UNRELATED_HISTORY
    assert await inspector.state(project) == before


async def test_two_roots_for_a_new_entity_are_refused(
    inspector: Inspector, log: ChangeLogPort, project: uuid.UUID
) -> None:
    _, root_a = create_entity("activity", activity_values(new_id()))
    _, root_b = create_entity("activity", activity_values(new_id()))
    before = await inspector.state(project)
    result = await refused(log, project, new_id(), [root_a, root_b])
    assert result.rejection.code is RejectCode.UNRELATED_HISTORY
    assert result.rejection.details["index"] == 1
    assert await inspector.state(project) == before


async def test_one_push_cannot_log_a_change_under_two_entities(
    inspector: Inspector, log: ChangeLogPort, project: uuid.UUID
) -> None:
    _, root = create_entity("activity", activity_values(new_id()))
    first, second = new_id(), new_id()
    results = await log.append(
        project,
        [EntityChanges("activity", first, [root]), EntityChanges("activity", second, [root])],
        "u",
    )
    assert results[0] == Accepted(first, (1,))
    assert isinstance(results[1], Rejected)
    assert results[1].rejection.code is RejectCode.FOREIGN_CHANGE
    assert results[1].rejection.details["entity_id"] == first


async def test_a_retry_under_the_right_entity_still_returns_its_seq(
    log: ChangeLogPort, project: uuid.UUID
) -> None:
    x, x_root, _ = await created(log, project)
    assert await log.append(project, [EntityChanges("activity", x, [x_root])], "u") == [
        Accepted(x, (1,))
    ]
