"""Hostile values over a real WebSocket: each push is answered with unsupported_value naming
the field, and costs at most one structured log line; nothing raw reaches stderr.

The binding used to panic on these values (about ten times per push, each panic printing
its message and a backtrace straight to file descriptor 2, past the JSON log formatter).
``capfd`` captures that descriptor, so a panic printed by Rust shows up here.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator

import pytest

from fieldsync.observability.logs import JsonFormatter
from fieldsync.sync.messages import EntityAccepted, EntityPush, EntityRejected
from tests.entities import new_id
from tests.live.test_sync import push
from tests.live_server import MemberFactory
from tests.store.contract.test_unsupported_values import BASE, FIXTURES, REFUSED, edit
from tests.sync_client import SyncClient


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_each_hostile_push_is_answered_by_name_and_logs_at_most_one_line(
    sync_server: str,
    project: uuid.UUID,
    member: MemberFactory,
    log_lines: io.StringIO,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUST_BACKTRACE", "1")  # the worst case: a backtrace per panic
    _, token = await member(project, "lead")
    client = await SyncClient.connect(sync_server)
    await client.hello(token)
    entity = new_id()
    created = await push(client, project, 1, EntityPush("activity", entity, tuple(BASE)))
    assert isinstance(created.results[0], EntityAccepted)
    capfd.readouterr()
    log_lines.truncate(0)
    log_lines.seek(0)

    cases = sorted(FIXTURES["edits"])
    for push_id, case in enumerate(cases, start=2):
        changes = tuple(edit(case))
        result = await push(client, project, push_id, EntityPush("activity", entity, changes))
        [outcome] = result.results
        if case in REFUSED:
            assert isinstance(outcome, EntityRejected), (case, outcome)
            assert outcome.code == "unsupported_value", (case, outcome)
            assert outcome.details["field"] == REFUSED[case][0]
        else:
            assert isinstance(outcome, EntityAccepted), (case, outcome)

    lines = [line for line in log_lines.getvalue().splitlines() if line.strip()]
    assert len(lines) <= len(cases), lines
    raw = capfd.readouterr()
    assert "panicked" not in raw.err
    assert "Traceback" not in raw.err
    await client.close()
