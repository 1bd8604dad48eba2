"""Who may enter a project, and what a member may write: the membership port, and the write
rule an append applies for ``as_member`` (read in the same transaction as the merge)."""

from __future__ import annotations

import uuid

from fieldsync.model.merge import EntityChanges
from fieldsync.model.rejections import RejectCode
from fieldsync.model.writer import create_entity, update_entity
from fieldsync.store.ports import ChangeLogPort, Storage
from fieldsync.store.records import Accepted, Rejected
from tests.entities import activity_values, location_values, new_id, summoning_values
from tests.store.contract.conftest import new_member


async def test_levels_and_memberships(
    storage: Storage, project: uuid.UUID, other_project: uuid.UUID
) -> None:
    lead = await new_member(storage, project, "lead")
    viewer = await new_member(storage, project, "viewer")
    await storage.admin.add_member(other_project, viewer, "specialist")
    membership = storage.membership
    assert await membership.level(project, lead) == "lead"
    assert await membership.level(project, viewer) == "viewer"
    assert await membership.level(other_project, viewer) == "specialist"
    assert await membership.level(other_project, lead) is None
    assert await membership.level(uuid.uuid4(), lead) is None  # no such project
    assert await membership.level(project, uuid.uuid4()) is None  # no such user
    stranger, nowhere = uuid.uuid4(), uuid.uuid4()
    asked = [(project, lead), (project, viewer), (other_project, viewer), (other_project, lead),
             (nowhere, lead), (project, stranger), (project, lead)]  # fmt: skip
    assert await membership.levels(asked) == {
        (project, lead): "lead",
        (project, viewer): "viewer",
        (other_project, viewer): "specialist",
    }
    assert await membership.levels([]) == {}
    both = [project, other_project, uuid.uuid4()]
    assert await membership.still_member_of(viewer, both) == {project, other_project}
    assert await membership.still_member_of(lead, both) == {project}
    await storage.admin.remove_member(project, viewer)
    assert await membership.still_member_of(viewer, both) == {other_project}
    assert await membership.still_member_of(viewer, []) == set()


async def _rejected(log: ChangeLogPort, project: uuid.UUID, user: uuid.UUID,
                    item: EntityChanges) -> RejectCode:  # fmt: skip
    [result] = await log.append(project, [item], str(user), as_member=user)
    assert isinstance(result, Rejected), result
    return result.rejection.code


async def test_a_push_as_a_member_follows_the_write_rules(
    storage: Storage, log: ChangeLogPort, project: uuid.UUID
) -> None:
    lead = await new_member(storage, project, "lead")
    specialist = await new_member(storage, project, "specialist")
    summoned, elsewhere, role = new_id(), new_id(), new_id()
    summoned_doc, summoned_root = create_entity("activity", activity_values(new_id()))
    other_doc, other_root = create_entity("activity", activity_values(new_id()))
    _, summoning_root = create_entity(
        "summoning", {**summoning_values(summoned, role), "user_id": str(specialist)}
    )
    results = await log.append(
        project,
        [
            EntityChanges("activity", summoned, [summoned_root]),
            EntityChanges("activity", elsewhere, [other_root]),
            EntityChanges("summoning", new_id(), [summoning_root]),
        ],
        str(lead),
        as_member=lead,
    )
    assert all(isinstance(r, Accepted) for r in results), results

    # Summoned to one activity: may edit its status, not the other's, and create nothing.
    ok = update_entity(summoned_doc, "activity", {"status": "confirmed"})
    assert await log.append(
        project, [EntityChanges("activity", summoned, [ok])], str(specialist), as_member=specialist
    ) == [Accepted(summoned, (4,))]
    refused = update_entity(other_doc, "activity", {"status": "confirmed"})
    assert (
        await _rejected(log, project, specialist, EntityChanges("activity", elsewhere, [refused]))
        is RejectCode.FORBIDDEN_ENTITY
    )
    plan_moved = update_entity(summoned_doc, "activity", {"plan_id": "another-plan"})
    assert (
        await _rejected(log, project, specialist, EntityChanges("activity", summoned, [plan_moved]))
        is RejectCode.FORBIDDEN_FIELD
    )
    _, location = create_entity("location", location_values())
    assert (
        await _rejected(log, project, specialist, EntityChanges("location", new_id(), [location]))
        is RejectCode.FORBIDDEN_CREATE
    )
    # Without as_member nothing is checked (the server's own writes, the demo).
    assert await log.append(project, [EntityChanges("activity", elsewhere, [refused])], "s") == [
        Accepted(elsewhere, (5,))
    ]


async def test_a_member_removed_before_the_push_commits_is_refused(
    storage: Storage, log: ChangeLogPort, project: uuid.UUID
) -> None:
    lead = await new_member(storage, project, "lead")
    await storage.admin.remove_member(project, lead)
    _, created = create_entity("location", location_values())
    assert (
        await _rejected(log, project, lead, EntityChanges("location", new_id(), [created]))
        is RejectCode.MEMBERSHIP_REMOVED
    )
    assert await log.head(project) == 0
