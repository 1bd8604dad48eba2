"""Entity schemas and the validation of real Automerge documents against them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from automerge._automerge import Transaction
from automerge.core import ROOT, Document, ObjType, ScalarType, ScalarValue
from hypothesis import given
from hypothesis import strategies as st

from fieldsync.model.entities import ACTIVITY_STATUSES, SCHEMAS, SUMMONING_STATUSES
from fieldsync.model.schema import EntitySchema, Field, FieldKind, is_valid_entity_id
from fieldsync.model.validation import (
    MAX_LIST_ITEMS,
    MAX_VIOLATIONS,
    SchemaViolation,
    inspect_document,
    validate,
)
from tests.model.builders import VALID, Node, Scalar, Text, new_doc, write_tree

Mutation = Callable[[Transaction], None]


def _obj(tx: Transaction, *path: str | int) -> bytes:
    obj = ROOT
    for part in path:
        found = tx.get(obj, part)
        assert found is not None
        obj = found[1]
    return obj


def put(key: str | int, stype: ScalarType, value: ScalarValue, *path: str | int) -> Mutation:
    return lambda tx: tx.put(_obj(tx, *path), key, stype, value)


def put_text(key: str, value: str) -> Mutation:
    def mutate(tx: Transaction) -> None:
        text = tx.put_object(ROOT, key, ObjType.Text)
        tx.splice_text(text, 0, 0, value)  # type: ignore[attr-defined]

    return mutate


def delete(key: str | int, *path: str | int) -> Mutation:
    return lambda tx: tx.delete(_obj(tx, *path), key)


def delete_both(first: str, second: str) -> Mutation:
    def mutate(tx: Transaction) -> None:
        tx.delete(ROOT, first)
        tx.delete(ROOT, second)

    return mutate


def mutated(entity_type: str, mutate: Mutation) -> Document:
    doc = new_doc(SCHEMAS[entity_type], VALID[entity_type])
    with doc.transaction() as tx:
        mutate(tx)
    return doc


def test_every_entity_type_is_defined() -> None:
    assert set(SCHEMAS) == {
        "project_settings", "plan", "activity", "location", "role", "summoning", "membership",
        "attachment",
    }  # fmt: skip
    for name, schema in SCHEMAS.items():
        assert schema.type_name == name
        assert schema.field("deleted") == Field("deleted", FieldKind.BOOL)


def _refs(fields: tuple[Field, ...]) -> list[str]:
    found = [f.ref for f in fields if f.ref is not None]
    for f in fields:
        found += _refs(f.fields) + (_refs((f.item,)) if f.item is not None else [])
    return found


def test_references_name_entity_types() -> None:
    for schema in SCHEMAS.values():
        assert set(_refs(schema.fields)) <= set(SCHEMAS)


BOOL_A = Field("a", FieldKind.BOOL)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda: Field("x", FieldKind.REF), "ref"),
        (lambda: Field("x", FieldKind.STRING, ref="plan"), "ref"),
        (lambda: Field("x", FieldKind.ENUM), "choices"),
        (lambda: Field("x", FieldKind.LIST), "item"),
        (lambda: Field("x", FieldKind.BOOL, max_length=3), "max_length"),
        (lambda: Field("x", FieldKind.STRING, minimum=0), "minimum"),
        (lambda: EntitySchema("t", (BOOL_A, BOOL_A)), "duplicate"),
        (lambda: EntitySchema("t", (BOOL_A,), require_one_of=("b",)), "require_one_of"),
    ],
)
def test_schema_typos_fail_at_definition(bad: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bad()


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("3f0a2c1e-9b7d-4c55-8e21-7a6d2f4b9c10", True),
        ("a", True),
        ("A_z-9", True),
        ("x" * 64, True),
        ("", False),
        ("x" * 65, False),
        ("abc\n", False),
        ("a b", False),
        ("é", False),
        ("a/b", False),
        (42, False),
        (None, False),
    ],
)
def test_entity_ids(value: object, ok: bool) -> None:
    assert is_valid_entity_id(value) is ok


@pytest.mark.parametrize("strings_as_text", [False, True], ids=["str", "text"])
@pytest.mark.parametrize("entity_type", sorted(SCHEMAS))
def test_valid_document_passes(entity_type: str, strings_as_text: bool) -> None:
    doc = new_doc(SCHEMAS[entity_type], VALID[entity_type], strings_as_text=strings_as_text)
    inspection = inspect_document(SCHEMAS[entity_type], doc)
    assert inspection.violations == ()
    assert inspection.ok
    assert inspection.values == VALID[entity_type]


def test_timestamps_come_back_as_aware_utc() -> None:
    doc = new_doc(SCHEMAS["activity"], VALID["activity"])
    starts_at = inspect_document(SCHEMAS["activity"], doc).values["starts_at"]
    assert isinstance(starts_at, datetime)
    assert starts_at.tzinfo is UTC
    assert starts_at == datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def test_float_accepts_integers_and_optional_null_is_absent() -> None:
    doc = mutated("location", put("latitude", ScalarType.Int, 45, "coordinates"))
    with doc.transaction() as tx:
        tx.put(_obj(tx, "coordinates"), "longitude", ScalarType.Uint, 7)
        tx.put(ROOT, "address", ScalarType.Null, None)
    inspection = inspect_document(SCHEMAS["location"], doc)
    assert inspection.violations == ()
    coordinates = {"latitude": 45.0, "longitude": 7.0}
    assert inspection.values == {"name": "Site 1", "coordinates": coordinates}
    assert isinstance(inspection.values["coordinates"], dict)
    assert isinstance(inspection.values["coordinates"]["latitude"], float)


LONG_ID = "a" * 65
ACTIVITY_CHOICES = "one of planned, confirmed, in_progress, done, cancelled"
CASES = [
    ("activity", delete("title"), "title", "string", "missing"),
    ("activity", put("title", ScalarType.Null, None), "title", "string", "null"),
    ("activity", put("starts_at", ScalarType.Str, "tomorrow"), "starts_at", "timestamp",
     "str 'tomorrow'"),
    ("activity", put("description", ScalarType.Str, "hello"), "description", "text",
     "str 'hello'"),
    ("activity", put("status", ScalarType.Str, "maybe"), "status", ACTIVITY_CHOICES,
     "str 'maybe'"),
    ("activity", put_text("status", "maybe"), "status", ACTIVITY_CHOICES, "text 'maybe'"),
    ("activity", put("plan_id", ScalarType.Str, "not an id!"), "plan_id", "plan id",
     "str 'not an id!'"),
    ("activity", put("plan_id", ScalarType.Str, LONG_ID), "plan_id", "plan id",
     f"str {'a' * 40!r}... (65 characters)"),
    ("activity", put("plan_id", ScalarType.Int, 7), "plan_id", "plan id", "int 7"),
    ("activity", delete("title", "tasks", 2), "tasks[2].title", "string", "missing"),
    ("activity", put("done", ScalarType.Int, 1, "tasks", 0), "tasks[0].done", "boolean",
     "int 1"),
    ("activity", put("colour", ScalarType.Str, "red"), "colour", "absent (not in the schema)",
     "unexpected field"),
    ("activity", put("title", ScalarType.Str, "x" * 201), "title",
     "string of at most 200 characters", "str of 201 characters"),
    ("activity", put_text("title", "x" * 201), "title", "string of at most 200 characters",
     "text of 201 characters"),
    ("activity", put("title", ScalarType.Str, "a\x00b"), "title",
     "string without NUL characters", "str containing NUL"),
    ("activity", put("tasks", ScalarType.Str, "none"), "tasks", "list of map", "str 'none'"),
    ("activity", put("deleted", ScalarType.Str, "yes"), "deleted", "boolean", "str 'yes'"),
    ("activity", put("ends_at", ScalarType.F64, 1.5), "ends_at", "timestamp", "f64 1.5"),
    ("location", put("latitude", ScalarType.F64, 91.5, "coordinates"), "coordinates.latitude",
     "number from -90 to 90", "f64 91.5"),
    ("location", put("longitude", ScalarType.Int, -181, "coordinates"),
     "coordinates.longitude", "number from -180 to 180", "int -181"),
    ("location", put("latitude", ScalarType.F64, float("nan"), "coordinates"),
     "coordinates.latitude", "number", "f64 nan"),
    ("location", put("altitude", ScalarType.F64, 3.0, "coordinates"), "coordinates.altitude",
     "absent (not in the schema)", "unexpected field"),
    ("location", put("coordinates", ScalarType.Bytes, b"\x01"), "coordinates", "map", "bytes"),
    ("project_settings", put("name", ScalarType.Boolean, True), "name", "string",
     "boolean true"),
    ("role", put("name", ScalarType.Bytes, b"geo"), "name", "string", "bytes"),
    ("role", put(0, ScalarType.Null, None, "skills"), "skills[0]", "string", "null"),
    ("summoning", delete_both("role_id", "user_id"), "role_id|user_id",
     "at least one of role_id, user_id", "missing"),
    ("summoning", put("status", ScalarType.Str, "planned"), "status",
     "one of proposed, confirmed, declined, cancelled", "str 'planned'"),
    ("membership", put(1, ScalarType.Str, "x y", "role_ids"), "role_ids[1]", "role id",
     "str 'x y'"),
    ("membership", put("user_id", ScalarType.Str, "u" * 65), "user_id",
     "string of at most 64 characters", "str of 65 characters"),
]  # fmt: skip


@pytest.mark.parametrize(("entity_type", "mutate", "field", "expected", "got"), CASES)
def test_each_violation_is_reported_exactly(
    entity_type: str, mutate: Mutation, field: str, expected: str, got: str
) -> None:
    doc = mutated(entity_type, mutate)
    violations = validate(SCHEMAS[entity_type], doc)
    assert violations == (SchemaViolation(entity_type, field, expected, got),)


def test_timestamp_outside_python_range_is_a_violation_not_a_panic() -> None:
    # Rounded to milliseconds this is year 10000: reading it makes the binding panic.
    too_late = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    doc = mutated("activity", put("starts_at", ScalarType.Timestamp, too_late))
    assert validate(SCHEMAS["activity"], doc) == (
        SchemaViolation("activity", "starts_at", "timestamp", "timestamp out of range"),
    )


def test_over_long_list_is_refused_unread() -> None:
    doc = new_doc(SCHEMAS["role"], {"name": "Geologist"})
    with doc.transaction() as tx:
        skills = tx.put_object(ROOT, "skills", ObjType.List)
        for index in range(MAX_LIST_ITEMS + 1):
            tx.insert(skills, index, ScalarType.Int, index)  # wrong type: proves it is not read
    assert validate(SCHEMAS["role"], doc) == (
        SchemaViolation("role", "skills", "list of at most 10000 items", "list of 10001 items"),
    )


def test_violations_are_sorted_by_path_with_numeric_indexes() -> None:
    values = dict(VALID["activity"], tasks=[{"title": "t", "done": False}] * 12)
    doc = new_doc(SCHEMAS["activity"], values)
    with doc.transaction() as tx:
        tx.delete(_obj(tx, "tasks", 10), "title")
        tx.delete(_obj(tx, "tasks", 2), "title")
        tx.put(ROOT, "zzz", ScalarType.Int, 1)
        tx.put(ROOT, "aaa", ScalarType.Int, 1)
        tx.delete(ROOT, "status")
    fields = [v.field for v in validate(SCHEMAS["activity"], doc)]
    assert fields == ["aaa", "status", "tasks[2].title", "tasks[10].title", "zzz"]


def test_violation_reads_as_one_sentence() -> None:
    violation = SchemaViolation("activity", "starts_at", "timestamp", "str 'tomorrow'")
    assert str(violation) == "activity field 'starts_at': expected timestamp, got str 'tomorrow'."


def test_violations_are_capped() -> None:
    doc = write_tree({f"junk{i:04}": Scalar(ScalarType.Int, i) for i in range(500)})
    violations = validate(SCHEMAS["plan"], doc)
    assert len(violations) == MAX_VIOLATIONS
    assert violations[0].field == "junk0000"


def test_inspects_the_document_as_of_given_heads() -> None:
    doc = new_doc(SCHEMAS["role"], VALID["role"])
    before = doc.get_heads()
    with doc.transaction() as tx:
        tx.put(ROOT, "name", ScalarType.Int, 3)
    assert validate(SCHEMAS["role"], doc) != ()
    assert inspect_document(SCHEMAS["role"], doc, before).values == VALID["role"]


ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
ids = st.text(ID_CHARS, min_size=1, max_size=64)
chars = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
times = st.datetimes(datetime(1900, 1, 1), datetime(2200, 1, 1), timezones=st.just(UTC)).map(
    lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000)  # Automerge keeps ms
)
tasks = st.fixed_dictionaries({"title": st.text(chars, max_size=30), "done": st.booleans()})
activities = st.fixed_dictionaries(
    {
        "plan_id": ids,
        "title": st.text(chars, max_size=200),
        "starts_at": times,
        "ends_at": times,
        "status": st.sampled_from(ACTIVITY_STATUSES),
    },
    optional={
        "description": st.text(chars, max_size=300),
        "tasks": st.lists(tasks, max_size=6),
        "location_id": ids,
        "deleted": st.booleans(),
    },
)
summonings = st.fixed_dictionaries(
    {
        "activity_id": ids,
        "starts_at": times,
        "ends_at": times,
        "status": st.sampled_from(SUMMONING_STATUSES),
    },
    optional={"role_id": ids, "user_id": st.text(chars, max_size=64), "deleted": st.booleans()},
).filter(lambda values: "role_id" in values or "user_id" in values)


@given(
    entity=st.one_of(st.tuples(st.just("activity"), activities),
                     st.tuples(st.just("summoning"), summonings)),
    strings_as_text=st.booleans(),
)  # fmt: skip
def test_valid_values_round_trip(
    entity: tuple[str, dict[str, object]], strings_as_text: bool
) -> None:
    entity_type, values = entity
    schema = SCHEMAS[entity_type]
    inspection = inspect_document(schema, new_doc(schema, values, strings_as_text=strings_as_text))
    assert inspection.violations == ()
    assert inspection.values == values


def _field_names(fields: tuple[Field, ...]) -> set[str]:
    names = {f.name for f in fields}
    for f in fields:
        names |= _field_names(f.fields) | (_field_names((f.item,)) if f.item else set())
    return names


any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
keys = st.sampled_from(
    sorted(set().union(*(_field_names(s.fields) for s in SCHEMAS.values())))
) | st.text(st.characters(exclude_categories=["Cs"]), max_size=8)
scalars: st.SearchStrategy[Node] = st.one_of(
    st.builds(Scalar, st.just(ScalarType.Str), any_text),
    st.builds(Scalar, st.just(ScalarType.Int), st.integers(-(2**63), 2**63 - 1)),
    st.builds(Scalar, st.just(ScalarType.Uint), st.integers(0, 2**64 - 1)),
    st.builds(Scalar, st.just(ScalarType.F64), st.floats()),
    st.builds(Scalar, st.just(ScalarType.Boolean), st.booleans()),
    st.builds(
        Scalar,
        st.just(ScalarType.Timestamp),
        st.datetimes(datetime(1, 1, 2), timezones=st.just(UTC)),
    ),
    st.builds(Scalar, st.just(ScalarType.Null), st.none()),
    st.builds(Scalar, st.just(ScalarType.Bytes), st.binary(max_size=8)),
    st.builds(Text, any_text),
)
nodes: st.SearchStrategy[Node] = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=24,
)


@given(
    schema=st.sampled_from(sorted(SCHEMAS.values(), key=lambda s: s.type_name)),
    tree=st.dictionaries(keys, nodes, max_size=10),
)
def test_junk_documents_never_raise(schema: EntitySchema, tree: dict[str, Node]) -> None:
    inspection = inspect_document(schema, write_tree(tree))
    assert len(inspection.violations) <= MAX_VIOLATIONS
    assert all(str(v).startswith(f"{schema.type_name} field ") for v in inspection.violations)
    assert inspect_document(schema, write_tree(tree)) == inspection  # deterministic


@given(
    schema=st.sampled_from(sorted(SCHEMAS.values(), key=lambda s: s.type_name)),
    base=st.dictionaries(keys, nodes, max_size=8),
    ours=st.dictionaries(keys, nodes, max_size=4),
    theirs=st.dictionaries(keys, nodes, max_size=4),
    removed=st.lists(keys, max_size=3),
)
def test_bulk_reads_match_slot_by_slot_reads(
    schema: EntitySchema,
    base: dict[str, Node],
    ours: dict[str, Node],
    theirs: dict[str, Node],
    removed: list[str],
) -> None:
    """Each map's and list's values read in one call give the very inspection one read per
    key and index gives: with conflicting concurrent writes (the winner is read), removed
    keys, values the binding cannot convert, and as of past heads."""
    doc = write_tree(base)
    other = doc.fork()
    write_tree(theirs, other)
    write_tree(ours, doc)
    with doc.transaction() as tx:
        for key in removed:
            if tx.get(ROOT, key) is not None:
                tx.delete(ROOT, key)
    middle = doc.get_heads()
    doc.merge(other)
    for heads in (None, middle, other.get_heads()):
        bulk = inspect_document(schema, doc, heads)
        assert bulk == inspect_document(schema, doc, heads, slot_by_slot=True)
