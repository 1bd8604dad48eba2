"""Every reason a change set is refused, each leaving the log, documents and read models as
they were."""

from __future__ import annotations

import hashlib
import json
import random
import string
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from automerge.core import ROOT, Document, ScalarType

from fieldsync.model.limits import Limits
from fieldsync.model.merge import EntityChanges
from fieldsync.model.rejections import RejectCode
from fieldsync.model.writer import create_entity, update_entity
from fieldsync.store.errors import BatchTooLarge, UnknownProject
from fieldsync.store.ports import ChangeLogPort, Storage
from fieldsync.store.records import Accepted, Rejected
from tests.entities import activity_values, location_values, new_id
from tests.store.contract.inspect import Inspector

PRINTABLE = string.ascii_letters + string.digits + string.punctuation


def rechecksummed(chunk: bytes, body_edit: int) -> bytes:
    """``chunk`` with one op-column byte changed and a valid checksum: well-formed, wrong."""
    body = bytearray(chunk[8:])
    body[body_edit] ^= 0x55
    return chunk[:4] + hashlib.sha256(body).digest()[:4] + bytes(body)


async def seeded(log: ChangeLogPort, project: uuid.UUID) -> tuple[str, Document]:
    """A project holding one valid activity, so 'unchanged' means something."""
    entity = new_id()
    doc, created = create_entity("activity", activity_values(new_id()))
    assert await log.append(project, [EntityChanges("activity", entity, [created])], "u") == [
        Accepted(entity, (1,))
    ]
    return entity, doc


async def rejected(
    log: ChangeLogPort, project: uuid.UUID, item: EntityChanges
) -> tuple[RejectCode, str, object]:
    [result] = await log.append(project, [item], sender="u")
    assert isinstance(result, Rejected), result
    assert result.entity_id == item.entity_id
    return result.rejection.code, result.rejection.message, result.rejection.details


def raw_change(build: Sequence[tuple[str, ScalarType, object]]) -> bytes:
    doc = Document()
    with doc.transaction() as tx:
        for key, kind, value in build:
            tx.put(ROOT, key, kind, value)  # type: ignore[arg-type]
    change = doc.get_last_local_change()
    assert change is not None
    return change.bytes


@pytest.fixture
def log(storage: Storage) -> ChangeLogPort:
    # Op bounds out of the way: test_op_limits.py is about those.
    return storage.change_log(limits=Limits(max_change_bytes=8192, max_changes_per_entity=20,
                                         max_entities_per_batch=10,
                                         max_document_bytes=64 * 1024,
                                         max_ops_per_push=10**7, max_document_ops=10**7))


