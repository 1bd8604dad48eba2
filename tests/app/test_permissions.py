"""The app shows a field editable exactly when the server would accept a change to it: its
evaluation of ``contract/permissions.json`` (``app/src/permissions.ts``) against
``model.permissions.check_write``, for every level, entity type, field and scope."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from fieldsync.model.entities import SCHEMAS
from fieldsync.model.permissions import (
    DELETED,
    WRITE_LEVELS,
    Level,
    WriteCheck,
    Writer,
    check_write,
)
from tests.app.build import APP, build_app
from tests.typescript.node import node

ME = "11111111-1111-4111-8111-111111111111"
SOMEONE = "22222222-2222-4222-8222-222222222222"


def _cases() -> list[tuple[dict[str, Any], bool]]:
    cases = []
    for level in Level:
        for entity_type, schema in SCHEMAS.items():
            names = [f.name for f in schema.fields]
            for field in {*names, DELETED}:
                for mine in (True, False):
                    owner = ME if mine else SOMEONE
                    before: dict[str, object] = {name: 1 for name in names}
                    before["user_id"] = owner
                    after = {**before, field: not before.get(field) if field == DELETED else 2}
                    writer = Writer(ME, level, frozenset({"e1"} if mine else ()))
                    allowed = check_write(writer, WriteCheck(entity_type, "e1", before, after))
                    case = {
                        "level": level.value,
                        "userId": ME,
                        "summonedTo": ["e1"] if mine else [],
                        "entityType": entity_type,
                        "entityId": "e1",
                        "values": before,
                        "field": field,
                    }
                    cases.append((case, allowed is None and level in WRITE_LEVELS))
    return cases


def test_the_apps_editable_fields_are_the_ones_the_server_accepts(tmp_path: Path) -> None:
    build_app()
    cases = _cases()
    path = tmp_path / "cases.json"
    path.write_text(json.dumps([case for case, _ in cases]))
    done = subprocess.run(
        [node(), str(APP / "test-dist" / "permissions-cli.js"), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    shown = json.loads(done.stdout)
    differ = [
        (c["level"], c["entityType"], c["field"], c["summonedTo"], expected)
        for (c, expected), got in zip(cases, shown, strict=True)
        if got != expected
    ]
    assert not differ, differ
    assert sum(shown) > 0, "some field is editable for someone"
    assert not all(shown), "some field is read-only for someone"
