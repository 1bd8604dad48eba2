"""Working with no server at all: every edit is local, validated, and durable at once."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from automerge.core import Document

from fieldsync_client import (
    ConnectionState,
    EntityNotFound,
    FieldsyncClient,
    Offline,
    StoreLocked,
    ValidationError,
)
from tests.client.conftest import ClientFactory
from tests.client.helpers import until
from tests.entities import START, activity_values, new_id, plan_values
from tests.live_server import free_port


def _rows(path: Path) -> tuple[int, int]:
    """(entities, outbox rows) in a store file, read by a separate SQLite connection."""
    db = sqlite3.connect(path)
    try:
        entities = db.execute("SELECT count(*) FROM entities").fetchone()[0]
        outbox = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    finally:
        db.close()
    return entities, outbox


async def test_offline_with_no_server_at_all(make_client: ClientFactory, tmp_path: Path) -> None:
    nowhere = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
    client = make_client(nowhere, "any-token", "field")
    project = await client.open_project(new_id(), timeout=10)
    assert not project.bootstrapped
    assert project.cursor is None
    await until(lambda: isinstance(client.status.last_error, Offline), what="offline status")
    assert client.status.connection in (ConnectionState.OFFLINE, ConnectionState.CONNECTING)

    plan = await project.create("plan", plan_values())
    activity = await project.create("activity", activity_values(plan))
    await project.update("activity", activity, {"status": "in_progress", "location_id": "loc-1"})
    await project.splice_text("activity", activity, "description", 0, 4, "Drill")
    await project.insert_item(
        "activity", activity, "tasks", 2, {"title": "Sign off", "done": False}
    )
    await project.remove_item("activity", activity, "tasks", 0)
    await project.update("plan", plan, {"starts_at": START, "ends_at": None})

    values = await project.get("activity", activity)
    assert values["status"] == "in_progress"
    assert values["location_id"] == "loc-1"
    assert values["description"] == "Drill three cores at each marked point."
    assert values["tasks"] == [
        {"title": "Label jars", "done": True},
        {"title": "Sign off", "done": False},
    ]
    assert values["starts_at"] == START
    assert isinstance(values["ends_at"], datetime)
    assert (await project.get("plan", plan))["starts_at"] == START.astimezone(UTC)
    assert list(await project.list("activity")) == [activity]
    assert project.pending_count() == 7 == client.status.pending
    # Every edit that returned is on disk, readable by another connection.
    await client.close()
    assert _rows(tmp_path / "field.db") == (2, 7)


async def test_an_invalid_edit_raises_and_stores_nothing(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    client = make_client(None, "no-token", "strict")
    project = await client.open_project(new_id())
    plan = await project.create("plan", plan_values())
    activity = await project.create("activity", activity_values(plan))
    heads = await project.heads(activity)
    try:
        with pytest.raises(ValidationError) as missing:
            await project.create("activity", {"title": "No times", "plan_id": plan})
        assert sorted(v.field for v in missing.value.violations) == [
            "ends_at",
            "starts_at",
            "status",
        ]
        with pytest.raises(ValidationError) as bad_enum:
            await project.update("activity", activity, {"status": "maybe"})
        assert [(v.field, v.got) for v in bad_enum.value.violations] == [("status", "str 'maybe'")]
        bad_edits: list[tuple[str, dict[str, object]]] = [
            ("unknown field", {"colour": "red"}),
            ("wrong python type", {"title": 42}),
            ("naive datetime", {"starts_at": datetime(2026, 1, 1)}),
            ("string timestamp", {"ends_at": "tomorrow"}),
            ("too long", {"title": "x" * 201}),
            ("NUL", {"title": "a\x00b"}),
            ("bad ref", {"location_id": "not an id!"}),
            ("required removed", {"title": None}),
            ("task without done", {"tasks": [{"title": "x"}]}),
            ("int for bool", {"deleted": 1}),
        ]
        for label, values in bad_edits:
            with pytest.raises(ValidationError):
                await project.update("activity", activity, values)
            assert await project.heads(activity) == heads, label
        with pytest.raises(ValidationError):
            await project.splice_text("activity", activity, "title", 0, 0, "x")  # not text
        with pytest.raises(ValidationError):
            await project.splice_text("activity", activity, "description", 999, 0, "x")
        with pytest.raises(ValidationError):
            await project.insert_item("activity", activity, "tasks", 0, {"title": 1})
        with pytest.raises(ValidationError):
            await project.remove_item("activity", activity, "tasks", 5)
        with pytest.raises(ValidationError):
            await project.create("spaceship", {"name": "x"})
        with pytest.raises(ValidationError):
            await project.create("plan", plan_values(), entity_id="no spaces allowed")
        with pytest.raises(ValidationError):
            await project.create("plan", plan_values(), entity_id=plan)  # exists already
        with pytest.raises(EntityNotFound):
            await project.update("plan", activity, {"name": "wrong type"})
        with pytest.raises(EntityNotFound):
            await project.get("activity", new_id())

        assert await project.heads(activity) == heads
        assert project.pending_count() == 2
        assert await project.update("activity", activity, {"status": "planned"}) is False
        assert project.pending_count() == 2
    finally:
        await client.close()
    # Nothing of the refused edits reached the disk either.
    assert _rows(tmp_path / "strict.db") == (2, 2)
    db = sqlite3.connect(tmp_path / "strict.db")
    try:
        (saved,) = db.execute(
            "SELECT document FROM entities WHERE entity_id = ?", (activity,)
        ).fetchone()
    finally:
        db.close()
    assert sorted(Document.load(saved).get_heads()) == heads


async def test_one_client_per_store_file(make_client: ClientFactory, tmp_path: Path) -> None:
    make_client(None, "token", "shared")
    with pytest.raises(StoreLocked):
        FieldsyncClient(None, "token", tmp_path / "shared.db")