async def test_garbage_truncated_and_bitflipped_bytes(
    inspector: Inspector, log: ChangeLogPort, project: uuid.UUID
) -> None:
    entity, doc = await seeded(log, project)
    good = update_entity(doc, "activity", {"status": "done"})
    before = await inspector.state(project)
    for bad in (b"", b"hello", good[: len(good) // 2], good[:-1] + bytes([good[-1] ^ 1])):
        code, message, details = await rejected(
            log, project, EntityChanges("activity", entity, [good, bad])
        )
        assert code is RejectCode.UNDECODABLE_CHANGE
        assert message.startswith("change 1 is not a valid Automerge change")
        assert details == {"index": 1}
    assert await inspector.state(project) == before


async def test_well_formed_but_corrupted_changes(
    inspector: Inspector, log: ChangeLogPort, project: uuid.UUID
) -> None:
    """Op bytes flipped under a recomputed checksum: refused, or accepted only if Automerge's
    strict loader accepts the same change too; a refusal never poisons the cached document."""
    def edited_entity() -> tuple[bytes, bytes]:
        # A change belongs to one entity, so each attempt gets its own entity and history.
        doc, first = create_entity("activity", activity_values("plan-1"))
        return first, update_entity(doc, "activity", {"status": "confirmed", "title": "Core day"})

    size = len(edited_entity()[1])
    header_end = size - 40
    codes: set[RejectCode] = set()
    for offset in range(header_end - 8, size - 8):
        entity = new_id()
        first, good = edited_entity()
        assert len(good) == size
        await log.append(project, [EntityChanges("activity", entity, [first])], "u")
        before = await inspector.state(project)
        bad = rechecksummed(good, offset)
        [result] = await log.append(project, [EntityChanges("activity", entity, [bad])], "u")
        if isinstance(result, Rejected):
            codes.add(result.rejection.code)
            assert await inspector.state(project) == before
            assert await log.append(project, [EntityChanges("activity", entity, [good])], "u") == [
                Accepted(entity, (before.head + 1,))
            ]
        else:
            strict = Document.load(first + bad)
            stored = await inspector.document(entity)
            assert stored is not None
            assert sorted(stored.heads) == sorted(strict.get_heads())
    assert RejectCode.CORRUPT_CHANGE in codes
    assert codes <= {
        RejectCode.UNDECODABLE_CHANGE,
        RejectCode.CORRUPT_CHANGE,
        RejectCode.MISSING_DEPENDENCIES,
        RejectCode.SCHEMA_VIOLATION,
        RejectCode.UNSUPPORTED_VALUE,
    }


async def test_missing_dependencies_names_the_missing_hashes(
    inspector: Inspector, log: ChangeLogPort, project: uuid.UUID
) -> None:
    entity = new_id()
    doc, _ = create_entity("location", location_values())
    later = update_entity(doc, "location", {"name": "Later"})
    before = await inspector.state(project)

    code, _, details = await rejected(log, project, EntityChanges("location", entity, [later]))

    assert code is RejectCode.MISSING_DEPENDENCIES
    assert details == {"missing": [doc.get_changes([])[0].hash.hex()]}
    assert await inspector.state(project) == before


async def test_schema_violations_name_the_field(
    inspector: Inspector, log: ChangeLogPort, project: uuid.UUID
) -> None:
    entity, doc = await seeded(log, project)
    before = await inspector.state(project)
    cases = [
        (update_entity(doc.fork(), "activity", {"title": None}), "title", "missing"),
        (update_entity(doc.fork(), "activity", {"status": "finished-ish"}), "status", None),
    ]
    for change, field, got in cases:
        code, message, details = await rejected(
            log, project, EntityChanges("activity", entity, [change])
        )
        assert code is RejectCode.SCHEMA_VIOLATION
        assert field in message
        violations = details["violations"]  # type: ignore[index]
        assert violations[0]["field"] == field
        if got is not None:
            assert violations[0]["got"] == got
    new_entity = new_id()
    wrong_type = raw_change([("name", ScalarType.Int, 5)])
    code, _, details = await rejected(
        log, project, EntityChanges("role", new_entity, [wrong_type])
    )
    assert code is RejectCode.SCHEMA_VIOLATION
    assert details["violations"][0]["field"] == "name"  # type: ignore[index]
    assert await inspector.state(project) == before


async def test_unknown_type_and_bad_entity_ids(
    inspector: Inspector, log: ChangeLogPort, project: uuid.UUID
) -> None:
    _, change = create_entity("location", location_values())
    before = await inspector.state(project)
    code, message, _ = await rejected(log, project, EntityChanges("spaceship", new_id(), [change]))
    assert code is RejectCode.UNKNOWN_ENTITY_TYPE
    assert "activity" in message
    for bad_id in ("", "x" * 65, "../etc", "a b"):
        code, _, _ = await rejected(log, project, EntityChanges("location", bad_id, [change]))
        assert code is RejectCode.INVALID_ENTITY_ID
    assert await inspector.state(project) == before


async def test_entity_of_another_project_and_of_another_type(
    inspector: Inspector, log: ChangeLogPort, project: uuid.UUID, other_project: uuid.UUID
) -> None:
    entity, doc = await seeded(log, project)
    edit = update_entity(doc, "activity", {"status": "confirmed"})
    mine, theirs = await inspector.state(project), await inspector.state(other_project)

    code, _, _ = await rejected(log, other_project, EntityChanges("activity", entity, [edit]))
    assert code is RejectCode.WRONG_PROJECT
    code, _, _ = await rejected(log, project, EntityChanges("location", entity, [edit]))
    assert code is RejectCode.WRONG_ENTITY_TYPE

    assert await inspector.state(project) == mine
    assert await inspector.state(other_project) == theirs


async def test_size_limits(
    inspector: Inspector, log: ChangeLogPort, project: uuid.UUID
) -> None:
    entity, doc = await seeded(log, project)
    before = await inspector.state(project)

    code, _, details = await rejected(
        log, project, EntityChanges("activity", entity, [b"\x00" * 9000])
    )
    assert (code, details) == (RejectCode.CHANGE_TOO_LARGE, {"index": 0, "limit": 8192})

    many = [update_entity(doc.fork(), "activity", {"title": f"t{i}"}) for i in range(21)]
    code, _, details = await rejected(log, project, EntityChanges("activity", entity, many))
    assert (code, details) == (RejectCode.TOO_MANY_CHANGES, {"limit": 20})

    code, _, _ = await rejected(log, project, EntityChanges("activity", entity, []))
    assert code is RejectCode.EMPTY_CHANGE_SET

    grow = doc.fork()
    noise = random.Random(7)
    growth = [
        update_entity(grow, "activity", {"description": "".join(noise.choices(PRINTABLE, k=6000))})
        for _ in range(19)
    ]
    code, _, details = await rejected(log, project, EntityChanges("activity", entity, growth))
    assert (code, details) == (RejectCode.DOCUMENT_TOO_LARGE, {"limit": 64 * 1024})

    with pytest.raises(BatchTooLarge):
        await log.append(
            project, [EntityChanges("activity", new_id(), many[:1]) for _ in range(11)], "u"
        )
    assert await inspector.state(project) == before


async def test_an_entity_twice_in_one_push(
    inspector: Inspector, log: ChangeLogPort, project: uuid.UUID
) -> None:
    entity = new_id()
    doc, created = create_entity("location", location_values())
    edit = update_entity(doc, "location", {"name": "Second"})

    results = await log.append(
        project,
        [EntityChanges("location", entity, [created]), EntityChanges("location", entity, [edit])],
        sender="u",
    )

    assert results[0] == Accepted(entity, (1,))
    assert isinstance(results[1], Rejected)
    assert results[1].rejection.code is RejectCode.DUPLICATE_ENTITY


async def test_unknown_project_is_refused_before_anything_is_written(log: ChangeLogPort) -> None:
    _, change = create_entity("location", location_values())
    with pytest.raises(UnknownProject):
        await log.append(uuid.uuid4(), [EntityChanges("location", new_id(), [change])], "u")


async def test_values_the_binding_cannot_read_are_refused_and_nothing_breaks(
    inspector: Inspector, log: ChangeLogPort, project: uuid.UUID
) -> None:
    """Counters written by JavaScript Automerge make the Python binding panic on read."""
    fixtures = json.loads((Path(__file__).parents[2] / "fixtures" /
                           "js_counter_changes.json").read_text())
    role = new_id()
    [base] = [bytes.fromhex(h) for h in fixtures["base"]]
    assert await log.append(project, [EntityChanges("role", role, [base])], "u") == [
        Accepted(role, (1,))
    ]
    before = await inspector.state(project)

    code, message, details = await rejected(
        log, project, EntityChanges("role", role, [bytes.fromhex(fixtures["counter"])])
    )
    assert code is RejectCode.UNSUPPORTED_VALUE
    assert "'name'" in message
    assert details == {"index": 0, "field": "name", "type": "counter"}
    code, _, details = await rejected(
        log,
        project,
        EntityChanges("location", new_id(),
                      [bytes.fromhex(h) for h in fixtures["location_with_counter"]]),
    )
    assert code is RejectCode.UNSUPPORTED_VALUE
    assert details == {"index": 0, "field": "visits", "type": "counter"}

    assert await inspector.state(project) == before
    doc = Document.load(base)
    rename = update_entity(doc, "role", {"name": "Senior geologist"})
    assert await log.append(project, [EntityChanges("role", role, [rename])], "u") == [
        Accepted(role, (2,))
    ]
