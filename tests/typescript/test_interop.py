"""A TypeScript client and a Python SDK client on the same project of a real server.

Both edit the same entities while offline (different fields, the same field, the same
description, tasks on both sides, a summoning each one breaks in a way that only the merge
shows), reconnect one after the other in either order, and must end with the server's
documents (same heads, same content), the same conflict records, and each with its refused
changes visible with the server's reason.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from fieldsync.sync.messages import ProjectCursor
from fieldsync_client import FieldsyncClient, Project
from tests.client.conftest import ClientFactory, OnlineFactory, RestartableServer
from tests.client.helpers import values_of
from tests.live_server import MemberFactory
from tests.sync_client import SyncClient
from tests.typescript.conftest import TsFactory
from tests.typescript.node import TsClient

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
DESCRIPTION = "Take three cores at each marked point."


async def server_state(base: str, token: str, project: uuid.UUID) -> tuple[dict[str, Any], Any]:
    """Every document and conflict record of the project, from a fresh snapshot."""
    client = await SyncClient.connect(base)
    try:
        await client.hello(token, [ProjectCursor(str(project), None)])
        replica = await client.sync_until_synced(str(project))
    finally:
        await client.close()
    return replica.documents, replica.conflicts


def conflict_rows(conflicts: list[Any]) -> set[tuple[object, ...]]:
    return {
        (c["conflictId"], c["kind"], c["status"], tuple(c["entityIds"]), tuple(c["fields"]))
        if isinstance(c, dict)
        else (c.conflict_id, c.kind, c.status, tuple(c.entity_ids), tuple(c.fields))
        for c in conflicts
    }


async def both_synced(ts: TsClient, py: FieldsyncClient) -> None:
    for _ in range(2):  # the first to finish may still get the other's last changes
        await ts.call("waitSynced")
        await py.wait_synced(20)


async def py_offline(
    py: FieldsyncClient, make_client: ClientFactory, token: str, project: uuid.UUID
) -> tuple[FieldsyncClient, Project]:
    """Close the Python app and open its store again with no server: an offline device."""
    await py.close()
    offline = make_client(None, token, "py")
    return offline, await offline.open_project(str(project))


@pytest.mark.parametrize("first", ["typescript", "python"])
async def test_offline_edits_on_both_sdks_converge(
    first: str,
    server: RestartableServer,
    project: uuid.UUID,
    other_project: uuid.UUID,
    member: MemberFactory,
    online: OnlineFactory,
    make_client: ClientFactory,
    ts_client: TsFactory,
    tmp_path: Path,
) -> None:
    # An entity id that belongs to another project: creating it here is refused.
    elsewhere = await online(server.url, other_project, "elsewhere")
    taken = "taken-" + uuid.uuid4().hex[:8]
    await elsewhere.project.create("plan", {"name": "Elsewhere"}, entity_id=taken)
    await elsewhere.client.wait_synced(10)

    _, token = await member(project)
    ts = await ts_client()
    await ts.call(
        "open", url=server.url, token=token, path=str(tmp_path / "ts.db"), project=str(project)
    )
    plan = await ts.call("create", type="plan", values={"name": "Spring survey"})
    activity = await ts.call(
        "create",
        type="activity",
        values={
            "plan_id": plan,
            "title": "Core sampling",
            "description": DESCRIPTION,
            "tasks": [{"title": "Label jars", "done": False}],
            "starts_at": START,
            "ends_at": START + timedelta(hours=6),
            "status": "planned",
        },
    )
    summoning = await ts.call(
        "create",
        type="summoning",
        values={
            "activity_id": activity,
            "role_id": "role-1",
            "user_id": str(uuid.uuid4()),
            "starts_at": START,
            "ends_at": START + timedelta(hours=2),
            "status": "proposed",
        },
    )
    await ts.call("waitSynced")
    py = make_client(server.url, token, "py")
    await py.open_project(str(project))
    await py.wait_synced(10)

    # Both go offline and edit.
    await ts.call("pause")
    py, py_project = await py_offline(py, make_client, token, project)

    await ts.call("update", type="activity", id=activity, values={"status": "confirmed"})
    await py_project.update("activity", activity, {"ends_at": START + timedelta(hours=8)})
    await ts.call("update", type="activity", id=activity, values={"title": "North trench"})
    await py_project.update("activity", activity, {"title": "South trench"})
    await ts.call(
        "update",
        type="activity",
        id=activity,
        values={"description": "Take four cores at each marked point."},
    )
    await py_project.update(
        "activity", activity, {"description": DESCRIPTION + " Label every jar."}
    )
    await ts.call(
        "insertItem",
        type="activity",
        id=activity,
        field="tasks",
        index=0,
        value={"title": "Calibrate drill", "done": False},
    )
    await py_project.insert_item(
        "activity", activity, "tasks", 1, {"title": "Pack samples", "done": True}
    )
    # Each clears one of the two "at least one of" fields: the merge has neither.
    await ts.call("update", type="summoning", id=summoning, values={"role_id": None})
    await py_project.update("summoning", summoning, {"user_id": None})
    # Each creates an entity whose id another project holds.
    await ts.call("create", type="plan", values={"name": "Mine"}, id=taken)
    await py_project.create("plan", {"name": "Mine too"}, entity_id=taken)

    # Back online, one after the other.
    await py.close()
    py = make_client(server.url, token, "py")
    if first == "typescript":
        await ts.call("resume")
        await ts.call("waitSynced")
        py_project = await py.open_project(str(project))
    else:
        py_project = await py.open_project(str(project))
        await py.wait_synced(20)
        await ts.call("resume")
    await both_synced(ts, py)

    documents, server_conflicts = await server_state(server.base, token, project)
    for entity_type, entity_id in (
        ("plan", plan),
        ("activity", activity),
        ("summoning", summoning),
    ):
        server_heads = sorted(h.hex() for h in documents[entity_id].get_heads())
        assert await ts.call("heads", id=entity_id) == server_heads
        assert sorted(h.hex() for h in await py_project.heads(entity_id)) == server_heads
        expected = values_of(entity_type, documents[entity_id])
        assert await ts.call("get", type=entity_type, id=entity_id) == expected
        assert await py_project.get(entity_type, entity_id) == expected

    merged = await py_project.get("activity", activity)
    assert merged["status"] == "confirmed"
    assert merged["ends_at"] == START + timedelta(hours=8)
    assert merged["description"] == "Take four cores at each marked point. Label every jar."
    tasks = [t["title"] for t in cast(list[dict[str, object]], merged["tasks"])]
    assert tasks == ["Calibrate drill", "Label jars", "Pack samples"]
    assert taken not in documents

    # The same conflict records everywhere: the title, which one device lost.
    ts_conflicts = await ts.call("conflicts")
    py_conflicts = await py_project.conflicts(include_resolved=True)
    expected_rows = conflict_rows(
        [
            {
                "conflictId": r.conflict_id,
                "kind": r.kind,
                "status": r.status,
                "entityIds": r.entity_ids,
                "fields": r.fields,
            }
            for r in server_conflicts.values()
        ]
    )
    assert conflict_rows(ts_conflicts) == conflict_rows(py_conflicts) == expected_rows
    assert ("concurrent_edit", ("title",)) in {(row[1], row[4]) for row in expected_rows}

    # Refused changes stay visible with the server's reason, on each side.
    ts_rejected = {(r["entityId"], r["code"]) for r in await ts.call("rejected")}
    py_rejected = {(r.entity_id, r.code) for r in await py_project.rejected_changes()}
    assert (taken, "wrong_project") in ts_rejected
    assert (taken, "wrong_project") in py_rejected
    second = py_rejected if first == "typescript" else ts_rejected
    assert (summoning, "schema_violation") in second
    for rejected in await ts.call("rejected"):
        assert rejected["message"]

    # A lead settles the title from the TypeScript client; both hear it is resolved.
    [title] = [c for c in ts_conflicts if c["fields"] == ["title"]]
    lost = title["values"]["candidates"][1]
    assert await ts.call("resolveConflict", conflictId=title["conflictId"], value=lost)
    await both_synced(ts, py)
    assert (await py_project.get("activity", activity))["title"] == lost
    resolved = await py_project.conflict(title["conflictId"])
    assert resolved is not None
    assert resolved.status == "resolved"
    assert {
        c["status"] for c in await ts.call("conflicts") if c["conflictId"] == title["conflictId"]
    } == {"resolved"}
