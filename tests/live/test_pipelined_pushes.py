"""A client may send its next pushes before the answers of the earlier ones: the server
appends them in the order they arrived (a push that builds on the previous one's changes
finds them) and those that queue behind a running append share its next transaction; one
that fails is answered on its own."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from starlette.applications import Starlette

from fieldsync.model.writer import create_entity, update_entity
from fieldsync.sync.errors import ErrorCode
from fieldsync.sync.messages import EntityAccepted, EntityPush, Error, Push, PushResult
from tests.entities import location_values, new_id
from tests.live_server import MemberFactory, free_port, running_server, start_server, stop_server
from tests.sync_client import SyncClient

pytestmark = pytest.mark.asyncio

PUSHES = 24


async def test_pushes_sent_at_once_are_appended_in_order_and_grouped(
    database_url: str, pool: asyncpg.Pool, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    entity_id = new_id()
    doc, created = create_entity("location", location_values(0))
    # Each push holds one change that depends on the change of the push before it.
    changes = [created] + [
        update_entity(doc, "location", {"name": f"Site {n}"}) for n in range(1, PUSHES)
    ]
    async with running_server(database_url) as base:
        client = await SyncClient.connect(base)
        await client.hello(token)
        for push_id, change in enumerate(changes, start=1):
            await client.send(
                Push(push_id, str(project), (EntityPush("location", entity_id, (change,)),))
            )
        answers: dict[int, PushResult] = {}
        for _ in changes:
            answer = await client.expect(PushResult, within=20)
            answers[answer.push_id] = answer
        await client.close()

    seqs: list[int] = []
    for push_id in range(1, PUSHES + 1):
        [result] = answers[push_id].results
        assert isinstance(result, EntityAccepted), result  # never missing_dependencies
        seqs.extend(result.seqs)
    assert seqs == list(range(1, PUSHES + 1))  # logged in the order they were sent

    rows = await pool.fetch(
        "SELECT xmin::text::bigint AS tx FROM changes WHERE project_id = $1", project
    )
    assert len(rows) == PUSHES
    # Pushes that waited behind a running append went in together: fewer transactions.
    assert len({r["tx"] for r in rows}) < PUSHES


Append = Callable[..., Awaitable[Any]]


@contextlib.asynccontextmanager
async def server_appending_through(
    database_url: str, around: Callable[[Append, uuid.UUID, Any], Awaitable[Any]]
) -> AsyncIterator[str]:
    """A real server whose change log appends through ``around(append, project, batch)``
    (to fail or hold a chosen push); yields its address."""
    port = free_port()
    server, task = await start_server(database_url, port)
    try:
        app = server.config.app
        assert isinstance(app, Starlette)
        changelog = app.state.sync.changelog
        append = changelog.append

        async def wrapped(project_id: uuid.UUID, batch: Any, *args: Any, **kw: Any) -> Any:
            async def rest(project: uuid.UUID, items: Any) -> Any:
                return await append(project, items, *args, **kw)  # the sender, the member

            return await around(rest, project_id, batch)

        changelog.append = wrapped
        yield f"127.0.0.1:{port}"
    finally:
        await stop_server(server, task)


def _push(push_id: int, project: uuid.UUID, entity_id: str) -> Push:
    _, change = create_entity("location", location_values(push_id))
    return Push(push_id, str(project), (EntityPush("location", entity_id, (change,)),))


async def test_a_push_that_fails_unexpectedly_is_answered_and_the_others_go_on(
    database_url: str, project: uuid.UUID, member: MemberFactory
) -> None:
    _, token = await member(project)
    poisoned = new_id()

    async def faulty(append: Append, project_id: uuid.UUID, batch: Any) -> Any:
        if any(item.entity_id == poisoned for item in batch):
            raise RuntimeError("a fault in the server, not in the push")
        return await append(project_id, batch)

    async with server_appending_through(database_url, faulty) as base:
        client = await SyncClient.connect(base)
        await client.hello(token)
        pushes = {1: new_id(), 2: poisoned, 3: new_id()}
        for push_id, entity_id in pushes.items():
            await client.send(_push(push_id, project, entity_id))
        answers: dict[int, object] = {}
        while len(answers) < len(pushes):
            message = await client.receive(within=10)
            if isinstance(message, PushResult | Error) and message.push_id is not None:
                answers[message.push_id] = message
        await client.close()
    failed = answers[2]
    assert isinstance(failed, Error)
    assert failed.code == ErrorCode.INTERNAL_ERROR.value
    assert not failed.fatal
    for push_id in (1, 3):
        result = answers[push_id]
        assert isinstance(result, PushResult)
        assert all(isinstance(r, EntityAccepted) for r in result.results)


async def test_a_second_push_with_the_id_of_one_in_flight_is_refused_and_the_first_is_answered(
    database_url: str,
    pool: asyncpg.Pool,
    project: uuid.UUID,
    member: MemberFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, token = await member(project)
    held, duplicate, release = new_id(), new_id(), asyncio.Event()

    async def slow(append: Append, project_id: uuid.UUID, batch: Any) -> Any:
        if any(item.entity_id == held for item in batch):
            await release.wait()  # the first push stays in flight
        return await append(project_id, batch)

    async with server_appending_through(database_url, slow) as base:
        client = await SyncClient.connect(base)
        await client.hello(token)
        await client.send(_push(1, project, held))
        await client.send(_push(1, project, duplicate))  # the same push id, while in flight
        refusal = await client.expect(Error, within=10)
        release.set()
        result = await client.expect(PushResult, within=10)
        await client.close()
    assert (refusal.code, refusal.push_id, refusal.fatal) == ("invalid_message", 1, False)
    [accepted] = result.results
    assert isinstance(accepted, EntityAccepted)
    assert accepted.entity_id == held
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    stored = await pool.fetchval("SELECT count(*) FROM documents WHERE entity_id = $1", duplicate)
    assert stored == 0  # nothing of the refused push
