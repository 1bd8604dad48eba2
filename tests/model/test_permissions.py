"""The write rules as pure code: every level and entity type, fields, scopes, documents."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldsync.model.entities import SCHEMAS, SERVER_AUTHORED
from fieldsync.model.permissions import (
    RULES,
    Level,
    WriteCheck,
    Writer,
    changed_fields,
    check_write,
    may_write_everything,
    write_check,
)
from fieldsync.model.rejections import RejectCode
from fieldsync.model.validation import inspect_document
from fieldsync.model.writer import create_entity, update_entity
from tests.entities import activity_values, new_id

ME = "11111111-1111-1111-1111-111111111111"
LEAD = Writer(ME, Level.LEAD)
VIEWER = Writer(ME, Level.VIEWER)
SPECIALIST = Writer(ME, Level.SPECIALIST, frozenset({"act-mine"}))


def check(
    entity_type: str,
    before: Mapping[str, object] | None,
    after: Mapping[str, object],
    entity_id: str = "e1",
) -> WriteCheck:
    return WriteCheck(entity_type, entity_id, before, after)


def code(writer: Writer, write: WriteCheck) -> str | None:
    refused = check_write(writer, write)
    return None if refused is None else refused.code.value


def test_every_level_has_a_rule_for_every_entity_type() -> None:
    assert set(RULES) == set(Level)
    for rules in RULES.values():
        assert set(rules) == set(SCHEMAS)


@pytest.mark.parametrize("entity_type", sorted(set(SCHEMAS) - SERVER_AUTHORED))
def test_a_lead_creates_edits_and_deletes_everything(entity_type: str) -> None:
    assert code(LEAD, check(entity_type, None, {"name": "x"})) is None
    assert code(LEAD, check(entity_type, {"name": "x"}, {"name": "y"})) is None
    assert code(LEAD, check(entity_type, {"name": "x"}, {"name": "x", "deleted": True})) is None


@pytest.mark.parametrize("entity_type", sorted(SERVER_AUTHORED))
def test_nobody_writes_a_server_authored_type(entity_type: str) -> None:
    for writer in (LEAD, SPECIALIST, VIEWER):
        assert code(writer, check(entity_type, None, {"name": "x"})) == "forbidden_create"
        assert code(writer, check(entity_type, {"name": "x"}, {"name": "y"})) is not None


@pytest.mark.parametrize("entity_type", sorted(SCHEMAS))
def test_a_viewer_writes_nothing(entity_type: str) -> None:
    assert code(VIEWER, check(entity_type, None, {"name": "x"})) == "forbidden_create"
    assert code(VIEWER, check(entity_type, {"name": "x"}, {"name": "y"})) == "forbidden_entity"


@pytest.mark.parametrize("entity_type", sorted(SCHEMAS))
def test_a_specialist_creates_nothing(entity_type: str) -> None:
    refused = check_write(SPECIALIST, check(entity_type, None, {"name": "x"}))
    assert refused is not None
    assert refused.code is RejectCode.FORBIDDEN_CREATE
    assert refused.details == {"entity_type": entity_type}


def test_a_specialist_edits_an_activity_they_are_summoned_to_but_not_its_plan() -> None:
    before = {"plan_id": "p1", "title": "Dig", "status": "planned"}
    ok = check("activity", before, {**before, "status": "done", "title": "Dig deeper"}, "act-mine")
    assert code(SPECIALIST, ok) is None
    moved = check("activity", before, {**before, "plan_id": "p2"}, "act-mine")
    refused = check_write(SPECIALIST, moved)
    assert refused is not None
    assert refused.code is RejectCode.FORBIDDEN_FIELD
    assert refused.details == {"entity_type": "activity", "field": "plan_id"}
    deleted = check("activity", before, {**before, "deleted": True}, "act-mine")
    assert code(SPECIALIST, deleted) == "forbidden_delete"


def test_a_specialist_cannot_touch_activities_they_are_not_summoned_to() -> None:
    before = {"plan_id": "p1", "title": "Dig", "status": "planned"}
    refused = check_write(SPECIALIST, check("activity", before, {**before, "status": "done"}))
    assert refused is not None
    assert refused.code is RejectCode.FORBIDDEN_ENTITY
    assert refused.details == {"entity_type": "activity", "field": "status"}
    assert "summoned" in refused.message


def test_a_specialist_answers_their_own_summoning_and_nothing_else_of_it() -> None:
    mine = {"activity_id": "a1", "user_id": ME, "status": "proposed"}
    assert code(SPECIALIST, check("summoning", mine, {**mine, "status": "confirmed"})) is None
    for name, value in (("user_id", "someone-else"), ("activity_id", "a2"), ("starts_at", "later")):
        refused = check_write(SPECIALIST, check("summoning", mine, {**mine, name: value}))
        assert refused is not None
        assert refused.code is RejectCode.FORBIDDEN_FIELD
        assert refused.details["field"] == name
    assert code(SPECIALIST, check("summoning", mine, {**mine, "deleted": True})) == (
        "forbidden_delete"
    )
    theirs = {**mine, "user_id": "another-user"}
    assert code(SPECIALIST, check("summoning", theirs, {**theirs, "status": "declined"})) == (
        "forbidden_entity"
    )
    by_role = {"activity_id": "a1", "role_id": "r1", "status": "proposed"}
    assert code(SPECIALIST, check("summoning", by_role, {**by_role, "status": "declined"})) == (
        "forbidden_entity"
    )


@pytest.mark.parametrize(
    "entity_type", ["plan", "location", "role", "membership", "project_settings"]
)
def test_a_specialist_only_reads_the_rest(entity_type: str) -> None:
    assert code(SPECIALIST, check(entity_type, {"name": "a"}, {"name": "b"})) == (
        "forbidden_entity"
    )


values = st.dictionaries(
    st.sampled_from(["title", "status", "plan_id", "deleted", "user_id"]),
    st.one_of(st.text(max_size=3), st.booleans()),
    max_size=5,
)


# The machine is shared: generation speed says nothing about the rules.
relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@relaxed
@given(
    before=values,
    level=st.sampled_from(list(Level)),
    summoned=st.booleans(),
    entity_type=st.sampled_from(sorted(SCHEMAS)),
)
def test_changes_that_change_nothing_are_always_allowed(
    before: dict[str, object], level: Level, summoned: bool, entity_type: str
) -> None:
    writer = Writer(ME, level, frozenset({"e1"} if summoned else ()))
    assert check_write(writer, check(entity_type, before, dict(before))) is None


@relaxed
@given(before=values, after=values)
def test_a_refusal_names_a_field_that_really_changed(
    before: dict[str, object], after: dict[str, object]
) -> None:
    for writer in (SPECIALIST, VIEWER):
        refused = check_write(writer, check("activity", before, after, "act-mine"))
        if refused is not None:
            assert refused.details["field"] in changed_fields(check("activity", before, after))
        else:
            changed = changed_fields(check("activity", before, after))
            assert writer is SPECIALIST or not changed
            assert "plan_id" not in changed
            assert "deleted" not in changed


def test_write_check_reads_the_stored_document_values() -> None:
    doc, _ = create_entity("activity", activity_values(new_id()))
    values = inspect_document(SCHEMAS["activity"], doc).values
    made = write_check("activity", "a", doc, {**values, "status": "done"})
    assert made.before == values
    assert changed_fields(made) == ["status"]
    assert write_check("activity", "a", None, values).before is None
    # The writer's own helper produces exactly the change the rule sees.
    update_entity(doc, "activity", {"status": "done"})


def test_only_a_lead_may_write_everything_unchecked() -> None:
    """The store skips the per-entity comparison for such a level, so it must be exact."""
    assert may_write_everything(Level.LEAD)
    assert not may_write_everything(Level.SPECIALIST)
    assert not may_write_everything(Level.VIEWER)
