"""Read-model rows: projections of validated documents onto the ``rm_*`` tables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fieldsync.model.entities import SCHEMAS
from fieldsync.model.projections import PROJECTIONS
from fieldsync.model.validation import inspect_document
from tests.model.builders import (
    ACTIVITY_ID,
    END,
    LOCATION_ID,
    PLAN_ID,
    ROLE_ID,
    START,
    USER_ID,
    VALID,
    new_doc,
)

MIGRATIONS = Path(__file__).parents[2] / "migrations"
ADDED_BY_STORE = {"project_id", "entity_id", "last_seq"}
NOT_COLUMNS = ("PRIMARY KEY", "UNIQUE", "CHECK", "CONSTRAINT", "FOREIGN KEY")


def read_model_tables() -> dict[str, list[str]]:
    """Column names of every ``CREATE TABLE rm_*`` in the migrations, in order."""
    tables = {}
    sql = "\n".join(p.read_text() for p in sorted(MIGRATIONS.glob("*.sql")))
    for name, body in re.findall(r"CREATE TABLE (rm_\w+) \((.*?)\n\);", sql, flags=re.DOTALL):
        lines = (line.strip() for line in body.splitlines())
        tables[name] = [
            line.split()[0] for line in lines if line and not line.startswith(NOT_COLUMNS)
        ]
    for name, column in re.findall(r"ALTER TABLE (rm_\w+) ADD COLUMN (\w+)", sql):
        tables[name].append(column)
    return tables


def row_of(entity_type: str, values: dict[str, object]) -> tuple[object, ...]:
    schema = SCHEMAS[entity_type]
    inspection = inspect_document(schema, new_doc(schema, values, strings_as_text=True))
    assert inspection.violations == ()
    return PROJECTIONS[entity_type].row(inspection.values)


def test_every_entity_type_has_a_projection() -> None:
    assert set(PROJECTIONS) == set(SCHEMAS)


def test_projection_columns_match_the_migration() -> None:
    tables = read_model_tables()
    assert {p.table for p in PROJECTIONS.values()} == set(tables) - {"rm_conflicts"}
    for projection in PROJECTIONS.values():
        expected = [c for c in tables[projection.table] if c not in ADDED_BY_STORE]
        assert list(projection.columns) == expected, projection.table


EXPECTED_ROWS = {
    "project_settings": ("North quarry survey", "Europe/Berlin", False),
    "plan": ("Spring campaign", START, None, False),
    "activity": (PLAN_ID, "Core sampling", LOCATION_ID, START, END, "confirmed", 3, 2, False, []),
    "location": ("Site 1", "1 Quarry Road", 45.25, -7.5, False, []),
    "role": ("Geologist", ["drilling", "sampling"], False),
    "summoning": (ACTIVITY_ID, ROLE_ID, USER_ID, START, END, "proposed", False),
    "membership": (USER_ID, [ROLE_ID, "role_2"], "Ana", False),
    "attachment": ("ab" * 32, 1234, "image/jpeg", "ready", USER_ID, False),
}


@pytest.mark.parametrize("entity_type", sorted(SCHEMAS))
def test_valid_document_projects_to_its_row(entity_type: str) -> None:
    row = row_of(entity_type, VALID[entity_type])
    assert row == EXPECTED_ROWS[entity_type]
    assert len(row) == len(PROJECTIONS[entity_type].columns)


MINIMAL: list[tuple[str, dict[str, object], tuple[object, ...]]] = [
    ("project_settings", {"name": "P"}, ("P", None, False)),
    ("plan", {"name": "Plan", "deleted": True}, ("Plan", None, None, True)),
    (
        "activity",
        {"plan_id": PLAN_ID, "title": "T", "starts_at": START, "ends_at": END, "status": "done"},
        (PLAN_ID, "T", None, START, END, "done", 0, 0, False, []),
    ),
    ("location", {"name": "L", "deleted": True}, ("L", None, None, None, True, [])),
    ("role", {"name": "R"}, ("R", [], False)),
    (
        "summoning",
        {"activity_id": ACTIVITY_ID, "user_id": USER_ID, "starts_at": END, "ends_at": START,
         "status": "declined"},
        (ACTIVITY_ID, None, USER_ID, END, START, "declined", False),
    ),
    ("membership", {"user_id": USER_ID}, (USER_ID, [], None, False)),
]  # fmt: skip


@pytest.mark.parametrize(("entity_type", "values", "expected"), MINIMAL)
def test_absent_optional_fields_get_defaults(
    entity_type: str, values: dict[str, object], expected: tuple[object, ...]
) -> None:
    assert row_of(entity_type, values) == expected


def test_task_counts_follow_the_list() -> None:
    tasks = [{"title": f"t{i}", "done": i % 3 == 0} for i in range(7)]
    row = row_of("activity", dict(VALID["activity"], tasks=tasks))
    columns = PROJECTIONS["activity"].columns
    assert row[columns.index("tasks_total")] == 7
    assert row[columns.index("tasks_done")] == 3


@pytest.mark.parametrize("entity_type", ["activity", "location"])
def test_the_attachments_an_entity_lists_are_a_column(entity_type: str) -> None:
    """Garbage collection reads references from here (media.gc)."""
    row = row_of(entity_type, dict(VALID[entity_type], attachments=["photo-1", "scan_2"]))
    assert row[PROJECTIONS[entity_type].columns.index("attachments")] == ["photo-1", "scan_2"]
