"""Parameters, cursors and the window, without a server or a database."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldsync.model.entities import ACTIVITY_STATUSES, SUMMONING_STATUSES
from fieldsync.query.cursor import decode_cursor, encode_cursor
from fieldsync.query.params import ActivityStatus, BadParameterError, SummoningStatus
from fieldsync.query.requests import activity_query, conflict_query, member_query, summoning_query
from fieldsync.query.specs import ConflictKey, TimedKey
from fieldsync.query.window import in_window

PROJECT = uuid.UUID("0b6f3c1e-9a2d-4f57-8c1b-2e7d4a9f0c35")
T0 = datetime(2026, 3, 2, 8, tzinfo=UTC)


def test_the_status_parameters_are_the_entities_statuses() -> None:
    assert get_args(ActivityStatus) == ACTIVITY_STATUSES
    assert get_args(SummoningStatus) == SUMMONING_STATUSES


def test_parameters_become_a_query() -> None:
    query, _ = activity_query(
        PROJECT,
        [
            ("location_id", "loc-b"),
            ("location_id", "loc-a"),
            ("location_id", "loc-b"),
            ("from", "2026-03-02T10:00:00+02:00"),
            ("to", "2026-03-09T08:00:00Z"),
            ("status", "planned"),
            ("include_deleted", "true"),
            ("limit", "7"),
        ],
    )
    assert query.location_ids == ("loc-a", "loc-b")
    assert (query.start, query.end) == (T0, T0 + timedelta(days=7))
    assert (query.status, query.include_deleted, query.limit, query.after) == (
        "planned",
        True,
        7,
        None,
    )
    defaults, _ = activity_query(PROJECT, [])
    assert (defaults.limit, defaults.include_deleted, defaults.location_ids) == (100, False, ())
    summonings, _ = summoning_query(PROJECT, [("user_id", "5D1C8E2A-3B4F-4E6A-9C7D-8E9F0A1B2C3D")])
    assert summonings.user_id == "5d1c8e2a-3b4f-4e6a-9c7d-8e9f0a1b2c3d"
    conflicts, _ = conflict_query(PROJECT, [("status", "all"), ("resolved_since_seq", "40")])
    assert (conflicts.statuses, conflicts.resolved_after) == (("open", "resolved"), 40)
    assert conflict_query(PROJECT, [])[0].statuses == ("open",)


BAD = [
    (activity_query, [("colour", "red")], "colour", "unknown parameter"),
    (activity_query, [("from", "2026-03-02")], "from", "ISO 8601 instant"),
    (activity_query, [("from", "2026-03-02T08:00:00")], "from", "with an offset"),
    (activity_query, [("to", "tomorrow")], "to", "ISO 8601 instant"),
    (
        activity_query,
        [("from", "2026-03-02T08:00:00Z"), ("to", "2026-03-02T08:00:00Z")],
        "from",
        "before to",
    ),
    (activity_query, [("limit", "0")], "limit", "1 to 500"),
    (activity_query, [("limit", "501")], "limit", "1 to 500"),
    (activity_query, [("limit", "ten")], "limit", "1 to 500"),
    (activity_query, [("limit", "")], "limit", "is empty"),
    (activity_query, [("cursor", "garbage")], "cursor", "not a cursor"),
    (activity_query, [("status", "sleeping")], "status", "not one of"),
    (activity_query, [("plan_id", "a b")], "plan_id", "not an entity id"),
    (activity_query, [("plan_id", "ab\n")], "plan_id", "not an entity id"),
    (activity_query, [("location_id", "x" * 65)], "location_id", "not an entity id"),
    (activity_query, [("plan_id", "a"), ("plan_id", "b")], "plan_id", "more than once"),
    (activity_query, [("include_deleted", "maybe")], "include_deleted", "boolean"),
    (summoning_query, [("user_id", "nobody")], "user_id", "not a UUID"),
    (summoning_query, [("status", "planned")], "status", "not one of"),
    (summoning_query, [("include_deleted", "true")], "include_deleted", "unknown"),
    (conflict_query, [("status", "closed")], "status", "not one of"),
    (conflict_query, [("resolved_since_seq", "-1")], "resolved_since_seq", "integer"),
    (conflict_query, [("resolved_since_seq", "5")], "resolved_since_seq", "status=resolved"),
]


@pytest.mark.parametrize(("parse", "pairs", "parameter", "words"), BAD)
def test_every_bad_parameter_is_named(
    parse: Callable[..., object], pairs: list[tuple[str, str]], parameter: str, words: str
) -> None:
    with pytest.raises(BadParameterError) as refused:
        parse(PROJECT, pairs)
    assert refused.value.parameter == parameter
    assert words in refused.value.message


def test_members_take_only_paging() -> None:
    with pytest.raises(BadParameterError) as refused:
        member_query(PROJECT, [("status", "open")], T0)
    assert refused.value.parameter == "status"


keys = st.tuples(st.datetimes(timezones=st.just(UTC)), st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z"))


@given(key=keys, scope=st.binary(max_size=64))
def test_a_cursor_gives_back_its_key(key: TimedKey, scope: bytes) -> None:
    assert decode_cursor(scope, encode_cursor(scope, key), TimedKey) == key


@given(key=keys, position=st.integers(0, 200), flip=st.integers(1, 255))
def test_a_damaged_cursor_is_a_bad_parameter_never_a_crash(
    key: TimedKey, position: int, flip: int
) -> None:
    cursor = encode_cursor(b"scope", key)
    data = bytearray(cursor.encode())
    data[position % len(data)] ^= flip
    damaged = data.decode("latin-1")
    if damaged == cursor:
        return
    with pytest.raises(BadParameterError) as refused:
        decode_cursor(b"scope", damaged, TimedKey)
    assert refused.value.parameter == "cursor"


@given(garbage=st.text(max_size=80))
def test_made_up_cursors_are_refused(garbage: str) -> None:
    with pytest.raises(BadParameterError):
        decode_cursor(b"scope", garbage, TimedKey)


def test_a_cursor_belongs_to_its_query() -> None:
    _, scope = activity_query(PROJECT, [("status", "done")])
    cursor = encode_cursor(scope, (T0, "act-1"))
    again, _ = activity_query(PROJECT, [("status", "done"), ("cursor", cursor), ("limit", "3")])
    assert again.after == (T0, "act-1")
    for other in (
        [("status", "planned"), ("cursor", cursor)],  # other filters
        [("cursor", cursor)],
    ):
        with pytest.raises(BadParameterError, match="does not belong"):
            activity_query(PROJECT, other)
    with pytest.raises(BadParameterError, match="does not belong"):
        activity_query(uuid.uuid4(), [("status", "done"), ("cursor", cursor)])
    with pytest.raises(BadParameterError):  # another endpoint's cursor
        summoning_query(PROJECT, [("cursor", cursor)])
    _, conflicts = conflict_query(PROJECT, [])
    wrong_shape = encode_cursor(conflicts, (T0, "x"))
    with pytest.raises(BadParameterError, match="not a cursor of this endpoint"):
        conflict_query(PROJECT, [("cursor", wrong_shape)])
    assert decode_cursor(conflicts, encode_cursor(conflicts, (3, "c")), ConflictKey) == (3, "c")


instants = st.integers(0, 100).map(lambda h: T0 + timedelta(hours=h))


@given(s=instants, e=instants, a=instants, b=instants)
def test_the_window_is_overlap_with_instants_and_broken_intervals_at_their_start(
    s: datetime, e: datetime, a: datetime, b: datetime
) -> None:
    if not a < b:
        return
    got = in_window(s, e, a, b)
    if s < e:
        assert got == (s < b and e > a)  # an ordinary interval overlaps [a, b)
    else:
        assert got == (a <= s < b)  # an instant, or a broken interval at its start
    assert in_window(s, e, None, None)
    assert in_window(s, e, a, None) == (s >= a or e > a)
    assert in_window(s, e, None, b) == (s < b)
