"""The blocking facade, used from plain threads the way a non-async app would."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import pytest

from fieldsync_client import BlockingClient, RemoteChanges, ValidationError
from tests.client.conftest import FAST_BACKOFF, ClientFactory, RestartableServer
from tests.client.helpers import until
from tests.entities import activity_values, plan_values
from tests.live_server import MemberFactory


def _app(url: str, token: str, path: Path, project_id: str) -> tuple[str, list[RemoteChanges]]:
    """What a blocking app does: open, edit, wait for sync, read, close."""
    seen: list[RemoteChanges] = []
    with BlockingClient(url, token, path, **FAST_BACKOFF) as client:
        project = client.open_project(project_id)
        assert project.bootstrapped
        project.on_change(seen.append)
        plan = project.create("plan", plan_values("Blocking plan"))
        activity = project.create("activity", activity_values(plan))
        assert project.splice_text("activity", activity, "description", 0, 0, "Note: ")
        assert project.insert_item("activity", activity, "tasks", 0, {"title": "T", "done": True})
        with pytest.raises(ValidationError) as refused:
            project.update("activity", activity, {"status": "nope"})
        assert refused.value.violations
        client.wait_synced(10)
        assert project.pending_count() == 0
        assert client.status.online
        values = project.get("activity", activity)
        assert str(values["description"]).startswith("Note: ")
        assert project.update("activity", activity, {"description": f"{values['description']}!"})
        assert project.replace_text("activity", activity, "description", "Replaced")
        assert project.get("activity", activity)["description"] == "Replaced"
        assert list(project.list("activity")) == [activity]
        return activity, seen


async def test_the_blocking_client_from_threads(
    server: RestartableServer,
    project: uuid.UUID,
    member: MemberFactory,
    make_client: ClientFactory,
    tmp_path: Path,
) -> None:
    _, token = await member(project)
    activity, _ = await asyncio.to_thread(
        _app, server.url, token, tmp_path / "blocking.db", str(project)
    )
    # Another (async) client sees the blocking client's work.
    _, other_token = await member(project)
    other = make_client(server.url, other_token, "async")
    theirs = await other.open_project(str(project))
    tasks = (await theirs.get("activity", activity))["tasks"]
    assert isinstance(tasks, list)
    assert tasks[0] == {"title": "T", "done": True}

    # And a blocking client hears about the async client's edits through its callback.
    def listen() -> list[RemoteChanges]:
        with BlockingClient(server.url, token, tmp_path / "blocking.db", **FAST_BACKOFF) as c:
            heard: list[RemoteChanges] = []
            project_handle = c.open_project(str(project))
            remove = project_handle.on_change(heard.append)
            c.wait_synced(10)
            ready.set()
            for _ in range(500):
                if any(activity in e.entity_ids for e in heard):
                    break
                time.sleep(0.02)
            remove()
            return heard

    ready = threading.Event()
    listening = asyncio.create_task(asyncio.to_thread(listen))
    await until(ready.is_set, what="the blocking client to be live")
    await theirs.update("activity", activity, {"status": "done"})
    heard = await listening
    assert any(activity in event.entity_ids for event in heard)
