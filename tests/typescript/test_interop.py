"""A TypeScript client and a Python SDK client on the same project of a real server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.client.conftest import ClientFactory, RestartableServer
from tests.live_server import MemberFactory
from tests.typescript.conftest import TsFactory

START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


async def test_a_typescript_edit_reaches_a_python_client_and_back(
    server: RestartableServer,
    project: uuid.UUID,
    member: MemberFactory,
    make_client: ClientFactory,
    ts_client: TsFactory,
    tmp_path: Path,
) -> None:
    _, token = await member(project)
    ts = await ts_client()
    await ts.call("open", url=server.url, token=token, path=str(tmp_path / "ts.db"),
                  project=str(project))
    plan = await ts.call("create", type="plan", values={"name": "Spring survey"})
    activity = await ts.call("create", type="activity", values={
        "plan_id": plan, "title": "Core sampling", "description": "Take three cores.",
        "starts_at": START, "ends_at": START + timedelta(hours=6), "status": "planned",
    })
    await ts.call("waitSynced")

    py = make_client(server.url, token, "py")
    py_project = await py.open_project(str(project))
    await py.wait_synced(10)
    values = await py_project.get("activity", activity)
    assert values["title"] == "Core sampling"
    assert values["starts_at"] == START
    await py_project.update("activity", activity, {"status": "confirmed"})
    await py.wait_synced(10)

    for _ in range(50):
        got = await ts.call("get", type="activity", id=activity)
        if got["status"] == "confirmed":
            break
        await ts.call("waitSynced")
    assert got["status"] == "confirmed"
    assert await ts.call("heads", id=activity) == sorted(
        h.hex() for h in await py_project.heads(activity)
    )
