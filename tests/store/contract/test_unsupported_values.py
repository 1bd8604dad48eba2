"""Values the binding cannot read are refused by name before it reads them; the edges of
the accepted timestamp range are stored exactly.

The changes come from JavaScript Automerge 3 (``tests/fixtures/js_hostile_values.mjs``),
the client that can write counters and any timestamp.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fieldsync.model.merge import EntityChanges
from fieldsync.model.rejections import RejectCode
from fieldsync.store.ports import ChangeLogPort
from fieldsync.store.records import Accepted, Rejected
from tests.entities import new_id
from tests.store.contract.inspect import Inspector

FIXTURES = json.loads(
    (Path(__file__).parents[2] / "fixtures" / "js_hostile_values.json").read_text()
)
BASE = [bytes.fromhex(h) for h in FIXTURES["base"]]


def edit(name: str) -> list[bytes]:
    return [bytes.fromhex(h) for h in FIXTURES["edits"][name]]


REFUSED = {
    # case: (field named, type named)
    "counter_at_root": ("title", "counter"),
    "counter_in_list_item": ("tasks", "counter"),
    "counter_in_new_list_item": ("tasks", "counter"),
    "counter_then_increment": ("visits", "counter"),
    "year_10000": ("starts_at", "timestamp"),
    "negative_year": ("starts_at", "timestamp"),
    "first_instant_of_year_1": ("starts_at", "timestamp"),
    "before_earliest": ("starts_at", "timestamp"),
    "last_instant_refused": ("ends_at", "timestamp"),
}


async def activity(log: ChangeLogPort, project: uuid.UUID) -> str:
    entity = new_id()
    [created] = await log.append(project, [EntityChanges("activity", entity, BASE)], "u")
    assert isinstance(created, Accepted), created
    return entity


@pytest.mark.parametrize("case", sorted(REFUSED))
async def test_unreadable_values_are_refused_naming_field_and_type(
    inspector: Inspector, log: ChangeLogPort, project: uuid.UUID, case: str
) -> None:
    entity = await activity(log, project)
    before = await inspector.state(project)

    [result] = await log.append(project, [EntityChanges("activity", entity, edit(case))], "u")

    assert isinstance(result, Rejected), result
    field, kind = REFUSED[case]
    assert result.rejection.code is RejectCode.UNSUPPORTED_VALUE
    assert result.rejection.details["field"] == field
    assert str(result.rejection.details["type"]).startswith(kind)
    assert repr(field) in result.rejection.message
    assert await inspector.state(project) == before


@pytest.mark.parametrize(
    ("case", "column", "expected"),
    [
        ("earliest_accepted", "starts_at", datetime(1, 1, 3, tzinfo=UTC)),
        ("latest_accepted", "ends_at", datetime(9999, 12, 29, 23, 59, 59, 999000, tzinfo=UTC)),
    ],
)
async def test_the_edges_of_the_range_are_stored_to_the_millisecond(
    inspector: Inspector,
    log: ChangeLogPort,
    project: uuid.UUID,
    case: str,
    column: str,
    expected: datetime,
) -> None:
    entity = await activity(log, project)
    [result] = await log.append(project, [EntityChanges("activity", entity, edit(case))], "u")
    assert isinstance(result, Accepted), result
    row = await inspector.read_model("activity", entity)
    assert row is not None
    assert row[column] == expected


async def test_an_invalid_javascript_date_is_stored_as_the_epoch(
    inspector: Inspector, log: ChangeLogPort, project: uuid.UUID
) -> None:
    """What docs/protocol.md warns JavaScript clients about: new Date(NaN) becomes 1970."""
    entity = await activity(log, project)
    [result] = await log.append(
        project, [EntityChanges("activity", entity, edit("invalid_date"))], "u"
    )
    # ends_at before starts_at is a domain conflict, not a schema error: it is accepted.
    assert isinstance(result, Accepted), result
    row = await inspector.read_model("activity", entity)
    assert row is not None
    assert row["ends_at"] == datetime(1970, 1, 1, tzinfo=UTC)
