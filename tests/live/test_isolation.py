"""Cross-project isolation: a member of project A gets nothing of project B, whatever id,
cursor or crafted message it tries, and the answers say no more than for a project that
does not exist."""

from __future__ import annotations

import uuid

import asyncpg
import httpx
import msgpack

from fieldsync.model.writer import create_entity, update_entity
from fieldsync.sync.errors import ErrorCode
from fieldsync.sync.messages import (
    EntityAccepted,
    EntityPush,
    EntityRejected,
    Error,
    ProjectCursor,
    ProjectError,
    Push,
    PushResult,
    Subscribe,
    Unsubscribe,
)
from tests.entities import location_values, new_id
from tests.live.test_sync import push
from tests.live_server import MemberFactory
from tests.store.state import project_state
from tests.sync_client import SyncClient


async def test_a_member_of_a_cannot_read_pull_subscribe_or_push_into_b(
    sync_server: str,
    project: uuid.UUID,
    other_project: uuid.UUID,
    member: MemberFactory,
    pool: asyncpg.Pool,
) -> None:
    _, token_a = await member(project)
    _, token_b = await member(other_project)
    owner = await SyncClient.connect(sync_server)
    await owner.hello(token_b)
    b_entity = new_id()
    b_doc, created = create_entity("location", location_values(1))
    await push(owner, other_project, 1, EntityPush("location", b_entity, (created,)))
    await owner.close()
    before = await project_state(pool, other_project)
    assert before.head == 1

    nowhere = str(uuid.uuid4())
    spellings = [
        str(other_project),
        str(other_project).upper(),
        other_project.hex,
        f"{{{other_project}}}",
        f"urn:uuid:{other_project}",
    ]
    intruder = await SyncClient.connect(sync_server)
    await intruder.hello(token_a, [ProjectCursor(nowhere, None)])
    unknown = await intruder.next_unabsorbed()
    assert isinstance(unknown, ProjectError)
    assert unknown.code == ErrorCode.PROJECT_UNAVAILABLE.value

    for spelling in spellings:
        for cursor in (None, 0, 1, 2**63 - 1):
            await intruder.send(Subscribe(ProjectCursor(spelling, cursor)))
            answer = await intruder.next_unabsorbed()
            # Exactly what an unknown project gets, apart from echoing the id.
            assert answer == ProjectError(spelling, unknown.code, unknown.message), answer
    await intruder.send(Unsubscribe(str(other_project)))

    # Pushing: a new entity, an edit of B's entity, by every spelling of B's id.
    edit = update_entity(b_doc, "location", {"name": "taken over"})
    _, fresh = create_entity("location", location_values(2))
    for push_id, spelling in enumerate([*spellings, nowhere], start=10):
        await intruder.send(
            Push(
                push_id,
                spelling,
                (
                    EntityPush("location", b_entity, (edit,)),
                    EntityPush("location", new_id(), (fresh,)),
                ),
            )
        )
        answer = await intruder.next_unabsorbed()
        assert answer == Error(
            ErrorCode.PROJECT_UNAVAILABLE.value,
            "no such project, or you are not a member of it",
            push_id=push_id,
        ), answer

    # B's entity id pushed into A, where the intruder may write: refused, B untouched.
    result = await push(intruder, project, 20, EntityPush("location", b_entity, (edit,)))
    [rejected] = result.results
    assert isinstance(rejected, EntityRejected)
    assert rejected.code == "wrong_project"

    # Crafted frames: a push whose project is not a string, a subscribe with extra keys.
    await intruder.ws.send(
        msgpack.packb(
            {"t": "push", "push_id": 21, "project_id": [str(other_project)], "entities": []}
        )
    )
    crafted = await intruder.next_unabsorbed()
    assert isinstance(crafted, Error)
    assert crafted.code == ErrorCode.INVALID_MESSAGE.value
    await intruder.ws.send(
        msgpack.packb(
            {
                "t": "subscribe",
                "project": {"project_id": str(other_project), "cursor": 0, "as_user": "owner"},
            }
        )
    )
    crafted = await intruder.next_unabsorbed()
    assert isinstance(crafted, Error)
    assert crafted.code == ErrorCode.INVALID_MESSAGE.value

    # Nothing of B ever arrived, and B's stored state is as it was.
    assert intruder.replicas == {}  # no snapshot, changes or synced of any project
    assert intruder.inbox == []
    await intruder.close()
    assert await project_state(pool, other_project) == before

    # Over HTTP too: B's snapshot answers exactly like an unknown project's.
    headers = {"Authorization": f"Bearer {token_a}"}
    async with httpx.AsyncClient() as http:
        forbidden = await http.get(
            f"http://{sync_server}/projects/{other_project}/snapshot", headers=headers
        )
        missing = await http.get(
            f"http://{sync_server}/projects/{nowhere}/snapshot", headers=headers
        )
    assert forbidden.status_code == missing.status_code == 404
    assert forbidden.json() == missing.json()


async def test_live_changes_of_b_never_reach_a_subscriber_of_a(
    sync_server: str,
    project: uuid.UUID,
    other_project: uuid.UUID,
    member: MemberFactory,
) -> None:
    _, token_a = await member(project)
    _, token_b = await member(other_project)
    reader = await SyncClient.connect(sync_server)
    await reader.hello(token_a, [ProjectCursor(str(project), 0)])
    await reader.sync_until_synced(str(project))
    writer = await SyncClient.connect(sync_server)
    await writer.hello(token_b)
    for n in range(5):
        _, change = create_entity("location", location_values(n))
        result = await push(writer, other_project, n, EntityPush("location", new_id(), (change,)))
        assert isinstance(result.results[0], EntityAccepted)
    # A change to A afterwards arrives: everything before it would have arrived first.
    _, mine = create_entity("location", location_values(9))
    a_writer = await SyncClient.connect(sync_server)
    await a_writer.hello(token_a)
    await push(a_writer, project, 1, EntityPush("location", new_id(), (mine,)))
    await reader.receive_changes_until(str(project), 1)
    assert set(reader.replicas) == {str(project)}
    assert not [m for m in reader.inbox if isinstance(m, PushResult)]
    for client in (reader, writer, a_writer):
        await client.close()
