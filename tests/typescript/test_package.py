"""The TypeScript SDK's own tests (node's test runner: codec against the conformance vectors,
storage adapters, schema and writer, the pure parts), and its schema checks against the
server's: the same document gets the same violations in both."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from automerge.core import Document

from fieldsync.model.entities import SCHEMAS
from fieldsync.model.validation import inspect_document
from tests.typescript.conftest import TsFactory
from tests.typescript.node import DIST, PACKAGE, build, node


def test_node_unit_tests_pass() -> None:
    build()
    tests = sorted(str(p) for p in (DIST / "test").glob("*.test.js"))
    assert len(tests) >= 5
    run = subprocess.run(
        [node(), "--test", "--test-concurrency=1", *tests],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PACKAGE,
    )
    summary = [line for line in run.stdout.splitlines() if line.startswith(("# pass", "# fail"))]
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "# fail 0" in summary, summary


START = {"$date": "2026-03-02T08:00:00.000Z"}
ACTIVITY: dict[str, Any] = {
    "plan_id": {"$str": "plan-1"},
    "title": {"$str": "Core sampling"},
    "starts_at": START,
    "ends_at": START,
    "status": {"$str": "planned"},
}

CASES: list[tuple[str, dict[str, Any]]] = [
    ("activity", ACTIVITY),
    ("activity", {**ACTIVITY, "status": {"$str": "maybe"}, "colour": "red"}),
    ("activity", {**ACTIVITY, "description": {"$str": "a scalar where text belongs"}}),
    ("activity", {k: v for k, v in ACTIVITY.items() if k != "ends_at"}),
    ("activity", {**ACTIVITY, "title": "t" * 201, "plan_id": {"$str": "not an id!"}}),
    ("activity", {**ACTIVITY, "tasks": [{"title": {"$str": "x"}}, {"title": 5, "done": True}]}),
    ("activity", {**ACTIVITY, "starts_at": {"$str": "tomorrow"}, "status": None}),
    ("location", {"name": "Pole", "coordinates": {"latitude": {"$f64": 91.5}, "longitude": 1}}),
    ("location", {"name": "Nul\u0000", "address": {"$str": "x" * 70}}),
    ("role", {"name": {"$str": "Geologist"}, "skills": [True, "drilling"]}),
    (
        "summoning",
        {"activity_id": "a", "starts_at": START, "ends_at": START, "status": {"$str": "proposed"}},
    ),
    ("membership", {"user_id": {"$str": "u" * 65}, "role_ids": [{"$str": "r1"}]}),
    ("project_settings", {"name": {"$str": "Alpine"}, "timezone": 3, "deleted": 1}),
]


@pytest.mark.parametrize(("entity_type", "values"), CASES)
async def test_typescript_validation_matches_the_server(
    ts_client: TsFactory, entity_type: str, values: dict[str, Any]
) -> None:
    ts = await ts_client()
    got = await ts.call("inspectRaw", type=entity_type, values=values)
    server = inspect_document(SCHEMAS[entity_type], Document.load(bytes.fromhex(got["document"])))
    expected = [(v.field, v.expected, v.got) for v in server.violations]
    assert [(v["field"], v["expected"], v["got"]) for v in got["violations"]] == expected
