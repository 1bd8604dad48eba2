"""The permission matrix over a real server: each level x each entity type x read, create,
edit and delete, with the expected answer and code; then the specialist's finer rules.

One server and one project for the module. The lead creates a target entity for every cell
up front (one push), so cells never depend on each other's order: each write cell touches
its own entity. Writers keep one connection each for the whole module.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import pytest
from automerge.core import Document

from fieldsync.model.entities import SCHEMAS, SERVER_AUTHORED
from fieldsync.model.writer import create_entity, update_entity
from fieldsync.sync.errors import ErrorCode
from fieldsync.sync.messages import (
    EntityAccepted,
    EntityPush,
    EntityRejected,
    Error,
    ProjectCursor,
    Push,
    PushResult,
)
from tests.entities import (
    activity_values,
    location_values,
    membership_values,
    new_id,
    plan_values,
    role_values,
    summoning_values,
)
from tests.live_server import TEST_SECRET
from tests.sync_client import SyncClient

LEVELS = ("lead", "specialist", "viewer")
# Server-authored types (attachments) are refused to every member before the rules run:
# tests/media/test_attachments_http.py and tests/model/test_permissions.py show it.
TYPES = tuple(sorted(set(SCHEMAS) - SERVER_AUTHORED))
WRITES = ("edit", "delete")

# The field each edit cell changes, and its new value.
EDITS: dict[str, tuple[str, object]] = {
    "project_settings": ("timezone", "Europe/Berlin"),
    "plan": ("name", "Autumn survey"),
    "activity": ("status", "confirmed"),
    "location": ("name", "Site renamed"),
    "role": ("name", "Surveyor"),
    "summoning": ("status", "confirmed"),
    "membership": ("display_name", "Ana F."),
}

# What each level may do; anything else is refused with the code given.
ALLOWED_EDITS = {"lead": set(TYPES), "specialist": {"activity", "summoning"}, "viewer": set()}


@dataclass
class World:
    project: uuid.UUID
    users: dict[str, uuid.UUID]
    clients: dict[str, SyncClient]
    # (level, entity_type, write) -> (entity id, its document as the lead created it)
    targets: dict[tuple[str, str, str], tuple[str, Document]] = field(default_factory=dict)
    plan_id: str = ""
    push_ids: dict[str, int] = field(default_factory=dict)

    async def push(self, level: str, *entities: EntityPush) -> PushResult | Error:
        client = self.clients[level]
        push_id = self.push_ids[level] = self.push_ids.get(level, 0) + 1
        await client.send(Push(push_id, str(self.project), entities))
        answer = await client.next_unabsorbed()
        assert isinstance(answer, PushResult | Error), answer
        assert answer.push_id == push_id, answer
        return answer


def values_for(entity_type: str, plan_id: str, user_id: str | None = None) -> dict[str, object]:
    """Valid values of a new entity of ``entity_type``; summonings of ``user_id`` if given."""
    if entity_type == "project_settings":
        return {"name": "Moraine survey", "timezone": "Europe/Zurich"}
    if entity_type == "plan":
        return plan_values()
    if entity_type == "activity":
        return activity_values(plan_id)
    if entity_type == "location":
        return location_values()
    if entity_type == "role":
        return role_values()
    if entity_type == "summoning":
        values = summoning_values(new_id(), new_id())
        if user_id is not None:
            values["user_id"] = user_id
        return values
    return membership_values(str(uuid.uuid4()))


async def _project_with_members(pool: asyncpg.Pool) -> tuple[uuid.UUID, dict[str, uuid.UUID]]:
    from fieldsync.store.projects import add_member, create_account, create_project, create_user

    async with pool.acquire() as conn:
        account = await create_account(conn, "Matrix account")
        project = await create_project(conn, account, "Matrix project")
        users = {}
        for level in LEVELS:
            users[level] = await create_user(conn, f"Matrix {level}", account)
            await add_member(conn, project, users[level], level)
    return project, users


def token(user_id: uuid.UUID) -> str:
    from fieldsync.auth.tokens import issue_token

    return issue_token(TEST_SECRET, user_id)


@pytest.fixture(scope="module")
async def world(sync_server: str, pool: asyncpg.Pool) -> AsyncIterator[World]:
    project, users = await _project_with_members(pool)
    clients = {}
    for level in LEVELS:
        clients[level] = await SyncClient.connect(sync_server)
        await clients[level].hello(token(users[level]))
    world = World(project, users, clients)
    specialist = str(users["specialist"])
    _, plan_change = create_entity("plan", plan_values("Matrix plan"))
    world.plan_id = new_id()
    pushes = [EntityPush("plan", world.plan_id, (plan_change,))]
    for level in LEVELS:
        for entity_type in TYPES:
            for write in WRITES:
                # A specialist's targets are theirs: an activity they are summoned to, a
                # summoning of them. So the matrix shows what their level allows at best.
                own = specialist if level == "specialist" else None
                entity_id = new_id()
                doc, change = create_entity(
                    entity_type, values_for(entity_type, world.plan_id, own)
                )
                world.targets[(level, entity_type, write)] = (entity_id, doc)
                pushes.append(EntityPush(entity_type, entity_id, (change,)))
                if own is not None and entity_type == "activity":
                    summoning = summoning_values(entity_id, new_id())
                    summoning["user_id"] = specialist
                    _, summoned = create_entity("summoning", summoning)
                    pushes.append(EntityPush("summoning", new_id(), (summoned,)))
    result = await world.push("lead", *pushes)
    assert isinstance(result, PushResult)
    assert all(isinstance(r, EntityAccepted) for r in result.results), result
    try:
        yield world
    finally:
        for client in clients.values():
            await client.close()


def expected(level: str, entity_type: str, write: str) -> str | None:
    """None for allowed, else the code: an entity reject code or (viewer) a push error."""
    if level == "viewer":
        return ErrorCode.FORBIDDEN.value
    if level == "lead":
        return None
    if write == "create":
        return "forbidden_create"
    if entity_type not in ALLOWED_EDITS[level]:
        return "forbidden_entity"
    return "forbidden_delete" if write == "delete" else None


def code_of(answer: PushResult | Error) -> str | None:
    if isinstance(answer, Error):
        assert not answer.fatal
        return answer.code
    [result] = answer.results
    return None if isinstance(result, EntityAccepted) else result.code


@pytest.mark.parametrize("entity_type", TYPES)
@pytest.mark.parametrize("level", LEVELS)
async def test_read(world: World, sync_server: str, level: str, entity_type: str) -> None:
    """Every member reads every entity: by snapshot and by pulling the log from 0."""
    wanted = {world.targets[(lv, entity_type, w)][0] for lv in LEVELS for w in WRITES}
    for cursor in (None, 0):
        reader = await SyncClient.connect(sync_server)
        try:
            await reader.hello(
                token(world.users[level]), [ProjectCursor(str(world.project), cursor)]
            )
            replica = await reader.sync_until_synced(str(world.project))
        finally:
            await reader.close()
        assert wanted <= set(replica.documents), (level, entity_type, cursor)


@pytest.mark.parametrize("entity_type", TYPES)
@pytest.mark.parametrize("level", LEVELS)
async def test_create(world: World, level: str, entity_type: str) -> None:
    own = str(world.users[level]) if entity_type == "summoning" else None
    _, change = create_entity(entity_type, values_for(entity_type, world.plan_id, own))
    answer = await world.push(level, EntityPush(entity_type, new_id(), (change,)))
    assert code_of(answer) == expected(level, entity_type, "create"), answer


@pytest.mark.parametrize("entity_type", TYPES)
@pytest.mark.parametrize("level", LEVELS)
async def test_edit(world: World, level: str, entity_type: str) -> None:
    entity_id, doc = world.targets[(level, entity_type, "edit")]
    name, value = EDITS[entity_type]
    change = update_entity(doc, entity_type, {name: value})
    answer = await world.push(level, EntityPush(entity_type, entity_id, (change,)))
    code = expected(level, entity_type, "edit")
    assert code_of(answer) == code, answer
    if code in ("forbidden_entity", "forbidden_field"):
        assert isinstance(answer, PushResult)
        [rejected] = answer.results
        assert isinstance(rejected, EntityRejected)
        assert rejected.details == {"entity_type": entity_type, "field": name}


@pytest.mark.parametrize("entity_type", TYPES)
@pytest.mark.parametrize("level", LEVELS)
async def test_delete(world: World, level: str, entity_type: str) -> None:
    entity_id, doc = world.targets[(level, entity_type, "delete")]
    change = update_entity(doc, entity_type, {"deleted": True})
    answer = await world.push(level, EntityPush(entity_type, entity_id, (change,)))
    assert code_of(answer) == expected(level, entity_type, "delete"), answer


# --- the specialist's finer rules ----------------------------------------------------------


async def _lead_creates(
    world: World, entity_type: str, values: dict[str, object]
) -> tuple[str, Document]:
    entity_id = new_id()
    doc, change = create_entity(entity_type, values)
    answer = await world.push("lead", EntityPush(entity_type, entity_id, (change,)))
    assert code_of(answer) is None, answer
    return entity_id, doc


async def _summon(world: World, activity_id: str) -> tuple[str, Document]:
    values = summoning_values(activity_id, new_id())
    values["user_id"] = str(world.users["specialist"])
    return await _lead_creates(world, "summoning", values)


async def test_a_field_the_specialist_may_not_write_is_named(
    world: World, pool: asyncpg.Pool
) -> None:
    activity, doc = await _lead_creates(world, "activity", activity_values(world.plan_id))
    await _summon(world, activity)
    as_logged = doc.fork()
    # One change that edits an allowed field and, hidden in it, the plan.
    hidden = update_entity(doc, "activity", {"status": "in_progress", "plan_id": new_id()})
    answer = await world.push("specialist", EntityPush("activity", activity, (hidden,)))
    assert isinstance(answer, PushResult)
    [rejected] = answer.results
    assert isinstance(rejected, EntityRejected)
    assert (rejected.code, rejected.details) == (
        "forbidden_field",
        {"entity_type": "activity", "field": "plan_id"},
    )
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT status, plan_id FROM rm_activities WHERE project_id = $1 AND entity_id = $2",
            world.project,
            activity,
        )
    assert (row["status"], row["plan_id"]) == ("planned", world.plan_id)

    # An allowed edit, made on the document as the server holds it, goes in.
    later = activity_values(world.plan_id, day=1)["ends_at"]
    allowed = update_entity(as_logged, "activity", {"ends_at": later})
    answer = await world.push("specialist", EntityPush("activity", activity, (allowed,)))
    assert code_of(answer) is None, answer


async def test_activities_the_specialist_is_not_summoned_to_are_read_only(world: World) -> None:
    activity, doc = await _lead_creates(world, "activity", activity_values(world.plan_id))
    change = update_entity(doc, "activity", {"status": "done"})
    answer = await world.push("specialist", EntityPush("activity", activity, (change,)))
    assert code_of(answer) == "forbidden_entity"


async def test_a_deleted_summoning_takes_the_right_to_edit_away(world: World) -> None:
    activity, doc = await _lead_creates(world, "activity", activity_values(world.plan_id))
    summoning, summoning_doc = await _summon(world, activity)
    first = update_entity(doc, "activity", {"status": "confirmed"})
    assert (
        code_of(await world.push("specialist", EntityPush("activity", activity, (first,)))) is None
    )
    gone = update_entity(summoning_doc, "summoning", {"deleted": True})
    assert code_of(await world.push("lead", EntityPush("summoning", summoning, (gone,)))) is None
    second = update_entity(doc, "activity", {"status": "done"})
    answer = await world.push("specialist", EntityPush("activity", activity, (second,)))
    assert code_of(answer) == "forbidden_entity"


async def test_a_specialist_answers_their_summoning_but_cannot_hand_it_on(world: World) -> None:
    activity, _ = await _lead_creates(world, "activity", activity_values(world.plan_id))
    summoning, doc = await _summon(world, activity)
    handed_on = update_entity(doc, "summoning", {"user_id": str(world.users["viewer"])})
    answer = await world.push("specialist", EntityPush("summoning", summoning, (handed_on,)))
    assert isinstance(answer, PushResult)
    [rejected] = answer.results
    assert isinstance(rejected, EntityRejected)
    assert (rejected.code, rejected.details["field"]) == ("forbidden_field", "user_id")

    others = summoning_values(activity, new_id())
    others["user_id"] = str(world.users["lead"])
    theirs, theirs_doc = await _lead_creates(world, "summoning", others)
    declined = update_entity(theirs_doc, "summoning", {"status": "declined"})
    answer = await world.push("specialist", EntityPush("summoning", theirs, (declined,)))
    assert code_of(answer) == "forbidden_entity"


async def test_a_refused_entity_does_not_sink_the_rest_of_the_push(world: World) -> None:
    activity, doc = await _lead_creates(world, "activity", activity_values(world.plan_id))
    summoning, summoning_doc = await _summon(world, activity)
    location, location_doc = await _lead_creates(world, "location", location_values(3))
    answer = await world.push(
        "specialist",
        EntityPush("activity", activity, (update_entity(doc, "activity", {"status": "done"}),)),
        EntityPush(
            "location", location, (update_entity(location_doc, "location", {"name": "Mine now"}),)
        ),
        EntityPush(
            "summoning",
            summoning,
            (update_entity(summoning_doc, "summoning", {"status": "confirmed"}),),
        ),
    )
    assert isinstance(answer, PushResult)
    assert [type(r).__name__ for r in answer.results] == [
        "EntityAccepted",
        "EntityRejected",
        "EntityAccepted",
    ]


async def test_an_idempotent_retry_of_logged_changes_is_not_re_judged(world: World) -> None:
    """A specialist re-sending changes the lead already logged appends nothing: allowed."""
    location = new_id()
    _, change = create_entity("location", location_values(5))
    assert code_of(await world.push("lead", EntityPush("location", location, (change,)))) is None
    answer = await world.push("specialist", EntityPush("location", location, (change,)))
    assert isinstance(answer, PushResult)
    [accepted] = answer.results
    assert isinstance(accepted, EntityAccepted)
