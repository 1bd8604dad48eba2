"""Structured logs: one JSON object per line, ids bound, and no tokens or document contents."""

from __future__ import annotations

import base64
import io
import json
import logging
import uuid
from collections.abc import Iterator

import pytest

from fieldsync.model.writer import create_entity, splice_text
from fieldsync.observability.logs import JsonFormatter, TextFormatter, bind, record_fields
from fieldsync.observability.metrics import Metrics
from fieldsync.sync.messages import EntityPush, Hello, ProjectCursor, Welcome
from tests.entities import activity_values, new_id
from tests.live.test_sync import push
from tests.live_server import MemberFactory, running_server
from tests.sync_client import SyncClient

SECRET_TEXT = "meet-behind-the-old-mill-7f3a"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every record at INFO and above (the server's level), as the JSON formatter writes it."""
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


def test_lines_carry_bound_ids_and_extras_but_never_bytes_or_tokens() -> None:
    record = logging.makeLogRecord(
        {"name": "t", "levelname": "INFO", "msg": "got %s", "args": ("eyJhbGciOi.eyJzdWIiOi.sig",)}
    )
    record.__dict__.update({"event": "x", "payload": b"\x00\x01secret"})
    with bind(connection_id="c1"), bind(request_id="r1"):
        fields = record_fields(record)
    assert fields["message"] == "got <token>"
    assert fields["connection_id"] == "c1"
    assert fields["request_id"] == "r1"
    assert fields["event"] == "x"
    assert fields["payload"] == "<8 bytes>"
    assert "connection_id" not in record_fields(record)
    assert json.loads(JsonFormatter().format(record))["message"] == "got <token>"
    text = TextFormatter().format(record)
    assert " INFO t: got <token> " in text
    assert text.endswith(" event=x payload=<8 bytes>")


async def test_a_session_logs_no_token_and_no_document_content(
    database_url: str, project: uuid.UUID, member: MemberFactory, captured: io.StringIO
) -> None:
    _, token = await member(project)
    # A zero threshold logs every push and snapshot as slow: those lines are checked too.
    async with running_server(database_url, metrics=Metrics(slow_ms=0)) as base:
        client = await SyncClient.connect(base)
        welcome = await client.hello(token, [ProjectCursor(str(project), None)])
        await client.sync_until_synced(str(project))
        entity = new_id()
        doc, created = create_entity("activity", activity_values(new_id()))
        edited = splice_text(doc, "description", 0, 0, SECRET_TEXT)
        await push(client, project, 1, EntityPush("activity", entity, (created, edited)))
        await push(client, project, 2, EntityPush("activity", new_id(), (b"garbage" + edited,)))
        await client.close()
        stranger = await SyncClient.connect(base)
        await stranger.send(Hello((1,), token + "x", "intruder"))
        await stranger.read_until_closed()
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    text = captured.getvalue()

    assert isinstance(welcome, Welcome)
    events = {line.get("event") for line in lines}
    assert {"connection_opened", "connection_closed", "slow_push", "slow_snapshot"} <= events
    mine = [line for line in lines if line.get("connection_id") == welcome.session_id]
    assert {line.get("event") for line in mine} >= {"connection_opened", "slow_push"}
    assert all(line.get("request_id") for line in mine)

    for secret in (token, token.split(".")[2], SECRET_TEXT):
        assert secret not in text
    for change in (created, edited):
        assert change.hex() not in text
        assert base64.b64encode(change).decode() not in text
        assert repr(change)[2:40] not in text
