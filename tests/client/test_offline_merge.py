"""Two SDK clients edit the same activity while the server is down, then converge.

The server is stopped (the clients lose their connection) and started again on the same
port; clients reconnect by themselves, push their outboxes and pull each other's changes.
Both must end with the server's document: the same heads, the same values, every edit kept
except the loser of the one same-field conflict, which is the same on every replica.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from fieldsync_client import ConflictUpdate, ConnectionState, Project, RemoteChanges
from tests.client.conftest import ClientFactory, OnlineFactory, RestartableServer
from tests.client.helpers import head_seq, logged_hashes, server_documents, until, values_of
from tests.entities import activity_values, plan_values


async def _edit_offline(a: Project, b: Project, activity: str) -> None:
    text = "Take three cores at each marked point."
    # different fields
    await a.update("activity", activity, {"status": "confirmed"})
    await b.update("activity", activity, {"title": "Core sampling (north ridge)"})
    # the same field: one value wins, on every replica
    await a.update("activity", activity, {"location_id": "loc-from-a"})
    await b.update("activity", activity, {"location_id": "loc-from-b"})
    # concurrent text edits merge character by character
    await a.splice_text("activity", activity, "description", 0, 0, "Ana: ")
    await b.splice_text("activity", activity, "description", len(text), 0, " Ben was here.")
    # tasks added on both sides
    await a.insert_item(
        "activity", activity, "tasks", 0, {"title": "Fuel the drill", "done": False}
    )
    await b.insert_item("activity", activity, "tasks", 2, {"title": "Pack the cores", "done": True})


@pytest.mark.parametrize("order", ["together", "a_first", "b_first"])
async def test_two_clients_edit_the_same_activity_offline_and_converge(
    order: str,
    server: RestartableServer,
    project: uuid.UUID,
    online: OnlineFactory,
    make_client: ClientFactory,
    pool: asyncpg.Pool,
) -> None:
    client_a, a, token_a, _ = await online(server.url, project, "a")
    # b is a lead too: a specialist may only edit activities they are summoned to.
    client_b, b, token_b, _ = await online(server.url, project, "b", "lead")
    assert a.bootstrapped
    assert b.bootstrapped

    seen_by_b: list[RemoteChanges] = []
    b.on_change(seen_by_b.append)
    plan = await a.create("plan", plan_values())
    activity = await a.create("activity", activity_values(plan))
    await client_a.wait_synced(10)
    await until(lambda: b.cursor == a.cursor, what="b to receive a's activity")
    assert {activity, plan} <= set().union(*(e.entity_ids for e in seen_by_b))
    assert await b.get("activity", activity) == await a.get("activity", activity)

    await server.stop()
    await until(lambda: not client_a.status.online and not client_b.status.online, what="offline")
    await _edit_offline(a, b, activity)
    assert a.pending_count() == 4
    assert b.pending_count() == 4

    if order == "together":
        await server.start()
    else:
        # The second client is away (its app closed) while the first one syncs alone.
        first, second_name = (client_a, "b") if order == "a_first" else (client_b, "a")
        second = client_b if order == "a_first" else client_a
        await second.close()
        await server.start()
        await first.wait_synced(15)
        token = token_b if order == "a_first" else token_a
        reopened = make_client(server.url, token, second_name)
        if order == "a_first":
            client_b, b = reopened, await reopened.open_project(str(project))
        else:
            client_a, a = reopened, await reopened.open_project(str(project))
        assert (b if order == "a_first" else a).pending_count() == 4

    await client_a.wait_synced(15)
    await client_b.wait_synced(15)
    head = await head_seq(pool, project)
    await until(lambda: a.cursor == b.cursor == head, what="both clients at the log head")

    documents = await server_documents(server.base, token_a, project)
    on_server = documents[activity]
    assert await a.heads(activity) == await b.heads(activity) == sorted(on_server.get_heads())
    values = await a.get("activity", activity)
    assert values == await b.get("activity", activity) == values_of("activity", on_server)

    assert values["status"] == "confirmed"
    assert values["title"] == "Core sampling (north ridge)"
    assert values["location_id"] in ("loc-from-a", "loc-from-b")
    assert values["description"] == "Ana: Take three cores at each marked point. Ben was here."
    tasks = values["tasks"]
    assert isinstance(tasks, list)
    assert sorted(t["title"] for t in tasks) == [
        "Calibrate drill",
        "Fuel the drill",
        "Label jars",
        "Pack the cores",
    ]
    assert tasks[0] == {"title": "Fuel the drill", "done": False}

    # Each change was logged once: 2 creates and 4 + 4 offline edits.
    hashes = await logged_hashes(pool, project)
    assert len(hashes) == len(set(hashes)) == 10
    for client in (client_a, client_b):
        status = client.status
        assert status.connection is ConnectionState.ONLINE
        assert status.pending == 0
        assert status.rejected == 0
        assert status.last_synced_at is not None

    # The one same-field edit that lost is reported, identically, on both clients.
    reported = await a.conflicts()
    assert reported == await b.conflicts()
    [conflict] = reported
    assert (conflict.kind, conflict.fields, conflict.entity_ids) == (
        "concurrent_edit",
        ("location_id",),
        (activity,),
    )
    assert conflict.values["kept"] == values["location_id"]
    lost = ({"loc-from-a", "loc-from-b"} - {values["location_id"]}).pop()
    assert conflict.candidates("activity") == [values["location_id"], lost]
    senders = {str(c["user"]) for c in conflict.changes}
    assert len(senders) == 2  # each side's user is named

    # A lead restores the lost value by choosing it; the conflict closes everywhere.
    updates: list[ConflictUpdate] = []
    b.on_conflicts(updates.append)
    assert await a.resolve_conflict(conflict.conflict_id, lost)
    await client_a.wait_synced(15)
    await until(lambda: bool(updates), what="b to hear of the resolution")
    assert await a.conflicts() == await b.conflicts() == []
    [resolved] = await b.conflicts(include_resolved=True)
    assert (resolved.conflict_id, resolved.status) == (conflict.conflict_id, "resolved")
    assert (await b.get("activity", activity))["location_id"] == lost

    # A newcomer bootstraps (over HTTP) with the record in its snapshot, and over the
    # WebSocket snapshot too.
    for http in (True, False):
        newcomer = await online(server.url, project, f"new-{http}", http_snapshots=http)
        assert await newcomer.project.conflicts(include_resolved=True) == [resolved]


async def test_clients_stay_live_and_report_remote_changes(
    server: RestartableServer, project: uuid.UUID, online: OnlineFactory
) -> None:
    a = (await online(server.url, project, "a")).project
    client_b, b, _, _ = await online(server.url, project, "b")

    async def first_event() -> RemoteChanges:
        async for event in b.changes():
            return event
        raise AssertionError("the stream ended")

    waiting = asyncio.create_task(first_event())
    await asyncio.sleep(0)
    plan = await a.create("plan", plan_values("Autumn survey"))
    event = await asyncio.wait_for(waiting, 10)
    assert event.entity_ids == frozenset({plan})
    assert not event.snapshot
    assert (await b.get("plan", plan))["name"] == "Autumn survey"
    assert list(await b.list("plan")) == [plan]

    await b.delete("plan", plan)
    await client_b.wait_synced(10)
    await until(lambda: a.cursor == b.cursor, what="a to receive the delete")
    assert await a.list("plan") == {}
    assert (await a.get("plan", plan))["deleted"] is True


async def test_a_description_replaced_whole_on_two_clients_is_reported_and_resolved(
    server: RestartableServer, project: uuid.UUID, online: OnlineFactory, pool: asyncpg.Pool
) -> None:
    """Ordinary updates of a text merge; explicit whole replacements on two offline clients
    are a concurrent_edit that both clients hear of, and resolving it (which writes one new
    Text object) closes it on the server."""
    client_a, a, _, _ = await online(server.url, project, "a", "lead")
    client_b, b, _, _ = await online(server.url, project, "b", "lead")
    plan = await a.create("plan", plan_values())
    activity = await a.create("activity", activity_values(plan))
    await client_a.wait_synced(10)
    await until(lambda: b.cursor == a.cursor, what="b to receive the activity")

    await server.stop()
    await until(lambda: not client_a.status.online and not client_b.status.online, what="offline")
    assert await a.replace_text("activity", activity, "description", "North trench first.")
    assert await b.replace_text("activity", activity, "description", "South trench first.")
    await server.start()
    await client_a.wait_synced(15)
    await client_b.wait_synced(15)
    head = await head_seq(pool, project)
    await until(lambda: a.cursor == b.cursor == head, what="both clients at the log head")

    [conflict] = await a.conflicts()
    assert await b.conflicts() == [conflict]
    assert (conflict.kind, conflict.fields) == ("concurrent_edit", ("description",))
    shown = (await a.get("activity", activity))["description"]
    assert conflict.values["kept"] == shown
    assert sorted(map(str, conflict.candidates("activity"))) == [
        "North trench first.",
        "South trench first.",
    ]

    assert await b.resolve_conflict(conflict.conflict_id, "North, then south.")
    await client_b.wait_synced(15)
    await until(lambda: a.cursor == b.cursor, what="a to receive the resolution")
    await until_no_open_conflicts(a)
    assert (await a.get("activity", activity))["description"] == "North, then south."
    async with pool.acquire() as conn:
        status = await conn.fetchval(
            "SELECT status FROM rm_conflicts WHERE conflict_id = $1", conflict.conflict_id
        )
    assert status == "resolved"


async def until_no_open_conflicts(project: Project) -> None:
    for _ in range(200):
        if not await project.conflicts():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"conflicts still open: {await project.conflicts()}")
